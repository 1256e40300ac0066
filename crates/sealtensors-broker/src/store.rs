//! Durable state: registered models, licences (tokens as SHA-256 only),
//! seats, seen nonces and the audit log, behind [`Store`]: [`SqliteStore`]
//! (the default, embedded) or [`PostgresStore`] (several broker instances
//! sharing one database), chosen by the `[store]` section of the
//! configuration ([`open`]).
//!
//! Every write is committed before the call returns (SQLite WAL with
//! `synchronous = FULL`; PostgreSQL with `synchronous_commit = on`), so an
//! audit row exists before the reply is sent.

mod postgres;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;
use crate::error::{BrokerError, Result};

pub use postgres::PostgresStore;

/// Open the store a configuration names: SQLite in `database`, or PostgreSQL
/// (schema created or checked at start).
pub fn open(store: &StoreConfig, database: &Path) -> Result<Arc<dyn Store>> {
    Ok(match store {
        StoreConfig::Sqlite => Arc::new(SqliteStore::open(database)?),
        StoreConfig::Postgres { url, schema, pool } => {
            Arc::new(PostgresStore::connect(url, schema, *pool)?)
        }
    })
}

/// A model registered by its publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The model id in the sealed header (`sealtensors.seal` `model.id`).
    pub model_id: String,
    /// The publisher's signer, `ed25519:...` or `ecdsa-p256:...`: headers must
    /// verify under it.
    pub signer: String,
    /// The broker key id the model is sealed to.
    pub kid: String,
    /// Registration time, Unix seconds.
    pub created: u64,
}

/// A licence. Its bearer token is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenceRecord {
    /// Random id (public, used to revoke).
    pub id: String,
    /// Who holds it.
    pub customer: String,
    /// Model ids it opens.
    pub models: Vec<String>,
    /// How many distinct machine ids may use it.
    pub seats: u32,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// Further claims given to the policy (`input.licence`).
    pub claims: serde_json::Value,
    /// Issue time.
    pub created: u64,
    /// Revocation time, if revoked.
    pub revoked: Option<u64>,
}

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Row number.
    pub id: i64,
    /// Unix seconds (broker clock).
    pub time: u64,
    /// `licence:<id>` of the authenticated client, else `unknown`.
    pub client: String,
    /// The client's machine id, as sent.
    pub machine_id: String,
    /// The model id from the header, when it was read.
    pub model: String,
    /// The key id of the request.
    pub kid: String,
    /// `release` or `deny`.
    pub decision: String,
    /// A stable code (`released`, `licence_revoked`, ...).
    pub code: String,
    /// Why, for people.
    pub reason: String,
}

/// An attestation key an admin enrolled for one machine under a licence
/// (docs/broker.md "Attestation"): evidence of `kind` from that machine must
/// be signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationKey {
    /// The licence the machine uses.
    pub licence_id: String,
    /// The machine id the client sends.
    pub machine_id: String,
    /// The evidence kind, `tpm`.
    pub kind: String,
    /// The key's algorithm (`ecdsa-p256`, `rsa`).
    pub alg: String,
    /// The public key, DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// Enrolment time, Unix seconds.
    pub created: u64,
}

/// What taking a seat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// The machine already held a seat, or took a free one.
    Granted,
    /// Every seat is taken by other machines; the count.
    Full(u32),
    /// The licence was revoked (or deleted) after the release read it: a
    /// revocation that commits before the seat is taken refuses the release.
    Revoked,
}

/// The broker's persistent state.
pub trait Store: Send + Sync {
    /// Add or replace a model registration.
    fn register_model(&self, m: &ModelRecord) -> Result<()>;
    /// One model.
    fn model(&self, model_id: &str) -> Result<Option<ModelRecord>>;
    /// Every model.
    fn models(&self) -> Result<Vec<ModelRecord>>;
    /// Store a new licence under the SHA-256 of its token.
    fn insert_licence(&self, l: &LicenceRecord, token_sha256: &[u8; 32]) -> Result<()>;
    /// The licence a token opens.
    fn licence_by_token(&self, token_sha256: &[u8; 32]) -> Result<Option<LicenceRecord>>;
    /// Every licence.
    fn licences(&self) -> Result<Vec<LicenceRecord>>;
    /// Revoke; `false` when there is no such licence.
    fn revoke_licence(&self, id: &str, now: u64) -> Result<bool>;
    /// Take a seat for a machine (atomically: check the licence is still
    /// unrevoked, then check and insert the seat). This is the release's last
    /// store step, so a revocation committed before it refuses the release.
    fn take_seat(&self, licence: &str, machine_id: &str, seats: u32, now: u64) -> Result<Seat>;
    /// Remember a nonce; `false` when it was seen in the last `keep` seconds.
    fn fresh_nonce(&self, nonce: &[u8], now: u64, keep: u64) -> Result<bool>;
    /// Append an audit row (committed when this returns).
    fn audit(&self, row: &AuditRow) -> Result<()>;
    /// The last `limit` audit rows, newest first.
    fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>>;
    /// Enrol an attestation key: add, or replace the one for the same
    /// licence, machine id and kind.
    fn enrol_attestation_key(&self, k: &AttestationKey) -> Result<()>;
    /// The attestation key enrolled for a licence, machine id and kind.
    fn attestation_key(
        &self,
        licence_id: &str,
        machine_id: &str,
        kind: &str,
    ) -> Result<Option<AttestationKey>>;
}

/// SQLite, embedded: nothing to install.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY, signer TEXT NOT NULL, kid TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS licences (
    id TEXT PRIMARY KEY, token_sha256 BLOB NOT NULL UNIQUE, customer TEXT NOT NULL,
    models TEXT NOT NULL, seats INTEGER NOT NULL, expires INTEGER, claims TEXT NOT NULL,
    created INTEGER NOT NULL, revoked INTEGER);
CREATE TABLE IF NOT EXISTS seats (
    licence_id TEXT NOT NULL, machine_id TEXT NOT NULL, first_seen INTEGER NOT NULL,
    PRIMARY KEY (licence_id, machine_id));
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attestation_keys (
    licence_id TEXT NOT NULL, machine_id TEXT NOT NULL, kind TEXT NOT NULL, alg TEXT NOT NULL,
    public_key BLOB NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (licence_id, machine_id, kind));
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, client TEXT NOT NULL,
    machine_id TEXT NOT NULL, model TEXT NOT NULL, kid TEXT NOT NULL, decision TEXT NOT NULL,
    code TEXT NOT NULL, reason TEXT NOT NULL);
";

fn licence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LicenceRecord> {
    let models: String = r.get("models")?;
    let claims: String = r.get("claims")?;
    Ok(LicenceRecord {
        id: r.get("id")?,
        customer: r.get("customer")?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        seats: r.get("seats")?,
        expires: r.get::<_, Option<i64>>("expires")?.map(|v| v.max(0) as u64),
        claims: serde_json::from_str(&claims).unwrap_or(serde_json::Value::Null),
        created: r.get::<_, i64>("created")?.max(0) as u64,
        revoked: r.get::<_, Option<i64>>("revoked")?.map(|v| v.max(0) as u64),
    })
}

/// Make `path` private to this user: create it empty with mode 0600 (when
/// `create`), and take group and other permissions off an existing one.
fn private_file(path: &Path, create: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(m) => {
                if m.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| {
                            BrokerError::Store(format!(
                                "{shown} is readable by other users and cannot be made private ({e}); run `chmod 600 {shown}`"
                            ))
                        })?;
                    tracing::warn!(file = %shown, "made the broker database private (mode 0600)");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create {
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                    {
                        // Another instance made it first: checked on its next open.
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                            return Err(BrokerError::Store(format!("creating {shown}: {e}")))
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(BrokerError::Store(format!("{shown}: {e}"))),
        }
    }
    #[cfg(not(unix))]
    let _ = (path, create);
    Ok(())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Open (or create) the database file. It holds token hashes and the
    /// audit log: it is created mode 0600 (and an existing one readable by
    /// others is made 0600), as are its `-wal` and `-shm` files.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        private_file(path, true)?;
        let store = Self::init(Connection::open(path)?)?;
        // SQLite gives them the database's mode; made sure of here (a file
        // left by an older broker keeps its mode otherwise).
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            private_file(Path::new(&p), false)?;
        }
        Ok(store)
    }

    /// A database in memory (tests).
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteStore> {
        // WAL + FULL: a commit is on disk when it returns (audit before reply).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| BrokerError::Store("a previous store operation panicked".into()))
    }
}

impl Store for SqliteStore {
    fn register_model(&self, m: &ModelRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO models (model_id, signer, kid, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (model_id) DO UPDATE SET signer = ?2, kid = ?3",
            params![m.model_id, m.signer, m.kid, i(m.created)],
        )?;
        Ok(())
    }

    fn model(&self, model_id: &str) -> Result<Option<ModelRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT model_id, signer, kid, created FROM models WHERE model_id = ?1",
                params![model_id],
                |r| {
                    Ok(ModelRecord {
                        model_id: r.get(0)?,
                        signer: r.get(1)?,
                        kid: r.get(2)?,
                        created: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .optional()?)
    }

    fn models(&self) -> Result<Vec<ModelRecord>> {
        let c = self.conn()?;
        let mut st =
            c.prepare("SELECT model_id, signer, kid, created FROM models ORDER BY model_id")?;
        let rows = st.query_map([], |r| {
            Ok(ModelRecord {
                model_id: r.get(0)?,
                signer: r.get(1)?,
                kid: r.get(2)?,
                created: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_licence(&self, l: &LicenceRecord, token_sha256: &[u8; 32]) -> Result<()> {
        let models =
            serde_json::to_string(&l.models).map_err(|e| BrokerError::Store(e.to_string()))?;
        let claims =
            serde_json::to_string(&l.claims).map_err(|e| BrokerError::Store(e.to_string()))?;
        self.conn()?.execute(
            "INSERT INTO licences (id, token_sha256, customer, models, seats, expires, claims, created, revoked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
            params![
                l.id,
                &token_sha256[..],
                l.customer,
                models,
                l.seats,
                l.expires.map(i),
                claims,
                i(l.created)
            ],
        )?;
        Ok(())
    }

    fn licence_by_token(&self, token_sha256: &[u8; 32]) -> Result<Option<LicenceRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT * FROM licences WHERE token_sha256 = ?1",
                params![&token_sha256[..]],
                licence_from_row,
            )
            .optional()?)
    }

    fn licences(&self) -> Result<Vec<LicenceRecord>> {
        let c = self.conn()?;
        let mut st = c.prepare("SELECT * FROM licences ORDER BY created, id")?;
        let rows = st.query_map([], licence_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_licence(&self, id: &str, now: u64) -> Result<bool> {
        let c = self.conn()?;
        let n = c.execute(
            "UPDATE licences SET revoked = COALESCE(revoked, ?2) WHERE id = ?1",
            params![id, i(now)],
        )?;
        Ok(n == 1)
    }

    fn take_seat(&self, licence: &str, machine_id: &str, seats: u32, now: u64) -> Result<Seat> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The write lock is held from here: a revocation is before or after.
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked FROM licences WHERE id = ?1",
                params![licence],
                |r| r.get(0),
            )
            .optional()?;
        if !matches!(revoked, Some(None)) {
            return Ok(Seat::Revoked);
        }
        let held: bool = tx
            .query_row(
                "SELECT 1 FROM seats WHERE licence_id = ?1 AND machine_id = ?2",
                params![licence, machine_id],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if held {
            return Ok(Seat::Granted);
        }
        let taken: u32 = tx.query_row(
            "SELECT COUNT(*) FROM seats WHERE licence_id = ?1",
            params![licence],
            |r| r.get(0),
        )?;
        if taken >= seats {
            return Ok(Seat::Full(taken));
        }
        tx.execute(
            "INSERT INTO seats (licence_id, machine_id, first_seen) VALUES (?1, ?2, ?3)",
            params![licence, machine_id, i(now)],
        )?;
        tx.commit()?;
        Ok(Seat::Granted)
    }

    fn fresh_nonce(&self, nonce: &[u8], now: u64, keep: u64) -> Result<bool> {
        let c = self.conn()?;
        c.execute(
            "DELETE FROM nonces WHERE seen < ?1",
            params![i(now.saturating_sub(keep))],
        )?;
        let n = c.execute(
            "INSERT OR IGNORE INTO nonces (nonce, seen) VALUES (?1, ?2)",
            params![nonce, i(now)],
        )?;
        Ok(n == 1)
    }

    fn audit(&self, row: &AuditRow) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO audit (time, client, machine_id, model, kid, decision, code, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                i(row.time),
                row.client,
                row.machine_id,
                row.model,
                row.kid,
                row.decision,
                row.code,
                row.reason
            ],
        )?;
        Ok(())
    }

    fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT id, time, client, machine_id, model, kid, decision, code, reason
             FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                time: r.get::<_, i64>(1)?.max(0) as u64,
                client: r.get(2)?,
                machine_id: r.get(3)?,
                model: r.get(4)?,
                kid: r.get(5)?,
                decision: r.get(6)?,
                code: r.get(7)?,
                reason: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn enrol_attestation_key(&self, k: &AttestationKey) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO attestation_keys (licence_id, machine_id, kind, alg, public_key, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (licence_id, machine_id, kind)
             DO UPDATE SET alg = ?4, public_key = ?5, created = ?6",
            params![
                k.licence_id,
                k.machine_id,
                k.kind,
                k.alg,
                k.public_key,
                i(k.created)
            ],
        )?;
        Ok(())
    }

    fn attestation_key(
        &self,
        licence_id: &str,
        machine_id: &str,
        kind: &str,
    ) -> Result<Option<AttestationKey>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT licence_id, machine_id, kind, alg, public_key, created FROM attestation_keys
                 WHERE licence_id = ?1 AND machine_id = ?2 AND kind = ?3",
                params![licence_id, machine_id, kind],
                |r| {
                    Ok(AttestationKey {
                        licence_id: r.get(0)?,
                        machine_id: r.get(1)?,
                        kind: r.get(2)?,
                        alg: r.get(3)?,
                        public_key: r.get(4)?,
                        created: r.get::<_, i64>(5)?.max(0) as u64,
                    })
                },
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every test runs against each store implementation: SQLite in memory
    /// and in a file, and PostgreSQL (a throwaway schema) when
    /// SEALTENSORS_TEST_POSTGRES_URL names a test database (skipped loudly
    /// when it does not, an error when SEALTENSORS_TEST_POSTGRES_REQUIRED is set).
    fn stores() -> Vec<(Box<dyn Store>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let file = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let mut v: Vec<(Box<dyn Store>, Option<tempfile::TempDir>)> = vec![
            (Box::new(SqliteStore::in_memory().unwrap()), None),
            (Box::new(file), Some(dir)),
        ];
        if let Some(url) = PostgresStore::test_url("store tests").unwrap() {
            v.push((
                Box::new(PostgresStore::connect_throwaway(&url).unwrap()),
                None,
            ));
        }
        v
    }

    fn licence(id: &str, seats: u32) -> LicenceRecord {
        LicenceRecord {
            id: id.into(),
            customer: "acme".into(),
            models: vec!["m".into()],
            seats,
            expires: Some(100),
            claims: serde_json::json!({"tier": "gold"}),
            created: 1,
            revoked: None,
        }
    }

    #[test]
    fn licences_by_token_hash_and_revocation() {
        for (s, _dir) in stores() {
            licences(&*s);
        }
    }

    fn licences(s: &dyn Store) {
        s.insert_licence(&licence("l1", 2), &[7; 32]).unwrap();
        assert_eq!(s.licence_by_token(&[7; 32]).unwrap().unwrap().id, "l1");
        assert!(s.licence_by_token(&[8; 32]).unwrap().is_none());
        assert!(s.revoke_licence("l1", 50).unwrap());
        assert!(s.revoke_licence("l1", 60).unwrap());
        assert_eq!(
            s.licence_by_token(&[7; 32]).unwrap().unwrap().revoked,
            Some(50)
        );
        assert!(!s.revoke_licence("nope", 1).unwrap());
        // A token hash is unique.
        assert!(s.insert_licence(&licence("l2", 1), &[7; 32]).is_err());
    }

    #[test]
    fn seats_count_distinct_machines() {
        for (s, _dir) in stores() {
            seats(&*s);
        }
    }

    fn seats(s: &dyn Store) {
        s.insert_licence(&licence("l", 2), &[1; 32]).unwrap();
        s.insert_licence(&licence("other", 1), &[2; 32]).unwrap();
        assert_eq!(s.take_seat("l", "a", 2, 1).unwrap(), Seat::Granted);
        assert_eq!(s.take_seat("l", "a", 2, 1).unwrap(), Seat::Granted);
        assert_eq!(s.take_seat("l", "b", 2, 1).unwrap(), Seat::Granted);
        assert_eq!(s.take_seat("l", "c", 2, 1).unwrap(), Seat::Full(2));
        assert_eq!(s.take_seat("l", "a", 2, 1).unwrap(), Seat::Granted);
        assert_eq!(s.take_seat("other", "c", 1, 1).unwrap(), Seat::Granted);
        // Revoked (or unknown): refused at the seat, held or not.
        assert!(s.revoke_licence("l", 2).unwrap());
        assert_eq!(s.take_seat("l", "a", 2, 3).unwrap(), Seat::Revoked);
        assert_eq!(s.take_seat("l", "z", 9, 3).unwrap(), Seat::Revoked);
        assert_eq!(s.take_seat("nope", "a", 2, 3).unwrap(), Seat::Revoked);
    }

    #[test]
    fn nonces_are_single_use_within_the_window() {
        for (s, _dir) in stores() {
            nonces(&*s);
        }
    }

    fn nonces(s: &dyn Store) {
        assert!(s.fresh_nonce(b"n1", 1000, 600).unwrap());
        assert!(!s.fresh_nonce(b"n1", 1001, 600).unwrap());
        assert!(s.fresh_nonce(b"n2", 1001, 600).unwrap());
        // Forgotten only once older than the window.
        assert!(s.fresh_nonce(b"n1", 2000, 600).unwrap());
    }

    #[test]
    fn audit_rows_newest_first() {
        for (s, _dir) in stores() {
            audit(&*s);
        }
    }

    fn audit(s: &dyn Store) {
        for k in 0..3 {
            s.audit(&AuditRow {
                id: 0,
                time: k,
                client: "c".into(),
                machine_id: "m".into(),
                model: "x".into(),
                kid: "k".into(),
                decision: "deny".into(),
                code: format!("c{k}"),
                reason: "r".into(),
            })
            .unwrap();
        }
        let rows = s.audit_rows(2).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].code, "c2");
    }

    #[test]
    fn attestation_keys_by_licence_machine_and_kind() {
        for (s, _dir) in stores() {
            attestation_keys(&*s);
        }
    }

    fn attestation_keys(s: &dyn Store) {
        let k = AttestationKey {
            licence_id: "l".into(),
            machine_id: "m".into(),
            kind: "tpm".into(),
            alg: "ecdsa-p256".into(),
            public_key: vec![1, 2, 3],
            created: 5,
        };
        assert!(s.attestation_key("l", "m", "tpm").unwrap().is_none());
        s.enrol_attestation_key(&k).unwrap();
        assert_eq!(s.attestation_key("l", "m", "tpm").unwrap(), Some(k.clone()));
        assert!(s.attestation_key("l", "other", "tpm").unwrap().is_none());
        assert!(s.attestation_key("l2", "m", "tpm").unwrap().is_none());
        // Re-enrolling replaces the key.
        let k2 = AttestationKey {
            public_key: vec![9],
            ..k
        };
        s.enrol_attestation_key(&k2).unwrap();
        assert_eq!(s.attestation_key("l", "m", "tpm").unwrap(), Some(k2));
    }

    /// Several broker instances sharing one database: each thread has its
    /// own store (its own connections), as separate processes would.
    fn instances(n: usize) -> Vec<Vec<Arc<dyn Store>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let mut sets: Vec<Vec<Arc<dyn Store>>> = vec![(0..n)
            .map(|_| Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn Store>)
            .collect()];
        if let Some(url) = PostgresStore::test_url("seats across instances").unwrap() {
            let first = PostgresStore::connect_throwaway(&url).unwrap();
            let schema = first.schema().to_string();
            let mut set: Vec<Arc<dyn Store>> = vec![Arc::new(first)];
            for _ in 1..n {
                set.push(Arc::new(PostgresStore::connect(&url, &schema, 4).unwrap()));
            }
            // The throwaway schema goes with the first store: drop it last.
            set.rotate_left(1);
            sets.push(set);
        }
        std::mem::forget(dir); // removed with the temp folder; the stores outlive this fn
        sets
    }

    #[test]
    fn seats_and_nonces_hold_across_instances_under_concurrency() {
        for set in instances(6) {
            set[0].insert_licence(&licence("lic", 7), &[3; 32]).unwrap();
            let barrier = Arc::new(std::sync::Barrier::new(set.len()));
            let handles: Vec<_> = set
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let (s, barrier) = (s.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let mut granted = 0;
                        for m in 0..5 {
                            let machine = format!("m{k}-{m}");
                            if s.take_seat("lic", &machine, 7, 1).unwrap() == Seat::Granted {
                                granted += 1;
                            }
                        }
                        let fresh = (0..20)
                            .filter(|n| s.fresh_nonce(&[*n as u8; 16], 1000, 600).unwrap())
                            .count();
                        (granted, fresh)
                    })
                })
                .collect();
            let results: Vec<(usize, usize)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            // 30 distinct machines asked; exactly 7 seats were given.
            assert_eq!(results.iter().map(|r| r.0).sum::<usize>(), 7);
            // Each of the 20 nonces was fresh exactly once, across instances.
            assert_eq!(results.iter().map(|r| r.1).sum::<usize>(), 20);
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_database_and_its_wal_files_are_private() {
        // Issue 15: the database (token hashes, audit log) was created 0644.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let s = SqliteStore::open(&path).unwrap();
        s.insert_licence(&licence("l1", 1), &[1; 32]).unwrap();
        audit(&s);
        assert_eq!(mode(&path), 0o600);
        for suffix in ["-wal", "-shm"] {
            let p = dir.path().join(format!("b.db{suffix}"));
            assert!(p.exists(), "{suffix}");
            assert_eq!(mode(&p), 0o600, "{suffix}");
        }
        drop(s);
        // One left readable (an older broker's): made private on open.
        for f in ["b.db", "b.db-wal", "b.db-shm"] {
            let p = dir.path().join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.audit_rows(10).unwrap().len(), 3);
        for f in ["b.db", "b.db-wal", "b.db-shm"] {
            let p = dir.path().join(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            }
        }
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_licence(&licence("l1", 1), &[1; 32]).unwrap();
            s.revoke_licence("l1", 9).unwrap();
            audit(&s);
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.licence_by_token(&[1; 32]).unwrap().unwrap().revoked,
            Some(9)
        );
        assert_eq!(s.audit_rows(10).unwrap().len(), 3);
    }

    #[test]
    fn state_survives_reconnecting_to_postgres() {
        let Some(url) = PostgresStore::test_url("reconnecting").unwrap() else {
            return;
        };
        let first = PostgresStore::connect_throwaway(&url).unwrap();
        first.insert_licence(&licence("l1", 1), &[1; 32]).unwrap();
        first.revoke_licence("l1", 9).unwrap();
        audit(&first);
        // A second instance (a new pool, the migration run again) sees it all.
        let again = PostgresStore::connect(&url, first.schema(), 2).unwrap();
        assert_eq!(
            again.licence_by_token(&[1; 32]).unwrap().unwrap().revoked,
            Some(9)
        );
        assert_eq!(again.audit_rows(10).unwrap().len(), 3);
        assert_eq!(again.licences().unwrap()[0].claims["tier"], "gold");
    }
}

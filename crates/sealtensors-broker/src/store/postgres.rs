//! PostgreSQL, for several broker instances sharing one database
//! (`[store] kind = "postgres"`, docs/broker.md "Store").
//!
//! Concurrency between instances:
//! - every statement runs at READ COMMITTED (PostgreSQL's default) and
//!   autocommits unless said otherwise, with `synchronous_commit = on` forced
//!   for the session: an audit row is flushed to the server's WAL before
//!   [`Store::audit`] returns, so before the reply;
//! - a seat is taken in one transaction that first takes a transaction-scoped
//!   advisory lock on the licence id (`pg_advisory_xact_lock`), so two
//!   instances can never both see a free last seat; a machine that already
//!   holds a seat is answered without the lock (seats are never given back);
//! - a nonce is claimed by `INSERT ... ON CONFLICT DO NOTHING`: of two
//!   concurrent requests with one nonce exactly one inserts the row;
//! - a revocation is one `UPDATE`; a release reads its licence afresh, so the
//!   next release on any instance sees it;
//! - the schema is created at start inside a transaction holding an advisory
//!   lock, so instances starting together do not race.
//!
//! The [`Store`] trait is blocking (the broker calls it from
//! `spawn_blocking`); this store owns a small tokio runtime that drives the
//! connections of its pool. Do not call it from inside an async task.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::Json;
use tokio_postgres::{NoTls, Row};

use super::{i, AttestationKey, AuditRow, LicenceRecord, ModelRecord, Seat, Store};
use crate::error::{BrokerError, Result};

/// The schema version this code writes; `schema_version` records it.
const VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY, signer TEXT NOT NULL, kid TEXT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS licences (
    id TEXT PRIMARY KEY, token_sha256 BYTEA NOT NULL UNIQUE, customer TEXT NOT NULL,
    models JSONB NOT NULL, seats BIGINT NOT NULL, expires BIGINT, claims JSONB NOT NULL,
    created BIGINT NOT NULL, revoked BIGINT);
CREATE TABLE IF NOT EXISTS seats (
    licence_id TEXT NOT NULL, machine_id TEXT NOT NULL, first_seen BIGINT NOT NULL,
    PRIMARY KEY (licence_id, machine_id));
CREATE TABLE IF NOT EXISTS nonces (nonce BYTEA PRIMARY KEY, seen BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen);
CREATE TABLE IF NOT EXISTS attestation_keys (
    licence_id TEXT NOT NULL, machine_id TEXT NOT NULL, kind TEXT NOT NULL, alg TEXT NOT NULL,
    public_key BYTEA NOT NULL, created BIGINT NOT NULL,
    PRIMARY KEY (licence_id, machine_id, kind));
CREATE TABLE IF NOT EXISTS audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time BIGINT NOT NULL,
    client TEXT NOT NULL, machine_id TEXT NOT NULL, model TEXT NOT NULL, kid TEXT NOT NULL,
    decision TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL);
";

/// The advisory lock key that serialises schema creation (any constant).
const SCHEMA_LOCK: i64 = 0x5345_414c_5354_0001;

fn pg(e: tokio_postgres::Error) -> BrokerError {
    // The server's own message when there is one ("relation ... does not
    // exist", "password authentication failed ..."); never the URL.
    match e.as_db_error() {
        Some(db) => BrokerError::Postgres(format!("{}: {}", db.code().code(), db.message())),
        None => BrokerError::Postgres(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> BrokerError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => BrokerError::Postgres(format!("connection pool: {other}")),
    }
}

/// Whether `s` may name a schema without quoting.
fn valid_schema(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && s.len() <= 63
}

/// PostgreSQL through a connection pool.
pub struct PostgresStore {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    schema: String,
    /// Drop the schema with the store (tests' throwaway schemas).
    throwaway: bool,
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or the
    /// key-value form), use `schema` (created when missing; `public` is the
    /// default of the configuration), keep at most `pool_size` connections,
    /// and create the tables when missing.
    pub fn connect(url: &str, schema: &str, pool_size: usize) -> Result<PostgresStore> {
        if !valid_schema(schema) {
            return Err(BrokerError::Config(format!(
                "[store] schema {schema:?}: use 1 to 63 of a-z, 0-9 and _, not starting with a digit"
            )));
        }
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| {
            BrokerError::Config(format!(
                "[store] url is not a PostgreSQL connection string ({e}); write postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        // Durability of every commit, whatever the server's default, and the
        // schema for unqualified names.
        let mut options = cfg.get_options().map(str::to_string).unwrap_or_default();
        options.push_str(&format!(
            " -c synchronous_commit=on -c search_path={schema}"
        ));
        cfg.options(options.trim());
        cfg.application_name("sealtensors-broker");
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(5));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sealtensors-postgres")
            .enable_all()
            .build()?;
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| BrokerError::Postgres(format!("connection pool: {e}")))?;
        let store = PostgresStore {
            rt: Some(rt),
            pool,
            schema: schema.to_string(),
            throwaway: false,
        };
        store.migrate(schema)?;
        Ok(store)
    }

    /// A store in a new schema of its own (`t_` and 64 random bits), dropped
    /// with the store: tests sharing one database do not see each other.
    pub fn connect_throwaway(url: &str) -> Result<PostgresStore> {
        let r: [u8; 8] = sealtensors::crypto::random_array()
            .map_err(|e| BrokerError::Postgres(format!("a random schema name: {e}")))?;
        let schema: String = std::iter::once("t_".to_string())
            .chain(r.iter().map(|b| format!("{b:02x}")))
            .collect();
        let mut s = PostgresStore::connect(url, &schema, 16)?;
        s.throwaway = true;
        Ok(s)
    }

    /// The test database, from `SEALTENSORS_TEST_POSTGRES_URL`
    /// (`scripts/pg-test-server.sh` starts one). When it is unset, `what` is
    /// reported as skipped on stderr, past the test harness's capture, and
    /// `None` is returned; with `SEALTENSORS_TEST_POSTGRES_REQUIRED` set (CI),
    /// a missing URL is an error instead.
    pub fn test_url(what: &str) -> Result<Option<String>> {
        use std::io::Write;
        match std::env::var("SEALTENSORS_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => Ok(Some(u)),
            _ if std::env::var_os("SEALTENSORS_TEST_POSTGRES_REQUIRED").is_some() => {
                Err(BrokerError::Config(
                    "SEALTENSORS_TEST_POSTGRES_REQUIRED is set but SEALTENSORS_TEST_POSTGRES_URL is not: run the tests under scripts/pg-test-server.sh run ...".into(),
                ))
            }
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED (PostgreSQL): {what}: SEALTENSORS_TEST_POSTGRES_URL is unset; run `scripts/pg-test-server.sh run cargo test -p sealtensors-broker`"
                );
                Ok(None)
            }
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn run<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => Err(BrokerError::Postgres("the store was shut down".into())),
        }
    }

    fn migrate(&self, schema: &str) -> Result<()> {
        self.run(async {
            let mut c = self.pool.get().await.map_err(pool_err)?;
            let tx = c.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(pg)?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(pg)?;
            tx.batch_execute(SCHEMA).await.map_err(pg)?;
            let v: Option<i32> = tx
                .query_opt("SELECT max(version) FROM schema_version", &[])
                .await
                .map_err(pg)?
                .map(|r| r.try_get::<_, Option<i32>>(0))
                .transpose()
                .map_err(pg)?
                .flatten();
            match v {
                None => {
                    tx.execute("INSERT INTO schema_version VALUES ($1)", &[&VERSION])
                        .await
                        .map_err(pg)?;
                }
                Some(v) if v > VERSION => {
                    return Err(BrokerError::Postgres(format!(
                        "the database schema is version {v}, newer than this broker's {VERSION}; upgrade the broker"
                    )))
                }
                Some(_) => {}
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn drop_schema(&self) -> Result<()> {
        let schema = &self.schema;
        if !valid_schema(schema) || !schema.starts_with("t_") {
            return Err(BrokerError::Config(format!(
                "refusing to drop schema {schema:?}"
            )));
        }
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .map_err(pg)
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if self.throwaway {
            if let Err(e) = self.drop_schema() {
                tracing::warn!(error = %e, "could not drop a throwaway schema");
            }
        }
        // Without waiting: dropping a runtime may not block inside another
        // runtime's thread (the broker's), and the connections just close.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

type RowResult<T> = std::result::Result<T, tokio_postgres::Error>;

fn model_from_row(r: &Row) -> RowResult<ModelRecord> {
    Ok(ModelRecord {
        model_id: r.try_get(0)?,
        signer: r.try_get(1)?,
        kid: r.try_get(2)?,
        created: u(r.try_get(3)?),
    })
}

const LICENCE_COLUMNS: &str =
    "id, customer, models, seats, expires, claims, created, revoked FROM licences";

fn licence_from_row(r: &Row) -> RowResult<LicenceRecord> {
    let models: Json<serde_json::Value> = r.try_get(2)?;
    Ok(LicenceRecord {
        id: r.try_get(0)?,
        customer: r.try_get(1)?,
        models: serde_json::from_value(models.0).unwrap_or_default(),
        seats: u32::try_from(r.try_get::<_, i64>(3)?.max(0)).unwrap_or(u32::MAX),
        expires: r.try_get::<_, Option<i64>>(4)?.map(u),
        claims: r.try_get::<_, Json<serde_json::Value>>(5)?.0,
        created: u(r.try_get(6)?),
        revoked: r.try_get::<_, Option<i64>>(7)?.map(u),
    })
}

impl Store for PostgresStore {
    fn register_model(&self, m: &ModelRecord) -> Result<()> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO models (model_id, signer, kid, created) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (model_id) DO UPDATE SET signer = $2, kid = $3",
                &[&m.model_id, &m.signer, &m.kid, &i(m.created)],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn model(&self, model_id: &str) -> Result<Option<ModelRecord>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c
                .prepare_cached(
                    "SELECT model_id, signer, kid, created FROM models WHERE model_id = $1",
                )
                .await
                .map_err(pg)?;
            let r = c.query_opt(&st, &[&model_id]).await.map_err(pg)?;
            r.as_ref().map(model_from_row).transpose().map_err(pg)
        })
    }

    fn models(&self) -> Result<Vec<ModelRecord>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let rows = c
                .query(
                    "SELECT model_id, signer, kid, created FROM models ORDER BY model_id",
                    &[],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(model_from_row)
                .collect::<RowResult<_>>()
                .map_err(pg)
        })
    }

    fn insert_licence(&self, l: &LicenceRecord, token_sha256: &[u8; 32]) -> Result<()> {
        let models =
            serde_json::to_value(&l.models).map_err(|e| BrokerError::Store(e.to_string()))?;
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO licences (id, token_sha256, customer, models, seats, expires, claims, created, revoked)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
                &[
                    &l.id,
                    &&token_sha256[..],
                    &l.customer,
                    &Json(&models),
                    &i64::from(l.seats),
                    &l.expires.map(i),
                    &Json(&l.claims),
                    &i(l.created),
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn licence_by_token(&self, token_sha256: &[u8; 32]) -> Result<Option<LicenceRecord>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c
                .prepare_cached(&format!("SELECT {LICENCE_COLUMNS} WHERE token_sha256 = $1"))
                .await
                .map_err(pg)?;
            let r = c.query_opt(&st, &[&&token_sha256[..]]).await.map_err(pg)?;
            r.as_ref().map(licence_from_row).transpose().map_err(pg)
        })
    }

    fn licences(&self) -> Result<Vec<LicenceRecord>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let rows = c
                .query(
                    &format!("SELECT {LICENCE_COLUMNS} ORDER BY created, id"),
                    &[],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(licence_from_row)
                .collect::<RowResult<_>>()
                .map_err(pg)
        })
    }

    fn revoke_licence(&self, id: &str, now: u64) -> Result<bool> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let n = c
                .execute(
                    "UPDATE licences SET revoked = COALESCE(revoked, $2) WHERE id = $1",
                    &[&id, &i(now)],
                )
                .await
                .map_err(pg)?;
            Ok(n == 1)
        })
    }

    fn take_seat(&self, licence: &str, machine_id: &str, seats: u32, now: u64) -> Result<Seat> {
        self.run(async {
            let mut c = self.pool.get().await.map_err(pool_err)?;
            let tx = c.transaction().await.map_err(pg)?;
            // FOR SHARE holds the licence row until commit: a revocation (an
            // UPDATE of that row) commits before this reads it, or waits.
            const LICENCE: &str = "SELECT l.revoked, EXISTS (SELECT 1 FROM seats s
                 WHERE s.licence_id = l.id AND s.machine_id = $2)
                 FROM licences l WHERE l.id = $1 FOR SHARE OF l";
            let st = tx.prepare_cached(LICENCE).await.map_err(pg)?;
            let Some(row) = tx
                .query_opt(&st, &[&licence, &machine_id])
                .await
                .map_err(pg)?
            else {
                return Ok(Seat::Revoked);
            };
            let revoked: Option<i64> = row.try_get(0).map_err(pg)?;
            if revoked.is_some() {
                return Ok(Seat::Revoked);
            }
            // Seats are never given back: a held seat needs no more.
            if row.try_get::<_, bool>(1).map_err(pg)? {
                tx.commit().await.map_err(pg)?;
                return Ok(Seat::Granted);
            }
            // One seat-taker per licence at a time, across every instance.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&licence],
            )
            .await
            .map_err(pg)?;
            if tx
                .query_opt(
                    "SELECT 1 FROM seats WHERE licence_id = $1 AND machine_id = $2",
                    &[&licence, &machine_id],
                )
                .await
                .map_err(pg)?
                .is_some()
            {
                tx.commit().await.map_err(pg)?;
                return Ok(Seat::Granted);
            }
            let taken: i64 = tx
                .query_one(
                    "SELECT count(*) FROM seats WHERE licence_id = $1",
                    &[&licence],
                )
                .await
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            if taken >= i64::from(seats) {
                tx.commit().await.map_err(pg)?;
                return Ok(Seat::Full(u32::try_from(taken).unwrap_or(u32::MAX)));
            }
            tx.execute(
                "INSERT INTO seats (licence_id, machine_id, first_seen) VALUES ($1, $2, $3)",
                &[&licence, &machine_id, &i(now)],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(Seat::Granted)
        })
    }

    fn fresh_nonce(&self, nonce: &[u8], now: u64, keep: u64) -> Result<bool> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let del = c
                .prepare_cached("DELETE FROM nonces WHERE seen < $1")
                .await
                .map_err(pg)?;
            c.execute(&del, &[&i(now.saturating_sub(keep))])
                .await
                .map_err(pg)?;
            let ins = c
                .prepare_cached(
                    "INSERT INTO nonces (nonce, seen) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
                )
                .await
                .map_err(pg)?;
            let n = c.execute(&ins, &[&nonce, &i(now)]).await.map_err(pg)?;
            Ok(n == 1)
        })
    }

    fn enrol_attestation_key(&self, k: &AttestationKey) -> Result<()> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO attestation_keys (licence_id, machine_id, kind, alg, public_key, created)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (licence_id, machine_id, kind)
                 DO UPDATE SET alg = $4, public_key = $5, created = $6",
                &[
                    &k.licence_id,
                    &k.machine_id,
                    &k.kind,
                    &k.alg,
                    &k.public_key,
                    &i(k.created),
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn attestation_key(
        &self,
        licence_id: &str,
        machine_id: &str,
        kind: &str,
    ) -> Result<Option<AttestationKey>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c
                .prepare_cached(
                    "SELECT licence_id, machine_id, kind, alg, public_key, created FROM attestation_keys
                     WHERE licence_id = $1 AND machine_id = $2 AND kind = $3",
                )
                .await
                .map_err(pg)?;
            let Some(r) = c
                .query_opt(&st, &[&licence_id, &machine_id, &kind])
                .await
                .map_err(pg)?
            else {
                return Ok(None);
            };
            let key = (|| -> RowResult<AttestationKey> {
                Ok(AttestationKey {
                    licence_id: r.try_get(0)?,
                    machine_id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    alg: r.try_get(3)?,
                    public_key: r.try_get(4)?,
                    created: u(r.try_get(5)?),
                })
            })()
            .map_err(pg)?;
            Ok(Some(key))
        })
    }

    fn audit(&self, row: &AuditRow) -> Result<()> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c
                .prepare_cached(
                    "INSERT INTO audit (time, client, machine_id, model, kid, decision, code, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .await
                .map_err(pg)?;
            // Autocommit with synchronous_commit = on: durable on return.
            c.execute(
                &st,
                &[
                    &i(row.time),
                    &row.client,
                    &row.machine_id,
                    &row.model,
                    &row.kid,
                    &row.decision,
                    &row.code,
                    &row.reason,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>> {
        self.run(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let rows = c
                .query(
                    "SELECT id, time, client, machine_id, model, kid, decision, code, reason
                     FROM audit ORDER BY id DESC LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRow {
                        id: r.try_get(0)?,
                        time: u(r.try_get(1)?),
                        client: r.try_get(2)?,
                        machine_id: r.try_get(3)?,
                        model: r.try_get(4)?,
                        kid: r.try_get(5)?,
                        decision: r.try_get(6)?,
                        code: r.try_get(7)?,
                        reason: r.try_get(8)?,
                    })
                })
                .collect::<RowResult<_>>()
                .map_err(pg)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["public", "broker", "_t1", "t_0123abcd"] {
            assert!(valid_schema(ok), "{ok}");
        }
        for bad in ["", "1a", "Broker", "a;drop", "a b", "a\"b", &"a".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}

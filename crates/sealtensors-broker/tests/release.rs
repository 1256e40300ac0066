//! End to end against a real broker on 127.0.0.1: a model sealed to the
//! broker opens through the core library's client with a valid licence, and
//! every attack is refused with its exact code and an audit row.
//!
//! These tests run twice: here with SQLite, and as `release_postgres` (which
//! includes this file) with PostgreSQL, skipped loudly when
//! SEALTENSORS_TEST_POSTGRES_URL is unset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sealtensors::hpke::HpkeSecretKey;
use sealtensors::keys::{
    load_recipient, BrokerAccess, BrokerKek, BrokerRecipient, ReleaseRequest, SigningKey,
    X25519Identity,
};
use sealtensors::{Dtype, Error, ErrorClass, OpenOptions, SealOptions, SealedFile, Sealer};
use sealtensors_broker::config::KeyConfig;
use sealtensors_broker::{hash_token, Broker, Config, PostgresStore, Running, SqliteStore, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests";
const MODEL: &str = "acme/tiny";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    )
}

struct Fx {
    dir: tempfile::TempDir,
    running: Option<Running>,
    addr: SocketAddr,
    store: Arc<dyn Store>,
    kek_public: sealtensors::keys::BrokerPublicKey,
    seed: [u8; 32],
    signer: SigningKey,
    data: Vec<u8>,
}

struct Opts {
    rate: u32,
    max_body: usize,
    ttl: u64,
    max_connections: usize,
    max_connections_per_client: usize,
    request_timeout: u64,
    /// Revoke the licence just before each seat step (a revocation racing
    /// a release in flight).
    revoke_before_seat: bool,
    /// The KEK as a broker configuration names it (a pkcs11: URI, a key
    /// file); `None`: a fresh X25519 key in memory.
    kek: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            rate: 10_000,
            max_body: 256 * 1024,
            ttl: 0,
            max_connections: 64,
            max_connections_per_client: 64,
            request_timeout: 30,
            revoke_before_seat: false,
            kek: None,
        }
    }
}

/// A store that revokes a licence the moment a release reaches its seat
/// step: the release read the licence unrevoked, and the revocation commits
/// before the seat.
struct RevokeBeforeSeat(Arc<dyn Store>);

impl Store for RevokeBeforeSeat {
    fn register_model(
        &self,
        m: &sealtensors_broker::ModelRecord,
    ) -> sealtensors_broker::Result<()> {
        self.0.register_model(m)
    }
    fn model(
        &self,
        id: &str,
    ) -> sealtensors_broker::Result<Option<sealtensors_broker::ModelRecord>> {
        self.0.model(id)
    }
    fn models(&self) -> sealtensors_broker::Result<Vec<sealtensors_broker::ModelRecord>> {
        self.0.models()
    }
    fn insert_licence(
        &self,
        l: &sealtensors_broker::LicenceRecord,
        h: &[u8; 32],
    ) -> sealtensors_broker::Result<()> {
        self.0.insert_licence(l, h)
    }
    fn licence_by_token(
        &self,
        h: &[u8; 32],
    ) -> sealtensors_broker::Result<Option<sealtensors_broker::LicenceRecord>> {
        self.0.licence_by_token(h)
    }
    fn licences(&self) -> sealtensors_broker::Result<Vec<sealtensors_broker::LicenceRecord>> {
        self.0.licences()
    }
    fn revoke_licence(&self, id: &str, now: u64) -> sealtensors_broker::Result<bool> {
        self.0.revoke_licence(id, now)
    }
    fn take_seat(
        &self,
        licence: &str,
        machine_id: &str,
        seats: u32,
        now: u64,
    ) -> sealtensors_broker::Result<sealtensors_broker::store::Seat> {
        self.0.revoke_licence(licence, now)?;
        self.0.take_seat(licence, machine_id, seats, now)
    }
    fn fresh_nonce(&self, n: &[u8], now: u64, keep: u64) -> sealtensors_broker::Result<bool> {
        self.0.fresh_nonce(n, now, keep)
    }
    fn audit(&self, row: &sealtensors_broker::AuditRow) -> sealtensors_broker::Result<()> {
        self.0.audit(row)
    }
    fn audit_rows(
        &self,
        limit: u32,
    ) -> sealtensors_broker::Result<Vec<sealtensors_broker::AuditRow>> {
        self.0.audit_rows(limit)
    }
    fn enrol_attestation_key(
        &self,
        k: &sealtensors_broker::store::AttestationKey,
    ) -> sealtensors_broker::Result<()> {
        self.0.enrol_attestation_key(k)
    }
    fn attestation_key(
        &self,
        licence_id: &str,
        machine_id: &str,
        kind: &str,
    ) -> sealtensors_broker::Result<Option<sealtensors_broker::store::AttestationKey>> {
        self.0.attestation_key(licence_id, machine_id, kind)
    }
}

/// The store these tests run against: PostgreSQL when compiled as the
/// `release_postgres` test (a throwaway schema; `None`, reported, when no
/// test database is configured), else SQLite in a file.
fn test_store(dir: &Path) -> Option<Arc<dyn Store>> {
    if module_path!().starts_with("release_postgres") {
        let url = PostgresStore::test_url("end-to-end release tests").unwrap()?;
        Some(Arc::new(PostgresStore::connect_throwaway(&url).unwrap()))
    } else {
        Some(Arc::new(SqliteStore::open(&dir.join("broker.db")).unwrap()))
    }
}

impl Fx {
    /// A broker with a registered model; `None` when the store is skipped.
    fn new(o: Opts) -> Option<Fx> {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path())?;
        let kek = match &o.kek {
            Some(spec) => BrokerKek::load("k1", Path::new(spec)).unwrap(),
            None => BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap(),
        };
        let kek_public = kek.public_key();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            insecure_plain_http: false,
            database: dir.path().join("broker.db"),
            admin_token_sha256: hash_token(ADMIN),
            keys: vec![KeyConfig {
                kid: "k1".into(),
                identity: PathBuf::from("unused"),
            }],
            release_ttl: o.ttl,
            max_body: o.max_body,
            rate_per_minute: o.rate,
            replay_window: 300,
            max_connections: o.max_connections,
            max_connections_per_client: o.max_connections_per_client,
            request_timeout: o.request_timeout,
            store: Default::default(),
        };
        let keks = HashMap::from([("k1".to_string(), kek)]);
        let served: Arc<dyn Store> = if o.revoke_before_seat {
            Arc::new(RevokeBeforeSeat(store.clone()))
        } else {
            store.clone()
        };
        let broker = Broker::with_keks(&config, served, keks).unwrap();
        let running = Running::start(broker, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = running.addr;
        let data: Vec<u8> = (0..4096u32).flat_map(|i| i.to_le_bytes()).collect();
        let seed: [u8; 32] = sealtensors::crypto::random_array().unwrap();
        let signer = SigningKey::from_seed(seed).unwrap();
        let fx = Fx {
            dir,
            running: Some(running),
            addr,
            store,
            kek_public,
            seed,
            signer,
            data,
        };
        let (s, _) = fx.admin(
            "POST",
            "/admin/models",
            Some(json!({
            "model_id": MODEL, "signer": fx.signer.verifying_key().to_string(), "kid": "k1"})),
        );
        assert_eq!(s, 201);
        Some(fx)
    }

    fn url(&self, kid: &str) -> String {
        format!("http://{}/keys/{kid}", self.addr)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let auth = format!("Bearer {ADMIN}");
        let a = agent();
        let r = match (method, body) {
            ("GET", _) => a.get(&url).header("authorization", &auth).call(),
            (_, Some(b)) => a.post(&url).header("authorization", &auth).send_json(b),
            (_, None) => a.post(&url).header("authorization", &auth).send_empty(),
        };
        let mut r = r.unwrap();
        let s = r.status().as_u16();
        let v = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        (s, v)
    }

    /// Issue a licence; returns (id, token).
    fn licence(&self, seats: u32, expires: Option<u64>, claims: Value) -> (String, String) {
        let (s, v) = self.admin("POST", "/admin/licences", Some(json!({
            "customer": "acme", "models": [MODEL], "seats": seats, "expires": expires, "claims": claims})));
        assert_eq!(s, 201, "{v}");
        (
            v["licence"]["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    /// Seal the test model to the broker key at `url`.
    fn seal(
        &self,
        name: &str,
        recipient: Box<dyn sealtensors::keys::Recipient>,
        policy: Option<&str>,
        sign: bool,
    ) -> PathBuf {
        let plain = self.dir.path().join("plain.safetensors");
        if !plain.exists() {
            let t = sealtensors::TensorRef {
                name: "w".into(),
                dtype: Dtype::F32,
                shape: vec![64, 64],
                data: &self.data,
            };
            sealtensors::write_plain(&plain, &[t], None, false).unwrap();
        }
        let out = self.dir.path().join(name);
        let sealer = Sealer::new(SealOptions {
            recipients: vec![recipient],
            signing_key: if sign {
                Some(SigningKey::from_seed(self.seed).unwrap())
            } else {
                None
            },
            model_id: MODEL.into(),
            model_version: "1".into(),
            policy: policy.map(str::to_string),
            ..Default::default()
        })
        .unwrap();
        sealer.seal_file(&plain, &out).unwrap();
        out
    }

    fn sealed(&self) -> PathBuf {
        let out = self.dir.path().join("sealed.safetensors");
        if !out.exists() {
            // Through the public-key fetch (GET /keys/k1), as `seal -r URL` does.
            self.seal(
                "sealed.safetensors",
                load_recipient(&self.url("k1")).unwrap(),
                None,
                true,
            );
        }
        out
    }

    fn open(&self, p: &Path, access: BrokerAccess) -> sealtensors::Result<SealedFile> {
        SealedFile::open(
            p,
            &OpenOptions {
                trusted: vec![self.signer.verifying_key()],
                broker: Some(access),
                ..Default::default()
            },
        )
    }

    fn access(&self, token: &str, machine: &str) -> BrokerAccess {
        BrokerAccess::new([self.addr.to_string()], Some(token.to_string())).with_machine_id(machine)
    }

    /// The codes of the release rows, oldest first (admin rows left out).
    fn audit_codes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .store
            .audit_rows(1000)
            .unwrap()
            .into_iter()
            .filter(|r| !r.decision.starts_with("admin"))
            .map(|r| r.code)
            .collect();
        v.reverse();
        v
    }

    /// A raw release request, for attacks the library client never makes.
    fn raw_release(&self, kid: &str, token: &str, body: &[u8]) -> (u16, Value) {
        let mut r = agent()
            .post(format!("{}/release", self.url(kid)))
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let s = r.status().as_u16();
        (s, r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    }

    fn request(&self, header: &[u8], nonce: &[u8]) -> Vec<u8> {
        let ek = HpkeSecretKey::generate().unwrap();
        serde_json::to_vec(&ReleaseRequest {
            header: b64(header),
            ek: b64(&ek.public_key()),
            machine_id: "m1".into(),
            nonce: b64(nonce),
            time: now(),
            file_name: None,
            process: None,
            tensors: None,
            attestation: None,
        })
        .unwrap()
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().unwrap();
        }
    }
}

fn header_bytes(p: &Path) -> Vec<u8> {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[..8 + n].to_vec()
}

fn denied(e: &Error) -> (u16, String) {
    match e.kind() {
        Error::BrokerDenied { status, reason, .. } => (*status, reason.clone()),
        other => panic!("expected BrokerDenied, got {other:?}"),
    }
}

#[test]
fn released_key_opens_the_model_then_revocation_refuses_with_the_brokers_reason() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (id, token) = fx.licence(2, None, json!({}));
    let p = fx.sealed();
    let f = fx.open(&p, fx.access(&token, "m1")).unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);
    assert_eq!(f.authenticity().name(), "signed-trusted");

    let (s, _) = fx.admin("POST", &format!("/admin/licences/{id}/revoke"), None);
    assert_eq!(s, 200);
    let e = fx.open(&p, fx.access(&token, "m1")).err().unwrap();
    let (status, reason) = denied(&e);
    assert_eq!(status, 403);
    assert!(
        reason.contains(&format!("licence {id} was revoked")),
        "{reason}"
    );
    assert_eq!(e.class(), ErrorClass::PolicyDenied);
    assert!(e.to_string().contains("refused to release"), "{e}");
    assert_eq!(fx.audit_codes(), ["released", "licence_revoked"]);
    // The audit is visible to the admin, and not to anyone else.
    let (s, rows) = fx.admin("GET", "/admin/audit", None);
    assert_eq!(s, 200);
    assert_eq!(rows[0]["code"], "licence_revoked");
    // Before it, the revocation's own row (admin actions are audited too).
    assert_eq!(rows[1]["code"], "revoke_licence");
    assert_eq!(rows[2]["client"], format!("licence:{id}"));
    let mut r = agent()
        .get(format!("http://{}/admin/audit", fx.addr))
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let _ = r.body_mut().read_to_string();
}

#[test]
fn a_released_key_is_cached_for_the_brokers_ttl_only() {
    let Some(fx) = Fx::new(Opts {
        ttl: 600,
        ..Default::default()
    }) else {
        return;
    };
    let (id, token) = fx.licence(1, None, json!({}));
    let p = fx.sealed();
    let access = fx.access(&token, "m1");
    fx.open(&p, access.clone()).unwrap();
    fx.admin("POST", &format!("/admin/licences/{id}/revoke"), None);
    // Within the TTL the same loader still holds the key (SPEC §6.6) ...
    fx.open(&p, access).unwrap();
    // ... and so does every loader of this process with the same credentials
    // (the reader is the process: shards opened one at a time share a release) ...
    fx.open(&p, fx.access(&token, "m1")).unwrap();
    // ... one with other credentials asks again and is refused.
    let e = fx.open(&p, fx.access(&token, "m2")).err().unwrap();
    assert_eq!(denied(&e).0, 403);
    assert_eq!(fx.audit_codes(), ["released", "licence_revoked"]);
    // Forgetting the released keys makes the same credentials ask again.
    sealtensors::keys::forget_released_keys();
    let e = fx.open(&p, fx.access(&token, "m1")).err().unwrap();
    assert_eq!(denied(&e).0, 403);
    assert_eq!(
        fx.audit_codes(),
        ["released", "licence_revoked", "licence_revoked"]
    );
}

#[test]
fn wrong_token_is_refused_and_audited_as_unknown() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    fx.licence(1, None, json!({}));
    let e = fx
        .open(&fx.sealed(), fx.access("stl_not-a-token", "m1"))
        .err()
        .unwrap();
    assert_eq!(
        denied(&e),
        (401, "the licence token is not known to this broker".into())
    );
    let rows = fx.store.audit_rows(10).unwrap();
    assert_eq!(
        (rows[0].client.as_str(), rows[0].code.as_str()),
        ("unknown", "unknown_token")
    );
}

#[test]
fn expired_licence_is_refused() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (id, token) = fx.licence(1, Some(now() - 10), json!({}));
    let e = fx
        .open(&fx.sealed(), fx.access(&token, "m1"))
        .err()
        .unwrap();
    let (s, reason) = denied(&e);
    assert_eq!(s, 403);
    assert!(
        reason.starts_with(&format!("licence {id} expired at")),
        "{reason}"
    );
    assert_eq!(fx.audit_codes(), ["licence_expired"]);
}

#[test]
fn seats_count_distinct_machines() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (id, token) = fx.licence(1, None, json!({}));
    let p = fx.sealed();
    fx.open(&p, fx.access(&token, "machine-a")).unwrap();
    fx.open(&p, fx.access(&token, "machine-a")).unwrap();
    let e = fx.open(&p, fx.access(&token, "machine-b")).err().unwrap();
    assert_eq!(
        denied(&e),
        (
            403,
            format!("licence {id} allows 1 machine(s) and 1 other machine(s) hold them")
        )
    );
    assert_eq!(
        fx.audit_codes(),
        ["released", "released", "seats_exhausted"]
    );
}

#[test]
fn unknown_key_id_is_refused() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let r = BrokerRecipient::new(&fx.url("k9"), fx.kek_public).unwrap();
    let p = fx.seal("k9.safetensors", Box::new(r), None, true);
    let e = fx.open(&p, fx.access(&token, "m1")).err().unwrap();
    assert_eq!(denied(&e), (404, "this broker has no key id \"k9\"".into()));
    assert_eq!(fx.audit_codes(), ["unknown_key"]);
    // A key id that is not UTF-8 once unescaped: refused, and audited too.
    let (status, v) = fx.raw_release("%FF%FE", &token, b"{}");
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    assert_eq!(fx.audit_codes(), ["unknown_key", "bad_request"]);
}

#[test]
fn tampered_header_is_refused_by_the_broker() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let mut h = header_bytes(&fx.sealed());
    // Change the model version inside the signed seal document, same length.
    let s = String::from_utf8(h[8..].to_vec()).unwrap();
    let at = 8 + s.find("\\\"version\\\":\\\"1\\\"").unwrap() + "\\\"version\\\":\\\"".len();
    h[at] = b'2';
    let (status, v) = fx.raw_release("k1", &token, &fx.request(&h, &[1; 16]));
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (403, "bad_signature"),
        "{v}"
    );
    // A NUL in the model id: refused as a bad header before any store lookup
    // (PostgreSQL cannot even compare it), not a 500.
    let json = String::from_utf8(header_bytes(&fx.sealed())[8..].to_vec()).unwrap();
    let json = json.replacen("acme/tiny", "acme\\\\u0000tiny", 1);
    let h = [&(json.len() as u64).to_le_bytes()[..], json.as_bytes()].concat();
    let (status, v) = fx.raw_release("k1", &token, &fx.request(&h, &[9; 16]));
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_header")),
        "{v}"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("control characters"),
        "{v}"
    );
    // A header signed by someone else than the registered publisher.
    let other = SigningKey::generate().unwrap();
    let r = BrokerRecipient::new(&fx.url("k1"), fx.kek_public).unwrap();
    let p = fx.dir.path().join("other.safetensors");
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(r)],
        signing_key: Some(other),
        model_id: MODEL.into(),
        ..Default::default()
    })
    .unwrap();
    sealer
        .seal_file(&fx.dir.path().join("plain.safetensors"), &p)
        .unwrap();
    let (status, v) = fx.raw_release("k1", &token, &fx.request(&header_bytes(&p), &[2; 16]));
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (403, "untrusted_signer"),
        "{v}"
    );
    // Unsigned.
    let p = fx.seal(
        "unsigned.safetensors",
        Box::new(BrokerRecipient::new(&fx.url("k1"), fx.kek_public).unwrap()),
        None,
        false,
    );
    let (status, v) = fx.raw_release("k1", &token, &fx.request(&header_bytes(&p), &[3; 16]));
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (403, "not_signed"),
        "{v}"
    );
    // Garbage.
    let (status, v) = fx.raw_release("k1", &token, &fx.request(b"12345678{}", &[4; 16]));
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (400, "invalid_header"),
        "{v}"
    );
    assert_eq!(
        fx.audit_codes(),
        [
            "bad_signature",
            "invalid_header",
            "untrusted_signer",
            "not_signed",
            "invalid_header"
        ]
    );
}

#[test]
fn replayed_request_is_refused() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let body = fx.request(&header_bytes(&fx.sealed()), &[9; 16]);
    let (s1, v1) = fx.raw_release("k1", &token, &body);
    assert_eq!(s1, 200, "{v1}");
    let (s2, v2) = fx.raw_release("k1", &token, &body);
    assert_eq!(
        (s2, v2["error"].as_str().unwrap()),
        (409, "replayed_request")
    );
    // A stale request (clock far off) is refused too.
    let mut req: Value =
        serde_json::from_slice(&fx.request(&header_bytes(&fx.sealed()), &[8; 16])).unwrap();
    req["time"] = json!(now() - 3600);
    let (s3, v3) = fx.raw_release("k1", &token, &serde_json::to_vec(&req).unwrap());
    assert_eq!((s3, v3["error"].as_str().unwrap()), (400, "stale_request"));
    assert_eq!(
        fx.audit_codes(),
        ["released", "replayed_request", "stale_request"]
    );
}

#[test]
fn oversized_body_is_refused_before_parsing() {
    let Some(fx) = Fx::new(Opts {
        max_body: 64 * 1024,
        ..Default::default()
    }) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let (s, v) = fx.raw_release("k1", &token, &vec![b' '; 65 * 1024]);
    assert_eq!((s, v["error"].as_str().unwrap()), (413, "too_large"), "{v}");
    assert_eq!(fx.audit_codes(), ["too_large"]);
}

#[test]
fn rate_limit_answers_429() {
    let Some(fx) = Fx::new(Opts {
        rate: 3,
        ..Default::default()
    }) else {
        return;
    };
    // Fx::new used one request (the model registration).
    let url = format!("http://{}/healthz", fx.addr);
    let statuses: Vec<u16> = (0..4)
        .map(|_| agent().get(&url).call().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
}

/// Read `s` until the server closes it (EOF or reset) or its read timeout
/// passes: whether it was closed, and whether any answer came first.
fn until_closed(s: &mut std::net::TcpStream) -> (bool, bool) {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let mut answered = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, answered),
            Ok(_) => answered = true,
            Err(e) => {
                let timed_out = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                return (!timed_out, answered);
            }
        }
    }
}

/// A raw connection whose reads give up after 5 s.
fn connect_with_timeout(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s
}

/// Whether the server closed `s` within its read timeout.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    until_closed(s).0
}

#[test]
fn connections_beyond_the_caps_are_closed_and_idle_or_slow_ones_time_out() {
    use std::io::{Read, Write};
    use std::time::Duration;
    // The cap in all, then the cap per client (all of these come from 127.0.0.1).
    // The default timeouts (10 s for a first request) keep the idle
    // connections open however slowly this busy test machine runs.
    for (total, per_client) in [(2, 64), (64, 2)] {
        let Some(fx) = Fx::new(Opts {
            max_connections: total,
            max_connections_per_client: per_client,
            ..Default::default()
        }) else {
            return;
        };
        let connect = || connect_with_timeout(fx.addr);
        let healthz = |s: &mut std::net::TcpStream| -> bool {
            let mut buf = [0u8; 256];
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .is_ok()
                && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
        };
        // Two kept-alive connections hold both places. Each is kept once it
        // is answered: the admin requests Fx::new made may still hold a place
        // for a moment after their client closed them.
        let mut held = Vec::new();
        for _ in 0..100 {
            let mut c = connect();
            if healthz(&mut c) {
                held.push(c);
                if held.len() == 2 {
                    break;
                }
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        assert_eq!(
            held.len(),
            2,
            "({total}, {per_client}): two connections not served"
        );
        // A third is closed at once, unanswered.
        let mut third = connect();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(
            until_closed(&mut third),
            (true, false),
            "({total}, {per_client}): served over the cap"
        );
        // A place comes back when a connection closes.
        drop(held);
        let back = (0..100).any(|_| {
            let ok = healthz(&mut connect());
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(back, "({total}, {per_client}): no place came back");
    }

    let Some(fx) = Fx::new(Opts {
        max_connections: 2,
        request_timeout: 1,
        ..Default::default()
    }) else {
        return;
    };
    let connect = || connect_with_timeout(fx.addr);
    // A kept-alive connection that goes quiet after one request is closed
    // once the header timeout passes (1 s here), and its place comes back.
    let mut kept = connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut kept),
        "an idle kept-alive connection stayed open"
    );
    // Headers that never finish: closed too.
    let mut slow_headers = connect();
    slow_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nhost:")
        .unwrap();
    assert!(closed_by_server(&mut slow_headers));

    // A release body promised but never finished: 408 after request_timeout,
    // audited like any refusal, and the connection is given back.
    let mut slow = connect();
    write!(
        slow,
        "POST /keys/k1/release HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(fx.audit_codes(), ["request_timeout"]);
    let url = format!("http://{}/healthz", fx.addr);
    assert_eq!(agent().get(&url).call().unwrap().status().as_u16(), 200);
}

#[test]
fn the_files_policy_runs_at_the_broker_with_the_stored_licence() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let policy = r#"package sealtensors

import rego.v1

default allow := false

allow if count(deny_reasons) == 0

deny_reasons contains "the licence tier is not gold" if input.licence.tier != "gold"
deny_reasons contains "machine not allowed" if input.host.machine_id == "banned-machine"
"#;
    let r = BrokerRecipient::new(&fx.url("k1"), fx.kek_public).unwrap();
    let p = fx.seal("policy.safetensors", Box::new(r), Some(policy), true);
    // The loader's own licence claims and machine id are irrelevant to the
    // broker: the local policy sees gold and this machine, and allows.
    let local_gold = |access: BrokerAccess| {
        SealedFile::open(
            &p,
            &OpenOptions {
                trusted: vec![fx.signer.verifying_key()],
                broker: Some(access),
                policy: sealtensors::policy::PolicyContext {
                    licence: Some(json!({"tier": "gold"})),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    };
    let (_, silver) = fx.licence(5, None, json!({"tier": "silver"}));
    let e = local_gold(fx.access(&silver, "gpu-1")).err().unwrap();
    assert_eq!(
        denied(&e),
        (
            403,
            "the file's access policy denies access: the licence tier is not gold".into()
        )
    );
    let (_, gold) = fx.licence(5, None, json!({"tier": "gold"}));
    let e = local_gold(fx.access(&gold, "banned-machine"))
        .err()
        .unwrap();
    assert!(denied(&e).1.contains("machine not allowed"));
    local_gold(fx.access(&gold, "gpu-7")).unwrap();
    assert_eq!(
        fx.audit_codes(),
        ["policy_denied", "policy_denied", "released"]
    );
}

#[test]
fn the_client_cannot_narrow_the_tensors_the_broker_policy_judges() {
    // A licence for some tensors must not release the key to all: the key
    // opens every tensor, so the broker's policy sees them all, whatever the
    // request claims to want.
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let policy = r#"package sealtensors

import rego.v1

default allow := false

allow if count(deny_reasons) == 0

deny_reasons contains concat("", ["tensor ", n, " is not licensed"]) if {
    some n in input.request.tensors
    not startswith(n, "public.")
}
"#;
    let r = BrokerRecipient::new(&fx.url("k1"), fx.kek_public).unwrap();
    let p = fx.seal("narrow.safetensors", Box::new(r), Some(policy), true);
    let (_, token) = fx.licence(5, None, json!({}));
    let h = header_bytes(&p);
    for (i, claimed) in [json!([]), json!(["public.x"]), Value::Null]
        .into_iter()
        .enumerate()
    {
        let mut body: Value = serde_json::from_slice(&fx.request(&h, &[40 + i as u8; 16])).unwrap();
        body["tensors"] = claimed.clone();
        let (status, v) = fx.raw_release("k1", &token, &serde_json::to_vec(&body).unwrap());
        assert_eq!(status, 403, "{claimed}: {v}");
        assert_eq!(v["error"], "policy_denied", "{claimed}: {v}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("tensor w is not licensed"),
            "{v}"
        );
    }
}

#[test]
fn a_revocation_committed_before_the_seat_step_refuses_a_release_in_flight() {
    let Some(fx) = Fx::new(Opts {
        revoke_before_seat: true,
        ..Default::default()
    }) else {
        return;
    };
    let (id, token) = fx.licence(2, None, json!({}));
    // The release passes every check on the licence as it read it; the
    // revocation lands between that read and the seat, and still refuses.
    let e = fx
        .open(&fx.sealed(), fx.access(&token, "m1"))
        .err()
        .unwrap();
    assert_eq!(denied(&e), (403, format!("licence {id} was revoked")));
    assert_eq!(fx.audit_codes(), ["licence_revoked"]);
    // And at the store itself: a held seat and a new one are both refused,
    // as is a licence that does not exist.
    for machine in ["m1", "m2"] {
        assert_eq!(
            fx.store.take_seat(&id, machine, 2, now()).unwrap(),
            sealtensors_broker::store::Seat::Revoked,
            "{machine}"
        );
    }
    assert_eq!(
        fx.store
            .take_seat("no-such-licence", "m1", 2, now())
            .unwrap(),
        sealtensors_broker::store::Seat::Revoked
    );
}

#[test]
fn audit_rows_stay_small_and_printable_whatever_the_caller_sends() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let h = header_bytes(&fx.sealed());
    // A 32 KiB value echoed by the JSON error, and a NUL machine id (which
    // PostgreSQL refuses in TEXT): refused, and the refusal's row is still
    // written, escaped.
    let huge = format!(r#"{{"time":"{}"}}"#, "A".repeat(32 << 10));
    let (status, _) = fx.raw_release("k1", "no-such-token", huge.as_bytes());
    assert_eq!(status, 400);
    let mut body: Value = serde_json::from_slice(&fx.request(&h, &[50; 16])).unwrap();
    body["machine_id"] = json!("m\u{0}\u{1b}[2J");
    let (status, v) = fx.raw_release("k1", &token, &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("control characters"),
        "{v}"
    );
    let rows = fx.store.audit_rows(10).unwrap();
    assert_eq!(rows.iter().filter(|r| r.decision == "deny").count(), 2);
    for r in &rows {
        for t in [&r.reason, &r.machine_id, &r.model, &r.client, &r.kid] {
            assert!(t.chars().count() <= 515, "{} chars", t.len());
            assert!(!t.chars().any(char::is_control), "{t:?}");
        }
    }
    assert!(
        rows.iter().any(|r| r.machine_id == "m\\u{0}\\u{1b}[2J"),
        "{rows:?}"
    );
}

#[test]
fn hosts_not_allowed_are_never_contacted() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    let access = BrokerAccess::new(["keys.example.com"], Some(token)).with_machine_id("m1");
    let e = fx.open(&fx.sealed(), access).err().unwrap();
    assert!(matches!(e.kind(), Error::BrokerUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("SEALTENSORS_BROKERS"), "{e}");
    // Without any broker configuration: the same hint, and no request.
    let e = SealedFile::open(fx.sealed(), &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e.kind(), Error::BrokerUnavailable { .. }), "{e}");
    assert!(fx.audit_codes().is_empty());
}

#[test]
fn admin_operations_need_the_admin_token() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (_, token) = fx.licence(1, None, json!({}));
    for t in [token.as_str(), "", "admin-token-for-test"] {
        let mut r = agent()
            .post(format!("http://{}/admin/licences", fx.addr))
            .header("authorization", &format!("Bearer {t}"))
            .send_json(json!({"customer": "x", "models": [MODEL]}))
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let _ = r.body_mut().read_to_string();
    }
    // Tokens are stored only as hashes.
    let db = std::fs::read(fx.dir.path().join("broker.db")).unwrap_or_default();
    let wal = std::fs::read(fx.dir.path().join("broker.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    for b in [db, wal] {
        assert!(!b.windows(needle.len()).any(|w| w == needle));
    }
    let (s, v) = fx.admin("GET", "/admin/licences", None);
    assert_eq!(s, 200);
    assert!(!v.to_string().contains(&token));
}

/// Issue 15: admin actions were not audited. Every admin request, done or
/// refused (a wrong admin token included), leaves a row naming the action,
/// its target and its outcome, escaped like release rows, never the token.
#[test]
fn admin_actions_are_audited_done_or_refused() {
    let Some(fx) = Fx::new(Opts::default()) else {
        return;
    };
    let (id, token) = fx.licence(2, None, json!({}));
    let (s, _) = fx.admin("POST", &format!("/admin/licences/{id}/revoke"), None);
    assert_eq!(s, 200);
    let (s, _) = fx.admin("POST", "/admin/licences/lic_nope/revoke", None);
    assert_eq!(s, 404);
    let (s, _) = fx.admin(
        "POST",
        "/admin/attestation-keys",
        Some(json!({"licence": id, "machine_id": "m1", "kind": "tpm", "public_key": "not a key"})),
    );
    assert_eq!(s, 400);
    let (s, _) = fx.admin("GET", "/admin/licences", None);
    assert_eq!(s, 200);
    // Refused: no token, a licence token, a wrong admin token; the caller
    // picks the target in the path, with terminal escapes in it.
    for t in [None, Some(token.as_str()), Some("admin-token-for-test")] {
        let mut req = agent().post(format!(
            "http://{}/admin/licences/lic_%1B%5B2J%1B%5D52%3Bc%3Bx%07/revoke",
            fx.addr
        ));
        if let Some(t) = t {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut r = req.send_empty().unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let _ = r.body_mut().read_to_string();
    }
    let mut r = agent()
        .post(format!("http://{}/admin/licences", fx.addr))
        .header("authorization", "Bearer wrong")
        .send_json(json!({"customer": "x", "models": [MODEL]}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let _ = r.body_mut().read_to_string();
    let (s, _) = fx.admin("GET", "/admin/audit?limit=3", None);
    assert_eq!(s, 200);

    let mut rows = fx.store.audit_rows(100).unwrap();
    rows.reverse();
    let seen: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.client.as_str(),
                r.decision.as_str(),
                r.code.as_str(),
                r.model.as_str(),
            )
        })
        .collect();
    let bad = "lic_\\u{1b}[2J\\u{1b}]52;c;x\\u{7}";
    assert_eq!(
        seen,
        [
            ("admin", "admin", "register_model", MODEL),
            ("admin", "admin", "issue_licence", id.as_str()),
            ("admin", "admin", "revoke_licence", id.as_str()),
            ("admin", "admin_denied", "revoke_licence", "lic_nope"),
            (
                "admin",
                "admin_denied",
                "enrol_attestation_key",
                id.as_str()
            ),
            ("admin", "admin", "list_licences", ""),
            ("unknown", "admin_denied", "revoke_licence", bad),
            ("unknown", "admin_denied", "revoke_licence", bad),
            ("unknown", "admin_denied", "revoke_licence", bad),
            ("unknown", "admin_denied", "issue_licence", ""),
            ("admin", "admin", "read_audit", ""),
        ]
    );
    assert_eq!(rows[0].kid, "k1");
    assert!(
        rows[1].reason.contains("customer \"acme\""),
        "{:?}",
        rows[1]
    );
    assert!(
        rows[3].reason.starts_with("unknown_licence: "),
        "{:?}",
        rows[3]
    );
    assert_eq!(
        (rows[4].machine_id.as_str(), rows[4].kid.as_str()),
        ("m1", "tpm")
    );
    assert!(rows[4].reason.starts_with("bad_request: "), "{:?}", rows[4]);
    assert!(rows[6].reason.starts_with("not_admin: "), "{:?}", rows[6]);
    // The licence named in the refused path was not touched, and no row
    // holds a token or a control character.
    for r in &rows {
        let all = format!("{r:?}");
        assert!(!all.contains(&token) && !all.contains(ADMIN), "{all}");
        for t in [&r.reason, &r.machine_id, &r.model, &r.client, &r.kid] {
            assert!(!t.chars().any(char::is_control), "{t:?}");
        }
    }
}

#[test]
fn https_with_a_private_ca() {
    use sealtensors_broker::admin::AdminClient;
    use sealtensors_broker::config::TlsConfig;

    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = ck.cert.pem().into_bytes();
    std::fs::write(dir.path().join("cert.pem"), &ca).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let tls = sealtensors_broker::server_tls(&TlsConfig {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    })
    .unwrap();

    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let kek = BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap();
    let public = kek.public_key();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        insecure_plain_http: false,
        database: dir.path().join("unused.db"),
        admin_token_sha256: hash_token(ADMIN),
        keys: vec![],
        release_ttl: 0,
        max_body: 1 << 20,
        rate_per_minute: 1000,
        replay_window: 300,
        max_connections: 1024,
        max_connections_per_client: 1024,
        request_timeout: 30,
        store: Default::default(),
    };
    let broker =
        Broker::with_keks(&config, store.clone(), HashMap::from([("k1".into(), kek)])).unwrap();
    let running =
        Running::start_with_tls(broker, "127.0.0.1:0".parse().unwrap(), Some(tls)).unwrap();
    let url = format!("https://{}/keys/k1", running.addr);

    let seed: [u8; 32] = sealtensors::crypto::random_array().unwrap();
    let signer = SigningKey::from_seed(seed).unwrap();
    store
        .register_model(&sealtensors_broker::ModelRecord {
            model_id: MODEL.into(),
            signer: signer.verifying_key().to_string(),
            kid: "k1".into(),
            created: now(),
        })
        .unwrap();
    let token = "stl_https-test-token";
    store
        .insert_licence(
            &sealtensors_broker::LicenceRecord {
                id: "lic_https".into(),
                customer: "acme".into(),
                models: vec![MODEL.into()],
                seats: 1,
                expires: None,
                claims: json!({}),
                created: now(),
                revoked: None,
            },
            &sealtensors::crypto::sha256(token.as_bytes()),
        )
        .unwrap();

    let data = vec![5u8; 4096];
    let plain = dir.path().join("plain.safetensors");
    let t = sealtensors::TensorRef {
        name: "w".into(),
        dtype: Dtype::U8,
        shape: vec![4096],
        data: &data,
    };
    sealtensors::write_plain(&plain, &[t], None, false).unwrap();
    let sealed = dir.path().join("sealed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(BrokerRecipient::new(&url, public).unwrap())],
        signing_key: Some(SigningKey::from_seed(seed).unwrap()),
        model_id: MODEL.into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&plain, &sealed)
    .unwrap();

    let access =
        || BrokerAccess::new([running.addr.to_string()], Some(token.into())).with_machine_id("m1");
    let open = |a: BrokerAccess| {
        SealedFile::open(
            &sealed,
            &OpenOptions {
                trusted: vec![signer.verifying_key()],
                broker: Some(a),
                ..Default::default()
            },
        )
    };
    // The public web roots do not vouch for a self-signed broker.
    let e = open(access()).err().unwrap();
    assert!(matches!(e.kind(), Error::BrokerUnavailable { .. }), "{e}");
    // With the broker's CA, the release goes through over TLS.
    let f = open(access().with_ca_pem(ca.clone())).unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), data);
    // The admin API over TLS too.
    let admin = AdminClient::new(&format!("https://{}", running.addr), ADMIN, Some(&ca)).unwrap();
    let rows = admin.audit(10).unwrap();
    assert_eq!(rows[0]["code"], "released");
    running.stop().unwrap();
}

#[allow(dead_code)]
#[path = "../../sealtensors/tests/common/hardware.rs"]
mod hardware;

/// A broker whose KEK is a P-256 key in a real software token (SoftHSM2,
/// installed by scripts/system-deps.sh): files sealed to it carry a
/// `broker-p256` slot (SPEC §6.8), and the broker releases their key with
/// the token doing the ECDH; the KEK is in no file.
#[test]
fn a_broker_with_its_kek_in_a_pkcs11_token_releases_keys() {
    let module = hardware::softhsm_module();
    let module = module.display();
    let hsm = tempfile::tempdir().unwrap();
    let conf = hardware::softhsm_tokens(hsm.path(), &["broker"], "314159");
    // Only this test of the binary uses a PKCS#11 module, so the process-wide
    // variable is set here, before the module is first loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::fs::write(hsm.path().join("pin"), "314159").unwrap();
    let uri = format!(
        "pkcs11:token=broker;object=kek-1?module-path={module}&pin-source=file:{}",
        hsm.path().join("pin").display()
    );
    let made = sealtensors::keys::pkcs11_generate_p256(&uri).unwrap();
    let Some(fx) = Fx::new(Opts {
        kek: Some(uri),
        ..Default::default()
    }) else {
        return;
    };
    // GET /keys/k1 answers the token's public key; sealing to the URL
    // fetches it and writes a broker-p256 slot.
    assert_eq!(fx.kek_public.to_string(), made.to_string());
    let (_, token) = fx.licence(1, None, json!({}));
    let p = fx.sealed();
    let raw = std::fs::read(&p).unwrap();
    let h = sealtensors::Header::parse_buffer(&raw).unwrap();
    let slots = &h.metadata.as_ref().unwrap()["sealtensors.slots"];
    assert!(slots.contains("\"type\":\"broker-p256\""), "{slots}");
    let f = fx.open(&p, fx.access(&token, "m1")).unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);
    assert_eq!(fx.audit_codes(), ["released"]);
    // Another broker using the same key id, with an X25519 key, sealed in
    // first: this broker still finds and opens its own slot.
    let other = BrokerRecipient::new(
        "https://other-broker.example/keys/k1",
        X25519Identity::generate().unwrap().recipient(),
    )
    .unwrap();
    let both = fx.dir.path().join("both.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(other), load_recipient(&fx.url("k1")).unwrap()],
        signing_key: Some(SigningKey::from_seed(fx.seed).unwrap()),
        model_id: MODEL.into(),
        model_version: "1".into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.dir.path().join("plain.safetensors"), &both)
    .unwrap();
    let f = fx.open(&both, fx.access(&token, "m1")).unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);

    // A model whose publisher signs with an ECDSA P-256 token key (a token
    // without Ed25519): registered with its ecdsa-p256: signer, released.
    let signer_uri = format!(
        "pkcs11:token=broker;object=publisher?module-path={module}&pin-source=file:{}",
        hsm.path().join("pin").display()
    );
    let signer = sealtensors::keys::pkcs11_generate_ecdsa_p256(&signer_uri).unwrap();
    let (s, v) = fx.admin(
        "POST",
        "/admin/models",
        Some(json!({"model_id": "acme/ecdsa", "signer": signer.to_string(), "kid": "k1"})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = fx.admin(
        "POST",
        "/admin/licences",
        Some(json!({"customer": "acme", "models": ["acme/ecdsa"], "seats": 1, "expires": null, "claims": {}})),
    );
    assert_eq!(s, 201, "{v}");
    let token2 = v["token"].as_str().unwrap().to_string();
    let ecdsa_file = fx.dir.path().join("ecdsa.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![load_recipient(&fx.url("k1")).unwrap()],
        signing_key: Some(sealtensors::keys::load_signing_key(Path::new(&signer_uri)).unwrap()),
        model_id: "acme/ecdsa".into(),
        model_version: "1".into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.dir.path().join("plain.safetensors"), &ecdsa_file)
    .unwrap();
    let f = SealedFile::open(
        &ecdsa_file,
        &OpenOptions {
            trusted: vec![signer],
            broker: Some(fx.access(&token2, "m1")),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);
    assert_eq!(f.authenticity().name(), "signed-trusted");
}

//! Fault test (docs/broker.md, "Load and faults"): the real `sealtensors serve` binary
//! (target/release, built by `make test` first), under load from several
//! client threads, is killed with SIGKILL. Every request that got a reply
//! must have its audit row, with the same decision, and no licence state may
//! be lost (revocations, seats of released keys); the broker then restarts
//! on the same store and serves again. For SQLite and, when
//! SEALTENSORS_TEST_POSTGRES_URL is set, PostgreSQL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealtensors::hpke::HpkeSecretKey;
use sealtensors::keys::{load_recipient, SigningKey};
use sealtensors::{Dtype, SealOptions, Sealer};
use sealtensors_broker::store::Seat;
use sealtensors_broker::{hash_token, PostgresStore, SqliteStore, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-the-fault-test";
const MODEL: &str = "acme/fault";
/// Client threads sending releases.
const CLIENTS: usize = 4;
/// Replies to wait for before the kill.
const KILL_AFTER: usize = 400;

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

/// The release build of the CLI: $SEALTENSORS_BIN, else target/release
/// beside this test's own target/debug.
fn serve_bin() -> Option<PathBuf> {
    use std::io::Write;
    let p = match std::env::var_os("SEALTENSORS_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()?
            .parent()? // deps
            .parent()? // debug
            .parent()? // target
            .join("release/sealtensors"),
    };
    if p.is_file() {
        return Some(p);
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED fault test: {} is missing; build it with `cargo build --release -p sealtensors-cli` (make test does)",
        p.display()
    );
    None
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    )
}

struct Broker {
    child: Child,
    base: String,
}

impl Broker {
    fn start(bin: &Path, config: &Path, base: &str) -> Broker {
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Broker {
            child,
            base: base.to_string(),
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = agent().get(format!("{base}/healthz")).call() {
                if r.status() == 200 {
                    return b;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the broker did not answer /healthz within 20 s");
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {ADMIN}");
        let a = agent();
        let mut r = match (method, body) {
            ("GET", _) => a.get(&url).header("authorization", &auth).call(),
            (_, Some(b)) => a.post(&url).header("authorization", &auth).send_json(b),
            (_, None) => a.post(&url).header("authorization", &auth).send_empty(),
        }
        .unwrap();
        let s = r.status().as_u16();
        (s, r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    }

    fn licence(&self, seats: u32) -> (String, String) {
        let (s, v) = self.admin(
            "POST",
            "/admin/licences",
            Some(json!({"customer": "acme", "models": [MODEL], "seats": seats})),
        );
        assert_eq!(s, 201, "{v}");
        (
            v["licence"]["id"].as_str().unwrap().into(),
            v["token"].as_str().unwrap().into(),
        )
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// One release request; `Err` when no reply came (connection refused or cut).
fn release(
    a: &ureq::Agent,
    base: &str,
    token: &str,
    header: &[u8],
    machine: &str,
) -> Result<(u16, String), ()> {
    let ek = HpkeSecretKey::generate().unwrap();
    let nonce: [u8; 16] = sealtensors::crypto::random_array().unwrap();
    let body = json!({"header": b64(header), "ek": b64(&ek.public_key()), "machine_id": machine,
                      "nonce": b64(&nonce), "time": now()});
    let mut r = a
        .post(format!("{base}/keys/k1/release"))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(body)
        .map_err(|_| ())?;
    let status = r.status().as_u16();
    let v: Value = r.body_mut().read_json().map_err(|_| ())?;
    let code = if status == 200 {
        "released".to_string()
    } else {
        v["error"].as_str().unwrap_or("?").to_string()
    };
    Ok((status, code))
}

fn fault_test(name: &str, store_toml: &str, open: &dyn Fn(&Path) -> Arc<dyn Store>) {
    let Some(bin) = serve_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(&bin)
        .args(["keygen", "-o"])
        .arg(d.join("kek.jwk"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let config = d.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"broker.db\"\nadmin_token_sha256 = \"{}\"\nrate_per_minute = 10000000\nrelease_ttl = 0\n\n[[keys]]\nkid = \"k1\"\nidentity = \"kek.jwk\"\n{store_toml}",
            hash_token(ADMIN)
        ),
    )
    .unwrap();
    let broker = Broker::start(&bin, &config, &base);

    // A model sealed to the broker, three licences: one used, one revoked
    // before the load, one revoked during it.
    let signer = SigningKey::generate().unwrap();
    let (s, v) = broker.admin(
        "POST",
        "/admin/models",
        Some(json!({"model_id": MODEL, "signer": signer.verifying_key().to_string(), "kid": "k1"})),
    );
    assert_eq!(s, 201, "{v}");
    let (used, token) = broker.licence(1_000_000);
    let (before, _) = broker.licence(1);
    let (during, _) = broker.licence(1);
    assert_eq!(
        broker
            .admin("POST", &format!("/admin/licences/{before}/revoke"), None)
            .0,
        200
    );
    let data = vec![7u8; 1024];
    let plain = d.join("plain.safetensors");
    let t = sealtensors::TensorRef {
        name: "w".into(),
        dtype: Dtype::U8,
        shape: vec![1024],
        data: &data,
    };
    sealtensors::write_plain(&plain, &[t], None, false).unwrap();
    let sealed = d.join("sealed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![load_recipient(&format!("{base}/keys/k1")).unwrap()],
        signing_key: Some(signer),
        model_id: MODEL.into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&plain, &sealed)
    .unwrap();
    let bytes = std::fs::read(&sealed).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = Arc::new(bytes[..8 + n].to_vec());

    // Load: every request a new machine id, so each reply maps to one audit row.
    let replies: Arc<Mutex<Vec<(String, u16, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let revoked_during = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (replies, count, header, token, base) = (
                replies.clone(),
                count.clone(),
                header.clone(),
                token.clone(),
                base.clone(),
            );
            let (revoked_during, during) = (revoked_during.clone(), during.clone());
            std::thread::spawn(move || {
                let a = agent();
                let t = Instant::now();
                for i in 0.. {
                    if c == 0 && i == 20 {
                        let url = format!("{base}/admin/licences/{during}/revoke");
                        if let Ok(r) = a
                            .post(url)
                            .header("authorization", &format!("Bearer {ADMIN}"))
                            .send_empty()
                        {
                            if r.status() == 200 {
                                revoked_during.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    let machine = format!("fault-{c}-{i}");
                    match release(&a, &base, &token, &header, &machine) {
                        Ok((status, code)) => {
                            replies.lock().unwrap().push((machine, status, code));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(()) => break, // the broker is gone
                    }
                    if t.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    while count.load(Ordering::SeqCst) < KILL_AFTER && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(2));
    }
    broker.kill();
    for t in threads {
        t.join().unwrap();
    }
    let replies = replies.lock().unwrap().clone();
    assert!(
        replies.len() >= KILL_AFTER,
        "only {} replies before the kill",
        replies.len()
    );

    // Every reply has its audit row, with the decision the client saw.
    let store = open(d);
    let rows = store.audit_rows(1_000_000).unwrap();
    let audited: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r.machine_id.as_str(), r.code.as_str()))
        .collect();
    let mut released = 0;
    for (machine, status, code) in &replies {
        assert_eq!(
            audited.get(machine.as_str()),
            Some(&code.as_str()),
            "{machine}: reply {status} {code}"
        );
        if *status == 200 {
            released += 1;
            // ... and the seat it took.
            assert_eq!(
                store.take_seat(&used, machine, 0, now()).unwrap(),
                Seat::Granted,
                "{machine}"
            );
        }
    }
    assert!(released > 0);
    // Licence state: both revocations kept, the used licence intact.
    let lic: HashMap<String, Option<u64>> = store
        .licences()
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.revoked))
        .collect();
    assert_eq!(lic.len(), 3);
    assert!(lic[&before].is_some());
    assert!(lic[&used].is_none());
    if revoked_during.load(Ordering::SeqCst) {
        assert!(
            lic[&during].is_some(),
            "a revocation that was answered was lost"
        );
    }
    drop(store);
    eprintln!(
        "fault test ({name}): {} replies before SIGKILL, {} audit rows, {released} releases, all audited",
        replies.len(),
        rows.len()
    );

    // The broker restarts on the same store and serves.
    let broker = Broker::start(&bin, &config, &base);
    let a = agent();
    assert_eq!(
        release(&a, &base, &token, &header, "after-restart").unwrap(),
        (200, "released".to_string())
    );
    let (s, rows) = broker.admin("GET", "/admin/audit?limit=1", None);
    assert_eq!(
        (s, rows[0]["machine_id"].as_str()),
        (200, Some("after-restart"))
    );
    broker.kill();
}

#[test]
fn sigkill_under_load_loses_no_audit_row_sqlite() {
    fault_test("sqlite", "", &|d| {
        Arc::new(SqliteStore::open(&d.join("broker.db")).unwrap())
    });
}

#[test]
fn sigkill_under_load_loses_no_audit_row_postgres() {
    let Some(url) = PostgresStore::test_url("fault test").unwrap() else {
        return;
    };
    // A throwaway schema, dropped with `schema_owner` at the end.
    let schema_owner = PostgresStore::connect_throwaway(&url).unwrap();
    let schema = schema_owner.schema().to_string();
    let toml = format!("\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n");
    fault_test("postgres", &toml, &|_| {
        Arc::new(PostgresStore::connect(&url, &schema, 2).unwrap())
    });
    drop(schema_owner);
}

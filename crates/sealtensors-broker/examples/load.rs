//! Load test on loopback (figures in docs/broker.md):
//!
//! ```sh
//! cargo run --release -p sealtensors-broker --example load -- \
//!     --store sqlite|postgres --requests N --concurrency C [--seconds S] [--url URL]
//! ```
//!
//! A broker on 127.0.0.1 (in this process, its own runtime) with a registered
//! model and one licence; C client threads send N release requests in all
//! (each with its own nonce and ephemeral key, 8 machine ids sharing the
//! licence's seats), stopping early after S seconds (default 60). Prints
//! releases per second and the p50/p99/max latency of a release. PostgreSQL
//! uses --url or SEALTENSORS_TEST_POSTGRES_URL, in a throwaway schema.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealtensors::hpke::HpkeSecretKey;
use sealtensors::keys::{BrokerKek, BrokerRecipient, SigningKey, X25519Identity};
use sealtensors::{Dtype, SealOptions, Sealer};
use sealtensors_broker::config::KeyConfig;
use sealtensors_broker::{
    hash_token, Broker, Config, LicenceRecord, ModelRecord, PostgresStore, Running, SqliteStore,
    Store,
};

type Error = Box<dyn std::error::Error>;

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Args {
    store: String,
    requests: usize,
    concurrency: usize,
    seconds: u64,
    url: Option<String>,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        store: "sqlite".into(),
        requests: 2000,
        concurrency: 8,
        seconds: 60,
        url: std::env::var("SEALTENSORS_TEST_POSTGRES_URL").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--store" => a.store = v()?,
            "--requests" => a.requests = v()?.parse()?,
            "--concurrency" => a.concurrency = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--url" => a.url = Some(v()?),
            _ => {
                return Err(format!("unknown argument {k}; see the top of examples/load.rs").into())
            }
        }
    }
    if a.requests == 0 || a.concurrency == 0 || !["sqlite", "postgres"].contains(&a.store.as_str())
    {
        return Err("--store sqlite|postgres, --requests and --concurrency above 0".into());
    }
    Ok(a)
}

fn main() -> Result<(), Error> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = match a.store.as_str() {
        "postgres" => {
            let url = a
                .url
                .as_deref()
                .ok_or("--store postgres needs --url or SEALTENSORS_TEST_POSTGRES_URL")?;
            Arc::new(PostgresStore::connect_throwaway(url)?)
        }
        _ => Arc::new(SqliteStore::open(&dir.path().join("broker.db"))?),
    };

    // The broker: one key, one model, one licence with 8 seats.
    let kek = BrokerKek::new("k1", X25519Identity::generate()?)?;
    let kek_public = kek.public_key();
    let admin = "load-admin";
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        tls: None,
        insecure_plain_http: false,
        database: dir.path().join("broker.db"),
        admin_token_sha256: hash_token(admin),
        keys: vec![KeyConfig {
            kid: "k1".into(),
            identity: "unused".into(),
        }],
        release_ttl: 0,
        max_body: 1 << 20,
        rate_per_minute: u32::MAX,
        replay_window: 300,
        max_connections: 1024,
        max_connections_per_client: 1024,
        request_timeout: 30,
        store: Default::default(),
    };
    let broker = Broker::with_keks(&config, store.clone(), HashMap::from([("k1".into(), kek)]))?;
    let running = Running::start(broker, "127.0.0.1:0".parse()?)?;
    let base = format!("http://{}", running.addr);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let signer = SigningKey::generate()?;
    store.register_model(&ModelRecord {
        model_id: "acme/load".into(),
        signer: signer.verifying_key().to_string(),
        kid: "k1".into(),
        created: now,
    })?;
    let token = "stl_load-test-token";
    store.insert_licence(
        &LicenceRecord {
            id: "lic_load".into(),
            customer: "acme".into(),
            models: vec!["acme/load".into()],
            seats: 8,
            expires: None,
            claims: serde_json::json!({}),
            created: now,
            revoked: None,
        },
        &sealtensors::crypto::sha256(token.as_bytes()),
    )?;

    // A sealed file's header, as a loader sends it.
    let data = vec![1u8; 4096];
    let plain = dir.path().join("plain.safetensors");
    let t = sealtensors::TensorRef {
        name: "w".into(),
        dtype: Dtype::U8,
        shape: vec![4096],
        data: &data,
    };
    sealtensors::write_plain(&plain, &[t], None, false)?;
    let sealed = dir.path().join("sealed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(BrokerRecipient::new(
            &format!("{base}/keys/k1"),
            kek_public,
        )?)],
        signing_key: Some(signer),
        model_id: "acme/load".into(),
        ..Default::default()
    })?
    .seal_file(&plain, &sealed)?;
    let bytes = std::fs::read(&sealed)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = b64(&bytes[..8 + n]);

    // Bodies made before the clock starts: the client's own work is not timed.
    let mut bodies = Vec::with_capacity(a.requests);
    for i in 0..a.requests {
        let ek = HpkeSecretKey::generate()?;
        let nonce: [u8; 16] = sealtensors::crypto::random_array()?;
        bodies.push(serde_json::to_vec(&serde_json::json!({
            "header": header, "ek": b64(&ek.public_key()), "machine_id": format!("load-{}", i % 8),
            "nonce": b64(&nonce), "time": now}))?);
    }
    let bodies = Arc::new(Mutex::new(bodies));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let url = format!("{base}/keys/k1/release");
    let start = Instant::now();
    let threads: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (bodies, url) = (bodies.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .build(),
                );
                let mut lat = Vec::new();
                let mut failed = 0usize;
                // The guard is dropped inside and_then: not held while sending.
                while let Some(body) = bodies.lock().ok().and_then(|mut b| b.pop()) {
                    if Instant::now() > deadline {
                        break;
                    }
                    let t = Instant::now();
                    let ok = agent
                        .post(&url)
                        .header("authorization", &format!("Bearer {token}"))
                        .header("content-type", "application/json")
                        .send(&body[..])
                        .map(|mut r| {
                            let _ = r.body_mut().read_to_vec();
                            r.status() == 200
                        })
                        .unwrap_or(false);
                    if ok {
                        lat.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in threads {
        let (l, f) = t.join().map_err(|_| "a client thread panicked")?;
        lat.extend(l);
        failed += f;
    }
    let wall = start.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!(
        "store={} requests={} concurrency={} released={} failed={} wall={:.2}s releases/s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms audit_rows={}",
        a.store,
        a.requests,
        a.concurrency,
        lat.len(),
        failed,
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN),
        store.audit_rows(u32::MAX)?.len(),
    );
    running.stop()?;
    Ok(())
}

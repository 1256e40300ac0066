//! Attestation with a real TPM 2.0: swtpm (socket mode, a temporary state
//! folder) and tpm2-tools make attestation keys, extend a PCR and quote; a
//! real broker on 127.0.0.1 verifies the quotes and its file's policy
//! requires the PCR value. Needs `apt-get install swtpm swtpm-tools
//! tpm2-tools`: without them the test fails and says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sealtensors::crypto::sha256;
use sealtensors::hpke::HpkeSecretKey;
use sealtensors::keys::{
    attestation_nonce, BrokerAccess, BrokerKek, BrokerRecipient, ReleaseRequest, SigningKey,
    TpmQuoter, X25519Identity,
};
use sealtensors::{Dtype, Error, OpenOptions, SealOptions, SealedFile, Sealer};
use sealtensors_broker::{hash_token, Broker, Config, Running, SqliteStore, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-attestation-tests";
const MODEL: &str = "acme/attested";
const INSTALL: &str = "apt-get install swtpm swtpm-tools tpm2-tools";

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn require_tools() {
    for tool in ["swtpm", "tpm2_createek", "tpm2_createak", "tpm2_quote"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "{tool} is not installed: the TPM attestation tests need a software TPM and tpm2-tools; run `{INSTALL}`"
        );
    }
}

#[allow(dead_code)]
#[path = "../../sealtensors/tests/common/hardware.rs"]
mod hardware;
use hardware::Swtpm;

fn start_tpm() -> Swtpm {
    require_tools();
    Swtpm::start()
}

/// What these tests do with a software TPM beyond the shared helper.
trait Attesting {
    /// An attestation key made persistent at `handle`; its PEM public key.
    fn make_ak(&self, handle: &str, rsa: bool) -> String;
    fn quoter(&self, handle: &str) -> TpmQuoter;
}

impl Attesting for Swtpm {
    fn make_ak(&self, handle: &str, rsa: bool) -> String {
        let tool = |t: &str, args: &[&str]| self.tool(t, args).unwrap();
        if !self.dir().join("ek.pub").exists() {
            tool(
                "tpm2_createek",
                &["-c", "0x81010001", "-G", "rsa", "-u", "ek.pub"],
            );
        }
        let (g, s) = if rsa {
            ("rsa", "rsassa")
        } else {
            ("ecc", "ecdsa")
        };
        let ctx = format!("{handle}.ctx");
        let pem = format!("{handle}.pem");
        tool(
            "tpm2_createak",
            &[
                "-C",
                "0x81010001",
                "-c",
                &ctx,
                "-G",
                g,
                "-g",
                "sha256",
                "-s",
                s,
                "-u",
                &pem,
                "-f",
                "pem",
            ],
        );
        tool("tpm2_evictcontrol", &["-C", "o", "-c", &ctx, handle]);
        tool("tpm2_flushcontext", &["-t"]);
        std::fs::read_to_string(self.dir().join(&pem)).unwrap()
    }

    fn quoter(&self, handle: &str) -> TpmQuoter {
        TpmQuoter::new(handle)
            .with_tcti(&self.tcti)
            .with_pcrs("sha256:0,16")
    }
}

struct Fx {
    dir: tempfile::TempDir,
    running: Option<Running>,
    addr: SocketAddr,
    store: Arc<SqliteStore>,
    kek_public: sealtensors::keys::BrokerPublicKey,
    signer: SigningKey,
    seed: [u8; 32],
    data: Vec<u8>,
}

impl Fx {
    fn new() -> Fx {
        Fx::with_kek(BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap())
    }

    fn with_kek(kek: BrokerKek) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("broker.db")).unwrap());
        let kek_public = kek.public_key();
        // From JSON, so that fields added to Config keep their defaults.
        let config: Config = serde_json::from_value(json!({
            "listen": "127.0.0.1:0",
            "database": dir.path().join("broker.db"),
            "admin_token_sha256": hash_token(ADMIN),
            "keys": [{"kid": "k1", "identity": "unused"}],
            "release_ttl": 0,
            "rate_per_minute": 100000,
        }))
        .unwrap();
        let keks = HashMap::from([("k1".to_string(), kek)]);
        let broker = Broker::with_keks(&config, store.clone(), keks).unwrap();
        let running = Running::start(broker, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = running.addr;
        let seed: [u8; 32] = sealtensors::crypto::random_array().unwrap();
        let signer = SigningKey::from_seed(seed).unwrap();
        let fx = Fx {
            dir,
            running: Some(running),
            addr,
            store,
            kek_public,
            signer,
            seed,
            data: (0..1024u32).flat_map(|i| i.to_le_bytes()).collect(),
        };
        let (s, v) = fx.admin(
            "/admin/models",
            ADMIN,
            json!({"model_id": MODEL, "signer": fx.signer.verifying_key().to_string(), "kid": "k1"}),
        );
        assert_eq!(s, 201, "{v}");
        fx
    }

    fn admin(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let mut r = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        )
        .post(format!("http://{}{path}", self.addr))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(body)
        .unwrap();
        let s = r.status().as_u16();
        (s, r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    }

    fn seal(&self, policy: &str) -> PathBuf {
        let plain = self.dir.path().join("plain.safetensors");
        let t = sealtensors::TensorRef {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![32, 32],
            data: &self.data,
        };
        sealtensors::write_plain(&plain, &[t], None, false).unwrap();
        let out = self.dir.path().join("sealed.safetensors");
        let r = BrokerRecipient::new(&format!("http://{}/keys/k1", self.addr), self.kek_public)
            .unwrap();
        Sealer::new(SealOptions {
            recipients: vec![Box::new(r)],
            signing_key: Some(SigningKey::from_seed(self.seed).unwrap()),
            model_id: MODEL.into(),
            model_version: "1".into(),
            policy: Some(policy.into()),
            ..Default::default()
        })
        .unwrap()
        .seal_file(&plain, &out)
        .unwrap();
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

    fn last_audit(&self) -> (String, String) {
        let r = self.store.audit_rows(1).unwrap().remove(0);
        (r.code, r.reason)
    }

    /// A raw release, for evidence the library client never sends.
    fn raw(&self, token: &str, req: &ReleaseRequest) -> (u16, Value) {
        let mut r = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        )
        .post(format!("http://{}/keys/k1/release", self.addr))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(&serde_json::to_vec(req).unwrap()[..])
        .unwrap();
        let s = r.status().as_u16();
        (s, r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().unwrap();
        }
    }
}

fn denied(e: &Error) -> (u16, String) {
    match e.kind() {
        Error::BrokerDenied { status, reason, .. } => (*status, reason.clone()),
        other => panic!("expected BrokerDenied, got {other:?}"),
    }
}

/// A release request for `header` with a fresh nonce and ek; its TPM
/// evidence made by `q` for (nonce, ek) unless `bind` says otherwise.
fn request(
    header: &[u8],
    machine: &str,
    q: &TpmQuoter,
    bind: Option<[u8; 32]>,
) -> (ReleaseRequest, Value) {
    let ek = HpkeSecretKey::generate().unwrap();
    let nonce: [u8; 16] = sealtensors::crypto::random_array().unwrap();
    let binding = bind.unwrap_or_else(|| attestation_nonce(&nonce, &ek.public_key()));
    let ev = q.quote(&binding).unwrap();
    let req = ReleaseRequest {
        header: b64(header),
        ek: b64(&ek.public_key()),
        machine_id: machine.into(),
        nonce: b64(&nonce),
        time: now(),
        file_name: None,
        process: None,
        tensors: None,
        attestation: Some(json!({ "tpm": ev.clone() })),
    };
    (req, ev)
}

/// A broker whose KEK is a P-256 key held in a TPM (swtpm): files sealed to
/// it carry a `broker-p256` slot, and each release asks the TPM for the
/// ECDH; the KEK is in no file in the clear.
#[test]
fn a_broker_with_its_kek_in_a_tpm_releases_keys() {
    let tpm = start_tpm();
    // The KEK's TPM is named by SEALTENSORS_TPM_TCTI (process-wide); the
    // other tests here name their TPMs explicitly (TpmQuoter::with_tcti).
    std::env::set_var("SEALTENSORS_TPM_TCTI", &tpm.tcti);
    let keys = tempfile::tempdir().unwrap();
    let idp = keys.path().join("kek.tpm.json");
    let made = sealtensors::keys::tpm_generate_p256(&idp, None, false).unwrap();
    let fx = Fx::with_kek(BrokerKek::load("k1", &idp).unwrap());
    assert_eq!(fx.kek_public.to_string(), made.to_string());
    let (s, v) = fx.admin(
        "/admin/licences",
        ADMIN,
        json!({"customer": "acme", "models": [MODEL], "seats": 1}),
    );
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let p = fx.seal("package sealtensors\n\ndefault allow := true\n");
    let raw = std::fs::read(&p).unwrap();
    let h = sealtensors::Header::parse_buffer(&raw).unwrap();
    assert!(h.metadata.as_ref().unwrap()["sealtensors.slots"].contains("broker-p256"));
    let f = fx.open(&p, fx.access(&token, "m1")).unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);
    assert_eq!(fx.last_audit().0, "released");
}

#[test]
fn tpm_quotes_from_swtpm_are_verified_and_the_policy_requires_a_pcr_value() {
    let tpm = start_tpm();
    let ak = tpm.make_ak("0x81010002", false);
    let rogue = tpm.make_ak("0x81010003", false);
    let ak_rsa = tpm.make_ak("0x81010004", true);
    let measurement = sha256(b"sealtensors attested boot");
    tpm.extend_pcr(16, &measurement);
    let mut pcr16 = vec![0u8; 32];
    pcr16.extend_from_slice(&measurement);
    let pcr16 = hex(&sha256(&pcr16));

    let fx = Fx::new();
    let (s, v) = fx.admin(
        "/admin/licences",
        ADMIN,
        json!({"customer": "acme", "models": [MODEL], "seats": 5}),
    );
    assert_eq!(s, 201, "{v}");
    let (lic, token) = (
        v["licence"]["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    );

    // Enrolment: admin only, a real key, a known licence.
    let enrol = |machine: &str, pem: &str, t: &str| {
        fx.admin(
            "/admin/attestation-keys",
            t,
            json!({"licence": lic, "machine_id": machine, "public_key": pem}),
        )
    };
    assert_eq!(enrol("m1", &ak, &token).0, 401);
    assert_eq!(
        enrol(
            "m1",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            ADMIN
        )
        .0,
        400
    );
    let (s, v) = fx.admin(
        "/admin/attestation-keys",
        ADMIN,
        json!({"licence": "lic_nope", "machine_id": "m1", "public_key": ak}),
    );
    assert_eq!((s, v["error"].as_str()), (404, Some("unknown_licence")));
    let (s, v) = enrol("m1", &ak, ADMIN);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["alg"], "ecdsa-p256");
    assert!(v["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let (s, v) = enrol("m2", &ak_rsa, ADMIN);
    assert_eq!((s, v["alg"].as_str()), (201, Some("rsa")), "{v}");

    let policy = format!(
        r#"package sealtensors

import rego.v1

default allow := false

allow if count(deny_reasons) == 0

# The loader's own check cannot see attestation; the broker's enforces it.
at_broker if input.evaluator == "broker"

deny_reasons contains "no verified TPM quote" if {{
    at_broker
    not input.attestation.tpm.verified
}}

deny_reasons contains "PCR 16 is not the approved measurement" if {{
    at_broker
    input.attestation.tpm.pcrs.sha256["16"] != "{pcr16}"
}}
"#
    );
    let p = fx.seal(&policy);
    let header = {
        let b = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        b[..8 + n].to_vec()
    };

    // 1. The enrolled AK's quote of the approved PCR value opens the model,
    //    through the core client (ECDSA P-256 and RSASSA).
    let f = fx
        .open(
            &p,
            fx.access(&token, "m1").with_tpm(tpm.quoter("0x81010002")),
        )
        .unwrap();
    assert_eq!(f.read_tensor("w").unwrap(), fx.data);
    assert_eq!(fx.last_audit().0, "released");
    fx.open(
        &p,
        fx.access(&token, "m2").with_tpm(tpm.quoter("0x81010004")),
    )
    .unwrap();
    assert_eq!(fx.last_audit().0, "released");

    // 2. Without evidence the policy refuses.
    let e = fx.open(&p, fx.access(&token, "m1")).err().unwrap();
    let (s, reason) = denied(&e);
    assert_eq!(s, 403);
    assert!(reason.contains("no verified TPM quote"), "{reason}");
    assert_eq!(fx.last_audit().0, "policy_denied");

    // 3. A quote by an AK not enrolled for this machine.
    let e = fx
        .open(
            &p,
            fx.access(&token, "m1").with_tpm(tpm.quoter("0x81010003")),
        )
        .err()
        .unwrap();
    let (s, reason) = denied(&e);
    assert_eq!(s, 403);
    assert!(
        reason.contains("does not verify under the enrolled attestation key"),
        "{reason}"
    );
    assert_eq!(fx.last_audit().0, "attestation_bad_signature");
    let _ = rogue;
    // ... and by a machine with no key enrolled at all.
    let e = fx
        .open(
            &p,
            fx.access(&token, "m3").with_tpm(tpm.quoter("0x81010002")),
        )
        .err()
        .unwrap();
    assert!(denied(&e).1.contains("no TPM attestation key is enrolled"));
    assert_eq!(fx.last_audit().0, "attestation_not_enrolled");

    // 4. A replayed quote: made for an earlier request's nonce and ek.
    let q = tpm.quoter("0x81010002");
    let (old, _) = request(&header, "m1", &q, None);
    let (s, v) = fx.raw(&token, &old);
    assert_eq!(s, 200, "{v}");
    let (mut replay, _) = request(&header, "m1", &q, None);
    replay.attestation = old.attestation.clone();
    let (s, v) = fx.raw(&token, &replay);
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("attestation_nonce_mismatch")),
        "{v}"
    );
    assert_eq!(fx.last_audit().0, "attestation_nonce_mismatch");
    // The whole old request again: its nonce is spent.
    let (s, v) = fx.raw(&token, &old);
    assert_eq!((s, v["error"].as_str()), (409, Some("replayed_request")));

    // 5. A tampered attest blob (the clock changed): the signature fails.
    let (mut req, ev) = request(&header, "m1", &q, None);
    let mut blob = unb64(ev["quote"].as_str().unwrap());
    let n = blob.len();
    blob[n - 60] ^= 0x01;
    let mut ev2 = ev.clone();
    ev2["quote"] = b64(&blob).into();
    req.attestation = Some(json!({ "tpm": ev2 }));
    let (s, v) = fx.raw(&token, &req);
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("attestation_bad_signature")),
        "{v}"
    );
    // A truncated blob does not parse.
    let (mut req, ev) = request(&header, "m1", &q, None);
    let mut ev2 = ev.clone();
    ev2["quote"] = b64(&blob[..n - 1]).into();
    req.attestation = Some(json!({ "tpm": ev2 }));
    let (s, v) = fx.raw(&token, &req);
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("attestation_invalid")),
        "{v}"
    );
    drop(ev);

    // 6. PCR values that are not the quoted ones.
    let (mut req, ev) = request(&header, "m1", &q, None);
    let mut values = unb64(ev["pcr_values"].as_str().unwrap());
    assert_eq!(values.len(), 64);
    values[40] ^= 0x80;
    let mut ev2 = ev.clone();
    ev2["pcr_values"] = b64(&values).into();
    req.attestation = Some(json!({ "tpm": ev2 }));
    let (s, v) = fx.raw(&token, &req);
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("attestation_pcr_mismatch")),
        "{v}"
    );

    // 7. Evidence of a kind the broker does not verify.
    let (mut req, _) = request(&header, "m1", &q, None);
    req.attestation = Some(json!({"sgx": {}}));
    let (s, v) = fx.raw(&token, &req);
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("attestation_unsupported"))
    );

    // 8. A genuine quote of a PCR value the policy does not approve.
    tpm.extend_pcr(16, &sha256(b"an unapproved component"));
    let e = fx
        .open(
            &p,
            fx.access(&token, "m1").with_tpm(tpm.quoter("0x81010002")),
        )
        .err()
        .unwrap();
    let (s, reason) = denied(&e);
    assert_eq!(s, 403);
    assert!(
        reason.contains("PCR 16 is not the approved measurement"),
        "{reason}"
    );
    let (code, audited) = fx.last_audit();
    assert_eq!(code, "policy_denied");
    assert!(audited.contains("PCR 16"), "{audited}");

    // Every decision was audited, in order.
    let codes: Vec<String> = fx
        .store
        .audit_rows(100)
        .unwrap()
        .into_iter()
        .rev()
        .filter(|r| !r.decision.starts_with("admin"))
        .map(|r| r.code)
        .collect();
    assert_eq!(
        codes,
        [
            "released",
            "released",
            "policy_denied",
            "attestation_bad_signature",
            "attestation_not_enrolled",
            "released",
            "attestation_nonce_mismatch",
            "replayed_request",
            "attestation_bad_signature",
            "attestation_invalid",
            "attestation_pcr_mismatch",
            "attestation_unsupported",
            "policy_denied",
        ]
    );
}

#[test]
fn a_quote_failure_on_the_client_is_reported_not_retried_forever() {
    let fx = Fx::new();
    let (_, v) = fx.admin(
        "/admin/licences",
        ADMIN,
        json!({"customer": "acme", "models": [MODEL]}),
    );
    let token = v["token"].as_str().unwrap().to_string();
    let p = fx.seal("package sealtensors\nallow := true\n");
    let q = TpmQuoter::new("0x81010002").with_program("/nonexistent/tpm2_quote");
    let e = fx
        .open(&p, fx.access(&token, "m1").with_tpm(q))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("apt-get install tpm2-tools"), "{msg}");
    // Nothing reached the broker's release endpoint (admin rows aside).
    assert!(fx
        .store
        .audit_rows(10)
        .unwrap()
        .iter()
        .all(|r| r.decision.starts_with("admin")));
}

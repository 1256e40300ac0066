//! Access policies (SPEC §3.4, §3.6, §8.1 step 9): templates allow and deny,
//! the policy is authenticated like the rest of the header, no key slot is
//! touched when it denies, and hostile policies are bounded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use common::Fixture;
use sealtensors::keys::{Argon2Params, Identity, ModelKey, Passphrase, Slot};
use sealtensors::policy::{
    self, Decision, Policy, PolicyContext, Template, TemplateParams, MAX_POLICY_BYTES,
};
use sealtensors::seal::{self, SignatureDoc};
use sealtensors::{Error, Header, OpenOptions, SealOptions, SealedFile, Sealer};

const ALLOW_ALL: &str = "package sealtensors\n\ndefault allow := true\n";

fn render(t: Template, f: impl FnOnce(&mut TemplateParams)) -> String {
    let mut p = TemplateParams::default();
    f(&mut p);
    t.render(&p).unwrap()
}

fn seal_with(fx: &Fixture, name: &str, policy: &str) -> std::path::PathBuf {
    let text = policy.to_string();
    fx.seal(name, move |o| o.policy = Some(text))
}

fn kind(r: sealtensors::Result<SealedFile>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, the file opened"),
        Err(e) => match e {
            Error::InFile { source, .. } => *source,
            e => e,
        },
    }
}

fn denied_reasons(r: sealtensors::Result<SealedFile>) -> Vec<String> {
    match kind(r) {
        Error::PolicyDenied { reasons } => reasons,
        e => panic!("expected PolicyDenied, got {e:?}"),
    }
}

// ---- templates: allow and deny ----------------------------------------------------------

#[test]
fn expiry_template_past_denies_naming_the_date_future_allows() {
    let fx = Fixture::new();
    let past = seal_with(
        &fx,
        "past.safetensors",
        &render(Template::Expiry, |p| {
            p.not_after = Some("2020-01-01".into())
        }),
    );
    let r = fx.open(&past);
    let e = kind(r);
    let msg = e.to_string();
    assert!(matches!(e, Error::PolicyDenied { .. }), "{e:?}");
    assert!(
        msg.contains("the licence expired at 2020-01-01T00:00:00Z"),
        "{msg}"
    );
    let future = seal_with(
        &fx,
        "future.safetensors",
        &render(Template::Expiry, |p| {
            p.not_after = Some("2999-12-31T23:59:59+01:00".into())
        }),
    );
    fx.open_and_read_all(&future, &fx.opts()).unwrap();
    // The loader's clock decides (`now`), the same as for model.expires.
    let mut o = fx.opts();
    o.now = Some(33_000_000_000);
    assert!(matches!(
        kind(SealedFile::open(&future, &o)),
        Error::PolicyDenied { .. }
    ));
}

#[test]
fn machines_template_allows_this_machine_only() {
    let fx = Fixture::new();
    let here = policy::host_info()
        .machine_id
        .clone()
        .unwrap_or_else(|| "no-machine-id".into());
    let other = render(Template::Machines, |p| {
        p.machines = vec!["0123456789abcdef0123456789abcdef".into()]
    });
    let p = seal_with(&fx, "other.safetensors", &other);
    let reasons = denied_reasons(fx.open(&p));
    assert!(reasons[0].contains("not among the machines"), "{reasons:?}");
    if policy::host_info().machine_id.is_some() {
        let mine = render(Template::Machines, |p| {
            p.machines = vec!["x".into(), here.clone()]
        });
        let p = seal_with(&fx, "mine.safetensors", &mine);
        fx.open_and_read_all(&p, &fx.opts()).unwrap();
    }
}

#[test]
fn frameworks_template_allows_listed_frameworks() {
    let fx = Fixture::new();
    let text = render(Template::Frameworks, |p| {
        p.frameworks = vec!["torch".into(), "vllm".into()]
    });
    let p = seal_with(&fx, "fw.safetensors", &text);
    // No framework named: denied.
    let reasons = denied_reasons(fx.open(&p));
    assert!(reasons[0].contains("torch, vllm"), "{reasons:?}");
    let mut o = fx.opts();
    o.policy.framework = Some("jax".into());
    let reasons = denied_reasons(SealedFile::open(&p, &o));
    assert!(reasons[0].contains("jax"), "{reasons:?}");
    o.policy.framework = Some("vllm".into());
    o.policy.framework_version = Some("0.6.0".into());
    fx.open_and_read_all(&p, &o).unwrap();
}

#[test]
fn tensors_template_allows_a_subset() {
    let fx = Fixture::new();
    let text = render(Template::Tensors, |p| {
        p.tensors = vec!["layer.*".into(), "ids".into()]
    });
    let p = seal_with(&fx, "t.safetensors", &text);
    // Every tensor requested (the default): the others are named.
    let reasons = denied_reasons(fx.open(&p));
    assert!(
        reasons.iter().any(|r| r.contains("embed.weight")),
        "{reasons:?}"
    );
    let mut o = fx.opts();
    o.policy.requested = Some(vec!["layer.0.weight".into(), "ids".into()]);
    let f = SealedFile::open(&p, &o).unwrap();
    assert_eq!(f.policy_decision(), Some(&Decision::Allow));
    o.policy.requested = Some(vec!["layer.0.weight".into(), "mask".into()]);
    let reasons = denied_reasons(SealedFile::open(&p, &o));
    assert_eq!(
        reasons,
        vec!["tensor mask is not among the tensors the licence allows"]
    );
}

#[test]
fn templates_escape_their_parameters() {
    // A parameter that tries to close the string and add a rule stays a string.
    let hostile = "x\"]\nallow := true\n#".to_string();
    let text = render(Template::Machines, |p| p.machines = vec![hostile.clone()]);
    let mut pol = Policy::compile(&text).unwrap();
    let input = json!({"host": {"machine_id": hostile}});
    assert_eq!(pol.evaluate(&input).unwrap(), Decision::Allow);
    let input = json!({"host": {"machine_id": "x"}});
    assert!(!pol.evaluate(&input).unwrap().is_allow());
    assert!(Template::Expiry
        .render(&TemplateParams {
            not_after: Some("next tuesday".into()),
            ..Default::default()
        })
        .is_err());
    assert!(Template::Frameworks
        .render(&TemplateParams::default())
        .is_err());
}

#[test]
fn licence_claims_reach_the_policy() {
    let fx = Fixture::new();
    let text = "package sealtensors\nimport rego.v1\ndefault allow := false\n\
                allow if input.licence.customer == \"acme\"\n\
                deny_reasons contains \"no licence for acme\" if not allow\n";
    let p = seal_with(&fx, "lic.safetensors", text);
    assert_eq!(denied_reasons(fx.open(&p)), vec!["no licence for acme"]);
    let mut o = fx.opts();
    o.policy.licence = Some(json!({"customer": "acme"}));
    fx.open_and_read_all(&p, &o).unwrap();
    // From a file, as SEALTENSORS_LICENCE or --licence give it.
    let lic = fx.path("licence.json");
    std::fs::write(&lic, r#"{"customer": "acme"}"#).unwrap();
    let v = policy::licence_from_str_or_path(&lic.to_string_lossy()).unwrap();
    assert_eq!(v, json!({"customer": "acme"}));
    assert!(policy::licence_from_str_or_path("[1]").is_err());
}

#[test]
fn input_document_has_the_documented_shape() {
    let model = seal::ModelInfo {
        id: "acme/tiny".into(),
        version: "3".into(),
        created: 10,
        expires: None,
    };
    let ctx = PolicyContext {
        licence: Some(json!({})),
        framework: Some("torch".into()),
        framework_version: Some("2.4.0".into()),
        ..Default::default()
    };
    let v = policy::input_document(&ctx, &model, Some("m.safetensors"), ["a", "b"], 1577836800)
        .unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["time"],
        json!({"unix": 1577836800u64, "rfc3339": "2020-01-01T00:00:00Z"})
    );
    assert_eq!(v["model"]["name"], "tiny");
    assert_eq!(v["process"]["runtime"], "rust");
    assert_eq!(v["process"]["framework"], "torch");
    assert_eq!(v["request"], json!({"all": true, "tensors": ["a", "b"]}));
    assert_eq!(v["attestation"], json!({}));
    assert_eq!(v["evaluator"], "loader");
    assert_eq!(v["file"]["name"], "m.safetensors");
    assert!(v["host"].get("machine_id").is_some());
    assert_eq!(
        policy::parse_rfc3339("2020-01-01T01:00:00+01:00"),
        Some(1577836800)
    );
    assert_eq!(policy::rfc3339(951782400), "2000-02-29T00:00:00Z");
}

// ---- authenticity -------------------------------------------------------------------------

fn split(p: &Path) -> (Header, Vec<u8>) {
    let raw = std::fs::read(p).unwrap();
    let h = Header::parse_buffer(&raw).unwrap();
    let data = raw[h.data_start() as usize..].to_vec();
    (h, data)
}

fn join(p: &Path, h: &Header, data: &[u8]) {
    let mut out = h.to_bytes();
    out.extend_from_slice(data);
    std::fs::write(p, out).unwrap();
}

fn meta(h: &mut Header) -> &mut BTreeMap<String, String> {
    h.metadata.as_mut().unwrap()
}

#[test]
fn stripped_or_edited_policy_is_caught() {
    let fx = Fixture::new();
    let past = render(Template::Expiry, |p| {
        p.not_after = Some("2020-01-01".into())
    });
    // Signed file: the signature covers the policy.
    let p = seal_with(&fx, "s.safetensors", &past);
    let (h, data) = split(&p);
    let mut stripped = h.clone();
    meta(&mut stripped).remove(seal::KEY_POLICY);
    let q = fx.path("stripped.safetensors");
    join(&q, &stripped, &data);
    assert!(matches!(kind(fx.open(&q)), Error::BadSignature));
    let mut edited = h.clone();
    meta(&mut edited).insert(seal::KEY_POLICY.into(), ALLOW_ALL.into());
    join(&q, &edited, &data);
    assert!(matches!(kind(fx.open(&q)), Error::BadSignature));

    // Unsigned file: the MAC covers it (checked once the key is unwrapped).
    let p = fx.seal("u.safetensors", |o| {
        o.signing_key = None;
        o.policy = Some(past.clone());
    });
    let lax = OpenOptions {
        identities: vec![&fx.id],
        ..Default::default()
    };
    assert!(matches!(
        kind(SealedFile::open(&p, &lax)),
        Error::PolicyDenied { .. }
    ));
    let (h, data) = split(&p);
    let mut stripped = h.clone();
    meta(&mut stripped).remove(seal::KEY_POLICY);
    join(&q, &stripped, &data);
    assert!(matches!(
        kind(SealedFile::open(&q, &lax)),
        Error::BadHeaderMac
    ));
    let mut edited = h;
    meta(&mut edited).insert(seal::KEY_POLICY.into(), ALLOW_ALL.into());
    join(&q, &edited, &data);
    assert!(matches!(
        kind(SealedFile::open(&q, &lax)),
        Error::BadHeaderMac
    ));
}

// ---- no key slot is touched when the policy denies ---------------------------------------

/// An identity that records every slot it is shown.
struct Spy<'a> {
    inner: &'a dyn Identity,
    calls: AtomicUsize,
}

impl Identity for Spy<'_> {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<sealtensors::Result<ModelKey>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(slot, mk_id)
    }
    fn describe(&self) -> String {
        "spy".into()
    }
}

/// A file with an x25519 slot and a passphrase slot whose Argon2 cost is
/// above the reader's limit: trying it fails with ExcessiveWork.
fn hostile_passphrase_file(fx: &Fixture, name: &str, policy: &str) -> std::path::PathBuf {
    let mk = ModelKey::generate().unwrap();
    let text = policy.to_string();
    let k = mk.clone();
    let p = fx.seal(name, move |o| {
        o.recipients.push(Box::new(Passphrase::with_params(
            "pw",
            Argon2Params {
                memory_kib: 64,
                iterations: 1,
                lanes: 1,
            },
        )));
        o.model_key = Some(k);
        o.policy = Some(text);
    });
    let (mut h, data) = split(&p);
    let mut slots: Vec<Value> =
        serde_json::from_str(&h.metadata.as_ref().unwrap()[seal::KEY_SLOTS]).unwrap();
    for s in &mut slots {
        if s["type"] == "argon2id" {
            s["m"] = json!(4u64 << 20);
        }
    }
    meta(&mut h).insert(
        seal::KEY_SLOTS.into(),
        serde_json::to_string(&slots).unwrap(),
    );
    let fid: [u8; 32] = {
        let doc: Value =
            serde_json::from_str(&h.metadata.as_ref().unwrap()[seal::KEY_SEAL]).unwrap();
        URL_SAFE_NO_PAD
            .decode(doc["file_id"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    let mac = seal::header_mac(&mk, &fid, &h).unwrap();
    meta(&mut h).insert(seal::KEY_MAC.into(), URL_SAFE_NO_PAD.encode(mac));
    let sig = fx.signer.sign(&seal::signed_message(&h)).unwrap();
    let doc = SignatureDoc {
        alg: "ed25519".into(),
        key: fx.signer.verifying_key().to_string(),
        sig: URL_SAFE_NO_PAD.encode(sig),
    };
    meta(&mut h).insert(
        seal::KEY_SIGNATURE.into(),
        serde_json::to_string(&doc).unwrap(),
    );
    join(&p, &h, &data);
    p
}

#[test]
fn a_denial_touches_no_key_slot() {
    let fx = Fixture::new();
    let past = render(Template::Expiry, |p| {
        p.not_after = Some("2020-01-01".into())
    });
    let denied = hostile_passphrase_file(&fx, "denied.safetensors", &past);
    let allowed = hostile_passphrase_file(&fx, "allowed.safetensors", ALLOW_ALL);
    let pass = Passphrase::new("pw");

    // Allowed: the passphrase slot is tried and refused, proving it would be.
    let spy = Spy {
        inner: &pass,
        calls: AtomicUsize::new(0),
    };
    let o = OpenOptions {
        identities: vec![&spy],
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    assert!(matches!(
        kind(SealedFile::open(&allowed, &o)),
        Error::ExcessiveWork { .. }
    ));
    assert!(spy.calls.load(Ordering::SeqCst) > 0);

    // Denied: neither identity is shown any slot.
    let spy_pass = Spy {
        inner: &pass,
        calls: AtomicUsize::new(0),
    };
    let spy_x = Spy {
        inner: &fx.id,
        calls: AtomicUsize::new(0),
    };
    let o = OpenOptions {
        identities: vec![&spy_pass, &spy_x],
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    assert!(matches!(
        kind(SealedFile::open(&denied, &o)),
        Error::PolicyDenied { .. }
    ));
    assert_eq!(spy_pass.calls.load(Ordering::SeqCst), 0);
    assert_eq!(spy_x.calls.load(Ordering::SeqCst), 0);

    // A model key passed directly (another shard's) is not used either.
    let key_holder = fx.seal("k.safetensors", |o| o.policy = None);
    let k = fx.open(&key_holder).unwrap().model_key().cloned().unwrap();
    let shared = fx.seal("shared.safetensors", |o| {
        o.model_key = Some(k.clone());
        o.policy = Some(past.clone());
    });
    let o = OpenOptions {
        model_key: Some(k),
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    assert!(matches!(
        kind(SealedFile::open(&shared, &o)),
        Error::PolicyDenied { .. }
    ));
    // A locked open (inspection) records the denial instead.
    let o = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        locked: true,
        ..Default::default()
    };
    let f = SealedFile::open(&shared, &o).unwrap();
    assert!(matches!(
        f.policy_decision(),
        Some(Decision::Deny { reasons }) if reasons[0].contains("2020-01-01T00:00:00Z")
    ));
    assert!(f.model_key().is_none());
}

// ---- seal-time checks and limits ----------------------------------------------------------

fn sealer_with(policy: &str) -> sealtensors::Result<Sealer> {
    Sealer::new(SealOptions {
        recipients: vec![Box::new(
            sealtensors::keys::X25519Identity::generate()
                .unwrap()
                .recipient(),
        )],
        policy: Some(policy.into()),
        ..Default::default()
    })
}

#[test]
fn seal_refuses_bad_policies_and_reports_a_sample_denial() {
    for bad in [
        "package sealtensors\nallow if {\n", // does not parse
        "package sealtensors\nx := 1\n",     // no decision rule
        "package other\nallow := true\n",    // decision in another package
        "package sealtensors\nallow if count(numbers.range(0, 100000000000)) > 0\n",
        "package sealtensors\nallow if sprintf(\"%09999999999d\", [1]) != \"\"\n",
        "package sealtensors\nallow if replace(\"a\", \"a\", \"bb\") != \"\"\n",
        "package sealtensors\nallow if time.now_ns() > 0\n",
        "package sealtensors\nallow if count(input) > 0 with input as {}\n",
    ] {
        match sealer_with(bad) {
            Err(Error::PolicyInvalid { .. }) => {}
            Err(e) => panic!("{bad:?}: expected PolicyInvalid, got {e:?}"),
            Ok(_) => panic!("{bad:?}: sealed"),
        }
    }
    let s = sealer_with(&render(Template::Expiry, |p| {
        p.not_after = Some("2020-01-01".into())
    }))
    .unwrap();
    assert!(matches!(s.policy_decision(), Some(Decision::Deny { .. })));
    let s = sealer_with(ALLOW_ALL).unwrap();
    assert_eq!(s.policy_decision(), Some(&Decision::Allow));
}

#[test]
fn policy_size_is_limited_at_seal_and_at_open() {
    let big = format!(
        "package sealtensors\n\ndefault allow := true\n{}",
        "# padding padding padding padding padding padding padding\n".repeat(MAX_POLICY_BYTES / 50)
    );
    assert!(big.len() > MAX_POLICY_BYTES);
    assert!(matches!(
        sealer_with(&big),
        Err(Error::PolicyInvalid { .. })
    ));
    // At open: a file edited to carry it (by an insider who re-signs).
    let fx = Fixture::new();
    let p = hostile_passphrase_file(&fx, "big.safetensors", ALLOW_ALL);
    let (mut h, data) = split(&p);
    meta(&mut h).insert(seal::KEY_POLICY.into(), big);
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    let sig = fx.signer.sign(&seal::signed_message(&h)).unwrap();
    let doc = SignatureDoc {
        alg: "ed25519".into(),
        key: fx.signer.verifying_key().to_string(),
        sig: URL_SAFE_NO_PAD.encode(sig),
    };
    meta(&mut h).insert(
        seal::KEY_SIGNATURE.into(),
        serde_json::to_string(&doc).unwrap(),
    );
    join(&p, &h, &data);
    let e = kind(fx.open(&p));
    assert!(
        matches!(e, Error::LimitExceeded { what, .. } if what.contains("policy")),
        "{e:?}"
    );
}

// ---- pathological policies are bounded ------------------------------------------------------

#[test]
fn pathological_policies_are_stopped_by_the_time_limit() {
    let cases = [
        // A cross product of 11^8 (about 2e8) combinations.
        "package sealtensors\nimport rego.v1\n\
         xs := [x | some x in [1,2,3,4,5,6,7,8,9,10,11]]\n\
         allow if count([1 | some a in xs; some b in xs; some c in xs; some d in xs; \
         some e in xs; some f in xs; some g in xs; some h in xs]) > 0\n",
        // Nested comprehensions over every pair of a growing set.
        "package sealtensors\nimport rego.v1\n\
         a := {[x, y] | some x in [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]; some y in [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}\n\
         b := {[p, q] | some p in a; some q in a}\n\
         c := {[p, q] | some p in b; some q in a}\n\
         allow if count(c) > 0\n",
    ];
    for text in cases {
        let mut p = Policy::compile(text).unwrap();
        let t = Instant::now();
        let r = p.evaluate(&json!({}));
        let took = t.elapsed();
        match r {
            Err(Error::PolicyInvalid { reason }) => {
                assert!(reason.contains("time limit"), "{reason}")
            }
            other => panic!("expected the time limit, got {other:?}"),
        }
        assert!(
            took < Duration::from_secs(2),
            "the time limit did not stop it: {took:?}"
        );
    }
}

#[test]
fn a_pathological_policy_in_a_file_fails_closed_quickly() {
    let fx = Fixture::new();
    let text = "package sealtensors\nimport rego.v1\n\
         xs := [x | some x in [1,2,3,4,5,6,7,8,9,10,11]]\n\
         allow if count([1 | some a in xs; some b in xs; some c in xs; some d in xs; \
         some e in xs; some f in xs; some g in xs; some h in xs]) > 0\n";
    // The seal-time test evaluation hits the limit too: a seal error.
    assert!(matches!(
        sealer_with(text),
        Err(Error::PolicyInvalid { .. })
    ));
    let p = hostile_passphrase_file(&fx, "slow.safetensors", ALLOW_ALL);
    let (mut h, data) = split(&p);
    meta(&mut h).insert(seal::KEY_POLICY.into(), text.into());
    join(&p, &h, &data);
    let t = Instant::now();
    // Unsigned-looking use: a loader that trusts nobody still evaluates the
    // (unauthenticated) policy first, and fails closed in bounded time.
    let lax = OpenOptions {
        identities: vec![&fx.id],
        ..Default::default()
    };
    let e = kind(SealedFile::open(&p, &lax));
    assert!(
        matches!(e, Error::BadSignature | Error::PolicyInvalid { .. }),
        "{e:?}"
    );
    // Drop the signature: now the policy is evaluated (and times out).
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    join(&p, &h, &data);
    assert!(matches!(
        kind(SealedFile::open(&p, &lax)),
        Error::PolicyInvalid { .. }
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
}

// ---- cost ---------------------------------------------------------------------------------

/// The cost of the policy step when opening a 2000-tensor model. Not a timed
/// test: run it with
/// `cargo test --release -p sealtensors --test policy -- --ignored --nocapture policy_cost`.
#[test]
#[ignore]
fn policy_cost_2000_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("m.safetensors");
    let data = vec![1u8; 16];
    let names: Vec<String> = (0..2000)
        .map(|i| format!("model.layers.{}.mlp.w{}", i / 10, i % 10))
        .collect();
    let refs: Vec<_> = names
        .iter()
        .map(|n| sealtensors::TensorRef {
            name: n.clone(),
            dtype: sealtensors::Dtype::F32,
            shape: vec![4],
            data: &data,
        })
        .collect();
    sealtensors::write_plain(&plain, &refs, None, false).unwrap();
    let id = sealtensors::keys::X25519Identity::generate().unwrap();
    let expiry = render(Template::Expiry, |p| {
        p.not_after = Some("2999-01-01".into())
    });
    let seal = |name: &str, policy: Option<String>| {
        let out = dir.path().join(name);
        Sealer::new(SealOptions {
            recipients: vec![Box::new(id.recipient())],
            policy,
            ..Default::default()
        })
        .unwrap()
        .seal_file(&plain, &out)
        .unwrap();
        out
    };
    let without = seal("a.safetensors", None);
    let with = seal("b.safetensors", Some(expiry));
    let o = OpenOptions {
        identities: vec![&id],
        ..Default::default()
    };
    let time = |p: &Path| {
        for _ in 0..20 {
            SealedFile::open(p, &o).unwrap();
        }
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            SealedFile::open(p, &o).unwrap();
        }
        t.elapsed() / n
    };
    let a = time(&without);
    let b = time(&with);
    println!(
        "open, 2000 tensors: without policy {a:?}, with the expiry template {b:?}, policy cost {:?}",
        b.saturating_sub(a)
    );
}

/// Found in review: the Rego parser backtracks exponentially in bracket
/// nesting (depth 18 took 23 s) before any evaluation timer runs, and a
/// policy is parsed from untrusted files before any key is needed.
#[test]
fn deeply_nested_policy_is_refused_before_parsing() {
    let depth = 40;
    let text = format!(
        "package sealtensors\nallow := true\nx := {}1{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let t = std::time::Instant::now();
    let Err(err) = sealtensors::policy::Policy::compile(&text) else {
        panic!("a deeply nested policy must be refused");
    };
    assert!(format!("{err:?}").contains("nests"), "{err:?}");
    assert!(t.elapsed().as_millis() < 500);
}

/// Found in review: one `concat` of 5000 copies of a 100 MB string asked for
/// 100 GB in a single step (no timer check) and aborted the process.
#[test]
fn concat_cannot_build_huge_strings() {
    let text = "package sealtensors\n\
        a0 := \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n\
        a1 := concat(\"\", [x | some i in [1,2,3,4,5,6,7,8,9,10]; some j in [1,2,3,4,5,6,7,8,9,10]; some k in [1,2,3,4,5,6,7,8,9,10]; x := a0])\n\
        a2 := concat(\"\", [x | some i in [1,2,3,4,5,6,7,8,9,10]; some j in [1,2,3,4,5,6,7,8,9,10]; some k in [1,2,3,4,5,6,7,8,9,10]; x := a1])\n\
        allow if count(a2) > 0\n";
    let Ok(mut policy) = sealtensors::policy::Policy::compile(text) else {
        panic!("it compiles");
    };
    let r = policy.evaluate(&serde_json::json!({}));
    assert!(
        r.is_err(),
        "the capped concat must fail the evaluation: {r:?}"
    );
}

// ---- SPEC §3.4, §9: the profile cannot be bypassed, parsing is bounded -----------------------

fn compile_error(text: &str) -> Error {
    match Policy::compile(text) {
        Ok(_) => panic!("the policy compiled:\n{text}"),
        Err(e) => Error::from(e),
    }
}

fn assert_policy_invalid(text: &str, needle: &str) {
    match compile_error(text) {
        Error::PolicyInvalid { reason } => {
            assert!(
                reason.contains(needle),
                "{reason:?} lacks {needle:?}\n{text}"
            )
        }
        e => panic!("expected PolicyInvalid, got {e:?}\n{text}"),
    }
}

/// An unsigned copy of an allow-all file, its policy replaced by `text`
/// (what anyone can make: no key is needed, the policy runs first).
fn file_with_policy(fx: &Fixture, name: &str, text: &str) -> std::path::PathBuf {
    let p = seal_with(fx, name, ALLOW_ALL);
    let (mut h, data) = split(&p);
    meta(&mut h).insert(seal::KEY_POLICY.into(), text.into());
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    join(&p, &h, &data);
    p
}

/// Found in review: the check accepted a call whose name is also a rule the
/// policy defines, and regorus resolved it to the builtin (the rule is not a
/// function), so `sprintf := 1` opened the way to `sprintf`.
#[test]
fn policy_shadowing_sprintf_cannot_reach_the_builtin() {
    for text in [
        "package sealtensors\nimport rego.v1\nsprintf := 1\nallow if sprintf(\"%d\", [1]) == \"1\"\n",
        "package sealtensors\nimport rego.v1\nreplace := 1\nallow if replace(\"a\", \"a\", \"bb\") != \"\"\n",
        "package sealtensors\nimport rego.v1\ndefault sprintf(_) := 1\nallow if sprintf(1) == 1\n",
        "package sealtensors\nimport rego.v1\nsprintf(x) := x\nallow if sprintf(1) == 1\n",
        "package sealtensors\nimport rego.v1\nsprintf contains 1\nallow if count(sprintf) == 1\n",
        // An allowed builtin may not be shadowed either.
        "package sealtensors\nimport rego.v1\ncount := 1\nallow if count == 1\n",
        // A body continued on the next line is not taken for a definition.
        "package sealtensors\nimport rego.v1\nallow if\n  sprintf(\"%d\", [1]) == \"1\"\n",
    ] {
        assert_policy_invalid(text, "builtin");
    }
    // An import alias may not take a builtin's name.
    assert_policy_invalid(
        "package sealtensors\nimport rego.v1\nimport data.sealtensors as sprintf\nallow := true\n",
        "builtin",
    );
    // Defining a name that is not a builtin, and calling it, still works, and
    // so does an allowed builtin called on a continued line.
    for text in [
        "package sealtensors\nimport rego.v1\nsprintf_ok(x) := x\nallow if sprintf_ok(1) == 1\n",
        "package sealtensors\nimport rego.v1\nallow if\n  count([1]) == 1\n",
    ] {
        let mut p = Policy::compile(text).unwrap_or_else(|e| panic!("{:?}", Error::from(e)));
        assert_eq!(p.evaluate(&json!({})).unwrap(), Decision::Allow, "{text}");
    }
}

/// Found in review: one `sprintf` with a huge width allocated gigabytes
/// before the 100 ms timer could act, and `verify` (and Python `safe_open`)
/// died with SIGABRT; no key and no signer were needed. Now the file is
/// refused with an error, before anything is allocated.
#[test]
fn policy_sprintf_huge_width_is_refused_not_aborted() {
    let fx = Fixture::new();
    let text = "package sealtensors\nimport rego.v1\nsprintf := 1\n\
                allow if sprintf(\"%999999999999d\", [1]) != \"\"\n";
    let p = file_with_policy(&fx, "sprintf.safetensors", text);
    // A loader that pins no signer and holds no key (the default).
    for opts in [
        OpenOptions::default(),
        OpenOptions {
            locked: true,
            ..Default::default()
        },
        OpenOptions {
            identities: vec![&fx.id],
            ..Default::default()
        },
    ] {
        match kind(SealedFile::open(&p, &opts)) {
            Error::PolicyInvalid { reason } => assert!(reason.contains("sprintf"), "{reason}"),
            e => panic!("expected PolicyInvalid, got {e:?}"),
        }
    }
    // Without the shadowing rule it was already outside the profile.
    assert_policy_invalid(
        "package sealtensors\nallow if sprintf(\"%999999999999d\", [1]) != \"\"\n",
        "sprintf",
    );
}

/// Found in review: regorus reads a number literal with an exponent as an
/// exact integer, computing 10^exponent while parsing (`0e999999999` passes
/// its f64 range check): minutes of work before any timer.
#[test]
fn policy_number_with_huge_exponent_is_refused_before_parsing() {
    for n in [
        "0e999999999",
        "0.0E+2000000000",
        "1e309",
        "0e0000000000000309",
    ] {
        let text = format!("package sealtensors\nx := {n}\nallow := true\n");
        assert_policy_invalid(&text, "exponent");
    }
    for n in ["1e308", "2.5E-3", "0e000308", "12", "0.5"] {
        let text = format!("package sealtensors\nx := {n}\nallow := true\n");
        Policy::compile(&text).unwrap_or_else(|e| panic!("{n}: {:?}", Error::from(e)));
    }
}

/// Found in review: regorus's `glob.match` rewrites both strings once per
/// entry of the delimiter list, each pass turning every delimiter into three
/// bytes: a list of one delimiter repeated 100,000 times grows a 64 KiB
/// string to 13 GB in one call the timer cannot interrupt.
#[test]
fn policy_glob_match_with_many_delimiters_is_refused_not_run() {
    let text = "package sealtensors\nimport rego.v1\n\
        a := concat(\"\", [\"a\" | some i in [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]])\n\
        b := concat(\"\", [a | some i in [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]])\n\
        c := concat(\"\", [b | some i in [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]])\n\
        d := array.concat([\"a\"], [\"a\"])\n\
        e := array.concat(d, d)\n\
        f := array.concat(e, e)\n\
        g := array.concat(f, f)\n\
        h := array.concat(g, g)\n\
        allow if glob.match(\"*\", h, c)\n";
    let mut p = Policy::compile(text).unwrap();
    match p.evaluate(&json!({})) {
        Err(Error::PolicyInvalid { reason }) => {
            assert!(reason.contains("delimiters"), "{reason}")
        }
        other => panic!("expected PolicyInvalid, got {other:?}"),
    }
    // The limit is far from honest use; glob.match behaves as before.
    let mut p = Policy::compile(
        "package sealtensors\nimport rego.v1\n\
         allow if {\n\
           glob.match(\"model.*.w\", null, \"model.layers.0.w\")\n\
           glob.match(\"model.*.w\", [\".\"], \"model.x.w\")\n\
           not glob.match(\"model.*.w\", [\".\"], \"model.layers.0.w\")\n\
         }\n",
    )
    .unwrap();
    assert_eq!(p.evaluate(&json!({})).unwrap(), Decision::Allow);
}

/// Found in review: a valid 64 KiB policy of 2,000 rules, each nested 10
/// deep (within the nesting limit), took 34 s to parse on every open, before
/// any key check. The parse work is bounded on the text, before parsing.
#[test]
fn policy_of_2000_nested_rules_is_refused_quickly() {
    let mut text = String::from("package sealtensors\nallow := true\n");
    let mut n = 0;
    while text.len() < MAX_POLICY_BYTES - 64 {
        text.push_str(&format!("r{n} := {}1{}\n", "[".repeat(10), "]".repeat(10)));
        n += 1;
    }
    assert!(n >= 2000, "{n} rules");
    assert_policy_invalid(&text, "too much work to parse");
    // At open, from a file anyone can make.
    let fx = Fixture::new();
    let p = file_with_policy(&fx, "nested.safetensors", &text);
    match kind(SealedFile::open(&p, &OpenOptions::default())) {
        Error::PolicyInvalid { reason } => {
            assert!(reason.contains("too much work to parse"), "{reason}")
        }
        e => panic!("expected PolicyInvalid, got {e:?}"),
    }
}

/// The parse-work limit leaves room for large honest policies: 64 KiB of
/// flat rules, and fifty rules nested like the templates.
#[test]
fn large_honest_policies_are_within_the_parse_work_limit() {
    let mut flat = String::from("package sealtensors\nimport rego.v1\ndefault allow := false\n");
    let mut n = 0;
    while flat.len() < MAX_POLICY_BYTES - 200 {
        flat.push_str(&format!(
            "allow if input.licence.customer == \"customer-{n}\"\n"
        ));
        n += 1;
    }
    Policy::compile(&flat).unwrap_or_else(|e| panic!("{:?}", Error::from(e)));
    let mut nested = String::from("package sealtensors\nimport rego.v1\ndefault allow := false\n");
    for i in 0..50 {
        nested.push_str(&format!(
            "deny_reasons contains r if {{\n\tsome name in input.request.tensors\n\t\
             not startswith(name, \"layer{i}.\")\n\t\
             r := concat(\"\", [\"tensor \", name, \" is not allowed (\", \"{i}\", \")\"])\n}}\n"
        ));
    }
    nested.push_str("allow if count(deny_reasons) == 0\n");
    assert!(nested.len() < MAX_POLICY_BYTES);
    Policy::compile(&nested).unwrap_or_else(|e| panic!("{:?}", Error::from(e)));
}

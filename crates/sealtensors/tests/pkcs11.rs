//! P-256 identities held in a real software token (SoftHSM2, Debian
//! `softhsm2`; `scripts/system-deps.sh` installs it): a key made on the
//! token opens files sealed to it, its private half never leaves the token,
//! and a wrong PIN, a missing token or a removed key is a typed error.
//!
//! Every token lives in one temporary folder named by SOFTHSM2_CONF, set
//! once before the module is first loaded (a module is initialised once per
//! process, and SoftHSM2 reads its tokens then), so all tokens are made up
//! front: `main` for most tests, `pinless` for the wrong-PIN test (PKCS#11
//! logins are per process and token: once a test has logged in to `main`, a
//! wrong PIN there is not asked for again).
#![cfg(feature = "pkcs11")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::hardware::{softhsm_module, softhsm_tokens};
use common::*;
use sealtensors::keys::{
    load_identity, load_recipient, load_signing_key, pkcs11_generate_ecdsa_p256,
    pkcs11_generate_ed25519, pkcs11_generate_p256, Identity, KeyFile, Pkcs11Identity,
};
use sealtensors::{
    Authenticity, Error, OpenOptions, Pkcs11Problem, SealOptions, SealedFile, Sealer,
};

const PIN: &str = "246810";

struct Tokens {
    _dir: tempfile::TempDir,
    module: PathBuf,
    pin_file: PathBuf,
    wrong_pin_file: PathBuf,
}

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let conf = softhsm_tokens(dir.path(), &["main", "pinless"], PIN);
        // Set before any thread loads the module (this runs inside the
        // OnceLock, which every test goes through first).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        let wrong_pin_file = dir.path().join("wrong-pin");
        std::fs::write(&wrong_pin_file, "000000\n").unwrap();
        Tokens {
            _dir: dir,
            module: softhsm_module(),
            pin_file,
            wrong_pin_file,
        }
    })
}

/// Held by each test for its whole run: SoftHSM2 2.6 fails a key generation
/// (CKR_GENERAL_ERROR) when another session of the same process works on the
/// token at that moment, so the tests, which share one token, take turns.
/// (The library serialises its own key generations; a process that makes
/// keys while it loads models is not a use case.)
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static W: std::sync::Mutex<()> = std::sync::Mutex::new(());
    W.lock().unwrap_or_else(|e| e.into_inner())
}

fn gen_p256(uri: &str) -> sealtensors::Result<sealtensors::keys::P256Recipient> {
    pkcs11_generate_p256(uri)
}

fn gen_ed25519(uri: &str) -> sealtensors::Result<sealtensors::keys::VerifyingKey> {
    pkcs11_generate_ed25519(uri)
}

/// A logged-in read-write session on `main` through cryptoki directly, for
/// what an administrator (or an attacker with the PIN) does to the token.
fn admin_session() -> cryptoki::session::Session {
    use cryptoki::context::Pkcs11;
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let ctx = Pkcs11::new(&tokens().module).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "main")
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    // Already logged in by the process's identities: that is fine.
    let _ = s.login(UserType::User, Some(&AuthPin::from(PIN.to_string())));
    s
}

fn uri(token: &str, object: &str) -> String {
    let t = tokens();
    format!(
        "pkcs11:token={token};object={object}?module-path={}&pin-source=file:{}",
        t.module.display(),
        t.pin_file.display()
    )
}

fn seal_to(fx: &Fixture, name: &str, r: Box<dyn sealtensors::keys::Recipient>) -> PathBuf {
    let out = fx.path(name);
    Sealer::new(SealOptions {
        recipients: vec![r],
        signing_key: Some(fx.signer.try_clone().unwrap()),
        chunk_size: 4096,
        model_id: "acme/test".into(),
        model_version: "1".into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.plain, &out)
    .unwrap();
    out
}

fn open_with(fx: &Fixture, p: &Path, id: &dyn Identity) -> sealtensors::Result<SealedFile> {
    SealedFile::open(
        p,
        &OpenOptions {
            identities: vec![id],
            trusted: vec![fx.signer.verifying_key()],
            require_encrypted: true,
            ..Default::default()
        },
    )
}

fn problem(e: &Error) -> &Pkcs11Problem {
    match e.kind() {
        Error::Pkcs11 { problem, .. } => problem,
        other => panic!("expected a PKCS#11 error, got {other:?} ({e})"),
    }
}

#[test]
fn a_token_key_opens_what_was_sealed_to_it() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    let u = uri("main", "deploy-1");
    let recipient = gen_p256(&u).unwrap();
    // The recipient read back from the token is the one keygen printed.
    let again = load_recipient(&u).unwrap();
    assert_eq!(again.describe(), format!("p256 {}", recipient.rid()));
    let p = seal_to(&fx, "to-token.safetensors", Box::new(recipient));
    // As the CLI and Python load -i values and SEALTENSORS_IDENTITY entries.
    let id = load_identity(Path::new(&u)).unwrap();
    assert!(id.describe().contains("token=main"), "{}", id.describe());
    let f = open_with(&fx, &p, id.as_ref()).unwrap();
    for t in f.tensors().to_vec() {
        assert_eq!(f.read_tensor(&t.name).unwrap(), fx.model.data(&t.name));
    }
    // Another key on the same token does not open it.
    let other = uri("main", "deploy-other");
    gen_p256(&other).unwrap();
    let e = open_with(&fx, &p, &Pkcs11Identity::open(&other).unwrap())
        .err()
        .unwrap();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
}

#[test]
fn the_private_key_never_leaves_the_token() {
    let _turn = one_at_a_time();
    use cryptoki::context::Pkcs11;
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let u = uri("main", "never-leaves");
    gen_p256(&u).unwrap();
    let _id = Pkcs11Identity::open(&u).unwrap(); // loads and logs in
                                                 // A second handle on the module, already initialised in this process by
                                                 // the identity above (cryptoki never finalises on drop).
    let ctx = Pkcs11::new(&tokens().module).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "main")
        .unwrap();
    let s = ctx.open_ro_session(slot).unwrap();
    let keys = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"never-leaves".to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let attrs = s
        .get_attributes(
            keys[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Derive,
                AttributeType::Sign,
            ],
        )
        .unwrap();
    for a in attrs {
        match a {
            Attribute::Sensitive(v) => assert!(v, "sensitive"),
            Attribute::Extractable(v) => assert!(!v, "extractable"),
            Attribute::Derive(v) => assert!(v, "derive"),
            Attribute::Sign(v) => assert!(!v, "sign"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Its value cannot be read.
    let value = s.get_attributes(keys[0], &[AttributeType::Value]).unwrap();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token gave out the private key"
    );
}

#[test]
fn wrong_pin_missing_token_and_missing_key_are_typed() {
    let _turn = one_at_a_time();
    let t = tokens();
    // No test logs in to `pinless` with the right PIN, so the token is asked.
    let wrong = format!(
        "pkcs11:token=pinless;object=k?module-path={}&pin-source=file:{}",
        t.module.display(),
        t.wrong_pin_file.display()
    );
    let e = Pkcs11Identity::open(&wrong).err().unwrap();
    assert_eq!(problem(&e), &Pkcs11Problem::PinIncorrect, "{e}");
    assert!(e.to_string().contains("PIN"), "{e}");

    let e = Pkcs11Identity::open(&uri("no-such-token", "k"))
        .err()
        .unwrap();
    assert!(
        matches!(problem(&e), Pkcs11Problem::TokenNotFound(_)),
        "{e}"
    );
    assert!(e.to_string().contains("plugged in"), "{e}");

    let e = Pkcs11Identity::open(&uri("main", "no-such-key"))
        .err()
        .unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::KeyNotFound(_)), "{e}");
    assert!(e.to_string().contains("keygen --pkcs11"), "{e}");

    // No PIN anywhere.
    let no_pin = format!(
        "pkcs11:token=main;object=k?module-path={}",
        t.module.display()
    );
    if std::env::var_os("SEALTENSORS_PKCS11_PIN").is_none() {
        let e = Pkcs11Identity::open(&no_pin).err().unwrap();
        assert_eq!(problem(&e), &Pkcs11Problem::NoPin, "{e}");
    }
}

#[test]
fn a_key_removed_from_the_token_is_a_typed_error() {
    let _turn = one_at_a_time();
    use cryptoki::object::Attribute;
    let fx = Fixture::new();
    let u = uri("main", "to-remove");
    let r = gen_p256(&u).unwrap();
    let p = seal_to(&fx, "removed.safetensors", Box::new(r));
    let id = Pkcs11Identity::open(&u).unwrap();
    // Delete both halves through the module, as an administrator would.
    let s = admin_session();
    for h in s
        .find_objects(&[Attribute::Label(b"to-remove".to_vec())])
        .unwrap()
    {
        s.destroy_object(h).unwrap();
    }
    drop(s);
    // The open identity's handle is gone, and a new one finds nothing.
    let e = open_with(&fx, &p, &id).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::KeyNotFound(_)), "{e}");
    let e = Pkcs11Identity::open(&u).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::KeyNotFound(_)), "{e}");
}

#[test]
fn keygen_never_replaces_a_key() {
    let _turn = one_at_a_time();
    let u = uri("main", "only-once");
    gen_p256(&u).unwrap();
    let e = gen_p256(&u).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::WrongKey(_)), "{e}");
    assert!(e.to_string().contains("never replaced"), "{e}");
}

#[test]
fn a_token_key_signs_headers_that_verify_as_ed25519() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    let u = uri("main", "publisher-1");
    let signer = gen_ed25519(&u).unwrap();
    let key = load_signing_key(Path::new(&u)).unwrap();
    assert_eq!(key.verifying_key(), signer);
    // A plain Ed25519 signature: the software verifier accepts it.
    let sig = key.sign(b"message").unwrap();
    assert!(signer.verify(b"message", &sig));
    assert!(!signer.verify(b"messagf", &sig));
    let out = fx.path("token-signed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        signing_key: Some(key.try_clone().unwrap()),
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.plain, &out)
    .unwrap();
    let f = SealedFile::open(
        &out,
        &OpenOptions {
            identities: vec![&fx.id],
            trusted: vec![signer],
            require_signed: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(f.authenticity(), Authenticity::Trusted(k) if *k == signer));
    // Another signer trusted instead: refused.
    let e = SealedFile::open(
        &out,
        &OpenOptions {
            identities: vec![&fx.id],
            trusted: vec![fx.signer.verifying_key()],
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e.kind(), Error::UntrustedSigner { .. }), "{e:?}");
    // A token key has no file form.
    let e = KeyFile::Signing(key)
        .save(&fx.path("k.jwk"), false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("pkcs11: URI"), "{e}");
    assert!(!fx.path("k.jwk").exists());
    // A P-256 identity is not a signing key, nor the other way round.
    let id_uri = uri("main", "deploy-not-a-signer");
    gen_p256(&id_uri).unwrap();
    let e = load_signing_key(Path::new(&id_uri)).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::KeyNotFound(_)), "{e}");
    let e = Pkcs11Identity::open(&u).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::KeyNotFound(_)), "{e}");
}

#[test]
fn a_substituted_public_key_is_refused() {
    let _turn = one_at_a_time();
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    let u = uri("main", "substituted");
    gen_p256(&u).unwrap();
    // An attacker's point in the public object's place, same label and id
    // (as anyone who can change the token's objects could do).
    let attacker = sealtensors::keys::P256Identity::generate().unwrap();
    {
        let s = admin_session();
        let public = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(b"substituted".to_vec()),
            ])
            .unwrap();
        assert_eq!(public.len(), 1);
        let id = s
            .get_attributes(public[0], &[AttributeType::Id, AttributeType::EcParams])
            .unwrap();
        s.destroy_object(public[0]).unwrap();
        let mut point = vec![0x04, 0x41];
        point.extend_from_slice(attacker.recipient().as_bytes());
        let mut template = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Label(b"substituted".to_vec()),
            Attribute::EcPoint(point),
        ];
        template.extend(id);
        s.create_object(&template).unwrap();
    }
    let e = Pkcs11Identity::open(&u).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::WrongKey(_)), "{e}");
    assert!(e.to_string().contains("does not belong"), "{e}");
    // ... and a publisher given the URI as a recipient does not seal to it.
    let e = load_recipient(&u).err().unwrap();
    assert!(matches!(problem(&e), Pkcs11Problem::WrongKey(_)), "{e}");
}

#[test]
fn an_ecdsa_token_key_signs_headers_for_ecdsa_p256_trust_only() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    let u = uri("main", "publisher-ecdsa");
    let signer = pkcs11_generate_ecdsa_p256(&u).unwrap();
    assert!(signer.to_string().starts_with("ecdsa-p256:"), "{signer}");
    assert_eq!(
        signer
            .to_string()
            .parse::<sealtensors::keys::VerifyingKey>()
            .unwrap(),
        signer
    );
    let key = load_signing_key(Path::new(&u)).unwrap();
    assert_eq!(key.verifying_key(), signer);
    let out = fx.path("ecdsa-signed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        signing_key: Some(key),
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.plain, &out)
    .unwrap();
    let open = |trusted: Vec<sealtensors::keys::VerifyingKey>, p: &Path| {
        SealedFile::open(
            p,
            &OpenOptions {
                identities: vec![&fx.id],
                trusted,
                require_signed: true,
                ..Default::default()
            },
        )
    };
    let f = open(vec![signer], &out).unwrap();
    assert!(matches!(f.authenticity(), Authenticity::Trusted(k) if *k == signer));
    assert!(matches!(
        open(vec![fx.signer.verifying_key()], &out)
            .err()
            .unwrap()
            .kind(),
        Error::UntrustedSigner { .. }
    ));
    // The other valid encoding of the same signature (s -> n - s) is refused,
    // and so is the algorithm renamed.
    let raw = std::fs::read(&out).unwrap();
    let mut h = sealtensors::Header::parse_buffer(&raw).unwrap();
    let data = raw[h.data_start() as usize..].to_vec();
    let meta = h.metadata.as_mut().unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&meta["sealtensors.signature"]).unwrap();
    assert_eq!(doc["alg"], "ecdsa-p256");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let sig = b64.decode(doc["sig"].as_str().unwrap()).unwrap();
    let mut high: [u8; 64] = sig.as_slice().try_into().unwrap();
    sealtensors::crypto::ecdsa_p256_other_s(&mut high);
    let variants = [
        ("high-s.safetensors", "ecdsa-p256", b64.encode(high)),
        ("renamed.safetensors", "ed25519", b64.encode(&sig)),
    ];
    for (name, alg, s) in variants {
        doc["alg"] = alg.into();
        doc["sig"] = s.into();
        let mut h2 = h.clone();
        h2.metadata
            .as_mut()
            .unwrap()
            .insert("sealtensors.signature".into(), doc.to_string());
        let p = fx.path(name);
        let mut bytes = h2.to_bytes();
        bytes.extend_from_slice(&data);
        std::fs::write(&p, bytes).unwrap();
        let e = open(vec![signer], &p).err().unwrap();
        assert!(
            matches!(
                e.kind(),
                Error::BadSignature | Error::InvalidSealMetadata { .. }
            ),
            "{name}: {e:?}"
        );
    }
    // An ECDSA signer's key file (EC P-256 marked ES256) loads back as that
    // signer, never as an encryption recipient, and works as a trust entry.
    let sp = fx.path("signer.jwk");
    KeyFile::Verifying(signer).save(&sp, false).unwrap();
    assert_eq!(
        sealtensors::keys::load_verifying_key(&sp.to_string_lossy()).unwrap(),
        signer
    );
    assert!(load_recipient(&sp.to_string_lossy()).is_err());
}

//! The test vectors of `spec/vectors` (SPEC.md, "Test vectors").
//!
//! Every manifest is opened through the library with the keys it lists and
//! its expected outcome is checked. Every vector that opens is also read a
//! second time by a small reader written here from SPEC.md alone (its byte
//! layouts, labels and derivations, on the raw primitives), so the
//! specification and the library are checked against each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use sealtensors::crypto;
use sealtensors::keys::{load_identity, load_verifying_key, Identity, Passphrase};
use sealtensors::{Authenticity, Error, Header, OpenOptions, SealedFile};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// The name of an error's variant, as written in the manifests.
fn variant(e: &Error) -> &'static str {
    match e.kind() {
        Error::InFile { .. } => "InFile",
        Error::Io { .. } => "Io",
        Error::InvalidContainer(_) => "InvalidContainer",
        Error::LimitExceeded { .. } => "LimitExceeded",
        Error::NoSuchTensor(_) => "NoSuchTensor",
        Error::RangeOutOfBounds { .. } => "RangeOutOfBounds",
        Error::BufferSize { .. } => "BufferSize",
        Error::InvalidSealMetadata { .. } => "InvalidSealMetadata",
        Error::UnsupportedVersion(_) => "UnsupportedVersion",
        Error::PolicyUnsupported => "PolicyUnsupported",
        Error::PolicyInvalid { .. } => "PolicyInvalid",
        Error::PolicyDenied { .. } => "PolicyDenied",
        Error::Licence(_) => "Licence",
        Error::NotSealed { .. } => "NotSealed",
        Error::NotSigned { .. } => "NotSigned",
        Error::UntrustedSigner { .. } => "UntrustedSigner",
        Error::BadSignature => "BadSignature",
        Error::BadHeaderMac => "BadHeaderMac",
        Error::Expired { .. } => "Expired",
        Error::NoMatchingKey { .. } => "NoMatchingKey",
        Error::InvalidKey(_) => "InvalidKey",
        Error::ExcessiveWork { .. } => "ExcessiveWork",
        Error::ChunkAuthFailed { .. } => "ChunkAuthFailed",
        Error::Config(_) => "Config",
        Error::OutputExists(_) => "OutputExists",
        Error::ApiMisuse(_) => "ApiMisuse",
        Error::Crypto(_) => "Crypto",
        Error::BrokerUnavailable { .. } => "BrokerUnavailable",
        Error::BrokerDenied { .. } => "BrokerDenied",
        Error::BrokerClientMissing { .. } => "BrokerClientMissing",
        _ => "unknown variant",
    }
}

fn strs(m: &Value, key: &str) -> Vec<String> {
    m.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

struct Vector {
    name: String,
    m: Value,
    file: PathBuf,
}

fn manifests() -> Vec<Vector> {
    let dir = vectors_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("spec/vectors exists") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let m: Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).expect("manifest JSON");
            let file = dir.join(m["file"].as_str().expect("file"));
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push(Vector { name, m, file });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The keys a manifest lists.
struct Keys {
    identities: Vec<Box<dyn Identity>>,
    trusted: Vec<sealtensors::keys::VerifyingKey>,
}

fn keys(m: &Value) -> Keys {
    let dir = vectors_dir();
    let mut identities: Vec<Box<dyn Identity>> = strs(m, "identities")
        .iter()
        .map(|p| load_identity(&dir.join(p)).expect("identity"))
        .collect();
    for p in strs(m, "passphrases") {
        identities.push(Box::new(Passphrase::new(p)));
    }
    let trusted = strs(m, "trusted")
        .iter()
        .map(|t| {
            if t.starts_with("ed25519:") || t.starts_with("ecdsa-p256:") {
                load_verifying_key(t)
            } else {
                load_verifying_key(&dir.join(t).to_string_lossy())
            }
            .expect("trusted signer")
        })
        .collect();
    Keys {
        identities,
        trusted,
    }
}

/// The model key a broker releases, for a manifest with `broker_kek`:
/// its slot opened with the broker's KEK, as the broker does.
fn released_by_broker(v: &Vector) -> Option<sealtensors::keys::ModelKey> {
    let b = v.m.get("broker_kek")?;
    // X25519 (`broker` slots) or P-256 (`broker-p256`), as a broker loads it.
    let kek = sealtensors::keys::BrokerKek::load(
        b["kid"].as_str().expect("kid"),
        &vectors_dir().join(b["identity"].as_str().expect("identity")),
    )
    .expect("broker KEK");
    let (_, h) = sealtensors::read_header(&v.file).unwrap();
    let meta = sealtensors::seal::parse(&h).unwrap();
    let mk_id = meta.mk_id.expect("mk_id");
    let mk = meta
        .slots
        .iter()
        .find_map(|slot| kek.open(slot, &mk_id))
        .unwrap_or_else(|| panic!("{}: no broker slot for the KEK's kid", v.name));
    Some(mk.unwrap_or_else(|e| panic!("{}: {e}", v.name)))
}

fn open(v: &Vector, k: &Keys) -> sealtensors::Result<SealedFile> {
    let opts = OpenOptions {
        model_key: released_by_broker(v),
        identities: k.identities.iter().map(|b| b.as_ref()).collect(),
        trusted: k.trusted.clone(),
        require_encrypted: v.m["require_encrypted"].as_bool().unwrap_or(false),
        require_signed: v.m["require_signed"].as_bool().unwrap_or(false),
        now: v.m["now"].as_u64(),
        ..Default::default()
    };
    SealedFile::open(&v.file, &opts)
}

fn check_ok(v: &Vector, f: &SealedFile) {
    let want_auth = v.m["authenticity"].as_str().expect("authenticity");
    let got_auth = match f.authenticity() {
        Authenticity::Plain => "plain",
        Authenticity::Unsigned => "unsigned",
        Authenticity::UntrustedSigner(_) => "untrusted_signer",
        Authenticity::Trusted(_) => "trusted",
        _ => "unknown",
    };
    assert_eq!(got_auth, want_auth, "{}: authenticity", v.name);
    let table = v.m["tensors"].as_object().expect("tensors");
    assert_eq!(f.tensors().len(), table.len(), "{}: tensor count", v.name);
    for (name, t) in table {
        let info = f.tensor(name).expect("tensor in file");
        assert_eq!(info.dtype.as_str(), t["dtype"].as_str().unwrap());
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.shape, shape, "{}: {name} shape", v.name);
        assert_eq!(
            f.is_encrypted(name).unwrap(),
            t["encrypted"].as_bool().unwrap(),
            "{}: {name} encrypted",
            v.name
        );
        let data = f
            .read_tensor(name)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            hex(&crypto::sha256(&data)),
            t["sha256"].as_str().unwrap(),
            "{}: {name} plaintext",
            v.name
        );
    }
    f.verify_data()
        .unwrap_or_else(|e| panic!("{}: verify_data: {e}", v.name));
    if let Some(meta) = v.m.get("metadata") {
        let want: BTreeMap<String, String> = serde_json::from_value(meta.clone()).unwrap();
        assert_eq!(f.metadata(), Some(want), "{}: metadata", v.name);
    }
}

fn check_fail(v: &Vector, k: &Keys) {
    let want = v.m["expect"].as_str().unwrap();
    // A build without the broker client says so where a broker is involved.
    let want = match want {
        "BrokerUnavailable" if cfg!(not(feature = "broker-client")) => "BrokerClientMissing",
        w => w,
    };
    match v.m["fails_at"].as_str().expect("fails_at") {
        "open" => match open(v, k) {
            Ok(_) => panic!("{}: opened, expected {want}", v.name),
            Err(e) => assert_eq!(variant(&e), want, "{}: {e}", v.name),
        },
        "read" => {
            let f = open(v, k).unwrap_or_else(|e| panic!("{}: open: {e}", v.name));
            let name = v.m["tensor"].as_str().expect("tensor");
            let e = f.read_tensor(name).expect_err("read must fail");
            assert_eq!(variant(&e), want, "{}: {e}", v.name);
            if let Error::ChunkAuthFailed { name: n, chunk } = e.kind() {
                assert_eq!(n, name);
                assert_eq!(Some(*chunk), v.m["chunk"].as_u64(), "{}: chunk", v.name);
            }
            // No data comes back: the caller's buffer is wiped.
            let len = f.tensor(name).unwrap().len();
            let mut buf = vec![0xA5u8; len];
            assert!(f.read_tensor_into(name, &mut buf).is_err());
            assert!(buf.iter().all(|&b| b == 0), "{}: data leaked", v.name);
            let e = f.verify_data().expect_err("verify_data must fail");
            assert_eq!(variant(&e), want, "{}: verify_data: {e}", v.name);
        }
        other => panic!("{}: unknown fails_at {other:?}", v.name),
    }
}

#[test]
fn every_vector_has_its_expected_outcome() {
    let all = manifests();
    assert!(
        all.len() >= 8,
        "found {} vectors in {}",
        all.len(),
        vectors_dir().display()
    );
    let (mut ok, mut failing) = (0, 0);
    for v in &all {
        let k = keys(&v.m);
        match v.m["expect"].as_str().expect("expect") {
            "ok" => {
                let f = open(v, &k).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                check_ok(v, &f);
                ok += 1;
            }
            _ => {
                check_fail(v, &k);
                failing += 1;
            }
        }
    }
    assert!(
        ok >= 6 && failing >= 8,
        "{ok} good and {failing} failing vectors"
    );
}

// ---- an independent reader, from SPEC.md alone --------------------------------------

/// Length-prefixed bytes (SPEC §7): u64 big-endian length, then the bytes.
fn lp(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_be_bytes());
    out.extend_from_slice(b);
}

fn be(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

/// SPEC §7: the canonical form, without the excluded metadata keys.
fn canonical(h: &Header, exclude: &[&str]) -> Vec<u8> {
    let mut out = b"sealtensors/1 canonical header\0".to_vec();
    be(&mut out, h.tensors.len() as u64);
    for t in &h.tensors {
        lp(&mut out, t.name.as_bytes());
        lp(&mut out, t.dtype.as_str().as_bytes());
        be(&mut out, t.shape.len() as u64);
        for &d in &t.shape {
            be(&mut out, d);
        }
        be(&mut out, t.begin as u64);
        be(&mut out, t.end as u64);
    }
    let meta = h.metadata.clone().unwrap_or_default();
    let kept: Vec<_> = meta
        .iter()
        .filter(|(k, _)| !exclude.contains(&k.as_str()))
        .collect();
    be(&mut out, kept.len() as u64);
    for (k, v) in kept {
        lp(&mut out, k.as_bytes());
        lp(&mut out, v.as_bytes());
    }
    out
}

fn jwk(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(vectors_dir().join(path)).unwrap()).unwrap()
}

/// Key wrap (SPEC §6): AES-256-GCM, zero nonce, `ct || tag`.
fn unwrap(kek: &[u8; 32], aad: &[u8], ct: &[u8]) -> Option<[u8; 32]> {
    let k = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, kek).unwrap());
    let mut buf = ct.to_vec();
    let pt = k
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    pt.try_into().ok()
}

fn slot_aad(kind: &str, mk_id: &[u8]) -> Vec<u8> {
    let mut a = b"sealtensors/1 slot\0".to_vec();
    a.extend_from_slice(kind.as_bytes());
    a.push(0);
    a.extend_from_slice(mk_id);
    a
}

fn hkdf(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> [u8; 32] {
    *crypto::hkdf32(ikm, salt, info).unwrap().expose()
}

/// The KEK of an X25519-wrapped slot (§6.1, §6.6): `Z = X25519(d, epk)`,
/// never all zero, `HKDF(Z, epk || pk, info)`.
fn x25519_kek(d: &[u8], pk: &[u8], epk: &[u8], info: &[&[u8]]) -> Option<[u8; 32]> {
    use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
    let sk = PrivateKey::from_private_key(&X25519, d).ok()?;
    let shared = agree(&sk, UnparsedPublicKey::new(&X25519, epk), (), |z| {
        Ok(z.to_vec())
    })
    .ok()?;
    assert_ne!(shared, [0u8; 32]);
    Some(hkdf(&shared, &[epk, pk].concat(), info))
}

/// Try to open one slot with the manifest's keys (SPEC §6.1-§6.3, §6.6, §6.7).
fn open_slot(slot: &Value, m: &Value, mk_id: &[u8]) -> Option<[u8; 32]> {
    let s = |k: &str| slot[k].as_str().unwrap_or("");
    match s("type") {
        "x25519" => strs(m, "identities").iter().find_map(|p| {
            let j = jwk(p);
            if j["kty"] != "OKP" || j["crv"] != "X25519" {
                return None;
            }
            let d = unb64(j["d"].as_str()?);
            let pk = unb64(j["x"].as_str()?);
            let mut rid_in = b"sealtensors/1 x25519 rid\0".to_vec();
            rid_in.extend_from_slice(&pk);
            if hex(&crypto::sha256(&rid_in)[..8]) != s("rid") {
                return None;
            }
            let kek = x25519_kek(&d, &pk, &unb64(s("epk")), &[b"sealtensors/1 x25519 slot"])?;
            unwrap(&kek, &slot_aad("x25519", mk_id), &unb64(s("ct")))
        }),
        // §6.7: the identity is a JWK EC P-256 key; pk = 04 || x || y.
        "p256" => strs(m, "identities").iter().find_map(|p| {
            use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, ECDH_P256};
            let j = jwk(p);
            if j["kty"] != "EC" || j["crv"] != "P-256" {
                return None;
            }
            let d = unb64(j["d"].as_str()?);
            let pk = [
                &[4u8][..],
                &unb64(j["x"].as_str()?),
                &unb64(j["y"].as_str()?),
            ]
            .concat();
            let mut rid_in = b"sealtensors/1 p256 rid\0".to_vec();
            rid_in.extend_from_slice(&pk);
            if hex(&crypto::sha256(&rid_in)[..8]) != s("rid") {
                return None;
            }
            let epk = unb64(s("epk"));
            assert!(
                epk.len() == 65 && epk[0] == 4,
                "p256 epk is an uncompressed point"
            );
            let sk = PrivateKey::from_private_key(&ECDH_P256, &d).ok()?;
            let z = agree(&sk, UnparsedPublicKey::new(&ECDH_P256, &epk), (), |z| {
                Ok(z.to_vec())
            })
            .ok()?;
            let kek = hkdf(&z, &[&epk[..], &pk].concat(), &[b"sealtensors/1 p256 slot"]);
            let aad = slot_aad("p256", mk_id);
            let mk = unwrap(&kek, &aad, &unb64(s("ct")));
            if let (Some(want), Some(mk)) = (m.get("p256_derived"), mk) {
                assert_eq!(want["pk"].as_str(), Some(hex(&pk).as_str()), "p256 pk");
                assert_eq!(want["rid"].as_str(), Some(s("rid")), "p256 rid");
                assert_eq!(want["z"].as_str(), Some(hex(&z).as_str()), "p256 Z");
                assert_eq!(want["kek"].as_str(), Some(hex(&kek).as_str()), "p256 KEK");
                assert_eq!(
                    want["slot_aad"].as_str(),
                    Some(hex(&aad).as_str()),
                    "p256 AAD"
                );
                assert_eq!(
                    want["model_key"].as_str(),
                    Some(hex(&mk).as_str()),
                    "p256 MK"
                );
                assert_eq!(
                    want["mk_id"].as_str(),
                    Some(hex(mk_id).as_str()),
                    "p256 mk_id"
                );
            }
            mk
        }),
        // The broker's side with a P-256 KEK (§6.8).
        "broker-p256" => m.get("broker_kek").and_then(|b| {
            use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, ECDH_P256};
            let j = jwk(b["identity"].as_str()?);
            if s("kid") != b["kid"].as_str()? || j["crv"] != "P-256" {
                return None;
            }
            let d = unb64(j["d"].as_str()?);
            let pk = [
                &[4u8][..],
                &unb64(j["x"].as_str()?),
                &unb64(j["y"].as_str()?),
            ]
            .concat();
            let epk = unb64(s("epk"));
            let sk = PrivateKey::from_private_key(&ECDH_P256, &d).ok()?;
            let z = agree(&sk, UnparsedPublicKey::new(&ECDH_P256, &epk), (), |z| {
                Ok(z.to_vec())
            })
            .ok()?;
            let info: [&[u8]; 2] = [b"sealtensors/1 broker-p256 slot\0", s("url").as_bytes()];
            let kek = hkdf(&z, &[&epk[..], &pk].concat(), &info);
            unwrap(&kek, &slot_aad("broker-p256", mk_id), &unb64(s("ct")))
        }),
        // The broker's side (§6.6): its KEK, the URL bound into the KDF.
        "broker" => m.get("broker_kek").and_then(|b| {
            let j = jwk(b["identity"].as_str()?);
            if s("kid") != b["kid"].as_str()? {
                return None;
            }
            let d = unb64(j["d"].as_str()?);
            let pk = unb64(j["x"].as_str()?);
            let info: [&[u8]; 2] = [b"sealtensors/1 broker slot\0", s("url").as_bytes()];
            let kek = x25519_kek(&d, &pk, &unb64(s("epk")), &info)?;
            unwrap(&kek, &slot_aad("broker", mk_id), &unb64(s("ct")))
        }),
        "oct" => strs(m, "identities").iter().find_map(|p| {
            let j = jwk(p);
            if j["kty"] != "oct" || j["kid"].as_str()? != s("kid") {
                return None;
            }
            let key = unb64(j["k"].as_str()?);
            let kek = hkdf(
                &key,
                &unb64(s("salt")),
                &[b"sealtensors/1 oct slot\0", s("kid").as_bytes()],
            );
            unwrap(&kek, &slot_aad("oct", mk_id), &unb64(s("ct")))
        }),
        "argon2id" => strs(m, "passphrases").iter().find_map(|pass| {
            let n = |k: &str| slot[k].as_u64().unwrap() as u32;
            let params = argon2::Params::new(n("m"), n("t"), n("p"), Some(32)).ok()?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut kek = [0u8; 32];
            a.hash_password_into(pass.as_bytes(), &unb64(s("salt")), &mut kek)
                .ok()?;
            unwrap(&kek, &slot_aad("argon2id", mk_id), &unb64(s("ct")))
        }),
        _ => None, // unknown slot types are skipped
    }
}

/// Read a good sealed vector from the spec alone; returns each tensor's
/// plaintext SHA-256.
fn spec_read(v: &Vector) -> BTreeMap<String, String> {
    let buf = std::fs::read(&v.file).unwrap();
    // §2: u64 little-endian header length, JSON, data.
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
    let h = Header::parse_json(&buf[8..8 + n]).unwrap();
    let data = &buf[8 + n..];
    let meta = h.metadata.clone().unwrap_or_default();
    let doc = |k: &str| -> Value { serde_json::from_str(&meta[k]).unwrap() };
    let seal = doc("sealtensors.seal");
    assert_eq!(seal["v"], 1);
    let file_id = unb64(seal["file_id"].as_str().unwrap());
    assert_eq!(file_id.len(), 32);
    let cs = seal["chunk_size"].as_u64().unwrap() as usize;

    // §7.1: signature over the label and the canonical form without itself.
    if let Some(sig) = meta.get("sealtensors.signature") {
        let sig: Value = serde_json::from_str(sig).unwrap();
        let alg = sig["alg"].as_str().unwrap();
        let key = sig["key"].as_str().unwrap();
        let bytes = unb64(sig["sig"].as_str().unwrap());
        let mut msg = b"sealtensors/1 signature\0".to_vec();
        msg.extend_from_slice(&canonical(&h, &["sealtensors.signature"]));
        let (scheme, pk): (&dyn aws_lc_rs::signature::VerificationAlgorithm, Vec<u8>) = match alg {
            "ed25519" => (
                &aws_lc_rs::signature::ED25519,
                unb64(key.strip_prefix("ed25519:").unwrap()),
            ),
            "ecdsa-p256" => {
                // r || s, s at most n/2.
                let half_n = "7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8";
                assert!(hex(&bytes[32..]).as_str() <= half_n, "{}: high s", v.name);
                (
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                    unb64(key.strip_prefix("ecdsa-p256:").unwrap()),
                )
            }
            other => panic!("{}: alg {other}", v.name),
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(scheme, &pk)
            .verify(&msg, &bytes)
            .unwrap_or_else(|_| panic!("{}: signature", v.name));
    }

    let mut tk_for = None;
    let mut derived = BTreeMap::new();
    if seal["mode"] == "encrypted" {
        let mk_id = unb64(seal["mk_id"].as_str().unwrap());
        let slots = doc("sealtensors.slots");
        let mk = slots
            .as_array()
            .unwrap()
            .iter()
            .find_map(|s| open_slot(s, &v.m, &mk_id))
            .unwrap_or_else(|| panic!("{}: no slot opens", v.name));
        // §4.1
        let id = hkdf(&mk, b"", &[b"sealtensors/1 model key id"]);
        assert_eq!(id[..16], mk_id[..], "{}: mk_id", v.name);
        // §4.3, §7.2
        let mac_key = hkdf(&mk, &file_id, &[b"sealtensors/1 header mac"]);
        let c = canonical(&h, &["sealtensors.signature", "sealtensors.mac"]);
        let mac = crypto::hmac_sha256(&mac_key, &[&c]);
        assert_eq!(
            mac.to_vec(),
            unb64(&meta["sealtensors.mac"]),
            "{}: header MAC",
            v.name
        );
        derived.insert("model_key", hex(&mk));
        derived.insert("mk_id", hex(&mk_id));
        derived.insert("mac_key", hex(&mac_key));
        derived.insert("canonical_sha256", hex(&crypto::sha256(&c)));
        derived.insert("header_mac", hex(&mac));
        let alg = match seal["aead"].as_str().unwrap() {
            "aes-256-gcm" => &aead::AES_256_GCM,
            "chacha20-poly1305" => &aead::CHACHA20_POLY1305,
            other => panic!("aead {other}"),
        };
        tk_for = Some((mk, alg));
    } else {
        assert!(!meta.contains_key("sealtensors.slots"));
    }

    let tdocs = doc("sealtensors.tensors");
    let mut out = BTreeMap::new();
    let mut tensor_keys = BTreeMap::new();
    for t in &h.tensors {
        let d = &tdocs[&t.name];
        let bytes = &data[t.begin..t.end];
        let count = t.len().div_ceil(cs).max(1);
        let mut plain = Vec::with_capacity(t.len());
        if let Some(tags) = d.get("tags") {
            let (mk, alg) = tk_for.as_ref().expect("tags only in encrypted files");
            // §4.2
            let tk = hkdf(
                mk,
                &file_id,
                &[b"sealtensors/1 tensor key\0", t.name.as_bytes()],
            );
            tensor_keys.insert(t.name.clone(), hex(&tk));
            let key = LessSafeKey::new(UnboundKey::new(alg, &tk).unwrap());
            let tags = unb64(tags.as_str().unwrap());
            assert_eq!(tags.len(), 16 * count);
            for i in 0..count {
                let chunk = &bytes[(i * cs).min(t.len())..((i + 1) * cs).min(t.len())];
                // §5.4
                let mut ad = b"sealtensors/1 chunk\0".to_vec();
                ad.extend_from_slice(&file_id);
                lp(&mut ad, t.name.as_bytes());
                lp(&mut ad, t.dtype.as_str().as_bytes());
                be(&mut ad, t.shape.len() as u64);
                for &dim in &t.shape {
                    be(&mut ad, dim);
                }
                be(&mut ad, i as u64);
                be(&mut ad, count as u64);
                // §5.3
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
                let mut ct = [chunk, &tags[16 * i..16 * (i + 1)]].concat();
                let pt = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&ad), &mut ct)
                    .unwrap_or_else(|_| panic!("{}: {} chunk {i}", v.name, t.name));
                plain.extend_from_slice(pt);
            }
        } else {
            let digests = unb64(d["sha256"].as_str().unwrap());
            assert_eq!(digests.len(), 32 * count);
            for i in 0..count {
                let chunk = &bytes[(i * cs).min(t.len())..((i + 1) * cs).min(t.len())];
                assert_eq!(crypto::sha256(chunk)[..], digests[32 * i..32 * (i + 1)]);
                plain.extend_from_slice(chunk);
            }
        }
        out.insert(t.name.clone(), hex(&crypto::sha256(&plain)));
    }
    // Intermediate values published in the manifest, when present.
    if let Some(want) = v.m.get("derived") {
        for (k, got) in &derived {
            assert_eq!(want[*k].as_str(), Some(got.as_str()), "{}: {k}", v.name);
        }
        assert_eq!(
            want["file_id"].as_str(),
            Some(hex(&file_id).as_str()),
            "{}: file_id",
            v.name
        );
        for (name, tk) in &tensor_keys {
            assert_eq!(want["tensor_keys"][name].as_str(), Some(tk.as_str()));
        }
    }
    out
}

#[test]
fn good_vectors_read_by_the_spec_alone() {
    let mut checked = 0;
    let mut with_derived = 0;
    for v in manifests() {
        if v.m["expect"] != "ok" || v.m["authenticity"] == "plain" {
            continue;
        }
        let got = spec_read(&v);
        let want: BTreeMap<String, String> = v.m["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, t)| (n.clone(), t["sha256"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(got, want, "{}", v.name);
        checked += 1;
        with_derived += v.m.get("derived").is_some() as usize;
    }
    assert!(checked >= 5, "only {checked} sealed good vectors");
    assert!(with_derived >= 1, "no vector publishes derived values");
}

/// SPEC §2.3: the plain vector is what the official writer emits, so its
/// header is exactly `{"__metadata__":{..},<tensors in layout order>}` padded.
#[test]
fn plain_vector_header_is_canonical() {
    let buf = std::fs::read(vectors_dir().join("plain.safetensors")).unwrap();
    let h = Header::parse_buffer(&buf).unwrap();
    assert_eq!(h.to_bytes(), buf[..h.data_start() as usize]);
    assert_eq!(h.header_len % 8, 0);
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    // dtype descending, then name
    assert_eq!(
        names,
        [
            "step",
            "embed.weight",
            "empty",
            "layers.0.weight",
            "layers.0.bias",
            "mask"
        ]
    );
}

//! Writes the test vectors of `spec/vectors` (SPEC.md, "Test vectors").
//!
//! ```text
//! cargo run -p sealtensors --example make_vectors -- spec/vectors
//! ```
//!
//! Keys are fixed (derived from labels), so the key files never change; the
//! sealed files are not reproducible (file ids, ephemeral keys, salts and the
//! model key are random), so they are generated once and committed. Failing
//! vectors are made by editing the bytes of a good one. Where an edit must
//! get past the header MAC or signature to reach a later check, the header is
//! re-authenticated with the model key and signing key, as a recipient or the
//! publisher could: those vectors test a reader's checks, not tampering.
//!
//! Each vector has a manifest `<name>.json` (schema in SPEC.md); several
//! manifests may share one file.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use sealtensors::crypto::{self, Secret32};
use sealtensors::keys::{
    Argon2Params, BrokerPublicKey, BrokerRecipient, KeyFile, ModelKey, P256Agreement, P256Identity,
    Passphrase, SigningKey, Slot, SymmetricKey, X25519Identity,
};
use sealtensors::seal::{self, SignatureDoc};
use sealtensors::{Cipher, Dtype, Header, SealOptions, Sealer, TensorRef};

const CHUNK: usize = 4096;
const PASSPHRASE: &str = "correct horse battery staple";
const MODEL_ID: &str = "example/tiny-model";
const EXPIRES: u64 = 2_000_000_000;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// 32 fixed bytes from a label.
fn fixed(label: &str) -> [u8; 32] {
    crypto::sha256(format!("sealtensors test vector key: {label}").as_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Deterministic bytes (xorshift64).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Keys {
    recipient: X25519Identity,
    signer: SigningKey,
    other_signer: SigningKey,
    symmetric: SymmetricKey,
    symmetric_wrong: SymmetricKey,
    symmetric_bytes: [u8; 32],
}

impl Keys {
    fn new() -> Res<Keys> {
        let symmetric_bytes = fixed("symmetric");
        Ok(Keys {
            recipient: X25519Identity::from_secret_bytes(fixed("x25519 recipient"))?,
            signer: SigningKey::from_seed(fixed("ed25519 signer"))?,
            other_signer: SigningKey::from_seed(fixed("ed25519 other signer"))?,
            symmetric: SymmetricKey::new("vector-key-1", symmetric_bytes)?,
            // Same kid, other key material.
            symmetric_wrong: SymmetricKey::new("vector-key-1", fixed("symmetric wrong"))?,
            symmetric_bytes,
        })
    }

    fn save(&self, dir: &Path) -> Res {
        let k = dir.join("keys");
        fs::create_dir_all(&k)?;
        let save = |f: KeyFile, name: &str| f.save(&k.join(name), true);
        save(
            KeyFile::X25519Identity(X25519Identity::from_secret_bytes(fixed(
                "x25519 recipient",
            ))?),
            "recipient.jwk",
        )?;
        save(
            KeyFile::X25519Recipient(self.recipient.recipient()),
            "recipient.pub.jwk",
        )?;
        save(
            KeyFile::X25519Identity(X25519Identity::from_secret_bytes(fixed("x25519 other"))?),
            "other-recipient.jwk",
        )?;
        save(KeyFile::Signing(self.signer.try_clone()?), "signer.jwk")?;
        save(
            KeyFile::Verifying(self.signer.verifying_key()),
            "signer.pub.jwk",
        )?;
        save(
            KeyFile::Verifying(self.other_signer.verifying_key()),
            "other-signer.pub.jwk",
        )?;
        save(KeyFile::Symmetric(self.symmetric.clone()), "symmetric.jwk")?;
        save(
            KeyFile::Symmetric(self.symmetric_wrong.clone()),
            "symmetric-wrong.jwk",
        )?;
        Ok(())
    }
}

/// The plain model every vector is made from.
fn model() -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
    let spec: Vec<(&str, Dtype, Vec<u64>)> = vec![
        // two full chunks
        ("embed.weight", Dtype::F32, vec![16, 128]),
        // 4608 bytes: a full chunk and a 512-byte one
        ("layers.0.weight", Dtype::BF16, vec![24, 96]),
        ("layers.0.bias", Dtype::F16, vec![96]),
        ("mask", Dtype::BOOL, vec![7]),
        // a scalar (rank 0)
        ("step", Dtype::I64, vec![]),
        // no bytes at all: still one (empty) chunk
        ("empty", Dtype::F32, vec![0, 4]),
    ];
    spec.into_iter()
        .enumerate()
        .map(|(i, (n, d, s))| {
            let len = d.byte_len(&s).expect("valid shape");
            let mut b = bytes(i as u64 + 1, len);
            if d == Dtype::BOOL {
                b.iter_mut().for_each(|x| *x &= 1);
            }
            (n.to_string(), d, s, b)
        })
        .collect()
}

fn plain_metadata() -> BTreeMap<String, String> {
    [("format".to_string(), "pt".to_string())].into()
}

/// Manifest fields shared by every vector of this model.
fn tensor_table(
    model: &[(String, Dtype, Vec<u64>, Vec<u8>)],
    encrypted: impl Fn(&str) -> bool,
) -> Value {
    let mut m = serde_json::Map::new();
    for (n, d, s, b) in model {
        m.insert(
            n.clone(),
            json!({
                "dtype": d.as_str(),
                "shape": s,
                "encrypted": encrypted(n),
                "sha256": hex(&crypto::sha256(b)),
            }),
        );
    }
    Value::Object(m)
}

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn manifest(&mut self, name: &str, v: Value) -> Res {
        let text = serde_json::to_string_pretty(&v)? + "\n";
        fs::write(self.dir.join(format!("{name}.json")), text)?;
        self.count += 1;
        Ok(())
    }
}

/// A sealed file as bytes: header and data region.
struct Edit {
    header: Header,
    data: Vec<u8>,
}

impl Edit {
    fn load(p: &Path) -> Res<Edit> {
        let buf = fs::read(p)?;
        let header = Header::parse_buffer(&buf)?;
        let data = buf[header.data_start() as usize..].to_vec();
        Ok(Edit { header, data })
    }
    fn meta(&mut self) -> &mut BTreeMap<String, String> {
        self.header.metadata.get_or_insert_with(BTreeMap::new)
    }
    fn file_id(&self) -> Res<[u8; 32]> {
        Ok(seal::parse(&self.header)?.file_id)
    }
    fn tensor(&self, name: &str) -> (usize, usize) {
        let t = &self.header.tensors[self.header.index_of(name).expect("tensor")];
        (t.begin, t.end)
    }
    /// Recompute the header MAC and signature as a writer would (SPEC §7).
    fn reauth(&mut self, file_id: [u8; 32], mk: Option<&ModelKey>, sk: Option<&SigningKey>) -> Res {
        self.meta().remove(seal::KEY_MAC);
        self.meta().remove(seal::KEY_SIGNATURE);
        if let Some(mk) = mk {
            let mac = seal::header_mac(mk, &file_id, &self.header)?;
            self.meta().insert(seal::KEY_MAC.into(), b64(&mac));
        }
        if let Some(sk) = sk {
            let sig = sk.sign(&seal::signed_message(&self.header))?;
            let doc = SignatureDoc {
                alg: "ed25519".into(),
                key: sk.verifying_key().to_string(),
                sig: b64(&sig),
            };
            let text = serde_json::to_string(&doc)?;
            self.meta().insert(seal::KEY_SIGNATURE.into(), text);
        }
        Ok(())
    }
    fn save(&self, p: &Path) -> Res {
        let mut out = self.header.to_bytes();
        out.extend_from_slice(&self.data);
        fs::write(p, out)?;
        Ok(())
    }
}

fn base_opts(signer: Option<&SigningKey>) -> Res<SealOptions> {
    Ok(SealOptions {
        chunk_size: CHUNK,
        model_id: MODEL_ID.into(),
        model_version: "1".into(),
        overwrite: true,
        signing_key: signer.map(SigningKey::try_clone).transpose()?,
        ..Default::default()
    })
}

/// Values a reader derives for the unsigned ChaCha20-Poly1305 vector,
/// computed here from the primitives by the SPEC's formulas (and checked
/// against the library), so an implementer can compare step by step.
fn derived(k: &Keys, e: &Edit, sealer_mk: &ModelKey) -> Res<Value> {
    let meta = seal::parse(&e.header)?;
    let file_id = meta.file_id;
    let mk_id = meta.mk_id.ok_or("no mk_id")?;
    let sealtensors::keys::Slot::Oct { kid, salt, ct } = &meta.slots[0] else {
        return Err("expected an oct slot".into());
    };
    let salt = URL_SAFE_NO_PAD.decode(salt)?;
    let ct = URL_SAFE_NO_PAD.decode(ct)?;
    // SPEC §6.2
    let kek = crypto::hkdf32(
        &k.symmetric_bytes,
        &salt,
        &[b"sealtensors/1 oct slot\0", kid.as_bytes()],
    )?;
    let mut aad = b"sealtensors/1 slot\0oct\0".to_vec();
    aad.extend_from_slice(&mk_id);
    let mk: Secret32 = crypto::unwrap_key(&kek, &aad, &ct).ok_or("oct slot does not open")?;
    // SPEC §4.1
    let id = crypto::hkdf32(mk.expose(), b"", &[b"sealtensors/1 model key id"])?;
    assert_eq!(id.expose()[..16], mk_id, "model key id");
    assert_eq!(sealer_mk.id()?, mk_id, "the sealer's model key");
    let mac_key = seal::mac_key(sealer_mk, &file_id)?;
    let canonical = seal::canonical(&e.header, &[seal::KEY_SIGNATURE, seal::KEY_MAC]);
    let mut tensor_keys = serde_json::Map::new();
    for t in &e.header.tensors {
        let tk = seal::tensor_key(sealer_mk, &file_id, &t.name)?;
        tensor_keys.insert(t.name.clone(), json!(hex(tk.expose())));
    }
    let t = &e.header.tensors[e.header.index_of("layers.0.weight").ok_or("tensor")?];
    let aad1 = seal::ChunkAad::new(&file_id, t, seal::chunk_count(t.len(), CHUNK)).for_chunk(1);
    Ok(json!({
        "file_id": hex(&file_id),
        "oct_kek": hex(kek.expose()),
        "slot_aad": hex(&aad),
        "model_key": hex(mk.expose()),
        "mk_id": hex(&mk_id),
        "mac_key": hex(mac_key.expose()),
        "canonical_sha256": hex(&crypto::sha256(&canonical)),
        "canonical_len": canonical.len(),
        "header_mac": hex(&meta.mac.ok_or("no mac")?),
        "tensor_keys": tensor_keys,
        "chunk_aad_layers.0.weight_1": hex(&aad1),
        "chunk_nonce_1": "000000000000000000000001",
    }))
}

/// SPEC §3.4: the symmetric vector with a policy that allows and one that
/// denies (an expiry in the past), the header MAC recomputed with MK.
fn policy_vectors(out: &mut Out, dir: &Path, mk_b: &ModelKey, fid_b: [u8; 32]) -> Res {
    let p = |name: &str| dir.join(format!("{name}.safetensors"));
    let file = |name: &str| format!("{name}.safetensors");
    let base: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("chacha_oct_unsigned.json"))?)?;
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    e.meta().insert(
        seal::KEY_POLICY.into(),
        "package sealtensors\n\ndefault allow := true\n".into(),
    );
    e.reauth(fid_b, Some(mk_b), None)?;
    e.save(&p("policy_allow"))?;
    out.manifest(
        "policy_allow",
        json!({
            "description": "The symmetric vector with a sealtensors.policy that allows (MAC recomputed).",
            "file": file("policy_allow"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "ok",
            "authenticity": "unsigned",
            "tensors": base["tensors"],
            "metadata": base["metadata"],
        }),
    )?;
    let deny =
        sealtensors::policy::Template::Expiry.render(&sealtensors::policy::TemplateParams {
            not_after: Some("2020-01-01T00:00:00Z".into()),
            ..Default::default()
        })?;
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    e.meta().insert(seal::KEY_POLICY.into(), deny);
    e.reauth(fid_b, Some(mk_b), None)?;
    e.save(&p("fail_policy_denied"))?;
    out.manifest(
        "fail_policy_denied",
        json!({
            "description": "The symmetric vector with the expiry policy template for 2020-01-01T00:00:00Z (MAC recomputed): the policy denies before any slot is tried.",
            "file": file("fail_policy_denied"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "PolicyDenied",
            "fails_at": "open",
        }),
    )?;
    Ok(())
}

/// SPEC §3.1, §8.5: the symmetric vector numbered as shard 1 of 2 (MAC
/// recomputed): it opens as a file on its own; a shard number out of range
/// is malformed seal metadata. (Folder-level rules, a missing or foreign
/// shard, are tested on folders by tests/folders.rs.)
fn shard_vectors(out: &mut Out, dir: &Path, mk_b: &ModelKey, fid_b: [u8; 32]) -> Res {
    let p = |name: &str| dir.join(format!("{name}.safetensors"));
    let file = |name: &str| format!("{name}.safetensors");
    let base: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("chacha_oct_unsigned.json"))?)?;
    let set = b64(&fixed("shard set")[..16]);
    for (name, index, expect) in [
        ("shard_1_of_2", 1, "ok"),
        ("fail_shard_index_out_of_range", 3, "InvalidSealMetadata"),
    ] {
        let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
        let mut doc: Value = serde_json::from_str(&e.meta()[seal::KEY_SEAL])?;
        doc["shard"] = json!({"set": set, "index": index, "count": 2});
        e.meta()
            .insert(seal::KEY_SEAL.into(), serde_json::to_string(&doc)?);
        e.reauth(fid_b, Some(mk_b), None)?;
        e.save(&p(name))?;
        let mut m = json!({
            "description": format!("The symmetric vector with \"shard\": {{\"set\": \"{set}\", \"index\": {index}, \"count\": 2}} in sealtensors.seal (MAC recomputed)."),
            "file": file(name),
            "identities": ["keys/symmetric.jwk"],
            "expect": expect,
        });
        if expect == "ok" {
            m["authenticity"] = json!("unsigned");
            m["tensors"] = base["tensors"].clone();
            m["metadata"] = base["metadata"].clone();
        } else {
            m["fails_at"] = json!("open");
        }
        out.manifest(name, m)?;
    }
    Ok(())
}

const BROKER_URL: &str = "https://keys.example.com/keys/vector-kek";
const BROKER_P256_URL: &str = "https://keys.example.com/keys/vector-kek-p256";

/// SPEC §6.6: a file whose only slot is a `broker` slot, sealed from the
/// plain vector. It is opened as the broker opens it, with its KEK; the KEK
/// given to a loader as an ordinary identity opens nothing.
fn broker_vectors(out: &mut Out, dir: &Path) -> Res {
    KeyFile::X25519Identity(X25519Identity::from_secret_bytes(fixed("broker kek"))?)
        .save(&dir.join("keys/broker-kek.jwk"), true)?;
    broker_kind_vectors(
        out,
        dir,
        BrokerVector {
            file: "broker_slot",
            kid: "vector-kek",
            url: BROKER_URL,
            kek_file: "keys/broker-kek.jwk",
            public: X25519Identity::from_secret_bytes(fixed("broker kek"))?
                .recipient()
                .into(),
            ok: ("broker_slot_at_the_broker", format!("AES-256-GCM, signed, one broker slot (SPEC §6.6) for kid vector-kek at {BROKER_URL}; opened as the broker opens it, with its KEK (broker_kek), which is what a broker's release returns to an allowed client.")),
            fail: ("fail_broker_slot_local_identity", "The broker vector given to a loader with the broker's KEK as an ordinary identity and no broker allowed: a reader never opens a broker slot locally, and contacts no broker its configuration does not allow."),
        },
    )?;
    // SPEC §6.8: the same with a P-256 KEK (what a token or TPM holds).
    KeyFile::P256Identity(P256Identity::from_secret_bytes(fixed("broker kek p256"))?)
        .save(&dir.join("keys/broker-kek-p256.jwk"), true)?;
    broker_kind_vectors(
        out,
        dir,
        BrokerVector {
            file: "broker_p256_slot",
            kid: "vector-kek-p256",
            url: BROKER_P256_URL,
            kek_file: "keys/broker-kek-p256.jwk",
            public: P256Identity::from_secret_bytes(fixed("broker kek p256"))?
                .recipient()
                .into(),
            ok: ("broker_p256_slot_at_the_broker", format!("AES-256-GCM, signed, one broker-p256 slot (SPEC §6.8) for kid vector-kek-p256 at {BROKER_P256_URL}; opened as the broker opens it, with its P-256 KEK.")),
            fail: ("fail_broker_p256_slot_local_identity", "The P-256 broker vector given to a loader with the broker's KEK as an ordinary P-256 identity and no broker allowed: never opened locally."),
        },
    )
}

/// One kind of broker slot's vectors (see [`broker_vectors`]).
struct BrokerVector {
    file: &'static str,
    kid: &'static str,
    url: &'static str,
    kek_file: &'static str,
    public: BrokerPublicKey,
    ok: (&'static str, String),
    fail: (&'static str, &'static str),
}

/// The plain model sealed (AES-256-GCM, signed) to a broker KEK: opened as
/// the broker opens it, and refused when the KEK is given to a loader as an
/// ordinary identity.
fn broker_kind_vectors(out: &mut Out, dir: &Path, v: BrokerVector) -> Res {
    let signer = SigningKey::from_seed(fixed("ed25519 signer"))?;
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(BrokerRecipient::new(v.url, v.public)?)],
        cipher: Cipher::Aes256Gcm,
        ..base_opts(Some(&signer))?
    })?;
    let file = format!("{}.safetensors", v.file);
    sealer.seal_file(&dir.join("plain.safetensors"), &dir.join(&file))?;
    out.manifest(
        v.ok.0,
        json!({
            "description": v.ok.1,
            "file": file,
            "broker_kek": {"kid": v.kid, "identity": v.kek_file},
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "ok",
            "authenticity": "trusted",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model(), |_| true),
        }),
    )?;
    out.manifest(
        v.fail.0,
        json!({
            "description": v.fail.1,
            "file": file,
            "identities": [v.kek_file],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "BrokerUnavailable",
            "fails_at": "open",
        }),
    )
}

/// SPEC §6.7: the plain model sealed to a P-256 recipient (signed,
/// AES-256-GCM), with the slot's intermediate values; and the same file
/// opened with another P-256 key.
fn p256_vectors(out: &mut Out, dir: &Path) -> Res {
    let p = |name: &str| dir.join(format!("{name}.safetensors"));
    let file = |name: &str| format!("{name}.safetensors");
    let id = P256Identity::from_secret_bytes(fixed("p256 recipient"))?;
    let other = P256Identity::from_secret_bytes(fixed("p256 other"))?;
    let r = id.recipient();
    KeyFile::P256Identity(P256Identity::from_secret_bytes(fixed("p256 recipient"))?)
        .save(&dir.join("keys/p256-recipient.jwk"), true)?;
    KeyFile::P256Recipient(r).save(&dir.join("keys/p256-recipient.pub.jwk"), true)?;
    KeyFile::P256Identity(other).save(&dir.join("keys/p256-other.jwk"), true)?;
    let signer = SigningKey::from_seed(fixed("ed25519 signer"))?;
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(r)],
        cipher: Cipher::Aes256Gcm,
        ..base_opts(Some(&signer))?
    })?;
    sealer.seal_file(&p("plain"), &p("p256_signed"))?;
    // The slot by the SPEC's formulas, checked against the library.
    let e = Edit::load(&p("p256_signed"))?;
    let meta = seal::parse(&e.header)?;
    let mk_id = meta.mk_id.ok_or("no mk_id")?;
    let Slot::P256 { rid, epk, ct } = &meta.slots[0] else {
        return Err("expected a p256 slot".into());
    };
    let epk = URL_SAFE_NO_PAD.decode(epk)?;
    let epk: [u8; 65] = epk.as_slice().try_into()?;
    let z = id.agree(&epk)?;
    let kek = crypto::hkdf32(
        z.expose(),
        &[&epk[..], r.as_bytes()].concat(),
        &[b"sealtensors/1 p256 slot"],
    )?;
    let mut aad = b"sealtensors/1 slot\0p256\0".to_vec();
    aad.extend_from_slice(&mk_id);
    let mk: Secret32 = crypto::unwrap_key(&kek, &aad, &URL_SAFE_NO_PAD.decode(ct)?)
        .ok_or("p256 slot does not open")?;
    assert_eq!(*rid, r.rid(), "rid");
    let model = model();
    out.manifest(
        "p256_signed",
        json!({
            "description": "AES-256-GCM, every tensor encrypted, one P-256 recipient (SPEC §6.7), signed; opened with the recipient's P-256 identity (JWK kty EC) and the signer trusted. p256_derived: the recipient's public point, the slot's rid, ECDH output Z, KEK, slot AAD and the model key, in hex.",
            "file": file("p256_signed"),
            "identities": ["keys/p256-recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "require_encrypted": true,
            "expect": "ok",
            "authenticity": "trusted",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, |_| true),
            "p256_derived": {
                "pk": hex(r.as_bytes()),
                "rid": rid,
                "z": hex(z.expose()),
                "kek": hex(kek.expose()),
                "slot_aad": hex(&aad),
                "model_key": hex(mk.expose()),
                "mk_id": hex(&mk_id),
            },
        }),
    )?;
    out.manifest(
        "fail_p256_wrong_identity",
        json!({
            "description": "The P-256 vector opened with another P-256 key: its rid differs, nothing opens.",
            "file": file("p256_signed"),
            "identities": ["keys/p256-other.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "NoMatchingKey",
            "fails_at": "open",
        }),
    )?;
    Ok(())
}

/// SPEC §7.1: the X25519 vector's model signed with ECDSA P-256 (what a
/// PKCS#11 token without Ed25519 makes), and the same signature in its
/// other, high-s encoding.
fn ecdsa_vectors(out: &mut Out, dir: &Path) -> Res {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let p = |name: &str| dir.join(format!("{name}.safetensors"));
    let file = |name: &str| format!("{name}.safetensors");
    let k = Keys::new()?;
    let d = fixed("ecdsa p256 signer");
    let point = P256Identity::from_secret_bytes(d)?.recipient();
    let signer = sealtensors::keys::VerifyingKey::ecdsa_p256(point.as_bytes())?;
    let pair = EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &d,
        point.as_bytes(),
    )
    .map_err(|_| "ECDSA key")?;
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(k.recipient.recipient())],
        cipher: Cipher::Aes256Gcm,
        ..base_opts(None)?
    })?;
    sealer.seal_file(&p("plain"), &p("ecdsa_p256_signed"))?;
    let mut e = Edit::load(&p("ecdsa_p256_signed"))?;
    let msg = seal::signed_message(&e.header);
    let mut sig: [u8; 64] = pair
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &msg)
        .map_err(|_| "ECDSA sign")?
        .as_ref()
        .try_into()?;
    crypto::ecdsa_p256_low_s(&mut sig);
    let doc = |s: &[u8]| -> Res<String> {
        Ok(serde_json::to_string(&SignatureDoc {
            alg: "ecdsa-p256".into(),
            key: signer.to_string(),
            sig: b64(s),
        })?)
    };
    e.meta().insert(seal::KEY_SIGNATURE.into(), doc(&sig)?);
    e.save(&p("ecdsa_p256_signed"))?;
    let model = model();
    out.manifest(
        "ecdsa_p256_signed",
        json!({
            "description": "AES-256-GCM, one X25519 recipient, signed with ECDSA P-256 (SPEC §7.1: r || s over SHA-256 of the signed message, low s), the signer trusted by its ecdsa-p256: string.",
            "file": file("ecdsa_p256_signed"),
            "identities": ["keys/recipient.jwk"],
            "trusted": [signer.to_string()],
            "require_signed": true,
            "expect": "ok",
            "authenticity": "trusted",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, |_| true),
        }),
    )?;
    // s -> n - s: the same signature's other encoding, which ECDSA accepts.
    let mut high = sig;
    crypto::ecdsa_p256_other_s(&mut high);
    e.meta().insert(seal::KEY_SIGNATURE.into(), doc(&high)?);
    e.save(&p("fail_ecdsa_p256_high_s"))?;
    // The algorithm renamed, both ways: alg must be the key's.
    let renamed = SignatureDoc {
        alg: "ed25519".into(),
        key: signer.to_string(),
        sig: b64(&sig),
    };
    e.meta()
        .insert(seal::KEY_SIGNATURE.into(), serde_json::to_string(&renamed)?);
    e.save(&p("fail_ecdsa_p256_alg_renamed"))?;
    out.manifest(
        "fail_ecdsa_p256_alg_renamed",
        json!({
            "description": "The ECDSA vector with alg \"ed25519\" and its ecdsa-p256: key: the algorithm named is not the key's.",
            "file": file("fail_ecdsa_p256_alg_renamed"),
            "identities": ["keys/recipient.jwk"],
            "trusted": [signer.to_string()],
            "expect": "InvalidSealMetadata",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_ecdsa_p256_high_s",
        json!({
            "description": "The ECDSA vector with s replaced by n - s: a valid ECDSA signature, refused because SPEC §7.1 keeps one encoding (the low s).",
            "file": file("fail_ecdsa_p256_high_s"),
            "identities": ["keys/recipient.jwk"],
            "trusted": [signer.to_string()],
            "expect": "BadSignature",
            "fails_at": "open",
        }),
    )?;
    Ok(())
}

/// `make_vectors DIR --only policy`: write the policy vectors alone, from
/// the existing symmetric vector (its MK is recovered with its key), leaving
/// every other vector as it is.
fn only_policy(dir: &Path) -> Res {
    let id = sealtensors::keys::load_identity(&dir.join("keys/symmetric.jwk"))?;
    let f = sealtensors::SealedFile::open(
        dir.join("chacha_oct_unsigned.safetensors"),
        &sealtensors::OpenOptions {
            identities: vec![id.as_ref()],
            ..Default::default()
        },
    )?;
    let mk = f.model_key().ok_or("model key")?.clone();
    let fid = Edit::load(&dir.join("chacha_oct_unsigned.safetensors"))?.file_id()?;
    let mut out = Out {
        dir: dir.to_path_buf(),
        count: 0,
    };
    policy_vectors(&mut out, dir, &mk, fid)?;
    shard_vectors(&mut out, dir, &mk, fid)?;
    println!("wrote {} policy and shard manifests", out.count);
    Ok(())
}

fn main() -> Res {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: make_vectors OUTPUT_DIR [--only policy|broker|p256|ecdsa]")?,
    );
    if std::env::args().nth(2).as_deref() == Some("--only") {
        return match std::env::args().nth(3).as_deref() {
            Some("policy") => only_policy(&dir),
            Some(which @ ("broker" | "p256" | "ecdsa")) => {
                let mut out = Out {
                    dir: dir.clone(),
                    count: 0,
                };
                match which {
                    "broker" => broker_vectors(&mut out, &dir)?,
                    "p256" => p256_vectors(&mut out, &dir)?,
                    _ => ecdsa_vectors(&mut out, &dir)?,
                }
                println!("wrote {} {which} manifests", out.count);
                Ok(())
            }
            _ => Err("usage: make_vectors OUTPUT_DIR [--only policy|broker|p256|ecdsa]".into()),
        };
    }
    fs::create_dir_all(&dir)?;
    for e in fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension()
            .is_some_and(|x| x == "json" || x == "safetensors")
        {
            fs::remove_file(p)?;
        }
    }
    let k = Keys::new()?;
    k.save(&dir)?;
    let mut out = Out {
        dir: dir.clone(),
        count: 0,
    };
    let model = model();
    let refs: Vec<TensorRef<'_>> = model
        .iter()
        .map(|(n, d, s, b)| TensorRef {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
        })
        .collect();
    let all = |_: &str| true;
    let none = |_: &str| false;
    let p = |name: &str| dir.join(format!("{name}.safetensors"));
    let file = |name: &str| format!("{name}.safetensors");

    // (f) plain
    sealtensors::write_plain(&p("plain"), &refs, Some(plain_metadata()), true)?;
    out.manifest(
        "plain",
        json!({
            "description": "A plain safetensors file (one __metadata__ key, so byte-identical to the official writer's output, SPEC §2.3).",
            "file": file("plain"),
            "expect": "ok",
            "authenticity": "plain",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, none),
        }),
    )?;

    // (a) AES-256-GCM, X25519 recipient, signed
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(k.recipient.recipient())],
        cipher: Cipher::Aes256Gcm,
        ..base_opts(Some(&k.signer))?
    })?;
    sealer.seal_file(&p("plain"), &p("aes_x25519_signed"))?;
    out.manifest(
        "aes_x25519_signed",
        json!({
            "description": "AES-256-GCM, every tensor encrypted, one X25519 recipient, signed; opened with the recipient's identity and the signer trusted.",
            "file": file("aes_x25519_signed"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "require_encrypted": true,
            "expect": "ok",
            "authenticity": "trusted",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "aes_x25519_signed_no_trust",
        json!({
            "description": "The signed vector opened by a loader that names no signer: it opens, reported as signed by an untrusted (unverified) signer.",
            "file": file("aes_x25519_signed"),
            "identities": ["keys/recipient.jwk"],
            "expect": "ok",
            "authenticity": "untrusted_signer",
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "fail_untrusted_signer",
        json!({
            "description": "The signed vector, but the loader trusts another signer.",
            "file": file("aes_x25519_signed"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/other-signer.pub.jwk"],
            "expect": "UntrustedSigner",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_untrusted_signer_required",
        json!({
            "description": "The signed vector, no trusted signer, but the loader requires a signature: an untrusted signature does not count.",
            "file": file("aes_x25519_signed"),
            "identities": ["keys/recipient.jwk"],
            "require_signed": true,
            "expect": "UntrustedSigner",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_wrong_identity",
        json!({
            "description": "The signed vector opened with an X25519 identity that has no slot.",
            "file": file("aes_x25519_signed"),
            "identities": ["keys/other-recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "NoMatchingKey",
            "fails_at": "open",
        }),
    )?;

    // (b) ChaCha20-Poly1305, symmetric recipient, unsigned
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(k.symmetric.clone())],
        cipher: Cipher::ChaCha20Poly1305,
        ..base_opts(None)?
    })?;
    sealer.seal_file(&p("plain"), &p("chacha_oct_unsigned"))?;
    let mk_b = sealer.model_key().ok_or("model key")?.clone();
    let b = Edit::load(&p("chacha_oct_unsigned"))?;
    let fid_b = b.file_id()?;
    out.manifest(
        "chacha_oct_unsigned",
        json!({
            "description": "ChaCha20-Poly1305, every tensor encrypted, one symmetric-key (oct) recipient, unsigned. `derived` holds intermediate values (SPEC §4-§7).",
            "file": file("chacha_oct_unsigned"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "ok",
            "authenticity": "unsigned",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, all),
            "derived": derived(&k, &b, &mk_b)?,
        }),
    )?;
    out.manifest(
        "fail_wrong_symmetric_key",
        json!({
            "description": "The symmetric vector opened with a key of the same kid but other key material.",
            "file": file("chacha_oct_unsigned"),
            "identities": ["keys/symmetric-wrong.jwk"],
            "expect": "NoMatchingKey",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_downgrade_unsigned_required",
        json!({
            "description": "The unsigned vector, but the loader requires a signature.",
            "file": file("chacha_oct_unsigned"),
            "identities": ["keys/symmetric.jwk"],
            "require_signed": true,
            "expect": "NotSigned",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_downgrade_unsigned_trusted",
        json!({
            "description": "The unsigned vector, and the loader trusts a signer: every file must then be signed by one.",
            "file": file("chacha_oct_unsigned"),
            "identities": ["keys/symmetric.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "NotSigned",
            "fails_at": "open",
        }),
    )?;

    // (c) passphrase
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(Passphrase::with_params(
            PASSPHRASE,
            Argon2Params {
                memory_kib: 64,
                iterations: 1,
                lanes: 1,
            },
        ))],
        ..base_opts(None)?
    })?;
    sealer.seal_file(&p("plain"), &p("passphrase"))?;
    out.manifest(
        "passphrase",
        json!({
            "description": "AES-256-GCM, one passphrase (argon2id, m=64 KiB, t=1, p=1) recipient, unsigned.",
            "file": file("passphrase"),
            "passphrases": [PASSPHRASE],
            "expect": "ok",
            "authenticity": "unsigned",
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "fail_wrong_passphrase",
        json!({
            "description": "The passphrase vector opened with another passphrase.",
            "file": file("passphrase"),
            "passphrases": ["Tr0ub4dor&3"],
            "expect": "NoMatchingKey",
            "fails_at": "open",
        }),
    )?;

    // (d) partly encrypted
    let is_weight = |n: &str| n.ends_with(".weight");
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(k.recipient.recipient())],
        encrypt: Some(vec!["*.weight".into()]),
        ..base_opts(Some(&k.signer))?
    })?;
    sealer.seal_file(&p("plain"), &p("partial_glob"))?;
    out.manifest(
        "partial_glob",
        json!({
            "description": "Only tensors matching `*.weight` are encrypted (AES-256-GCM, X25519 recipient, signed); the others are plaintext with per-chunk SHA-256 digests.",
            "file": file("partial_glob"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "ok",
            "authenticity": "trusted",
            "tensors": tensor_table(&model, is_weight),
        }),
    )?;

    // (e) sign-only
    let sealer = Sealer::new(base_opts(Some(&k.signer))?)?;
    sealer.seal_file(&p("plain"), &p("sign_only"))?;
    out.manifest(
        "sign_only",
        json!({
            "description": "Sign-only: nothing encrypted, per-chunk SHA-256 digests, Ed25519 signature. The trusted signer is given as a key string.",
            "file": file("sign_only"),
            "trusted": [k.signer.verifying_key().to_string()],
            "expect": "ok",
            "authenticity": "trusted",
            "metadata": plain_metadata(),
            "tensors": tensor_table(&model, none),
        }),
    )?;
    out.manifest(
        "fail_downgrade_sign_only",
        json!({
            "description": "The sign-only vector, but the loader requires encryption.",
            "file": file("sign_only"),
            "trusted": ["keys/signer.pub.jwk"],
            "require_encrypted": true,
            "expect": "NotSealed",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_downgrade_plain",
        json!({
            "description": "The plain vector, but the loader requires encryption.",
            "file": file("plain"),
            "require_encrypted": true,
            "expect": "NotSealed",
            "fails_at": "open",
        }),
    )?;
    out.manifest(
        "fail_downgrade_plain_trusted",
        json!({
            "description": "The plain vector, and the loader trusts a signer.",
            "file": file("plain"),
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "NotSigned",
            "fails_at": "open",
        }),
    )?;

    // Expiry
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(k.symmetric.clone())],
        expires: Some(EXPIRES),
        ..base_opts(Some(&k.signer))?
    })?;
    sealer.seal_file(&p("plain"), &p("expiring"))?;
    out.manifest(
        "expiring_valid",
        json!({
            "description": "Signed, symmetric recipient, expires at 2000000000; the loader's clock is one second earlier.",
            "file": file("expiring"),
            "identities": ["keys/symmetric.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "now": EXPIRES - 1,
            "expect": "ok",
            "authenticity": "trusted",
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "fail_expired",
        json!({
            "description": "The expiring vector at its expiry time (expired when now >= expires).",
            "file": file("expiring"),
            "identities": ["keys/symmetric.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "now": EXPIRES,
            "expect": "Expired",
            "fails_at": "open",
        }),
    )?;

    // ---- edits of good vectors ---------------------------------------------------------

    // (g) one ciphertext byte flipped: the signature does not cover data, the tag does.
    let mut e = Edit::load(&p("aes_x25519_signed"))?;
    let (s, _) = e.tensor("layers.0.weight");
    e.data[s + CHUNK + 10] ^= 0x01;
    e.save(&p("fail_tampered_ciphertext"))?;
    out.manifest(
        "fail_tampered_ciphertext",
        json!({
            "description": "The signed AES vector with one bit flipped in chunk 1 of layers.0.weight: it opens (the header is intact) and reading that tensor fails.",
            "file": file("fail_tampered_ciphertext"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "ChunkAuthFailed",
            "fails_at": "read",
            "tensor": "layers.0.weight",
            "chunk": 1,
        }),
    )?;

    // A plaintext byte of a digest-protected tensor in a partly encrypted file.
    let mut e = Edit::load(&p("partial_glob"))?;
    let (s, _) = e.tensor("layers.0.bias");
    e.data[s] ^= 0x80;
    e.save(&p("fail_tampered_plaintext"))?;
    out.manifest(
        "fail_tampered_plaintext",
        json!({
            "description": "The partly encrypted vector with one byte of the plaintext tensor layers.0.bias changed: its chunk digest fails on read.",
            "file": file("fail_tampered_plaintext"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "ChunkAuthFailed",
            "fails_at": "read",
            "tensor": "layers.0.bias",
            "chunk": 0,
        }),
    )?;

    // Chunks of embed.weight swapped, data and tags, header re-authenticated:
    // position binding (nonce and AAD carry the chunk index).
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    let (s, _) = e.tensor("embed.weight");
    let (c0, c1) = e.data[s..s + 2 * CHUNK].split_at_mut(CHUNK);
    c0.swap_with_slice(c1);
    let mut docs: BTreeMap<String, Value> =
        serde_json::from_str(&e.meta()[seal::KEY_TENSORS].clone())?;
    let tags = docs["embed.weight"]["tags"].as_str().ok_or("tags")?;
    let mut raw = URL_SAFE_NO_PAD.decode(tags)?;
    let (t0, t1) = raw.split_at_mut(16);
    t0.swap_with_slice(&mut t1[..16]);
    docs.insert("embed.weight".into(), json!({ "tags": b64(&raw) }));
    e.meta()
        .insert(seal::KEY_TENSORS.into(), serde_json::to_string(&docs)?);
    e.reauth(fid_b, Some(&mk_b), None)?;
    e.save(&p("fail_chunks_reordered"))?;
    out.manifest(
        "fail_chunks_reordered",
        json!({
            "description": "The symmetric vector with chunks 0 and 1 of embed.weight swapped, their tags swapped too and the header MAC recomputed (as a recipient could): chunk 0 fails because nonce and AAD bind the index.",
            "file": file("fail_chunks_reordered"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "ChunkAuthFailed",
            "fails_at": "read",
            "tensor": "embed.weight",
            "chunk": 0,
        }),
    )?;

    // Header shape edited (same byte count), container still valid.
    let swap_shape = |e: &mut Edit| {
        let i = e.header.index_of("layers.0.weight").expect("tensor");
        e.header.tensors[i].shape = vec![96, 24];
    };
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    swap_shape(&mut e);
    e.save(&p("fail_shape_edited_mac"))?;
    out.manifest(
        "fail_shape_edited_mac",
        json!({
            "description": "The unsigned symmetric vector with the shape of layers.0.weight changed from [24,96] to [96,24] (same byte count): the header MAC fails.",
            "file": file("fail_shape_edited_mac"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "BadHeaderMac",
            "fails_at": "open",
        }),
    )?;
    let mut e = Edit::load(&p("aes_x25519_signed"))?;
    swap_shape(&mut e);
    e.save(&p("fail_shape_edited_sig"))?;
    out.manifest(
        "fail_shape_edited_sig",
        json!({
            "description": "The signed AES vector with the same shape edit: the signature fails before any key is unwrapped.",
            "file": file("fail_shape_edited_sig"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "BadSignature",
            "fails_at": "open",
        }),
    )?;

    // Publisher metadata edited in a sign-only file.
    let mut e = Edit::load(&p("sign_only"))?;
    e.meta().insert("format".into(), "np".into());
    e.save(&p("fail_metadata_edited"))?;
    out.manifest(
        "fail_metadata_edited",
        json!({
            "description": "The sign-only vector with __metadata__ \"format\" changed from \"pt\" to \"np\".",
            "file": file("fail_metadata_edited"),
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "BadSignature",
            "fails_at": "open",
        }),
    )?;

    // Signature stripped: the MAC does not cover it, so only trust config catches it.
    let mut e = Edit::load(&p("aes_x25519_signed"))?;
    e.meta().remove(seal::KEY_SIGNATURE);
    e.save(&p("signature_stripped"))?;
    out.manifest(
        "signature_stripped_no_trust",
        json!({
            "description": "The signed AES vector with sealtensors.signature removed. The MAC does not cover the signature, so a loader that trusts nobody opens it as unsigned.",
            "file": file("signature_stripped"),
            "identities": ["keys/recipient.jwk"],
            "expect": "ok",
            "authenticity": "unsigned",
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "fail_signature_stripped",
        json!({
            "description": "The stripped vector opened by a loader that trusts the signer (downgrade to unsigned).",
            "file": file("signature_stripped"),
            "identities": ["keys/recipient.jwk"],
            "trusted": ["keys/signer.pub.jwk"],
            "expect": "NotSigned",
            "fails_at": "open",
        }),
    )?;

    // (h) unknown format version, header re-authenticated.
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    let mut doc: Value = serde_json::from_str(&e.meta()[seal::KEY_SEAL].clone())?;
    doc["v"] = json!(2);
    e.meta()
        .insert(seal::KEY_SEAL.into(), serde_json::to_string(&doc)?);
    e.reauth(fid_b, Some(&mk_b), None)?;
    e.save(&p("fail_unknown_version"))?;
    out.manifest(
        "fail_unknown_version",
        json!({
            "description": "The symmetric vector with \"v\": 2 in sealtensors.seal (MAC recomputed): a version 1 reader refuses it.",
            "file": file("fail_unknown_version"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "UnsupportedVersion",
            "fails_at": "open",
        }),
    )?;

    policy_vectors(&mut out, &dir, &mk_b, fid_b)?;
    shard_vectors(&mut out, &dir, &mk_b, fid_b)?;
    broker_vectors(&mut out, &dir)?;
    p256_vectors(&mut out, &dir)?;
    ecdsa_vectors(&mut out, &dir)?;

    // Unknown reserved key.
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    e.meta()
        .insert("sealtensors.revocation".into(), "{}".into());
    e.reauth(fid_b, Some(&mk_b), None)?;
    e.save(&p("fail_unknown_reserved_key"))?;
    out.manifest(
        "fail_unknown_reserved_key",
        json!({
            "description": "The symmetric vector with an unknown reserved key sealtensors.revocation (MAC recomputed).",
            "file": file("fail_unknown_reserved_key"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "InvalidSealMetadata",
            "fails_at": "open",
        }),
    )?;

    // Unknown slot type: skipped, the known slot opens the file.
    let mut e = Edit::load(&p("chacha_oct_unsigned"))?;
    let mut slots: Vec<Value> = serde_json::from_str(&e.meta()[seal::KEY_SLOTS].clone())?;
    slots.insert(
        0,
        json!({"type": "kms", "url": "https://kms.example/v1/keys/42", "ct": "AAAA"}),
    );
    e.meta()
        .insert(seal::KEY_SLOTS.into(), serde_json::to_string(&slots)?);
    e.reauth(fid_b, Some(&mk_b), None)?;
    e.save(&p("unknown_slot_type"))?;
    out.manifest(
        "unknown_slot_type",
        json!({
            "description": "The symmetric vector with a slot of unknown type \"kms\" placed first (MAC recomputed): it is skipped and the oct slot opens the file.",
            "file": file("unknown_slot_type"),
            "identities": ["keys/symmetric.jwk"],
            "expect": "ok",
            "authenticity": "unsigned",
            "tensors": tensor_table(&model, all),
        }),
    )?;
    out.manifest(
        "fail_unknown_slot_only",
        json!({
            "description": "The same file opened with an X25519 identity: no slot is its own; the error lists the slots, the unknown one included.",
            "file": file("unknown_slot_type"),
            "identities": ["keys/recipient.jwk"],
            "expect": "NoMatchingKey",
            "fails_at": "open",
        }),
    )?;

    // Truncated: the container itself is invalid.
    let mut buf = fs::read(p("plain"))?;
    buf.pop();
    fs::write(p("fail_truncated"), buf)?;
    out.manifest(
        "fail_truncated",
        json!({
            "description": "The plain vector without its last byte: the data region is shorter than the header says.",
            "file": file("fail_truncated"),
            "expect": "InvalidContainer",
            "fails_at": "open",
        }),
    )?;

    eprintln!("{} manifests written to {}", out.count, dir.display());
    Ok(())
}

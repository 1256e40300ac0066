//! OpenSSF model signing bundles (docs/oms.md), without the Python package:
//! sign, verify, and every way a folder or a bundle can be wrong. The cross
//! checks with the real `model-signing` package are python/tests/test_oms.py.

use std::fs;
use std::path::Path;

use sealtensors::oms::{sign_folder, verify_folder, OmsPublicKey, OmsSigningKey};
use sealtensors::Error;

fn folder(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("config.json"), b"{}\n").unwrap();
    fs::write(dir.join("model.safetensors"), vec![7u8; 100_000]).unwrap();
    fs::write(dir.join("sub/tokenizer.json"), b"[1,2,3]").unwrap();
    fs::create_dir_all(dir.join(".git")).unwrap();
    fs::write(dir.join(".git/HEAD"), b"ref").unwrap();
}

fn key() -> (OmsSigningKey, OmsPublicKey) {
    let (k, _) = OmsSigningKey::generate().unwrap();
    let p = k.public_key().unwrap();
    (k, p)
}

#[test]
fn sign_then_verify_and_every_change_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("model");
    folder(&m);
    let (k, public) = key();
    let sig = m.join("model.sig");
    sign_folder(&m, &k, &sig, false).unwrap();
    let v = verify_folder(&m, &sig, std::slice::from_ref(&public)).unwrap();
    assert!(v.ok && v.uncovered.is_empty());
    assert_eq!(v.covered, 3, "the bundle and .git are not covered: {v:?}");
    // a second sign does not overwrite unless asked
    assert!(sign_folder(&m, &k, &sig, false).is_err());

    // an untrusted key, no trusted key
    let (_, other) = key();
    assert!(matches!(
        verify_folder(&m, &sig, &[other]).unwrap_err().kind(),
        Error::OmsSignature { trusted: 1 }
    ));
    assert!(matches!(
        verify_folder(&m, &sig, &[]).unwrap_err().kind(),
        Error::OmsSignature { trusted: 0 }
    ));
    // an added file is reported
    fs::write(m.join("sub/extra.bin"), b"x").unwrap();
    let v = verify_folder(&m, &sig, std::slice::from_ref(&public)).unwrap();
    assert_eq!(
        (v.ok, v.uncovered.as_slice()),
        (false, &["sub/extra.bin".to_string()][..])
    );
    fs::remove_file(m.join("sub/extra.bin")).unwrap();
    // a changed byte, a missing file
    let w = m.join("model.safetensors");
    let mut raw = fs::read(&w).unwrap();
    raw[50_000] ^= 1;
    fs::write(&w, &raw).unwrap();
    match verify_folder(&m, &sig, std::slice::from_ref(&public))
        .unwrap_err()
        .kind()
    {
        Error::OmsMismatch { file, .. } => assert_eq!(file, "model.safetensors"),
        e => panic!("{e}"),
    }
    fs::remove_file(&w).unwrap();
    assert!(matches!(
        verify_folder(&m, &sig, std::slice::from_ref(&public))
            .unwrap_err()
            .kind(),
        Error::OmsMismatch { .. }
    ));
}

#[test]
fn an_edited_bundle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("model");
    folder(&m);
    let (k, public) = key();
    let sig = tmp.path().join("model.sig");
    sign_folder(&m, &k, &sig, false).unwrap();
    let text = fs::read_to_string(&sig).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let edited = tmp.path().join("edited.sig");
    let check = |v: serde_json::Value| {
        fs::write(&edited, serde_json::to_vec(&v).unwrap()).unwrap();
        verify_folder(&m, &edited, std::slice::from_ref(&public)).unwrap_err()
    };
    // the payload: another statement under the same signature
    let mut v = doc.clone();
    let payload = v["dsseEnvelope"]["payload"].as_str().unwrap().to_string();
    use base64::Engine;
    let mut p = base64::engine::general_purpose::STANDARD
        .decode(&payload)
        .unwrap();
    let at = p.len() / 2;
    p[at] ^= 1;
    v["dsseEnvelope"]["payload"] = base64::engine::general_purpose::STANDARD.encode(&p).into();
    assert!(matches!(check(v).kind(), Error::OmsSignature { .. }));
    // the media type, the payload type, two signatures, no JSON at all
    let mut v = doc.clone();
    v["mediaType"] = "application/vnd.dev.sigstore.bundle.v0.1+json".into();
    assert!(matches!(check(v).kind(), Error::OmsInvalid(_)));
    let mut v = doc.clone();
    v["dsseEnvelope"]["payloadType"] = "text/plain".into();
    assert!(matches!(check(v).kind(), Error::OmsInvalid(_)));
    let mut v = doc.clone();
    let s = v["dsseEnvelope"]["signatures"][0].clone();
    v["dsseEnvelope"]["signatures"] = serde_json::json!([s.clone(), s]);
    assert!(matches!(check(v).kind(), Error::OmsInvalid(_)));
    fs::write(&edited, b"not json").unwrap();
    assert!(matches!(
        verify_folder(&m, &edited, &[public]).unwrap_err().kind(),
        Error::OmsInvalid(_)
    ));
}

#[test]
fn symbolic_links_are_refused_and_keys_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("model");
    folder(&m);
    std::os::unix::fs::symlink("/etc/hostname", m.join("link")).unwrap();
    let (k, public) = key();
    let err = sign_folder(&m, &k, &m.join("model.sig"), false).unwrap_err();
    assert!(matches!(err.kind(), Error::OmsInvalid(r) if r.contains("symbolic link")));
    // PEM round trip; the hint is the SHA-256 of the PEM text
    let again = OmsPublicKey::from_pem(&public.to_pem()).unwrap();
    assert_eq!(again, public);
    assert_eq!(public.hint().len(), 64);
    assert!(
        OmsPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .is_err()
    );
    // a generated private key reads back, and saves 0600
    let (_, pem) = OmsSigningKey::generate().unwrap();
    let p = tmp.path().join("k.pem");
    OmsSigningKey::save_pem(&pem, &p, false).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    OmsSigningKey::load(&p).unwrap();
    // a secret never appears in the error for a bad key
    let e = OmsSigningKey::from_pem(
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0c2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("c2VjcmV0"), "{e}");
}

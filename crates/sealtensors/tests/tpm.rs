//! P-256 identities held in a TPM 2.0, against real software TPMs (swtpm,
//! installed with tpm2-tools by scripts/system-deps.sh), each started by the
//! test on loopback and stopped after it:
//!
//! - a key made in a TPM opens files sealed to its recipient, there;
//! - its identity file copied to another TPM opens nothing (typed error);
//! - a key bound to PCR values opens while they hold, and nothing once a
//!   PCR was extended.
//!
//! The TPM is named by SEALTENSORS_TPM_TCTI, which is process-wide, so the
//! tests take turns (one lock) rather than race on it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use common::hardware::{unreachable_tcti, Swtpm};
use common::*;
use sealtensors::keys::{load_identity, load_recipient, tpm_generate_p256, Identity};
use sealtensors::{Error, OpenOptions, SealOptions, SealedFile, Sealer, TpmProblem};

/// Make this TPM the one the library uses.
fn select(t: &Swtpm) {
    std::env::set_var("SEALTENSORS_TPM_TCTI", &t.tcti);
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn seal_to(fx: &Fixture, name: &str, r: Box<dyn sealtensors::keys::Recipient>) -> PathBuf {
    let out = fx.path(name);
    Sealer::new(SealOptions {
        recipients: vec![r],
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.plain, &out)
    .unwrap();
    out
}

fn open(p: &Path, id: &dyn Identity) -> sealtensors::Result<SealedFile> {
    SealedFile::open(
        p,
        &OpenOptions {
            identities: vec![id],
            require_encrypted: true,
            ..Default::default()
        },
    )
}

fn tpm_problem(e: &Error) -> &TpmProblem {
    match e.kind() {
        Error::Tpm { problem, .. } => problem,
        other => panic!("expected a TPM error, got {other:?} ({e})"),
    }
}

#[test]
fn a_tpm_key_opens_there_and_nowhere_else() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    let a = Swtpm::start();
    select(&a);
    let idp = fx.path("id.tpm.json");
    let r = tpm_generate_p256(&idp, None, false).unwrap();
    // The file holds no secret in the clear, is private, and never replaced.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&idp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&idp).unwrap();
    assert!(!text.contains("\"d\""), "{text}");
    assert!(tpm_generate_p256(&idp, None, false).is_err());
    // Its public half is a recipient as any P-256 key file's.
    assert_eq!(
        load_recipient(&idp.to_string_lossy()).unwrap().describe(),
        format!("p256 {}", r.rid())
    );
    let p = seal_to(&fx, "to-tpm.safetensors", Box::new(r));
    let id = load_identity(&idp).unwrap();
    assert!(id.describe().contains("TPM key"), "{}", id.describe());
    let f = open(&p, id.as_ref()).unwrap();
    for t in f.tensors().to_vec() {
        assert_eq!(f.read_tensor(&t.name).unwrap(), fx.model.data(&t.name));
    }
    // Opens leave nothing loaded behind: a TPM has room for three sessions
    // and three transient objects, and each open runs about a dozen tools.
    for _ in 0..6 {
        open(&p, id.as_ref()).unwrap();
    }
    // The same file on another TPM: it cannot even be loaded there.
    let b = Swtpm::start();
    select(&b);
    let e = open(&p, id.as_ref()).err().unwrap();
    assert_eq!(tpm_problem(&e), &TpmProblem::OtherTpm, "{e}");
    assert!(e.to_string().contains("another TPM"), "{e}");
    // ... and back on its own TPM it still opens.
    select(&a);
    open(&p, id.as_ref()).unwrap();
}

#[test]
fn a_pcr_bound_key_opens_only_while_the_pcrs_hold() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    let t = Swtpm::start();
    select(&t);
    let idp = fx.path("pcr.tpm.json");
    let r = tpm_generate_p256(&idp, Some("sha256:0,7"), false).unwrap();
    let p = seal_to(&fx, "pcr.safetensors", Box::new(r));
    let id = load_identity(&idp).unwrap();
    open(&p, id.as_ref()).unwrap();
    // The binding cannot be dropped by editing the file: the TPM's own
    // description of the key says it needs its policy.
    let text = std::fs::read_to_string(&idp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tpm"].as_object_mut().unwrap().remove("pcrs");
    let unbound = fx.path("unbound.tpm.json");
    std::fs::write(&unbound, v.to_string()).unwrap();
    let e = open(&p, load_identity(&unbound).unwrap().as_ref())
        .err()
        .unwrap();
    assert!(matches!(tpm_problem(&e), TpmProblem::BadFile(_)), "{e}");
    // A PCR of the binding changes (as a firmware update or another boot
    // loader would change PCR 0 or 7): the key opens nothing.
    t.extend_pcr(7, &[0xab; 32]);
    let e = open(&p, id.as_ref()).err().unwrap();
    assert!(
        matches!(tpm_problem(&e), TpmProblem::PcrMismatch(s) if s == "sha256:0,7"),
        "{e}"
    );
    assert!(e.to_string().contains("PCR"), "{e}");
    // Resettable PCRs are refused at keygen.
    let e = tpm_generate_p256(&fx.path("reset.json"), Some("sha256:23"), false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("0 to 15"), "{e}");
}

#[test]
fn a_tpm_that_is_not_there_is_a_typed_error() {
    let _turn = one_at_a_time();
    let fx = Fixture::new();
    std::env::set_var("SEALTENSORS_TPM_TCTI", unreachable_tcti());
    let e = tpm_generate_p256(&fx.path("never.json"), None, false)
        .err()
        .unwrap();
    assert!(matches!(tpm_problem(&e), TpmProblem::Unreachable(_)), "{e}");
    assert!(!fx.path("never.json").exists());
}

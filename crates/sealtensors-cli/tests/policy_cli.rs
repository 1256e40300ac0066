//! `sealtensors policy new|test`, `seal --policy`, and the policy's refusal
//! through `unseal` and `verify` (exit code 7).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

fn bin() -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_PASSPHRASE")
        .env_remove("SEALTENSORS_LICENCE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config");
    c
}

struct Env {
    dir: tempfile::TempDir,
    plain: PathBuf,
    id: PathBuf,
    recipient: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("m.safetensors");
        let a = vec![7u8; 4 * 64];
        let refs = vec![TensorRef {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![64],
            data: &a,
        }];
        sealtensors::write_plain(&plain, &refs, None, false).unwrap();
        let id = dir.path().join("id.jwk");
        let out = bin().args(["keygen", "-o"]).arg(&id).output().unwrap();
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Env {
            dir,
            plain,
            id,
            recipient,
        }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn policy(&self, name: &str, args: &[&str]) -> PathBuf {
        let p = self.path(name);
        bin()
            .args(["policy", "new"])
            .args(args)
            .arg("-o")
            .arg(&p)
            .assert()
            .success();
        p
    }
    fn seal(&self, policy: &Path, out: &str) -> PathBuf {
        let o = self.path(out);
        bin()
            .args(["seal", "-q", "-r", &self.recipient, "--policy"])
            .arg(policy)
            .arg("-o")
            .arg(&o)
            .arg(&self.plain)
            .assert()
            .success();
        o
    }
}

#[test]
fn expiry_in_the_past_refuses_through_unseal_and_verify() {
    let env = Env::new();
    let past = env.policy(
        "past.rego",
        &["--template", "expiry", "--not-after", "2020-01-01"],
    );
    let sealed = env.seal(&past, "past.safetensors");
    for verb in [&["unseal", "-o"][..], &["verify"][..]] {
        let mut c = bin();
        c.arg(verb[0]).arg("-q").arg("-i").arg(&env.id);
        if verb.len() > 1 {
            c.arg("-o").arg(env.path("out.safetensors"));
        }
        c.arg(&sealed)
            .assert()
            .code(7)
            .stderr(predicate::str::contains(
                "the licence expired at 2020-01-01T00:00:00Z",
            ));
    }
    assert!(!env.path("out.safetensors").exists());
    // policy test on the sealed file, no key needed.
    bin()
        .args(["policy", "test"])
        .arg(&sealed)
        .assert()
        .code(7)
        .stdout(predicate::str::contains("deny"))
        .stdout(predicate::str::contains("2020-01-01T00:00:00Z"));
    // verify without a key reports the decision without failing on it.
    bin()
        .args(["verify", "-q"])
        .arg(&sealed)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("policy denies"));
}

#[test]
fn expiry_in_the_future_opens() {
    let env = Env::new();
    let future = env.policy(
        "future.rego",
        &[
            "--template",
            "expiry",
            "--not-after",
            "2999-01-01T00:00:00Z",
        ],
    );
    let sealed = env.seal(&future, "future.safetensors");
    let out = env.path("out.safetensors");
    bin()
        .args(["unseal", "-q", "-i"])
        .arg(&env.id)
        .arg("-o")
        .arg(&out)
        .arg(&sealed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&env.plain).unwrap()
    );
    bin()
        .args(["verify", "-q", "-i"])
        .arg(&env.id)
        .arg(&sealed)
        .assert()
        .success()
        .stdout(predicate::str::contains("policy allows"));
    bin()
        .args(["policy", "test"])
        .arg(&future)
        .assert()
        .success()
        .stdout(predicate::str::starts_with("allow"));
}

#[test]
fn every_template_allows_and_denies_through_policy_test() {
    let env = Env::new();
    let fw = env.policy(
        "fw.rego",
        &["--template", "frameworks", "--framework", "torch"],
    );
    bin()
        .args(["policy", "test"])
        .arg(&fw)
        .args(["--framework", "torch"])
        .assert()
        .success();
    bin()
        .args(["policy", "test"])
        .arg(&fw)
        .args(["--framework", "jax"])
        .assert()
        .code(7);
    let t = env.policy("t.rego", &["--template", "tensors", "--tensor", "model.*"]);
    bin()
        .args(["policy", "test"])
        .arg(&t)
        .args(["--tensor", "model.a"])
        .assert()
        .success();
    bin()
        .args(["policy", "test"])
        .arg(&t)
        .args(["--tensor", "lm_head"])
        .assert()
        .code(7)
        .stdout(predicate::str::contains("lm_head"));
    let m = env.policy("m.rego", &["--template", "machines", "--machine", "abc"]);
    let input = env.path("input.json");
    std::fs::write(&input, r#"{"host": {"machine_id": "abc"}}"#).unwrap();
    bin()
        .args(["policy", "test"])
        .arg(&m)
        .arg("--input")
        .arg(&input)
        .assert()
        .success();
    std::fs::write(&input, r#"{"host": {"machine_id": "xyz"}}"#).unwrap();
    bin()
        .args(["policy", "test"])
        .arg(&m)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(7);
    let e = env.policy(
        "e.rego",
        &["--template", "expiry", "--not-after", "2030-06-01"],
    );
    std::fs::write(&input, r#"{"time": {"unix": 1000}}"#).unwrap();
    bin()
        .args(["policy", "test"])
        .arg(&e)
        .arg("--input")
        .arg(&input)
        .assert()
        .success();
    std::fs::write(&input, r#"{"time": {"unix": 4000000000}}"#).unwrap();
    bin()
        .args(["policy", "test"])
        .arg(&e)
        .arg("--input")
        .arg(&input)
        .assert()
        .code(7)
        .stdout(predicate::str::contains("2030-06-01T00:00:00Z"));
}

#[test]
fn licence_claims_from_a_file_or_the_environment() {
    let env = Env::new();
    let rego = env.path("lic.rego");
    std::fs::write(
        &rego,
        "package sealtensors\nimport rego.v1\ndefault allow := false\nallow if input.licence.seats > 0\n",
    )
    .unwrap();
    let sealed = env.seal(&rego, "lic.safetensors");
    let lic = env.path("licence.json");
    std::fs::write(&lic, r#"{"seats": 3}"#).unwrap();
    let verify = || {
        let mut c = bin();
        c.args(["verify", "-q", "-i"]).arg(&env.id).arg(&sealed);
        c
    };
    verify().assert().code(7);
    verify().arg("--licence").arg(&lic).assert().success();
    verify().env("SEALTENSORS_LICENCE", &lic).assert().success();
    verify()
        .env("SEALTENSORS_LICENCE", r#"{"seats": 1}"#)
        .assert()
        .success();
}

#[test]
fn a_bad_policy_is_a_seal_error() {
    let env = Env::new();
    let bad = env.path("bad.rego");
    std::fs::write(&bad, "package sealtensors\nx := 1\n").unwrap();
    bin()
        .args(["seal", "-q", "-r", &env.recipient, "--policy"])
        .arg(&bad)
        .arg("-o")
        .arg(env.path("o.safetensors"))
        .arg(&env.plain)
        .assert()
        .code(5)
        .stderr(predicate::str::contains("data.sealtensors.allow"));
    assert!(!env.path("o.safetensors").exists());
    bin()
        .args(["policy", "new", "--template", "nope"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "expiry, machines, frameworks, tensors",
        ));
}

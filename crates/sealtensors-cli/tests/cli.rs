//! Drives the `sealtensors` binary through every verb and every error path.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

fn bin() -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    // Never pick up the developer's own keys.
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_PASSPHRASE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config");
    c
}

/// `inspect --json FILE`'s standard output (the command must succeed).
fn inspect_json(path: &std::path::Path) -> Vec<u8> {
    bin()
        .args(["inspect", "--json"])
        .arg(path)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone()
}

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

fn write_model(path: &Path, seed: u64) {
    let a = bytes(seed, 4 * 5000);
    let b = bytes(seed + 1, 2 * 300);
    let refs = vec![
        TensorRef {
            name: "model.embed.weight".into(),
            dtype: Dtype::F32,
            shape: vec![100, 50],
            data: &a,
        },
        TensorRef {
            name: "model.norm.bias".into(),
            dtype: Dtype::BF16,
            shape: vec![300],
            data: &b,
        },
    ];
    sealtensors::write_plain(
        path,
        &refs,
        Some([("format".into(), "pt".into())].into()),
        false,
    )
    .unwrap();
}

struct Env {
    dir: tempfile::TempDir,
    plain: PathBuf,
    id: PathBuf,
    recipient: String,
    sign: PathBuf,
    signer: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("model.safetensors");
        write_model(&plain, 1);
        let id = dir.path().join("id.jwk");
        let out = bin()
            .args(["keygen", "-o"])
            .arg(&id)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let recipient = String::from_utf8(out).unwrap().trim().to_string();
        let sign = dir.path().join("sign.jwk");
        let out = bin()
            .args(["keygen", "--sign", "-o"])
            .arg(&sign)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let signer = String::from_utf8(out).unwrap().trim().to_string();
        Env {
            dir,
            plain,
            id,
            recipient,
            sign,
            signer,
        }
    }
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn seal(&self, out: &str) -> PathBuf {
        let o = self.p(out);
        bin()
            .args([
                "seal",
                "--chunk-size",
                "4KiB",
                "-r",
                &self.recipient,
                "--sign-key",
            ])
            .arg(&self.sign)
            .arg("-o")
            .arg(&o)
            .arg(&self.plain)
            .assert()
            .success();
        o
    }
}

#[test]
fn keygen_writes_0600_keys_and_prints_public_halves() {
    let e = Env::new();
    assert!(e.recipient.starts_with("x25519:"));
    assert!(e.signer.starts_with("ed25519:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&e.id, &e.sign] {
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
    bin()
        .args(["keygen", "-o"])
        .arg(&e.id)
        .assert()
        .code(6)
        .stderr(predicate::str::contains("--force"));
    let sym = e.p("sym.jwk");
    bin()
        .args(["keygen", "--symmetric", "--kid", "team", "-o"])
        .arg(&sym)
        .assert()
        .success();
    assert!(std::fs::read_to_string(&sym)
        .unwrap()
        .contains("\"kty\": \"oct\""));
    bin()
        .args(["keygen"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"d\""))
        .stderr(predicate::str::contains("public: x25519:"));
}

#[cfg(unix)]
#[test]
fn keygen_force_replaces_a_symlink_and_never_writes_its_target() {
    // Issue 15: `keygen --force -o LINK` wrote the key through the link.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "do not touch\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("key.jwk");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    bin()
        .args(["keygen", "-o"])
        .arg(&link)
        .assert()
        .code(6)
        .stderr(predicate::str::contains("--force"));
    bin()
        .args(["keygen", "--force", "-o"])
        .arg(&link)
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch\n");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&link).unwrap().contains("\"d\""));
}

#[test]
fn seal_unseal_round_trip_is_byte_identical() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let back = e.p("back.safetensors");
    bin()
        .args(["unseal", "-i"])
        .arg(&e.id)
        .args(["--trust", &e.signer, "-o"])
        .arg(&back)
        .arg(&sealed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&e.plain).unwrap()
    );
    // identity and trust from the environment
    let back2 = e.p("back2.safetensors");
    bin()
        .env("SEALTENSORS_IDENTITY", &e.id)
        .env("SEALTENSORS_TRUST", &e.signer)
        .args(["unseal", "-o"])
        .arg(&back2)
        .arg(&sealed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&back2).unwrap(),
        std::fs::read(&e.plain).unwrap()
    );
}

#[test]
fn identities_come_from_the_config_directory() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let cfg = e.p("cfg");
    std::fs::create_dir_all(cfg.join("identities")).unwrap();
    std::fs::copy(&e.id, cfg.join("identities").join("me.jwk")).unwrap();
    bin()
        .env("SEALTENSORS_CONFIG_DIR", &cfg)
        .args(["verify"])
        .arg(&sealed)
        .assert()
        .success()
        .stdout(predicate::str::contains("OK"));
}

#[test]
fn verify_reports_trust_and_fails_closed() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    bin()
        .args(["verify", "-i"])
        .arg(&e.id)
        .args(["--trust", &e.signer, "--json"])
        .arg(&sealed)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("\"authenticity\":\"signed-trusted\"")
                .and(predicate::str::contains("\"ok\":true")),
        );
    // no identity: encrypted tensors cannot be checked
    bin()
        .args(["verify", "--trust", &e.signer])
        .arg(&sealed)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("-i FILE"));
    // untrusted signer
    let other = e.p("other.jwk");
    let other_pub = String::from_utf8(
        bin()
            .args(["keygen", "--sign", "-o"])
            .arg(&other)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    bin()
        .args(["verify", "-i"])
        .arg(&e.id)
        .args(["--trust", other_pub.trim()])
        .arg(&sealed)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("not among the 1 trusted signer"));
    // tampered data
    let mut raw = std::fs::read(&sealed).unwrap();
    let n = raw.len();
    raw[n - 100] ^= 1;
    let bad = e.p("bad.safetensors");
    std::fs::write(&bad, raw).unwrap();
    bin()
        .args(["verify", "-i"])
        .arg(&e.id)
        .arg(&bad)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("failed authentication"));
    // wrong key
    let wrong = e.p("wrong.jwk");
    bin().args(["keygen", "-o"]).arg(&wrong).assert().success();
    bin()
        .args(["unseal", "-i"])
        .arg(&wrong)
        .arg("-o")
        .arg(e.p("x.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4)
        .stderr(
            predicate::str::contains("no key slot matches")
                .and(predicate::str::contains("SEALTENSORS_IDENTITY"))
                // the CLI's own hint, added to the library's face-neutral message
                .and(predicate::str::contains("pass an identity with -i FILE"))
                .and(predicate::str::contains("identities=").not()),
        );
    assert!(!e.p("x.safetensors").exists());
    // missing key
    bin()
        .args(["unseal", "-o"])
        .arg(e.p("y.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4);
    // a plain file, when a signature is required
    bin()
        .args(["verify", "--require-signed"])
        .arg(&e.plain)
        .assert()
        .code(3);
}

#[test]
fn inspect_needs_no_key() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    bin()
        .args(["inspect"])
        .arg(&sealed)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("model.embed.weight F32 [100,50] encrypted")
                .and(predicate::str::contains("aes-256-gcm")),
        );
    let out = inspect_json(&sealed);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["signer"], e.signer.as_str());
    assert_eq!(v["tensors"].as_array().unwrap().len(), 2);
    assert_eq!(v["metadata"]["format"], "pt");
    bin()
        .args(["inspect"])
        .arg(&e.plain)
        .assert()
        .success()
        .stdout(predicate::str::contains("plain safetensors"));
}

#[test]
fn inspect_and_policy_test_never_print_escape_sequences_from_a_file() {
    // Issue 15: header strings went raw to the terminal, so a file could
    // write to the clipboard (OSC 52), clear the screen or fake status lines.
    const OSC: &str = "\x1b]52;c;cHduZWQ=\x07";
    const CLEAR: &str = "\x1b[2J";
    let e = Env::new();
    let hostile = e.p("hostile.safetensors");
    let data = bytes(3, 4 * 8);
    sealtensors::write_plain(
        &hostile,
        &[TensorRef {
            name: format!("w{OSC}{CLEAR}\u{9b}31m\u{202e}"),
            dtype: Dtype::F32,
            shape: vec![8],
            data: &data,
        }],
        Some(
            [
                (format!("k{CLEAR}"), format!("v{OSC}\nfile: fake")),
                ("note".into(), format!("{CLEAR}ok")),
            ]
            .into(),
        ),
        false,
    )
    .unwrap();
    let policy = e.p("hostile.rego");
    std::fs::write(
        &policy,
        format!(
            "package sealtensors\nimport rego.v1\n# {OSC}{CLEAR}\ndefault allow := false\ndeny_reasons contains \"\\u001b]52;c;cHduZWQ=\\u0007\\u001b[2J\"\n"
        ),
    )
    .unwrap();
    let sealed = e.p("hostile-sealed.safetensors");
    bin()
        .args(["seal", "-r", &e.recipient, "--sign-key"])
        .arg(&e.sign)
        .args(["--model-id", &format!("id{OSC}"), "--model-version", CLEAR])
        .arg("--policy")
        .arg(&policy)
        .arg("-o")
        .arg(&sealed)
        .arg(&hostile)
        .assert()
        .success();
    for f in [&hostile, &sealed] {
        let out = bin()
            .arg("inspect")
            .arg(f)
            .assert()
            .success()
            .get_output()
            .clone();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\x1b') && !text.contains('\u{9b}'),
            "{text:?}"
        );
        assert!(
            !text.contains('\u{202e}') && !text.contains('\x07'),
            "{text:?}"
        );
        // Escaped, still readable, and one entry per line.
        assert!(text.contains("\\u{1b}]52;c;cHduZWQ="), "{text}");
        assert!(!text.contains("\nfile: fake"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("file:")).count(), 1);
    }
    let text = String::from_utf8(
        bin()
            .arg("inspect")
            .arg(&sealed)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(text.contains("policy:\npackage sealtensors\n"), "{text}");
    // The model id is shown in its JSON form (C0 controls as \u001b).
    assert!(text.contains(r#"id "id\u001b]52"#), "{text}");
    // JSON output keeps the exact strings (escaped by JSON itself).
    let out = inspect_json(&sealed);
    assert!(!out.contains(&0x1b));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["metadata"]["note"], format!("{CLEAR}ok"));
    // `policy test` shows the file's reasons escaped, on stdout and stderr.
    let out = bin()
        .args(["policy", "test"])
        .arg(&sealed)
        .assert()
        .code(7)
        .get_output()
        .clone();
    for s in [&out.stdout, &out.stderr] {
        let t = String::from_utf8_lossy(s);
        assert!(!s.contains(&0x1b) && !s.contains(&0x07), "{t:?}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("\\u{1b}]52"));
    // And so does a load the policy refuses.
    let out = bin()
        .args(["unseal", "-i"])
        .arg(&e.id)
        .arg("-o")
        .arg(e.p("x.safetensors"))
        .arg(&sealed)
        .assert()
        .code(7)
        .get_output()
        .clone();
    assert!(
        !out.stderr.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rekey_adds_and_removes_recipients_and_rotates_the_signer() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let second = e.p("second.jwk");
    let r2 = String::from_utf8(
        bin()
            .args(["keygen", "-o"])
            .arg(&second)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    let before = std::fs::read(&sealed).unwrap();
    bin()
        .args(["rekey", "-i"])
        .arg(&e.id)
        .args([
            "--add-recipient",
            r2.trim(),
            "--remove-recipient",
            &e.recipient,
            "--sign-key",
        ])
        .arg(&e.sign)
        .arg(&sealed)
        .assert()
        .success();
    let after = std::fs::read(&sealed).unwrap();
    // data region unchanged
    let tail = 4 * 5000 + 2 * 300;
    assert_eq!(&before[before.len() - tail..], &after[after.len() - tail..]);
    bin()
        .args(["verify", "-i"])
        .arg(&second)
        .args(["--trust", &e.signer])
        .arg(&sealed)
        .assert()
        .success();
    bin()
        .args(["verify", "-i"])
        .arg(&e.id)
        .arg(&sealed)
        .assert()
        .code(4);
    // a signed file is not silently unsigned (a usage error: an option is missing)
    bin()
        .args(["rekey", "-i"])
        .arg(&second)
        .args(["--add-recipient", &e.recipient])
        .arg(&sealed)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("signing key"));
}

#[test]
fn sign_only_keeps_plaintext_and_verifies() {
    let e = Env::new();
    let signed = e.p("signed.safetensors");
    bin()
        .args(["sign", "--sign-key"])
        .arg(&e.sign)
        .arg("-o")
        .arg(&signed)
        .arg(&e.plain)
        .assert()
        .success();
    bin()
        .args(["verify", "--trust", &e.signer])
        .arg(&signed)
        .assert()
        .success()
        .stdout(predicate::str::contains("signed-trusted"));
    let back = e.p("back.safetensors");
    bin()
        .args(["unseal", "--trust", &e.signer, "-o"])
        .arg(&back)
        .arg(&signed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&e.plain).unwrap()
    );
}

#[test]
fn folders_round_trip() {
    let e = Env::new();
    let model = e.p("model");
    std::fs::create_dir(&model).unwrap();
    write_model(&model.join("model-00001-of-00002.safetensors"), 3);
    let a = bytes(9, 4 * 10);
    sealtensors::write_plain(
        &model.join("model-00002-of-00002.safetensors"),
        &[TensorRef {
            name: "lm_head.weight".into(),
            dtype: Dtype::F32,
            shape: vec![10],
            data: &a,
        }],
        None,
        false,
    )
    .unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let sealed = e.p("sealed");
    bin()
        .args(["seal", "-r", &e.recipient, "--encrypt", "*weight*", "-o"])
        .arg(&sealed)
        .arg(&model)
        .assert()
        .success();
    let back = e.p("back");
    bin()
        .args(["unseal", "-i"])
        .arg(&e.id)
        .arg("-o")
        .arg(&back)
        .arg(&sealed)
        .assert()
        .success();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "config.json",
    ] {
        assert_eq!(
            std::fs::read(model.join(f)).unwrap(),
            std::fs::read(back.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn user_errors_are_one_or_two_lines_with_a_remedy() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    // existing output
    bin()
        .args(["seal", "-r", &e.recipient, "-o"])
        .arg(&sealed)
        .arg(&e.plain)
        .assert()
        .code(6)
        .stderr(predicate::str::contains("--force"));
    // unwritable output
    bin()
        .args([
            "seal",
            "-r",
            &e.recipient,
            "-o",
            "/nonexistent-dir/x.safetensors",
        ])
        .arg(&e.plain)
        .assert()
        .code(6);
    // not safetensors
    let junk = e.p("junk.safetensors");
    std::fs::write(&junk, b"this is not a model at all").unwrap();
    bin()
        .args(["seal", "-r", &e.recipient, "-o"])
        .arg(e.p("o.safetensors"))
        .arg(&junk)
        .assert()
        .code(5)
        .stderr(predicate::str::contains("not a valid safetensors file"));
    // missing input
    bin()
        .args(["inspect", "/nonexistent.safetensors"])
        .assert()
        .code(5);
    // a directory without weights
    let empty = e.p("empty");
    std::fs::create_dir(&empty).unwrap();
    bin()
        .args(["seal", "-r", &e.recipient, "-o"])
        .arg(e.p("o2"))
        .arg(&empty)
        .assert()
        .code(5)
        .stderr(predicate::str::contains("no .safetensors"));
    // no recipient
    bin()
        .args(["seal", "-o"])
        .arg(e.p("o3.safetensors"))
        .arg(&e.plain)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("-r RECIPIENT"));
    // a glob that matches nothing (a usage error: a value refused)
    bin()
        .args(["seal", "-r", &e.recipient, "--encrypt", "nothing.*", "-o"])
        .arg(e.p("o4.safetensors"))
        .arg(&e.plain)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("match no tensor"));
    // bad recipient string
    bin()
        .args(["seal", "-r", "x25519:!!", "-o"])
        .arg(e.p("o5.safetensors"))
        .arg(&e.plain)
        .assert()
        .code(4);
    // never a panic or backtrace, one or two lines
    for args in [
        vec!["inspect"],
        vec!["verify"],
        vec!["unseal", "-o", "/tmp/never-written"],
    ] {
        let out = bin()
            .args(&args)
            .arg(&junk)
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone();
        let s = String::from_utf8(out).unwrap();
        assert!(
            !s.contains("panicked") && !s.contains("RUST_BACKTRACE"),
            "{s}"
        );
        assert!(s.lines().count() <= 2, "{s}");
    }
}

#[test]
fn passphrase_from_the_environment() {
    let e = Env::new();
    let sealed = e.p("pw.safetensors");
    bin()
        .env("SEALTENSORS_PASSPHRASE", "correct horse battery")
        .args(["seal", "--passphrase", "-o"])
        .arg(&sealed)
        .arg(&e.plain)
        .assert()
        .success();
    let back = e.p("back.safetensors");
    bin()
        .env("SEALTENSORS_PASSPHRASE", "correct horse battery")
        .args(["unseal", "--passphrase", "-o"])
        .arg(&back)
        .arg(&sealed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&e.plain).unwrap()
    );
    bin()
        .env("SEALTENSORS_PASSPHRASE", "wrong")
        .args(["unseal", "--passphrase", "-o"])
        .arg(e.p("n.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4);
}

#[test]
fn every_verb_help_ends_with_an_example() {
    for v in [
        "keygen", "seal", "unseal", "verify", "inspect", "rekey", "sign",
    ] {
        let out = bin()
            .args([v, "--help"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let s = String::from_utf8(out).unwrap();
        let last = s
            .trim_end()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(last.contains("sealtensors "), "{v}: {last}");
        assert!(s.contains("Example:"), "{v}");
    }
}

/// Found in review: `rekey -o X --force X` deleted its own input.
#[test]
fn rekey_refuses_to_write_over_its_own_input() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let before = std::fs::read(&sealed).unwrap();
    bin()
        .args(["rekey", "-i"])
        .arg(&e.id)
        .args(["--sign-key"])
        .arg(&e.sign)
        .arg("-o")
        .arg(&sealed)
        .arg("--force")
        .arg(&sealed)
        .assert()
        .failure()
        .stderr(predicate::str::contains("names the input"));
    assert_eq!(std::fs::read(&sealed).unwrap(), before);
}

/// Found in review: signing in place made a private (0600) model world-readable.
#[cfg(unix)]
#[test]
fn rewriting_in_place_keeps_the_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    std::fs::set_permissions(&e.plain, std::fs::Permissions::from_mode(0o600)).unwrap();
    bin()
        .args(["sign", "--sign-key"])
        .arg(&e.sign)
        .arg(&e.plain)
        .assert()
        .success();
    let mode = std::fs::metadata(&e.plain).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Found in review: `verify` of a plain file without an identity said "pass an
/// identity" (exit 4) instead of "not sealed" (exit 3).
#[test]
fn verify_of_a_plain_file_is_not_authentic_with_or_without_keys() {
    let e = Env::new();
    bin()
        .args(["verify"])
        .arg(&e.plain)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("not sealed"));
    bin()
        .args(["verify", "-i"])
        .arg(&e.id)
        .arg(&e.plain)
        .assert()
        .code(3);
}

/// The small build (`--no-default-features`) has no key broker: `serve` and
/// `broker ...` say so and exit 2 instead of being unknown words.
#[cfg(not(feature = "server"))]
#[test]
fn a_build_without_the_server_says_it_lacks_serve_and_broker() {
    for args in [
        vec!["serve", "--config", "broker.toml"],
        vec!["broker", "audit", "--limit", "3"],
    ] {
        bin()
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("built without the key broker"));
    }
}

/// Every verb's usage errors exit 2, as `--help` says: clap's own (an unknown
/// flag, a missing argument, a value of the wrong type, conflicting flags)
/// and the values the CLI or the library refuses (before this, the library's
/// `ErrorClass::Usage`, e.g. `--cipher nope`, exited 1).
#[test]
fn usage_errors_exit_2_for_every_verb() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let rego = e.p("p.rego");
    std::fs::write(
        &rego,
        "package sealtensors\nimport rego.v1\ndefault allow := true\n",
    )
    .unwrap();
    let not_json = e.p("input.json");
    std::fs::write(&not_json, "not json").unwrap();
    let (plain, id, sign, out) = (
        e.plain.to_str().unwrap(),
        e.id.to_str().unwrap(),
        e.sign.to_str().unwrap(),
        e.p("out.safetensors"),
    );
    let (sealed, rego, not_json, out) = (
        sealed.to_str().unwrap(),
        rego.to_str().unwrap(),
        not_json.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = e.recipient.as_str();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--nope"],
        vec![],
        vec!["keygen", "--nope"],
        vec!["keygen", "--kid", "team"],
        vec!["keygen", "--sign", "--symmetric"],
        vec!["seal", "--nope", "-r", r, "-o", out, plain],
        vec!["seal", "-r", r, "-o", out],
        vec!["seal", "-r", r, "--expires", "soon", "-o", out, plain],
        vec!["seal", "-r", r, "--cipher", "nope", "-o", out, plain],
        vec!["seal", "-r", r, "--chunk-size", "12XB", "-o", out, plain],
        vec!["seal", "-r", r, "--encrypt", "nothing.*", "-o", out, plain],
        vec!["seal", "-o", out, plain],
        vec!["unseal", "--nope", "-i", id, "-o", out, sealed],
        vec!["unseal", "-i", id, sealed],
        vec![
            "unseal",
            "-i",
            id,
            "--licence",
            "/nonexistent.json",
            "-o",
            out,
            sealed,
        ],
        vec!["verify", "--nope", sealed],
        vec!["verify", "-i", id],
        vec!["verify", "-i", id, "--licence", "/nonexistent.json", sealed],
        vec!["inspect", "--nope", sealed],
        vec!["inspect"],
        vec!["rekey", "--nope", "-i", id, "--sign-key", sign, sealed],
        vec!["rekey", "-i", id, sealed],
        vec![
            "rekey",
            "-i",
            id,
            "--sign-key",
            sign,
            "--drop-signature",
            sealed,
        ],
        vec!["rekey", "-i", id, "--sign-key", sign, "-o", sealed, sealed],
        vec!["rekey", "-i", id, "--add-recipient", r, sealed],
        vec!["sign", "--nope", "--sign-key", sign, plain],
        vec!["sign", plain],
        vec!["policy"],
        vec!["policy", "new", "--nope"],
        vec!["policy", "new"],
        vec!["policy", "new", "--template", "nope"],
        vec!["policy", "new", "--template", "expiry"],
        vec!["policy", "test", "--nope", rego],
        vec!["policy", "test"],
        vec!["policy", "test", rego, "--input", not_json],
    ];
    #[cfg(feature = "server")]
    let cases = [
        cases,
        vec![
            vec!["serve"],
            vec!["serve", "--config", "/nonexistent.toml"],
            vec!["broker", "audit", "--nope"],
            vec![
                "broker",
                "licence",
                "issue",
                "--admin-token",
                "t",
                "--customer",
                "c",
                "--model",
                "m",
                "--claims",
                "not json",
            ],
        ],
    ]
    .concat();
    for args in cases {
        let o = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            !err.is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    assert!(!e.p("out.safetensors").exists());
}

/// `--require-signed` is the name the library, Python and SPEC use;
/// `--require-signature` still works (hidden) for existing scripts.
/// `--require-encrypted` refuses plain and sign-only files (downgrade).
#[test]
fn require_signed_and_require_encrypted() {
    let e = Env::new();
    let sealed = e.seal("sealed.safetensors");
    let signed = e.p("signed.safetensors");
    bin()
        .args(["sign", "--sign-key"])
        .arg(&e.sign)
        .arg("-o")
        .arg(&signed)
        .arg(&e.plain)
        .assert()
        .success();
    let help = bin().args(["verify", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--require-signed") && help.contains("--require-encrypted"));
    assert!(!help.contains("--require-signature"), "{help}");
    for flag in ["--require-signed", "--require-signature"] {
        bin()
            .args(["verify", flag])
            .arg(&e.plain)
            .assert()
            .code(3)
            .stderr(predicate::str::contains("requires one"));
        bin()
            .args(["verify", flag, "-i"])
            .arg(&e.id)
            .arg(&sealed)
            .assert()
            .code(3)
            .stderr(predicate::str::contains("not among the 0 trusted"));
        bin()
            .args(["verify", flag, "-i"])
            .arg(&e.id)
            .args(["--trust", &e.signer])
            .arg(&sealed)
            .assert()
            .success();
    }
    for f in [&e.plain, &signed] {
        bin()
            .args(["verify", "--require-encrypted", "--trust", &e.signer])
            .arg(f)
            .assert()
            .code(3)
            .stderr(predicate::str::contains("requires an encrypted file"));
        bin()
            .args(["unseal", "--require-encrypted", "-o"])
            .arg(e.p("out.safetensors"))
            .arg(f)
            .assert()
            .code(3);
    }
    assert!(!e.p("out.safetensors").exists());
    bin()
        .args(["verify", "--require-encrypted", "--require-signed", "-i"])
        .arg(&e.id)
        .args(["--trust", &e.signer])
        .arg(&sealed)
        .assert()
        .success();
}

//! `sealtensors serve` as a real subprocess, administered with
//! `sealtensors broker ...`: a model sealed to it unseals with a licence,
//! and after `licence revoke` fails with exit code 7 and the broker's reason.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

fn bin() -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_BROKERS")
        .env_remove("SEALTENSORS_BROKER_TOKEN")
        .env_remove("SEALTENSORS_LICENCE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config");
    c
}

/// The broker process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn out(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn start(dir: &Path, port: u16) -> Server {
    let exe = assert_cmd::cargo::cargo_bin("sealtensors");
    let child = std::process::Command::new(exe)
        .args(["serve", "--config"])
        .arg(dir.join("broker.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the broker did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn serve_register_issue_unseal_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data: Vec<u8> = (0..1024u32).flat_map(|i| i.to_le_bytes()).collect();
    let plain = d.join("m.safetensors");
    sealtensors::write_plain(
        &plain,
        &[TensorRef {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![1024],
            data: &data,
        }],
        None,
        false,
    )
    .unwrap();
    out(bin().args(["keygen", "-o"]).arg(d.join("kek.jwk")));
    let signer = out(bin()
        .args(["keygen", "--sign", "-o"])
        .arg(d.join("pub.jwk")));
    let signer = signer.trim();
    let admin = "an-admin-token";
    let hash = out(bin().args(["broker", "hash-token"]).write_stdin(admin));
    let port = free_port();
    std::fs::write(
        d.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"broker.db\"\nadmin_token_sha256 = \"{}\"\nrelease_ttl = 0\n\n[[keys]]\nkid = \"k1\"\nidentity = \"kek.jwk\"\n",
            hash.trim()
        ),
    )
    .unwrap();
    let _server = start(d, port);
    let b = format!("http://127.0.0.1:{port}");
    let sealed = d.join("sealed.safetensors");
    out(bin()
        .args([
            "seal",
            "-r",
            &format!("{b}/keys/k1"),
            "--model-id",
            "acme/tiny",
            "--sign-key",
        ])
        .arg(d.join("pub.jwk"))
        .arg("-o")
        .arg(&sealed)
        .arg(&plain));
    let admin_cmd = |args: &[&str]| {
        let mut c = bin();
        c.args(["broker"])
            .args(args)
            .args(["--broker", &b])
            .env("SEALTENSORS_BROKER_ADMIN_TOKEN", admin);
        c
    };
    out(&mut admin_cmd(&[
        "register",
        "--model-id",
        "acme/tiny",
        "--signer",
        signer,
        "--kid",
        "k1",
    ]));
    let lic: serde_json::Value = serde_json::from_str(&out(&mut admin_cmd(&[
        "licence",
        "issue",
        "--customer",
        "acme",
        "--model",
        "acme/tiny",
        "--seats",
        "2",
    ])))
    .unwrap();
    let token = lic["token"].as_str().unwrap();
    let id = lic["licence"]["id"].as_str().unwrap();

    let unseal = |to: &str| {
        let mut c = bin();
        c.args(["unseal", "--trust", signer, "-o"])
            .arg(d.join(to))
            .arg(&sealed)
            .env("SEALTENSORS_BROKERS", format!("127.0.0.1:{port}"))
            .env("SEALTENSORS_BROKER_TOKEN", token);
        c
    };
    unseal("a.safetensors").assert().success();
    assert_eq!(
        std::fs::read(d.join("a.safetensors")).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    // A wrong admin token is refused.
    bin()
        .args(["broker", "licence", "list", "--broker", &b])
        .env("SEALTENSORS_BROKER_ADMIN_TOKEN", "wrong")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("admin token"));

    out(&mut admin_cmd(&["licence", "revoke", id]));
    unseal("b.safetensors")
        .assert()
        .code(7)
        .stderr(predicate::str::contains(format!(
            "licence {id} was revoked"
        )));
    let audit = out(&mut admin_cmd(&["audit", "--limit", "6"]));
    let rows: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let codes: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    // Newest first; admin requests are audited too, the refused one included.
    assert_eq!(
        codes,
        [
            "licence_revoked",
            "revoke_licence",
            "list_licences",
            "released",
            "issue_licence",
            "register_model"
        ],
        "{rows}"
    );
    assert_eq!(rows[2]["decision"], "admin_denied");
    assert_eq!(rows[2]["client"], "unknown");
}

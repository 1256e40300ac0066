//! `sealtensors verify` on edited sealed folders, given the folder or one
//! shard of it: the verdicts of the library's folder checks
//! (crates/sealtensors/tests/folders.rs) and of Python's `verify`, which
//! open through the same function (`model::open_path`). A shard missing,
//! extra or from another sealing is not authentic (exit 3); an index that
//! names a file outside the folder is an invalid input (exit 5).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

const SHARD: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];
const INDEX: &str = "model.safetensors.index.json";

fn bin() -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_PASSPHRASE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config");
    c
}

fn stdout(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A plain model of three shards with its index.
fn write_sharded(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    let mut map = serde_json::Map::new();
    for (i, name) in SHARD.iter().enumerate() {
        let data: Vec<u8> = (0..4 * 512).map(|b| (b * 7 + i) as u8).collect();
        let tensor = format!("layers.{i}.weight");
        sealtensors::write_plain(
            &dir.join(name),
            &[TensorRef {
                name: tensor.clone(),
                dtype: Dtype::F32,
                shape: vec![512],
                data: &data,
            }],
            None,
            false,
        )
        .unwrap();
        map.insert(tensor, (*name).into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join(INDEX), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
}

struct Folders {
    tmp: tempfile::TempDir,
    id: PathBuf,
    sign: PathBuf,
    signer: String,
}

impl Folders {
    /// A plain sharded model, sealed twice (`a`, `b`) for one deployer and
    /// signed by one publisher, and signed only (sign-only) twice (`sa`, `sb`).
    fn new() -> Folders {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        write_sharded(&p("model"));
        let id = p("id.jwk");
        let recipient = stdout(bin().args(["keygen", "-o"]).arg(&id));
        let sign = p("sign.jwk");
        let signer = stdout(bin().args(["keygen", "--sign", "-o"]).arg(&sign));
        for name in ["a", "b"] {
            bin()
                .args(["seal", "-q", "-r", &recipient, "--sign-key"])
                .arg(&sign)
                .arg("-o")
                .arg(p(name))
                .arg(p("model"))
                .assert()
                .success();
        }
        for name in ["sa", "sb"] {
            bin()
                .args(["sign", "-q", "--sign-key"])
                .arg(&sign)
                .arg("-o")
                .arg(p(name))
                .arg(p("model"))
                .assert()
                .success();
        }
        Folders {
            tmp,
            id,
            sign,
            signer,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `verify` as a deployer with its identity who trusts the publisher.
    fn verify(&self, target: &Path) -> assert_cmd::assert::Assert {
        bin()
            .args(["verify", "-q", "-i"])
            .arg(&self.id)
            .args(["--trust", &self.signer])
            .arg(target)
            .assert()
    }

    /// The folder and its first shard are refused alike, with the same
    /// exit code and reason; without an identity too (the folder is judged
    /// before any key is needed).
    fn refused(&self, dir: &Path, code: i32, want: &str) {
        for target in [dir.to_path_buf(), dir.join(SHARD[0])] {
            self.verify(&target)
                .code(code)
                .stderr(predicate::str::contains(want));
            bin()
                .args(["verify", "-q", "--trust", &self.signer])
                .arg(&target)
                .assert()
                .code(code)
                .stderr(predicate::str::contains(want));
        }
    }
}

fn edit_index(dir: &Path, f: impl Fn(&str) -> Option<String>) {
    let p = dir.join(INDEX);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let map = v["weight_map"].as_object_mut().unwrap();
    let edited = map
        .iter()
        .filter_map(|(k, file)| Some((k.clone(), f(file.as_str()?)?.into())))
        .collect();
    *map = edited;
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn an_intact_folder_and_each_of_its_shards_verify() {
    let f = Folders::new();
    for dir in ["a", "sa"] {
        let dir = f.path(dir);
        let out = stdout(
            bin()
                .args(["verify", "--json", "-i"])
                .arg(&f.id)
                .args(["--trust", &f.signer])
                .arg(&dir),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["files"].as_array().unwrap().len(), 3, "{v}");
        for s in SHARD {
            f.verify(&dir.join(s))
                .success()
                .stdout(predicate::str::contains("signed-trusted"));
        }
    }
}

#[test]
fn a_missing_shard_is_refused() {
    let f = Folders::new();
    for dir in ["a", "sa"] {
        let dir = f.path(dir);
        std::fs::remove_file(dir.join(SHARD[2])).unwrap();
        // As an attacker hiding it would: its tensors dropped from the index.
        edit_index(&dir, |file| (file != SHARD[2]).then(|| file.to_string()));
        f.refused(&dir, 3, "missing: shard 3");
    }
}

#[test]
fn an_extra_shard_is_refused() {
    let f = Folders::new();
    let dir = f.path("a");
    std::fs::copy(
        dir.join(SHARD[1]),
        dir.join("model-00004-of-00004.safetensors"),
    )
    .unwrap();
    f.refused(&dir, 3, "both shard 2 of 3");
    // A model of one file dropped beside the shards.
    let dir = f.path("sa");
    bin()
        .args(["sign", "-q", "--sign-key"])
        .arg(&f.sign)
        .arg("-o")
        .arg(dir.join("extra.safetensors"))
        .arg(f.path("model").join(SHARD[0]))
        .assert()
        .success();
    f.refused(&dir, 3, "not numbered as a shard");
}

#[test]
fn a_shard_of_another_sealing_is_refused() {
    let f = Folders::new();
    // Encrypted: the model keys differ.
    std::fs::copy(f.path("b").join(SHARD[1]), f.path("a").join(SHARD[1])).unwrap();
    f.refused(&f.path("a"), 3, "not shards of one sealed model");
    // Sign-only: no model key; the shard set tells the sealings apart.
    std::fs::copy(f.path("sb").join(SHARD[1]), f.path("sa").join(SHARD[1])).unwrap();
    f.refused(&f.path("sa"), 3, "another sealing");
}

#[test]
fn an_index_naming_a_file_outside_the_folder_is_refused() {
    let f = Folders::new();
    let dir = f.path("a");
    let outside = format!("../b/{}", SHARD[2]);
    edit_index(&dir, |file| {
        Some(if file == SHARD[2] {
            outside.clone()
        } else {
            file.to_string()
        })
    });
    f.refused(&dir, 5, "not a file name beside the index");
}

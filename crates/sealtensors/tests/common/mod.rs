//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod hardware;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sealtensors::keys::{SigningKey, X25519Identity};
use sealtensors::{Dtype, OpenOptions, SealOptions, SealedFile, Sealer, TensorRef};

/// Deterministic pseudo-random bytes (xorshift), never zeros.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
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

/// A plain model: a few tensors of several dtypes, one empty one.
pub struct Model {
    pub tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Model {
    pub fn small() -> Model {
        let spec: Vec<(&str, Dtype, Vec<u64>)> = vec![
            ("embed.weight", Dtype::F32, vec![64, 300]),
            ("layer.0.bias", Dtype::BF16, vec![77]),
            ("layer.0.weight", Dtype::F16, vec![33, 65]),
            ("empty", Dtype::F32, vec![0, 4]),
            ("mask", Dtype::BOOL, vec![5]),
            ("ids", Dtype::I64, vec![3]),
        ];
        let tensors = spec
            .into_iter()
            .enumerate()
            .map(|(i, (n, d, s))| {
                let len = d.byte_len(&s).unwrap();
                (n.to_string(), d, s, bytes(i as u64 + 1, len))
            })
            .collect();
        Model {
            tensors,
            metadata: Some([("format".to_string(), "pt".to_string())].into()),
        }
    }

    pub fn refs(&self) -> Vec<TensorRef<'_>> {
        self.tensors
            .iter()
            .map(|(n, d, s, b)| TensorRef {
                name: n.clone(),
                dtype: *d,
                shape: s.clone(),
                data: b,
            })
            .collect()
    }

    pub fn write(&self, path: &Path) {
        sealtensors::write_plain(path, &self.refs(), self.metadata.clone(), false).unwrap();
    }

    pub fn data(&self, name: &str) -> &[u8] {
        &self.tensors.iter().find(|t| t.0 == name).unwrap().3
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub model: Model,
    pub plain: PathBuf,
    pub id: X25519Identity,
    pub signer: SigningKey,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::small();
        let plain = dir.path().join("plain.safetensors");
        model.write(&plain);
        Fixture {
            dir,
            model,
            plain,
            id: X25519Identity::generate().unwrap(),
            signer: SigningKey::generate().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Seal with the fixture's identity and signer, 4 KiB chunks.
    pub fn seal(&self, name: &str, tweak: impl FnOnce(&mut SealOptions)) -> PathBuf {
        let out = self.path(name);
        let mut o = SealOptions {
            recipients: vec![Box::new(self.id.recipient())],
            signing_key: Some(self.signer.try_clone().unwrap()),
            chunk_size: 4096,
            model_id: "acme/test".into(),
            model_version: "1".into(),
            ..Default::default()
        };
        tweak(&mut o);
        Sealer::new(o)
            .unwrap()
            .seal_file(&self.plain, &out)
            .unwrap();
        out
    }

    pub fn opts(&self) -> OpenOptions<'_> {
        OpenOptions {
            identities: vec![&self.id],
            trusted: vec![self.signer.verifying_key()],
            require_encrypted: true,
            ..Default::default()
        }
    }

    pub fn open(&self, p: &Path) -> sealtensors::Result<SealedFile> {
        SealedFile::open(p, &self.opts())
    }

    /// Open and read every tensor; the first error.
    pub fn open_and_read_all(&self, p: &Path, opts: &OpenOptions<'_>) -> sealtensors::Result<()> {
        let f = SealedFile::open(p, opts)?;
        for t in f.tensors().to_vec() {
            let got = f.read_tensor(&t.name)?;
            assert_eq!(
                got,
                self.model.data(&t.name),
                "a read that succeeded returned wrong bytes"
            );
        }
        Ok(())
    }
}

/// A plain model folder of three shards (four F32 tensors each), its index,
/// a config and a tokenizer in a subfolder. Returns every tensor's bytes.
pub fn write_sharded(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut all = BTreeMap::new();
    let mut weight_map = serde_json::Map::new();
    for shard in 1..=3u64 {
        let file = format!("model-0000{shard}-of-00003.safetensors");
        let names: Vec<String> = (0..4)
            .map(|i| format!("layers.{shard}.{i}.weight"))
            .collect();
        let data: Vec<Vec<u8>> = names
            .iter()
            .enumerate()
            .map(|(i, _)| bytes(shard * 10 + i as u64, 4 * 3000))
            .collect();
        let refs: Vec<TensorRef<'_>> = names
            .iter()
            .zip(&data)
            .map(|(n, d)| TensorRef {
                name: n.clone(),
                dtype: Dtype::F32,
                shape: vec![3000],
                data: d,
            })
            .collect();
        sealtensors::write_plain(
            &dir.join(&file),
            &refs,
            Some([("format".into(), "pt".into())].into()),
            false,
        )
        .unwrap();
        for (n, d) in names.iter().zip(data) {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
            all.insert(n.clone(), d);
        }
    }
    let index =
        serde_json::json!({"metadata": {"total_size": 36 * 3000 * 4}, "weight_map": weight_map});
    std::fs::write(
        dir.join(sealtensors::model::INDEX_FILE),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    std::fs::write(dir.join("sub").join("tokenizer.json"), "{}").unwrap();
    all
}

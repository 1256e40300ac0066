//! Interoperability driver for the Python test suite (`tests/python`): seals
//! a plain safetensors file in every mode so that the official safetensors
//! package can be checked against the results.
//!
//! ```text
//! cargo run --example interop -- INPUT.safetensors OUTDIR
//! ```
//! writes OUTDIR/{aes,chacha,partial,signed,multi}.safetensors, their unsealed
//! copies `*.unsealed.safetensors`, `rewrite.safetensors` (the input's tensors
//! written again by `write_plain`), and the keys as JWK files.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use sealtensors::keys::{SigningKey, SymmetricKey, X25519Identity};
use sealtensors::{Cipher, OpenOptions, SealOptions, SealedFile, Sealer, TensorRef};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: interop INPUT.safetensors OUTDIR".into());
    }
    let input = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    std::fs::create_dir_all(&out)?;
    let id = X25519Identity::generate()?;
    let signer = SigningKey::generate()?;
    let sym = SymmetricKey::generate(Some("interop".into()))?;
    let cases: Vec<(&str, SealOptions)> = vec![
        (
            "aes",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                signing_key: Some(signer.try_clone()?),
                chunk_size: 4096,
                ..Default::default()
            },
        ),
        (
            "chacha",
            SealOptions {
                recipients: vec![Box::new(sym.clone())],
                cipher: Cipher::ChaCha20Poly1305,
                chunk_size: 4096,
                ..Default::default()
            },
        ),
        (
            "partial",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                signing_key: Some(signer.try_clone()?),
                encrypt: Some(vec!["*weight*".into()]),
                ..Default::default()
            },
        ),
        (
            "signed",
            SealOptions {
                signing_key: Some(signer.try_clone()?),
                chunk_size: 4096,
                ..Default::default()
            },
        ),
        (
            "multi",
            SealOptions {
                recipients: vec![Box::new(id.recipient()), Box::new(sym.clone())],
                signing_key: Some(signer.try_clone()?),
                model_id: "interop/model".into(),
                model_version: "2".into(),
                ..Default::default()
            },
        ),
    ];
    for (name, mut opts) in cases {
        opts.overwrite = true;
        let sealed = out.join(format!("{name}.safetensors"));
        Sealer::new(opts)?.seal_file(&input, &sealed)?;
        let o = OpenOptions {
            identities: vec![&id, &sym],
            ..Default::default()
        };
        let f = SealedFile::open(&sealed, &o)?;
        f.verify_data()?;
        f.unseal_to(&out.join(format!("{name}.unsealed.safetensors")), true)?;
    }
    // The input's tensors written again by our plain writer.
    let f = SealedFile::open(&input, &OpenOptions::default())?;
    let data: Vec<Vec<u8>> = f
        .tensors()
        .iter()
        .map(|t| f.read_tensor(&t.name))
        .collect::<Result<_, _>>()?;
    let refs: Vec<TensorRef<'_>> = f
        .tensors()
        .iter()
        .zip(&data)
        .map(|(t, d)| TensorRef {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: d,
        })
        .collect();
    sealtensors::write_plain(&out.join("rewrite.safetensors"), &refs, f.metadata(), true)?;
    Ok(())
}

//! The main job, end to end on a real model folder: make keys, seal the
//! folder for one recipient and one signer, open it as a deployer would
//! (trusting only that signer), check every tensor against the original,
//! and unseal it to a plain folder.
//!
//! ```text
//! cargo run --release --example model_demo -- MODEL_DIR WORK_DIR
//! ```
//! WORK_DIR gets keys/, sealed/ and unsealed/.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use sealtensors::keys::{KeyFile, SigningKey, X25519Identity};
use sealtensors::model::{seal_model_dir, unseal_model_dir, SealedModel};
use sealtensors::{Authenticity, OpenOptions, SealOptions, Sealer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: model_demo MODEL_DIR WORK_DIR".into());
    }
    let (input, work) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;

    // Deployer's identity and publisher's signing key, stored as JWK (0600).
    KeyFile::X25519Identity(X25519Identity::generate()?).save(&keys.join("deployer.jwk"), true)?;
    KeyFile::Signing(SigningKey::generate()?).save(&keys.join("publisher-sign.jwk"), true)?;
    let KeyFile::X25519Identity(id) = KeyFile::load(&keys.join("deployer.jwk"))? else {
        return Err("deployer.jwk is not an X25519 identity".into());
    };
    let signer = sealtensors::keys::load_signing_key(&keys.join("publisher-sign.jwk"))?;
    println!("recipient:      {}", id.recipient());
    println!("signer:         {}", signer.verifying_key());

    let sealed = work.join("sealed");
    let t = Instant::now();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        signing_key: Some(signer.try_clone()?),
        model_id: input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model_version: "1".into(),
        overwrite: true,
        ..Default::default()
    })?;
    seal_model_dir(&sealer, &input, &sealed, true)?;
    println!(
        "sealed in       {:.0} ms -> {}",
        t.elapsed().as_secs_f64() * 1e3,
        sealed.display()
    );

    let opts = OpenOptions {
        identities: vec![&id],
        trusted: vec![signer.verifying_key()],
        require_encrypted: true,
        ..Default::default()
    };
    let t = Instant::now();
    let model = SealedModel::open(&sealed, &opts)?;
    let plain = SealedModel::open(&input, &OpenOptions::default())?;
    let mut bytes = 0usize;
    for name in plain.tensor_names() {
        let a = plain.read_tensor(name)?;
        let b = model.read_tensor(name)?;
        if a != b {
            return Err(format!("tensor {name} differs after sealing").into());
        }
        bytes += b.len();
    }
    for f in model.files() {
        if !matches!(f.authenticity(), Authenticity::Trusted(_)) {
            return Err("the sealed model is not signed by the trusted signer".into());
        }
    }
    println!(
        "opened, verified and decrypted {} tensors ({:.1} MiB) in {:.0} ms: every tensor matches",
        plain.tensor_names().len(),
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64() * 1e3
    );

    let unsealed = work.join("unsealed");
    unseal_model_dir(&sealed, &unsealed, &opts, true)?;
    println!("unsealed to     {}", unsealed.display());
    Ok(())
}

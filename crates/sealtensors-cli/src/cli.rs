//! Command-line syntax. Every verb's help ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Confidential, signed model weights that stay safetensors files.
#[derive(Parser, Debug)]
#[command(name = "sealtensors", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 not authentic \
(tampered, untrusted or missing signature, expired, downgraded), 4 no key opens the file, \
5 input is not a valid (sealed) safetensors file, 6 output exists or cannot be written."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a key: an X25519 identity (default), an Ed25519 signing key, or a symmetric key.
    #[command(
        after_help = "Example:\n  sealtensors keygen -o deployer.jwk\n  sealtensors keygen --sign -o publisher.jwk"
    )]
    Keygen(Keygen),
    /// Encrypt (and sign) a safetensors file or a Hugging Face model folder.
    #[command(
        after_help = "Example:\n  sealtensors seal -r x25519:g24X... --sign-key publisher.jwk -o sealed-model/ model/"
    )]
    Seal(Seal),
    /// Decrypt a sealed file or folder back to plain safetensors.
    #[command(
        after_help = "Example:\n  sealtensors unseal -i deployer.jwk --trust ed25519:lCVJ... -o model/ sealed-model/"
    )]
    Unseal(Unseal),
    /// Check the signature and every chunk's tag or digest.
    #[command(
        after_help = "Example:\n  sealtensors verify -i deployer.jwk --trust publisher.pub.jwk sealed-model/"
    )]
    Verify(Verify),
    /// Show what a file says about itself; needs no key.
    #[command(
        after_help = "Example:\n  sealtensors inspect --json sealed-model/model.safetensors"
    )]
    Inspect(Inspect),
    /// Add or remove recipients, or change the signing key; the data is not re-encrypted.
    #[command(
        after_help = "Example:\n  sealtensors rekey -i deployer.jwk --add-recipient x25519:Qm9... --sign-key publisher.jwk sealed-model/"
    )]
    Rekey(Rekey),
    /// Sign a plain model without encrypting it (per-chunk digests, signed header).
    #[command(
        after_help = "Example:\n  sealtensors sign --sign-key publisher.jwk -o signed-model/ model/"
    )]
    Sign(Sign),
}

#[derive(Args, Debug)]
pub struct Keygen {
    /// Write the key here (mode 0600) and print its public half; without it the
    /// secret key is printed on standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// An Ed25519 signing key instead of an X25519 identity.
    #[arg(long, conflicts_with = "symmetric")]
    pub sign: bool,
    /// A symmetric 256-bit key (JWK oct) instead of an X25519 identity.
    #[arg(long)]
    pub symmetric: bool,
    /// Key id of a symmetric key (random if not given).
    #[arg(long, requires = "symmetric")]
    pub kid: Option<String>,
    /// Overwrite an existing key file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// Identity file (X25519 or symmetric JWK); repeatable. Default: SEALTENSORS_IDENTITY, then the config directory.
    #[arg(short = 'i', long = "identity")]
    pub identities: Vec<PathBuf>,
    /// Trusted signer (ed25519:... or a JWK file); repeatable. Default: SEALTENSORS_TRUST, then the config directory.
    #[arg(long = "trust")]
    pub trust: Vec<String>,
    /// Ask for a passphrase to open passphrase slots (or read SEALTENSORS_PASSPHRASE).
    #[arg(long)]
    pub passphrase: bool,
    /// Refuse files without a valid signature.
    #[arg(long)]
    pub require_signature: bool,
}

#[derive(Args, Debug)]
pub struct Seal {
    /// Recipient: an x25519:... public key, or a JWK file (X25519 public key or symmetric key); repeatable.
    #[arg(short = 'r', long = "recipient")]
    pub recipients: Vec<String>,
    /// Also let a passphrase open the file (asked on the terminal, or SEALTENSORS_PASSPHRASE).
    #[arg(long)]
    pub passphrase: bool,
    /// Sign the header with this Ed25519 key (JWK).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Encrypt only tensors whose names match this glob; repeatable. Default: all.
    #[arg(long = "encrypt")]
    pub encrypt: Vec<String>,
    /// aes-256-gcm or chacha20-poly1305.
    #[arg(long, default_value = "aes-256-gcm")]
    pub cipher: String,
    /// Chunk size: bytes, or with a suffix (K, KiB, M, MiB).
    #[arg(long, default_value = "1MiB")]
    pub chunk_size: String,
    /// Model id written in the signed header.
    #[arg(long, default_value = "")]
    pub model_id: String,
    /// Model version written in the signed header.
    #[arg(long, default_value = "")]
    pub model_version: String,
    /// Expiry, Unix seconds; loaders refuse the model after it.
    #[arg(long)]
    pub expires: Option<u64>,
    /// Output file or folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Input safetensors file or model folder.
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct Unseal {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Output file or folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Sealed file or folder.
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct Verify {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Sealed file or folder.
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct Inspect {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// File or folder.
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct Rekey {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Recipient to add; repeatable.
    #[arg(long = "add-recipient")]
    pub add: Vec<String>,
    /// Recipient to remove; repeatable.
    #[arg(long = "remove-recipient")]
    pub remove: Vec<String>,
    /// Re-sign with this key (keeps or rotates the signer).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Drop the signature (only without --sign-key).
    #[arg(long, conflicts_with = "sign_key")]
    pub drop_signature: bool,
    /// Write here instead of rewriting in place.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Sealed file or folder.
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct Sign {
    /// Ed25519 signing key (JWK).
    #[arg(long)]
    pub sign_key: PathBuf,
    /// Model id written in the signed header.
    #[arg(long, default_value = "")]
    pub model_id: String,
    /// Model version written in the signed header.
    #[arg(long, default_value = "")]
    pub model_version: String,
    /// Output; without it the input is replaced atomically.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Plain safetensors file or model folder.
    pub input: PathBuf,
}

//! Command-line syntax. Every verb's help ends with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Confidential, signed model weights that stay safetensors files.
#[derive(Parser, Debug)]
#[command(name = "sealtensors", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage (an option missing, unknown or \
conflicting, or a value refused: --cipher nope, an --encrypt glob that matches nothing), 3 not authentic \
(tampered, untrusted or missing signature, expired, downgraded), 4 no key opens the file, \
5 input is not a valid (sealed) safetensors file or policy, 6 output exists or cannot be written, \
7 the file's access policy denies access (no key was tried)."
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
    /// Make a key: an X25519 identity (default), a P-256 identity, an Ed25519 signing key, or a symmetric key.
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
    /// Re-encrypt CryptoTensors files (a file or a folder) into sealtensors files for new recipients.
    #[command(
        after_help = "Example:\n  sealtensors convert --from cryptotensors -i ct-keys.json --trust ct-keys.json -r x25519:g24X... --sign-key publisher.jwk -o sealed-model/ ct-model/\n\nBack to plain safetensors: sealtensors unseal -i ct-keys.json --trust ct-keys.json -o model/ ct-model/"
    )]
    Convert(Convert),
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
    /// Write a licence policy from a template, or test a policy (docs/policy.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run a key broker: licences, policy-enforced key release, audit (docs/broker.md).
    #[cfg(feature = "server")]
    #[command(after_help = "Example:\n  sealtensors serve --config broker.toml")]
    Serve(crate::broker::Serve),
    /// Administer a running key broker: models, licences, audit.
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Broker(crate::broker::BrokerCommand),
    /// Not in this build (built without the `server` feature).
    #[cfg(not(feature = "server"))]
    #[command(hide = true)]
    Serve(NotBuilt),
    /// Not in this build (built without the `server` feature).
    #[cfg(not(feature = "server"))]
    #[command(hide = true)]
    Broker(NotBuilt),
}

/// The arguments of a verb this build lacks: taken as they come, so that the
/// verb can say it is missing (exit 2) instead of clap calling it unknown.
#[cfg(not(feature = "server"))]
#[derive(Args, Debug)]
pub struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Write a Rego licence policy from a template: expiry, machines, frameworks or tensors.
    #[command(
        after_help = "Example:\n  sealtensors policy new --template expiry --not-after 2027-01-01 -o licence.rego\n  sealtensors policy new --template machines --machine $(cat /etc/machine-id)"
    )]
    New(PolicyNew),
    /// Evaluate a policy (.rego file, or the one in a sealed file) here and now; needs no key.
    #[command(
        after_help = "Prints allow or deny with the policy's reasons; exit 0 on allow, 7 on deny.\nExample:\n  sealtensors policy test sealed-model/model.safetensors --licence licence.json\n  sealtensors policy test licence.rego --input input.json"
    )]
    Test(PolicyTest),
}

#[derive(Args, Debug)]
pub struct PolicyNew {
    /// expiry, machines, frameworks or tensors.
    #[arg(long)]
    pub template: String,
    /// expiry: the last moment the model opens, RFC 3339 (2027-01-01T00:00:00Z) or a date (2027-01-01, midnight UTC).
    #[arg(long)]
    pub not_after: Option<String>,
    /// machines: an allowed machine id (/etc/machine-id); repeatable.
    #[arg(long = "machine")]
    pub machines: Vec<String>,
    /// frameworks: an allowed framework (torch, numpy, transformers, vllm); repeatable.
    #[arg(long = "framework")]
    pub frameworks: Vec<String>,
    /// tensors: a glob of tensor names that may be requested; repeatable.
    #[arg(long = "tensor")]
    pub tensors: Vec<String>,
    /// Write the policy here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct PolicyTest {
    /// A .rego policy, or a sealed file (or model folder) whose policy to evaluate.
    pub policy: PathBuf,
    /// Evaluate with this input document (JSON) instead of the local one.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Licence claims (a JSON object) for the local input document.
    #[arg(long)]
    pub licence: Option<PathBuf>,
    /// The framework named in the local input document.
    #[arg(long)]
    pub framework: Option<String>,
    /// A tensor requested (repeatable); default: every tensor.
    #[arg(long = "tensor")]
    pub tensors: Vec<String>,
    /// Print the input document too.
    #[arg(long)]
    pub print_input: bool,
}

#[derive(Args, Debug)]
pub struct Keygen {
    /// Write the key here (mode 0600) and print its public half; without it the
    /// secret key is printed on standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// An Ed25519 signing key instead of an X25519 identity.
    #[arg(long, conflicts_with_all = ["symmetric", "oms", "p256"])]
    pub sign: bool,
    /// A P-256 identity (JWK kty EC) instead of an X25519 one: the key type
    /// that hardware tokens and TPMs hold (SPEC §6.7); prints its p256:... recipient.
    #[arg(long, conflicts_with_all = ["symmetric", "oms"])]
    pub p256: bool,
    /// Make a P-256 key pair inside the PKCS#11 token this URI names
    /// (pkcs11:token=...;object=LABEL?module-path=...&pin-source=file:...; the
    /// PIN may instead be in SEALTENSORS_PKCS11_PIN) and print its p256:...
    /// recipient; the private key never leaves the token. Use the same URI as
    /// -i (or SEALTENSORS_IDENTITY) to open what is sealed to it. With --sign:
    /// a signing key on the token, Ed25519 where the token has it, else ECDSA
    /// P-256 (prints its ed25519:... or ecdsa-p256:... signer; give the URI
    /// to --sign-key).
    #[arg(long, value_name = "URI", conflicts_with_all = ["symmetric", "oms", "p256", "output", "force", "tpm"])]
    pub pkcs11: Option<String>,
    /// Make a P-256 key inside this machine's TPM 2.0 (through tpm2-tools;
    /// SEALTENSORS_TPM_TCTI names the TPM) and write the TPM-wrapped key as
    /// the identity file -o: it opens nothing on another TPM. Prints the
    /// p256:... recipient.
    #[arg(long, requires = "output", conflicts_with_all = ["sign", "symmetric", "oms", "p256"])]
    pub tpm: bool,
    /// With --sign --pkcs11: an ECDSA P-256 signing key even where the token
    /// has Ed25519.
    #[arg(long, requires_all = ["sign", "pkcs11"])]
    pub ecdsa: bool,
    /// With --tpm: bind the key to the current values of these PCRs
    /// (sha256:0,7); after a change to them (another boot chain, firmware,
    /// Secure Boot state) it opens nothing.
    #[arg(long, requires = "tpm", value_name = "SELECTION")]
    pub pcrs: Option<String>,
    /// An ECDSA P-256 key (PEM) for OpenSSF model signing bundles (sign --oms-key);
    /// prints the PEM public key to give verifiers.
    #[arg(long, conflicts_with = "symmetric", requires = "output")]
    pub oms: bool,
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
    /// Identity file (X25519, P-256 or symmetric JWK) or pkcs11: URI of a token-held P-256 key; repeatable. Default: SEALTENSORS_IDENTITY, then the config directory.
    #[arg(short = 'i', long = "identity")]
    pub identities: Vec<PathBuf>,
    /// Trusted signer (ed25519:..., ecdsa-p256:... or a JWK file); repeatable. Default: SEALTENSORS_TRUST, then the config directory.
    #[arg(long = "trust")]
    pub trust: Vec<String>,
    /// Ask for a passphrase to open passphrase slots (or read SEALTENSORS_PASSPHRASE).
    #[arg(long)]
    pub passphrase: bool,
    /// Refuse files not signed by a trusted signer (--trust): plain, unsigned and untrusted ones.
    #[arg(long, alias = "require-signature")]
    pub require_signed: bool,
    /// Refuse files that are not encrypted: plain or sign-only files (downgrade).
    #[arg(long)]
    pub require_encrypted: bool,
    /// Licence claims (JSON object) for the file's access policy. Default: SEALTENSORS_LICENCE.
    #[arg(long)]
    pub licence: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct Seal {
    #[command(flatten)]
    pub params: SealParams,
    /// Also let a passphrase open the file (asked on the terminal, or SEALTENSORS_PASSPHRASE).
    #[arg(long)]
    pub passphrase: bool,
    /// Output file or folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Input safetensors file or model folder.
    pub input: PathBuf,
}

/// Convert another format's encrypted files into sealtensors files.
#[derive(Args, Debug)]
pub struct Convert {
    /// The format of the input: cryptotensors (files of the `cryptotensors` package).
    #[arg(long = "from", value_parser = ["cryptotensors"])]
    pub from: String,
    /// The input's keys: -i their key file (the oct key), --trust their signer (the okp key).
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub params: SealParams,
    /// Output file or folder.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Input file or model folder.
    pub input: PathBuf,
}

/// What a new seal is made with: recipients, signer, cipher, model identity, policy.
#[derive(Args, Debug)]
pub struct SealParams {
    /// Recipient: an x25519:... or p256:... public key, a JWK file (X25519 or P-256 public key, or symmetric key), or a pkcs11: URI of a token-held P-256 key; repeatable.
    #[arg(short = 'r', long = "recipient")]
    pub recipients: Vec<String>,
    /// Sign the header with this Ed25519 key: a JWK file, or the pkcs11: URI of a token-held key.
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
    /// Access policy (Rego) stored in the signed header; see `sealtensors policy new`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
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
    /// Verify the folder against this OpenSSF model signing bundle (model_signing's
    /// key method) instead: the signer must be a --trust'ed PEM public key.
    #[arg(long)]
    pub oms: Option<PathBuf>,
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
    /// Re-sign with this key, a JWK file or pkcs11: URI (keeps or rotates the signer).
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
    /// Ed25519 signing key (JWK file or pkcs11: URI): sign every weight file's header (sign-only seal).
    #[arg(long, required_unless_present = "oms_key")]
    pub sign_key: Option<PathBuf>,
    /// ECDSA P-256 private key (PEM): also write an OpenSSF model signing bundle over
    /// the whole folder, which `model_signing verify key` accepts (docs/oms.md).
    #[arg(long)]
    pub oms_key: Option<PathBuf>,
    /// Where the bundle goes (default: model.sig inside the folder).
    #[arg(long, requires = "oms_key")]
    pub oms_signature: Option<PathBuf>,
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

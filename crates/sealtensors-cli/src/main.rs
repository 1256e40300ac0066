//! `sealtensors`: a thin face over the library. It parses arguments, finds
//! keys, shows progress, prints the library's reports (show.rs) and maps
//! errors (error.rs); it holds no crypto and no folder logic.
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
mod broker;
mod cli;
mod error;
mod hint;
mod show;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use sealtensors::keys::{
    load_recipient, load_signing_key, Identity, KeyConfig, KeyFile, P256Identity, Passphrase,
    Recipient, SigningKey, SymmetricKey, X25519Identity,
};
use sealtensors::model::{
    convert_path, data_len, rekey_path, seal_path, seal_path_in_place, unseal_path, EmbeddedPolicy,
};
use sealtensors::oms::{self, OmsSigningKey};
use sealtensors::policy::{self, Decision, Policy, PolicyContext, Template, TemplateParams};
use sealtensors::rekey::RekeyOptions;
use sealtensors::report;
use sealtensors::{Cipher, OpenOptions, Progress, SealOptions, Sealer};

use cli::{Cli, Command};
use error::{code, CliError};

type Result<T> = std::result::Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Keygen(a) => keygen(a),
        Command::Seal(a) => seal(a, quiet),
        Command::Unseal(a) => unseal(a, quiet),
        Command::Convert(a) => convert(a, quiet),
        Command::Verify(a) => verify(a, quiet),
        Command::Inspect(a) => inspect(a),
        Command::Rekey(a) => rekey(a),
        Command::Sign(a) => sign(a, quiet),
        Command::Policy(cli::PolicyCommand::New(a)) => policy_new(a),
        Command::Policy(cli::PolicyCommand::Test(a)) => policy_test(a),
        #[cfg(feature = "server")]
        Command::Serve(a) => broker::serve(a),
        #[cfg(feature = "server")]
        Command::Broker(c) => broker::run(c),
        #[cfg(not(feature = "server"))]
        Command::Serve(_) | Command::Broker(_) => Err(CliError::usage(
            "this sealtensors was built without the key broker (`serve`, `broker ...`); \
             install it with the default features: cargo install --path crates/sealtensors-cli",
        )),
    }
}

// ---- helpers ------------------------------------------------------------------------

/// A progress bar over the tensor bytes of `input` (a file or a folder), on
/// a terminal only: the total is read (every header: one request a file at
/// a URL) only when the bar is shown.
fn progress(quiet: bool, input: &Path, what: &str) -> Result<(ProgressBar, Option<Progress>)> {
    if quiet || !std::io::stderr().is_terminal() {
        return Ok((ProgressBar::hidden(), None));
    }
    let bar = ProgressBar::new(data_len(input)?);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    let b = bar.clone();
    Ok((bar, Some(Arc::new(move |n| b.inc(n)))))
}

fn read_passphrase(prompt: &str) -> Result<Passphrase> {
    if let Ok(p) = std::env::var("SEALTENSORS_PASSPHRASE") {
        return Ok(Passphrase::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "--passphrase needs a terminal to ask on, or the passphrase in SEALTENSORS_PASSPHRASE",
        ));
    }
    let p = rpassword::prompt_password(prompt)
        .map_err(|e| CliError::usage(format!("could not read the passphrase: {e}")))?;
    if p.is_empty() {
        return Err(CliError::usage("the passphrase is empty"));
    }
    Ok(Passphrase::new(p))
}

struct Keys {
    config: KeyConfig,
    passphrase: Option<Passphrase>,
    licence: Option<serde_json::Value>,
}

fn read_licence(path: &Path) -> Result<serde_json::Value> {
    policy::licence_from_str_or_path(&path.to_string_lossy()).map_err(CliError::from)
}

impl Keys {
    fn load(a: &cli::KeyArgs) -> Result<Keys> {
        let config = KeyConfig::discover(&a.identities, &a.trust)?;
        let passphrase = if a.passphrase {
            Some(read_passphrase("passphrase: ")?)
        } else {
            None
        };
        let licence = a.licence.as_deref().map(read_licence).transpose()?;
        Ok(Keys {
            config,
            passphrase,
            licence,
        })
    }
    fn options(&self, a: &cli::KeyArgs) -> OpenOptions<'_> {
        let mut o = OpenOptions::from_keys(&self.config);
        if let Some(p) = &self.passphrase {
            o.identities.push(p as &dyn Identity);
        }
        o.require_signed |= a.require_signed;
        o.require_encrypted = a.require_encrypted;
        o.policy.licence = self.licence.clone();
        o
    }
}

fn recipients(specs: &[String]) -> Result<Vec<Box<dyn Recipient>>> {
    specs
        .iter()
        .map(|s| load_recipient(s).map_err(CliError::from))
        .collect()
}

fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| CliError::usage(format!("bad size {s:?}; use e.g. 4096, 64KiB or 1MiB")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(CliError::usage(format!(
                "bad size unit in {s:?}; use K, KiB, M or MiB"
            )))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| CliError::usage(format!("size {s:?} is too large")))
}

fn check_output(output: &Path, force: bool) -> Result<()> {
    if output.exists() && !force {
        return Err(CliError::with_code(
            format!(
                "{} already exists; choose another output or pass --force",
                output.display()
            ),
            code::OUTPUT,
        ));
    }
    Ok(())
}

// ---- verbs -----------------------------------------------------------------------------

fn keygen(a: cli::Keygen) -> Result<()> {
    if let Some(uri) = &a.pkcs11 {
        return keygen_pkcs11(uri, a.sign, a.ecdsa);
    }
    if a.tpm {
        let Some(path) = &a.output else {
            return Err(CliError::usage(
                "--tpm needs -o FILE, the identity file to write",
            ));
        };
        let r = sealtensors::keys::tpm_generate_p256(path, a.pcrs.as_deref(), a.force)?;
        println!("{r}");
        return Ok(());
    }
    if a.oms {
        let (key, text) = OmsSigningKey::generate()?;
        if let Some(path) = &a.output {
            OmsSigningKey::save_pem(&text, path, a.force)?;
            print!("{}", key.public_key()?.to_pem());
        }
        return Ok(());
    }
    let (key, public) = if a.sign {
        let k = SigningKey::generate()?;
        let p = k.verifying_key().to_string();
        (KeyFile::Signing(k), p)
    } else if a.p256 {
        let k = P256Identity::generate()?;
        let p = k.recipient().to_string();
        (KeyFile::P256Identity(k), p)
    } else if a.symmetric {
        let k = SymmetricKey::generate(a.kid)?;
        let p = format!(
            "symmetric key {:?} (share the key file itself with recipients)",
            k.kid()
        );
        (KeyFile::Symmetric(k), p)
    } else {
        let k = X25519Identity::generate()?;
        let p = k.recipient().to_string();
        (KeyFile::X25519Identity(k), p)
    };
    match a.output {
        Some(path) => {
            key.save(&path, a.force)?;
            println!("{public}");
        }
        None => {
            print!("{}", key.to_jwk().as_str());
            eprintln!("public: {public}");
        }
    }
    Ok(())
}

#[cfg(feature = "pkcs11")]
fn keygen_pkcs11(uri: &str, sign: bool, ecdsa: bool) -> Result<()> {
    if ecdsa {
        println!("{}", sealtensors::keys::pkcs11_generate_ecdsa_p256(uri)?);
    } else if sign {
        println!("{}", sealtensors::keys::pkcs11_generate_signer(uri)?);
    } else {
        println!("{}", sealtensors::keys::pkcs11_generate_p256(uri)?);
    }
    Ok(())
}

#[cfg(not(feature = "pkcs11"))]
fn keygen_pkcs11(_uri: &str, _sign: bool, _ecdsa: bool) -> Result<()> {
    Err(CliError::usage(
        "this build of sealtensors has no PKCS#11 support (built without the `pkcs11` feature)",
    ))
}

fn seal(a: cli::Seal, quiet: bool) -> Result<()> {
    let mut recips = recipients(&a.params.recipients)?;
    if a.passphrase {
        recips.push(Box::new(read_passphrase("passphrase to seal with: ")?));
    }
    check_output(&a.output, a.force)?;
    let (bar, progress) = progress(quiet, &a.input, "sealing")?;
    let sealer = new_sealer(a.params, recips, a.force, progress)?;
    seal_path(&sealer, &a.input, &a.output, a.force)?;
    bar.finish_and_clear();
    Ok(())
}

fn convert(a: cli::Convert, quiet: bool) -> Result<()> {
    let keys = Keys::load(&a.keys)?;
    let opts = keys.options(&a.keys);
    let recips = recipients(&a.params.recipients)?;
    check_output(&a.output, a.force)?;
    let (bar, progress) = progress(quiet, &a.input, "converting")?;
    let sealer = new_sealer(a.params, recips, a.force, progress)?;
    convert_path(&sealer, &a.input, &a.output, &opts, a.force)?;
    bar.finish_and_clear();
    Ok(())
}

/// A sealer for `seal` and `convert`: at least one recipient, the policy
/// read, a warning when it denies a load here now.
fn new_sealer(
    a: cli::SealParams,
    recips: Vec<Box<dyn Recipient>>,
    overwrite: bool,
    progress: Option<Progress>,
) -> Result<Sealer> {
    let signing_key = a.sign_key.as_deref().map(load_signing_key).transpose()?;
    if recips.is_empty() {
        return Err(CliError::usage(
            "no recipient: give -r RECIPIENT (or --passphrase) to encrypt, or use `sealtensors sign` to sign only",
        ));
    }
    let cipher: Cipher = a.cipher.parse()?;
    let policy_text = a
        .policy
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| CliError::usage(format!("reading the policy {}: {e}", p.display())))
        })
        .transpose()?;
    let sealer = Sealer::new(SealOptions {
        recipients: recips,
        signing_key,
        cipher,
        chunk_size: parse_size(&a.chunk_size)?,
        encrypt: (!a.encrypt.is_empty()).then_some(a.encrypt),
        model_id: a.model_id,
        model_version: a.model_version,
        expires: a.expires,
        policy: policy_text,
        overwrite,
        progress,
        ..Default::default()
    })?;
    if let Some(Decision::Deny { reasons }) = sealer.policy_decision() {
        eprintln!(
            "warning: the policy denies a load on this machine now (no licence, no framework): {}",
            reasons.join("; ")
        );
    }
    Ok(sealer)
}

fn unseal(a: cli::Unseal, quiet: bool) -> Result<()> {
    let keys = Keys::load(&a.keys)?;
    let mut opts = keys.options(&a.keys);
    check_output(&a.output, a.force)?;
    let (bar, progress) = progress(quiet, &a.input, "unsealing")?;
    opts.progress = progress;
    unseal_path(&a.input, &a.output, &opts, a.force)?;
    bar.finish_and_clear();
    Ok(())
}

fn verify(a: cli::Verify, quiet: bool) -> Result<()> {
    let keys = Keys::load(&a.keys)?;
    if let Some(bundle) = &a.oms {
        let v = oms::verify_folder(&a.input, bundle, &keys.config.oms_trusted)?;
        if a.json {
            show::json(&v)?;
        } else {
            show::oms_verification(&a.input, &v);
        }
        if v.ok {
            return Ok(());
        }
        return Err(CliError::with_code(
            format!(
                "{} file(s) in the folder are not covered by the signature",
                v.uncovered.len()
            ),
            code::NOT_AUTHENTIC,
        ));
    }
    let mut opts = keys.options(&a.keys);
    let (bar, progress) = progress(quiet, &a.input, "verifying")?;
    opts.progress = progress;
    // Without an identity, the files are opened locked: what can be checked
    // without a key is, and the encrypted tensors are reported unchecked.
    opts.locked = opts.identities.is_empty();
    let verification = report::verify(&a.input, &opts)?;
    bar.finish_and_clear();
    if a.json {
        show::json(&verification)?;
    } else {
        show::verification(&verification);
    }
    if verification.ok {
        return Ok(());
    }
    if verification.any_unchecked_signature() {
        return Err(CliError::with_code(
            "a CryptoTensors file's signature was not checked: it does not carry its signer's key; give the publisher's key with --trust (or SEALTENSORS_TRUST)",
            code::NOT_AUTHENTIC,
        ));
    }
    if opts.locked && !verification.any_plain() {
        return Err(CliError::with_code(
            "encrypted tensors were not checked: pass an identity (-i FILE) or set SEALTENSORS_IDENTITY",
            code::NO_KEY,
        ));
    }
    Err(CliError::with_code(
        "a plain file carries nothing to verify; it is not sealed",
        code::NOT_AUTHENTIC,
    ))
}

fn inspect(a: cli::Inspect) -> Result<()> {
    let inspections = report::inspect(&a.input)?;
    match (a.json, inspections.as_slice()) {
        (true, [one]) => show::json(one)?,
        (true, all) => show::json(all)?,
        (false, all) => all.iter().for_each(show::inspection),
    }
    Ok(())
}

fn rekey(a: cli::Rekey) -> Result<()> {
    if a.add.is_empty() && a.remove.is_empty() && a.sign_key.is_none() && !a.drop_signature {
        return Err(CliError::usage("nothing to do: give --add-recipient, --remove-recipient, --sign-key or --drop-signature"));
    }
    if let Some(o) = &a.output {
        if let (Ok(x), Ok(y)) = (std::fs::canonicalize(o), std::fs::canonicalize(&a.input)) {
            if x == y {
                return Err(CliError::usage(
                    "-o names the input; omit -o to rewrite it in place",
                ));
            }
        }
    }
    let keys = Keys::load(&a.keys)?;
    if let Some(o) = &a.output {
        check_output(o, a.force)?;
    }
    let opts = RekeyOptions {
        open: keys.options(&a.keys),
        add: recipients(&a.add)?,
        remove: recipients(&a.remove)?,
        signing_key: a.sign_key.as_deref().map(load_signing_key).transpose()?,
        drop_signature: a.drop_signature,
        overwrite: a.force,
    };
    Ok(rekey_path(&a.input, a.output.as_deref(), &opts)?)
}

fn sign(a: cli::Sign, quiet: bool) -> Result<()> {
    let oms_key = a.oms_key.as_deref().map(OmsSigningKey::load).transpose()?;
    let Some(sign_key) = &a.sign_key else {
        // Only the OpenSSF model signing bundle, over the folder as it is.
        let Some(k) = &oms_key else {
            return Err(CliError::usage("give --sign-key, --oms-key, or both"));
        };
        if a.output.is_some() {
            return Err(CliError::usage(
                "-o names where --sign-key writes the signed model; with --oms-key alone the folder is left as it is, and --oms-signature names where the bundle goes",
            ));
        }
        return oms_sign(k, &a.input, a.oms_signature.as_deref(), a.force);
    };
    let key = load_signing_key(sign_key)?;
    let in_place = a.output.is_none();
    let output = a.output.clone().unwrap_or_else(|| a.input.clone());
    if oms_key.is_some() && sealtensors::is_remote(&output) {
        return Err(CliError::usage(
            "--oms-key signs a local folder: sign into a local folder, then upload it with the bundle",
        ));
    }
    if !in_place {
        check_output(&output, a.force)?;
    }
    let (bar, progress) = progress(quiet, &a.input, "signing")?;
    let sealer = Sealer::new(SealOptions {
        signing_key: Some(key),
        model_id: a.model_id,
        model_version: a.model_version,
        overwrite: in_place || a.force,
        progress,
        ..Default::default()
    })?;
    if in_place {
        seal_path_in_place(&sealer, &a.input)?;
    } else {
        seal_path(&sealer, &a.input, &output, a.force)?;
    }
    bar.finish_and_clear();
    match &oms_key {
        Some(k) => oms_sign(k, &output, a.oms_signature.as_deref(), a.force || in_place),
        None => Ok(()),
    }
}

/// Write an OpenSSF model signing bundle over `folder` (default: its model.sig).
fn oms_sign(key: &OmsSigningKey, folder: &Path, at: Option<&Path>, overwrite: bool) -> Result<()> {
    let at = at.map_or_else(|| folder.join(oms::SIGNATURE_FILE), Path::to_path_buf);
    oms::sign_folder(folder, key, &at, overwrite)?;
    Ok(())
}

fn policy_new(a: cli::PolicyNew) -> Result<()> {
    let t = Template::from_name(&a.template).ok_or_else(|| {
        CliError::usage(format!(
            "unknown template {:?}; choose one of: {}",
            a.template,
            Template::ALL.map(|t| t.name()).join(", ")
        ))
    })?;
    let text = t.render(&TemplateParams {
        not_after: a.not_after,
        machines: a.machines,
        frameworks: a.frameworks,
        tensors: a.tensors,
    })?;
    match a.output {
        Some(path) => {
            check_output(&path, a.force)?;
            std::fs::write(&path, text).map_err(|e| {
                CliError::with_code(format!("{}: {e}", path.display()), code::OUTPUT)
            })?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A policy to test: a .rego file, or the policy of a sealed file or folder,
/// with what the local input document needs (model, file name, tensors).
fn policy_source(path: &Path) -> Result<(String, Option<EmbeddedPolicy>)> {
    let Some(p) = EmbeddedPolicy::of_path(path)? else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
        return Ok((text, None));
    };
    let what = if p.sealed {
        "carries no access policy"
    } else {
        "is a plain safetensors file; it carries no policy"
    };
    match &p.text {
        Some(text) => Ok((text.clone(), Some(p))),
        None => Err(CliError::with_code(
            format!("{} {what}", p.file.display()),
            code::BAD_INPUT,
        )),
    }
}

fn policy_test(a: cli::PolicyTest) -> Result<()> {
    let (text, source) = policy_source(&a.policy)?;
    let mut p = Policy::compile(&text).map_err(|e| CliError::from(sealtensors::Error::from(e)))?;
    let input = match &a.input {
        Some(path) => {
            let s = std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
            serde_json::from_str(&s).map_err(|e| {
                CliError::usage(format!("{} is not a JSON document: {e}", path.display()))
            })?
        }
        None => {
            let ctx = PolicyContext {
                licence: a.licence.as_deref().map(read_licence).transpose()?,
                framework: a.framework.clone(),
                requested: (!a.tensors.is_empty()).then(|| a.tensors.clone()),
                ..Default::default()
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let (model, name, tensors) = match &source {
                Some(p) => (p.model.clone(), p.file_name(), p.tensors.as_slice()),
                None => (Default::default(), None, &[][..]),
            };
            policy::input_document(
                &ctx,
                &model,
                name.as_deref(),
                tensors.iter().map(String::as_str),
                now,
            )?
        }
    };
    if a.print_input {
        println!(
            "input: {}",
            show::shown_lines(&serde_json::to_string_pretty(&input).unwrap_or_default())
        );
    }
    match p.evaluate(&input)? {
        Decision::Allow => {
            println!("allow");
            Ok(())
        }
        Decision::Deny { reasons } => {
            println!("deny");
            // The reasons come from the file's policy: escaped as in inspect.
            let reasons: Vec<String> = reasons.iter().map(|r| show::shown(r)).collect();
            for r in &reasons {
                println!("  - {r}");
            }
            Err(CliError::with_code(
                format!("the policy denies access: {}", reasons.join("; ")),
                code::POLICY_DENIED,
            ))
        }
    }
}

//! `sealtensors`: a thin face over the library. It parses arguments, finds
//! keys, shows progress and maps errors; it holds no crypto.

#[cfg(feature = "server")]
mod broker;
mod cli;
mod error;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use sealtensors::keys::{
    load_recipient, load_signing_key, Identity, KeyConfig, KeyFile, Passphrase, Recipient,
    SigningKey, SymmetricKey, X25519Identity,
};
use sealtensors::model::{
    rekey_model_dir, seal_model_dir, seal_model_in_place, unseal_model_dir, weight_files,
    SealedModel,
};
use sealtensors::policy::{self, Decision, Policy, PolicyContext, Template, TemplateParams};
use sealtensors::rekey::{rekey_file, RekeyOptions};
use sealtensors::seal::Protection;
use sealtensors::{
    read_header, Authenticity, Cipher, OpenOptions, Progress, SealOptions, SealedFile, Sealer,
};

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

fn progress(quiet: bool, total: u64, what: &str) -> (ProgressBar, Option<Progress>) {
    if quiet || !std::io::stderr().is_terminal() {
        return (ProgressBar::hidden(), None);
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    let b = bar.clone();
    (bar, Some(Arc::new(move |n| b.inc(n))))
}

/// Total tensor bytes of a file or of a folder's weight files.
fn data_size(input: &Path) -> Result<u64> {
    let files = if input.is_dir() {
        weight_files(input)?
    } else {
        vec![input.to_path_buf()]
    };
    let mut total = 0;
    for f in files {
        total += read_header(&f)?.1.data_len() as u64;
    }
    Ok(total)
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
        o.require_signed = a.require_signature;
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
    let (key, public) = if a.sign {
        let k = SigningKey::generate()?;
        let p = k.verifying_key().to_string();
        (KeyFile::Signing(k), p)
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

fn seal(a: cli::Seal, quiet: bool) -> Result<()> {
    let mut recips = recipients(&a.recipients)?;
    if a.passphrase {
        recips.push(Box::new(read_passphrase("passphrase to seal with: ")?));
    }
    let signing_key = a.sign_key.as_deref().map(load_signing_key).transpose()?;
    if recips.is_empty() {
        return Err(CliError::usage(
            "no recipient: give -r RECIPIENT (or --passphrase) to encrypt, or use `sealtensors sign` to sign only",
        ));
    }
    check_output(&a.output, a.force)?;
    let cipher: Cipher = a.cipher.parse()?;
    let policy_text = a
        .policy
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| CliError::usage(format!("reading the policy {}: {e}", p.display())))
        })
        .transpose()?;
    let total = data_size(&a.input)?;
    let (bar, progress) = progress(quiet, total, "sealing");
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
        overwrite: a.force,
        progress,
        ..Default::default()
    })?;
    if let Some(Decision::Deny { reasons }) = sealer.policy_decision() {
        eprintln!(
            "warning: the policy denies a load on this machine now (no licence, no framework): {}",
            reasons.join("; ")
        );
    }
    if a.input.is_dir() {
        seal_model_dir(&sealer, &a.input, &a.output, a.force)?;
    } else {
        sealer.seal_file(&a.input, &a.output)?;
    }
    bar.finish_and_clear();
    Ok(())
}

fn unseal(a: cli::Unseal, quiet: bool) -> Result<()> {
    let keys = Keys::load(&a.keys)?;
    let mut opts = keys.options(&a.keys);
    check_output(&a.output, a.force)?;
    let (bar, progress) = progress(quiet, data_size(&a.input)?, "unsealing");
    opts.progress = progress;
    if a.input.is_dir() {
        unseal_model_dir(&a.input, &a.output, &opts, a.force)?;
    } else {
        SealedFile::open(&a.input, &opts)?.unseal_to(&a.output, a.force)?;
    }
    bar.finish_and_clear();
    Ok(())
}

fn files_of(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        Ok(weight_files(input)?)
    } else {
        Ok(vec![input.to_path_buf()])
    }
}

fn verify(a: cli::Verify, quiet: bool) -> Result<()> {
    let keys = Keys::load(&a.keys)?;
    let mut opts = keys.options(&a.keys);
    let (bar, progress) = progress(quiet, data_size(&a.input)?, "verifying");
    opts.progress = progress;
    let locked = opts.identities.is_empty();
    opts.locked = locked;
    let mut reports = Vec::new();
    let mut all_ok = true;
    let mut any_plain = false;
    // A folder is verified as one model (SPEC §8.5): one key unwrap, and its
    // shards must be the complete set of one sealing, as every loader checks.
    let files = if a.input.is_dir() {
        SealedModel::open(&a.input, &opts)?.into_files()
    } else {
        vec![SealedFile::open(&a.input, &opts)?]
    };
    for f in &files {
        let path = f.path();
        let encrypted: Vec<&str> = f
            .tensors()
            .iter()
            .filter(|t| f.is_encrypted(&t.name).unwrap_or(false))
            .map(|t| t.name.as_str())
            .collect();
        let unchecked = if f.model_key().is_none() {
            encrypted.len()
        } else {
            0
        };
        if unchecked == 0 {
            f.verify_data()?;
        } else {
            // Check what can be checked without a key: the plaintext tensors.
            for t in f.tensors() {
                if !f.is_encrypted(&t.name)? {
                    f.read_tensor(&t.name)?;
                }
            }
        }
        let (auth, signer) = (
            f.authenticity().name(),
            f.authenticity().signer().map(|k| k.to_string()),
        );
        let policy = match f.policy_decision() {
            None => serde_json::Value::Null,
            Some(Decision::Allow) => serde_json::json!({"decision": "allow"}),
            Some(Decision::Deny { reasons }) => {
                serde_json::json!({"decision": "deny", "reasons": reasons})
            }
        };
        let plain = matches!(f.authenticity(), Authenticity::Plain);
        any_plain |= plain;
        let ok = unchecked == 0 && !plain;
        all_ok &= ok;
        reports.push(serde_json::json!({
            "file": path.display().to_string(),
            "authenticity": auth,
            "signer": signer,
            "tensors": f.tensors().len(),
            "encrypted_tensors": encrypted.len(),
            "unchecked_encrypted_tensors": unchecked,
            "policy": policy,
            "ok": ok,
        }));
    }
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({ "ok": all_ok, "files": reports }));
    } else {
        for r in &reports {
            let signer = r["signer"]
                .as_str()
                .map(|s| format!(" by {s}"))
                .unwrap_or_default();
            let unchecked = r["unchecked_encrypted_tensors"].as_u64().unwrap_or(0);
            let status = if r["ok"].as_bool().unwrap_or(false) {
                "OK"
            } else {
                "NOT VERIFIED"
            };
            let policy = match r["policy"]["decision"].as_str() {
                Some("allow") => "; policy allows".to_string(),
                Some(_) => format!(
                    "; policy denies: {}",
                    r["policy"]["reasons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => String::new(),
            };
            println!(
                "{status}: {} ({}{signer}; {} tensors, {} encrypted{}{policy})",
                r["file"].as_str().unwrap_or(""),
                r["authenticity"].as_str().unwrap_or(""),
                r["tensors"],
                r["encrypted_tensors"],
                if unchecked > 0 {
                    format!(", {unchecked} not checked: no identity given")
                } else {
                    String::new()
                }
            );
        }
    }
    if all_ok {
        return Ok(());
    }
    if locked && !any_plain {
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
    let mut out = Vec::new();
    for path in files_of(&a.input)? {
        let (_, h) = read_header(&path)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut j = serde_json::json!({
            "file": path.display().to_string(),
            "size": size,
            "header_size": h.data_start(),
            "sealed": sealtensors::seal::is_sealed(&h),
        });
        let meta = if sealtensors::seal::is_sealed(&h) {
            let m = sealtensors::seal::parse(&h).map_err(|e| CliError::from(e.in_file(&path)))?;
            j["format_version"] = m.doc.v.into();
            j["mode"] = serde_json::to_value(m.doc.mode).unwrap_or_default();
            j["model"] = serde_json::to_value(&m.doc.model).unwrap_or_default();
            j["cipher"] = m.doc.aead.clone().into();
            j["chunk_size"] = m.doc.chunk_size.into();
            j["signer"] = m.signature.as_ref().map(|s| s.key.clone()).into();
            j["signature"] = if m.signature.is_some() {
                "present, not verified (use `sealtensors verify`)"
            } else {
                "none"
            }
            .into();
            j["recipients"] = m
                .slots
                .iter()
                .map(|s| s.describe())
                .collect::<Vec<_>>()
                .into();
            j["policy"] = m.policy.clone().into();
            j["metadata"] = serde_json::to_value(&m.user_metadata).unwrap_or_default();
            Some(m)
        } else {
            j["metadata"] = serde_json::to_value(&h.metadata).unwrap_or_default();
            None
        };
        j["tensors"] = h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let enc = meta.as_ref().is_some_and(|m| matches!(m.protection.get(i), Some(Protection::Encrypted(_))));
                serde_json::json!({"name": t.name, "dtype": t.dtype.as_str(), "shape": t.shape, "bytes": t.len(), "encrypted": enc})
            })
            .collect::<Vec<_>>()
            .into();
        out.push(j);
    }
    if a.json {
        let v = if out.len() == 1 {
            out.remove(0)
        } else {
            serde_json::Value::Array(out)
        };
        println!("{v}");
        return Ok(());
    }
    // Text mode: every string from the file (names, metadata, policy, model
    // id and version, recipients, signer) and the path is shown with control
    // and invisible characters escaped, so a header cannot drive the
    // terminal (ESC/OSC sequences, bidi overrides). `--json` is escaped by
    // serde above.
    for j in out {
        println!("file:        {}", shown_str(&j["file"]));
        println!(
            "size:        {} bytes (header {})",
            j["size"], j["header_size"]
        );
        if j["sealed"].as_bool().unwrap_or(false) {
            println!(
                "format:      sealtensors v{} ({})",
                shown_value(&j["format_version"]),
                shown_str(&j["mode"])
            );
            println!(
                "model:       id {} version {} created {} expires {}",
                shown_value(&j["model"]["id"]),
                shown_value(&j["model"]["version"]),
                shown_value(&j["model"]["created"]),
                shown_value(
                    j["model"]
                        .get("expires")
                        .unwrap_or(&serde_json::Value::Null)
                )
            );
            println!(
                "cipher:      {} (chunks of {} bytes)",
                j["cipher"]
                    .as_str()
                    .map(shown)
                    .unwrap_or_else(|| "none".into()),
                shown_value(&j["chunk_size"])
            );
            println!(
                "signer:      {} [{}]",
                j["signer"]
                    .as_str()
                    .map(shown)
                    .unwrap_or_else(|| "none".into()),
                shown_str(&j["signature"])
            );
            for r in j["recipients"].as_array().into_iter().flatten() {
                println!("recipient:   {}", shown_str(r));
            }
            if let Some(p) = j["policy"].as_str() {
                println!("policy:");
                for line in p.lines() {
                    println!("{}", shown(line));
                }
            }
        } else {
            println!("format:      plain safetensors");
        }
        if let Some(m) = j["metadata"].as_object() {
            for (k, v) in m {
                println!("metadata:    {} = {}", shown(k), shown_str(v));
            }
        }
        for t in j["tensors"].as_array().into_iter().flatten() {
            println!(
                "tensor:      {} {} {} {}",
                shown_str(&t["name"]),
                shown_str(&t["dtype"]),
                shown_value(&t["shape"]),
                if t["encrypted"].as_bool().unwrap_or(false) {
                    "encrypted"
                } else {
                    "plain"
                }
            );
        }
    }
    Ok(())
}

/// Untrusted text (from a file's header) fit for a terminal: control and
/// invisible formatting characters escaped, nothing cut.
fn shown(text: &str) -> String {
    sealtensors::printable(text, usize::MAX)
}

/// A JSON string shown as [`shown`] text; anything else, empty.
fn shown_str(v: &serde_json::Value) -> String {
    v.as_str().map(shown).unwrap_or_default()
}

/// A JSON value in its JSON form, escaped as [`shown`] text (serde escapes
/// C0 controls, not C1 controls or bidirectional overrides).
fn shown_value(v: &serde_json::Value) -> String {
    shown(&v.to_string())
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
    if a.input.is_dir() {
        rekey_model_dir(&a.input, a.output.as_deref(), &opts)?;
    } else {
        rekey_file(&a.input, a.output.as_deref(), &opts)?;
    }
    Ok(())
}

fn sign(a: cli::Sign, quiet: bool) -> Result<()> {
    let key = load_signing_key(&a.sign_key)?;
    let in_place = a.output.is_none();
    let output = a.output.clone().unwrap_or_else(|| a.input.clone());
    if !in_place {
        check_output(&output, a.force)?;
    }
    let (bar, progress) = progress(quiet, data_size(&a.input)?, "signing");
    let sealer = Sealer::new(SealOptions {
        signing_key: Some(key),
        model_id: a.model_id,
        model_version: a.model_version,
        overwrite: in_place || a.force,
        progress,
        ..Default::default()
    })?;
    if a.input.is_dir() {
        if in_place {
            seal_model_in_place(&sealer, &a.input)?;
        } else {
            seal_model_dir(&sealer, &a.input, &output, a.force)?;
        }
    } else {
        sealer.seal_file(&a.input, &output)?;
    }
    bar.finish_and_clear();
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

/// A policy to test: a .rego file, or the policy of a sealed file or folder
/// (the first weight file), with what the local input document needs.
fn policy_source(
    path: &Path,
) -> Result<(
    String,
    sealtensors::seal::ModelInfo,
    Option<String>,
    Vec<String>,
)> {
    let weights = if path.is_dir() {
        weight_files(path)?.into_iter().next()
    } else if read_header(path).is_ok() {
        Some(path.to_path_buf())
    } else {
        None
    };
    let Some(file) = weights else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
        return Ok((text, Default::default(), None, Vec::new()));
    };
    let (_, h) = read_header(&file)?;
    if !sealtensors::seal::is_sealed(&h) {
        return Err(CliError::with_code(
            format!(
                "{} is a plain safetensors file; it carries no policy",
                file.display()
            ),
            code::BAD_INPUT,
        ));
    }
    let m = sealtensors::seal::parse(&h).map_err(|e| CliError::from(e.in_file(&file)))?;
    let text = m.policy.clone().ok_or_else(|| {
        CliError::with_code(
            format!("{} carries no access policy", file.display()),
            code::BAD_INPUT,
        )
    })?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let tensors = h.tensors.iter().map(|t| t.name.clone()).collect();
    Ok((text, m.doc.model, name, tensors))
}

fn policy_test(a: cli::PolicyTest) -> Result<()> {
    let (text, model, name, tensors) = policy_source(&a.policy)?;
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
            serde_json::to_string_pretty(&input).unwrap_or_default()
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
            let reasons: Vec<String> = reasons.iter().map(|r| shown(r)).collect();
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

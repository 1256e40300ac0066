//! Printing the library's reports: text for a terminal, or the same structs
//! as JSON (`--json`). Every string from a file's header (names, metadata,
//! policy, model id and version, recipients, signer, policy reasons) is
//! shown with control and invisible characters escaped, so a header cannot
//! drive the terminal (ESC/OSC sequences, bidi overrides); JSON escapes them
//! itself and keeps them exact.

use serde::Serialize;

use sealtensors::report::{FileVerification, Inspection, PolicyVerdict, Verification};
use sealtensors::seal::Mode;

use crate::error::{code, CliError};
use crate::Result;

/// One line of compact JSON on standard output.
pub fn json<T: Serialize + ?Sized>(report: &T) -> Result<()> {
    let text = serde_json::to_string(report)
        .map_err(|e| CliError::with_code(format!("writing JSON: {e}"), code::ERROR))?;
    println!("{text}");
    Ok(())
}

/// Untrusted text (from a file's header) fit for a terminal: control and
/// invisible formatting characters escaped, nothing cut.
pub fn shown(text: &str) -> String {
    sealtensors::printable(text, usize::MAX)
}

/// Untrusted text of several lines: each line escaped as [`shown`], the
/// line breaks kept.
pub fn shown_lines(text: &str) -> String {
    text.split('\n').map(shown).collect::<Vec<_>>().join("\n")
}

/// A value in its JSON form, escaped as [`shown`] text (serde escapes C0
/// controls, not C1 controls or bidirectional overrides).
fn shown_json<T: Serialize + ?Sized>(v: &T) -> String {
    shown(&serde_json::to_string(v).unwrap_or_default())
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Encrypted => "encrypted",
        Mode::Signed => "signed",
    }
}

/// `sealtensors inspect`, as text.
pub fn inspection(j: &Inspection) {
    println!("file:        {}", shown(&j.file));
    println!("size:        {} bytes (header {})", j.size, j.header_size);
    match &j.seal {
        Some(s) => {
            println!(
                "format:      sealtensors v{} ({})",
                s.format_version,
                mode_name(s.mode)
            );
            println!(
                "model:       id {} version {} created {} expires {}",
                shown_json(&s.model.id),
                shown_json(&s.model.version),
                s.model.created,
                shown_json(&s.model.expires)
            );
            println!(
                "cipher:      {} (chunks of {} bytes)",
                s.cipher.as_deref().map_or_else(|| "none".into(), shown),
                s.chunk_size
            );
            // The library's report is face-neutral; the CLI says how to check.
            let how = if s.signature == sealtensors::report::SIGNATURE_NOT_VERIFIED {
                " (check it with `sealtensors verify`)"
            } else {
                ""
            };
            println!(
                "signer:      {} [{}{how}]",
                s.signer.as_deref().map_or_else(|| "none".into(), shown),
                shown(&s.signature)
            );
            for r in &s.recipients {
                println!("recipient:   {}", shown(r));
            }
            if let Some(p) = &s.policy {
                println!("policy:");
                for line in p.lines() {
                    println!("{}", shown(line));
                }
            }
        }
        None => match &j.cryptotensors {
            Some(c) => {
                println!("format:      CryptoTensors v{} (encrypted)", c.version);
                println!(
                    "cipher:      {}{}",
                    shown(&c.cipher),
                    c.chunk_size.map_or_else(
                        || " (whole tensors)".into(),
                        |cs| format!(" (chunks of {cs} bytes)")
                    )
                );
                println!("key:         {}", shown(&c.enc_key));
                println!(
                    "signer:      {} [{} (check it with `sealtensors verify --trust KEY`)]",
                    shown(&c.sign_key),
                    shown(&c.signature)
                );
                println!("policy:");
                for line in c.policy.lines() {
                    println!("{}", shown(line));
                }
            }
            None => println!("format:      plain safetensors"),
        },
    }
    for (k, v) in j.metadata.iter().flatten() {
        println!("metadata:    {} = {}", shown(k), shown(v));
    }
    for t in &j.tensors {
        println!(
            "tensor:      {} {} {} {}",
            shown(&t.name),
            shown(&t.dtype),
            shown_json(&t.shape),
            if t.encrypted { "encrypted" } else { "plain" }
        );
    }
}

/// `sealtensors verify --oms`, as text.
pub fn oms_verification(folder: &std::path::Path, v: &sealtensors::oms::OmsVerification) {
    let status = if v.ok { "OK" } else { "NOT VERIFIED" };
    println!(
        "{status}: {} (OpenSSF model signing, signed by {}; {} files match their signed digests)",
        shown(&folder.display().to_string()),
        shown(&v.signer),
        v.covered
    );
    for f in &v.uncovered {
        println!("not covered: {}", shown(f));
    }
}

/// `sealtensors verify`, as text: one line per file.
pub fn verification(v: &Verification) {
    for f in &v.files {
        println!("{}", file_verification(f));
    }
}

fn file_verification(r: &FileVerification) -> String {
    let status = if r.ok { "OK" } else { "NOT VERIFIED" };
    let signer = r
        .signer
        .as_deref()
        .map(|s| format!(" by {s}"))
        .unwrap_or_default();
    let unchecked = match r.unchecked_encrypted_tensors {
        0 => String::new(),
        n => format!(", {n} not checked: no identity given"),
    };
    let policy = match &r.policy {
        None => String::new(),
        Some(PolicyVerdict::Allow) => "; policy allows".into(),
        Some(PolicyVerdict::Deny { reasons }) => format!(
            "; policy denies: {}",
            reasons
                .iter()
                .map(|r| shown(r))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    format!(
        "{status}: {} ({}{signer}; {} tensors, {} encrypted{unchecked}{policy})",
        shown(&r.file),
        r.authenticity,
        r.tensors,
        r.encrypted_tensors
    )
}

//! The one place that turns library errors into what the user reads and the
//! exit code scripts see.

use std::process::ExitCode;

use sealtensors::{Error, ErrorClass};

/// Exit codes (documented in `--help`).
pub mod code {
    /// Any other failure.
    pub const ERROR: u8 = 1;
    /// A usage error: a missing, unknown or conflicting option, or a value
    /// refused (by clap, by the CLI, or by the library: `ErrorClass::Usage`).
    pub const USAGE: u8 = 2;
    /// Not authentic: tampered, untrusted or missing signature, expired, downgraded.
    pub const NOT_AUTHENTIC: u8 = 3;
    /// No key given opens the file.
    pub const NO_KEY: u8 = 4;
    /// The input is not a valid (sealed) safetensors file.
    pub const BAD_INPUT: u8 = 5;
    /// The output exists or cannot be written.
    pub const OUTPUT: u8 = 6;
    /// The file's access policy denies access.
    pub const POLICY_DENIED: u8 = 7;
}

/// A failure of the tool: a message (one or two lines) and an exit code.
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: code::USAGE,
        }
    }
    pub fn with_code(message: impl Into<String>, code: u8) -> Self {
        CliError {
            message: message.into(),
            code,
        }
    }
    pub fn exit(&self) -> ExitCode {
        // Messages quote the file (slot descriptions, broker hosts, policy
        // errors): escaped line by line, so a hostile file cannot send
        // escape sequences to the terminal while a two-line message stays two.
        eprintln!("error: {}", crate::show::shown_lines(&self.message));
        ExitCode::from(self.code)
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let code = match e.class() {
            ErrorClass::NotAuthentic => code::NOT_AUTHENTIC,
            ErrorClass::NoKey => code::NO_KEY,
            ErrorClass::InvalidInput => code::BAD_INPUT,
            ErrorClass::PolicyDenied => code::POLICY_DENIED,
            ErrorClass::Output => code::OUTPUT,
            ErrorClass::Usage => code::USAGE,
            _ => code::ERROR,
        };
        CliError {
            message: crate::hint::message(&e),
            code,
        }
    }
}

//! `sealtensors serve` and `sealtensors broker ...`: thin faces over the
//! sealtensors-broker crate. Admin commands talk to a running broker over its
//! HTTP admin API with the admin token (docs/broker.md), so they work the same
//! against a remote broker and never open its database behind its back.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sealtensors_broker::admin::{AdminClient, AdminError};
use sealtensors_broker::{hash_token, Config};

use crate::error::{code, CliError};
use crate::Result;

/// The admin token's environment variable.
const ENV_ADMIN: &str = "SEALTENSORS_BROKER_ADMIN_TOKEN";

#[derive(Args, Debug)]
pub struct Serve {
    /// The broker's TOML configuration (docs/broker.md).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum BrokerCommand {
    /// Print the SHA-256 of an admin token read from standard input (for admin_token_sha256).
    #[command(
        after_help = "Example:\n  openssl rand -base64 32 | tee admin.token | sealtensors broker hash-token"
    )]
    HashToken,
    /// Register a model: its id, its publisher's signer and the broker key id it is sealed to.
    #[command(
        after_help = "Example:\n  sealtensors broker register --broker https://keys.example.com --model-id acme/llm --signer ed25519:lCVJ... --kid acme-2026"
    )]
    Register(Register),
    /// Issue, list or revoke licences.
    #[command(subcommand)]
    Licence(LicenceCommand),
    /// List the newest audited releases and refusals.
    #[command(
        after_help = "Example:\n  sealtensors broker audit --broker http://127.0.0.1:8470 --limit 20"
    )]
    Audit(Audit),
}

#[derive(Args, Debug)]
pub struct Admin {
    /// The broker's root URL.
    #[arg(long, default_value = "http://127.0.0.1:8470")]
    pub broker: String,
    /// The admin token (better: in SEALTENSORS_BROKER_ADMIN_TOKEN).
    #[arg(long, env = ENV_ADMIN, hide_env_values = true)]
    pub admin_token: String,
    /// PEM CA certificates to trust for an https broker instead of the public roots.
    #[arg(long, env = "SEALTENSORS_BROKER_CA")]
    pub ca: Option<PathBuf>,
}

impl Admin {
    fn client(&self) -> Result<AdminClient> {
        let ca = match &self.ca {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| CliError::usage(format!("reading --ca {}: {e}", p.display())))?,
            ),
            None => None,
        };
        Ok(AdminClient::new(
            &self.broker,
            &self.admin_token,
            ca.as_deref(),
        )?)
    }
}

#[derive(Args, Debug)]
pub struct Register {
    #[command(flatten)]
    pub admin: Admin,
    /// The model id written when sealing (--model-id of `seal`).
    #[arg(long)]
    pub model_id: String,
    /// The publisher's signer: ed25519:..., ecdsa-p256:... or a verifying key JWK file.
    #[arg(long)]
    pub signer: String,
    /// The broker key id the model is sealed to (the last segment of its key URL).
    #[arg(long)]
    pub kid: String,
}

#[derive(Subcommand, Debug)]
pub enum LicenceCommand {
    /// Issue a licence; prints its id and its token (shown once: the broker keeps only a hash).
    #[command(
        after_help = "Example:\n  sealtensors broker licence issue --customer acme --model acme/llm --seats 3 --expires 2027-01-01"
    )]
    Issue(Issue),
    /// List every licence.
    List(Admin),
    /// Revoke a licence; it takes effect at the next release.
    Revoke(Revoke),
}

#[derive(Args, Debug)]
pub struct Issue {
    #[command(flatten)]
    pub admin: Admin,
    /// Who holds it.
    #[arg(long)]
    pub customer: String,
    /// A model id it opens (repeatable).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// How many distinct machines may use it.
    #[arg(long, default_value_t = 1)]
    pub seats: u32,
    /// Expiry: RFC 3339, a date (midnight UTC) or Unix seconds.
    #[arg(long)]
    pub expires: Option<String>,
    /// Further claims for the policy's input.licence, a JSON object.
    #[arg(long)]
    pub claims: Option<String>,
}

#[derive(Args, Debug)]
pub struct Revoke {
    #[command(flatten)]
    pub admin: Admin,
    /// The licence id (lic_...).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct Audit {
    #[command(flatten)]
    pub admin: Admin,
    /// How many rows, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

impl From<AdminError> for CliError {
    fn from(e: AdminError) -> Self {
        let c = match &e {
            AdminError::Refused { status: 401, .. } => code::USAGE,
            _ => code::ERROR,
        };
        CliError::with_code(e.to_string(), c)
    }
}

pub fn serve(a: Serve) -> Result<()> {
    let config = Config::load(&a.config).map_err(|e| CliError::usage(e.to_string()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!(
        "sealtensors broker: listening on {scheme}://{}",
        config.listen
    );
    sealtensors_broker::serve_config(&config)
        .map_err(|e| CliError::with_code(e.to_string(), code::ERROR))
}

fn print(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn expires(s: &str) -> Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    sealtensors::policy::parse_rfc3339(&full).ok_or_else(|| {
        CliError::usage(format!(
            "--expires {s:?}: give RFC 3339 (2027-01-01T00:00:00Z), a date or Unix seconds"
        ))
    })
}

pub fn run(c: BrokerCommand) -> Result<()> {
    match c {
        BrokerCommand::HashToken => {
            let mut t = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| CliError::usage(format!("reading the token: {e}")))?;
            if t.trim().is_empty() {
                return Err(CliError::usage("no token on standard input"));
            }
            println!("{}", hash_token(&t));
        }
        BrokerCommand::Register(a) => {
            let signer = sealtensors::keys::load_verifying_key(&a.signer)?.to_string();
            let client = a.admin.client()?;
            print(&client.register_model(&a.model_id, &signer, &a.kid)?);
        }
        BrokerCommand::Licence(LicenceCommand::Issue(a)) => {
            let claims =
                match &a.claims {
                    Some(c) => Some(serde_json::from_str(c).map_err(|e| {
                        CliError::usage(format!("--claims is not a JSON object: {e}"))
                    })?),
                    None => None,
                };
            let exp = a.expires.as_deref().map(expires).transpose()?;
            let client = a.admin.client()?;
            let v = client.issue_licence(&a.customer, &a.models, a.seats, exp, claims)?;
            print(&v);
            eprintln!(
                "Give the token to the licensee (SEALTENSORS_BROKER_TOKEN); it is not shown again."
            );
        }
        BrokerCommand::Licence(LicenceCommand::List(a)) => {
            print(&a.client()?.licences()?);
        }
        BrokerCommand::Licence(LicenceCommand::Revoke(a)) => {
            print(&a.admin.client()?.revoke(&a.id)?);
        }
        BrokerCommand::Audit(a) => {
            print(&a.admin.client()?.audit(a.limit)?);
        }
    }
    Ok(())
}

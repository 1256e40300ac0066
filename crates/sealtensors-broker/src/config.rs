//! The broker's configuration file (TOML, docs/broker.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{BrokerError, Result};

/// One key-encryption key: a key id and the X25519 identity (JWK) file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id, the last segment of the key URL `.../keys/KID`.
    pub kid: String,
    /// Path of the X25519 identity JWK (`sealtensors keygen`), mode 0600.
    pub identity: PathBuf,
}

/// The broker's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Plain HTTP: keep it on loopback behind a TLS
    /// proxy (docs/broker.md).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SQLite database file (created when missing).
    pub database: PathBuf,
    /// SHA-256 (hex) of the admin bearer token; the token itself is never stored.
    pub admin_token_sha256: String,
    /// Key-encryption keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Seconds a client may keep a released key in memory.
    #[serde(default = "default_ttl")]
    pub release_ttl: u64,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Requests per minute allowed from one client address.
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// A release's `time` may differ from the broker's clock by at most this
    /// many seconds; its nonce is remembered for twice as long.
    #[serde(default = "default_window")]
    pub replay_window: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8470))
}
fn default_ttl() -> u64 {
    300
}
fn default_max_body() -> usize {
    4 << 20
}
fn default_rate() -> u32 {
    600
}
fn default_window() -> u64 {
    300
}

impl Config {
    /// Read a TOML file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!(
                "cannot read {}: {e}; pass --config FILE",
                path.display()
            ))
        })?;
        let mut c: Config = toml::from_str(&text)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.database.is_relative() {
            c.database = base.join(&c.database);
        }
        for k in &mut c.keys {
            if k.identity.is_relative() {
                k.identity = base.join(&k.identity);
            }
        }
        c.check()?;
        Ok(c)
    }

    /// Reject settings that cannot work.
    pub fn check(&self) -> Result<()> {
        let h = &self.admin_token_sha256;
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BrokerError::Config(
                "admin_token_sha256 must be 64 hex digits: the SHA-256 of the admin token (`sealtensors broker hash-token`)".into(),
            ));
        }
        if self.keys.is_empty() {
            return Err(BrokerError::Config(
                "no [[keys]]: give at least one kid and X25519 identity file".into(),
            ));
        }
        if self.max_body < 1024 || self.rate_per_minute == 0 || self.replay_window == 0 {
            return Err(BrokerError::Config(
                "max_body must be at least 1024, rate_per_minute and replay_window above 0".into(),
            ));
        }
        Ok(())
    }
}

//! The broker's configuration file (TOML, docs/broker.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{BrokerError, Result};

/// One key-encryption key: a key id and where its secret is (a JWK file, a
/// TPM identity file, or a pkcs11: URI).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id, the last segment of the key URL `.../keys/KID`.
    pub kid: String,
    /// The X25519 or P-256 identity JWK (`sealtensors keygen [--p256]`, mode
    /// 0600), a TPM identity file (`keygen --tpm`), or the pkcs11: URI of a
    /// P-256 key in a token (`keygen --pkcs11`): the last two keep the KEK in
    /// hardware.
    pub identity: PathBuf,
}

/// HTTPS: a PEM certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), mode 0600.
    pub key: PathBuf,
}

/// Where the broker keeps its state (`[store]`; SQLite when absent).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// SQLite in the file `database` (embedded, one broker instance).
    #[default]
    Sqlite,
    /// PostgreSQL, for several broker instances sharing one database.
    Postgres {
        /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or the key-value
        /// form). No TLS to the database: loopback, a Unix socket
        /// (`host=/run/postgresql`) or a private network.
        url: String,
        /// Schema holding the tables (created when missing).
        #[serde(default = "default_schema")]
        schema: String,
        /// Most connections this instance keeps open.
        #[serde(default = "default_pool")]
        pool: usize,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite => f.write_str("Sqlite"),
            // The URL may hold a password: never printed.
            StoreConfig::Postgres { schema, pool, .. } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("schema", schema)
                .field("pool", pool)
                .finish(),
        }
    }
}

fn default_schema() -> String {
    "public".into()
}
fn default_pool() -> usize {
    16
}

/// The broker's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate; without it, plain HTTP, which is
    /// refused on a non-loopback address unless `insecure_plain_http` is set
    /// (licence tokens are bearer secrets).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Allow plain HTTP on a non-loopback address (behind a TLS proxy).
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// SQLite database file (created when missing); required unless
    /// `[store]` names another kind.
    #[serde(default)]
    pub database: PathBuf,
    /// The store: SQLite (`database`) unless `[store] kind = "postgres"`.
    #[serde(default)]
    pub store: StoreConfig,
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
    /// Connections open at once; one more is closed as soon as it is
    /// accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client (an IPv4 address or an IPv6
    /// /64), so that one client cannot take them all.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Seconds a request body may take to arrive (408 after, audited for a
    /// release). A request's headers, and an idle kept-alive connection's
    /// next request, get at most 10 s (less when this is less); the TLS
    /// handshake 10 s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: u64,
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
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_client() -> usize {
    32
}
fn default_request_timeout() -> u64 {
    30
}
fn default_window() -> u64 {
    300
}

/// A TOML error without the input: toml's `Display` quotes the offending
/// line (a database URL with its password, say) and serde's message may quote
/// the value; say what was expected and where instead.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = sealtensors::without_values(e.message());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("{message} at line {line} column {column}")
        }
        None => message,
    }
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
        let mut c: Config = toml::from_str(&text).map_err(|e| {
            BrokerError::Config(format!("{}: {}", path.display(), toml_error(&text, &e)))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.database.is_relative() && !c.database.as_os_str().is_empty() {
            c.database = base.join(&c.database);
        }
        if let Some(t) = &mut c.tls {
            if t.cert.is_relative() {
                t.cert = base.join(&t.cert);
            }
            if t.key.is_relative() {
                t.key = base.join(&t.key);
            }
        }
        for k in &mut c.keys {
            // A pkcs11: URI is not a path (and never relative to the file).
            let uri = k
                .identity
                .to_str()
                .and_then(|s| s.get(..7))
                .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"));
            if k.identity.is_relative() && !uri {
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
        match &self.store {
            StoreConfig::Sqlite if self.database.as_os_str().is_empty() => {
                return Err(BrokerError::Config(
                    "no database: give database = \"broker.db\" (SQLite), or a [store] section with kind = \"postgres\" and url".into(),
                ))
            }
            StoreConfig::Postgres { url, pool, .. } if url.is_empty() || *pool == 0 => {
                return Err(BrokerError::Config(
                    "[store] kind = \"postgres\" needs url = \"postgres://USER:PASSWORD@HOST:PORT/DATABASE\" and pool >= 1".into(),
                ))
            }
            _ => {}
        }
        if self.max_connections == 0
            || self.max_connections_per_client == 0
            || self.request_timeout == 0
        {
            return Err(BrokerError::Config(
                "max_connections, max_connections_per_client and request_timeout must be at least 1"
                    .into(),
            ));
        }
        if self.keys.is_empty() {
            return Err(BrokerError::Config(
                "no [[keys]]: give at least one kid and identity (a key file, TPM identity file or pkcs11: URI)".into(),
            ));
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_plain_http {
            return Err(BrokerError::Config(format!(
                "listen = {} is not a loopback address and there is no [tls]: add [tls] cert/key, or set insecure_plain_http = true behind a TLS proxy",
                self.listen
            )));
        }
        if self.max_body < 1024 || self.rate_per_minute == 0 || self.replay_window == 0 {
            return Err(BrokerError::Config(
                "max_body must be at least 1024, rate_per_minute and replay_window above 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn load(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().map_err(BrokerError::Io)?;
        let p = dir.path().join("broker.toml");
        std::fs::write(&p, text).map_err(BrokerError::Io)?;
        let c = Config::load(&p)?;
        assert!(c.database.starts_with(dir.path()), "relative to the file");
        Ok(c)
    }

    #[test]
    fn the_documented_example_loads() {
        let c = load(&format!(
            "database = \"b.db\"\nadmin_token_sha256 = \"{HASH}\"\n[[keys]]\nkid = \"k1\"\nidentity = \"kek.jwk\"\n"
        ))
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8470");
        assert_eq!((c.release_ttl, c.replay_window), (300, 300));
        assert!(c.keys[0].identity.is_absolute());
        // A pkcs11: URI is kept as written, never joined to the folder.
        let uri = "pkcs11:token=broker;object=kek-1?module-path=/usr/lib/softhsm/libsofthsm2.so";
        let c = load(&format!(
            "database = \"b.db\"\nadmin_token_sha256 = \"{HASH}\"\n[[keys]]\nkid = \"k1\"\nidentity = \"{uri}\"\n"
        ))
        .unwrap();
        assert_eq!(c.keys[0].identity, std::path::Path::new(uri));
    }

    #[test]
    fn unsafe_or_broken_settings_are_refused() {
        let base = format!("database = \"b.db\"\nadmin_token_sha256 = \"{HASH}\"\n");
        let key = "[[keys]]\nkid = \"k1\"\nidentity = \"kek.jwk\"\n";
        // Plain HTTP on a public address.
        let e = load(&format!("listen = \"0.0.0.0:80\"\n{base}{key}")).unwrap_err();
        assert!(e.to_string().contains("[tls]"), "{e}");
        assert!(load(&format!(
            "listen = \"0.0.0.0:80\"\ninsecure_plain_http = true\n{base}{key}"
        ))
        .is_ok());
        // No keys, a bad hash, an unknown setting.
        assert!(load(&base).is_err());
        assert!(load(&format!(
            "database = \"b.db\"\nadmin_token_sha256 = \"abc\"\n{key}"
        ))
        .is_err());
        assert!(load(&format!("{base}typo = 1\n{key}")).is_err());
    }

    #[test]
    fn a_postgres_store_needs_a_url_and_never_prints_it() {
        let head = format!(
            "admin_token_sha256 = \"{HASH}\"\n[[keys]]\nkid = \"k1\"\nidentity = \"kek.jwk\"\n"
        );
        let p = tempfile::tempdir().unwrap();
        let load_pg = |store: &str| {
            let f = p.path().join("b.toml");
            std::fs::write(&f, format!("{head}{store}")).unwrap();
            Config::load(&f)
        };
        let c =
            load_pg("[store]\nkind = \"postgres\"\nurl = \"postgres://b:s3cret@127.0.0.1/b\"\n")
                .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Postgres {
                url: "postgres://b:s3cret@127.0.0.1/b".into(),
                schema: "public".into(),
                pool: 16
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        // Without [store] and without database: nowhere to keep state.
        let e = load_pg("").unwrap_err();
        assert!(e.to_string().contains("database"), "{e}");
        assert!(load_pg("[store]\nkind = \"postgres\"\n").is_err());
        assert!(load_pg("[store]\nkind = \"mysql\"\nurl = \"x\"\n").is_err());
        assert!(load_pg("[store]\nkind = \"postgres\"\nurl = \"x\"\ntypo = 1\n").is_err());
        // Issue 15: a malformed line or value is reported by place, never
        // quoted (toml's message shows the line; serde's, the value).
        for bad in [
            "[store]\nkind = \"postgres\"\nurl = \"postgres://b:s3cret@127.0.0.1/b\" x\n",
            "[store]\nkind = \"postgres\"\nurl = \"postgres://b:s3cret@127.0.0.1/b\"\npool = \"s3cret\"\n",
            "[store]\nkind = \"s3cret\"\nurl = \"x\"\n",
            "[store]\nkind = \"postgres\"\nurl = [\"postgres://b:s3cret@127.0.0.1/b\"]\n",
        ] {
            let e = load_pg(bad).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("line "), "{shown}");
        }
    }
}

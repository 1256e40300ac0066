//! Where loaders find keys (SPEC §10): explicit arguments first, then the
//! environment, then the per-user configuration directory. Nothing is ever
//! taken from the file being opened.

use std::path::{Path, PathBuf};

use super::{load_identity, load_verifying_key, BrokerAccess, Identity, VerifyingKey};
use crate::error::{Error, Result};

/// Colon-separated paths of identity files.
pub const ENV_IDENTITY: &str = "SEALTENSORS_IDENTITY";
/// Colon-separated trusted signers (paths, `ed25519:` or `ecdsa-p256:` strings).
pub const ENV_TRUST: &str = "SEALTENSORS_TRUST";

/// Keys gathered for a loader.
#[derive(Default)]
pub struct KeyConfig {
    /// Identities that may open key slots.
    pub identities: Vec<Box<dyn Identity>>,
    /// Trusted signers.
    pub trusted: Vec<VerifyingKey>,
    /// Trusted OpenSSF model signing keys (PEM ECDSA public keys given as
    /// trust entries): what an OMS bundle is verified with (docs/oms.md).
    pub oms_trusted: Vec<crate::oms::OmsPublicKey>,
    /// Key brokers this loader may ask (SPEC §10), when any host is allowed.
    pub broker: Option<BrokerAccess>,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.identities.iter().map(|i| i.describe()).collect();
        f.debug_struct("KeyConfig")
            .field("identities", &ids)
            .field("trusted", &self.trusted)
            .field("oms_trusted", &self.oms_trusted)
            .field("broker", &self.broker)
            .finish()
    }
}

impl KeyConfig {
    /// The per-user configuration directory: `$SEALTENSORS_CONFIG_DIR`, else
    /// `$XDG_CONFIG_HOME/sealtensors`, else `~/.config/sealtensors`.
    pub fn config_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("SEALTENSORS_CONFIG_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
            return Some(PathBuf::from(d).join("sealtensors"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("sealtensors"))
    }

    /// Gather keys: the explicit ones; if none of a kind was given, the
    /// environment's; if still none, the config directory's
    /// (`identities/*.jwk`, `trusted/*.jwk`).
    pub fn discover(identities: &[PathBuf], trusted: &[String]) -> Result<KeyConfig> {
        let mut cfg = KeyConfig::default();
        for p in identities {
            cfg.identities.push(load_identity(p)?);
        }
        for t in trusted {
            cfg.add_trust(t)?;
        }
        if cfg.identities.is_empty() {
            if let Some(v) = std::env::var_os(ENV_IDENTITY) {
                // A PKCS#11 URI holds ':' itself: it is the variable's only entry.
                if v.to_str()
                    .and_then(|s| s.get(..7))
                    .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
                {
                    cfg.identities
                        .push(load_identity(std::path::Path::new(&v))?);
                } else {
                    for p in std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()) {
                        cfg.identities.push(load_identity(&p)?);
                    }
                }
            }
        }
        // Each kind of trust falls back on its own: a PEM (OMS) entry given
        // explicitly must not hide the environment's Ed25519 signers, which
        // would leave the loader trusting no signer (permissive).
        if let Ok(v) = std::env::var(ENV_TRUST) {
            if cfg.trusted.is_empty() {
                let mut env = KeyConfig::default();
                for t in split_trust(&v) {
                    env.add_trust(&t)?;
                }
                cfg.trusted = env.trusted;
                if cfg.oms_trusted.is_empty() {
                    cfg.oms_trusted = env.oms_trusted;
                }
            } else if cfg.oms_trusted.is_empty() {
                // Signers were given explicitly: only the environment's OMS
                // keys are taken (its other entries are not even parsed, as
                // before OMS keys existed).
                for t in split_trust(&v) {
                    if let Some(k) = oms_key_at(&t)? {
                        cfg.oms_trusted.push(k);
                    }
                }
            }
        }
        let dir = Self::config_dir();
        cfg.broker = BrokerAccess::discover(dir.as_deref())?;
        if let Some(dir) = dir {
            if cfg.identities.is_empty() {
                for p in jwk_files(&dir.join("identities"))? {
                    cfg.identities.push(load_identity(&p)?);
                }
            }
            if cfg.trusted.is_empty() {
                for p in jwk_files(&dir.join("trusted"))? {
                    cfg.trusted.push(load_verifying_key(&p.to_string_lossy())?);
                }
            }
        }
        Ok(cfg)
    }

    /// One trust entry: an `ed25519:` or `ecdsa-p256:` string or a key file (JWK, their
    /// CryptoTensors form), or a PEM ECDSA public key, which is an OpenSSF
    /// model signing key.
    fn add_trust(&mut self, spec: &str) -> Result<()> {
        match oms_key_at(spec)? {
            Some(k) => self.oms_trusted.push(k),
            None => self.trusted.push(load_verifying_key(spec)?),
        }
        Ok(())
    }
}

/// The OMS key a trust entry names, when it is a PEM public key file.
fn oms_key_at(spec: &str) -> Result<Option<crate::oms::OmsPublicKey>> {
    if spec.starts_with("ed25519:") || spec.starts_with("ecdsa-p256:") {
        return Ok(None);
    }
    let path = Path::new(spec);
    match std::fs::read_to_string(path) {
        Ok(text) if crate::oms::is_pem_public_key(&text) => {
            crate::oms::OmsPublicKey::from_pem(&text)
                .map(Some)
                .map_err(|e| e.in_file(path))
        }
        _ => Ok(None),
    }
}

fn jwk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing key directory", e).in_file(dir)),
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jwk"))
        .collect();
    out.sort();
    Ok(out)
}

/// Split a colon-separated list whose items may themselves be
/// `ed25519:<base64url>` or `ecdsa-p256:<base64url>` strings (base64url has
/// no colon).
fn split_trust(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut parts = v.split(':').filter(|s| !s.is_empty());
    while let Some(p) = parts.next() {
        if p == "ed25519" || p == "ecdsa-p256" {
            if let Some(key) = parts.next() {
                out.push(format!("{p}:{key}"));
            }
        } else {
            out.push(p.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn trust_lists_keep_ed25519_strings_whole() {
        let v = super::split_trust("ed25519:abc:/keys/a.jwk::ed25519:def");
        assert_eq!(v, vec!["ed25519:abc", "/keys/a.jwk", "ed25519:def"]);
        let v = super::split_trust("ecdsa-p256:BPx:ed25519:abc");
        assert_eq!(v, vec!["ecdsa-p256:BPx", "ed25519:abc"]);
    }
}

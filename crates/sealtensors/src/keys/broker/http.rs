//! The HTTP side of a broker exchange (SPEC §10): one blocking agent over
//! rustls with the aws-lc-rs provider, bounded in time and in the size of the
//! answer, no redirects, no proxy; transient failures are retried with
//! backoff. `GET url` for a broker's public key lives here too.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::access::ca_from_env;
use super::slot::BrokerUrl;
use super::wire::{ErrorAnswer, PublicKeyAnswer};
use crate::error::{Error, Result};

/// Bounds of one HTTP exchange (SPEC §10).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from a broker.
const MAX_ANSWER: u64 = 64 * 1024;
/// Retries after the first attempt, and the first backoff (doubled each time).
pub(super) const RETRIES: u32 = 3;
pub(super) const BACKOFF: Duration = Duration::from_millis(200);

/// Text from a broker, fit to show (it may hold terminal escapes).
pub(super) fn shown(reason: &str) -> String {
    crate::error::printable(reason, 512)
}

pub(super) fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Why the broker CA (`SEALTENSORS_BROKER_CA`, `broker-ca.pem`) is unusable.
#[derive(Debug, thiserror::Error)]
pub(super) enum CaError {
    /// It does not parse as PEM.
    #[error("the broker CA file (SEALTENSORS_BROKER_CA or broker-ca.pem) is not PEM: {0}")]
    NotPem(ureq::Error),
    /// It holds no certificate.
    #[error("the broker CA file (SEALTENSORS_BROKER_CA or broker-ca.pem) holds no certificate")]
    NoCertificate,
}

/// One agent per release: rustls over aws-lc-rs (the one crypto backend),
/// the public web roots or only the given CA, bounded timeouts, no redirects,
/// statuses returned rather than raised.
pub(super) fn agent(ca: Option<&[u8]>) -> Result<ureq::Agent, CaError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider);
    if let Some(pem) = ca {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(CaError::NotPem(e)),
            }
        }
        if certs.is_empty() {
            return Err(CaError::NoCertificate);
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let cfg = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(TOTAL_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        // Never a proxy from HTTPS_PROXY/ALL_PROXY: the token would leave
        // for the proxy (in the clear, for a loopback http:// broker).
        .proxy(None)
        .build();
    Ok(ureq::Agent::new_with_config(cfg))
}

/// Why an exchange failed: worth another attempt (the broker may come
/// back) or not (it answered, but something we refuse).
pub(super) enum Fail {
    Retry(String),
    Stop(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Retry(s) | Fail::Stop(s) => f.write_str(s),
        }
    }
}

fn transport(e: ureq::Error) -> Fail {
    use ureq::Error as E;
    match e {
        E::Io(_) | E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::BodyStalled => {
            Fail::Retry(e.to_string())
        }
        e => Fail::Stop(e.to_string()),
    }
}

fn read_body(mut resp: ureq::http::Response<ureq::Body>) -> Result<(u16, Vec<u8>), Fail> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| Fail::Stop(format!("reading the answer: {e}")))?;
    Ok((status, body))
}

pub(super) fn post(
    agent: &ureq::Agent,
    url: &str,
    token: &Zeroizing<String>,
    body: &[u8],
) -> Result<(u16, Vec<u8>), Fail> {
    let auth = Zeroizing::new(format!("Bearer {}", token.as_str()));
    let resp = agent
        .post(url)
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .send(body)
        .map_err(transport)?;
    read_body(resp)
}

/// `GET url`: the broker's public key for this key id (SPEC §6.6).
pub(super) fn fetch_public_key(u: &BrokerUrl) -> Result<super::BrokerPublicKey> {
    let unavailable = |reason: String| Error::BrokerUnavailable {
        broker: u.authority(),
        reason,
    };
    let ca = ca_from_env()?;
    let agent = agent(ca.as_deref()).map_err(|e| unavailable(e.to_string()))?;
    let mut attempt = 0;
    let (status, body) = loop {
        match agent
            .get(&u.url)
            .call()
            .map_err(transport)
            .and_then(read_body)
        {
            Ok((s, b)) if !transient(s) || attempt >= RETRIES => break (s, b),
            Err(Fail::Stop(e)) => return Err(unavailable(e)),
            Err(e) if attempt >= RETRIES => {
                return Err(unavailable(format!(
                    "{e}; check the URL and that the broker is running"
                )))
            }
            _ => {}
        }
        std::thread::sleep(BACKOFF * 2u32.pow(attempt));
        attempt += 1;
    };
    if status != 200 {
        let reason = serde_json::from_slice::<ErrorAnswer>(&body)
            .map(|e| shown(&e.reason))
            .unwrap_or_else(|_| format!("HTTP status {status}"));
        return Err(unavailable(format!("asking for its public key: {reason}")));
    }
    let k: PublicKeyAnswer = serde_json::from_slice(&body)
        .map_err(|e| unavailable(format!("malformed public key answer: {e}")))?;
    if k.kid != u.kid {
        return Err(unavailable(format!(
            "it answered for key id {:?}, not {:?}",
            k.kid, u.kid
        )));
    }
    k.public_key.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_reasons_are_shown_without_control_characters() {
        assert_eq!(shown("licence L was revoked"), "licence L was revoked");
        let s = shown("\u{1b}[2J\u{1b}]0;pwned\u{7}line\nnext");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(shown(&"x".repeat(10_000)).chars().count(), 515);
        // Text that reorders or hides what follows is escaped too.
        let s = shown("ok\u{202E}dexoveR\u{2066}\u{200B}\u{2028}");
        assert_eq!(s, "ok\\u{202e}dexoveR\\u{2066}\\u{200b}\\u{2028}");
    }
}

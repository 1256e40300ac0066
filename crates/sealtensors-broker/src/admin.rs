//! A blocking client for the broker's admin API (docs/broker.md), used by
//! `sealtensors broker ...`. Bounded like the release client: timeouts, no
//! redirects, a capped answer; rustls over aws-lc-rs for https.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Largest admin answer read (an audit listing can be long).
const MAX_ANSWER: u64 = 16 << 20;

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The broker could not be reached or answered something unreadable.
    #[error("cannot reach the broker at {url}: {reason}; check --broker and that `sealtensors serve` is running")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker refused (bad token, unknown id, invalid request).
    #[error("the broker refused ({status}): {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's reason.
        reason: String,
    },
}

/// The admin API of one broker.
pub struct AdminClient {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `base`: the broker's root URL (`https://keys.example.com`); `ca`:
    /// PEM CA certificates to trust instead of the public web roots.
    pub fn new(base: &str, token: &str, ca: Option<&[u8]>) -> Result<AdminClient, AdminError> {
        // The admin token crosses the network only under TLS: http:// is
        // accepted for a loopback address only (the broker URL rules, §6.6).
        sealtensors::keys::BrokerUrl::parse(&format!("{}/keys/admin", base.trim_end_matches('/')))
            .map_err(|e| AdminError::Unreachable {
                url: base.to_string(),
                reason: format!("refusing to send the admin token there: {e}"),
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider);
        if let Some(pem) = ca {
            let certs: Vec<_> = ureq::tls::parse_pem(pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(AdminError::Unreachable {
                    url: base.to_string(),
                    reason: "the CA file holds no PEM certificate".into(),
                });
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let tls = tls.build();
        let cfg = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .build();
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: Zeroizing::new(token.trim().to_string()),
            agent: ureq::Agent::new_with_config(cfg),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, AdminError> {
        let url = format!("{}{path}", self.base);
        let auth = Zeroizing::new(format!("Bearer {}", self.token.as_str()));
        let r = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("authorization", auth.as_str())
                .call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", auth.as_str())
                .send_json(b),
            (_, None) => self
                .agent
                .post(&url)
                .header("authorization", auth.as_str())
                .send_empty(),
        };
        let unreachable = |reason: String| AdminError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut r = r.map_err(|e| unreachable(e.to_string()))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| unreachable(e.to_string()))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| unreachable(format!("HTTP {status}, not a JSON answer")))?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(AdminError::Refused {
                status,
                reason: sealtensors::printable(
                    v["reason"].as_str().unwrap_or("no reason given"),
                    512,
                ),
            })
        }
    }

    /// Register a model: its id, its publisher's signer, the broker key id.
    pub fn register_model(
        &self,
        model_id: &str,
        signer: &str,
        kid: &str,
    ) -> Result<Value, AdminError> {
        self.call(
            "POST",
            "/admin/models",
            Some(json!({"model_id": model_id, "signer": signer, "kid": kid})),
        )
    }

    /// Issue a licence; the answer holds the token (shown once).
    pub fn issue_licence(
        &self,
        customer: &str,
        models: &[String],
        seats: u32,
        expires: Option<u64>,
        claims: Option<Value>,
    ) -> Result<Value, AdminError> {
        self.call(
            "POST",
            "/admin/licences",
            Some(
                json!({"customer": customer, "models": models, "seats": seats,
                        "expires": expires, "claims": claims}),
            ),
        )
    }

    /// Every licence.
    pub fn licences(&self) -> Result<Value, AdminError> {
        self.call("GET", "/admin/licences", None)
    }

    /// Revoke a licence by id.
    pub fn revoke(&self, id: &str) -> Result<Value, AdminError> {
        self.call("POST", &format!("/admin/licences/{id}/revoke"), None)
    }

    /// Enrol the attestation key (a PEM or base64 DER SubjectPublicKeyInfo)
    /// of one machine under a licence; `kind` is `tpm`.
    pub fn enrol_attestation_key(
        &self,
        licence: &str,
        machine_id: &str,
        kind: &str,
        public_key: &str,
    ) -> Result<Value, AdminError> {
        self.call(
            "POST",
            "/admin/attestation-keys",
            Some(
                json!({"licence": licence, "machine_id": machine_id, "kind": kind,
                        "public_key": public_key}),
            ),
        )
    }

    /// The newest audit rows.
    pub fn audit(&self, limit: u32) -> Result<Value, AdminError> {
        self.call("GET", &format!("/admin/audit?limit={limit}"), None)
    }
}

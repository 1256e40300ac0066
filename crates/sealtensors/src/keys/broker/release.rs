//! Asking a key broker for a model key (SPEC §6.6; docs/broker.md).
//!
//! The request carries the header, a licence token, an ephemeral HPKE public
//! key, the machine id and a fresh nonce (and a TPM quote bound to them when
//! attestation is configured); the answer is the model key sealed to the
//! ephemeral key, checked against the file's model key id and kept in memory
//! no longer than the broker allows.

use zeroize::Zeroizing;

use super::access::{BrokerAccess, Deadline, HostEntry};
use super::http::{agent, post, shown, transient, Fail, BACKOFF, RETRIES};
use super::slot::BrokerUrl;
use super::wire::{attestation_nonce, release_info, ErrorAnswer, ReleaseAnswer, ReleaseRequest};
use super::ENV_BROKERS;
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};
use crate::hpke::HpkeSecretKey;
use crate::keys::{b64, unb64, KeyRequest, KeySource, ModelKey};

/// A released key is never cached longer than this, whatever the broker says.
const MAX_TTL: u64 = 24 * 3600;

impl BrokerAccess {
    /// Ask the broker at `u` for the model key of the file `req` describes.
    pub(super) fn release(&self, u: &BrokerUrl, req: &KeyRequest<'_>) -> Result<ModelKey> {
        let ctx = req.policy;
        let unavailable = |reason: String| Error::BrokerUnavailable {
            broker: u.authority(),
            reason,
        };
        if !self.allows(u) {
            return Err(unavailable(format!(
                "this loader's configuration does not allow it; add {} to {ENV_BROKERS} if you trust it (a host without a port allows only its scheme's default port)",
                HostEntry::for_url(u)
            )));
        }
        let mk_id = *req.mk_id;
        let token = self.token_for(u).map_err(|e| unavailable(e.to_string()))?;
        let machine_id = self
            .machine_id
            .clone()
            .or_else(|| req.machine_id.map(str::to_string))
            .ok_or_else(|| {
                unavailable(
                    "this machine has no /etc/machine-id to identify it to the broker".into(),
                )
            })?;
        // The credentials a cached key was released to: only the same ones
        // may use it again.
        let who = {
            let mut c = Zeroizing::new(Vec::new());
            for part in [token.as_bytes(), machine_id.as_bytes()] {
                c.extend_from_slice(&(part.len() as u64).to_be_bytes());
                c.extend_from_slice(part);
            }
            crypto::sha256(&c)
        };
        if let Some(k) = self.cached(&u.url, &mk_id, &who) {
            return Ok(k);
        }
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&req.header.to_bytes());
        let process = serde_json::json!({
            "runtime": ctx.runtime.clone().unwrap_or_else(|| "rust".into()),
            "runtime_version": ctx.runtime_version,
            "framework": ctx.framework,
            "framework_version": ctx.framework_version,
        });
        let agent =
            agent(self.ca.as_deref().map(Vec::as_slice)).map_err(|e| unavailable(e.to_string()))?;
        let endpoint = format!("{}/release", u.url);
        let info = release_info(req.file_id, &mk_id);
        let mut attempt = 0;
        loop {
            // A fresh key and nonce per attempt: the broker refuses a nonce twice.
            let ek = HpkeSecretKey::generate()?;
            let nonce: [u8; 16] = crypto::random_array()?;
            let attestation = match &self.tpm {
                None => None,
                Some(q) => {
                    let bind = attestation_nonce(&nonce, &ek.public_key());
                    let ev = q.quote(&bind).map_err(|e| {
                        unavailable(format!("the TPM quote for attestation failed: {e}"))
                    })?;
                    Some(serde_json::json!({ "tpm": ev }))
                }
            };
            let req = ReleaseRequest {
                header: b64(&hdr),
                ek: b64(&ek.public_key()),
                machine_id: machine_id.clone(),
                nonce: b64(&nonce),
                time: crate::runtime::now_unix(),
                file_name: req.file_name.map(str::to_string),
                process: Some(process.clone()),
                tensors: ctx.requested.clone(),
                attestation,
            };
            let body = serde_json::to_vec(&req)
                .map_err(|e| unavailable(format!("cannot encode the request: {e}")))?;
            match post(&agent, &endpoint, token, &body) {
                Ok((200, answer)) => {
                    let a: ReleaseAnswer = serde_json::from_slice(&answer).map_err(|e| {
                        unavailable(format!("malformed answer: {}", shown(&e.to_string())))
                    })?;
                    let enc = unb64("enc", &a.enc)
                        .map_err(|_| unavailable("malformed answer: enc".into()))?;
                    let ct = unb64("ct", &a.ct)
                        .map_err(|_| unavailable("malformed answer: ct".into()))?;
                    let pt = ek.open(&enc, &info, &nonce, &ct).ok_or_else(|| {
                        unavailable("its answer does not open with this request's key (corrupted or forged)".into())
                    })?;
                    let arr: [u8; 32] = pt
                        .as_slice()
                        .try_into()
                        .map_err(|_| unavailable("the released key has the wrong length".into()))?;
                    let mk = ModelKey::from_secret(Secret32::from_bytes(arr));
                    if mk.id()? != mk_id {
                        return Err(unavailable(
                            "it released a key that is not this file's model key".into(),
                        ));
                    }
                    let ttl = a.ttl.min(MAX_TTL);
                    if ttl > 0 {
                        self.keep(&u.url, &mk_id, &who, &mk, Deadline::after(ttl));
                    }
                    return Ok(mk);
                }
                Ok((status, answer)) if !transient(status) || attempt >= RETRIES => {
                    let reason = match serde_json::from_slice::<ErrorAnswer>(&answer) {
                        Ok(e) => shown(&e.reason),
                        Err(_) => format!("HTTP status {status}"),
                    };
                    return Err(Error::BrokerDenied {
                        broker: u.authority(),
                        status,
                        reason,
                    });
                }
                Err(Fail::Stop(e)) => return Err(unavailable(e)),
                Err(e) if attempt >= RETRIES => {
                    return Err(unavailable(format!(
                        "{e} (after {} attempts); check that the broker is running and reachable",
                        attempt + 1
                    )))
                }
                _ => {}
            }
            std::thread::sleep(BACKOFF * 2u32.pow(attempt));
            attempt += 1;
        }
    }
}

/// The broker as a [`KeySource`]: tries each broker slot this
/// configuration allows, in file order; a refusal is final. `None` when it
/// allows none of them (the reader then explains the miss).
impl KeySource for BrokerAccess {
    fn model_key(&self, req: &KeyRequest<'_>) -> Option<Result<ModelKey>> {
        let mut last = None;
        for u in super::broker_urls(req.slots).filter(|u| self.allows(u)) {
            match self.release(&u, req) {
                Ok(k) => return Some(Ok(k)),
                Err(e @ Error::BrokerDenied { .. }) => return Some(Err(e)),
                Err(e) => last = Some(e),
            }
        }
        last.map(Err)
    }
}

//! The release decision (docs/broker.md "Release"): every check a request
//! must pass before the model key leaves the broker, in order. The policy
//! input is filled by the broker itself: its clock, the licence from its
//! store, the authenticated client.

use std::collections::HashMap;
use std::sync::Arc;

use sealtensors::crypto::{ct_eq, sha256};
use sealtensors::format::Header;
use sealtensors::hpke;
use sealtensors::keys::{BrokerKek, ReleaseAnswer, ReleaseRequest, VerifyingKey};
use sealtensors::policy::{input_document, CompileError, Decision, Policy, PolicyContext};
use sealtensors::seal;

use crate::attest::{self, AttestationVerifier};
use crate::error::{deny, Denial};
use crate::store::{AuditRow, LicenceRecord, Seat, Store};
use crate::{b64, unb64};

/// Largest header accepted in a release (the request body bounds it too).
pub const MAX_HEADER: usize = 16 << 20;

/// What the release path knows, for the audit row.
#[derive(Default)]
struct Seen {
    client: Option<String>,
    machine_id: String,
    model: String,
}

/// Key-encryption keys by key id, and the store.
pub struct Releaser {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keks: HashMap<String, BrokerKek>,
    pub(crate) ttl: u64,
    pub(crate) window: u64,
    pub(crate) verifiers: Vec<Arc<dyn AttestationVerifier>>,
}

impl Releaser {
    /// Decide, audit (committed), then return the answer. An audit that
    /// cannot be written refuses the release (500).
    pub fn release(
        &self,
        kid: &str,
        token: Option<&str>,
        body: Result<&[u8], Denial>,
        now: u64,
    ) -> Result<ReleaseAnswer, Denial> {
        let mut seen = Seen::default();
        let outcome = body.and_then(|b| self.decide(kid, token, b, now, &mut seen));
        let (decision, code, reason) = match &outcome {
            Ok(_) => ("release", "released", "model key released".to_string()),
            Err(d) => ("deny", d.code, d.reason.clone()),
        };
        // Every text in the row is bounded and free of control characters:
        // an unauthenticated caller chooses most of them (a 4 MiB value
        // echoed in a parse error, a NUL that PostgreSQL refuses in TEXT).
        let row = AuditRow {
            id: 0,
            time: now,
            client: audit_text(&seen.client.unwrap_or_else(|| "unknown".into())),
            machine_id: audit_text(&seen.machine_id),
            model: audit_text(&seen.model),
            kid: audit_text(kid),
            decision: decision.into(),
            code: code.into(),
            reason: audit_text(&reason),
        };
        if let Err(e) = self.store.audit(&row) {
            tracing::error!(error = %e, "audit write failed; refusing");
            return Err(deny(
                500,
                "audit_failed",
                "the broker could not record this request; try again later",
            ));
        }
        tracing::info!(client = %row.client, model = %row.model, kid = %row.kid, decision, code, "release");
        outcome
    }

    fn decide(
        &self,
        kid: &str,
        token: Option<&str>,
        body: &[u8],
        now: u64,
        seen: &mut Seen,
    ) -> Result<ReleaseAnswer, Denial> {
        let store_err = |e: crate::BrokerError| {
            tracing::error!(error = %e, "store failure");
            deny(
                500,
                "store_failed",
                "the broker's store failed; try again later",
            )
        };
        let req: ReleaseRequest = serde_json::from_slice(body).map_err(|e| {
            deny(
                400,
                "bad_request",
                format!("the request is not a valid release request: {e}"),
            )
        })?;
        seen.machine_id = req.machine_id.chars().take(256).collect();

        // 1. The client: a licence token, known by its hash only.
        let token = token.ok_or_else(|| {
            deny(
                401,
                "no_token",
                "no licence token (Authorization: Bearer ...)",
            )
        })?;
        let licence = self
            .store
            .licence_by_token(&sha256(token.as_bytes()))
            .map_err(store_err)?
            .ok_or_else(|| {
                deny(
                    401,
                    "unknown_token",
                    "the licence token is not known to this broker",
                )
            })?;
        seen.client = Some(format!("licence:{}", licence.id));

        // 2. Fresh: the client's clock near ours, the nonce never seen.
        if let Err(why) = check_machine_id(&req.machine_id) {
            return Err(deny(400, "bad_request", why));
        }
        if now.abs_diff(req.time) > self.window {
            return Err(deny(400, "stale_request", format!(
                "the request time {} is more than {} s from the broker's clock {now}; check the client's clock",
                req.time, self.window
            )));
        }
        let nonce = unb64(&req.nonce)
            .filter(|n| (16..=64).contains(&n.len()))
            .ok_or_else(|| {
                deny(
                    400,
                    "bad_request",
                    "nonce must be 16 to 64 bytes, base64url",
                )
            })?;
        if !self
            .store
            .fresh_nonce(&nonce, now, 2 * self.window)
            .map_err(store_err)?
        {
            return Err(deny(
                409,
                "replayed_request",
                "this request's nonce was already used (replayed request)",
            ));
        }
        let ek: [u8; 32] = unb64(&req.ek)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| {
                deny(
                    400,
                    "bad_request",
                    "ek must be a 32-byte X25519 public key, base64url",
                )
            })?;

        // 3. The key id.
        let kek = self.keks.get(kid).ok_or_else(|| {
            deny(
                404,
                "unknown_key",
                format!("this broker has no key id {kid:?}"),
            )
        })?;

        // 4. The header: parse, find the model, check the publisher's signature.
        let raw = unb64(&req.header)
            .filter(|h| h.len() >= 8 && h.len() <= MAX_HEADER)
            .ok_or_else(|| {
                deny(
                    400,
                    "invalid_header",
                    "header must be base64url of the 8-byte length and the JSON header",
                )
            })?;
        let header = parse_header(&raw).map_err(|e| {
            deny(
                400,
                "invalid_header",
                format!("the header does not parse: {e}"),
            )
        })?;
        let meta = seal::parse(&header).map_err(|e| {
            deny(
                400,
                "invalid_header",
                format!("the header does not parse: {e}"),
            )
        })?;
        seen.model = meta.doc.model.id.clone();
        // Checked before the store sees it (PostgreSQL refuses a NUL in TEXT:
        // a 500 instead of a refusal).
        if meta.doc.model.id.chars().any(char::is_control) {
            return Err(deny(
                400,
                "invalid_header",
                "the model id holds control characters",
            ));
        }
        let model = self
            .store
            .model(&meta.doc.model.id)
            .map_err(store_err)?
            .ok_or_else(|| {
                deny(
                    403,
                    "model_not_registered",
                    format!(
                        "model {:?} is not registered with this broker",
                        meta.doc.model.id
                    ),
                )
            })?;
        if model.kid != kid {
            return Err(deny(
                403,
                "wrong_key",
                format!(
                    "model {:?} is registered under key id {:?}, not {kid:?}",
                    model.model_id, model.kid
                ),
            ));
        }
        let sig = meta
            .signature
            .as_ref()
            .ok_or_else(|| deny(403, "not_signed", "the header is not signed; the broker releases keys only for headers signed by the registered publisher"))?;
        let signer: VerifyingKey = model.signer.parse().map_err(|_| {
            deny(
                500,
                "bad_registration",
                "the model's registered signer is malformed",
            )
        })?;
        let hint: Option<VerifyingKey> = sig.key.parse().ok();
        if sig.alg != signer.alg() || hint != Some(signer) {
            return Err(deny(
                403,
                "untrusted_signer",
                format!(
                    "the header is signed by {}, not by the registered publisher {}",
                    sig.key, model.signer
                ),
            ));
        }
        let sig_bytes = unb64(&sig.sig).unwrap_or_default();
        if !signer.verify(&seal::signed_message(&header), &sig_bytes) {
            return Err(deny(
                403,
                "bad_signature",
                "the header signature does not verify: the header was modified after signing",
            ));
        }

        // 5. The licence.
        check_licence(&licence, &model.model_id, now)?;
        if let Some(exp) = meta.doc.model.expires {
            if now >= exp {
                return Err(deny(
                    403,
                    "model_expired",
                    format!("the model expired at {exp} (now {now})"),
                ));
            }
        }

        // 6. Attestation evidence, verified against the key enrolled for this
        // licence and machine, and bound to this request (nonce and ek).
        let binding = sealtensors::keys::attestation_nonce(&nonce, &ek);
        let attestation = attest::verify_all(
            &self.verifiers,
            req.attestation.as_ref(),
            &binding,
            |kind| {
                self.store
                    .attestation_key(&licence.id, &req.machine_id, kind)
                    .map_err(store_err)
            },
        )?;

        // 7. The file's policy, with the broker's own input.
        if let Some(text) = &meta.policy {
            evaluate_policy(text, &req, &licence, attestation, &meta, &header, now)?;
        }

        // 8. The key: this broker's slot, the model key id, the header MAC.
        let mk_id = meta.mk_id.ok_or_else(|| {
            deny(
                400,
                "invalid_header",
                "the file is not encrypted: there is no key to release",
            )
        })?;
        // Every broker slot with this key id is tried: another broker may
        // use the same kid, with a key of the other kind.
        let ours: Vec<_> = meta
            .slots
            .iter()
            .filter(|s| s.broker().is_some_and(|(_, k)| k == kid))
            .collect();
        if ours.is_empty() {
            return Err(deny(
                400,
                "no_broker_slot",
                format!("the header has no broker slot for key id {kid:?}"),
            ));
        }
        let Some(mk) = ours
            .iter()
            .find_map(|slot| kek.open(slot, &mk_id).and_then(|r| r.ok()))
        else {
            return Err(deny(403, "slot_does_not_open", "the broker slot does not open with this broker's key (sealed to another key, or corrupt)"));
        };
        let mac = seal::header_mac(&mk, &meta.file_id, &header)
            .map_err(|_| deny(500, "internal", "header MAC computation failed"))?;
        if !ct_eq(&mac, &meta.mac.unwrap_or([0u8; 32])) {
            return Err(deny(
                403,
                "bad_header_mac",
                "the header MAC does not verify under the model key",
            ));
        }

        // 9. Seal the model key to the client's ephemeral key, before the seat:
        // an unusable ek must not take one.
        let info = sealtensors::keys::release_info(&meta.file_id, &mk_id);
        let (enc, ct) = hpke::seal(&ek, &info, &nonce, model_key_bytes(&mk))
            .map_err(|_| deny(400, "bad_request", "ek is not a usable X25519 public key"))?;
        // 10. Seats, last: a refused request takes none.
        match self
            .store
            .take_seat(&licence.id, &req.machine_id, licence.seats, now)
            .map_err(store_err)?
        {
            Seat::Granted => {}
            Seat::Revoked => {
                return Err(deny(
                    403,
                    "licence_revoked",
                    format!("licence {} was revoked", licence.id),
                ))
            }
            Seat::Full(n) => {
                return Err(deny(
                    403,
                    "seats_exhausted",
                    format!(
                        "licence {} allows {} machine(s) and {n} other machine(s) hold them",
                        licence.id, licence.seats
                    ),
                ))
            }
        }

        Ok(ReleaseAnswer {
            enc: b64(&enc),
            ct: b64(&ct),
            ttl: self.ttl,
        })
    }
}

fn model_key_bytes(mk: &sealtensors::keys::ModelKey) -> &[u8] {
    mk.expose_secret()
}

fn parse_header(raw: &[u8]) -> sealtensors::Result<Header> {
    let n = Header::parse_len(&raw[..8])?;
    let n = usize::try_from(n)
        .map_err(|_| sealtensors::Error::InvalidContainer("header length".into()))?;
    if raw.len() - 8 != n {
        return Err(sealtensors::Error::InvalidContainer(
            "the header length does not match the bytes sent".into(),
        ));
    }
    Header::parse_json(&raw[8..])
}

fn check_licence(l: &LicenceRecord, model_id: &str, now: u64) -> Result<(), Denial> {
    if let Some(t) = l.revoked {
        return Err(deny(
            403,
            "licence_revoked",
            format!("licence {} was revoked at {t}", l.id),
        ));
    }
    if let Some(exp) = l.expires {
        if now >= exp {
            return Err(deny(
                403,
                "licence_expired",
                format!("licence {} expired at {exp} (now {now})", l.id),
            ));
        }
    }
    if !l.models.iter().any(|m| m == model_id) {
        return Err(deny(
            403,
            "model_not_licensed",
            format!("licence {} does not cover model {model_id:?}", l.id),
        ));
    }
    Ok(())
}

/// The claims the policy sees as `input.licence`: the stored claims, with the
/// broker's own fields on top (a stored claim cannot override them).
pub fn licence_claims(l: &LicenceRecord) -> serde_json::Value {
    let mut c = match &l.claims {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    c.insert("id".into(), l.id.clone().into());
    c.insert("customer".into(), l.customer.clone().into());
    c.insert("seats".into(), l.seats.into());
    c.insert("expires".into(), l.expires.into());
    c.insert("models".into(), l.models.clone().into());
    serde_json::Value::Object(c)
}

fn evaluate_policy(
    text: &str,
    req: &ReleaseRequest,
    licence: &LicenceRecord,
    attestation: serde_json::Value,
    meta: &seal::SealMeta,
    header: &Header,
    now: u64,
) -> Result<(), Denial> {
    let mut p = match Policy::compile(text) {
        Ok(p) => p,
        Err(CompileError::NoDecision) => {
            return Err(deny(
                403,
                "policy_unsupported",
                "the file's policy has no data.sealtensors.allow rule",
            ))
        }
        Err(CompileError::Other(e)) => return Err(deny(403, "policy_invalid", e.to_string())),
    };
    let s = |k: &str| {
        req.process
            .as_ref()
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_str())
            .map(|v| v.chars().take(128).collect::<String>())
    };
    let ctx = PolicyContext {
        licence: Some(licence_claims(licence)),
        attestation: Some(attestation),
        runtime: s("runtime"),
        runtime_version: s("runtime_version"),
        framework: s("framework"),
        framework_version: s("framework_version"),
        // The key released opens every tensor (tensor keys derive from it),
        // so the policy judges a request for all of them, whatever subset the
        // client says it wants: a client-chosen list would let a licence for
        // some tensors release the key to all.
        requested: None,
    };
    let names = header.tensors.iter().map(|t| t.name.as_str());
    let mut input = input_document(&ctx, &meta.doc.model, req.file_name.as_deref(), names, now)
        .map_err(|e| deny(403, "policy_invalid", e.to_string()))?;
    // The host is the client's, as it identified itself, never the broker's.
    input["host"] = serde_json::json!({"hostname": null, "machine_id": req.machine_id});
    input["evaluator"] = "broker".into();
    match p.evaluate(&input) {
        Ok(Decision::Allow) => Ok(()),
        Ok(Decision::Deny { reasons }) => Err(deny(
            403,
            "policy_denied",
            format!(
                "the file's access policy denies access: {}",
                reasons.join("; ")
            ),
        )),
        Err(e) => Err(deny(403, "policy_invalid", e.to_string())),
    }
}

/// Longest text kept in an audit field, in characters.
const AUDIT_TEXT_MAX: usize = 512;

/// A machine id names a seat and an enrolled attestation key: 1 to 256
/// bytes of printable text. Control characters are refused rather than
/// stored (PostgreSQL refuses a NUL in TEXT, and terminal escapes have no
/// place in a seat list an operator reads).
pub(crate) fn check_machine_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() || id.len() > 256 {
        return Err("machine_id must be 1 to 256 bytes");
    }
    if id.chars().any(sealtensors::is_invisible) {
        return Err("machine_id must not contain control characters");
    }
    Ok(())
}

/// An audit field: control characters escaped, at most AUDIT_TEXT_MAX
/// characters (then "...").
pub(crate) fn audit_text(s: &str) -> String {
    sealtensors::printable(s, AUDIT_TEXT_MAX)
}

#[cfg(test)]
mod audit_text_tests {
    use super::audit_text;

    #[test]
    fn audit_text_is_bounded_and_printable() {
        assert_eq!(audit_text("m1"), "m1");
        assert_eq!(audit_text("a\0b\nc"), "a\\u{0}b\\nc");
        let long = "x".repeat(4 << 20);
        let t = audit_text(&long);
        assert_eq!(t.len(), 512 + 3);
        assert!(t.ends_with("..."));
        assert!(!audit_text("\u{1b}[31mred").contains('\u{1b}'));
    }
}

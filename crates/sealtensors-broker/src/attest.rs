//! Attestation (docs/broker.md "Attestation"): a release request may carry
//! evidence about the client machine, by kind (`{"tpm": {...}}`). Each kind
//! has an [`AttestationVerifier`]; the claims it verifies become
//! `input.attestation.<kind>` in the policy input (SPEC §3.6), so a file's
//! policy can require them. Evidence that fails verification refuses the
//! release with a precise code; a request without evidence gets
//! `input.attestation = {}` and it is up to the policy to require more.
//!
//! Evidence is bound to its request: it must carry [`expected_nonce`] (SHA-256
//! over a label, the request's nonce and its ephemeral key), so evidence made
//! for one request is refused in any other, and the request nonce itself is
//! single-use.
//!
//! [`expected_nonce`]: sealtensors::keys::attestation_nonce

use serde_json::Value;

use crate::error::{deny, Denial};
use crate::store::AttestationKey;

/// Verifies one kind of attestation evidence.
pub trait AttestationVerifier: Send + Sync {
    /// The kind: the member of the request's `attestation` object this
    /// verifier reads, and of `input.attestation` it fills (`"tpm"`).
    fn kind(&self) -> &'static str;

    /// Verify `evidence` for a request whose binding is `expected_nonce`,
    /// against the key `enrolled` for this licence and machine (`None`: none
    /// enrolled). Returns the verified claims, or the refusal.
    fn verify(
        &self,
        evidence: &Value,
        expected_nonce: &[u8; 32],
        enrolled: Option<&AttestationKey>,
    ) -> Result<Value, Denial>;

    /// Check a public key an admin enrols for this kind; returns the key in
    /// the form stored, and its algorithm name.
    fn enrol(&self, public_key: &str) -> Result<(Vec<u8>, &'static str), String>;
}

/// The verifiers a broker has unless told otherwise: TPM 2.0 quotes.
pub fn default_verifiers() -> Vec<std::sync::Arc<dyn AttestationVerifier>> {
    vec![std::sync::Arc::new(crate::tpm::TpmQuoteVerifier)]
}

/// Largest number of evidence kinds in one request.
const MAX_KINDS: usize = 4;

/// Verify every piece of evidence in a request: the `input.attestation`
/// object of the policy input. `lookup` finds the enrolled key of a kind.
pub(crate) fn verify_all(
    verifiers: &[std::sync::Arc<dyn AttestationVerifier>],
    evidence: Option<&Value>,
    expected_nonce: &[u8; 32],
    mut lookup: impl FnMut(&str) -> Result<Option<AttestationKey>, Denial>,
) -> Result<Value, Denial> {
    let Some(evidence) = evidence.filter(|e| !e.is_null()) else {
        return Ok(Value::Object(Default::default()));
    };
    let obj = evidence
        .as_object()
        .filter(|o| !o.is_empty() && o.len() <= MAX_KINDS)
        .ok_or_else(|| {
            deny(
                400,
                "attestation_invalid",
                "attestation must be an object of evidence by kind, e.g. {\"tpm\": {...}}",
            )
        })?;
    let mut claims = serde_json::Map::new();
    for (kind, ev) in obj {
        let v = verifiers.iter().find(|v| v.kind() == kind).ok_or_else(|| {
            let known: Vec<&str> = verifiers.iter().map(|v| v.kind()).collect();
            deny(
                400,
                "attestation_unsupported",
                format!(
                    "this broker verifies no {:?} evidence (it verifies: {})",
                    kind.chars().take(64).collect::<String>(),
                    known.join(", ")
                ),
            )
        })?;
        let enrolled = lookup(v.kind())?;
        claims.insert(
            kind.clone(),
            v.verify(ev, expected_nonce, enrolled.as_ref())?,
        );
    }
    Ok(Value::Object(claims))
}

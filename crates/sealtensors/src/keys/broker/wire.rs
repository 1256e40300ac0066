//! The JSON of a key release (docs/broker.md "HTTP API"), shared by the
//! loader and the broker server (`sealtensors-broker`): plain serde types and
//! the two bindings both sides compute. No I/O here.

use serde::{Deserialize, Serialize};

use crate::crypto;

/// The body of `POST {url}/release` (docs/broker.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The sealed file's header: the 8-byte length and the JSON, base64url.
    pub header: String,
    /// The client's ephemeral HPKE (X25519) public key, base64url.
    pub ek: String,
    /// The client's machine id (`/etc/machine-id`), counted against seats.
    pub machine_id: String,
    /// 16 to 64 fresh random bytes, base64url; never reused.
    pub nonce: String,
    /// The client's clock, Unix seconds.
    pub time: u64,
    /// The file's name, for the policy input (SPEC §3.6 `file.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// What the client says about its runtime and framework (unverified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<serde_json::Value>,
    /// The tensors the client asks for; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<String>>,
    /// Attestation evidence by kind, e.g. `{"tpm": {"quote", "signature",
    /// "pcr_values"}}` (docs/broker.md "Attestation"), bound to this request
    /// by [`attestation_nonce`]; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<serde_json::Value>,
}

/// The broker's answer to an allowed release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAnswer {
    /// HPKE `enc`, base64url.
    pub enc: String,
    /// HPKE ciphertext of the model key, base64url.
    pub ct: String,
    /// How long the client may keep the key in memory, seconds.
    pub ttl: u64,
}

/// The broker's answer to a refused request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// A stable code (`licence_revoked`, `policy_denied`, ...).
    pub error: String,
    /// What was wrong, for people.
    pub reason: String,
}

/// HPKE `info` of a release: binds the answer to one file and one model key.
pub fn release_info(file_id: &[u8; 32], mk_id: &[u8; 16]) -> Vec<u8> {
    let mut v = b"sealtensors/1 broker release\0".to_vec();
    v.extend_from_slice(file_id);
    v.extend_from_slice(mk_id);
    v
}

/// The qualifying data an attestation must carry (a TPM quote's
/// `extraData`): SHA-256 over a label, the request's nonce and its ephemeral
/// key, so that evidence made for one request is refused in any other.
pub fn attestation_nonce(nonce: &[u8], ek: &[u8]) -> [u8; 32] {
    let mut m = b"sealtensors/1 attestation\0".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(ek);
    crypto::sha256(&m)
}

/// The answer to `GET {url}`: the broker's public key for a key id (SPEC §6.6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicKeyAnswer {
    /// The key id asked for.
    pub kid: String,
    /// The public key, `x25519:...` or `p256:...` (SPEC §6.6, §6.8).
    pub public_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_info_binds_file_and_key() {
        let a = release_info(&[1; 32], &[2; 16]);
        assert_ne!(a, release_info(&[1; 32], &[3; 16]));
        assert_ne!(a, release_info(&[4; 32], &[2; 16]));
        assert!(a.starts_with(b"sealtensors/1 broker release\0"));
    }
}

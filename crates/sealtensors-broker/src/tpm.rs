//! TPM 2.0 quotes (docs/broker.md "Attestation"; TCG TPM 2.0 Library,
//! Part 2: Structures, TPMS_ATTEST, TPMT_SIGNATURE).
//!
//! Evidence: `{"quote": b64u(TPMS_ATTEST), "signature": b64u(TPMT_SIGNATURE),
//! "pcr_values": b64u(the PCR values, concatenated in the quote's selection
//! order)}`, what `tpm2_quote -m -s -o -F values` writes. The broker checks,
//! in order: the structures parse (bounds-checked, no trailing bytes); an
//! attestation key is enrolled for the licence and machine; the signature
//! (ECDSA P-256 or RSASSA-PKCS1-v1_5 / RSASSA-PSS, SHA-256) verifies over the
//! attest blob under that key (aws-lc-rs); `magic` is TPM_GENERATED_VALUE and
//! `type` TPM_ST_ATTEST_QUOTE; `extraData` is the request's binding; the
//! quote's PCR digest is SHA-256 over the PCR values sent. The claims are the
//! PCR values by bank and index, the TPM clock and the key's fingerprint.
//!
//! The key is trusted because an admin enrolled it; no EK certificate chain
//! is checked (out of scope: docs/broker.md).

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use sealtensors::crypto::{ct_eq, sha256};

use crate::attest::AttestationVerifier;
use crate::error::{deny, Denial};
use crate::store::AttestationKey;
use crate::unb64;

/// TPM_GENERATED_VALUE: every structure the TPM signs starts with it.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_RSASSA: u16 = 0x0014;
const TPM_ALG_RSAPSS: u16 = 0x0016;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_SHA256: u16 = 0x000b;

/// Bounds on the evidence (TPM structures are small; these are generous).
const MAX_QUOTE: usize = 2048;
const MAX_SIGNATURE: usize = 1024;
const MAX_PCR_VALUES: usize = 8192;
/// HASH_COUNT banks at most, and 32 PCRs per bank.
const MAX_BANKS: u32 = 8;
const MAX_SELECT: u8 = 4;

/// Algorithm names stored with an enrolled key.
pub const ALG_ECDSA_P256: &str = "ecdsa-p256";
/// RSA, 2048 to 8192 bits.
pub const ALG_RSA: &str = "rsa";

/// The TPM 2.0 quote verifier.
pub struct TpmQuoteVerifier;

/// A bank of PCRs: its hash algorithm and the selected indices, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBank {
    /// TPM_ALG_ID of the bank.
    pub alg: u16,
    /// Selected PCR indices, ascending (the order of the digest).
    pub pcrs: Vec<u32>,
}

/// The fields of a TPMS_ATTEST of type quote that the broker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// `magic`.
    pub magic: u32,
    /// `type`.
    pub kind: u16,
    /// `qualifiedSigner` (TPM2B_NAME contents).
    pub qualified_signer: Vec<u8>,
    /// `extraData` (TPM2B_DATA contents): the caller's nonce.
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock`, milliseconds.
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: bool,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// `attested.quote.pcrSelect`, in order.
    pub banks: Vec<PcrBank>,
    /// `attested.quote.pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

/// A TPMT_SIGNATURE with SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// ECDSA: `r || s`, each left-padded to 32 bytes (P-256).
    Ecdsa(Vec<u8>),
    /// RSASSA-PKCS1-v1_5.
    RsaSsa(Vec<u8>),
    /// RSASSA-PSS.
    RsaPss(Vec<u8>),
}

/// Why a TPM structure does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn perr(s: impl Into<String>) -> ParseError {
    ParseError(s.into())
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], ParseError> {
        if self.b.len() < n {
            return Err(perr(format!(
                "{} is truncated at {field} ({} bytes left, {n} needed)",
                self.what,
                self.b.len()
            )));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, f: &str) -> Result<u8, ParseError> {
        Ok(self.take(1, f)?[0])
    }
    fn u16(&mut self, f: &str) -> Result<u16, ParseError> {
        let s = self.take(2, f)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, f: &str) -> Result<u32, ParseError> {
        let s = self.take(4, f)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, f: &str) -> Result<u64, ParseError> {
        let s = self.take(8, f)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    /// A TPM2B: a 16-bit size, then that many bytes (at most `max`).
    fn tpm2b(&mut self, f: &str, max: usize) -> Result<&'a [u8], ParseError> {
        let n = usize::from(self.u16(f)?);
        if n > max {
            return Err(perr(format!(
                "{}: {f} is {n} bytes, more than {max}",
                self.what
            )));
        }
        self.take(n, f)
    }
    fn end(&self) -> Result<(), ParseError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(perr(format!(
                "{} has {} bytes after its end",
                self.what,
                self.b.len()
            )))
        }
    }
}

/// Digest size of a PCR bank's hash algorithm, and its name in claims.
pub fn bank_alg(alg: u16) -> Option<(usize, &'static str)> {
    match alg {
        0x0004 => Some((20, "sha1")),
        0x000b => Some((32, "sha256")),
        0x000c => Some((48, "sha384")),
        0x000d => Some((64, "sha512")),
        0x0012 => Some((32, "sm3_256")),
        _ => None,
    }
}

/// Parse a TPMS_ATTEST (the contents of a TPM2B_ATTEST) of type quote. The
/// `magic` and `type` are returned, not checked (checked after the signature).
pub fn parse_quote(b: &[u8]) -> Result<Quote, ParseError> {
    let mut r = Reader {
        b,
        what: "the quote (TPMS_ATTEST)",
    };
    let magic = r.u32("magic")?;
    let kind = r.u16("type")?;
    if kind != TPM_ST_ATTEST_QUOTE {
        return Err(perr(format!(
            "the attest structure has type {kind:#06x}, not a quote (TPM_ST_ATTEST_QUOTE, 0x8018)"
        )));
    }
    let qualified_signer = r.tpm2b("qualifiedSigner", 2 + 64)?.to_vec();
    let extra_data = r.tpm2b("extraData", 64)?.to_vec();
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        v => return Err(perr(format!("clockInfo.safe is {v}, not 0 or 1"))),
    };
    let firmware_version = r.u64("firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    if count == 0 || count > MAX_BANKS {
        return Err(perr(format!(
            "the quote selects {count} PCR banks (1 to {MAX_BANKS} allowed)"
        )));
    }
    let mut banks: Vec<PcrBank> = Vec::new();
    for _ in 0..count {
        let alg = r.u16("pcrSelect.hash")?;
        if bank_alg(alg).is_none() {
            return Err(perr(format!(
                "the quote selects an unknown PCR bank {alg:#06x}"
            )));
        }
        if banks.iter().any(|b| b.alg == alg) {
            return Err(perr(format!("the quote selects PCR bank {alg:#06x} twice")));
        }
        let n = r.u8("pcrSelect.sizeofSelect")?;
        if n > MAX_SELECT {
            return Err(perr(format!("sizeofSelect is {n}, more than {MAX_SELECT}")));
        }
        let bits = r.take(usize::from(n), "pcrSelect.pcrSelect")?;
        let mut pcrs = Vec::new();
        for (i, byte) in bits.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    // i < MAX_SELECT, so this is below 32.
                    pcrs.push(i as u32 * 8 + bit);
                }
            }
        }
        banks.push(PcrBank { alg, pcrs });
    }
    let pcr_digest = r.tpm2b("pcrDigest", 64)?.to_vec();
    r.end()?;
    Ok(Quote {
        magic,
        kind,
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        banks,
        pcr_digest,
    })
}

/// Parse a TPMT_SIGNATURE: ECDSA, RSASSA or RSAPSS, with SHA-256 only.
pub fn parse_signature(b: &[u8]) -> Result<Signature, ParseError> {
    let mut r = Reader {
        b,
        what: "the signature (TPMT_SIGNATURE)",
    };
    let alg = r.u16("sigAlg")?;
    let hash = r.u16("hash")?;
    let sig = match alg {
        TPM_ALG_ECDSA => {
            let ecdsa_scalar = |v: &[u8], f: &str| -> Result<[u8; 32], ParseError> {
                let v = match v.iter().position(|&x| x != 0) {
                    Some(i) => &v[i..],
                    None => &[][..],
                };
                if v.len() > 32 {
                    return Err(perr(format!(
                        "ECDSA {f} is longer than 32 bytes: not a P-256 signature"
                    )));
                }
                let mut out = [0u8; 32];
                out[32 - v.len()..].copy_from_slice(v);
                Ok(out)
            };
            let rr = ecdsa_scalar(r.tpm2b("signatureR", 66)?, "r")?;
            let ss = ecdsa_scalar(r.tpm2b("signatureS", 66)?, "s")?;
            let mut v = rr.to_vec();
            v.extend_from_slice(&ss);
            Signature::Ecdsa(v)
        }
        TPM_ALG_RSASSA => Signature::RsaSsa(r.tpm2b("sig", 1024)?.to_vec()),
        TPM_ALG_RSAPSS => Signature::RsaPss(r.tpm2b("sig", 1024)?.to_vec()),
        other => {
            return Err(perr(format!(
                "signature algorithm {other:#06x} is not supported (ECDSA, RSASSA or RSAPSS with SHA-256)"
            )))
        }
    };
    if hash != TPM_ALG_SHA256 {
        return Err(perr(format!(
            "the signature uses hash {hash:#06x}; only SHA-256 (0x000b) is accepted"
        )));
    }
    r.end()?;
    Ok(sig)
}

/// A public key for enrolment: PEM (`-----BEGIN PUBLIC KEY-----`) or
/// base64 of a DER SubjectPublicKeyInfo; returns the DER and the algorithm.
pub fn parse_public_key(text: &str) -> Result<(Vec<u8>, &'static str), String> {
    let t = text.trim();
    let b64: String = if let Some(rest) = t.strip_prefix("-----BEGIN PUBLIC KEY-----") {
        let body = rest
            .split("-----END PUBLIC KEY-----")
            .next()
            .filter(|_| rest.contains("-----END PUBLIC KEY-----"))
            .ok_or("the PEM public key has no END PUBLIC KEY line")?;
        body.chars().filter(|c| !c.is_whitespace()).collect()
    } else {
        t.chars().filter(|c| !c.is_whitespace()).collect()
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim_end_matches('='))
        })
        .map_err(|_| {
            "the public key must be a PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----) or base64 of its DER".to_string()
        })?;
    if der.len() > 4096 {
        return Err("the public key is larger than 4096 bytes".into());
    }
    if ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &der).is_ok() {
        return Ok((der, ALG_ECDSA_P256));
    }
    if ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &der).is_ok() {
        return Ok((der, ALG_RSA));
    }
    Err("the public key is neither an ECDSA P-256 nor an RSA (2048 to 8192 bits) SubjectPublicKeyInfo".into())
}

/// `sha256:` and the hex SHA-256 of an enrolled key's DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&sha256(der)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Check `sig` over `msg` with the enrolled key (aws-lc-rs).
pub fn verify_signature(key: &AttestationKey, msg: &[u8], sig: &Signature) -> Result<(), String> {
    let (alg, bytes, name): (&'static dyn VerificationAlgorithm, &[u8], &str) = match (
        key.alg.as_str(),
        sig,
    ) {
        (ALG_ECDSA_P256, Signature::Ecdsa(s)) => {
            (&signature::ECDSA_P256_SHA256_FIXED, s, "ECDSA P-256")
        }
        (ALG_RSA, Signature::RsaSsa(s)) => (&signature::RSA_PKCS1_2048_8192_SHA256, s, "RSASSA"),
        (ALG_RSA, Signature::RsaPss(s)) => (&signature::RSA_PSS_2048_8192_SHA256, s, "RSAPSS"),
        (k, s) => {
            let got = match s {
                Signature::Ecdsa(_) => "ECDSA",
                Signature::RsaSsa(_) => "RSASSA",
                Signature::RsaPss(_) => "RSAPSS",
            };
            return Err(format!(
                    "the quote is signed with {got} but the enrolled attestation key is {k}: signed by another key"
                ));
        }
    };
    UnparsedPublicKey::new(alg, &key.public_key)
        .verify(msg, bytes)
        .map_err(|_| {
            format!(
                "the {name} signature over the quote does not verify under the enrolled attestation key {}: signed by another key, or the quote was modified",
                fingerprint(&key.public_key)
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Evidence {
    quote: String,
    signature: String,
    pcr_values: String,
}

impl AttestationVerifier for TpmQuoteVerifier {
    fn kind(&self) -> &'static str {
        "tpm"
    }

    fn enrol(&self, public_key: &str) -> Result<(Vec<u8>, &'static str), String> {
        parse_public_key(public_key)
    }

    fn verify(
        &self,
        evidence: &Value,
        expected_nonce: &[u8; 32],
        enrolled: Option<&AttestationKey>,
    ) -> Result<Value, Denial> {
        let invalid = |r: String| deny(400, "attestation_invalid", r);
        let ev: Evidence = serde_json::from_value(evidence.clone()).map_err(|e| {
            invalid(format!(
                "TPM evidence must be {{\"quote\", \"signature\", \"pcr_values\"}} (base64url): {e}"
            ))
        })?;
        let field = |name: &str, v: &str, max: usize| {
            unb64(v).filter(|b| b.len() <= max).ok_or_else(|| {
                invalid(format!(
                    "TPM evidence: {name} must be base64url of at most {max} bytes"
                ))
            })
        };
        let attest = field("quote", &ev.quote, MAX_QUOTE)?;
        let sig = field("signature", &ev.signature, MAX_SIGNATURE)?;
        let values = field("pcr_values", &ev.pcr_values, MAX_PCR_VALUES)?;
        let q = parse_quote(&attest).map_err(|e| invalid(e.to_string()))?;
        let sig = parse_signature(&sig).map_err(|e| invalid(e.to_string()))?;

        let key = enrolled.ok_or_else(|| {
            deny(
                403,
                "attestation_not_enrolled",
                "no TPM attestation key is enrolled for this licence and machine id; an admin enrols it (POST /admin/attestation-keys)",
            )
        })?;
        verify_signature(key, &attest, &sig)
            .map_err(|r| deny(403, "attestation_bad_signature", r))?;
        if q.magic != TPM_GENERATED_VALUE {
            return Err(deny(
                403,
                "attestation_invalid",
                format!(
                    "the quote's magic is {:#010x}, not TPM_GENERATED_VALUE: the TPM did not make it",
                    q.magic
                ),
            ));
        }
        if !ct_eq(&q.extra_data, expected_nonce) {
            return Err(deny(
                403,
                "attestation_nonce_mismatch",
                "the quote was made for another request (its extraData is not this request's nonce binding): replayed or stale evidence",
            ));
        }
        // The PCR values sent, split by the (signed) selection.
        let mut pcrs = serde_json::Map::new();
        let mut at = 0usize;
        let mut expected_len = 0usize;
        for b in &q.banks {
            if let Some((n, _)) = bank_alg(b.alg) {
                expected_len += n * b.pcrs.len();
            }
        }
        if values.len() != expected_len {
            return Err(deny(
                403,
                "attestation_pcr_mismatch",
                format!(
                    "{} bytes of PCR values were sent; the quote's selection needs {expected_len}",
                    values.len()
                ),
            ));
        }
        for b in &q.banks {
            let Some((n, name)) = bank_alg(b.alg) else {
                continue;
            };
            let mut bank = serde_json::Map::new();
            for i in &b.pcrs {
                let v = values.get(at..at + n).unwrap_or_default();
                bank.insert(i.to_string(), hex(v).into());
                at += n;
            }
            pcrs.insert(name.into(), Value::Object(bank));
        }
        if !ct_eq(&sha256(&values), &q.pcr_digest) {
            return Err(deny(
                403,
                "attestation_pcr_mismatch",
                "the PCR values sent do not match the quote's PCR digest",
            ));
        }
        Ok(json!({
            "verified": true,
            "ak": fingerprint(&key.public_key),
            "ak_alg": key.alg,
            "pcrs": pcrs,
            "clock": {"clock": q.clock, "reset_count": q.reset_count,
                      "restart_count": q.restart_count, "safe": q.safe},
            "firmware_version": format!("{:016x}", q.firmware_version),
            "qualified_signer": hex(&q.qualified_signer),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    const NONCE: [u8; 32] = [7; 32];

    fn attest(magic: u32, extra: &[u8], banks: &[(u16, &[u8])], digest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&magic.to_be_bytes());
        v.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        v.extend_from_slice(&34u16.to_be_bytes());
        v.extend_from_slice(&[0x00, 0x0b]);
        v.extend_from_slice(&[0xaa; 32]);
        v.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        v.extend_from_slice(extra);
        v.extend_from_slice(&1234u64.to_be_bytes());
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v.push(1);
        v.extend_from_slice(&0x2019_1023_0016_3636u64.to_be_bytes());
        v.extend_from_slice(&(banks.len() as u32).to_be_bytes());
        for (alg, sel) in banks {
            v.extend_from_slice(&alg.to_be_bytes());
            v.push(sel.len() as u8);
            v.extend_from_slice(sel);
        }
        v.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        v.extend_from_slice(digest);
        v
    }

    struct Signer {
        kp: EcdsaKeyPair,
    }

    impl Signer {
        fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Signer {
                kp: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                    .unwrap(),
            }
        }
        fn key(&self) -> AttestationKey {
            // SEC1 point: accepted by aws-lc-rs like a SubjectPublicKeyInfo.
            AttestationKey {
                licence_id: "l".into(),
                machine_id: "m".into(),
                kind: "tpm".into(),
                alg: ALG_ECDSA_P256.into(),
                public_key: self.kp.public_key().as_ref().to_vec(),
                created: 0,
            }
        }
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            let s = self.kp.sign(&SystemRandom::new(), msg).unwrap();
            let s = s.as_ref();
            let mut v = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x20];
            v.extend_from_slice(&s[..32]);
            v.extend_from_slice(&[0x00, 0x20]);
            v.extend_from_slice(&s[32..]);
            v
        }
    }

    fn b64(b: &[u8]) -> String {
        crate::b64(b)
    }

    fn evidence(attest: &[u8], sig: &[u8], values: &[u8]) -> Value {
        json!({"quote": b64(attest), "signature": b64(sig), "pcr_values": b64(values)})
    }

    /// PCR 7 and 16 of sha256.
    fn good() -> (Signer, Vec<u8>, Vec<u8>, Vec<u8>) {
        let s = Signer::new();
        let mut values = vec![0x11; 32];
        values.extend_from_slice(&[0x22; 32]);
        let a = attest(
            TPM_GENERATED_VALUE,
            &NONCE,
            &[(0x000b, &[0x80, 0x00, 0x01])],
            &sha256(&values),
        );
        let sig = s.sign(&a);
        (s, a, sig, values)
    }

    fn code(r: Result<Value, Denial>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(d) => d.code,
        }
    }

    #[test]
    fn a_good_quote_gives_pcr_claims() {
        let (s, a, sig, values) = good();
        let c = TpmQuoteVerifier
            .verify(&evidence(&a, &sig, &values), &NONCE, Some(&s.key()))
            .unwrap();
        assert_eq!(c["pcrs"]["sha256"]["7"], hex(&[0x11; 32]));
        assert_eq!(c["pcrs"]["sha256"]["16"], hex(&[0x22; 32]));
        assert_eq!(c["clock"]["reset_count"], 1);
        assert_eq!(c["verified"], true);
    }

    #[test]
    fn each_check_refuses_with_its_code() {
        let (s, a, sig, values) = good();
        let v = |a: &[u8], sig: &[u8], values: &[u8], n: &[u8; 32], k: Option<&AttestationKey>| {
            code(TpmQuoteVerifier.verify(&evidence(a, sig, values), n, k))
        };
        let k = s.key();
        assert_eq!(
            v(&a, &sig, &values, &[8; 32], Some(&k)),
            "attestation_nonce_mismatch"
        );
        assert_eq!(
            v(&a, &sig, &values, &NONCE, None),
            "attestation_not_enrolled"
        );
        assert_eq!(
            v(&a, &sig, &values, &NONCE, Some(&Signer::new().key())),
            "attestation_bad_signature"
        );
        let mut bad = values.clone();
        bad[40] ^= 1;
        assert_eq!(
            v(&a, &sig, &bad, &NONCE, Some(&k)),
            "attestation_pcr_mismatch"
        );
        assert_eq!(
            v(&a, &sig, &values[..32], &NONCE, Some(&k)),
            "attestation_pcr_mismatch"
        );
        let mut t = a.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(
            v(&t, &sig, &values, &NONCE, Some(&k)),
            "attestation_bad_signature"
        );
        // A validly signed structure without TPM_GENERATED_VALUE.
        let fake = attest(
            0x1234_5678,
            &NONCE,
            &[(0x000b, &[0x80, 0, 1])],
            &sha256(&values),
        );
        let fsig = s.sign(&fake);
        assert_eq!(
            v(&fake, &fsig, &values, &NONCE, Some(&k)),
            "attestation_invalid"
        );
        // An RSA key does not take an ECDSA signature.
        let mut rk = k.clone();
        rk.alg = ALG_RSA.into();
        assert_eq!(
            v(&a, &sig, &values, &NONCE, Some(&rk)),
            "attestation_bad_signature"
        );
        // Malformed evidence.
        for e in [
            json!(null),
            json!({"quote": "!", "signature": "", "pcr_values": ""}),
            json!({"quote": b64(&a), "signature": b64(&sig)}),
            json!({"quote": b64(&a), "signature": b64(&sig), "pcr_values": "", "x": 1}),
            json!({"quote": b64(&vec![0; MAX_QUOTE + 1]), "signature": "", "pcr_values": ""}),
        ] {
            assert_eq!(
                code(TpmQuoteVerifier.verify(&e, &NONCE, Some(&k))),
                "attestation_invalid",
                "{e}"
            );
        }
    }

    #[test]
    fn truncated_extended_and_garbage_structures_never_panic() {
        let (s, a, sig, _) = good();
        for n in 0..a.len() {
            assert!(parse_quote(&a[..n]).is_err(), "prefix {n}");
        }
        for n in 0..sig.len() {
            assert!(parse_signature(&sig[..n]).is_err(), "prefix {n}");
        }
        let mut long = a.clone();
        long.push(0);
        assert!(parse_quote(&long).is_err());
        let mut long = sig.clone();
        long.push(0);
        assert!(parse_signature(&long).is_err());
        // Every single-byte change either fails to parse or parses: never panics.
        for i in 0..a.len() {
            for x in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut t = a.clone();
                t[i] = x;
                let _ = parse_quote(&t);
            }
        }
        // Pseudo-random garbage, and garbage behind a valid prefix.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..600usize {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_quote(&g);
            let _ = parse_signature(&g);
            let mut p = a[..a.len().min(len)].to_vec();
            p.extend_from_slice(&g);
            let _ = parse_quote(&p);
            let e = evidence(&g, &g, &g);
            assert_ne!(
                code(TpmQuoteVerifier.verify(&e, &NONCE, Some(&s.key()))),
                "ok"
            );
        }
    }

    #[test]
    fn signatures_parse_by_algorithm() {
        // r with leading zeros trimmed by the TPM is padded back.
        let mut v = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x1f];
        v.extend_from_slice(&[1; 31]);
        v.extend_from_slice(&[0x00, 0x21, 0x00]);
        v.extend_from_slice(&[2; 32]);
        let Signature::Ecdsa(rs) = parse_signature(&v).unwrap() else {
            panic!("not ECDSA")
        };
        assert_eq!(rs[0], 0);
        assert_eq!(&rs[1..32], &[1; 31]);
        assert_eq!(&rs[32..], &[2; 32]);
        // SHA-1 signatures are refused.
        let mut v1 = v.clone();
        v1[3] = 0x04;
        assert!(parse_signature(&v1).unwrap_err().0.contains("SHA-256"));
        let mut rsa = vec![0x00, 0x14, 0x00, 0x0b, 0x01, 0x00];
        rsa.extend_from_slice(&[3; 256]);
        assert!(matches!(
            parse_signature(&rsa).unwrap(),
            Signature::RsaSsa(_)
        ));
        rsa[1] = 0x16;
        assert!(matches!(
            parse_signature(&rsa).unwrap(),
            Signature::RsaPss(_)
        ));
        rsa[1] = 0x99;
        assert!(parse_signature(&rsa).is_err());
    }

    #[test]
    fn enrolment_takes_pem_or_der_and_rejects_other_keys() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWOuZkCrM89np0xLd9Y2mJSsDNZpi\ntuHWLroLvAhFQUeUgNMTNS9w1lmpDRbrT4qCoSet6H70H91HahoWLqFtKw==\n-----END PUBLIC KEY-----\n";
        let (der, alg) = parse_public_key(pem).unwrap();
        assert_eq!(alg, ALG_ECDSA_P256);
        let b = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(parse_public_key(&b).unwrap().0, der);
        assert!(parse_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        assert!(parse_public_key("not a key").is_err());
        assert!(parse_public_key("AAAA").is_err());
    }
}

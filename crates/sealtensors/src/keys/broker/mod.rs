//! Key brokers (SPEC §6.6, §10; docs/broker.md), one job per file:
//!
//! - `slot`: the `broker` slot and its URL; a broker as a recipient (what
//!   sealing needs) and its key-encryption key (what only the broker holds).
//! - `wire`: the JSON of a release, shared with the broker server.
//! - `access`: a loader's broker configuration: allowed hosts, licence
//!   tokens, a private CA, and their discovery.
//! - `http`: the bounded HTTP client with retries, and `GET url` for a
//!   broker's public key.
//! - `tpm`: TPM 2.0 quotes for attestation.
//! - `release`: asking a broker for a model key after local identities miss.

mod access;
mod http;
mod release;
mod slot;
mod tpm;
mod wire;

pub use access::{BrokerAccess, ENV_BROKERS, ENV_BROKER_CA, ENV_BROKER_TOKEN};
pub(crate) use release::release_after_miss;
pub use slot::{is_loopback, BrokerKek, BrokerRecipient, BrokerUrl};
pub use tpm::{TpmQuoter, DEFAULT_TPM_PCRS, ENV_TPM_AK, ENV_TPM_PCRS, ENV_TPM_TCTI};
pub use wire::{
    attestation_nonce, release_info, ErrorAnswer, PublicKeyAnswer, ReleaseAnswer, ReleaseRequest,
};

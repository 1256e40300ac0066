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

use crate::error::Error;
use crate::keys::Slot;
pub use access::{BrokerAccess, ENV_BROKERS, ENV_BROKER_CA, ENV_BROKER_TOKEN};
pub use slot::{is_loopback, BrokerKek, BrokerRecipient, BrokerUrl};
pub use tpm::{TpmQuoter, DEFAULT_TPM_PCRS, ENV_TPM_AK, ENV_TPM_PCRS, ENV_TPM_TCTI};

/// The broker URLs of a file's `broker` slots, in file order (unparsable
/// ones skipped: they name no broker a loader could ask).
fn broker_urls(slots: &[Slot]) -> impl Iterator<Item = BrokerUrl> + '_ {
    slots.iter().filter_map(|s| match s {
        Slot::Broker { url, .. } => BrokerUrl::parse(url).ok(),
        _ => None,
    })
}

/// No local identity opened the file and no key source answered: when a
/// broker could have opened it, say so and how to allow it, else keep the
/// miss as it is.
pub(crate) fn explain_miss(miss: Error, slots: &[Slot]) -> Error {
    let urls: Vec<BrokerUrl> = broker_urls(slots).collect();
    let Some(first) = urls.first() else {
        return miss;
    };
    let hosts: Vec<String> = urls
        .iter()
        .map(|u| access::HostEntry::for_url(u).to_string())
        .collect();
    Error::BrokerUnavailable {
        broker: first.authority(),
        reason: format!(
            "no local identity opens the file and this loader's configuration allows none of its brokers ({}); add it to {ENV_BROKERS} (HOST:PORT for a port other than the scheme's default) and set {ENV_BROKER_TOKEN} if you trust it, or pass an identity (-i FILE)",
            hosts.join(", ")
        ),
    }
}

pub use wire::{
    attestation_nonce, release_info, ErrorAnswer, PublicKeyAnswer, ReleaseAnswer, ReleaseRequest,
};

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

//!
//! `http`, `tpm` and `release` are the broker client: built with the
//! `broker-client` feature (default). Without it the rest still parses
//! broker slots, `broker:` recipients and the broker configuration, and a
//! file only a broker can open fails with `BrokerClientMissing`.

mod access;
#[cfg(feature = "broker-client")]
mod http;
#[cfg(feature = "broker-client")]
mod release;
mod slot;
#[cfg(feature = "broker-client")]
mod tpm;
mod wire;

use crate::error::{printable, Error};
use crate::keys::Slot;
#[cfg(not(feature = "broker-client"))]
use crate::keys::{KeyRequest, KeySource, ModelKey};
pub use access::{
    forget_released_keys, BrokerAccess, ENV_BROKERS, ENV_BROKER_CA, ENV_BROKER_TOKEN,
};
pub use slot::{is_loopback, BrokerKek, BrokerPublicKey, BrokerRecipient, BrokerUrl};
#[cfg(feature = "broker-client")]
pub use tpm::{TpmError, TpmQuoter, DEFAULT_TPM_PCRS, ENV_TPM_AK, ENV_TPM_PCRS, ENV_TPM_TCTI};

/// The broker URLs of a file's `broker` slots, in file order (unparsable
/// ones skipped: they name no broker a loader could ask).
fn broker_urls(slots: &[Slot]) -> impl Iterator<Item = BrokerUrl> + '_ {
    slots
        .iter()
        .filter_map(|s| s.broker().and_then(|(url, _)| BrokerUrl::parse(url).ok()))
}

/// No local identity opened the file and no key source answered: when a
/// broker could have opened it, say so and how to allow it, else keep the
/// miss as it is.
pub(crate) fn explain_miss(miss: Error, slots: &[Slot]) -> Error {
    let urls: Vec<BrokerUrl> = broker_urls(slots).collect();
    let Some(first) = urls.first() else {
        return miss;
    };
    if cfg!(not(feature = "broker-client")) {
        return Error::BrokerClientMissing {
            broker: printable(&first.authority(), 256),
            task: "opening this file",
            fix: "give an identity that opens it",
        };
    }
    let hosts: Vec<String> = urls
        .iter()
        .map(|u| printable(&access::HostEntry::for_url(u).to_string(), 256))
        .collect();
    Error::BrokerUnavailable {
        broker: printable(&first.authority(), 256),
        reason: format!(
            "no local identity opens the file and this loader's configuration allows none of its brokers ({}); add it to {ENV_BROKERS} (HOST:PORT for a port other than the scheme's default) and set {ENV_BROKER_TOKEN} if you trust it, or give an identity that opens the file",
            hosts.join(", ")
        ),
    }
}

pub use wire::{
    attestation_nonce, release_info, ErrorAnswer, PublicKeyAnswer, ReleaseAnswer, ReleaseRequest,
};

/// Without the broker client a broker configuration opens nothing: the
/// reader's miss becomes `BrokerClientMissing` (see [`explain_miss`]).
#[cfg(not(feature = "broker-client"))]
impl KeySource for BrokerAccess {
    fn model_key(&self, _req: &KeyRequest<'_>) -> Option<crate::error::Result<ModelKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ModelKey, Recipient, X25519Identity};

    #[test]
    fn a_miss_on_a_file_a_broker_could_open_says_what_is_missing() {
        let kek = BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap();
        let r = BrokerRecipient::new("https://b.example/keys/k1", kek.public_key()).unwrap();
        let slot = r.wrap(&ModelKey::generate().unwrap()).unwrap();
        let miss = || Error::NoMatchingKey {
            given: 0,
            slots: "broker https://b.example/keys/k1".into(),
        };
        let e = explain_miss(miss(), std::slice::from_ref(&slot));
        if cfg!(feature = "broker-client") {
            assert!(
                matches!(&e, Error::BrokerUnavailable { reason, .. } if reason.contains(ENV_BROKERS)),
                "{e}"
            );
        } else {
            assert!(
                matches!(&e, Error::BrokerClientMissing { broker, .. } if broker == "b.example"),
                "{e}"
            );
            assert!(e.to_string().contains("`broker-client` feature"), "{e}");
            assert_eq!(e.class(), crate::ErrorClass::NoKey);
        }
        // Without a broker slot the miss stands.
        assert!(matches!(
            explain_miss(miss(), &[]),
            Error::NoMatchingKey { .. }
        ));
    }

    #[cfg(not(feature = "broker-client"))]
    #[test]
    fn without_the_client_only_a_broker_named_with_its_key_seals() {
        let pk = X25519Identity::generate().unwrap().recipient();
        let named: BrokerRecipient = "broker:https://b.example/keys/k1".parse().unwrap();
        let e = named.resolve().unwrap_err();
        assert!(matches!(e, Error::BrokerClientMissing { .. }), "{e}");
        let given: BrokerRecipient = format!("broker:https://b.example/keys/k1#{pk}")
            .parse()
            .unwrap();
        assert_eq!(given.resolve().unwrap(), pk.into());
    }
}

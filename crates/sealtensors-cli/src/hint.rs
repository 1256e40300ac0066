//! What to do next, in this tool's own words: the flag or command that fixes
//! a library error. The library's messages stay face-neutral (they are what
//! Python users read too); the hint is appended here, chosen from the typed
//! error, never from its text.

use sealtensors::Error;

/// The CLI's hint for an error, if it has one.
pub fn hint(e: &Error) -> Option<&'static str> {
    Some(match e.kind() {
        Error::NoSuchTensor(_) => "list the tensors with `sealtensors inspect FILE`",
        Error::PolicyInvalid { .. } => "check the policy with `sealtensors policy test FILE`",
        Error::PolicyDenied { .. } => {
            "see what the policy checks with `sealtensors policy test FILE`"
        }
        Error::Licence(_) => "pass the claims with --licence FILE",
        Error::UntrustedSigner { .. } => "add a signer with --trust KEY",
        Error::ResignUnverified { .. } => "pass the current signer's public key with --trust KEY",
        Error::NoMatchingKey { .. } => "pass an identity with -i FILE",
        Error::OutOfMemory { .. } => "`sealtensors inspect FILE` shows the header's sizes",
        Error::OutputExists(_) => "pass --force to replace it",
        _ => return None,
    })
}

/// The message the user reads: the library's, then the hint.
pub fn message(e: &Error) -> String {
    match hint(e) {
        Some(h) => format!("{e}; {h}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_innermost_error() {
        let e = Error::InFile {
            path: "m.safetensors".into(),
            source: Box::new(Error::NoMatchingKey {
                given: 0,
                slots: "x25519".into(),
            }),
        };
        let m = message(&e);
        assert!(m.starts_with("m.safetensors: no key slot matches"), "{m}");
        assert!(m.ends_with("; pass an identity with -i FILE"), "{m}");
    }

    #[test]
    fn errors_without_a_cli_remedy_are_left_alone() {
        let e = Error::BadSignature;
        assert_eq!(message(&e), e.to_string());
    }
}

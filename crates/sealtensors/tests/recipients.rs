//! Parsing a recipient never touches the network (issue 16): every kind that
//! `load_recipient` and the `FromStr` impls accept is parsed while a loopback
//! listener stands where a broker URL points, and the listener must see no
//! connection. Fetching a broker's key is the explicit `resolve` step that
//! sealing takes.

use std::io::ErrorKind;
#[cfg(feature = "broker-client")]
use std::io::{Read, Write};
use std::net::TcpListener;

use sealtensors::keys::{
    load_recipient, BrokerRecipient, KeyFile, Recipient, SymmetricKey, X25519Identity,
    X25519Recipient,
};

/// A listener that records connections instead of serving them.
fn idle_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Whether anything connected: a connect completes in the kernel before
/// `accept`, so one made while parsing is waiting in the backlog by now.
fn was_contacted(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn parsing_any_recipient_makes_no_network_request() {
    let (listener, port) = idle_listener();
    let dir = tempfile::tempdir().unwrap();
    let id = X25519Identity::generate().unwrap();
    let pk = id.recipient();
    let files = [
        ("pub.jwk", KeyFile::X25519Recipient(pk)),
        ("id.jwk", KeyFile::X25519Identity(id)),
        (
            "oct.jwk",
            KeyFile::Symmetric(SymmetricKey::generate(Some("k1".into())).unwrap()),
        ),
    ];
    let mut specs = vec![
        pk.to_string(),
        format!("broker:http://127.0.0.1:{port}/keys/k1"),
        format!("http://127.0.0.1:{port}/keys/k1"),
        format!("http://localhost:{port}/v1/keys/k1"),
        format!("broker:http://127.0.0.1:{port}/keys/k1#{pk}"),
        format!("http://127.0.0.1:{port}/keys/k1#{pk}"),
        // Nothing listens there: parsing still succeeds.
        "https://keys.invalid/keys/k1".to_string(),
        "broker:https://[::1]:1/keys/k1".to_string(),
    ];
    for (name, k) in &files {
        let p = dir.path().join(name);
        k.save(&p, false).unwrap();
        specs.push(p.to_str().unwrap().to_string());
    }
    for s in &specs {
        let r = load_recipient(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(!r.describe().is_empty());
    }
    for s in &specs[1..8] {
        let r: BrokerRecipient = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(r.public_key().is_some(), s.contains('#'), "{s}");
        // Unresolved, it shows the URL alone and refuses to wrap.
        if !s.contains('#') {
            assert!(!r.to_string().contains('#'));
            let mk = sealtensors::keys::ModelKey::generate().unwrap();
            let e = r.wrap(&mk).unwrap_err();
            assert!(e.to_string().contains("resolve"), "{e}");
        }
    }
    let _: X25519Recipient = specs[0].parse().unwrap();
    assert!(
        !was_contacted(&listener),
        "parsing a recipient connected to the broker"
    );
}

/// A one-shot `GET` server answering with the broker's public key.
#[cfg(feature = "broker-client")]
/// Served until `stop` is set; returns how many requests it answered.
fn key_server(
    pk: X25519Recipient,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::thread::JoinHandle<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let mut served = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let (mut s, _) = match l.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            s.set_nonblocking(false).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            assert!(buf.starts_with(b"GET /keys/k1 "), "{buf:?}");
            let body = format!(r#"{{"kid":"k1","public_key":"{pk}"}}"#);
            write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            served += 1;
        }
        served
    });
    (port, h)
}

#[cfg(feature = "broker-client")]
#[test]
fn sealing_fetches_the_broker_key_once_and_only_then() {
    use sealtensors::{SealOptions, Sealer};
    let kek = X25519Identity::generate().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, server) = key_server(kek.recipient(), stop.clone());
    let spec = format!("http://127.0.0.1:{port}/keys/k1");
    let r: BrokerRecipient = spec.parse().unwrap();
    assert_eq!(r.public_key(), None);
    // Parsed through the generic path too; the Sealer resolves it.
    let boxed = load_recipient(&spec).unwrap();
    Sealer::new(SealOptions {
        recipients: vec![boxed],
        ..Default::default()
    })
    .unwrap();
    // The explicit step, once: a second resolve uses the key it kept.
    assert_eq!(r.resolve().unwrap(), kek.recipient().into());
    assert_eq!(r.resolve().unwrap(), kek.recipient().into());
    assert_eq!(r.to_string(), format!("broker:{spec}#{}", kek.recipient()));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(server.join().unwrap(), 2, "one GET per recipient resolved");
}

//! The loader's side of a key release (SPEC §6.6) against a fake broker that
//! misbehaves on purpose: answers for another key, for another request,
//! oversized, redirected, transiently failing, refusing. The real broker is
//! tested in crates/sealtensors-broker.
#![cfg(feature = "broker-client")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::Fixture;
use sealtensors::hpke;
use sealtensors::keys::{
    release_info, BrokerAccess, BrokerRecipient, ModelKey, ReleaseAnswer, ReleaseRequest,
    X25519Identity,
};
use sealtensors::{Error, ErrorClass, OpenOptions, SealedFile};

type Handler = dyn Fn(usize, &ReleaseRequest) -> (u16, Vec<u8>) + Send + Sync;

/// The `Authorization` header of every request each fake broker saw, by port.
static AUTHORIZATION: Mutex<Vec<(u16, String)>> = Mutex::new(Vec::new());

fn authorizations(port: u16) -> Vec<String> {
    let seen = AUTHORIZATION.lock().unwrap();
    seen.iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, a)| a.clone())
        .collect()
}

/// A one-thread HTTP server answering `n` requests with `handler`; returns
/// its port and the requests it saw.
fn fake_broker(n: usize, handler: Arc<Handler>) -> (u16, Arc<Mutex<Vec<ReleaseRequest>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // A port can be reused by a later test: forget what an earlier one saw.
    AUTHORIZATION.lock().unwrap().retain(|(p, _)| *p != port);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for i in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body_at = loop {
                let k = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..k]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..body_at]).to_string();
            if let Some(a) = head.lines().find_map(|l| l.strip_prefix("authorization: ")) {
                AUTHORIZATION.lock().unwrap().push((port, a.to_string()));
            }
            let head = head.to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < body_at + len {
                let k = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..k]);
            }
            let req: ReleaseRequest = serde_json::from_slice(&buf[body_at..]).unwrap();
            let (status, body) = handler(i, &req);
            seen2.lock().unwrap().push(req);
            let extra = if status == 302 {
                "location: http://127.0.0.1:1/elsewhere\r\n"
            } else {
                ""
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (port, seen)
}

struct Case {
    fx: Fixture,
    mk: ModelKey,
    mk_id: [u8; 16],
    file_id: [u8; 32],
    path: std::path::PathBuf,
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// A file sealed only to a broker at 127.0.0.1:`port`, with a known model key.
fn case(port: u16) -> Case {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let broker = X25519Identity::generate().unwrap();
    let url = format!("http://127.0.0.1:{port}/keys/k1");
    let r = BrokerRecipient::new(&url, broker.recipient()).unwrap();
    let mk2 = mk.clone();
    let path = fx.seal("b.safetensors", move |o| {
        o.recipients = vec![Box::new(r)];
        o.model_key = Some(mk2);
    });
    let (_, h) = sealtensors::read_header(&path).unwrap();
    let meta = sealtensors::seal::parse(&h).unwrap();
    Case {
        mk_id: mk.id().unwrap(),
        file_id: meta.file_id,
        fx,
        mk,
        path,
    }
}

/// The honest answer: `key` sealed to the request's ek with the right info/aad.
fn answer(key: &[u8; 32], file_id: &[u8; 32], mk_id: &[u8; 16], req: &ReleaseRequest) -> Vec<u8> {
    let ek: [u8; 32] = unb64(&req.ek).try_into().unwrap();
    let (enc, ct) =
        hpke::seal(&ek, &release_info(file_id, mk_id), &unb64(&req.nonce), key).unwrap();
    serde_json::to_vec(&ReleaseAnswer {
        enc: URL_SAFE_NO_PAD.encode(enc),
        ct: URL_SAFE_NO_PAD.encode(ct),
        ttl: 0,
    })
    .unwrap()
}

fn open(c: &Case, port: u16) -> sealtensors::Result<SealedFile> {
    let access = BrokerAccess::new([format!("127.0.0.1:{port}")], Some("stl_t".into()))
        .with_machine_id("m1");
    SealedFile::open(
        &c.path,
        &OpenOptions {
            trusted: vec![c.fx.signer.verifying_key()],
            broker: Some(access),
            ..Default::default()
        },
    )
}

/// What the fake broker knows of the file it serves.
#[derive(Clone)]
struct Served {
    mk: ModelKey,
    mk_id: [u8; 16],
    file_id: [u8; 32],
}

/// Start a fake broker whose handler knows the file's key and ids.
fn serve(
    n: usize,
    make: impl Fn(&Served, usize, &ReleaseRequest) -> (u16, Vec<u8>) + Send + Sync + 'static,
) -> (Case, u16, Arc<Mutex<Vec<ReleaseRequest>>>) {
    // The file is sealed once the port is known; the handler reads it then.
    let served: Arc<Mutex<Option<Served>>> = Arc::default();
    let s2 = served.clone();
    let (port, seen) = fake_broker(
        n,
        Arc::new(move |i, req| {
            let s = s2.lock().unwrap().clone().unwrap();
            make(&s, i, req)
        }),
    );
    let c = case(port);
    *served.lock().unwrap() = Some(Served {
        mk: c.mk.clone(),
        mk_id: c.mk_id,
        file_id: c.file_id,
    });
    (c, port, seen)
}

fn unavailable(e: &Error) -> String {
    match e.kind() {
        Error::BrokerUnavailable { reason, .. } => reason.clone(),
        other => panic!("expected BrokerUnavailable, got {other:?}"),
    }
}

#[test]
fn an_honest_answer_opens_the_file_and_the_request_is_well_formed() {
    let (c, port, seen) = serve(1, |c, _, req| {
        (200, answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, req))
    });
    let f = open(&c, port).unwrap();
    let t = &c.fx.model.tensors[0];
    assert_eq!(f.read_tensor(&t.0).unwrap(), t.3);
    let req = &seen.lock().unwrap()[0];
    assert_eq!(req.machine_id, "m1");
    assert_eq!(unb64(&req.nonce).len(), 16);
    // The header sent is the file's (re-serialised with the same meaning).
    let (_, h) = sealtensors::read_header(&c.path).unwrap();
    let sent = unb64(&req.header);
    let n = sealtensors::format::Header::parse_len(&sent[..8]).unwrap() as usize;
    let parsed = sealtensors::format::Header::parse_json(&sent[8..8 + n]).unwrap();
    assert_eq!(
        sealtensors::seal::signed_message(&parsed),
        sealtensors::seal::signed_message(&h)
    );
}

#[test]
fn a_key_for_another_model_is_rejected() {
    let (c, port, _) = serve(1, |c, _, req| {
        (200, answer(&[7u8; 32], &c.file_id, &c.mk_id, req))
    });
    let e = open(&c, port).err().unwrap();
    assert!(unavailable(&e).contains("not this file's model key"), "{e}");
}

#[test]
fn an_answer_bound_to_another_request_or_file_does_not_open() {
    let (c, port, _) = serve(1, |c, _, req| {
        let mut other = req.clone();
        other.nonce = URL_SAFE_NO_PAD.encode([9u8; 16]);
        (
            200,
            answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, &other),
        )
    });
    let e = open(&c, port).err().unwrap();
    assert!(unavailable(&e).contains("does not open"), "{e}");
    let (c, port, _) = serve(1, |c, _, req| {
        (200, answer(c.mk.expose_secret(), &[0u8; 32], &c.mk_id, req))
    });
    let e = open(&c, port).err().unwrap();
    assert!(unavailable(&e).contains("does not open"), "{e}");
}

#[test]
fn an_oversized_or_malformed_answer_is_refused() {
    let (c, port, _) = serve(1, |_, _, _| (200, vec![b' '; 200 * 1024]));
    let e = open(&c, port).err().unwrap();
    assert!(unavailable(&e).contains("reading the answer"), "{e}");
    let (c, port, _) = serve(1, |_, _, _| (200, b"{\"enc\":1}".to_vec()));
    let e = open(&c, port).err().unwrap();
    assert!(unavailable(&e).contains("malformed answer"), "{e}");
}

#[test]
fn transient_failures_are_retried_with_fresh_nonces() {
    let (c, port, seen) = serve(3, |c, i, req| {
        if i < 2 {
            (503, b"{}".to_vec())
        } else {
            (200, answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, req))
        }
    });
    open(&c, port).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].nonce != seen[1].nonce && seen[1].nonce != seen[2].nonce);
    assert!(seen[0].ek != seen[1].ek);
}

#[test]
fn a_refusal_is_final_and_redirects_are_not_followed() {
    let (c, port, seen) = serve(1, |_, _, _| {
        (
            403,
            br#"{"error":"licence_revoked","reason":"licence L was revoked at 5\u001b[2J"}"#
                .to_vec(),
        )
    });
    let e = open(&c, port).err().unwrap();
    assert_eq!(e.class(), ErrorClass::PolicyDenied);
    assert!(e.to_string().contains("licence L was revoked at 5"), "{e}");
    // A broker's text never reaches the terminal with its escapes.
    assert!(!e.to_string().contains('\u{1b}'), "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (c, port, seen) = serve(1, |_, _, _| (302, b"{}".to_vec()));
    let e = open(&c, port).err().unwrap();
    assert!(
        matches!(e.kind(), Error::BrokerDenied { status: 302, .. }),
        "{e}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_token_reaches_only_the_broker_it_is_written_for() {
    let open_with = |c: &Case, hosts: Vec<String>, tokens: &str| {
        SealedFile::open(
            &c.path,
            &OpenOptions {
                trusted: vec![c.fx.signer.verifying_key()],
                broker: Some(BrokerAccess::new(hosts, Some(tokens.into())).with_machine_id("m1")),
                ..Default::default()
            },
        )
    };
    // Two allowed brokers and one bare token: no request at all.
    let (c, port, seen) = serve(1, |c, _, req| {
        (200, answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, req))
    });
    let hosts = vec![
        format!("127.0.0.1:{port}"),
        "keys.other.example".to_string(),
    ];
    let e = open_with(&c, hosts.clone(), "stl_mine").err().unwrap();
    assert!(
        unavailable(&e).contains(&format!("127.0.0.1:{port}=TOKEN")),
        "{e}"
    );
    assert!(seen.lock().unwrap().is_empty());
    assert!(authorizations(port).is_empty());
    // Tokens written per host: this broker gets its own, and only that.
    let tokens = format!("keys.other.example=stl_theirs,127.0.0.1:{port}=stl_mine");
    open_with(&c, hosts, &tokens).unwrap();
    assert_eq!(authorizations(port), ["Bearer stl_mine"]);
}

#[test]
fn a_host_allowed_without_a_port_gets_no_token_on_another_port() {
    // Issue 15: `SEALTENSORS_BROKERS=127.0.0.1` let a file naming
    // http://127.0.0.1:<any port> collect the real token over loopback HTTP
    // from whoever listened there. A host without a port is its scheme's
    // default port only.
    for (hosts, tokens) in [
        (vec!["127.0.0.1".to_string()], "stl_secret".to_string()),
        (
            vec!["127.0.0.1".to_string()],
            "127.0.0.1=stl_secret".to_string(),
        ),
        (
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            "127.0.0.1=stl_secret".to_string(),
        ),
    ] {
        let (c, port, seen) = serve(1, |c, _, req| {
            (200, answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, req))
        });
        let access = BrokerAccess::new(hosts, Some(tokens)).with_machine_id("m1");
        let e = SealedFile::open(
            &c.path,
            &OpenOptions {
                trusted: vec![c.fx.signer.verifying_key()],
                broker: Some(access),
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        let why = unavailable(&e);
        assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
        assert!(!format!("{e} {e:?}").contains("stl_secret"), "{e:?}");
        assert!(seen.lock().unwrap().is_empty());
        assert!(authorizations(port).is_empty());
    }
    // A token written for the host alone is not sent to another port even
    // when that port is allowed: the port must be named with the token too.
    let (c, port, seen) = serve(1, |c, _, req| {
        (200, answer(c.mk.expose_secret(), &c.file_id, &c.mk_id, req))
    });
    let access = BrokerAccess::new(
        [format!("127.0.0.1:{port}"), "keys.example.com".into()],
        Some("127.0.0.1=stl_secret".into()),
    )
    .with_machine_id("m1");
    let e = SealedFile::open(
        &c.path,
        &OpenOptions {
            broker: Some(access),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        unavailable(&e).contains(&format!("127.0.0.1:{port}=TOKEN")),
        "{e}"
    );
    assert!(seen.lock().unwrap().is_empty() && authorizations(port).is_empty());
}

#[test]
fn no_token_means_no_request() {
    let c = case(1);
    let access = BrokerAccess::new(["127.0.0.1:1"], None).with_machine_id("m1");
    let e = SealedFile::open(
        &c.path,
        &OpenOptions {
            broker: Some(access),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(unavailable(&e).contains("SEALTENSORS_BROKER_TOKEN"), "{e}");
}

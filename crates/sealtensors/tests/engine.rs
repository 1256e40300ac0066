//! The loading engine (`sealtensors::engine`, SPEC §8.6): pieces come out in
//! order, authenticated, from a pool that stays within its size, and every
//! slab that held plaintext is zeroed before reuse and before it is let go.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use sealtensors::engine::{self, Piece, Slab, SlabAlloc, Stream, VecAlloc};
use sealtensors::{Error, OpenOptions, SealedFile};

fn names(f: &SealedFile) -> Vec<String> {
    f.tensors().iter().map(|t| t.name.clone()).collect()
}

fn whole(files: &[Arc<SealedFile>], order: &[&str]) -> Vec<Piece> {
    let wanted: Vec<(usize, &str)> = order.iter().map(|n| (0, *n)).collect();
    engine::whole_tensors(files, &wanted).unwrap()
}

/// The file opened with the fixture's keys, and all its tensors in file order.
fn in_file_order(fx: &Fixture, p: &std::path::Path) -> (Vec<Arc<SealedFile>>, Vec<Piece>) {
    let f = Arc::new(fx.open(p).unwrap());
    let all = names(&f);
    let order: Vec<&str> = all.iter().map(String::as_str).collect();
    let files = vec![f];
    let pieces = whole(&files, &order);
    (files, pieces)
}

#[test]
fn pieces_come_out_in_the_order_asked_with_the_right_bytes() {
    let fx = Fixture::new();
    let sign_only = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    let files = [
        fx.open(&fx.seal("aes.safetensors", |_| {})).unwrap(),
        fx.open(&fx.seal("chacha.safetensors", |o| {
            o.cipher = sealtensors::Cipher::ChaCha20Poly1305
        }))
        .unwrap(),
        SealedFile::open(&sign_only, &trusting).unwrap(),
        SealedFile::open(&fx.plain, &OpenOptions::default()).unwrap(),
    ];
    for f in files {
        let all = names(&f);
        let mut order: Vec<&str> = all.iter().map(String::as_str).collect();
        order.reverse();
        order.push("ids"); // twice
        let files = vec![Arc::new(f)];
        let pieces = whole(&files, &order);
        let got: Vec<(String, Vec<u8>)> = Stream::start(files, pieces, VecAlloc, None)
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.piece().tensor.clone(), x.bytes().to_vec())
            })
            .collect();
        assert_eq!(got.len(), order.len());
        for ((n, b), want) in got.iter().zip(&order) {
            assert_eq!(n, want);
            assert_eq!(b.as_slice(), fx.model.data(n), "{n}");
        }
    }
}

#[test]
fn ranges_and_blocks_read_what_read_range_reads() {
    let fx = Fixture::new();
    let f = Arc::new(fx.open(&fx.seal("aes.safetensors", |_| {})).unwrap());
    let files = vec![Arc::clone(&f)];
    // Rows 3..17 of a 64x300 F32 tensor: inside chunks, across chunk edges.
    let row = 300 * 4;
    let pieces = vec![Piece {
        file: 0,
        tensor: "embed.weight".into(),
        start: 3 * row,
        end: 17 * row,
    }];
    let got: Vec<Vec<u8>> = Stream::start(files.clone(), pieces, VecAlloc, None)
        .unwrap()
        .map(|x| x.unwrap().bytes().to_vec())
        .collect();
    assert_eq!(
        got,
        vec![fx.model.data("embed.weight")[3 * row..17 * row].to_vec()]
    );

    // Blocks: every tensor in order, cut on chunk edges, an empty tensor once.
    let blocks = engine::blocks(&files, 0, 10_000).unwrap();
    assert!(blocks
        .iter()
        .all(|p| p.len() <= 8192 && p.start % 4096 == 0));
    assert_eq!(blocks.iter().filter(|p| p.tensor == "empty").count(), 1);
    let mut joined: Vec<(String, Vec<u8>)> = Vec::new();
    for x in Stream::start(files, blocks, VecAlloc, Some(3 * 8192)).unwrap() {
        let x = x.unwrap();
        match joined.last_mut() {
            Some((n, b)) if *n == x.piece().tensor => b.extend_from_slice(x.bytes()),
            _ => joined.push((x.piece().tensor.clone(), x.bytes().to_vec())),
        }
    }
    for (n, b) in &joined {
        assert_eq!(b.as_slice(), fx.model.data(n), "{n}");
    }
    assert_eq!(joined.len(), f.tensors().len());

    let bad = vec![Piece {
        file: 0,
        tensor: "ids".into(),
        start: 0,
        end: 25,
    }];
    let e = Stream::start(vec![f.clone()], bad, VecAlloc, None)
        .err()
        .unwrap();
    assert!(matches!(e.kind(), Error::RangeOutOfBounds { .. }), "{e:?}");
    let e = engine::whole_tensors(&[f], &[(0, "nope")]).unwrap_err();
    assert!(format!("{e}").contains("nope"), "{e}");
}

/// Slabs whose bytes the test can still see after the engine let them go.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Shared>>>);

type Shared = Arc<Mutex<Vec<u8>>>;

struct SeenSlab(Shared);

impl Slab for SeenSlab {
    fn capacity(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn with_bytes(
        &mut self,
        len: usize,
        f: &mut (dyn FnMut(&mut [u8]) -> sealtensors::Result<()> + Send),
    ) -> sealtensors::Result<()> {
        f(&mut self.0.lock().unwrap()[..len])
    }
}

impl SlabAlloc for Seen {
    type Slab = SeenSlab;
    fn alloc(&mut self, len: usize) -> sealtensors::Result<SeenSlab> {
        let s = Arc::new(Mutex::new(vec![0u8; len]));
        self.0.lock().unwrap().push(Arc::clone(&s));
        Ok(SeenSlab(s))
    }
}

impl Seen {
    fn all_zero(&self) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.lock().unwrap().iter().all(|&b| b == 0))
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A model of many same-size tensors, sealed with 4 KiB chunks.
fn many(fx: &Fixture, n: usize, len: usize) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let data: Vec<Vec<u8>> = (0..n).map(|i| bytes(100 + i as u64, len)).collect();
    let refs: Vec<sealtensors::TensorRef<'_>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| sealtensors::TensorRef {
            name: format!("t{i:03}"),
            dtype: sealtensors::Dtype::U8,
            shape: vec![len as u64],
            data: d,
        })
        .collect();
    let plain = fx.path("many-plain.safetensors");
    sealtensors::write_plain(&plain, &refs, None, true).unwrap();
    let out = fx.path("many.safetensors");
    sealtensors::Sealer::new(sealtensors::SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        signing_key: Some(fx.signer.try_clone().unwrap()),
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap()
    .seal_file(&plain, &out)
    .unwrap();
    (out, data)
}

#[test]
fn the_pool_stays_within_its_size_reuses_slabs_and_zeroes_them() {
    let fx = Fixture::new();
    let (p, data) = many(&fx, 64, 10_000);
    let (files, pieces) = in_file_order(&fx, &p);
    let seen = Seen::default();
    let budget = 4 * 10_000;
    let mut stream = Stream::start(files, pieces, seen.clone(), Some(budget)).unwrap();
    let mut n = 0;
    for x in stream.by_ref() {
        let x = x.unwrap();
        let s = x.slab().unwrap();
        let got = s.0.lock().unwrap()[..x.piece().len()].to_vec();
        assert_eq!(got, data[n]);
        n += 1;
    }
    assert_eq!(n, 64);
    let st = stream.stats();
    assert!(st.peak <= budget, "{st:?}");
    assert!(seen.count() <= 4, "{} slabs for a pool of 4", seen.count());
    assert!(st.reused >= 60, "{st:?}");
    drop(stream);
    assert!(
        seen.all_zero(),
        "a slab still holds plaintext after the stream ended"
    );
}

#[test]
fn a_piece_larger_than_the_pool_is_read_alone() {
    let fx = Fixture::new();
    let f = Arc::new(fx.open(&fx.seal("aes.safetensors", |_| {})).unwrap());
    let files = vec![f];
    let pieces = whole(&files, &["ids", "embed.weight", "mask"]);
    let stream = Stream::start(files, pieces, VecAlloc, Some(1000)).unwrap();
    let got: Vec<Vec<u8>> = stream.map(|x| x.unwrap().bytes().to_vec()).collect();
    assert_eq!(got[1], fx.model.data("embed.weight"));
    assert_eq!(got[2], fx.model.data("mask"));
}

#[test]
fn kept_slabs_leave_the_pool_with_their_bytes() {
    let fx = Fixture::new();
    let (p, data) = many(&fx, 16, 5_000);
    let (files, pieces) = in_file_order(&fx, &p);
    let seen = Seen::default();
    let mut stream = Stream::start(files, pieces, seen.clone(), Some(3 * 5_000)).unwrap();
    // Keep every slab: the pool must not wait for them (nor wipe them).
    let kept: Vec<SeenSlab> = stream
        .by_ref()
        .map(|x| x.unwrap().keep().unwrap())
        .collect();
    assert_eq!(stream.stats().kept, 16);
    drop(stream);
    for (k, want) in kept.iter().zip(&data) {
        assert_eq!(&k.0.lock().unwrap()[..5_000], want.as_slice());
    }
}

#[test]
fn a_tampered_chunk_ends_the_stream_before_its_tensor_is_handed_out() {
    let fx = Fixture::new();
    let (p, _) = many(&fx, 32, 10_000);
    let raw = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let h = sealtensors::format::Header::parse_json(&raw[8..8 + n]).unwrap();
    let t = h.tensors.iter().find(|t| t.name == "t020").unwrap();
    let mut bad = raw.clone();
    bad[h.data_start() as usize + t.begin + 4096 + 5] ^= 0x40;
    let q = fx.path("bad.safetensors");
    std::fs::write(&q, &bad).unwrap();
    let (files, pieces) = in_file_order(&fx, &q);
    let seen = Seen::default();
    let mut handed = Vec::new();
    let mut err = None;
    for x in Stream::start(files, pieces, seen.clone(), Some(2 * 10_000)).unwrap() {
        match x {
            Ok(x) => handed.push(x.piece().tensor.clone()),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the stream must fail");
    assert!(
        matches!(e.kind(), Error::ChunkAuthFailed { name, chunk: 1 } if name == "t020"),
        "{e:?}"
    );
    assert!(!handed.iter().any(|n| n.as_str() >= "t020"), "{handed:?}");
    // Give the producer a moment to finish; then nothing holds plaintext.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(seen.all_zero());
}

#[test]
fn dropping_the_stream_early_stops_it_and_zeroes_the_pool() {
    let fx = Fixture::new();
    let (p, data) = many(&fx, 64, 10_000);
    let (files, pieces) = in_file_order(&fx, &p);
    let seen = Seen::default();
    let mut stream = Stream::start(files, pieces, seen.clone(), Some(4 * 10_000)).unwrap();
    let first = stream.next().unwrap().unwrap();
    assert_eq!(
        first.slab().unwrap().0.lock().unwrap()[..10_000],
        data[0][..]
    );
    drop(first);
    drop(stream);
    // The producer notices at its next take; bounded wait.
    for _ in 0..200 {
        if seen.all_zero() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("slabs still hold plaintext after the stream was dropped");
}

#[test]
fn a_locked_file_streams_nothing_encrypted() {
    let fx = Fixture::new();
    let p = fx.seal("aes.safetensors", |_| {});
    let locked = SealedFile::open(
        &p,
        &OpenOptions {
            locked: true,
            ..Default::default()
        },
    )
    .unwrap();
    let files = vec![Arc::new(locked)];
    let pieces = whole(&files, &["embed.weight"]);
    let mut s = Stream::start(files, pieces, VecAlloc, None).unwrap();
    let e = s.next().unwrap().err().unwrap();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    assert!(s.next().is_none());
}

#[test]
fn empty_tensors_take_no_slab_and_are_still_checked_in_order() {
    let fx = Fixture::new();
    let f = Arc::new(fx.open(&fx.seal("aes.safetensors", |_| {})).unwrap());
    let files = vec![f];
    let mut order = vec!["empty"; 50];
    order.insert(25, "ids");
    let pieces = whole(&files, &order);
    let seen = Seen::default();
    let got: Vec<(String, usize)> = Stream::start(files.clone(), pieces, seen.clone(), Some(1))
        .unwrap()
        .map(|x| {
            let x = x.unwrap();
            (x.piece().tensor.clone(), x.piece().len())
        })
        .collect();
    assert_eq!(got.len(), 51);
    assert_eq!(got[25], ("ids".to_string(), 24));
    assert_eq!(
        seen.count(),
        1,
        "only the one non-empty tensor needs a slab"
    );
    // Only empty tensors: no slab at all.
    let pieces = whole(&files, &["empty", "empty"]);
    let seen = Seen::default();
    assert_eq!(
        Stream::start(files, pieces, seen.clone(), None)
            .unwrap()
            .count(),
        2
    );
    assert_eq!(seen.count(), 0);
}

/// A slab whose filling panics, as a buggy allocator's might.
struct Panicky;

impl Slab for Panicky {
    fn capacity(&self) -> usize {
        1 << 20
    }
    fn with_bytes(
        &mut self,
        _len: usize,
        _f: &mut (dyn FnMut(&mut [u8]) -> sealtensors::Result<()> + Send),
    ) -> sealtensors::Result<()> {
        panic!("slab failure (expected by the test)")
    }
}

struct PanickyAlloc;

impl SlabAlloc for PanickyAlloc {
    type Slab = Panicky;
    fn alloc(&mut self, _len: usize) -> sealtensors::Result<Panicky> {
        Ok(Panicky)
    }
}

#[test]
fn a_reader_that_dies_is_an_error_never_a_short_stream() {
    let fx = Fixture::new();
    let f = Arc::new(fx.open(&fx.seal("aes.safetensors", |_| {})).unwrap());
    let files = vec![f];
    let pieces = whole(&files, &["ids", "mask"]);
    let mut s = Stream::start(files, pieces, PanickyAlloc, None).unwrap();
    let e = s.next().unwrap().err().expect("an error, not an end");
    assert!(matches!(e.kind(), Error::ReaderStopped(_)), "{e:?}");
    assert!(s.next().is_none());
}

//! The floor of a sealed load on this machine (bench/run.py runs it).
//!
//! `floor prepare SEALED OUT CHUNK`: takes the data region of a sealed file
//! (everything after the 8-byte length and the JSON header), encrypts it with
//! AES-256-GCM under a fresh random key, chunk by chunk (`CHUNK` bytes, the
//! sealed file's own chunk size, a 12-byte counter nonce and an AAD the size of
//! sealtensors' chunk AAD), and writes the ciphertext to `OUT.bin` and the key,
//! chunk size and tags to `OUT.tags`. The floor therefore opens real tags:
//! every chunk must authenticate, and a failure aborts the run.
//!
//! `floor run OUT... [--no-thp]`: the measurement, in one fresh process. Maps a
//! fresh anonymous buffer for all the files given (the shards of a model;
//! asking for transparent huge pages unless `--no-thp`), then on all cores
//! (rayon), in one pass over every chunk of every file, preads each chunk into
//! its place and opens it in place with aws-lc-rs. Prints one JSON line: seconds from
//! before the open of the file to the last chunk authenticated, bytes, chunks,
//! threads, and a checksum of the plaintext computed after the clock stops.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rayon::prelude::*;

const TAG: usize = 16;
const HUGE: usize = 2 << 20;

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Same length as sealtensors' chunk AAD: a 20-byte label, a 32-byte file id
/// and the chunk index.
fn aad(i: u64) -> [u8; 60] {
    let mut a = [0u8; 60];
    a[..20].copy_from_slice(b"sealtensors/1 floor\0");
    a[52..].copy_from_slice(&i.to_be_bytes());
    a
}

fn die(msg: &str) -> ! {
    eprintln!("floor: {msg}");
    std::process::exit(2)
}

fn prepare(sealed: &str, out: &str, chunk: usize) {
    let mut f = File::open(sealed).unwrap_or_else(|e| die(&format!("{sealed}: {e}")));
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).unwrap();
    let header = u64::from_le_bytes(len8) as usize;
    let total = f.metadata().unwrap().len() as usize;
    let start = 8 + header;
    let mut data = vec![0u8; total - start];
    f.read_exact_at(&mut data, start as u64).unwrap();

    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).unwrap();
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let mut tags = Vec::with_capacity(data.len() / chunk * TAG + TAG);
    for (i, c) in data.chunks_mut(chunk).enumerate() {
        let t = k
            .seal_in_place_separate_tag(nonce(i as u64), Aad::from(aad(i as u64)), c)
            .unwrap();
        tags.extend_from_slice(t.as_ref());
    }
    File::create(format!("{out}.bin"))
        .unwrap()
        .write_all(&data)
        .unwrap();
    let mut t = File::create(format!("{out}.tags")).unwrap();
    t.write_all(&key).unwrap();
    t.write_all(&(chunk as u64).to_le_bytes()).unwrap();
    t.write_all(&tags).unwrap();
}

/// One prepared file: its key, chunk size and tags, and the ciphertext file.
struct Prepared {
    key: LessSafeKey,
    chunk: usize,
    tags: Vec<u8>,
    file: File,
    len: usize,
}

fn load_prepared(out: &str) -> Prepared {
    let mut meta = Vec::new();
    File::open(format!("{out}.tags"))
        .unwrap_or_else(|e| die(&format!("{out}.tags: {e}")))
        .read_to_end(&mut meta)
        .unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &meta[..32]).unwrap());
    let chunk = u64::from_le_bytes(meta[32..40].try_into().unwrap()) as usize;
    let file = File::open(format!("{out}.bin")).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    Prepared {
        key,
        chunk,
        tags: meta[40..].to_vec(),
        file,
        len,
    }
}

/// `outs`: one or more prepared files (the shards of a model), read into one
/// fresh buffer, every chunk of every file in one parallel pass.
fn run(outs: &[&str], thp: bool) {
    let t0 = Instant::now();
    let files: Vec<Prepared> = outs.iter().map(|o| load_prepared(o)).collect();
    let len: usize = files.iter().map(|p| p.len).sum();
    // (file, chunk index, offset in the buffer, length) of every chunk.
    let mut jobs = Vec::new();
    let mut pos = 0;
    for (fi, p) in files.iter().enumerate() {
        for (ci, start) in (0..p.len).step_by(p.chunk).enumerate() {
            let n = p.chunk.min(p.len - start);
            jobs.push((fi, ci, pos + start, n));
        }
        pos += p.len;
    }

    // Fresh memory: an anonymous mapping, 2 MiB aligned so huge pages can back it.
    let map_len = len + HUGE;
    // SAFETY: a private anonymous mapping with no address hint; checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        die("mmap failed");
    }
    let aligned = (base as usize + HUGE - 1) & !(HUGE - 1);
    if thp {
        // SAFETY: the range lies inside the mapping made above.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    // Each job writes only its own disjoint range of the mapping.
    let failures: usize = jobs
        .par_iter()
        .map(|&(fi, ci, at, n)| {
            // SAFETY: `at .. at + n` lies inside the mapping, and the jobs'
            // ranges are disjoint, so no two threads alias a byte.
            let c = unsafe { std::slice::from_raw_parts_mut((aligned + at) as *mut u8, n) };
            let p = &files[fi];
            p.file.read_exact_at(c, (ci * p.chunk) as u64).unwrap();
            let tag = &p.tags[ci * TAG..(ci + 1) * TAG];
            let ok = p
                .key
                .open_in_place_separate_tag(nonce(ci as u64), Aad::from(aad(ci as u64)), tag, c)
                .is_ok();
            usize::from(!ok)
        })
        .sum();
    let secs = t0.elapsed().as_secs_f64();
    if failures != 0 {
        die(&format!("{failures} chunks failed to authenticate"));
    }
    // SAFETY: the whole range is initialised now and no other reference exists.
    let buf = unsafe { std::slice::from_raw_parts(aligned as *const u8, len) };
    let checksum = buf
        .par_chunks(1 << 20)
        .map(|c| {
            c.chunks_exact(8).fold(0u64, |a, w| {
                a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()))
            })
        })
        .reduce(|| 0, u64::wrapping_add);
    println!(
        "{{\"seconds\": {secs:.6}, \"bytes\": {len}, \"files\": {}, \"chunks\": {}, \
         \"threads\": {}, \"thp\": {thp}, \"checksum\": {checksum}}}",
        files.len(),
        jobs.len(),
        rayon::current_num_threads()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("prepare") if args.len() == 5 => {
            let chunk = args[4].parse().unwrap_or_else(|_| die("bad chunk size"));
            prepare(&args[2], &args[3], chunk)
        }
        Some("run") if args.len() >= 3 => {
            let outs: Vec<&str> = args[2..]
                .iter()
                .map(String::as_str)
                .filter(|a| *a != "--no-thp")
                .collect();
            run(&outs, !args[2..].iter().any(|a| a == "--no-thp"))
        }
        _ => die("usage: floor prepare SEALED OUT CHUNK | floor run OUT... [--no-thp]"),
    }
}

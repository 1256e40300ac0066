//! The loading engine (SPEC §8.6): a pipelined reader that reads ahead,
//! authenticates and decrypts on all cores, and hands out pieces of tensors
//! in buffers ("slabs") from a bounded pool, reused once the consumer gives
//! them back.
//!
//! - **Order.** Pieces come out in the order asked for: whole tensors in the
//!   order a framework consumes them, or fixed-size blocks of every tensor
//!   (what `unseal` and `verify` stream).
//! - **Parallelism.** The producer thread takes slabs for as many upcoming
//!   pieces as the pool allows (up to a batch of [`BATCH_BYTES`]) and fills
//!   them in one parallel pass over all their chunks, so many small tensors
//!   keep every core busy and a large one is split into chunks.
//! - **Memory.** Slabs lent out (queued, or held by the consumer) plus idle
//!   ones never exceed the pool size, except that one piece larger than the
//!   whole pool is read alone. A slab the consumer keeps
//!   ([`Loaned::keep`]) leaves the pool and is the consumer's memory.
//! - **Zeroing.** Plaintext in a slab never outlives its piece: when the
//!   slab is reused, the part the next piece covers is overwritten by it
//!   (or zeroed, if that piece fails to authenticate) and the rest is
//!   zeroed first; when the pool lets a slab go (eviction, the end of the
//!   stream, an error), it is zeroed. What the consumer keeps is the
//!   consumer's to wipe.
//! - **Authenticity.** A piece is handed out only after every chunk under it
//!   was authenticated (its tag, or its digest for sign-only files). A
//!   failure ends the stream with that error; the batch's slabs are zeroed.
//!
//! The slab type is generic: `Vec<u8>` for Rust consumers, a NumPy array in
//! the Python bindings, page-locked memory for GPU uploads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rayon::prelude::*;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::read::SealedFile;

/// How many bytes of pieces the producer fills in one parallel pass at most.
pub const BATCH_BYTES: usize = 64 << 20;

/// Memory the engine can fill: a buffer of a fixed capacity.
pub trait Slab: Send + 'static {
    /// Its size in bytes.
    fn capacity(&self) -> usize;
    /// Run `f` over its first `len` bytes (`len <= capacity`).
    fn with_bytes(
        &mut self,
        len: usize,
        f: &mut (dyn FnMut(&mut [u8]) -> Result<()> + Send),
    ) -> Result<()>;
}

/// Makes new slabs.
pub trait SlabAlloc: Send + 'static {
    /// The slab type.
    type Slab: Slab;
    /// A slab of at least `len` bytes, zeroed.
    fn alloc(&mut self, len: usize) -> Result<Self::Slab>;
}

impl Slab for Vec<u8> {
    fn capacity(&self) -> usize {
        self.len()
    }
    fn with_bytes(
        &mut self,
        len: usize,
        f: &mut (dyn FnMut(&mut [u8]) -> Result<()> + Send),
    ) -> Result<()> {
        let n = self.len();
        let bytes = self.get_mut(..len).ok_or(Error::BufferSize {
            name: "slab".into(),
            expected: len,
            got: n,
        })?;
        f(bytes)
    }
}

/// Allocates `Vec<u8>` slabs (fallibly: `OutOfMemory`, never an abort).
#[derive(Debug, Default, Clone, Copy)]
pub struct VecAlloc;

impl SlabAlloc for VecAlloc {
    type Slab = Vec<u8>;
    fn alloc(&mut self, len: usize) -> Result<Vec<u8>> {
        crate::read::zeroed(len, "engine slab")
    }
}

/// Zero bytes `from..to` of a slab.
fn wipe<S: Slab>(slab: &mut S, from: usize, to: usize) {
    let to = to.min(slab.capacity());
    if from >= to {
        return;
    }
    // A slab that cannot be borrowed (its owner went away) holds nothing
    // the engine can reach any more; nothing else can fail here.
    let _ = slab.with_bytes(to, &mut |b| {
        if let Some(b) = b.get_mut(from..) {
            b.zeroize();
        }
        Ok(())
    });
}

/// One piece to read: bytes `start..end` of tensor `tensor` of file `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the stream's files.
    pub file: usize,
    /// The tensor's name.
    pub tensor: String,
    /// First byte (inclusive) within the tensor.
    pub start: usize,
    /// Last byte (exclusive) within the tensor.
    pub end: usize,
}

impl Piece {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The stream's file `i`, or `ApiMisuse`.
fn file_at(files: &[Arc<SealedFile>], i: usize) -> Result<&Arc<SealedFile>> {
    files
        .get(i)
        .ok_or_else(|| Error::ApiMisuse(format!("no file {i} in the stream")))
}

/// Whole tensors, in the order given: (index into `files`, tensor name).
pub fn whole_tensors(files: &[Arc<SealedFile>], wanted: &[(usize, &str)]) -> Result<Vec<Piece>> {
    wanted
        .iter()
        .map(|&(file, n)| {
            let f = file_at(files, file)?;
            let len = f.tensor(n).map_err(|e| e.in_file(f.path()))?.len();
            Ok(Piece {
                file,
                tensor: n.to_string(),
                start: 0,
                end: len,
            })
        })
        .collect()
}

/// Every tensor of `files[file]` in data order, cut in blocks of at most
/// `block` bytes (a whole number of chunks, so that no chunk is read twice);
/// an empty tensor is one empty piece (its authentication still runs).
pub fn blocks(files: &[Arc<SealedFile>], file: usize, block: usize) -> Result<Vec<Piece>> {
    let f = file_at(files, file)?;
    // A file whose tensors are one unit each is cut per tensor.
    let block = match f.read_unit() {
        Some(cs) => {
            let cs = cs.max(1);
            (block.max(cs) / cs) * cs
        }
        None => usize::MAX,
    };
    let mut out = Vec::new();
    for t in f.tensors() {
        let mut at = 0;
        loop {
            let end = (at + block).min(t.len());
            out.push(Piece {
                file,
                tensor: t.name.clone(),
                start: at,
                end,
            });
            at = end;
            if at >= t.len() {
                break;
            }
        }
    }
    Ok(out)
}

/// How big a pool is by default for `pieces`: two slabs (one filled while
/// the consumer holds the other), or [`BATCH_BYTES`] when that is more, so
/// that many small pieces are filled in one parallel pass; never more than
/// all the pieces together.
pub fn default_pool_bytes(pieces: &[Piece]) -> usize {
    let largest = pieces.iter().map(Piece::len).max().unwrap_or(0);
    let total: usize = pieces.iter().map(Piece::len).sum();
    (2 * largest).max(BATCH_BYTES.min(total)).max(1)
}

/// What a pool did: for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The pool size asked for.
    pub budget: usize,
    /// The most bytes lent out and idle at once.
    pub peak: usize,
    /// Slabs allocated.
    pub allocated: usize,
    /// Pieces filled into a slab that was used before.
    pub reused: usize,
    /// Slabs the consumer kept.
    pub kept: usize,
}

struct PoolState<S> {
    /// Given back, with how many of their first bytes hold plaintext.
    idle: Vec<(S, usize)>,
    idle_bytes: usize,
    lent_bytes: usize,
    closed: bool,
    /// The producer waits for room.
    starved: bool,
    stats: PoolStats,
}

/// The bounded set of slabs a stream fills and the consumer gives back.
struct Pool<S: Slab> {
    /// The size of every slab: the largest piece, so that any idle slab
    /// fits any piece and a pool never churns through allocations (fresh
    /// pages cost more to fault in than a decryption).
    slab: usize,
    state: Mutex<PoolState<S>>,
    room: Condvar,
}

impl<S: Slab> Pool<S> {
    fn new(budget: usize, slab: usize) -> Self {
        Pool {
            slab,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                idle_bytes: 0,
                lent_bytes: 0,
                closed: false,
                starved: false,
                stats: PoolStats {
                    budget,
                    ..Default::default()
                },
            }),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState<S>> {
        // A panic while holding the lock leaves plain counters behind: go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slab of at least `len` bytes, zeroed; waits for room unless `wait`
    /// is false. `None`: no room now (without `wait`), or the stream closed.
    fn take(
        &self,
        len: usize,
        wait: bool,
        alloc: &mut dyn FnMut(usize) -> Result<S>,
    ) -> Result<Option<S>> {
        let mut evicted = Vec::new();
        let got = {
            let mut st = self.lock();
            loop {
                if st.closed {
                    return Ok(None);
                }
                let budget = st.stats.budget;
                // The smallest idle slab that fits.
                let fit = st
                    .idle
                    .iter()
                    .enumerate()
                    .filter(|(_, (s, _))| s.capacity() >= len)
                    .min_by_key(|(_, (s, _))| s.capacity())
                    .map(|(i, _)| i);
                let need = fit.map_or(self.slab.max(len), |i| st.idle[i].0.capacity());
                if st.lent_bytes + need <= budget || st.lent_bytes == 0 {
                    st.starved = false;
                    let reused = match fit {
                        Some(i) => {
                            let (s, dirty) = st.idle.swap_remove(i);
                            st.idle_bytes -= s.capacity();
                            Some((s, dirty))
                        }
                        None => {
                            // Make room for a new slab: evict idle ones.
                            while st.lent_bytes + st.idle_bytes + need > budget {
                                let Some((s, dirty)) = st.idle.pop() else {
                                    break;
                                };
                                st.idle_bytes -= s.capacity();
                                evicted.push((s, dirty));
                            }
                            None
                        }
                    };
                    st.lent_bytes += need;
                    let held = st.lent_bytes + st.idle_bytes;
                    st.stats.peak = st.stats.peak.max(held);
                    match &reused {
                        Some(_) => st.stats.reused += 1,
                        None => st.stats.allocated += 1,
                    }
                    break reused;
                }
                if !wait {
                    return Ok(None);
                }
                st.starved = true;
                st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        for (mut s, dirty) in evicted {
            wipe(&mut s, 0, dirty);
        }
        match got {
            Some((mut s, dirty)) => {
                // Its first `len` bytes are overwritten next (by the piece,
                // or by zeros if the piece fails): zero what lies beyond.
                wipe(&mut s, len, dirty);
                Ok(Some(s))
            }
            None => match alloc(self.slab.max(len)) {
                Ok(s) => {
                    let (cap, need) = (s.capacity(), self.slab.max(len));
                    if cap != need {
                        let mut st = self.lock();
                        st.lent_bytes = (st.lent_bytes + cap).saturating_sub(need);
                    }
                    Ok(Some(s))
                }
                Err(e) => {
                    let mut st = self.lock();
                    st.lent_bytes = st.lent_bytes.saturating_sub(self.slab.max(len));
                    drop(st);
                    self.room.notify_all();
                    Err(e)
                }
            },
        }
    }

    /// A slab comes back; `dirty`: how many of its first bytes hold plaintext.
    fn give(&self, mut slab: S, dirty: usize) {
        let mut st = self.lock();
        st.lent_bytes = st.lent_bytes.saturating_sub(slab.capacity());
        // There is room now; a reader still short of it says so again.
        st.starved = false;
        if st.closed {
            drop(st);
            wipe(&mut slab, 0, dirty);
        } else {
            st.idle_bytes += slab.capacity();
            st.idle.push((slab, dirty));
        }
        self.room.notify_all();
    }

    /// A slab the consumer keeps leaves the pool.
    fn forget(&self, capacity: usize) {
        let mut st = self.lock();
        st.lent_bytes = st.lent_bytes.saturating_sub(capacity);
        st.starved = false;
        st.stats.kept += 1;
        self.room.notify_all();
    }

    /// No more takes; idle slabs are zeroed and let go.
    fn close(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            st.idle_bytes = 0;
            std::mem::take(&mut st.idle)
        };
        self.room.notify_all();
        for (mut s, dirty) in idle {
            wipe(&mut s, 0, dirty);
        }
    }
}

/// A filled piece, lent by the stream: give it back by dropping it (its slab
/// is zeroed and reused), or [`keep`](Loaned::keep) the slab.
pub struct Loaned<S: Slab> {
    piece: Piece,
    slab: Option<S>,
    pool: Arc<Pool<S>>,
}

impl<S: Slab> Loaned<S> {
    /// What it holds.
    pub fn piece(&self) -> &Piece {
        &self.piece
    }
    /// The slab: its first `piece().len()` bytes are the piece.
    pub fn slab(&self) -> Option<&S> {
        self.slab.as_ref()
    }
    /// Take the slab out of the pool: it is the caller's from now on (and
    /// the caller's to wipe).
    pub fn keep(mut self) -> Option<S> {
        let s = self.slab.take()?;
        self.pool.forget(s.capacity());
        Some(s)
    }
}

impl Loaned<Vec<u8>> {
    /// The piece's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.slab
            .as_deref()
            .and_then(|s| s.get(..self.piece.len()))
            .unwrap_or(&[])
    }
}

impl<S: Slab> Drop for Loaned<S> {
    fn drop(&mut self) {
        if let Some(s) = self.slab.take() {
            self.pool.give(s, self.piece.len());
        }
    }
}

/// The consumer's end: an iterator of filled pieces, in order. Dropping it
/// stops the producer (after the batch in hand) and zeroes the pool.
pub struct Stream<S: Slab> {
    rx: Receiver<Result<Loaned<S>>>,
    pool: Arc<Pool<S>>,
    /// Set by the reader once it sent its last item (or its error): a
    /// channel that closes without it means the reader died, and the stream
    /// must not look complete.
    done: Arc<AtomicBool>,
    /// The reader's death was reported once.
    reported: bool,
}

impl<S: Slab> Stream<S> {
    /// Start reading `pieces` of `files` into slabs from `alloc`, with a pool
    /// of `pool_bytes` (default: [`default_pool_bytes`]). Every piece is
    /// checked against its tensor first.
    pub fn start<A: SlabAlloc<Slab = S>>(
        files: Vec<Arc<SealedFile>>,
        pieces: Vec<Piece>,
        mut alloc: A,
        pool_bytes: Option<usize>,
    ) -> Result<Stream<S>> {
        for p in &pieces {
            let f = file_at(&files, p.file)?;
            let len = f.tensor(&p.tensor).map_err(|e| e.in_file(f.path()))?.len();
            if p.start > p.end || p.end > len {
                return Err(Error::RangeOutOfBounds {
                    name: p.tensor.clone(),
                    start: p.start,
                    end: p.end,
                    len,
                }
                .in_file(f.path()));
            }
        }
        let budget = pool_bytes
            .unwrap_or_else(|| default_pool_bytes(&pieces))
            .max(1);
        let slab = pieces.iter().map(Piece::len).max().unwrap_or(0).max(1);
        let pool = Arc::new(Pool::new(budget, slab));
        // The channel never holds more than the pool lends, so its bound only
        // keeps the producer from running far ahead in zero-length pieces.
        let (tx, rx) = sync_channel(1024);
        let producer_pool = Arc::clone(&pool);
        let done = Arc::new(AtomicBool::new(false));
        let producer_done = Arc::clone(&done);
        std::thread::Builder::new()
            .name("sealtensors-engine".into())
            .spawn(move || {
                let pool = producer_pool;
                // Declared before the marker, so dropped after it: the
                // channel closes only once `done` is set.
                let tx = tx;
                // Whatever way this thread ends but a panic, it says so.
                struct Done(Arc<AtomicBool>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        if !std::thread::panicking() {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                }
                let _done = Done(producer_done);
                // On a failure: the batch's slabs back, the pool closed (so
                // they are zeroed now; what the consumer holds stays its
                // own), and the error sent as the stream's last item.
                let fail = |batch: Vec<(Piece, S)>, e: Error| {
                    for (p, s) in batch {
                        pool.give(s, p.len());
                    }
                    pool.close();
                    let _ = tx.send(Err(e));
                };
                let mut alloc_fn = |len: usize| alloc.alloc(len);
                // Remote files: as many pieces in flight as requests may be
                // (a piece waits on the network far more than on a core).
                let remote = files.iter().any(|f| f.source().is_remote());
                let mut queue: VecDeque<Piece> = pieces.into();
                while let Some(first) = queue.pop_front() {
                    if first.is_empty() {
                        // Nothing to hold; its (empty) chunk is still checked.
                        let f = &files[first.file];
                        let item =
                            f.read_range_into(&first.tensor, 0, 0, &mut [])
                                .map(|()| Loaned {
                                    piece: first,
                                    slab: None,
                                    pool: Arc::clone(&pool),
                                });
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            if failed {
                                pool.close();
                            }
                            return;
                        }
                        continue;
                    }
                    let mut batch = Vec::new();
                    match pool.take(first.len(), true, &mut alloc_fn) {
                        Ok(Some(s)) => batch.push((first, s)),
                        Ok(None) => return,
                        Err(e) => return fail(Vec::new(), e),
                    }
                    let mut bytes = batch[0].0.len();
                    while bytes < BATCH_BYTES {
                        let Some(next) = queue.front() else { break };
                        if next.is_empty() {
                            break; // sent on its own, in order
                        }
                        match pool.take(next.len(), false, &mut alloc_fn) {
                            Ok(Some(s)) => {
                                bytes += next.len();
                                if let Some(p) = queue.pop_front() {
                                    batch.push((p, s));
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return fail(batch, e),
                        }
                    }
                    let fill = || -> Result<()> {
                        batch.par_iter_mut().try_for_each(|(p, s)| {
                            let f = &files[p.file];
                            s.with_bytes(p.len(), &mut |b| {
                                f.read_range_into(&p.tensor, p.start, p.end, b)
                            })
                        })
                    };
                    let filled = crate::source::in_io_pool(remote, fill);
                    if let Err(e) = filled {
                        return fail(batch, e);
                    }
                    let mut batch = batch.into_iter();
                    for (piece, slab) in batch.by_ref() {
                        let item = Loaned {
                            piece,
                            slab: Some(slab),
                            pool: Arc::clone(&pool),
                        };
                        if tx.send(Ok(item)).is_err() {
                            // The consumer is gone; the item came back and
                            // its drop gave the slab to the (closed) pool.
                            break;
                        }
                    }
                    for (p, s) in batch {
                        pool.give(s, p.len());
                    }
                }
            })
            .map_err(|e| Error::io("starting the reader thread", e))?;
        Ok(Stream {
            rx,
            pool,
            done,
            reported: false,
        })
    }

    /// The channel closed: the end, or an error if the reader died first.
    fn ended(&mut self) -> Option<Result<Loaned<S>>> {
        if self.done.load(Ordering::SeqCst) || self.reported {
            return None;
        }
        self.reported = true;
        self.pool.close();
        Some(Err(Error::ReaderStopped(
            "it panicked; the pieces before this error are intact".into(),
        )))
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        self.pool.lock().stats
    }

    /// Whether the producer waits for the consumer to give slabs back.
    pub fn starved(&self) -> bool {
        self.pool.lock().starved
    }

    /// The next piece without waiting: `Err(())` when none is ready yet.
    #[allow(clippy::result_unit_err)]
    pub fn try_next(&mut self) -> std::result::Result<Option<Result<Loaned<S>>>, ()> {
        match self.rx.try_recv() {
            Ok(x) => Ok(Some(x)),
            Err(std::sync::mpsc::TryRecvError::Empty) => Err(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Ok(self.ended()),
        }
    }

    /// The next piece, waiting at most `timeout`: `Err(())` on a timeout.
    #[allow(clippy::result_unit_err)]
    pub fn next_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> std::result::Result<Option<Result<Loaned<S>>>, ()> {
        match self.rx.recv_timeout(timeout) {
            Ok(x) => Ok(Some(x)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(self.ended()),
        }
    }
}

impl<S: Slab> Iterator for Stream<S> {
    type Item = Result<Loaned<S>>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(x) => Some(x),
            Err(_) => self.ended(),
        }
    }
}

impl<S: Slab> Drop for Stream<S> {
    fn drop(&mut self) {
        self.pool.close();
        // Pieces already queued are dropped with the receiver: their slabs
        // go to the closed pool, which zeroes them.
        while let Ok(item) = self.rx.try_recv() {
            drop(item);
        }
    }
}

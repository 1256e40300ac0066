//! The loading engine for Python (`File.stream`): the core's pipelined
//! reader fills NumPy arrays from a bounded pool, and a slab goes back to the
//! pool only when Python holds no reference to it any more.
//!
//! Python code cannot return a buffer explicitly (a framework drops tensors,
//! it does not call us), so the stream watches reference counts: the pool
//! owns one reference to each slab's array; the view handed out (and every
//! tensor made from it) holds another. At each `__next__`, a slab whose only
//! reference is the pool's is given back (zeroed before reuse); one still
//! referenced after [`KEEP_AFTER`] further items, or when the reader waits
//! for room, is left to Python for good (it leaves the pool, which then
//! allocates anew). Memory is never overwritten while Python can see it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sealtensors::engine::{Loaned, PoolStats, Slab, SlabAlloc, Stream};
use sealtensors::{Error, Result};

/// Items a slab may stay referenced before it is left to Python: a `for`
/// loop's variable and a generator or two in between still hold the last
/// item or so while the next is asked for.
const KEEP_AFTER: u32 = 4;

/// A NumPy uint8 array the engine fills, and its length (kept here: the
/// pool asks for it under its lock, where taking the GIL could deadlock).
pub(crate) struct ArraySlab(Py<PyArray1<u8>>, usize);

impl Slab for ArraySlab {
    fn capacity(&self) -> usize {
        self.1
    }
    fn with_bytes(
        &mut self,
        len: usize,
        f: &mut (dyn FnMut(&mut [u8]) -> Result<()> + Send),
    ) -> Result<()> {
        Python::attach(|py| {
            let a = self.0.bind(py);
            let mut rw = a
                .try_readwrite()
                .map_err(|e| Error::ApiMisuse(format!("a pool buffer is borrowed: {e}")))?;
            let bytes = rw
                .as_slice_mut()
                .map_err(|e| Error::ApiMisuse(format!("a pool buffer is not contiguous: {e}")))?;
            let n = bytes.len();
            let bytes = bytes.get_mut(..len).ok_or(Error::BufferSize {
                name: "pool buffer".into(),
                expected: len,
                got: n,
            })?;
            py.detach(|| f(bytes))
        })
    }
}

/// New slabs: `alloc(n)` in Python when given (page-locked memory for a GPU
/// upload, say), else a zeroed NumPy array.
pub(crate) struct ArrayAlloc(pub(crate) Option<Py<PyAny>>);

impl SlabAlloc for ArrayAlloc {
    type Slab = ArraySlab;
    fn alloc(&mut self, len: usize) -> Result<ArraySlab> {
        Python::attach(|py| {
            let a = match &self.0 {
                None => PyArray1::<u8>::zeros(py, len, false),
                Some(f) => {
                    let fail =
                        |what: String| Error::ApiMisuse(format!("the pool's alloc({len}) {what}"));
                    let obj = f
                        .call1(py, (len,))
                        .map_err(|e| fail(format!("raised {e}")))?;
                    let a = obj
                        .bind(py)
                        .cast::<PyArray1<u8>>()
                        .map_err(|_| fail("did not return a 1-D uint8 NumPy array".into()))?
                        .clone();
                    // A view of another array would hide the references
                    // Python holds (they count on its owner): refused.
                    let np_view = a
                        .getattr("base")
                        .ok()
                        .filter(|b| !b.is_none())
                        .is_some_and(|b| b.cast::<numpy::PyUntypedArray>().is_ok());
                    if np_view {
                        return Err(fail(
                            "returned a view of another NumPy array; return an array that owns \
                             its memory (or wraps a torch tensor)"
                                .into(),
                        ));
                    }
                    if a.len() < len || !a.is_contiguous() {
                        return Err(fail(
                            "returned an array that is too small or not contiguous".into(),
                        ));
                    }
                    a
                }
            };
            let n = a.len();
            Ok(ArraySlab(a.unbind(), n))
        })
    }
}

struct Handed {
    item: Loaned<ArraySlab>,
    age: u32,
}

struct State {
    stream: Option<Stream<ArraySlab>>,
    /// `sys.getrefcount`, and what it says of an array only the pool holds.
    refcount: Py<PyAny>,
    baseline: isize,
    handed: VecDeque<Handed>,
    recycled: usize,
    /// The pool's figures when the stream ended.
    last: PoolStats,
}

impl State {
    /// Whether Python holds no reference to the slab but the pool's.
    fn only_ours(&self, py: Python<'_>, item: &Loaned<ArraySlab>) -> bool {
        let Some(s) = item.slab() else {
            return true;
        };
        self.refcount
            .call1(py, (s.0.clone_ref(py),))
            .and_then(|n| n.extract::<isize>(py))
            // The clone passed in is one more reference.
            .is_ok_and(|n| n - 1 <= self.baseline)
    }

    /// Give back what Python dropped; leave to Python what it kept long.
    fn settle(&mut self, py: Python<'_>, force_one: bool) {
        let mut keep = VecDeque::new();
        let mut forced = !force_one;
        while let Some(mut h) = self.handed.pop_front() {
            let only_ours = self.only_ours(py, &h.item);
            if only_ours {
                self.recycled += 1;
                drop(h.item); // back to the pool
            } else if h.age >= KEEP_AFTER || !forced {
                forced = true;
                drop(h.item.keep()); // Python's now; our reference goes
            } else {
                h.age += 1;
                keep.push_back(h);
            }
        }
        self.handed = keep;
    }

    /// Python may still hold some slabs; those it does are left to it, the
    /// rest go back to the pool (which zeroes them when the stream closes).
    fn close(&mut self, py: Python<'_>) {
        while let Some(h) = self.handed.pop_front() {
            if !self.only_ours(py, &h.item) {
                drop(h.item.keep());
            }
        }
        if let Some(s) = self.stream.take() {
            self.last = s.stats();
        }
    }
}

/// An iterator of (name, uint8 array) over the engine's pool; see the module
/// documentation for when an array's memory is reused.
#[pyclass(module = "sealtensors._native")]
pub(crate) struct TensorStream {
    state: Mutex<State>,
}

impl TensorStream {
    pub(crate) fn new(py: Python<'_>, stream: Stream<ArraySlab>) -> PyResult<Self> {
        let refcount = py.import("sys")?.getattr("getrefcount")?.unbind();
        // What getrefcount says of an array held once (by `probe`), plus the
        // clone passed to it, as `only_ours` calls it.
        let probe: Py<PyAny> = PyArray1::<u8>::zeros(py, 1, false).into_any().unbind();
        let baseline = refcount
            .call1(py, (probe.clone_ref(py),))?
            .extract::<isize>(py)?
            - 1;
        Ok(TensorStream {
            state: Mutex::new(State {
                stream: Some(stream),
                refcount,
                baseline,
                handed: VecDeque::new(),
                recycled: 0,
                last: PoolStats::default(),
            }),
        })
    }
}

#[pymethods]
impl TensorStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(String, Bound<'py, PyArray1<u8>>)>> {
        let Ok(mut st) = self.state.try_lock() else {
            return Err(PyRuntimeError::new_err(
                "this tensor stream is in use by another thread: iterate it from one thread",
            ));
        };
        st.settle(py, false);
        loop {
            let Some(stream) = st.stream.as_mut() else {
                return Ok(None);
            };
            // The reader needs the GIL to reach its arrays: wait without it.
            // A reader that waits for room is answered at once, not after a
            // timeout: the consumer holds the pool (as transformers would).
            let got = match stream.try_next() {
                Ok(x) => Ok(x),
                Err(()) if stream.starved() => Err(()),
                Err(()) => py.detach(|| stream.next_timeout(Duration::from_millis(2))),
            };
            let starved = stream.starved();
            match got {
                Ok(None) => {
                    st.close(py);
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    st.close(py);
                    return Err(crate::to_py(e));
                }
                Ok(Some(Ok(item))) => {
                    let len = item.piece().len();
                    let name = item.piece().tensor.clone();
                    let Some(slab) = item.slab() else {
                        // An empty tensor holds no slab.
                        return Ok(Some((name, Vec::<u8>::new().into_pyarray(py))));
                    };
                    let a = slab.0.bind(py).clone();
                    let view = if a.len() == len {
                        a
                    } else {
                        a.get_item(pyo3::types::PySlice::new(py, 0, len as isize, 1))?
                            .cast_into::<PyArray1<u8>>()
                            .map_err(|_| PyTypeError::new_err("a slice of a uint8 array"))?
                    };
                    st.handed.push_back(Handed { item, age: 0 });
                    return Ok(Some((name, view)));
                }
                Err(()) if starved => {
                    // The reader waits for room: free the oldest slab.
                    st.settle(py, true);
                }
                Err(()) => {}
            }
        }
    }

    /// What the pool did: budget, peak, allocated, reused, kept, recycled.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let Ok(st) = self.state.try_lock() else {
            return Ok(d);
        };
        let s = st.stream.as_ref().map_or(st.last, |s| s.stats());
        {
            d.set_item("budget", s.budget)?;
            d.set_item("peak", s.peak)?;
            d.set_item("allocated", s.allocated)?;
            d.set_item("reused", s.reused)?;
            d.set_item("kept", s.kept)?;
        }
        d.set_item("recycled", st.recycled)?;
        Ok(d)
    }

    /// Stop reading; arrays Python still holds stay valid.
    fn close(&self, py: Python<'_>) {
        if let Ok(mut st) = self.state.try_lock() {
            st.close(py);
        }
    }
}

impl Drop for TensorStream {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        Python::attach(|py| st.close(py));
    }
}

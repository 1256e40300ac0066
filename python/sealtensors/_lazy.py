"""A sealed tensor that is decrypted only when, and only as far as, it is used.

vLLM's weight loaders receive whole tensors and cut each tensor-parallel
rank's shard with ``loaded_weight.narrow(dim, start, length)``. For a plain
file the tensor is a memory map, so the cut reads only the shard's pages; a
sealed tensor must be decrypted, and decrypting all of it in every rank
multiplies the work by the number of ranks. `LazyTensor` stands in for the
tensor: its shape and dtype are known from the header, ``narrow`` along the
first dimension decrypts only the chunks that cover those rows (the rows of
a row-major tensor are contiguous), and anything else (other dimensions,
arithmetic, ``copy_``, ``torch.cat``, attribute access) decrypts the whole
tensor once and hands the real ``torch.Tensor`` on. Torch calls
`__torch_function__` on objects that define it, so ``param.data.copy_(lazy)``
works without the object being a tensor.

Every chunk read is authenticated exactly as `safe_open.get_tensor` does.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch

from sealtensors import _convert


class LazyTensor:
    """One tensor of an open sealed file, read on demand (see the module doc)."""

    def __init__(self, opener: Any, name: str, stats: dict[str, int] | None = None) -> None:
        self._opener = opener
        self._name = name
        dtype, shape, nbytes, _ = opener._file.info(name)
        self._dtype_name = dtype
        self._shape = torch.Size(shape)
        self._nbytes = nbytes
        self._full_tensor: torch.Tensor | None = None
        # bytes decrypted through this object (the loader sums them per worker)
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("bytes_total", 0)
        self.stats.setdefault("bytes_read", 0)
        self.stats["bytes_total"] += nbytes

    def __repr__(self) -> str:
        return f"LazyTensor({self._name!r}, shape={list(self._shape)}, dtype={self.dtype})"

    # Metadata: from the header, nothing is read.
    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return _convert.torch_dtypes()[self._dtype_name]

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def size(self, dim: int | None = None) -> Any:
        return self._shape if dim is None else self._shape[dim]

    def dim(self) -> int:
        return len(self._shape)

    def numel(self) -> int:
        n = 1
        for s in self._shape:
            n *= s
        return n

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    # Reading.
    def materialize(self) -> torch.Tensor:
        """The whole tensor (decrypted once, then kept)."""
        if self._full_tensor is None:
            self._full_tensor = self._opener.get_tensor(self._name)
            self.stats["bytes_read"] += self._nbytes
        return self._full_tensor

    def narrow(self, dim: int, start: int, length: int) -> Any:
        """Rows `start..start+length` along `dim`; along the first dimension
        only the chunks that hold those rows are read and decrypted. The whole
        extent (what a weight loader asks of a single rank) is this same lazy
        tensor, so that a `copy_` from it still decrypts in place."""
        nd = len(self._shape)
        d = dim + nd if dim < 0 else dim
        if 0 <= d < nd and start == 0 and length == self._shape[d] and self._full_tensor is None:
            return self
        if self._full_tensor is not None or d != 0 or nd == 0:
            return self.materialize().narrow(dim, start, length)
        # torch's own checks and errors, on a tensor with no data
        torch.empty(self._shape, dtype=self.dtype, device="meta").narrow(dim, start, length)
        rows = self._shape[0]
        start = start + rows if start < 0 else start
        if not (0 <= start <= rows and 0 <= length <= rows - start):
            raise IndexError(f"narrow({dim}, {start}, {length}) is out of range for {self!r}")
        part = self._opener.get_slice(self._name)[start : start + length]
        self.stats["bytes_read"] += part.numel() * part.element_size()
        return part

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) and self._full_tensor is None and self._shape:
            start, stop, step = index.indices(self._shape[0])
            if step == 1:
                return self.narrow(0, start, max(stop - start, 0))
        return self.materialize()[index]

    def __getattr__(self, attr: str) -> Any:
        # Everything else a tensor has (t(), view(), to(), contiguous(), ...).
        # Anything a tensor lacks is missing here too, without decrypting:
        # vLLM probes loaded weights with getattr(w, "shard_id", None).
        if attr.startswith("__") or not hasattr(torch.Tensor, attr):
            raise AttributeError(attr)
        return getattr(self.materialize(), attr)

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.Tensor.narrow and args and isinstance(args[0], LazyTensor):
            return args[0].narrow(*args[1:], **(kwargs or {}))
        if func is torch.Tensor.copy_ and len(args) >= 2 and isinstance(args[1], LazyTensor):
            dst, src = args[0], args[1]
            if src._into(dst):
                return dst
        return func(*_real(args), **_real(kwargs or {}))

    def _into(self, dst: Any) -> bool:
        """Decrypt straight into `dst` when it is CPU memory of this tensor's
        exact dtype and shape, contiguous (a parameter, or a row block of a
        fused one): no buffer in between. False: not such a target (the
        caller then copies from the decrypted tensor)."""
        if (
            self._full_tensor is not None
            # exactly a tensor or a parameter (not a subclass, nor a parameter
            # wrapping one: quantised or distributed tensors copy their own way)
            or type(dst) not in (torch.Tensor, torch.nn.Parameter)
            or type(dst.data) is not torch.Tensor
            or dst.device.type != "cpu"
            or dst.dtype != self.dtype
            or dst.shape != self._shape
            or not dst.is_contiguous()
            or dst.is_conj()
            or dst.is_neg()
            or (dst.is_inference() and not torch.is_inference_mode_enabled())
            or (dst.requires_grad and torch.is_grad_enabled())
        ):
            return False
        try:
            out = dst.detach().reshape(-1).view(torch.uint8).numpy()
        except (RuntimeError, TypeError):
            return False  # torch knows no NumPy view of it: the ordinary copy
        # While this runs `dst` holds ciphertext (or unchecked bytes of a
        # sign-only file) chunk by chunk, then the plaintext; on a failure it
        # is all zeros and the error is raised. Nothing should read it before
        # `copy_` returns, as with any copy into it.
        self._opener._file.read_into(self._name, out)
        bump = getattr(torch.autograd.graph, "increment_version", None)
        if bump is not None:
            bump(dst)  # written outside torch: counted as torch's own copy_ would
        self.stats["bytes_read"] += self._nbytes
        return True


def _real(x: Any) -> Any:
    """`x` with every LazyTensor in it (nested in lists, tuples, dicts) read."""
    if isinstance(x, LazyTensor):
        return x.materialize()
    if isinstance(x, (list, tuple)):
        return type(x)(_real(v) for v in x)
    if isinstance(x, dict):
        return {k: _real(v) for k, v in x.items()}
    return x


def _binary(op: Callable[[Any, Any], Any], reflected: bool) -> Callable[..., Any]:
    def method(self: LazyTensor, other: Any) -> Any:
        a, b = self.materialize(), _real(other)
        return op(b, a) if reflected else op(a, b)

    return method


for _name, _op in {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "matmul": operator.matmul,
    "pow": operator.pow,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}.items():
    setattr(LazyTensor, f"__{_name}__", _binary(_op, False))
    setattr(LazyTensor, f"__r{_name}__", _binary(_op, True))
for _name, _op in {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}.items():
    setattr(LazyTensor, f"__{_name}__", _binary(_op, False))
for _name, _op in {
    "mod": operator.mod,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}.items():
    setattr(LazyTensor, f"__{_name}__", _binary(_op, False))
    setattr(LazyTensor, f"__r{_name}__", _binary(_op, True))
# One-operand protocols: the real tensor's answer (bool() of a 1-element
# tensor is its value, of a larger one an error, exactly as torch says).
for _name in (
    "neg",
    "pos",
    "abs",
    "invert",
    "bool",
    "int",
    "float",
    "complex",
    "index",
    "iter",
):
    setattr(
        LazyTensor,
        f"__{_name}__",
        (lambda n: lambda self: getattr(self.materialize(), f"__{n}__")())(_name),
    )
LazyTensor.__format__ = lambda self, spec: format(self.materialize(), spec)  # type: ignore[method-assign]
LazyTensor.__contains__ = lambda self, x: x in self.materialize()  # type: ignore[attr-defined]


def _setitem(self: LazyTensor, index: Any, value: Any) -> None:
    self.materialize()[index] = _real(value)


LazyTensor.__setitem__ = _setitem  # type: ignore[attr-defined]
LazyTensor.__hash__ = object.__hash__  # type: ignore[method-assign]
LazyTensor.__array__ = lambda self, *a, **k: self.materialize().numpy().__array__(*a, **k)  # type: ignore[attr-defined]

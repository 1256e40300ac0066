"""`safe_open`, mirroring `safetensors.safe_open` for plain and sealed files."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import safetensors

from sealtensors import _convert
from sealtensors._native import File, enter_load_scope, exit_load_scope, stream_files
from sealtensors._native import is_remote as _native_is_remote

# The real safetensors entry points that read a file's bytes, kept before
# `sealtensors.auto` replaces them (`_safe_open_handle` is in safetensors 0.6+).
_REAL_SAFE_OPEN = safetensors.safe_open
_REAL_DESERIALIZE = safetensors.deserialize
_REAL_SAFE_OPEN_HANDLE = getattr(safetensors, "_safe_open_handle", None)


@contextlib.contextmanager
def load_scope() -> Iterator[None]:
    """One load: while it is open, the shards of a sealed model folder opened
    by this thread (one at a time, each several times, as transformers and
    vLLM do) share one key unwrap or broker release and one folder check
    (SPEC §8.5). Every open still checks its file's signature, expiry, policy
    and MAC. Keys are shared only between opens with the same keys as loaded
    (identities, signers, broker hosts and tokens, passphrase, licence), never
    with other threads, and are dropped when the outermost scope exits or
    `forget_released_keys()` is called. `sealtensors.auto` opens one around
    every transformers `from_pretrained`, and the vLLM loader around its
    weight loading."""
    enter_load_scope()
    try:
        yield
    finally:
        exit_load_scope()


def _licence_text(licence: Any) -> str | None:
    if licence is None:
        return None
    if isinstance(licence, Mapping):
        return json.dumps(dict(licence))
    return os.fspath(licence)


def _framework_version(fw: str | None) -> tuple[str, str] | None:
    if fw is None:
        return None
    if fw == "pt":
        import torch

        return ("torch", str(torch.__version__))
    import numpy

    return ("numpy", str(numpy.__version__))


class _Slice:
    """A lazily read tensor: `[...]` reads it, `[a:b]` decrypts only the chunks
    that cover rows a..b of the first dimension."""

    def __init__(self, owner: safe_open, name: str) -> None:
        self._owner = owner
        self._name = name
        self._dtype, self._shape, self._nbytes, _ = owner._file.info(name)

    def get_shape(self) -> list[int]:
        """The tensor's shape."""
        return list(self._shape)

    def get_dtype(self) -> str:
        """The safetensors dtype string, e.g. "BF16"."""
        return self._dtype

    def __getitem__(self, index: Any) -> Any:
        o = self._owner
        shape = self._shape
        idx = index if isinstance(index, tuple) else (index,)
        first = idx[0] if idx else Ellipsis
        # bool is an int in Python but indexes as a mask: leave it to the framework.
        row_index = isinstance(first, slice) or (
            isinstance(first, int) and not isinstance(first, bool)
        )
        if shape and shape[0] > 0 and row_index:
            rows = shape[0]
            row_bytes = self._nbytes // rows
            if isinstance(first, int):
                r = first + rows if first < 0 else first
                if not 0 <= r < rows:
                    raise IndexError(f"index {first} is out of bounds for dimension 0 of {rows}")
                start, stop, rest = r, r + 1, (0, *idx[1:])
            else:
                start, stop, step = first.indices(rows)
                if step != 1:
                    return o._full(self._name)[index]
                stop = max(stop, start)
                rest = (slice(None), *idx[1:])
            raw = o._file.read_range(self._name, start * row_bytes, stop * row_bytes)
            part = _convert.to_framework(
                raw, self._dtype, [stop - start, *shape[1:]], o._framework, o._device
            )
            return part[rest]
        return o._full(self._name)[index]


class safe_open:  # noqa: N801 (mirrors safetensors' name)
    """Open a safetensors file, plain or sealed, like `safetensors.safe_open`.

    Sealed files are verified on open (signature against `trusted` signers,
    expiry, key slot, header MAC) and every chunk is authenticated as it is
    read. Plain files are handed to the real safetensors unchanged.

    Args:
        filename: the file.
        framework: "pt"/"torch", "np"/"numpy".
        device: where tensors go ("cpu", "cuda", "cuda:1", ...).
        identities: identity files (X25519, P-256 or symmetric JWK); default from the
            environment or the config directory.
        trusted: trusted signers (`ed25519:...`, `ecdsa-p256:...` or JWK files); when given,
            every file must be signed by one of them.
        passphrase: opens passphrase slots.
        require_encrypted: refuse plain or sign-only files (downgrade).
        require_signed: refuse files without a valid signature.
        licence: licence claims for the file's access policy: a mapping, JSON
            text or a JSON file path (default: SEALTENSORS_LICENCE).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        framework: str,
        device: Any = "cpu",
        *,
        identities: Sequence[str | os.PathLike[str]] | None = None,
        trusted: Sequence[str] | None = None,
        passphrase: str | None = None,
        require_encrypted: bool = False,
        require_signed: bool = False,
        licence: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        _caller: tuple[str, str] | None = None,
        _open_plain: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._device = device
        self._path = os.fspath(filename)
        self._file = File(
            self._path,
            [os.fspath(p) for p in identities or ()],
            list(trusted or ()),
            passphrase,
            require_encrypted,
            require_signed,
            _licence_text(licence),
            ("python", sys.version.split()[0]),
            _caller or _framework_version(_convert.framework_or_none(framework)),
            None,
        )
        self._plain = None
        if self._file.is_sealed() or _native_is_remote(self._path):
            # Sealed, or remote (safetensors reads local files only): read
            # through sealtensors.
            self._framework = _convert.framework(framework)
        elif _open_plain is not None:
            # sealtensors.auto's other entry points (a file handle): their own opener.
            self._plain = _open_plain()
        else:
            # Exactly what safetensors does for a plain file (mmap, zero copy).
            self._plain = _REAL_SAFE_OPEN(self._path, framework, device=device, **kwargs)

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._plain is not None:
            self._plain.__exit__(*exc)

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return self._file.keys()

    def offset_keys(self) -> list[str]:
        """Tensor names in file order."""
        return self._file.offset_keys()

    def metadata(self) -> dict[str, str] | None:
        """The publisher's metadata (seal entries removed)."""
        return self._file.metadata()

    def authenticity(self) -> tuple[str, str | None]:
        """("plain" | "unsigned" | "signed-untrusted" | "signed-trusted" | "signed-unchecked",
        signer)."""
        return self._file.authenticity()

    def _full(self, name: str) -> Any:
        dtype, shape, _, _ = self._file.info(name)
        return _convert.to_framework(
            self._file.read(name), dtype, shape, self._framework, self._device
        )

    def get_tensor(self, name: str) -> Any:
        """The whole tensor, verified and decrypted."""
        if self._plain is not None:
            return self._plain.get_tensor(name)
        return self._full(name)

    def get_slice(self, name: str) -> Any:
        """A lazy view; index it to read (only the chunks touched are decrypted)."""
        if self._plain is not None:
            return self._plain.get_slice(name)
        return _Slice(self, name)

    def iter_tensors(
        self,
        names: Sequence[str] | None = None,
        *,
        pool_bytes: int | None = None,
        pin_memory: bool | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Yield (name, tensor) for every tensor (or those named, in that order)
        through the loading engine, for consumers that copy each tensor into
        memory of their own (vLLM's weight loaders, a model's parameters).

        Tensors are read ahead and decrypted on all cores into buffers from a
        bounded pool (`pool_bytes`; default two of the largest tensor, or
        64 MiB when that is more), and a buffer is reused once nothing
        references its tensor any more; a tensor you keep stays valid (its
        buffer leaves the pool, and is yours). Buffers are overwritten or
        zeroed before reuse and zeroed when the pool lets them go (SPEC §8.6).
        With a CUDA `device`, decryption goes into page-locked buffers that
        are copied to the device on a side stream while the next tensor
        decrypts. `pin_memory=True` asks for page-locked buffers on the CPU
        too, for a consumer that copies them to a device itself: a buffer is
        reused as soon as its tensor is dropped, so such a copy must be
        complete (a blocking copy, or synchronized) before the tensor is
        dropped. Plain files yield what safetensors' `get_tensor` gives.
        """
        names = self.offset_keys() if names is None else list(names)
        yield from stream_tensors(
            [self], [(0, n) for n in names], pool_bytes=pool_bytes, pin_memory=pin_memory
        )

    def get_tensors(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Every tensor (or those named), in file order; a sealed file's are
        decrypted in one parallel pass over all their chunks."""
        names = self.offset_keys() if names is None else list(names)
        if self._plain is not None:
            return {k: self._plain.get_tensor(k) for k in names}
        infos = [self._file.info(k) for k in names]
        raws = self._file.read_many(names)
        return {
            k: _convert.to_framework(raw, dtype, shape, self._framework, self._device)
            for k, raw, (dtype, shape, _, _) in zip(names, raws, infos)
        }


def stream_tensors(
    files: Sequence[safe_open],
    pieces: Sequence[tuple[int, str]],
    *,
    pool_bytes: int | None = None,
    pin_memory: bool | None = None,
) -> Iterator[tuple[str, Any]]:
    """`safe_open.iter_tensors` over several opened files (the shards of a
    model) with one engine and one pool, so buffers are reused across shards:
    `pieces` are (index into `files`, tensor name) in the order wanted. The
    framework and device are the first file's. Plain files are read the way
    safetensors reads them."""
    if not files:
        return
    if any(f._plain is not None for f in files):
        for i, name in pieces:
            yield name, files[i].get_tensor(name)
        return
    first = files[0]
    cuda = first._framework == "pt" and _is_cuda(first._device)
    pinned = cuda or bool(pin_memory)
    alloc = _pinned_alloc if pinned else None
    stream = stream_files([f._file for f in files], list(pieces), pool_bytes, alloc)
    order = iter(pieces)

    def info_of(name: str) -> tuple[str, list[int], int, bool]:
        i, expected = next(order)
        if expected != name:  # the engine hands pieces out in the order asked for
            raise RuntimeError(f"the engine gave {name!r} where {expected!r} was due")
        return files[i]._file.info(name)

    try:
        if cuda:
            yield from _uploaded(stream, info_of, first._device)
            return
        for name, raw in stream:
            dtype, shape, _, _ = info_of(name)
            t = _convert.to_framework(raw, dtype, shape, first._framework, first._device)
            del raw  # only the consumer's reference keeps the buffer now
            yield name, t
            del t
    finally:
        stream.close()


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def _pinned_alloc(n: int) -> Any:
    """A page-locked uint8 buffer of n bytes as a NumPy array (the engine's pool
    fills it; the array keeps the torch storage alive); pageable where there
    is no CUDA, so the same code path runs on every machine."""
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        return np.zeros(n, dtype=np.uint8)
    # zeros: torch's page-locked cache may hand back memory that held data
    return torch.zeros(n, dtype=torch.uint8, pin_memory=True).numpy()


def _uploaded(
    stream: Any, info: Callable[[str], tuple[str, list[int], int, bool]], device: Any
) -> Iterator[tuple[str, Any]]:
    """Copy each decrypted page-locked buffer to `device` on a side stream
    while the engine decrypts the next; a buffer goes back to the pool only
    after its copy finished (its event), never while the copy may read it."""
    import torch

    dev = torch.device(device)
    side = torch.cuda.Stream(device=dev)
    pending: deque[tuple[Any, Any]] = deque()  # (event, staging tensor)
    try:
        for name, raw in stream:
            dtype, shape, _, _ = info(name)
            host = _convert.to_framework(raw, dtype, shape, "pt", "cpu")
            del raw
            with torch.cuda.stream(side):
                out = host.to(dev, non_blocking=True)
                done = torch.cuda.Event()
                done.record(side)
            pending.append((done, host))
            del host
            while pending and pending[0][0].query():
                pending.popleft()
            current = torch.cuda.current_stream(dev)
            current.wait_event(done)
            out.record_stream(current)  # allocated on `side`, used on `current`
            yield name, out
            del out
    finally:
        side.synchronize()
        pending.clear()

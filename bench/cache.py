"""Page-cache control for the benchmark's own files.

- `evict(paths)`: fsync each file (dirty pages cannot be dropped), then
  `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file: the kernel drops
  its clean cached pages. Only the benchmark's files are touched, never the
  whole page cache (other work shares this machine; dropping every cache
  through /proc/sys/vm/drop_caches would disturb it, and needs root).
- `resident(paths)`: the fraction of the files' pages in the page cache, by
  mincore(2) on a read-only mapping (what `fincore` reports), to verify an
  eviction or a warm cache.
- `warm(paths)`: read every byte once, so the files are in the page cache.

A "cold" read here is cold for this virtual machine's page cache; the host
may still cache the virtual disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Iterable

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = os.sysconf("SC_PAGE_SIZE")


def drop_caches_writable() -> bool:
    """Whether this process could drop the whole page cache (it never does)."""
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def evict(paths: Iterable[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _resident_pages(path: str) -> tuple[int, int]:
    size = os.path.getsize(path)
    pages = (size + PAGE - 1) // PAGE
    if size == 0:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            raw = vec.raw
            return sum(b & 1 for b in raw), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident(paths: Iterable[str]) -> float:
    """Fraction (0..1) of the files' pages that are in the page cache."""
    have = total = 0
    for p in paths:
        h, t = _resident_pages(p)
        have += h
        total += t
    return have / total if total else 1.0


def warm(paths: Iterable[str]) -> None:
    buf = bytearray(8 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass

"""Keep freed CPU memory in the process for the next training step (glibc's malloc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and gives it back with ``munmap`` when the tensor is freed. A training step allocates the same
large activations every time (TIGER at the paper shape: 84 MB feed-forward products, 39 MB
attention maps, ~5 GB in all at batch 256), so each step the kernel maps, page-faults and
zeroes them again: that system time was ~11% of a TIGER training step on one core
(``benchmarks/train_speed.py`` measures it). Serving large blocks from the heap instead
(``M_MMAP_MAX`` 0) and never trimming its top (``M_TRIM_THRESHOLD`` -1, "disables trimming
completely" per mallopt(3)) lets the next step reuse the pages already mapped.

The price is that the process keeps its peak resident memory until
``reuse_freed_memory(False)`` (which trims it back). Other C libraries (musl, macOS, Windows)
are left alone: the call reports ``False``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_DEFAULT_MMAP_MAX = 65536
_GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_NEVER_TRIM = -1


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def reuse_freed_memory(enabled: bool) -> bool:
    """Switch glibc between keeping freed memory for reuse (``True``) and its defaults.

    Returns whether the setting took effect (``False`` off glibc). Switching it off restores
    glibc's default limits and returns the kept memory to the system (``malloc_trim``); glibc's
    adaptive mmap threshold stays off once any limit was set, so "off" is close to, not exactly,
    a process that never called this (the config key only ever switches it on).
    """
    libc = _glibc()
    if libc is None:
        return False
    if enabled:
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    applied = bool(libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX))
    applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM_THRESHOLD)) and applied
    libc.malloc_trim(0)
    return applied

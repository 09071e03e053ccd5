"""Host memory allocation tuned for the training loops' many short-lived, large host buffers (glibc only).

XLA's CPU runtime and the input pipelines allocate and free buffers of hundreds of KiB every step. glibc serves
those with mmap/munmap (above its mmap threshold) and trims freed heap back to the kernel, so every step pays page
faults to zero fresh pages. `tune()` keeps freed memory in the process instead (`mallopt`: no mmap for large
blocks, no trimming, at most four arenas), before anything large is allocated. Set `CONVBERT_JAX_MALLOC=system` to
keep the C library's defaults. On other C libraries (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from absl import logging

ENV = "CONVBERT_JAX_MALLOC"
# mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 4))


def tune() -> bool:
    """Applies `SETTINGS` with glibc's `mallopt`; True when every one was accepted."""
    if os.environ.get(ENV, "") == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    accepted = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    if not accepted:
        logging.info("host_malloc: the C library refused a mallopt setting; its defaults stay")
    return accepted

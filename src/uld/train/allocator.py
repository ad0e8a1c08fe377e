"""Keep freed memory in the process, so that a training step does not fault in fresh pages.

glibc's malloc serves every block above a threshold (128 KiB, rising with use to 32 MiB at most)
with a fresh mmap and unmaps it on free; it also gives back the top of its heap once enough of it is
free. A pixel training step allocates temporaries of 30-100 MB (augmented frame batches, their
gather indices, float copies, convolution maps), so each step touches hundreds of MB of fresh
pages, each of which costs a fault in which the kernel zeroes it. On the virtual machines this
project is developed on, a fault costs microseconds, and the faults were a large part of a
full-size DMC pixel step (figures in docs/speed.md).

`keep_freed_memory()` raises the mmap threshold to 256 MiB (32 MiB where an older glibc refuses
more) and the trim threshold to 1 GiB, so the step's blocks come back from the heap already mapped.
The price: the heap is not given back while the process runs, so its resident memory stays at the
heap's high-water mark, which a training run reaches on its first steps anyway. It changes where
memory comes from, not any value. `uld train` calls it once the run's long-lived arrays (replay
buffer, loaded checkpoint) exist, so they keep their own mappings; it is process-wide and lasts
until the process exits. `ULD_KEEP_FREED_MEMORY=0` turns it off. With another allocator preloaded
(jemalloc, tcmalloc) glibc's mallopt still answers but governs nothing: those manage their own
caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = (256 << 20, 32 << 20)  # wanted, then the most glibc < 2.35 accepts on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    A no-op (False) off Linux, with a C library that has no mallopt (musl), or with
    ULD_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get("ULD_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either threshold freezes both (glibc stops adjusting them), so the mmap threshold goes
    # first: if glibc refused every value, the trim threshold alone would pin the mmap threshold at
    # its 128 KiB start, worse than the default. mallopt returns 1 on success.
    if not any(mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLD_BYTES):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

"""Keep freed memory in the process, so that a training step does not fault in fresh pages.

glibc's malloc serves every block above a threshold (32 MiB at most, by default) with a fresh
mmap and gives it back to the kernel on free; it also trims the top of the heap once more than
twice that is free. A pixel training step allocates temporaries of 30-100 MiB (augmented frame
batches, their float copies, convolution maps), so each step touches hundreds of MiB of fresh
pages, and each 4 KiB page costs a fault in which the kernel zeroes it. On the virtual machines
this project is developed on a fault costs microseconds, and the faults were a third of a
full-size DMC pixel step (`benchmarks/pixel_step.py`: 830-1010 ms before, 545-750 ms after).

`keep_freed_memory()` raises the mmap threshold to 256 MiB and the trim threshold to 1 GiB, so
blocks up to 256 MiB are reused from the heap instead; larger ones (a replay buffer's arrays) are
still mapped on their own, where the kernel can back them with huge pages. The price is that the
process keeps up to 1 GiB of freed heap above its live memory, which a training run reuses on every
step. It changes no result: only
where memory comes from. `ULD_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    A no-op (False) off Linux, with another C library, or with ULD_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get("ULD_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The mmap threshold goes first: setting it fixes the trim
    # threshold's dynamic adjustment too.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

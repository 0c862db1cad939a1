"""Keep freed activation memory in the process for the next step (glibc's malloc, CPU).

glibc hands a freed block of 128 KiB or more (a threshold that then follows the largest
block freed) straight back to the kernel, and trims the heap's free top once it passes
twice that. A forward frees its activations and allocates them again the next step, so
every page of them faults in anew: on a 2-core CPU ~1,100 page faults and 1.6 ms of
system time per `tiny-bart` forward of 64 rows (a tenth of it). With the thresholds
raised, freed blocks stay in the heap and the next step reuses them: 13-18% more rows/s
for a teacher-forced forward of `small` (decode steps fault little: no measurable change;
benchmarks/README.md, benchmark 11).

The cost: memory freed after a peak stays with the process (its resident size stays at
the peak), what a server that runs the same shapes every step wants anyway.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h) and the values set: the mmap threshold at glibc's
# ceiling on 64-bit (blocks below it come from the heap), the trim threshold at 1 GiB.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring);
    True when both took, False where malloc is not glibc's (macOS, musl: left as is)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))


__all__ = ["keep_freed_memory"]

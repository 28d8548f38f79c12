"""Keep freed memory for the next array: the C allocator's policy for large blocks.

Why it matters here
-------------------
A training step allocates and frees a few dozen arrays of tens of megabytes (a layer's
output, its gradient).  glibc's ``malloc`` serves every block above its *mmap threshold*
(at most 32 MiB by default, and a 4×64×180×240 float32 map is 44 MB) with a fresh
``mmap`` and gives it back to the operating system on ``free``.  So every step writes to
fresh pages: one page fault per page (per huge page where NumPy asks for them), and in a
virtual machine the host's work behind each.  The layers reuse their own scratch
(:mod:`minisegnet.workspace`), but what leaves a layer cannot be reused by it.

Raise the threshold and stop trimming, and ``free`` keeps the block in the heap; the next
array of that size takes it back warm.  After the first step a step faults no page at
all.  Measured in ``BENCHMARKS.md`` (a SegNet-Basic step on the 2-core AMD EPYC: 12,900
page faults a step before, none after, and about a fifth less time).  PyTorch's own
CPU tuning guide recommends the same thing by other means (preloading jemalloc or
tcmalloc, which cache freed memory).

The price: the process keeps its largest heap until it exits (freed memory is not
returned to the operating system).  That is what a training or evaluation run wants; a
notebook that trains once and then lives on may not.

Who decides
-----------
It is a setting of the whole process, so the library never makes it on its own: a
*program* chooses it.  The ``minisegnet`` command calls :func:`keep_freed_memory` as it
starts, the benchmark harness applies it to both sides of a comparison (and records it),
and a script or notebook may call it.  The environment wins: when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` is set, the
user has chosen, and nothing is changed.  Elsewhere than on glibc (macOS, Windows, musl)
it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "USER_SETTINGS"]

#: ``mallopt`` parameters (glibc's ``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (and stay there when freed); larger ones are
#: still mapped: 1 GiB, far above any array of a 360×480 SegNet.
MMAP_THRESHOLD_BYTES = 2**30
#: Free memory at the top of the heap is returned to the system only beyond this: never, in practice.
TRIM_THRESHOLD_BYTES = 2**31 - 1

#: Environment variables with which a user sets glibc's policy: when one is set, it wins.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # absent from musl
        return libc
    except (OSError, AttributeError):
        return None


def _user_has_chosen() -> str | None:
    """The environment variable through which the user set glibc's malloc policy, if any."""
    for name in USER_SETTINGS:
        value = os.environ.get(name)
        if value and (name != "GLIBC_TUNABLES" or "glibc.malloc." in value):
            return name
    return None


def keep_freed_memory() -> tuple[bool, str]:
    """Ask glibc's ``malloc`` to keep freed large blocks for reuse; ``(in effect, why)``.

    Calling it again changes nothing.  Returns ``(True, ...)`` when the policy is in
    effect after the call, ``(False, reason)`` when it was left alone: not glibc, the
    user's environment sets the policy, or ``mallopt`` refused.
    """
    chosen = _user_has_chosen()
    if chosen is not None:
        return False, f"left to the environment ({chosen} is set)"
    libc = _glibc()
    if libc is None:
        return False, "not glibc: the C allocator's own policy applies"
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD_BYTES)):
        return False, "mallopt refused the setting"
    return True, "glibc keeps freed blocks up to 1 GiB for reuse"

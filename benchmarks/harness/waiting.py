"""Passive waiting for both sides' thread pools, so that an interleaved timing is fair to both.

Both libraries run their matrix products on worker threads, and both let those threads
*spin* for a while after a call, waiting for the next one, instead of sleeping:

* PyTorch's OpenMP threads, under the default "active" wait policy;
* OpenBLAS's threads (NumPy's BLAS), for 2^28 cycles by default, about 0.1 s here.

On a 2-core machine a spinning thread holds one of the two cores.  Interleaved timing runs
one side's call right after the other's, so each side's spin took a core from the *other*
side's next call.  Measured on the project's 2-core AMD EPYC: a 0.5 s sleep right after one
2048² SGEMM used 0.105 s of CPU by default, 0.000 s with ``OPENBLAS_THREAD_TIMEOUT=4``.
On 2026-12-01 PyTorch's spin made a 7×7 64→64 forward of ours take 576 ms interleaved
against 474 ms alone; on 2026-12-02 OpenBLAS's spin made PyTorch's no-grad forward of a
3×3 512→512 layer on 2×512×23×30 take 57 ms interleaved against 28.5 ms alone (ours 34.5
and 32.8 ms), so per-layer ratios measured without this were biased towards us.

:func:`wait_passively` sets both variables (unless already set: they can be overridden),
and must run before NumPy and PyTorch are imported, because both libraries read them
when their thread pools start.  The machine record lists them.
"""
from __future__ import annotations

import os

__all__ = ["PASSIVE_WAITING", "wait_passively"]

#: The variables and values that make both thread pools sleep as soon as a call ends
#: (OpenBLAS: 2^4 cycles of spinning, its minimum).
PASSIVE_WAITING = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}


def wait_passively() -> None:
    """Set :data:`PASSIVE_WAITING` in the environment where not set; call before importing NumPy or torch."""
    for name, value in PASSIVE_WAITING.items():
        os.environ.setdefault(name, value)

"""Interleaved A/B timing: both sides in the same process, alternating, medians after a warm-up.

On a machine that other processes share, load comes in bursts.  Timing all of A and then all
of B lets a burst land on one side only; alternating them within each repeat (A B, then B A,
so neither always goes first and inherits the other's warm caches or spinning BLAS threads)
spreads it over both, and the median of the repeats discards the repeats a burst hit.  The
first calls (``warmup``) are not timed: they allocate workspaces, start thread pools and
fault in pages, which a training loop pays once.

A side is a few named phases (a convolution's ``fwd`` and ``bwd``, or one ``step``), timed one
by one; a repeat's ``total`` is the sum of its phases, and its median is taken over the
per-repeat sums (not the sum of the phase medians).  On a GPU every phase is bracketed by a
device synchronisation, since kernel launches return before the work is done.  The garbage
collector is off inside a timed phase (as ``timeit`` does) and runs between repeats.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def _no_sync() -> None:
    return None


@dataclass
class Side:
    """One implementation of one benchmark row: its phases in order, and how to synchronise its device."""

    name: str
    phases: dict[str, Callable[[], object]]
    sync: Callable[[], None] = _no_sync
    after_repeat: Callable[[], None] = _no_sync  # untimed, e.g. drop an autograd graph
    extra: dict = field(default_factory=dict)  # what the row reports beside times (algorithm, ...)


def _time_phase(fn, sync, clock) -> float:
    sync()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        fn()
        sync()
        return clock() - start
    finally:
        if enabled:
            gc.enable()


def interleaved(sides: list[Side], repeats: int, warmup: int, clock=time.perf_counter) -> dict[str, dict]:
    """Seconds per phase and per repeat for every side: ``{side: {phase: [s, ...], "total": [...]}}``."""
    for _ in range(warmup):
        for side in sides:
            for fn in side.phases.values():
                fn()
            side.sync()
            side.after_repeat()
    times = {side.name: {**{p: [] for p in side.phases}, "total": []} for side in sides}
    for r in range(repeats):
        order = sides if r % 2 == 0 else list(reversed(sides))
        for side in order:
            total = 0.0
            for phase, fn in side.phases.items():
                seconds = _time_phase(fn, side.sync, clock)
                times[side.name][phase].append(seconds)
                total += seconds
            times[side.name]["total"].append(total)
            side.after_repeat()
        gc.collect()
    return times


def medians_ms(times: dict[str, list[float]]) -> dict[str, float]:
    """Median milliseconds per phase (and ``total``) of one side."""
    return {phase: statistics.median(v) * 1e3 for phase, v in times.items() if v}

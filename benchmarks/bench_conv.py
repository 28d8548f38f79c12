"""Conv2d forward + backward: minisegnet against torch.nn.Conv2d, same machine, same threads.

    python benchmarks/bench_conv.py                 # SegNet shapes, float32, median of 5
    python benchmarks/bench_conv.py --quick         # the three smallest shapes only
    python benchmarks/bench_conv.py --variants      # also the formulations we did not keep
    python benchmarks/bench_conv.py --threads 1 --cpu-time   # steadier on a busy machine
    python benchmarks/bench_conv.py --algorithms flat-flipped,flat-scatter,gathered

Each row times one forward and one backward (input gradient, weight and bias
gradients) of the same layer on the same data; "fwd+bwd" is their sum, as a training
step pays it.  Timings are medians over ``--repeats`` runs after one warm-up, with the
implementations interleaved within each repeat so that a burst of load from another
process hits all of them alike.  PyTorch gets the same number of threads as NumPy's
BLAS (read with threadpoolctl when installed).

"ours" is ``Conv2d`` as a model builds it (``algorithm="auto"``).  ``--algorithms a,b``
adds one column per named formulation (``Conv2d(..., algorithm=name)``, see
``minisegnet.layers.conv.ALGORITHMS``), which is how the two backward forms
("flat-flipped", "flat-scatter") are compared.  ``--variants`` adds:
  * ``plain``:  the 49 (kh·kw) shifted GEMMs on views with inner dimension C, no copy
                (``max_workspace_bytes = 0``);
  * ``im2col``: the textbook formulation (full (C·kh·kw) x (N·Ho·Wo) matrix, one GEMM),
                here only as a yardstick; its memory is printed too.

Results worth keeping go to ``BENCHMARKS.md`` with the date, the machine and the command.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness.waiting import wait_passively  # noqa: E402

wait_passively()  # before NumPy and torch start their threads: interleaved timings stay fair to both

import numpy as np  # noqa: E402

from benchmarks.harness.machine import cpu_model  # noqa: E402
from minisegnet.layers.conv import ALGORITHMS, Conv2d, clear_workspace  # noqa: E402

# (label, N, C, O, H, W, k, padding): SegNet-Basic's 7x7 64->64 layers at batch 4 on the
# 360x480 CamVid image downsampled 8, 4 and 2 times, and VGG-16 3x3 layers of SegNet.
SHAPES = [
    ("SegNet-Basic 7x7 64->64", 4, 64, 64, 45, 60, 7, 3),
    ("SegNet-Basic 7x7 64->64", 4, 64, 64, 90, 120, 7, 3),
    ("SegNet-Basic 7x7 64->64", 4, 64, 64, 180, 240, 7, 3),
    ("SegNet-Basic 7x7 3->64 (input)", 4, 3, 64, 90, 120, 7, 3),
    ("VGG 3x3 64->64", 4, 64, 64, 90, 120, 3, 1),
    ("VGG 3x3 512->512", 4, 512, 512, 23, 30, 3, 1),
    ("VGG 3x3 512->512", 4, 512, 512, 12, 15, 3, 1),
]
QUICK = [SHAPES[0], SHAPES[4], SHAPES[6]]


def blas_info() -> tuple[str, int | None]:
    """(description, thread count) of NumPy's BLAS."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (install threadpoolctl to see it)", None
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            return f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture', '?')})", lib["num_threads"]
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return f"{lib.get('internal_api')} {lib.get('version')}", lib["num_threads"]
    return "unknown", None




class Im2col:
    """The yardstick: full im2col forward and backward (stride 1), NumPy only."""

    def __init__(self, weight, bias, padding):
        self.weight, self.bias, self.padding = weight, bias, padding

    def forward(self, x):
        n, c, h, w = x.shape
        o, _, k, _ = self.weight.shape
        p = self.padding
        ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
        xp = np.zeros((c, n, h + 2 * p, w + 2 * p), x.dtype)
        xp[:, :, p : p + h, p : p + w] = x.transpose(1, 0, 2, 3)
        cols = np.empty((c, k, k, n, ho, wo), x.dtype)
        for i in range(k):
            for j in range(k):
                cols[:, i, j] = xp[:, :, i : i + ho, j : j + wo]
        self.cols = cols.reshape(c * k * k, n * ho * wo)
        y = self.weight.reshape(o, -1) @ self.cols
        self.shape = (n, c, h, w)
        return (y.reshape(o, n, ho, wo) + self.bias[:, None, None, None]).transpose(1, 0, 2, 3).copy()

    def backward(self, dy):
        n, c, h, w = self.shape
        o, _, k, _ = self.weight.shape
        p = self.padding
        ho, wo = dy.shape[2:]
        d2 = dy.transpose(1, 0, 2, 3).reshape(o, -1)
        self.db = d2.sum(axis=1)
        self.dw = (d2 @ self.cols.T).reshape(self.weight.shape)
        dcols = (self.weight.reshape(o, -1).T @ d2).reshape(c, k, k, n, ho, wo)
        dxp = np.zeros((c, n, h + 2 * p, w + 2 * p), dy.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, :, i : i + ho, j : j + wo] += dcols[:, i, j]
        return dxp[:, :, p : p + h, p : p + w].transpose(1, 0, 2, 3).copy()


CLOCK = time.perf_counter  # --cpu-time switches to time.process_time


def time_once(fn) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1e3


def bench_shape(shape, repeats: int, dtype, variants: bool, torch, algorithms=()):
    label, n, c, o, h, w, k, p = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    conv = Conv2d(c, o, k, padding=p, rng=0).astype(dtype)
    dy = rng.standard_normal((n, o, h + 2 * p - k + 1, w + 2 * p - k + 1)).astype(dtype)

    impls = {}

    def ours_factory(budget, algorithm="auto"):
        def fwd():
            conv.max_workspace_bytes = budget
            conv.algorithm = algorithm
            conv.forward(x)

        def bwd():  # runs the algorithm of the forward just before it
            conv.max_workspace_bytes = budget
            conv.zero_grad()
            conv.backward(dy)

        return fwd, bwd

    impls["ours"] = ours_factory(Conv2d.max_workspace_bytes)
    for name in algorithms:
        impls[name] = ours_factory(Conv2d.max_workspace_bytes, name)
    if variants:
        impls["plain"] = ours_factory(0)
        ref = Im2col(conv.weight.data, conv.bias.data, p)
        impls["im2col"] = (lambda: ref.forward(x), lambda: ref.backward(dy))
    if torch is not None:
        tconv = torch.nn.Conv2d(c, o, k, padding=p).to(getattr(torch, np.dtype(dtype).name))
        with torch.no_grad():
            tconv.weight.copy_(torch.from_numpy(conv.weight.data))
            tconv.bias.copy_(torch.from_numpy(conv.bias.data))
        tx = torch.from_numpy(x).requires_grad_(True)
        tdy = torch.from_numpy(dy)
        state = {}

        def tfwd():
            tx.grad = None
            tconv.zero_grad(set_to_none=True)
            state["y"] = tconv(tx)

        def tbwd():
            state["y"].backward(tdy)

        impls["torch"] = (tfwd, tbwd)

    times = {name: ([], []) for name in impls}
    for name, (fwd, bwd) in impls.items():  # warm-up (and the workspace)
        fwd()
        bwd()
    for _ in range(repeats):
        for name, (fwd, bwd) in impls.items():
            times[name][0].append(time_once(fwd))
            times[name][1].append(time_once(bwd))
    result = {}
    for name, (tf, tb) in times.items():
        totals = [a + b for a, b in zip(tf, tb)]
        result[name] = (statistics.median(tf), statistics.median(tb), statistics.median(totals))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="three small shapes only")
    parser.add_argument("--variants", action="store_true", help="also time the plain shifted GEMMs and im2col")
    parser.add_argument("--algorithms", default="",
                        help=f"comma-separated Conv2d algorithm names to time as well: {', '.join(ALGORITHMS)}")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit NumPy's BLAS (needs threadpoolctl) and PyTorch to this many threads")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock: with --threads 1, "
                             "far less sensitive to other processes on a shared machine")
    args = parser.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    dtype = np.dtype(args.dtype)
    algorithms = [a for a in args.algorithms.split(",") if a]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s) {', '.join(unknown)}; expected some of {', '.join(ALGORITHMS)}")
    if args.threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            parser.error("--threads needs threadpoolctl (pip install threadpoolctl)")
        _limits = threadpool_limits(args.threads, user_api="blas")  # noqa: F841 (kept for the whole run)

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("(PyTorch not installed: timing minisegnet only)")
    blas, blas_threads = blas_info()
    if torch is not None and blas_threads:
        torch.set_num_threads(blas_threads)

    print(f"CPU     : {cpu_model()}, {os.cpu_count()} logical cores, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"Python  : {platform.python_version()}  NumPy {np.__version__}  BLAS {blas}, {blas_threads} threads")
    if torch is not None:
        print(f"PyTorch : {torch.__version__}, {torch.get_num_threads()} threads, "
              f"mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'}")
    print(f"dtype {dtype.name}, {'CPU' if args.cpu_time else 'wall-clock'} time, median of {args.repeats} after a warm-up; "
          f"Conv2d.max_workspace_bytes = {Conv2d.max_workspace_bytes / 2**20:.0f} MiB; times in ms\n")

    names = ["ours"] + algorithms + (["plain", "im2col"] if args.variants else [])
    names += ["torch"] if torch is not None else []
    widths = {n: max(10, len(n) + 4) for n in names}
    head = f"{'layer':32s} {'N':>2s} {'HxW':>8s} " + " ".join(
        f"{n + ' fwd':>{widths[n]}s} {n + ' f+b':>{widths[n]}s}" for n in names)
    if torch is not None:
        head += f" {'f+b ours/torch':>15s}"
    print(head)
    print("-" * len(head))
    for shape in QUICK if args.quick else SHAPES:
        label, n, c, o, h, w, k, p = shape
        usable = [a for a in algorithms if ALGORITHMS[a].unsupported(Conv2d(c, o, k, padding=p)) is None]
        result = bench_shape(shape, args.repeats, dtype, args.variants, torch, usable)
        clear_workspace()
        row = f"{label:32s} {n:2d} {f'{h}x{w}':>8s} "
        row += " ".join(f"{result[m][0]:{widths[m]}.1f} {result[m][2]:{widths[m]}.1f}" if m in result
                        else f"{'-':>{widths[m]}s} {'-':>{widths[m]}s}" for m in names)  # "-": not for this layer
        if torch is not None:
            row += f" {result['ours'][2] / result['torch'][2]:15.2f}"
        print(row, flush=True)
        if args.variants:
            im2col_mb = c * k * k * n * h * w * dtype.itemsize / 2**20
            print(f"{'':32s}    im2col matrix here: {im2col_mb:.0f} MiB; input {c * n * h * w * dtype.itemsize / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

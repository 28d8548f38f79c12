"""Measure the memory SegNet's decoder keeps: pooling indices versus encoder feature maps.

The SegNet article's argument for its decoder is memory: it stores only the positions of
the maxima of every 2×2 pooling window, where FCN / U-Net-style decoders keep the encoder
feature maps themselves.  This script *measures* both on real forwards (not from a
formula): it runs each network in eval mode on one CamVid-sized image and records

* the bytes of the index arrays that ``encode`` actually hands to the decoder;
* the bytes of the encoder feature maps that reach each max pooling (what a decoder with
  skip connections would have to keep instead), captured from the pooling layers' inputs;
* the bytes of the pooled maps (what an FCN-8s-style skip from the pooling outputs keeps);
* with tracemalloc (which traces every NumPy allocation): the buffers layers keep and
  reuse between calls (Conv2d's workspace), the peak of an eval forward above the
  weights (the working set: current feature maps, workspace, indices), what one more
  forward leaves allocated (should be 0), and its time.

Usage::

    python benchmarks/bench_memory.py                       # SegNet and SegNet-Basic, 1x3x360x480
    python benchmarks/bench_memory.py --models segnet-basic --height 180 --width 240

NumPy on the CPU, float32, full width.  The full SegNet forward takes seconds to tens of
seconds on a small CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from minisegnet.grad_mode import no_grad  # noqa: E402
from minisegnet.models import build_model  # noqa: E402


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:9.2f}"


def measure(arch: str, batch: int, height: int, width: int, seed: int = 0) -> dict:
    """All the numbers for one network; run it in a fresh process (buffers are global)."""
    tracemalloc.start()  # before anything: every NumPy allocation from here on is traced
    model = build_model(arch).eval()
    x = np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)
    weights_and_input = tracemalloc.get_traced_memory()[0]

    # 1. The arrays that cross from encoder to decoder, captured while encode() runs.
    encoder_maps, pooled_maps = [], []
    pools = [stage.pool for stage in model.encoder]
    for pool in pools:
        def capturing(features, _forward=pool.forward):
            y, indices = _forward(features)
            encoder_maps.append(features.nbytes)  # the map a skip connection would keep
            pooled_maps.append(y.nbytes)
            return y, indices

        object.__setattr__(pool, "forward", capturing)
    try:
        with no_grad():  # inference: nothing kept for a backward
            bottom, pool_indices = model.encode(x)
    finally:
        for pool in pools:
            pool.__dict__.pop("forward", None)
    indices_bytes = sum(int(idx.nbytes) for idx, _ in pool_indices)
    index_dtypes = sorted({str(idx.dtype) for idx, _ in pool_indices})
    del bottom, pool_indices

    # 2. Eval forwards.  The first also allocates the buffers that layers keep and reuse
    #    between calls (Conv2d's workspace); the second one is the steady state.
    try:
        with no_grad():
            model(x)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        start = time.perf_counter()
        with no_grad():
            logits = model(x)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        logits_bytes = int(logits.nbytes)
        del logits
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {
        "arch": arch,
        "params": model.num_parameters(),
        "index_dtypes": ",".join(index_dtypes),
        "indices": indices_bytes,
        "encoder_maps": sum(encoder_maps),
        "pooled_maps": sum(pooled_maps),
        "input": int(x.nbytes),
        "logits": logits_bytes,
        "reused": before - weights_and_input,
        "peak": peak - weights_and_input,
        "retained": after - before,
        "seconds": seconds,
    }


def measure_in_subprocess(arch: str, batch: int, height: int, width: int) -> dict:
    """:func:`measure` in a fresh interpreter, so that one network's buffers do not hide the next one's."""
    command = [sys.executable, __file__, "--one", arch, "--batch", str(batch), "--height", str(height),
               "--width", str(width)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    blas_threads = {k: os.environ[k] for k in names if k in os.environ}
    return (
        f"{platform.platform()}; {platform.processor() or platform.machine()}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; NumPy {np.__version__}"
        + (f"; {blas_threads}" if blas_threads else "")
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["segnet", "segnet-basic"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--one", metavar="ARCH", help=argparse.SUPPRESS)  # internal: one network, JSON out
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.height, args.width)))
        return

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine()}")
    print(f"input:   {args.batch}x3x{args.height}x{args.width} float32, eval mode, NumPy\n")
    results = [measure_in_subprocess(arch, args.batch, args.height, args.width) for arch in args.models]

    rows = [
        ("parameters", lambda r: f"{r['params']:>12,}"),
        ("pooling indices kept for the decoder (MiB)", lambda r: f"{mib(r['indices'])} {r['index_dtypes']}"),
        ("encoder maps before pooling, FCN/U-Net skips (MiB)", lambda r: mib(r["encoder_maps"])),
        ("  ratio encoder maps / indices", lambda r: f"{r['encoder_maps'] / r['indices']:9.1f}x"),
        ("pooled encoder maps, FCN-8s-style skips (MiB)", lambda r: mib(r["pooled_maps"])),
        ("  ratio pooled maps / indices", lambda r: f"{r['pooled_maps'] / r['indices']:9.1f}x"),
        ("input / logits (MiB)", lambda r: f"{mib(r['input']).strip()} / {mib(r['logits']).strip()}"),
        ("buffers layers keep for reuse between calls (MiB)", lambda r: mib(r["reused"])),
        ("eval forward: peak above weights + input (MiB)", lambda r: mib(r["peak"])),
        ("eval forward: growth per call (MiB)", lambda r: mib(r["retained"])),
        ("eval forward time (s, under tracemalloc)", lambda r: f"{r['seconds']:9.2f}"),
    ]
    label_width = max(len(label) for label, _ in rows)
    col = 22
    print("".ljust(label_width) + "".join(r["arch"].rjust(col) for r in results))
    for label, cell in rows:
        print(label.ljust(label_width) + "".join(cell(r).rjust(col) for r in results))


if __name__ == "__main__":
    main()

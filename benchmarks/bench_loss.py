"""What the Lovász-softmax term costs a SegNet-Basic training step (180×240, batch 2, 11 classes).

    python benchmarks/bench_loss.py              # 6 rounds
    python benchmarks/bench_loss.py --rounds 10

Each round runs one training step (forward, loss, backward) with the class-weighted
cross-entropy alone and one with ``cross-entropy + 1 × LovaszSoftmax`` (``LossSum``, what
``minisegnet train --lovasz-weight 1`` trains on), interleaved, on the same random batch, then
the Lovász-softmax forward + backward alone on a logits map of that size.  Printed: the medians,
the median of the per-round ratios, and the machine.  Results worth keeping go to
``BENCHMARKS.md`` with the date, the machine and the command.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from minisegnet.layers import LossSum, LovaszSoftmax, SoftmaxCrossEntropy
from minisegnet.models import SegNetBasic

SIZE = (180, 240)
BATCH = 2
CLASSES = 11
VOID = 11


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default: 6)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    model = SegNetBasic(rng=0)
    x = rng.standard_normal((BATCH, 3, *SIZE)).astype(np.float32)
    labels = rng.integers(0, CLASSES + 1, (BATCH, *SIZE)).astype(np.uint8)  # void included
    weights = rng.uniform(0.2, 5.0, CLASSES)
    losses = {
        "cross-entropy": SoftmaxCrossEntropy(weights, ignore_index=VOID),
        "cross-entropy + Lovász": LossSum((1.0, SoftmaxCrossEntropy(weights, ignore_index=VOID)),
                                          (1.0, LovaszSoftmax(ignore_index=VOID))),
    }
    lovasz = LovaszSoftmax(ignore_index=VOID)
    logits = model.forward(x)

    def step(loss) -> float:
        started = time.perf_counter()
        model.zero_grad()
        loss.forward(model.forward(x), labels)
        model.backward(loss.backward(), input_grad=False)
        return time.perf_counter() - started

    for loss in losses.values():  # warm-up: scratch arrays, first-touch pages
        step(loss)
    times = {name: [] for name in losses}
    alone = []
    for _ in range(args.rounds):
        for name, loss in losses.items():
            times[name].append(step(loss))
        started = time.perf_counter()
        lovasz.forward(logits, labels)
        lovasz.backward()
        alone.append(time.perf_counter() - started)

    print(f"SegNet-Basic training step, {BATCH}x3x{SIZE[0]}x{SIZE[1]} float32, {args.rounds} interleaved rounds")
    for name, values in times.items():
        print(f"  {name:24s} median {np.median(values):.3f} s")
    ratios = np.array(times["cross-entropy + Lovász"]) / np.array(times["cross-entropy"])
    print(f"  ratio (with / without the term): median {np.median(ratios):.3f}, "
          f"range {ratios.min():.3f}-{ratios.max():.3f}")
    print(f"  LovaszSoftmax forward + backward alone ({BATCH}x{CLASSES}x{SIZE[0]}x{SIZE[1]}): "
          f"median {1000 * np.median(alone):.0f} ms")
    print(f"  {_cpu_name()}, NumPy {np.__version__}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()

"""One SegNet-Basic training step: minisegnet against the same network in PyTorch.

    python benchmarks/bench_training_step.py                       # 4 x 3 x 180 x 240, float32
    python benchmarks/bench_training_step.py --size 360x480 --batch-size 2
    python benchmarks/bench_training_step.py --model segnet --width 0.25

A step is what the training loop pays per batch: forward, per-pixel softmax
cross-entropy with class weights and void ignored, backward through the whole network
(every parameter gradient), and an SGD update.  Both sides run the same architecture
with the same weights on the same data, with as many threads as NumPy's BLAS has
(read with threadpoolctl when installed).  The two are interleaved within each repeat so
that load from other processes hits both alike; the table reports medians after one
warm-up step, and the ratio minisegnet / PyTorch.  Eval-mode inference (no activations
kept) is timed too.
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

from minisegnet.grad_mode import no_grad  # noqa: E402
from minisegnet.layers import SoftmaxCrossEntropy  # noqa: E402
from minisegnet.models import build_model  # noqa: E402
from minisegnet.optim import SGD  # noqa: E402


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info

        counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def torch_twin(torch, model):
    """The same network from torch.nn layers, with our weights copied in.

    It walks our module tree and mirrors it: Conv2d, BatchNorm2d and ReLU map one to
    one; our encoder/decoder stages become a small torch Module with the same order.
    """
    nn = torch.nn
    from minisegnet.layers import BatchNorm2d, Conv2d, ReLU

    def mirror(seq):
        layers = []
        for m in seq.modules():
            if isinstance(m, Conv2d):
                k = m.weight.data.shape[-1]
                c = nn.Conv2d(m.weight.data.shape[1], m.weight.data.shape[0], k, padding=k // 2,
                              bias=m.bias is not None)
                with torch.no_grad():
                    c.weight.copy_(torch.from_numpy(m.weight.data))
                    if m.bias is not None:
                        c.bias.copy_(torch.from_numpy(m.bias.data))
                layers.append(c)
            elif isinstance(m, BatchNorm2d):
                layers.append(nn.BatchNorm2d(m.weight.data.shape[0]))
            elif isinstance(m, ReLU):
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList(mirror(s) for s in model.encoder)
            self.dec = nn.ModuleList(mirror(s) for s in model.decoder)
            self.cls = mirror(model.classifier)
            self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
            self.unpool = nn.MaxUnpool2d(2, 2)

        def forward(self, x):
            saved = []
            for stage in self.enc:
                x = stage(x)
                size = x.shape[-2:]
                x, idx = self.pool(x)
                saved.append((idx, size))
            for stage, (idx, size) in zip(self.dec, reversed(saved)):
                x = stage(self.unpool(x, idx, output_size=size))
            return self.cls(x)

    return Twin()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="segnet-basic", choices=("segnet-basic", "segnet"))
    ap.add_argument("--width", type=float, default=0.25, help="SegNet width factor (default 0.25)")
    ap.add_argument("--size", default="180x240")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    n = args.batch_size

    config = {"width": args.width} if args.model == "segnet" else {}
    model = build_model(args.model, **config)
    model.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    labels = rng.integers(0, 12, size=(n, h, w)).astype(np.int64)
    weights = rng.uniform(0.2, 5.0, size=11).astype(np.float32)
    criterion = SoftmaxCrossEntropy(weight=weights, ignore_index=11)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def ours_step():
        model.zero_grad()
        logits = model.forward(x)
        criterion.forward(logits, labels)
        model.backward(criterion.backward())
        optimizer.step()

    def ours_eval():
        model.eval()
        with no_grad():
            model.forward(x)
        model.train()

    timers = {"minisegnet step": ours_step, "minisegnet eval": ours_eval}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        threads = blas_threads()
        torch.set_num_threads(threads)
        twin = torch_twin(torch, model).train()
        tx = torch.from_numpy(x)
        tl = torch.from_numpy(labels)
        tcrit = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weights), ignore_index=11)
        topt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def torch_step():
            topt.zero_grad()
            tcrit(twin(tx), tl).backward()
            topt.step()

        def torch_eval():
            twin.eval()
            with torch.no_grad():
                twin(tx)
            twin.train()

        timers.update({"torch step": torch_step, "torch eval": torch_eval})

    times = {k: [] for k in timers}
    for fn in timers.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for k, fn in timers.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; BLAS threads {blas_threads()}; "
          f"numpy {np.__version__}; torch {torch.__version__ if torch else 'absent'}; Python {platform.python_version()}")
    print(f"command: python benchmarks/bench_training_step.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"model: {args.model} {config or ''} ({model.num_parameters():,} parameters), input {n}x3x{h}x{w} float32, "
          f"median of {args.repeats}")
    print(f"{'what':<12} {'minisegnet':>12} {'torch':>10} {'ratio':>7} {'ours img/s':>11}")
    for what in ("step", "eval"):
        ours = med[f"minisegnet {what}"]
        theirs = med.get(f"torch {what}")
        ratio = f"{ours / theirs:6.2f}x" if theirs else "   n/a"
        theirs_s = f"{theirs * 1e3:8.0f}ms" if theirs else "       n/a"
        print(f"{what:<12} {ours * 1e3:10.0f}ms {theirs_s} {ratio} {n / ours:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a whole training step goes: every layer timed *inside* the step, with its page faults.

    python -m benchmarks.profile_step                              # SegNet-Basic, 4×3×180×240
    python -m benchmarks.profile_step --model segnet --batch 2
    python -m benchmarks.profile_step --quick                      # tiny shapes: a smoke run
    python -m benchmarks.profile_step --eval                       # an eval forward (no_grad) instead

``benchmarks.run`` times each layer shape in isolation, where its arrays are warm and its
scratch is reused call after call.  Inside a step they are not: a layer's output is a new
array (fresh pages from the operating system for every map above glibc's mmap threshold),
and the step's other layers have evicted the caches.  So the layer rows of the
harness can sum to less than the step.  This tool measures the step itself: it wraps the
``forward`` and ``backward`` of every leaf layer of the model (and the loss) with a timer
and a count of the process's minor page faults (``getrusage``), runs ``--warmup`` untimed
steps and then ``--repeats`` timed ones, and reports per layer type and for the largest
layers: milliseconds per step, the share of the step, and page faults per step.  What is
not inside a layer (``zero_grad``, the optimizer, Python between the layers) is the row
"outside the layers".  ``--eval`` profiles eval forwards (``no_grad``, as ``predict`` runs them)
the same way.

The timers cost a few microseconds per call (under 0.1 % of a SegNet-Basic step).  The
wrapped methods are attributes of the model's own layer objects; nothing in the library is
changed.  Output: Markdown on stdout, progress on stderr.  Timings are never asserted.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine  # noqa: E402
from benchmarks.harness.cases import ModelCase, OurDevice, model_config  # noqa: E402

try:
    import resource
except ImportError:  # not Unix: no page-fault counts
    resource = None

MODELS = ("segnet-basic", "segnet")
DEFAULT_BATCH = {"segnet-basic": 4, "segnet": 2}


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


class LayerTimers:
    """Seconds and page faults per (layer name, "forward" / "backward"), summed over the calls."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.faults = collections.defaultdict(int)
        self.kinds = {}

    def wrap(self, name: str, kind: str, layer) -> None:
        self.kinds[name] = kind
        for method in ("forward", "backward"):
            original = getattr(layer, method)

            def timed(*args, _original=original, _key=(name, method), **kwargs):
                faults, start = _faults(), time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_key] += time.perf_counter() - start
                    self.faults[_key] += _faults() - faults

            setattr(layer, method, timed)

    def clear(self) -> None:
        self.seconds.clear()
        self.faults.clear()


def profile(arch: str, batch: int, height: int, width: int, repeats: int, warmup: int,
            segnet_width: float = 1.0, mode: str = "step") -> dict:
    """Time ``repeats`` training steps (``mode="step"``) or eval forwards (``"eval"``) of ``arch``, layer by layer.

    Per-call numbers: seconds and page faults per (layer, method), and for the whole call.
    """
    case = ModelCase(arch, model_config(arch, segnet_width), batch, height, width, OurDevice("cpu"), None,
                     sides=("ours",), check_peer=False)
    timers = LayerTimers()
    for name, layer in case.model.named_modules():
        if name and not list(layer.children()):
            timers.wrap(name, type(layer).__name__, layer)
    timers.wrap("loss", type(case.criterion).__name__, case.criterion)
    step = case.our_step() if mode == "step" else case.our_eval()
    for _ in range(warmup):
        step()
    timers.clear()
    steps, faults = [], _faults()
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    faults = _faults() - faults
    per_step = {key: value / repeats for key, value in timers.seconds.items()}
    return {"arch": arch, "mode": mode, "input": (batch, 3, height, width), "repeats": repeats, "warmup": warmup,
            "step_s": sum(steps) / repeats, "step_faults": faults / repeats, "layer_s": per_step,
            "layer_faults": {key: value / repeats for key, value in timers.faults.items()}, "kinds": timers.kinds}


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def markdown(result: dict, top: int = 8) -> str:
    """The per-type table and the ``top`` largest layers of :func:`profile`'s result.

    For eval forwards (``mode="eval"``) the backward columns are left out.
    """
    step = result["step_s"]
    training = result.get("mode", "step") == "step"
    call = "step" if training else "forward"
    by_kind = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])  # fwd s, bwd s, faults, layers
    counted = set()
    for (name, method), seconds in result["layer_s"].items():
        entry = by_kind[result["kinds"][name]]
        entry[0 if method == "forward" else 1] += seconds
        entry[2] += result["layer_faults"][(name, method)]
        if name not in counted:
            counted.add(name)
            entry[3] += 1

    def times(fwd, bwd, total=True):
        if not training:
            return f"{_ms(fwd)} |"
        return f"{_ms(fwd)} | {_ms(bwd)} |" + (f" {_ms(fwd + bwd)} |" if total else "")

    inside = sum(result["layer_s"].values())
    head = "forward ms | backward ms | total ms" if training else "forward ms"
    lines = [f"| layer type | layers | {head} | share of the {call} | page faults |",
             "|---|---|" + "---|" * (3 if training else 1) + "---|---|"]
    for kind, (fwd, bwd, faults, count) in sorted(by_kind.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        lines.append(f"| {kind} | {count} | {times(fwd, bwd)} {(fwd + bwd) / step:.1%} | {faults:.0f} |")
    outside_faults = max(0.0, result["step_faults"] - sum(result["layer_faults"].values()))  # no "-0"
    outside = "outside the layers (zero_grad, optimizer)" if training else "outside the layers"
    blanks = "| | " if training else ""  # the forward and backward columns
    lines.append(f"| {outside} | | {blanks}{_ms(step - inside)} | {(step - inside) / step:.1%} "
                 f"| {outside_faults:.0f} |")
    lines.append(f"| **the whole {call}** | | {blanks}**{_ms(step)}** | 100% | {result['step_faults']:.0f} |")
    per_layer = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for (name, method), seconds in result["layer_s"].items():
        per_layer[name][0 if method == "forward" else 1] += seconds
        per_layer[name][2] += result["layer_faults"][(name, method)]
    largest = sorted(per_layer.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:top]
    head = "forward ms | backward ms" if training else "forward ms"
    layers = [f"| layer | type | {head} | share of the {call} | page faults |",
              "|---|---|" + "---|" * (2 if training else 1) + "---|---|"]
    for name, (fwd, bwd, faults) in largest:
        layers.append(f"| `{name}` | {result['kinds'][name]} | {times(fwd, bwd, total=False)} "
                      f"{(fwd + bwd) / step:.1%} | {faults:.0f} |")
    shape = "×".join(map(str, result["input"]))
    what, calls = ("training step (SGD)", "steps") if training else ("eval forward (no_grad)", "forwards")
    return "\n".join([f"{result['arch']} {what}, {shape}, mean of {result['repeats']} {calls} after "
                      f"{result['warmup']} untimed; milliseconds and minor page faults per {call}:", "", *lines, "",
                      f"The {top} largest layers:", "", *layers])


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segnet-basic", choices=MODELS)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", default="180x240", help="HEIGHTxWIDTH (default 180x240)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="NumPy's BLAS threads (default: what the BLAS has)")
    parser.add_argument("--quick", action="store_true", help="32x48, batch 2, SegNet at width 0.25, one repeat")
    parser.add_argument("--eval", action="store_true", help="profile eval forwards (no_grad) instead of steps")
    args = parser.parse_args(argv)
    try:
        args.height, args.width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size: expected HEIGHTxWIDTH such as 180x240, got {args.size!r}")
    if args.quick:
        args.height, args.width, args.repeats = 32, 48, 1
    if args.batch is None:
        args.batch = 2 if args.quick else DEFAULT_BATCH[args.model]
    if min(args.batch, args.height, args.width, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --size and --repeats must be positive, --warmup at least 0")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    blas = machine.numpy_blas()
    if args.threads is not None:
        blas.set_threads(args.threads)
    print(f"profiling {args.model} at {args.batch}×3×{args.height}×{args.width} ...", file=sys.stderr, flush=True)
    result = profile(args.model, args.batch, args.height, args.width, args.repeats, args.warmup,
                     0.25 if args.quick else 1.0, mode="eval" if args.eval else "step")
    blas_record = blas.record()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"Measured with `python -m benchmarks.profile_step {' '.join(argv)}` on {machine.cpu_model()}, "
          f"{machine.usable_cores()} usable cores, NumPy with {blas_record.get('name')} (kernel "
          f"{blas_record.get('kernel') or '?'}, threads: {blas_record.get('threads') or '?'}); "
          f"load average {[round(v, 2) for v in load] if load else '?'} at the end.\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark harness: minisegnet against PyTorch on identical shapes, one process, one command.

    python -m benchmarks.run                          # everything, CPU, float32 (4-8 min on 2 cores)
    python -m benchmarks.run --json results.json      # ... and keep every number
    python -m benchmarks.run --only conv --models segnet-basic --threads 1
    python -m benchmarks.run --only eval --models segnet --size 360x480 --batch 1    # the eval-memory target
    python -m benchmarks.run --quick                  # tiny shapes, one repeat: a smoke run (seconds)
    python -m benchmarks.run --device cuda [--tf32]   # ours on CuPy, PyTorch on CUDA

Run from the repository root.  What is timed, per model (SegNet-Basic at batch 4 and SegNet
at batch 2, 180×240, the step sizes of issue 11):

``conv``  every distinct Conv2d layer shape of the model, found by recording the inputs of
          the model's own layers on one forward: training forward, and forward + backward
          (weight, bias and input gradients, except the model's first layer, which skips
          the input gradient as ``model.backward`` does);
``norm``  BatchNorm2d + in-place ReLU (BN alone where the model has no ReLU), forward and
          forward + backward, on every distinct BN input shape;
``pool``  max pooling with indices + the unpooling that mirrors it, forward and forward +
          backward, on every distinct pooling input;
``step``  a whole training step (zero_grad, forward, class-weighted softmax cross-entropy
          with void ignored, backward, SGD with momentum, or ``--optimizer adam``) against
          the same network in PyTorch with the same weights (``torch_twin`` of
          ``bench_training_step.py``);
``eval``  an eval forward, ours under ``minisegnet.no_grad()``, PyTorch's under
          ``torch.no_grad()``.

Both sides run in this process, on the same arrays, with the same thread count, interleaved
within each repeat (``harness/timing.py``); the tables give medians after ``--warmup``
untimed calls, the ratio ours / PyTorch, the GFLOP/s of the convolutions (2 flops per
multiply-add; fwd+bwd is 3× the forward, 2× for the first layer) and their fraction of
this machine's SGEMM peak (``np.matmul`` of two large float32 squares, same threads), and,
for the step and eval rows, the peak working memory of each side measured in a fresh
process (``harness/memory.py``).  The machine, the BLAS and its kernel, the thread counts,
the versions and this command are recorded.  Without PyTorch (or with ``--no-torch``) its
columns are empty and ours are still measured.

Output: the Markdown for ``BENCHMARKS.md`` on stdout (progress goes to stderr), and with
``--json PATH`` every number, including each repeat's time.

How long: every row runs ``warmup + repeats`` times on each side.  On a 2-core machine one
pass over everything (both sides) is about 8 s of conv rows, 10 s of training steps, 4 s of
eval forwards and 1-2 s of BN and pooling rows when our step is ~1.5x PyTorch's; the eight
memory processes add about a minute.  With the defaults (1 warm-up, 5 repeats) that is
roughly 4 minutes on an idle 2-core AMD EPYC and up to about 8 on a slower 2-core Xeon;
``--quick`` takes about 10 s without the memory processes (``--no-memory``), 20 s with them.
Timings are never asserted anywhere.  Run it on an otherwise idle machine; on a shared one,
``--threads 1 --cpu-time`` is steadier (CPU time counts only this process's work).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Both sides' worker threads spin after each call unless told to sleep, and on 2 cores a
# spinning thread takes a core from the other side's next call: passive waiting for both
# (benchmarks/harness/waiting.py has the measurements).  Set before NumPy and torch start
# their thread pools; recorded with the machine; set the variables yourself to override.
from benchmarks.harness.waiting import wait_passively  # noqa: E402

wait_passively()

from benchmarks.harness import machine  # noqa: E402
from benchmarks.harness.cases import (  # noqa: E402
    OPTIMIZERS, ModelCase, OurDevice, TorchDevice, conv_sides, model_config, norm_sides, pool_sides)
from benchmarks.harness.memory import measure_in_subprocess  # noqa: E402
from benchmarks.harness.report import Row, markdown, phase_entry, summarize, to_json  # noqa: E402
from benchmarks.harness.shapes import record_layers  # noqa: E402
from benchmarks.harness.timing import interleaved  # noqa: E402
from minisegnet.models import build_model  # noqa: E402

SECTIONS = ("conv", "norm", "pool", "step", "eval")
MODELS = ("segnet-basic", "segnet")
DEFAULT_BATCH = {"segnet-basic": 4, "segnet": 2}
QUICK = {"size": "32x48", "batch": "2", "repeats": 1, "warmup": 1, "sgemm_size": 256, "segnet_width": 0.25}
DEFAULTS = {"size": "180x240", "batch": None, "repeats": 5, "warmup": 1, "sgemm_size": 2048, "segnet_width": 1.0}
CUDA_SGEMM_SIZE = 8192


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 180x240, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected a positive HEIGHTxWIDTH, got {text!r}")
    return h, w


def _choices(text: str, allowed, what: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; "
                                         f"expected a comma list of {', '.join(allowed)}")
    return chosen


def _batches(text: str | None, models: list[str]) -> dict[str, int]:
    """``None`` (the issue's step sizes), ``N`` (every model) or ``segnet-basic=4,segnet=2``."""
    batches = {m: DEFAULT_BATCH[m] for m in models}
    if text is None:
        return batches
    for item in text.split(","):
        name, _, value = item.rpartition("=")
        try:
            count = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--batch: expected N or MODEL=N, got {item!r}") from None
        if count < 1 or (name and name not in MODELS):
            raise argparse.ArgumentTypeError(f"--batch: expected a positive N and a model of {', '.join(MODELS)}, "
                                             f"got {item!r}")
        for m in ([name] if name else models):
            batches[m] = count
    return batches


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, help=f"timed repeats per row (default {DEFAULTS['repeats']})")
    parser.add_argument("--warmup", type=int, help=f"untimed calls before them (default {DEFAULTS['warmup']})")
    parser.add_argument("--threads", type=int, help="NumPy's BLAS and PyTorch threads (default: what the BLAS has)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--size", help=f"HEIGHTxWIDTH of the images (default {DEFAULTS['size']})")
    parser.add_argument("--batch", help="N for every model, or MODEL=N,... (default segnet-basic=4,segnet=2)")
    parser.add_argument("--segnet-width", type=float, help="SegNet's width factor (default 1.0: the paper's)")
    parser.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 on the GPU (off by default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (steadier on a shared machine, with --threads 1)")
    parser.add_argument("--no-torch", action="store_true", help="time minisegnet only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--sgemm-size", type=int, help="n of the n×n SGEMM peak (default 2048; 8192 on CUDA)")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes (2×3×32×48, SegNet width 0.25), 1 repeat: a smoke run")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not args.quick and args.sgemm_size == DEFAULTS["sgemm_size"]:
        args.sgemm_size = CUDA_SGEMM_SIZE
    try:
        args.only = _choices(args.only, SECTIONS, "section")
        args.models = _choices(args.models, MODELS, "model")
        args.height, args.width = _size(args.size)
        args.batches = _batches(args.batch, args.models)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.cpu_time and args.device == "cuda":
        parser.error("--cpu-time measures the CPU's work; on --device cuda use the wall clock")
    return args


def _phases(times, flops_by_phase, peak) -> dict:
    ours, theirs = times["ours"], times.get("torch")
    entries = {}
    for label, (key, flops) in flops_by_phase.items():
        entries[label] = phase_entry(ours[key], theirs[key] if theirs else None, flops, peak)
    return entries


def run(args) -> tuple[list[Row], list[dict], dict, dict]:
    started = time.perf_counter()
    cupy = None
    if args.device == "cuda":
        from minisegnet.backend import DeviceUnavailableError, import_cupy

        try:
            cupy = import_cupy()
        except DeviceUnavailableError as exc:
            raise SystemExit(f"benchmarks.run: --device cuda: {exc}")
    notes = []
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            notes.append("PyTorch is not installed: its columns are empty (–).")
            log("PyTorch is not installed: timing minisegnet only")
    installed_torch = torch
    if torch is not None and args.device == "cuda" and not torch.cuda.is_available():
        notes.append("This PyTorch has no CUDA: its columns are empty (–).")
        torch = None

    blas = machine.numpy_blas()
    if args.threads is not None:
        blas.set_threads(args.threads)
    threads = args.threads or blas.threads
    if torch is not None:
        if threads:
            torch.set_num_threads(threads)
        if args.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = args.tf32
            torch.backends.cudnn.allow_tf32 = args.tf32
    record = machine.machine_record(installed_torch, args.device, cupy, command=args.argv)
    if args.no_torch:
        record["torch"] = {"installed": None, "not_used": "--no-torch"}
        notes.append("PyTorch was not used (--no-torch): its columns are empty (–).")
    elif torch is None and installed_torch is not None:
        record["torch"]["not_used"] = "this PyTorch has no CUDA"
    clock = time.process_time if args.cpu_time else time.perf_counter
    ours = OurDevice(args.device, cupy)
    peer = TorchDevice(torch, args.device) if torch is not None else None

    log(f"SGEMM peak: {'cupy' if cupy else 'numpy'}.matmul {args.sgemm_size}×{args.sgemm_size} float32 ...")
    peak = machine.sgemm_peak(ours.xp, args.sgemm_size, repeats=5, sync=ours.sync)
    peak["library"] = "cupy" if cupy else "numpy"
    settings = {
        "device": args.device, "repeats": args.repeats, "warmup": args.warmup, "threads": threads,
        "clock": "CPU (process_time)" if args.cpu_time else "wall-clock", "sections": args.only,
        "models": args.models, "size": [args.height, args.width], "batches": args.batches,
        "segnet_width": args.segnet_width, "optimizer": args.optimizer, "tf32": args.tf32, "quick": args.quick,
        "sgemm_peak": peak, "notes": notes,
    }
    if torch is not None:
        settings["torch_sgemm"] = machine.torch_sgemm(torch, args.sgemm_size, args.device, sync=peer.sync)
    gflops_peak = peak["gflops"]

    rows: list[Row] = []
    for arch in args.models:
        batch = args.batches[arch]
        config = model_config(arch, args.segnet_width)
        layers = record_layers(build_model(arch, **config, rng=0), args.height, args.width, batch)
        if "conv" in args.only:
            for d in layers.distinct_convs():
                log(f"{arch}: conv {d.shape.label} on {d.shape.input_shape} ×{d.count}")
                sides, describe = conv_sides(d.shape, ours, peer)
                times = interleaved(sides, args.repeats, args.warmup, clock)
                phases = _phases(times, {"fwd": ("fwd", d.shape.forward_flops),
                                         "fwd+bwd": ("total", d.shape.training_flops)}, gflops_peak)
                rows.append(Row("conv", arch, d.shape.label, d.shape.input_shape, d.names, phases, describe()))
                del sides
        for section, distinct, build in (("norm", layers.distinct_norms, norm_sides),
                                         ("pool", layers.distinct_pools, pool_sides)):
            if section not in args.only:
                continue
            for d in distinct():
                log(f"{arch}: {d.shape.label} on {d.shape.input_shape} ×{d.count}")
                sides, describe = build(d.shape, ours, peer)
                times = interleaved(sides, args.repeats, args.warmup, clock)
                phases = _phases(times, {"fwd": ("fwd", None), "fwd+bwd": ("total", None)}, None)
                rows.append(Row(section, arch, d.shape.label, d.shape.input_shape, d.names, phases, describe()))
                del sides
        wanted = [s for s in ("step", "eval") if s in args.only]
        if wanted:
            case = ModelCase(arch, config, batch, args.height, args.width, ours, peer, args.optimizer)
            shape = (batch, 3, args.height, args.width)
            extra = {"parameters": case.parameters, "input": "×".join(map(str, shape)),
                     "peer_max_relative_difference": case.peer_difference}
            if case.peer_difference is not None and case.peer_difference > 1e-3:
                notes.append(f"{arch}: the PyTorch twin's eval logits differ from ours by "
                             f"{case.peer_difference:.1e} (relative): the peer may not be the same network.")
            for section in wanted:
                log(f"{arch}: {section} on {shape}")
                sides = case.step_sides() if section == "step" else case.eval_sides()
                times = interleaved(sides, args.repeats, args.warmup, clock)
                flops = layers.step_flops() if section == "step" else layers.eval_flops()
                what = (f"training step ({args.optimizer})" if section == "step" else "eval forward")
                phases = _phases(times, {section: ("total", flops)}, gflops_peak)
                rows.append(Row(section, arch, what, shape, [arch], phases, dict(extra)))
            del case, sides

    if not args.no_memory:
        for row in (r for r in rows if r.section in ("step", "eval")):
            memory = {}
            for side in ("ours", "torch") if torch is not None else ("ours",):
                log(f"{row.model}: peak memory of the {row.section}, {side} (fresh process)")
                result = measure_in_subprocess(side, row.model, row.section, row.shape[0], args.height, args.width,
                                               args.device, threads, args.optimizer, args.segnet_width, args.tf32)
                memory[f"{side}_peak_bytes"] = result.get("peak_bytes")
                memory[f"{side}_method"] = result.get("method")
                if "error" in result:
                    memory[f"{side}_error"] = result["error"]
                    notes.append(f"{row.model} {row.section} memory ({side}): {result['error']}.")
            row.extra["memory"] = memory
    summary = summarize(rows, args.models)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    record["load_average_at_end"] = [round(v, 2) for v in load] if load else None
    settings["elapsed_s"] = round(time.perf_counter() - started, 1)
    return rows, summary, record, settings


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    rows, summary, record, settings = run(args)
    print(markdown(rows, summary, record, settings))
    if args.json:
        Path(args.json).write_text(to_json(rows, summary, record, settings) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    log(f"done in {settings['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

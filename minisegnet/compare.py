"""SegNet's decoder against FCN's, measured: ``minisegnet compare-decoders``.

The SegNet article (Section 3.1, Table 1) trains decoder variants of one small network on
CamVid and compares what each costs -- memory kept for the decoder, time -- with what it
gives -- G, C, mIoU, BF.  This module does the same with minisegnet's variants
(:mod:`minisegnet.models.decoder_variants`)::

    segnet-basic               unpooling with the pooling indices (SegNet-Basic)
    fcn-basic                  learnt upsampling + K-channel encoder maps added (FCN-Basic)
    fcn-basic-noaddition       learnt upsampling only (FCN-Basic-NoAddition)
    fcn-basic-nodimreduction   learnt upsampling + 64-channel encoder maps added (FCN-Basic-NoDimReduction)
    bilinear-basic             fixed bilinear upsampling, then SegNet-Basic's decoder convolutions

Every variant is trained with **the same recipe, budget and seed** through the public
training API (``minisegnet.train.train(TrainConfig(...))``, defaults of
:class:`~minisegnet.train.TrainConfig` unless overridden), one after another, each in its
own run folder; then each is scored on the validation split and measured.  What is written
(in ``out_dir``): ``decoders.json`` (everything, with the settings, the machine and how each
number was measured), ``decoders.md`` (the table) and ``decoders.png`` (decoder memory
against mIoU, one point per variant: the article's trade-off).

How each number is measured (also stored in ``decoders.json``, ``"methods"``):

parameters
    ``model.num_parameters()``.
decoder memory
    the bytes of the arrays in ``kept`` (what ``encode`` hands to ``decode``) from one
    ``no_grad`` encode of one image at ``memory_size`` (360×480 by default, the article's
    size), with the trained model; the few integers of the sizes are not counted.  Also
    given as a multiple of SegNet-Basic's.
inference time
    median wall time of ``model.predict`` on one image at the training size, over
    ``repeats`` calls after one warm-up call.
training step time
    median wall time of one step (forward, class-weighted loss, backward, Adam step) on a
    batch of ``batch_size`` images at the training size, over ``repeats`` steps after one
    warm-up step, on a copy of the trained model.
peak memory (training, inference)
    ``tracemalloc``'s peak (NumPy reports its array allocations to it) of the bytes newly
    allocated during one training step, and during one ``predict`` of one image, with the
    reusable scratch buffers freed first (``minisegnet.workspace.clear_workspace``) so they
    count, after a warm-up step so the optimizer's state already exists: activations kept
    for the backward, gradients and scratch, not the weights, the optimizer's moments or the
    input.  CPU only (None on CUDA, whose allocations tracemalloc does not see).
G, C, mIoU, BF
    :func:`~minisegnet.evaluation.evaluate_checkpoint` on the validation split, with the
    boundary F1 score, from the last checkpoint of each run (the model at the end of the
    budget: no selection on the validation set) or the best one (``checkpoint="best"``).

Timings depend on the machine and on what else runs on it: compare variants of one run,
not runs of different machines.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from .backend import array_module_for, is_array, to_numpy
from .data import NUM_CLASSES, VOID_LABEL, parse_size
from .grad_mode import no_grad
from .layers import SoftmaxCrossEntropy
from .optim import Adam
from .run_folder import json_ready
from .train import TrainConfig, train
from .workspace import clear_workspace

__all__ = ["VARIANTS", "compare_decoders", "kept_bytes", "measure_model", "markdown_table", "add_arguments", "main"]

#: (arch, the article's name) of every variant, in the article's order
VARIANTS = (
    ("segnet-basic", "SegNet-Basic"),
    ("fcn-basic", "FCN-Basic"),
    ("fcn-basic-noaddition", "FCN-Basic-NoAddition"),
    ("fcn-basic-nodimreduction", "FCN-Basic-NoDimReduction"),
    ("bilinear-basic", "Bilinear-Basic"),
)
REFERENCE = "segnet-basic"  # decoder memory is also given as a multiple of this variant's
JSON_NAME, MARKDOWN_NAME, FIGURE_NAME = "decoders.json", "decoders.md", "decoders.png"
# TrainConfig fields that the comparison sets itself, per variant or for all
_FIXED_FIELDS = ("model", "out_dir", "dataset", "data_dir", "size", "minutes", "max_steps", "epochs", "seed",
                 "device", "resume", "overwrite")

METHODS = {
    "parameters": "model.num_parameters()",
    "decoder_bytes": "nbytes of the arrays in `kept` from one no_grad encode of one image at memory_size "
                     "(sizes, a few integers, not counted)",
    "inference_seconds": "median wall time of model.predict on one image at the training size, over `repeats` "
                         "calls after one warm-up",
    "train_step_seconds": "median wall time of one step (forward, loss, backward, Adam) on batch_size images at the "
                          "training size, over `repeats` steps after one warm-up",
    "peak_train_bytes": "tracemalloc peak of the bytes allocated during one training step (after a warm-up step, "
                        "scratch buffers freed first): activations, gradients, scratch; not weights, optimizer "
                        "moments or input; CPU only",
    "peak_inference_bytes": "tracemalloc peak of the bytes allocated during one predict of one image at the "
                            "training size (scratch buffers freed first); CPU only",
    "scores": "evaluate_checkpoint on the validation split with boundary F1 (checkpoint: see settings)",
}


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def _sync(model) -> None:
    """Wait for the device: a one-element copy to the host (immediate on the CPU)."""
    for p in model.parameters():
        to_numpy(p.data.reshape(-1)[:1])
        return


def _median_seconds(run, repeats: int, sync) -> float:
    run()  # warm-up: lazy allocations, the optimizer's state
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes(run) -> int:
    """tracemalloc's peak of what ``run()`` allocates, with the reusable scratch freed first."""
    clear_workspace()
    gc.collect()
    already = tracemalloc.is_tracing()  # someone else's trace: measure within it, leave it running
    if already:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not already:
            tracemalloc.stop()
    return int(peak - base)


def kept_bytes(model, size=(360, 480)) -> int:
    """Bytes of the arrays ``model.encode`` hands to its decoder for one image of ``size``.

    An eval-mode encode inside ``no_grad`` (BatchNorm's running statistics are not touched);
    every module's mode is put back afterwards.
    """
    xp = array_module_for(model.device)
    x = xp.zeros((1, model.in_channels, *parse_size(size)), dtype=model.dtype)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            _, kept = model.encode(x)
    finally:
        for m, training in modes:
            object.__setattr__(m, "training", training)
    total, stack = 0, [kept]
    while stack:
        item = stack.pop()
        if is_array(item):
            total += int(item.nbytes)
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
    return total


def measure_model(model, size, batch_size: int = 2, memory_size=(360, 480), repeats: int = 3,
                  class_weights=None, seed: int = 0) -> dict:
    """Parameters, decoder memory, times and peak memory of ``model`` (see the module docstring).

    ``size`` is the (H, W) of the training images; ``memory_size`` the size at which the
    decoder's memory is measured.  The model itself is left as it was (the training step
    runs on a copy).
    """
    size = parse_size(size)
    device = model.device
    xp = array_module_for(device)
    rng = np.random.default_rng(seed)
    out = {"parameters": int(model.num_parameters()), "decoder_bytes": kept_bytes(model, memory_size)}

    image = xp.asarray(rng.standard_normal((1, model.in_channels, *size)), dtype=model.dtype)
    out["inference_seconds"] = _median_seconds(lambda: model.predict(image), repeats, lambda: _sync(model))

    student = copy.deepcopy(model).train()
    images = xp.asarray(rng.standard_normal((batch_size, model.in_channels, *size)), dtype=model.dtype)
    labels = xp.asarray(rng.integers(0, getattr(model, "num_classes", NUM_CLASSES), (batch_size, *size)))
    criterion = SoftmaxCrossEntropy(weight=class_weights, ignore_index=VOID_LABEL)
    optimizer = Adam(student.parameters())

    def step():
        student.zero_grad()
        criterion.forward(student.forward(images), labels)
        student.backward(criterion.backward(), input_grad=False)
        optimizer.step()

    out["train_step_seconds"] = _median_seconds(step, repeats, lambda: _sync(student))
    if device == "cpu":
        student.zero_grad()
        out["peak_train_bytes"] = _peak_bytes(step)
        out["peak_inference_bytes"] = _peak_bytes(lambda: model.predict(image))
    else:
        out["peak_train_bytes"] = out["peak_inference_bytes"] = None
    return out


def _machine(device: str) -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": device,
    }


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------
def _variants(names) -> list[tuple[str, str]]:
    if names is None:
        return list(VARIANTS)
    known = dict(VARIANTS)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"compare_decoders: unknown variants {unknown or names!r}; known: {', '.join(known)}")
    return [(n, known[n]) for n in names]


def compare_decoders(out_dir="runs/compare-decoders", *, data_dir=None, synthetic: bool = False, size=(120, 160),
                     minutes_each: float | None = None, max_steps: int | None = None, epochs: int | None = None,
                     variants=None, seed: int = 0, device: str = "cpu", memory_size=(360, 480), repeats: int = 3,
                     checkpoint: str = "last", progress: bool = True, command: str | None = None,
                     overwrite: bool = False,
                     **train_options) -> dict:
    """Train, score and measure every decoder variant with one recipe; write the JSON, table and figure.

    ``data_dir`` (CamVid; None: :func:`~minisegnet.data.find_camvid`) or ``synthetic=True``
    (:class:`~minisegnet.data.SyntheticStreets`); ``size`` the training size (H, W) or
    ``"HxW"``; the budget of each variant is ``minutes_each`` (wall time of its whole
    :func:`~minisegnet.train.train` call) and/or ``max_steps`` and/or ``epochs``.
    ``variants``: arch names from :data:`VARIANTS` (all by default).  ``train_options``:
    any other :class:`~minisegnet.train.TrainConfig` field (``batch_size``, ``lr``,
    ``channels``, ``synthetic_train`` ...), the same for every variant.  ``checkpoint``:
    ``"last"`` (the model at the end of the budget) or ``"best"`` (best validation mIoU).

    Each variant trains in ``out_dir/<arch>``.  A folder that already holds a comparison (its
    ``decoders.json`` or a variant's run) is refused before anything is trained, unless
    ``overwrite=True`` (``--overwrite``).  Returns the dict written to
    ``decoders.json``: ``settings``, ``machine``, ``methods``, ``variants`` (one row per
    variant) and ``files``.
    """
    from .evaluation import evaluate_checkpoint

    if checkpoint not in ("last", "best"):
        raise ValueError(f"compare_decoders: expected checkpoint 'last' or 'best', got {checkpoint!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"compare_decoders: expected repeats >= 1, got {repeats!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    fixed = sorted(set(train_options) & set(_FIXED_FIELDS))
    unknown = sorted(set(train_options) - fields)
    if fixed or unknown:
        raise ValueError(
            f"compare_decoders: {'the comparison sets ' + ', '.join(fixed) + ' itself' if fixed else ''}"
            f"{'; ' if fixed and unknown else ''}"
            f"{'unknown TrainConfig fields ' + ', '.join(unknown) if unknown else ''}"
        )
    chosen = _variants(variants)
    size, memory_size = parse_size(size), parse_size(memory_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = [p for p in [out / JSON_NAME, *(out / arch for arch, _ in chosen)] if p.exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out} already holds a comparison ({', '.join(p.name for p in earlier)}): give --overwrite to replace "
            "it, or choose another --out folder"
        )
    dataset = "synthetic" if synthetic else "camvid"
    configs = {
        arch: TrainConfig(model=arch, dataset=dataset, data_dir=None if synthetic else data_dir, size=size,
                          minutes=minutes_each, max_steps=max_steps, epochs=epochs, seed=seed, device=device,
                          out_dir=str(out / arch), overwrite=overwrite, **train_options).validate()
        for arch, _ in chosen
    }  # all validated before the first minute of training

    rows = []
    for arch, label in chosen:
        config = configs[arch]
        if progress:
            print(f"[compare-decoders] {label} ({arch}): training in {config.out_dir}", file=sys.stderr)
        result = train(config, progress=progress)
        path = result.last_checkpoint if checkpoint == "last" else (result.best_checkpoint or result.last_checkpoint)
        scores, model, extra = evaluate_checkpoint(path, config.data_dir, "val", boundary=True,
                                                   batch_size=config.batch_size, device=device, dataset=dataset,
                                                   limit=config.val_limit)
        if progress:
            print(f"[compare-decoders] {label}: measuring", file=sys.stderr)
        weights = extra.get("class_weights") if config.class_weights else None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
        measured = measure_model(model, size, config.batch_size, memory_size, repeats, class_weights=weights,
                                 seed=seed)
        rows.append({
            "variant": label,
            "arch": arch,
            "config": model.config,
            **measured,
            "global_accuracy": scores["global_accuracy"],
            "class_accuracy": scores["class_accuracy"],
            "mean_iou": scores["mean_iou"],
            "boundary_f1": scores["boundary_f1"],
            "val_images": scores["num_images"],
            "scored_at": scores.get("scored_at"),
            "steps": result.steps,
            "epochs_completed": result.epochs_completed,
            "stopped_by": result.stopped_by,
            "train_wall_seconds": result.wall_time,
            "checkpoint": str(path),
        })
        del model

    reference = next((r["decoder_bytes"] for r in rows if r["arch"] == REFERENCE), None)
    for r in rows:
        r["decoder_memory_vs_segnet"] = (r["decoder_bytes"] / reference) if reference else None

    report = {
        "settings": {
            "dataset": dataset, "data_dir": None if synthetic else (None if data_dir is None else str(data_dir)),
            "size": list(size), "memory_size": list(memory_size), "minutes_each": minutes_each,
            "max_steps": max_steps, "epochs": epochs, "seed": seed, "device": device, "repeats": repeats,
            "checkpoint": checkpoint, "train_options": train_options,
            "recipe": {k: v for k, v in next(iter(configs.values())).to_dict().items()
                       if k not in ("model", "out_dir")},
            "command": command,
        },
        "machine": _machine(device),
        "methods": METHODS,
        "variants": rows,
    }
    files = {"json": str(out / JSON_NAME), "markdown": str(out / MARKDOWN_NAME), "figure": str(out / FIGURE_NAME)}
    report["files"] = files
    Path(files["markdown"]).write_text(markdown_table(report) + "\n")
    draw_figure(report, files["figure"])
    _write_json(files["json"], report)
    return report


def _write_json(path, report) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_ready(report), indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# table and figure
# --------------------------------------------------------------------------------------------
def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value * scale, spec)


def markdown_table(report: dict) -> str:
    """The comparison as a Markdown table, with a line saying what was run and on what."""
    s = report["settings"]
    h, w = s["size"]
    mh, mw = s["memory_size"]
    batch = s["recipe"].get("batch_size")
    header = ["variant", "parameters", f"decoder memory per image at {mh}×{mw}", "× SegNet-Basic",
              f"inference ms / image ({h}×{w})", f"training step s (batch {batch})", "peak training MiB",
              "peak inference MiB", "G", "C", "mIoU", "BF", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in report["variants"]:
        cells = [
            r["variant"], f"{r['parameters']:,}", f"{r['decoder_bytes'] / 1e6:.2f} MB",
            _fmt(r.get("decoder_memory_vs_segnet"), ".2f"), _fmt(r["inference_seconds"], ".1f", 1e3),
            _fmt(r["train_step_seconds"], ".3f"), _fmt(r["peak_train_bytes"], ".1f", 2**-20),
            _fmt(r["peak_inference_bytes"], ".1f", 2**-20), _fmt(r["global_accuracy"], ".3f"),
            _fmt(r["class_accuracy"], ".3f"), _fmt(r["mean_iou"], ".3f"), _fmt(r["boundary_f1"], ".3f"),
            str(r["steps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    m = report["machine"]
    budget = ", ".join(f"{k} {s[k]}" for k in ("minutes_each", "max_steps", "epochs") if s[k] is not None)
    lines += [
        "",
        f"{s['dataset']} at {h}×{w}, {budget} per variant, seed {s['seed']}, {s['checkpoint']} checkpoint, "
        f"scored on the validation split; {m['device']} on {m['platform']} ({m['cpu_count']} CPUs)."
        + (f" Command: `{s['command']}`." if s.get("command") else ""),
    ]
    return "\n".join(lines)


def draw_figure(report: dict, path) -> str:
    """Decoder memory per image against mIoU, one labelled point per variant, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = report["variants"]
    xs = [r["decoder_bytes"] / 1e6 for r in rows]
    ys = [r["mean_iou"] if r["mean_iou"] is not None and math.isfinite(r["mean_iou"]) else np.nan for r in rows]
    ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
    for x, y, r in zip(xs, ys, rows):
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    mh, mw = report["settings"]["memory_size"]
    ax.set_xlabel(f"memory the decoder keeps from the encoder, MB per {mh}×{mw} image")
    ax.set_ylabel("validation mIoU")
    h, w = report["settings"]["size"]
    ax.set_title(f"Decoder variants: memory against accuracy ({report['settings']['dataset']}, {h}×{w})", fontsize=10)
    ax.set_xlim(left=-0.05 * max(max(xs, default=1.0), 1e-9), right=max(max(xs, default=1.0), 1e-9) * 1.3)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
    return str(path)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _size_arg(text: str):
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``minisegnet compare-decoders`` (for the CLI's subparser)."""
    from .cli import _non_negative  # the command line's own number type (cli imports this module lazily)

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="CamVid folder (default: found automatically)")
    source.add_argument("--synthetic", action="store_true", help="train on synthetic street scenes instead")
    parser.add_argument("--size", type=_size_arg, default=(120, 160), metavar="HxW",
                        help="training and evaluation size (default 120x160)")
    parser.add_argument("--minutes-each", type=_positive(float), metavar="M",
                        help="time budget of each variant's training run, in minutes")
    parser.add_argument("--max-steps", type=_positive(int), metavar="N", help="at most N steps per variant")
    parser.add_argument("--epochs", type=_positive(int), metavar="E", help="at most E epochs per variant")
    parser.add_argument("--variants", metavar="A,B",
                        help=f"comma-separated subset of {', '.join(a for a, _ in VARIANTS)} (default: all)")
    parser.add_argument("--out", default="runs/compare-decoders", metavar="DIR",
                        help="folder for the runs, decoders.json, decoders.md, decoders.png")
    parser.add_argument("--seed", type=int, default=0, help="the same seed for every variant (default 0)")
    parser.add_argument("--batch-size", type=_positive(int), default=None, help="batch size (TrainConfig's default)")
    parser.add_argument("--lr", type=_positive(float), default=None, help="learning rate (TrainConfig's default)")
    parser.add_argument("--class-weight-power", type=_non_negative("a number"), default=None, metavar="P",
                        help="median-frequency class weights to the power P (TrainConfig's default, 0.75; the "
                        "README's table was measured at 1)")
    parser.add_argument("--channels", type=_positive(int), default=None,
                        help="channels of every variant's convolutions (default 64, the article's)")
    parser.add_argument("--kernel-size", type=_positive(int), default=None,
                        help="kernel of the encoder (and SegNet/Bilinear decoder) convolutions (default 7)")
    parser.add_argument("--train-limit", type=_positive(int), help="use this many training images, evenly spaced")
    parser.add_argument("--val-limit", type=_positive(int), help="use this many validation images, evenly spaced")
    parser.add_argument("--synthetic-train", type=_positive(int), help="number of synthetic training scenes")
    parser.add_argument("--synthetic-val", type=_positive(int), help="number of synthetic validation scenes")
    parser.add_argument("--memory-size", type=_size_arg, default=(360, 480), metavar="HxW",
                        help="image size at which the decoder's memory is measured (default 360x480)")
    parser.add_argument("--repeats", type=_positive(int), default=3, help="timed repetitions (median; default 3)")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="score the last checkpoint (default) or the best by validation mIoU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to compute (default: cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier comparison in --out (refused otherwise)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_from_args(args, command: str | None = None) -> dict:
    """:func:`compare_decoders` with the options of :func:`add_arguments`."""
    if args.minutes_each is None and args.max_steps is None and args.epochs is None:
        raise ValueError("compare-decoders: give --minutes-each, --max-steps or --epochs (each variant's budget)")
    options = {name: getattr(args, name) for name in ("batch_size", "lr", "class_weight_power", "channels",
                                                      "kernel_size", "train_limit", "val_limit", "synthetic_train",
                                                      "synthetic_val")
               if getattr(args, name) is not None}
    variants = None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    return compare_decoders(args.out, data_dir=args.data, synthetic=args.synthetic, size=args.size,
                            minutes_each=args.minutes_each, max_steps=args.max_steps, epochs=args.epochs,
                            variants=variants, seed=args.seed, device=args.device, memory_size=args.memory_size,
                            repeats=args.repeats, checkpoint=args.checkpoint, progress=not args.quiet,
                            command=command, overwrite=args.overwrite, **options)


def main(argv=None) -> int:
    """``compare-decoders`` on its own: parse ``argv``, run, print the table; return the exit status.

    A bad option or setting (an unknown variant, a missing folder, no budget) is one line on
    stderr and exit status 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = add_arguments(argparse.ArgumentParser(prog="minisegnet compare-decoders",
                                                   description="Train and measure SegNet's decoder variants."))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    try:
        report = run_from_args(args, command="minisegnet compare-decoders " + " ".join(argv))
    except (ValueError, OSError, KeyError) as exc:
        print(f"minisegnet compare-decoders: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(markdown_table(report))
    for kind, path in report["files"].items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

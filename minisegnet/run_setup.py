"""Preparing a training run: everything that can fail because of the user's input, before any step.

:func:`prepare_run` fills a :class:`~minisegnet.train.Trainer`, in an order where each check sees what
it needs and a mistake is reported before minutes of work:

1. the checkpoint to resume from is read and its settings merged (so a bare ``--resume`` has the run's
   planned length; settings given with it that it would ignore are refused, see
   :meth:`~minisegnet.config.TrainConfig.resumed`), then the settings are validated;
2. the output folder is probed, locked and checked for an earlier run (:mod:`minisegnet.run_folder`);
3. the model is built (a fresh run's encoder from VGG16 when asked) and the memory of a training step
   estimated, before the data is decoded;
4. the data, its loaders, the loss and the optimizer are made: the class weights are the training
   labels' median-frequency weights to the power ``class_weight_power`` (none at 0; with
   ``class_weight_power_end`` the trainer anneals that power step by step); with ``lovasz_weight`` W > 0
   the loss is the cross-entropy plus W × the Lovász-softmax (``trainer.criterion`` a
   :class:`~minisegnet.layers.LossSum`, ``trainer.cross_entropy`` its first term); the validation
   loader gives the labels at their own resolution (CamVid: 360×480) unless ``eval_at_train_size``, so
   every validation pass -- the per-epoch ones that choose ``best.npz`` as well as the last -- is scored
   as published scores are (:mod:`minisegnet.evaluation`);
5. the position (epoch, batch, step) and the history are a fresh run's or the checkpoint's, and the
   learning-rate schedule and the time budget are positioned at that step;
6. the log is restarted last, so a failed start leaves an old run alone.

**Nothing random depends on the past** (exact resumption): the initial weights come from the seed
alone (:func:`derived_seed`), the loader's shuffling and augmentation from ``(seed, epoch)`` and
``(seed, epoch, batch)``, every Dropout layer's masks from ``(seed, epoch, batch, layer)``.
"""
from __future__ import annotations

import dataclasses
import shlex
import time
import warnings
import weakref

import numpy as np

from .budget import TimeBudget, check_training_memory
from .checkpoint import load_checkpoint, load_vgg16_encoder
from .config import TrainConfig
from .data import (VOID_LABEL, BatchLoader, CamVid, TrainTransform, compute_mean_std, find_camvid,
                   median_frequency_weights)
from .evaluation import with_labels_at_own_size
from .finite import DivergenceWatch
from .layers import LossSum, LovaszSoftmax, SoftmaxCrossEntropy
from .models import build_model
from .optim import SGD, Adam
from .run_data import load_datasets as _load_datasets
from .run_folder import BEST, LAST, RunFolder, read_resume_state, resolve_resume
from .schedule import START, make_scheduler, planned_from_budget, schedule_length

__all__ = ["prepare_run", "derived_seed", "INIT_STREAM", "tempered_class_weights", "validation_scoring_set"]

INIT_STREAM = 0x696E6974  # "init": the initial weights' seed is derived from (seed, INIT_STREAM)


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed that is a fixed function of ``numbers`` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def prepare_run(trainer, config: TrainConfig, given: dict | None, load_datasets=_load_datasets) -> None:
    """Give ``trainer`` its settings, folder, model, data, loss, optimizer, position and budget (steps above).

    ``given``: the settings the user chose on purpose (see :class:`~minisegnet.train.Trainer`);
    ``load_datasets``: how the data is loaded (:func:`minisegnet.run_data.load_datasets`).
    ``trainer.folder`` is set as soon as the folder is locked, so a caller can unlock it on failure.
    """
    trainer.resume_path = resolve_resume(config.resume, config.out_dir)
    resumed = read_resume_state(trainer.resume_path) if trainer.resume_path is not None else None
    if resumed is not None:  # the checkpoint's run, continued: see TrainConfig.resumed
        config = config.resumed(resumed.config, given=config.changed_fields() if given is None else given)
    trainer.config = config = dataclasses.replace(config).validate()
    trainer.folder = folder = RunFolder(config.out_dir)
    folder.prepare()  # writable? (said now, not after the data); leftovers of killed writes removed
    folder.lock()  # one run per folder
    weakref.finalize(trainer, folder.unlock)  # released when the trainer goes, at the latest
    trainer.out_dir, trainer.log_path = folder.path, folder.log
    earlier = folder.existing_run() if resumed is None and not config.overwrite else None
    if earlier is not None and config.resume is None:  # a fresh run would wipe an earlier one
        raise FileExistsError(
            f"output folder {folder.path} already holds a run ({earlier}): continue it with "
            f"`minisegnet train --resume {shlex.quote(str(folder.path))}`, start it over with --overwrite, "
            "or choose another folder (--out DIR)"
        )
    if earlier is not None and folder.best.is_file():  # --resume, but no last.npz: killed before its first save
        warnings.warn(f"{folder.path} holds no {LAST} to resume from ({earlier}): the run starts afresh, and "
                      f"its first evaluation replaces {BEST}", RuntimeWarning, stacklevel=4)

    # the model first (before minutes of decoding): its initial weights depend on the seed alone
    trainer.model = build_model(config.model, rng=derived_seed(config.seed, INIT_STREAM), **config.model_kwargs())
    if config.vgg16 is not None and resumed is None:  # a resumed run's weights come from its checkpoint
        load_vgg16_encoder(trainer.model, config.vgg16)
    trainer.memory = check_training_memory(trainer.model, config) if config.memory_check else None
    trainer.model.to(config.device)

    # data: decoded and resized once; normalisation and class weights from the training split
    trainer.train_set, trainer.val_set = load_datasets(config)
    if resumed is not None:  # those the weights were trained with
        trainer.mean, trainer.std, trainer.class_weights = resumed.mean, resumed.std, resumed.class_weights
    else:
        trainer.mean, trainer.std = compute_mean_std(trainer.train_set)
        trainer.class_weights = tempered_class_weights(trainer.train_set, config)
    trainer.train_loader = BatchLoader(
        trainer.train_set, config.batch_size, shuffle=True, seed=config.seed,
        transform=TrainTransform(size=None, flip=config.flip, crop=config.crop, scale=config.scale_jitter),
        mean=trainer.mean, std=trainer.std, drop_last=len(trainer.train_set) > config.batch_size,
    )
    trainer.val_loader = BatchLoader(validation_scoring_set(trainer.val_set, config), config.batch_size,
                                     mean=trainer.mean, std=trainer.std)

    # loss, optimizer
    trainer.cross_entropy = SoftmaxCrossEntropy(weight=trainer.class_weights, ignore_index=VOID_LABEL,
                                                normalize=config.loss_normalize)
    trainer.criterion = trainer.cross_entropy if config.lovasz_weight == 0 else LossSum(
        (1.0, trainer.cross_entropy), (config.lovasz_weight, LovaszSoftmax(ignore_index=VOID_LABEL)))
    params = trainer.model.parameters()
    if config.optimizer == "sgd":
        trainer.optimizer = SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        trainer.optimizer = Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    # position and history: a fresh run's, or the checkpoint's
    trainer.epoch, trainer.batch, trainer.step = 0, 0, 0  # completed epochs, batches of this epoch, optimizer steps
    trainer.history, trainer.best_mean_iou, trainer.best_step = [], float("-inf"), None  # evaluations, the best so far
    trainer.schedule_steps = None  # total steps of a poly/cosine schedule, once known
    trainer.schedule_anchor = START  # (step, progress) where a budget-planned schedule was last re-planned
    trainer.previous_seconds = 0.0  # wall time of the runs this one resumes
    trainer._epoch_losses, trainer._evaluated_step, trainer._saved_step, trainer._last_scores = [], None, None, {}
    notes = []
    if resumed is not None:
        load_checkpoint(trainer.resume_path, trainer.model, trainer.optimizer)
        trainer.epoch, trainer.batch, trainer.step = resumed.epoch, resumed.batch, resumed.step
        trainer.schedule_steps, trainer.previous_seconds = resumed.schedule_steps, resumed.wall_seconds
        trainer.schedule_anchor = resumed.schedule_anchor
        trainer.history, trainer._epoch_losses = resumed.history, list(resumed.epoch_losses or [])
        if trainer.history:
            trainer._evaluated_step = trainer.history[-1].get("step")
            last = trainer.history[-1]
            trainer._last_scores = {k[len("val_"):]: v for k, v in last.items() if k.startswith("val_")}
        if trainer.resume_path.resolve() == folder.last.resolve():
            trainer._saved_step = resumed.step  # last.npz holds this very state
            notes.append(folder.catch_up_best(resumed))  # may lower best_mean_iou to what best.npz holds
        trainer.best_mean_iou, trainer.best_step = resumed.best_mean_iou, resumed.best_step
    # the learning rate of every step: closed-form in the step, so a resumed run needs only the step
    steps_per_epoch = len(trainer.train_loader)
    trainer.schedule_steps = schedule_length(config, steps_per_epoch, trainer.schedule_steps)
    if not planned_from_budget(config) or trainer.schedule_anchor[0] >= (trainer.schedule_steps or 0):
        trainer.schedule_anchor = START  # a length given by epochs or max_steps is a schedule from the start
    trainer.scheduler = make_scheduler(config, trainer.optimizer, steps_per_epoch, trainer.step,
                                       trainer.schedule_steps, trainer.schedule_anchor)
    trainer.budget = TimeBudget(config.minutes, train_batches=steps_per_epoch, val_batches=len(trainer.val_loader),
                                figure=config.figure, recompute_bn=config.recompute_bn, start=trainer.start_time)
    trainer.figure_path = None
    trainer._last_figure = trainer.start_time  # the first figure comes figure_interval seconds in
    trainer._last_save = time.monotonic()  # save_every counts from here
    trainer._bn_recomputing = False  # the BatchNorm statistics are half recomputed: nothing may be saved
    if resumed is None:
        if config.overwrite:
            folder.remove_old_run()
        kept = folder.restart_log()
    else:  # the records up to the checkpoint's step; those after it will be made again
        kept = folder.restart_log(keep_until=trainer.step, event={"event": "resume", "step": trainer.step,
                                                                  "epoch": trainer.epoch,
                                                                  "from": str(trainer.resume_path)})
    # the running level of the loss (divergence check), continued from the log on resume
    trainer._divergence = DivergenceWatch(r["loss"] for r in kept if isinstance(r.get("loss"), (int, float)))
    for note in notes:
        if note:
            trainer.progress.say(note)


def tempered_class_weights(train_set, config: TrainConfig):
    """The loss's class weights: median-frequency weights to the power ``config.class_weight_power``.

    None (the unweighted loss) when ``class_weights`` is off or the power is 0: ``w ** 0`` would
    be all ones, the same loss, but None says so and costs nothing.  A class absent from the
    training labels has weight 0 and keeps it (``0 ** P = 0`` for P > 0).
    """
    if not config.class_weights or config.class_weight_power == 0:
        return None
    weights = median_frequency_weights(train_set)
    return weights if config.class_weight_power == 1 else weights ** float(config.class_weight_power)


def validation_scoring_set(val_set, config: TrainConfig):
    """What the validation passes score on: ``val_set`` with CamVid's labels at their own resolution.

    The images stay those of ``val_set`` (resized once to the training size); the labels are
    read again from the CamVid folder, not resized (:func:`~minisegnet.evaluation.with_labels_at_own_size`).
    ``val_set`` itself for synthetic scenes (drawn at the training size), with
    ``eval_at_train_size``, and when the labels already have the training size.
    """
    if config.dataset != "camvid" or config.eval_at_train_size:
        return val_set
    root = config.data_dir if config.data_dir is not None else find_camvid()
    if root is None:
        raise FileNotFoundError("no CamVid folder given and none found: pass --data DIR")
    return with_labels_at_own_size(val_set, CamVid(root, "val"))

"""The training loop: the article's pipeline, one batch at a time.

The loop only orchestrates.  Each step is the pipeline written out::

    images, labels = next batch                       # data   (minisegnet.data)
    model.zero_grad()
    logits = model.forward(images)                    # model  (minisegnet.models, minisegnet.layers)
    loss = criterion.forward(logits, labels)          # loss   (SoftmaxCrossEntropy, class-weighted;
                                                      #         + LovaszSoftmax with --lovasz-weight)
    model.backward(criterion.backward(), input_grad=False)   # through the model, in reverse
    optimizer.step()                                  # optimizer (minisegnet.optim)

(``input_grad=False``: nobody needs the gradient of the image, so the first convolution skips it.)
Around it, each idea in its own module:

===============================  ======================================================================
:mod:`minisegnet.config`         :class:`TrainConfig`: every setting, its defaults and checks, what a resumed run keeps
:mod:`minisegnet.run_setup`      preparing a run: resume, folder, model, data, optimizer, position (in that order)
:mod:`minisegnet.run_data`       :func:`load_datasets`: the training and validation sets of a config
:mod:`minisegnet.schedule`       the learning-rate schedule: which, how long, positioned at a step
:mod:`minisegnet.budget`         the time budget (does another step fit, how long a schedule) and the memory estimate
:mod:`minisegnet.run_folder`     ``best.npz``, ``last.npz`` (what they record), ``log.jsonl``, the lock; resume, cleanup
:mod:`minisegnet.finite`         the checks that stop a diverged run: gradient norm, loss spikes, non-finite state
:mod:`minisegnet.interruptions`  Ctrl-C and SIGTERM: finish the step, save, say how to resume
:mod:`minisegnet.evaluation`     :func:`evaluate` (G, C, mIoU, BF), BatchNorm recomputation, checkpoint scoring
:mod:`minisegnet.inference`      :func:`predict_images`: segmenting image files with a checkpoint
:mod:`minisegnet.progress`       what the run shows: a line about it, a bar per epoch, a line per evaluation
:mod:`minisegnet.viz`            ``figure.png`` (:func:`~minisegnet.viz.run_figure`)
===============================  ======================================================================

Every public name of those modules that this one offered before is still importable from here.
**Exact resumption** (the weights of a resumed run are those of an uninterrupted one) is explained
in :mod:`minisegnet.run_setup`, the checkpoints' contents in :mod:`minisegnet.run_folder`.
"""
from __future__ import annotations

import math
import shlex
import time
import warnings

import numpy as np

from .backend import to_device
from .budget import PLAN_AFTER_STEPS, InsufficientMemory  # noqa: F401
from .config import DATASETS, LOSS_NORMALIZATIONS, OPTIMIZERS, SCHEDULES, SOLVER_DEFAULTS, TrainConfig  # noqa: F401
from .data import CLASS_NAMES, NUM_CLASSES, VOID_LABEL, BatchLoader  # noqa: F401
from .evaluation import evaluate, evaluate_checkpoint, recompute_bn_statistics  # noqa: F401
from .finite import TrainingDiverged, first_nonfinite_state, host_floats, squared_gradient_norm_on_device
from .inference import predict_images  # noqa: F401
from .interruptions import Abort, SignalGuard, Stop, TrainingInterrupted
from .layers import Dropout
from .progress import Progress
from .run_data import load_datasets
from .run_folder import BEST, CHECKPOINT_KIND, FIGURE, LAST, LOG, json_ready  # noqa: F401
from .run_folder import RunFolderWriteError, TrainResult, checkpoint_extra, run_result
from .run_setup import INIT_STREAM as _INIT_STREAM, derived_seed as _derived_seed, prepare_run  # noqa: F401
from .schedule import class_weight_power_at, make_scheduler, planned_from_budget, warmup_factor

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "evaluate", "recompute_bn_statistics", "load_datasets",
           "evaluate_checkpoint", "predict_images", "TrainingDiverged", "TrainingInterrupted", "RunFolderWriteError",
           "InsufficientMemory"]


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says; see :mod:`minisegnet.run_folder` for what is written where."""
    return Trainer(config, progress=progress).fit()


class Trainer:
    """One training run: ``Trainer(config)`` prepares everything, :meth:`fit` trains.

    The constructor does all that can fail because of the user's input before any training
    starts (:func:`~minisegnet.run_setup.prepare_run`, which says in what order), so a command
    line can report those mistakes in one line; a failed start leaves an old run alone.

    ``given``: the settings the user chose on purpose (``{field: label}``, the command line
    passes its options); None: the fields that differ from their defaults.  ``started``: the
    ``time.monotonic()`` the time budget counts from (default: now).
    """

    def __init__(self, config: TrainConfig, progress: bool = True, given: dict | None = None,
                 started: float | None = None):
        # the time budget counts from here, or from ``started`` (a time.monotonic() value: the command
        # line passes when the package began to import, so that --minutes bounds the whole command)
        self.start_time = time.monotonic() if started is None else float(started)
        self.progress = Progress(progress)
        self.folder = None
        self._signals = SignalGuard()
        try:
            with self._signals, self._signals.at_once():  # nothing to save yet: a signal stops at once
                self._prepare(config, given)
        except BaseException as exc:
            self._release()
            stop = self._signals.stop_behind(exc)
            if stop is None:
                raise
            out = self.folder.path if self.folder is not None else config.out_dir
            raise TrainingInterrupted(stop.signum, None, None, out) from None

    def _release(self) -> None:
        if self.folder is not None:
            self.folder.unlock()

    def _prepare(self, config: TrainConfig, given) -> None:
        prepare_run(self, config, given, load_datasets)  # this module's, looked up now (tests replace it)

    def elapsed(self) -> float:
        return self.budget.elapsed()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs, the step limit, the schedule or the time budget run out.

        Raises :class:`TrainingInterrupted` on SIGINT/SIGTERM (``last.npz`` saved at the step
        reached), :class:`TrainingDiverged` when the run diverges, :class:`RunFolderWriteError`
        when a file cannot be written (a full disk); the folder's lock is released in every case.
        """
        self.folder.lock()  # held since the constructor; taken again by a second fit()
        try:
            with self._signals:
                try:
                    return self._fit()
                except BaseException as exc:
                    stop = self._signals.stop_behind(exc)  # also a signal's exception that another one replaced
                    if stop is not None:
                        raise self._interrupted(stop) from None
                    if isinstance(exc, RunFolderWriteError):
                        raise self._write_failed(exc) from None
                    raise
        finally:
            self.folder.unlock()

    def _fit(self) -> TrainResult:
        config = self.config
        self.progress.describe_run(config, self.model.num_parameters(), len(self.train_set), len(self.val_set),
                                   self.class_weights is not None, self.out_dir,
                                   (self.resume_path, self.epoch, self.step) if self.resume_path else None)
        with self._signals.at_once():
            if config.figure:
                import matplotlib.figure  # noqa: F401  (imported now, so the final figure takes its usual time)
            first_batch, _ = next(iter(self.val_loader.iter_epoch(0)))
            self.budget.measure_eval_batch(self.model, to_device(first_batch, config.device))
        if self._evaluation_pending():  # the evaluation an interruption broke off
            self._evaluate_and_save()
            self._signals.check()
        stopped_by = self._stop_reason()
        while stopped_by is None:
            stopped_by = self._train_epoch()
            if stopped_by is None:  # a whole epoch was completed
                if self.epoch % config.eval_every == 0 or self._stop_reason() is not None:
                    self._evaluate_and_save()
                    self._plan_schedule()  # again, now that an epoch with its evaluation is timed
                    self._signals.check()
                stopped_by = self._stop_reason()
        if self._evaluated_step != self.step:  # the last state is not scored yet
            self._evaluate_and_save()
        last = self.history[-1] if self.history else {}
        if config.recompute_bn and not (last.get("bn_recomputed") and last.get("step") == self.step):
            plain = BatchLoader(self.train_set, config.batch_size, mean=self.mean, std=self.std)  # no augmentation
            with self._signals.at_once():
                self._bn_recomputing = True
                used = recompute_bn_statistics(self.model, plain, self.budget.bn_batches())
                self._bn_recomputing = False
            self.progress.say(f"BatchNorm statistics recomputed over {used} training batches")
            self._evaluate_and_save(bn_recomputed=True)
        if config.figure:
            self._draw_figure()
        return run_result(self, stopped_by)

    def _evaluation_pending(self) -> bool:
        """Whether the run resumed at the end of an epoch whose evaluation an interruption broke off."""
        return (self.resume_path is not None and self.batch == 0 and self.epoch > 0
                and self._evaluated_step != self.step and self.epoch % self.config.eval_every == 0)

    def _train_epoch(self) -> str | None:
        """Run the rest of the current epoch; return why it stopped early (None: it completed)."""
        config, model, criterion, optimizer = self.config, self.model, self.criterion, self.optimizer
        steps_per_epoch = len(self.train_loader)
        model.train()
        if self.batch == 0:
            self._epoch_losses = []
        losses = self._epoch_losses  # a resumed epoch goes on with the losses of its first batches
        with self.progress.epoch_bar(self.epoch, config.epochs, steps_per_epoch, self.batch) as bar:
            for images, labels in self.train_loader.iter_epoch(self.epoch, start=self.batch):
                stopped_by = self._stop_reason()
                if stopped_by is not None:
                    return stopped_by
                started = time.perf_counter()
                x, y = to_device(images, config.device), to_device(labels, config.device)
                _reseed_dropout(model, config.seed, self.epoch, self.batch)
                self._anneal_class_weights()

                model.zero_grad()
                logits = model.forward(x)
                loss = criterion.forward(logits, y)
                model.backward(criterion.backward(), input_grad=False)
                # the step's one read from the device: the loss and the gradient norm, together
                loss, grad_sq = host_floats(loss, squared_gradient_norm_on_device(optimizer.params))
                self._check_step(loss, grad_sq)  # before the update: a diverged step changes no weight
                self._warm_up()
                optimizer.step()

                if self.scheduler is not None:
                    self.scheduler.step()
                self.step += 1
                self._warm_up()  # the next step's rate, as the log records it
                self.batch += 1
                self.budget.record_step(time.perf_counter() - started)
                losses.append(loss)
                self._divergence.record(loss)
                if config.log_steps:
                    self.folder.append_log({"step": self.step, "epoch": self.epoch + self.batch / steps_per_epoch,
                                            "loss": loss, "lr": optimizer.lr})
                if self.scheduler is None and self.budget.steps_timed == PLAN_AFTER_STEPS:
                    self._plan_schedule()  # once a few steps are timed
                self.progress.update(bar, losses, len(images) / max(self.budget.step_estimate(), 1e-9), optimizer.lr,
                                     self.budget.left())
                if self._save_due(steps_per_epoch):
                    self._save(best=False)
                self._signals.check()  # a signal during the step: save this step, then stop
        if self.batch >= steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            return None
        return self._stop_reason() or "minutes"

    def _anneal_class_weights(self) -> None:
        """Give the cross-entropy this step's class weights when they are annealed (``class_weight_power_end``).

        The run's weights are the median-frequency weights ``w`` to the power ``P0``; at this step
        the loss takes ``w ** P = (w ** P0) ** (P / P0)`` (:func:`~minisegnet.schedule.class_weight_power_at`).
        """
        config = self.config
        if config.class_weight_power_end is None:
            return
        power = class_weight_power_at(config, self.step, self.schedule_steps, self.schedule_anchor)
        self.cross_entropy.weight = self.class_weights ** (power / config.class_weight_power)

    def _warm_up(self) -> None:
        """Scale the scheduled learning rate of this step by the warm-up's factor (``warmup_steps``).

        The schedule's rate at this step (``lr`` while no schedule is planned yet) times
        :func:`~minisegnet.schedule.warmup_factor`; nothing to do once the warm-up is over, or
        without one.
        """
        config = self.config
        if not config.warmup_steps or self.step > config.warmup_steps:
            return
        scheduled = self.scheduler.lr if self.scheduler is not None else config.lr
        self.optimizer.lr = scheduled * warmup_factor(config, self.step)

    def _save_due(self, steps_per_epoch: int) -> bool:
        """Whether ``save_every`` minutes have passed since the last save (and no evaluation save follows now)."""
        every = self.config.save_every
        if not every or time.monotonic() - self._last_save < 60.0 * every:
            return False
        evaluation_follows = self.batch >= steps_per_epoch and (self.epoch + 1) % self.config.eval_every == 0
        return not evaluation_follows

    def _check_step(self, loss: float, grad_sq: float) -> None:
        """Raise :class:`TrainingDiverged` unless the loss and the gradient norm are finite and the loss is sane."""
        problem = self._divergence.check(loss, grad_sq, self.model)
        if problem is not None:
            step = self.step + 1
            raise TrainingDiverged(
                f"training diverged at step {step} (epoch {self.epoch + 1}): {problem}; this step was not "
                f"applied and {self._kept()}. {self._lower_lr()}", step)

    def _lower_lr(self) -> str:
        """The advice of a divergence message."""
        lr, now = self.config.lr, self.optimizer.lr
        scheduled = f", {now:g} at this step" if not math.isclose(lr, now) else ""
        return f"Try a lower learning rate (--lr {lr:g}{scheduled}; e.g. --lr {lr / 10:g})"

    def _kept(self) -> str:
        """What the last checkpoint holds, in words."""
        if self._saved_step is not None:
            return f"{self.folder.last} still holds step {self._saved_step}"
        return "no checkpoint was written" if not self.folder.last.is_file() else f"{self.folder.last} is kept"

    def _stop_reason(self) -> str | None:
        """Why no further step may run now (None: go on)."""
        config = self.config
        if config.epochs is not None and self.epoch >= config.epochs:
            return "epochs"
        if config.max_steps is not None and self.step >= config.max_steps:
            return "max_steps"
        if self.schedule_steps is not None and self.step >= self.schedule_steps:
            return "schedule"
        if not self.budget.allows_step(self.step):
            return "minutes"
        return None

    # -- stopping early -----------------------------------------------------------------------
    def _interrupted(self, stop: Stop) -> TrainingInterrupted:
        """Save ``last.npz`` at the step reached (not after a second signal), and say how to resume."""
        forced = isinstance(stop, Abort)
        if not forced and self._saved_step != self.step and not self._bn_recomputing:
            try:
                self._save(best=False)
            except BaseException as exc:  # a second signal during this save: it is discarded, the previous file kept
                if not isinstance(self._signals.stop_behind(exc), Abort):
                    raise
                forced = True
        return TrainingInterrupted(stop.signum, self.step, self._saved_step, self.out_dir, forced=forced)

    def _write_failed(self, exc: RunFolderWriteError) -> RunFolderWriteError:
        """The write error, with what to do next."""
        resume = (f"; make room, then resume with: minisegnet train --resume {shlex.quote(str(self.out_dir))}"
                  if self.folder.last.is_file() else "")
        return RunFolderWriteError(f"{exc}{resume}")

    # -- the learning-rate schedule ---------------------------------------------------------
    def _plan_schedule(self) -> None:
        """Stretch a poly/cosine schedule without an epoch or step count over the time budget.

        The first plan starts the schedule at step 0; a later one (after an evaluation) goes on
        from where the current schedule stands, so the rate does not jump
        (:mod:`~minisegnet.schedule`).
        """
        config = self.config
        steps = self.budget.planned_steps(self.step, config.eval_every) if planned_from_budget(config) else None
        if steps is None:
            return
        first = self.scheduler is None
        if not first:
            self.schedule_anchor = (self.step, self.scheduler.progress_at(self.step))
        self.schedule_steps = steps
        self.scheduler = make_scheduler(config, self.optimizer, len(self.train_loader), self.step, steps,
                                        self.schedule_anchor)
        self._warm_up()  # a new schedule sets its own rate: inside a warm-up, scale it again
        if first:
            self.progress.say(f"schedule: {config.schedule} over {steps} steps (planned from the time budget)")

    # -- evaluation, checkpoints, figure ----------------------------------------------------
    def _evaluate_and_save(self, bn_recomputed: bool = False) -> dict:
        """Score the validation split, log the record, write the checkpoints (best first), maybe the figure."""
        started = time.perf_counter()
        with self._signals.at_once():  # changes nothing: a signal stops it, the resumed run evaluates again
            scores = evaluate(self.model, self.val_loader)
        seconds = time.perf_counter() - started
        self.budget.record_evaluation(seconds, len(self.val_loader))
        losses = self._epoch_losses
        record = {
            "epoch": self.epoch + self.batch / len(self.train_loader), "step": self.step,
            "mean_loss": float(np.mean(losses)) if losses else None, "lr": self.optimizer.lr,
            **{f"val_{k}": v for k, v in scores.items() if k not in ("confusion_matrix", "per_class_accuracy")},
            "eval_seconds": seconds, "elapsed_s": self.elapsed(),
            "images_per_s": self.config.batch_size / self.budget.step_estimate() if self.budget.steps_timed else None,
        }
        if bn_recomputed:
            record["bn_recomputed"] = True
        record = json_ready(record)
        improved = _score(scores["mean_iou"]) > self.best_mean_iou
        if improved:
            self.best_mean_iou, self.best_step = _score(scores["mean_iou"]), self.step
        record["best"] = improved
        self.history.append(record)
        self.folder.append_log(record)
        self._evaluated_step = self.step
        self._last_scores = {k: v for k, v in scores.items() if k != "confusion_matrix"}
        self._save(best=improved)
        self.progress.evaluation(record["epoch"], self.step, record["mean_loss"], scores, improved, bn_recomputed,
                                 self.elapsed())
        if (self.config.figure and time.monotonic() - self._last_figure >= self.config.figure_interval
                and self._stop_reason() is None):
            self._draw_figure()
        return record

    def _save(self, best: bool) -> None:
        """Write ``last.npz`` (and first ``best.npz``) at this step, if every number in them is finite."""
        bad = first_nonfinite_state(self.model, self.optimizer)
        if bad is not None:
            raise TrainingDiverged(
                f"training diverged by step {self.step} (epoch {self.epoch + 1}): {bad} is not finite, so no "
                f"checkpoint was written and {self._kept()}. {self._lower_lr()}", self.step)
        started = time.perf_counter()
        self.folder.save_checkpoints(self.model, self.optimizer, checkpoint_extra(self), best=best)
        self.budget.save_seconds = (time.perf_counter() - started) / (2 if best else 1)  # one file's cost
        self._saved_step, self._last_save = self.step, time.monotonic()

    def _draw_figure(self) -> str | None:
        """figure.png: loss and validation curves above image | ground truth | prediction (never stops a run)."""
        from .viz import run_figure

        started, config = time.perf_counter(), self.config
        with self._signals.at_once():  # a picture: a signal stops it at once
            records = [r for r in self.folder.read_log() if "event" not in r]
            last = self.history[-1] if self.history else {}
            scoring_set = self.val_loader.dataset  # the labels at their own resolution, as scored
            label_h, label_w = scoring_set.labels.shape[1:3]
            at = f" at {label_h}x{label_w}" if (label_h, label_w) != tuple(config.size) else ""
            title = (f"{config.model} on {config.dataset} {config.size[0]}x{config.size[1]}: epoch "
                     f"{last.get('epoch', 0):.2f}, step {self.step}, val mIoU{at} "
                     f"{_score(last.get('val_mean_iou')):.3f}")
            try:
                self.figure_path = str(run_figure(records, self.model, scoring_set, self.folder.figure, mean=self.mean,
                                                  std=self.std, device=config.device, title=title))
            except OSError as exc:  # a full disk: the figure is not worth stopping a run for
                warnings.warn(f"cannot write {self.folder.figure} ({exc.strerror or exc}); the run goes on",
                              RuntimeWarning, stacklevel=2)
        self._last_figure = time.monotonic()
        self.budget.figure_seconds = time.perf_counter() - started
        return self.figure_path


def _reseed_dropout(model, seed: int, epoch: int, batch: int) -> None:
    """Give every Dropout layer masks that depend only on (seed, epoch, batch, layer)."""
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, Dropout)):
        layer.reseed(_derived_seed(seed, epoch, batch, i))


def _score(value) -> float:
    """A validation score for comparisons: NaN or missing counts as -inf."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")

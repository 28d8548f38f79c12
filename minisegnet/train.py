"""The training loop: the article's pipeline, one batch at a time.

The loop only orchestrates.  Each step is the pipeline written out::

    images, labels = next batch                       # data   (minisegnet.data)
    model.zero_grad()
    logits = model.forward(images)                    # model  (minisegnet.models, minisegnet.layers)
    loss = criterion.forward(logits, labels)          # loss   (SoftmaxCrossEntropy, class-weighted)
    model.backward(criterion.backward(), input_grad=False)   # through the model, in reverse
    optimizer.step()                                  # optimizer (minisegnet.optim)

(``input_grad=False``: nobody needs the gradient of the image, so the first convolution skips it.)
Around it: a validation pass after every ``eval_every`` epochs, the best and the last
checkpoint, a JSON-lines log, a figure, a tqdm progress bar, a time budget and exact
resumption.  Each of those ideas lives in its own module:

===========================  ==========================================================================
:mod:`minisegnet.config`     :class:`TrainConfig`: every setting, its defaults and checks, what a resumed run keeps
:mod:`minisegnet.run_data`   :func:`load_datasets`: the training and validation sets of a config
:mod:`minisegnet.schedule`   the learning-rate schedule: which, how long, positioned at a step
:mod:`minisegnet.budget`     the time budget: does another step fit, how long a budget-length schedule is
:mod:`minisegnet.run_folder` ``best.npz``, ``last.npz``, ``log.jsonl``, ``figure.png``; resume reading, cleanup
:mod:`minisegnet.evaluation` :func:`evaluate` (G, C, mIoU, BF), BatchNorm recomputation, checkpoint scoring
:mod:`minisegnet.inference`  :func:`predict_images`: segmenting image files with a checkpoint
:mod:`minisegnet.progress`   what the run shows: a line about it, a bar per epoch, a line per evaluation
===========================  ==========================================================================

Every public name of those modules that this one offered before is still importable from here.

**Exact resumption.**  ``TrainConfig(resume=path)`` (``--resume``) continues from a checkpoint
so that the weights are the *same* as those of an uninterrupted run with the same seed (the
tests compare them).  Nothing random depends on the past: the initial weights come from the
seed alone (``build_model(..., rng=seed)``), the loader's shuffling and augmentation from
``(seed, epoch)`` and ``(seed, epoch, batch)`` (:class:`~minisegnet.data.BatchLoader`), and
every Dropout layer is reseeded from ``(seed, epoch, batch, layer)`` before each step.  The
optimizer's state (momentum, Adam's moments), the schedule's step count and BatchNorm's running
statistics are in the checkpoint.  A run stopped by its time budget in the middle of an epoch
resumes at the next batch of that epoch.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from .backend import to_device, to_numpy
from .budget import PLAN_AFTER_STEPS, TimeBudget
from .checkpoint import load_checkpoint
from .config import DATASETS, LOSS_NORMALIZATIONS, OPTIMIZERS, SCHEDULES, SOLVER_DEFAULTS, TrainConfig  # noqa: F401
from .data import CLASS_NAMES, VOID_LABEL, BatchLoader, TrainTransform, compute_mean_std, median_frequency_weights
from .data import normalize
from .evaluation import evaluate, evaluate_checkpoint, recompute_bn_statistics  # noqa: F401
from .grad_mode import no_grad
from .inference import predict_images  # noqa: F401
from .layers import Dropout, SoftmaxCrossEntropy
from .models import build_model
from .optim import SGD, Adam
from .progress import Progress
from .run_data import load_datasets
from .run_folder import BEST, CHECKPOINT_KIND, FIGURE, LAST, LOG, RunFolder, json_ready  # noqa: F401
from .run_folder import read_resume_state, resolve_resume
from .schedule import make_scheduler, planned_from_budget, schedule_length

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "evaluate", "recompute_bn_statistics", "load_datasets",
           "evaluate_checkpoint", "predict_images"]
_INIT_STREAM = 0x696E6974  # "init": the initial weights' seed is derived from (seed, _INIT_STREAM)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced: files, final validation scores and the history."""

    best_checkpoint: str | None
    last_checkpoint: str | None
    figure: str | None
    log: str
    metrics: dict
    history: list = dataclasses.field(default_factory=list)
    epochs_completed: int = 0
    steps: int = 0
    stopped_by: str = "epochs"  # "epochs", "minutes", "max_steps" or "schedule"
    wall_time: float = 0.0


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says; see :mod:`minisegnet.run_folder` for what is written where."""
    return Trainer(config, progress=progress).fit()


class Trainer:
    """One training run: ``Trainer(config)`` prepares everything, :meth:`fit` trains.

    The constructor does all that can fail because of the user's input before any training
    starts, so a command line can report those mistakes in one line, and in an order where each
    check sees what it needs: the checkpoint to resume from is read and its settings merged
    (so a bare ``--resume`` has the run's planned length), then the settings are validated,
    then the output folder is probed (before the data is decoded), then data, model and
    optimizer are made; the log is restarted last, so a failed start leaves an old log alone.
    """

    def __init__(self, config: TrainConfig, progress: bool = True):
        self.start_time = time.monotonic()  # the time budget counts from here
        self.progress = Progress(progress)
        self.resume_path = resolve_resume(config.resume, config.out_dir)
        resumed = read_resume_state(self.resume_path) if self.resume_path is not None else None
        if resumed is not None:  # the checkpoint's run, continued: see TrainConfig.resumed
            config = config.resumed(resumed.config)
        self.config = config = dataclasses.replace(config).validate()
        self.folder = RunFolder(config.out_dir)
        self.folder.prepare()  # writable? (said now, not after the data); leftovers of killed writes removed
        self.out_dir, self.log_path = self.folder.path, self.folder.log

        # data: decoded and resized once; normalisation and class weights from the training split
        self.train_set, self.val_set = load_datasets(config)
        if resumed is not None:  # those the weights were trained with
            self.mean, self.std, self.class_weights = resumed.mean, resumed.std, resumed.class_weights
        else:
            self.mean, self.std = compute_mean_std(self.train_set)
            self.class_weights = median_frequency_weights(self.train_set) if config.class_weights else None
        self.train_loader = BatchLoader(
            self.train_set, config.batch_size, shuffle=True, seed=config.seed,
            transform=TrainTransform(size=None, flip=config.flip, crop=config.crop),
            mean=self.mean, std=self.std, drop_last=len(self.train_set) > config.batch_size,
        )
        self.val_loader = BatchLoader(self.val_set, config.batch_size, mean=self.mean, std=self.std)

        # model, loss, optimizer: the initial weights depend on the seed alone, so two runs start alike
        init_seed = _derived_seed(config.seed, _INIT_STREAM)
        self.model = build_model(config.model, rng=init_seed, **config.model_kwargs()).to(config.device)
        self.criterion = SoftmaxCrossEntropy(weight=self.class_weights, ignore_index=VOID_LABEL,
                                             normalize=config.loss_normalize)
        if config.optimizer == "sgd":
            self.optimizer = SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay)
        else:
            self.optimizer = Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        # position and history: a fresh run's, or the checkpoint's
        self.epoch, self.batch, self.step = 0, 0, 0  # completed epochs, batches of this epoch, optimizer steps
        self.history, self.best_mean_iou = [], float("-inf")  # evaluation records, the best mIoU so far
        self.schedule_steps = None  # total steps of a poly/cosine schedule, once known
        self.previous_seconds = 0.0  # wall time of the runs this one resumes
        if resumed is not None:
            load_checkpoint(self.resume_path, self.model, self.optimizer)
            self.epoch, self.batch, self.step = resumed.epoch, resumed.batch, resumed.step
            self.history, self.best_mean_iou = resumed.history, resumed.best_mean_iou
            self.schedule_steps, self.previous_seconds = resumed.schedule_steps, resumed.wall_seconds
        # the learning rate of every step: closed-form in the step, so a resumed run needs only the step
        self.schedule_steps = schedule_length(config, len(self.train_loader), self.schedule_steps)
        self.scheduler = make_scheduler(config, self.optimizer, len(self.train_loader), self.step, self.schedule_steps)
        self.budget = TimeBudget(config.minutes, train_batches=len(self.train_loader),
                                 val_batches=len(self.val_loader), figure=config.figure,
                                 recompute_bn=config.recompute_bn, start=self.start_time)
        self._epoch_losses, self._evaluated_step, self.figure_path = [], None, None
        self._last_figure = self.start_time  # the first figure comes figure_interval seconds in
        if resumed is None:
            self.folder.restart_log()
        else:  # the records up to the checkpoint's step; those after it will be made again
            self.folder.restart_log(keep_until=self.step, event={"event": "resume", "step": self.step,
                                                                 "epoch": self.epoch, "from": str(self.resume_path)})

    def elapsed(self) -> float:
        return self.budget.elapsed()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs, the step limit, the schedule or the time budget run out."""
        config = self.config
        self.progress.describe_run(config, self.model.num_parameters(), len(self.train_set), len(self.val_set),
                                   self.class_weights is not None, self.out_dir,
                                   (self.resume_path, self.epoch, self.step) if self.resume_path else None)
        if config.figure:
            import matplotlib.figure  # noqa: F401  (imported now, so the final figure takes its usual time)
        first_batch, _ = next(iter(self.val_loader.iter_epoch(0)))
        self.budget.measure_eval_batch(self.model, to_device(first_batch, config.device))
        stopped_by = self._stop_reason()
        while stopped_by is None:
            stopped_by = self._train_epoch()
            if stopped_by is None:  # a whole epoch was completed
                if self.epoch % config.eval_every == 0 or self._stop_reason() is not None:
                    self._evaluate_and_save()
                    self._plan_schedule()  # again, now that an epoch with its evaluation is timed
                stopped_by = self._stop_reason()
        if self._evaluated_step != self.step:  # the last state is not scored yet
            self._evaluate_and_save()
        if config.recompute_bn:
            plain = BatchLoader(self.train_set, config.batch_size, mean=self.mean, std=self.std)  # no augmentation
            used = recompute_bn_statistics(self.model, plain, self.budget.bn_batches())
            self.progress.say(f"BatchNorm statistics recomputed over {used} training batches")
            self._evaluate_and_save(bn_recomputed=True)
        if config.figure:
            self._draw_figure()
        return self._result(stopped_by)

    def _train_epoch(self) -> str | None:
        """Run the rest of the current epoch; return why it stopped early (None: it completed)."""
        config, model, criterion, optimizer = self.config, self.model, self.criterion, self.optimizer
        steps_per_epoch = len(self.train_loader)
        model.train()
        self._epoch_losses = losses = []
        with self.progress.epoch_bar(self.epoch, config.epochs, steps_per_epoch, self.batch) as bar:
            for images, labels in self.train_loader.iter_epoch(self.epoch, start=self.batch):
                stopped_by = self._stop_reason()
                if stopped_by is not None:
                    return stopped_by
                started = time.perf_counter()
                x, y = to_device(images, config.device), to_device(labels, config.device)
                _reseed_dropout(model, config.seed, self.epoch, self.batch)

                model.zero_grad()
                logits = model.forward(x)
                loss = criterion.forward(logits, y)
                model.backward(criterion.backward(), input_grad=False)
                optimizer.step()

                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: loss {loss} at epoch {self.epoch + 1}, step {self.step + 1} "
                        f"(lr {optimizer.lr:g}); try a smaller learning rate"
                    )
                if self.scheduler is not None:
                    self.scheduler.step()
                self.step += 1
                self.batch += 1
                self.budget.record_step(time.perf_counter() - started)
                losses.append(loss)
                if config.log_steps:
                    self.folder.append_log({"step": self.step, "epoch": self.epoch + self.batch / steps_per_epoch,
                                            "loss": loss, "lr": optimizer.lr})
                if self.scheduler is None and self.budget.steps_timed == PLAN_AFTER_STEPS:
                    self._plan_schedule()  # once a few steps are timed
                self.progress.update(bar, losses, len(images) / max(self.budget.step_estimate(), 1e-9), optimizer.lr,
                                     self.budget.left())
        if self.batch >= steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            return None
        return self._stop_reason() or "minutes"

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

    # -- the learning-rate schedule ---------------------------------------------------------
    def _plan_schedule(self) -> None:
        """Stretch a poly/cosine schedule without an epoch or step count over the time budget."""
        config = self.config
        steps = self.budget.planned_steps(self.step, config.eval_every) if planned_from_budget(config) else None
        if steps is None:
            return
        first, self.schedule_steps = self.scheduler is None, steps
        self.scheduler = make_scheduler(config, self.optimizer, len(self.train_loader), self.step, steps)
        if first:
            self.progress.say(f"schedule: {config.schedule} over {steps} steps (planned from the time budget)")

    # -- evaluation, checkpoints, figure ----------------------------------------------------
    def _evaluate_and_save(self, bn_recomputed: bool = False) -> dict:
        """Score the validation split, log the record, write the checkpoints (best first), maybe the figure."""
        started = time.perf_counter()
        scores = evaluate(self.model, self.val_loader)
        seconds = time.perf_counter() - started
        if len(self.val_loader):
            self.budget.eval_batch_seconds = seconds / len(self.val_loader)
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
            self.best_mean_iou = _score(scores["mean_iou"])
        record["best"] = improved
        self.history.append(record)
        self.folder.append_log(record)
        self._evaluated_step = self.step
        started = time.perf_counter()
        self.folder.save_checkpoints(self.model, self.optimizer, self._checkpoint_extra(scores), best=improved)
        self.budget.save_seconds = time.perf_counter() - started
        self.progress.evaluation(record["epoch"], self.step, record["mean_loss"], scores, improved, bn_recomputed,
                                 self.elapsed())
        if (self.config.figure and time.monotonic() - self._last_figure >= self.config.figure_interval
                and self._stop_reason() is None):
            self._draw_figure()
        return record

    def _checkpoint_extra(self, scores: dict) -> dict:
        """What a checkpoint remembers of the run besides the weights (see :mod:`minisegnet.run_folder`)."""
        return json_ready({
            "kind": CHECKPOINT_KIND, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "train_config": self.config.to_dict(), "size": list(self.config.size),
            "normalization": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "class_weights": None if self.class_weights is None else [float(v) for v in self.class_weights],
            "class_names": list(CLASS_NAMES), "ignore_index": VOID_LABEL,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "schedule_steps": self.schedule_steps,
            "metrics": {k: v for k, v in scores.items() if k != "confusion_matrix"},
            "best_mean_iou": self.best_mean_iou, "history": self.history,
            "wall_seconds": self.previous_seconds + self.elapsed(),  # over this run and those it resumes
            "rng": {"note": "shuffling, augmentation and dropout derive from (seed, epoch, batch)",
                    "seed": self.config.seed, "epoch": self.epoch, "batch": self.batch},
        })

    def _draw_figure(self) -> str:
        """figure.png: loss and validation curves above image | ground truth | prediction."""
        from .viz import training_figure

        started, config = time.perf_counter(), self.config
        rows = min(4, len(self.val_set))
        picks = np.unique(np.linspace(0, len(self.val_set) - 1, rows).round().astype(np.intp))
        images, targets = self.val_set.images[picks], self.val_set.labels[picks]
        with no_grad():
            predictions = to_numpy(self.model.predict(to_device(normalize(images, self.mean, self.std), config.device)))
        records = [r for r in self.folder.read_log() if "event" not in r]
        last = self.history[-1] if self.history else {}
        title = (f"{config.model} on {config.dataset} {config.size[0]}x{config.size[1]}: epoch "
                 f"{last.get('epoch', 0):.2f}, step {self.step}, val mIoU {_score(last.get('val_mean_iou')):.3f}")
        self.figure_path = str(training_figure(records, images, targets, predictions, self.folder.figure,
                                               title=title, max_rows=rows))
        self._last_figure = time.monotonic()
        self.budget.figure_seconds = time.perf_counter() - started
        return self.figure_path

    def _result(self, stopped_by: str) -> TrainResult:
        final = self.history[-1] if self.history else {}
        return TrainResult(
            best_checkpoint=self.folder.existing(self.folder.best),
            last_checkpoint=self.folder.existing(self.folder.last),
            figure=self.figure_path, log=str(self.log_path),
            metrics={k[len("val_"):]: v for k, v in final.items() if k.startswith("val_")},
            history=list(self.history), epochs_completed=self.epoch, steps=self.step, stopped_by=stopped_by,
            wall_time=self.elapsed(),
        )


def _derived_seed(*numbers: int) -> int:
    """A 63-bit seed that is a fixed function of ``numbers`` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _reseed_dropout(model, seed: int, epoch: int, batch: int) -> None:
    """Give every Dropout layer masks that depend only on (seed, epoch, batch, layer)."""
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, Dropout)):
        layer.reseed(_derived_seed(seed, epoch, batch, i))


def _score(value) -> float:
    """A validation score for comparisons: NaN or missing counts as -inf."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")

"""The run folder: what a training run writes, and how a later run or command reads it back.

**What a run writes** (in ``config.out_dir``)::

    best.npz     the weights with the best validation mIoU so far
    last.npz     the latest state: at every evaluation, every ``save_every`` minutes in between,
                 when the time budget stops a run mid-epoch, and on Ctrl-C or SIGTERM
    log.jsonl    one record per optimizer step ({"step", "epoch", "loss", "lr"}) and one per
                 evaluation ({"epoch", "step", "mean_loss", "val_mean_iou", ...})
    figure.png   training-loss and validation curves above a grid image | truth | prediction
    run.lock     while the run lives: its process id and host (one run per folder)

**Checkpoints** are written atomically (:func:`minisegnet.checkpoint.save_checkpoint`: a
temporary file beside the target, fsynced, then renamed over it), so a kill or a crash never
leaves half a file.  Their ``extra`` (:func:`checkpoint_extra`) holds what a resumed run and a
later ``evaluate`` / ``predict`` need: ``kind`` (:data:`CHECKPOINT_KIND`), the epoch, batch and step, the whole
:class:`~minisegnet.config.TrainConfig`, the normalisation ``mean``/``std`` of the training
split and the image size (:func:`checkpoint_preprocessing` reads them back), the class weights,
the learning-rate schedule's length, the history of validation scores, the step of the best
evaluation (``best_step``) and the losses of the epoch under way or just ended
(``epoch_losses``, so that the epoch's mean loss in its evaluation record is the same after a
resume from the middle of the epoch, or from an evaluation a signal broke off).
``best.npz`` is
written *before* ``last.npz``: a kill between the two saves then leaves ``last.npz`` one
evaluation behind -- the resumed run redoes that evaluation and writes ``best.npz`` again --
instead of a ``last.npz`` that records a best that ``best.npz`` does not hold.

**Temporary files of killed writes** (``.last.npz.1f2e3d4c.tmp``, ``.log.jsonl.tmp``,
``.figure.png.tmp``) are the only trace a kill during a write leaves; :meth:`RunFolder.prepare`
removes them when the next run starts in the folder.  It removes nothing else.

**The log** is appended one record (one line, one ``write``) at a time, so a kill can leave at
most a half-written *last* line; :func:`read_log` skips a line that is not a JSON record with a
warning naming the file and the line, instead of failing.  A resumed run rewrites the log with
the records up to its checkpoint's step (those after it will be made again), then a
``{"event": "resume"}`` record.

**The folder is probed first**: :meth:`RunFolder.prepare` creates it and writes a test file
before the run decodes any data, so an unwritable ``--out`` is reported at once, in one line.

**One run per folder.**  ``run.lock`` (:meth:`RunFolder.lock`) is created with ``O_EXCL`` and
holds the process id and host of the run writing the folder; a second run is refused while
that process lives.  A lock left by a process that died (SIGKILL, a power cut) is taken over
with a warning; one from another host is never guessed about (delete it by hand).  The lock
goes when the run ends, however it ends.  A fresh run into a folder that already holds a run
(a checkpoint, or a log with records) is refused unless ``overwrite`` (``--overwrite``) says
to replace it (:meth:`RunFolder.existing_run`): re-running a command must not wipe hours of
training.

**Two checkpoints, one story.**  Besides the order of the saves (best first), a resumed run
checks that ``best.npz`` holds the best that ``last.npz`` records
(:meth:`RunFolder.catch_up_best`): when the best evaluation *is* ``last.npz``'s state and
``best.npz`` is older or missing (a kill between the saves of a version that wrote ``last``
first), ``best.npz`` is copied from it; when that state is gone, the run is told what
``best.npz`` really holds, so the next better evaluation rewrites it.

**A failed write** (a full disk, a file-size limit, a folder made read-only mid-run) raises
:class:`RunFolderWriteError`: one sentence naming the file and the reason; the checkpoint
written before stays as it was (atomic writes) and no temporary file is left.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_atomically
from .checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import CLASS_NAMES, VOID_LABEL, parse_size

__all__ = [
    "RunFolder",
    "BEST",
    "LAST",
    "LOG",
    "FIGURE",
    "CHECKPOINT_KIND",
    "resolve_resume",
    "checkpoint_extra",
    "TrainResult",
    "run_result",
    "read_resume_state",
    "ResumeState",
    "checkpoint_preprocessing",
    "read_log",
    "json_ready",
    "RunFolderWriteError",
    "RunFolderLocked",
    "LOCK",
]

BEST, LAST, LOG, FIGURE, LOCK = "best.npz", "last.npz", "log.jsonl", "figure.png", "run.lock"
CHECKPOINT_KIND = "minisegnet-train"

# What a killed write of ours leaves behind: checkpoint.py's ".NAME.<hex>.tmp", the log's and the
# figure's ".NAME.tmp", and the probe file.  Nothing else is ever removed.
_TEMPORARY_PATTERNS = (f".{BEST}.*.tmp", f".{LAST}.*.tmp", f".{LOG}.tmp", f".{LOG}.*.tmp", f".{FIGURE}.tmp",
                       ".probe-*.tmp")  # minisegnet.atomic writes ".NAME.<hex>.tmp"; older versions ".NAME.tmp"


class RunFolderWriteError(OSError):
    """Writing a file of the run folder failed (full disk, file-size limit, ...); the message says which and why."""


class RunFolderLocked(OSError):
    """Another live run holds the folder's ``run.lock``."""


def _write_error(path, exc: OSError, kept: str) -> RunFolderWriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return RunFolderWriteError(f"cannot write {path} ({reason}); {kept}")


class RunFolder:
    """The output folder of one training run: its files, its log, its checkpoints."""

    def __init__(self, path):
        self.path = Path(path)
        self.best, self.last = self.path / BEST, self.path / LAST
        self.log, self.figure = self.path / LOG, self.path / FIGURE
        self.lock_file = self.path / LOCK
        self._locked = False

    def prepare(self) -> list[Path]:
        """Create the folder, check that it is writable, remove temporary files of killed writes.

        Raises ``OSError`` with a message that names the folder and what to do.  Returns the
        temporary files removed.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"output folder {self.path} is a file: choose another folder (--out DIR)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise OSError(
                f"cannot write into the output folder {self.path} ({reason}): choose another folder "
                "(--out DIR) or make it writable"
            ) from None
        return self.remove_temporary_files()

    def remove_temporary_files(self) -> list[Path]:
        """Delete the temporary files that killed writes left in the folder (only those)."""
        removed = []
        for pattern in _TEMPORARY_PATTERNS:
            for path in sorted(self.path.glob(pattern)):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
        return removed

    # -- one run per folder -----------------------------------------------------------------
    def lock(self) -> None:
        """Create ``run.lock`` (``O_EXCL``) holding this process's id and host; see the module docstring.

        Raises :class:`RunFolderLocked` while another live process holds it; a lock of a dead
        process on this host is taken over with a ``RuntimeWarning``.
        """
        if self._locked:
            return
        content = f"{os.getpid()} {socket.gethostname()}\n"
        for attempt in range(2):
            try:
                fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if attempt:
                    raise RunFolderLocked(f"output folder {self.path} is in use by another run ({self.lock_file} "
                                          "appeared again while taking over a stale lock)") from None
                self._take_over_stale_lock()
                continue
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(content)
            self._locked = True
            return

    def _take_over_stale_lock(self) -> None:
        """Remove ``run.lock`` if the process it names is dead (this host); else raise :class:`RunFolderLocked`."""
        try:
            text = self.lock_file.read_text(encoding="ascii", errors="replace").split()
        except FileNotFoundError:
            return  # gone meanwhile: try again
        pid = int(text[0]) if text and text[0].isdigit() else None
        host = text[1] if len(text) > 1 else None
        here = socket.gethostname()
        if pid is not None and host not in (None, here):
            raise RunFolderLocked(f"output folder {self.path} is in use by pid {pid} on host {host} "
                                  f"({self.lock_file}); if no run is using it, delete that file")
        if pid is not None and _process_alive(pid):
            who = "this process (another Trainer on the same folder)" if pid == os.getpid() else f"pid {pid}"
            raise RunFolderLocked(f"output folder {self.path} is in use by another run: {who} holds "
                                  f"{self.lock_file}; wait for it to end, or choose another folder (--out DIR)")
        warnings.warn(f"{self.lock_file}: taking over the lock of a run that ended without releasing it "
                      f"(pid {pid if pid is not None else '?'} is not running)", RuntimeWarning, stacklevel=3)
        try:
            self.lock_file.unlink()
        except FileNotFoundError:
            pass

    def unlock(self) -> None:
        """Remove ``run.lock`` if this folder object holds it (idempotent)."""
        if not self._locked:
            return
        self._locked = False
        try:
            text = self.lock_file.read_text(encoding="ascii", errors="replace").split()
            if text and text[0] == str(os.getpid()):
                self.lock_file.unlink()
        except OSError:
            pass

    def existing_run(self) -> str | None:
        """What of an earlier run the folder holds (``"last.npz (step 40), log.jsonl"``), or None."""
        found = []
        for path in (self.last, self.best):
            if path.is_file():
                step = checkpoint_step(path)
                found.append(path.name + (f" (step {step})" if step is not None else ""))
        if self.log.is_file() and self.log.stat().st_size > 0:
            found.append(LOG)
        return ", ".join(found) or None

    def remove_old_run(self) -> None:
        """Delete an earlier run's checkpoints and figure (``overwrite``); the log is restarted by its own method."""
        for path in (self.best, self.last, self.figure):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- the log ----------------------------------------------------------------------------
    def restart_log(self, keep_until: int | None = None, event: dict | None = None) -> list[dict]:
        """Start a fresh log; on resume (``keep_until``: the checkpoint's step) keep the records up to it.

        ``event``: a first record to append (a resumed run's ``{"event": "resume", ...}``).
        Returns the records kept.
        """
        kept = []
        if keep_until is not None and self.log.is_file():
            kept = [record for record in read_log(self.log) if record.get("step", 0) <= keep_until]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        try:
            write_atomically(self.log, lambda f: f.write(text), binary=False)
        except OSError as exc:
            raise _write_error(self.log, exc, "the log was left as it was") from None
        if event is not None:
            self.append_log(event)
        return kept

    def append_log(self, record: dict) -> None:
        """Add one record (one line) to the log."""
        try:
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(json_ready(record)) + "\n")
        except OSError as exc:
            raise _write_error(self.log, exc, "the log may end in a half-written line (skipped when read)") from None

    def read_log(self) -> list[dict]:
        return read_log(self.log)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoints(self, model, optimizer, extra: dict, best: bool) -> None:
        """Write ``last.npz`` (and first ``best.npz``, when ``best``), each atomically.

        A failed write raises :class:`RunFolderWriteError`; the file it would have replaced is kept.
        """
        for path in ((self.best, self.last) if best else (self.last,)):
            try:
                save_checkpoint(path, model, optimizer, extra)
            except OSError as exc:
                kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
                raise _write_error(path, exc, kept) from None

    def catch_up_best(self, state: "ResumeState") -> str | None:
        """Make ``best.npz`` hold the best evaluation ``state`` records, where it can (module docstring).

        Returns a sentence saying what was done, or None when nothing was needed.  When the best
        state is gone, ``state.best_mean_iou`` is set to the score ``best.npz`` really holds
        (-inf without one), so that the next better evaluation rewrites it.
        """
        if state.best_step is None:
            return None
        held = checkpoint_step(self.best) if self.best.is_file() else None
        if held == state.best_step or (held is not None and held > state.step):
            return None  # consistent; or ahead (killed between the saves): the run will write it again
        if state.best_step == state.step:
            try:
                with open(state.path, "rb") as source:
                    write_atomically(self.best, lambda f: shutil.copyfileobj(source, f))
            except OSError as exc:
                raise _write_error(self.best, exc, "best.npz was left as it was") from None
            return f"{self.best} caught up with {state.path} (the best evaluation, step {state.step})"
        score = None
        if held is not None:
            score = (read_checkpoint(self.best, weights=False)["extra"].get("metrics") or {}).get("mean_iou")
        state.best_mean_iou = score if isinstance(score, (int, float)) and math.isfinite(score) else float("-inf")
        warnings.warn(
            f"{self.best} {'holds step ' + str(held) if held is not None else 'is missing'}, but the run's best "
            f"evaluation was at step {state.best_step}, which no file holds any more; it will be rewritten at the "
            "next evaluation that beats it", RuntimeWarning, stacklevel=2)
        return None

    def existing(self, path: Path) -> str | None:
        """``str(path)`` if that file exists, else None."""
        return str(path) if path.is_file() else None


def resolve_resume(resume, out_dir) -> Path | None:
    """The checkpoint ``TrainConfig.resume`` names: a file, a run folder (its ``last.npz``), or
    ``"auto"`` (``out_dir/last.npz`` when it exists, else None: a fresh run).  None: no resume."""
    if resume is None:
        return None
    if resume == "auto":
        path = Path(out_dir) / LAST
        return path if path.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's live process
    except OSError:
        return False
    return True


def checkpoint_step(path) -> int | None:
    """The optimizer step a training checkpoint was saved at (None: unreadable, or not a training checkpoint)."""
    try:
        step = read_checkpoint(path, weights=False)["extra"].get("step")
    except (OSError, ValueError, KeyError):
        return None
    return step if isinstance(step, int) else None


@dataclass
class ResumeState:
    """Where a run resumed from a training checkpoint starts (its weights: ``load_checkpoint(path, ...)``)."""

    path: Path
    config: TrainConfig  # the settings the run was started with
    epoch: int  # completed epochs
    batch: int  # batches done in the current epoch
    step: int  # optimizer steps in total
    mean: np.ndarray  # normalisation of the training split, (3,) float32
    std: np.ndarray
    class_weights: np.ndarray | None  # (classes,) float64, or None: unweighted
    history: list  # the evaluation records so far
    best_mean_iou: float  # -inf before any evaluation
    schedule_steps: int | None  # the planned length of a poly/cosine schedule
    wall_seconds: float  # wall time of the runs so far
    best_step: int | None = None  # the step of the best evaluation (None: none yet)
    epoch_losses: list = None  # the losses of the epoch under way (or just ended, for its evaluation)
    schedule_anchor: tuple = (0, 0.0)  # (step, progress) of the schedule's last re-plan (minisegnet.schedule)


def checkpoint_extra(trainer) -> dict:
    """What a checkpoint of ``trainer``'s run remembers besides the weights (:func:`read_resume_state` reads it).

    ``trainer``: a :class:`~minisegnet.train.Trainer` (its position, settings, normalisation, class
    weights, schedule, history and scores are read, nothing is changed).
    """
    config = trainer.config
    return json_ready({
        "kind": CHECKPOINT_KIND, "epoch": trainer.epoch, "batch": trainer.batch, "step": trainer.step,
        "train_config": config.to_dict(), "size": list(config.size),
        "normalization": {"mean": [float(v) for v in trainer.mean], "std": [float(v) for v in trainer.std]},
        "class_weights": None if trainer.class_weights is None else [float(v) for v in trainer.class_weights],
        "class_names": list(CLASS_NAMES), "ignore_index": VOID_LABEL,
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "schedule_steps": trainer.schedule_steps,
        "schedule_anchor": [int(trainer.schedule_anchor[0]), float(trainer.schedule_anchor[1])],
        "metrics": trainer._last_scores, "evaluated_step": trainer._evaluated_step,  # the last evaluation's scores
        "best_mean_iou": trainer.best_mean_iou, "best_step": trainer.best_step, "history": trainer.history,
        "epoch_losses": [float(v) for v in trainer._epoch_losses],  # of the epoch under way, or just ended
        "wall_seconds": trainer.previous_seconds + trainer.elapsed(),  # over this run and those it resumes
        "rng": {"note": "shuffling, augmentation and dropout derive from (seed, epoch, batch)",
                "seed": config.seed, "epoch": trainer.epoch, "batch": trainer.batch},
    })


@dataclass
class TrainResult:
    """What :func:`~minisegnet.train.train` produced: files, final validation scores and the history."""

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


def run_result(trainer, stopped_by: str) -> TrainResult:
    """The :class:`TrainResult` of ``trainer``'s run (a :class:`~minisegnet.train.Trainer`), once it stopped."""
    folder, final = trainer.folder, trainer.history[-1] if trainer.history else {}
    return TrainResult(
        best_checkpoint=folder.existing(folder.best), last_checkpoint=folder.existing(folder.last),
        figure=trainer.figure_path, log=str(trainer.log_path),
        metrics={k[len("val_"):]: v for k, v in final.items() if k.startswith("val_")},
        history=list(trainer.history), epochs_completed=trainer.epoch, steps=trainer.step, stopped_by=stopped_by,
        wall_time=trainer.elapsed(),
    )


def checked_normalization(mean, std, path, consequence: str = "damaged checkpoint"):
    """``(mean, std)`` as float32 arrays, or a ``ValueError`` naming ``path``: 3 finite means, 3 positive stds."""
    try:
        m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    except (TypeError, ValueError):
        m = s = np.zeros(0, dtype=np.float32)
    if m.shape != (3,) or s.shape != (3,) or not (np.isfinite(m).all() and np.isfinite(s).all()) or not (s > 0).all():
        raise ValueError(f"{path}: the normalisation statistics should be 3 finite means and 3 positive standard "
                         f"deviations (RGB), got mean {mean!r} and std {std!r}: damaged checkpoint, {consequence}")
    return m, s


def read_resume_state(path) -> ResumeState:
    """What a checkpoint written by the training loop says about its run (its weights are not read).

    Raises ``ValueError`` naming the file when it was not written by the training loop or lacks
    what resuming needs.
    """
    extra = read_checkpoint(path, weights=False)["extra"]
    if extra.get("kind") != CHECKPOINT_KIND or not isinstance(extra.get("train_config"), dict):
        raise ValueError(f"{path} was not written by minisegnet's training loop: cannot resume from it")
    missing = [key for key in ("epoch", "batch", "step") if not isinstance(extra.get(key), int)]
    norm = extra.get("normalization")
    if not (isinstance(norm, dict) and "mean" in norm and "std" in norm):
        missing.append("normalization")
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (damaged, or not a training checkpoint): "
                         "cannot resume from it")
    mean, std = checked_normalization(norm["mean"], norm["std"], path, "cannot resume from it")
    weights, best = extra.get("class_weights"), extra.get("best_mean_iou")
    history = list(extra.get("history", []))
    best_step = extra.get("best_step")
    if not isinstance(best_step, int):  # written before best_step was recorded: the last improvement
        best_step = next((r.get("step") for r in reversed(history) if isinstance(r, dict) and r.get("best")), None)
    losses = extra.get("epoch_losses")
    return ResumeState(
        path=Path(path), config=TrainConfig.from_dict(extra["train_config"]),
        epoch=extra["epoch"], batch=extra["batch"], step=extra["step"],
        mean=mean, std=std,
        class_weights=None if weights is None else np.asarray(weights, dtype=np.float64),
        history=history,
        best_mean_iou=best if isinstance(best, (int, float)) and math.isfinite(best) else float("-inf"),
        schedule_steps=extra.get("schedule_steps"), wall_seconds=float(extra.get("wall_seconds", 0.0)),
        best_step=best_step if isinstance(best_step, int) else None,
        epoch_losses=[float(v) for v in losses if isinstance(v, (int, float))] if isinstance(losses, list) else [],
        schedule_anchor=_schedule_anchor(extra.get("schedule_anchor"), path),
    )


def _schedule_anchor(value, path) -> tuple[int, float]:
    """A checkpoint's ``schedule_anchor`` as ``(step, progress)``; absent (older checkpoints): the start."""
    if value is None:
        return 0, 0.0
    if (not isinstance(value, list) or len(value) != 2 or isinstance(value[0], bool) or not isinstance(value[0], int)
            or value[0] < 0 or not isinstance(value[1], (int, float)) or not 0.0 <= value[1] <= 1.0):
        raise ValueError(f"{path}: expected schedule_anchor as [step >= 0, progress in [0, 1]], got {value!r}: "
                         "damaged checkpoint, cannot resume from it")
    return int(value[0]), float(value[1])


def checkpoint_preprocessing(extra: dict, path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The normalisation mean/std and image size a training checkpoint's weights expect."""
    norm = extra.get("normalization")
    size = extra.get("size")
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm or size is None:
        raise ValueError(
            f"{path} holds no normalisation statistics or image size (it was not written by `minisegnet train`)"
        )
    return (np.asarray(norm["mean"], dtype=np.float32), np.asarray(norm["std"], dtype=np.float32),
            parse_size(tuple(size)))


def read_log(path) -> list[dict]:
    """The records of a JSON-lines log; a line that is not a JSON record is skipped with a warning.

    A kill during a write leaves at most a half-written last line; blank lines are ignored.
    """
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            why = "is incomplete (a write was interrupted)" if number == len(lines) else "is not a JSON record"
            warnings.warn(f"{path}: line {number} {why}; skipped", RuntimeWarning, stacklevel=2)
            continue
        records.append(record)
    return records


def json_ready(value):
    """NaN/inf become None (plain JSON), NumPy scalars Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

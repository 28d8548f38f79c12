"""The run folder: what a training run writes, and how a later run or command reads it back.

**What a run writes** (in ``config.out_dir``)::

    best.npz     the weights with the best validation mIoU so far
    last.npz     the latest state (also written when the time budget stops a run mid-epoch)
    log.jsonl    one record per optimizer step ({"step", "epoch", "loss", "lr"}) and one per
                 evaluation ({"epoch", "step", "mean_loss", "val_mean_iou", ...})
    figure.png   training-loss and validation curves above a grid image | truth | prediction

**Checkpoints** are written atomically (:func:`minisegnet.checkpoint.save_checkpoint`: a
temporary file beside the target, fsynced, then renamed over it), so a kill or a crash never
leaves half a file.  Their ``extra`` holds what a resumed run and a later ``evaluate`` /
``predict`` need: ``kind`` (:data:`CHECKPOINT_KIND`), the epoch, batch and step, the whole
:class:`~minisegnet.config.TrainConfig`, the normalisation ``mean``/``std`` of the training
split and the image size (:func:`checkpoint_preprocessing` reads them back), the class weights,
the learning-rate schedule's length, and the history of validation scores.  ``best.npz`` is
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
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import parse_size

__all__ = [
    "RunFolder",
    "BEST",
    "LAST",
    "LOG",
    "FIGURE",
    "CHECKPOINT_KIND",
    "resolve_resume",
    "read_resume_state",
    "ResumeState",
    "checkpoint_preprocessing",
    "read_log",
    "json_ready",
]

BEST, LAST, LOG, FIGURE = "best.npz", "last.npz", "log.jsonl", "figure.png"
CHECKPOINT_KIND = "minisegnet-train"

# What a killed write of ours leaves behind: checkpoint.py's ".NAME.<hex>.tmp", the log's and the
# figure's ".NAME.tmp", and the probe file.  Nothing else is ever removed.
_TEMPORARY_PATTERNS = (f".{BEST}.*.tmp", f".{LAST}.*.tmp", f".{LOG}.tmp", f".{FIGURE}.tmp", ".probe-*.tmp")


class RunFolder:
    """The output folder of one training run: its files, its log, its checkpoints."""

    def __init__(self, path):
        self.path = Path(path)
        self.best, self.last = self.path / BEST, self.path / LAST
        self.log, self.figure = self.path / LOG, self.path / FIGURE

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

    # -- the log ----------------------------------------------------------------------------
    def restart_log(self, keep_until: int | None = None, event: dict | None = None) -> None:
        """Start a fresh log; on resume (``keep_until``: the checkpoint's step) keep the records up to it.

        ``event``: a first record to append (a resumed run's ``{"event": "resume", ...}``).
        """
        kept = []
        if keep_until is not None and self.log.is_file():
            kept = [record for record in read_log(self.log) if record.get("step", 0) <= keep_until]
        tmp = self.log.with_name(f".{LOG}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(tmp, self.log)
        if event is not None:
            self.append_log(event)

    def append_log(self, record: dict) -> None:
        """Add one record (one line) to the log."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_ready(record)) + "\n")

    def read_log(self) -> list[dict]:
        return read_log(self.log)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoints(self, model, optimizer, extra: dict, best: bool) -> None:
        """Write ``last.npz`` (and first ``best.npz``, when ``best``), each atomically."""
        if best:
            save_checkpoint(self.best, model, optimizer, extra)
        save_checkpoint(self.last, model, optimizer, extra)

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
    weights, best = extra.get("class_weights"), extra.get("best_mean_iou")
    return ResumeState(
        path=Path(path), config=TrainConfig.from_dict(extra["train_config"]),
        epoch=extra["epoch"], batch=extra["batch"], step=extra["step"],
        mean=np.asarray(norm["mean"], dtype=np.float32), std=np.asarray(norm["std"], dtype=np.float32),
        class_weights=None if weights is None else np.asarray(weights, dtype=np.float64),
        history=list(extra.get("history", [])),
        best_mean_iou=best if isinstance(best, (int, float)) and math.isfinite(best) else float("-inf"),
        schedule_steps=extra.get("schedule_steps"), wall_seconds=float(extra.get("wall_seconds", 0.0)),
    )


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

"""The time budget of a training run: ``minutes`` bounds the wall time of the whole run.

``TrainConfig.minutes`` bounds the whole :func:`~minisegnet.train.train` call, data
preparation and final evaluation included: the clock starts when the run is created.  A run
that must stop in time has to know three things, all measured on the run itself:

* **what a step costs**: the mean of the recent steps (the very first, with its allocations,
  left out);
* **what the end of the run costs** (the *final reserve*): the last evaluation (measured on one
  validation batch before training, then on every evaluation), the figure, writing both
  checkpoints and, with ``recompute_bn``, the pass over the training images;
* **whether another step fits**: elapsed + one step + the final reserve <= the budget.  Before
  each step the loop asks; when it does not fit, the run stops, evaluates, saves ``last.npz``
  and draws the figure.

**A schedule as long as the budget.**  With ``schedule="poly"`` or ``"cosine"`` and no epoch
count, the schedule is stretched over the number of steps the budget allows, so the learning
rate comes down as the time runs out: :meth:`TimeBudget.planned_steps` divides the time left
(less the final reserve) by the cost of a step *with its share of the evaluations*.  The loop
plans once, after :data:`PLAN_AFTER_STEPS` steps have been timed, and plans again after every
evaluation, when the cost of an epoch and its evaluation is known better.  The plan is saved in
the checkpoints, so a resumed run goes on with it.
"""
from __future__ import annotations

import math
import time
from collections import deque

__all__ = ["TimeBudget", "PLAN_AFTER_STEPS", "format_clock"]

PLAN_AFTER_STEPS = 5  # steps timed before a schedule is planned from the budget
RECENT_STEPS = 20  # the step estimate is the mean of this many recent steps
FIGURE_SECONDS_GUESS = 4.0  # the figure's cost before it has been drawn once
BN_PASS_MARGIN = 1.2  # a BN-recomputation batch (training mode) costs about this many eval batches


class TimeBudget:
    """The wall-time budget of one run (``minutes=None``: no budget, every step fits).

    ``train_batches``/``val_batches``: batches of a training epoch and of an evaluation;
    ``figure``/``recompute_bn``: whether the end of the run draws the figure / recomputes the
    BatchNorm statistics; ``start``: when the clock started (default: now, by ``clock``).

    The loop feeds in what it measures: :meth:`record_step` after each step, and the
    attributes ``eval_batch_seconds`` (one validation batch), ``save_seconds`` (writing the
    checkpoints once) and ``figure_seconds`` (drawing the figure once).
    """

    def __init__(self, minutes: float | None, *, train_batches: int, val_batches: int, figure: bool = True,
                 recompute_bn: bool = False, start: float | None = None, clock=time.monotonic):
        self.minutes = minutes
        self.train_batches, self.val_batches = train_batches, val_batches
        self.figure, self.recompute_bn = figure, recompute_bn
        self.clock = clock
        self.start = clock() if start is None else start
        self.steps_timed = 0
        self._first_step = None
        self._recent = deque(maxlen=RECENT_STEPS)
        self.eval_batch_seconds: float | None = None
        self.save_seconds = 0.0
        self.figure_seconds: float | None = None

    # -- measurements -----------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """The whole budget in seconds (infinite without one)."""
        return math.inf if self.minutes is None else 60.0 * self.minutes

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left (infinite without a budget)."""
        return self.seconds - self.elapsed()

    def record_step(self, seconds: float) -> None:
        """One more step took ``seconds``."""
        if self.steps_timed == 0:
            self._first_step = seconds
        else:
            self._recent.append(seconds)
        self.steps_timed += 1

    def step_estimate(self) -> float:
        """Mean duration of the recent steps (the very first, with its allocations, left out)."""
        if self._recent:
            return sum(self._recent) / len(self._recent)
        return self._first_step or 0.0

    def measure_eval_batch(self, model, images) -> float:
        """Time one validation forward of ``images`` (after a warm-up one) and remember it."""
        from .grad_mode import no_grad

        with no_grad():
            model.predict(images)  # warm-up (allocations)
            start = time.perf_counter()
            model.predict(images)
            self.eval_batch_seconds = time.perf_counter() - start
        return self.eval_batch_seconds

    # -- decisions --------------------------------------------------------------------------
    def _figure_reserve(self) -> float:
        if not self.figure:
            return 0.0
        return self.figure_seconds if self.figure_seconds is not None else FIGURE_SECONDS_GUESS

    def final_reserve(self) -> float:
        """Seconds the end of a run needs: evaluation, BN recomputation, figure, checkpoints."""
        per_batch = self.eval_batch_seconds or 0.0
        seconds = per_batch * self.val_batches + self._figure_reserve() + 2 * self.save_seconds
        if self.recompute_bn:
            seconds += per_batch * (self.train_batches * BN_PASS_MARGIN + self.val_batches)
        return seconds

    def allows_step(self, steps_done: int) -> bool:
        """Whether one more step and the end of the run still fit (a run's first step always runs)."""
        if self.minutes is None or steps_done == 0:
            return True
        return self.elapsed() + self.step_estimate() + self.final_reserve() <= self.seconds

    def planned_steps(self, step: int, eval_every: int) -> int | None:
        """How many steps in all (``step`` done) a schedule stretched over the budget should have.

        The time left after the final reserve, divided by the cost of a step plus its share of
        the evaluations (one every ``eval_every`` epochs).  None until :data:`PLAN_AFTER_STEPS`
        steps have been timed, or without a budget.
        """
        if self.minutes is None or self.steps_timed < PLAN_AFTER_STEPS:
            return None
        eval_seconds = (self.eval_batch_seconds or 0.0) * self.val_batches
        per_step = self.step_estimate() + eval_seconds / (self.train_batches * eval_every)
        left = self.left() - self.final_reserve()
        return step + max(1, int(left / per_step))

    def bn_batches(self) -> int | None:
        """How many training batches the BatchNorm recomputation may use now (None: all of them)."""
        if self.minutes is None or not self.eval_batch_seconds:
            return None
        after = self.eval_batch_seconds * self.val_batches + self._figure_reserve()
        left = self.left() - after - 2 * self.save_seconds
        return max(1, min(self.train_batches, int(left / (1.1 * self.eval_batch_seconds))))


def format_clock(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on (negative times show as 00:00)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"

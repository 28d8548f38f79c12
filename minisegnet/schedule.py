"""The learning-rate schedule of a training run: which one, how long, and where it stands.

``TrainConfig.schedule`` picks it (stepped once per iteration, never per epoch):

=========  ================================================================================
none       the learning rate stays ``lr``
step       ``lr × lr_gamma`` every ``lr_step_epochs`` epochs (:class:`~minisegnet.optim.StepLR`)
poly       ``lr × (1 - t/T) ** poly_power`` (:class:`~minisegnet.optim.PolyLR`), the default
cosine     ``lr × (1 + cos(π t/T)) / 2`` (:class:`~minisegnet.optim.CosineLR`)
=========  ================================================================================

**How long** (``T``, poly and cosine only, :func:`schedule_length`): ``epochs`` when given (so
resuming with more epochs stretches it), else the length already planned (a resumed run's),
else ``max_steps``; with none of these the run has only a time budget, and the length is planned
from it after a few steps (:meth:`minisegnet.budget.TimeBudget.planned_steps`).

**Re-planned without a jump.**  A budget-planned length is planned again after every
evaluation (the machine may have slowed down or sped up).  The new schedule starts where the
old one stands: the *anchor* ``(s, p_s)``, the step of the re-plan and the old schedule's
progress there, from which the progress runs linearly to 1 at the new ``T``
(:func:`~minisegnet.optim.planned_progress`), so the rate never jumps; only its slope changes.
The first plan's anchor is ``(0, 0)``: the plain ``t / T``.  The anchor is saved in the
checkpoints with ``T``, so a resumed run goes on with both.

**The class weights follow the same progress** when they are annealed
(``class_weight_power_end``, :func:`class_weight_power_at`): the power moves linearly from
``class_weight_power`` to ``class_weight_power_end`` as the schedule's progress goes from 0 to 1.

**A warm-up** (``warmup_steps`` W, :func:`warmup_factor`) multiplies whichever schedule's rate
by ``(t + 1) / W`` for the first W steps (0-based step t): the first update takes ``lr / W``,
the W-th the full rate.  It sits on top of the schedule rather than inside it, so it also holds
for the few steps a time-budgeted run takes before its schedule is planned.

**Where it stands**: the schedules are closed-form in the step count, so a resumed run needs
only its step to be exactly where the interrupted one was (:func:`make_scheduler`).
"""
from __future__ import annotations

from .optim import CosineLR, PolyLR, StepLR, planned_progress

#: The anchor of a schedule planned once, from its start: step 0, progress 0.
START = (0, 0.0)

__all__ = ["schedule_length", "make_scheduler", "planned_from_budget", "class_weight_power_at", "warmup_factor",
           "START"]


def planned_from_budget(config) -> bool:
    """Whether the schedule's length comes from the time budget (poly/cosine, no epochs, no max_steps)."""
    return config.schedule in ("poly", "cosine") and config.epochs is None and config.max_steps is None


def schedule_length(config, steps_per_epoch: int, planned: int | None = None) -> int | None:
    """``T`` of a poly/cosine schedule (None: other schedules, or not planned from the budget yet)."""
    if config.schedule not in ("poly", "cosine"):
        return None
    if config.epochs is not None:
        return config.epochs * steps_per_epoch
    return planned if planned is not None else config.max_steps


def make_scheduler(config, optimizer, steps_per_epoch: int, step: int, length: int | None, anchor=START):
    """The schedule of ``config`` for ``optimizer``, positioned at ``step`` (None: none, or no length yet).

    ``anchor``: ``(start_step, start_progress)`` of a poly/cosine schedule re-planned in mid-run
    (module docstring); the default is a schedule planned from its start.
    """
    if config.schedule == "none":
        return None
    if config.schedule == "step":
        scheduler = StepLR(optimizer, config.lr_step_epochs * steps_per_epoch, config.lr_gamma)
    elif length is None:
        return None  # a time-budgeted schedule: its length is measured after a few steps
    elif config.schedule == "poly":
        scheduler = PolyLR(optimizer, length, power=config.poly_power, start_step=anchor[0], start_progress=anchor[1])
    else:
        scheduler = CosineLR(optimizer, length, start_step=anchor[0], start_progress=anchor[1])
    scheduler.load_state_dict({**scheduler.state_dict(), "base_lr": config.lr, "last_step": step})
    return scheduler


def class_weight_power_at(config, step: int, length: int | None, anchor=START) -> float:
    """The power of the class weights at ``step`` (0-based) of a schedule ``length`` steps long.

    ``P0 + (P1 - P0) · p`` with ``P0 = class_weight_power``, ``P1 = class_weight_power_end`` and
    ``p`` the schedule's progress (``min(step / T, 1)``, or from a re-plan's ``anchor`` on:
    :func:`~minisegnet.optim.planned_progress`); ``P0`` throughout when no end is set, and while
    ``T`` is not known yet (the first few steps of a run that plans its length from the time
    budget).  Closed-form in the step, like the learning rate, so a resumed run anneals on
    exactly where it stopped.
    """
    start, end = float(config.class_weight_power), config.class_weight_power_end
    if end is None or not length:
        return start
    return start + (float(end) - start) * planned_progress(step, length, *anchor)


def warmup_factor(config, step: int) -> float:
    """The factor of the learning rate at ``step`` (0-based) during a linear warm-up.

    ``min(1, (step + 1) / W)`` with ``W = config.warmup_steps`` (1 throughout when W is 0).  Why a
    warm-up at all: the first updates are taken with Adam's second-moment estimate built from a
    handful of gradients, and with BatchNorm's running statistics still at their initial values,
    so a full-size step then moves the weights furthest on the least information; ramping the
    rate over the first W steps (Goyal et al., 2017) lets both settle first.  Closed-form in the
    step, like the schedule, so a run resumed inside its warm-up goes on exactly where it stopped.
    """
    steps = int(getattr(config, "warmup_steps", 0) or 0)
    if steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / steps)

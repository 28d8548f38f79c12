"""Finite numbers: the checks that keep a diverged run from passing for a trained one.

A learning rate that is too large does not fail loudly.  With SGD the loss grows
(1e9, 1e20, 1e31) before it turns into NaN, and BatchNorm's running variances become
infinite on the way; with Adam, whose steps are about ``lr`` whatever the gradient, the
weights grow to 1e29 while every loss stays a number.  Three checks; the training loop
makes the first two, the third lives in :mod:`minisegnet.checkpoint`:

**After every step, before the update** (:class:`DivergenceWatch`, :func:`squared_gradient_norm_on_device`):
the loss and the global gradient norm must be finite, and the loss must not be far above its
running level (more than :data:`SPIKE_FACTOR` times the median of the last
:data:`RECENT_LOSSES` losses, or :data:`LOSS_FLOOR` when that median is smaller); otherwise the
loop raises :class:`TrainingDiverged`, naming the step and the first layer in backward order
whose gradient went non-finite, and suggesting a lower learning rate.  The norm costs one reduction per parameter,
*kept on the device*, summed there, and read back together with the loss in one transfer
(:func:`host_floats`) -- one GPU sync per step, never a look at each element from Python.  Only when a step fails is the culprit
searched for (:func:`first_nonfinite`, over the gradients in reverse registration
order, which is the order the backward pass ran in): the first layer whose gradient went
non-finite is where the overflow started; the layers after it in backward order only
inherit it.  ``float32`` squares overflow at ``|g| > 1.8e19``: a norm that is infinite
although every gradient is finite is reported as such (a gradient that large is a
divergence too).

**Before every save** (:func:`first_nonfinite_state`): every weight, every BatchNorm
statistic and every optimizer moment must be finite; a checkpoint that is not is never
written, so "the last good checkpoint" stays good.

**When a checkpoint is read** (:func:`minisegnet.checkpoint.nonfinite_arrays`, called by
``load_model`` and ``load_checkpoint``): ``evaluate``, ``predict`` and ``--resume`` refuse a file
whose weights or statistics are not finite (one that another program wrote, or an older
minisegnet), naming the file and the bad arrays.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

from .backend import device_of, get_array_module, is_array, to_numpy

SPIKE_FACTOR = 1e3  # a loss this many times its running level is a divergence
RECENT_LOSSES = 50  # the running level: the median of this many recent losses
# The running level is at least this: a cross-entropy of 100 (1000 x 0.1) means a probability of
# e^-100 for the right class, never a hard batch (a uniform guess over 11 classes costs 2.4).
LOSS_FLOOR = 0.1

__all__ = ["TrainingDiverged", "DivergenceWatch", "SPIKE_FACTOR", "RECENT_LOSSES", "LOSS_FLOOR",
           "squared_gradient_norm", "squared_gradient_norm_on_device", "host_floats", "first_nonfinite", "first_nonfinite_gradient", "first_nonfinite_state"]


def squared_gradient_norm(parameters) -> float:
    """``sum_p ||p.grad||^2`` over the parameters that have a gradient, as one host float.

    NaN or inf when any gradient is not finite (or the sum overflows).
    """
    total = squared_gradient_norm_on_device(parameters)
    return 0.0 if total is None else float(total)


def squared_gradient_norm_on_device(parameters):
    """``sum_p ||p.grad||^2`` as a scalar where the gradients live (None: no gradient at all).

    Each parameter contributes one dot product computed where its gradient lives (NumPy or
    CuPy) and the sum stays there: nothing is read back to the host, so a GPU is not stalled.
    """
    total = None
    for p in parameters:
        g = p.grad
        if g is None:
            continue
        flat = g.reshape(-1)
        xp = get_array_module(flat)
        term = xp.vdot(flat, flat)
        total = term if total is None else total + term
    return total


def host_floats(*values) -> tuple[float, ...]:
    """Scalars (Python numbers, NumPy scalars, 0-d NumPy or CuPy arrays) as host floats, in one transfer.

    On a GPU every read of a device value waits for the work queued before it; reading a
    step's loss and gradient norm together costs one such wait, not one each.  ``None`` gives 0.0.
    """
    on_device = [v for v in values if is_array(v) and device_of(v) != "cpu"]
    if not on_device:
        return tuple(0.0 if v is None else float(v) for v in values)
    xp = get_array_module(*on_device)
    together = xp.stack([xp.asarray(0.0 if v is None else v, dtype=xp.float64).reshape(()) for v in values])
    return tuple(float(v) for v in to_numpy(together))


def _all_finite(array) -> bool:
    xp = get_array_module(array)
    if array.dtype.kind not in "fc":  # integers (num_batches_tracked) and booleans are always finite
        return True
    return bool(xp.isfinite(array).all())


def first_nonfinite(named_arrays) -> str | None:
    """The name of the first ``(name, array)`` pair whose array holds a NaN or an inf (None: all finite).

    ``None`` arrays (parameters without a gradient) are skipped.
    """
    for name, array in named_arrays:
        if array is not None and not _all_finite(array):
            return name
    return None


def first_nonfinite_gradient(model) -> str | None:
    """The first parameter, in backward order (reverse registration), whose gradient is not finite."""
    return first_nonfinite((name, p.grad) for name, p in reversed(list(model.named_parameters())))


def first_nonfinite_state(model, optimizer=None) -> str | None:
    """The first weight, buffer (BatchNorm statistic) or optimizer state array that is not finite.

    Returns its name (``"encoder.stage1.bn.running_var"``, ``"optimizer state of <param>:
    exp_avg_sq"``), or None when everything a checkpoint would hold is finite.
    """
    found = first_nonfinite((name, p.data) for name, p in model.named_parameters())
    if found is None:
        found = first_nonfinite(model.named_buffers())
    if found is None and optimizer is not None:
        names = {id(p): name for name, p in model.named_parameters()}
        for p, state in zip(optimizer.params, optimizer.state):
            bad = first_nonfinite((key, value) for key, value in state.items() if hasattr(value, "dtype"))
            if bad is not None:
                return f"the optimizer's {bad} of {names.get(id(p), '?')}"
    return found


class TrainingDiverged(FloatingPointError):
    """The run diverged (non-finite loss, gradient or state, or an exploding loss); the message says where."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class DivergenceWatch:
    """The step-by-step check of the training loop: finite loss and gradient norm, no loss spike.

    A loss more than :data:`SPIKE_FACTOR` times its running level -- the median of the last
    :data:`RECENT_LOSSES` losses, at least :data:`LOSS_FLOOR` -- is a divergence too: with a
    far too large learning rate the loss grows by orders of magnitude for several steps before
    it turns into NaN.  ``recent``: losses to start from (a resumed run's, from its log).
    """

    def __init__(self, recent=()):
        self.recent = deque(recent, maxlen=RECENT_LOSSES)

    def record(self, loss: float) -> None:
        """A step's loss, once the step is applied."""
        self.recent.append(loss)

    def check(self, loss: float, grad_sq: float, model) -> str | None:
        """What is wrong with this step (loss, squared gradient norm), in words, or None when it may be applied."""
        level = statistics.median(self.recent) if self.recent else None
        spike = level is not None and loss > SPIKE_FACTOR * max(level, LOSS_FLOOR)
        if math.isfinite(loss) and math.isfinite(grad_sq) and not spike:
            return None
        what = []
        if not math.isfinite(loss):
            what.append(f"the loss is {loss}")
        elif spike:
            n = len(self.recent)
            what.append(f"the loss {loss:.3g} is more than {SPIKE_FACTOR:g} times its running level {level:.3g} "
                        f"(the median of the last {n} step{'s' if n > 1 else ''})")
        if not math.isfinite(grad_sq):
            culprit = first_nonfinite_gradient(model)  # searched only now that the step failed
            what.append(f"the gradient is not finite, first in {culprit} (in backward order)" if culprit else
                        "the gradient norm overflows (a gradient above 1e19)")
        else:
            what.append(f"gradient norm {math.sqrt(grad_sq):.3g}")
        return ", ".join(what)

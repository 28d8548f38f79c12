"""Optimizers and learning-rate schedules: what turns gradients into better weights.

After ``loss.backward`` has filled every ``param.grad``, the training loop calls
``optimizer.step()`` once (and ``optimizer.zero_grad()`` before the next backward, since
gradients accumulate).  Two optimizers, with exactly PyTorch's update rules so that a
step here equals a step of ``torch.optim`` on the same gradients (tests check it):

:class:`SGD` — stochastic gradient descent with momentum (``torch.optim.SGD``, dampening 0)::

    d  = g + weight_decay * w              # L2 regularisation, folded into the gradient
    v  = d                  (first step)   # the "velocity" starts as the first gradient
    v  = momentum * v + d   (later steps)
    d  = d + momentum * v   if nesterov else v
    w  = w - lr * d

SegNet-Basic's Caffe solver (``SegNet-Tutorial/Models/segnet_basic_solver.prototxt``) is
``lr 0.1, momentum 0.9, weight_decay 5e-4``: ``SGD(model.parameters(), lr=0.1)``.
Caffe puts the learning rate inside the velocity (``v = m v + lr d; w = w - v``) while
PyTorch and we keep it outside (``v = m v + d; w = w - lr v``): the two agree while ``lr``
is constant and differ only for a few steps after the schedule changes ``lr``.

:class:`Adam` — adaptive moments (``torch.optim.Adam``, L2 weight decay, not AdamW)::

    d = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * d        # first moment (mean of gradients)
    s = beta2 * s + (1 - beta2) * d**2     # second moment (uncentred variance)
    m_hat = m / (1 - beta1**t);  s_hat = s / (1 - beta2**t)    # bias correction, t = step
    w = w - lr * m_hat / (sqrt(s_hat) + eps)

Every update is written in place into ``param.data`` with array operations of the
parameter's own array module (NumPy or CuPy) and dtype: a float32 model stays float32, a
model on the GPU is updated on the GPU, and no Python loop runs over elements.  The
optimizer's per-parameter state (momentum buffers, moments) lives beside the parameter, on
its device; ``state_dict()`` exports it as NumPy arrays for checkpoints.  A parameter whose
``grad`` is ``None`` (frozen, or not reached by backward) is skipped and keeps its state.

Schedules change ``optimizer.lr`` between steps.  Call ``scheduler.step()`` after
``optimizer.step()``, once per iteration or once per epoch as you choose:

* :class:`StepLR` — ``lr = base_lr * gamma ** (t // step_size)`` (``torch.optim.lr_scheduler.StepLR``).
* :class:`PolyLR` — ``lr = min_lr + (base_lr - min_lr) * (1 - t / max_steps) ** power``
  (Caffe's and DeepLab's "poly" policy; ``torch.optim.lr_scheduler.PolynomialLR`` when ``min_lr = 0``).
* :class:`CosineLR` — ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi t / max_steps)) / 2``
  (``torch.optim.lr_scheduler.CosineAnnealingLR``).

Schedules are closed-form functions of the step count ``t`` (:meth:`LRScheduler.lr_at`),
so resuming from a checkpoint lands on exactly the same learning rate.

**Re-planned in mid-run, without a jump.**  Poly and cosine are functions of the schedule's
*progress* ``p = t / max_steps``.  A run that plans its length from a time budget learns in
mid-run that fewer (or more) steps fit than planned.  Building a new schedule of the new length
``T`` at step ``s`` would move the rate at once from ``f(s / T_old)`` to ``f(s / T)`` (a slowing
machine shortened one run from 982 to 791 steps in four such jumps, the last from 7.4e-5 to
1.3e-5).  Instead the new schedule starts where the old one stands: ``start_step = s``,
``start_progress`` = the old progress at ``s``, and from there the progress runs linearly to 1
at ``T`` (:func:`planned_progress`)::

    p(t) = p_s + (1 - p_s) · (t - s) / (T - s)       for t >= s (p_s before), at most 1

The rate is continuous at ``s`` and still reaches ``min_lr`` at ``T``; only its slope
changes.  With the defaults ``start_step = 0, start_progress = 0`` this is ``t / max_steps``.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import numpy as np

from .backend import get_array_module, to_device, to_numpy, device_of
from .module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "PolyLR", "CosineLR", "planned_progress"]


def _check_number(owner: str, name: str, value, *, low=None, high=None, high_open=False) -> float:
    """A finite real number in ``[low, high]`` (or ``[low, high)``), returned as a Python float.

    Python floats keep the update dtype-preserving: under NumPy's promotion rules a
    ``np.float64`` scalar would turn a float32 parameter's update into float64.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    if high is None:
        wanted = f">= {low}"
    else:
        wanted = f"in [{low}, {high})" if high_open else f"in [{low}, {high}]"
    too_high = high is not None and (value >= high if high_open else value > high)
    if (low is not None and value < low) or too_high:
        raise ValueError(f"{owner}: {name} must be {wanted}, got {value}")
    return value


def _host_copy(array) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (never a view of the optimizer's buffer)."""
    return array.copy() if isinstance(array, np.ndarray) else to_numpy(array)


class Optimizer:
    """Base class: the parameter list, the learning rate, per-parameter state, save/restore.

    Subclasses define ``_update(param, grad, state)`` (one parameter, in place),
    ``_hyperparameters()`` / ``_set_hyperparameters(dict)`` and ``_state_names``.

    ``self.state[i]`` is a dict of arrays for ``self.params[i]`` (empty until its first step).
    """

    _state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float):
        name = type(self).__name__
        if isinstance(params, Module):
            raise TypeError(f"{name} expects an iterable of Parameters: pass model.parameters(), not the model")
        if isinstance(params, Parameter):
            raise TypeError(f"{name} expects an iterable of Parameters, got a single Parameter: wrap it in a list")
        params = list(params)
        if not params:
            raise ValueError(f"{name} got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name} expects Parameters, got {type(p).__name__} at position {i}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{name}: a parameter appears more than once in the list (it would be stepped twice)")
        self.params: list[Parameter] = params
        self.state: list[dict] = [{} for _ in params]
        self.lr = lr

    # -- the learning rate ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate used by the next ``step()`` (schedules set it)."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _check_number(type(self).__name__, "lr", value, low=0.0)

    # -- the update ----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget the accumulated gradients (``param.grad = None``, as PyTorch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(
                    f"{type(self).__name__}.step: gradient of shape {tuple(p.grad.shape)} for a parameter "
                    f"of shape {tuple(p.data.shape)}"
                )
            self._follow_parameter(p, state)
            self._update(p, p.grad, state)

    def _update(self, p: Parameter, grad, state: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _follow_parameter(p: Parameter, state: dict) -> None:
        """Keep state arrays on the parameter's device and dtype.

        They already are, unless the model was moved (``model.to("cuda")``, ``.double()``)
        after the optimizer was built: then the buffers follow it here, once.
        """
        xp = get_array_module(p.data)
        for key, value in state.items():
            if hasattr(value, "dtype") and (get_array_module(value) is not xp or value.dtype != p.data.dtype):
                state[key] = xp.asarray(to_device(value, device_of(p.data)), dtype=p.data.dtype)

    # -- save and restore ----------------------------------------------------------------
    def _hyperparameters(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_hyperparameters(self, values: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to resume: type, hyper-parameters (``lr`` included), state.

        ``{"type": "SGD", "num_params": n, "hyperparameters": {...},
        "state": {i: {"momentum_buffer": ndarray}, ...}}`` with host NumPy copies, keyed by
        the parameter's position in ``params`` (as in PyTorch).
        """
        state = {}
        for i, s in enumerate(self.state):
            if s:
                state[i] = {k: (_host_copy(v) if hasattr(v, "dtype") else np.asarray(v, dtype=np.int64))
                            for k, v in s.items()}
        return {
            "type": type(self).__name__,
            "num_params": len(self.params),
            "hyperparameters": self._hyperparameters(),
            "state": state,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned (arrays go to each parameter's device).

        Everything is checked first; on any mismatch a ``ValueError`` lists the problems and
        the optimizer is left untouched.
        """
        self._apply_state(self._prepare_state(state_dict))

    def _prepare_state(self, state_dict: dict):
        """Validate ``state_dict`` and build the new state without changing ``self``."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "type" not in state_dict or "state" not in state_dict:
            raise ValueError(f"{name}.load_state_dict expects the dict made by Optimizer.state_dict()")
        if state_dict["type"] != name:
            raise ValueError(f"cannot load {state_dict['type']} state into {name}")
        n = int(state_dict.get("num_params", len(self.params)))
        if n != len(self.params):
            raise ValueError(
                f"{name}.load_state_dict: state for {n} parameters, but this optimizer has {len(self.params)}"
            )
        hyper = dict(state_dict.get("hyperparameters", {}))
        # validate the hyper-parameters on a throw-away instance of the same class
        probe = type(self).__new__(type(self))
        try:
            probe._set_hyperparameters({**self._hyperparameters(), **hyper})
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{name}.load_state_dict: bad hyper-parameters: {exc}") from None
        state_names = probe._state_names
        problems = []
        new_state = [{} for _ in self.params]
        for key, entries in state_dict["state"].items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                problems.append(f"bad parameter index {key!r}")
                continue
            if not 0 <= i < len(self.params):
                problems.append(f"parameter index {i} out of range 0..{len(self.params) - 1}")
                continue
            if not isinstance(entries, dict):
                problems.append(f"param {i}: expected a dict of arrays, got {type(entries).__name__}")
                continue
            p = self.params[i]
            missing = [k for k in state_names if k not in entries]
            unexpected = [k for k in entries if k not in state_names]
            if missing:
                problems.append(f"param {i}: missing {', '.join(missing)}")
            if unexpected:
                problems.append(f"param {i}: unexpected {', '.join(unexpected)}")
            xp = get_array_module(p.data)
            for k, value in entries.items():
                if k not in state_names:
                    continue
                if k == "step":  # a count, kept as a Python int on the host
                    new_state[i][k] = int(to_numpy(value))
                    continue
                value = to_numpy(value)
                if tuple(value.shape) != tuple(p.data.shape):
                    problems.append(
                        f"param {i}: {k} has shape {tuple(value.shape)}, parameter has {tuple(p.data.shape)}"
                    )
                    continue
                new_state[i][k] = xp.array(to_device(value, device_of(p.data)), dtype=p.data.dtype)
        if problems:
            raise ValueError(f"{name}.load_state_dict: " + "; ".join(problems))
        return hyper, new_state

    def _apply_state(self, prepared) -> None:
        hyper, new_state = prepared
        self._set_hyperparameters({**self._hyperparameters(), **hyper})
        self.state = new_state

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov option and L2 weight decay.

    Same update as ``torch.optim.SGD(params, lr, momentum, dampening=0, weight_decay,
    nesterov)``; see the module docstring for the equations and how Caffe's differs.
    The defaults are SegNet's solver (momentum 0.9, weight decay 5e-4); SegNet-Basic on
    CamVid used ``lr=0.1``.  ``momentum=0`` gives plain SGD with no buffer.

    State per parameter: ``momentum_buffer`` (only when ``momentum > 0``), created from the
    first gradient.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False):
        self._set_hyperparameters({"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})
        super().__init__(params, lr)

    @property
    def _state_names(self):
        return ("momentum_buffer",) if self.momentum > 0 else ()

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _set_hyperparameters(self, values: dict) -> None:
        momentum = _check_number("SGD", "momentum", values["momentum"], low=0.0, high=1.0, high_open=True)
        weight_decay = _check_number("SGD", "weight_decay", values["weight_decay"], low=0.0)
        nesterov = values["nesterov"]
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0 (Nesterov's look-ahead is a momentum method)")
        self.lr = values["lr"]
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, bool(nesterov)

    def _update(self, p: Parameter, grad, state: dict) -> None:
        w = p.data
        # d = grad + wd * w, in a fresh array: the user's p.grad is never modified
        if self.weight_decay:
            d = w * self.weight_decay
            d += grad
        else:
            d = grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:  # the velocity starts as the first gradient (a copy: never alias p.grad)
                buf = state["momentum_buffer"] = d.copy() if d is grad else d
            else:
                buf *= self.momentum
                buf += d
            if self.nesterov:
                look_ahead = buf * self.momentum
                look_ahead += d
                d = look_ahead
            else:
                d = buf
        if d is grad or d is state.get("momentum_buffer"):
            w -= d * self.lr  # one temporary: neither the gradient nor the velocity may change
        else:  # d is a temporary of our own: scale it in place
            d *= self.lr
            w -= d


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's semantics: L2 ``weight_decay`` is added to the
    gradient (that is ``torch.optim.Adam``, not AdamW), and both moments are bias-corrected.

    State per parameter: ``step`` (its own count, so a parameter that was skipped while its
    ``grad`` was None is corrected for the steps it really took), ``exp_avg`` (first moment)
    and ``exp_avg_sq`` (second moment), both starting at zero.
    """

    _state_names = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        self._set_hyperparameters({"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        super().__init__(params, lr)

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _set_hyperparameters(self, values: dict) -> None:
        betas = values["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        beta1 = _check_number("Adam", "beta1", betas[0], low=0.0, high=1.0, high_open=True)
        beta2 = _check_number("Adam", "beta2", betas[1], low=0.0, high=1.0, high_open=True)
        eps = _check_number("Adam", "eps", values["eps"], low=0.0)
        weight_decay = _check_number("Adam", "weight_decay", values["weight_decay"], low=0.0)
        self.lr = values["lr"]
        self.betas, self.eps, self.weight_decay = (beta1, beta2), eps, weight_decay

    def _update(self, p: Parameter, grad, state: dict) -> None:
        xp = get_array_module(p.data)
        w = p.data
        beta1, beta2 = self.betas
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(w)
            state["exp_avg_sq"] = xp.zeros_like(w)
        state["step"] += 1
        t = state["step"]
        if self.weight_decay:
            d = w * self.weight_decay
            d += grad
        else:
            d = grad
        m, s = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        scratch = d * (1.0 - beta1)
        m += scratch
        s *= beta2
        xp.multiply(d, d, out=scratch)
        scratch *= 1.0 - beta2
        s += scratch
        # w -= lr / bc1 * m / (sqrt(s) / sqrt(bc2) + eps), reusing the scratch array
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** t)
        xp.sqrt(s, out=scratch)
        scratch /= bias_correction2_sqrt
        scratch += self.eps
        xp.divide(m, scratch, out=scratch)
        scratch *= self.lr / bias_correction1
        w -= scratch


class LRScheduler:
    """Base of the schedules: ``lr = lr_at(t)`` with ``t`` the number of ``step()`` calls.

    The base learning rate is the optimizer's ``lr`` when the schedule is made.
    Like PyTorch's, making a schedule sets ``optimizer.lr = lr_at(0)``.
    """

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} expects a minisegnet Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t: int) -> float:  # pragma: no cover - abstract
        """The learning rate after ``t`` calls of :meth:`step`."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The learning rate the schedule has set now."""
        return self.lr_at(self.last_step)

    def step(self) -> float:
        """Advance one step, set ``optimizer.lr`` and return it."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step count and base lr, and set ``optimizer.lr`` to match."""
        if state.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(f"cannot load {state['type']} state into {type(self).__name__}")
        base_lr = _check_number(type(self).__name__, "base_lr", state["base_lr"], low=0.0)
        last_step = int(state["last_step"])
        if last_step < 0:
            raise ValueError(f"{type(self).__name__}: last_step must be >= 0, got {last_step}")
        self.base_lr, self.last_step = base_lr, last_step
        self.optimizer.lr = self.lr_at(last_step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_lr={self.base_lr}, last_step={self.last_step}, lr={self.lr})"


def _check_positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps:
    ``lr = base_lr * gamma ** (t // step_size)``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _check_positive_int("StepLR", "step_size", step_size)
        self.gamma = _check_number("StepLR", "gamma", gamma, low=0.0)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


def planned_progress(t: int, max_steps: int, start_step: int = 0, start_progress: float = 0.0) -> float:
    """How far along a schedule that ends at step ``max_steps`` is at step ``t``: in [0, 1].

    ``min(t, max_steps) / max_steps`` by default; a schedule re-planned at ``start_step``,
    where it stood at ``start_progress``, runs linearly from there to 1 at ``max_steps``
    (module docstring; ``start_progress`` before ``start_step``, 1 from ``max_steps`` on).
    """
    if t <= start_step:
        return start_progress
    if t >= max_steps:
        return 1.0
    return start_progress + (1.0 - start_progress) * (t - start_step) / (max_steps - start_step)


class _DecayToEnd(LRScheduler):
    """A rate that is a function of the schedule's progress (:func:`planned_progress`): poly, cosine."""

    def __init__(self, optimizer: Optimizer, max_steps: int, min_lr: float, start_step: int, start_progress: float):
        name = type(self).__name__
        self.max_steps = _check_positive_int(name, "max_steps", max_steps)
        self.min_lr = _check_number(name, "min_lr", min_lr, low=0.0)
        if self.min_lr > optimizer.lr:
            raise ValueError(f"{name}: min_lr ({self.min_lr}) exceeds the optimizer's lr ({optimizer.lr})")
        self.start_step, self.start_progress = self._checked_start(start_step, start_progress)
        super().__init__(optimizer)

    def _checked_start(self, start_step, start_progress) -> tuple[int, float]:
        """The re-planning point as ``(int, float)``: a step before max_steps, a progress in [0, 1]."""
        name = type(self).__name__
        if isinstance(start_step, bool) or not isinstance(start_step, numbers.Integral) or start_step < 0:
            raise ValueError(f"{name}: start_step must be an integer >= 0, got {start_step!r}")
        if start_step >= self.max_steps and start_step > 0:
            raise ValueError(f"{name}: start_step ({start_step}) must come before max_steps ({self.max_steps})")
        return int(start_step), _check_number(name, "start_progress", start_progress, low=0.0, high=1.0)

    def progress_at(self, t: int) -> float:
        """The schedule's progress at step ``t``, in [0, 1]."""
        return planned_progress(t, self.max_steps, self.start_step, self.start_progress)

    def _shape(self, progress: float) -> float:  # pragma: no cover - abstract
        """The rate's fraction of the way from ``min_lr`` to ``base_lr`` at this progress: 1 at 0, 0 at 1."""
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        return self.min_lr + (self.base_lr - self.min_lr) * self._shape(self.progress_at(t))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "start_step": self.start_step, "start_progress": self.start_progress}

    def load_state_dict(self, state: dict) -> None:
        """Also the re-planning point (absent in older checkpoints: the start)."""
        self.start_step, self.start_progress = self._checked_start(state.get("start_step", 0),
                                                                   state.get("start_progress", 0.0))
        super().load_state_dict(state)


class PolyLR(_DecayToEnd):
    """Polynomial decay to ``min_lr`` over ``max_steps`` steps, then constant:
    ``lr = min_lr + (base_lr - min_lr) * (1 - p) ** power`` with the progress ``p =
    min(t, max_steps) / max_steps`` (or, re-planned at ``start_step``, :func:`planned_progress`)."""

    def __init__(self, optimizer: Optimizer, max_steps: int, power: float = 0.9, min_lr: float = 0.0, *,
                 start_step: int = 0, start_progress: float = 0.0):
        self.power = _check_number("PolyLR", "power", power, low=0.0)
        super().__init__(optimizer, max_steps, min_lr, start_step, start_progress)

    def _shape(self, progress: float) -> float:
        return (1.0 - progress) ** self.power


class CosineLR(_DecayToEnd):
    """Half a cosine from ``base_lr`` down to ``min_lr`` over ``max_steps`` steps, then constant:
    ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`` with the progress ``p =
    min(t, max_steps) / max_steps`` (or, re-planned at ``start_step``, :func:`planned_progress`)."""

    def __init__(self, optimizer: Optimizer, max_steps: int, min_lr: float = 0.0, *, start_step: int = 0,
                 start_progress: float = 0.0):
        super().__init__(optimizer, max_steps, min_lr, start_step, start_progress)

    def _shape(self, progress: float) -> float:
        return (1.0 + math.cos(math.pi * progress)) / 2.0

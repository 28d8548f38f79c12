"""Whether forwards keep what their backward will need: ``with minisegnet.no_grad():``.

Two questions that PyTorch keeps apart, and so does minisegnet:

``model.train()`` / ``model.eval()``
    *What the layers compute*: BatchNorm with batch or running statistics, Dropout on or
    off.  Nothing else.  ``m.eval(); y = m.forward(x); m.backward(dy)`` works: it
    differentiates the eval-mode function (BatchNorm as the per-channel affine map its
    running statistics define).
``with no_grad():``
    *What the layers keep*: nothing for a backward.  Inside the block every layer
    computes exactly what it would outside, but stores no input, mask or argmax for a
    later ``backward``, and leaves whatever it stored earlier untouched, so an inference
    run in the middle of a training step (``predict``, ``evaluate``, ``summary``) changes
    nothing of that step.  Inference then holds only the current feature map and what
    the decoder needs (for SegNet: the pooling indices).

The switch is a property of the running thread, not of a model: it is set for the
duration of a ``with`` block (or of a function decorated with ``@no_grad()``) and put
back on exit, even after an error, so it can never be left on by accident.  Blocks nest;
``enable_grad()`` re-enables keeping inside a ``no_grad`` block.  Layers ask
:func:`is_grad_enabled` in ``forward``.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "enable_grad", "is_grad_enabled"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless the calling thread is inside a ``no_grad()`` block (the default: True)."""
    return getattr(_state, "enabled", True)


class _GradMode:
    """Set the thread's grad mode to ``self.enabled`` in a ``with`` block; restore it on exit."""

    enabled: bool = True

    def __enter__(self):
        self._previous = getattr(_state, "enabled", True)
        _state.enabled = self.enabled
        return self

    def __exit__(self, *exc_info):
        _state.enabled = self._previous
        return False

    def __call__(self, function):
        """Use as a decorator: the whole call runs in this mode."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with type(self)():
                return function(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """``with no_grad():`` -- forwards inside keep nothing for backward (inference memory).

    >>> with no_grad():
    ...     logits = model.forward(images)      # nothing kept; model.backward would raise
    """

    enabled = False


class enable_grad(_GradMode):
    """``with enable_grad():`` -- keep what backward needs again, even inside ``no_grad()``."""

    enabled = True

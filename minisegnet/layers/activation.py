"""The rectified linear unit that follows every BatchNorm in SegNet."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, is_array
from ..grad_mode import is_grad_enabled
from .masking import select
from ..module import Module, releases_cache
from ..validation import check_grad_shape, require_cache

_LAYER = "ReLU"


def _check_float_array(layer: str, x, name: str = "input"):
    if not is_array(x):
        raise TypeError(f"{layer}: expected {name} as a NumPy/CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype).kind != "f":
        raise ValueError(f"{layer}: expected a floating-point {name} (float32 or float64), got dtype {x.dtype}")
    return x


_ZERO_ROW = 32768  # values in the row of zeros (128 KiB in float32: it stays in cache)


def _maximum_with_zero(x, out):
    """``maximum(x, 0)`` into ``out`` (``x`` itself or a new array of its shape).

    On NumPy, for contiguous arrays, the flat array is cut into rows of ``_ZERO_ROW``
    values (plus a shorter tail) and compared with one row of zeros broadcast down them.
    """
    xp = get_array_module(x)
    if xp is not np or x.size == 0 or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return xp.maximum(x, x.dtype.type(0), out=out)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    zeros = xp.zeros(min(_ZERO_ROW, x.size), dtype=x.dtype)
    whole = x.size - x.size % zeros.size  # values in complete rows
    xp.maximum(flat_x[:whole].reshape(-1, zeros.size), zeros, out=flat_out[:whole].reshape(-1, zeros.size))
    xp.maximum(flat_x[whole:], zeros[:x.size - whole], out=flat_out[whole:])
    return out


class ReLU(Module):
    r"""``y = max(x, 0)`` element-wise, any shape.

    Backward.  ``dy/dx`` is 1 where ``x > 0`` and 0 where ``x < 0`` (at ``x = 0`` we take
    0, as PyTorch does), so ::

        dx = dy  where x > 0,   0 elsewhere.

    The forward keeps the boolean mask ``x > 0`` (``self._mask``, one byte per value)
    outside ``minisegnet.no_grad()``; inside it the forward keeps nothing and leaves a
    stored mask untouched.  The mask is a layer-owned buffer, refilled in place by the
    next (grad-enabled) forward of the same shape.  Backward returns a **new**
    array, ``dy`` where the mask is set and exactly 0 elsewhere -- a selection
    (:func:`~minisegnet.layers.masking.select`), not the product ``dy * mask``, which
    would turn an infinite ``dy`` at an inactive unit into ``inf * 0 = nan`` where the true
    gradient is 0 (PyTorch gives 0 too); it never writes into the incoming gradient
    ``dy``, which the caller may still need (deep-learning-from-scratch's
    ``dout[self.mask] = 0`` did, and corrupted any gradient shared with another branch).

    Same in training and eval mode.  ``inplace=True`` (PyTorch's flag) writes the result
    into ``x`` itself to save one full-size buffer; use it only when nothing else needs
    ``x`` afterwards.

    Cost: two passes forward (the mask, then the maximum), one selection backward.  On
    NumPy the maximum is taken against a *row* of zeros broadcast down a 2-D view of the
    array (:func:`_maximum_with_zero`), not against the scalar 0: NumPy's ``maximum`` has
    a vectorised loop for two contiguous operands but a slower one for an array and a
    scalar, and one row of zeros is small enough to stay in cache.  The values are those
    of ``maximum(x, 0)`` all the same (NaN stays NaN).  On CuPy the scalar form is already
    one fused kernel and is kept.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)
        self._mask = None

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        _check_float_array(_LAYER, x)
        xp = get_array_module(x)
        zero = x.dtype.type(0)
        if is_grad_enabled():
            mask = self._mask
            if mask is None or mask.shape != x.shape or get_array_module(mask) is not xp:
                self._mask = None  # let the old one go before allocating the new one
                mask = xp.empty(x.shape, dtype=bool)
            xp.greater(x, zero, out=mask)
            self._mask = mask
        return _maximum_with_zero(x, out=x if self.inplace else xp.empty(x.shape, dtype=x.dtype))

    def _release_cache(self) -> None:
        self._mask = None

    @releases_cache
    def backward(self, dy):
        mask = require_cache(_LAYER, self._mask)
        check_grad_shape(_LAYER, dy, mask.shape)
        return select(mask, dy)  # a new array; dy is left untouched

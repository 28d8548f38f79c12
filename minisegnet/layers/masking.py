r"""``values where mask, else 0`` -- a selection that stays exact for infinite values.

ReLU's backward, pooling's scatter and unpooling's gather all keep some values and zero
the rest.  The quick way is a product with the 0/1 mask, ``values * mask``; but
``inf * 0 = nan``, so a single infinite gradient would turn a whole window (or every
inactive unit) into NaN, where the true gradient is 0 (PyTorch gives 0 there).  A
*selection* gives 0 whatever the discarded value was.

``xp.where(mask, values, 0)`` selects, but on NumPy it is about 5× slower than the
product (measured in ``BENCHMARKS.md``).  The bit-pattern version is as exact and nearly as
fast: read the floats as unsigned integers of the same width, and AND them with the mask
widened to all-ones or all-zeros::

    bits(v) & 0xFFFFFFFF = bits(v)      (the value, inf and nan included)
    bits(v) & 0x00000000 = bits(+0.0)   (exactly 0, whatever v was)

``-uint(mask)`` is that widened mask (``-1`` wraps to all ones).  On CuPy ``where`` is a
single fused kernel, as fast as the product, so it is used there directly.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..workspace import MAP_SCRATCH, WORKSPACE

__all__ = ["select"]

_UINT_OF = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def select(mask, values, out=None):
    """``values`` where ``mask`` is True, exactly 0 elsewhere (no ``inf * 0 = nan``).

    ``mask`` is boolean and broadcasts to nothing: it has the shape of ``values``.
    ``out`` (optional) receives the result; it may be a strided view.  Returns ``out``
    or a new array.
    """
    xp = get_array_module(values)
    if out is None:
        out = xp.empty(values.shape, dtype=values.dtype)
    if xp is not np or values.dtype.itemsize not in _UINT_OF:
        out[...] = xp.where(mask, values, values.dtype.type(0))
        return out
    uint = _UINT_OF[values.dtype.itemsize]
    widened = WORKSPACE.take(values, MAP_SCRATCH, mask.shape).view(uint)  # shared with the convolutions
    np.negative(mask.view(np.uint8), out=widened, dtype=uint, casting="unsafe")  # True -> all ones
    # Same item size, so these integer views exist for strided arrays too (no copies).
    np.bitwise_and(values.view(uint), widened, out=out.view(uint))
    return out

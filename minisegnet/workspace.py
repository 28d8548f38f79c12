"""Scratch arrays reused between calls: one allocation per role instead of one per step.

A convolution needs a few large temporary arrays per call (the output on the padded grid,
the stacked shifted copies of its input, the products it accumulates).  Allocating them
afresh every step is not free: with NumPy a new array of tens of megabytes is fresh
memory from the operating system, which costs page faults (and huge-page compaction) on
every first touch, every step; on CuPy it churns the memory pool.  So the layers ask
this module instead::

    scratch = WORKSPACE.take(x, "conv.product", (o, length))   # uninitialised, x's device and dtype

and get the same memory back on the next call.  The rules that make this safe:

* One array per *role* (a name such as ``"conv.shifted"``), device and dtype; asking for a
  larger one lets the smaller go first, so the workspace costs the largest request per
  role, not the sum over calls or layers.  Layers run one after another, so they share it.
* An array handed out is valid until the next request for the same role.  Nothing that
  leaves a layer (an output, a gradient, a cache kept for the backward) is ever a
  workspace array, so reuse can never change a result a caller holds.
* Per thread (``threading.local``): two threads running models at once never share
  scratch.

**One role for the map-sized result of a call** (:data:`MAP_SCRATCH`).  The largest scratch
arrays have the size of a whole feature map: a convolution's output on its padded grid (in the
forward) and its input gradient on that grid (in the backward), and the widened 0/1 mask of a
selection (:func:`~minisegnet.layers.masking.select`, in ReLU's and pooling's backward).  Each is
written and read within one call of one layer, and no layer's call starts before the previous one
has returned, so they take the *same* role: one map-sized array for the step instead of three
(measured: 87 MiB less scratch held by a SegNet-Basic step at 4×180×240, see ``BENCHMARKS.md``).
A call that needs two map-sized arrays at once (a backward's upstream gradient on the grid
and its input gradient) takes a role of its own for the second.

:func:`clear_workspace` frees everything this thread holds (the memory returns to the
allocator; the next call allocates again).
"""
from __future__ import annotations

import threading

import numpy as np

from .backend import get_array_module

__all__ = ["Workspace", "WORKSPACE", "MAP_SCRATCH", "clear_workspace"]

#: The role of the map-sized array a layer call writes its result on (see the module docstring).
MAP_SCRATCH = "map"


class Workspace:
    """Scratch arrays kept between calls, per thread, device, dtype and role."""

    def __init__(self):
        self._local = threading.local()

    def arrays(self) -> dict:
        """This thread's arrays: ``{(array module, device, dtype, role): flat array}`` (empty in a new thread)."""
        return self._local.__dict__.setdefault("arrays", {})

    def take(self, like, role: str, shape, dtype=None):
        """An uninitialised array of ``shape`` on the device of ``like`` (in its dtype by default).

        Valid until the next ``take`` of the same ``role`` (in this thread, device and dtype).
        """
        xp = get_array_module(like)
        dtype = np.dtype(like.dtype if dtype is None else dtype)
        key = (xp.__name__, str(getattr(like, "device", "cpu")), dtype.str, role)
        size = int(np.prod(shape))
        arrays = self.arrays()
        flat = arrays.get(key)
        if flat is None or flat.size < size:
            arrays.pop(key, None)  # let the smaller one go before allocating the larger
            arrays[key] = flat = xp.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def nbytes(self) -> int:
        """Bytes held by this thread's scratch arrays."""
        return sum(int(a.nbytes) for a in self.arrays().values())

    def clear(self) -> None:
        """Let go of this thread's scratch arrays."""
        self._local.__dict__.pop("arrays", None)


#: The workspace every layer shares.
WORKSPACE = Workspace()


def clear_workspace() -> None:
    """Free the scratch arrays that layers keep between calls (in this thread)."""
    WORKSPACE.clear()

r"""2-D convolution as a sum of shifted matrix products: no im2col buffer.

The identity
------------
Cut the weight ``W`` (O, C, kh, kw) into kh·kw small matrices ``W_ij = W[:, :, i, j]``
(O × C), one per kernel offset.  A stride-1 convolution (a cross-correlation, as in every
deep-learning library) is ::

    y[n, :, r, c] = b + sum_ij  W_ij @ x_pad[n, :, r + i, c + j]

a sum of kh·kw matrix products, each with the input *shifted* by (i, j).  Store the
zero-padded input channel-major and flat, ``X`` (C, N·Hp·Wp): pixel (n, r, c) is column
``n·Hp·Wp + r·Wp + c``.  "Shift by (i, j)" is then "start ``s_ij = i·Wp + j`` columns
later", and the shifted input is the column slice ``X[:, s_ij : s_ij + L]``, a view ::

    Y = sum_ij  W_ij @ X[:, s_ij : s_ij + L]            (O × L; one GEMM per offset, no copy)

computed at every position of the padded grid.  The positions whose window runs over the
right or bottom border, or into the next image, are garbage and are cropped at the end.
That is what the trick wastes: ``1 - Ho·Wo / (Hp·Wp)`` of the arithmetic, 20 % for a 7×7
kernel on SegNet-Basic's smallest map (45×60 -> 51×66 padded), 3 % at 360×480.

The backward, derived
---------------------
With ``x_ij`` the input shifted by offset (i, j) and ``dy`` the upstream gradient (on the
padded grid, zero at the cropped positions)::

    y = sum_ij W_ij x_ij + b
    dL/dW_ij = dy @ x_ij^T                  (O × L) @ (L × C): one product per offset
    dL/db    = sum of dy over n, r, c
    dL/dx_ij = W_ij^T @ dy, and x_ij is x read s_ij columns later, so it lands there:
    dx[:, t] = sum_ij W_ij^T dy[:, t - s_ij]

The three lines are independent, so each is computed only when someone needs it: a frozen
``weight`` (``weight.requires_grad = False``) skips the ``dW`` products, a frozen ``bias``
the sum, and ``needs_input_grad=False`` (a network's first layer: nobody needs d image)
skips ``dx``, about half the backward's arithmetic.

The last line can be computed two ways, and the layer has both:

* **scatter**: compute ``W_ij^T @ dy`` (C × L) and add it into ``dx[:, s_ij : s_ij + L]``
  for every offset (k² in-place additions of a C-row array);
* **flipped**: read the sum the other way round -- it is a correlation of ``dy`` (with
  ``(kh-1)·Wp + kw-1`` zero columns in front, so ``t - s_ij`` never goes negative) with the
  kernel flipped in both directions and its channels swapped, ``W[:, :, ::-1, ::-1]^T``.
  That is the forward's machinery run on ``dy``, and the same shifted slices of ``dy`` give
  ``dW`` (at the flipped offset) by one more product each.  The zero columns of ``dy`` at
  the cropped positions keep the flat layout's wrap-around from leaking between rows or
  images.

"flipped" multiplies matrices with O rows stacked, which is good when C >= O (every 64->64
layer, the classifier); "scatter" multiplies with C rows stacked, good when C < O (the
3->64 input layer, where "flipped" would run GEMMs with 3 output rows).  ``"auto"`` picks
by that rule (timings of both forms: ``BENCHMARKS.md``).

Stride > 1
----------
The shifted input is then a strided window ``x_pad[:, :, i::sh, j::sw]``, not a flat
slice, so each group of offsets is *gathered* into a reused (g·C) × (N·Ho·Wo) buffer and
the same GEMMs run; the backward ("scatter") adds ``W_ij^T dy`` back through the same
strided views (``+=`` on a strided slice is safe: within one offset no two outputs share
an input pixel).

Memory, and why not im2col
--------------------------
im2col copies every input pixel once per kernel offset into a (C·kh·kw) × (N·Ho·Wo)
matrix and runs one big GEMM.  For a 3×3, 64-channel SegNet layer at 360×480 with a batch
of 4 in float32 that matrix is 4 · (64·9) · 360·480 · 4 B = 1.6 GB (8.7 GB for
SegNet-Basic's 7×7 kernels), built again in the backward.  Here the extra memory is the
padded channel-major copy of the input (kept for the backward, about the size of ``x``),
a few output- or input-sized scratch arrays, and the optional shifted-copy buffer below,
capped by ``Conv2d.max_workspace_bytes``.  Speed agrees with memory: on SegNet's layers
im2col's kh·kw-fold copy costs more memory traffic than its single GEMM saves; it wins
only where its matrix is small (the 3-channel input layer, 512-channel layers on the
smallest maps).  Measured: ``BENCHMARKS.md``.

Speed: deeper GEMMs (:mod:`minisegnet.layers.conv_tiling`)
-----------------------------------------------------------
A GEMM with inner dimension C = 64 runs well below BLAS peak, so the horizontal offsets of
a kernel row are copied once, stacked, and serve every kernel row as a view: a 7×7 layer
runs 7 GEMMs of inner dimension 7·C instead of 49 of inner dimension C.  The copy is capped
by ``max_workspace_bytes`` (0: nothing is stacked); :mod:`~minisegnet.layers.conv_tiling`
plans it, and :mod:`minisegnet.workspace` keeps the scratch arrays between calls.  On CuPy,
``cupy.matmul`` copies a non-contiguous operand before calling cuBLAS, so there each
shifted view becomes a transient contiguous copy of one slice: still no im2col matrix.

Algorithms: ``Conv2d(..., algorithm=...)``
------------------------------------------
Each formulation above is a named entry of :data:`ALGORITHMS`:

``"flat-flipped"``  stride 1: column slices of the flat padded grid; dx by the flipped kernel.
``"flat-scatter"``  stride 1: the same forward; dx scattered back through the shifted slices.
``"gathered"``      any stride: strided windows gathered into a buffer; dx scattered back.

``"auto"`` (the default) takes ``"gathered"`` for stride > 1, else ``"flat-flipped"`` when
C >= O and ``"flat-scatter"`` when C < O.  ``conv.algorithm`` is what was asked for,
``conv.resolved_algorithm`` what runs; ``conv.algorithm`` can be changed at any time (a
backward uses the algorithm of the forward it differentiates).  Another formulation (Winograd for 3×3
kernels, im2col for tiny channel counts, contiguous operands for CuPy) is one more
:class:`Algorithm` entry with its forward, its backward and the layers it can serve, and
a line in :meth:`Conv2d._choose_algorithm` if "auto" should pick it.

What is kept for the backward
-----------------------------
Train and eval mode compute the same thing (a convolution has no mode).  A forward keeps
the padded input (``self._padded_input``) for the backward while gradients are enabled;
inside ``with minisegnet.no_grad():`` it keeps nothing and leaves what an earlier forward
kept untouched (it pads into scratch instead), so an inference call between a forward and
its backward changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..module import Module, Parameter
from ..validation import check_feature_map, check_grad_shape, check_matches_parameters, require_cache
from ..workspace import WORKSPACE, clear_workspace
from .conv_tiling import flat_windows, gathered_windows, row_weights

__all__ = ["Conv2d", "Algorithm", "ALGORITHMS", "clear_workspace"]


def _pair(value, name: str) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(3, 5) -> (3, 5)``; anything else is a clear error."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"Conv2d: expected {name} as an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"Conv2d: expected {name} as an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class Algorithm:
    """One named way to compute a :class:`Conv2d`: an entry of :data:`ALGORITHMS`.

    ``forward(layer, xp, padded, ho, wo)`` gets the zero-padded input, channel-major
    (C, N, Hp, Wp), and returns the output channel-major (O, N, Ho, Wo) without the bias
    (a view of scratch is fine: the layer copies it out).
    ``backward(layer, xp, dy, padded, need_dx, need_dw)`` returns ``(dx, dW)``: dx on the
    padded grid (C, N, Hp, Wp) or None when ``need_dx`` is False, dW (O, C, kh, kw) or None
    when ``need_dw`` is False (scratch is fine for both).
    ``unsupported(layer)`` says why the layer cannot use it (None: it can).
    """

    name: str
    about: str
    forward: Callable
    backward: Callable
    unsupported: Callable = lambda layer: None


def _needs_stride_one(layer) -> str | None:
    return None if layer.stride == (1, 1) else f"needs stride 1 (this layer has stride {layer.stride})"


class Conv2d(Module):
    r"""``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)``.

    NCHW input ``x`` (N, C, H, W) -> output (N, O, Ho, Wo) with
    ``Ho = (H + 2·ph - kh) // sh + 1`` (and likewise Wo), zero padding, as
    ``torch.nn.Conv2d``.  ``kernel_size``, ``stride`` and ``padding`` take an int or an
    (h, w) pair.  How it is computed (shifted GEMMs, no im2col), the derivation of the
    backward and the memory arithmetic are in the module docstring.

    Parameters: ``weight`` (O, C, kh, kw), He-initialised -- Kaiming normal for ReLU,
    standard deviation ``sqrt(2 / fan_in)`` with ``fan_in = C·kh·kw``, which keeps the
    variance of the activations steady through a deep ReLU network -- and ``bias`` (O,)
    zeros, or None with ``bias=False``.  Both are created as float32 NumPy arrays; use
    ``.double()`` / ``.to("cuda")``.

    Keyword-only arguments (not in PyTorch):

    ``rng``
        A NumPy Generator or seed for the initialisation; None draws from NumPy's global
        state, so ``np.random.seed`` makes it reproducible.
    ``algorithm``
        ``"auto"`` or a name in :data:`ALGORITHMS` (``"flat-flipped"``, ``"flat-scatter"``,
        ``"gathered"``): which formulation computes forward and backward.  All give the
        same numbers up to rounding.  Readable and settable as ``conv.algorithm``;
        ``conv.resolved_algorithm`` is the name that runs.
    ``needs_input_grad``
        False: ``backward`` computes no ``dL/dx`` and returns None (for a network's first
        layer).  Also a plain attribute.

    ``forward(x)`` computes in ``x.dtype``, which must equal the weight's; it keeps the
    padded input for the backward unless called inside ``minisegnet.no_grad()``.
    ``backward(dy)`` returns ``dL/dx`` (or None) and *adds* ``dL/dW``, ``dL/db`` into
    ``weight.grad`` / ``bias.grad`` (``zero_grad()`` clears them), skipping a parameter
    whose ``requires_grad`` is False.  Same computation in training and eval mode.
    """

    #: Cap, in bytes, on the buffer of stacked shifted copies (module docstring and
    #: :mod:`~minisegnet.layers.conv_tiling`); 0: no copies, one plain shifted GEMM per
    #: offset.  Set it on the class (every layer) or on one layer (``del`` goes back).
    max_workspace_bytes: int = 64 * 2**20
    #: The shortest block of output columns the budget may cut the GEMMs into before
    #: fewer offsets are stacked instead (shorter blocks mean shorter, slower GEMMs).
    min_block_columns: int = 16384

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 *, rng=None, algorithm: str = "auto", needs_input_grad: bool = True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Conv2d: expected {name} as a positive int, got {value!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"Conv2d: expected kernel_size >= 1, stride >= 1, padding >= 0, got kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
            )
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        normal = np.random.standard_normal(shape) if rng is None else np.random.default_rng(rng).standard_normal(shape)
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter((normal * np.sqrt(2.0 / fan_in)).astype(np.float32))
        self.bias = Parameter(np.zeros(self.out_channels, dtype=np.float32)) if bias else None
        self.needs_input_grad = bool(needs_input_grad)
        self._algorithm = "auto"
        self.algorithm = algorithm  # validated by the property below
        self._padded_input = None  # (C, N, Hp, Wp): the zero-padded input, channel-major, for the backward
        self._input_shape = None  # (N, C, H, W) of that forward
        self._output_shape = None  # (N, O, Ho, Wo) of that forward
        self._forward_algorithm = None  # the name that ran that forward (its backward uses the same)

    # -- description and sizes ----------------------------------------------------
    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.bias is None:
            text += ", bias=False"
        if self._algorithm != "auto":
            text += f", algorithm={self._algorithm!r}"
        if not self.needs_input_grad:
            text += ", needs_input_grad=False"
        return text

    @property
    def _name(self) -> str:
        return f"Conv2d({self.extra_repr()})"

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    # -- which algorithm ------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        """The formulation asked for: ``"auto"`` or a name in :data:`ALGORITHMS`."""
        return self._algorithm

    @algorithm.setter
    def algorithm(self, name: str) -> None:
        valid = ("auto", *ALGORITHMS)
        if not isinstance(name, str) or name not in valid:
            raise ValueError(
                f"{self._name}: unknown algorithm {name!r}; expected one of {', '.join(map(repr, valid))}"
            )
        if name != "auto":
            reason = ALGORITHMS[name].unsupported(self)
            if reason is not None:
                usable = ["auto"] + [a for a, spec in ALGORITHMS.items() if spec.unsupported(self) is None]
                raise ValueError(f"{self._name}: algorithm {name!r} {reason}; this layer can use "
                                 f"{', '.join(map(repr, usable))}")
        self._algorithm = name

    @property
    def resolved_algorithm(self) -> str:
        """The name in :data:`ALGORITHMS` that the next forward runs ("auto" resolved)."""
        return self._choose_algorithm() if self._algorithm == "auto" else self._algorithm

    def _choose_algorithm(self) -> str:
        """What "auto" means: the rule of the module docstring."""
        if self.stride != (1, 1):
            return "gathered"
        return "flat-flipped" if self.in_channels >= self.out_channels else "flat-scatter"

    # -- forward ------------------------------------------------------------------
    def _check_input(self, x):
        check_feature_map(self._name, x, channels=self.in_channels)
        xp = check_matches_parameters(self._name, x, self.weight.data)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2], x.shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self._name}: expected a padded input at least as large as the kernel {kh}x{kw}, got "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph},{pw})"
            )
        return xp

    def _pad(self, xp, x, keep: bool):
        """The zero-padded input, channel-major (C, N, Hp, Wp).

        Kept for the backward (``keep``), it is a layer-owned array: the previous forward's
        is overwritten when the shape still fits (one large allocation less per step).
        Not kept, it is scratch, and the previous forward's stays as it was.
        """
        n, c, h, w = x.shape
        ph, pw = self.padding
        shape = (c, n, h + 2 * ph, w + 2 * pw)
        previous = self._padded_input
        if not keep:
            padded = WORKSPACE.take(x, "conv.padded", shape)
        elif previous is not None and previous.shape == shape and previous.dtype == x.dtype \
                and get_array_module(previous) is xp:
            padded = previous
        else:
            self._padded_input = None  # let the old one go before allocating the new one
            padded = xp.empty(shape, dtype=x.dtype)
        if ph:
            padded[:, :, :ph] = 0
            padded[:, :, ph + h :] = 0
        if pw:
            padded[:, :, :, :pw] = 0
            padded[:, :, :, pw + w :] = 0
        padded[:, :, ph : ph + h, pw : pw + w] = x.transpose(1, 0, 2, 3)
        return padded

    def forward(self, x):
        xp = self._check_input(x)
        algorithm = ALGORITHMS[self.resolved_algorithm]
        reason = algorithm.unsupported(self)
        if reason is not None:  # the layer's stride was changed after the algorithm was set
            raise ValueError(f"{self._name}: algorithm {algorithm.name!r} {reason}")
        n, c, h, w = x.shape
        o = self.out_channels
        ho, wo = self._output_size(h, w)
        keep = is_grad_enabled()
        padded = self._pad(xp, x, keep)
        y_cnhw = algorithm.forward(self, xp, padded, ho, wo)

        y = xp.empty((n, o, ho, wo), dtype=x.dtype)
        if self.bias is not None:  # back to NCHW and add the bias, in one pass
            xp.add(y_cnhw.transpose(1, 0, 2, 3), self.bias.data.reshape(1, o, 1, 1), out=y)
        else:
            y[...] = y_cnhw.transpose(1, 0, 2, 3)

        if keep:  # inside no_grad() the previous forward's cache stays as it was
            self._padded_input = padded
            self._input_shape = tuple(x.shape)
            self._output_shape = tuple(y.shape)
            self._forward_algorithm = algorithm.name
        return y

    def _forward_shifted(self, xp, padded, ho: int, wo: int, flat: bool):
        """``Y = sum_ij W_ij @ X_ij``: flat column slices (stride 1) or gathered strided windows.

        Returns the output channel-major (O, N, Ho, Wo), a view of scratch, without the bias.
        """
        c, n, hp, wp = padded.shape
        o = self.out_channels
        if flat:  # Y = sum_ij W_ij @ X[:, s_ij : s_ij + L] on the flat padded grid
            grid = n * hp * wp
            length = (n - 1) * hp * wp + (ho - 1) * wp + wo  # up to the last valid output; never reads past X
            y_grid = WORKSPACE.take(padded, "conv.y_grid", (o, grid))
            out = y_grid[:, :length]
            windows = flat_windows(padded.reshape(c, grid), self.kernel_size, wp, length,
                                   self.max_workspace_bytes, self.min_block_columns)
            y_cnhw = y_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo]  # the valid positions
        else:  # the same sum over gathered windows, M = N·Ho·Wo columns
            out = WORKSPACE.take(padded, "conv.y_grid", (o, n * ho * wo))
            windows = gathered_windows(padded, self.kernel_size, self.stride, ho, wo, self.max_workspace_bytes)
            y_cnhw = out.reshape(o, n, ho, wo)
        w_rows = {}  # j0 -> (kh, O, gg·C) weights in the order of the stacked shifts
        for start, stop, i, j0, gg, cols in windows:
            if j0 not in w_rows:
                w_rows[j0] = row_weights(xp, self.weight.data, j0, gg)
            target = out[:, start:stop]
            if i == 0 and j0 == 0:
                xp.matmul(w_rows[j0][i], cols, out=target)
            else:  # target += W_rows @ cols, without a new array
                product = WORKSPACE.take(padded, "conv.product", target.shape)
                xp.matmul(w_rows[j0][i], cols, out=product)
                target += product
        return y_cnhw

    # -- backward -----------------------------------------------------------------
    def backward(self, dy):
        padded = require_cache(self._name, self._padded_input)
        check_grad_shape(self._name, dy, self._output_shape)
        xp = get_array_module(padded)
        n, c, h, w = self._input_shape
        ph, pw = self.padding
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3), dtype=padded.dtype))
        need_dx, need_dw = self.needs_input_grad, self.weight.requires_grad
        if not (need_dx or need_dw):
            return None
        algorithm = ALGORITHMS[self._forward_algorithm]
        dx_pad, dw = algorithm.backward(self, xp, dy, padded, need_dx, need_dw)
        if need_dw:
            self.weight.accumulate_grad(dw)
        if not need_dx:
            return None
        dx = xp.empty((n, c, h, w), dtype=padded.dtype)
        dx[...] = dx_pad[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)  # crop the padding, back to NCHW
        return dx

    def _backward_flipped(self, xp, dy, padded, need_dx: bool, need_dw: bool):
        """Stride 1: dx correlates zero-embedded dy with the flipped kernel; dW from the same slices.

        Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (ph, pw) = self.out_channels, self.kernel_size, self.padding
        ho, wo = dy.shape[2], dy.shape[3]
        grid = n * hp * wp
        lead = (kh - 1) * wp + (kw - 1)  # zero columns before dy: t - s_ij never goes negative
        dy_grid = WORKSPACE.take(padded, "conv.dy_grid", (o, lead + grid))
        dy_grid[...] = 0  # zero at the cropped positions and in the lead
        dy_grid[:, lead:].reshape(o, n, hp, wp)[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
        # dx is needed up to the last real input pixel; after it the padded input is all padding
        length = (n - 1) * hp * wp + (ph + self._input_shape[2] - 1) * wp + pw + self._input_shape[3]
        if need_dx:
            dx_grid = WORKSPACE.take(padded, "conv.dx_grid", (c, grid))
            out = dx_grid[:, :length]
            flipped = self.weight.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (C, O, kh, kw)
        if need_dw:
            x_cols = padded.reshape(c, grid)[:, :length]
            dw_flipped = xp.empty((kh, kw, o, c), dtype=padded.dtype)
        w_rows = {}
        for start, stop, i, j0, gg, dy_cols in flat_windows(dy_grid, self.kernel_size, wp, length,
                                                             self.max_workspace_bytes, self.min_block_columns):
            if need_dx:  # the forward's sum, run on dy with the flipped kernel
                if j0 not in w_rows:
                    w_rows[j0] = row_weights(xp, flipped, j0, gg)
                target = out[:, start:stop]
                if i == 0 and j0 == 0:
                    xp.matmul(w_rows[j0][i], dy_cols, out=target)
                else:
                    product = WORKSPACE.take(padded, "conv.product", target.shape)
                    xp.matmul(w_rows[j0][i], dy_cols, out=product)
                    target += product
            if need_dw:  # dW at the flipped offset (kh-1-i, kw-1-j) from the same slices of dy, summed over blocks
                dw_block = dw_flipped[i, j0 : j0 + gg].reshape(gg * o, c)
                if start == 0:
                    xp.matmul(dy_cols, x_cols[:, start:stop].T, out=dw_block)
                else:
                    dw_block += xp.matmul(dy_cols, x_cols[:, start:stop].T)
        dx = dx_grid.reshape(c, n, hp, wp) if need_dx else None
        dw = dw_flipped[::-1, ::-1].transpose(2, 3, 0, 1) if need_dw else None  # back to (O, C, kh, kw)
        return dx, dw

    def _backward_scatter(self, xp, dy, padded, need_dx: bool, need_dw: bool, flat: bool):
        """dW_ij = dy @ window_ij^T; W_ij^T @ dy added back into window ij of dx (flat or gathered windows).

        Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (sh, sw) = self.out_channels, self.kernel_size, self.stride
        ho, wo = dy.shape[2], dy.shape[3]
        if need_dx:
            dx_pad = WORKSPACE.take(padded, "conv.dx_grid", (c, n, hp, wp))
            dx_pad[...] = 0
        if flat:  # dy on the padded grid, zero at the cropped positions
            grid = n * hp * wp
            length = (n - 1) * hp * wp + (ho - 1) * wp + wo
            dy_grid = WORKSPACE.take(padded, "conv.dy_grid", (o, grid))
            dy_grid[...] = 0
            dy_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
            dy_cols = dy_grid[:, :length]
            windows = flat_windows(padded.reshape(c, grid), self.kernel_size, wp, length,
                                   self.max_workspace_bytes, self.min_block_columns, copy=need_dw)
            if need_dx:
                dx_flat = dx_pad.reshape(c, grid)
        else:
            length = n * ho * wo
            dy_cols = WORKSPACE.take(padded, "conv.dy_grid", (o, n, ho, wo))
            dy_cols[...] = dy.transpose(1, 0, 2, 3)
            dy_cols = dy_cols.reshape(o, length)
            windows = gathered_windows(padded, self.kernel_size, self.stride, ho, wo, self.max_workspace_bytes,
                                       copy=need_dw)
        if need_dw:
            dw = xp.zeros((kh, o, kw, c), dtype=padded.dtype)
        w_rows = {}
        for start, stop, i, j0, gg, cols in windows:
            dy_block = dy_cols[:, start:stop]
            if need_dw:
                dw[i, :, j0 : j0 + gg] += xp.matmul(dy_block, cols.T).reshape(o, gg, c)  # summed over the blocks
            if not need_dx:
                continue
            if j0 not in w_rows:
                w_rows[j0] = row_weights(xp, self.weight.data, j0, gg)
            d_cols = WORKSPACE.take(padded, "conv.d_windows", (gg * c, stop - start))
            xp.matmul(w_rows[j0][i].T, dy_block, out=d_cols)
            for jj in range(gg):  # each offset's share goes back where its window was read
                j = j0 + jj
                d_window = d_cols[jj * c : (jj + 1) * c]
                if flat:
                    dx_flat[:, i * wp + j + start : i * wp + j + stop] += d_window
                else:
                    window = dx_pad[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                    window += d_window.reshape(c, n, ho, wo)
        return (dx_pad if need_dx else None), (dw.transpose(1, 3, 0, 2) if need_dw else None)


#: The formulations ``Conv2d(..., algorithm=name)`` can run, by name (module docstring).
ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("flat-flipped", "stride 1: flat shifted slices; dx by the flipped kernel (good when C >= O)",
                  partial(Conv2d._forward_shifted, flat=True), Conv2d._backward_flipped, _needs_stride_one),
        Algorithm("flat-scatter", "stride 1: flat shifted slices; dx scattered back (good when C < O)",
                  partial(Conv2d._forward_shifted, flat=True), partial(Conv2d._backward_scatter, flat=True),
                  _needs_stride_one),
        Algorithm("gathered", "any stride: strided windows gathered into a buffer; dx scattered back",
                  partial(Conv2d._forward_shifted, flat=False), partial(Conv2d._backward_scatter, flat=False)),
    )
}

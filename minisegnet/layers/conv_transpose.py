r"""Transposed convolution (FCN's learnt upsampling), as a sum of shifted matrix products.

What it computes
----------------
Weight ``W`` (C, O, kh, kw) -- input channels first, as in PyTorch -- and stride ``s``.
Every input pixel ``(r, c)`` *paints* a kh×kw patch of the output, its C-vector times the
kernel, the patch's top-left corner at ``(s·r, s·c)``; overlapping patches add up.  On the
"full" grid of ``(H-1)·s + kh`` rows (and likewise columns) ::

    y_full[n, o, s·r + i, s·c + j] += sum_ch W[ch, o, i, j] · x[n, ch, r, c]

and the output is that grid with ``padding`` rows/columns cut off at the start and
``padding - output_padding`` at the end, plus the bias::

    Ho = (H - 1)·s - 2·p + kh + output_padding

(the size a stride-``s`` convolution with padding ``p`` would map back to ``H``; several
sizes map to the same ``H``, ``output_padding`` -- or ``forward(x, output_size=...)`` --
picks one: 23×30 → 45×60 or 46×60 with a 3×3, stride-2, padding-1 kernel).

The identity: one GEMM per kernel offset
-----------------------------------------
Cut ``W`` into kh·kw matrices ``W_ij = W[:, :, i, j]`` (C × O).  Store the input channel-
major and flat, ``X`` (C, L) with ``L = N·H·W``.  For offset (i, j) every input pixel
sends ``W_ij^T x`` to output pixel ``(s·r + i, s·c + j)``: that is one matrix product and
one strided window of the grid ::

    Y_grid[:, :, i::s, j::s]  +=  (W_ij^T @ X).reshape(O, N, H, W)     (for each (i, j))

The window ``i : i + s·(H-1) + 1 : s`` holds exactly one output pixel per input pixel, so
``+=`` on the strided view adds every product once.  kh·kw products of (O × C)(C × L), no
buffer of im2col's size: the product is output-channel × input-pixel, and the offsets are
done one group at a time, as many as fit ``max_workspace_bytes`` (several offsets' rows of
``W_ij^T`` stacked make one taller GEMM; the strided adds do not change).

The backward, derived
---------------------
With ``D_ij = dY_grid[:, :, i::s, j::s]`` (O, L) -- the upstream gradient, zero-padded back
onto the full grid, read through the window offset (i, j) wrote to::

    y_grid window ij  = W_ij^T X              (one term of the sum)
    dL/dX   = sum_ij  W_ij @ D_ij             (C × O)(O × L): the windows, gathered and stacked,
                                              one GEMM per group of offsets
    dL/dW_ij = X @ D_ij^T                     (C × L)(L × O)
    dL/db   = sum of dy over n, h, w

**Each is the other's transpose.**  Read the first line the other way: gathering the
stride-``s`` windows of ``dy`` (zero-padded by ``p``) and contracting them with ``W_ij``
over the output channels *is a Conv2d forward* -- a convolution of ``dy`` with the same
tensor ``W`` seen as a Conv2d weight (``C`` output channels, ``O`` input channels), same
stride and padding.  Conversely this layer's forward is exactly Conv2d's ``dL/dx`` (its
"scatter" form: ``W_ij^T dy`` added back into window ij), which is why it is called the
transposed convolution: the linear map ``x -> ConvTranspose2d(x)`` is the transpose
(adjoint) of ``z -> Conv2d(z)`` with the same weight, ``<Conv2d(z), x> = <z, ConvT(x)>``.
The weight gradients are the same formula with the roles of input and upstream gradient
swapped.  ``tests/test_conv_transpose.py`` checks both relations against ``Conv2d``.

Bilinear initialisation (FCN)
-----------------------------
FCN initialises its upsampling layers as bilinear interpolation and lets training refine
them.  ``init="bilinear"`` (needs ``in_channels == out_channels``) sets ``W[ch, ch]`` to
the separable triangle ``w(i) = max(0, 1 - |i - (k-1)/2| / s)`` and every other pair of
channels to 0 (no bias).  The triangle's half-width is the stride, the upsampling factor,
whatever the kernel size: for k = 2s (FCN's choice, e.g. 4×4 at stride 2) it is FCN's
``upsample_filt`` (``[.25, .75, .75, .25]``), and with padding ``(k - s) / 2`` the interior
of the output equals ``F.interpolate(x, scale_factor=s, mode="bilinear",
align_corners=False)``; a larger kernel (8×8) starts with the same interpolation and
zeros around it, room that training may use.  The border differs from ``F.interpolate``
(zero padding here, edge replication there).  See :func:`bilinear_kernel`.

Train / eval
------------
Same computation in both modes.  The forward keeps the channel-major input ``X`` for
``dL/dW`` unless it runs inside ``minisegnet.no_grad()``, where it keeps nothing and
leaves an earlier forward's cache alone.  A frozen weight (``requires_grad = False``)
skips the ``dL/dW`` products.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..module import Module, Parameter, releases_cache
from ..validation import check_feature_map, check_grad_shape, check_matches_parameters, require_cache

__all__ = ["ConvTranspose2d", "bilinear_kernel"]

INITS = ("he", "bilinear")


def _pair(value, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``; anything else is a clear error."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"ConvTranspose2d: expected {name} as an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def bilinear_kernel(kernel_size, stride) -> np.ndarray:
    """The (kh, kw) float64 kernel that upsamples by ``stride`` with bilinear interpolation.

    Separable: ``w(i) = max(0, 1 - |i - (k - 1) / 2| / s)`` along each axis, a triangle
    centred in the kernel whose half-width is the stride.  ``bilinear_kernel(4, 2)`` is
    ``outer([.25, .75, .75, .25], [.25, .75, .75, .25])``, FCN's ``upsample_filt(4)``; with
    ``bilinear_kernel(3, 2)`` (``[.5, 1, .5]``) output pixel ``2r`` is input pixel ``r`` and
    ``2r + 1`` the mean of ``r`` and ``r + 1``.  Every output pixel of the interior gets
    weights that sum to 1.
    """
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")

    def triangle(k, s):
        return np.maximum(0.0, 1.0 - np.abs(np.arange(k) - (k - 1) / 2.0) / s)

    return np.outer(triangle(kh, sh), triangle(kw, sw))


class ConvTranspose2d(Module):
    r"""``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True)``.

    NCHW input (N, C, H, W) -> (N, O, Ho, Wo) with ``Ho = (H - 1)·sh - 2·ph + kh + oph``
    (likewise Wo), as ``torch.nn.ConvTranspose2d`` (no groups, no dilation).
    ``kernel_size``, ``stride``, ``padding``, ``output_padding`` take an int or an (h, w)
    pair; ``output_padding`` must be smaller than the stride.  How it is computed, the
    backward and its relation to :class:`~minisegnet.layers.Conv2d` are in the module
    docstring.

    ``forward(x, output_size=None)``: ``output_size`` ((H, W), or (N, C, H, W) whose last
    two are used) picks the output size among the ``s`` sizes that map back to the input
    size, as in PyTorch, and then replaces ``output_padding``: ``output_size=(45, 60)``
    gives 45×60 from 23×30 with ``kernel_size=3, stride=2, padding=1``.  Any other size is
    refused with the valid range.

    Parameters: ``weight`` (C, O, kh, kw) and ``bias`` (O,) (None with ``bias=False``),
    float32 NumPy arrays (``.double()``, ``.to("cuda")`` move them).  ``init`` (keyword):

    ``"he"`` (default)
        normal with standard deviation ``sqrt(2 / fan_in)``, ``fan_in = C·kh·kw / (sh·sw)``,
        the average number of products summed into one output value (He's rule for a
        ReLU network, as :class:`Conv2d` uses); bias zeros.
    ``"bilinear"``
        bilinear upsampling by the stride, channel by channel (FCN's initialisation;
        needs ``in_channels == out_channels``; see :func:`bilinear_kernel`); bias zeros.

    ``rng``: a NumPy Generator or seed for ``"he"``; None draws from NumPy's global state.
    ``backward(dy)`` returns ``dL/dx`` and *adds* ``dL/dW``, ``dL/db`` into ``.grad``.
    """

    #: Cap, in bytes, on the product buffer of one group of kernel offsets (stacked GEMM rows).
    max_workspace_bytes: int = 64 * 2**20

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 bias: bool = True, *, init: str = "he", rng=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ConvTranspose2d: expected {name} as a positive int, got {value!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ValueError(
                f"ConvTranspose2d: expected kernel_size >= 1, stride >= 1, padding >= 0, output_padding >= 0, got "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}"
            )
        if any(op >= s for op, s in zip(self.output_padding, self.stride)):
            raise ValueError(
                f"ConvTranspose2d: expected output_padding smaller than the stride, got output_padding="
                f"{self.output_padding} with stride={self.stride} (larger values would add rows no input reaches)"
            )
        if init not in INITS:
            raise ValueError(f"ConvTranspose2d: expected init as one of {', '.join(INITS)}, got {init!r}")
        kh, kw = self.kernel_size
        shape = (self.in_channels, self.out_channels, kh, kw)
        if init == "bilinear":
            if self.in_channels != self.out_channels:
                raise ValueError(
                    f"ConvTranspose2d: init='bilinear' upsamples each channel by itself, so it needs in_channels == "
                    f"out_channels, got {self.in_channels} and {self.out_channels}"
                )
            weight = np.zeros(shape)
            channels = np.arange(self.in_channels)
            weight[channels, channels] = bilinear_kernel(self.kernel_size, self.stride)
        else:
            generator = np.random if rng is None else np.random.default_rng(rng)
            fan_in = self.in_channels * kh * kw / (self.stride[0] * self.stride[1])
            weight = generator.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        self.init = init
        self.weight = Parameter(weight.astype(np.float32))
        self.bias = Parameter(np.zeros(self.out_channels, dtype=np.float32)) if bias else None
        self._input_columns = None  # (C, N·H·W): the input, channel-major, for dL/dW
        self._input_shape = None  # (N, C, H, W) of that forward
        self._output_shape = None  # (N, O, Ho, Wo) of that forward

    # -- description and sizes ------------------------------------------------------
    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.bias is None:
            text += ", bias=False"
        return text

    @property
    def _name(self) -> str:
        return f"ConvTranspose2d({self.extra_repr()})"

    def output_hw(self, height: int, width: int, output_size=None) -> tuple[int, int]:
        """Output (Ho, Wo) for an input of ``height × width`` (``output_size`` as in :meth:`forward`)."""
        smallest = [(n - 1) * s - 2 * p + k for n, s, p, k in
                    zip((height, width), self.stride, self.padding, self.kernel_size)]
        if min(smallest) < 1:
            raise ValueError(
                f"{self._name}: an input of {height}x{width} gives an empty output ({smallest[0]}x{smallest[1]} before "
                "output_padding): the padding is too large"
            )
        if output_size is None:
            return smallest[0] + self.output_padding[0], smallest[1] + self.output_padding[1]
        size = tuple(output_size) if isinstance(output_size, (tuple, list)) else None
        if size is None or len(size) not in (2, 4) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
            raise ValueError(f"{self._name}: expected output_size as (H, W) or (N, C, H, W) ints, got {output_size!r}")
        size = tuple(int(v) for v in size[-2:])
        for axis, want, low, s in zip(("height", "width"), size, smallest, self.stride):
            if not low <= want <= low + s - 1:
                raise ValueError(
                    f"{self._name}: requested an output {axis} of {want}, but for an input of {height}x{width} the "
                    f"valid output {axis}s range from {low} to {low + s - 1}"
                )
        return size

    def _check_input(self, x):
        check_feature_map(self._name, x, channels=self.in_channels)
        xp = check_matches_parameters(self._name, x, self.weight.data)
        return xp

    def _offset_groups(self, rows: int, length: int, itemsize: int):
        """Ranges ``(t0, t1)`` of flat kernel offsets ``t = i·kw + j`` done by one GEMM each.

        As many offsets per group as keep the (group·rows, length) buffer within
        ``max_workspace_bytes``; at least one.
        """
        count = self.kernel_size[0] * self.kernel_size[1]
        per_offset = max(rows * length * itemsize, 1)
        g = int(max(1, min(count, self.max_workspace_bytes // per_offset)))
        return [(t0, min(count, t0 + g)) for t0 in range(0, count, g)]

    def _window(self, grid, t: int, h: int, w: int):
        """The strided view of ``grid`` (·, N, Hg, Wg) that kernel offset ``t`` writes to (·, N, H, W)."""
        kw = self.kernel_size[1]
        (sh, sw), i, j = self.stride, t // kw, t % kw
        return grid[:, :, i : i + sh * (h - 1) + 1 : sh, j : j + sw * (w - 1) + 1 : sw]

    def _grid_hw(self, h: int, w: int, ho: int, wo: int) -> tuple[int, int]:
        """The full grid: every patch fits, and so do ``padding + Ho`` rows (output_padding > padding)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return max((h - 1) * sh + kh, ph + ho), max((w - 1) * sw + kw, pw + wo)

    # -- forward ----------------------------------------------------------------------
    def forward(self, x, output_size=None):
        xp = self._check_input(x)
        n, c, h, w = x.shape
        ho, wo = self.output_hw(h, w, output_size)
        o, (ph, pw) = self.out_channels, self.padding
        hg, wg = self._grid_hw(h, w, ho, wo)
        length = n * h * w
        columns = xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c, length)  # X (C, L), a fresh array
        # W_ij^T stacked by offset: rows t·O .. (t+1)·O - 1 hold W[:, :, i, j]^T (O × C)
        w_rows = xp.ascontiguousarray(self.weight.data.transpose(2, 3, 1, 0)).reshape(-1, c)
        grid = xp.zeros((o, n, hg, wg), dtype=x.dtype)
        for t0, t1 in self._offset_groups(o, length, x.dtype.itemsize):
            product = xp.matmul(w_rows[t0 * o : t1 * o], columns)  # (g·O, L): W_ij^T X for g offsets
            for t in range(t0, t1):
                self._window(grid, t, h, w)[...] += product[(t - t0) * o : (t - t0 + 1) * o].reshape(o, n, h, w)
        y = xp.empty((n, o, ho, wo), dtype=x.dtype)
        cropped = grid[:, :, ph : ph + ho, pw : pw + wo].transpose(1, 0, 2, 3)  # cut the padding, back to NCHW
        if self.bias is not None:
            xp.add(cropped, self.bias.data.reshape(1, o, 1, 1), out=y)
        else:
            y[...] = cropped
        if is_grad_enabled():
            self._input_columns, self._input_shape, self._output_shape = columns, tuple(x.shape), tuple(y.shape)
        return y

    def _release_cache(self) -> None:
        self._input_columns = None

    # -- backward ---------------------------------------------------------------------
    @releases_cache
    def backward(self, dy):
        columns = require_cache(self._name, self._input_columns)
        check_grad_shape(self._name, dy, self._output_shape)
        xp = get_array_module(columns)
        n, c, h, w = self._input_shape
        _, o, ho, wo = self._output_shape
        (ph, pw), length = self.padding, n * h * w
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3), dtype=columns.dtype))
        hg, wg = self._grid_hw(h, w, ho, wo)
        d_grid = xp.zeros((o, n, hg, wg), dtype=columns.dtype)  # dy back on the full grid, 0 where cropped
        d_grid[:, :, ph : ph + ho, pw : pw + wo] = dy.transpose(1, 0, 2, 3)
        w_rows = xp.ascontiguousarray(self.weight.data.transpose(2, 3, 1, 0)).reshape(-1, c)
        want_dw = self.weight.requires_grad
        dw_rows = xp.empty_like(w_rows) if want_dw else None
        dx_columns = None
        groups = self._offset_groups(o, length, columns.dtype.itemsize)
        windows = xp.empty(((groups[0][1] - groups[0][0]) * o, n, h, w), dtype=columns.dtype)
        for t0, t1 in groups:
            stacked = windows[: (t1 - t0) * o]
            for t in range(t0, t1):  # gather D_ij, the windows the forward wrote to
                stacked[(t - t0) * o : (t - t0 + 1) * o] = self._window(d_grid, t, h, w)
            stacked = stacked.reshape((t1 - t0) * o, length)
            part = xp.matmul(w_rows[t0 * o : t1 * o].T, stacked)  # sum over the group of W_ij D_ij: (C, L)
            if dx_columns is None:
                dx_columns = part
            else:
                dx_columns += part
            if want_dw:
                xp.matmul(stacked, columns.T, out=dw_rows[t0 * o : t1 * o])  # D_ij X^T = (dL/dW_ij)^T
        if want_dw:
            kh, kw = self.kernel_size
            self.weight.accumulate_grad(dw_rows.reshape(kh, kw, o, c).transpose(3, 2, 0, 1))
        return xp.ascontiguousarray(dx_columns.reshape(c, n, h, w).transpose(1, 0, 2, 3))

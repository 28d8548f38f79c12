r"""Fixed upsampling by interpolation: the decoder of the SegNet article's "Bilinear-Interpolation" variant.

No parameters, nothing learnt: each output pixel is a fixed mixture of input pixels.
The layer matches ``torch.nn.Upsample`` / ``F.interpolate`` for ``mode="bilinear"`` (with
``align_corners`` False or True) and ``mode="nearest"``.

Where an output pixel reads from
--------------------------------
Along one axis with ``n`` input and ``m`` output pixels, output pixel ``d`` reads at the
input coordinate ::

    align_corners=False:  u = max(0, (d + 1/2) · ratio - 1/2)    pixel *centres* line up
    align_corners=True:   u = d · (n - 1) / (m - 1)              first and last pixels line up

``ratio = 1 / scale_factor`` when the size comes from ``scale_factor``, ``n / m`` when
``output_size`` is given (exactly PyTorch's rule, so 23 → 45 uses 23/45, not 1/2).
Bilinear mixes the two neighbours ``i0 = floor(u)`` and ``i1 = min(i0 + 1, n - 1)`` with
weights ``1 - λ`` and ``λ = u - i0``; nearest takes ``floor(d · ratio)`` (computed in
float32, as PyTorch does, so the two pick the same pixels).

Bilinear: two small matrices
----------------------------
Those weights form an (m × n) matrix ``A`` with two non-zeros per row.  Bilinear
interpolation is separable -- interpolate along the rows, then along the columns -- so
for every image and channel ::

    y = A_h  x  A_w^T           (Ho × H)(H × W)(W × Wo)

two matrix products (``A_w`` on all rows at once, one GEMM; then ``A_h`` on each map).
The layer is linear in ``x``, ``y = (A_h ⊗ A_w) x``, so its backward is the transposed map ::

    dL/dx = A_h^T  dy  A_w      (H × Ho)(Ho × Wo)(Wo × W)

read by the same two products with the matrices transposed: every output pixel sends its
gradient back to the two (four, in 2-D) input pixels it was mixed from, with the same
weights.  The matrices are tiny (360 × 180 for 2× at 360×480), dense, and rebuilt at
each call; nothing of ``x`` is needed for the backward.  A dense product costs
``2 · n`` multiplications per output value instead of 2 (a sparse gather would do less
arithmetic), but it is one BLAS/cuBLAS call, the same code on NumPy and CuPy, and
still an order of magnitude below the 7×7 convolution that follows it in SegNet-Basic.

Nearest: a gather, and a scatter-add
------------------------------------
``y = x[:, :, ih][:, :, :, iw]``: each output pixel copies one input pixel.  Several
output pixels copy the same input pixel (4 of them for 2×), so the backward adds their
gradients up: ``dx[..., ih[d], :] += dy[..., d, :]`` along each axis, a scatter-add
(``xp.add.at``, which sums repeated indices instead of keeping the last write).

Train / eval
------------
Same computation in both modes.  The forward keeps the two matrices (or index vectors)
and the shapes for the backward, unless it runs inside ``minisegnet.no_grad()``, where
it keeps nothing and leaves an earlier forward's cache alone.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..module import Module, releases_cache
from ..validation import check_feature_map, check_grad_shape, require_cache

__all__ = ["Upsample", "interpolation_matrix", "nearest_indices"]

MODES = ("bilinear", "nearest")


def _source_ratio(n: int, m: int, scale) -> float:
    """Input pixels per output pixel: ``1 / scale_factor`` when the size came from it, else ``n / m``."""
    return 1.0 / scale if scale is not None else n / m


def interpolation_matrix(n: int, m: int, align_corners: bool = False, scale=None) -> np.ndarray:
    """The (m × n) float64 matrix of 1-D linear interpolation from ``n`` to ``m`` pixels.

    Row ``d`` holds the weights with which output pixel ``d`` mixes the input pixels (two
    non-zeros summing to 1; both in one column at the border).  ``scale`` is the scale
    factor the size came from (None: ``m / n`` exactly), as in ``F.interpolate``.
    """
    d = np.arange(m, dtype=np.float64)
    if align_corners:
        u = d * ((n - 1) / (m - 1)) if m > 1 else np.zeros(m)
    else:
        u = np.maximum((d + 0.5) * _source_ratio(n, m, scale) - 0.5, 0.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = u - i0
    matrix = np.zeros((m, n))
    np.add.at(matrix, (np.arange(m), i0), 1.0 - lam)
    np.add.at(matrix, (np.arange(m), i1), lam)
    return matrix


def nearest_indices(n: int, m: int, scale=None) -> np.ndarray:
    """For each of ``m`` output pixels, the input pixel (of ``n``) that ``mode="nearest"`` copies.

    ``min(floor(d · ratio), n - 1)`` with the product in float32, and the exact shortcuts
    for ``m == n`` and ``m == 2n``, exactly as PyTorch computes it.
    """
    if m == n:
        return np.arange(m)
    if m == 2 * n:
        return np.arange(m) // 2
    ratio = np.float32(1.0 / scale) if scale is not None else np.float32(n) / np.float32(m)
    src = np.floor(np.arange(m, dtype=np.float32) * ratio).astype(np.int64)
    return np.minimum(src, n - 1)


def _scale_pair(value):
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    ok = len(pair) == 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in pair
    )
    if not ok:
        raise ValueError(f"Upsample: expected scale_factor as a positive number or a pair of them, got {value!r}")
    return float(pair[0]), float(pair[1])


class Upsample(Module):
    r"""``Upsample(scale_factor=2, mode="bilinear", align_corners=False)``: fixed interpolation of NCHW maps.

    ``forward(x, output_size=None)``: the output is ``floor(H · scale_factor)`` ×
    ``floor(W · scale_factor)``, or ``output_size`` ((H, W), or (N, C, H, W) whose last two
    are used) when given -- how a decoder undoes ceil-mode pooling on odd sizes (23×30 →
    45×60).  ``scale_factor`` is a number or an (h, w) pair; it may be None when every
    call gives ``output_size``.  ``mode`` is ``"bilinear"`` (the default here; PyTorch's
    ``nn.Upsample`` defaults to ``"nearest"``) or ``"nearest"``; ``align_corners``
    (bilinear only) as in PyTorch.  How it is computed and its backward are in the
    module docstring.

    Any floating dtype, computed in ``x.dtype``; NumPy or CuPy.  No parameters.
    ``backward(dy)`` returns ``dL/dx``.
    """

    def __init__(self, scale_factor=2, mode: str = "bilinear", align_corners: bool | None = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Upsample: expected mode as one of {', '.join(MODES)}, got {mode!r}")
        if mode == "nearest" and align_corners:
            raise ValueError("Upsample: align_corners applies to mode='bilinear' only (nearest copies pixels)")
        self.scale_factor = None if scale_factor is None else _scale_pair(scale_factor)
        self.mode = mode
        self.align_corners = bool(align_corners)
        self._along_h = None  # bilinear: A_h (Ho, H); nearest: ih (Ho,), the row each output row copies
        self._along_w = None  # bilinear: A_w (Wo, W); nearest: iw (Wo,)
        self._input_shape = None  # (N, C, H, W) of that forward
        self._output_shape = None  # (N, C, Ho, Wo) of that forward

    def extra_repr(self) -> str:
        scale = None if self.scale_factor is None else (
            self.scale_factor[0] if self.scale_factor[0] == self.scale_factor[1] else self.scale_factor)
        text = f"scale_factor={scale}, mode={self.mode!r}"
        return text + (", align_corners=True" if self.align_corners else "")

    @property
    def _name(self) -> str:
        return f"Upsample({self.extra_repr()})"

    def output_hw(self, height: int, width: int, output_size=None) -> tuple[int, int]:
        """Output (Ho, Wo) for an input of ``height × width``."""
        if output_size is not None:
            size = tuple(output_size) if isinstance(output_size, (tuple, list)) else None
            if size is None or len(size) not in (2, 4) or not all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size[-2:]):
                raise ValueError(
                    f"{self._name}: expected output_size as (H, W) or (N, C, H, W) positive ints, got {output_size!r}"
                )
            return int(size[-2]), int(size[-1])
        if self.scale_factor is None:
            raise ValueError(f"{self._name}: without a scale_factor, forward needs output_size")
        ho, wo = (int(math.floor(n * s)) for n, s in zip((height, width), self.scale_factor))
        if ho < 1 or wo < 1:
            raise ValueError(f"{self._name}: an input of {height}x{width} gives an empty output {ho}x{wo}")
        return ho, wo

    def forward(self, x, output_size=None):
        check_feature_map(self._name, x)
        xp = get_array_module(x)
        n, c, h, w = x.shape
        ho, wo = self.output_hw(h, w, output_size)
        scales = (None, None) if output_size is not None or self.scale_factor is None else self.scale_factor
        if self.mode == "bilinear":
            a_h = xp.asarray(interpolation_matrix(h, ho, self.align_corners, scales[0]), dtype=x.dtype)
            a_w = xp.asarray(interpolation_matrix(w, wo, self.align_corners, scales[1]), dtype=x.dtype)
            rows = xp.matmul(x.reshape(n * c * h, w), a_w.T).reshape(n * c, h, wo)  # x A_w^T: along W
            y = xp.matmul(a_h, rows).reshape(n, c, ho, wo)  # A_h (x A_w^T): along H
            along_h, along_w = a_h, a_w
        else:
            ih = xp.asarray(nearest_indices(h, ho, scales[0]))
            iw = xp.asarray(nearest_indices(w, wo, scales[1]))
            y = xp.take(xp.take(x, ih, axis=2), iw, axis=3)
            along_h, along_w = ih, iw
        if is_grad_enabled():
            self._along_h, self._along_w = along_h, along_w
            self._input_shape, self._output_shape = tuple(x.shape), tuple(y.shape)
        return y

    def _release_cache(self) -> None:
        self._along_h = self._along_w = None

    @releases_cache
    def backward(self, dy):
        along_h = require_cache(self._name, self._along_h)
        along_w = self._along_w
        check_grad_shape(self._name, dy, self._output_shape)
        xp = get_array_module(dy)
        n, c, h, w = self._input_shape
        ho, wo = self._output_shape[2:]
        if self.mode == "bilinear":
            a_h, a_w = along_h, along_w
            rows = xp.matmul(a_h.T, dy.reshape(n * c, ho, wo))  # A_h^T dy: (N·C, H, Wo)
            return xp.matmul(rows.reshape(n * c * h, wo), a_w).reshape(n, c, h, w)  # (A_h^T dy) A_w
        ih, iw = along_h, along_w
        along_w = xp.zeros((n, c, ho, w), dtype=dy.dtype)
        xp.add.at(along_w, (slice(None), slice(None), slice(None), iw), dy)  # sum the copies of each column
        dx = xp.zeros((n, c, h, w), dtype=dy.dtype)
        xp.add.at(dx, (slice(None), slice(None), ih), along_w)  # ... and of each row
        return dx

r"""Feeding the shifted GEMMs of :mod:`minisegnet.layers.conv`: stacked offsets and column blocks.

:mod:`~minisegnet.layers.conv` writes a convolution as ``Y = sum_ij W_ij @ X_ij``, one
matrix product per kernel offset (i, j), where ``X_ij`` is the input shifted by (i, j).
This module decides how those products are grouped and yields their right-hand sides;
the convolution itself only multiplies and adds.

Stacking the horizontal offsets
-------------------------------
A product with inner dimension C (64 in most SegNet layers) runs well below BLAS peak, and
each of the kh·kw products adds into the output once more.  So the ``g`` horizontal
shifts ``j0 .. j0+g-1`` of the flat source are copied once, stacked, into a
(g·C) × (L + (kh-1)·Wp) buffer.  The next kernel row is the same data ``Wp`` columns later,
so that one buffer serves *every* kernel row as a view: with ``g = kw`` a 7×7 layer runs
7 GEMMs of inner dimension 7·C instead of 49 of inner dimension C, with the weights
reordered to match (:func:`row_weights`).  The buffer holds ``g`` shifted copies of the
input: ``1/kh`` of an im2col matrix when ``g = kw``; ``g = 1`` copies nothing (the shifted
views are multiplied directly).

Blocks of columns (the budget)
------------------------------
The buffer is capped by ``Conv2d.max_workspace_bytes``.  On a large map the output
columns are cut into equal *blocks*, each computed from its own stacked copy (the block
plus the ``halo = (kh-1)·Wp`` columns the lower kernel rows reach): the GEMMs keep their
depth g·C and only get shorter, which costs little as long as a block is long
(``Conv2d.min_block_columns``, 16 384 columns by default).  Only when a block that long
would not fit does ``g`` shrink, in groups of equal size (room for 5 of 7 offsets gives
4 + 3, not 5 + 2).  Measurements of the budget's effect are in ``BENCHMARKS.md``.

Both window generators yield ``(start, stop, i, j0, gg, cols)`` for kernel row ``i`` and
the offsets ``j0 .. j0+gg-1``: ``cols`` (gg·rows, stop - start) holds the source under
those offsets at the output positions ``start .. stop-1`` -- a block of the im2col matrix,
never the whole matrix.  ``cols`` lives in the shared workspace (or is a view of the
source) and is valid until the generator resumes.
"""
from __future__ import annotations

from ..workspace import WORKSPACE

__all__ = ["plan_tiling", "row_weights", "flat_windows", "gathered_windows"]


def plan_tiling(kw: int, rows: int, length: int, halo: int, itemsize: int, max_bytes: int,
                min_block: int) -> tuple[int, int]:
    """``(g, block)``: stack ``g`` horizontal offsets per GEMM, over blocks of ``block`` columns.

    ``rows`` channels of ``itemsize`` bytes per column, ``length`` output columns, each
    stacked copy ``halo`` columns longer than its block.  ``g = kw`` (the fewest, deepest
    GEMMs) whenever a block of ``min_block`` columns fits ``max_bytes``, which is then met
    by cutting the columns into equal blocks.  Otherwise ``g`` shrinks to what fits, in
    groups of equal size.  ``g = 1`` copies nothing, so its one block is all the columns.
    """
    smallest = rows * itemsize * (min(min_block, length) + halo)  # bytes of one shifted copy
    fits = int(max(1, min(kw, max_bytes // max(smallest, 1))))
    groups = -(-kw // fits)
    g = -(-kw // groups)
    if g == 1:
        return 1, length
    block = max(min(min_block, length), max_bytes // (g * rows * itemsize) - halo)
    blocks = -(-length // block)
    return g, -(-length // blocks)


def row_weights(xp, weight, j0: int, g: int):
    """``(kh, O, g·C)``: ``[i][o, jj·C + c] = weight[o, c, i, j0 + jj]``, the order of the stacked shifts."""
    o, c, kh, _ = weight.shape
    return xp.ascontiguousarray(weight[:, :, :, j0 : j0 + g].transpose(2, 0, 3, 1)).reshape(kh, o, g * c)


def flat_windows(src, kernel_size, row_stride: int, length: int, max_bytes: int, min_block: int,
                 copy: bool = True):
    """Stride 1: ``length`` columns of the flat padded grid ``src`` (rows, ·), as stacked shifted views.

    Offset (i, j) starts ``i·row_stride + j`` columns later.  The columns come in blocks
    so that the stacked copy fits ``max_bytes`` without making the GEMMs shallower.
    ``copy=False`` yields the same tiling with ``cols = None`` (for a caller that only
    needs the positions, such as a backward whose weight is frozen).
    """
    rows = src.shape[0]
    kh, kw = kernel_size
    halo = (kh - 1) * row_stride  # the lower kernel rows read this many columns further
    g, block = plan_tiling(kw, rows, length, halo, src.dtype.itemsize, max_bytes, min_block)
    for start in range(0, length, block):
        stop = min(length, start + block)
        span = stop - start + halo  # one horizontal shift of the block, long enough for every kernel row
        for j0 in range(0, kw, g):
            gg = min(g, kw - j0)
            if not copy:
                stacked = None
            elif gg > 1:  # copy the gg horizontal shifts once, stacked: (gg·rows, span)
                stacked = WORKSPACE.take(src, "conv.shifted", (gg, rows, span))
                for jj in range(gg):
                    stacked[jj] = src[:, start + j0 + jj : start + j0 + jj + span]
                stacked = stacked.reshape(gg * rows, span)
            else:  # one shift: a view of src itself, nothing copied
                stacked = src[:, start + j0 : start + j0 + span]
            for i in range(kh):  # kernel row i is the same data i·Wp columns later: a view
                cols = None if stacked is None else stacked[:, i * row_stride : i * row_stride + stop - start]
                yield start, stop, i, j0, gg, cols


def gathered_windows(padded, kernel_size, stride, ho: int, wo: int, max_bytes: int, copy: bool = True):
    """Any stride: the N·Ho·Wo strided windows of ``padded`` (C, N, Hp, Wp), gathered into a reused buffer.

    A strided window ``padded[:, :, i::sh, j::sw]`` is no flat slice, so each group of
    offsets is copied; all N·Ho·Wo columns form one block.  ``copy=False``: as in
    :func:`flat_windows`.
    """
    c, n = padded.shape[:2]
    (kh, kw), (sh, sw) = kernel_size, stride
    length = n * ho * wo
    g, _ = plan_tiling(kw, c, length, 0, padded.dtype.itemsize, max_bytes, min_block=length)
    for j0 in range(0, kw, g):
        gg = min(g, kw - j0)
        for i in range(kh):
            if not copy:
                yield 0, length, i, j0, gg, None
                continue
            cols = WORKSPACE.take(padded, "conv.gathered", (gg, c, n, ho, wo))
            for jj in range(gg):
                j = j0 + jj
                cols[jj] = padded[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            yield 0, length, i, j0, gg, cols.reshape(gg * c, length)

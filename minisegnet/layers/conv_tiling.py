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

Stretches and blocks of columns (the budget)
--------------------------------------------
The output columns are copied in *stretches*: each stretch gets its own stacked copy (the
stretch plus the ``halo = (kh-1)·Wp`` columns the lower kernel rows reach).  A stretch is
at most ``Conv2d.max_copy_columns`` (8192) long and fits ``Conv2d.max_workspace_bytes``;
the GEMMs keep their depth g·C.  Each stretch is then multiplied in *blocks* of at most
``Conv2d.max_block_columns`` (2048) columns, views of the same copy: a block that short
keeps one GEMM's output (O × block) and the product it is added to in the core's L2
cache, so the k-1 additions of the kernel rows' products run from cache instead of main
memory, and OpenBLAS's packed panels of the long operand are reused while still cached.
Why the two lengths differ: the halo is copied once per stretch, so a stretch should be
long against it (SegNet-Basic at 180×240: a 1,482-column halo, 1.18 copies of the input
per stacked shift at 8192 columns, where one copy per 2048-column block made 1.72); and
the copy should stay small enough to be read back from cache (7·64 rows × 9,674 columns
is 17 MB).  When even a stretch of ``Conv2d.min_block_columns`` would not fit the budget,
``g`` shrinks, in groups of equal size (room for 5 of 7 offsets gives 4 + 3, not 5 + 2).
Measurements: ``BENCHMARKS.md``.

Both window generators yield ``(start, stop, i, j0, gg, cols)`` for kernel row ``i`` and
the offsets ``j0 .. j0+gg-1``: ``cols`` (gg·rows, stop - start) holds the source under
those offsets at the output positions ``start .. stop-1`` -- a block of the im2col matrix,
never the whole matrix.  ``cols`` lives in the shared workspace (or is a view of the
source) and is valid until the generator resumes.

Tiles of output rows (the "tiled-im2col" algorithm)
---------------------------------------------------
The other way to feed the GEMMs: copy *all* kh·kw offsets, but only for a tile of output
positions, into one contiguous (kh·kw·C) × B block -- a slice of the im2col matrix -- and
multiply it once.  A tile is either whole images (when one image's Ho·Wo columns fit) or
a run of output rows of one image, so that every offset's window over the tile is one
strided view of the padded input and one copy (:func:`gather_tile`).  The tile holds as
many columns as ``Conv2d.max_workspace_bytes`` allows (:func:`plan_output_tiles`), but
at least one output row, so the budget can be exceeded by one row's block.
"""
from __future__ import annotations

from ..workspace import WORKSPACE

__all__ = ["plan_tiling", "row_weights", "image_ranges", "flat_windows", "equal_blocks", "gathered_windows",
           "plan_output_tiles", "output_tiles", "gather_tile", "scatter_tile", "embed_on_grid"]


def plan_tiling(kw: int, rows: int, length: int, halo: int, itemsize: int, max_bytes: int,
                min_block: int, max_block: int | None = None) -> tuple[int, int]:
    """``(g, block)``: stack ``g`` horizontal offsets per GEMM, over blocks of ``block`` columns.

    ``rows`` channels of ``itemsize`` bytes per column, ``length`` output columns, each
    stacked copy ``halo`` columns longer than its block.  ``g = kw`` (the fewest, deepest
    GEMMs) whenever a block of ``min_block`` columns fits ``max_bytes``; the columns are
    then cut into equal blocks of at most ``max_block`` (None: no limit) that fit.
    Otherwise ``g`` shrinks to what fits, in groups of equal size.  ``g = 1`` copies
    nothing, so its one block is all the columns.
    """
    smallest = rows * itemsize * (min(min_block, length) + halo)  # bytes of one shifted copy
    fits = int(max(1, min(kw, max_bytes // max(smallest, 1))))
    groups = -(-kw // fits)
    g = -(-kw // groups)
    if g == 1:
        return 1, length
    block = max(min(min_block, length), max_bytes // (g * rows * itemsize) - halo)
    if max_block is not None:
        block = min(block, max(max_block, 1))
    blocks = -(-length // block)
    return g, -(-length // blocks)


def row_weights(xp, weight, j0: int, g: int):
    """``(kh, O, g·C)``: ``[i][o, jj·C + c] = weight[o, c, i, j0 + jj]``, the order of the stacked shifts."""
    o, c, kh, _ = weight.shape
    return xp.ascontiguousarray(weight[:, :, :, j0 : j0 + g].transpose(2, 0, 3, 1)).reshape(kh, o, g * c)


def image_ranges(images: int, image_columns: int, first: int, stop: int) -> list[tuple[int, int]]:
    """``[(m·image_columns + first, m·image_columns + stop) for each image m]``: the columns worth computing.

    On the flat padded grid the positions between one image's last useful column and the
    next image's first are garbage (the bottom rows of the padded grid, whose windows
    run into the next image); skipping them saves ``(kh-1)/Hp`` of the arithmetic.
    """
    return [(m * image_columns + first, m * image_columns + stop) for m in range(images)]


def flat_windows(src, kernel_size, row_stride: int, ranges, max_bytes: int, min_block: int,
                 copy: bool = True, max_block: int | None = None, max_stretch: int | None = None):
    """Stride 1: the columns ``ranges`` ((first, stop) pairs) of the flat padded grid ``src``, as stacked views.

    Offset (i, j) starts ``i·row_stride + j`` columns later.  Each range is copied in
    *stretches* of at most ``max_stretch`` columns (None: as long as ``max_bytes`` allows
    without making the GEMMs shallower); each stretch's stacked copy then serves its GEMM
    *blocks* of at most ``max_block`` columns (equal blocks, None: one block per stretch),
    all of them views.  ``copy=False`` yields the same tiling with ``cols = None`` (for a
    caller that only needs the positions, such as a backward whose weight is frozen).
    """
    rows = src.shape[0]
    kh, kw = kernel_size
    halo = (kh - 1) * row_stride  # the lower kernel rows read this many columns further
    longest = max(stop - first for first, stop in ranges)
    g, stretch = plan_tiling(kw, rows, longest, halo, src.dtype.itemsize, max_bytes, min_block, max_stretch)
    for first, last in ranges:
        for s0 in range(first, last, stretch):
            s1 = min(last, s0 + stretch)
            span = s1 - s0 + halo  # one horizontal shift of the stretch, long enough for every kernel row
            blocks = equal_blocks(s0, s1, max_block)
            for j0 in range(0, kw, g):
                gg = min(g, kw - j0)
                if not copy:
                    stacked = None
                elif gg > 1:  # copy the gg horizontal shifts once, stacked: (gg·rows, span)
                    stacked = WORKSPACE.take(src, "conv.shifted", (gg, rows, span))
                    for jj in range(gg):
                        stacked[jj] = src[:, s0 + j0 + jj : s0 + j0 + jj + span]
                    stacked = stacked.reshape(gg * rows, span)
                else:  # one shift: a view of src itself, nothing copied
                    stacked = src[:, s0 + j0 : s0 + j0 + span]
                for start, stop in blocks:
                    for i in range(kh):  # kernel row i is the same data i·Wp columns later: a view
                        offset = start - s0 + i * row_stride
                        cols = None if stacked is None else stacked[:, offset : offset + stop - start]
                        yield start, stop, i, j0, gg, cols


def equal_blocks(first: int, stop: int, max_block: int | None) -> list[tuple[int, int]]:
    """``first .. stop-1`` cut into the fewest equal blocks of at most ``max_block`` columns (None: one block)."""
    if max_block is None or stop - first <= max_block:
        return [(first, stop)]
    count = -(-(stop - first) // max(max_block, 1))
    size = -(-(stop - first) // count)
    return [(start, min(stop, start + size)) for start in range(first, stop, size)]


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


def plan_output_tiles(n: int, ho: int, wo: int, column_bytes: int, max_bytes: int) -> tuple[int, int]:
    """``(images, rows)`` per tile: whole images when one image fits ``max_bytes``, else rows of one image.

    ``column_bytes`` is what one output position costs in the block (kh·kw·C·itemsize).
    Returns ``(images, ho)`` (tiles of ``images`` whole images) or ``(1, rows)`` with
    ``rows < ho`` (tiles of ``rows`` output rows); at least one row per tile.
    """
    columns = max(wo, max_bytes // max(column_bytes, 1))
    if columns >= ho * wo:
        images = min(n, columns // (ho * wo))
        tiles = -(-n // images)  # equal tiles: 5 images at 2 per tile -> 2 + 2 + 1 would leave a short one
        return -(-n // tiles), ho
    rows = columns // wo
    tiles = -(-ho // rows)
    return 1, -(-ho // tiles)


def output_tiles(n: int, ho: int, images: int, rows: int):
    """``(n0, n1, r0, r1)``: the tiles of :func:`plan_output_tiles`, in memory order of the output."""
    for n0 in range(0, n, images):
        for r0 in range(0, ho, rows):
            yield n0, min(n, n0 + images), r0, min(ho, r0 + rows)


def _window(kernel_row: int, kernel_col: int, stride, tile, wo: int):
    """Index of the input window under offset (i, j) for the output rows ``r0 .. r1-1`` of ``tile``."""
    (sh, sw), (n0, n1, r0, r1) = stride, tile
    i, j = kernel_row, kernel_col
    return (slice(None), slice(n0, n1), slice(i + sh * r0, i + sh * (r1 - 1) + 1, sh),
            slice(j, j + sw * (wo - 1) + 1, sw))


def gather_tile(padded, kernel_size, stride, tile, wo: int, out):
    """``out`` (kh, kw, C, images, rows, wo) <- the window of every offset over ``tile``: an im2col block.

    ``padded`` is the zero-padded input, channel-major (C, N, Hp, Wp); ``out[i, j]`` is the
    input shifted by (i, j) at the tile's output positions, so ``out.reshape(kh·kw·C, -1)``
    are the im2col matrix's columns of the tile, rows in the order (i, j, c).
    """
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            out[i, j] = padded[_window(i, j, stride, tile, wo)]
    return out


def scatter_tile(d_cols, kernel_size, stride, tile, wo: int, d_padded):
    """The transpose of :func:`gather_tile`: add ``d_cols[i, j]`` back into the window it was read from.

    ``+=`` on a strided window is safe: within one offset no two output positions read the
    same input pixel; the offsets (and the tiles, whose windows overlap by the kernel's
    reach) are added one after another.
    """
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            d_padded[_window(i, j, stride, tile, wo)] += d_cols[i, j]
    return d_padded


def embed_on_grid(dy, grid):
    """``grid`` (O, N, Hp, Wp) <- ``dy`` (N, O, Ho, Wo) channel-major in its top-left corner, zero elsewhere.

    Only the cropped positions are zeroed (not the whole grid first): one pass less over
    an output-sized array per backward.
    """
    ho, wo = dy.shape[2], dy.shape[3]
    grid[:, :, :ho, wo:] = 0
    grid[:, :, ho:] = 0
    grid[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)

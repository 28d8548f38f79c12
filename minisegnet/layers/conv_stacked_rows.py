r"""A stride-1 convolution as one square GEMM per block: the kernel's rows stacked in the weights.

Where this comes from
---------------------
"flat-flipped" (:mod:`~minisegnet.layers.conv`) computes ``Y = sum_ij W_ij @ X_ij`` on the
flat padded grid, with the kw horizontal shifts of the input copied once, stacked, so that
kernel row ``i`` is one GEMM of ``(O × kw·C) @ (kw·C × block)``.  A 7×7 64→64 layer then runs
7 GEMMs per block of columns, each with only O = 64 rows, and each reads the same stacked
block again (shifted by one padded row, ``Wp`` columns): OpenBLAS packs that block 7 times,
and a GEMM 64 rows tall spends much of its time packing.  This module stacks the *rows* of the
kernel too, in the weights, so each block is one GEMM with kh·O rows.

The identity
------------
Write ``s_ij = i·Wp + j`` for the flat offset of kernel tap (i, j) (``Wp``: the padded
width), ``X`` the padded input channel-major and flat (C, L), and ::

    S[(j, c), t]       = X[c, t + j]              (kw·C × columns): the kw horizontal shifts, stacked
    W_rows[(i, o), (j, c)] = W[o, c, i, j]         (kh·O × kw·C): every kernel row's weights, stacked
    P = W_rows @ S                                  (kh·O × columns): ONE product per block

Row block ``i`` of ``P`` is ``P_i[:, t] = sum_j W_ij X[:, t + j]``: kernel row ``i``'s share,
taken at input column ``t``.  Output position ``u`` needs kernel row ``i`` at ``t = u + i·Wp``,
so ::

    Y[:, u] = sum_ij W_ij X[:, u + s_ij] = sum_i P_i[:, u + i·Wp]

-- the products of block ``[a, b)`` are *added back* ``i·Wp`` columns earlier, one shifted
addition of O rows per kernel row (the additions "flat-flipped" makes as well: it adds each
kernel row's product into the output too).  No zeroing first: going through the blocks in
order, ``Y[:, a:b] = P_0`` is an assignment, and every later addition into ``u`` comes from
``t = u + i·Wp > u``, in the same block after the assignment or in a later block.

What it buys and what it costs
------------------------------
Per block the stacked copy ``S`` is written once and read by one GEMM (kh·O × kw·C: 448 × 448
for SegNet-Basic's layers), whose products ``P`` (kh·O × block) stay in the core's cache for
the additions.  The copy is kw shifts of the input once over (no halo: the kernel rows'
reach moved from the copy into the additions).  The price: every input column is multiplied
by every kernel row, also where ``t - i·Wp`` is no output at all (the top rows for ``i > 0``,
positions past the last image), so the arithmetic is that of the whole padded grid
(``N·Hp·Wp`` columns) where "flat-flipped" computes ``N·Ho·Wp``: ``Hp / Ho`` times as much,
3 % more at 180×240 with a 7×7 kernel, 13 % at 45×60.  So it pays where the kernel has many
rows (7 GEMMs become one) and the map is tall against the kernel; on short maps, and in the
bands of a no-grad forward (about 33 rows each), the extra rows cost what the square GEMM
saves.  "auto" takes it only on tall maps (the rule in :mod:`~minisegnet.layers.conv`; the
measurements behind it in ``BENCHMARKS.md``).

The backward, derived
---------------------
**dx.**  As in "flat-flipped": ``dx[:, t] = sum_ij W_ij^T dy[:, t - s_ij]`` is a correlation
of ``dy`` -- on the padded grid, zero at the cropped positions, with ``lead = (kh-1)·Wp +
kw-1`` zero columns in front (``D``, so ``t - s_ij`` never goes negative) -- with the
kernel flipped in both directions and its channels swapped, ``W[:, :, ::-1, ::-1]^T``.  So
it is the identity above run on ``D`` with the flipped weights: ``S_D[(j, o), t] =
D[o, t + j]``, one product by the stacked flipped kernel rows, the shifted additions into
``dx``.

**dW.**  ``dL/dW_ij = sum_u dy[:, u] X[:, u + s_ij]^T`` over the output positions.  Put
``u = t + j' - lead`` with ``j' = kw-1-j`` (so ``D[:, t + j'] = dy[:, u]``, a row of the
``S_D`` just built) and ``i' = kh-1-i``: then ``u + s_ij = t - i'·Wp``, and ::

    dL/dW[o, c, kh-1-i', kw-1-j'] = sum_t S_D[(j', o), t] · R[(i', c), t],
    R[(i', c), t] = X[c, t - i'·Wp]             (kh·C × columns; zero outside X)

one more square product per block, ``S_D @ R^T`` (kw·O × kh·C), summed over the blocks: the
flipped gradient of every tap at once.  ``R`` is the input's kh vertical shifts, copied once
per block; the terms of a position that is no output vanish because ``dy`` is zero there.
A frozen weight skips ``R`` and this product; ``needs_input_grad=False`` skips the dx
product and its additions.

Memory: per block one stacked copy (kw·C rows, or kw·O in the backward), the products (kh·O,
or kh·C) and in the backward ``R`` (kh·C), all of ``Conv2d.max_block_columns`` columns at
most and within ``Conv2d.max_workspace_bytes``: about 11 MB for a 7×7 64→64 block of 2048
columns, whatever the image size.
"""
from __future__ import annotations

from ..workspace import MAP_SCRATCH, WORKSPACE
from .conv_tiling import embed_on_grid

__all__ = ["stacked_rows_forward", "stacked_rows_backward", "stacked_rows_unsupported", "stacked_row_weights",
           "block_length", "stacked_rows_band_rows", "ROWS_PER_KERNEL_ROW"]

#: The grid this algorithm computes should be at least this many rows tall per kernel row beyond the
#: first: the kh-1 rows of products no output uses are then at most 1/20 of the arithmetic.
ROWS_PER_KERNEL_ROW = 20


def stacked_rows_unsupported(layer) -> str | None:
    """Why ``layer`` cannot use "flat-stacked-rows" (None: it can): it needs stride 1."""
    return None if layer.stride == (1, 1) else f"needs stride 1 (this layer has stride {layer.stride})"


def stacked_rows_band_rows(layer) -> int:
    """Output rows per band of a no-grad forward: a band's padded rows are kh-1 more, so its grid is
    ``ROWS_PER_KERNEL_ROW · (kh-1)`` rows tall (a band of the default ~33 rows would waste 15 %)."""
    kh = layer.kernel_size[0]
    return max(1, (ROWS_PER_KERNEL_ROW - 1) * (kh - 1))


def stacked_row_weights(xp, weight):
    """``(kh·O, kw·C)``: ``[(i, o), (j, c)] = weight[o, c, i, j]`` for a weight (O, C, kh, kw)."""
    o, c, kh, kw = weight.shape
    return xp.ascontiguousarray(weight.transpose(2, 0, 3, 1)).reshape(kh * o, kw * c)


def block_length(layer, columns: int, bytes_per_column: int) -> int:
    """Columns per block: at most ``max_block_columns`` and what fits ``max_workspace_bytes``,
    at least ``min_block_columns`` (short blocks mean short, slow GEMMs), never more than ``columns``."""
    fits = layer.max_workspace_bytes // max(bytes_per_column, 1)
    if layer.max_block_columns is not None:
        fits = min(fits, layer.max_block_columns)
    return max(1, min(columns, max(fits, layer.min_block_columns)))


def _add_products_shifted(products, out, start: int, row_stride: int) -> None:
    """``out[:, u] (=/+=) products[i][:, u - start + i·row_stride]``: the block's rows back where they belong.

    ``products`` (kh, rows, m) holds kernel row ``i``'s share at input columns ``start ..
    start+m-1``; it goes to output columns ``start - i·row_stride ..``, clipped to ``out``.
    Kernel row 0 *assigns* (the first write of those columns, see the module docstring).
    """
    kh, _, m = products.shape
    length = out.shape[1]
    for i in range(kh):
        u0 = start - i * row_stride
        lo, hi = max(u0, 0), min(u0 + m, length)
        if hi <= lo:
            continue
        share = products[i, :, lo - u0 : hi - u0]
        if i == 0:
            out[:, lo:hi] = share
        else:
            out[:, lo:hi] += share


def _stack_shifts(src, start: int, stop: int, kw: int, out):
    """``out`` (kw, rows, m) <- ``src[:, start + j : stop + j]`` for each horizontal shift ``j``."""
    for j in range(kw):
        out[j] = src[:, start + j : stop + j]
    return out


def _correlate_block(xp, src, start: int, stop: int, w_rows, kernel_size, row_stride: int, out):
    """One block of :func:`_correlate`: input columns ``start .. stop-1``; returns their stacked shifts S.

    S (kw·rows × m) is scratch, valid until the next block; ``out=None`` only stacks (a backward
    that needs S for dW but no dx).
    """
    kh, kw = kernel_size
    rows, m = src.shape[0], stop - start
    stacked = _stack_shifts(src, start, stop, kw, WORKSPACE.take(src, "conv.shifted", (kw, rows, m)))
    stacked = stacked.reshape(kw * rows, m)
    if out is not None:
        products = WORKSPACE.take(src, "conv.products", (kh, out.shape[0], m))
        xp.matmul(w_rows, stacked, out=products.reshape(kh * out.shape[0], m))
        _add_products_shifted(products, out, start, row_stride)
    return stacked


def _correlate(xp, layer, src, w_rows, row_stride: int, out):
    """``out[:, u] = sum_ij W_ij src[:, u + i·row_stride + j]`` for every column ``u`` of ``out``; returns ``out``.

    ``src`` (rows, length) flat; ``w_rows`` (kh·O, kw·rows) from :func:`stacked_row_weights`
    (kh, kw: ``layer.kernel_size``).  A column of ``out`` whose window would read past ``src``
    (a position no output keeps) gets the sum over the kernel rows that fit, or 0: finite,
    never stale scratch.
    """
    kh, kw = layer.kernel_size
    rows, o, length = src.shape[0], out.shape[0], out.shape[1]
    columns = min(src.shape[1] - (kw - 1), length + (kh - 1) * row_stride)  # input columns worth a product
    block = block_length(layer, columns, (kw * rows + kh * o) * src.dtype.itemsize)
    for start in range(0, columns, block):
        _correlate_block(xp, src, start, min(columns, start + block), w_rows, layer.kernel_size, row_stride, out)
    if columns < length:
        out[:, max(columns, 0):] = 0
    return out


def stacked_rows_forward(layer, xp, padded, ho: int, wo: int):
    """``Y = sum_i P_i`` shifted, ``P = W_rows @ S`` per block.  Returns (O, N, Ho, Wo), a view of scratch, no bias."""
    c, n, hp, wp = padded.shape
    o = layer.out_channels
    grid = n * hp * wp
    y_grid = WORKSPACE.take(padded, MAP_SCRATCH, (o, grid))
    _correlate(xp, layer, padded.reshape(c, grid), stacked_row_weights(xp, layer.weight.data), wp, y_grid)
    return y_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo]


def _stack_rows_of_input(x_flat, start: int, stop: int, kh: int, row_stride: int, out):
    """``out`` (kh, C, m) <- ``R[(i, c), t] = x_flat[c, t - i·row_stride]`` for t in ``start .. stop-1``, 0 outside."""
    length, m = x_flat.shape[1], stop - start
    for i in range(kh):
        lo = start - i * row_stride  # x_flat's column under t = start
        first = min(max(-lo, 0), m)  # out[i, :, first:last] lies inside x_flat
        last = max(min(length - lo, m), first)
        out[i, :, :first] = 0
        out[i, :, first:last] = x_flat[:, lo + first : lo + last]
        out[i, :, last:] = 0
    return out


def stacked_rows_backward(layer, xp, dy, padded, need_dx: bool, need_dw: bool):
    """dx by the flipped kernel's stacked rows; dW by ``S_D @ R^T`` per block (module docstring).

    Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
    """
    c, n, hp, wp = padded.shape
    o, (kh, kw) = layer.out_channels, layer.kernel_size
    grid = n * hp * wp
    lead = (kh - 1) * wp + (kw - 1)  # zero columns in front of dy: t - s_ij never goes negative
    d_flat = WORKSPACE.take(padded, "conv.dy_grid", (o, lead + grid))
    d_flat[:, :lead] = 0
    embed_on_grid(dy, d_flat[:, lead:].reshape(o, n, hp, wp))  # dy on the padded grid, zero at the cropped positions
    x_flat = padded.reshape(c, grid)
    columns = grid + (kh - 1) * wp  # = lead + grid - (kw - 1): every column of D a stacked window can start at
    per_column = (kw * o + (kh * c if need_dx else 0) + (kh * c if need_dw else 0)) * padded.dtype.itemsize
    block = block_length(layer, columns, per_column)
    w_rows = dx_grid = None
    if need_dx:
        flipped = layer.weight.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (C, O, kh, kw)
        w_rows = stacked_row_weights(xp, flipped)  # (kh·C, kw·O)
        dx_grid = WORKSPACE.take(padded, MAP_SCRATCH, (c, grid))
    if need_dw:
        dw_flipped = xp.empty((kw * o, kh * c), dtype=padded.dtype)  # [(j', o), (i', c)], summed over the blocks
    for start in range(0, columns, block):
        stop = min(columns, start + block)
        m = stop - start
        # the forward's block on D with the flipped kernel (dx), keeping S_D for dW
        stacked = _correlate_block(xp, d_flat, start, stop, w_rows, layer.kernel_size, wp, dx_grid)
        if need_dw:
            rows = _stack_rows_of_input(x_flat, start, stop, kh, wp, WORKSPACE.take(padded, "conv.im2col", (kh, c, m)))
            rows = rows.reshape(kh * c, m)
            if start == 0:
                xp.matmul(stacked, rows.T, out=dw_flipped)
            else:
                part = WORKSPACE.take(padded, "conv.product", dw_flipped.shape)
                xp.matmul(stacked, rows.T, out=part)
                dw_flipped += part
    dx = None if dx_grid is None else dx_grid.reshape(c, n, hp, wp)
    dw = None
    if need_dw:  # [(j', o), (i', c)] -> (O, C, kh, kw), with i = kh-1-i', j = kw-1-j'
        dw = dw_flipped.reshape(kw, o, kh, c)[::-1, :, ::-1].transpose(1, 3, 2, 0)
    return dx, dw

r"""Winograd's minimal filtering F(2×2, 3×3): a 3×3 convolution with 16 multiplications per 4 outputs, not 36.

The 1-D identity
----------------
(Winograd, "Arithmetic Complexity of Computations", 1980; for convolutional networks Lavin &
Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.)  Two outputs of a 3-tap
correlation, ``y_0 = d_0 g_0 + d_1 g_1 + d_2 g_2`` and
``y_1 = d_1 g_0 + d_2 g_1 + d_3 g_2``, need 6 multiplications directly, but only 4 as ::

    m_0 = (d_0 - d_2) g_0                 m_1 = (d_1 + d_2) (g_0 + g_1 + g_2) / 2
    m_3 = (d_1 - d_3) g_2                 m_2 = (d_2 - d_1) (g_0 - g_1 + g_2) / 2
    y_0 = m_0 + m_1 + m_2                 y_1 = m_1 - m_2 - m_3

(expand: every cross term cancels).  In matrices, ``y = A^T [(G g) ⊙ (B^T d)]`` with ::

    B^T = | 1  0 -1  0 |     G = | 1    0    0  |     A^T = | 1  1  1  0 |
          | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
          | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
          | 0  1  0 -1 |         | 0    0    1  |

Nesting it in both directions gives the 2-D form for a 4×4 input tile ``d`` and a 3×3
kernel ``g``: the 2×2 outputs are ``Y = A^T [(G g G^T) ⊙ (B^T d B)] A``, 16 multiplications
instead of 36.  Neighbouring output tiles are 2 apart, so the input tiles overlap by 2.

A layer as 16 matrix products
-----------------------------
Sum over input channels and the ⊙ becomes a matrix product, one per point (ξ, ν) of the
4×4 transformed tile.  With ``U = G g G^T`` for every (o, c) (the weights, transformed once
per call) and ``V = B^T d B`` for every (c, tile) (the input)::

    M[ξν] = U[ξν] @ V[ξν]             (O × C) @ (C × tiles), for each of the 16 points
    Y_tile = A^T M_tile A             (the output transform, per output channel and tile)

The products do 16·O·C multiplications per tile of 4 outputs, 4·O·C per output, against
9·O·C for the direct convolution: 2.25 times fewer.  The transforms are additions only
(B and A hold 0 and ±1), done as whole-array additions of strided views of the tiles, so
they cost passes over memory: about 4 passes of the input's size in, and 2 of the
output's size out, each against 2·O (or 2·C) flops per value in the products.  So the
products dominate, and the method wins, where C and O are large -- SegNet's 256- and
512-channel layers -- and loses on 64 channels, where the transforms cost as much as the
multiplications saved.  (Measured: ``BENCHMARKS.md``.)  F(2×2, 3×3) is also accurate:
B, A and G hold only 0, ±1 and ±1/2, so float32 rounds about as the direct sum does;
larger tiles (F(4×4, 3×3), 36 products per 16 outputs) use fractions like 1/6 and 1/24 and
lose digits.

The backward, derived: every stage's transpose
----------------------------------------------
The forward is a chain of linear maps, ``Y = OutT(U ⊙· V)`` with ``V = InT(d)`` and
``U = WT(g)``, so each gradient is the transposed map applied to the gradient after it:

* ``dM_tile = A dY_tile A^T``: the output transform transposed (A is 4×2), for the dy
  of the 2×2 outputs of each tile (zero at the positions past the output, which the
  last row or column of tiles may cover);
* ``dU[ξν] = dM[ξν] @ V[ξν]^T`` (O × tiles) @ (tiles × C), summed over the tiles by the
  product itself, then ``dg = G^T dU G``: the weight gradient, back from the transformed
  domain;
* ``dV[ξν] = U[ξν]^T @ dM[ξν]`` (C × O) @ (O × tiles), then ``dd_tile = B dV_tile B^T``,
  *added* into the 4×4 window the tile was read from (the tiles overlap, so the windows'
  contributions sum: the transpose of reading overlapping windows).

``V`` is not kept from the forward (4 times the input's memory); the backward transforms
the kept padded input again, tile rows by tile rows, which costs one input transform.

Tiles and chunks
----------------
The output is cut into 2×2 tiles, ``th = ceil(Ho/2)`` by ``tw = ceil(Wo/2)`` per image, so
the padded input must be ``2·th + 2`` rows by ``2·tw + 2`` columns: the layer pads one more
zero row (column) at the bottom (right) when Ho (Wo) is odd
(:attr:`~minisegnet.layers.conv.Algorithm.grid_multiple`).  The tiles are taken a few tile
rows at a time, over the whole batch -- a *chunk* -- and within a chunk one row ξ of the
transformed tiles at a time: ``t = (B^T d)_ξ`` (one row combination of the input rows),
``V[ξ, :] = t B`` (its four column combinations), the four products ``M[ξ, ν]`` in one
batched ``matmul``, and ``M[ξ, :]`` added into the output transform's rows ``A^T M``
(``s``, 2 rows per tile) at once.  So V and M are never held for all 16 points: a chunk's
scratch is about ``2·C + 4·C + 4·O + 8·O`` values per tile, where V and M whole would be
``16·(C + O)``.  A chunk
holds as many tile rows as half of ``Conv2d.max_workspace_bytes`` allows, and at most
``Conv2d.max_block_columns`` tiles (the products' operands then come back from cache).
Every operand of the products is contiguous (a transposed one is a BLAS flag).
"""
from __future__ import annotations

import numpy as np

from ..workspace import MAP_SCRATCH, WORKSPACE

__all__ = ["winograd_unsupported", "transform_weights", "weight_gradient", "row_transform", "column_transform",
           "column_transform_transposed", "row_transform_transposed", "add_output_rows", "output_columns",
           "output_columns_transposed", "output_rows_transposed", "winograd_forward", "winograd_backward",
           "tile_chunks"]

#: G (4×3): the kernel transform, ``U = G g G^T``.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: ``G ⊗ G`` (16×9): ``(G g G^T)[ξ, ν] = sum_ij G[ξ, i] G[ν, j] g[i, j]``, so with the 3×3 kernel
#: read as a 9-vector the transform is one matrix product for all O·C kernels at once.
_G_KRON_G = np.kron(_G, _G)

# The scratch roles (:mod:`minisegnet.workspace`): the transformed tiles take the roles of the
# other algorithms' largest scratch arrays, which never run at the same time, so that this
# algorithm adds little to what the workspace holds: V[ξ] (and dV[ξ] in the backward) the
# stacked shifted copies' role, M[ξ] (dM[ξ]) the im2col blocks', the output transform's rows
# (and their gradient) the stacked-weights products'; only the input's transformed row t
# (and its gradient) has a role of its own.
_V_ROLE, _M_ROLE, _ROWS_ROLE, _S_ROLE = "conv.shifted", "conv.im2col", "conv.winograd_rows", "conv.products"

#: B^T and A^T as written above: which rows (columns) each transformed row (column) adds, with
#: which sign.  Every transform below is read off these two matrices.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def winograd_unsupported(layer) -> str | None:
    """Why ``layer`` cannot use F(2×2, 3×3) (None: it can): a 3×3 kernel with stride 1."""
    if layer.kernel_size != (3, 3):
        return f"needs a 3x3 kernel (this layer has {layer.kernel_size[0]}x{layer.kernel_size[1]})"
    if layer.stride != (1, 1):
        return f"needs stride 1 (this layer has stride {layer.stride})"
    return None


def transform_weights(xp, weight):
    """``U`` (16, O, C), contiguous: ``U[4ξ+ν] = (G g G^T)[ξ, ν]`` for every kernel ``g = weight[o, c]`` (3×3).

    (``U.reshape(4, 4, O, C)[ξ]`` is then the four (O × C) matrices of row ξ, contiguous.)

    One product, ``(G ⊗ G) @ g`` with the kernels as the 9-row columns of a (9 × O·C) matrix.
    """
    o, c = weight.shape[:2]
    g_kron_g = xp.asarray(_G_KRON_G, dtype=weight.dtype)
    return xp.matmul(g_kron_g, weight.reshape(o * c, 9).T).reshape(16, o, c)


def weight_gradient(xp, du):
    """``dg = G^T dU G`` for ``du`` (16, O, C): the weight gradient (O, C, 3, 3), ``(G ⊗ G)^T @ dU``."""
    o, c = du.shape[1:]
    g_kron_g = xp.asarray(_G_KRON_G, dtype=du.dtype)
    return xp.matmul(g_kron_g.T, du.reshape(16, o * c)).reshape(3, 3, o, c).transpose(2, 3, 0, 1)


def _terms(row) -> list[tuple[int, int]]:
    """``[(j, sign)]`` of the nonzero entries of a row of B^T or A^T, a positive one first."""
    return sorted(((j, int(v)) for j, v in enumerate(row) if v), key=lambda term: -term[1])


def _combine(xp, terms, operands, out):
    """``out = sum(sign · operands[j])`` over ``terms``: one ufunc per term, no temporaries."""
    (j, sign), rest = terms[0], terms[1:]
    if rest and sign > 0:
        (k, second), rest = rest[0], rest[1:]
        (xp.add if second > 0 else xp.subtract)(operands[j], operands[k], out=out)
    elif sign > 0:
        out[...] = operands[j]
    else:
        xp.negative(operands[j], out=out)
    for k, sign in rest:
        if sign > 0:
            out += operands[k]
        else:
            out -= operands[k]
    return out


def _accumulate(xp, terms, operand, into) -> None:
    """``into[j] += sign · operand`` over ``terms`` (each ``into[j]`` a view)."""
    for j, sign in terms:
        if sign > 0:
            into[j] += operand
        else:
            into[j] -= operand


def _tile_rows(rows, r: int):
    """Row ``a`` (0..3) of every tile: views ``rows[:, :, a : a + 2r : 2]`` of the padded rows under r tile rows."""
    return [rows[:, :, a : a + 2 * r : 2] for a in range(4)]


def _tile_columns(t, tw: int):
    """Column ``b`` (0..3) of every tile: views ``t[..., b : b + 2·tw : 2]``."""
    return [t[..., b : b + 2 * tw : 2] for b in range(4)]


# -- the input transform V = B^T d B, one row ξ of it at a time --------------------------------
def row_transform(xp, rows, xi: int, out):
    """``out`` (C, N, R, width) <- ``(B^T d)_ξ`` of every tile: two row views of ``rows`` (C, N, 2R + 2, width)."""
    return _combine(xp, _terms(_B_T[xi]), _tile_rows(rows, out.shape[2]), out)


def column_transform(xp, t, tw: int, out):
    """``out`` (4, C, N, R, tw) <- ``V[ξ, ν] = (t B)_ν`` for ν = 0..3, ``t = (B^T d)_ξ`` (C, N, R, width)."""
    columns = _tile_columns(t, tw)
    for nu in range(4):
        _combine(xp, _terms(_B_T[nu]), columns, out[nu])
    return out


def column_transform_transposed(xp, dv, dt):
    """``dt`` (C, N, R, width) <- the transpose of :func:`column_transform` applied to ``dv`` (4, C, N, R, tw).

    Zeroed first, then each ``dV[ν]`` added into the tile columns it was combined from;
    neighbouring tiles share two columns, so these are additions, one view at a time.
    """
    dt[...] = 0
    columns = _tile_columns(dt, dv.shape[-1])
    for nu in range(4):
        _accumulate(xp, _terms(_B_T[nu]), dv[nu], columns)
    return dt


def row_transform_transposed(xp, dt, xi: int, d_rows) -> None:
    """``d_rows`` (C, N, 2R + 2, width) += the transpose of :func:`row_transform` applied to ``dt``."""
    _accumulate(xp, _terms(_B_T[xi]), dt, _tile_rows(d_rows, dt.shape[2]))


# -- the output transform Y = A^T M A -----------------------------------------------------------
def add_output_rows(xp, m, xi: int, s, started: set) -> None:
    """``s[a] += A^T[a, ξ] · M[ξ]`` for ``m = M[ξ]`` (4, O, N, R, tw) into ``s`` (2, 4, O, N, R, tw).

    ``started`` holds the ``a`` already written (the first term of each is an assignment).
    """
    for a, sign in _terms(_A_T[:, xi]):
        if a in started:
            _accumulate(xp, [(a, sign)], m, s)
        else:
            _combine(xp, [(0, sign)], [m], s[a])
            started.add(a)


def output_columns(xp, s, out):
    """``out`` (O, N, 2R, 2·tw) <- ``Y[a, b] = (s A)_b``: the tiles' 2×2 outputs, written into their positions."""
    for a in range(2):
        for b in range(2):
            _combine(xp, _terms(_A_T[b]), s[a], out[:, :, a::2, b::2])
    return out


def output_columns_transposed(xp, dy_tiles, e):
    """``e`` (2, 4, O, N, R, tw) <- ``e[a, ν] = (A dY)`` along the tiles' columns; ``dy_tiles`` (O, N, 2R, 2·tw)."""
    dy = [[dy_tiles[:, :, a::2, b::2] for b in range(2)] for a in range(2)]
    for a in range(2):
        for nu in range(4):
            _combine(xp, _terms(_A_T[:, nu]), dy[a], e[a, nu])
    return e


def output_rows_transposed(xp, e, xi: int, out):
    """``dM[ξ] = sum_a A^T[a, ξ] e[a]`` (4, O, N, R, tw): a view of ``e`` where that is a single term."""
    terms = _terms(_A_T[:, xi])
    if terms == [(0, 1)] or terms == [(1, 1)]:
        return e[terms[0][0]]
    return _combine(xp, terms, e, out)


def tile_chunks(layer, th: int, per_tile_row: int, tiles_per_row: int):
    """``(ty0, ty1)``: runs of tile rows whose scratch (``per_tile_row`` bytes a tile row) fits the budget.

    The budget is half of ``Conv2d.max_workspace_bytes`` (the workspace keeps these arrays
    between calls, next to the other layers' scratch); also at most
    ``Conv2d.max_block_columns`` tiles (``tiles_per_row`` a tile row) per chunk when that is
    set; at least one tile row per chunk.
    """
    rows = max(1, layer.max_workspace_bytes // 2 // max(per_tile_row, 1))
    if layer.max_block_columns is not None:
        rows = min(rows, max(1, layer.max_block_columns // max(tiles_per_row, 1)))
    count = -(-th // rows)
    rows = -(-th // count)  # equal chunks
    return [(ty0, min(th, ty0 + rows)) for ty0 in range(0, th, rows)]


def _plan(layer, padded, ho: int, wo: int):
    c, n, hp, wp = padded.shape
    o = layer.out_channels
    th, tw = -(-ho // 2), -(-wo // 2)
    # a tile row's scratch: one transformed row of the input tiles, V[ξ] and M[ξ] (4 points each),
    # and the output transform's rows (8 per output channel)
    per_tile_row = padded.dtype.itemsize * n * (c * wp + 4 * c * tw + 12 * o * tw)
    return c, n, o, th, tw, tile_chunks(layer, th, per_tile_row, n * tw)


def winograd_forward(layer, xp, padded, ho: int, wo: int):
    """The output channel-major (O, N, Ho, Wo), a view of scratch, without the bias.

    ``padded`` (C, N, >= 2·th + 2, >= 2·tw + 2): the zero-padded input, with the extra zero
    row and column an odd Ho or Wo needs.  Per chunk and per row ξ of the transformed
    tiles: ``t = (B^T d)_ξ``, ``V[ξ] = t B``, ``M[ξ, ν] = U[ξ, ν] @ V[ξ, ν]`` (4 products in
    one batched call), added into the output transform's rows; then its columns.
    """
    c, n, o, th, tw, chunks = _plan(layer, padded, ho, wo)
    wp = padded.shape[3]
    u = transform_weights(xp, layer.weight.data).reshape(4, 4, o, c)
    y_grid = WORKSPACE.take(padded, MAP_SCRATCH, (o, n, 2 * th, 2 * tw))
    for ty0, ty1 in chunks:
        r = ty1 - ty0
        columns = n * r * tw
        rows = padded[:, :, 2 * ty0 : 2 * ty1 + 2]
        t = WORKSPACE.take(padded, _ROWS_ROLE, (c, n, r, wp))
        v = WORKSPACE.take(padded, _V_ROLE, (4, c, n, r, tw))
        m = WORKSPACE.take(padded, _M_ROLE, (4, o, n, r, tw))
        s = WORKSPACE.take(padded, _S_ROLE, (2, 4, o, n, r, tw))
        started = set()
        for xi in range(4):
            column_transform(xp, row_transform(xp, rows, xi, t), tw, v)
            xp.matmul(u[xi], v.reshape(4, c, columns), out=m.reshape(4, o, columns))
            add_output_rows(xp, m, xi, s, started)
        output_columns(xp, s, y_grid[:, :, 2 * ty0 : 2 * ty1])
    return y_grid[:, :, :ho, :wo]


def winograd_backward(layer, xp, dy, padded, need_dx: bool, need_dw: bool):
    """``(dx on the padded grid (C, N, Hp, Wp) or None, dW (O, C, 3, 3) or None)`` by the transposed stages.

    Per chunk: ``e = dY A^T`` along the tiles' columns, then per row ξ ``dM[ξ] = A e``;
    ``dU[ξ] += dM[ξ] @ V[ξ]^T`` (V transformed again from the kept input) and
    ``dV[ξ] = U[ξ]^T @ dM[ξ]``, taken back through the column and the row transform.
    """
    ho, wo = dy.shape[2], dy.shape[3]
    c, n, o, th, tw, chunks = _plan(layer, padded, ho, wo)
    wp = padded.shape[3]
    if need_dx:
        u_t = transform_weights(xp, layer.weight.data).reshape(4, 4, o, c).transpose(0, 1, 3, 2)
        dx_pad = WORKSPACE.take(padded, MAP_SCRATCH, padded.shape)
        dx_pad[...] = 0
    if need_dw:
        du = xp.empty((4, 4, o, c), dtype=padded.dtype)
    for ty0, ty1 in chunks:
        r = ty1 - ty0
        columns = n * r * tw
        # dy of the chunk's tiles, channel-major, zero where a tile covers positions past the output
        dy_tiles = WORKSPACE.take(padded, "conv.dy_grid", (o, n, 2 * r, 2 * tw))
        valid = min(ho, 2 * ty1) - 2 * ty0
        dy_tiles[:, :, valid:] = 0
        dy_tiles[:, :, :valid, wo:] = 0
        dy_tiles[:, :, :valid, :wo] = dy[:, :, 2 * ty0 : 2 * ty0 + valid].transpose(1, 0, 2, 3)
        e = output_columns_transposed(xp, dy_tiles, WORKSPACE.take(padded, _S_ROLE, (2, 4, o, n, r, tw)))
        rows = padded[:, :, 2 * ty0 : 2 * ty1 + 2]
        d_rows = dx_pad[:, :, 2 * ty0 : 2 * ty1 + 2] if need_dx else None
        t = WORKSPACE.take(padded, _ROWS_ROLE, (c, n, r, wp))
        v = WORKSPACE.take(padded, _V_ROLE, (4, c, n, r, tw))
        m = WORKSPACE.take(padded, _M_ROLE, (4, o, n, r, tw))
        for xi in range(4):
            dm = output_rows_transposed(xp, e, xi, m).reshape(4, o, columns)
            if need_dw:  # dU[ξ] = dM[ξ] @ V[ξ]^T, summed over the chunks
                column_transform(xp, row_transform(xp, rows, xi, t), tw, v)
                v_t = v.reshape(4, c, columns).transpose(0, 2, 1)
                if ty0 == 0:
                    xp.matmul(dm, v_t, out=du[xi])
                else:
                    du_part = WORKSPACE.take(padded, "conv.product", (4, o, c))
                    xp.matmul(dm, v_t, out=du_part)
                    du[xi] += du_part
            if need_dx:  # dV[ξ] = U[ξ]^T @ dM[ξ] (into V's buffer, used up), then back to the input rows
                xp.matmul(u_t[xi], dm, out=v.reshape(4, c, columns))
                row_transform_transposed(xp, column_transform_transposed(xp, v, t), xi, d_rows)
    dw = weight_gradient(xp, du.reshape(16, o, c)) if need_dw else None
    return (dx_pad if need_dx else None), dw

"""Conv2d's "winograd" algorithm (F(2×2, 3×3), :mod:`minisegnet.layers.conv_winograd`).

The identity itself on one tile, gradient checks (float64, central differences, random
upstream gradient, every input and parameter) over odd and even sizes, paddings and chunks
of tile rows, the definition and PyTorch over the same, a SegNet-sized layer in float32,
frozen parameters and ``needs_input_grad``, the bands of a no-grad forward, which layers
"auto" gives it, and a device run against NumPy's.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet.backend import to_device
from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import check_module
from minisegnet.layers import conv_winograd as winograd
from minisegnet.layers.conv import Conv2d

from conv_helpers import (assert_device_results_close, assert_frozen_gradients, definition, make_conv, run,
                          torch_conv)
from conv_helpers import assert_results_close as assert_close

# (N, C, O, H, W, padding, bias): even and odd output sizes (an odd one needs the extra zero row/column)
CASES = {
    "even-pad1": (2, 3, 4, 6, 8, 1, True),
    "odd-pad1": (2, 2, 3, 7, 5, 1, True),
    "pad0-odd": (1, 3, 2, 7, 9, 0, False),
    "pad2-rect": (3, 2, 2, 5, 4, 2, True),
    "one-tile": (1, 2, 2, 2, 2, 1, True),
}
#: How the tiles are taken: all tile rows at once, or chunks of one tile row (``max_block_columns``
#: caps the tiles of a chunk), or chunks cut by the workspace budget.
CHUNKS = ["one", "tile-rows", "budget"]


def set_chunks(conv, chunks: str) -> None:
    if chunks == "tile-rows":
        conv.max_block_columns = 1
    elif chunks == "budget":
        conv.max_workspace_bytes = 1  # at least one tile row per chunk


def winograd_conv(c, o, padding, bias, **kwargs):
    return make_conv(c, o, 3, 1, padding, bias, algorithm="winograd", **kwargs)


def test_the_one_dimensional_identity(rng):
    """F(2, 3): A^T [(G g) ⊙ (B^T d)] is the correlation of d (4 values) with g (3 taps)."""
    b_t = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
    a_t = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    y = a_t @ ((winograd._G @ g) * (b_t @ d))
    np.testing.assert_allclose(y, [d[0:3] @ g, d[1:4] @ g], rtol=1e-14)


def test_kernel_transform_and_its_transpose(rng):
    """U = G g G^T for every kernel, and weight_gradient is its exact transpose (<dU, U(g)> = <dg, g>)."""
    w = rng.standard_normal((3, 2, 3, 3))
    u = winograd.transform_weights(np, w)
    for o in range(3):
        for c in range(2):
            np.testing.assert_allclose(u[:, o, c].reshape(4, 4), winograd._G @ w[o, c] @ winograd._G.T, rtol=1e-14)
    du = rng.standard_normal(u.shape)
    np.testing.assert_allclose(np.sum(du * u), np.sum(winograd.weight_gradient(np, du) * w), rtol=1e-12)


def transformed_input(rows, tw):
    """V (4, 4, C, N, R, tw) of every tile, by the module's row and column transforms."""
    c, n, rr, width = rows.shape
    r = (rr - 2) // 2
    v = np.empty((4, 4, c, n, r, tw))
    for xi in range(4):
        winograd.column_transform(np, winograd.row_transform(np, rows, xi, np.empty((c, n, r, width))), tw, v[xi])
    return v


def transformed_output(m):
    """Y (O, N, 2R, 2·tw) of every tile from M (4, 4, O, N, R, tw), by the module's output transform."""
    o, n, r, tw = m.shape[2:]
    s, started = np.empty((2, 4, o, n, r, tw)), set()
    for xi in range(4):
        winograd.add_output_rows(np, m[xi], xi, s, started)
    return winograd.output_columns(np, s, np.empty((o, n, 2 * r, 2 * tw)))


def test_tile_transforms_are_the_matrix_products(rng):
    """Per tile, V = B^T d B (d its 4x4 input window) and Y = A^T M A."""
    b_t, a_t = winograd._B_T, winograd._A_T
    c, n, r, tw = 2, 2, 3, 4
    rows = rng.standard_normal((c, n, 2 * r + 2, 2 * tw + 3))  # one spare column: only 2·tw + 2 are read
    v = transformed_input(rows, tw)
    m = rng.standard_normal((4, 4, c, n, r, tw))
    y = transformed_output(m)
    for ch, image, ty, tx in [(0, 0, 0, 0), (1, 1, 2, 3), (0, 1, 1, 2)]:
        d = rows[ch, image, 2 * ty : 2 * ty + 4, 2 * tx : 2 * tx + 4]
        np.testing.assert_allclose(v[:, :, ch, image, ty, tx], b_t @ d @ b_t.T, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(y[ch, image, 2 * ty : 2 * ty + 2, 2 * tx : 2 * tx + 2],
                                   a_t @ m[:, :, ch, image, ty, tx] @ a_t.T, rtol=1e-13, atol=1e-13)


def test_each_transposed_transform_is_the_transpose(rng):
    """<T(a), b> = <a, T^T(b)> for every stage the backward runs through."""
    c, n, r, tw = 2, 2, 3, 4
    width = 2 * tw + 2
    rows = rng.standard_normal((c, n, 2 * r + 2, width))
    for xi in range(4):
        t = winograd.row_transform(np, rows, xi, np.empty((c, n, r, width)))
        dt = rng.standard_normal(t.shape)
        d_rows = np.zeros_like(rows)
        winograd.row_transform_transposed(np, dt, xi, d_rows)
        np.testing.assert_allclose(np.sum(t * dt), np.sum(rows * d_rows), rtol=1e-12)
        v = winograd.column_transform(np, t, tw, np.empty((4, c, n, r, tw)))
        dv = rng.standard_normal(v.shape)
        dt_back = winograd.column_transform_transposed(np, dv, np.empty_like(t))
        np.testing.assert_allclose(np.sum(v * dv), np.sum(t * dt_back), rtol=1e-12)
    m = rng.standard_normal((4, 4, c, n, r, tw))
    y = transformed_output(m)
    dy = rng.standard_normal(y.shape)
    e = winograd.output_columns_transposed(np, dy, np.empty((2, 4, c, n, r, tw)))
    dm = [winograd.output_rows_transposed(np, e, xi, np.empty((4, c, n, r, tw))) for xi in range(4)]
    np.testing.assert_allclose(np.sum(y * dy), sum(np.sum(m[xi] * dm[xi]) for xi in range(4)), rtol=1e-12)


GRADCHECKS = [(name, chunks) for name in CASES for chunks in CHUNKS]


@pytest.mark.parametrize("name, chunks", GRADCHECKS, ids=["-".join(g) for g in GRADCHECKS])
def test_gradcheck(name, chunks, rng):
    n, c, o, h, w, p, bias = CASES[name]
    conv = winograd_conv(c, o, p, bias)
    set_chunks(conv, chunks)
    reports = check_module(conv, rng.standard_normal((n, c, h, w)))
    assert [r.name for r in reports] == ["input[0]", "weight"] + (["bias"] if bias else [])
    assert [r.checked for r in reports] == [n * c * h * w, conv.weight.size] + ([o] if bias else [])


@pytest.mark.parametrize("name, chunks", GRADCHECKS, ids=["-".join(g) for g in GRADCHECKS])
def test_same_numbers_as_the_definition(name, chunks, rng):
    n, c, o, h, w, p, bias = CASES[name]
    conv = winograd_conv(c, o, p, bias)
    set_chunks(conv, chunks)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, o, *conv._output_size(h, w)))
    got = run(conv, x, dy)
    assert conv._forward_algorithm == "winograd"
    assert_close(got, definition(conv, x, dy), f"winograd/{chunks}")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_torch(name, dtype, torch, rng):
    n, c, o, h, w, p, bias = CASES[name]
    conv = winograd_conv(c, o, p, bias, dtype=dtype)
    set_chunks(conv, "tile-rows")
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal(conv.forward(x).shape).astype(dtype)
    got = run(conv, x, dy)
    assert all(g is None or g.dtype == dtype for g in got)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(got, torch_conv(torch, conv, x, dy), f"winograd/{np.dtype(dtype).name}", rtol=tolerance,
                 atol=tolerance)


@pytest.mark.torch
def test_seg_net_sized_layer_in_float32_matches_torch(torch, rng):
    """256 -> 256 channels on an odd 45x60 map, as in SegNet's encoder stage 4: float32 rounding stays small."""
    conv = winograd_conv(256, 256, 1, True, dtype=np.float32)
    x = rng.standard_normal((2, 256, 45, 60)).astype(np.float32)
    dy = rng.standard_normal((2, 256, 45, 60)).astype(np.float32)
    assert_close(run(conv, x, dy), torch_conv(torch, conv, x, dy), "winograd 256x45x60", rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("frozen", ["weight", "input", "both"])
def test_frozen_parameters_and_no_input_gradient(frozen, rng):
    conv = winograd_conv(3, 4, 1, True)
    x = rng.standard_normal((2, 3, 7, 6))
    dy = rng.standard_normal((2, 4, 7, 6))
    assert_frozen_gradients(conv, x, dy, frozen)


@pytest.mark.parametrize("band_columns", [1, 3 * 10, 10**6])
def test_no_grad_forward_in_bands(band_columns, rng):
    """Bands of one, three (odd: the extra zero row) and all output rows: the definition each time."""
    conv = winograd_conv(3, 4, 1, True)
    conv.max_band_columns = band_columns
    x = rng.standard_normal((2, 3, 9, 8))
    with no_grad():
        y = conv.forward(x)
    np.testing.assert_allclose(y, definition(conv, x, np.zeros((2, 4, 9, 8)))[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False])
def test_the_extra_row_and_column_are_zeros_not_stale_scratch(grad, rng):
    """An odd output with padding 0: the added zero row and column are written, never left as scratch.

    Scratch full of inf (a previous call's leftovers could be anything): reading it would
    raise under ``np.errstate(invalid="raise")`` (inf - inf) and spoil nothing else.
    """
    from minisegnet.workspace import WORKSPACE, clear_workspace

    conv = winograd_conv(3, 2, 0, True)
    conv.max_band_columns = 2 * 11  # bands of a few rows
    x = rng.standard_normal((2, 3, 9, 11))  # 7x9 output: odd both ways
    clear_workspace()
    for role in ("conv.padded", "conv.winograd_rows", "conv.shifted", "conv.im2col", "conv.products", "map"):
        WORKSPACE.take(x, role, (10**5,))[...] = np.inf
    with np.errstate(invalid="raise", over="raise"):
        if grad:
            y = conv.forward(x)
        else:
            with no_grad():
                y = conv.forward(x)
    np.testing.assert_allclose(y, definition(conv, x, np.zeros(y.shape))[0], rtol=1e-10, atol=1e-12)
    clear_workspace()


def test_layers_it_cannot_serve_say_why():
    with pytest.raises(ValueError, match=r"'winograd' needs a 3x3 kernel \(this layer has 5x5\)"):
        Conv2d(4, 4, 5, algorithm="winograd")
    with pytest.raises(ValueError, match=r"'winograd' needs stride 1"):
        Conv2d(4, 4, 3, stride=2, algorithm="winograd")


def test_auto_takes_it_for_wide_3x3_layers_on_numpy():
    """SegNet's 256- and 512-channel 3x3 layers; not the 64- and 128-channel ones, not other kernels."""
    assert Conv2d(256, 256, 3, padding=1).resolved_algorithm == "winograd"
    assert Conv2d(256, 512, 3, padding=1).resolved_algorithm == "winograd"
    assert Conv2d(512, 256, 3, padding=1).resolved_algorithm == "winograd"
    assert Conv2d(128, 256, 3, padding=1).resolved_algorithm == "tiled-im2col"
    assert Conv2d(256, 128, 3, padding=1).resolved_algorithm == "flat-flipped"
    assert Conv2d(512, 512, 5, padding=2).resolved_algorithm == "flat-flipped"
    assert Conv2d(512, 512, 3, stride=2).resolved_algorithm == "gathered"


GPU_DEVICE = "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_winograd_matches_numpy(dtype):
    """Forced on the device (where "auto" takes "tiled-im2col"): the same numbers as NumPy's run."""
    rng = np.random.default_rng(6)
    conv = winograd_conv(64, 32, 1, True, dtype=dtype)
    conv.max_block_columns = 200  # several chunks of tile rows
    x = rng.standard_normal((2, 64, 45, 61)).astype(dtype)
    dy = rng.standard_normal((2, 32, 45, 61)).astype(dtype)
    expected = run(conv, x, dy)
    dev = copy.deepcopy(conv).to(GPU_DEVICE)
    got = run(dev, to_device(x, GPU_DEVICE), to_device(dy, GPU_DEVICE))
    assert_device_results_close(got, expected, GPU_DEVICE, dtype)

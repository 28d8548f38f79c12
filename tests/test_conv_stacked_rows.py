"""Conv2d's "flat-stacked-rows" algorithm (:mod:`minisegnet.layers.conv_stacked_rows`).

The stacked weights' layout, the block planner, gradient checks (float64, central
differences, random upstream gradient, every input and parameter) over kernels, paddings
and blocks (one block, blocks of a few columns, blocks cut by the workspace budget), the
definition and PyTorch over the same, frozen parameters and ``needs_input_grad``, the
bands of a no-grad forward, scratch that is never read before it is written, which layers
and inputs "auto" gives it, and a device run against NumPy's.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet.backend import to_device
from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import check_module
from minisegnet.layers import conv_stacked_rows as stacked_rows
from minisegnet.layers.conv import Conv2d

from conv_helpers import (assert_device_results_close, assert_frozen_gradients, definition, make_conv, run,
                          torch_conv)
from conv_helpers import assert_results_close as assert_close

# (N, C, O, H, W, kernel, padding, bias)
CASES = {
    "7x7-same-odd": (2, 3, 2, 9, 7, 7, 3, True),
    "5x5-pad0": (1, 2, 3, 8, 10, 5, 0, False),
    "3x3-pad1": (3, 2, 2, 5, 6, 3, 1, True),
    "rect-kernel": (2, 2, 3, 6, 7, (3, 5), (1, 2), True),
    "1x1": (2, 3, 2, 4, 5, 1, 0, True),
    "kernel-as-large-as-input": (1, 2, 2, 5, 5, 5, 0, True),
}
#: How the columns are cut: one block; blocks of 7 columns (many blocks, each kernel row's
#: products spilling into the blocks before); blocks cut by the workspace budget down to the
#: shortest allowed (5 columns).
BLOCKS = ["one", "few-columns", "budget"]


def set_blocks(conv, blocks: str) -> None:
    conv.min_block_columns = 1
    if blocks == "one":
        conv.max_block_columns = None
    elif blocks == "few-columns":
        conv.max_block_columns = 7
    else:
        conv.max_block_columns = None
        conv.max_workspace_bytes = 1  # nothing fits: blocks of min_block_columns
        conv.min_block_columns = 5


def rows_conv(name, **kwargs):
    n, c, o, h, w, k, p, bias = CASES[name]
    return make_conv(c, o, k, 1, p, bias, algorithm="flat-stacked-rows", **kwargs), (n, c, h, w)


def test_stacked_weights_layout(rng):
    """``[(i, o), (j, c)] = W[o, c, i, j]``: kernel row i's weights are rows i·O .. i·O + O-1."""
    w = rng.standard_normal((3, 2, 4, 5))
    stacked = stacked_rows.stacked_row_weights(np, w)
    assert stacked.shape == (4 * 3, 5 * 2) and stacked.flags.c_contiguous
    for o, c, i, j in np.ndindex(*w.shape):
        assert stacked[i * 3 + o, j * 2 + c] == w[o, c, i, j]


def test_block_length_respects_every_limit():
    conv = Conv2d(2, 2, 3)
    conv.max_workspace_bytes, conv.min_block_columns, conv.max_block_columns = 1000, 4, 30
    assert stacked_rows.block_length(conv, 10**6, 10) == 30  # max_block_columns
    assert stacked_rows.block_length(conv, 10**6, 100) == 10  # the budget: 1000 // 100
    assert stacked_rows.block_length(conv, 10**6, 1000) == 4  # never below min_block_columns
    assert stacked_rows.block_length(conv, 3, 10) == 3  # never more than there are columns
    conv.max_block_columns = None
    assert stacked_rows.block_length(conv, 10**6, 10) == 100


GRADCHECKS = [(name, blocks) for name in CASES for blocks in BLOCKS]


@pytest.mark.parametrize("name, blocks", GRADCHECKS, ids=["-".join(g) for g in GRADCHECKS])
def test_gradcheck(name, blocks, rng):
    conv, x_shape = rows_conv(name)
    set_blocks(conv, blocks)
    reports = check_module(conv, rng.standard_normal(x_shape))
    bias = conv.bias is not None
    assert [r.name for r in reports] == ["input[0]", "weight"] + (["bias"] if bias else [])
    assert [r.checked for r in reports] == [int(np.prod(x_shape)), conv.weight.size] + ([conv.out_channels] if bias
                                                                                       else [])
    assert conv._forward_algorithm == "flat-stacked-rows"


@pytest.mark.parametrize("name, blocks", GRADCHECKS, ids=["-".join(g) for g in GRADCHECKS])
def test_same_numbers_as_the_definition(name, blocks, rng):
    conv, x_shape = rows_conv(name)
    set_blocks(conv, blocks)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal((x_shape[0], conv.out_channels, *conv._output_size(*x_shape[2:])))
    got = run(conv, x, dy)
    assert conv._forward_algorithm == "flat-stacked-rows"
    assert_close(got, definition(conv, x, dy), f"flat-stacked-rows/{blocks}")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_torch(name, dtype, torch, rng):
    conv, x_shape = rows_conv(name, dtype=dtype)
    set_blocks(conv, "few-columns")
    x = rng.standard_normal(x_shape).astype(dtype)
    dy = rng.standard_normal(conv.forward(x).shape).astype(dtype)
    got = run(conv, x, dy)
    assert all(g is None or g.dtype == dtype for g in got)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(got, torch_conv(torch, conv, x, dy), f"flat-stacked-rows/{np.dtype(dtype).name}", rtol=tolerance,
                 atol=tolerance)


@pytest.mark.torch
def test_seg_net_basic_sized_layer_in_float32_matches_torch(torch, rng):
    """7x7 64 -> 64 on 2x64x60x80, in blocks of the default length: float32 rounding stays small."""
    conv = make_conv(64, 64, 7, 1, 3, True, dtype=np.float32, algorithm="flat-stacked-rows")
    x = rng.standard_normal((2, 64, 60, 80)).astype(np.float32)
    dy = rng.standard_normal((2, 64, 60, 80)).astype(np.float32)
    assert_close(run(conv, x, dy), torch_conv(torch, conv, x, dy), "flat-stacked-rows 64x60x80", rtol=2e-4,
                 atol=2e-5)


@pytest.mark.parametrize("frozen", ["weight", "input", "both"])
def test_frozen_parameters_and_no_input_gradient(frozen, rng):
    conv, x_shape = rows_conv("7x7-same-odd")
    set_blocks(conv, "few-columns")
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal((x_shape[0], conv.out_channels, *x_shape[2:]))
    assert_frozen_gradients(conv, x, dy, frozen)


@pytest.mark.parametrize("band_columns", [1, 3 * 13, 10**6])
def test_no_grad_forward_in_bands(band_columns, rng, monkeypatch):
    """Bands of one, three and all output rows (the algorithm's own taller bands set aside): the definition."""
    monkeypatch.setattr(stacked_rows, "ROWS_PER_KERNEL_ROW", 1)  # band_rows 1: the bands max_band_columns makes
    conv, _ = rows_conv("7x7-same-odd")
    set_blocks(conv, "few-columns")
    conv.max_band_columns = band_columns
    x = rng.standard_normal((2, 3, 9, 7))
    with no_grad():
        y = conv.forward(x)
    np.testing.assert_allclose(y, definition(conv, x, np.zeros(y.shape))[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocks", ["one", "few-columns"])
def test_the_flat_correlation_and_the_columns_past_the_source(blocks, rng):
    """``out[:, u] = sum_ij W_ij src[:, u + i·Wp + j]`` where the window fits in ``src``; finite where it would not."""
    conv = Conv2d(2, 3, (3, 2))
    set_blocks(conv, blocks)
    w = rng.standard_normal((3, 2, 3, 2))
    src = rng.standard_normal((2, 40))
    row_stride, length = 6, 40
    out = np.full((3, length), np.nan)
    stacked_rows._correlate(np, conv, src, stacked_rows.stacked_row_weights(np, w), row_stride, out)
    reach = 2 * row_stride + 1  # the last tap (2, 1) reads this many columns further
    fits = src.shape[1] - reach
    for u in range(fits):
        expected = sum(w[:, :, i, j] @ src[:, u + i * row_stride + j] for i in range(3) for j in range(2))
        np.testing.assert_allclose(out[:, u], expected, rtol=1e-12, atol=1e-12, err_msg=f"column {u}")
    assert np.isfinite(out[:, fits:]).all()  # partial sums or zeros, never the nan it was filled with


def test_its_bands_are_tall_enough(monkeypatch, rng):
    """A no-grad forward gives it bands of up to 19·(kh-1) output rows (its grid 20·(kh-1) rows), where
    the other algorithms get ``max_band_columns`` positions (a few rows); same numbers either way."""
    assert stacked_rows.stacked_rows_band_rows(Conv2d(2, 2, 7)) == 114
    assert stacked_rows.stacked_rows_band_rows(Conv2d(2, 2, (3, 5))) == 38
    assert stacked_rows.stacked_rows_band_rows(Conv2d(2, 2, 1)) == 1
    x = rng.standard_normal((2, 2, 250, 40))  # padded rows 46 wide; 250 output rows
    outputs = {}
    for algorithm in ("flat-flipped", "flat-stacked-rows"):
        conv = make_conv(2, 3, 7, 1, 3, True, algorithm=algorithm)
        conv.max_band_columns = 10 * 46  # 10 rows per band by the positions alone
        rows, original = [], conv._padded_band

        def spy(xp, x, n0, n1, r0, r1, multiple, _original=original, _rows=rows):
            _rows.append(r1 - r0)
            return _original(xp, x, n0, n1, r0, r1, multiple)

        monkeypatch.setattr(conv, "_padded_band", spy)
        with no_grad():
            outputs[algorithm] = conv.forward(x)
        assert sum(rows) == 2 * 250
        assert set(rows) == ({10} if algorithm == "flat-flipped" else {84, 82}), (algorithm, rows)  # 84 + 84 + 82
    np.testing.assert_allclose(outputs["flat-stacked-rows"], outputs["flat-flipped"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocks", ["one", "few-columns"])
@pytest.mark.parametrize("grad", [True, False])
def test_scratch_is_written_before_it_is_read(grad, blocks, rng):
    """No zeroing of the output first: kernel row 0 assigns, the others add later (module docstring).

    Every scratch role is filled with inf first (a previous call's leftovers could be anything):
    a read before a write would give inf or nan (inf - inf raises under ``np.errstate``).
    """
    from minisegnet.workspace import WORKSPACE, clear_workspace

    conv, x_shape = rows_conv("5x5-pad0")
    set_blocks(conv, blocks)
    conv.max_band_columns = 2 * 10
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal((x_shape[0], conv.out_channels, *conv._output_size(*x_shape[2:])))
    expected = definition(conv, x, dy)
    clear_workspace()
    for role in ("conv.padded", "conv.shifted", "conv.products", "conv.im2col", "conv.product", "conv.dy_grid", "map"):
        WORKSPACE.take(x, role, (10**5,))[...] = np.inf
    with np.errstate(invalid="raise", over="raise"):
        if grad:
            conv.zero_grad()
            y = conv.forward(x)
            dx = conv.backward(dy)
            np.testing.assert_allclose(dx, expected[1], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(conv.weight.grad, expected[2], rtol=1e-10, atol=1e-12)
        else:
            with no_grad():
                y = conv.forward(x)
    np.testing.assert_allclose(y, expected[0], rtol=1e-10, atol=1e-12)
    clear_workspace()


def test_layers_it_cannot_serve_say_why():
    with pytest.raises(ValueError, match=r"'flat-stacked-rows' needs stride 1 \(this layer has stride \(2, 2\)\)"):
        Conv2d(4, 4, 7, stride=2, algorithm="flat-stacked-rows")


def test_auto_takes_it_for_large_kernels_on_tall_inputs():
    """SegNet-Basic's 7x7 64 -> 64 layers at 180x240, not at 90x120; never 3x3, C < O, O < 32, stride 2."""
    conv = Conv2d(64, 64, 7, padding=3)
    tall = 20 * 6 - 2 * 3  # exactly ROWS_PER_KERNEL_ROW · (kh-1) padded rows
    assert stacked_rows.ROWS_PER_KERNEL_ROW == 20
    assert conv.algorithm_for((4, 64, 180, 240)) == "flat-stacked-rows"
    assert conv.algorithm_for((1, 64, tall, 30)) == "flat-stacked-rows"
    assert conv.algorithm_for((1, 64, tall - 1, 30)) == "flat-flipped"
    assert conv.algorithm_for((4, 64, 90, 120)) == "flat-flipped"
    assert conv.algorithm_for(None) == conv.resolved_algorithm == "flat-flipped"  # size unknown: no forward yet
    conv.forward(np.zeros((1, 64, tall, 8), np.float32))
    assert conv.resolved_algorithm == conv._forward_algorithm == "flat-stacked-rows"  # the last forward's size
    with no_grad():
        conv.forward(np.zeros((1, 64, 10, 8), np.float32))
    assert conv.resolved_algorithm == "flat-flipped"
    assert Conv2d(64, 64, 5, padding=2).algorithm_for((1, 64, 80, 8)) == "flat-stacked-rows"  # 5x5: 80 rows
    assert Conv2d(64, 64, 5, padding=2).algorithm_for((1, 64, 75, 8)) == "flat-flipped"
    assert Conv2d(64, 64, 3, padding=1).algorithm_for((4, 64, 360, 480)) == "flat-flipped"
    assert Conv2d(64, 64, (7, 3), padding=(3, 1)).algorithm_for((4, 64, 360, 480)) == "flat-flipped"
    assert Conv2d(3, 64, 7, padding=3).algorithm_for((4, 3, 180, 240)) == "tiled-im2col"
    assert Conv2d(64, 11, 7, padding=3).algorithm_for((4, 64, 180, 240)) == "flat-stacked-weights"
    assert Conv2d(64, 64, 7, stride=2, padding=3).algorithm_for((4, 64, 180, 240)) == "gathered"
    asked = Conv2d(64, 64, 7, padding=3, algorithm="flat-scatter")
    assert asked.algorithm_for((4, 64, 180, 240)) == "flat-scatter"  # an explicit choice is kept


GPU_DEVICE = "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_stacked_rows_matches_numpy(dtype):
    """Forced on the device (where "auto" takes "tiled-im2col"): the same numbers as NumPy's run."""
    rng = np.random.default_rng(7)
    conv = make_conv(32, 32, 7, 1, 3, True, dtype=dtype, algorithm="flat-stacked-rows")
    conv.max_block_columns = 700  # several blocks
    x = rng.standard_normal((2, 32, 45, 61)).astype(dtype)
    dy = rng.standard_normal((2, 32, 45, 61)).astype(dtype)
    expected = run(conv, x, dy)
    dev = copy.deepcopy(conv).to(GPU_DEVICE)
    got = run(dev, to_device(x, GPU_DEVICE), to_device(dy, GPU_DEVICE))
    assert_device_results_close(got, expected, GPU_DEVICE, dtype)

"""Conv2d's newer algorithms ("tiled-im2col", "flat-stacked-weights"), their tiles and blocks, and "auto".

The generic checks of every algorithm (the definition over random shapes, PyTorch over
random shapes, grad modes, bad input) live in ``test_conv.py`` and pick these up through
``ALGORITHMS``.  Here: gradient checks over the *tilings* (one tile, whole images per
tile, rows per tile, one row per tile), equality with the other algorithms, PyTorch
parity of grads in float32 and float64, the tile planner's rules, that every GEMM operand
handed to the array module is contiguous (what CuPy's matmul needs to skip a copy), and
what "auto" picks on NumPy and on CuPy; for "flat-stacked-weights" (the forward for few
output channels) gradient checks, the definition and PyTorch over one block and many.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet.backend import to_device
from minisegnet.gradcheck import check_module
from minisegnet.layers import conv as conv_module
from minisegnet.layers.conv import ALGORITHMS, Conv2d
from minisegnet.layers.conv_tiling import equal_blocks, flat_windows, output_tiles, plan_output_tiles, plan_tiling

from conv_helpers import assert_device_results_close, definition, run, torch_conv
from conv_helpers import assert_results_close as assert_close
from conv_helpers import make_conv as _make_conv

TILED = ["tiled-im2col"]


def make_conv(*args, algorithm="tiled-im2col", **kwargs):
    return _make_conv(*args, algorithm=algorithm, **kwargs)


def tiles_of(conv, x_shape):
    """``(images, rows)`` per tile that the layer's forward uses for an input of ``x_shape``."""
    n, c, h, w = x_shape
    ho, wo = conv._output_size(h, w)
    kh, kw = conv.kernel_size
    column_bytes = kh * kw * c * conv.weight.data.dtype.itemsize
    budget = conv.max_workspace_bytes
    if conv.max_tile_columns is not None:
        budget = min(budget, conv.max_tile_columns * column_bytes)
    return plan_output_tiles(n, ho, wo, column_bytes, budget)


def set_tiles(conv, x_shape, tiling):
    """"one": all of the output in one tile; "images": whole images, several tiles;
    "rows": several rows of one image per tile; "row": one output row per tile."""
    n, c, h, w = x_shape
    ho, wo = conv._output_size(h, w)
    conv.max_tile_columns = {"one": n * ho * wo, "images": 2 * ho * wo, "rows": 2 * wo, "row": 1}[tiling]
    images, rows = tiles_of(conv, x_shape)
    tiles = len(list(output_tiles(n, ho, images, rows)))
    expected = {"one": (n, ho, 1), "images": (min(n, 2), ho, -(-n // 2)), "rows": (1, min(2, ho), n * -(-ho // 2)),
                "row": (1, 1, n * ho)}[tiling]
    assert (images, rows, tiles) == expected, (tiling, images, rows, tiles)


# (N, C, O, H, W, kernel, stride, padding, bias)
CASES = {
    "3x3-pad1": (3, 2, 3, 5, 6, 3, 1, 1, True),
    "7x7-same-odd": (2, 2, 3, 7, 9, 7, 1, 3, True),
    "C<O-5x5": (3, 1, 4, 6, 5, 5, 1, 2, True),
    "stride2-pad1-odd": (3, 2, 3, 7, 9, 3, 2, 1, True),
    "stride3-nobias": (2, 2, 2, 9, 8, 5, 3, 2, False),
    "rect-kernel-mixed-stride": (3, 2, 3, 6, 7, (2, 3), (1, 2), (1, 0), True),
}
TILINGS = ["one", "images", "rows", "row"]


def usable(algorithm, case):
    return ALGORITHMS[algorithm].unsupported(Conv2d(1, 1, 1, case[6])) is None


GRADCHECKS = [(name, a, t) for name, case in CASES.items() for a in TILED for t in TILINGS if usable(a, case)]


@pytest.mark.parametrize("name, algorithm, tiling", GRADCHECKS, ids=["-".join(g) for g in GRADCHECKS])
def test_gradcheck_over_tilings(name, algorithm, tiling, rng):
    """Central differences in float64, random upstream gradient, every input element and parameter."""
    n, c, o, h, w, k, s, p, bias = CASES[name]
    conv = make_conv(c, o, k, s, p, bias, algorithm=algorithm)
    set_tiles(conv, (n, c, h, w), tiling)
    reports = check_module(conv, rng.standard_normal((n, c, h, w)))
    assert [r.name for r in reports] == ["input[0]", "weight"] + (["bias"] if bias else [])
    assert [r.checked for r in reports] == [n * c * h * w, conv.weight.size] + ([o] if bias else [])


EQUALITY = [(name, t) for name in CASES for t in TILINGS]


@pytest.mark.parametrize("name, tiling", EQUALITY, ids=["-".join(e) for e in EQUALITY])
def test_same_numbers_as_the_definition_and_every_other_algorithm(name, tiling, rng):
    n, c, o, h, w, k, s, p, bias = CASES[name]
    x = rng.standard_normal((n, c, h, w))
    probe = make_conv(c, o, k, s, p, bias)
    dy = rng.standard_normal((n, o, *probe._output_size(h, w)))
    expected = definition(probe, x, dy)
    others = [a for a in ALGORITHMS if usable(a, CASES[name])]
    assert "tiled-im2col" in others and len(others) >= 2  # stride 1: all five; stride > 1: with "gathered"
    for algorithm in others:
        conv = make_conv(c, o, k, s, p, bias, algorithm=algorithm)
        if algorithm in TILED:
            set_tiles(conv, x.shape, tiling)
        got = run(conv, x, dy)
        assert conv._forward_algorithm == algorithm
        assert_close(got, expected, f"{algorithm}/{tiling}")


PARITY = [(name, a) for name, case in CASES.items() for a in TILED if usable(a, case)]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, algorithm", PARITY, ids=["-".join(c) for c in PARITY])
def test_parity_with_torch(name, algorithm, dtype, torch, rng):
    """torch.nn.functional.conv2d and its three gradients, one tiling that cuts rows."""
    n, c, o, h, w, k, s, p, bias = CASES[name]
    conv = make_conv(c, o, k, s, p, bias, dtype=dtype, algorithm=algorithm)
    set_tiles(conv, (n, c, h, w), "rows")
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal(conv.forward(x).shape).astype(dtype)
    expected = torch_conv(torch, conv, x, dy)
    got = run(conv, x, dy)
    assert all(g is None or g.dtype == dtype for g in got)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(got, expected, f"{algorithm}/{np.dtype(dtype).name}", rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("algorithm, o", [("tiled-im2col", 64), ("flat-flipped", 64), ("flat-stacked-weights", 11)])
def test_seg_net_sized_layer_in_float32_matches_torch(algorithm, o, torch, rng):
    """7x7 layers on a map that the class defaults cut into many tiles or blocks."""
    n, c, h, w = 2, 64, 40, 120
    conv = make_conv(c, o, 7, 1, 3, dtype=np.float32, algorithm=algorithm)
    if algorithm == "tiled-im2col":
        images, rows = tiles_of(conv, (n, c, h, w))
        assert images == 1 and rows < h  # the class default cuts rows
    else:  # flat grid of (n-1)·Hp·Wp + (Ho-1)·Wp + Wo columns, blocks of at most 2048 (flat) or by the budget
        length = (n - 1) * 46 * 126 + 39 * 126 + 120
        assert length > Conv2d.max_block_columns
        if algorithm == "flat-stacked-weights":
            conv.max_workspace_bytes = 49 * o * 4 * (3000 + 6 * 126 + 6)  # blocks of 3000 columns
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n, o, h, w)).astype(np.float32)
    expected = torch_conv(torch, conv, x, dy)
    assert_close(run(conv, x, dy), expected, "float32 7x7", rtol=1e-4, atol=1e-5)


STACKED = [(name, blocks) for name, case in CASES.items() if usable("flat-stacked-weights", case)
           for blocks in ["one", "many"]]


def set_stacked_blocks(conv, blocks):
    """"one": the default budget (one block on test-sized maps); "many": blocks of 3 columns."""
    if blocks == "many":
        conv.min_block_columns, conv.max_workspace_bytes = 3, 0


@pytest.mark.parametrize("name, blocks", STACKED, ids=["-".join(c) for c in STACKED])
def test_stacked_weights_gradcheck_and_definition(name, blocks, rng):
    n, c, o, h, w, k, s, p, bias = CASES[name]
    conv = make_conv(c, o, k, s, p, bias, algorithm="flat-stacked-weights")
    set_stacked_blocks(conv, blocks)
    x = rng.standard_normal((n, c, h, w))
    reports = check_module(conv, x)
    assert [r.checked for r in reports] == [n * c * h * w, conv.weight.size] + ([o] if bias else [])
    dy = rng.standard_normal((n, o, *conv._output_size(h, w)))
    assert_close(run(conv, x, dy), definition(conv, x, dy), f"stacked-weights/{blocks}")
    if blocks == "many":  # the scratch holds the products of 3 columns (and the reach), not of the whole grid
        from minisegnet.workspace import WORKSPACE, clear_workspace
        clear_workspace()
        conv.forward(x)
        products = [a for key, a in WORKSPACE.arrays().items() if key[-1] == "conv.products"]
        reach = (conv.kernel_size[0] - 1) * (w + 2 * conv.padding[1]) + conv.kernel_size[1] - 1
        assert [a.size for a in products] == [int(np.prod(conv.kernel_size)) * o * (3 + reach)]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, blocks", STACKED, ids=["-".join(c) for c in STACKED])
def test_stacked_weights_parity_with_torch(name, blocks, dtype, torch, rng):
    n, c, o, h, w, k, s, p, bias = CASES[name]
    conv = make_conv(c, o, k, s, p, bias, dtype=dtype, algorithm="flat-stacked-weights")
    set_stacked_blocks(conv, blocks)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal(conv.forward(x).shape).astype(dtype)
    expected = torch_conv(torch, conv, x, dy)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(run(conv, x, dy), expected, f"stacked/{np.dtype(dtype).name}", rtol=tolerance, atol=tolerance)


# -- the planners -------------------------------------------------------------------------
def test_plan_output_tiles():
    """Whole images when one fits (in equal tiles), else equal runs of rows; at least one row."""
    column = 100  # bytes per output position
    assert plan_output_tiles(4, 10, 12, column, 10**9) == (4, 10)  # everything in one tile
    assert plan_output_tiles(5, 10, 12, column, 2 * 120 * column) == (2, 10)  # 2 images a tile: 2 + 2 + 1
    assert plan_output_tiles(5, 10, 12, column, 4 * 120 * column) == (3, 10)  # 4 fit, but 3 + 2 is even
    assert plan_output_tiles(4, 10, 12, column, 7 * 12 * column) == (1, 5)  # 7 rows fit: 5 + 5, not 7 + 3
    assert plan_output_tiles(4, 10, 12, column, 0) == (1, 1)  # no budget: one row per tile
    assert list(output_tiles(5, 10, 2, 10)) == [(0, 2, 0, 10), (2, 4, 0, 10), (4, 5, 0, 10)]
    assert list(output_tiles(2, 5, 1, 3)) == [(0, 1, 0, 3), (0, 1, 3, 5), (1, 2, 0, 3), (1, 2, 3, 5)]


def test_image_ranges_skip_the_garbage_between_images():
    from minisegnet.layers.conv_tiling import image_ranges
    assert image_ranges(3, 100, 0, 57) == [(0, 57), (100, 157), (200, 257)]
    assert image_ranges(1, 100, 20, 90) == [(20, 90)]


def test_max_block_columns_cuts_the_flat_blocks(rng):
    """The flat algorithms' longest block (cache-sized by default) tiles the columns, and changes nothing."""
    # 49 equal blocks of at most 2048 columns
    assert plan_tiling(7, 64, 100_000, 1_476, 4, 64 * 2**20, 1024, 2048) == (7, -(-100_000 // 49))
    assert plan_tiling(7, 64, 100_000, 1_476, 4, 64 * 2**20, 1024) == plan_tiling(7, 64, 100_000, 1_476, 4,
                                                                                 64 * 2**20, 1024, None)
    n, c, o, h, w, k, p = 2, 3, 4, 9, 11, 5, 2
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, o, h, w))
    for algorithm in ["flat-flipped", "flat-scatter", "flat-stacked-weights"]:
        conv = make_conv(c, o, k, padding=p, algorithm=algorithm)
        conv.min_block_columns, conv.max_block_columns = 1, 7
        assert_close(run(conv, x, dy), definition(conv, x, dy), algorithm)


def test_equal_blocks():
    assert equal_blocks(0, 10, None) == [(0, 10)]
    assert equal_blocks(5, 9, 4) == [(5, 9)]
    assert equal_blocks(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]  # the fewest blocks of at most 4
    assert equal_blocks(100, 107, 3) == [(100, 103), (103, 106), (106, 107)]


def test_flat_windows_copy_each_stretch_once_and_multiply_it_in_short_blocks(rng, monkeypatch):
    """One stacked copy per stretch (the budget); its blocks of at most max_block columns are views of it."""
    from minisegnet.layers import conv_tiling
    copies = []
    take = conv_tiling.WORKSPACE.take

    def counted_take(like, role, shape, dtype=None):
        copies.append((role, shape))
        return take(like, role, shape, dtype)

    monkeypatch.setattr(conv_tiling.WORKSPACE, "take", counted_take)
    rows, kh, kw, wp = 3, 3, 3, 10
    halo = (kh - 1) * wp
    src = rng.standard_normal((rows, 200))
    ranges = [(0, 70), (100, 165)]
    budget = kw * rows * src.itemsize * (40 + halo)  # room for a stretch of 40 columns per copy
    covered = {}
    for start, stop, i, j0, gg, cols in flat_windows(src, (kh, kw), wp, ranges, budget, min_block=1, max_block=15):
        assert gg == kw and j0 == 0 and 0 < stop - start <= 15
        for jj in range(gg):  # the stacked rows are the source under offset (i, jj); valid until the next step
            np.testing.assert_array_equal(cols[jj * rows : (jj + 1) * rows],
                                          src[:, start + i * wp + jj : stop + i * wp + jj])
        covered.setdefault(i, []).append((start, stop))
    # the budget's 40 columns cut each range into equal stretches of 35 (the second range: 35 + 30) ...
    for i in range(kh):  # ... and every kernel row sees every column once, in order, in blocks of <= 15
        assert covered[i] == [(0, 12), (12, 24), (24, 35), (35, 47), (47, 59), (59, 70),
                              (100, 112), (112, 124), (124, 135), (135, 150), (150, 165)]
    # one copy per stretch, each with the halo, not one per block
    assert copies == [("conv.shifted", (kw, rows, 35 + halo))] * 3 + [("conv.shifted", (kw, rows, 30 + halo))]
    # max_stretch shortens the copies below what the budget allows: stretches of 18 (70 = 18 + 18 + 18 + 16)
    copies.clear()
    blocks = [(start, stop) for start, stop, i, *_ in flat_windows(src, (kh, kw), wp, ranges, budget, min_block=1,
                                                                   copy=True, max_block=15, max_stretch=20) if i == 0]
    assert [shape[2] - halo for _, shape in copies] == [18, 18, 18, 16, 18, 18, 18, 11]
    assert blocks[:4] == [(0, 9), (9, 18), (18, 27), (27, 36)] and blocks[-1] == (154, 165)


# -- contiguous GEMM operands (what CuPy needs) ---------------------------------------------
class StrictArrayModule:
    """NumPy, except that ``matmul`` refuses an operand or ``out`` that cuBLAS could not take as it is.

    C-contiguous is a plain matrix, F-contiguous a transposed one (a flag to cuBLAS);
    anything else ``cupy.matmul`` would first copy.  Like CuPy, it is not ``numpy``.
    """

    def __init__(self):
        self.products = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, out=None):
        for what, array in (("a", a), ("b", b), ("out", out)):
            if array is not None and not (array.flags.c_contiguous or array.flags.f_contiguous):
                raise AssertionError(f"non-contiguous GEMM operand {what}: shape {array.shape}, "
                                     f"strides {array.strides}")
        self.products += 1
        return np.matmul(a, b, out=out)


@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("name", ["7x7-same-odd", "stride2-pad1-odd", "rect-kernel-mixed-stride"])
def test_tiled_im2col_hands_only_contiguous_operands_to_matmul(name, tiling, monkeypatch, rng):
    n, c, o, h, w, k, s, p, bias = CASES[name]
    x = rng.standard_normal((n, c, h, w))
    conv = make_conv(c, o, k, s, p, bias)
    dy = rng.standard_normal((n, o, *conv._output_size(h, w)))
    expected = definition(conv, x, dy)
    strict = StrictArrayModule()
    monkeypatch.setattr(conv_module, "get_array_module", lambda array: strict)
    assert conv.resolved_algorithm == "tiled-im2col"  # what "auto" picks off NumPy, too
    conv.algorithm = "auto"
    set_tiles(conv, x.shape, tiling)  # the plan under NumPy's rule (the tile cap) ...
    # ... and off NumPy only the budget cuts the tiles: make it the same size
    conv.max_workspace_bytes = conv.max_tile_columns * int(np.prod(conv.kernel_size)) * c * x.itemsize
    got = run(conv, x, dy)
    assert conv._forward_algorithm == "tiled-im2col" and strict.products > 0
    assert_close(got, expected, f"strict/{tiling}")


def test_the_strict_module_catches_the_flat_views(monkeypatch, rng):
    """The flat algorithms hand shifted column views to matmul: the check above can fail."""
    conv = make_conv(3, 4, 3, padding=1, algorithm="flat-flipped")
    monkeypatch.setattr(conv_module, "get_array_module", lambda array: StrictArrayModule())
    with pytest.raises(AssertionError, match="non-contiguous GEMM operand"):
        run(conv, rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((2, 4, 6, 7)))


# -- "auto" ---------------------------------------------------------------------------------
def test_auto_rule_on_numpy():
    assert Conv2d(3, 64, 7, padding=3).resolved_algorithm == "tiled-im2col"  # C < O
    assert Conv2d(64, 128, 3, padding=1).resolved_algorithm == "tiled-im2col"
    assert Conv2d(64, 64, 7, padding=3).resolved_algorithm == "flat-flipped"  # C >= O
    assert Conv2d(64, 11, 7, padding=3).resolved_algorithm == "flat-stacked-weights"  # O < 32
    assert Conv2d(64, 31, 3, padding=1).resolved_algorithm == "flat-stacked-weights"
    assert Conv2d(64, 32, 3, padding=1).resolved_algorithm == "flat-flipped"
    assert Conv2d(64, 11, 1).resolved_algorithm == "flat-flipped"  # 1x1: the same GEMM, no shifted sum
    assert Conv2d(64, 64, 3, stride=2).resolved_algorithm == "gathered"


@pytest.mark.parametrize("shape", [(3, 64, 7, 1), (64, 64, 7, 1), (64, 11, 3, 1), (64, 64, 3, 2)])
def test_auto_takes_tiled_im2col_off_numpy(shape, monkeypatch):
    """On CuPy (any array module that is not NumPy, read from the weight) "auto" is "tiled-im2col"."""
    c, o, k, s = shape
    conv = Conv2d(c, o, k, s)
    numpy_choice = conv.resolved_algorithm
    monkeypatch.setattr(conv_module, "get_array_module", lambda array: StrictArrayModule())
    assert conv.algorithm == "auto" and conv.resolved_algorithm == "tiled-im2col"
    conv.algorithm = "flat-flipped" if s == 1 else "gathered"  # still overridable
    assert conv.resolved_algorithm == conv.algorithm
    monkeypatch.undo()
    conv.algorithm = "auto"
    assert conv.resolved_algorithm == numpy_choice


def test_tile_cap_bounds_the_workspace(rng):
    """The im2col block is one tile's: max_tile_columns · kh·kw·C values, not the whole matrix."""
    from minisegnet.workspace import WORKSPACE, clear_workspace
    clear_workspace()
    n, c, o, h, w = 2, 4, 3, 12, 10
    conv = make_conv(c, o, 3, padding=1, dtype=np.float32)
    conv.max_tile_columns = 20  # two rows of 10
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    run(conv, x, rng.standard_normal((n, o, h, w)).astype(np.float32))
    im2col = [a for key, a in WORKSPACE.arrays().items() if key[-1] == "conv.im2col"]
    assert len(im2col) == 1 and im2col[0].size == 9 * c * 20
    clear_workspace()


# -- on a GPU -------------------------------------------------------------------------------
GPU_DEVICE = "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(2, 64, 64, 45, 61, 7, 1, 3), (2, 16, 8, 45, 61, 7, 2, 3),
                                  (2, 3, 64, 90, 120, 7, 1, 3)])
def test_gpu_tiled_im2col_matches_numpy(case, dtype):
    """Several tiles on the device (a budget of a few rows): the same numbers as NumPy's run."""
    n, c, o, h, w, k, s, p = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    conv = make_conv(c, o, k, s, p, dtype=dtype, algorithm="auto")
    dy = rng.standard_normal((n, o, *conv._output_size(h, w))).astype(dtype)
    conv.max_workspace_bytes = 3 * conv._output_size(h, w)[1] * k * k * c * np.dtype(dtype).itemsize
    expected = run(conv, x, dy)
    dev = copy.deepcopy(conv).to(GPU_DEVICE)
    assert dev.resolved_algorithm == ("tiled-im2col" if GPU_DEVICE != "cpu" else conv.resolved_algorithm)
    got = run(dev, to_device(x, GPU_DEVICE), to_device(dy, GPU_DEVICE))
    assert_device_results_close(got, expected, GPU_DEVICE, dtype)

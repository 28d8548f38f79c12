"""Conv2d: the definition, every algorithm and tiling, gradient checks, PyTorch parity, grad modes, bad input.

The reference is :mod:`minisegnet.reference` (``conv2d`` and ``conv2d_backward``, loops
over output pixels, float64).  Every value test uses a *random* upstream gradient: with
all ones a backward that routes gradients to the wrong pixel can still add up right.
Bias gradients are checked on a conv alone, where they are far from 0 (behind a
BatchNorm the true bias gradient is 0 and any check of it passes).
"""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisegnet import reference
from minisegnet.backend import to_device
from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import check_module
from minisegnet.layers import conv as conv_module
from minisegnet.layers.conv import ALGORITHMS, Conv2d, clear_workspace
from minisegnet.layers.conv_tiling import plan_tiling
from minisegnet.workspace import WORKSPACE

from conv_helpers import assert_device_results_close, assert_results_close, definition, make_conv, run


# -- helpers -------------------------------------------------------------------------------
def algorithms_for(stride) -> list[str]:
    """The algorithm names that can serve a layer with this stride ("auto" first)."""
    probe = Conv2d(1, 1, 1, stride)
    return ["auto"] + [name for name, spec in ALGORITHMS.items() if spec.unsupported(probe) is None]


def forward_plan_arguments(conv, x_shape):
    """``(kw, rows, length, halo, itemsize)``: what the forward hands :func:`plan_tiling`."""
    n, c, h, w = x_shape
    (kh, kw), (_, pw) = conv.kernel_size, conv.padding
    wp = w + 2 * pw
    ho, wo = conv._output_size(h, w)
    if conv.resolved_algorithm == "gathered":  # all N·Ho·Wo columns, no halo
        length, halo = n * ho * wo, 0
    else:  # each image's stretch of the flat padded grid, up to its last valid output
        length, halo = (ho - 1) * wp + wo, (kh - 1) * wp
    return kw, c, length, halo, conv.weight.data.dtype.itemsize


#: ``tiling`` of :func:`set_tiling`: how the workspace budget shapes the GEMMs.
TILINGS = ["default", "plain", "group2", "blocks"]


def set_tiling(conv, x_shape, tiling: str):
    """Set the layer's documented knobs so that its forward runs ``tiling``, and check the plan.

    "default": the class budget (every offset stacked, one block on test-sized maps);
    "plain": ``max_workspace_bytes = 0``, one shifted GEMM per offset, nothing copied;
    "group2": room for two shifted copies: two offsets per GEMM, a group size that does
    not divide the kernel width; "blocks" (flat algorithms): every offset stacked but the
    columns cut into blocks of at most 5, so that block seams fall everywhere.
    """
    kw, rows, length, halo, itemsize = forward_plan_arguments(conv, x_shape)
    if tiling == "default":
        return
    if tiling == "plain":
        conv.max_workspace_bytes = 0
        expected = (1, length)
    elif tiling == "group2":
        conv.max_workspace_bytes = 2 * rows * itemsize * (length + halo)
        assert conv.min_block_columns >= length
        expected = (min(2, kw), length)
    elif tiling == "blocks":
        assert conv.resolved_algorithm != "gathered", "the gathered windows are one block"
        conv.min_block_columns = 1
        conv.max_workspace_bytes = kw * rows * itemsize * (5 + halo)
        blocks = -(-length // 5)
        expected = (kw, -(-length // blocks))
    else:
        raise AssertionError(tiling)
    plan = plan_tiling(kw, rows, length, halo, itemsize, conv.max_workspace_bytes, conv.min_block_columns)
    assert plan == expected, (tiling, plan, expected)


def combinations(stride, kernel_size):
    """(algorithm, tiling) pairs that are valid, and distinct, for a layer."""
    kw = kernel_size if isinstance(kernel_size, int) else kernel_size[1]
    pairs = []
    for algorithm in algorithms_for(stride):
        for tiling in TILINGS:
            gathered = algorithm == "gathered" or (algorithm == "auto" and stride not in (1, (1, 1)))
            if tiling == "blocks" and gathered:
                continue
            if tiling == "group2" and kw <= 2:
                continue
            pairs.append((algorithm, tiling))
    return pairs


def output_shape(case):
    n, c, o, h, w, k, s, p = case[:8]
    conv = Conv2d(c, o, k, s, p)
    return (n, o, *conv._output_size(h, w))


# (N, C, O, H, W, kernel, stride, padding, bias)
GRADCHECK_CASES = {
    "batch1-3x3-pad1": (1, 2, 3, 5, 5, 3, 1, 1, True),
    "odd-rect-input-3x3": (2, 3, 2, 5, 7, 3, 1, 0, True),
    "stride2-pad1": (2, 2, 3, 7, 6, 3, 2, 1, True),
    "stride2-nopad-nobias": (2, 2, 2, 7, 7, 3, 2, 0, False),
    "1x1": (2, 3, 2, 4, 5, 1, 1, 0, True),
    "7x7-same": (1, 2, 2, 8, 9, 7, 1, 3, True),
    "7x7-stride3-pad2": (2, 1, 2, 9, 8, 7, 3, 2, True),
    "rect-kernel-stride-pad": (2, 2, 3, 5, 6, (2, 3), (1, 2), (1, 0), True),
    "kernel-equals-padded-input": (1, 2, 2, 3, 3, 5, 1, 1, True),
}


# -- gradient checks: every input element, every weight, random upstream gradient ---------
@pytest.mark.parametrize("case", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_gradcheck(case, rng):
    n, c, o, h, w, k, s, p, bias = case
    conv = make_conv(c, o, k, s, p, bias)
    reports = check_module(conv, rng.standard_normal((n, c, h, w)))
    names = [r.name for r in reports]
    assert names == ["input[0]", "weight"] + (["bias"] if bias else [])
    sizes = [n * c * h * w, conv.weight.size] + ([o] if bias else [])
    assert [r.checked for r in reports] == sizes


GRADCHECK_COMBINATIONS = [
    (case, algorithm, tiling)
    for case in ["batch1-3x3-pad1", "7x7-same", "rect-kernel-stride-pad"]
    for algorithm, tiling in combinations(GRADCHECK_CASES[case][6], GRADCHECK_CASES[case][5])
    if algorithm != "auto"
]


@pytest.mark.parametrize("case, algorithm, tiling", GRADCHECK_COMBINATIONS,
                         ids=[f"{c}-{a}-{t}" for c, a, t in GRADCHECK_COMBINATIONS])
def test_gradcheck_every_algorithm_and_tiling(case, algorithm, tiling, rng):
    n, c, o, h, w, k, s, p, bias = GRADCHECK_CASES[case]
    conv = make_conv(c, o, k, s, p, bias, algorithm=algorithm)
    set_tiling(conv, (n, c, h, w), tiling)
    check_module(conv, rng.standard_normal((n, c, h, w)))


# -- the definition: every algorithm and tiling, odd sizes, strides 1, 2, 3, padding -------
# (N, C, O, H, W, kernel, stride, padding)
DEFINITION_CASES = [
    (2, 3, 4, 9, 11, 7, 1, 3),  # 7×7 with C < O ("auto": tiled-im2col)
    (3, 5, 2, 8, 7, 3, 1, 1),  # C > O ("auto": flat-stacked-weights, O < 32)
    (2, 4, 3, 7, 9, (3, 5), 1, (0, 2)),  # rectangular kernel, padding in one direction
    (2, 3, 2, 9, 11, 3, 2, 1),  # stride 2, odd sizes
    (2, 2, 3, 11, 13, 5, 3, 2),  # stride 3
    (1, 3, 2, 7, 9, (3, 2), (2, 3), (1, 0)),  # mixed strides
]
DEFINITION_COMBINATIONS = [
    (case, algorithm, tiling)
    for case in DEFINITION_CASES
    for algorithm, tiling in combinations(case[6], case[5])
]


@pytest.mark.parametrize("case, algorithm, tiling", DEFINITION_COMBINATIONS,
                         ids=[f"{'x'.join(map(str, c[:5]))}-k{c[5]}-s{c[6]}-{a}-{t}"
                              for c, a, t in DEFINITION_COMBINATIONS])
def test_every_algorithm_matches_definition(case, algorithm, tiling):
    """y, dx, dW and db of each named algorithm and tiling equal the definition, in float64."""
    n, c, o, h, w, k, s, p = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal(output_shape(case))
    conv = make_conv(c, o, k, s, p, seed=3, algorithm=algorithm)
    set_tiling(conv, x.shape, tiling)
    got = run(conv, x, dy)
    assert np.abs(got[3]).min() > 1e-3  # the bias gradient is far from 0: its check can fail
    assert_results_close(got, definition(conv, x, dy), f"{algorithm}/{tiling}")


def test_multi_block_tiling_matches_definition(rng):
    """A tiny budget: many blocks and fewer offsets per GEMM, forward and both backward forms."""
    n, c, o, h, w, k, p = 2, 3, 4, 13, 17, 5, 2
    x = rng.standard_normal((n, c, h, w))
    for algorithm in ["flat-flipped", "flat-scatter", "gathered"]:
        conv = make_conv(c, o, k, padding=p, algorithm=algorithm)
        conv.min_block_columns = 16
        kw, rows, length, halo, itemsize = forward_plan_arguments(conv, x.shape)
        conv.max_workspace_bytes = 3 * rows * itemsize * (conv.min_block_columns + halo)  # three copies of 16 columns
        g, block = plan_tiling(kw, rows, length, halo, itemsize, conv.max_workspace_bytes, conv.min_block_columns)
        if algorithm != "gathered":
            assert g == 3 and block < length, (g, block, length)  # 3 + 2 offsets, several blocks
        dy = rng.standard_normal(output_shape((n, c, o, h, w, k, 1, p)))
        assert_results_close(run(conv, x, dy), definition(conv, x, dy), algorithm)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3),
    kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    ph=st.integers(0, 2), pw=st.integers(0, 2), extra_h=st.integers(0, 5), extra_w=st.integers(0, 5),
    algorithm=st.sampled_from(sorted(ALGORITHMS)),
)
def test_matches_definition_over_shapes(n, c, o, kh, kw, sh, sw, ph, pw, extra_h, extra_w, algorithm):
    """Random shapes, a random dy: every output and gradient equals the definition."""
    h, w = max(1, kh - 2 * ph + extra_h), max(1, kw - 2 * pw + extra_w)
    if ALGORITHMS[algorithm].unsupported(Conv2d(1, 1, 1, (sh, sw))) is not None:
        algorithm = "gathered"
    conv = make_conv(c, o, (kh, kw), (sh, sw), (ph, pw), algorithm=algorithm)
    rng = np.random.default_rng(n * 100 + h * 10 + w)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal(output_shape((n, c, o, h, w, (kh, kw), (sh, sw), (ph, pw))))
    assert_results_close(run(conv, x, dy), definition(conv, x, dy), algorithm)


@pytest.mark.torch
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 4), o=st.integers(1, 4),
    k=st.integers(1, 5), s=st.integers(1, 3), p=st.integers(0, 2), extra=st.integers(0, 6),
    algorithm=st.sampled_from(sorted(ALGORITHMS)),
)
def test_matches_torch_over_shapes(n, c, o, k, s, p, extra, algorithm):
    torch = pytest.importorskip("torch")
    h = w = max(1, k - 2 * p + extra)
    if ALGORITHMS[algorithm].unsupported(Conv2d(1, 1, 1, s)) is not None:
        algorithm = "gathered"
    conv = make_conv(c, o, k, s, p, algorithm=algorithm)
    rng = np.random.default_rng(n * 100 + h)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal(output_shape((n, c, o, h, w, k, s, p)))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(conv.weight.data.copy()).requires_grad_(True)
    tb = torch.from_numpy(conv.bias.data.copy()).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    ty.backward(torch.from_numpy(dy))
    expected = (ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
    assert_results_close(run(conv, x, dy), expected, algorithm)


# -- bias gradients where they are not 0 ---------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_bias_gradient_where_it_is_not_zero(stride, rng):
    """A conv alone with a random dy: db = sum of dy over n, r, c, far from 0, and gradchecked."""
    conv = make_conv(3, 5, 3, stride, 1)
    x = rng.standard_normal((2, 3, 7, 8))
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape) + 0.5  # a mean away from 0: every db is large
    conv.backward(dy)
    expected = dy.sum(axis=(0, 2, 3))
    assert np.abs(expected).min() > 1.0
    np.testing.assert_allclose(conv.bias.grad, expected, rtol=1e-12)
    reports = {r.name: r for r in check_module(conv, x)}
    assert reports["bias"].checked == 5


# -- parity with PyTorch ------------------------------------------------------------------
PARITY_CASES = [
    (2, 3, 4, 9, 11, 3, 1, 1, True),
    (1, 4, 3, 12, 10, 7, 1, 3, True),
    (2, 3, 5, 9, 8, 3, 2, 1, True),
    (2, 2, 3, 10, 9, 3, 2, 0, False),
    (3, 5, 2, 6, 7, 1, 1, 0, True),
    (2, 3, 2, 7, 9, (3, 5), (2, 1), (1, 2), True),
    (1, 16, 16, 13, 15, 7, 1, 3, True),  # a bigger one: grouped shifts over 16 channels
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_with_torch(case, dtype, torch, rng):
    n, c, o, h, w, k, s, p, bias = case
    conv = make_conv(c, o, k, s, p, bias, dtype=dtype)
    tconv = torch.nn.Conv2d(c, o, k, s, p, bias=bias).to(getattr(torch, np.dtype(dtype).name))
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(conv.weight.data))
        if bias:
            tconv.bias.copy_(torch.from_numpy(conv.bias.data))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tconv(tx)
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    dx = conv.backward(dy)
    pairs = [("y", y, ty), ("dx", dx, tx.grad), ("dW", conv.weight.grad, tconv.weight.grad)]
    if bias:
        pairs.append(("db", conv.bias.grad, tconv.bias.grad))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, ours, theirs in pairs:
        theirs = theirs.detach().numpy()
        assert ours.dtype == dtype and ours.shape == theirs.shape, name
        # float32: sums of up to a few hundred products, rounded in a different order
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max(), err_msg=name)


# -- the algorithm switch -------------------------------------------------------------------
def test_algorithm_defaults_and_auto_rule():
    assert Conv2d(3, 4, 3).algorithm == "auto"
    assert Conv2d(64, 64, 3).resolved_algorithm == "flat-flipped"  # C >= O: O rows stacked
    assert Conv2d(64, 11, 3).resolved_algorithm == "flat-stacked-weights"  # O < 32: kh·kw·O rows stacked
    assert Conv2d(3, 64, 7).resolved_algorithm == "tiled-im2col"  # C < O: every offset stacked
    assert Conv2d(64, 64, 3, stride=2).resolved_algorithm == "gathered"
    assert Conv2d(64, 64, 3, stride=(1, 2)).resolved_algorithm == "gathered"
    assert set(ALGORITHMS) >= {"flat-flipped", "flat-scatter", "gathered", "tiled-im2col", "flat-stacked-weights"}
    assert all(spec.name == name and spec.about for name, spec in ALGORITHMS.items())


def test_algorithm_is_settable_and_visible(rng):
    conv = make_conv(4, 3, 3, padding=1, algorithm="flat-scatter")
    assert conv.algorithm == conv.resolved_algorithm == "flat-scatter"
    assert "algorithm='flat-scatter'" in repr(conv)
    conv.algorithm = "gathered"
    assert conv.resolved_algorithm == "gathered"
    conv.algorithm = "auto"
    assert conv.algorithm == "auto" and conv.resolved_algorithm == "flat-stacked-weights"  # O = 3 < 32
    assert "algorithm" not in repr(conv)


def test_backward_uses_the_algorithm_of_its_forward(rng):
    """Changing the switch between a forward and its backward changes nothing of that pair."""
    x = rng.standard_normal((2, 3, 6, 7))
    conv = make_conv(3, 4, 3, padding=1, algorithm="flat-flipped")
    dy = rng.standard_normal(conv.forward(x).shape)
    expected = run(conv, x, dy)
    conv.zero_grad()
    conv.forward(x)
    conv.algorithm = "gathered"
    dx = conv.backward(dy)
    np.testing.assert_allclose(dx, expected[1], rtol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, expected[2], rtol=1e-12)


@pytest.mark.parametrize("name", ["bogus", "flipped", "", None, 3])
def test_rejects_unknown_algorithm(name):
    with pytest.raises(ValueError, match=r"Conv2d.*unknown algorithm.*expected one of 'auto', 'flat-flipped', "
                                         r"'flat-scatter', 'gathered', 'tiled-im2col', "
                                         r"'flat-stacked-weights'"):
        Conv2d(3, 4, 3, algorithm=name)
    conv = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="unknown algorithm"):
        conv.algorithm = name
    assert conv.algorithm == "auto"


@pytest.mark.parametrize("name", ["flat-flipped", "flat-scatter", "flat-stacked-weights"])
def test_rejects_flat_algorithm_at_stride_above_one(name):
    with pytest.raises(ValueError, match=rf"Conv2d.*stride=\(2, 2\).*'{name}' needs stride 1.*can use 'auto', "
                                         r"'gathered', 'tiled-im2col'$"):
        Conv2d(3, 4, 3, stride=2, algorithm=name)
    conv = Conv2d(3, 4, 3, algorithm=name)
    conv.stride = (2, 2)  # changed behind the switch's back: the forward says so
    with pytest.raises(ValueError, match=f"'{name}' needs stride 1"):
        conv.forward(np.zeros((1, 3, 6, 6), np.float32))


# -- grad mode, eval mode, frozen parameters, needs_input_grad -------------------------------
def test_no_grad_forward_keeps_nothing_and_backward_says_why(rng):
    conv = make_conv(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 2, 5, 5))
    y_grad = make_conv(2, 3, 3, padding=1).forward(x)
    with no_grad():
        y = conv.forward(x)
    np.testing.assert_array_equal(y, y_grad)  # same computation
    assert conv._padded_input is None and conv._input_shape is None
    with pytest.raises(RuntimeError, match=r"Conv2d.*backward called before forward.*no_grad"):
        conv.backward(rng.standard_normal(y.shape))


@pytest.mark.parametrize("algorithm", algorithms_for(1))
@pytest.mark.parametrize("shape", ["same", "other"])
def test_no_grad_forward_between_forward_and_backward_changes_nothing(algorithm, shape, rng):
    """predict/summary in the middle of a step: the cache, and so the gradients, stay as they were."""
    conv = make_conv(3, 4, 3, padding=1, algorithm=algorithm)
    x = rng.standard_normal((2, 3, 6, 7))
    dy = rng.standard_normal((2, 4, 6, 7))
    expected = run(copy.deepcopy(conv), x, dy)
    conv.forward(x)
    cache = conv._padded_input
    before = cache.copy()
    other = rng.standard_normal((2, 3, 6, 7) if shape == "same" else (1, 3, 9, 5))
    with no_grad():
        y_other = conv.forward(other)
    np.testing.assert_allclose(y_other, reference.conv2d(other, conv.weight.data, conv.bias.data, (1, 1), (1, 1)),
                               rtol=1e-10, atol=1e-12)
    assert conv._padded_input is cache and conv._input_shape == x.shape
    np.testing.assert_array_equal(cache, before)  # not written into
    dx = conv.backward(dy)
    np.testing.assert_allclose(dx, expected[1], rtol=1e-12)
    np.testing.assert_allclose(conv.weight.grad, expected[2], rtol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, expected[3], rtol=1e-12)


#: ``max_band_columns`` of a no-grad forward on a (3, C, 9, 11) input: one band of the whole
#: batch, whole images per band (two per band: 2 · 11 · 13 padded positions), several rows of
#: one image, a single output row per band.
BANDS = {"whole batch": 10**6, "images": 2 * 11 * 13, "rows": 3 * 13, "row": 1}


@pytest.mark.parametrize("algorithm", algorithms_for(1) + ["winograd", "gathered-stride2"])
@pytest.mark.parametrize("bands", list(BANDS))
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_no_grad_forward_in_bands_computes_the_definition(algorithm, bands, padding, rng):
    """A forward that keeps nothing runs in bands of output rows, each from its own padded rows."""
    stride = 2 if algorithm == "gathered-stride2" else 1
    conv = make_conv(4, 5, 3, stride=stride, padding=padding,
                     algorithm="gathered" if stride == 2 else algorithm)
    conv.bias.data = rng.standard_normal(5)
    conv.max_band_columns = BANDS[bands]
    x = rng.standard_normal((3, 4, 9, 11))
    with no_grad():
        y = conv.forward(x)
    expected = reference.conv2d(x, conv.weight.data, conv.bias.data, (stride, stride), (padding, padding))
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


def test_no_grad_bands_are_what_the_plan_says(monkeypatch, rng):
    """The band plan: whole images when they fit, else equal runs of rows; each band padded on its own."""
    conv = make_conv(2, 3, 3, padding=1)
    seen = []
    original = conv._padded_band

    def spy(xp, x, n0, n1, r0, r1, multiple):
        band = original(xp, x, n0, n1, r0, r1, multiple)
        seen.append(((n0, n1, r0, r1), band.shape))
        return band

    monkeypatch.setattr(conv, "_padded_band", spy)
    x = rng.standard_normal((3, 2, 9, 11))  # padded rows are 13 wide
    for columns, bands in [(10**6, [((0, 3, 0, 9), (2, 3, 11, 13))]),
                           (2 * 11 * 13, [((0, 2, 0, 9), (2, 2, 11, 13)), ((2, 3, 0, 9), (2, 1, 11, 13))]),
                           (4 * 13, [((m, m + 1, r0, r0 + 3), (2, 1, 5, 13)) for m in range(3) for r0 in (0, 3, 6)])]:
        seen.clear()
        conv.max_band_columns = columns
        with no_grad():
            conv.forward(x)
        assert seen == bands, columns


def test_no_grad_forward_holds_one_band_not_the_whole_map(rng):
    """Inference memory (tracemalloc, deterministic): input and output, and scratch of one band.

    Kept as a whole, the padded input and the output grid would be two more maps.
    """
    import tracemalloc

    conv = make_conv(32, 32, 3, padding=1, dtype=np.float32)  # "flat-flipped"
    x = rng.standard_normal((2, 32, 192, 192), dtype=np.float32)
    map_bytes = x.nbytes  # the output has the same size
    peaks = {}
    for columns in (Conv2d.max_band_columns, None):
        conv.max_band_columns = columns
        clear_workspace()
        tracemalloc.start()
        try:
            with no_grad():
                y = conv.forward(x)
            peaks[columns] = tracemalloc.get_traced_memory()[1] - y.nbytes
            del y
        finally:
            tracemalloc.stop()
    assert peaks[Conv2d.max_band_columns] < 0.75 * map_bytes, peaks  # most of it the stacked copy of one stretch
    # the whole batch at once: the padded input and the output grid, map-sized
    assert peaks[None] > peaks[Conv2d.max_band_columns] + 1.5 * map_bytes, peaks
    assert max(a.nbytes for a in WORKSPACE.arrays().values()) > 0.9 * map_bytes  # (that last one's scratch)
    clear_workspace()


def test_eval_mode_forward_then_backward(rng):
    """Eval mode changes nothing a convolution computes: its backward works and agrees."""
    conv = make_conv(3, 2, 3, padding=1)
    x = rng.standard_normal((2, 3, 5, 6))
    dy = rng.standard_normal((2, 2, 5, 6))
    expected = run(conv, x, dy)
    conv.eval()
    assert conv.training is False
    assert_results_close(run(conv, x, dy), expected, "eval", rtol=1e-14, atol=0)
    check_module(conv, x)


@pytest.mark.parametrize("stride", [1, 2])
def test_needs_input_grad_false_returns_none_and_same_parameter_gradients(stride, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    for algorithm in algorithms_for(stride):
        conv = make_conv(3, 4, 3, stride, 1, algorithm=algorithm)
        dy = rng.standard_normal(conv.forward(x).shape)
        _, _, dw, db = run(conv, x, dy)
        first = make_conv(3, 4, 3, stride, 1, algorithm=algorithm, needs_input_grad=False)
        assert first.needs_input_grad is False and "needs_input_grad=False" in repr(first)
        first.forward(x)
        assert first.backward(dy) is None, algorithm
        np.testing.assert_allclose(first.weight.grad, dw, rtol=1e-12, err_msg=algorithm)
        np.testing.assert_allclose(first.bias.grad, db, rtol=1e-12, err_msg=algorithm)
        first.needs_input_grad = True  # a plain attribute
        assert first.backward(dy).shape == x.shape


@pytest.mark.parametrize("stride", [1, 2])
def test_frozen_parameters_get_no_gradient(stride, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    for algorithm in algorithms_for(stride):
        conv = make_conv(3, 4, 3, stride, 1, algorithm=algorithm)
        dy = rng.standard_normal(conv.forward(x).shape)
        _, dx, dw, db = run(conv, x, dy)

        conv.zero_grad()
        conv.weight.requires_grad = False
        conv.forward(x)
        np.testing.assert_allclose(conv.backward(dy), dx, rtol=1e-12, err_msg=algorithm)
        assert conv.weight.grad is None
        np.testing.assert_allclose(conv.bias.grad, db, rtol=1e-12)

        conv.zero_grad()
        conv.weight.requires_grad, conv.bias.requires_grad = True, False
        np.testing.assert_allclose(conv.backward(dy), dx, rtol=1e-12)
        assert conv.bias.grad is None
        np.testing.assert_allclose(conv.weight.grad, dw, rtol=1e-12)

        conv.zero_grad()
        conv.requires_grad_(False)  # the whole layer frozen: dx only
        np.testing.assert_allclose(conv.backward(dy), dx, rtol=1e-12)
        assert conv.weight.grad is None and conv.bias.grad is None
        conv.needs_input_grad = False  # and nobody needs dx: nothing to do
        assert conv.backward(dy) is None


@pytest.mark.parametrize("algorithm", ["flat-flipped", "flat-scatter", "gathered", "tiled-im2col"])
def test_skipped_gradients_skip_their_matrix_products(algorithm, rng, monkeypatch):
    """A frozen weight skips the dW GEMMs, needs_input_grad=False the dx GEMMs: counted."""
    conv = make_conv(4, 4, 3, padding=1, algorithm=algorithm)
    x = rng.standard_normal((2, 4, 6, 7))
    dy = rng.standard_normal((2, 4, 6, 7))
    conv.forward(x)
    calls = []
    matmul = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **k: calls.append(1) or matmul(*a, **k))

    def count(weight_frozen: bool, needs_input_grad: bool) -> int:
        conv.weight.requires_grad, conv.needs_input_grad = not weight_frozen, needs_input_grad
        calls.clear()
        conv.backward(dy)
        return len(calls)

    full = count(False, True)
    assert full > 0 and full % 2 == 0
    assert count(True, True) == full // 2  # dx only
    assert count(False, False) == full // 2  # dW only
    assert count(True, False) == 0  # the bias sum is no GEMM


# -- accumulation, dtypes, workspace ------------------------------------------------------
def test_gradients_accumulate_and_zero_grad_clears(rng):
    conv = make_conv(3, 4, 3, padding=1)
    x = rng.standard_normal((2, 3, 5, 6))
    y = conv.forward(x)
    dy1, dy2 = rng.standard_normal(y.shape), rng.standard_normal(y.shape)
    conv.backward(dy1)
    g1 = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    assert conv.weight.grad is None and conv.bias.grad is None
    conv.backward(dy2)
    g2 = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    conv.backward(dy1)
    conv.forward(x)  # a second micro-batch
    conv.backward(dy2)
    np.testing.assert_allclose(conv.weight.grad, g1[0] + g2[0], rtol=1e-12)
    np.testing.assert_allclose(conv.bias.grad, g1[1] + g2[1], rtol=1e-12)


def test_backward_is_linear_in_dy_and_leaves_inputs_alone(rng):
    conv = make_conv(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 2, 4, 5))
    x_before = x.copy()
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    dx = conv.backward(dy)
    dx2 = conv.backward(2 * dy)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_allclose(dx2, 2 * dx, rtol=1e-12)
    assert not np.shares_memory(dx, dx2) and not np.shares_memory(y, conv.forward(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_dtype_end_to_end(dtype, stride, rng):
    clear_workspace()
    conv = make_conv(3, 4, 3, stride, 1, dtype=dtype)
    x = rng.standard_normal((2, 3, 6, 7)).astype(dtype)
    y = conv.forward(x)
    dx = conv.backward(rng.standard_normal(y.shape).astype(dtype))
    assert y.dtype == dx.dtype == conv.weight.grad.dtype == conv.bias.grad.dtype == dtype
    assert conv._padded_input.dtype == dtype
    scratch = WORKSPACE.arrays()
    assert scratch and all(a.dtype == dtype for a in scratch.values())  # no temporaries in another dtype


def test_non_contiguous_input(rng):
    conv = make_conv(3, 2, 3, padding=1)
    x = rng.standard_normal((2, 6, 8, 10))[:, ::2, :, ::2]
    np.testing.assert_allclose(conv.forward(x), conv.forward(np.ascontiguousarray(x)), rtol=1e-14)


def test_workspace_is_reused_and_bounded(rng):
    assert conv_module.clear_workspace is clear_workspace  # still importable from the layer's module
    clear_workspace()
    assert WORKSPACE.nbytes() == 0
    conv = make_conv(4, 4, 7, padding=3, dtype=np.float32, algorithm="flat-flipped")
    x = rng.standard_normal((2, 4, 10, 12)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 10, 12)).astype(np.float32)
    conv.forward(x)
    conv.backward(dy)
    scratch = WORKSPACE.arrays()
    ids = {k: id(a) for k, a in scratch.items()}
    conv.forward(x)
    conv.backward(dy)
    assert {k: id(a) for k, a in scratch.items()} == ids  # same arrays, no new allocation
    assert any(key[-1] == "conv.shifted" for key in scratch)
    conv.max_workspace_bytes = 0  # no shifted copies at all
    clear_workspace()
    conv.forward(x)
    conv.backward(dy)
    assert not any(key[-1] == "conv.shifted" for key in WORKSPACE.arrays())
    del conv.max_workspace_bytes  # back to the class default
    assert conv.max_workspace_bytes == Conv2d.max_workspace_bytes > 0
    # one workspace per thread: another thread starts with none
    seen = []
    thread = threading.Thread(target=lambda: seen.append(dict(WORKSPACE.arrays())))
    thread.start()
    thread.join()
    assert seen == [{}] and WORKSPACE.arrays()


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_one_map_sized_scratch_serves_forward_backward_and_selections(algorithm, rng):
    """The output grid of the forward, the input-gradient grid of the backward and ReLU's widened
    mask take one shared array (``MAP_SCRATCH``), and sharing it changes no result."""
    from minisegnet.layers import ReLU
    from minisegnet.workspace import MAP_SCRATCH

    k = 3 if algorithm == "winograd" else 5  # Winograd's F(2x2, 3x3) serves 3x3 kernels only
    conv = make_conv(4, 6, k, padding=k // 2, dtype=np.float32, algorithm=algorithm)
    relu = ReLU()
    x = rng.standard_normal((2, 4, 10, 12)).astype(np.float32)
    dy = rng.standard_normal((2, 6, 10, 12)).astype(np.float32)

    def run_through(fresh):
        steps = [lambda: relu.forward(conv.forward(x)), lambda: relu.backward(dy), lambda: conv.backward(dy_relu[0])]
        out = []
        for step in steps:
            if fresh:
                clear_workspace()
            out.append(step())
            if len(out) == 2:
                dy_relu[0] = out[1]
        return out

    dy_relu = [None]
    shared = [a.copy() for a in run_through(fresh=False)]
    roles = [key[-1] for key in WORKSPACE.arrays()]
    conv.zero_grad()
    alone = run_through(fresh=True)
    for a, b in zip(shared, alone):
        np.testing.assert_array_equal(a, b)
    assert roles.count(MAP_SCRATCH) == 1
    assert not {"conv.y_grid", "conv.dx_grid", "select.mask"} & set(roles)


def test_plan_tiling():
    """The planner's rules (conv_tiling docstring), on numbers one can follow."""
    # room for everything: every offset stacked, one block
    assert plan_tiling(7, 64, 10_000, 600, 4, 2**30, 16384) == (7, 10_000)
    # 64 MiB, 7 offsets of 64 float32 rows: 37 449 columns per stacked copy, minus the halo
    g, block = plan_tiling(7, 64, 100_000, 1_476, 4, 64 * 2**20, 16384)
    blocks = -(-100_000 // block)
    assert g == 7 and blocks == 3 and block == -(-100_000 // 3)  # equal blocks
    assert g * 64 * 4 * (block + 1_476) <= 64 * 2**20  # each block's copy fits the budget
    # room for 5 of 7 offsets at the shortest block: 4 + 3, not 5 + 2
    one = 64 * 4 * (16384 + 1_476)
    assert plan_tiling(7, 64, 100_000, 1_476, 4, 5 * one, 16384)[0] == 4
    # no budget: one shifted GEMM per offset over all columns, nothing copied
    assert plan_tiling(7, 64, 100_000, 1_476, 4, 0, 16384) == (1, 100_000)


def test_initialisation():
    conv = Conv2d(64, 32, 3, rng=0)
    assert conv.weight.data.shape == (32, 64, 3, 3) and conv.weight.data.dtype == np.float32
    assert conv.bias.data.shape == (32,) and conv.bias.data.dtype == np.float32 and not conv.bias.data.any()
    std = float(conv.weight.data.std())
    assert abs(std - np.sqrt(2 / (64 * 9))) < 0.03 * np.sqrt(2 / (64 * 9))  # He: sqrt(2 / fan_in)
    assert abs(float(conv.weight.data.mean())) < 0.05 * std
    np.testing.assert_array_equal(Conv2d(64, 32, 3, rng=0).weight.data, conv.weight.data)  # seeded
    np.random.seed(5)
    a = Conv2d(2, 2, 3).weight.data
    np.random.seed(5)
    np.testing.assert_array_equal(Conv2d(2, 2, 3).weight.data, a)  # None: NumPy's global state
    no_bias = Conv2d(3, 4, (1, 1), bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (0, 0)
    assert conv.needs_input_grad is True and conv.algorithm == "auto"
    assert "Conv2d(64, 32, kernel_size=(3, 3)" in repr(conv)


# -- bad input ----------------------------------------------------------------------------
@pytest.fixture
def conv3():
    return Conv2d(3, 4, 3, padding=1)


def test_rejects_wrong_ndim(conv3):
    with pytest.raises(ValueError, match=r"Conv2d\(3, 4.*expected a 4-D input.*got 3-D"):
        conv3.forward(np.zeros((3, 5, 5), np.float32))


def test_rejects_wrong_channels(conv3):
    with pytest.raises(ValueError, match=r"Conv2d.*expected input with 3 channels, got 5"):
        conv3.forward(np.zeros((1, 5, 5, 5), np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_])
def test_rejects_non_float(conv3, dtype):
    with pytest.raises(ValueError, match=r"Conv2d.*floating-point input.*got dtype"):
        conv3.forward(np.zeros((1, 3, 5, 5), dtype))


def test_rejects_non_array(conv3):
    with pytest.raises(TypeError, match=r"Conv2d.*NumPy/CuPy array, got list"):
        conv3.forward([[[[0.0]]]])


def test_rejects_dtype_mismatch(conv3):
    with pytest.raises(TypeError, match=r"Conv2d.*layer's dtype float32, got float64"):
        conv3.forward(np.zeros((1, 3, 5, 5), np.float64))


@pytest.mark.parametrize("shape, k, p", [((1, 3, 2, 9), 5, 1), ((1, 3, 9, 4), 7, 1), ((1, 3, 1, 1), 3, 0)])
def test_rejects_kernel_larger_than_padded_input(shape, k, p):
    conv = Conv2d(3, 2, k, padding=p)
    with pytest.raises(ValueError, match=rf"Conv2d.*padded input at least as large as the kernel {k}x{k}, got"):
        conv.forward(np.zeros(shape, np.float32))


def test_backward_before_forward(conv3):
    with pytest.raises(RuntimeError, match=r"Conv2d.*backward called before forward"):
        conv3.backward(np.zeros((1, 4, 5, 5), np.float32))


def test_rejects_wrong_gradient_shape(conv3):
    conv3.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*expected an upstream gradient of shape \(2, 4, 5, 5\).*got \(2, 4, 5, 4\)"):
        conv3.backward(np.zeros((2, 4, 5, 4), np.float32))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kernel_size=0), ValueError),
        (dict(kernel_size=(3, 3, 3)), ValueError),
        (dict(kernel_size=2.5), TypeError),
        (dict(kernel_size=3, stride=0), ValueError),
        (dict(kernel_size=3, padding=-1), ValueError),
        (dict(kernel_size=3, in_channels=0), ValueError),
        (dict(kernel_size=3, algorithm="im2col"), ValueError),
    ],
)
def test_rejects_bad_hyper_parameters(kwargs, error):
    args = dict(in_channels=3, out_channels=4)
    args.update(kwargs)
    with pytest.raises(error, match="Conv2d"):
        Conv2d(**args)


# -- GPU: CuPy against NumPy, on maps large enough for the multi-block tiling ---------------
GPU_DEVICE = "cuda"  # a module constant, as in test_gpu.py: point it at "cpu" to exercise the harness

# (dtype, (N, C, O, H, W, kernel, stride, padding), max_workspace_bytes or None for the class default)
GPU_CASES = {
    # SegNet-Basic's 7×7 64->64 layer at 180×240 under the default 64 MiB budget: 2 blocks
    "float32-180x240-default-budget": (np.float32, (1, 64, 64, 180, 240, 7, 1, 3), None),
    # smaller budgets in float64: several blocks *and* fewer offsets per GEMM (4 of 7, 2 of 3), C < O and C > O
    "float64-8MiB-7x7-c16-o24": (np.float64, (2, 16, 24, 90, 121, 7, 1, 3), 8 * 2**20),
    "float64-8.5MiB-3x3-c24-o8": (np.float64, (1, 24, 8, 180, 121, 3, 1, 1), int(8.5 * 2**20)),
    # stride 2: the gathered windows, 3 of 7 offsets per GEMM
    "float64-stride2-7x7": (np.float64, (2, 16, 8, 45, 61, 7, 2, 3), 600_000),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
def test_gpu_multi_block_tiling_matches_numpy(case):
    dtype, (n, c, o, h, w, k, s, p), budget = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal(output_shape((n, c, o, h, w, k, s, p))).astype(dtype)
    for algorithm in [a for a in algorithms_for(s)[1:] if not a.startswith("tiled")]:  # tiles: test_conv_algorithms
        conv = make_conv(c, o, k, s, p, dtype=dtype, algorithm=algorithm)
        conv.min_block_columns = 16384  # what the budgets below were sized for: they shrink the groups
        if budget is not None:
            conv.max_workspace_bytes = budget
        kw, rows, length, halo, itemsize = forward_plan_arguments(conv, x.shape)
        g, block = plan_tiling(kw, rows, length, halo, itemsize, conv.max_workspace_bytes, conv.min_block_columns,
                               None if algorithm == "gathered" else conv.max_block_columns)
        if algorithm != "gathered":  # blocks per image, images apart
            assert n * -(-length // block) > 1, f"{algorithm}: one block ({g}, {block}): the case does not tile"
        if budget is not None:
            assert 1 < g < kw, f"{algorithm}: {g} of {kw} offsets per GEMM: the budget does not shrink the groups"
        dev = copy.deepcopy(conv).to(GPU_DEVICE)
        expected = run(conv, x, dy)
        got = run(dev, to_device(x, GPU_DEVICE), to_device(dy, GPU_DEVICE))
        assert_device_results_close(got, expected, GPU_DEVICE, dtype, algorithm)

"""Conv2d: gradient checks, the three code paths, PyTorch parity, accumulation, modes, bad input."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisegnet.gradcheck import check_module
from minisegnet.layers import conv as conv_module
from minisegnet.layers.conv import Conv2d, clear_workspace


# -- helpers -------------------------------------------------------------------------------
def make_conv(c, o, k, stride=1, padding=0, bias=True, *, dtype=np.float64, path="auto", seed=0):
    """A Conv2d with random (non-zero) bias, in ``dtype``, forced onto one code path.

    ``path``: "auto" (the layer's choices), "plain" (one shifted GEMM per offset, no
    copies), "group2" (two horizontal shifts stacked per GEMM: a group size that does not
    divide the kernel width), "blocks" (every shift stacked, the output columns in blocks of
    5, so that block seams fall everywhere), "strided" (the gathering path, even at stride 1), "scatter" /
    "flipped" (that backward formulation whatever the channel counts); "a+b" applies both.
    """
    conv = Conv2d(c, o, k, stride, padding, bias, rng=seed).astype(dtype)
    if conv.bias is not None:
        conv.bias.data[...] = np.random.default_rng(seed + 1).standard_normal(o)
    for part in path.split("+"):  # "blocks+scatter": both switches
        if part == "plain":
            conv.max_workspace_bytes = 0
        elif part == "group2":
            conv._tiling = lambda kw, rows, length, halo, itemsize, min_block: (min(2, kw), length)
        elif part == "blocks":  # the flat columns cut into blocks of 5 (seams everywhere)
            conv._tiling = lambda kw, rows, length, halo, itemsize, min_block: (kw, min(5, length))
        elif part == "strided":
            conv._allow_flat = False
        elif part in ("scatter", "flipped"):
            conv._dx_form = part
        else:
            assert part == "auto"
    return conv


def reference_conv2d(x, w, b, stride, padding):
    """Direct definition, one einsum per kernel offset (float64): y[n,o,r,c] = sum W x_window."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            y += np.einsum("oc,nchw->nohw", w[:, :, i, j], window)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


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
    assert all(r.checked == r_size for r, r_size in zip(reports, [n * c * h * w, conv.weight.size]))


@pytest.mark.parametrize("path", ["plain", "group2", "blocks+scatter", "blocks+flipped", "strided", "scatter", "flipped"])
@pytest.mark.parametrize("case", ["batch1-3x3-pad1", "7x7-same", "rect-kernel-stride-pad"])
def test_gradcheck_every_code_path(case, path, rng):
    n, c, o, h, w, k, s, p, bias = GRADCHECK_CASES[case]
    conv = make_conv(c, o, k, s, p, bias, path=path)
    check_module(conv, rng.standard_normal((n, c, h, w)))


@pytest.mark.parametrize(
    "case",
    [(2, 3, 4, 9, 11, 7, 1, 3), (3, 5, 2, 8, 7, 3, 1, 1), (2, 4, 3, 6, 9, (3, 5), 1, (0, 2)), (2, 3, 2, 9, 10, 3, 2, 1)],
)
def test_code_paths_agree(case, rng):
    """Every formulation (grouped or not, flat or strided, both backwards) gives the same numbers."""
    n, c, o, h, w, k, s, p = case
    x = rng.standard_normal((n, c, h, w))
    results = {}
    for path in ["auto", "plain", "group2", "blocks+scatter", "blocks+flipped", "strided", "scatter", "flipped"]:
        conv = make_conv(c, o, k, s, p, seed=3, path=path)
        y = conv.forward(x)
        dy = np.random.default_rng(7).standard_normal(y.shape)
        dx = conv.backward(dy)
        results[path] = (y, dx, conv.weight.grad, conv.bias.grad)
    ref = results.pop("auto")
    expected = reference_conv2d(x, conv.weight.data, conv.bias.data, conv.stride, conv.padding)
    np.testing.assert_allclose(ref[0], expected, rtol=1e-12, atol=1e-12)
    for path, got in results.items():
        for name, a, b in zip(["y", "dx", "dW", "db"], got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{path}: {name}")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3),
    kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    ph=st.integers(0, 2), pw=st.integers(0, 2), extra_h=st.integers(0, 5), extra_w=st.integers(0, 5),
)
def test_forward_matches_definition_over_shapes(n, c, o, kh, kw, sh, sw, ph, pw, extra_h, extra_w):
    h, w = max(1, kh - 2 * ph + extra_h), max(1, kw - 2 * pw + extra_w)
    conv = make_conv(c, o, (kh, kw), (sh, sw), (ph, pw))
    x = np.random.default_rng(n * 100 + h * 10 + w).standard_normal((n, c, h, w))
    y = conv.forward(x)
    np.testing.assert_allclose(y, reference_conv2d(x, conv.weight.data, conv.bias.data, (sh, sw), (ph, pw)),
                               rtol=1e-12, atol=1e-12)
    dy = np.ones_like(y)
    dx = conv.backward(dy)
    assert dx.shape == x.shape
    np.testing.assert_allclose(conv.bias.grad, np.full(o, n * y.shape[2] * y.shape[3]))


# -- accumulation, dtypes, modes ----------------------------------------------------------
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
    dx = conv.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == conv.weight.grad.dtype == conv.bias.grad.dtype == dtype
    assert conv._padded_input.dtype == dtype
    scratch = conv_module._WORKSPACE.arrays()
    assert scratch and all(a.dtype == dtype for a in scratch.values())  # no temporaries in another dtype


def test_non_contiguous_input(rng):
    conv = make_conv(3, 2, 3, padding=1)
    x = rng.standard_normal((2, 6, 8, 10))[:, ::2, :, ::2]
    np.testing.assert_allclose(conv.forward(x), conv.forward(np.ascontiguousarray(x)), rtol=1e-14)


def test_eval_keeps_no_cache_and_same_output(rng):
    conv = make_conv(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 2, 5, 5))
    y_train = conv.forward(x)
    assert conv._padded_input is not None
    conv.eval()
    y_eval = conv.forward(x)
    np.testing.assert_array_equal(y_train, y_eval)
    assert conv._padded_input is None
    with pytest.raises(RuntimeError, match=r"Conv2d.*backward called before forward"):
        conv.backward(np.ones_like(y_eval))
    conv.requires_grad_(True)  # eval mode, but keep what backward needs
    conv.forward(x)
    conv.backward(np.ones_like(y_eval))
    assert conv.weight.grad is not None


def test_workspace_is_reused_and_bounded(rng):
    clear_workspace()
    conv = make_conv(4, 4, 7, padding=3, dtype=np.float32)
    x = rng.standard_normal((2, 4, 10, 12)).astype(np.float32)
    conv.backward(np.ones_like(conv.forward(x)))
    scratch = conv_module._WORKSPACE.arrays()
    ids = {k: id(a) for k, a in scratch.items()}
    conv.backward(np.ones_like(conv.forward(x)))
    assert {k: id(a) for k, a in scratch.items()} == ids  # same arrays, no new allocation
    conv.max_workspace_bytes = 0  # no shifted copies at all
    clear_workspace()
    conv.backward(np.ones_like(conv.forward(x)))
    assert not any(key[-1] == "shifted" for key in conv_module._WORKSPACE.arrays())
    # one workspace per thread: another thread gets its own
    seen = []
    thread = threading.Thread(target=lambda: seen.append(conv_module._WORKSPACE._local.__dict__.get("arrays")))
    thread.start()
    thread.join()
    assert seen == [None]


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
    assert "Conv2d(64, 32, kernel_size=(3, 3)" in repr(conv)


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
    with pytest.raises(TypeError, match=r"Conv2d.*weight's dtype float32, got float64"):
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
    ],
)
def test_rejects_bad_hyper_parameters(kwargs, error):
    args = dict(in_channels=3, out_channels=4)
    args.update(kwargs)
    with pytest.raises(error, match="Conv2d"):
        Conv2d(**args)

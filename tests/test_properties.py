"""Property-based tests (Hypothesis): every layer and model over random shapes, hyper-parameters and dtypes.

For each draw the outcome is one of two, and which one is predicted from the documented rules
before the call:

* a correct result: the output shape the docstring gives, the input's dtype, finite values where
  the input is finite, and a backward whose gradient has the shape (and dtype) of the forward's
  input and of each parameter; for Conv2d and MaxPool2d the values are checked against a plain
  NumPy definition too;
* or the documented error (``ValueError`` / ``TypeError``) whose message names the layer,

never a silently wrong shape.  Wrong inputs are drawn too: integer, boolean and complex dtypes,
ranks other than 4, non-arrays, a float64 input into a float32 layer, wrong channel counts,
labels of the wrong shape, dtype or range.

Kept fast (modest ``max_examples``, tiny tensors, no deadline): the whole file runs in well
under 30 s on one core.  ``derandomize=True`` makes every run draw the same examples, so a
failure reproduces; Hypothesis still shrinks it to a minimal case.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minisegnet.grad_mode import no_grad  # noqa: E402
from minisegnet.layers import (  # noqa: E402
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    MaxPool2d,
    MaxUnpool2d,
    ReLU,
    SoftmaxCrossEntropy,
    Upsample,
)
from minisegnet.layers.conv import ALGORITHMS  # noqa: E402
from minisegnet.layers.pooling import pooled_size  # noqa: E402

LAYER_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
MODEL_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])

FLOATS = st.sampled_from([np.float32, np.float64])
WRONG_DTYPES = st.sampled_from([np.int32, np.uint8, np.bool_, np.complex64])
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 3)


def _array(seed, shape, dtype, low=-1.0, high=1.0):
    values = np.random.default_rng(seed).uniform(low, high, size=shape)
    if np.dtype(dtype).kind == "c":
        return (values + 1j * values).astype(dtype)
    if np.dtype(dtype).kind in "iub":
        return (values * 3).astype(dtype)
    return values.astype(dtype)


def _assert_result(y, shape, dtype, finite=True):
    assert tuple(y.shape) == tuple(shape), f"shape {y.shape}, expected {shape}"
    assert y.dtype == dtype, f"dtype {y.dtype}, expected {np.dtype(dtype)}"
    if finite:
        assert np.isfinite(y).all()


def _assert_grads(layer):
    for name, p in layer.named_parameters():
        if p.grad is not None:
            assert p.grad.shape == p.data.shape and p.grad.dtype == p.data.dtype, name


def _raises_naming(layer_name, call, errors=(ValueError, TypeError)):
    with pytest.raises(errors) as info:
        call()
    assert layer_name in str(info.value), str(info.value)


@st.composite
def wrong_feature_maps(draw):
    """Inputs every NCHW layer must refuse: a wrong dtype, a wrong rank, or not an array at all."""
    kind = draw(st.sampled_from(["dtype", "rank", "list"]))
    seed = draw(seeds)
    if kind == "dtype":
        return _array(seed, (1, 2, 4, 4), draw(WRONG_DTYPES))
    if kind == "rank":
        rank = draw(st.sampled_from([1, 2, 3, 5]))
        return _array(seed, (2,) * rank, np.float32)
    return [[0.0] * 4] * 4


# -- Conv2d -------------------------------------------------------------------------------------------

def _conv_reference(x, w, b, stride, padding):
    """The definition: y[n, o] = sum over c, ky, kx of w[o, c, ky, kx] * x_padded[n, c, s*i + ky, s*j + kx] + b[o]."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return np.einsum("ncijyx,ocyx->noij", windows, w.astype(np.float64)) + b.astype(np.float64)[None, :, None, None]


@LAYER_SETTINGS
@given(n=st.integers(1, 2), c_in=small, c_out=small, kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(small, small), padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       h=st.integers(1, 9), w=st.integers(1, 9), dtype=FLOATS, seed=seeds, data=st.data())
def test_conv2d(n, c_in, c_out, kh, kw, stride, padding, h, w, dtype, seed, data):
    conv = Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=padding, rng=seed).astype(dtype)
    usable = [name for name, spec in ALGORITHMS.items() if spec.unsupported(conv) is None]
    conv.algorithm = data.draw(st.sampled_from(["auto", *usable]), label="algorithm")
    x = _array(seed, (n, c_in, h, w), dtype)
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        _raises_naming("Conv2d", lambda: conv(x))
        return
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    y = conv(x)
    _assert_result(y, (n, c_out, ho, wo), dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, _conv_reference(x, conv.weight.data, conv.bias.data, stride, padding),
                               rtol=tol, atol=tol)
    dx = conv.backward(_array(seed + 1, y.shape, dtype))
    _assert_result(dx, x.shape, dtype)
    _assert_grads(conv)


@LAYER_SETTINGS
@given(bad=wrong_feature_maps(), channels=st.integers(1, 3))
def test_conv2d_refuses_wrong_inputs(bad, channels):
    conv = Conv2d(2, channels, 3, padding=1, rng=0)
    _raises_naming("Conv2d", lambda: conv(bad))
    _raises_naming("Conv2d", lambda: conv(np.zeros((1, 3, 4, 4), np.float32)))  # 3 channels into a 2-channel conv
    _raises_naming("Conv2d", lambda: conv(np.zeros((1, 2, 4, 4), np.float64)), TypeError)  # float64 into float32


# -- ConvTranspose2d ------------------------------------------------------------------------------------

@LAYER_SETTINGS
@given(n=st.integers(1, 2), c_in=small, c_out=small, k=st.integers(1, 4), stride=small, padding=st.integers(0, 2),
       h=st.integers(1, 6), w=st.integers(1, 6), dtype=FLOATS, seed=seeds, data=st.data())
def test_conv_transpose2d(n, c_in, c_out, k, stride, padding, h, w, dtype, seed, data):
    output_padding = data.draw(st.integers(0, stride - 1), label="output_padding")
    up = ConvTranspose2d(c_in, c_out, k, stride=stride, padding=padding, output_padding=output_padding,
                         rng=seed).astype(dtype)
    x = _array(seed, (n, c_in, h, w), dtype)
    ho, wo = ((size - 1) * stride - 2 * padding + k for size in (h, w))
    if min(ho, wo) < 1:
        _raises_naming("ConvTranspose2d", lambda: up(x))
        return
    y = up(x)
    _assert_result(y, (n, c_out, ho + output_padding, wo + output_padding), dtype)
    dx = up.backward(_array(seed + 1, y.shape, dtype))
    _assert_result(dx, x.shape, dtype)
    _assert_grads(up)


@LAYER_SETTINGS
@given(bad=wrong_feature_maps())
def test_conv_transpose2d_refuses_wrong_inputs(bad):
    up = ConvTranspose2d(2, 2, 4, stride=2, rng=0)
    _raises_naming("ConvTranspose2d", lambda: up(bad))
    _raises_naming("ConvTranspose2d", lambda: up(np.zeros((1, 3, 4, 4), np.float32)))
    _raises_naming("ConvTranspose2d", lambda: up(np.zeros((1, 2, 4, 4), np.float64)), TypeError)


# -- Upsample -----------------------------------------------------------------------------------------

@LAYER_SETTINGS
@given(n=st.integers(1, 2), c=small, h=st.integers(1, 7), w=st.integers(1, 7),
       scale=st.sampled_from([1, 2, 3, 0.5, 1.5, (2, 1)]), mode=st.sampled_from(["nearest", "bilinear"]),
       align=st.booleans(), dtype=FLOATS, seed=seeds)
def test_upsample(n, c, h, w, scale, mode, align, dtype, seed):
    layer = Upsample(scale, mode=mode, align_corners=align and mode == "bilinear")
    x = _array(seed, (n, c, h, w), dtype)
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    ho, wo = math.floor(h * sh), math.floor(w * sw)
    if min(ho, wo) < 1:
        _raises_naming("Upsample", lambda: layer(x))
        return
    y = layer(x)
    _assert_result(y, (n, c, ho, wo), dtype)
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # both modes interpolate, never extrapolate
    _assert_result(layer.backward(_array(seed + 1, y.shape, dtype)), x.shape, dtype)


@LAYER_SETTINGS
@given(bad=wrong_feature_maps())
def test_upsample_refuses_wrong_inputs(bad):
    _raises_naming("Upsample", lambda: Upsample(2)(bad))


# -- BatchNorm2d --------------------------------------------------------------------------------------

@LAYER_SETTINGS
@given(n=st.integers(1, 3), c=small, h=st.integers(1, 4), w=st.integers(1, 4), training=st.booleans(),
       dtype=FLOATS, seed=seeds)
def test_batchnorm2d(n, c, h, w, training, dtype, seed):
    bn = BatchNorm2d(c).astype(dtype)
    bn.train(training)
    x = _array(seed, (n, c, h, w), dtype, -3.0, 5.0)
    if training and n * h * w < 2:
        _raises_naming("BatchNorm2d", lambda: bn(x))
        return
    y = bn(x)
    _assert_result(y, x.shape, dtype)
    if training and n * h * w > 1:  # normalised per channel: mean 0
        np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-4 if dtype == np.float32 else 1e-10)
    _assert_result(bn.backward(_array(seed + 1, y.shape, dtype)), x.shape, dtype)
    _assert_grads(bn)
    assert np.isfinite(bn.running_mean).all() and np.isfinite(bn.running_var).all()


@LAYER_SETTINGS
@given(bad=wrong_feature_maps())
def test_batchnorm2d_refuses_wrong_inputs(bad):
    bn = BatchNorm2d(2)
    _raises_naming("BatchNorm2d", lambda: bn(bad))
    _raises_naming("BatchNorm2d", lambda: bn(np.zeros((2, 3, 2, 2), np.float32)))
    _raises_naming("BatchNorm2d", lambda: bn(np.zeros((2, 2, 2, 2), np.float64)), TypeError)


# -- ReLU and Dropout: element-wise, any shape ---------------------------------------------------------

@LAYER_SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), dtype=FLOATS, seed=seeds,
       p=st.sampled_from([0.0, 0.3, 0.9]), training=st.booleans())
def test_relu_and_dropout_keep_shape_and_dtype(shape, dtype, seed, p, training):
    x = _array(seed, shape, dtype)
    dy = _array(seed + 1, shape, dtype)
    relu = ReLU()
    y = relu(x)
    _assert_result(y, x.shape, dtype)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(relu.backward(dy), np.where(x > 0, dy, 0))
    drop = Dropout(p, seed=seed)
    drop.train(training)
    y = drop(x)
    _assert_result(y, x.shape, dtype)
    kept = y != 0
    if not training or p == 0:
        np.testing.assert_array_equal(y, x)
    else:  # each value is dropped or scaled by 1 / (1 - p)
        np.testing.assert_allclose(y[kept], x[kept] / dtype(1 - p), rtol=1e-6)
    _assert_result(drop.backward(dy), x.shape, dtype)


@LAYER_SETTINGS
@given(dtype=WRONG_DTYPES, seed=seeds)
def test_relu_and_dropout_refuse_wrong_inputs(dtype, seed):
    x = _array(seed, (2, 3), dtype)
    _raises_naming("ReLU", lambda: ReLU()(x))
    _raises_naming("Dropout", lambda: Dropout(0.5, seed=0)(x))
    _raises_naming("ReLU", lambda: ReLU()([1.0, -1.0]), TypeError)
    _raises_naming("Dropout", lambda: Dropout(0.5)([1.0, -1.0]), TypeError)


# -- MaxPool2d and MaxUnpool2d ------------------------------------------------------------------------

def _pool_reference(x, k, s, ho, wo):
    """The definition: the maximum over each window, windows cut at the map's edge (ceil mode)."""
    n, c, h, w = x.shape
    padded = np.full((n, c, (ho - 1) * s[0] + k[0], (wo - 1) * s[1] + k[1]), -np.inf)
    padded[:, :, :min(h, padded.shape[2]), :min(w, padded.shape[3])] = x[:, :, :padded.shape[2], :padded.shape[3]]
    windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=(2, 3))[:, :, ::s[0], ::s[1]]
    return windows.max(axis=(-2, -1))


@LAYER_SETTINGS
@given(n=st.integers(1, 2), c=small, h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.tuples(small, small), s=st.tuples(small, small), ceil_mode=st.booleans(), dtype=FLOATS, seed=seeds)
def test_maxpool_and_unpool(n, c, h, w, k, s, ceil_mode, dtype, seed):
    pool, unpool = MaxPool2d(k, s, ceil_mode=ceil_mode), MaxUnpool2d(k, s)
    x = _array(seed, (n, c, h, w), dtype, 0.5, 1.5)  # positive: unpooled zeros never win a window
    ho, wo = pooled_size(h, k[0], s[0], ceil_mode), pooled_size(w, k[1], s[1], ceil_mode)
    if min(ho, wo) < 1:
        _raises_naming("MaxPool2d", lambda: pool(x))
        return
    y, indices = pool(x)
    _assert_result(y, (n, c, ho, wo), dtype)
    assert indices.shape == y.shape and indices.dtype.kind == "u" and int(indices.max()) < k[0] * k[1]
    np.testing.assert_array_equal(y, _pool_reference(x, k, s, ho, wo).astype(dtype))
    _assert_result(pool.backward(_array(seed + 1, y.shape, dtype)), x.shape, dtype)
    sparse = unpool(y, indices, (h, w))
    _assert_result(sparse, x.shape, dtype)
    if s[0] >= k[0] and s[1] >= k[1]:  # windows do not overlap: each maximum is written back where it was
        np.testing.assert_array_equal(sparse[sparse != 0], x[sparse != 0])
        np.testing.assert_array_equal(pool(sparse)[0], y)
    _assert_result(unpool.backward(_array(seed + 2, sparse.shape, dtype)), y.shape, dtype)


@LAYER_SETTINGS
@given(bad=wrong_feature_maps(), seed=seeds)
def test_maxpool_and_unpool_refuse_wrong_inputs(bad, seed):
    _raises_naming("MaxPool2d", lambda: MaxPool2d(2)(bad))
    y, indices = MaxPool2d(2)(_array(seed, (1, 2, 4, 4), np.float32))
    unpool = MaxUnpool2d(2)
    _raises_naming("MaxUnpool2d", lambda: unpool(bad, indices, (4, 4)))
    _raises_naming("MaxUnpool2d", lambda: unpool(y, indices.astype(np.float32), (4, 4)), TypeError)
    _raises_naming("MaxUnpool2d", lambda: unpool(y, indices[:, :1], (4, 4)))  # indices of another shape
    _raises_naming("MaxUnpool2d", lambda: unpool(y, indices, (9, 9)))  # a size these windows cannot come from


# -- SoftmaxCrossEntropy --------------------------------------------------------------------------------

@LAYER_SETTINGS
@given(n=st.integers(1, 2), k=st.integers(2, 5), h=st.integers(1, 5), w=st.integers(1, 5), dtype=FLOATS,
       seed=seeds, ignore=st.booleans(), weighted=st.booleans(),
       normalize=st.sampled_from(["valid", "batch", "sum"]), label_dtype=st.sampled_from([np.uint8, np.int64]))
def test_softmax_cross_entropy(n, k, h, w, dtype, seed, ignore, weighted, normalize, label_dtype):
    rng = np.random.default_rng(seed)
    logits = _array(seed, (n, k, h, w), dtype, -5, 5)
    labels = rng.integers(0, k + int(ignore), size=(n, h, w)).astype(label_dtype)  # k: the ignored label
    weight = rng.uniform(0.1, 2.0, size=k) if weighted else None
    loss_layer = SoftmaxCrossEntropy(weight=weight, ignore_index=k if ignore else None, normalize=normalize)
    loss = loss_layer.forward(logits, labels)
    assert isinstance(loss, float) and math.isfinite(loss) and loss >= 0
    grad = loss_layer.backward()
    _assert_result(grad, logits.shape, dtype)
    if ignore:  # ignored pixels get no gradient
        assert not grad.transpose(0, 2, 3, 1)[labels == k].any()


@LAYER_SETTINGS
@given(case=st.sampled_from(["float labels", "label shape", "label too large", "negative label", "logits rank",
                             "logits dtype", "weights"]), seed=seeds)
def test_softmax_cross_entropy_refuses_wrong_inputs(case, seed):
    logits = _array(seed, (2, 3, 4, 4), np.float32)
    labels = np.random.default_rng(seed).integers(0, 3, size=(2, 4, 4))
    layer = SoftmaxCrossEntropy(ignore_index=11)
    call = {
        "float labels": lambda: layer.forward(logits, labels.astype(np.float32)),
        "label shape": lambda: layer.forward(logits, labels[:, :3]),
        "label too large": lambda: layer.forward(logits, np.full_like(labels, 3)),
        "negative label": lambda: layer.forward(logits, np.full_like(labels, -1)),
        "logits rank": lambda: layer.forward(logits[0], labels[0]),
        "logits dtype": lambda: layer.forward(logits.astype(np.int32), labels),
        "weights": lambda: SoftmaxCrossEntropy(weight=np.ones(5)).forward(logits, labels),
    }[case]
    _raises_naming("SoftmaxCrossEntropy", call)


# -- the models ----------------------------------------------------------------------------------------

def _small_model(arch):
    from minisegnet.models import BilinearBasic, FCNBasic, SegNet, SegNetBasic

    return {
        "segnet-basic": lambda: SegNetBasic(channels=4, kernel_size=3, rng=0),
        "segnet": lambda: SegNet(width=1 / 16, rng=0),
        "fcn-basic": lambda: FCNBasic(channels=4, kernel_size=3, rng=0),
        "bilinear-basic": lambda: BilinearBasic(channels=4, kernel_size=3, rng=0),
    }[arch]()


ARCHS = ["segnet-basic", "segnet", "fcn-basic", "bilinear-basic"]


@pytest.mark.parametrize("arch", ARCHS)
@MODEL_SETTINGS
@given(h=st.integers(1, 20), w=st.integers(1, 20), n=st.integers(1, 2), training=st.booleans(), dtype=FLOATS,
       seed=seeds)
def test_models_at_random_sizes(arch, h, w, n, training, dtype, seed):
    model = _small_model(arch).astype(dtype)
    model.train(training)
    x = _array(seed, (n, 3, h, w), dtype)
    try:
        logits = model.forward(x)
    except ValueError as exc:  # the one documented refusal: BatchNorm with one value per channel in training
        assert training and "BatchNorm2d" in str(exc) and "more than 1 value per channel" in str(exc), exc
        return
    _assert_result(logits, (n, 11, h, w), dtype)
    model.zero_grad()
    dx = model.backward(_array(seed + 1, logits.shape, dtype), input_grad=True)
    _assert_result(dx, x.shape, dtype)
    _assert_grads(model)
    with no_grad():  # and inference gives the same shapes
        probs = model.eval().predict_proba(x)
    _assert_result(probs, (n, 11, h, w), dtype)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@MODEL_SETTINGS
@given(case=st.sampled_from(["channels", "rank", "integer dtype", "float64 into float32", "list"]), seed=seeds)
def test_models_refuse_wrong_inputs_naming_a_layer(arch, case, seed):
    model = _small_model(arch).eval()
    x = {
        "channels": lambda: _array(seed, (1, 1, 8, 8), np.float32),
        "rank": lambda: _array(seed, (3, 8, 8), np.float32),
        "integer dtype": lambda: _array(seed, (1, 3, 8, 8), np.uint8),
        "float64 into float32": lambda: _array(seed, (1, 3, 8, 8), np.float64),
        "list": lambda: [[0.0]],
    }[case]()
    with pytest.raises((ValueError, TypeError)) as info:
        model.forward(x)
    message = str(info.value)
    assert any(name in message for name in ("Conv2d", type(model).__name__)), message

"""CuPy against NumPy: every layer's forward and backward give the same numbers on the GPU.

Each test builds a layer on the CPU, copies it (``copy.deepcopy``) and moves the copy
with ``.to("cuda")``, feeds both the same inputs and compares outputs, input gradients,
parameter gradients and buffers.  float64 agrees to summation-order rounding
(``rtol=1e-9``); float32 to ``rtol=1e-4``.  All tests carry the ``gpu`` marker and are
skipped, with the reason, where CuPy or a GPU is missing (see conftest.py).

``DEVICE`` is a module constant so the harness itself can be exercised on a machine
without a GPU by pointing it at ``"cpu"``.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet import BatchNorm2d, Conv2d, Dropout, MaxPool2d, MaxUnpool2d, ReLU, SoftmaxCrossEntropy
from minisegnet.backend import device_of, to_device, to_numpy

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
TOLERANCE = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-5)}


def tie_free(rng, shape, dtype):
    """Distinct values, none zero (max pooling and ReLU are smooth there)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 0.25) / size * 2 - 1).reshape(shape).astype(dtype)


def on_device(layer):
    """A copy of ``layer`` on ``DEVICE`` (the original stays on the CPU)."""
    return copy.deepcopy(layer).to(DEVICE)


def assert_same(cpu, dev, dtype, what):
    """``dev`` (on DEVICE) equals ``cpu`` within the dtype's tolerance."""
    assert device_of(dev) == DEVICE, f"{what} is on {device_of(dev)}, expected {DEVICE}"
    np.testing.assert_allclose(to_numpy(dev), to_numpy(cpu), err_msg=what, **TOLERANCE[np.dtype(dtype).type])


def assert_same_state(cpu_layer, dev_layer, dtype):
    """Parameters, their gradients and buffers agree."""
    dev_params = dict(dev_layer.named_parameters())
    for name, p in cpu_layer.named_parameters():
        q = dev_params[name]
        assert_same(p.data, q.data, dtype, f"parameter {name}")
        assert (p.grad is None) == (q.grad is None), f"gradient of {name} exists on one device only"
        if p.grad is not None:
            assert_same(p.grad, q.grad, dtype, f"gradient of {name}")
    dev_buffers = dict(dev_layer.named_buffers())
    for name, b in cpu_layer.named_buffers():
        if np.dtype(b.dtype).kind == "f":
            assert_same(b, dev_buffers[name], dtype, f"buffer {name}")
        else:
            np.testing.assert_array_equal(to_numpy(dev_buffers[name]), to_numpy(b), err_msg=f"buffer {name}")


def compare_single_input(layer, x, dtype, rng):
    """Forward ``x`` and backward a random ``dy`` through ``layer`` on the CPU and on DEVICE."""
    dev_layer = on_device(layer)
    y = layer(x)
    y_dev = dev_layer(to_device(x, DEVICE))
    assert_same(y, y_dev, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dx_dev = dev_layer.backward(to_device(dy, DEVICE))
    assert_same(dx, dx_dev, dtype, "input gradient")
    assert dx_dev.dtype == dtype
    assert_same_state(layer, dev_layer, dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "cin, cout, k, stride, padding, bias, shape",
    [
        (3, 4, 3, 1, 1, True, (2, 3, 9, 11)),
        (3, 5, 7, 1, 3, True, (2, 3, 12, 13)),  # SegNet-Basic's 7×7
        (3, 5, 7, 2, 3, False, (2, 3, 16, 13)),  # stride 2
        (4, 2, 1, 1, 0, True, (1, 4, 5, 7)),  # 1×1
    ],
)
def test_conv2d(cin, cout, k, stride, padding, bias, shape, dtype, rng):
    layer = Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias).astype(dtype)
    compare_single_input(layer, rng.standard_normal(shape).astype(dtype), dtype, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm2d(mode, dtype, rng):
    layer = BatchNorm2d(4).astype(dtype)
    layer.weight.data[:] = rng.uniform(0.5, 1.5, 4)
    layer.bias.data[:] = rng.standard_normal(4)
    layer.running_mean[:] = rng.standard_normal(4)
    layer.running_var[:] = rng.uniform(0.5, 2.0, 4)
    if mode == "eval":
        layer.eval().requires_grad_(True)
    x = (3 * rng.standard_normal((3, 4, 5, 7)) + 1).astype(dtype)
    compare_single_input(layer, x, dtype, rng)  # train mode also compares the updated running statistics


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu(dtype, rng):
    compare_single_input(ReLU(), tie_free(rng, (2, 3, 5, 7), dtype), dtype, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_and_unpool(dtype, rng):
    x = tie_free(rng, (2, 3, 9, 11), dtype)
    pool, unpool = MaxPool2d(2, 2, ceil_mode=True), MaxUnpool2d(2, 2)
    pool_dev, unpool_dev = on_device(pool), on_device(unpool)
    y, idx = pool(x)
    y_dev, idx_dev = pool_dev(to_device(x, DEVICE))
    assert_same(y, y_dev, dtype, "pooled values")
    assert idx_dev.dtype == np.uint8 and device_of(idx_dev) == DEVICE
    np.testing.assert_array_equal(to_numpy(idx_dev), idx)
    z = unpool(y, idx, x.shape[2:])
    z_dev = unpool_dev(y_dev, idx_dev, x.shape[2:])
    assert_same(z, z_dev, dtype, "unpooled map")
    dz = rng.standard_normal(z.shape).astype(dtype)
    dy = unpool.backward(dz)
    dy_dev = unpool_dev.backward(to_device(dz, DEVICE))
    assert_same(dy, dy_dev, dtype, "unpool input gradient")
    assert_same(pool.backward(dy), pool_dev.backward(dy_dev), dtype, "pool input gradient")


def test_overlapping_pool(rng):
    compare_pool = MaxPool2d(3, 2)
    x = tie_free(rng, (1, 2, 7, 10), np.float64)
    dev = on_device(compare_pool)
    y, idx = compare_pool(x)
    y_dev, idx_dev = dev(to_device(x, DEVICE))
    np.testing.assert_array_equal(to_numpy(idx_dev), idx)
    dy = rng.standard_normal(y.shape)
    assert_same(compare_pool.backward(dy), dev.backward(to_device(dy, DEVICE)), np.float64, "overlapping pool gradient")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("normalize", ["valid", "weights"])
def test_softmax_cross_entropy(normalize, dtype, rng):
    k = 5
    weight = rng.uniform(0.2, 3.0, k)
    layer = SoftmaxCrossEntropy(weight=weight, ignore_index=k, normalize=normalize)
    dev_layer = on_device(layer)
    logits = (3 * rng.standard_normal((2, k, 6, 7))).astype(dtype)
    labels = rng.integers(0, k + 1, (2, 6, 7)).astype(np.uint8)  # label k is ignored
    loss = layer(logits, labels)
    loss_dev = dev_layer(to_device(logits, DEVICE), to_device(labels, DEVICE))
    assert isinstance(loss_dev, float)
    assert loss_dev == pytest.approx(loss, rel=TOLERANCE[np.dtype(dtype).type]["rtol"])
    g = 0.7
    assert_same(layer.backward(g), dev_layer.backward(g), dtype, "logit gradient")


def test_dropout_statistics(rng):
    """CuPy's and NumPy's generators differ, so compare the behaviour, not the masks."""
    p = 0.3
    layer = Dropout(p, seed=0).to(DEVICE)
    x = to_device(np.ones((4, 8, 16, 16)), DEVICE)
    y = layer(x)
    assert device_of(y) == DEVICE
    y_host = to_numpy(y)
    kept = y_host != 0
    np.testing.assert_allclose(y_host[kept], 1 / (1 - p))  # inverted dropout: survivors scaled up
    assert abs(1 - kept.mean() - p) < 0.03  # 8192 draws: the dropped fraction is p within ~4 sigma
    dy = rng.standard_normal(x.shape)
    dx = to_numpy(layer.backward(to_device(dy, DEVICE)))
    np.testing.assert_allclose(dx, dy * kept / (1 - p), rtol=1e-12)  # the same mask in backward
    layer.reseed(0)
    np.testing.assert_array_equal(to_numpy(layer(x)), y_host)  # a seed makes the GPU masks reproducible
    layer.eval()
    assert layer(x) is x  # identity in eval mode ...
    layer.mc_sampling = True
    assert (to_numpy(layer(x)) == 0).any()  # ... unless Monte-Carlo sampling is on


def test_segnet_basic_forward_backward(rng):
    models = pytest.importorskip("minisegnet.models", reason="minisegnet.models is not available")
    if not hasattr(models, "SegNetBasic"):
        pytest.skip("minisegnet.models.SegNetBasic is not available")
    model = models.SegNetBasic(in_channels=3, num_classes=5, channels=8, kernel_size=3).double()
    dev_model = on_device(model)
    x = rng.standard_normal((2, 3, 21, 30))  # odd sizes: ceil-mode pooling and unpooling to odd maps
    logits = model(x)
    logits_dev = dev_model(to_device(x, DEVICE))
    assert_same(logits, logits_dev, np.float64, "logits")
    dlogits = rng.standard_normal(logits.shape)
    dx = model.backward(dlogits)
    dx_dev = dev_model.backward(to_device(dlogits, DEVICE))
    assert_same(dx, dx_dev, np.float64, "input gradient")
    assert_same_state(model, dev_model, np.float64)

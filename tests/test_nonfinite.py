"""One infinite value must not turn its neighbours into NaN (issue: masks as products).

ReLU's backward, pooling's backward (a scatter) and unpooling's forward and backward (a scatter
and a gather) keep some values and zero the others.  A product with the 0/1 mask would make
``inf * 0 = nan`` at every discarded position; the layers *select* instead
(:mod:`minisegnet.layers.masking`), so the discarded positions are exactly 0, as in PyTorch.
"""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet.layers import MaxPool2d, MaxUnpool2d, ReLU
from minisegnet.layers.masking import select


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_select_keeps_every_value_bit_for_bit_and_zeros_the_rest(dtype):
    values = np.array([1.5, -np.inf, np.inf, np.nan, -0.0, 3.0], dtype=dtype)
    mask = np.array([True, True, False, False, True, False])
    out = select(mask, values)
    np.testing.assert_array_equal(out[mask], values[mask])
    assert np.signbit(out[4])  # -0.0 kept as it is
    assert np.all(out[~mask] == 0) and not np.signbit(out[~mask]).any()
    strided = np.full(12, 7.0, dtype=dtype)
    select(mask, values, out=strided[::2])  # into a strided view
    np.testing.assert_array_equal(strided[1::2], 7.0)
    np.testing.assert_array_equal(strided[::2], out)


def _inf_gradient(shape, rng, where):
    dy = rng.standard_normal(shape)
    dy[where] = np.inf
    return dy


def test_relu_backward_gives_zero_where_inactive_even_for_an_infinite_gradient(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    x[0, 0, 0, 0] = -1.0  # inactive unit ...
    dy = _inf_gradient(x.shape, rng, (0, 0, 0, 0))  # ... receiving an infinite gradient
    relu = ReLU()
    relu(x)
    dx = relu.backward(dy)
    assert dx[0, 0, 0, 0] == 0 and not np.isnan(dx).any()


def test_pool_backward_and_unpool_keep_an_infinite_value_in_its_pixel_only(tie_free):
    x = tie_free((1, 1, 4, 6))
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    y, idx = pool(x)
    dy = np.ones_like(y)
    dy[0, 0, 1, 1] = np.inf
    dx = pool.backward(dy)
    assert np.isinf(dx).sum() == 1 and not np.isnan(dx).any()  # the other 3 pixels of the window: 0
    assert unpool(dy, idx, x.shape).sum() == np.inf and not np.isnan(unpool(dy, idx, x.shape)).any()
    unpool(y, idx, x.shape)
    g = np.ones_like(x)
    g[0, 0, 0, 0] = np.inf if idx[0, 0, 0, 0] != 0 else 1.0  # an infinite gradient at a pixel no window chose
    g[0, 0, 0, 1] = np.inf if idx[0, 0, 0, 0] != 1 else 1.0
    dv = unpool.backward(g)
    assert not np.isnan(dv).any() and np.isfinite(dv[0, 0, 0, 0])


@pytest.mark.torch
def test_non_finite_gradients_match_pytorch(torch, tie_free, rng):
    x = tie_free((2, 3, 6, 8))
    dy_pool = rng.standard_normal((2, 3, 3, 4))
    dy_pool[0, 1, 1, 2] = np.inf
    dy_pool[1, 0, 0, 0] = -np.inf
    pool = MaxPool2d()
    pool(x)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 2, 2, ceil_mode=True).backward(torch.tensor(dy_pool))
    np.testing.assert_array_equal(pool.backward(dy_pool), tx.grad.numpy())

    dy_relu = rng.standard_normal(x.shape)
    dy_relu[x < 0] = np.inf  # every inactive unit receives inf
    relu = ReLU()
    relu(x - 0.5)
    tx = torch.tensor(x - 0.5, requires_grad=True)
    torch.relu(tx).backward(torch.tensor(dy_relu))
    np.testing.assert_array_equal(relu.backward(dy_relu), tx.grad.numpy())

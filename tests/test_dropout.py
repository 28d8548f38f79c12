"""Dropout: inverted scaling, train / eval / Monte-Carlo modes, reseeding, backward."""
import numpy as np
import pytest

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import gradcheck
from minisegnet.layers.dropout import Dropout


def random_map(shape=(2, 3, 4, 5), seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def check_with_fixed_mask(layer, x, seed=123):
    """Gradient check where every forward draws the same mask (reseeded inside the closure)."""

    def forward(x):
        layer.reseed(seed)
        return layer.forward(x)

    gradcheck(forward, layer.backward, [x])


def test_gradcheck_training_mode():
    check_with_fixed_mask(Dropout(0.4), random_map())


def test_gradcheck_mc_sampling_in_eval_mode():
    layer = Dropout(0.3).eval()
    layer.mc_sampling = True
    check_with_fixed_mask(layer, random_map((1, 2, 3, 7)))


def test_gradcheck_identity_in_eval_mode():
    layer = Dropout(0.5).eval()
    gradcheck(layer.forward, layer.backward, [random_map()])


def test_training_drops_about_p_and_scales_survivors():
    p = 0.3
    layer = Dropout(p, seed=0)
    x = np.ones((4, 8, 16, 16), np.float32)  # 8192 values
    y = layer.forward(x)
    assert y.dtype == np.float32
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 0.03  # ~6 standard deviations
    assert abs(y.mean() - 1.0) < 0.05  # inverted dropout keeps the expectation


def test_backward_uses_the_forward_mask():
    p = 0.5
    layer = Dropout(p, seed=1)
    x = random_map(seed=2) + 10.0  # no exact zeros in x, so y == 0 marks a dropped value
    y = layer.forward(x)
    dy = random_map(seed=3)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, np.where(y != 0, dy / (1 - p), 0.0), rtol=1e-15)
    np.testing.assert_array_equal(dy, dy_before)
    assert layer._keep_mask.dtype == np.bool_


def test_eval_is_the_identity_and_no_grad_keeps_nothing():
    layer = Dropout(0.5).eval()
    x = random_map()
    with no_grad():
        assert layer.forward(x) is x
    assert layer._keep_mask is None and layer._output_shape is None
    with pytest.raises(RuntimeError, match="Dropout.backward called before forward"):
        layer.backward(np.ones_like(x))
    assert layer.forward(x) is x  # eval, grad enabled: the identity, differentiable
    dy = random_map(seed=5)
    assert layer.backward(dy) is dy


def test_no_grad_forward_between_forward_and_backward_keeps_the_mask():
    layer = Dropout(0.5, seed=0)
    x = np.ones((1, 4, 8, 8))
    y = layer.forward(x)
    with no_grad():
        layer.forward(x)  # draws another mask, but keeps nothing
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)


def test_mc_sampling_is_active_in_eval_mode():
    layer = Dropout(0.5, seed=0).eval()
    assert not layer.active
    layer.mc_sampling = True
    assert layer.active
    x = np.ones((1, 4, 8, 8))
    a, b = layer.forward(x), layer.forward(x)
    assert set(np.unique(a)) == {0.0, 2.0}
    assert not np.array_equal(a, b)  # a fresh mask per pass: that is what MC sampling averages over
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), b)  # differentiable, with the last mask
    with no_grad():
        layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), b)  # no_grad kept nothing new


def test_p_zero_is_identity_even_in_training():
    layer = Dropout(0.0)
    x = random_map()
    assert layer.forward(x) is x
    assert layer.backward(x) is x


def test_reseed_gives_identical_masks_and_sequences():
    x = np.ones((2, 3, 5, 5))
    a = Dropout(0.5, seed=42)
    b = Dropout(0.5, seed=42)
    first, second = a.forward(x), a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))
    np.testing.assert_array_equal(second, b.forward(x))
    assert not np.array_equal(first, second)
    a.reseed(42)
    np.testing.assert_array_equal(a.forward(x), first)
    assert Dropout(0.5).forward(x).shape == x.shape  # seed=None: fresh entropy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    layer = Dropout(0.5, seed=0)
    y = layer.forward(random_map(dtype=dtype))
    assert y.dtype == dtype
    assert layer.backward(np.ones_like(y)).dtype == dtype


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, True, "0.5", None])
def test_bad_probability(p):
    with pytest.raises(ValueError, match="Dropout: expected a drop probability p with 0 <= p < 1"):
        Dropout(p)


def test_bad_input():
    layer = Dropout(0.5)
    with pytest.raises(RuntimeError, match="Dropout.backward called before forward"):
        layer.backward(np.ones((2, 2)))
    with pytest.raises(ValueError, match="Dropout: expected a floating-point input"):
        layer.forward(np.ones((2, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="Dropout: expected the input as a NumPy/CuPy array"):
        layer.forward([1.0, 2.0])
    layer.forward(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"Dropout.backward: expected an upstream gradient of shape \(2, 2\)"):
        layer.backward(np.ones((2, 3)))

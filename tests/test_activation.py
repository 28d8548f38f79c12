"""ReLU: forward, a backward that never touches the incoming gradient, modes, bad input."""
import numpy as np
import pytest

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import check_module, gradcheck
from minisegnet.layers.activation import ReLU


def away_from_zero(shape, seed=0):
    """Random values with |x| >= 0.1, so central differences never straddle the kink."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], shape) * (0.1 + np.abs(rng.standard_normal(shape)))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 3, 7), (5,)])
def test_gradcheck(shape):
    check_module(ReLU(), away_from_zero(shape))


def test_gradcheck_inplace():
    relu = ReLU(inplace=True)
    # the forward overwrites its input, so each finite-difference forward gets a copy
    gradcheck(lambda x: relu.forward(x.copy()), relu.backward, [away_from_zero((2, 2, 3, 3))])


def test_forward_values_and_gradient_at_zero():
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]], dtype=np.float32)
    relu = ReLU()
    y = relu.forward(x)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 0.5, 3.0]])
    dx = relu.backward(np.full_like(x, 7.0))
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, 7.0, 7.0]])  # 0 at the kink, as PyTorch


def test_backward_never_modifies_the_incoming_gradient():
    relu = ReLU()
    x = away_from_zero((2, 3, 4, 4))
    relu.forward(x)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    dy_before = dy.copy()
    dx = relu.backward(dy)
    np.testing.assert_array_equal(dy, dy_before)
    assert not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    relu = ReLU()
    x = away_from_zero((2, 3, 2, 2)).astype(dtype)
    y = relu.forward(x)
    assert y.dtype == dtype and relu.backward(np.ones_like(y)).dtype == dtype
    assert relu._mask.dtype == np.bool_


def test_forward_leaves_input_alone_unless_inplace():
    x = away_from_zero((2, 2, 2, 2))
    x_before = x.copy()
    ReLU().forward(x)
    np.testing.assert_array_equal(x, x_before)
    y = ReLU(inplace=True).forward(x)
    assert y is x and (x >= 0).all()


@pytest.mark.parametrize("row", [7, 32, 10_000])  # rows plus a tail, rows only, one short row
@pytest.mark.parametrize("inplace", [False, True])
def test_forward_is_maximum_with_zero_bit_for_bit(monkeypatch, row, inplace):
    """The row-of-zeros form of the maximum gives ``np.maximum(x, 0)`` exactly, NaN and -0.0 included."""
    from minisegnet.layers import activation

    monkeypatch.setattr(activation, "_ZERO_ROW", row)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)  # 192 values: 7 does not divide them
    x.reshape(-1)[[0, 5, 50, 99, 150, 191]] = [np.nan, -np.inf, np.inf, -0.0, -np.nan, 0.0]
    for case in (x, x[:, :, ::2], np.asfortranarray(x)):  # contiguous, strided, F-ordered
        expected = np.maximum(case, np.float32(0))
        given = case.copy(order="K")
        y = ReLU(inplace=inplace).forward(given)
        assert (y is given) == inplace
        np.testing.assert_array_equal(y, expected)  # NaN where NaN
        np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


def test_modes_and_cache():
    x = away_from_zero((1, 2, 3, 3))
    relu = ReLU()
    with no_grad():
        relu.forward(x)
    assert relu._mask is None  # inference keeps nothing
    with pytest.raises(RuntimeError, match="ReLU.backward called before forward"):
        relu.backward(np.ones_like(x))
    relu.eval().forward(x)  # eval mode computes the same and stays differentiable
    with no_grad():
        relu.forward(-x)  # an inference call in between leaves the mask alone
    np.testing.assert_array_equal(relu.backward(np.ones_like(x)), (x > 0).astype(x.dtype))


def test_bad_input():
    relu = ReLU()
    with pytest.raises(RuntimeError, match="ReLU.backward called before forward"):
        relu.backward(np.ones((2, 2)))
    with pytest.raises(ValueError, match="ReLU: expected a floating-point input"):
        relu.forward(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="ReLU: expected input as a NumPy/CuPy array"):
        relu.forward([1.0, -1.0])
    relu.forward(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"ReLU.backward: expected an upstream gradient of shape \(2, 2\)"):
        relu.backward(np.ones((2, 3)))


def test_parity_with_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the test oracle for parity tests")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.ReLU()(xt).backward(torch.from_numpy(dy))
    relu = ReLU()
    np.testing.assert_array_equal(relu.forward(x), torch.relu(torch.from_numpy(x)).numpy())
    np.testing.assert_array_equal(relu.backward(dy), xt.grad.numpy())

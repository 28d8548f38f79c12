"""BatchNorm2d: per-channel statistics, running stats, backward in train and eval mode."""
import numpy as np
import pytest

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import check_module
from minisegnet.layers.batchnorm import BatchNorm2d


def make_bn(channels, dtype=np.float64, seed=0, **kwargs):
    """A BatchNorm2d with non-trivial gamma and beta, in ``dtype``."""
    rng = np.random.default_rng(seed)
    bn = BatchNorm2d(channels, **kwargs).astype(dtype)
    bn.weight.data[...] = rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels)
    bn.bias.data[...] = rng.standard_normal(channels)
    return bn


def set_running_stats(bn, seed=1):
    rng = np.random.default_rng(seed)
    bn.running_mean[...] = rng.standard_normal(bn.num_features)
    bn.running_var[...] = rng.uniform(0.3, 3.0, bn.num_features)


def random_map(shape, seed=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    # per-channel offsets and scales so that normalisation does something
    c = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (1, c, 1, 1)) + rng.standard_normal((1, c, 1, 1))
    return x.astype(dtype)


# -- gradient checks ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (3, 2, 5, 7), (4, 3, 1, 1), (1, 1, 1, 2)])
def test_gradcheck_training_mode(shape):
    bn = make_bn(shape[1])
    check_module(bn, random_map(shape))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (3, 2, 5, 7), (1, 3, 1, 1)])
def test_gradcheck_eval_mode(shape):
    bn = make_bn(shape[1])
    set_running_stats(bn)
    bn.eval()  # running statistics; an eval-mode forward can be differentiated
    check_module(bn, random_map(shape))


def test_backward_uses_the_mode_of_its_forward():
    x = random_map((2, 3, 4, 4))
    dy = np.random.default_rng(5).standard_normal(x.shape)
    reference = make_bn(3)
    reference.forward(x)
    expected = reference.backward(dy)
    bn = make_bn(3)
    bn.forward(x)  # training-mode forward
    bn.eval()  # switching mode before backward must not change the formula
    np.testing.assert_allclose(bn.backward(dy), expected, rtol=1e-12, atol=1e-12)


# -- forward behaviour -------------------------------------------------------------------

def test_statistics_are_per_channel_not_per_activation():
    bn = BatchNorm2d(3).double()
    x = random_map((4, 3, 5, 6))
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    expected_var = x.var(axis=(0, 2, 3)) / (x.var(axis=(0, 2, 3)) + bn.eps)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), expected_var, rtol=1e-12)
    # a per-activation BatchNorm would give zero mean at every (c, h, w); ours does not
    assert np.abs(y.mean(axis=0)).max() > 0.1


def test_training_forward_formula_and_running_stats_update():
    bn = make_bn(3, momentum=0.25)
    set_running_stats(bn)
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    x = random_map((2, 3, 3, 4))
    y = bn.forward(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    g, b = bn.weight.data, bn.bias.data
    expected = g[None, :, None, None] * (x - mean[None, :, None, None]) / np.sqrt(var + bn.eps)[None, :, None, None]
    np.testing.assert_allclose(y, expected + b[None, :, None, None], rtol=1e-12, atol=1e-12)
    m = 2 * 3 * 4
    np.testing.assert_allclose(bn.running_mean, 0.75 * rm0 + 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 * rv0 + 0.25 * var * m / (m - 1), rtol=1e-12)  # unbiased
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64
    assert int(bn.num_batches_tracked) == 1


def test_buffers_stay_registered_after_updates():
    bn = BatchNorm2d(2)
    for _ in range(2):
        bn.forward(random_map((2, 2, 3, 3), dtype=np.float32))
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert int(state["num_batches_tracked"]) == 2
    assert not np.allclose(state["running_mean"], 0.0)


def test_momentum_none_gives_cumulative_average():
    bn = BatchNorm2d(2, momentum=None).double()
    xs = [random_map((2, 2, 3, 3), seed=s) for s in range(3)]
    for x in xs:
        bn.forward(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(axis=(0, 2, 3)) for x in xs], axis=0), rtol=1e-12)
    m = 2 * 3 * 3
    unbiased = [x.var(axis=(0, 2, 3)) * m / (m - 1) for x in xs]
    np.testing.assert_allclose(bn.running_var, np.mean(unbiased, axis=0), rtol=1e-12)


def test_eval_uses_running_stats_and_leaves_them_alone():
    bn = make_bn(3)
    set_running_stats(bn)
    bn.eval()
    before = {k: v.copy() for k, v in bn.state_dict().items()}
    x = random_map((1, 3, 2, 3))
    y = bn.forward(x)
    rm, rv = bn.running_mean[None, :, None, None], bn.running_var[None, :, None, None]
    expected = bn.weight.data[None, :, None, None] * (x - rm) / np.sqrt(rv + bn.eps) + bn.bias.data[None, :, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # eval mode still keeps what its backward needs (PyTorch's semantics): dx = dy * gamma / sigma
    dy = random_map((1, 3, 2, 3), seed=4)
    scale = bn.weight.data / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(bn.backward(dy), dy * scale[None, :, None, None], rtol=1e-12)


def test_no_grad_keeps_nothing_gives_the_same_output_and_spares_a_pending_backward():
    x = random_map((2, 3, 3, 3))
    with_cache = make_bn(3).forward(x)
    bn = make_bn(3)
    with no_grad():  # training statistics, but no activations kept
        np.testing.assert_allclose(bn.forward(x), with_cache, rtol=1e-12, atol=1e-12)
    assert bn._input is None and bn._mean is None
    with pytest.raises(RuntimeError, match="BatchNorm2d.backward called before forward"):
        bn.backward(np.ones_like(x))
    # a no_grad forward between a forward and its backward changes nothing of that backward
    dy = random_map((2, 3, 3, 3), seed=7)
    reference = make_bn(3)
    reference.forward(x)
    expected = reference.backward(dy)
    bn = make_bn(3)
    bn.forward(x)
    with no_grad():
        bn.forward(random_map((2, 3, 3, 3), seed=8))  # same shape: must not touch the kept input or statistics
    np.testing.assert_array_equal(bn.backward(dy), expected)
    np.testing.assert_array_equal(bn.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_the_layer_and_another_dtype_is_refused(dtype):
    bn = BatchNorm2d(2).astype(dtype)
    x = random_map((2, 2, 3, 3), dtype=dtype)
    y = bn.forward(x)
    dx = bn.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    assert bn._mean.dtype == dtype and bn._inv_std.dtype == dtype
    assert bn.running_mean.dtype == dtype and bn.weight.grad.dtype == dtype
    bn.eval()
    assert bn.forward(x).dtype == dtype
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(TypeError, match=r"BatchNorm2d\(2\): expected an input of the layer's dtype"):
        bn.forward(x.astype(other))


def test_param_grads_accumulate_across_backwards():
    bn = make_bn(3)
    x = random_map((2, 3, 3, 4))
    dy = np.random.default_rng(3).standard_normal(x.shape)
    bn.forward(x)
    bn.backward(dy)
    g1, b1 = bn.weight.grad.copy(), bn.bias.grad.copy()
    bn.forward(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.weight.grad, 2 * g1, rtol=1e-12)
    np.testing.assert_allclose(bn.bias.grad, 2 * b1, rtol=1e-12)
    bn.zero_grad()
    assert bn.weight.grad is None


def test_the_forward_keeps_its_input_not_a_centred_copy_and_a_copy_of_the_running_mean():
    """The backward's cache is the input itself (no centred copy); an eval-mode forward keeps a copy
    of the running mean, so a training forward before that backward (which moves the running
    statistics in place) changes nothing of it."""
    import copy

    bn = make_bn(3)
    x = random_map((2, 3, 4, 5))
    bn.forward(x)
    assert bn._input is x and bn._mean.shape == (3,)
    bn.forward(random_map((2, 3, 4, 5), seed=10) + 5.0)  # moves the running mean away from 0
    bn.eval()
    bn.forward(x)
    assert not np.shares_memory(bn._mean, bn.running_mean)
    dy = random_map((2, 3, 4, 5), seed=9)
    expected = copy.deepcopy(bn).backward(dy)
    bn.train()
    before = bn.running_mean.copy()
    with no_grad():
        bn.forward(random_map((2, 3, 4, 5), seed=11) - 3.0)  # updates the running statistics, keeps nothing
    assert not np.allclose(bn.running_mean, before)
    np.testing.assert_array_equal(bn.backward(dy), expected)


def test_training_input_gradient_is_centred_and_orthogonal_to_xhat():
    bn = make_bn(3, eps=1e-12)  # orthogonality is exact only as eps -> 0
    x = random_map((2, 3, 4, 4))
    bn.forward(x)
    dx = bn.backward(np.random.default_rng(4).standard_normal(x.shape))
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0.0, atol=1e-10)
    xhat = (x - bn._mean[None, :, None, None]) * bn._inv_std[None, :, None, None]
    np.testing.assert_allclose(np.einsum("nchw,nchw->c", dx, xhat), 0.0, atol=1e-10)


def test_channel_dot_is_the_per_channel_sum_of_products_for_any_strides():
    from minisegnet.layers.batchnorm import _channel_dot

    rng = np.random.default_rng(6)
    a = rng.standard_normal((3, 4, 5, 6))
    b = rng.standard_normal((6, 5, 4, 3)).transpose(3, 2, 1, 0)  # not contiguous
    np.testing.assert_allclose(_channel_dot(a, b), np.einsum("nchw,nchw->c", a, b), rtol=1e-12)
    np.testing.assert_allclose(_channel_dot(a[:, :, ::2], a[:, :, ::2]), (a[:, :, ::2] ** 2).sum(axis=(0, 2, 3)),
                               rtol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_backward_of_a_non_contiguous_gradient_equals_the_contiguous_one(train):
    x = random_map((2, 3, 4, 5))
    dy = np.ascontiguousarray(random_map((5, 4, 3, 2), seed=9).transpose(3, 2, 1, 0))
    results = []
    for grad in (dy, np.asfortranarray(dy)):
        bn = make_bn(3)
        set_running_stats(bn)
        bn.train(train).forward(x)
        results.append((bn.backward(grad), bn.weight.grad, bn.bias.grad))
    for contiguous, strided in zip(*results):
        np.testing.assert_allclose(strided, contiguous, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_float32_statistics_are_as_accurate_as_float32_allows(offset):
    """A float32 layer against the float64 one on the same (float32) values.

    With ``offset = 1000`` standard deviations the one-pass variance ``E[x^2] - E[x]^2``
    loses about ``log10(offset^2)`` = 6 of float32's 7 digits; the two-pass variance keeps
    them.  The tolerances scale with the float32 spacing of the values involved.
    """
    rng = np.random.default_rng(11)
    shape = (2, 3, 40, 50)
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ours, reference = make_bn(3, dtype=np.float32), make_bn(3, dtype=np.float64)
    y, dx = ours.forward(x), ours.backward(dy)
    y64, dx64 = reference.forward(x.astype(np.float64)), reference.backward(dy.astype(np.float64))
    m = shape[0] * shape[2] * shape[3]
    eps32 = np.finfo(np.float32).eps
    gamma = np.abs(reference.weight.data).max()
    # the mean itself is rounded to float32: an error of about spacing(offset) per value of y
    mean_rounding = float(np.spacing(np.float32(max(offset, 1.0)))) * gamma
    np.testing.assert_allclose(y, y64, rtol=0, atol=8 * mean_rounding + 50 * eps32 * np.abs(y64).max())
    np.testing.assert_allclose(ours.running_var, reference.running_var, rtol=50 * eps32)
    np.testing.assert_allclose(dx, dx64, rtol=0, atol=200 * eps32 * np.abs(dx64).max())
    tol = (8 * mean_rounding + 50 * eps32) * np.sqrt(m) * np.abs(dy).max()
    np.testing.assert_allclose(ours.weight.grad, reference.weight.grad, rtol=0, atol=tol)
    np.testing.assert_allclose(ours.bias.grad, reference.bias.grad, rtol=1e-5)


class NoHostReads(np.ndarray):
    """An array whose values cannot be read by the host: each read is a GPU sync on CuPy."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a device value was read back to the host (a GPU sync)")

    __bool__ = __int__ = __float__ = __index__ = item = tolist = _refuse


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("train", [True, False])
def test_forward_and_backward_read_no_device_value(train, momentum):
    """``momentum=None`` needs ``1 / num_batches_tracked``: it stays an array, never a float."""
    bn = make_bn(3, dtype=np.float32, momentum=momentum)
    bn._map_arrays(lambda a: a.view(NoHostReads))
    bn.train(train)
    x = random_map((2, 3, 4, 5), dtype=np.float32).view(NoHostReads)
    for _ in range(2):  # a second forward and backward on the kept statistics
        y = bn.forward(x)
        bn.backward(y)
        with no_grad():
            bn.forward(x)
    assert type(bn.running_mean) is NoHostReads and type(bn.num_batches_tracked) is NoHostReads
    assert bn.num_batches_tracked.view(np.ndarray) == (4 if train else 0)


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "x, error, message",
    [
        (np.zeros((2, 3, 4), np.float32), ValueError, "4-D"),
        (np.zeros((2, 4, 3, 3), np.float32), ValueError, "3 channels, got 4"),
        (np.zeros((2, 3, 3, 3), np.int32), ValueError, "floating-point"),
        ([[[[1.0]]]], TypeError, "array"),
    ],
)
def test_bad_input(x, error, message):
    with pytest.raises(error, match=message) as info:
        BatchNorm2d(3).forward(x)
    assert "BatchNorm2d" in str(info.value)


def test_single_value_per_channel_in_training_raises_but_eval_is_fine():
    x = np.ones((1, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(3).forward(x)
    assert BatchNorm2d(3).eval().forward(x).shape == x.shape


def test_backward_errors():
    bn = BatchNorm2d(2)
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.zeros((1, 2, 2, 2), np.float32))
    bn.forward(np.ones((1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d.backward: .* gradient of shape \(1, 2, 2, 2\)"):
        bn.backward(np.zeros((1, 2, 2, 3), np.float32))
    fresh = BatchNorm2d(2)
    with no_grad():
        fresh.forward(np.ones((1, 2, 2, 2), np.float32))  # nothing kept
    with pytest.raises(RuntimeError, match="no_grad"):
        fresh.backward(np.zeros((1, 2, 2, 2), np.float32))
    fresh.eval().forward(np.ones((1, 2, 2, 2), np.float32))  # eval mode, grad enabled: differentiable
    assert fresh.backward(np.ones((1, 2, 2, 2), np.float32)).shape == (1, 2, 2, 2)


def test_frozen_parameters_get_no_gradient_and_dx_is_unchanged():
    x, dy = random_map((2, 3, 4, 5)), random_map((2, 3, 4, 5), seed=3)
    for train in (True, False):
        free, frozen = make_bn(3).train(train), make_bn(3).train(train)
        frozen.requires_grad_(False)
        free.forward(x), frozen.forward(x)
        np.testing.assert_array_equal(frozen.backward(dy), free.backward(dy))
        assert frozen.weight.grad is None and frozen.bias.grad is None
        assert free.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_features=0), dict(num_features=2.5), dict(num_features=2, eps=0.0), dict(num_features=2, momentum=1.5)],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BatchNorm2d(**kwargs)


# -- parity with PyTorch -----------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-11)])
def test_parity_with_torch(dtype, tol, momentum):
    torch = pytest.importorskip("torch", reason="PyTorch is the test oracle for parity tests")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    ours = make_bn(4, dtype=dtype, momentum=momentum)
    ref = torch.nn.BatchNorm2d(4, momentum=momentum).to(tdtype)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.weight.data))
        ref.bias.copy_(torch.from_numpy(ours.bias.data))
    rng = np.random.default_rng(7)

    def step(shape, seed):
        x = random_map(shape, seed=seed, dtype=dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours.forward(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)

    for seed, shape in enumerate([(2, 4, 3, 5), (1, 4, 4, 3), (3, 4, 2, 2)]):
        step(shape, seed)
        np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=tol, atol=tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    ours.eval()
    ref.eval()
    step((2, 4, 3, 3), 10)
    np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(ours.bias.grad, ref.bias.grad.numpy(), rtol=tol, atol=tol * 10)

"""ConvTranspose2d: gradient checks, PyTorch parity, its relation to Conv2d, bilinear init, errors, grad mode."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet import reference

from minisegnet import no_grad
from minisegnet.backend import device_of, to_device, to_numpy
from minisegnet.gradcheck import gradcheck
from minisegnet.layers import Conv2d, ConvTranspose2d
from minisegnet.layers.conv_transpose import bilinear_kernel

# (in, out, kernel, stride, padding, output_padding, bias, input shape, output_size)
CASES = [
    (2, 3, 3, 1, 0, 0, True, (2, 2, 4, 5), None),
    (2, 3, 3, 2, 1, 0, True, (2, 2, 5, 4), None),  # odd output 9x7
    (3, 2, 3, 2, 1, 1, False, (1, 3, 4, 3), None),  # output_padding
    (2, 2, 4, 2, 1, 0, True, (2, 2, 3, 5), None),  # FCN's 2x kernel
    (2, 3, 5, 3, 2, 2, True, (1, 2, 3, 4), None),  # stride 3, output_padding 2
    (2, 2, (3, 5), (2, 3), (1, 2), (1, 0), True, (1, 2, 3, 4), None),  # rectangular everything
    (3, 2, 3, 2, 1, 0, True, (1, 3, 5, 4), (10, 8)),  # output_size picks 10x8 instead of 9x7
    (2, 2, 3, 2, 0, 1, True, (1, 2, 2, 3), None),  # output_padding > padding: rows no patch reaches
]
IDS = ["s1", "s2-odd", "outpad", "k4s2", "s3", "rect", "output_size", "outpad>pad"]


def layer_for(cin, cout, k, s, p, op, bias, seed=0):
    layer = ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, bias=bias, rng=seed).double()
    if bias:
        layer.bias.data[...] = np.random.default_rng(seed + 1).uniform(-0.5, 0.5, cout)
    return layer


@pytest.mark.parametrize("cin, cout, k, s, p, op, bias, shape, output_size", CASES, ids=IDS)
def test_gradcheck_every_input_and_parameter(cin, cout, k, s, p, op, bias, shape, output_size, rng):
    layer = layer_for(cin, cout, k, s, p, op, bias)
    x = rng.standard_normal(shape)
    reports = gradcheck(lambda inp: layer.forward(inp, output_size=output_size), layer.backward, [x], layer)
    assert [r.name for r in reports] == ["input[0]", "weight"] + (["bias"] if bias else [])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cin, cout, k, s, p, op, bias, shape, output_size", CASES, ids=IDS)
def test_forward_and_gradients_match_pytorch(torch, cin, cout, k, s, p, op, bias, shape, output_size, dtype, rng):
    layer = layer_for(cin, cout, k, s, p, op, bias).astype(dtype)
    twin = torch.nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, bias=bias).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight.data))
        if bias:
            twin.bias.copy_(torch.from_numpy(layer.bias.data))
    x = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x, output_size=output_size)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = twin(tx, output_size=output_size) if output_size else twin(tx)
    assert y.shape == tuple(ty.shape) and y.dtype == dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty.backward(torch.from_numpy(dy))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), **tol)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, twin.bias.grad.numpy(), **tol)
    assert dx.dtype == dtype and layer.weight.grad.dtype == dtype


@pytest.mark.parametrize("cin, cout, k, s, p, op, bias, shape, output_size", CASES, ids=IDS)
def test_matches_the_definition_written_as_loops(cin, cout, k, s, p, op, bias, shape, output_size, rng):
    layer = layer_for(cin, cout, k, s, p, op, bias)
    x = rng.standard_normal(shape)
    y = layer.forward(x, output_size=output_size)
    ref = reference.conv_transpose2d(x, layer.weight.data, None if layer.bias is None else layer.bias.data,
                                     layer.stride, layer.padding, y.shape[2:])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_odd_sizes_round_trip_with_output_size(rng):
    """Ceil-mode pooling maps 45 and 46 rows to 23; output_size says which one to go back to."""
    layer = ConvTranspose2d(2, 2, 3, stride=2, padding=1)
    x = rng.standard_normal((1, 2, 23, 30)).astype(np.float32)
    assert layer(x).shape == (1, 2, 45, 59)  # (23-1)*2 - 2 + 3 = 45, (30-1)*2 - 2 + 3 = 59
    assert layer(x, output_size=(45, 60)).shape == (1, 2, 45, 60)
    assert layer(x, output_size=(1, 2, 46, 60)).shape == (1, 2, 46, 60)  # (N, C, H, W): the last two
    assert layer.output_hw(23, 30, (46, 59)) == (46, 59)


def test_backward_is_a_conv2d_forward_and_forward_is_conv2d_backward(rng):
    """The two layers are each other's transpose, with one weight tensor (in, out, kh, kw)."""
    cin, cout, k, s, p = 3, 4, 3, 2, 1
    up = ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=1, bias=False, rng=1).double()
    conv = Conv2d(cout, cin, k, stride=s, padding=p, bias=False).double()  # out -> in: the transpose
    conv.weight.data = up.weight.data.copy()  # Conv2d's (O, C) = (cin, cout): the same array
    x = rng.standard_normal((2, cin, 5, 6))
    y = up.forward(x)  # (2, cout, 10, 12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(up.backward(dy), conv.forward(dy), rtol=1e-12, atol=1e-12)
    z = rng.standard_normal(y.shape)
    conv.forward(z)  # (2, cin, 5, 6), like x
    np.testing.assert_allclose(conv.backward(x), y, rtol=1e-12, atol=1e-12)
    # adjoint identity <Conv2d(z), x> = <z, ConvT(x)>
    assert np.isclose(np.sum(conv.forward(z) * x), np.sum(z * y), rtol=1e-12)


def test_bilinear_kernel_is_fcns_upsample_filter():
    np.testing.assert_allclose(bilinear_kernel(4, 2), np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
    np.testing.assert_allclose(bilinear_kernel(3, 2)[1], [0.5, 1.0, 0.5])
    row = [0, 0, 0.25, 0.75, 0.75, 0.25, 0, 0]  # 8x8 at stride 2: the same triangle, zeros around it
    np.testing.assert_allclose(bilinear_kernel(8, 2), np.outer(row, row))
    np.testing.assert_allclose(bilinear_kernel((3, 6), (1, 3)), np.outer([0, 1, 0], np.array([1, 3, 5, 5, 3, 1]) / 6))


def test_bilinear_init_upsamples_like_interpolate_inside_the_border(torch, rng):
    f = torch.nn.functional
    layer = ConvTranspose2d(3, 3, 4, stride=2, padding=1, init="bilinear").double()
    assert not layer.bias.data.any()
    w = layer.weight.data
    assert not w[0, 1].any() and not w[1, 0].any()  # channel by channel
    x = rng.standard_normal((2, 3, 6, 7))
    y = layer(x)
    ref = f.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], rtol=1e-12, atol=1e-12)


def test_bilinear_init_keeps_a_constant_map_constant_inside(rng):
    layer = ConvTranspose2d(2, 2, 8, stride=2, padding=3, init="bilinear").double()
    y = layer(np.full((1, 2, 5, 6), 3.0))
    assert y.shape == (1, 2, 10, 12)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 3.0)


def test_offsets_grouped_or_one_by_one_give_the_same_numbers(rng):
    grouped = layer_for(3, 4, 3, 2, 1, 1, True)
    single = copy.deepcopy(grouped)
    single.max_workspace_bytes = 0  # one GEMM per kernel offset
    assert len(single._offset_groups(4, 100, 8)) == 9 and len(grouped._offset_groups(4, 100, 8)) == 1
    x = rng.standard_normal((2, 3, 5, 4))
    y1, y2 = grouped(x), single(x)
    np.testing.assert_allclose(y1, y2, rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y1.shape)
    np.testing.assert_allclose(grouped.backward(dy), single.backward(dy), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grouped.weight.grad, single.weight.grad, rtol=1e-13, atol=1e-13)


def test_he_initialisation_is_seeded_and_scaled():
    a, b = ConvTranspose2d(64, 32, 4, stride=2, rng=3), ConvTranspose2d(64, 32, 4, stride=2, rng=3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.data.dtype == np.float32 and a.weight.shape == (64, 32, 4, 4)
    assert a.weight.data.std() == pytest.approx(np.sqrt(2 / (64 * 16 / 4)), rel=0.05)
    assert not np.array_equal(a.weight.data, ConvTranspose2d(64, 32, 4, stride=2, rng=4).weight.data)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(output_padding=2, stride=2), ValueError, "output_padding smaller than the stride"),
        (dict(output_padding=1), ValueError, "output_padding smaller than the stride"),
        (dict(stride=0), ValueError, "stride >= 1"),
        (dict(padding=-1), ValueError, "padding >= 0"),
        (dict(kernel_size=2.5), TypeError, "kernel_size as an int or a pair"),
        (dict(in_channels=0), ValueError, "in_channels as a positive int"),
        (dict(init="xavier"), ValueError, "init as one of he, bilinear"),
        (dict(init="bilinear", out_channels=3), ValueError, "needs in_channels == out_channels"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, error, message):
    args = dict(in_channels=2, out_channels=2, kernel_size=3) | kwargs
    with pytest.raises(error, match=message):
        ConvTranspose2d(**args)


def test_bad_input_is_refused_clearly(rng):
    layer = ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"ConvTranspose2d\(2, 3.*expected a 4-D input"):
        layer(x[0])
    with pytest.raises(ValueError, match="expected input with 2 channels, got 3"):
        layer(np.zeros((1, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="floating-point input"):
        layer(np.zeros((1, 2, 4, 5), np.int32))
    with pytest.raises(TypeError, match="layer's dtype float32, got float64"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match="output height of 9, but .* range from 7 to 8"):
        layer(x, output_size=(9, 9))
    with pytest.raises(ValueError, match="output width of 11, but .* range from 9 to 10"):
        layer(x, output_size=(8, 11))
    with pytest.raises(ValueError, match=r"output_size as \(H, W\)"):
        layer(x, output_size=(8,))
    with pytest.raises(ValueError, match=r"output_size as \(H, W\)"):
        layer(x, output_size=8)
    with pytest.raises(ValueError, match="padding is too large"):
        ConvTranspose2d(2, 2, 1, padding=1)(np.zeros((1, 2, 1, 1), np.float32))


def test_backward_errors(rng):
    layer = ConvTranspose2d(2, 3, 3, stride=2)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 3, 9, 9), np.float32))
    y = layer(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"upstream gradient of shape \(1, 3, 9, 9\).*got \(1, 3, 8, 9\)"):
        layer.backward(np.zeros((1, 3, 8, 9), np.float32))
    assert layer.backward(np.ones_like(y)).shape == (1, 2, 4, 4)


# -- grad mode, eval, frozen parameters ----------------------------------------------------------------
def test_no_grad_keeps_nothing_and_leaves_a_pending_backward_alone(rng):
    layer = layer_for(2, 3, 3, 2, 1, 1, True)
    with no_grad():
        layer(rng.standard_normal((1, 2, 4, 5)))
    assert layer._input_columns is None and layer._output_shape is None
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.zeros((1, 3, 8, 10)))

    twin = copy.deepcopy(layer)
    x = rng.standard_normal((2, 2, 5, 4))
    dy = rng.standard_normal((2, 3, 10, 8))
    twin.forward(x)
    expected = twin.backward(dy)
    layer.forward(x)
    with no_grad():  # an inference call, another size, between the forward and its backward
        layer.forward(rng.standard_normal((3, 2, 6, 6)))
    np.testing.assert_array_equal(layer.backward(dy), expected)
    np.testing.assert_array_equal(layer.weight.grad, twin.weight.grad)


def test_eval_mode_forward_can_be_differentiated(rng):
    layer = layer_for(2, 2, 4, 2, 1, 0, True).eval()
    gradcheck(layer.forward, layer.backward, [rng.standard_normal((1, 2, 3, 3))], layer)


def test_frozen_weight_gets_no_gradient(rng):
    layer = layer_for(2, 3, 3, 2, 1, 0, True)
    reference = copy.deepcopy(layer)
    layer.weight.requires_grad = False
    x = rng.standard_normal((1, 2, 4, 4))
    dy = rng.standard_normal(layer(x).shape)
    reference(x)
    np.testing.assert_allclose(layer.backward(dy), reference.backward(dy), rtol=1e-13)
    assert layer.weight.grad is None and layer.bias.grad is not None
    layer.requires_grad_(False)
    layer(x)
    layer.backward(dy)
    assert layer.bias.grad is not None  # unchanged: a frozen bias is skipped too
    np.testing.assert_array_equal(layer.bias.grad, reference.bias.grad)


GPU = "cuda"  # a module constant, so that the test itself can be exercised on "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cupy_matches_numpy(dtype, rng):
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for cin, cout, k, s, p, op, bias, shape, output_size in CASES:
        layer = layer_for(cin, cout, k, s, p, op, bias).astype(dtype)
        gpu = copy.deepcopy(layer).to(GPU)
        x = rng.standard_normal(shape).astype(dtype)
        y = layer.forward(x, output_size=output_size)
        gy = gpu.forward(to_device(x, GPU), output_size=output_size)
        assert device_of(gy) == GPU and gy.dtype == dtype
        np.testing.assert_allclose(to_numpy(gy), y, **tol)
        dy = rng.standard_normal(y.shape).astype(dtype)
        gdx = gpu.backward(to_device(dy, GPU))
        assert device_of(gdx) == GPU
        np.testing.assert_allclose(to_numpy(gdx), layer.backward(dy), **tol)
        for (name, p_cpu), (_, p_gpu) in zip(layer.named_parameters(), gpu.named_parameters()):
            np.testing.assert_allclose(to_numpy(p_gpu.grad), p_cpu.grad, err_msg=name, **tol)

"""Upsample: gradient checks, parity with torch.nn.Upsample / F.interpolate, matrices, errors, grad mode."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minisegnet import reference

from minisegnet import no_grad
from minisegnet.backend import device_of, to_device, to_numpy
from minisegnet.gradcheck import gradcheck
from minisegnet.layers import Upsample
from minisegnet.layers.upsample import interpolation_matrix, nearest_indices

# (mode, align_corners, scale_factor, output_size, input (H, W))
CASES = [
    ("bilinear", False, 2, None, (3, 4)),
    ("bilinear", True, 2, None, (3, 4)),
    ("bilinear", False, None, (9, 7), (5, 4)),  # 5 -> 9, 4 -> 7: undoing ceil-mode pooling
    ("bilinear", True, None, (9, 7), (5, 4)),
    ("bilinear", False, 1.5, None, (3, 5)),  # non-integer scale: coordinates use 1/1.5
    ("bilinear", False, (2, 3), None, (2, 3)),
    ("bilinear", False, None, (2, 3), (5, 7)),  # downsampling works too
    ("bilinear", True, None, (1, 1), (3, 4)),
    ("nearest", False, 2, None, (3, 4)),
    ("nearest", False, None, (9, 7), (5, 4)),
    ("nearest", False, 1.7, None, (4, 5)),
    ("nearest", False, None, (3, 2), (7, 5)),
]
IDS = ["bl-2x", "bl-2x-ac", "bl-size", "bl-size-ac", "bl-1.5x", "bl-2x3x", "bl-down", "bl-1x1-ac",
       "nn-2x", "nn-size", "nn-1.7x", "nn-down"]


def interpolate(torch, x, mode, align_corners, scale_factor, output_size):
    kwargs = {"align_corners": align_corners} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(x, size=output_size, scale_factor=None if output_size else scale_factor,
                                           mode=mode, **kwargs)


@pytest.mark.parametrize("mode, align_corners, scale_factor, output_size, hw", CASES, ids=IDS)
def test_gradcheck(mode, align_corners, scale_factor, output_size, hw, rng):
    layer = Upsample(scale_factor, mode=mode, align_corners=align_corners)
    x = rng.standard_normal((2, 3, *hw))
    gradcheck(lambda inp: layer.forward(inp, output_size=output_size), layer.backward, [x])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode, align_corners, scale_factor, output_size, hw", CASES, ids=IDS)
def test_matches_interpolate(torch, mode, align_corners, scale_factor, output_size, hw, dtype, rng):
    layer = Upsample(scale_factor, mode=mode, align_corners=align_corners)
    x = rng.standard_normal((2, 3, *hw)).astype(dtype)
    y = layer.forward(x, output_size=output_size)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = interpolate(torch, tx, mode, align_corners, scale_factor, output_size)
    assert y.shape == tuple(ty.shape) and y.dtype == dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty.backward(torch.from_numpy(dy))
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    assert dx.dtype == dtype


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_matches_nn_upsample_at_segnet_sizes(torch, mode, rng):
    """2x as a module, and 23x30 -> 45x60 with a size, as SegNet-Basic's decoder needs."""
    x = rng.standard_normal((1, 4, 23, 30))
    ours = Upsample(2, mode=mode, align_corners=False if mode == "bilinear" else None)
    theirs = torch.nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).numpy(), rtol=1e-12, atol=1e-13)
    y = ours(x, output_size=(45, 60))
    assert y.shape == (1, 4, 45, 60)
    np.testing.assert_allclose(y, interpolate(torch, torch.from_numpy(x), mode, False, None, (45, 60)).numpy(),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw, size", [((5, 4), (9, 7)), ((23, 30), (45, 60)), ((7, 9), (3, 4))])
def test_bilinear_matches_the_definition_written_as_loops(align_corners, hw, size, rng):
    x = rng.standard_normal((2, 3, *hw))
    y = Upsample(None, align_corners=align_corners)(x, output_size=size)
    np.testing.assert_allclose(y, reference.bilinear_upsample(x, size, align_corners), rtol=1e-12, atol=1e-13)


def test_interpolation_matrices():
    a = interpolation_matrix(3, 6)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_allclose(a[:3], [[1, 0, 0], [0.75, 0.25, 0], [0.25, 0.75, 0]])  # pixel centres line up
    b = interpolation_matrix(3, 5, align_corners=True)
    np.testing.assert_allclose(b, [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert (np.count_nonzero(interpolation_matrix(23, 45), axis=1) <= 2).all()
    np.testing.assert_array_equal(nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(nearest_indices(4, 3), [0, 1, 2])


def test_a_constant_map_stays_constant(rng):
    for mode in ("bilinear", "nearest"):
        y = Upsample(2, mode)(np.full((1, 2, 5, 7), 2.5, dtype=np.float32), output_size=(9, 13))
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, 2.5, rtol=1e-6)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="bicubic"), "mode as one of bilinear, nearest"),
        (dict(mode="nearest", align_corners=True), "align_corners applies to mode='bilinear' only"),
        (dict(scale_factor=0), "scale_factor as a positive number"),
        (dict(scale_factor=-2), "scale_factor as a positive number"),
        (dict(scale_factor=True), "scale_factor as a positive number"),
        (dict(scale_factor="2"), "scale_factor as a positive number"),
        (dict(scale_factor=(2, 2, 2)), "scale_factor as a positive number"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Upsample(**kwargs)


def test_bad_input_is_refused_clearly(rng):
    layer = Upsample(2)
    with pytest.raises(ValueError, match=r"Upsample\(scale_factor=2.0, mode='bilinear'\): expected a 4-D input"):
        layer(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="floating-point input"):
        layer(np.zeros((1, 3, 4, 5), np.uint8))
    with pytest.raises(TypeError, match="NumPy/CuPy array"):
        layer([[[[1.0]]]])
    x = np.zeros((1, 3, 4, 5), np.float32)
    for bad in [(0, 5), (8,), (8.0, 10.0), 8, (True, 5)]:
        with pytest.raises(ValueError, match="output_size as"):
            layer(x, output_size=bad)
    with pytest.raises(ValueError, match="forward needs output_size"):
        Upsample(None)(x)
    with pytest.raises(ValueError, match="empty output"):
        Upsample(0.1)(x)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Upsample(2).backward(np.zeros((1, 3, 8, 10), np.float32))
    layer(x)
    with pytest.raises(ValueError, match=r"upstream gradient of shape \(1, 3, 8, 10\)"):
        layer.backward(np.zeros((1, 3, 8, 9), np.float32))


# -- grad mode ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_no_grad_keeps_nothing_and_leaves_a_pending_backward_alone(mode, rng):
    layer = Upsample(2, mode)
    with no_grad():
        y = layer(rng.standard_normal((1, 2, 3, 4)))
    assert y.shape == (1, 2, 6, 8)
    assert layer._along_h is None and layer._along_w is None and layer._input_shape is None
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.zeros((1, 2, 6, 8)))

    x, dy = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 9, 7))
    reference = copy.deepcopy(layer)
    reference.forward(x, output_size=(9, 7))
    layer.forward(x, output_size=(9, 7))
    with no_grad():
        layer.forward(rng.standard_normal((1, 2, 6, 6)))  # another size in between
    np.testing.assert_array_equal(layer.backward(dy), reference.backward(dy))


def test_eval_mode_changes_nothing(rng):
    layer = Upsample(2).eval()
    gradcheck(layer.forward, layer.backward, [rng.standard_normal((1, 2, 3, 3))])


GPU = "cuda"  # a module constant, so that the test itself can be exercised on "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cupy_matches_numpy(dtype, rng):
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for mode, align_corners, scale_factor, output_size, hw in CASES:
        layer = Upsample(scale_factor, mode=mode, align_corners=align_corners)
        gpu = copy.deepcopy(layer)
        x = rng.standard_normal((2, 3, *hw)).astype(dtype)
        y = layer.forward(x, output_size=output_size)
        gy = gpu.forward(to_device(x, GPU), output_size=output_size)
        assert device_of(gy) == GPU and gy.dtype == dtype
        np.testing.assert_allclose(to_numpy(gy), y, **tol)
        dy = rng.standard_normal(y.shape).astype(dtype)
        gdx = gpu.backward(to_device(dy, GPU))
        assert device_of(gdx) == GPU and gdx.dtype == dtype
        np.testing.assert_allclose(to_numpy(gdx), layer.backward(dy), **tol)

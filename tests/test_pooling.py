"""MaxPool2d with window-local indices and MaxUnpool2d: shapes, ties, gradients, parity, round trips, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import gradcheck
from minisegnet.layers.pooling import MaxPool2d, MaxUnpool2d, PackedIndices

# Gradient checks need inputs without ties (the max is not differentiable at a tie):
# the ``tie_free`` fixture (conftest.py) draws distinct values at least 2/size apart.


# -- a slow, obvious reference: a Python loop over windows ---------------------------------
def reference_size(size, k, s, ceil_mode):
    out = (math.ceil((size - k) / s) if ceil_mode else (size - k) // s) + 1
    if ceil_mode and (out - 1) * s >= size:
        out -= 1
    return out


def reference_pool(x, k, s, ceil_mode=True):
    """Max and window-local argmax (first maximum wins) of every window, looping over windows."""
    n, c, h, w = x.shape
    ho, wo = reference_size(h, k, s, ceil_mode), reference_size(w, k, s, ceil_mode)
    y = np.empty((n, c, ho, wo), x.dtype)
    idx = np.empty((n, c, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            window = x[:, :, i * s : i * s + k, j * s : j * s + k]  # border windows are cut off
            flat = window.reshape(n, c, -1)
            first = flat.argmax(axis=-1)  # NumPy's argmax returns the first maximum
            y[:, :, i, j] = flat.max(axis=-1)
            ky, kx = np.divmod(first, window.shape[3])
            idx[:, :, i, j] = ky * k + kx
    return y, idx


def reference_unpool(v, idx, k, s, hw):
    n, c, ho, wo = v.shape
    out = np.zeros((n, c) + tuple(hw), v.dtype)
    for i in range(ho):
        for j in range(wo):
            ky, kx = np.divmod(idx[:, :, i, j], k)
            nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
            np.add.at(out, (nn, cc, i * s + ky, j * s + kx), v[:, :, i, j])
    return out


def torch_to_local(flat, width, kernel, stride):
    """PyTorch's flat indices ``h * W + w`` to window-local ``ky * kw + kx``."""
    (_, kw), (sh, sw) = kernel, stride
    ho, wo = flat.shape[2:]
    ky = flat // width - (np.arange(ho) * sh)[:, None]
    kx = flat % width - (np.arange(wo) * sw)[None, :]
    return ky * kw + kx


def local_to_torch(local, width, kernel, stride):
    (_, kw), (sh, sw) = kernel, stride
    ho, wo = local.shape[2:]
    ky, kx = np.divmod(local.astype(np.int64), kw)
    return (ky + (np.arange(ho) * sh)[:, None]) * width + kx + (np.arange(wo) * sw)[None, :]


# -- shapes, dtype, ties, borders -------------------------------------------------------------
@pytest.mark.parametrize(
    "hw, ceil_mode, expected",
    [
        ((45, 60), True, (23, 30)),  # SegNet's fourth stage on CamVid 360×480
        ((23, 30), True, (12, 15)),
        ((5, 7), True, (3, 4)),
        ((5, 7), False, (2, 3)),
        ((4, 6), True, (2, 3)),
        ((1, 1), True, (1, 1)),
    ],
)
def test_output_shape(hw, ceil_mode, expected):
    x = np.zeros((1, 2) + hw, np.float32)
    y, idx = MaxPool2d(2, 2, ceil_mode=ceil_mode)(x)
    assert y.shape == idx.shape == (1, 2) + expected


def test_indices_are_uint8_window_local(tie_free):
    x = tie_free((2, 3, 6, 8))
    y, idx = MaxPool2d()(x)
    assert idx.dtype == np.uint8  # one byte per pooled value: SegNet's memory saving
    assert idx.min() >= 0 and idx.max() <= 3
    assert MaxPool2d(16)(tie_free((1, 1, 16, 16)))[1].dtype == np.uint8  # 256 positions still fit
    assert MaxPool2d(17)(tie_free((1, 1, 17, 17)))[1].dtype == np.uint16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype, tie_free):
    x = tie_free((1, 2, 5, 7), dtype)
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    y, idx = pool(x)
    z = unpool(y, idx, x.shape)
    assert y.dtype == z.dtype == dtype
    assert pool.backward(np.ones_like(y)).dtype == dtype
    assert unpool.backward(np.ones_like(z)).dtype == dtype


def test_first_maximum_wins_on_ties():
    x = np.full((1, 1, 4, 4), 3.0)  # constant windows: every position ties
    x[0, 0, 2:, 0:2] = [[0.0, 5.0], [1.0, 5.0]]  # tie between kx=1 of row 0 and row 1
    x[0, 0, 2:, 2:] = [[-1.0, -2.0], [-1.0, -1.0]]  # three-way tie, first at position 0
    y, idx = MaxPool2d()(x)
    np.testing.assert_array_equal(idx[0, 0], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(y[0, 0], [[3.0, 3.0], [5.0, -1.0]])


def test_tied_gradient_goes_to_first_maximum():
    pool = MaxPool2d()
    x = np.zeros((1, 1, 2, 2))
    pool(x)
    dx = pool.backward(np.full((1, 1, 1, 1), 7.0))
    np.testing.assert_array_equal(dx[0, 0], [[7.0, 0.0], [0.0, 0.0]])


def test_partial_border_windows_ignore_missing_pixels(tie_free):
    # All negative: if the border were padded with 0, the border windows would return 0.
    x = tie_free((2, 3, 5, 7), low=-2.0, high=-1.0)
    y, idx = MaxPool2d()(x)
    y_ref, idx_ref = reference_pool(x, 2, 2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert (y < 0).all()
    # The corner window holds a single pixel: its index is 0, its value that pixel.
    np.testing.assert_array_equal(idx[:, :, -1, -1], 0)
    np.testing.assert_array_equal(y[:, :, -1, -1], x[:, :, -1, -1])
    # The last row of windows only sees row 4: indices 0 or 1; last column: 0 or 2.
    assert set(np.unique(idx[:, :, -1, :])) <= {0, 1}
    assert set(np.unique(idx[:, :, :, -1])) <= {0, 2}


@pytest.mark.parametrize(
    "shape, k, s, ceil_mode",
    [
        ((2, 2, 7, 9), 3, 2, True),  # overlapping windows
        ((2, 2, 7, 9), 3, 2, False),
        ((1, 2, 8, 5), 3, 1, True),
        ((1, 1, 9, 10), 2, 3, True),  # gaps between windows
        ((1, 3, 6, 6), 3, 3, True),
    ],
)
def test_general_kernel_and_stride_match_reference(shape, k, s, ceil_mode, tie_free):
    x = tie_free(shape)
    y, idx = MaxPool2d(k, s, ceil_mode)(x)
    y_ref, idx_ref = reference_pool(x, k, s, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)


def test_unpool_figure_from_the_article():
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    x = np.array([[[[a, b], [c, d]]]])
    idx = np.array([[[[1, 2], [3, 0]]]], np.uint8)
    y = MaxUnpool2d()(x, idx, (4, 4))
    expected = [[0, a, 0, 0], [0, 0, b, 0], [0, 0, d, 0], [0, c, 0, 0]]
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("hw", [(45, 60), (5, 7), (6, 7), (1, 3)])
def test_unpool_restores_odd_sizes(hw, tie_free):
    x = tie_free((1, 2) + hw)
    y, idx = MaxPool2d()(x)
    for output_size in (hw, x.shape):
        z = MaxUnpool2d()(y, idx, output_size)
        assert z.shape == x.shape
        np.testing.assert_array_equal(z, reference_unpool(y, idx, 2, 2, hw))


def test_unpool_default_output_size_is_full_windows(tie_free):
    y, idx = MaxPool2d()(tie_free((1, 1, 4, 6)))
    assert MaxUnpool2d()(y, idx).shape == (1, 1, 4, 6)


def test_unpool_is_the_transpose_of_the_selection(tie_free, rng):
    # <unpool(v), w> == <v, unpool.backward(w)> for any v, w: backward is the exact adjoint.
    for k, s in [(2, 2), (3, 2)]:
        x = tie_free((2, 2, 7, 9))
        _, idx = MaxPool2d(k, s)(x)
        unpool = MaxUnpool2d(k, s)
        v = rng.standard_normal(idx.shape)
        w = rng.standard_normal(x.shape)
        lhs = np.sum(unpool(v, idx, x.shape) * w)
        rhs = np.sum(v * unpool.backward(w))
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_pool_backward_equals_unpool_forward(tie_free, rng):
    x = tie_free((2, 3, 5, 7))
    pool = MaxPool2d()
    y, idx = pool(x)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pool.backward(dy), MaxUnpool2d()(dy, idx, x.shape))


def test_backward_leaves_upstream_gradient_untouched(tie_free, rng):
    x = tie_free((1, 2, 5, 7))
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    y, idx = pool(x)
    z = unpool(y, idx, x.shape)
    dz = rng.standard_normal(z.shape)
    dy = rng.standard_normal(y.shape)
    dz0, dy0 = dz.copy(), dy.copy()
    unpool.backward(dz)
    pool.backward(dy)
    np.testing.assert_array_equal(dz, dz0)
    np.testing.assert_array_equal(dy, dy0)


# -- gradient checks (float64, random upstream) ---------------------------------------------------
@pytest.mark.parametrize(
    "shape, k, s",
    [((1, 2, 5, 7), 2, 2), ((2, 1, 4, 6), 2, 2), ((1, 1, 3, 3), 2, 2), ((1, 2, 7, 6), 3, 2)],
)
def test_pool_gradcheck(shape, k, s, tie_free):
    pool = MaxPool2d(k, s)
    x = tie_free(shape)
    reports = gradcheck(lambda t: pool(t)[0], pool.backward, [x])
    assert reports[0].checked == x.size


@pytest.mark.parametrize("shape, k, s", [((1, 2, 5, 7), 2, 2), ((2, 1, 4, 4), 2, 2), ((1, 2, 7, 6), 3, 2)])
def test_unpool_gradcheck(shape, k, s, tie_free, rng):
    x = tie_free(shape)
    _, idx = MaxPool2d(k, s)(x)
    unpool = MaxUnpool2d(k, s)
    v = rng.standard_normal(idx.shape)
    gradcheck(lambda t: unpool(t, idx, shape), unpool.backward, [v])


def test_pool_then_unpool_gradcheck(tie_free):
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    x = tie_free((2, 2, 5, 7))

    def forward(t):
        y, idx = pool(t)
        return unpool(y, idx, t.shape)

    gradcheck(forward, lambda g: pool.backward(unpool.backward(g)), [x])


# -- parity with PyTorch --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 8, 8), (1, 1, 45, 60)])
def test_parity_with_torch(torch, shape, dtype, tol, tie_free, rng):
    x = tie_free(shape, dtype)
    pool, unpool = MaxPool2d(2, 2, ceil_mode=True), MaxUnpool2d(2, 2)
    y, idx = pool(x)
    z = unpool(y, idx, x.shape[2:])
    dz = rng.standard_normal(z.shape).astype(dtype)
    dx = pool.backward(unpool.backward(dz))

    tx = torch.tensor(x, requires_grad=True)
    t_pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
    t_unpool = torch.nn.MaxUnpool2d(2, 2)
    ty, tidx = t_pool(tx)
    tz = t_unpool(ty, tidx, output_size=tx.shape[2:])
    tz.backward(torch.tensor(dz))

    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, torch_to_local(tidx.numpy(), shape[3], (2, 2), (2, 2)))
    np.testing.assert_array_equal(local_to_torch(idx, shape[3], (2, 2), (2, 2)), tidx.numpy())
    np.testing.assert_allclose(z, tz.detach().numpy(), rtol=tol, atol=0)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=0)
    assert dx.dtype == dtype


@pytest.mark.parametrize("kernel, stride", [((3, 3), (2, 2)), ((2, 3), (2, 3)), ((3, 2), (1, 2))])
def test_parity_with_torch_general_windows(torch, kernel, stride, tie_free, rng):
    F = torch.nn.functional
    x = tie_free((2, 2, 7, 10))
    pool = MaxPool2d(kernel, stride)
    y, idx = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = F.max_pool2d(tx, kernel, stride, ceil_mode=True, return_indices=True)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, torch_to_local(tidx.numpy(), 10, kernel, stride))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)  # overlaps: gradients add up


# -- properties over shapes (Hypothesis) ------------------------------------------------------------------
shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_round_trip_keeps_each_window_maximum_in_place(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.permutation(int(np.prod(shape))) + 1.0).reshape(shape)  # distinct and > 0
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    y, idx = pool(x)
    z = unpool(y, idx, shape[2:])
    assert z.shape == x.shape
    kept = z != 0
    assert kept.sum() == y.size  # one survivor per window ...
    np.testing.assert_array_equal(z[kept], x[kept])  # ... with its own value, at its own place ...
    y2, idx2 = pool(z)  # ... and it is the window's maximum: pooling again finds the same
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(y, reference_pool(x, 2, 2)[0])


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    ceil_mode=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_window_matches_reference(shape, k, s, ceil_mode, seed):
    if reference_size(shape[2], k, s, ceil_mode) < 1 or reference_size(shape[3], k, s, ceil_mode) < 1:
        with pytest.raises(ValueError, match="does not fit"):
            MaxPool2d(k, s, ceil_mode)(np.zeros(shape))
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, shape).astype(np.float64)  # many ties on purpose: first maximum wins
    pool = MaxPool2d(k, s, ceil_mode)
    y, idx = pool(x)
    y_ref, idx_ref = reference_pool(x, k, s, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pool.backward(dy), reference_unpool(dy, idx, k, s, shape[2:]), rtol=1e-12)


# -- modes and caches --------------------------------------------------------------------------------------
def test_no_grad_forward_keeps_nothing_and_backward_raises(tie_free):
    x = tie_free((1, 1, 4, 4))
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    with no_grad():
        y, idx = pool(x)  # the decoder still needs the indices at inference
        assert idx.shape == y.shape
        unpool(y, idx, x.shape)
    assert pool._argmax is None and unpool._argmax is None
    with pytest.raises(RuntimeError, match="MaxPool2d.backward called before forward"):
        pool.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="MaxUnpool2d.backward called before forward"):
        unpool.backward(np.ones_like(x))
    pool.eval()
    pool(x)  # eval mode, grad enabled: differentiable
    with no_grad():
        pool(-x)  # other maxima, but nothing kept
    np.testing.assert_array_equal(pool.backward(np.ones_like(y)), (x == y.repeat(2, 2).repeat(2, 3)).astype(x.dtype))


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="MaxPool2d"):
        MaxPool2d().backward(np.ones((1, 1, 2, 2)))
    with pytest.raises(RuntimeError, match="MaxUnpool2d"):
        MaxUnpool2d().backward(np.ones((1, 1, 4, 4)))


def test_no_parameters_and_repr():
    pool, unpool = MaxPool2d(), MaxUnpool2d()
    assert pool.parameters() == [] and unpool.parameters() == []
    assert "ceil_mode=True" in repr(pool) and "kernel_size=(2, 2)" in repr(unpool)


# -- bad input ----------------------------------------------------------------------------------------------
def test_pool_rejects_bad_input():
    pool = MaxPool2d()
    with pytest.raises(ValueError, match="MaxPool2d.*4-D"):
        pool(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="MaxPool2d.*floating"):
        pool(np.zeros((1, 1, 4, 4), np.int64))
    with pytest.raises(TypeError, match="MaxPool2d"):
        pool([[[[1.0]]]])
    with pytest.raises(ValueError, match="does not fit"):
        MaxPool2d(3, 3, ceil_mode=False)(np.zeros((1, 1, 2, 5)))
    with pytest.raises(ValueError, match="kernel_size"):
        MaxPool2d(0)
    with pytest.raises(ValueError, match="stride"):
        MaxPool2d(2, (2, 2, 2))
    pool(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"MaxPool2d.backward: expected .*\(1, 1, 2, 2\)"):
        pool.backward(np.zeros((1, 1, 4, 4)))


def test_unpool_rejects_mismatched_indices(tie_free):
    y, idx = MaxPool2d()(tie_free((1, 2, 6, 6)))
    unpool = MaxUnpool2d()
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 2\).*\(1, 2, 3, 3\)"):
        unpool(y, idx[:, :, :, :2], (6, 6))
    with pytest.raises(TypeError, match="integer indices"):
        unpool(y, idx.astype(np.float64), (6, 6))
    with pytest.raises(TypeError, match="indices"):
        unpool(y, idx.tolist(), (6, 6))
    bad = idx.copy()
    bad[0, 0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unpool(y, bad, (6, 6))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unpool(y, idx.astype(np.int64) - 1, (6, 6))


def test_unpool_rejects_index_outside_a_partial_border_window(tie_free):
    y, idx = MaxPool2d()(tie_free((1, 1, 5, 7)))
    unpool = MaxUnpool2d()
    bad = idx.copy()
    bad[0, 0, -1, 0] = 2  # row below the last row of a 5-row map
    with pytest.raises(ValueError, match="last row"):
        unpool(y, bad, (5, 7))
    bad = idx.copy()
    bad[0, 0, 0, -1] = 1  # column right of the last column of a 7-column map
    with pytest.raises(ValueError, match="last column"):
        unpool(y, bad, (5, 7))
    assert unpool(y, bad, (6, 8)).shape == (1, 1, 6, 8)  # fine where the pixel exists


def test_unpool_rejects_bad_output_size(tie_free):
    y, idx = MaxPool2d()(tie_free((2, 3, 45, 60)))  # 23×30
    unpool = MaxUnpool2d()
    assert unpool(y, idx, (46, 60)).shape == (2, 3, 46, 60)  # 46 pools to 23 too
    with pytest.raises(ValueError, match=r"MaxUnpool2d: output_size 50×60 does not pool to the input's 23×30"):
        unpool(y, idx, (50, 60))
    with pytest.raises(ValueError, match="output_size 45×58"):
        unpool(y, idx, (45, 58))
    with pytest.raises(ValueError, match=r"batch and channels \(2, 4\)"):
        unpool(y, idx, (2, 4, 45, 60))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, C, H, W\)"):
        unpool(y, idx, (45,))
    with pytest.raises(ValueError, match="MaxUnpool2d.*4-D"):
        unpool(y[0], idx[0], (45, 60))
    unpool(y, idx, (45, 60))
    with pytest.raises(ValueError, match=r"MaxUnpool2d.backward.*\(2, 3, 45, 60\)"):
        unpool.backward(np.zeros((2, 3, 46, 60)))


# -- checking index values: validate_indices --------------------------------------------------------------
def test_index_value_checks_follow_validate_indices(tie_free):
    """Default: the values are checked on NumPy, not on CuPy (a host sync); True: everywhere; False: never."""
    assert MaxUnpool2d().checks_index_values(np)
    assert not MaxUnpool2d().checks_index_values(object())  # any other array module, CuPy
    assert MaxUnpool2d(validate_indices=True).checks_index_values(object())
    assert not MaxUnpool2d(validate_indices=False).checks_index_values(np)
    y, idx = MaxPool2d()(tie_free((1, 2, 4, 4)))
    bad = idx.copy()
    bad[0, 0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        MaxUnpool2d(validate_indices=True)(y, bad, (4, 4))
    unchecked = MaxUnpool2d(validate_indices=False)
    z = unchecked(y, bad, (4, 4))  # not caught: the value of that window is left out
    assert np.count_nonzero(z[0, 0, :2, :2]) == 0 and np.count_nonzero(z) == y.size - 1
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 1\)"):  # shape, dtype, device: always checked
        unchecked(y, idx[:, :, :, :1], (4, 4))
    with pytest.raises(TypeError, match="integer indices"):
        unchecked(y, idx.astype(np.float32), (4, 4))
    with pytest.raises(TypeError, match="validate_indices"):
        MaxUnpool2d(validate_indices=1)
    assert "validate_indices=False" in repr(unchecked) and "validate_indices" not in repr(MaxUnpool2d())


# -- 2-bit packed indices ---------------------------------------------------------------------------------
def test_packed_layout_four_windows_a_byte_lowest_bits_first():
    # one row of 5 windows (2×2 each) whose maxima sit at positions 1, 2, 3, 0, 2
    positions = [1, 2, 3, 0, 2]
    x = np.zeros((1, 1, 2, 10))
    for j, k in enumerate(positions):
        ky, kx = divmod(k, 2)
        x[0, 0, ky, 2 * j + kx] = 1.0 + j
    y, packed = MaxPool2d(pack_indices=True)(x)
    assert isinstance(packed, PackedIndices) and packed.shape == (1, 1, 1, 5)
    assert packed.data.dtype == np.uint8 and packed.data.shape == (1, 1, 1, 2)  # ceil(5 / 4) bytes
    first = positions[0] | positions[1] << 2 | positions[2] << 4 | positions[3] << 6
    np.testing.assert_array_equal(packed.data[0, 0, 0], [first, positions[4]])  # the padding bits are 0
    np.testing.assert_array_equal(packed.unpack()[0, 0, 0], positions)


@pytest.mark.parametrize("wo", range(1, 10))
def test_packed_indices_hold_ceil_w_over_4_bytes_per_row(wo, rng):
    indices = rng.integers(0, 4, (2, 3, 5, wo)).astype(np.uint8)
    packed = PackedIndices.pack(indices)
    assert packed.data.shape == (2, 3, 5, -(-wo // 4))
    assert packed.nbytes == 2 * 3 * 5 * -(-wo // 4) == packed.data.nbytes
    np.testing.assert_array_equal(packed.unpack(), indices)
    assert packed.unpack().dtype == np.uint8


@pytest.mark.parametrize(
    "shape, kernel, stride, ceil_mode",
    [
        ((2, 3, 5, 7), 2, 2, True),  # odd sizes, border windows
        ((2, 3, 5, 7), 2, 2, False),
        ((1, 2, 45, 60), 2, 2, True),  # SegNet's fourth stage: 23×30, 30 windows = 7.5 bytes a row
        ((1, 2, 9, 17), 2, 1, True),  # overlapping windows
        ((1, 1, 6, 9), (1, 2), (1, 2), True),
        ((1, 1, 7, 11), (1, 3), (1, 2), True),  # 3 positions fit 2 bits too
        ((1, 1, 1, 1), 2, 2, True),
    ],
)
def test_packed_and_plain_indices_give_identical_results(shape, kernel, stride, ceil_mode, tie_free, rng):
    x = tie_free(shape)
    plain_pool, packed_pool = MaxPool2d(kernel, stride, ceil_mode), MaxPool2d(kernel, stride, ceil_mode, True)
    y, idx = plain_pool(x)
    y_p, packed = packed_pool(x)
    np.testing.assert_array_equal(y_p, y)
    np.testing.assert_array_equal(packed.unpack(), idx)
    plain_unpool, packed_unpool = MaxUnpool2d(kernel, stride), MaxUnpool2d(kernel, stride)
    z, z_p = plain_unpool(y, idx, shape), packed_unpool(y_p, packed, shape)
    np.testing.assert_array_equal(z_p, z)
    dz = rng.standard_normal(z.shape)
    dv, dv_p = plain_unpool.backward(dz), packed_unpool.backward(dz)
    np.testing.assert_array_equal(dv_p, dv)
    np.testing.assert_array_equal(packed_pool.backward(dv_p), plain_pool.backward(dv))
    assert packed_unpool._argmax is packed and packed_pool._argmax is packed  # kept packed, not unpacked


@settings(max_examples=40, deadline=None)
@given(shape=shapes, ceil_mode=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_packing_changes_nothing_on_any_shape(shape, ceil_mode, seed):
    if reference_size(shape[2], 2, 2, ceil_mode) < 1 or reference_size(shape[3], 2, 2, ceil_mode) < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, shape).astype(np.float64)  # ties on purpose
    y, idx = MaxPool2d(ceil_mode=ceil_mode)(x)
    y_p, packed = MaxPool2d(ceil_mode=ceil_mode, pack_indices=True)(x)
    np.testing.assert_array_equal(y_p, y)
    np.testing.assert_array_equal(packed.unpack(), idx)
    np.testing.assert_array_equal(MaxUnpool2d()(y_p, packed, shape), MaxUnpool2d()(y, idx, shape))


def test_pool_then_unpool_gradcheck_with_packed_indices(tie_free):
    pool, unpool = MaxPool2d(pack_indices=True), MaxUnpool2d()
    x = tie_free((2, 2, 5, 7))

    def forward(t):
        y, packed = pool(t)
        assert isinstance(packed, PackedIndices)
        return unpool(y, packed, t.shape)

    reports = gradcheck(forward, lambda g: pool.backward(unpool.backward(g)), [x])
    assert reports[0].checked == x.size


def test_packed_indices_are_checked_like_plain_ones(tie_free):
    y, idx = MaxPool2d()(tie_free((1, 1, 5, 7)))
    bad = idx.copy()
    bad[0, 0, -1, 0] = 2  # row below the last row of a 5-row map
    with pytest.raises(ValueError, match="last row"):
        MaxUnpool2d()(y, PackedIndices.pack(bad), (5, 7))
    with pytest.raises(ValueError, match=r"indices of shape \(1, 1, 3, 4\) do not match .* \(1, 1, 3, 3\)"):
        MaxUnpool2d()(y[:, :, :, :3], PackedIndices.pack(idx), (5, 5))
    with pytest.raises(TypeError, match="PackedIndices"):
        MaxUnpool2d()(y, PackedIndices(idx.tolist(), idx.shape), (5, 7))


def test_pack_indices_refuses_windows_over_four_pixels():
    with pytest.raises(ValueError, match=r"MaxPool2d: pack_indices=True .* 2 bits.* 3×3 window has 9"):
        MaxPool2d(3, 2, pack_indices=True)
    with pytest.raises(ValueError, match="2×3 window has 6"):
        MaxPool2d((2, 3), pack_indices=True)
    with pytest.raises(TypeError, match="pack_indices"):
        MaxPool2d(pack_indices="yes")
    assert "pack_indices=True" in repr(MaxPool2d(pack_indices=True)) and "pack" not in repr(MaxPool2d())


def test_packed_indices_under_no_grad(tie_free):
    x = tie_free((1, 2, 6, 10))
    pool = MaxPool2d(pack_indices=True)
    with no_grad():
        y, packed = pool(x)
        z = MaxUnpool2d()(y, packed, x.shape)
    assert pool._argmax is None
    np.testing.assert_array_equal(z, MaxUnpool2d()(*MaxPool2d()(x), x.shape))

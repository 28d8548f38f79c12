"""The plain definitions (minisegnet.reference) against the fast layers, and against PyTorch.

Two chains of trust, so neither side can be wrong silently:

* every layer of the library equals its definition in ``minisegnet.reference``, forward
  and backward, on random float64 inputs with odd sizes, stride 2, padding, ceil mode,
  class weights and ignored pixels;
* the reference itself equals PyTorch (forward, and backward through ``torch.autograd``)
  where torch is installed, and its backward functions pass a finite-difference check
  against its own forward everywhere (no torch needed).

The reference loops in Python over pixels, so every shape here is tiny.  float64
throughout: the fast layers and the reference sum in different orders, so they agree to
rounding (``rtol=1e-10``), not bit for bit; pooling indices are compared exactly, on
tie-free inputs (``tie_free`` fixture) except in the test of the tie rule itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet import reference as ref
from minisegnet.gradcheck import gradcheck
from minisegnet.layers import BatchNorm2d, Conv2d, MaxPool2d, MaxUnpool2d, SoftmaxCrossEntropy

TOL = dict(rtol=1e-10, atol=1e-12)

# (N, C, H, W), O, kernel, stride, padding, bias
CONV_CASES = [
    ((2, 3, 7, 9), 4, (3, 3), (1, 1), (1, 1), True),  # odd sizes, "same" padding
    ((1, 2, 9, 8), 3, (3, 3), (2, 2), (1, 1), True),  # stride 2
    ((2, 2, 6, 7), 3, (2, 3), (2, 1), (0, 2), False),  # rectangular kernel, mixed stride and padding
    ((1, 3, 5, 5), 2, (1, 1), (1, 1), (0, 0), True),  # 1×1 (the classifier)
    ((1, 2, 8, 9), 2, (5, 5), (1, 1), (2, 2), True),  # SegNet-Basic's large kernel, scaled down
    ((1, 2, 9, 7), 3, (3, 3), (2, 3), (0, 0), True),  # stride that skips pixels at the border
]
CONV_IDS = ["same-3x3", "stride2", "rect", "1x1", "5x5", "stride2x3"]

# (N, C, H, W), kernel, stride, ceil_mode
POOL_CASES = [
    ((2, 3, 7, 9), 2, 2, True),  # SegNet: odd map, ceil mode, border windows cut
    ((1, 2, 6, 8), 2, 2, True),  # even map: ceil and floor agree
    ((1, 2, 7, 9), 2, 2, False),  # floor mode drops the last row and column
    ((2, 2, 8, 7), 3, 2, True),  # overlapping windows, ceil mode
    ((1, 2, 7, 10), (2, 3), (2, 3), True),  # rectangular window
    ((1, 1, 1, 3), 2, 2, True),  # a map smaller than the window in one direction
]
POOL_IDS = ["2x2-ceil-odd", "2x2-even", "2x2-floor", "3x3s2-overlap", "2x3", "tiny"]


# -- convolution -----------------------------------------------------------------------------
def make_conv(shape, out_channels, kernel, stride, padding, bias, rng):
    conv = Conv2d(shape[1], out_channels, kernel, stride=stride, padding=padding, bias=bias, rng=0).double()
    if bias:
        conv.bias.data[...] = rng.standard_normal(out_channels)  # not 0: a bias of 0 hides an unused bias
    x = rng.standard_normal(shape)
    return conv, x


@pytest.mark.parametrize("shape, o, k, s, p, bias", CONV_CASES, ids=CONV_IDS)
def test_conv2d_layer_matches_reference(shape, o, k, s, p, bias, rng):
    conv, x = make_conv(shape, o, k, s, p, bias, rng)
    b = conv.bias.data if bias else None
    y = conv.forward(x)
    expected = ref.conv2d(x, conv.weight.data, b, stride=s, padding=p)
    np.testing.assert_allclose(y, expected, **TOL)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(x, conv.weight.data, dy, stride=s, padding=p)
    np.testing.assert_allclose(dx, dx_ref, err_msg="dx", **TOL)
    np.testing.assert_allclose(conv.weight.grad, dw_ref, err_msg="dweight", **TOL)
    if bias:
        np.testing.assert_allclose(conv.bias.grad, db_ref, err_msg="dbias", **TOL)


@pytest.mark.parametrize("shape, o, k, s, p, bias", CONV_CASES[:3], ids=CONV_IDS[:3])
def test_conv2d_reference_backward_passes_gradcheck(shape, o, k, s, p, bias, rng):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((o, shape[1], *k))
    b = rng.standard_normal(o)

    def forward(x, w, b):
        return ref.conv2d(x, w, b, stride=s, padding=p)

    def backward(dy):
        return ref.conv2d_backward(x, w, dy, stride=s, padding=p)

    reports = gradcheck(forward, backward, [x, w, b], max_elements=20)
    assert [r.name for r in reports] == ["input[0]", "input[1]", "input[2]"]


@pytest.mark.parametrize("shape, o, k, s, p, bias", CONV_CASES, ids=CONV_IDS)
def test_conv2d_reference_matches_torch(shape, o, k, s, p, bias, rng, torch):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((o, shape[1], *k))
    b = rng.standard_normal(o) if bias else None
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    y = ref.conv2d(x, w, b, stride=s, padding=p)
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride=s, padding=p)
    np.testing.assert_allclose(dx, tx.grad.numpy(), err_msg="dx", **TOL)
    np.testing.assert_allclose(dw, tw.grad.numpy(), err_msg="dweight", **TOL)
    if bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), err_msg="dbias", **TOL)


# -- max pooling and unpooling ---------------------------------------------------------------------
@pytest.mark.parametrize("shape, k, s, ceil", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_layer_matches_reference(shape, k, s, ceil, tie_free, rng):
    x = tie_free(shape)
    pool = MaxPool2d(k, s, ceil_mode=ceil)
    y, idx = pool.forward(x)
    y_ref, idx_ref = ref.max_pool2d(x, k, s, ceil_mode=ceil)
    assert idx.dtype == idx_ref.dtype == np.uint8
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref)  # a maximum is a copy: exact
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pool.backward(dy), ref.max_pool2d_backward(dy, idx_ref, x.shape, k, s), **TOL)


def test_max_pool2d_ties_first_maximum_wins_in_layer_and_reference():
    """With ties the rule decides: the first maximum in row-major order inside the window."""
    x = np.array([[[[1.0, 1.0, 0.0, 2.0, 5.0],
                    [1.0, 0.0, 2.0, 2.0, 5.0],
                    [3.0, 3.0, 3.0, 3.0, -1.0]]]])
    y, idx = MaxPool2d(2, 2, ceil_mode=True).forward(x)
    y_ref, idx_ref = ref.max_pool2d(x, 2, 2, ceil_mode=True)
    # windows: [[1,1],[1,0]] -> 0; [[0,2],[2,2]] -> 1; [[5],[5]] (cut) -> 0; [[3,3]] -> 0; [[3,3]] -> 0; [[-1]] -> 0
    np.testing.assert_array_equal(idx_ref[0, 0], [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_max_pool2d_border_window_ignores_missing_pixels():
    """A ceil-mode border window of negative values: its maximum is a real pixel, not a padded 0."""
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # -1 ... -9
    y, idx = ref.max_pool2d(x, 2, 2, ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [[-1.0, -3.0], [-7.0, -9.0]])
    np.testing.assert_array_equal(idx[0, 0], [[0, 0], [0, 0]])
    x = x[:, :, ::-1, ::-1].copy()  # -9 ... -1: the maximum of each cut window is its last real pixel
    y, idx = ref.max_pool2d(x, 2, 2, ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [[-5.0, -4.0], [-2.0, -1.0]])
    np.testing.assert_array_equal(idx[0, 0], [[3, 2], [1, 0]])  # u * kw + v in the full 2×2 window


@pytest.mark.parametrize("shape, k, s, ceil", POOL_CASES, ids=POOL_IDS)
def test_max_unpool2d_layer_matches_reference(shape, k, s, ceil, tie_free, rng):
    x = tie_free(shape)
    y, idx = ref.max_pool2d(x, k, s, ceil_mode=ceil)
    values = rng.standard_normal(y.shape)
    unpool = MaxUnpool2d(k, s)
    z = unpool.forward(values, idx, x.shape[2:])
    z_ref = ref.max_unpool2d(values, idx, k, s, output_size=x.shape[2:])
    assert z_ref.shape == x.shape
    np.testing.assert_allclose(z, z_ref, **TOL)
    dz = rng.standard_normal(z.shape)
    np.testing.assert_allclose(unpool.backward(dz), ref.max_unpool2d_backward(dz, idx, k, s), **TOL)


def test_max_unpool2d_default_output_size():
    idx = np.array([[[[1, 2], [3, 0]]]], dtype=np.uint8)  # the article's figure
    z = ref.max_unpool2d(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), idx, 2, 2)
    np.testing.assert_array_equal(z[0, 0], [[0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 4, 0], [0, 3, 0, 0]])


@pytest.mark.parametrize("shape, k, s, ceil", POOL_CASES[:4], ids=POOL_IDS[:4])
def test_pooling_reference_backwards_pass_gradcheck(shape, k, s, ceil, tie_free, rng):
    x = tie_free(shape)
    _, idx = ref.max_pool2d(x, k, s, ceil_mode=ceil)
    gradcheck(lambda t: ref.max_pool2d(t, k, s, ceil_mode=ceil)[0],
              lambda dy: ref.max_pool2d_backward(dy, idx, x.shape, k, s), [x])
    values = rng.standard_normal(idx.shape)
    gradcheck(lambda v: ref.max_unpool2d(v, idx, k, s, output_size=x.shape),
              lambda dz: ref.max_unpool2d_backward(dz, idx, k, s), [values])


def flat_torch_indices(idx, shape, k, s):
    """Window-local ``u * kw + v`` to PyTorch's flat ``row * W + col`` in the input map."""
    (_, kw), (sh, sw) = ref._pair(k), ref._pair(s)
    u, v = np.divmod(idx.astype(np.int64), kw)
    rows = np.arange(idx.shape[2])[:, None] * sh + u
    cols = np.arange(idx.shape[3])[None, :] * sw + v
    return rows * shape[3] + cols


@pytest.mark.parametrize("shape, k, s, ceil", POOL_CASES, ids=POOL_IDS)
def test_pooling_reference_matches_torch(shape, k, s, ceil, tie_free, rng, torch):
    F = torch.nn.functional
    x = tie_free(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = F.max_pool2d(tx, k, s, ceil_mode=ceil, return_indices=True)
    y, idx = ref.max_pool2d(x, k, s, ceil_mode=ceil)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(flat_torch_indices(idx, shape, k, s), tidx.numpy())
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(ref.max_pool2d_backward(dy, idx, x.shape, k, s), tx.grad.numpy(), **TOL)
    if ref._pair(s)[0] < ref._pair(k)[0] or ref._pair(s)[1] < ref._pair(k)[1]:
        return  # overlapping windows: PyTorch's unpooling overwrites where ours adds (see MaxUnpool2d)
    values = torch.tensor(rng.standard_normal(y.shape), requires_grad=True)
    tz = F.max_unpool2d(values, tidx, k, s, output_size=x.shape[2:])
    z = ref.max_unpool2d(values.detach().numpy(), idx, k, s, output_size=x.shape[2:])
    np.testing.assert_array_equal(z, tz.detach().numpy())
    dz = rng.standard_normal(z.shape)
    tz.backward(torch.tensor(dz))
    np.testing.assert_allclose(ref.max_unpool2d_backward(dz, idx, k, s), values.grad.numpy(), **TOL)


# -- batch normalisation ---------------------------------------------------------------------------
def make_bn(channels, rng):
    bn = BatchNorm2d(channels).double()
    bn.weight.data[...] = rng.uniform(0.5, 1.5, channels)
    bn.bias.data[...] = rng.standard_normal(channels)
    bn.running_mean[...] = rng.standard_normal(channels)
    bn.running_var[...] = rng.uniform(0.5, 2.0, channels)
    return bn


BN_SHAPES = [(2, 3, 5, 7), (1, 2, 3, 1), (4, 1, 1, 1)]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_train_mode_matches_reference(shape, rng):
    bn = make_bn(shape[1], rng)
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    x = 3 * rng.standard_normal(shape) + 1
    y = bn.train().forward(x)
    y_ref, mean, var = ref.batch_norm(x, bn.weight.data, bn.bias.data, eps=bn.eps)
    np.testing.assert_allclose(y, y_ref, **TOL)
    m = shape[0] * shape[2] * shape[3]
    rm, rv = ref.update_running_stats(rm0, rv0, mean, var, m, momentum=bn.momentum)
    np.testing.assert_allclose(bn.running_mean, rm, err_msg="running_mean", **TOL)
    np.testing.assert_allclose(bn.running_var, rv, err_msg="running_var", **TOL)
    dy = rng.standard_normal(shape)
    dx = bn.backward(dy)
    dx_ref, dgamma, dbeta = ref.batch_norm_backward(x, bn.weight.data, dy, eps=bn.eps)
    np.testing.assert_allclose(dx, dx_ref, err_msg="dx", rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad, dgamma, err_msg="dgamma", **TOL)
    np.testing.assert_allclose(bn.bias.grad, dbeta, err_msg="dbeta", **TOL)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_eval_mode_matches_reference(shape, rng):
    """Eval-mode forward followed by backward: the gradient of the running-statistics affine map."""
    bn = make_bn(shape[1], rng).eval()
    args = (bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var)
    x = 3 * rng.standard_normal(shape) + 1
    y = bn.forward(x)
    np.testing.assert_allclose(y, ref.batch_norm_eval(x, *args, eps=bn.eps), **TOL)
    dy = rng.standard_normal(shape)
    dx = bn.backward(dy)
    dx_ref, dgamma, dbeta = ref.batch_norm_eval_backward(
        x, bn.weight.data, bn.running_mean, bn.running_var, dy, eps=bn.eps
    )
    np.testing.assert_allclose(dx, dx_ref, err_msg="dx", **TOL)
    np.testing.assert_allclose(bn.weight.grad, dgamma, err_msg="dgamma", **TOL)
    np.testing.assert_allclose(bn.bias.grad, dbeta, err_msg="dbeta", **TOL)


def test_batch_norm_reference_backwards_pass_gradcheck(rng):
    x = 2 * rng.standard_normal((2, 3, 3, 4)) + 0.5
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    gradcheck(lambda x, g, b: ref.batch_norm(x, g, b)[0],
              lambda dy: ref.batch_norm_backward(x, gamma, dy), [x, gamma, beta])
    gradcheck(lambda x, g, b: ref.batch_norm_eval(x, g, b, mean, var),
              lambda dy: ref.batch_norm_eval_backward(x, gamma, mean, var, dy), [x, gamma, beta])


@pytest.mark.parametrize("shape", BN_SHAPES[:2])
def test_batch_norm_reference_matches_torch(shape, rng, torch):
    F = torch.nn.functional
    c = shape[1]
    x = 3 * rng.standard_normal(shape) + 1
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    dy = rng.standard_normal(shape)
    for training in (True, False):
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)
        ty = F.batch_norm(tx, t_rm, t_rv, tg, tb, training=training, momentum=0.1, eps=1e-5)
        ty.backward(torch.tensor(dy))
        if training:
            y, mean, var = ref.batch_norm(x, gamma, beta)
            grads = ref.batch_norm_backward(x, gamma, dy)
            new_rm, new_rv = ref.update_running_stats(rm, rv, mean, var, x.size // c)
            np.testing.assert_allclose(new_rm, t_rm.numpy(), err_msg="running_mean", **TOL)
            np.testing.assert_allclose(new_rv, t_rv.numpy(), err_msg="running_var", **TOL)
        else:
            y = ref.batch_norm_eval(x, gamma, beta, rm, rv)
            grads = ref.batch_norm_eval_backward(x, gamma, rm, rv, dy)
        np.testing.assert_allclose(y, ty.detach().numpy(), err_msg=f"y, training={training}", **TOL)
        for name, got, t in zip(("dx", "dgamma", "dbeta"), grads, (tx, tg, tb)):
            np.testing.assert_allclose(got, t.grad.numpy(), err_msg=f"{name}, training={training}",
                                       rtol=1e-9, atol=1e-12)


# -- softmax cross-entropy -------------------------------------------------------------------------
K, IGNORE = 4, 4
NORMALIZE = ["valid", "weights", "full", "batch", "sum"]


def make_loss_batch(rng, shape=(2, K, 3, 5), ignored=4):
    logits = 3 * rng.standard_normal(shape)
    labels = rng.integers(0, K, (shape[0], *shape[2:])).astype(np.uint8)
    flat = labels.reshape(-1)
    flat[rng.choice(flat.size, ignored, replace=False)] = IGNORE
    return logits, labels


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("weighted", [True, False], ids=["weights", "no-weights"])
@pytest.mark.parametrize("ignore", [True, False], ids=["ignore", "no-ignore"])
def test_softmax_cross_entropy_layer_matches_reference(normalize, weighted, ignore, rng):
    logits, labels = make_loss_batch(rng, ignored=4 if ignore else 0)
    weight = rng.uniform(0.2, 3.0, K) if weighted else None
    ignore_index = IGNORE if ignore else None
    layer = SoftmaxCrossEntropy(weight=weight, ignore_index=ignore_index, normalize=normalize)
    loss = layer.forward(logits, labels)
    expected = ref.softmax_cross_entropy(logits, labels, weight, ignore_index, normalize)
    assert loss == pytest.approx(expected, rel=1e-12)
    grad = layer.backward()
    expected_grad = ref.softmax_cross_entropy_backward(logits, labels, weight, ignore_index, normalize)
    np.testing.assert_allclose(grad, expected_grad, **TOL)
    if ignore:
        np.testing.assert_array_equal(expected_grad.transpose(0, 2, 3, 1)[labels == IGNORE], 0.0)


def test_softmax_cross_entropy_every_pixel_ignored_is_zero(rng):
    logits, labels = make_loss_batch(rng, shape=(1, K, 2, 2), ignored=4)
    for normalize in ("valid", "weights"):
        assert ref.softmax_cross_entropy(logits, labels, None, IGNORE, normalize) == 0.0
        np.testing.assert_array_equal(ref.softmax_cross_entropy_backward(logits, labels, None, IGNORE, normalize), 0)
        layer = SoftmaxCrossEntropy(ignore_index=IGNORE, normalize=normalize)
        assert layer.forward(logits, labels) == 0.0
        np.testing.assert_array_equal(layer.backward(), 0.0)


def test_softmax_cross_entropy_reference_is_stable_for_huge_logits():
    logits = np.array([1e4, -1e4, 0.0, 3e3]).reshape(1, 4, 1, 1)
    labels = np.array([[[2]]])
    assert ref.softmax_cross_entropy(logits, labels) == pytest.approx(1e4)
    np.testing.assert_allclose(ref.softmax_cross_entropy_backward(logits, labels).ravel(), [1, 0, -1, 0], atol=1e-15)


@pytest.mark.parametrize("normalize", ["valid", "weights", "batch"])
def test_softmax_cross_entropy_reference_backward_passes_gradcheck(normalize, rng):
    logits, labels = make_loss_batch(rng, shape=(2, K, 2, 3), ignored=2)
    weight = rng.uniform(0.2, 3.0, K)
    gradcheck(lambda z: np.asarray(ref.softmax_cross_entropy(z, labels, weight, IGNORE, normalize)),
              lambda g: g * ref.softmax_cross_entropy_backward(logits, labels, weight, IGNORE, normalize), [logits])


@pytest.mark.parametrize("weighted", [True, False], ids=["weights", "no-weights"])
def test_softmax_cross_entropy_reference_matches_torch(weighted, rng, torch):
    """PyTorch's ``cross_entropy`` gives the "sum" and "weights" normalisations; the others divide the sum."""
    F = torch.nn.functional
    logits, labels = make_loss_batch(rng)
    weight = rng.uniform(0.2, 3.0, K) if weighted else None
    tw = None if weight is None else torch.tensor(weight)
    valid = labels != IGNORE
    divisor = {"sum": 1.0, "valid": valid.sum(), "full": labels.size, "batch": labels.shape[0], "weights": None}
    for normalize, d in divisor.items():
        tz = torch.tensor(logits, requires_grad=True)
        reduction = "mean" if normalize == "weights" else "sum"
        t_loss = F.cross_entropy(tz, torch.tensor(labels.astype(np.int64)), weight=tw, ignore_index=IGNORE,
                                 reduction=reduction)
        if d is not None:
            t_loss = t_loss / float(d)
        t_loss.backward()
        loss = ref.softmax_cross_entropy(logits, labels, weight, IGNORE, normalize)
        assert loss == pytest.approx(float(t_loss.detach()), rel=1e-12), normalize
        np.testing.assert_allclose(ref.softmax_cross_entropy_backward(logits, labels, weight, IGNORE, normalize),
                                   tz.grad.numpy(), err_msg=normalize, **TOL)


@pytest.mark.parametrize("shape, o, k, s, p", [((2, 3, 4, 5), 2, 3, 2, 1), ((1, 2, 3, 3), 3, 4, 2, 1), ((1, 2, 5, 4), 2, 3, 3, 0)])
def test_conv_transpose2d_reference_matches_torch(shape, o, k, s, p, rng, torch):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((shape[1], o, k, k))
    b = rng.standard_normal(o)
    ty = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=s, padding=p)
    np.testing.assert_allclose(ref.conv_transpose2d(x, w, b, s, p), ty.numpy(), **TOL)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw, size", [((5, 4), (9, 7)), ((23, 30), (45, 60)), ((7, 9), (3, 4))])
def test_bilinear_upsample_reference_matches_torch(align_corners, hw, size, rng, torch):
    x = rng.standard_normal((2, 3, *hw))
    ty = torch.nn.functional.interpolate(torch.tensor(x), size=size, mode="bilinear", align_corners=align_corners)
    np.testing.assert_allclose(ref.bilinear_upsample(x, size, align_corners), ty.numpy(), **TOL)

"""LovaszSoftmax and LossSum: the definition, PyTorch, gradients, ignored pixels, absent classes, bad input."""
import numpy as np
import pytest

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import gradcheck
from minisegnet.layers import LossSum, LovaszSoftmax, SoftmaxCrossEntropy

K = 5
IGNORE = 255


def make_batch(shape=(2, K, 4, 6), seed=0, dtype=np.float64, ignored=4, classes=None):
    """Logits, and uint8 labels (of ``classes`` only, when given) with ``ignored`` pixels set to IGNORE."""
    rng = np.random.default_rng(seed)
    n, k, h, w = shape
    logits = (1.5 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.choice(np.arange(k) if classes is None else np.asarray(classes), (n, h, w)).astype(np.uint8)
    labels.reshape(-1)[rng.choice(n * h * w, ignored, replace=False)] = IGNORE
    return logits, labels


def reference_lovasz(logits, labels, ignore_index=None, per_class=False):
    """Berman et al.'s ``lovasz_softmax_flat`` (classes="present"), one class at a time, in float64.

    ``per_class``: ``{class: its loss}`` for the present classes instead of their mean."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = z.shape[1]
    p = p.transpose(0, 2, 3, 1).reshape(-1, k)
    y = labels.reshape(-1)
    if ignore_index is not None:
        p, y = p[y != ignore_index], y[y != ignore_index]
    losses = {}
    for c in range(k):
        fg = (y == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        jaccard = 1 - (gts - np.cumsum(fg_sorted)) / (gts + np.cumsum(1 - fg_sorted))
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses[c] = errors[order] @ jaccard
    if per_class:
        return losses
    return float(np.mean(list(losses.values()))) if losses else 0.0


def class_ious(pred, labels, k, ignore_index):
    valid = labels != ignore_index
    ious = []
    for c in range(k):
        truth, guess = (labels == c) & valid, (pred == c) & valid
        if truth.any():
            ious.append((truth & guess).sum() / (truth | guess).sum())
    return np.array(ious)


# -- the definition ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_loss_matches_bermans_definition(seed):
    logits, labels = make_batch(seed=seed)
    assert LovaszSoftmax(IGNORE).forward(logits, labels) == pytest.approx(
        reference_lovasz(logits, labels, IGNORE), rel=1e-12)


def test_on_confident_predictions_it_is_one_minus_the_mean_iou_of_the_present_classes():
    """The Lovász extension equals the Jaccard loss itself on 0/1 errors: with (almost) one-hot
    probabilities the loss is 1 - mIoU over the classes in the labels (the lesson of the paper)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, K - 1, (2, 6, 8)).astype(np.uint8)  # class K-1 never labelled
    pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, K, labels.shape))
    labels.reshape(-1)[:5] = IGNORE
    logits = 60.0 * (pred[:, None] == np.arange(K)[None, :, None, None])  # softmax = one-hot to 1e-26
    ious = class_ious(pred, labels, K, IGNORE)
    assert len(ious) == K - 1
    assert LovaszSoftmax(IGNORE).forward(logits, labels) == pytest.approx(1 - ious.mean(), abs=1e-12)


def test_a_perfect_prediction_costs_nothing_and_a_lower_iou_costs_more():
    labels = np.array([[[0, 0, 1, 1], [0, 2, 2, 1]]], dtype=np.uint8)
    onehot = (labels[:, None] == np.arange(3)[None, :, None, None]).astype(np.float64)
    loss = LovaszSoftmax()
    assert loss.forward(40 * onehot, labels) == pytest.approx(0, abs=1e-12)
    worse = onehot.copy()
    worse[0, :, 0, 0] = [0, 1, 0]  # one pixel of class 0 predicted as 1
    assert loss.forward(40 * worse, labels) > loss.forward(10 * onehot, labels) > 0


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_matches_pytorch_autograd_of_bermans_code(dtype, tol):
    torch = pytest.importorskip("torch", reason="PyTorch is the test oracle for parity tests")
    logits, labels = make_batch((2, K, 5, 7), seed=7, dtype=dtype, ignored=6)
    zt = torch.tensor(logits, requires_grad=True)
    probs = zt.softmax(1).permute(0, 2, 3, 1).reshape(-1, K)
    y = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    keep = y != IGNORE
    probs, y = probs[keep], y[keep]
    losses = []
    for c in range(K):
        fg = (y == c).to(zt.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        jaccard = 1.0 - (gts - fg_sorted.cumsum(0)) / (gts + (1 - fg_sorted).cumsum(0))
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors_sorted, jaccard))
    expected = torch.stack(losses).mean()
    expected.backward()
    loss = LovaszSoftmax(IGNORE)
    value = loss.forward(logits, labels)
    assert value == pytest.approx(expected.item(), rel=tol)
    grad = loss.backward()
    assert grad.dtype == dtype and grad.shape == logits.shape and grad.flags.c_contiguous
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=tol, atol=tol * 1e-2)


# -- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ignored", [0, 5])
def test_gradcheck(seed, ignored):
    """float64, central differences, a random upstream gradient (the errors of one class have no ties)."""
    logits, labels = make_batch(seed=seed, ignored=ignored)
    loss = LovaszSoftmax(IGNORE)
    gradcheck(lambda z: np.asarray(loss.forward(z, labels)), loss.backward, [logits], seed=seed)


def test_gradcheck_with_a_class_absent_from_the_batch():
    logits, labels = make_batch(seed=5, classes=[0, 2, 3])
    loss = LovaszSoftmax(IGNORE)
    gradcheck(lambda z: np.asarray(loss.forward(z, labels)), loss.backward, [logits], seed=5)


def test_ignored_pixels_change_nothing_and_get_no_gradient():
    logits, labels = make_batch(seed=2, ignored=6)
    loss = LovaszSoftmax(IGNORE)
    value, grad = loss.forward(logits, labels), loss.backward()
    ignored = labels == IGNORE
    assert np.all(grad.transpose(0, 2, 3, 1)[ignored] == 0)
    assert np.any(grad.transpose(0, 2, 3, 1)[~ignored] != 0)
    changed = logits.copy()
    changed.transpose(0, 2, 3, 1)[ignored] = 50 * np.random.default_rng(0).standard_normal((ignored.sum(), K))
    assert loss.forward(changed, labels) == value
    np.testing.assert_array_equal(loss.backward(), grad)


def test_only_present_classes_count():
    logits, labels = make_batch(seed=4, classes=[1, 3])
    per_class = reference_lovasz(logits, labels, IGNORE, per_class=True)
    assert sorted(per_class) == [1, 3]
    value = LovaszSoftmax(IGNORE).forward(logits, labels)
    assert value == pytest.approx((per_class[1] + per_class[3]) / 2, rel=1e-12)


def test_every_pixel_ignored_gives_zero_loss_and_gradient():
    logits, _ = make_batch(seed=1)
    labels = np.full((2, 4, 6), IGNORE, np.uint8)
    loss = LovaszSoftmax(IGNORE)
    assert loss.forward(logits, labels) == 0.0
    assert not np.any(loss.backward())


def test_grad_output_scales_and_backward_can_run_again():
    logits, labels = make_batch(seed=8)
    loss = LovaszSoftmax(IGNORE)
    loss.forward(logits, labels)
    once = loss.backward()
    np.testing.assert_allclose(loss.backward(2.5), 2.5 * once, rtol=1e-14)
    np.testing.assert_array_equal(loss.backward(), once)


def test_float32_stays_float32_and_agrees_with_float64_over_many_pixels():
    """90,000 pixels, one of them of class 1: float32 sums stay within 1e-4 of the float64 definition."""
    rng = np.random.default_rng(0)
    labels = np.zeros((1, 300, 300), np.uint8)
    labels[0, 150, 150] = 1
    logits = rng.standard_normal((1, 2, 300, 300)).astype(np.float32)
    loss = LovaszSoftmax()
    value = loss.forward(logits, labels)
    assert isinstance(value, np.float64)
    assert value == pytest.approx(reference_lovasz(logits, labels), rel=1e-4)
    assert loss.backward().dtype == np.float32


@pytest.mark.parametrize("batch", [1, 2])
def test_the_logits_are_left_as_they_were(batch):
    """For N = 1 the class-major transpose of the logits is a view: the softmax must not run in it."""
    logits, labels = make_batch((batch, K, 4, 6), seed=12)
    before = logits.copy()
    loss = LovaszSoftmax(IGNORE)
    loss.forward(logits, labels)
    loss.backward()
    np.testing.assert_array_equal(logits, before)


def test_no_grad_keeps_nothing_and_backward_needs_a_forward():
    logits, labels = make_batch()
    loss = LovaszSoftmax(IGNORE)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        loss.backward()
    with no_grad():
        loss.forward(logits, labels)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        loss.backward()
    loss.forward(logits, labels)
    loss.release_caches()
    with pytest.raises(RuntimeError, match="backward called before forward"):
        loss.backward()


@pytest.mark.parametrize("labels, error, message", [
    (np.zeros((2, 4, 6), np.float32), ValueError, "integer labels"),
    (np.zeros((2, 4, 5), np.uint8), ValueError, r"shape \(N, H, W\)"),
    (np.full((2, 4, 6), 7, np.uint8), ValueError, r"LovaszSoftmax: expected labels in \[0, 5\)"),
    ([[0]], TypeError, "NumPy/CuPy array"),
])
def test_bad_labels_are_named(labels, error, message):
    logits, _ = make_batch()
    with pytest.raises(error, match=message):
        LovaszSoftmax(IGNORE).forward(logits, labels)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="ignore_index as an int"):
        LovaszSoftmax(ignore_index=1.5)
    with pytest.raises(TypeError, match="validate_labels"):
        LovaszSoftmax(validate_labels="yes")


# -- LossSum -------------------------------------------------------------------------------

def test_loss_sum_is_the_weighted_sum_forward_and_backward():
    logits, labels = make_batch(seed=9)
    weights = np.array([0.5, 2.0, 1.0, 3.0, 1.5])
    ce, lovasz = SoftmaxCrossEntropy(weights, ignore_index=IGNORE), LovaszSoftmax(IGNORE)
    expected = ce.forward(logits, labels) + 0.7 * lovasz.forward(logits, labels)
    expected_grad = ce.backward(1.3) + 0.7 * lovasz.backward(1.3)
    total = LossSum((1.0, SoftmaxCrossEntropy(weights, ignore_index=IGNORE)), (0.7, LovaszSoftmax(IGNORE)))
    assert total.forward(logits, labels) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(total.backward(1.3), expected_grad, rtol=1e-13)


def test_loss_sum_gradcheck():
    logits, labels = make_batch(seed=10)
    total = LossSum((1.0, SoftmaxCrossEntropy(ignore_index=IGNORE)), (0.5, LovaszSoftmax(IGNORE)))
    gradcheck(lambda z: np.asarray(total.forward(z, labels)), total.backward, [logits], seed=10)


def test_loss_sum_skips_a_zero_weight_and_reaches_its_terms():
    logits, labels = make_batch(seed=11)
    lovasz = LovaszSoftmax(IGNORE)
    total = LossSum((1.0, SoftmaxCrossEntropy(ignore_index=IGNORE)), (0.0, lovasz))
    assert total.forward(logits, labels) == pytest.approx(
        SoftmaxCrossEntropy(ignore_index=IGNORE).forward(logits, labels))
    assert lovasz._probs is None  # never run
    total = LossSum((1.0, lovasz))
    total.forward(logits, labels)
    total.release_caches()  # a sub-module: reached
    assert lovasz._probs is None
    assert "1 * LovaszSoftmax" in repr(total)


@pytest.mark.parametrize("terms, error, message", [
    ((), ValueError, "at least one"),
    (((1.0,),), TypeError, r"\(weight, loss\) pair"),
    (((-1.0, LovaszSoftmax()),), ValueError, "finite number >= 0"),
    (((float("nan"), LovaszSoftmax()),), ValueError, "finite number >= 0"),
    (((True, LovaszSoftmax()),), ValueError, "finite number >= 0"),
    (((1.0, object()),), TypeError, "no forward and backward"),
    (((0.0, LovaszSoftmax()),), ValueError, "every term has weight 0"),
])
def test_loss_sum_refuses_bad_terms(terms, error, message):
    with pytest.raises(error, match=message):
        LossSum(*terms)

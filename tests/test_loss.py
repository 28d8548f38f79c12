"""SoftmaxCrossEntropy: every normalisation, weights, ignored pixels, stability, bad input."""
import json

import numpy as np
import pytest

from minisegnet.grad_mode import no_grad
from minisegnet.gradcheck import gradcheck
from minisegnet.layers.loss import NORMALIZE_MODES, SoftmaxCrossEntropy

K = 4
WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0])
IGNORE = 255


def make_batch(shape=(2, K, 3, 5), seed=0, dtype=np.float64, ignored=3):
    """Logits, and uint8 labels with ``ignored`` pixels set to IGNORE."""
    rng = np.random.default_rng(seed)
    n, k, h, w = shape
    logits = (2.0 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, k, (n, h, w)).astype(np.uint8)
    labels.reshape(-1)[rng.choice(n * h * w, ignored, replace=False)] = IGNORE
    return logits, labels


def reference_loss(logits, labels, weight=None, ignore_index=None, normalize="valid"):
    """A dense, loop-free but one-hot-building reference in float64."""
    z = logits.astype(np.float64)
    k = z.shape[1]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = np.where(valid, labels, 0).astype(np.int64)
    onehot = (np.arange(k)[None, :, None, None] == safe[:, None]).astype(np.float64)
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    pixel_w = w[safe] * valid
    total = -(onehot * log_p).sum(axis=1) * pixel_w
    normaliser = {
        "valid": valid.sum(),
        "weights": pixel_w.sum(),
        "full": labels.size,
        "batch": labels.shape[0],
        "sum": 1.0,
    }[normalize]
    return total.sum() / normaliser


# -- gradient checks ---------------------------------------------------------------------

def check_loss(loss, logits, labels):
    gradcheck(lambda z: np.asarray(loss.forward(z, labels)), loss.backward, [logits])


@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
def test_gradcheck_with_weights_and_ignored_pixels(normalize):
    logits, labels = make_batch()
    check_loss(SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE, normalize=normalize), logits, labels)


@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
def test_gradcheck_plain(normalize):
    logits, labels = make_batch((1, 3, 2, 3), ignored=0)
    check_loss(SoftmaxCrossEntropy(normalize=normalize), logits, labels)


# -- values --------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_hand_computed_reference(normalize, weighted):
    logits, labels = make_batch(seed=1)
    weight = WEIGHTS if weighted else None
    loss = SoftmaxCrossEntropy(weight, ignore_index=IGNORE, normalize=normalize)
    value = loss.forward(logits, labels)
    assert type(value) is np.float64
    expected = reference_loss(logits, labels, weight, IGNORE, normalize)
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_loss_is_a_numpy_float64_that_works_as_a_python_float(dtype):
    """On NumPy the value is on the host already: a ``numpy.float64``, which *is* a Python float."""
    logits, labels = make_batch(seed=12, dtype=dtype)
    value = SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE).forward(logits, labels)
    assert type(value) is np.float64 and isinstance(value, float)
    expected = reference_loss(logits, labels, WEIGHTS, IGNORE)
    assert float(value) == pytest.approx(expected, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert f"{value:.3f}" == f"{float(value):.3f}"
    assert json.loads(json.dumps({"loss": value})) == {"loss": float(value)}  # a float32 would not serialise


def test_valid_normalisation_is_segnets_caffe_loss():
    """``valid``: weighted sum divided by the *count* of non-ignored pixels (not their weights)."""
    logits, labels = make_batch(seed=2)
    valid_count = int((labels != IGNORE).sum())
    by_sum = SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE, normalize="sum").forward(logits, labels)
    by_valid = SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE, normalize="valid").forward(logits, labels)
    assert by_valid == pytest.approx(by_sum / valid_count, rel=1e-12)


def test_gradient_is_softmax_minus_onehot_and_zero_on_ignored_pixels():
    logits, labels = make_batch(seed=3)
    loss = SoftmaxCrossEntropy(ignore_index=IGNORE, normalize="sum")
    loss.forward(logits, labels)
    grad = loss.backward()
    assert grad.shape == logits.shape and grad.dtype == logits.dtype
    ignored = labels == IGNORE
    np.testing.assert_array_equal(grad.transpose(0, 2, 3, 1)[ignored], 0.0)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)  # softmax and one-hot both sum to 1
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n, h, w = np.nonzero(~ignored)
    np.testing.assert_allclose(grad[n, labels[n, h, w], h, w], p[n, labels[n, h, w], h, w] - 1.0, rtol=1e-12)


def test_grad_output_scales_the_gradient():
    logits, labels = make_batch(seed=4)
    loss = SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE)
    loss.forward(logits, labels)
    once = loss.backward()
    loss.forward(logits, labels)
    np.testing.assert_allclose(loss.backward(0.25), 0.25 * once, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_with_huge_logits(dtype):
    logits = np.full((1, 3, 1, 2), -1e4, dtype=dtype)
    logits[0, 0, 0, 0] = 1e4  # pixel 0: confident and right (label 0)
    logits[0, 1, 0, 1] = 1e4  # pixel 1: confident and wrong (label 2)
    labels = np.array([[[0, 2]]], np.int64)
    loss = SoftmaxCrossEntropy(normalize="sum")
    value = loss.forward(logits, labels)
    assert np.isfinite(value) and value == pytest.approx(2e4, rel=1e-6)  # -log p = 0 + 2e4
    grad = loss.backward()
    assert np.isfinite(grad).all() and grad.dtype == dtype
    np.testing.assert_allclose(grad[0, :, 0, 0], [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(grad[0, :, 0, 1], [0.0, 1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
def test_no_valid_pixels_gives_zero_loss_and_gradient(normalize):
    logits, labels = make_batch((1, K, 2, 2), seed=5, ignored=4)
    loss = SoftmaxCrossEntropy(WEIGHTS, ignore_index=IGNORE, normalize=normalize)
    assert loss.forward(logits, labels) == 0.0
    np.testing.assert_array_equal(loss.backward(), 0.0)


def test_zero_weight_on_every_valid_pixel_gives_zero_not_nan():
    logits, labels = make_batch((1, K, 2, 2), seed=6, ignored=0)
    loss = SoftmaxCrossEntropy(np.zeros(K), normalize="weights")
    assert loss.forward(logits, labels) == 0.0
    np.testing.assert_array_equal(loss.backward(), 0.0)


def test_label_dtypes_and_negative_ignore_index():
    logits, labels = make_batch(seed=7, ignored=0)
    expected = SoftmaxCrossEntropy().forward(logits, labels)
    for dtype in (np.uint8, np.int32, np.int64):
        assert SoftmaxCrossEntropy(ignore_index=-100).forward(logits, labels.astype(dtype)) == pytest.approx(expected)
    with_ignored = labels.astype(np.int64)
    with_ignored[0, 0, 0] = -100
    value = SoftmaxCrossEntropy(ignore_index=-100).forward(logits, with_ignored)
    assert value == pytest.approx(reference_loss(logits, with_ignored, None, -100), rel=1e-12)


def test_weight_is_a_buffer_converted_to_the_logits_dtype():
    loss = SoftmaxCrossEntropy([1, 2, 3, 4])
    assert list(loss.state_dict()) == ["weight"] and loss.weight.dtype == np.float64
    logits, labels = make_batch(seed=8, dtype=np.float32, ignored=0)
    loss.forward(logits, labels)
    assert loss.backward().dtype == np.float32
    assert list(SoftmaxCrossEntropy().state_dict()) == []


# -- modes and cache -------------------------------------------------------------------------

def test_backward_needs_a_kept_forward():
    logits, labels = make_batch(seed=9)
    loss = SoftmaxCrossEntropy(ignore_index=IGNORE)
    with pytest.raises(RuntimeError, match="SoftmaxCrossEntropy.backward called before forward"):
        loss.backward()
    value = loss.forward(logits, labels)
    first = loss.backward().copy()
    with pytest.raises(RuntimeError, match="called twice after one forward"):  # the buffer was handed out
        loss.backward()
    fresh = SoftmaxCrossEntropy(ignore_index=IGNORE)
    with no_grad():
        assert fresh.forward(logits, labels) == value  # a value, no cache
    assert fresh._probs is None
    with pytest.raises(RuntimeError, match="no_grad"):
        fresh.backward()
    assert loss.forward(logits, labels) == value
    with no_grad():
        loss.forward(logits[::-1].copy(), labels[::-1].copy())  # in between: changes nothing
    np.testing.assert_array_equal(loss.backward(), first)


# -- bad input -----------------------------------------------------------------------------

def test_label_range_check_follows_validate_labels():
    """Default: checked on NumPy (cheap), not on CuPy (a host sync); True: everywhere; False: never."""
    assert SoftmaxCrossEntropy().checks_label_values(np)
    assert not SoftmaxCrossEntropy().checks_label_values(object())  # any other array module, CuPy
    assert SoftmaxCrossEntropy(validate_labels=True).checks_label_values(object())
    logits, labels = make_batch(seed=13, ignored=0)
    labels[0, 0, 0] = 9
    with pytest.raises(ValueError, match="expected labels in"):
        SoftmaxCrossEntropy(validate_labels=True).forward(logits, labels)
    unchecked = SoftmaxCrossEntropy(validate_labels=False)
    assert not unchecked.checks_label_values(np)
    with pytest.raises(IndexError):  # no readable message any more: NumPy's own indexing error
        unchecked.forward(logits, labels)
    with pytest.raises(TypeError, match="validate_labels"):
        SoftmaxCrossEntropy(validate_labels="yes")


def test_labels_out_of_range_are_named():
    logits, labels = make_batch(seed=10, ignored=0)
    labels = labels.astype(np.int64)
    labels[0, 0, :3] = [7, -1, 4]
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: expected labels in \[0, 4\), got values -1, 4, 7"):
        SoftmaxCrossEntropy().forward(logits, labels)
    labels[0, 0, :3] = IGNORE
    labels[1, 0, 0] = 11
    with pytest.raises(ValueError, match=r"in \[0, 4\) or the ignore_index 255, got values 11$"):
        SoftmaxCrossEntropy(ignore_index=IGNORE).forward(logits, labels)


@pytest.mark.parametrize(
    "logits, labels, error, message",
    [
        (np.zeros((2, K, 3)), np.zeros((2, 3), np.int64), ValueError, "4-D logits"),
        (np.zeros((2, K, 3, 3), np.int64), np.zeros((2, 3, 3), np.int64), ValueError, "floating-point logits"),
        (np.zeros((2, K, 3, 3)), np.zeros((2, 3, 3), np.float32), ValueError, "integer labels"),
        (np.zeros((2, K, 3, 3)), np.zeros((2, 3, 4), np.int64), ValueError, r"shape \(N, H, W\) = \(2, 3, 3\)"),
        (np.zeros((2, K, 3, 3)), np.zeros((2, 1, 3, 3), np.int64), ValueError, "got \\(2, 1, 3, 3\\)"),
        (np.zeros((2, K, 3, 3)), [[0]], TypeError, "labels as a NumPy/CuPy array"),
    ],
)
def test_bad_input(logits, labels, error, message):
    with pytest.raises(error, match=message) as info:
        SoftmaxCrossEntropy().forward(logits, labels)
    assert "SoftmaxCrossEntropy" in str(info.value)


def test_weight_length_must_match_classes():
    with pytest.raises(ValueError, match="expected 4 class weights .* got 3"):
        SoftmaxCrossEntropy([1.0, 2.0, 3.0]).forward(np.zeros((1, K, 2, 2)), np.zeros((1, 2, 2), np.int64))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(normalize="mean"), "normalize"),
        (dict(weight=np.ones((2, 2))), "1-D array"),
        (dict(weight=[1.0, -1.0]), "non-negative"),
        (dict(weight=[1.0, np.nan]), "finite"),
        (dict(ignore_index=2.5), "ignore_index"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftmaxCrossEntropy(**kwargs)


# -- parity with PyTorch -------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("weighted", [False, True])
def test_weights_normalisation_matches_torch(dtype, tol, weighted):
    torch = pytest.importorskip("torch", reason="PyTorch is the test oracle for parity tests")
    logits, labels = make_batch((2, K, 4, 5), seed=11, dtype=dtype, ignored=5)
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    weight = torch.tensor(WEIGHTS, dtype=tdtype) if weighted else None
    ref = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    zt = torch.tensor(logits, requires_grad=True)
    expected = ref(zt, torch.from_numpy(labels.astype(np.int64)))
    expected.backward()
    loss = SoftmaxCrossEntropy(WEIGHTS if weighted else None, ignore_index=IGNORE, normalize="weights")
    assert loss.forward(logits, labels) == pytest.approx(expected.item(), rel=tol)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=tol, atol=tol * 1e-2)

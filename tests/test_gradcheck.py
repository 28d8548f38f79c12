"""The gradient checker must pass correct backward passes and catch wrong ones, with a useful message."""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet.gradcheck import GradcheckError, check_module, gradcheck, gradcheck_directional
from minisegnet.module import Module, Parameter


class SquareScale(Module):
    """``y = weight * x**2 + bias`` along the last axis: a toy layer with a known gradient."""

    def __init__(self, n: int, wrong: bool = False):
        super().__init__()
        self.weight = Parameter(np.linspace(-1.0, 2.0, n))
        self.bias = Parameter(np.zeros(n))
        self.wrong = wrong
        self._input = None

    def forward(self, x):
        self._input = x.copy()
        return self.weight.data * x**2 + self.bias.data

    def backward(self, dy):
        x = self._input
        self.weight.accumulate_grad((dy * x**2).reshape(-1, x.shape[-1]).sum(axis=0))
        self.bias.accumulate_grad(dy.reshape(-1, x.shape[-1]).sum(axis=0))
        factor = 1.0 if self.wrong else 2.0  # the bug: d(x^2)/dx written as x
        return factor * dy * self.weight.data * x


def permuting_op():
    """``y = 3 x`` whose backward sends each gradient to the *wrong element* (reversed order).

    Every element receives some element's gradient, so with an all-ones upstream the
    routing is invisible: the same mistake as a pooling backward that scatters each
    gradient into the wrong window.
    """

    def forward(x):
        return 3.0 * x

    def correct_backward(dy):
        return 3.0 * dy

    def permuted_backward(dy):
        return 3.0 * dy.reshape(-1)[::-1].reshape(dy.shape)

    return forward, correct_backward, permuted_backward


@pytest.fixture
def x(rng):
    return rng.standard_normal((2, 3, 4))


def test_passes_a_correct_backward(x):
    layer = SquareScale(4)
    reports = check_module(layer, x)
    assert [r.name for r in reports] == ["input[0]", "weight", "bias"]
    assert [r.checked for r in reports] == [x.size, 4, 4]
    assert all(r.max_abs_error < 1e-7 for r in reports)


def test_fails_a_wrong_backward_naming_tensor_index_and_values(x):
    layer = SquareScale(4, wrong=True)
    with pytest.raises(GradcheckError) as info:
        check_module(layer, x)
    message = str(info.value)
    assert message.startswith("gradient of input[0] at index (0, 0, 0): analytic ")
    assert "numeric" in message and "atol" in message
    analytic = float(message.split("analytic ")[1].split(",")[0])
    numeric = float(message.split("numeric ")[1].split(" ")[0])
    assert analytic == pytest.approx(numeric / 2, rel=1e-6)  # exactly the factor that is missing


def test_fails_a_wrong_parameter_gradient(x):
    layer = SquareScale(4)
    original = layer.backward

    def backward(dy):
        dx = original(dy)
        layer.bias.grad *= 2
        return dx

    with pytest.raises(GradcheckError, match=r"gradient of bias at index \(0,\)"):
        gradcheck(layer.forward, backward, [x], layer)


def test_random_upstream_catches_a_routing_bug_that_ones_would_hide(x):
    forward, correct, permuted = permuting_op()
    ones = np.ones_like(x)
    # With an all-ones upstream gradient the bug is invisible ...
    np.testing.assert_array_equal(permuted(ones), correct(ones))
    # ... the random upstream that gradcheck uses exposes it.
    gradcheck(forward, correct, [x])
    with pytest.raises(GradcheckError, match=r"gradient of input\[0\] at index"):
        gradcheck(forward, permuted, [x])
    with pytest.raises(GradcheckError, match="directional derivative"):
        gradcheck_directional(forward, permuted, [x])


def test_rejects_float32(x):
    layer = SquareScale(4)
    with pytest.raises(TypeError, match="gradcheck needs float64 tensors.*input\\[0\\] is float32"):
        check_module(layer, x.astype(np.float32))
    layer.weight.data = layer.weight.data.astype(np.float32)
    with pytest.raises(TypeError, match="weight is float32"):
        check_module(layer, x)
    with pytest.raises(TypeError, match="float64"):
        gradcheck_directional(layer.forward, layer.backward, [x], layer)


def test_missing_or_misshaped_gradients_are_errors(x):
    layer = SquareScale(4)
    with pytest.raises(GradcheckError, match="input\\[0\\]: backward returned None"):
        gradcheck(layer.forward, lambda dy: None, [x])
    with pytest.raises(GradcheckError, match="weight: backward left no gradient"):
        gradcheck(layer.forward, lambda dy: 2 * dy * layer.weight.data * x, [x], layer)
    with pytest.raises(GradcheckError, match=r"gradient has shape \(24,\), tensor has \(2, 3, 4\)"):
        gradcheck(layer.forward, lambda dy: dy.reshape(-1), [x])


def test_integer_inputs_are_not_checked(x):
    """Pooling indices and labels ride along as inputs without gradients."""
    labels = np.arange(4)

    def forward(t, idx):
        return t[..., idx] * 2.0

    reports = gradcheck(forward, lambda dy: (2.0 * dy, None), [x, labels])
    assert [r.name for r in reports] == ["input[0]"]


def test_stale_gradients_do_not_leak_into_the_check(x):
    layer = SquareScale(4)
    layer.weight.grad = np.full(4, 1e3)  # left over from an earlier step
    check_module(layer, x)


def test_max_elements_checks_a_random_subset(x):
    reports = check_module(SquareScale(4), x, max_elements=5)
    assert [r.checked for r in reports] == [5, 4, 4]


def test_directional_passes_and_fails(x):
    good, bad = SquareScale(4), SquareScale(4, wrong=True)
    results = gradcheck_directional(good.forward, good.backward, [x], good, directions=3)
    assert len(results) == 3
    for analytic, numeric in results:
        assert analytic == pytest.approx(numeric, rel=1e-6)
    with pytest.raises(GradcheckError, match=r"directional derivative 0 \(over 3 tensors\): analytic"):
        gradcheck_directional(bad.forward, bad.backward, [x], bad)


def test_tensor_is_restored_after_the_check(x):
    layer = SquareScale(4)
    x0, w0 = x.copy(), layer.weight.data.copy()
    check_module(layer, x)
    gradcheck_directional(layer.forward, layer.backward, [x], layer)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(layer.weight.data, w0)

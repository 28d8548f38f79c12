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


# -- checks that must not pass vacuously ----------------------------------------------------------
def test_non_contiguous_input_is_perturbed_in_place(rng):
    """A transposed view: ``reshape(-1)`` would be a copy, the perturbation would never reach the
    forward, the numeric gradient would be 0 and a backward returning 0 would pass."""
    x = rng.standard_normal((4, 3)).T
    assert not x.flags.c_contiguous
    x0 = x.copy()

    def forward(t):
        return 3.0 * t

    with pytest.raises(GradcheckError, match=r"gradient of input\[0\] at index \(0, 0\): analytic 0, numeric"):
        gradcheck(forward, lambda dy: np.zeros_like(dy), [x])
    with pytest.raises(GradcheckError, match="directional derivative 0"):
        gradcheck_directional(forward, lambda dy: np.zeros_like(dy), [x])
    reports = gradcheck(forward, lambda dy: 3.0 * dy, [x])
    assert reports[0].checked == x.size and reports[0].max_abs_numeric > 0
    np.testing.assert_array_equal(x, x0)


class StridedWeight(Module):
    """``y = x * w`` with ``w`` a strided view into a bigger array (a parameter sharing memory)."""

    def __init__(self, rng, wrong: bool):
        super().__init__()
        self.storage = rng.standard_normal((3, 8))
        self.weight = Parameter(self.storage[:, ::2].T)  # (4, 3), neither C- nor F-contiguous
        self.wrong = wrong
        self._input = None

    def forward(self, x):
        self._input = x.copy()
        return x * self.weight.data

    def backward(self, dy):
        grad = np.zeros_like(dy) if self.wrong else dy * self._input
        self.weight.accumulate_grad(grad.reshape(-1, *self.weight.data.shape).sum(axis=0))
        return dy * self.weight.data


def test_non_contiguous_parameter_is_perturbed_in_place(rng):
    x = rng.standard_normal((2, 4, 3))
    wrong = StridedWeight(rng, wrong=True)
    assert not wrong.weight.data.flags.c_contiguous and not wrong.weight.data.flags.f_contiguous
    with pytest.raises(GradcheckError, match=r"gradient of weight at index \(0, 0\): analytic 0,"):
        check_module(wrong, x)
    reports = check_module(StridedWeight(rng, wrong=False), x)
    assert [r.name for r in reports] == ["input[0]", "weight"]


class CentredBias(Module):
    """``y = w * (x + b - mean_batch(x + b))``: the bias cancels, as a conv bias before BatchNorm."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = Parameter(np.linspace(0.5, 2.0, n))
        self.bias = Parameter(np.linspace(-1.0, 1.0, n))
        self._centred = None

    def forward(self, x):
        z = x + self.bias.data
        self._centred = z - z.mean(axis=0)
        return self.weight.data * self._centred

    def backward(self, dy):
        self.weight.accumulate_grad((dy * self._centred).sum(axis=0))
        d_centred = dy * self.weight.data
        dz = d_centred - d_centred.mean(axis=0)
        self.bias.accumulate_grad(dz.sum(axis=0))  # exactly 0 up to rounding, whatever it should be
        return dz


def test_a_gradient_that_is_zero_everywhere_fails_unless_allowed(rng):
    x = rng.standard_normal((5, 4))
    layer = CentredBias(4)
    with pytest.raises(GradcheckError, match=r"the gradient of bias \(4 entries checked\) is 0 within tolerance.*"
                                             r"allow_zero=\['bias'\]"):
        check_module(layer, x)
    for allow in (["bias"], "b*", True):
        reports = check_module(layer, x, allow_zero=allow)
        assert [r.zero for r in reports] == [False, False, True]
    with pytest.raises(GradcheckError, match="bias"):
        check_module(layer, x, allow_zero=["weight", "input*"])  # other names do not excuse it


def test_an_input_the_forward_ignores_fails(x):
    w = np.linspace(1.0, 2.0, 4)
    with pytest.raises(GradcheckError, match=r"the gradient of input\[0\].*is 0 within tolerance"):
        gradcheck(lambda t, v: 2.0 * v, lambda dy: (np.zeros((2, 3, 4)), 2.0 * dy), [x, w])


def test_directional_zero_everywhere_fails_unless_allowed(x):
    with pytest.raises(GradcheckError, match=r"every directional derivative \(4 directions over 1 tensors\).*"
                                             "allow_zero=True"):
        gradcheck_directional(lambda t: 0.0 * t, lambda dy: 0.0 * dy, [x])
    assert gradcheck_directional(lambda t: 0.0 * t, lambda dy: 0.0 * dy, [x], allow_zero=True)


def test_infinite_atol_measures_without_the_zero_rule(x):
    """``atol=inf`` turns the comparison off (to measure errors); the zero rule goes with it."""
    reports = gradcheck(lambda t: 0.0 * t, lambda dy: 0.0 * dy, [x], atol=np.inf)
    assert reports[0].zero and reports[0].max_abs_numeric == 0.0
    assert gradcheck_directional(lambda t: 0.0 * t, lambda dy: 0.0 * dy, [x], atol=np.inf)


def test_zero_size_tensor_and_nothing_to_check_fail():
    with pytest.raises(GradcheckError, match=r"input\[0\] \(0 entries checked\)"):
        gradcheck(lambda t: 2.0 * t, lambda dy: 2.0 * dy, [np.zeros((0, 3))])
    with pytest.raises(GradcheckError, match="nothing to check"):
        gradcheck(lambda idx: idx * 2.0, lambda dy: None, [np.arange(3)])


def test_backward_writing_into_its_upstream_gradient_fails(x):
    def backward(dy):
        dy *= 3.0  # ReLU's classic fault: the caller's array is changed
        return dy

    with pytest.raises(GradcheckError, match="backward wrote into the upstream gradient"):
        gradcheck(lambda t: 3.0 * t, backward, [x])


def test_forward_changing_its_input_in_place_fails(x):
    def forward(t):
        t *= 1.5
        return t

    with pytest.raises(GradcheckError, match=r"input\[0\] was changed in place"):
        gradcheck(forward, lambda dy: 1.5 * dy, [x])


def test_non_deterministic_forward_is_named(x):
    noise = np.random.default_rng(0)
    with pytest.raises(GradcheckError, match="forward is not deterministic"):
        gradcheck(lambda t: t * noise.uniform(0.5, 1.5, t.shape), lambda dy: dy, [x])


def test_forward_that_differs_under_no_grad_is_named(x):
    from minisegnet.grad_mode import is_grad_enabled

    def forward(t):
        return 2.0 * t if is_grad_enabled() else 2.0 * t + 1e-3

    with pytest.raises(GradcheckError, match=r"different value inside no_grad\(\)"):
        gradcheck(forward, lambda dy: 2.0 * dy, [x])


class KeepsOnlyWithGrad(Module):
    """``y = w * x`` that stores its input only when grad mode is on (the new layer rule)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = Parameter(np.linspace(-1.0, 2.0, n))
        self._input = None

    def forward(self, x):
        from minisegnet.grad_mode import is_grad_enabled

        if is_grad_enabled():
            self._input = x.copy()
        return self.weight.data * x

    def backward(self, dy):
        self.weight.accumulate_grad((dy * self._input).reshape(-1, dy.shape[-1]).sum(axis=0))
        return dy * self.weight.data


def test_check_inside_no_grad_differentiates_its_own_forward(x, rng):
    """Started inside ``no_grad()``, the analytic pass still keeps its caches (not a stale one)."""
    from minisegnet.grad_mode import is_grad_enabled, no_grad

    layer = KeepsOnlyWithGrad(4)
    layer.forward(rng.standard_normal(x.shape))  # a stale cache from another input
    with no_grad():
        check_module(layer, x)
        assert not is_grad_enabled()  # and the mode is put back


def test_frozen_parameters_are_skipped_and_must_get_no_gradient(x):
    layer = SquareScale(4)
    layer.weight.requires_grad = False
    reports = check_module(layer, x)
    assert [r.name for r in reports] == ["input[0]", "bias"]
    assert layer.weight.grad is None
    original = layer.backward

    def backward(dy):
        dx = original(dy)
        layer.weight.grad = np.ones(4)  # bypasses accumulate_grad, which ignores frozen parameters
        return dx

    with pytest.raises(GradcheckError, match=r"frozen parameters \(requires_grad = False\) received a gradient: "
                                             "weight"):
        gradcheck(layer.forward, backward, [x], layer)


def test_gradient_returned_in_a_buffer_the_forward_reuses_is_read_as_returned(x):
    """The analytic gradient is copied at once: a layer may hand out scratch memory."""
    scratch = np.empty_like(x)

    def forward(t):
        np.multiply(t, 0.0, out=scratch)  # the next forward clobbers the scratch buffer
        return 3.0 * t

    def backward(dy):
        np.multiply(dy, 3.0, out=scratch)
        return scratch

    gradcheck(forward, backward, [x])


def test_finite_difference_forwards_keep_caches_and_one_runs_under_no_grad(x):
    """A forward that inspects the layers' caches (tutorial 05 counts kink crossings) sees them:
    every forward runs with grad mode on, except the one that compares the inference path."""
    from minisegnet.grad_mode import is_grad_enabled

    modes = []

    def forward(t):
        modes.append(is_grad_enabled())
        return 3.0 * t

    gradcheck(forward, lambda dy: 3.0 * dy, [x])
    assert modes.count(False) == 1 and len(modes) == 3 + 2 * x.size

"""Finite-difference gradient checks, used by the tests and the tutorials.

A backward pass is correct when, for a scalar built from the output,

    L(x) = sum(g * f(x))        with g a *random* upstream gradient,

the analytic gradient ``dL/dx`` it returns equals the central difference

    (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

for every element ``i`` of every input and every parameter.  The upstream gradient is
random, not all ones: with ones, a backward that sends gradients to the wrong pixel
(a routing bug in pooling, a transposed kernel) can still sum to the right total.
Checks run in float64, where the central difference is accurate to about eps**2 plus
rounding of order 1e-16 / eps, so eps = 1e-6 gives roughly 1e-9 of truncation and
1e-10 of rounding: the default tolerances (``atol=1e-6``, ``rtol=1e-5``) leave a wide
margin and still catch any real mistake (a wrong gradient is off by O(1)).

Two functions:

:func:`gradcheck`
    Element by element, every entry of every tensor (or a random subset of at most
    ``max_elements`` per tensor for big ones).  On failure the message names the tensor,
    the index, the analytic and the numeric value.
:func:`gradcheck_directional`
    Whole networks have too many parameters for that; it compares directional
    derivatives ``<grad, v>`` along a few random directions ``v`` over all tensors at
    once (as Chainer's ``check_backward`` does).

A check that passes must have tested something.  Both functions therefore *fail*
(:class:`GradcheckError`) instead of passing when

* the gradient is 0 within tolerance at every checked entry, numerically (so a backward
  that returned zeros would pass too): a conv bias followed by BatchNorm, a ReLU whose
  inputs are all negative, an input the forward never reads.  Where 0 is the expected
  answer, say so: ``allow_zero=["conv1.bias"]`` (names or glob patterns, or True);
* the forward or the backward changed a checked tensor in place, or the backward wrote
  into the upstream gradient it was given;
* the forward is not deterministic (a dropout layer not reseeded inside ``forward``), or
  computes something else inside :func:`~minisegnet.no_grad` than outside it.

Each element is perturbed *in place in the array the forward reads*, by a tuple index
(``array[np.unravel_index(i, shape)]``), never through ``array.reshape(-1)``, which is a
copy for a non-contiguous array (a transposed view, a parameter whose ``.data`` is a
strided view): the perturbation would then never reach the forward, the numeric gradient
would be 0 and a backward returning 0 would pass.

Every forward of a check runs under :func:`~minisegnet.enable_grad`, so a check started
inside a ``no_grad()`` block still differentiates the forward it ran (not caches left by
an earlier one), and a ``forward`` that inspects the layers' caches sees them; one more
forward under :func:`~minisegnet.no_grad` must give the same value (the inference path
computes the same function).  Frozen parameters (``requires_grad = False``) are not
checked; they must come back without a gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from .backend import get_array_module, to_numpy
from .grad_mode import enable_grad, no_grad
from .module import Module, Parameter

#: ``allow_zero``: True (every tensor), False (none), or names / glob patterns such as ``"*.bias"``.
AllowZero = Union[bool, str, Iterable[str]]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite difference."""


@dataclass
class TensorReport:
    """How one tensor's analytic gradient compared with the finite difference."""

    name: str
    checked: int
    max_abs_error: float
    max_rel_error: float
    #: the largest |numeric derivative| seen: how far from "0 everywhere" the check was
    max_abs_numeric: float = 0.0
    #: whether every checked entry was 0 within tolerance (passes only with ``allow_zero`` or ``atol=inf``)
    zero: bool = False


def _as_tuple(x):
    if isinstance(x, tuple):
        return x
    if isinstance(x, list):
        return tuple(x)
    return (x,)


def _random_like(rng, array):
    xp = get_array_module(array)
    dtype = getattr(array, "dtype", np.float64)  # a loss may return a Python float
    return xp.asarray(rng.standard_normal(np.shape(array)), dtype=dtype)


def _scalar_objective(output, upstream) -> float:
    xp = get_array_module(output)
    if not hasattr(output, "dtype"):
        output = np.asarray(output, dtype=np.float64)
    return float(xp.sum(xp.asarray(output, dtype=np.float64) * upstream))


def _named_tensors(inputs, parameters):
    """``(name, array, owner)`` of every floating input and every trainable parameter."""
    tensors = []
    for i, x in enumerate(inputs):
        if x is not None and np.dtype(x.dtype).kind == "f":
            tensors.append((f"input[{i}]", x, i))
    for name, p in parameters:
        if getattr(p, "requires_grad", True):  # a frozen parameter has no gradient to check
            tensors.append((name, p.data, p))
    return tensors


def _zero_allowed(name: str, allow_zero: AllowZero) -> bool:
    if isinstance(allow_zero, bool):
        return allow_zero
    patterns = [allow_zero] if isinstance(allow_zero, str) else list(allow_zero)
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _zero_error(what: str, max_numeric: float, atol: float, allow_hint: str) -> GradcheckError:
    return GradcheckError(
        f"{what} is 0 within tolerance everywhere it was checked (max |numeric| {max_numeric:.3g} <= atol "
        f"{atol:g}): a backward returning zeros would pass too, so the check proves nothing. Check it where "
        f"the gradient is not 0, or pass {allow_hint} if 0 is the expected answer"
    )


def _require_float64(tensors):
    for name, array, _ in tensors:
        if array.dtype != np.float64:
            raise TypeError(
                f"gradcheck needs float64 tensors (central differences in float32 are too coarse); "
                f"{name} is {array.dtype}"
            )


def _analytic_gradients(forward, backward, inputs, parameters, upstream_rng):
    """One forward and one backward (under ``enable_grad``) with a random upstream gradient.

    ``backward`` gets a copy of the upstream gradient; the original is kept to tell
    whether backward wrote into it.
    """
    for _, p in parameters:
        p.grad = None
    with enable_grad():
        output = forward(*inputs)
        upstream = _random_like(upstream_rng, output)
        value = _scalar_objective(output, upstream)  # now: backward may reuse the output's memory
        given = upstream.copy()
        input_grads = _as_tuple(backward(given))
    if not _same(given, upstream):
        raise GradcheckError(
            "backward wrote into the upstream gradient it was given (it must not change its argument: "
            "the caller may still need it)"
        )
    if len(input_grads) < len(inputs):
        input_grads = input_grads + (None,) * (len(inputs) - len(input_grads))
    return value, upstream, input_grads


def _same(a, b) -> bool:
    """Bitwise equality of two arrays of one shape (NaNs equal)."""
    xp = get_array_module(a)
    return bool(xp.array_equal(a, b, equal_nan=True)) if xp is np else bool(((a == b) | (a != a)).all())


def _parameters_of(parameters):
    if isinstance(parameters, Module):
        return list(parameters.named_parameters())
    return [(name, p) for name, p in parameters]


def _prepare(forward, backward, inputs, parameters, seed, eps, atol):
    """Run forward and backward once with a random upstream gradient.

    Returns the inputs (a list), the checked tensors ``(name, array, owner)``, the random
    generator, the upstream gradient and the analytic gradient of each checked tensor.
    """
    inputs = list(inputs)
    parameters = _parameters_of(parameters)
    tensors = _named_tensors(inputs, parameters)
    if not tensors:
        raise GradcheckError("nothing to check: no floating-point input and no trainable parameter")
    _require_float64(tensors)
    rng = np.random.default_rng(seed)
    before = [array.copy() for _, array, _ in tensors]
    value, upstream, input_grads = _analytic_gradients(forward, backward, inputs, parameters, rng)
    for (name, array, _), original in zip(tensors, before):
        if not _same(array, original):
            raise GradcheckError(
                f"{name} was changed in place by the forward or the backward; the check needs it unchanged "
                "(copy it inside forward if the layer works in place)"
            )
    frozen = [name for name, p in parameters if not getattr(p, "requires_grad", True) and p.grad is not None]
    if frozen:
        raise GradcheckError(f"frozen parameters (requires_grad = False) received a gradient: {', '.join(frozen)}")
    grads = []
    for name, array, owner in tensors:
        g = owner.grad if isinstance(owner, Parameter) else input_grads[owner]
        if g is None:
            if isinstance(owner, Parameter):
                raise GradcheckError(f"{name}: backward left no gradient (param.grad is None)")
            raise GradcheckError(f"{name}: backward returned None for a floating input")
        if tuple(g.shape) != tuple(array.shape):
            raise GradcheckError(f"{name}: gradient has shape {tuple(g.shape)}, tensor has {tuple(array.shape)}")
        # A copy: a gradient that aliases a layer's buffer (or the tensor itself) must not
        # change under the finite-difference forwards that follow.
        grads.append(g.copy())
    _check_deterministic(forward, inputs, upstream, value, tolerance=2 * eps * atol)
    return inputs, tensors, rng, upstream, grads


def _objective(forward, inputs, upstream, grad: bool = True) -> float:
    """``L = sum(upstream * forward(*inputs))``, with grad mode on (or off: the inference path)."""
    with enable_grad() if grad else no_grad():
        return _scalar_objective(forward(*inputs), upstream)


def _check_deterministic(forward, inputs, upstream, reference: float, tolerance: float) -> None:
    """The unperturbed objective, computed again, then under ``no_grad``, must equal the analytic pass's.

    A difference ``d`` that changed from call to call would enter the central differences
    as ``d / (2 eps)``: ``tolerance = 2 eps atol`` keeps that below ``atol``.  A further
    ``1e-11 |L|`` allows for rounding (the inference path may group a layer's arithmetic
    differently); a dropout mask drawn afresh, or a layer computing another function under
    ``no_grad``, is far larger.
    """
    bound = tolerance + 1e-11 * abs(reference)
    again = _objective(forward, inputs, upstream)
    if abs(again - reference) > bound:
        raise GradcheckError(
            f"forward is not deterministic: L = {reference:.17g}, then {again:.17g} at the same point "
            "(reseed dropout inside forward, e.g. layer.reseed(seed))"
        )
    inference = _objective(forward, inputs, upstream, grad=False)
    if abs(inference - reference) > bound:
        raise GradcheckError(
            f"forward computes a different value inside no_grad() (L = {inference:.17g}) than outside it "
            f"(L = {reference:.17g}): the inference path of some layer differs from its training path"
        )


def gradcheck(
    forward: Callable,
    backward: Callable,
    inputs: Sequence,
    parameters: Module | Iterable[tuple[str, Parameter]] = (),
    *,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
    max_elements: int | None = None,
    allow_zero: AllowZero = False,
) -> list[TensorReport]:
    """Check ``backward`` against central differences of ``forward``, element by element.

    Parameters
    ----------
    forward:
        ``forward(*inputs) -> output`` (an array or a 0-d array).  It must be
        deterministic: reseed dropout inside it.
    backward:
        ``backward(upstream) -> grad`` or a tuple of gradients, one per input (``None``
        for inputs that have no gradient, such as pooling indices).  It must add
        parameter gradients into ``param.grad``.
    inputs:
        The arrays passed to ``forward``; floating ones are checked.
    parameters:
        A module, or ``(name, Parameter)`` pairs, whose gradients are checked too.
    eps, atol, rtol:
        Step and tolerance: an element passes when
        ``|analytic - numeric| <= atol + rtol * |numeric|``.
    max_elements:
        Check at most this many randomly chosen elements per tensor (all when None).
    allow_zero:
        Tensors whose gradient may be 0 at every checked element: True, or names / glob
        patterns (``"encoder.*.conv.bias"``).  Any other tensor whose numeric gradient
        is 0 within tolerance everywhere fails the check: it would pass whatever the
        backward returned.  (``atol=inf``, which turns the comparison off to *measure*
        errors, turns this off too.)

    Returns a :class:`TensorReport` per tensor; raises :class:`GradcheckError` naming
    the tensor, the index and both values at the first disagreement (and for the
    reasons in the module docstring).
    """
    inputs, tensors, rng, upstream, grads = _prepare(forward, backward, inputs, parameters, seed, eps, atol)

    def objective() -> float:
        return _objective(forward, inputs, upstream)

    reports = []
    for (name, array, owner), analytic in zip(tensors, grads):
        analytic = to_numpy(analytic)
        n = array.size
        idx = np.arange(n) if max_elements is None or n <= max_elements else rng.choice(n, max_elements, replace=False)
        max_abs = max_rel = max_numeric = 0.0
        zero_would_pass = True
        for i in idx:
            # A tuple index into the array itself: the forward reads exactly what is written,
            # contiguous or not (``array.reshape(-1)`` would be a copy for a strided view).
            where = tuple(int(w) for w in np.unravel_index(int(i), array.shape))
            original = float(array[where])
            array[where] = original + eps
            plus = objective()
            array[where] = original - eps
            minus = objective()
            array[where] = original
            numeric = (plus - minus) / (2 * eps)
            got = float(analytic[where])
            err = abs(got - numeric)
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(abs(numeric), 1e-12))
            max_numeric = max(max_numeric, abs(numeric))
            zero_would_pass &= abs(numeric) <= atol + rtol * abs(numeric)
            if err > atol + rtol * abs(numeric):
                raise GradcheckError(
                    f"gradient of {name} at index {where}: analytic {got:.10g}, "
                    f"numeric {numeric:.10g} (|diff| {err:.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|)"
                )
        if zero_would_pass and np.isfinite(atol) and not _zero_allowed(name, allow_zero):
            raise _zero_error(f"the gradient of {name} ({len(idx)} entries checked)", max_numeric, atol,
                              f"allow_zero=[{name!r}]")
        reports.append(TensorReport(name, len(idx), max_abs, max_rel, max_numeric, zero_would_pass))
    return reports


def gradcheck_directional(
    forward: Callable,
    backward: Callable,
    inputs: Sequence,
    parameters: Module | Iterable[tuple[str, Parameter]] = (),
    *,
    directions: int = 4,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
    allow_zero: bool = False,
) -> list[tuple[float, float]]:
    """Compare ``<grad, v>`` with ``(L(t + eps v) - L(t - eps v)) / 2 eps`` along random ``v``.

    ``v`` is a random unit-variance direction over *every* checked tensor at once
    (all floating inputs and all trainable parameters).  Returns ``(analytic, numeric)``
    per direction; raises :class:`GradcheckError` at the first disagreement, and when
    every directional derivative is 0 within tolerance (unless ``allow_zero``).  A
    tensor whose share of ``<grad, v>`` is below ``rtol`` of the total is checked only
    that loosely: use :func:`gradcheck` on the small tensors that matter.
    """
    inputs, tensors, rng, upstream, grads = _prepare(forward, backward, inputs, parameters, seed, eps, atol)

    results = []
    for d in range(directions):
        vs = [_random_like(rng, array) for _, array, _ in tensors]
        analytic = float(sum(float(get_array_module(g).sum(g * v)) for g, v in zip(grads, vs)))
        originals = [array.copy() for _, array, _ in tensors]

        def shifted(step):
            for (_, array, _), v, orig in zip(tensors, vs, originals):
                array[...] = orig + step * v
            value = _objective(forward, inputs, upstream)
            for (_, array, _), orig in zip(tensors, originals):
                array[...] = orig
            return value

        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        if abs(analytic - numeric) > atol + rtol * abs(numeric):
            raise GradcheckError(
                f"directional derivative {d} (over {len(tensors)} tensors): analytic {analytic:.10g}, "
                f"numeric {numeric:.10g} (|diff| {abs(analytic - numeric):.3g})"
            )
        results.append((analytic, numeric))
    if not allow_zero and np.isfinite(atol) and all(abs(n) <= atol + rtol * abs(n) for _, n in results):
        raise _zero_error(f"every directional derivative ({len(results)} directions over {len(tensors)} tensors)",
                          max(abs(n) for _, n in results) if results else 0.0, atol, "allow_zero=True")
    return results


def check_module(module: Module, *inputs, **kwargs) -> list[TensorReport]:
    """:func:`gradcheck` of a single-input, single-output module and all its parameters."""
    return gradcheck(module.forward, module.backward, inputs, module, **kwargs)

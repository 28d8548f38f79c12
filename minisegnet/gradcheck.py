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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .backend import get_array_module, to_numpy
from .module import Module, Parameter


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite difference."""


@dataclass
class TensorReport:
    """How one tensor's analytic gradient compared with the finite difference."""

    name: str
    checked: int
    max_abs_error: float
    max_rel_error: float


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
    tensors = []
    for i, x in enumerate(inputs):
        if x is not None and np.dtype(x.dtype).kind == "f":
            tensors.append((f"input[{i}]", x, i))
    for name, p in parameters:
        tensors.append((name, p.data, p))
    return tensors


def _require_float64(tensors):
    for name, array, _ in tensors:
        if array.dtype != np.float64:
            raise TypeError(
                f"gradcheck needs float64 tensors (central differences in float32 are too coarse); "
                f"{name} is {array.dtype}"
            )


def _analytic_gradients(forward, backward, inputs, parameters, upstream_rng):
    for _, p in parameters:
        p.grad = None
    output = forward(*inputs)
    upstream = _random_like(upstream_rng, output)
    input_grads = _as_tuple(backward(upstream))
    if len(input_grads) < len(inputs):
        input_grads = input_grads + (None,) * (len(inputs) - len(input_grads))
    return output, upstream, input_grads


def _parameters_of(parameters):
    if isinstance(parameters, Module):
        return list(parameters.named_parameters())
    return [(name, p) for name, p in parameters]


def _prepare(forward, backward, inputs, parameters, seed):
    """Run forward and backward once with a random upstream gradient.

    Returns the inputs (a list), the checked tensors ``(name, array, owner)``, the random
    generator, the upstream gradient and the analytic gradient of each checked tensor.
    """
    inputs = list(inputs)
    parameters = _parameters_of(parameters)
    tensors = _named_tensors(inputs, parameters)
    _require_float64(tensors)
    rng = np.random.default_rng(seed)
    _, upstream, input_grads = _analytic_gradients(forward, backward, inputs, parameters, rng)
    grads = []
    for name, array, owner in tensors:
        g = owner.grad if isinstance(owner, Parameter) else input_grads[owner]
        if g is None:
            if isinstance(owner, Parameter):
                raise GradcheckError(f"{name}: backward left no gradient (param.grad is None)")
            raise GradcheckError(f"{name}: backward returned None for a floating input")
        if tuple(g.shape) != tuple(array.shape):
            raise GradcheckError(f"{name}: gradient has shape {tuple(g.shape)}, tensor has {tuple(array.shape)}")
        grads.append(g)
    return inputs, tensors, rng, upstream, grads


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

    Returns a :class:`TensorReport` per tensor; raises :class:`GradcheckError` naming
    the tensor, the index and both values at the first disagreement.
    """
    inputs, tensors, rng, upstream, grads = _prepare(forward, backward, inputs, parameters, seed)

    def objective() -> float:
        return _scalar_objective(forward(*inputs), upstream)

    reports = []
    for (name, array, owner), analytic in zip(tensors, grads):
        analytic = to_numpy(analytic)
        flat = array.reshape(-1)  # a view: writing into it perturbs the tensor the forward reads
        n = flat.size
        idx = np.arange(n) if max_elements is None or n <= max_elements else rng.choice(n, max_elements, replace=False)
        max_abs = max_rel = 0.0
        for i in idx:
            i = int(i)
            original = float(flat[i])
            flat[i] = original + eps
            plus = objective()
            flat[i] = original - eps
            minus = objective()
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            got = float(analytic.reshape(-1)[i])
            err = abs(got - numeric)
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(abs(numeric), 1e-12))
            if err > atol + rtol * abs(numeric):
                where = np.unravel_index(i, array.shape)
                raise GradcheckError(
                    f"gradient of {name} at index {tuple(int(w) for w in where)}: analytic {got:.10g}, "
                    f"numeric {numeric:.10g} (|diff| {err:.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|)"
                )
        reports.append(TensorReport(name, len(idx), max_abs, max_rel))
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
) -> list[tuple[float, float]]:
    """Compare ``<grad, v>`` with ``(L(t + eps v) - L(t - eps v)) / 2 eps`` along random ``v``.

    ``v`` is a random unit-variance direction over *every* checked tensor at once
    (all floating inputs and all parameters).  Returns ``(analytic, numeric)`` per
    direction; raises :class:`GradcheckError` at the first disagreement.
    """
    inputs, tensors, rng, upstream, grads = _prepare(forward, backward, inputs, parameters, seed)

    results = []
    for d in range(directions):
        vs = [_random_like(rng, array) for _, array, _ in tensors]
        analytic = float(sum(float(get_array_module(g).sum(g * v)) for g, v in zip(grads, vs)))
        originals = [array.copy() for _, array, _ in tensors]

        def shifted(step):
            for (_, array, _), v, orig in zip(tensors, vs, originals):
                array[...] = orig + step * v
            value = _scalar_objective(forward(*inputs), upstream)
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
    return results


def check_module(module: Module, *inputs, **kwargs) -> list[TensorReport]:
    """:func:`gradcheck` of a single-input, single-output module and all its parameters."""
    return gradcheck(module.forward, module.backward, inputs, module, **kwargs)

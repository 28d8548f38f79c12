r"""A weighted sum of losses on the same logits: ``L = sum_i w_i L_i(logits, labels)``.

The gradient of a sum is the sum of the gradients, each scaled by its weight::

    dL/dz = sum_i w_i dL_i/dz

so ``backward(g)`` asks each term for its gradient with the upstream ``w_i g`` and adds them.
The first term's gradient array becomes the result (a loss hands its gradient buffer to the
caller, :class:`~minisegnet.layers.SoftmaxCrossEntropy`), the others are added into it: one
logits-sized result, however many terms.  A term with weight 0 is skipped in both directions
(at least one weight must be > 0).

``LossSum((1.0, SoftmaxCrossEntropy(weight=w, ignore_index=11)), (1.0, LovaszSoftmax(ignore_index=11)))``
is what ``minisegnet train --lovasz-weight 1`` trains with: the weighted cross-entropy for every
pixel, and the Lovász-softmax for each class's IoU.  ``terms`` are ``(weight, loss)`` pairs;
each loss has ``forward(logits, labels)`` and ``backward(grad_output)``.  The terms are
sub-modules (``loss_sum.terms[0]``), so ``release_caches`` and ``to`` reach them.
"""
from __future__ import annotations

import math

from ..module import Module

_LAYER = "LossSum"


class LossSum(Module):
    """``sum_i w_i L_i(logits, labels)``, forward and backward (see the module)."""

    def __init__(self, *terms):
        super().__init__()
        if not terms:
            raise ValueError(f"{_LAYER}: expected at least one (weight, loss) term, got none")
        weights = []
        for i, term in enumerate(terms):
            if not (isinstance(term, tuple) and len(term) == 2):
                raise TypeError(f"{_LAYER}: expected each term as a (weight, loss) pair, got {term!r} as term {i}")
            weight, loss = term
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"{_LAYER}: expected term {i}'s weight as a finite number >= 0, got {weight!r}")
            if not (callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None))):
                raise TypeError(f"{_LAYER}: term {i} ({type(loss).__name__}) has no forward and backward")
            weights.append(float(weight))
            setattr(self, f"term{i}", loss)  # a sub-module: release_caches() and to() reach it
        if not any(weights):
            raise ValueError(f"{_LAYER}: every term has weight 0, so the sum would be 0 and have no gradient; "
                             "give at least one term a weight > 0")
        self.weights = tuple(weights)
        self.terms = tuple(loss for _, loss in terms)

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g} * {type(loss).__name__}" for w, loss in zip(self.weights, self.terms))

    def forward(self, logits, labels):
        total = None
        for weight, loss in zip(self.weights, self.terms):
            if weight == 0:
                continue
            value = loss.forward(logits, labels) * weight
            total = value if total is None else total + value
        return total

    def backward(self, grad_output=1.0):
        grad = None
        for weight, loss in zip(self.weights, self.terms):
            if weight == 0:
                continue
            term_grad = loss.backward(grad_output * weight)
            if grad is None:
                grad = term_grad
            else:
                grad += term_grad
        return grad

r"""The Lovász-softmax loss: a convex surrogate of 1 - IoU, optimised directly.

Cross-entropy scores every pixel on its own, and class weights decide how much a pixel of each
class counts.  The score CamVid is judged by, the intersection over union of each class, is a
different thing: a false positive costs a class as much as a false negative, and every class
counts equally in the mean, however few its pixels.  Berman, Rannen Triki and Blaschko
("The Lovász-Softmax loss", CVPR 2018) make the IoU itself a loss that a gradient can follow.

**The Jaccard loss of a class** c with ground-truth pixels F (labelled ``c``) and mispredicted
pixels M (labelled c but predicted otherwise, or predicted c but labelled otherwise) is

    Delta(M) = 1 - |F \ M| / |F u M|          (1 - IoU: intersection over union)

a function of a *set*.  A network gives a probability ``p_i`` of class c at each pixel instead,
so each pixel's *error* ``m_i = |fg_i - p_i|`` (``fg_i = [y_i = c]``) is a number in [0, 1].
The Lovász extension of Delta is the tight convex function that equals Delta on 0/1 errors:
sort the errors from largest to smallest, ``m_(1) >= m_(2) >= ...``, and

    loss_c(m) = sum_k m_(k) g_k,    g_k = Delta({(1), ..., (k)}) - Delta({(1), ..., (k-1)})

each error weighted by how much the Jaccard loss grows when its pixel joins the pixels that are
more wrong.  For the prefix of the k largest errors, with ``f_k`` of them in F:

    intersection_k = |F| - f_k,   union_k = |F| + (k - f_k),   Delta_k = 1 - intersection_k / union_k

(the pixels of F in the prefix leave the intersection; the others join the union).  ``f_k`` is
one cumulative sum of ``fg`` in sorted order, kept in integers so that the counts are exact at
any batch size.  The loss is the mean of ``loss_c`` over the classes *present* in the batch's
labels (Berman's ``classes="present"``, one sort per class over the whole batch): a class absent
from the batch has no IoU to lose.

**Ignored pixels** (void) get the error -1, below every real error, so they sort last.  After
the last pixel of F, ``f_k = |F|``, the intersection is 0 and ``Delta_k = 1`` for every longer
prefix: their ``g`` is exactly 0 and they add nothing to the loss or its gradient.  No count of
them is taken on the host, so a GPU step never waits for one.  With no class present (every
pixel void) the loss and its gradient are 0.

**Backward.**  Where no two errors swap places, ``loss_c`` is linear in the errors, with slope
``g_k`` at the k-th largest; ties are the kinks of a piecewise-linear function, where this gives
one subgradient (Berman's code takes the same, through autograd of a sort).  With
``dm_i/dp_i = -1`` for a pixel of F and ``+1`` otherwise (``0 < p_i < 1``, so ``fg_i - p_i`` is
never 0)::

    dL/dp_{c,i} = s_c * g_c[rank_c(i)] * (1 - 2 fg_{c,i}),      s_c = [c present] / (number present)

and through the softmax ``p_k = exp z_k / sum_j exp z_j``, whose Jacobian is
``dp_k/dz_l = p_k ([k = l] - p_l)``::

    dL/dz_{k,i} = p_{k,i} (dL/dp_{k,i} - sum_j p_{j,i} dL/dp_{j,i})

The forward keeps ``dL/dp`` in sorted order (the slopes, scaled and signed); the backward puts
it back at its pixels with one scatter (``grad[c, order[c]] = ...``), the inverse of the sort's
gather, and applies the softmax's Jacobian.

**Cost.**  One argsort of the ``K x (N*H*W)`` errors per step, ``O(K M log M)`` for ``M``
labelled pixels, beside the network's ``O(M)`` convolutions with large constants: a few percent
of a SegNet-Basic step (measured in ``BENCHMARKS.md``).  Its arrays are ``K x (N*H*W)``: a few
logits-sized buffers, kept for the backward until the next forward (``release_caches()`` lets them go).

``forward(logits (N, K, H, W) float, labels (N, H, W) integer) -> loss`` (a NumPy float64 on
the host, a 0-d array on a GPU, like :class:`~minisegnet.layers.SoftmaxCrossEntropy`);
``backward(grad_output=1.0) -> dlogits``, which may be called again until the next forward.
Same in training and eval mode; inside ``no_grad()`` the forward keeps nothing.  Labels are
checked as :class:`~minisegnet.layers.SoftmaxCrossEntropy` checks them (``validate_labels``).
Used in training as a term beside the cross-entropy (:class:`~minisegnet.layers.LossSum`,
``minisegnet train --lovasz-weight W``).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, is_array
from ..grad_mode import is_grad_enabled
from ..module import Module
from ..validation import check_feature_map, check_grad_shape, require_cache
from .loss import checked_label_map, checked_label_options, checks_label_values

_LAYER = "LovaszSoftmax"


class LovaszSoftmax(Module):
    """Lovász-softmax: the mean over present classes of the Lovász extension of 1 - IoU (see the module)."""

    def __init__(self, ignore_index: int | None = None, validate_labels: bool | None = None):
        super().__init__()
        self.ignore_index, self.validate_labels = checked_label_options(_LAYER, ignore_index, validate_labels)
        self._probs = None  # (K, M) softmax, class-major
        self._order = None  # (K, M) each class's pixels, largest error first
        self._sorted_grad = None  # (K, M) dL/dp in that order: s_c g_k (1 - 2 fg)
        self._logits_shape = None

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"

    def checks_label_values(self, xp) -> bool:
        """Whether forward reads the labels to check their range (as :class:`SoftmaxCrossEntropy` decides)."""
        return checks_label_values(self.validate_labels, xp)

    def forward(self, logits, labels):
        check_feature_map(_LAYER, logits, name="logits")
        labels, ignore = checked_label_map(_LAYER, logits, labels, self.validate_labels, self.ignore_index)
        xp = get_array_module(logits)
        n, k, h, w = logits.shape
        pixels = n * h * w

        # softmax, class-major: row c holds p_c at every pixel of the batch
        probs = xp.empty((k, n, h, w), dtype=logits.dtype)  # always a new array: for N = 1 the transpose
        probs[...] = logits.transpose(1, 0, 2, 3)  # alone would be a view, and the softmax would overwrite the logits
        probs = probs.reshape(k, pixels)
        probs -= probs.max(axis=0, keepdims=True)
        xp.exp(probs, out=probs)
        probs /= probs.sum(axis=0, keepdims=True)

        flat_labels = labels.reshape(pixels)
        is_foreground = flat_labels[None, :] == xp.arange(k)[:, None]
        errors = xp.abs(is_foreground - probs)  # |fg - p|, in the logits' dtype
        if ignore is not None:
            # sorted last, where the slope is exactly 0 (module docstring); where, not a boolean mask,
            # which CuPy would turn into indices on the host
            errors = xp.where((flat_labels != ignore)[None, :], errors, -1).astype(errors.dtype, copy=False)

        order = xp.argsort(-errors, axis=1)  # largest error first
        rows = xp.arange(k)[:, None]
        foreground_sorted = is_foreground[rows, order]
        foreground_in_prefix = xp.cumsum(foreground_sorted, axis=1, dtype=np.int64)  # f_k
        foreground = foreground_in_prefix[:, -1:]  # |F| per class
        prefix_length = xp.arange(1, pixels + 1, dtype=np.int64)[None, :]  # k
        intersection = (foreground - foreground_in_prefix).astype(logits.dtype)
        union = (foreground + prefix_length - foreground_in_prefix).astype(logits.dtype)  # >= 1
        jaccard_loss = 1 - intersection / union  # Delta_k
        slopes = jaccard_loss
        slopes[:, 1:] = jaccard_loss[:, 1:] - jaccard_loss[:, :-1]  # g_k; the difference is taken before it is stored

        present = (foreground[:, 0] > 0).astype(logits.dtype)
        class_scale = present / xp.maximum(present.sum(), 1)  # s_c
        per_class = xp.einsum("cm,cm->c", errors[rows, order], slopes)
        loss = xp.dot(per_class, class_scale)
        if xp is np:
            loss = np.float64(loss)

        if is_grad_enabled():
            # dL/dp in sorted order: s_c g_k, negative on the pixels of F (d|fg - p|/dp = -1 there)
            slopes *= class_scale[:, None]
            self._sorted_grad = xp.where(foreground_sorted, -slopes, slopes)
            self._probs, self._order, self._logits_shape = probs, order, tuple(logits.shape)
        return loss

    def backward(self, grad_output=1.0):
        probs = require_cache(_LAYER, self._probs)
        xp = get_array_module(probs)
        k = probs.shape[0]
        if is_array(grad_output):
            check_grad_shape(_LAYER, grad_output, ())
        # dL/dp: each sorted value back at its pixel (ignored pixels: exactly 0, their slope)
        grad_probs = xp.empty_like(probs)
        grad_probs[xp.arange(k)[:, None], self._order] = self._sorted_grad
        # through the softmax: p_k (dL/dp_k - sum_j p_j dL/dp_j), for each pixel
        grad_logits = grad_probs
        grad_logits -= xp.einsum("cm,cm->m", probs, grad_probs)[None, :]
        grad_logits *= probs
        if not (isinstance(grad_output, (int, float)) and grad_output == 1.0):
            grad_logits *= xp.asarray(grad_output, dtype=probs.dtype)
        n, _, h, w = self._logits_shape
        return xp.ascontiguousarray(grad_logits.reshape(k, n, h, w).transpose(1, 0, 2, 3))

    def _release_cache(self) -> None:
        self._probs = self._order = self._sorted_grad = self._logits_shape = None

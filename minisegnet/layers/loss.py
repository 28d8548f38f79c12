"""Per-pixel softmax cross-entropy: the loss SegNet trains with, and the label check every loss shares."""
from __future__ import annotations

import numpy as np

from ..backend import device_of, get_array_module, is_array, to_device, to_numpy
from ..grad_mode import is_grad_enabled
from ..module import Module
from ..validation import check_feature_map, require_cache

_LAYER = "SoftmaxCrossEntropy"

NORMALIZE_MODES = ("valid", "weights", "full", "batch", "sum")


def checks_label_values(validate_labels: bool | None, xp) -> bool:
    """Whether a loss reads its labels to check their range, for arrays of module ``xp``.

    ``validate_labels`` when set, else only on NumPy (on CuPy it would stall the GPU).
    """
    return xp is np if validate_labels is None else bool(validate_labels)


def checked_label_options(layer: str, ignore_index, validate_labels) -> tuple[int | None, bool | None]:
    """A loss's ``(ignore_index, validate_labels)``, checked: an int or None, and None, True or False."""
    if validate_labels is not None and not isinstance(validate_labels, (bool, np.bool_)):
        raise TypeError(f"{layer}: expected validate_labels as None, True or False, got {validate_labels!r}")
    bad_ignore = isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
    if ignore_index is not None and bad_ignore:
        raise ValueError(f"{layer}: expected ignore_index as an int or None, got {ignore_index!r}")
    return (None if ignore_index is None else int(ignore_index),
            None if validate_labels is None else bool(validate_labels))


def checked_label_map(layer: str, logits, labels, validate_labels: bool | None, ignore_index: int | None):
    """``(labels, ignore)``: a label map checked against ``logits`` (N, K, H, W), on the logits' device.

    Its type, integer dtype and shape ``(N, H, W)`` are always checked; whether every label lies
    in ``[0, K)`` or is ``ignore_index`` only when :func:`checks_label_values` says so (reading
    them is a host sync on a GPU).  ``ignore`` is ``ignore_index``, or None when no label of
    this dtype can equal it (uint8 labels and ``ignore_index=-100``).  Errors name ``layer``.
    """
    if not is_array(labels):
        raise TypeError(f"{layer}: expected labels as a NumPy/CuPy array, got {type(labels).__name__}")
    n, k, h, w = logits.shape
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{layer}: expected integer labels (e.g. uint8, int64), got dtype {labels.dtype}")
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(
            f"{layer}: expected labels of shape (N, H, W) = {(n, h, w)} to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    xp = get_array_module(logits)
    if get_array_module(labels) is not xp:
        labels = to_device(labels, device_of(logits))
    # compare only with values the label dtype can hold (uint8 labels vs ignore_index=-100, K=300 ...)
    info = np.iinfo(labels.dtype)
    ignore = ignore_index
    if ignore is not None and not info.min <= ignore <= info.max:
        ignore = None  # no label of this dtype can equal it
    if checks_label_values(validate_labels, xp):
        bad = labels >= k if k <= info.max else xp.zeros(labels.shape, dtype=bool)
        if info.min < 0:
            bad |= labels < 0
        if ignore is not None:
            bad &= labels != ignore
        if bool(bad.any()):
            values = to_numpy(xp.unique(labels[bad]))
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
            also = "" if ignore_index is None else f" or the ignore_index {ignore_index}"
            raise ValueError(f"{layer}: expected labels in [0, {k}){also}, got values {shown}")
    return labels, ignore


class SoftmaxCrossEntropy(Module):
    r"""Softmax over the class axis and cross-entropy against a label map, for every pixel.

    For a pixel with logits ``z`` (K values), label ``y`` and class weight ``w_y``::

        p_k     = exp(z_k - max z) / sum_j exp(z_j - max z)           (softmax)
        loss_px = -w_y log p_y = w_y (log sum_j exp(z_j - max z) - (z_y - max z))

    Subtracting ``max z`` changes nothing mathematically but keeps every ``exp`` in
    ``(0, 1]`` and the sum in ``[1, K]``: logits of +-1e4 give a finite loss and gradient.

    ``loss = sum over pixels of loss_px / normaliser``, where ``normalize`` chooses:

    ``"valid"``   the number of non-ignored pixels -- SegNet's Caffe ``SoftmaxWithLoss``
                  (class weights do *not* enter the normaliser);
    ``"weights"`` the sum of ``w_y`` over non-ignored pixels -- PyTorch's
                  ``nn.CrossEntropyLoss(weight, ignore_index)`` (same as "valid" without
                  weights);
    ``"full"``    all ``N*H*W`` pixels, ignored or not (Caffe's FULL);
    ``"batch"``   the batch size ``N`` (Caffe's BATCH_SIZE);
    ``"sum"``     1, the plain sum (Caffe's NONE).

    Pixels whose label is ``ignore_index`` (CamVid's void) contribute nothing to the loss,
    the gradient or the normaliser.  When the normaliser is 0 (every pixel ignored, or
    zero weight on all of them) the loss is 0.0 and the gradient is zero, instead of the
    0/0 = NaN PyTorch returns.  That case is decided on the device, without asking the
    host: ``scale = [normaliser > 0] / max(normaliser, tiny)`` is ``1 / normaliser`` or 0.

    Backward.  With ``log p_y = z_y - log sum_j exp z_j``, ::

        d(-log p_y)/dz_k = p_k - [k = y]       so      dL/dz_k = w_y (p_k - [k = y]) / normaliser

    for every non-ignored pixel, and 0 for ignored ones.  No dense one-hot is built: the
    forward's softmax buffer becomes the gradient buffer in place (1 is subtracted only
    at the label of each pixel, through integer indexing), so a forward plus backward
    allocates one logits-sized array.  That buffer is handed out by ``backward``, which
    therefore runs once per forward (like PyTorch freeing its graph): a second call
    raises a ``RuntimeError`` that says so, rather than a wrong gradient.

    ``forward(logits (N, K, H, W) float, labels (N, H, W) integer) -> loss``; labels on
    the host are moved to the logits' device.  The loss is a scalar that stays where the
    logits are, so that computing it never waits for the GPU: on NumPy a ``numpy.float64``
    (a subclass of Python's ``float``: print it, compare it, ``json.dump`` it), on CuPy a
    0-d device array of the logits' dtype.  ``float(loss)`` gives the number when you need
    it (PyTorch's ``loss.item()``); on a GPU that is the step's one wait for the device, so
    read it when you log it, not every step for nothing.

    Checking the labels.  Their type, dtype and shape are always checked (metadata the
    host has).  Whether every label lies in ``[0, K)`` (or is ``ignore_index``) can only be
    seen by reading them, a host sync on a GPU: ``validate_labels=None`` (default) checks
    on NumPy and not on CuPy, ``True`` checks on any device (debugging a GPU run),
    ``False`` never.  An unchecked label ``>= K`` makes CuPy's indexing wrap or clip
    silently instead of raising.

    ``backward(grad_output=1.0) -> dlogits``
    (same shape and dtype as ``logits``; ``grad_output`` scales it, for a weighted sum of
    losses).  Same in training and eval mode; inside ``minisegnet.no_grad()`` the forward
    keeps no cache (and leaves an earlier forward's untouched).  The loss is computed in
    the logits' dtype; class weights (kept in float64) are cast to it.  Caches:
    ``self._probs`` (softmax, becomes the gradient),
    ``self._safe_labels`` (labels with ignored pixels set to 0, shape (N, H*W)),
    ``self._pixel_scale`` (``w_y / normaliser``, 0 on ignored pixels, shape (N, H*W)).
    """

    def __init__(self, weight=None, ignore_index: int | None = None, normalize: str = "valid",
                 validate_labels: bool | None = None):
        super().__init__()
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"{_LAYER}: expected normalize in {NORMALIZE_MODES}, got {normalize!r}")
        self.ignore_index, self.validate_labels = checked_label_options(_LAYER, ignore_index, validate_labels)
        self.normalize = normalize
        if weight is not None:
            weight = to_numpy(weight) if is_array(weight) else np.asarray(weight)
            if weight.ndim != 1 or weight.size == 0 or weight.dtype.kind not in "biuf":
                raise ValueError(
                    f"{_LAYER}: expected weight as a 1-D array of K class weights, "
                    f"got shape {tuple(weight.shape)} dtype {weight.dtype}"
                )
            weight = weight.astype(np.float64) if weight.dtype.kind != "f" else weight.copy()
            if not (np.all(np.isfinite(weight)) and np.all(weight >= 0)):
                raise ValueError(f"{_LAYER}: expected finite, non-negative class weights, got {weight}")
            self.register_buffer("weight", weight)
        else:
            self.weight = None
        self._probs = None
        self._safe_labels = None
        self._pixel_scale = None
        self._logits_shape = None
        self._gradient_handed_out = False

    def extra_repr(self) -> str:
        w = None if self.weight is None else f"<{self.weight.shape[0]} classes>"
        return f"weight={w}, ignore_index={self.ignore_index}, normalize={self.normalize!r}"

    def checks_label_values(self, xp) -> bool:
        """Whether forward reads the labels to check their range, for arrays of module ``xp``.

        ``validate_labels`` when set, else only on NumPy (on CuPy it would stall the GPU).
        """
        return checks_label_values(self.validate_labels, xp)

    def _check_labels(self, logits, labels):
        labels, ignore = checked_label_map(_LAYER, logits, labels, self.validate_labels, self.ignore_index)
        k = logits.shape[1]
        if self.weight is not None and self.weight.shape[0] != k:
            raise ValueError(
                f"{_LAYER}: expected {k} class weights (one per logit channel), got {self.weight.shape[0]}"
            )
        return labels, ignore

    def forward(self, logits, labels):
        check_feature_map(_LAYER, logits, name="logits")
        labels, ignore = self._check_labels(logits, labels)
        xp = get_array_module(logits)
        dtype = logits.dtype
        n, k, h, w = logits.shape
        pixels = h * w

        # index arrays that pick logits[b, label[b, p], p] in the (N, K, H*W) view
        if ignore is not None:
            valid = (labels != ignore).reshape(n, pixels)
            safe_labels = xp.where(valid, labels.reshape(n, pixels), 0)
        else:
            valid = None
            safe_labels = labels.reshape(n, pixels)
        rows = xp.arange(n).reshape(n, 1)
        cols = xp.arange(pixels).reshape(1, pixels)

        # stable log-softmax, one logits-sized buffer (exp of the shifted logits)
        z = logits.reshape(n, k, pixels)
        z_max = z.max(axis=1)  # (N, P)
        probs = z - z_max[:, None, :]
        xp.exp(probs, out=probs)
        sum_exp = probs.sum(axis=1)  # (N, P), in [1, K]
        # -log p_y = (z_max - z_y) + log(sum_exp); the difference first, so big logits cancel exactly
        nll = z_max - z[rows, safe_labels, cols]
        nll += xp.log(sum_exp)

        # per-pixel weight w_y, 0 on ignored pixels
        if self.weight is not None:
            class_weight = self.weight
            if get_array_module(class_weight) is not xp:
                class_weight = to_device(class_weight, device_of(logits))
            class_weight = xp.asarray(class_weight, dtype=dtype)
            pixel_weight = class_weight[safe_labels]
            if valid is not None:
                pixel_weight *= valid
        elif valid is not None:
            pixel_weight = valid.astype(dtype)
        else:
            pixel_weight = None

        # 1 / normaliser, or 0 when the normaliser is 0 -- a 0-d array on the logits' device,
        # so neither the count of valid pixels nor the branch ever goes through the host
        normaliser = xp.asarray(self._normaliser(xp, pixel_weight, valid, n, pixels), dtype=dtype)
        scale = (normaliser > 0) / xp.maximum(normaliser, np.finfo(dtype).tiny)
        scale = scale.astype(dtype, copy=False)  # (bool / float keeps the float's dtype; made sure)
        total = xp.sum(nll) if pixel_weight is None else xp.einsum("np,np->", nll, pixel_weight)
        loss = total * scale
        if xp is np:  # already on the host: a NumPy float64, which is a Python float too
            loss = np.float64(loss)

        if is_grad_enabled():
            probs /= sum_exp[:, None, :]
            if pixel_weight is None:
                pixel_scale = xp.broadcast_to(scale, (n, pixels))  # one value for every pixel, no copy
            else:
                pixel_scale = pixel_weight
                pixel_scale *= scale
            self._probs, self._safe_labels, self._pixel_scale = probs, safe_labels, pixel_scale
            self._logits_shape = tuple(logits.shape)
            self._gradient_handed_out = False
        return loss

    def _normaliser(self, xp, pixel_weight, valid, n: int, pixels: int):
        """The normaliser of ``self.normalize``: a Python number, or a 0-d array of ``xp`` (never read here)."""
        mode = self.normalize
        if mode == "valid" or (mode == "weights" and self.weight is None):
            return n * pixels if valid is None else xp.count_nonzero(valid)
        if mode == "weights":
            return xp.sum(pixel_weight)
        if mode == "full":
            return n * pixels
        if mode == "batch":
            return n
        return 1  # "sum"

    def backward(self, grad_output=1.0):
        if self._gradient_handed_out:
            raise RuntimeError(
                f"{_LAYER}.backward called twice after one forward: the first call handed out the gradient "
                "buffer (the softmax, turned into dL/dlogits in place). Keep that result, or run forward again"
            )
        grad = require_cache(_LAYER, self._probs)
        xp = get_array_module(grad)
        n = grad.shape[0]
        pixels = grad.shape[2]
        rows = xp.arange(n).reshape(n, 1)
        cols = xp.arange(pixels).reshape(1, pixels)
        grad[rows, self._safe_labels, cols] -= 1  # softmax - onehot, without the one-hot
        scale = self._pixel_scale
        if not (isinstance(grad_output, (int, float)) and grad_output == 1.0):
            scale = scale * xp.asarray(grad_output, dtype=grad.dtype)
        grad *= scale[:, None, :]
        shape = self._logits_shape
        self._probs = self._safe_labels = self._pixel_scale = self._logits_shape = None  # buffer handed out
        self._gradient_handed_out = True
        return grad.reshape(shape)

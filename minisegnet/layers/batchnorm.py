"""Batch normalisation over the channels of a feature map (``BatchNorm2d``).

In SegNet every convolution is followed by batch normalisation and then a ReLU::

    conv -> BatchNorm2d -> ReLU

Batch normalisation (Ioffe & Szegedy, 2015) was proposed against *internal covariate
shift*: the distribution of a layer's inputs drifts while the layers before it learn.
Normalising each channel to zero mean and unit variance, then letting the network
re-scale and re-shift it with learnt ``weight`` (gamma) and ``bias`` (beta), makes
deep stacks such as SegNet's 26 convolutions train quickly and stably.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..module import Module, Parameter
from ..validation import check_feature_map, check_grad_shape, check_matches_parameters, require_cache

_LAYER = "BatchNorm2d"


def _per_channel(v):
    """View a (C,) vector as (1, C, 1, 1) so that it broadcasts over N, H, W."""
    return v.reshape(1, -1, 1, 1)


def _channel_dot(a, b):
    """``sum over n, h, w of a * b``, per channel: ``(C,)``, without an ``a * b`` temporary.

    Each (image, channel) row of the ``(N, C, H*W)`` views is one dot product: a batch of
    ``(1, H*W) @ (H*W, 1)`` matrix products, which BLAS (cuBLAS on CuPy) runs in one read
    of ``a`` and ``b``.  The ``N`` partial sums per channel are then added.
    """
    xp = get_array_module(a)
    n, c = a.shape[:2]
    rows_a, rows_b = a.reshape(n, c, 1, -1), b.reshape(n, c, -1, 1)
    return xp.matmul(rows_a, rows_b).reshape(n, c).sum(axis=0)


class BatchNorm2d(Module):
    r"""Per-channel batch normalisation of an NCHW map, with a hand-written backward.

    **Per channel, not per activation.**  The statistics of channel ``c`` are taken over
    all ``m = N*H*W`` values of that channel in the batch (the same filter produced them
    all, so they share one mean and variance).  Flattening the map and normalising each
    of the ``C*H*W`` activations separately -- what a fully connected BatchNorm does when
    handed a conv map -- is a different, wrong layer for convolutions.

    Forward, for one channel (``i`` runs over its ``m`` values)::

        mu    = (1/m) sum_i x_i                   batch mean
        var   = (1/m) sum_i (x_i - mu)^2          biased batch variance
        sigma = sqrt(var + eps)
        xhat_i = (x_i - mu) / sigma
        y_i    = gamma * xhat_i + beta

    **Training mode** (``self.training``) normalises with the batch statistics above and
    updates the running estimates used at inference, exactly as PyTorch does::

        running_mean <- (1 - momentum) * running_mean + momentum * mu
        running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    (the *unbiased* variance goes into ``running_var``; ``momentum=None`` gives a
    cumulative average ``1 / num_batches_tracked`` instead).  A channel with a single
    value (``m == 1``) has no variance, so training mode refuses it, as PyTorch does.

    **Eval mode** normalises with ``running_mean`` and ``running_var``: the layer becomes
    a fixed per-channel affine map, and a prediction no longer depends on the other
    images of the batch.  How good those running statistics are matters: SegNet's
    ``compute_bn_statistics.py`` recomputes them over the training set after training
    (a training-loop feature, not this layer's job; ``momentum=None`` and forward
    passes in training mode give that average).

    Backward.  Given ``dy = dL/dy``, the parameter gradients are the same in both
    modes::

        dbeta  = sum_i dy_i                 dgamma = sum_i dy_i * xhat_i

    *Eval mode*: ``mu`` and ``sigma`` are constants, so ``y = (gamma/sigma) x + const``
    and ::

        dx_i = (gamma / sigma) * dy_i

    *Training mode*: ``mu`` and ``sigma`` depend on every ``x_i``.  With
    ``d mu / d x_i = 1/m`` and ``d sigma / d x_i = (x_i - mu) / (m sigma) = xhat_i / m``::

        d xhat_j / d x_i = (delta_ij - 1/m) / sigma - (x_j - mu) / sigma^2 * xhat_i / m
                         = (1/sigma) (delta_ij - 1/m - xhat_i xhat_j / m)

    and with ``dxhat_j = gamma dy_j`` the chain rule ``dx_i = sum_j dxhat_j dxhat_j/dx_i``
    gives ::

        dx_i = (gamma / sigma) / m * (m dy_i - sum_j dy_j - xhat_i sum_j dy_j xhat_j)
             = (gamma / sigma) * (dy_i - dbeta / m - xhat_i * dgamma / m)

    Within each channel the gradient has zero mean and (up to ``eps``) is orthogonal to
    ``xhat``: shifting or scaling a channel's input cannot change its normalised output.

    Caches (stored by a forward outside ``minisegnet.no_grad()``; a forward inside it
    leaves the stored ones untouched): ``self._centred`` the centred input ``x - mu``,
    ``self._inv_std`` the per-channel ``1/sigma`` that was used (so ``xhat = centred *
    inv_std``, never stored as a map of its own), and ``self._used_batch_stats`` which of
    the two backward formulas applies (the mode of the *forward*, whatever the mode is
    when backward runs).

    Cost.  The layer is a handful of passes over a large map, so the code counts them:

    * Per-channel sums of products (``sum (x - mu)^2``, ``sum dy * centred``) are a batch
      of BLAS dot products, one per (image, channel) row of the ``(N, C, H*W)`` view
      (:func:`_channel_dot`): one read of each operand and no product temporary, where
      ``einsum`` runs a slower generic loop.  The plain sums (``mu``, ``dbeta``) stay
      NumPy's ``sum``, whose pairwise summation keeps the mean accurate to float32
      rounding even on a channel whose mean is large against its spread.
    * ``xhat`` is never materialised: the forward writes the centred map once (into the
      layer's own buffer) and produces ``y = centred * (gamma/sigma) + beta`` from it;
      the backward folds ``1/sigma`` into its per-channel factors.  Scaling the cache
      into ``xhat`` in place would be one more pass forward, for nothing.
    * The centred buffer is reused by the next forward of the same shape (one large
      allocation, and its page faults, less per step), so a training forward allocates
      only ``y`` and a backward only ``dx``; under ``no_grad`` the centred map is new and
      becomes ``y`` itself.
    * Two passes for the variance, not the one-pass ``E[x^2] - E[x]^2``, which cancels
      catastrophically in float32 when ``|mu|`` is large against ``sigma``; the centred
      map costs one pass but is needed for the cache anyway.
    * Eval mode computes ``y = x * (gamma/sigma) + (beta - mu * gamma/sigma)``: two
      passes over ``x``, no centred map unless a backward needs it.  (Its rounding error
      is ``eps * |x|``, the size of the error ``x`` already carries from the layer that
      computed it.)
    * The running statistics and ``num_batches_tracked`` stay where the parameters are:
      with ``momentum=None`` the factor ``1 / num_batches_tracked`` is a 0-d array on the
      device, never a Python float, because reading a device value back to the host
      (``float(tracked)``) stalls the GPU until all queued work is done.  The counter is
      still the int64 buffer PyTorch has, saved and loaded as before.

    Arithmetic follows the layer's dtype: an input of another dtype is refused with a
    clear error, as :class:`~minisegnet.layers.Conv2d` refuses it (convert the layer with
    ``.double()`` / ``.float()``, or the input), so a float64 gradient check cannot
    silently run through float32 statistics.

    Train / eval.  ``train()``: batch statistics, running statistics updated.  ``eval()``:
    the running statistics, nothing updated; the layer is then the per-channel affine map
    ``y = gamma (x - running_mean) / sqrt(running_var + eps) + beta`` and its backward is
    ``dx = dy * gamma / sigma`` (the second formula above).  Both can be differentiated.
    A frozen parameter (``requires_grad = False``) gets no gradient.

    Parameters ``weight`` (ones) and ``bias`` (zeros), buffers ``running_mean`` (zeros),
    ``running_var`` (ones), ``num_batches_tracked`` (a 0-d int64), all created in float32
    on the CPU (``.double()``, ``.to("cuda")`` convert them).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"{_LAYER}: expected num_features as a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"{_LAYER}: expected eps > 0, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{_LAYER}: expected momentum in [0, 1] or None (cumulative average), got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.weight = Parameter(np.ones(self.num_features, dtype=np.float32))
        self.bias = Parameter(np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._centred = None
        self._inv_std = None
        self._used_batch_stats = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}"

    # -- forward ----------------------------------------------------------------------
    def forward(self, x):
        check_feature_map(_LAYER, x, channels=self.num_features)
        xp = check_matches_parameters(f"{_LAYER}({self.num_features})", x, self.weight.data)
        dtype = x.dtype
        n, c, h, w = x.shape
        keep = is_grad_enabled()
        m = n * h * w
        gamma = self.weight.data.astype(dtype, copy=False)
        beta = self.bias.data.astype(dtype, copy=False)

        if self.training:
            if m < 2:
                raise ValueError(
                    f"{_LAYER}: expected more than 1 value per channel in training mode "
                    f"(N*H*W > 1), got input of shape {tuple(x.shape)}"
                )
            mean = x.mean(axis=(0, 2, 3))  # (C,), in x's dtype
            centred = xp.subtract(x, _per_channel(mean), out=self._buffer_for(x, keep))  # the cache (or y)
            var = _channel_dot(centred, centred) / m  # biased; no squared temporary
            self._update_running_stats(mean, var, m)
            inv_std = 1.0 / xp.sqrt(var + self.eps)  # (C,)
            scale = gamma * inv_std  # gamma / sigma
            # y = gamma * xhat + beta = centred * (gamma / sigma) + beta
            y = xp.multiply(centred, _per_channel(scale), out=None if keep else centred)
            y += _per_channel(beta)
        else:  # the running statistics: a fixed affine map per channel
            mean = self.running_mean.astype(dtype, copy=False)
            inv_std = 1.0 / xp.sqrt(self.running_var.astype(dtype, copy=False) + self.eps)
            scale = gamma * inv_std
            y = x * _per_channel(scale)  # y = x * gamma/sigma + (beta - mu * gamma/sigma)
            y += _per_channel(beta - mean * scale)
            if keep:  # only a backward needs the centred map
                centred = xp.subtract(x, _per_channel(mean), out=self._buffer_for(x, keep))

        if keep:
            self._centred, self._inv_std, self._used_batch_stats = centred, inv_std, bool(self.training)
        return y  # without keep, the caches of an earlier forward stay as they were

    def _buffer_for(self, x, keep: bool):
        """The full-size buffer that becomes ``centred``: last step's when it fits, else a new one.

        ``self._centred`` never leaves the layer, so the next forward may overwrite it (one
        large allocation, and its page faults, less, unless a model's backward released it
        first: :meth:`~minisegnet.module.Module.release_caches`).  Under ``no_grad`` the
        buffer becomes the returned ``y`` and the stored cache must survive, so it is
        always new.
        """
        xp = get_array_module(x)
        if not keep:
            return xp.empty(x.shape, dtype=x.dtype)
        old = self._centred
        self._centred = None
        if old is not None and old.shape == x.shape and old.dtype == x.dtype \
                and get_array_module(old) is xp:
            return old
        return xp.empty(x.shape, dtype=x.dtype)

    def _update_running_stats(self, mean, var, m: int) -> None:
        """Move the running estimates towards this batch (in place on the buffers).

        Nothing is read back to the host: with ``momentum=None`` the factor
        ``1 / num_batches_tracked`` is computed where the counter lives (a 0-d array on
        CuPy), and ``running *= 1 - momentum`` takes it as it takes a Python float.
        """
        # Local names on purpose: ``self.running_mean *= ...`` would re-assign the attribute.
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        tracked += 1
        if self.momentum is None:  # cumulative average
            momentum = 1.0 / tracked.astype(running_mean.dtype)
        else:
            momentum = self.momentum
        unbiased_var = var * (m / (m - 1))
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype, copy=False)
        running_var *= 1.0 - momentum
        running_var += momentum * unbiased_var.astype(running_var.dtype, copy=False)

    def _release_cache(self) -> None:
        self._centred = self._inv_std = None

    # -- backward ---------------------------------------------------------------------
    def backward(self, dy):
        centred = require_cache(_LAYER, self._centred)
        check_grad_shape(_LAYER, dy, centred.shape)
        inv_std = self._inv_std
        dtype = centred.dtype
        gamma = self.weight.data.astype(dtype, copy=False)
        scale = gamma * inv_std  # gamma / sigma, per channel
        if not self._used_batch_stats:  # eval-mode forward: an affine map per channel
            if self.weight.requires_grad:
                self.weight.accumulate_grad(_channel_dot(dy, centred) * inv_std)  # sum dy * xhat
            if self.bias.requires_grad:
                self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3)))
            return dy * _per_channel(scale)

        dbeta = dy.sum(axis=(0, 2, 3))  # needed by dx even when the parameters are frozen
        dgamma = _channel_dot(dy, centred) * inv_std  # sum dy * xhat, xhat = centred / sigma
        n, _, h, w = centred.shape
        m = n * h * w
        # dx = (gamma/sigma) * (dy - dbeta/m - xhat * dgamma/m), one full-size buffer
        dx = centred * _per_channel(inv_std * dgamma / m)  # xhat * dgamma/m
        dx += _per_channel(dbeta / m)
        xp = get_array_module(dy)
        xp.subtract(dy, dx, out=dx)
        dx *= _per_channel(scale)
        self.weight.accumulate_grad(dgamma)
        self.bias.accumulate_grad(dbeta)
        return dx

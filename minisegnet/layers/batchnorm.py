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
from ..module import Module, Parameter, releases_cache
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
    leaves the stored ones untouched): ``self._input`` the input ``x`` itself (a reference,
    as PyTorch saves it: not a copy), ``self._mean`` and ``self._inv_std`` the per-channel
    ``mu`` and ``1/sigma`` that were used (so ``xhat = (x - mean) * inv_std``, never stored
    as a map of its own), and ``self._used_batch_stats`` which of the two backward formulas
    applies (the mode of the *forward*, whatever the mode is when backward runs).  The input
    must therefore not be changed in place between the forward and the backward; nothing in
    the library does (a convolution's output goes to its BatchNorm and nowhere else).

    Cost.  The layer is a handful of passes over a large map, so the code counts them:

    * Per-channel sums of products (``sum (x - mu)^2``, ``sum dy * (x - mu)``) are a batch
      of BLAS dot products, one per (image, channel) row of the ``(N, C, H*W)`` view
      (:func:`_channel_dot`): one read of each operand and no product temporary, where
      ``einsum`` runs a slower generic loop.  The plain sums (``mu``, ``dbeta``) stay
      NumPy's ``sum``, whose pairwise summation keeps the mean accurate to float32
      rounding even on a channel whose mean is large against its spread.
    * ``xhat`` is never materialised.  The forward writes the centred map ``x - mu`` once,
      into the output's own buffer, takes the variance from it, and turns it into ``y =
      centred * (gamma/sigma) + beta`` in place: a training forward allocates one map,
      ``y``.  The backward writes ``x - mu`` again, into the buffer of ``dx``, takes
      ``dgamma`` from it and forms ``dx`` in place: one map, ``dx``.
    * Why the input is kept and not the centred map: ``x`` (the convolution's output)
      exists anyway, and a centred copy would be one more full-size map alive from the
      forward to the backward.  At the decoder's full-resolution BatchNorm of SegNet-Basic
      that copy was the step's memory peak (measured in ``BENCHMARKS.md``).  The price is one
      pass in the backward (recomputing ``x - mu``), about 0.5 % of a step.
    * Two passes for the variance, not the one-pass ``E[x^2] - E[x]^2``, which cancels
      catastrophically in float32 when ``|mu|`` is large against ``sigma``; likewise the
      backward's ``sum dy * (x - mu)`` is taken on the centred map, not as ``sum dy * x -
      mu * sum dy``.
    * Eval mode computes ``y = x * (gamma/sigma) + (beta - mu * gamma/sigma)``: two
      passes over ``x`` and no centred map (a backward recomputes it).  (Its rounding error
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
        self._input = None
        self._mean = None
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
            y = xp.subtract(x, _per_channel(mean))  # the centred map, in the output's buffer
            var = _channel_dot(y, y) / m  # biased; no squared temporary
            self._update_running_stats(mean, var, m)
            inv_std = 1.0 / xp.sqrt(var + self.eps)  # (C,)
            scale = gamma * inv_std  # gamma / sigma
            # y = gamma * xhat + beta = centred * (gamma / sigma) + beta, in place
            y *= _per_channel(scale)
            y += _per_channel(beta)
        else:  # the running statistics: a fixed affine map per channel
            mean = self.running_mean.astype(dtype, copy=True)  # a copy: a later forward may update the buffer
            inv_std = 1.0 / xp.sqrt(self.running_var.astype(dtype, copy=False) + self.eps)
            scale = gamma * inv_std
            y = x * _per_channel(scale)  # y = x * gamma/sigma + (beta - mu * gamma/sigma)
            y += _per_channel(beta - mean * scale)

        if keep:
            self._input, self._mean, self._inv_std = x, mean, inv_std
            self._used_batch_stats = bool(self.training)
        return y  # without keep, the caches of an earlier forward stay as they were

    def _release_cache(self) -> None:
        self._input = self._mean = self._inv_std = None

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

    # -- backward ---------------------------------------------------------------------
    @releases_cache
    def backward(self, dy):
        x = require_cache(_LAYER, self._input)
        check_grad_shape(_LAYER, dy, x.shape)
        xp = get_array_module(dy)
        inv_std = self._inv_std
        dtype = x.dtype
        gamma = self.weight.data.astype(dtype, copy=False)
        scale = gamma * inv_std  # gamma / sigma, per channel
        dx = xp.subtract(x, _per_channel(self._mean))  # the centred input, in the buffer of dx
        dgamma = _channel_dot(dy, dx) * inv_std  # sum dy * xhat, xhat = centred / sigma
        dbeta = dy.sum(axis=(0, 2, 3))  # needed by dx even when the parameters are frozen
        if not self._used_batch_stats:  # eval-mode forward: an affine map per channel
            self.weight.accumulate_grad(dgamma)
            self.bias.accumulate_grad(dbeta)
            return xp.multiply(dy, _per_channel(scale), out=dx)
        n, _, h, w = x.shape
        m = n * h * w
        # dx = (gamma/sigma) * (dy - dbeta/m - xhat * dgamma/m), in place on the centred map
        dx *= _per_channel(-inv_std * dgamma / m)  # -xhat * dgamma/m
        dx += dy
        dx -= _per_channel(dbeta / m)
        dx *= _per_channel(scale)
        self.weight.accumulate_grad(dgamma)
        self.bias.accumulate_grad(dbeta)
        return dx

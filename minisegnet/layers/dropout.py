"""Inverted dropout, and the Monte-Carlo sampling switch that Bayesian SegNet needs."""
from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_array_module, is_array
from ..grad_mode import is_grad_enabled
from ..module import Module, releases_cache
from ..validation import check_grad_shape, require_cache

_LAYER = "Dropout"


class Dropout(Module):
    r"""Zero each value with probability ``p`` and scale the survivors by ``1/(1-p)``.

    *Inverted* dropout: with a keep-mask ``k_i`` drawn as Bernoulli(1-p), ::

        y_i = x_i * k_i / (1 - p)

    so ``E[y_i] = x_i`` and nothing needs rescaling when dropout is switched off.

    Backward.  For a fixed mask the layer is linear and diagonal: ::

        dx_i = dy_i * k_i / (1 - p)          (the same mask as the forward)

    When is it active?
        While ``self.training`` -- and also in eval mode when ``self.mc_sampling`` is True.
        Bayesian SegNet (Kendall et al., 2015) keeps dropout on at test time and averages
        the softmax over several stochastic passes (Monte-Carlo dropout); the spread of
        those samples is its uncertainty.  ``model.set_mc_dropout(True)`` sets
        ``mc_sampling`` on every Dropout of a model.  Inactive, the layer is the identity:
        ``forward`` returns ``x`` itself and ``backward`` returns ``dy`` itself (no copy).
        ``p == 0`` is always the identity.

    Random numbers come from a generator the layer owns, ``xp.random.default_rng(seed)``
    -- NumPy's ``Generator`` (PCG64) for NumPy arrays, CuPy's ``Generator`` (XORWOW) for
    CuPy arrays, so masks are drawn on the array's own device.  It is created at the
    first active forward for the input's array module (and again if the input moves to
    the other device, re-seeded with the layer's seed, so the sequence restarts).  The
    same seed gives the same masks on the same device, not across devices.  ``seed=None``
    draws fresh entropy.  ``reseed(seed)`` restarts the sequence: gradient checks call it
    before every forward so that all forwards share one mask, and a resumed training run
    can call it to continue deterministically.

    Cache: ``self._keep_mask`` (boolean, one byte per value) when the layer was active
    (``None`` after an identity forward); ``self._output_shape`` records that a forward
    happened (so an identity forward can be differentiated too).  A forward inside
    ``minisegnet.no_grad()`` stores neither and leaves the stored ones untouched.  Masks
    are drawn in the input's dtype (float32 for float16 input); the layer has no
    parameters and computes in the input's dtype.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{_LAYER}: expected a drop probability p with 0 <= p < 1, got {p!r}")
        self.p = float(p)
        self.mc_sampling = False
        self.seed = seed
        self._rng = None
        self._rng_xp = None
        self._keep_mask = None
        self._output_shape = None

    def extra_repr(self) -> str:
        return f"p={self.p:g}"

    def reseed(self, seed: int | None) -> "Dropout":
        """Restart the random sequence from ``seed`` (``None``: fresh entropy)."""
        self.seed = seed
        self._rng = None
        self._rng_xp = None
        return self

    @property
    def active(self) -> bool:
        """Whether a forward drops values now (training or MC sampling, and ``p > 0``)."""
        return self.p > 0.0 and (self.training or self.mc_sampling)

    def _generator(self, xp):
        if self._rng is None or self._rng_xp != xp.__name__:
            self._rng = xp.random.default_rng(self.seed)
            self._rng_xp = xp.__name__  # a name, not the module: a model stays deep-copyable
        return self._rng

    def forward(self, x):
        if not is_array(x):
            raise TypeError(f"{_LAYER}: expected the input as a NumPy/CuPy array, got {type(x).__name__}")
        if np.dtype(x.dtype).kind != "f":
            raise ValueError(f"{_LAYER}: expected a floating-point input (float32 or float64), got dtype {x.dtype}")
        keep_cache = is_grad_enabled()
        if not self.active:
            if keep_cache:
                self._keep_mask, self._output_shape = None, tuple(x.shape)
            return x
        xp = get_array_module(x)
        draw_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
        uniform = self._generator(xp).random(x.shape, dtype=draw_dtype)
        keep = uniform >= self.p  # P(keep) = 1 - p
        del uniform
        y = x * keep
        y *= x.dtype.type(1.0 / (1.0 - self.p))
        if keep_cache:
            self._keep_mask, self._output_shape = keep, tuple(x.shape)
        return y

    def _release_cache(self) -> None:
        self._keep_mask = self._output_shape = None

    @releases_cache
    def backward(self, dy):
        shape = require_cache(_LAYER, self._output_shape)
        check_grad_shape(_LAYER, dy, shape)
        if self._keep_mask is None:  # the forward was the identity
            return dy
        dx = dy * self._keep_mask
        dx *= dy.dtype.type(1.0 / (1.0 - self.p))
        return dx

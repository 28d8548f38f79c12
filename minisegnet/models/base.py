"""What every segmentation model offers on top of ``forward``/``backward``.

:class:`SegmentationModel` is the base of SegNet, SegNet-Basic and their Bayesian
variants.  A subclass builds its layers and writes ``forward(x) -> logits`` and
``backward(dlogits) -> dx``; this class adds what a user of a trained network needs:

``predict(x)``
    The label map, ``argmax`` over classes of an eval-mode forward, int64 (N, H, W).
``predict_proba(x)``
    The per-pixel softmax of an eval-mode forward, (N, K, H, W).
``predict_mc(x, samples=8)``
    Monte-Carlo dropout (Bayesian SegNet): the mean softmax of ``samples`` stochastic
    eval-mode forwards and a per-pixel uncertainty.
``summary(input_size)``
    A table of layers, output shapes and parameters, and the memory the decoder keeps.
``arch`` and ``config``
    The registry name and the constructor arguments, so that
    ``build_model(model.arch, **model.config)`` rebuilds the same architecture (the
    checkpoint code relies on it).

The ``predict*`` methods run inside :func:`minisegnet.no_grad` and in eval mode, and put
every module's mode back afterwards; ``predict_mc(seed=...)`` puts the dropout layers'
random generators back too; ``summary`` measures a twin of the model.  So calling any of
them between a training forward and its backward changes nothing of that step (tested).
Under ``no_grad`` no layer keeps activations for backward, so the only activations alive
during inference are the current feature map and what the decoder needs (for SegNet: the
pooling indices and sizes), besides the scratch buffers that layers reuse from call to call
(``benchmarks/bench_memory.py`` measures both).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from ..backend import get_array_module
from ..grad_mode import no_grad
from ..layers import Conv2d, Dropout
from ..module import Module
from .summary import ModelSummary, summarize


def softmax(logits, axis: int = 1, *, inplace: bool = False):
    """Numerically stable softmax along ``axis``, in the logits' dtype.

    ``softmax(z) = softmax(z - max z)``: after subtracting the maximum every exponent is
    at most 0, so ``exp`` cannot overflow even for logits of 1e4, and the largest term
    is exactly 1, so the sum cannot underflow to 0.  ``inplace=True`` overwrites
    ``logits`` with the probabilities (no second (N, K, H, W) array).
    """
    xp = get_array_module(logits)
    shift = logits.max(axis=axis, keepdims=True)
    if inplace:
        probs = logits
        probs -= shift
    else:
        probs = logits - shift
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=axis, keepdims=True)
    return probs


class SegmentationModel(Module):
    """Base class of the segmentation networks: predictions, MC dropout, summary.

    Subclasses set the class attribute ``arch`` (their name in
    :data:`minisegnet.models.MODELS`) and, in ``__init__``, ``self.config`` (a dict of
    their constructor arguments), and implement ``forward``.  :meth:`backward` runs the
    ``classifier``, ``decoder`` and ``encoder`` stages in reverse, unless a subclass overrides it.
    """

    arch: str = ""

    def __init__(self):
        super().__init__()
        self.config: dict = {}

    # -- structure --------------------------------------------------------------------
    def encoder_convs(self) -> list:
        """The encoder's convolutions in forward order (13 for SegNet: VGG16's ``features``).

        Subclasses keep their encoder stages in ``self.encoder``.
        """
        return [m for m in self.encoder.modules() if isinstance(m, Conv2d)]

    @property
    def input_layer(self):
        """The convolution that sees the image (its input gradient is computed only on request)."""
        return self.encoder_convs()[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def backward(self, dlogits, *, input_grad: bool = False, release: bool = True):
        """Add every parameter's gradient into ``.grad``, from ``dL/dlogits``: the forward in reverse.

        The classifier, then the decoder stages and the encoder stages in the reverse of their
        running order (a model whose decoder also takes encoder maps, like FCN, overrides it).

        Returns ``dL/dx`` (the gradient of the images) only when ``input_grad=True``, and
        ``None`` otherwise: nobody trains the image, and skipping it spares the first
        convolution its largest product (its ``needs_input_grad`` is set accordingly).

        ``release`` (the default): every layer lets go of its forward's cache as soon as its
        own backward has returned (:func:`~minisegnet.module.releases_cache`), so the memory of
        the decoder's full-size maps is free again when the encoder's first stage needs room
        for its gradients; a second backward then needs a new forward.  ``release=False``
        keeps every cache, for another backward of the same forward.
        """
        self.input_layer.needs_input_grad = bool(input_grad)
        with self._releasing(release):
            grad = self.classifier.backward(dlogits)
            for stage in reversed(self.decoder):
                grad = stage.backward(grad)
            for stage in reversed(self.encoder):
                grad = stage.backward(grad)
        return grad if input_grad else None

    @contextmanager
    def _releasing(self, release: bool):
        """For a ``with`` block: each layer's backward drops its cache after it (``release``), then all do.

        Sets ``release_after_backward`` on every module for the block and clears it after,
        even after an error; with ``release``, whatever a module still holds at the end
        (one without a decorated backward) goes too.
        """
        modules = list(self.modules())
        for module in modules:
            module.release_after_backward = bool(release)
        try:
            yield
        finally:
            for module in modules:
                module.release_after_backward = False
        if release:
            self.release_caches()

    # -- modes ----------------------------------------------------------------------
    @contextmanager
    def _inference_mode(self, mc_dropout: bool = False):
        """``no_grad`` and eval mode (optionally with MC dropout) for a ``with`` block.

        Every module's ``training`` and (for Dropout) ``mc_sampling`` are restored on exit,
        exactly as they were, even after an error.  ``no_grad`` keeps the layers from
        touching what a pending backward needs.
        """
        saved = [(m, m.training, getattr(m, "mc_sampling", None)) for m in self.modules()]
        self.eval()
        self.set_mc_dropout(mc_dropout)
        try:
            with no_grad():
                yield
        finally:
            for m, training, mc_sampling in saved:
                object.__setattr__(m, "training", training)
                if mc_sampling is not None:
                    m.mc_sampling = mc_sampling

    def dropout_layers(self) -> list[Dropout]:
        """Every :class:`~minisegnet.layers.Dropout` in the model, in registration order."""
        return [m for m in self.modules() if isinstance(m, Dropout)]

    def set_mc_dropout(self, flag: bool = True) -> "SegmentationModel":
        """Keep dropout active in eval mode (``True``) for Monte-Carlo sampling, or not."""
        for layer in self.dropout_layers():
            layer.mc_sampling = bool(flag)
        return self

    # -- predictions ----------------------------------------------------------------
    def predict_proba(self, x):
        """Per-pixel class probabilities (N, K, H, W), softmax of an eval-mode forward."""
        with self._inference_mode():
            logits = self.forward(x)
        return softmax(logits, axis=1, inplace=True)  # the logits are ours: reuse their memory

    def predict(self, x):
        """Per-pixel labels (N, H, W) int64: the argmax over classes of an eval-mode forward.

        The softmax is monotonic, so the argmax of the logits is the argmax of the
        probabilities; no softmax is computed.
        """
        with self._inference_mode():
            logits = self.forward(x)
        return logits.argmax(axis=1).astype(np.int64, copy=False)

    def predict_mc(self, x, samples: int = 8, seed: int | None = None):
        """Monte-Carlo dropout (Bayesian SegNet): ``(mean_probs, uncertainty)``.

        Runs ``samples`` eval-mode forwards (BatchNorm uses its running statistics) with
        every Dropout layer kept active, and returns

        ``mean_probs`` (N, K, H, W)
            the mean of the sampled softmax outputs; its argmax over K is the prediction;
        ``uncertainty`` (N, H, W)
            the variance of the sampled softmax outputs, computed per class and then
            averaged over the K classes: ``mean_k var_s p_s[k]``.  This is the map that
            SegNet-Tutorial's ``test_bayesian_segnet.py`` shows (``np.var`` over samples,
            i.e. the population variance dividing by ``samples``, then the mean over
            classes).  It is 0 where every sample agrees and grows where dropout changes
            the answer.

        The mean and variance are accumulated with Welford's update, so only two
        (N, K, H, W) arrays are kept however many samples are drawn, and samples that
        all agree give a variance of exactly 0.  ``seed`` (optional) draws the samples from
        generators seeded with ``seed + i`` for dropout layer ``i``, for reproducible
        samples; the layers' own generators are put back afterwards, so the masks of a
        training run are the same whether or not it sampled in between.  A model without
        Dropout layers gives identical samples and zero uncertainty (with a warning).
        """
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"{type(self).__name__}.predict_mc: expected samples >= 1, got {samples!r}")
        dropouts = self.dropout_layers()
        if not dropouts:
            warnings.warn(
                f"{type(self).__name__} has no Dropout layers: every Monte-Carlo sample is the same and the "
                "uncertainty is zero (build it with dropout > 0, e.g. BayesianSegNet)",
                stacklevel=2,
            )
        saved_generators = [(layer, layer.seed, layer._rng, layer._rng_xp) for layer in dropouts]
        if seed is not None:
            for i, layer in enumerate(dropouts):
                layer.reseed(seed + i)
        try:
            return self._sample_mc(x, int(samples))
        finally:
            if seed is not None:
                for layer, layer_seed, rng, rng_xp in saved_generators:
                    layer.seed, layer._rng, layer._rng_xp = layer_seed, rng, rng_xp

    def _sample_mc(self, x, samples: int):
        """Welford's running mean and variance over ``samples`` MC-dropout softmax outputs."""
        mean = m2 = None
        with self._inference_mode(mc_dropout=True):
            for count in range(1, samples + 1):
                probs = softmax(self.forward(x), axis=1, inplace=True)
                if mean is None:
                    xp = get_array_module(probs)
                    mean, m2 = probs, xp.zeros_like(probs)
                    continue
                # Welford: mean_n = mean_{n-1} + (p - mean_{n-1}) / n,
                #          M2_n   = M2_{n-1} + (p - mean_{n-1}) * (p - mean_n).
                step = probs - mean
                step /= count  # (p - mean_{n-1}) / n
                mean += step
                probs -= mean  # p - mean_n
                probs *= step
                probs *= count
                m2 += probs
        uncertainty = m2.mean(axis=1)
        uncertainty /= samples
        return mean, uncertainty

    # -- summary --------------------------------------------------------------------
    def summary(self, input_size=(3, 360, 480), batch_size: int = 1) -> ModelSummary:
        """Layers, output shapes, parameters, memory and FLOPs, measured on one forward.

        Returns a :class:`~minisegnet.models.summary.ModelSummary`: ``.records`` (one
        :class:`~minisegnet.models.summary.LayerRecord` per layer: output shape,
        parameters, bytes kept for the backward, bytes kept for the decoder, FLOPs) and
        ``.decoder_memory``; ``print(model.summary())`` shows them as a table, with the
        SegNet article's comparison of pooling indices against FCN-style skips.  The
        measurement runs on a twin of the model that shares its weights, so the model's
        mode, caches and a pending backward are untouched.  See
        :mod:`minisegnet.models.summary` for what each column measures.
        """
        return summarize(self, input_size=input_size, batch_size=batch_size)

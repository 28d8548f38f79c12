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

The ``predict*`` methods and ``summary`` switch the model to eval mode for their
forwards and put every module's flags back afterwards, so calling them in the middle of
training changes nothing.  In eval mode no layer keeps activations for backward
(``requires_grad`` is False), so the only activations alive during inference are the
current feature map and what the decoder needs (for SegNet: the pooling indices and
sizes), besides the scratch buffers that layers reuse from call to call
(``benchmarks/bench_memory.py`` measures both).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from ..backend import array_module_for, get_array_module
from ..layers import Dropout
from ..module import Module


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
    their constructor arguments), and implement ``forward``/``backward``.
    """

    arch: str = ""

    def __init__(self):
        super().__init__()
        self.config: dict = {}

    # -- modes ----------------------------------------------------------------------
    @contextmanager
    def _inference_mode(self, mc_dropout: bool = False):
        """Eval mode (optionally with MC dropout) for the duration of a ``with`` block.

        Every module's ``training``, ``requires_grad`` and (for Dropout)
        ``mc_sampling`` are restored on exit, exactly as they were, even after an error.
        """
        saved = [(m, m.training, m.requires_grad, getattr(m, "mc_sampling", None)) for m in self.modules()]
        self.eval()
        self.set_mc_dropout(mc_dropout)
        try:
            yield
        finally:
            for m, training, requires_grad, mc_sampling in saved:
                object.__setattr__(m, "training", training)
                object.__setattr__(m, "requires_grad", requires_grad)
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
        all agree give a variance of exactly 0.  ``seed`` (optional) reseeds the dropout
        layers (layer ``i`` with ``seed + i``) for reproducible samples.  A model without
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
        if seed is not None:
            for i, layer in enumerate(dropouts):
                layer.reseed(seed + i)
        mean = m2 = None
        with self._inference_mode(mc_dropout=True):
            for count in range(1, int(samples) + 1):
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
    def summary(self, input_size=(3, 360, 480), batch_size: int = 1) -> str:
        """A table of layers, output shapes and parameters, and the decoder's memory.

        It runs one eval-mode forward on zeros of shape ``(batch_size, *input_size)``
        and records what each layer actually returned (by wrapping the layers'
        ``forward`` for the duration of the call, as PyTorch's forward hooks do).  A row
        is a layer without sub-modules, or a block that asks to be shown as one row
        (``summary_as_one_row = True``, e.g. conv → BN → ReLU).

        Models that hand pooling indices from encoder to decoder (they define
        ``encode(x) -> (bottom, [(indices, size), ...])`` and ``decode``) also get the
        memory comparison of the SegNet article, measured on the arrays the decoder
        actually receives: the bytes of the indices (plus two integers per stage for the
        size), beside the bytes of the encoder feature maps before pooling, in the
        model's dtype, that a decoder with FCN/U-Net-style skip connections would keep.

        Cost: one inference forward (seconds for the full SegNet at 360×480 on a CPU).
        """
        input_size = tuple(int(s) for s in input_size)
        xp = array_module_for(self.device)
        x = xp.zeros((int(batch_size), *input_size), dtype=self.dtype)
        rows: list[tuple[str, ...]] = []
        memory: list[str] = []

        def recording(name, module, forward):
            def forward_and_record(*args, **kwargs):
                out = forward(*args, **kwargs)
                y, detail = out, module.extra_repr()
                if isinstance(out, tuple):  # max pooling returns (y, indices)
                    y, indices = out[0], out[1]
                    detail = f"+ indices {indices.dtype} {tuple(indices.shape)}"
                rows.append((name, type(module).__name__, str(tuple(y.shape)), f"{module.num_parameters():,}", detail))
                return out

            return forward_and_record

        recorded = _row_modules(self)
        try:
            for name, m in recorded:
                object.__setattr__(m, "forward", recording(name, m, m.forward))
            with self._inference_mode():
                if hasattr(self, "encode") and hasattr(self, "decode"):
                    bottom, pool_indices = self.encode(x)
                    memory = _decoder_memory_table(pool_indices, self.dtype)
                    logits = self.decode(bottom, pool_indices)
                    del bottom, pool_indices
                else:
                    logits = self.forward(x)
        finally:
            for _, m in recorded:
                m.__dict__.pop("forward", None)

        dtype = np.dtype(self.dtype)
        params = self.num_parameters()
        table = _format_table(("layer", "type", "output shape", "params", ""), rows, right=(3,))
        rule = "-" * max(len(r) for r in table)
        out = [
            f"{type(self).__name__} (arch {self.arch!r}) {self.config}",
            f"input {tuple(x.shape)} {dtype.name}, eval mode",
            rule,
            table[0],
            rule,
            *table[1:],
            rule,
            f"output (logits): {tuple(logits.shape)}",
            f"parameters: {params:,} ({params * dtype.itemsize / 2**20:.1f} MiB as {dtype.name})",
        ]
        if memory:
            out += [rule, *memory]
        return "\n".join(out)


def _row_modules(model: Module) -> list[tuple[str, Module]]:
    """The modules :meth:`SegmentationModel.summary` shows as rows, in registration order."""
    rows = []

    def visit(prefix, module):
        for name, child in module._modules.items():
            full = f"{prefix}.{name}" if prefix else name
            if getattr(child, "summary_as_one_row", False) or not child._modules:
                rows.append((full, child))
            else:
                visit(full, child)

    visit("", model)
    return rows


def _format_table(header, rows, right=()) -> list[str]:
    """Rows of strings as aligned columns (columns in ``right`` right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


def _decoder_memory_table(pool_indices, dtype) -> list[str]:
    """What SegNet's decoder keeps, beside what FCN-style skips would keep, as lines of text.

    ``pool_indices`` is the list of ``(indices, size_before_pooling)`` that ``encode``
    returned: the actual arrays.  SegNet keeps ``indices.nbytes`` plus the size (two
    64-bit integers) per stage; a decoder with skip connections keeps each encoder
    feature map before pooling, ``N * C * H * W`` values of ``dtype`` (N and C from the
    indices, H and W from the stored size).
    """
    dtype = np.dtype(dtype)
    rows, total_kept, total_skip = [], 0, 0
    for stage, (indices, size) in enumerate(pool_indices, start=1):
        n, c = (int(s) for s in indices.shape[:2])
        h, w = (int(s) for s in tuple(size)[-2:])
        kept = int(indices.nbytes) + 2 * 8
        skip = n * c * h * w * dtype.itemsize
        total_kept, total_skip = total_kept + kept, total_skip + skip
        rows.append(
            (str(stage), f"{indices.dtype} {tuple(indices.shape)}", f"{kept:,}", f"{dtype.name} {(n, c, h, w)}", f"{skip:,}")
        )
    rows.append(("total", "", f"{total_kept:,}", "", f"{total_skip:,}"))
    header = ("stage", "SegNet: indices (+ size)", "bytes", "FCN-style skip: encoder map", "bytes")
    ratio = total_skip / total_kept if total_kept else float("nan")
    return [
        "memory kept for the decoder during one inference forward:",
        *_format_table(header, rows, right=(2, 4)),
        f"SegNet keeps {total_kept / 2**20:.2f} MiB of pooling indices; FCN-style skips would keep "
        f"{total_skip / 2**20:.2f} MiB of feature maps: {ratio:.1f}x more.",
    ]

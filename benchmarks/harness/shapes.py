"""The layers of a real model and the shapes they see, recorded on one forward; convolution FLOPs.

The rows of the benchmark come from the models themselves rather than from a list typed by
hand: :func:`record_layers` wraps the ``forward`` of every ``Conv2d``, ``BatchNorm2d`` and
``MaxPool2d`` instance of a model, runs one eval forward of a single image of the given size
under ``no_grad`` (shapes do not depend on the batch, so one image is enough), and notes
what each layer received.  Layers with the same hyper-parameters and input shape become one
row, with the count of layers that share it, so that "the sum over a model's layers" is the
sum of count × time.  A change in the model (another width, another kernel, ceil-mode
pooling of odd sizes) changes the rows with it.

**What a convolution costs.**  A stride-s convolution of an (N, C, H, W) input with O filters
of C×kh×kw produces (N, O, Ho, Wo) and makes N·O·Ho·Wo·C·kh·kw multiply-adds, 2 flops each.
Its backward makes the same number twice over: once for dL/dW (each weight meets every
output it touched) and once for dL/dx (each input meets every weight it touched).  The first
layer of a model skips dL/dx (nobody needs the gradient of the image: ``needs_input_grad``
is False there), so its forward + backward costs 2× the forward, every other layer's 3×.
Bias, BatchNorm, ReLU and pooling are a few flops per element and are not counted: the
GFLOP/s of a training step are those of its convolutions, measured over the whole step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from minisegnet.grad_mode import no_grad
from minisegnet.layers import BatchNorm2d, Conv2d, MaxPool2d, MaxUnpool2d


@dataclass(frozen=True)
class ConvShape:
    """One convolution and the input it sees."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    needs_input_grad: bool

    @property
    def output_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.height + 2 * ph - kh) // sh + 1, (self.width + 2 * pw - kw) // sw + 1

    @property
    def forward_flops(self) -> int:
        ho, wo = self.output_hw
        kh, kw = self.kernel
        return 2 * self.batch * self.out_channels * ho * wo * self.in_channels * kh * kw

    @property
    def training_flops(self) -> int:
        """Forward + backward: dL/dW always, dL/dx unless ``needs_input_grad`` is False."""
        return self.forward_flops * (3 if self.needs_input_grad else 2)

    @property
    def label(self) -> str:
        kh, kw = self.kernel
        text = f"{kh}×{kw} {self.in_channels}→{self.out_channels}"
        if self.stride != (1, 1):
            text += f" stride {self.stride[0]}"
        return text + ("" if self.needs_input_grad else " (no dx)")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    def with_batch(self, batch: int) -> "ConvShape":
        return replace(self, batch=batch)


@dataclass(frozen=True)
class NormShape:
    """A BatchNorm2d (followed by ReLU or not) and the input it sees."""

    batch: int
    channels: int
    height: int
    width: int
    relu: bool
    eps: float
    momentum: float | None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def label(self) -> str:
        return f"BN{' + ReLU' if self.relu else ''} {self.channels}"

    def with_batch(self, batch: int) -> "NormShape":
        return replace(self, batch=batch)


@dataclass(frozen=True)
class PoolShape:
    """A MaxPool2d with indices, the MaxUnpool2d that mirrors it, and the pool's input."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    ceil_mode: bool
    pack_indices: bool

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def label(self) -> str:
        kh, kw = self.kernel
        return f"pool {kh}×{kw} + unpool {self.channels}" + (" (packed)" if self.pack_indices else "")

    def with_batch(self, batch: int) -> "PoolShape":
        return replace(self, batch=batch)


@dataclass
class Distinct:
    """One distinct shape and the layers (dotted names) that share it."""

    shape: object
    names: list[str]

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass
class ModelLayers:
    """Every conv, norm and pool layer of a model in forward order, and the distinct shapes."""

    convs: list[tuple[str, ConvShape]]
    norms: list[tuple[str, NormShape]]
    pools: list[tuple[str, PoolShape]]

    @staticmethod
    def _distinct(layers) -> list[Distinct]:
        rows: dict[object, Distinct] = {}
        for name, shape in layers:
            rows.setdefault(shape, Distinct(shape, [])).names.append(name)
        return list(rows.values())

    def distinct_convs(self) -> list[Distinct]:
        return self._distinct(self.convs)

    def distinct_norms(self) -> list[Distinct]:
        return self._distinct(self.norms)

    def distinct_pools(self) -> list[Distinct]:
        return self._distinct(self.pools)

    def step_flops(self) -> int:
        """Conv flops of one training step: each layer's forward + backward."""
        return sum(shape.training_flops for _, shape in self.convs)

    def eval_flops(self) -> int:
        return sum(shape.forward_flops for _, shape in self.convs)


def record_layers(model, height: int, width: int, batch: int) -> ModelLayers:
    """Run one eval forward of a (1, C, height, width) image and record each layer's input shape.

    The shapes are returned with ``batch`` as their batch size.  The model's training flags
    are restored afterwards and no layer keeps anything from this forward (``no_grad``).
    """
    relu_after = {}
    for _, module in model.named_modules():
        bn = getattr(module, "bn", None)
        if isinstance(bn, BatchNorm2d):
            relu_after[id(bn)] = getattr(module, "relu", None) is not None
    first_conv = getattr(model, "input_layer", None)
    names = {id(m): name for name, m in model.named_modules()}
    seen = []  # (kind, name, module, input shape), in the order the forward runs them

    def wrap(module, kind):
        inner = module.forward

        def recording(x, *args, **kwargs):
            seen.append((kind, names[id(module)], module, tuple(x.shape)))
            return inner(x, *args, **kwargs)

        object.__setattr__(module, "forward", recording)

    wrapped = []
    for _, module in model.named_modules():
        for cls, kind in ((Conv2d, "conv"), (BatchNorm2d, "norm"), (MaxPool2d, "pool")):
            if isinstance(module, cls):
                wrap(module, kind)
                wrapped.append(module)
    modes = [(m, m.training) for m in model.modules()]
    x = np.random.default_rng(0).standard_normal((1, model.in_channels, height, width)).astype(model.dtype)
    try:
        model.eval()
        with no_grad():
            model(x)
    finally:
        for module in wrapped:
            module.__dict__.pop("forward", None)
        for module, training in modes:
            object.__setattr__(module, "training", training)

    convs, norms, pools = [], [], []
    for kind, name, m, (_, c, h, w) in seen:
        if kind == "conv":
            convs.append((name, ConvShape(
                batch, c, m.out_channels, h, w, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
                m.bias is not None, needs_input_grad=m is not first_conv and bool(m.needs_input_grad))))
        elif kind == "norm":
            norms.append((name, NormShape(batch, c, h, w, relu_after.get(id(m), False), float(m.eps),
                                          None if m.momentum is None else float(m.momentum))))
        else:
            pools.append((name, PoolShape(batch, c, h, w, tuple(m.kernel_size), tuple(m.stride), bool(m.ceil_mode),
                                          bool(getattr(m, "pack_indices", False)))))
    return ModelLayers(convs, norms, pools)


def unpool_for(pool: PoolShape) -> MaxUnpool2d:
    """The MaxUnpool2d that mirrors a recorded pooling (same window and stride)."""
    return MaxUnpool2d(kernel_size=pool.kernel, stride=pool.stride)

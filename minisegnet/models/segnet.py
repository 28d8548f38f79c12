"""SegNet: an encoder that remembers where its maxima were, and a decoder that uses it.

Badrinarayanan, Kendall & Cipolla, *SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation* (PAMI 2017).  The whole idea, for a 360×480 image::

    encoder                                         decoder (runs from stage 5 up to stage 1)
    stage 1  conv 64,64     360×480 ─pool→ 180×240 ··→ unpool → 360×480  conv 64 → classifier
    stage 2  conv 128,128   180×240 ─pool→  90×120 ··→ unpool → 180×240  conv 128,64
    stage 3  conv 256 ×3     90×120 ─pool→  45×60  ··→ unpool →  90×120  conv 256,256,128
    stage 4  conv 512 ×3     45×60  ─pool→  23×30  ··→ unpool →  45×60   conv 512,512,256
    stage 5  conv 512 ×3     23×30  ─pool→  12×15  ··→ unpool →  23×30   conv 512,512,512
                                              │                  ↑
                                              └─── bottleneck ───┘
    ··→  the pooling indices (uint8) and the size before pooling: all that links the two sides

Each max pooling returns, besides the pooled map, the position of every maximum inside
its 2×2 window (uint8) and the size of the map before pooling.  Those are all that
travel from the encoder to the decoder: the matching decoder stage *unpools* its input
with them (every value goes back where its maximum came from, zeros elsewhere) to the
stored size, and its convolutions fill the sparse map in.  FCN and U-Net carry whole
encoder feature maps across instead; ``SegNet().summary()`` prints both costs.

This file holds the building blocks and the network that chains them:

:class:`ConvBNReLU`
    conv k×k ('same' padding) → BatchNorm → ReLU, the unit every stage is made of.
:class:`EncoderStage`
    convs, then ``MaxPool2d(2, 2, ceil_mode=True)``; ``forward(x) -> (y, indices, size)``.
:class:`DecoderStage`
    ``MaxUnpool2d`` to the stored size, then convs; ``forward(x, indices, size) -> y``.
:class:`EncoderDecoder`
    ``forward``: encoder stages, keeping ``(indices, size)`` of each; decoder stages
    consuming them in reverse; a classifier conv.  ``backward``: the same in reverse.
    SegNet and SegNet-Basic differ only in the stages they build.
:class:`SegNet`
    the paper's network (29.4 M parameters), with a ``width`` factor for CPUs.

Every backward mirrors its forward: a stage runs its layers' ``backward`` in the reverse
order of their ``forward``.  The pooling indices carry no gradient: the only path from
the loss to the input runs down the decoder and back up the encoder through the
bottleneck, and the gradient that reaches each encoder stage's pooling arrives there
through its own output.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..layers import BatchNorm2d, Conv2d, Dropout, MaxPool2d, MaxUnpool2d, ReLU
from ..module import Module, Sequential
from ..validation import check_feature_map
from .base import SegmentationModel


def _check_positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: expected {name} as a positive int, got {value!r}")
    return int(value)


def _check_dropout(owner: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{owner}: expected dropout as a probability with 0 <= p < 1, got {p!r}")
    return float(p)


def _generator(rng):
    """``None`` stays ``None`` (NumPy's global state); a seed or a Generator becomes a Generator."""
    return None if rng is None else np.random.default_rng(rng)


def _dropout_seed(rng) -> int | None:
    """A Dropout seed drawn from the model's generator (``None``: fresh entropy, as before)."""
    return None if rng is None else int(np.random.default_rng(rng).integers(2**31))


# -- building blocks -------------------------------------------------------------------
class ConvBNReLU(Module):
    """``conv k×k (stride 1, padding k//2) → BatchNorm2d → ReLU``; ``relu=False`` drops the ReLU.

    The padding keeps height and width (hence an odd ``kernel_size``).  The convolution
    keeps its bias although BatchNorm's shift makes it redundant: the Caffe models have
    it, and the published parameter counts include it.  The ReLU works in place on the
    BatchNorm output, which nothing else holds (BatchNorm keeps its own normalised input
    for backward), saving one feature map of memory per block.

    Backward: ``conv.backward(bn.backward(relu.backward(dy)))``.
    """

    summary_as_one_row = True  # SegmentationModel.summary shows the block as one layer

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, relu: bool = True, *, rng=None):
        super().__init__()
        kernel_size = _check_positive_int("ConvBNReLU", "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvBNReLU: 'same' padding needs an odd kernel_size, got {kernel_size}")
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, rng=rng)
        self.bn = BatchNorm2d(out_channels)
        self.relu = ReLU(inplace=True) if relu else None

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.relu(y) if self.relu is not None else y

    def backward(self, grad):
        if self.relu is not None:
            grad = self.relu.backward(grad)
        return self.conv.backward(self.bn.backward(grad))

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.conv.weight.shape
        return f"{in_c}→{out_c}, {kh}×{kw} conv → BN" + (" → ReLU" if self.relu is not None else "")


def _conv_stack(in_channels: int, out_channels: Sequence[int], kernel_size: int, relu: bool, rng=None) -> Sequential:
    blocks, channels = [], in_channels
    for c in out_channels:
        blocks.append(ConvBNReLU(channels, c, kernel_size, relu=relu, rng=rng))
        channels = c
    return Sequential(*blocks)


class EncoderStage(Module):
    """Convolutions, then 2×2 max pooling that remembers where each maximum was.

    ``forward(x) -> (y, indices, size)``: ``y`` is the pooled map (after dropout when the
    stage has one), ``indices`` the window-local positions of the maxima (uint8, same
    shape as ``y``) and ``size`` the ``(H, W)`` of the map before pooling.  ``indices``
    and ``size`` are what the matching :class:`DecoderStage` needs.  Pooling runs in ceil
    mode, so odd sizes lose nothing: 45×60 pools to 23×30 and unpools back to 45×60.

    ``dropout > 0`` adds ``Dropout(dropout)`` after the pooling, as Bayesian SegNet's
    ``encdrop`` layers do.

    Backward: ``convs.backward(pool.backward(dropout.backward(dy)))``.  Only ``y``
    has a gradient; the indices are integers and the size a pair of ints.
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int], kernel_size: int = 3, dropout: float = 0.0,
                 *, rng=None):
        super().__init__()
        self.convs = _conv_stack(in_channels, out_channels, kernel_size, relu=True, rng=rng)
        self.pool = MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.dropout = Dropout(dropout, seed=_dropout_seed(rng)) if dropout > 0 else None
        self.out_channels = int(out_channels[-1])

    def forward(self, x):
        features = self.convs(x)
        size = tuple(features.shape[-2:])
        y, indices = self.pool(features)
        if self.dropout is not None:
            y = self.dropout(y)
        return y, indices, size

    def backward(self, grad):
        if self.dropout is not None:
            grad = self.dropout.backward(grad)
        grad = self.pool.backward(grad)
        return self.convs.backward(grad)


class DecoderStage(Module):
    """Unpool with the encoder's indices to the encoder's size, then convolutions.

    ``forward(x, indices, size) -> y``: ``MaxUnpool2d`` writes each value of ``x`` back
    at the position its maximum came from in the encoder (zeros elsewhere), giving a
    sparse map of ``size``; the convolutions (conv → BN, with ReLU unless ``relu=False``)
    densify it.  ``dropout > 0`` adds ``Dropout(dropout)`` after the convolutions, as
    Bayesian SegNet's ``decdrop`` layers do (just before the next unpooling).

    Backward: ``unpool.backward(convs.backward(dropout.backward(dy)))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        kernel_size: int = 3,
        relu: bool = True,
        dropout: float = 0.0,
        *,
        rng=None,
    ):
        super().__init__()
        self.unpool = MaxUnpool2d(kernel_size=2, stride=2)
        self.convs = _conv_stack(in_channels, out_channels, kernel_size, relu=relu, rng=rng)
        self.dropout = Dropout(dropout, seed=_dropout_seed(rng)) if dropout > 0 else None
        self.out_channels = int(out_channels[-1])

    def forward(self, x, indices, size):
        y = self.convs(self.unpool(x, indices, size))
        if self.dropout is not None:
            y = self.dropout(y)
        return y

    def backward(self, grad):
        if self.dropout is not None:
            grad = self.dropout.backward(grad)
        grad = self.convs.backward(grad)
        return self.unpool.backward(grad)


class Stages(Module):
    """Named stages in the order they run (``stage1``, ``stage2``, ...); no forward of its own.

    The model runs them itself, because an encoder stage returns three things and a
    decoder stage takes three.
    """

    def __init__(self, stages: Sequence[tuple[str, Module]]):
        super().__init__()
        for name, stage in stages:
            setattr(self, name, stage)

    def __iter__(self):
        return iter(self._modules.values())

    def __reversed__(self):
        return reversed(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._modules[key]
        return list(self._modules.values())[key]


# -- the network -----------------------------------------------------------------------
class EncoderDecoder(SegmentationModel):
    """Encoder stages that hand pooling indices to mirrored decoder stages, then a classifier.

    ``encoder`` stages are named ``stage1 ... stageS`` (shallow to deep); ``decoder``
    stages are named after the encoder stage they mirror and listed in the order they
    run (``stageS ... stage1``): decoder ``stage4`` unpools with encoder ``stage4``'s
    indices.  Subclasses build the stages and the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, encoder, decoder, classifier: Module):
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.encoder = Stages([(f"stage{i}", s) for i, s in enumerate(encoder, start=1)])
        self.decoder = Stages([(f"stage{i}", s) for i, s in zip(range(len(decoder), 0, -1), decoder)])
        self.classifier = classifier

    def encode(self, x):
        """Run the encoder: ``(bottom, pool_indices)``, ``pool_indices[i] = (indices, size)`` of stage i+1."""
        check_feature_map(type(self).__name__, x, channels=self.in_channels)
        pool_indices = []
        for stage in self.encoder:
            x, indices, size = stage(x)
            pool_indices.append((indices, size))
        return x, pool_indices

    def decode(self, x, pool_indices):
        """Run the decoder, deepest stage first, each unpooling with its encoder stage's indices."""
        if len(pool_indices) != len(self.decoder):
            raise ValueError(
                f"{type(self).__name__}.decode: expected (indices, size) of {len(self.decoder)} encoder stages, "
                f"got {len(pool_indices)}"
            )
        for stage, (indices, size) in zip(self.decoder, reversed(pool_indices)):
            x = stage(x, indices, size)
        return self.classifier(x)

    def forward(self, x):
        """Logits (N, num_classes, H, W) for images (N, in_channels, H, W)."""
        bottom, pool_indices = self.encode(x)
        return self.decode(bottom, pool_indices)

    # backward: SegmentationModel's, the classifier, then the decoder and the encoder stages in reverse



# Channels of VGG16's 13 convolutions, stage by stage, and of SegNet's decoder, which
# mirrors them (listed in the order the decoder runs, deepest stage first).
VGG16_ENCODER = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
SEGNET_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


class SegNet(EncoderDecoder):
    """SegNet (Badrinarayanan et al., 2017), as in SegNet-Tutorial's ``segnet_train.prototxt``.

    Encoder: VGG16's 13 convolutions, 3×3 with padding 1, each conv → BN → ReLU, in five
    stages of 64,64 | 128,128 | 256,256,256 | 512,512,512 | 512,512,512 channels, each
    stage ending with ``MaxPool2d(2, 2, ceil_mode=True)`` that keeps its indices and the
    size before pooling.  Decoder: the mirror image; stage 5 unpools to the size stage 5
    had before pooling, then conv 512,512,512; stage 4: 512,512,256; stage 3:
    256,256,128; stage 2: 128,64; stage 1: 64; every decoder conv is conv → BN → ReLU.
    Classifier: a 3×3 conv to ``num_classes`` with no BN or ReLU (``conv1_1_D``).

    At 360×480 the maps are 360×480 → 180×240 → 90×120 → 45×60 → 23×30 → 12×15 and back.
    ``SegNet()`` has 29,449,355 parameters (with biases and BN scales/shifts; 11 classes).

    Parameters
    ----------
    in_channels, num_classes:
        Image channels and classes (CamVid: 3 and 11).
    width:
        Multiplies every hidden channel count (``max(1, round(c * width))``): 0.25 gives a
        network a CPU can train; 1.0 is the paper's.
    dropout:
        0 (SegNet).  ``p > 0`` adds ``Dropout(p)`` where Bayesian SegNet's
        ``bayesian_segnet_train.prototxt`` has it: after the pooling of encoder stages
        3, 4, 5 (``encdrop3..5``) and after the last conv → BN → ReLU of decoder stages
        5, 4, 3 (``decdrop5..3``, just before the next unpooling).  See
        :class:`~minisegnet.models.BayesianSegNet`.
    rng:
        keyword only: an int seed or a ``numpy.random.Generator`` from which every layer
        draws its initial weights (and each Dropout its seed), in construction order, so
        ``SegNet(rng=0)`` is reproducible without touching NumPy's global state.  ``None``
        draws from NumPy's global generator (``np.random.seed`` makes that reproducible).
    """

    arch = "segnet"
    #: Encoder stages (1-based) followed by dropout, and decoder stages followed by dropout.
    DROPOUT_ENCODER_STAGES = (3, 4, 5)
    DROPOUT_DECODER_STAGES = (5, 4, 3)

    def __init__(self, in_channels: int = 3, num_classes: int = 11, width: float = 1.0, dropout: float = 0.0,
                 *, rng=None):
        in_channels = _check_positive_int("SegNet", "in_channels", in_channels)
        num_classes = _check_positive_int("SegNet", "num_classes", num_classes)
        if isinstance(width, bool) or not isinstance(width, (int, float, np.floating, np.integer)) or not width > 0:
            raise ValueError(f"SegNet: expected width > 0, got {width!r}")
        dropout = _check_dropout("SegNet", dropout)
        rng = _generator(rng)

        def scaled(channels):
            return tuple(max(1, round(c * width)) for c in channels)

        encoder, channels = [], in_channels
        for stage, convs in enumerate(VGG16_ENCODER, start=1):
            p = dropout if stage in self.DROPOUT_ENCODER_STAGES else 0.0
            encoder.append(EncoderStage(channels, scaled(convs), kernel_size=3, dropout=p, rng=rng))
            channels = encoder[-1].out_channels
        decoder = []
        for stage, convs in zip(range(len(SEGNET_DECODER), 0, -1), SEGNET_DECODER):
            p = dropout if stage in self.DROPOUT_DECODER_STAGES else 0.0
            decoder.append(DecoderStage(channels, scaled(convs), kernel_size=3, relu=True, dropout=p, rng=rng))
            channels = decoder[-1].out_channels
        classifier = Conv2d(channels, num_classes, kernel_size=3, padding=1, rng=rng)
        super().__init__(in_channels, num_classes, encoder, decoder, classifier)
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": float(width),
            "dropout": dropout,
        }

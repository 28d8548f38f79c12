r"""The SegNet article's decoder variants: the same small encoder, other ways back to full size.

Section 3.1 of the SegNet article (Badrinarayanan et al., PAMI 2017) compares decoders on
one encoder, SegNet-Basic's (4 × [7×7 conv 64 → BN → ReLU → 2×2 max pool]), and Table 1
reports each variant's memory, speed and accuracy on CamVid.  Its argument is memory:
what must the encoder keep for the decoder during inference?  The variants here::

    SegNetBasic          unpool with the pooling indices → 7×7 conv 64 → BN     keeps: uint8 indices
    FCNBasic             upsample with a learnt ConvTranspose2d (bilinear-initialised),
                         + the encoder map, reduced to K channels by a 1×1 conv    keeps: K-channel maps
    FCNBasic(skips=None)            (FCN-Basic-NoAddition): no addition         keeps: nothing
    FCNBasic(reduce_skips=False)    (FCN-Basic-NoDimReduction): 64-channel maps keeps: 64-channel maps
    BilinearBasic        fixed bilinear upsampling → 7×7 conv 64 → BN           keeps: nothing

(``FCNBasicNoAddition`` and ``FCNBasicNoDimReduction`` are the two middle lines under
their own registry names, so that ``minisegnet train --model fcn-basic-noaddition`` works.)

``encode(x) -> (bottom, kept)`` and ``decode(bottom, kept) -> logits``: ``kept`` is the
list, one entry per decoder stage (shallowest first), of what that stage receives from
the encoder -- a tuple ``(skip, size)`` when it adds an encoder map, ``(size,)`` when it
only needs the size to undo ceil-mode pooling (23×30 → 45×60).  ``model.summary()``
measures the bytes of those arrays: that is the memory each decoder costs at inference.

What is measured here differs from the article's "storage multiplier" (SegNet-Basic 1,
FCN-Basic 11, FCN-Basic-NoDimReduction 64), which counts channels.  minisegnet stores a
SegNet index in one byte (uint8, window-local), not in the 2 bits the article assumes,
and a skip map in 4 (float32): at 360×480 SegNet-Basic keeps 3.67 MB of indices for four
stages, FCN-Basic 2.49 MB of 11-channel maps for three, FCN-Basic-NoDimReduction 14.5 MB.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..layers import Conv2d, ConvTranspose2d, Upsample
from ..module import Module, Sequential
from ..validation import check_feature_map, check_grad_shape, require_cache
from .base import SegmentationModel
from .segnet import ConvBNReLU, EncoderStage, Stages, _check_positive_int, _generator

__all__ = ["FCNBasic", "FCNBasicNoAddition", "FCNBasicNoDimReduction", "BilinearBasic", "FCNDecoderStage",
           "BilinearDecoderStage"]

NUM_STAGES = 4
SKIP_MODES = ("add", None)


def _check_odd_kernel(owner: str, kernel_size) -> int:
    kernel_size = _check_positive_int(owner, "kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"{owner}: 'same' padding needs an odd kernel_size, got {kernel_size}")
    return kernel_size


def _basic_encoder(in_channels: int, channels: int, kernel_size: int, rng) -> list[EncoderStage]:
    """SegNet-Basic's encoder: 4 × [conv k×k to ``channels`` → BN → ReLU → 2×2 max pool (ceil mode)]."""
    return [
        EncoderStage(in_channels if stage == 1 else channels, (channels,), kernel_size=kernel_size, rng=rng)
        for stage in range(1, NUM_STAGES + 1)
    ]


def _unpack(entry):
    """A ``kept`` entry -> ``(skip or None, size)``."""
    if len(entry) == 2:
        return entry[0], tuple(entry[1])
    return None, tuple(entry[0])


def _check_target(owner: str, x, size) -> None:
    """A decoder stage doubles the size, then crops: the target must be 2h - 1 or 2h (ceil-mode pooling's inverse)."""
    h, w = x.shape[-2:]
    if not (2 * h - 1 <= size[0] <= 2 * h and 2 * w - 1 <= size[1] <= 2 * w):
        raise ValueError(
            f"{owner}: expected a target size of {2 * h - 1} or {2 * h} by {2 * w - 1} or {2 * w} for an input of "
            f"{h}x{w} (the size before a 2×2 ceil-mode pooling), got {size[0]}x{size[1]}"
        )


class _BasicEncoderModel(SegmentationModel):
    """What the variants share: SegNet-Basic's encoder, ``forward = decode(*encode(x))``, the input layer."""

    def __init__(self, in_channels: int, num_classes: int, encoder):
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.encoder = Stages([(f"stage{i}", s) for i, s in enumerate(encoder, start=1)])

    def forward(self, x):
        """Logits (N, num_classes, H, W) for images (N, in_channels, H, W)."""
        bottom, kept = self.encode(x)
        return self.decode(bottom, kept)

    def _check_kept(self, kept) -> None:
        if len(kept) != len(self.encoder):
            raise ValueError(
                f"{type(self).__name__}.decode: expected what {len(self.encoder)} encoder stages kept, got {len(kept)}"
            )


# -- FCN ------------------------------------------------------------------------------------
class FCNDecoderStage(Module):
    """FCN's decoder step: upsample 2× with a learnt ``ConvTranspose2d``, crop to size, add the encoder map.

    ``forward(x, skip, size) -> y``: ``up(x)`` is exactly twice the size of ``x``; it is
    cropped to ``size`` (one row/column less when ceil-mode pooling rounded up, as FCN's
    ``Crop`` layer does) and ``skip`` (an encoder map of that size, or None) is added.
    The transposed convolution is ``channels → channels``, stride 2, no bias (FCN's
    ``upscore`` layers have none), initialised as bilinear interpolation; its padding makes
    the output 2h × 2w: ``k/2 - 1`` for an even kernel, ``(k - 1)/2`` plus
    ``output_padding=1`` for an odd one.

    Backward: ``y = crop(up(x)) + skip`` gives ``dskip = dy`` and ``dx = up.backward(pad(dy))``,
    ``pad`` putting zeros where the crop cut (the transpose of a crop).  Returns
    ``(dx, dskip)`` (``dskip`` None when nothing was added).
    """

    def __init__(self, channels: int, kernel_size: int = 8):
        super().__init__()
        kernel_size = _check_positive_int("FCNDecoderStage", "kernel_size", kernel_size)
        if kernel_size < 3:
            raise ValueError(
                f"FCNDecoderStage: a 2× bilinear upsampling needs a kernel of at least 3 taps, got {kernel_size}"
            )
        even = kernel_size % 2 == 0
        self.up = ConvTranspose2d(channels, channels, kernel_size, stride=2,
                                  padding=kernel_size // 2 - 1 if even else (kernel_size - 1) // 2,
                                  output_padding=0 if even else 1, bias=False, init="bilinear")
        self._full_shape = None  # shape of up(x) before the crop, for the backward
        self._output_shape = None  # shape after the crop
        self._added = None  # whether a skip was added in that forward

    def forward(self, x, skip, size):
        size = (int(size[0]), int(size[1]))
        _check_target("FCNDecoderStage", x, size)
        y = self.up(x)
        full_shape = tuple(y.shape)
        if full_shape[2:] != size:
            y = y[:, :, : size[0], : size[1]].copy()
        if skip is not None:
            if tuple(skip.shape) != tuple(y.shape):
                raise ValueError(
                    f"FCNDecoderStage: expected an encoder map of shape {tuple(y.shape)} to add, "
                    f"got {tuple(skip.shape)}"
                )
            y += skip
        if is_grad_enabled():
            self._full_shape, self._output_shape, self._added = full_shape, tuple(y.shape), skip is not None
        return y

    def backward(self, dy):
        full_shape = require_cache("FCNDecoderStage", self._full_shape)
        check_grad_shape("FCNDecoderStage", dy, self._output_shape)
        h, w = self._output_shape[2:]
        if full_shape[2:] != (h, w):  # the transpose of the crop: zeros where it cut
            padded = get_array_module(dy).zeros(full_shape, dtype=dy.dtype)
            padded[:, :, :h, :w] = dy
        else:
            padded = dy
        return self.up.backward(padded), (dy if self._added else None)


class FCNBasic(_BasicEncoderModel):
    r"""FCN-Basic: SegNet-Basic's encoder with FCN's decoder (SegNet article, Section 3.1, Table 1).

    ``FCNBasic(num_classes=11, channels=64, kernel_size=7, skips="add", reduce_skips=True,
    upsample_kernel_size=8, *, in_channels=3, rng=None)``::

        encoder   4 × [conv 7×7, 64 → BN → ReLU → max pool 2×2]     pool1 .. pool4
        bottom    score: 1×1 conv pool4 → K = num_classes            (reduce_skips)
        decoder   stage 4:  up 2× (ConvTranspose2d K → K)  + score(pool3)   H/8
                  stage 3:  up 2×                           + score(pool2)   H/4
                  stage 2:  up 2×                           + score(pool1)   H/2
                  stage 1:  up 2×                                            H    = the logits

    What the article describes, and what is chosen here:

    * **The decoder works on K channels.**  "The compressed K channel final encoder layer
      feature maps are the input to the decoder network"; each encoder map it adds is
      compressed the same way, by a 1×1 conv 64 → K; the upsampling kernels are K → K, and
      there are "no trainable decoder filters" besides them.  So the last upsampling gives
      the logits directly, with no classifier, as in FCN.
    * **What is added is the output of each max pooling** (the article's Fig. 3: "the
      output of the max-pooling layer ... in the corresponding encoder"; its memory example
      stores the first layer's maps at 180×240 for a 360×480 input).  pool1 .. pool3 are
      added at H/2, H/4, H/8; the last stage, at full resolution, has no pooled map to add.
    * **Upsampling kernels 8×8, stride 2, bilinear-initialised and learnt, without bias**
      (``upsample_kernel_size``).  8×8 reproduces the article's parameter counts best
      (Table 1: FCN-Basic 0.65 M, FCN-Basic-NoDimReduction 1.625 M; here 646,124 and
      1,661,579, where 7×7 kernels would give 638,864 and 1,415,819).
      An even kernel gives 2h × 2w; the map is then cropped to the encoder's size (FCN's
      crop), 46 → 45 where ceil-mode pooling rounded 45 up to 23.
    * No BatchNorm in the decoder (FCN has none).
    * ``skips=None`` (FCN-Basic-NoAddition): only the upsampling is learnt; no encoder map
      is kept, the 1×1 skip convs are not built.
    * ``reduce_skips=False`` (FCN-Basic-NoDimReduction): no compression at all; the bottom
      and the added pool maps keep their 64 channels, the upsampling kernels are
      64 → 64, and a 1×1 classifier 64 → K follows the last one.

    Parameter counts (11 classes, 64 channels, 7×7 encoder, 8×8 upsampling): encoder
    612,288 (convs 9,472 + 3 × 200,768, BN 512); ``FCNBasic()`` 646,124 (+ 4 score convs
    of 715, + 4 upsamplings of 11·11·64 = 7,744); ``FCNBasic(skips=None)`` 643,979 (one
    score conv); ``FCNBasic(reduce_skips=False)`` 1,661,579 (+ 4 × 64·64·64 = 262,144,
    + classifier 715).

    ``kept`` (see the module docstring): stage 1 ``((H, W),)``; stages 2-4
    ``(score(pool{i-1}), size)`` with skips, ``(size,)`` without.

    ``rng`` (keyword only): an int seed or a ``numpy.random.Generator`` for every
    initialisation, in construction order (None: NumPy's global state).  The upsampling
    kernels are bilinear, so they draw nothing.
    """

    arch = "fcn-basic"

    def __init__(self, num_classes: int = 11, channels: int = 64, kernel_size: int = 7, skips: str | None = "add",
                 reduce_skips: bool = True, upsample_kernel_size: int = 8, *, in_channels: int = 3, rng=None):
        owner = type(self).__name__
        in_channels = _check_positive_int(owner, "in_channels", in_channels)
        num_classes = _check_positive_int(owner, "num_classes", num_classes)
        channels = _check_positive_int(owner, "channels", channels)
        kernel_size = _check_odd_kernel(owner, kernel_size)
        upsample_kernel_size = _check_positive_int(owner, "upsample_kernel_size", upsample_kernel_size)
        if skips not in SKIP_MODES:
            raise ValueError(f"{owner}: expected skips as 'add' or None, got {skips!r}")
        if not isinstance(reduce_skips, (bool, np.bool_)):
            raise ValueError(f"{owner}: expected reduce_skips as True or False, got {reduce_skips!r}")
        reduce_skips = bool(reduce_skips)
        rng = _generator(rng)

        super().__init__(in_channels, num_classes, _basic_encoder(in_channels, channels, kernel_size, rng))
        self.skips, self.reduce_skips = skips, reduce_skips
        width = num_classes if reduce_skips else channels  # the decoder's channels
        self.score = Conv2d(channels, num_classes, kernel_size=1, rng=rng) if reduce_skips else None  # pool4 → K
        self.score_skips = None
        if skips == "add" and reduce_skips:  # score(pool1) .. score(pool3), for decoder stages 2 .. 4
            self.score_skips = Stages([(f"pool{i}", Conv2d(channels, num_classes, kernel_size=1, rng=rng))
                                       for i in range(1, NUM_STAGES)])
        self.decoder = Stages([(f"stage{i}", FCNDecoderStage(width, upsample_kernel_size))
                               for i in range(NUM_STAGES, 0, -1)])
        self.classifier = None if reduce_skips else Conv2d(channels, num_classes, kernel_size=1, rng=rng)
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "channels": channels,
            "kernel_size": kernel_size,
            "skips": skips,
            "reduce_skips": reduce_skips,
            "upsample_kernel_size": upsample_kernel_size,
        }

    def encode(self, x):
        """``(bottom, kept)``: the (scored) pool4 map and, per stage, what its decoder stage receives."""
        check_feature_map(type(self).__name__, x, channels=self.in_channels)
        kept = []
        for i, stage in enumerate(self.encoder, start=1):
            size = tuple(int(s) for s in x.shape[-2:])
            if i == 1 or self.skips is None:  # the image is no encoder map: nothing to add at full size
                kept.append((size,))
            else:  # x is pool{i-1}, the map decoder stage i adds
                skip = self.score_skips[f"pool{i - 1}"](x) if self.reduce_skips else x
                kept.append((skip, size))
            x, _, _ = stage(x)
        bottom = self.score(x) if self.reduce_skips else x
        return bottom, kept

    def decode(self, bottom, kept):
        """Upsample, crop, add: deepest stage first, each with the entry its encoder stage kept."""
        self._check_kept(kept)
        y = bottom
        for stage, entry in zip(self.decoder, reversed(kept)):
            skip, size = _unpack(entry)
            y = stage(y, skip, size)
        return y if self.classifier is None else self.classifier(y)

    def backward(self, dlogits, *, input_grad: bool = False, release: bool = True):
        """Add every parameter's gradient into ``.grad``; return ``dL/dx`` only when ``input_grad``.

        The decoder in reverse (stage 1 first), each stage returning the gradient of its
        input and of the map it added; then the encoder in reverse, where the gradient of
        pool{i-1} is the sum of what comes back through encoder stage i and through the
        skip (and its 1×1 conv) that decoder stage i added.  ``release`` as in
        :meth:`SegmentationModel.backward`: each layer lets go of its cache once its backward is done.
        """
        self.input_layer.needs_input_grad = bool(input_grad)
        with self._releasing(release):
            grad = dlogits if self.classifier is None else self.classifier.backward(dlogits)
            skip_grads = {}
            for i in range(1, NUM_STAGES + 1):
                grad, dskip = self.decoder[f"stage{i}"].backward(grad)
                if dskip is not None:
                    skip_grads[i] = dskip
            if self.score is not None:
                grad = self.score.backward(grad)
            for i in range(NUM_STAGES, 0, -1):
                grad = self.encoder[f"stage{i}"].backward(grad)
                if i in skip_grads:  # pool{i-1} also fed decoder stage i
                    dskip = skip_grads[i]
                    if self.score_skips is not None:
                        dskip = self.score_skips[f"pool{i - 1}"].backward(dskip)
                    grad = grad + dskip
        return grad if input_grad else None


class FCNBasicNoAddition(FCNBasic):
    """FCN-Basic-NoAddition: :class:`FCNBasic` with ``skips=None`` (learnt upsampling only; nothing kept).

    643,979 parameters with the defaults.  Its own registry name, so that a training run
    can ask for it by name; ``config`` leaves out the fixed arguments.
    """

    arch = "fcn-basic-noaddition"

    def __init__(self, num_classes: int = 11, channels: int = 64, kernel_size: int = 7, upsample_kernel_size: int = 8,
                 *, in_channels: int = 3, rng=None):
        super().__init__(num_classes, channels, kernel_size, skips=None, reduce_skips=True,
                         upsample_kernel_size=upsample_kernel_size, in_channels=in_channels, rng=rng)
        del self.config["skips"], self.config["reduce_skips"]


class FCNBasicNoDimReduction(FCNBasic):
    """FCN-Basic-NoDimReduction: :class:`FCNBasic` with ``reduce_skips=False`` (64-channel decoder and skips).

    1,661,579 parameters with the defaults.  Its own registry name, as for
    :class:`FCNBasicNoAddition`.
    """

    arch = "fcn-basic-nodimreduction"

    def __init__(self, num_classes: int = 11, channels: int = 64, kernel_size: int = 7, upsample_kernel_size: int = 8,
                 *, in_channels: int = 3, rng=None):
        super().__init__(num_classes, channels, kernel_size, skips="add", reduce_skips=False,
                         upsample_kernel_size=upsample_kernel_size, in_channels=in_channels, rng=rng)
        del self.config["skips"], self.config["reduce_skips"]


# -- bilinear ---------------------------------------------------------------------------------
class BilinearDecoderStage(Module):
    """Fixed bilinear upsampling to the encoder's size, then conv k×k → BN (no ReLU, as SegNet-Basic's decoder).

    ``forward(x, size) -> y``; backward: ``up.backward(convs.backward(dy))``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, *, rng=None):
        super().__init__()
        self.up = Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.convs = Sequential(ConvBNReLU(channels, channels, kernel_size, relu=False, rng=rng))

    def forward(self, x, size):
        size = (int(size[0]), int(size[1]))
        _check_target("BilinearDecoderStage", x, size)
        return self.convs(self.up(x, output_size=size))

    def backward(self, grad):
        return self.up.backward(self.convs.backward(grad))


class BilinearBasic(_BasicEncoderModel):
    r"""SegNet-Basic with the unpooling replaced by fixed bilinear interpolation: no indices, nothing kept.

    ``BilinearBasic(num_classes=11, channels=64, kernel_size=7, *, in_channels=3, rng=None)``::

        encoder     4 × [conv 7×7, 64 → BN → ReLU → max pool 2×2]
        decoder     4 × [bilinear upsampling to the encoder's size → conv 7×7, 64 → BN]
        classifier  conv 1×1 → num_classes

    The decoder receives only the sizes to upsample to (``kept`` = ``[((H, W),), ...]``),
    so it keeps no array: the cheapest decoder in memory, against which the value of
    SegNet's indices can be seen.  The interpolation is ``F.interpolate(x, size,
    mode="bilinear", align_corners=False)`` (:class:`~minisegnet.layers.Upsample`).

    1,416,587 parameters with the defaults, exactly SegNet-Basic's (the interpolation has
    none).  The article's Bilinear-Interpolation variant reports 0.625 M, which suggests
    that it drops the decoder convolutions too (FCN-Basic with fixed kernels); this class
    keeps them, so that it differs from SegNet-Basic in the upsampling alone.
    """

    arch = "bilinear-basic"

    def __init__(self, num_classes: int = 11, channels: int = 64, kernel_size: int = 7, *, in_channels: int = 3,
                 rng=None):
        owner = type(self).__name__
        in_channels = _check_positive_int(owner, "in_channels", in_channels)
        num_classes = _check_positive_int(owner, "num_classes", num_classes)
        channels = _check_positive_int(owner, "channels", channels)
        kernel_size = _check_odd_kernel(owner, kernel_size)
        rng = _generator(rng)
        super().__init__(in_channels, num_classes, _basic_encoder(in_channels, channels, kernel_size, rng))
        self.decoder = Stages([(f"stage{i}", BilinearDecoderStage(channels, kernel_size, rng=rng))
                               for i in range(NUM_STAGES, 0, -1)])
        self.classifier = Conv2d(channels, num_classes, kernel_size=1, rng=rng)
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "channels": channels,
            "kernel_size": kernel_size,
        }

    def encode(self, x):
        """``(bottom, kept)``: the pool4 map and, per stage, the size its decoder stage upsamples to."""
        check_feature_map(type(self).__name__, x, channels=self.in_channels)
        kept = []
        for stage in self.encoder:
            kept.append((tuple(int(s) for s in x.shape[-2:]),))
            x, _, _ = stage(x)
        return x, kept

    def decode(self, bottom, kept):
        self._check_kept(kept)
        y = bottom
        for stage, entry in zip(self.decoder, reversed(kept)):
            _, size = _unpack(entry)
            y = stage(y, size)
        return self.classifier(y)

    # backward: SegmentationModel's, the classifier, the decoder and the encoder in reverse

"""SegNet-Basic: the small SegNet of the CamVid tutorial (``segnet_basic_train.prototxt``).

Four encoder stages of one 7×7 convolution each, four mirrored decoder stages, no
pretrained encoder: the network the SegNet article uses to compare decoder variants,
small enough (1.42 M parameters) to train on CamVid from scratch::

    encoder  4 × [conv 7×7, 64 → BN → ReLU → max pool 2×2 (keep indices, size)]
    decoder  4 × [unpool (indices, size) → conv 7×7, 64 → BN]        (no ReLU)
    classifier  conv 1×1 → num_classes

It is built from the same :class:`~minisegnet.models.segnet.EncoderStage` and
:class:`~minisegnet.models.segnet.DecoderStage` as SegNet and shares its ``forward`` and
``backward`` (:class:`~minisegnet.models.segnet.EncoderDecoder`).
"""
from __future__ import annotations

from ..layers import Conv2d
from .segnet import DecoderStage, EncoderDecoder, EncoderStage, _check_dropout, _check_positive_int, _generator


class SegNetBasic(EncoderDecoder):
    """SegNet-Basic, as in SegNet-Tutorial's ``segnet_basic_train.prototxt``.

    Encoder: 4 × [conv ``kernel_size``×``kernel_size`` to ``channels`` → BN → ReLU →
    ``MaxPool2d(2, 2, ceil_mode=True)`` keeping indices and size].  Decoder: 4 × [unpool
    to the stored size → conv to ``channels`` → BN], with **no ReLU** in the decoder, as
    in the prototxt.  Classifier: a 1×1 conv to ``num_classes``.  ``SegNetBasic()`` has
    1,416,587 parameters (11 classes).

    The Caffe model also applies local response normalisation (LRN) to the input image.
    Here input normalisation is the data pipeline's job (``minisegnet.data.transforms``),
    so the network starts with the first convolution.

    ``dropout=p > 0`` adds ``Dropout(p)`` where ``bayesian_segnet_basic_train.prototxt``
    has it: after the pooling of encoder stages 3 and 4 (``encdrop3``, ``encdrop4``) and
    after the conv → BN of decoder stages 4 and 3 (``decdrop4``, ``decdrop3``, just before
    the next unpooling).  See :class:`~minisegnet.models.BayesianSegNetBasic`.

    ``rng`` (keyword only): an int seed or a ``numpy.random.Generator`` for every layer's
    initialisation, as in :class:`~minisegnet.models.SegNet`.
    """

    arch = "segnet-basic"
    NUM_STAGES = 4
    DROPOUT_ENCODER_STAGES = (3, 4)
    DROPOUT_DECODER_STAGES = (4, 3)

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 11,
        channels: int = 64,
        kernel_size: int = 7,
        dropout: float = 0.0,
        *,
        rng=None,
    ):
        in_channels = _check_positive_int("SegNetBasic", "in_channels", in_channels)
        num_classes = _check_positive_int("SegNetBasic", "num_classes", num_classes)
        channels = _check_positive_int("SegNetBasic", "channels", channels)
        kernel_size = _check_positive_int("SegNetBasic", "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"SegNetBasic: 'same' padding needs an odd kernel_size, got {kernel_size}")
        dropout = _check_dropout("SegNetBasic", dropout)
        rng = _generator(rng)

        stages = range(1, self.NUM_STAGES + 1)
        encoder = [
            EncoderStage(
                in_channels if stage == 1 else channels,
                (channels,),
                kernel_size=kernel_size,
                dropout=dropout if stage in self.DROPOUT_ENCODER_STAGES else 0.0,
                rng=rng,
            )
            for stage in stages
        ]
        decoder = [
            DecoderStage(
                channels,
                (channels,),
                kernel_size=kernel_size,
                relu=False,
                dropout=dropout if stage in self.DROPOUT_DECODER_STAGES else 0.0,
                rng=rng,
            )
            for stage in reversed(stages)
        ]
        classifier = Conv2d(channels, num_classes, kernel_size=1, rng=rng)
        super().__init__(in_channels, num_classes, encoder, decoder, classifier)
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "channels": channels,
            "kernel_size": kernel_size,
            "dropout": dropout,
        }

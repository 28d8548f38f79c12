"""The networks: SegNet, SegNet-Basic and their Bayesian (Monte-Carlo dropout) variants.

``MODELS`` maps each architecture's name to its class; ``build_model(arch, **config)``
builds one by name, which is how checkpoints rebuild the network they were saved from
(``build_model(model.arch, **model.config)``).
"""
from __future__ import annotations

import inspect

from .base import SegmentationModel, softmax
from .bayesian import BayesianSegNet, BayesianSegNetBasic
from .decoder_variants import BilinearBasic, FCNBasic, FCNBasicNoAddition, FCNBasicNoDimReduction
from .segnet import ConvBNReLU, DecoderStage, EncoderDecoder, EncoderStage, SegNet, Stages
from .segnet_basic import SegNetBasic

MODELS = {
    "segnet": SegNet,
    "segnet-basic": SegNetBasic,
    "bayesian-segnet": BayesianSegNet,
    "bayesian-segnet-basic": BayesianSegNetBasic,
    "fcn-basic": FCNBasic,
    "fcn-basic-noaddition": FCNBasicNoAddition,
    "fcn-basic-nodimreduction": FCNBasicNoDimReduction,
    "bilinear-basic": BilinearBasic,
}


def build_model(arch: str, **config) -> SegmentationModel:
    """The model registered as ``arch``, built with ``config`` as keyword arguments.

    Raises ``ValueError`` naming the known architectures for an unknown name, and
    ``TypeError`` naming the accepted arguments for an unknown keyword.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; known architectures: {', '.join(MODELS)}")
    cls = MODELS[arch]
    accepted = list(inspect.signature(cls.__init__).parameters)[1:]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise TypeError(
            f"build_model: {arch!r} ({cls.__name__}) does not take {', '.join(unknown)}; "
            f"it accepts {', '.join(accepted)}"
        )
    return cls(**config)


__all__ = [
    "MODELS",
    "build_model",
    "SegmentationModel",
    "softmax",
    "SegNet",
    "SegNetBasic",
    "BayesianSegNet",
    "BayesianSegNetBasic",
    "FCNBasic",
    "FCNBasicNoAddition",
    "FCNBasicNoDimReduction",
    "BilinearBasic",
    "EncoderDecoder",
    "EncoderStage",
    "DecoderStage",
    "ConvBNReLU",
    "Stages",
]

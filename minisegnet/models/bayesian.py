"""Bayesian SegNet: dropout kept on at test time, and the spread of the answers as uncertainty.

Kendall, Badrinarayanan & Cipolla, *Bayesian SegNet: Model Uncertainty in Deep
Convolutional Encoder-Decoder Architectures for Scene Understanding* (BMVC 2017).

Training with dropout and *sampling* with dropout at test time approximates Bayesian
inference over the weights (Gal & Ghahramani, 2016).  Each stochastic forward is one
sample of a plausible network; averaging the softmax of ``T`` samples gives a better
prediction than a single deterministic forward, and the variance of the samples shows
where the model is unsure (object boundaries, rare classes, unfamiliar scenes).

The networks here are SegNet and SegNet-Basic with ``dropout=0.5`` placed as in
SegNet-Tutorial's Bayesian prototxts (Bayesian SegNet's "central encoder-decoder"
variant: dropout only in the deeper, more abstract stages):

``BayesianSegNet``
    after the pooling of encoder stages 3, 4, 5 and after decoder stages 5, 4, 3
    (``bayesian_segnet_train.prototxt``: ``encdrop3..5``, ``decdrop5..3``).
``BayesianSegNetBasic``
    after the pooling of encoder stages 3, 4 and after decoder stages 4, 3
    (``bayesian_segnet_basic_train.prototxt``: ``encdrop3..4``, ``decdrop4..3``).

Sampling is :meth:`~minisegnet.models.base.SegmentationModel.predict_mc`::

    model = BayesianSegNet(width=0.25)
    mean_probs, uncertainty = model.predict_mc(images, samples=8)
    labels = mean_probs.argmax(axis=1)

It runs eval-mode forwards (BatchNorm uses its running statistics) with the Dropout
layers switched on through ``model.set_mc_dropout(True)``, and restores every flag
afterwards.  ``uncertainty`` is the per-class variance of the sampled softmax averaged
over classes, the map SegNet-Tutorial's ``test_bayesian_segnet.py`` displays.
"""
from __future__ import annotations

from .segnet import SegNet
from .segnet_basic import SegNetBasic


class BayesianSegNet(SegNet):
    """SegNet with ``Dropout(0.5)`` after encoder stages 3-5 and decoder stages 5-3."""

    arch = "bayesian-segnet"

    def __init__(self, in_channels: int = 3, num_classes: int = 11, width: float = 1.0, dropout: float = 0.5,
                 *, rng=None):
        super().__init__(in_channels=in_channels, num_classes=num_classes, width=width, dropout=dropout, rng=rng)


class BayesianSegNetBasic(SegNetBasic):
    """SegNet-Basic with ``Dropout(0.5)`` after encoder stages 3-4 and decoder stages 4-3."""

    arch = "bayesian-segnet-basic"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 11,
        channels: int = 64,
        kernel_size: int = 7,
        dropout: float = 0.5,
        *,
        rng=None,
    ):
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            channels=channels,
            kernel_size=kernel_size,
            dropout=dropout,
            rng=rng,
        )

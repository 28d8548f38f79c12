"""A SegNet stage end to end: conv → BN → ReLU → pool → unpool → conv → loss, checked by finite differences.

Each layer has its own gradient check; this one checks that they compose: that the
gradient each backward returns is what the layer before it expects, that the pooling
indices travel from the encoder half to the decoder half, and that odd sizes survive
the round trip (5×7 pools to 3×4 and unpools back to 5×7).

The network's only output is the loss, a scalar, so the "random upstream gradient" of
:func:`minisegnet.gradcheck.gradcheck` is a single random number ``g`` that seeds the
backward (``loss.backward(g)``); every input pixel and every parameter is then checked.

Kinks.  ReLU (at 0) and max pooling (at a tie) are not differentiable; a finite
difference that straddles a kink disagrees with the analytic gradient.  With ``eps =
1e-6`` a perturbation moves any activation by at most ~1e-5 here, so the check is
exact as long as every ReLU input is at least that far from 0 and the two largest
values of every pooling window differ by more than that.  Random float64 data puts the
nearest kink around 1e-3 away; :func:`kink_margins` measures it and the test asserts a
margin of 1e-4, so an unlucky draw fails loudly instead of flakily.  (Zeros produced by
ReLU tie with each other inside a pooling window, but harmlessly: their upstream
gradient is 0 whichever zero wins.)
"""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet import BatchNorm2d, Conv2d, MaxPool2d, MaxUnpool2d, Module, ReLU, SoftmaxCrossEntropy
from minisegnet.gradcheck import gradcheck, gradcheck_directional

NUM_CLASSES = 4
IGNORE = 255


class TinySegNet(Module):
    """One encoder stage and one decoder stage, as in SegNet, then a per-pixel classifier."""

    def __init__(self, in_channels=2, channels=3, num_classes=NUM_CLASSES):
        super().__init__()
        # seeded weights: the kink margins checked below are then the same in every run
        self.conv1 = Conv2d(in_channels, channels, 3, padding=1, rng=0)
        self.bn1 = BatchNorm2d(channels)
        self.relu1 = ReLU()
        self.pool = MaxPool2d(2, 2, ceil_mode=True)
        self.unpool = MaxUnpool2d(2, 2)
        self.conv2 = Conv2d(channels, num_classes, 3, padding=1, rng=1)
        self.loss = SoftmaxCrossEntropy(weight=np.linspace(0.5, 2.0, num_classes), ignore_index=IGNORE)

    def forward(self, x, labels):
        h = self.relu1(self.bn1(self.conv1(x)))
        p, indices = self.pool(h)
        u = self.unpool(p, indices, h.shape)  # the indices travel from encoder to decoder
        return np.asarray(self.loss(self.conv2(u), labels))

    def backward(self, g):
        du = self.conv2.backward(self.loss.backward(g))
        dh = self.pool.backward(self.unpool.backward(du))
        return self.conv1.backward(self.bn1.backward(self.relu1.backward(dh))), None  # labels: no gradient


def kink_margins(net, x):
    """Distance of the nearest ReLU input to 0 and the smallest top-2 gap among positive pooling windows."""
    pre_relu = net.bn1(net.conv1(x))
    h = np.maximum(pre_relu, 0)
    n, c, height, width = h.shape
    padded = np.full((n, c, height + height % 2, width + width % 2), -np.inf)
    padded[:, :, :height, :width] = h
    windows = padded.reshape(n, c, padded.shape[2] // 2, 2, padded.shape[3] // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = np.sort(windows.reshape(n, c, windows.shape[2], windows.shape[3], 4), axis=-1)
    top, second = windows[..., -1], windows[..., -2]
    positive = top > 0
    return float(np.abs(pre_relu).min()), float((top - second)[positive].min())


def make_problem(seed, mode):
    rng = np.random.default_rng(seed)
    net = TinySegNet().double()
    # Non-trivial BN affine parameters and biases (the defaults 1 and 0 would hide mistakes).
    net.bn1.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    net.bn1.bias.data[...] = 0.5 * rng.standard_normal(3)
    net.conv1.bias.data[...] = rng.standard_normal(3)
    net.conv2.bias.data[...] = rng.standard_normal(NUM_CLASSES)
    if mode == "eval":  # BatchNorm with (made-up) running statistics, gradients still kept
        net.bn1.running_mean[...] = rng.standard_normal(3)
        net.bn1.running_var[...] = rng.uniform(0.5, 2.0, 3)
        net.eval()
    x = rng.standard_normal((2, 2, 5, 7))  # batch 2, odd height and width
    labels = rng.integers(0, NUM_CLASSES, (2, 5, 7)).astype(np.int64)
    labels[0, 0, :3] = IGNORE  # a few ignored pixels
    return net, x, labels


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stack_gradcheck_every_input_and_parameter(mode):
    net, x, labels = make_problem(seed=3, mode=mode)
    relu_margin, pool_margin = kink_margins(net, x)
    assert relu_margin > 1e-4 and pool_margin > 1e-4, (relu_margin, pool_margin)
    # In training mode conv1's bias feeds BatchNorm, whose batch mean removes it: its gradient is exactly 0.
    reports = gradcheck(net.forward, net.backward, [x, labels], net, allow_zero=["conv1.bias"] if mode == "train" else ())
    checked = {r.name: r.checked for r in reports}
    assert checked["input[0]"] == x.size
    assert set(checked) == {"input[0]"} | {name for name, _ in net.named_parameters()}
    if mode == "train":  # BN in training mode couples the whole batch: still exact
        assert net.bn1.training


def test_stack_directional_check_in_float64():
    net, x, labels = make_problem(seed=5, mode="train")
    assert min(kink_margins(net, x)) > 1e-4
    results = gradcheck_directional(net.forward, net.backward, [x, labels], net, directions=4)
    assert len(results) == 4

"""What each benchmark row runs, on our side and on PyTorch's, on identical arrays.

Every case builds both sides from the same NumPy arrays (same weights, same input, same
upstream gradient), each on its own device, and returns them as :class:`~.timing.Side`
objects whose phases run exactly what a training step runs for that layer:

conv   ``fwd``: the training forward (it keeps the padded input for the backward);
       ``bwd``: dL/dW, dL/db and, unless the layer is a model's first (``needs_input_grad``
       False, as ``model.backward`` sets it), dL/dx.  PyTorch's input tensor requires a
       gradient exactly when ours computes one.
norm   BatchNorm2d in training mode (batch statistics), then an in-place ReLU where the
       model's block has one; backward through both.
pool   max pooling that returns its indices, then the unpooling to the pre-pool size
       (what an encoder stage and its decoder stage do to a map); backward through both.
step   ``zero_grad``, forward, class-weighted softmax cross-entropy (void ignored),
       backward through the network, optimizer step.
eval   an eval-mode forward, ours inside ``minisegnet.no_grad()``, PyTorch's inside
       ``torch.no_grad()``.

The PyTorch peer of a whole model is ``torch_twin`` of ``benchmarks/bench_training_step.py``
(our module tree mirrored in ``torch.nn`` with our weights copied in), with its ReLUs made
in-place as ours are and as torchvision's VGG has them, so that PyTorch's memory is not
overstated.  :func:`peer_difference` checks on one image that the twin computes what our
model computes before anything is timed.
"""
from __future__ import annotations

import numpy as np

from minisegnet.grad_mode import no_grad
from minisegnet.layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU, SoftmaxCrossEntropy
from minisegnet.models import build_model
from minisegnet.optim import SGD, Adam

from .shapes import ConvShape, NormShape, PoolShape, unpool_for
from .timing import Side

NUM_CLASSES = 11  # CamVid's classes; label 11 is "void", ignored by the loss
VOID = 11
OPTIMIZERS = ("sgd", "adam")


# -- devices ---------------------------------------------------------------------------------
class OurDevice:
    """Where our side runs: NumPy on the CPU or CuPy on the GPU."""

    def __init__(self, name: str, cupy=None):
        self.name = name
        self.cupy = cupy
        self.xp = cupy if name == "cuda" else np

    def array(self, host):
        return self.xp.asarray(host)

    def module(self, module):
        return module.to(self.name) if self.name == "cuda" else module

    def sync(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()


class TorchDevice:
    """Where PyTorch runs: ``"cpu"`` or ``"cuda"``."""

    def __init__(self, torch, name: str):
        self.torch = torch
        self.name = name

    def tensor(self, host, requires_grad: bool = False):
        t = self.torch.from_numpy(np.ascontiguousarray(host)).to(self.name)
        return t.requires_grad_(True) if requires_grad else t

    def sync(self) -> None:
        if self.name == "cuda":
            self.torch.cuda.synchronize()


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


# -- layers ----------------------------------------------------------------------------------
def conv_sides(shape: ConvShape, ours: OurDevice, peer: TorchDevice | None, seed: int = 0):
    """The sides of one convolution row, and a function describing ours after the timing."""
    rng = np.random.default_rng(seed)
    ho, wo = shape.output_hw
    x = _normal(rng, shape.input_shape)
    dy = _normal(rng, (shape.batch, shape.out_channels, ho, wo))
    conv = Conv2d(shape.in_channels, shape.out_channels, shape.kernel, stride=shape.stride, padding=shape.padding,
                  bias=shape.bias, rng=seed, needs_input_grad=shape.needs_input_grad)
    host_weight = conv.weight.data.copy()
    host_bias = None if conv.bias is None else conv.bias.data.copy()
    ours.module(conv)
    x_d, dy_d = ours.array(x), ours.array(dy)

    def forward():
        conv.zero_grad()
        conv.forward(x_d)

    def backward():
        conv.backward(dy_d)

    sides = [Side("ours", {"fwd": forward, "bwd": backward}, ours.sync)]
    if peer is not None:
        torch = peer.torch
        tconv = torch.nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, stride=shape.stride,
                                padding=shape.padding, bias=shape.bias)
        with torch.no_grad():
            tconv.weight.copy_(torch.from_numpy(host_weight))
            if host_bias is not None:
                tconv.bias.copy_(torch.from_numpy(host_bias))
        tconv.to(peer.name)
        tx = peer.tensor(x, requires_grad=shape.needs_input_grad)
        tdy = peer.tensor(dy)
        graph = {}

        def tforward():
            tx.grad = None
            tconv.zero_grad(set_to_none=True)
            graph["y"] = tconv(tx)

        def tbackward():
            graph.pop("y").backward(tdy)

        sides.append(Side("torch", {"fwd": tforward, "bwd": tbackward}, peer.sync, after_repeat=graph.clear))

    def describe() -> dict:
        return {"algorithm": conv.algorithm_for(tuple(shape.input_shape)), "out_channels": shape.out_channels,
                "kernel": list(shape.kernel), "stride": list(shape.stride), "padding": list(shape.padding),
                "needs_input_grad": shape.needs_input_grad}

    return sides, describe


def norm_sides(shape: NormShape, ours: OurDevice, peer: TorchDevice | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = _normal(rng, shape.input_shape)
    dy = _normal(rng, shape.input_shape)
    bn = ours.module(BatchNorm2d(shape.channels, eps=shape.eps, momentum=shape.momentum))
    relu = ReLU(inplace=True) if shape.relu else None
    x_d, dy_d = ours.array(x), ours.array(dy)

    def forward():
        bn.zero_grad()
        y = bn(x_d)
        if relu is not None:
            relu(y)

    def backward():
        grad = relu.backward(dy_d) if relu is not None else dy_d
        bn.backward(grad)

    sides = [Side("ours", {"fwd": forward, "bwd": backward}, ours.sync)]
    if peer is not None:
        torch = peer.torch
        tbn = torch.nn.BatchNorm2d(shape.channels, eps=shape.eps, momentum=shape.momentum).to(peer.name).train()
        tx = peer.tensor(x, requires_grad=True)
        tdy = peer.tensor(dy)
        graph = {}

        def tforward():
            tx.grad = None
            tbn.zero_grad(set_to_none=True)
            y = tbn(tx)
            graph["y"] = torch.relu_(y) if shape.relu else y

        def tbackward():
            graph.pop("y").backward(tdy)

        sides.append(Side("torch", {"fwd": tforward, "bwd": tbackward}, peer.sync, after_repeat=graph.clear))
    return sides, dict


def pool_sides(shape: PoolShape, ours: OurDevice, peer: TorchDevice | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = _normal(rng, shape.input_shape)  # continuous values: no ties
    dz = _normal(rng, shape.input_shape)
    size = (shape.height, shape.width)
    options = {"pack_indices": True} if shape.pack_indices else {}
    pool = MaxPool2d(shape.kernel, shape.stride, ceil_mode=shape.ceil_mode, **options)
    unpool = unpool_for(shape)
    x_d, dz_d = ours.array(x), ours.array(dz)

    def forward():
        y, indices = pool(x_d)
        unpool(y, indices, size)

    def backward():
        pool.backward(unpool.backward(dz_d))

    sides = [Side("ours", {"fwd": forward, "bwd": backward}, ours.sync)]
    if peer is not None:
        torch = peer.torch
        tpool = torch.nn.MaxPool2d(shape.kernel, shape.stride, ceil_mode=shape.ceil_mode, return_indices=True)
        tunpool = torch.nn.MaxUnpool2d(shape.kernel, shape.stride)
        tx = peer.tensor(x, requires_grad=True)
        tdz = peer.tensor(dz)
        graph = {}

        def tforward():
            tx.grad = None
            y, indices = tpool(tx)
            graph["z"] = tunpool(y, indices, output_size=size)

        def tbackward():
            graph.pop("z").backward(tdz)

        sides.append(Side("torch", {"fwd": tforward, "bwd": tbackward}, peer.sync, after_repeat=graph.clear))
    return sides, dict


# -- whole models ----------------------------------------------------------------------------
def model_config(arch: str, segnet_width: float) -> dict:
    return {"width": segnet_width} if arch == "segnet" else {}


def make_inputs(batch: int, height: int, width: int, seed: int = 0):
    """Images, labels (with void pixels) and class weights, the same for both sides."""
    rng = np.random.default_rng(seed)
    images = _normal(rng, (batch, 3, height, width))
    labels = rng.integers(0, NUM_CLASSES + 1, size=(batch, height, width)).astype(np.int64)
    class_weights = rng.uniform(0.2, 5.0, size=NUM_CLASSES).astype(np.float32)
    return images, labels, class_weights


def torch_peer_model(torch, model):
    """``torch_twin`` of bench_training_step.py, with in-place ReLUs (ours work in place too)."""
    from benchmarks.bench_training_step import torch_twin

    twin = torch_twin(torch, model)
    for module in twin.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = True
    return twin


def peer_difference(model, twin, torch, images) -> float:
    """max |ours - theirs| / max |theirs| of the eval logits on one image (both on the CPU)."""
    model.eval()
    twin.eval()
    try:
        with no_grad():
            ours = np.asarray(model(images[:1]))
        with torch.no_grad():
            theirs = twin(torch.from_numpy(images[:1])).numpy()
    finally:
        model.train()
        twin.train()
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


class ModelCase:
    """One model on both sides, ready for :meth:`step_sides` and :meth:`eval_sides`.

    ``sides`` says which sides to build ("ours", "torch"): the memory probe builds one only.
    """

    def __init__(self, arch: str, config: dict, batch: int, height: int, width: int, ours: OurDevice,
                 peer: TorchDevice | None, optimizer: str = "sgd", sides=("ours", "torch"), check_peer: bool = True):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"benchmarks: unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        self.arch, self.optimizer_name = arch, optimizer
        self.ours, self.peer = ours, peer if "torch" in sides else None
        images, labels, class_weights = make_inputs(batch, height, width)
        model = build_model(arch, **config, rng=0)
        model.train()
        self.parameters = model.num_parameters()
        self.peer_difference = None
        self.model = self.twin = None
        if self.peer is not None:
            torch = self.peer.torch
            twin = torch_peer_model(torch, model)
            if check_peer:
                self.peer_difference = peer_difference(model, twin, torch, images)
            self.twin = twin.to(self.peer.name).train()
            self.t_images = self.peer.tensor(images)
            self.t_labels = self.peer.tensor(labels)
            self.t_criterion = torch.nn.CrossEntropyLoss(weight=self.peer.tensor(class_weights), ignore_index=VOID)
        if "ours" in sides:
            self.model = ours.module(model)
            self.images, self.labels = ours.array(images), ours.array(labels)
            self.criterion = SoftmaxCrossEntropy(weight=class_weights, ignore_index=VOID)
        del model

    # the optimizers are made on first use, so that a memory probe counts their state
    def _our_optimizer(self):
        params = self.model.parameters()
        if self.optimizer_name == "sgd":
            return SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        return Adam(params, lr=1e-3, weight_decay=5e-4)

    def _torch_optimizer(self):
        optim = self.peer.torch.optim
        params = self.twin.parameters()
        if self.optimizer_name == "sgd":
            return optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        return optim.Adam(params, lr=1e-3, weight_decay=5e-4)

    def our_step(self):
        model, criterion, images, labels = self.model, self.criterion, self.images, self.labels
        optimizer = self._our_optimizer()

        def step():
            model.zero_grad()
            logits = model(images)
            criterion.forward(logits, labels)
            model.backward(criterion.backward())
            optimizer.step()

        return step

    def our_eval(self):
        model, images = self.model, self.images

        def forward():
            model.eval()
            with no_grad():
                model(images)
            model.train()

        return forward

    def torch_step(self):
        twin, criterion, images, labels = self.twin, self.t_criterion, self.t_images, self.t_labels
        optimizer = self._torch_optimizer()

        def step():
            optimizer.zero_grad(set_to_none=True)
            criterion(twin(images), labels).backward()
            optimizer.step()

        return step

    def torch_eval(self):
        twin, images, torch = self.twin, self.t_images, self.peer.torch

        def forward():
            twin.eval()
            with torch.no_grad():
                twin(images)
            twin.train()

        return forward

    def step_sides(self) -> list[Side]:
        sides = [Side("ours", {"step": self.our_step()}, self.ours.sync)]
        if self.peer is not None:
            sides.append(Side("torch", {"step": self.torch_step()}, self.peer.sync))
        return sides

    def eval_sides(self) -> list[Side]:
        sides = [Side("ours", {"eval": self.our_eval()}, self.ours.sync)]
        if self.peer is not None:
            sides.append(Side("torch", {"eval": self.torch_eval()}, self.peer.sync))
        return sides

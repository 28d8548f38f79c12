"""SegNet, SegNet-Basic and the Bayesian variants: structure, gradients, parity, inference.

All networks here are tiny (``SegNet(width=1/16)``, ``SegNetBasic(channels=4..8)``) and
so are the inputs; the full-size networks are only constructed, to count parameters.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from minisegnet.gradcheck import gradcheck, gradcheck_directional
from minisegnet.layers import Dropout, SoftmaxCrossEntropy
from minisegnet.models import (
    MODELS,
    BayesianSegNet,
    BayesianSegNetBasic,
    SegmentationModel,
    SegNet,
    SegNetBasic,
    build_model,
    softmax,
)
from model_helpers import held_arrays, seeded

TINY = 1 / 16  # SegNet width for tests: channels 4, 8, 16, 32, 32


def with_input_grad(model):
    """``model.backward`` that also returns the gradient of the image (models skip it by default)."""
    return lambda dlogits: model.backward(dlogits, input_grad=True)


@pytest.fixture(scope="module")
def full_segnet():
    """The paper's SegNet (29 M parameters): built once, about a second."""
    return SegNet()


# -- registry and structure ---------------------------------------------------------------------
SMALL = {"segnet": {"width": TINY}, "bayesian-segnet": {"width": TINY}}


def test_registry_builds_every_arch_from_its_config():
    assert set(MODELS) == {
        "segnet", "segnet-basic", "bayesian-segnet", "bayesian-segnet-basic",  # this file
        "fcn-basic", "fcn-basic-noaddition", "fcn-basic-nodimreduction", "bilinear-basic",  # test_decoder_variants.py
    }
    for arch, cls in MODELS.items():
        model = build_model(arch, num_classes=5, **SMALL.get(arch, {"channels": 4}))
        assert type(model) is cls and model.arch == arch and isinstance(model, SegmentationModel)
        twin = build_model(model.arch, **model.config)
        assert twin.config == model.config
        assert [(n, p.shape) for n, p in twin.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]


def test_build_model_rejects_unknown_arch_and_arguments():
    with pytest.raises(ValueError, match="unknown architecture 'fcn'.*segnet, segnet-basic"):
        build_model("fcn")
    with pytest.raises(TypeError, match="does not take widht.*accepts in_channels, num_classes, width, dropout"):
        build_model("segnet", widht=0.5)


def test_parameter_counts_match_the_published_networks(full_segnet):
    # SegNet with 11 classes: 14,714,688 (VGG16's 13 convs) + 14,718,795 (decoder and
    # classifier convs) + 15,872 (BN scales and shifts) = 29,449,355, "29.4 M" in the article.
    assert full_segnet.num_parameters() == 29_449_355
    assert full_segnet.num_parameters() == pytest.approx(29.4e6, rel=0.01)
    # SegNet-Basic: 9,472 + 7 x 200,768 (7x7 convs, 64 channels) + 1,024 (BN) + 715 (1x1 classifier).
    basic = SegNetBasic()
    assert basic.num_parameters() == 1_416_587
    assert basic.num_parameters() == pytest.approx(1.42e6, rel=0.01)
    assert BayesianSegNetBasic().num_parameters() == basic.num_parameters()  # dropout has no parameters


def test_segnet_layers_follow_the_segnet_tutorial_prototxt(full_segnet):
    model = full_segnet
    convs = [(n, p.shape) for n, p in model.named_parameters() if n.endswith("conv.weight")]
    channels = [(shape[1], shape[0]) for _, shape in convs]
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip
    decoder = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256),
               (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]  # fmt: skip
    assert channels == vgg + decoder
    assert all(shape[2:] == (3, 3) for _, shape in convs)
    assert [c.weight.shape[:2] for c in model.encoder_convs()] == [(o, i) for i, o in vgg]
    assert model.classifier.weight.shape == (11, 64, 3, 3)  # conv1_1_D: no BN, no ReLU after it
    # every encoder and decoder conv is followed by BN and ReLU
    blocks = [m for n, m in model.named_modules() if n.count(".convs.") == 1 and n.split(".")[-1].isdigit()]
    assert len(blocks) == 25 and all(b.relu is not None for b in blocks)


def test_segnet_basic_has_no_relu_in_its_decoder():
    model = SegNetBasic()
    for stage in model.encoder:
        assert stage.convs[0].relu is not None and stage.convs[0].conv.weight.shape[2:] == (7, 7)
    for stage in model.decoder:
        assert stage.convs[0].relu is None and stage.convs[0].conv.weight.shape[2:] == (7, 7)
    assert model.classifier.weight.shape == (11, 64, 1, 1)


def test_width_scales_hidden_channels_only():
    model = SegNet(in_channels=1, num_classes=4, width=0.25)
    first, last = model.encoder_convs()[0], model.classifier
    assert first.weight.shape == (16, 1, 3, 3) and last.weight.shape == (4, 16, 3, 3)
    assert max(c.weight.shape[0] for c in model.encoder_convs()) == 128


def test_dropout_sits_where_the_bayesian_prototxts_put_it():
    def dropout_names(model):
        return [n for n, m in model.named_modules() if isinstance(m, Dropout)]

    assert dropout_names(SegNet(width=TINY)) == []
    assert dropout_names(BayesianSegNet(width=TINY)) == [
        "encoder.stage3.dropout", "encoder.stage4.dropout", "encoder.stage5.dropout",
        "decoder.stage5.dropout", "decoder.stage4.dropout", "decoder.stage3.dropout",
    ]  # fmt: skip
    assert dropout_names(BayesianSegNetBasic(channels=4)) == [
        "encoder.stage3.dropout", "encoder.stage4.dropout", "decoder.stage4.dropout", "decoder.stage3.dropout",
    ]  # fmt: skip
    assert all(m.p == 0.5 for m in BayesianSegNet(width=TINY).dropout_layers())
    assert BayesianSegNet(width=TINY).config["dropout"] == 0.5
    assert [m.p for m in SegNetBasic(channels=4, dropout=0.2).dropout_layers()] == [0.2] * 4


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SegNet(width=0), "width > 0"),
        (lambda: SegNet(dropout=1.0), "0 <= p < 1"),
        (lambda: SegNet(num_classes=0), "num_classes"),
        (lambda: SegNetBasic(kernel_size=4), "odd kernel_size"),
        (lambda: SegNetBasic(channels=2.5), "channels"),
    ],
)
def test_bad_constructor_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- shapes -------------------------------------------------------------------------------------
def test_segnet_sizes_at_360x480():
    model = SegNet(width=TINY).eval()
    x = np.zeros((1, 3, 360, 480), dtype=np.float32)
    bottom, pool_indices = model.encode(x)
    assert [size for _, size in pool_indices] == [(360, 480), (180, 240), (90, 120), (45, 60), (23, 30)]
    assert [idx.shape[2:] for idx, _ in pool_indices] == [(180, 240), (90, 120), (45, 60), (23, 30), (12, 15)]
    assert all(idx.dtype == np.uint8 for idx, _ in pool_indices)
    assert bottom.shape == (1, 32, 12, 15)
    assert model.decode(bottom, pool_indices).shape == (1, 11, 360, 480)


@pytest.mark.parametrize("batch, height, width", [(1, 180, 240), (2, 37, 53), (2, 20, 28), (1, 1, 5)])
@pytest.mark.parametrize("make", [lambda: SegNet(width=TINY), lambda: SegNetBasic(channels=4, num_classes=3)])
def test_output_has_the_input_size(make, batch, height, width):
    model = make().eval()
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    logits = model(x)
    assert logits.shape == (batch, model.num_classes, height, width) and logits.dtype == np.float32
    assert model.predict(x).shape == (batch, height, width)


def test_bad_input_is_refused_clearly():
    model = SegNet(width=TINY)
    with pytest.raises(ValueError, match=r"SegNet: expected input with 3 channels, got 1"):
        model(np.zeros((1, 1, 16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"SegNet: expected a 4-D input"):
        model(np.zeros((3, 16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"SegNetBasic: expected a floating-point input"):
        SegNetBasic(channels=4).predict(np.zeros((1, 3, 16, 16), dtype=np.uint8))


def test_backward_without_a_kept_forward_raises():
    model = SegNetBasic(channels=4)
    dlogits = np.zeros((1, 11, 16, 16), dtype=np.float32)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(dlogits)
    model.predict(np.zeros((1, 3, 16, 16), dtype=np.float32))  # eval forward: nothing kept
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(dlogits)


# -- what a backward lets go of -------------------------------------------------------------------
def _batch(model, rng, shape=(2, 3, 24, 32)):
    x = rng.standard_normal(shape).astype(np.float32)
    dlogits = rng.standard_normal((shape[0], 11, *shape[2:])).astype(np.float32)
    return x, dlogits


@pytest.mark.parametrize("make", [lambda: SegNetBasic(channels=8, kernel_size=3, rng=0),
                                  lambda: SegNet(width=TINY, rng=0),
                                  lambda: build_model("fcn-basic", channels=8, kernel_size=3, rng=0)],
                         ids=["segnet-basic", "segnet", "fcn-basic"])
def test_a_model_backward_releases_its_caches_and_computes_the_same(make, rng):
    model, twin = make(), make()
    x, dlogits = _batch(model, rng)
    model.forward(x)
    twin.forward(x)
    kept = held_arrays(twin)
    assert kept and held_arrays(model) == kept  # the forward kept its maps for the backward
    model.backward(dlogits)
    twin.backward(dlogits, release=False)
    assert held_arrays(model) == []  # all let go
    assert held_arrays(twin) == kept  # kept, as before
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)  # releasing changes no gradient
    with pytest.raises(RuntimeError, match=r"backward called before forward.*release_caches\(\).*release=False"):
        model.backward(dlogits)  # nothing left to differentiate
    model.zero_grad()
    twin.zero_grad()
    model.forward(x)
    model.backward(dlogits)  # a new forward: a new backward
    twin.backward(dlogits, release=False)  # the kept caches allow a second backward
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


def test_each_layer_lets_go_as_soon_as_its_backward_returns(rng):
    """The release happens layer by layer, during the backward: not stage by stage, nor at the end."""
    model = SegNetBasic(channels=8, kernel_size=3, rng=0)
    x, dlogits = _batch(model, rng)
    modules = dict(model.named_modules())
    seen = {}

    def record_before(name):
        layer = modules[name]
        backward = layer.backward

        def recording(grad):
            seen[name] = held_arrays(model)
            return backward(grad)

        layer.backward = recording

    for name in ("encoder.stage1", "decoder.stage1.convs.0.conv"):
        record_before(name)
    model.forward(x)
    model.backward(dlogits)
    assert seen["encoder.stage1"] and all(name.startswith("encoder.stage1.") for name in seen["encoder.stage1"])
    at_decoder_conv = seen["decoder.stage1.convs.0.conv"]
    assert "decoder.stage1.convs.0.conv._padded_input" in at_decoder_conv  # its own, still needed
    assert not any(name.startswith(("classifier.", "decoder.stage1.convs.0.bn.")) for name in at_decoder_conv)
    assert all(m.release_after_backward is False for m in model.modules())  # the flag lasts one backward


def test_releasing_frees_the_decoders_maps_before_the_encoders_backward(rng):
    """The lesson in numbers (tracemalloc, deterministic): when the encoder's first stage starts its
    backward, the memory in use is lower by at least the decoder's and the classifier's caches, and so
    is the step's peak never higher."""
    model = SegNetBasic(channels=16, kernel_size=3, rng=0)
    x, dlogits = _batch(model, rng, (2, 3, 64, 96))
    first = model.encoder[0]
    backward, seen = first.backward, {}

    def recording(grad):
        seen["in use"] = tracemalloc.get_traced_memory()[0]
        return backward(grad)

    first.backward = recording

    def step(release):
        model.zero_grad()
        tracemalloc.start()
        try:
            model.forward(x)
            decoder_bytes = sum(a.nbytes for name, m in model.named_modules()
                                if name.startswith(("decoder", "classifier")) and not name.endswith("unpool")
                                for a in vars(m).values() if isinstance(a, np.ndarray))
            model.backward(dlogits, release=release)
            return seen["in use"], tracemalloc.get_traced_memory()[1], decoder_bytes
        finally:
            tracemalloc.stop()

    step(True)  # the first step allocates the gradients and the shared scratch
    kept_in_use, kept_peak, decoder_bytes = step(False)
    model.release_caches()
    released_in_use, released_peak, _ = step(True)
    assert decoder_bytes > 2**20  # the decoder's padded copies and centred maps: megabytes
    assert released_in_use <= kept_in_use - decoder_bytes, (released_in_use, kept_in_use, decoder_bytes)
    assert released_peak <= kept_peak


# -- gradients ----------------------------------------------------------------------------------
def _train_mode_checks(model, x, directions=3, max_elements=2, dropout_seed=None):
    """Whole-network gradient checks in training mode, and why they are sound despite kinks.

    The network is piecewise smooth: a ReLU has a kink where its input crosses 0, and a
    max pooling switches winner where two values of a window cross (which moves a value
    to another pixel after unpooling).  A central difference over a step that straddles
    such a point measures a mixture of two slopes.  A deep network makes this likely:
    through 13-26 conv → BN layers on tiny maps a step moves the deep activations by
    hundreds of times the step.  Measured on SegNet(width=1/16) at 1x3x20x28: along random
    directions (one N(0, 1) number per element, norm ~340) central differences are off by
    10-100 % at eps = 1e-6, by up to 0.2 % at 1e-7, and agree to 2e-7 at eps = 1e-8 (12
    directions).  Hence, in float64, from a random upstream gradient:

    * Directional checks: every parameter and the input move at once along a random
      direction v, and <grad, v> is compared with (L(t + eps v) - L(t - eps v)) / 2 eps at
      eps = 1e-8.  The rounding error of that quotient, ~1e-16 |L| / eps ~ 1e-6, is far
      below the tolerance (1e-4 relative of values of 1e2-1e5).
    * Element-wise checks: one element at a time moves by eps = 1e-6 (which moves the
      activations downstream far less than a step along every parameter), on a random
      subset of every tensor.  atol = 1e-5 covers the rounding noise, ~1e-15 |L| / eps:
      a conv bias followed by BatchNorm has an exact gradient of 0 (BN removes any
      constant shift) and a numeric one of ~1e-6.

    A wrong backward is off by O(1) in every direction and for most elements; a kink
    crossing spoils a single draw.  The seeds are fixed, so the outcome is deterministic,
    and every direction and element must pass.  Dropout layers are reseeded before every
    forward so that all forwards use the same masks.
    """
    model.double().train()
    dropouts = model.dropout_layers()

    def forward(inp):
        for i, layer in enumerate(dropouts):
            layer.reseed(dropout_seed + i)
        return model.forward(inp)

    backward = with_input_grad(model)
    gradcheck_directional(forward, backward, [x], model, directions=directions, eps=1e-8, seed=1)
    # Zero gradients are legitimate here: a conv bias feeding BatchNorm has an exact gradient of 0
    # (BN removes any constant shift), and on these tiny maps many 7x7 kernel taps of the deep
    # stages read only padding or the zeros of an unpooled map.  So the random subset may hit only
    # zeros for a tensor; the check stays meaningful because most tensors must show non-zero ones.
    reports = gradcheck(forward, backward, [x], model, eps=1e-6, atol=1e-5, max_elements=max_elements, seed=2,
                        allow_zero=True)
    informative = [r.name for r in reports if not r.zero]
    assert len(informative) >= 0.6 * len(reports), f"only {len(informative)} of {len(reports)} tensors were non-zero"


def test_gradcheck_segnet_basic_whole_network(rng):
    """SegNet-Basic (8 channels, 7x7) on 1x3x20x28: 20x28 -> 10x14 -> 5x7 -> 3x4 -> 2x2."""
    model = seeded(SegNetBasic(channels=8, kernel_size=7, num_classes=5), seed=3)
    x = rng.standard_normal((1, 3, 20, 28))
    _train_mode_checks(model, x, directions=6, max_elements=3)


def test_gradcheck_segnet_whole_network(rng):
    """SegNet(width=1/16) on 1x3x20x28: 20x28 -> 10x14 -> 5x7 -> 3x4 -> 2x2 -> 1x1, ceil mode twice."""
    model = seeded(SegNet(width=TINY, num_classes=5), seed=4)
    x = rng.standard_normal((1, 3, 20, 28))
    _train_mode_checks(model, x, directions=6, max_elements=1)  # 105 tensors: one element each


def test_gradcheck_default_segnet_basic_along_random_directions(rng):
    """The real configuration (64 channels, 7x7 kernels), directional checks only (see above)."""
    model = seeded(SegNetBasic(), seed=8).double().train()
    x = rng.standard_normal((1, 3, 20, 28))
    gradcheck_directional(model.forward, with_input_grad(model), [x], model, directions=2, eps=1e-8, seed=4)


def test_gradcheck_bayesian_segnet_basic_with_fixed_dropout_masks(rng):
    model = seeded(BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3), seed=5)
    x = rng.standard_normal((2, 3, 12, 20))
    _train_mode_checks(model, x, directions=3, max_elements=2, dropout_seed=11)


def test_gradcheck_eval_mode(rng):
    """An eval-mode forward (running statistics) can be differentiated, as in PyTorch."""
    model = seeded(SegNetBasic(channels=4, kernel_size=3, num_classes=3), seed=6).double()
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    model.eval()
    x = rng.standard_normal((1, 3, 10, 14))
    gradcheck_directional(model.forward, with_input_grad(model), [x], model, directions=3, eps=1e-8, seed=3)


def test_float64_model_computes_in_float64_end_to_end(rng):
    model = seeded(BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3)).double().train()
    seen = []  # (layer, what, dtype) of every array a layer returned, forward and backward

    def record(name, fn, what):
        def wrapper(*args):
            out = fn(*args)
            for a in out if isinstance(out, tuple) else (out,):
                seen.append((name, what, a.dtype))
            return out

        return wrapper

    for name, m in model.named_modules():
        if not m._modules:
            object.__setattr__(m, "forward", record(name, m.forward, "forward"))
            object.__setattr__(m, "backward", record(name, m.backward, "backward"))
    x = rng.standard_normal((2, 3, 12, 16))
    logits = model(x)
    dx = model.backward(rng.standard_normal(logits.shape), input_grad=True)
    assert logits.dtype == np.float64 and dx.dtype == np.float64
    floats = [s for s in seen if s[2].kind == "f"]
    assert len(floats) == 2 * len([m for _, m in model.named_modules() if not m._modules])
    assert all(dtype == np.float64 for _, _, dtype in floats), [s for s in floats if s[2] != np.float64]
    assert {dtype for _, _, dtype in seen if dtype.kind != "f"} == {np.dtype(np.uint8)}  # pooling indices
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


# -- parity with PyTorch ---------------------------------------------------------------------------
def _torch_twin(torch, encoder, decoder, in_channels, num_classes, kernel, decoder_relu, classifier_kernel):
    """The same network from torch.nn layers, written from the channel lists alone."""
    nn = torch.nn

    def stack(c_in, outs, relu):
        layers = []
        for c in outs:
            layers += [nn.Conv2d(c_in, c, kernel, padding=kernel // 2), nn.BatchNorm2d(c)]
            layers += [nn.ReLU()] if relu else []
            c_in = c
        return nn.Sequential(*layers), c_in

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec, c = nn.ModuleList(), nn.ModuleList(), in_channels
            for outs in encoder:
                block, c = stack(c, outs, True)
                self.enc.append(block)
            for outs in decoder:
                block, c = stack(c, outs, decoder_relu)
                self.dec.append(block)
            self.classifier = nn.Conv2d(c, num_classes, classifier_kernel, padding=classifier_kernel // 2)
            self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
            self.unpool = nn.MaxUnpool2d(2, 2)

        def forward(self, x):
            kept = []
            for block in self.enc:
                x = block(x)
                size = x.shape
                x, idx = self.pool(x)
                kept.append((idx, size))
            for block, (idx, size) in zip(self.dec, reversed(kept)):
                x = block(self.unpool(x, idx, output_size=size))
            return self.classifier(x)

    return Twin().double()


def _copy_weights(torch, ours, theirs):
    mine, their = list(ours.named_parameters()), list(theirs.named_parameters())
    assert len(mine) == len(their)
    for (name, p), (tname, t) in zip(mine, their):
        assert tuple(p.shape) == tuple(t.shape), (name, tname)
        with torch.no_grad():
            t.copy_(torch.from_numpy(p.data))


@pytest.mark.parametrize(
    "make, spec",
    [
        (
            lambda: SegNetBasic(channels=8, kernel_size=7, num_classes=5),
            dict(encoder=[(8,)] * 4, decoder=[(8,)] * 4, kernel=7, decoder_relu=False, classifier_kernel=1),
        ),
        (
            lambda: SegNet(width=TINY, num_classes=5),
            dict(
                encoder=[(4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)],
                decoder=[(32, 32, 32), (32, 32, 16), (16, 16, 8), (8, 4), (4,)],
                kernel=3,
                decoder_relu=True,
                classifier_kernel=3,
            ),
        ),
    ],
    ids=["segnet-basic", "segnet"],
)
@pytest.mark.torch
def test_forward_and_backward_match_pytorch(torch, rng, make, spec):
    model = seeded(make(), seed=7).double().train()
    twin = _torch_twin(torch, in_channels=3, num_classes=5, **spec).train()
    _copy_weights(torch, model, twin)
    x = rng.standard_normal((2, 3, 21, 30))  # odd sizes: ceil-mode pooling and unpooling to size
    dlogits = rng.standard_normal((2, 5, 21, 30))

    logits = model.forward(x)
    dx = model.backward(dlogits, input_grad=True)
    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = twin(tx)
    tlogits.backward(torch.from_numpy(dlogits))

    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-9 * np.abs(dx).max())
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        ref = t.grad.numpy()
        np.testing.assert_allclose(p.grad, ref, rtol=1e-8, atol=1e-9 * max(np.abs(ref).max(), 1.0), err_msg=name)
    # the BN running statistics moved the same way
    ours = [b for n, b in model.named_buffers() if n.endswith("running_var")]
    theirs = [m.running_var.numpy() for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


# -- inference ----------------------------------------------------------------------------------
def test_inference_keeps_no_activations_and_restores_the_mode(rng):
    model = BayesianSegNet(width=TINY)
    x = rng.standard_normal((1, 3, 24, 32)).astype(np.float32)
    model.predict(x)
    model.predict_proba(x)
    model.predict_mc(x, samples=2)
    assert held_arrays(model) == []  # a model that only ever ran inference holds no activations
    model.train()
    model(x)
    held = {name: id(getattr_path(model, name)) for name in held_arrays(model)}
    assert len(held) > 40  # the training forward keeps what backward needs ...
    labels = model.predict(x)
    assert {name: id(getattr_path(model, name)) for name in held_arrays(model)} == held  # ... predict adds nothing
    assert labels.dtype == np.int64 and labels.shape == (1, 24, 32)
    assert all(m.training for m in model.modules())  # mode restored
    model.eval()
    model.predict_proba(x)
    model.predict_mc(x, samples=2)
    assert not any(m.training or getattr(m, "mc_sampling", False) for m in model.modules())


def getattr_path(model, dotted):
    obj = model
    for part in dotted.split(".")[1:] if dotted.startswith(type(model).__name__) else dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _one_step(model, x, labels, interrupt=None):
    """Forward, loss, (optional calls in between), backward: the gradients and the loss."""
    loss_fn = SoftmaxCrossEntropy()
    model.zero_grad()
    loss = loss_fn.forward(model.forward(x), labels)
    if interrupt is not None:
        interrupt(model)
    model.backward(loss_fn.backward())
    return loss, [None if p.grad is None else p.grad.copy() for p in model.parameters()]


def test_inference_between_a_forward_and_its_backward_changes_nothing(rng):
    """predict, predict_proba, predict_mc(seed=...) and summary in the middle of a step are invisible."""
    x = rng.standard_normal((2, 3, 24, 32))
    other = rng.standard_normal((2, 3, 24, 32))
    labels = rng.integers(0, 5, (2, 24, 32))

    def build():
        model = BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=5, rng=3).double().train()
        for i, layer in enumerate(model.dropout_layers()):
            layer.reseed(100 + i)
        return model

    def meddle(model):
        model.predict(other)
        model.predict_proba(other)
        model.predict_mc(other, samples=3, seed=7)
        model.summary(input_size=(3, 24, 32))

    plain, interrupted = build(), build()
    for _ in range(2):  # the second step checks that the dropout generators were put back
        loss, grads = _one_step(plain, x, labels)
        loss_i, grads_i = _one_step(interrupted, x, labels, interrupt=meddle)
        assert loss_i == loss
        for a, b in zip(grads_i, grads, strict=True):
            np.testing.assert_array_equal(a, b)
    for (name, a), b in zip(interrupted.state_dict().items(), plain.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)  # BN running statistics included


def test_predict_mc_with_a_seed_is_reproducible_and_leaves_the_generators_alone(rng):
    model = BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=0)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    a = model.predict_mc(x, samples=3, seed=5)
    b = model.predict_mc(x, samples=3, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert [layer.seed for layer in model.dropout_layers()] == [
        layer.seed for layer in BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=0).dropout_layers()
    ]


def test_models_take_an_rng_and_leave_numpys_global_state_alone():
    state = np.random.get_state()[1].copy()
    for make in (lambda r: SegNetBasic(channels=4, rng=r), lambda r: BayesianSegNet(width=TINY, rng=r)):
        a, b, c = make(0), make(0), make(1)
        for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
            np.testing.assert_array_equal(x, y, err_msg=name)
        differs = [not np.array_equal(x, z) for n, x, z in zip(a.state_dict(), a.state_dict().values(),
                                                                  c.state_dict().values()) if n.endswith("conv.weight")]
        assert all(differs)  # another seed: every convolution differs
        assert [d.seed for d in a.dropout_layers()] == [d.seed for d in b.dropout_layers()]
        g = make(np.random.default_rng(0))  # a Generator works too
        assert all(np.array_equal(x, y) for x, y in zip(a.state_dict().values(), g.state_dict().values()))
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert "rng" not in SegNetBasic(rng=0).config  # the seed is not part of the architecture
    assert build_model("segnet-basic", channels=4, rng=0).config == SegNetBasic(channels=4).config


def test_backward_skips_the_image_gradient_unless_asked(rng):
    model = SegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=0).double()
    x = rng.standard_normal((1, 3, 16, 16))
    dlogits = rng.standard_normal((1, 3, 16, 16))
    model.forward(x)
    assert model.backward(dlogits) is None
    assert model.input_layer.needs_input_grad is False
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dlogits, input_grad=True)
    assert dx.shape == x.shape and np.abs(dx).max() > 0
    for a, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(p.grad, a, rtol=1e-12, atol=1e-14)


def test_frozen_encoder_gets_no_gradients_and_the_decoder_the_same_ones(rng):
    x = rng.standard_normal((2, 3, 16, 16))
    labels = rng.integers(0, 3, (2, 16, 16))
    full = SegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=1).double()
    frozen = SegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=1).double()
    frozen.encoder.requires_grad_(False)
    _, grads = _one_step(full, x, labels)
    _one_step(frozen, x, labels)
    for (name, p), g in zip(frozen.named_parameters(), grads):
        if name.startswith("encoder."):
            assert p.grad is None, name
        else:
            np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-14, err_msg=name)


def test_double_makes_every_floating_array_float64(rng):
    model = BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3).double()
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    assert all(b.dtype == np.float64 for n, b in model.named_buffers() if b.dtype.kind == "f")
    loss_fn = SoftmaxCrossEntropy(weight=np.ones(3, np.float32))
    logits = model.forward(rng.standard_normal((1, 3, 16, 16)))
    loss_fn.forward(logits, rng.integers(0, 3, (1, 16, 16)))
    assert logits.dtype == np.float64 and loss_fn.backward().dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        model.forward(rng.standard_normal((1, 3, 16, 16)).astype(np.float32))  # float32 into a float64 model


def test_repeated_predictions_do_not_grow_memory(rng):
    model = SegNet(width=TINY)
    x = rng.standard_normal((1, 3, 48, 64)).astype(np.float32)
    model.predict(x)  # warm up (lazy allocations, caches of NumPy itself)
    tracemalloc.start()
    try:
        model.predict(x)
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            model.predict(x)
        growth = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert growth < 16 * 1024, f"memory grew by {growth} bytes over 5 predictions"


def test_predict_and_predict_proba_agree(rng):
    model = seeded(SegNetBasic(channels=4, num_classes=6))
    x = rng.standard_normal((2, 3, 16, 24)).astype(np.float32)
    probs = model.predict_proba(x)
    assert probs.shape == (2, 6, 16, 24) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(x), probs.argmax(axis=1))
    model.eval()
    np.testing.assert_array_equal(model.predict(x), model(x).argmax(axis=1))


def test_predict_mc_uncertainty_is_zero_without_dropout_and_positive_with_it(rng):
    x = rng.standard_normal((2, 3, 16, 24)).astype(np.float32)
    plain = SegNetBasic(channels=4, kernel_size=3)
    with pytest.warns(UserWarning, match="no Dropout layers"):
        mean, uncertainty = plain.predict_mc(x, samples=3)
    assert mean.shape == (2, 11, 16, 24) and uncertainty.shape == (2, 16, 24)
    assert not uncertainty.any()
    np.testing.assert_allclose(mean, plain.predict_proba(x), rtol=1e-6)

    bayes = BayesianSegNetBasic(channels=4, kernel_size=3)
    mean, uncertainty = bayes.predict_mc(x, samples=6, seed=0)
    assert (uncertainty >= 0).all() and uncertainty.mean() > 0
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, rtol=1e-5)
    again_mean, again_unc = bayes.predict_mc(x, samples=6, seed=0)
    np.testing.assert_array_equal(mean, again_mean)
    np.testing.assert_array_equal(uncertainty, again_unc)


def test_predict_mc_is_the_mean_and_class_averaged_variance_of_the_samples(rng):
    model = BayesianSegNetBasic(channels=4, kernel_size=3, num_classes=3)
    x = rng.standard_normal((1, 3, 8, 12)).astype(np.float64)
    model.double()
    mean, uncertainty = model.predict_mc(x, samples=5, seed=3)
    # the same samples, drawn by hand
    for i, layer in enumerate(model.dropout_layers()):
        layer.reseed(3 + i)
    model.eval().set_mc_dropout(True)
    samples = np.stack([_softmax(model(x)) for _ in range(5)])
    np.testing.assert_allclose(mean, samples.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(uncertainty, samples.var(axis=0).mean(axis=1), rtol=1e-9, atol=1e-15)


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4 + 1.0, -1e4]], dtype=np.float32).reshape(2, 3, 1, 1)
    probs = softmax(z)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0, :, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(probs[1, :, 0, 0], np.array([1, np.e, 1]) / (2 + np.e), rtol=1e-6)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_summary_reports_layers_and_the_measured_memory_comparison():
    model = SegNet(width=TINY)
    text = str(model.summary(input_size=(3, 45, 60), batch_size=2))
    assert model.training  # the summary's eval forward did not change the mode
    assert held_arrays(model) == []  # it measured a twin: the model itself kept nothing
    assert "encoder.stage1.pool" in text and "decoder.stage5.unpool" in text and "classifier" in text
    assert "(2, 11, 45, 60)" in text and f"{model.num_parameters():,}" in text
    # SegNet keeps uint8 indices (and 2 integers per stage); FCN-style skips would keep the
    # float32 encoder maps before pooling: 45x60 -> 23x30 -> 12x15 -> 6x8 -> 3x4 -> 2x2
    pooled = [(4, 23, 30), (8, 12, 15), (16, 6, 8), (32, 3, 4), (32, 2, 2)]
    before = [(4, 45, 60), (8, 23, 30), (16, 12, 15), (32, 6, 8), (32, 3, 4)]
    kept = sum(2 * c * h * w + 16 for c, h, w in pooled)
    skips = sum(2 * c * h * w * 4 for c, h, w in before)
    assert f"{kept:,}" in text and f"{skips:,}" in text and "FCN-style" in text
    assert f"{skips / kept:.1f}x more" in text
    model.eval()
    _, pool_indices = model.encode(np.zeros((2, 3, 45, 60), dtype=np.float32))
    assert sum(idx.nbytes + 16 for idx, _ in pool_indices) == kept


def test_summary_records_measure_memory_and_flops():
    model = SegNetBasic(channels=4, kernel_size=3, num_classes=3, rng=0)
    summary = model.summary(input_size=(3, 20, 28), batch_size=2)
    by_name = {r.layer: r for r in summary.records}
    assert list(by_name)[0] == "encoder.stage1.convs.0" and list(by_name)[-1] == "classifier"
    assert sum(r.parameters for r in summary.records) == model.num_parameters()
    first = by_name["encoder.stage1.convs.0"]
    assert first.output_shape == (2, 4, 20, 28)
    # conv 3x3 3->4: 2*N*O*C*kh*kw*H*W; BN: 2 per value; ReLU: 1 per value
    values = 2 * 4 * 20 * 28
    assert first.flops == 2 * 2 * 4 * 3 * 9 * 20 * 28 + 2 * values + values
    # kept for backward: the conv's padded input (float32), BN's input (the conv's output, float32), mu and
    # 1/sigma (float32), ReLU's mask (bool)
    assert first.backward_bytes == 3 * 2 * 22 * 30 * 4 + values * 4 + 2 * 4 * 4 + values
    pool = by_name["encoder.stage1.pool"]
    assert pool.decoder_bytes == 2 * 4 * 10 * 14  # uint8 indices, measured
    assert summary.decoder_bytes == sum(r.decoder_bytes for r in summary.records) + 4 * 16  # + the sizes
    assert summary.fcn_skip_bytes == 4 * 4 * 2 * (20 * 28 + 10 * 14 + 5 * 7 + 3 * 4)
    assert by_name["decoder.stage1.unpool"].backward_bytes == 0  # its indices were counted at the pool
    assert summary.to_dicts()[0]["layer"] == "encoder.stage1.convs.0"
    assert "kept for backward" in str(summary) and "FCN-style" in str(summary)


def test_loss_falls_on_a_fixed_batch_with_plain_sgd():
    """Forty steps of ``p.data -= lr * p.grad`` fit a small batch of block patterns.

    (The learning rate is large for plain SGD without momentum; BatchNorm after every
    conv keeps it stable.  The real optimizer lives in ``minisegnet.optim``.)
    """
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 3, size=(4, 4, 6))  # 4 images of 4x6 blocks of 4x4 pixels, 3 classes
    labels = blocks.repeat(4, axis=1).repeat(4, axis=2)  # (4, 16, 24)
    images = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2) * 2 - 1
    images += 0.3 * rng.standard_normal(images.shape).astype(np.float32)
    model = seeded(SegNetBasic(channels=8, kernel_size=3, num_classes=3), seed=0).train()
    loss_fn = SoftmaxCrossEntropy()
    losses = []
    for _ in range(40):
        model.zero_grad()
        losses.append(loss_fn.forward(model.forward(images), labels))
        model.backward(loss_fn.backward())
        for p in model.parameters():
            p.data -= 1.0 * p.grad
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.25 * losses[0], losses
    assert (model.predict(images) == labels).mean() > 0.9


@pytest.mark.gpu
def test_models_compute_the_same_on_cupy_as_on_numpy(rng):
    import cupy

    for model in (seeded(BayesianSegNet(width=TINY, num_classes=5)), seeded(SegNetBasic(channels=4, num_classes=5))):
        model.double().train()
        for layer in model.dropout_layers():
            layer.p = 0.0  # the two devices draw different masks
        x = rng.standard_normal((2, 3, 21, 30))
        dlogits = rng.standard_normal((2, 5, 21, 30))
        logits, dx = model.forward(x), model.backward(dlogits, input_grad=True)
        grads = [p.grad.copy() for p in model.parameters()]
        model.zero_grad()
        model.to("cuda")
        glogits = model.forward(cupy.asarray(x))
        gdx = model.backward(cupy.asarray(dlogits), input_grad=True)
        np.testing.assert_allclose(cupy.asnumpy(glogits), logits, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cupy.asnumpy(gdx), dx, rtol=1e-8, atol=1e-9 * np.abs(dx).max())
        for g, p in zip(grads, model.parameters()):
            np.testing.assert_allclose(cupy.asnumpy(p.grad), g, rtol=1e-8, atol=1e-9 * max(np.abs(g).max(), 1.0))
        labels = model.predict(cupy.asarray(x))
        assert isinstance(labels, cupy.ndarray) and labels.dtype == np.int64
        if model.dropout_layers():
            mean, uncertainty = model.predict_mc(cupy.asarray(x), samples=2)
            assert isinstance(mean, cupy.ndarray) and isinstance(uncertainty, cupy.ndarray)
        assert "FCN-style" in str(model.summary(input_size=(3, 24, 32)))

"""The decoder variants (FCN-Basic, its ablations, Bilinear-Basic): structure, memory, gradients, parity, training."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minisegnet import no_grad
from minisegnet.backend import is_array
from minisegnet.checkpoint import load_model, save_checkpoint
from minisegnet.data import SyntheticStreets
from minisegnet.gradcheck import gradcheck, gradcheck_directional
from minisegnet.layers import ConvTranspose2d, SoftmaxCrossEntropy
from minisegnet.models import (
    MODELS,
    BilinearBasic,
    FCNBasic,
    FCNBasicNoAddition,
    FCNBasicNoDimReduction,
    SegmentationModel,
    SegNetBasic,
    build_model,
)
from minisegnet.optim import Adam
from model_helpers import held_arrays, seeded

VARIANTS = ["fcn-basic", "fcn-basic-noaddition", "fcn-basic-nodimreduction", "bilinear-basic"]
SMALL = dict(channels=6, kernel_size=3, num_classes=5)


def kept_arrays(kept):
    return [a for entry in kept for a in entry if is_array(a)]


# -- registry, structure, parameter counts --------------------------------------------------------
def test_registered_and_rebuilt_from_their_config():
    for arch in VARIANTS:
        model = build_model(arch, **SMALL)
        assert type(model) is MODELS[arch] and model.arch == arch and isinstance(model, SegmentationModel)
        config = json.loads(json.dumps(model.config))  # what a checkpoint stores
        twin = build_model(arch, **config)
        assert twin.config == model.config and "rng" not in model.config
        assert [(n, p.shape) for n, p in twin.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
    assert FCNBasic(skips=None).config["skips"] is None
    assert "skips" not in FCNBasicNoAddition().config and "reduce_skips" not in FCNBasicNoDimReduction().config


def test_parameter_counts_stated_in_the_docstrings():
    encoder = 9_472 + 3 * 200_768 + 4 * 128  # SegNet-Basic's encoder: 7x7 convs 64 and BN
    assert encoder == 612_288
    assert FCNBasic().num_parameters() == encoder + 4 * 715 + 4 * 11 * 11 * 64 == 646_124
    assert FCNBasic(skips=None).num_parameters() == FCNBasicNoAddition().num_parameters() == 643_979
    assert FCNBasic(reduce_skips=False).num_parameters() == FCNBasicNoDimReduction().num_parameters()
    assert FCNBasicNoDimReduction().num_parameters() == encoder + 4 * 64 * 64 * 64 + 715 == 1_661_579
    assert FCNBasic(upsample_kernel_size=7).num_parameters() == 638_864
    assert FCNBasic(reduce_skips=False, upsample_kernel_size=7).num_parameters() == 1_415_819
    assert BilinearBasic().num_parameters() == SegNetBasic().num_parameters() == 1_416_587
    # the article's Table 1 (0.65 M, 1.625 M), to the precision it reports
    assert FCNBasic().num_parameters() == pytest.approx(0.65e6, rel=0.01)
    assert FCNBasicNoDimReduction().num_parameters() == pytest.approx(1.625e6, rel=0.025)


def test_fcn_decoder_structure():
    model = FCNBasic()
    ups = [m for m in model.modules() if isinstance(m, ConvTranspose2d)]
    assert [u.weight.shape for u in ups] == [(11, 11, 8, 8)] * 4
    assert all(u.bias is None and u.stride == (2, 2) and u.padding == (3, 3) and u.init == "bilinear" for u in ups)
    assert model.score.weight.shape == (11, 64, 1, 1) and model.classifier is None
    assert [n for n, _ in model.score_skips._modules.items()] == ["pool1", "pool2", "pool3"]
    assert list(model.decoder._modules) == ["stage4", "stage3", "stage2", "stage1"]
    wide = FCNBasic(reduce_skips=False)
    assert wide.score is None and wide.score_skips is None and wide.classifier.weight.shape == (11, 64, 1, 1)
    assert [m.weight.shape for m in wide.modules() if isinstance(m, ConvTranspose2d)] == [(64, 64, 8, 8)] * 4
    assert FCNBasic(skips=None).score_skips is None
    odd = FCNBasic(upsample_kernel_size=7)
    assert all(u.padding == (3, 3) and u.output_padding == (1, 1) for u in odd.modules()
               if isinstance(u, ConvTranspose2d))


def test_seeded_construction_is_reproducible():
    for arch in VARIANTS:
        a, b = build_model(arch, **SMALL, rng=5), build_model(arch, **SMALL, rng=5)
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_array_equal(p.data, q.data, err_msg=f"{arch} {name}")
        c = build_model(arch, **SMALL, rng=6)
        assert not np.array_equal(a.input_layer.weight.data, c.input_layer.weight.data)
    np.random.seed(3)
    d = FCNBasic(**SMALL)
    np.random.seed(3)
    e = FCNBasic(**SMALL)  # rng=None: NumPy's global state, which np.random.seed makes reproducible
    np.testing.assert_array_equal(d.input_layer.weight.data, e.input_layer.weight.data)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: FCNBasic(skips="concat"), ValueError, "skips as 'add' or None"),
        (lambda: FCNBasic(reduce_skips="yes"), ValueError, "reduce_skips as True or False"),
        (lambda: FCNBasic(kernel_size=4), ValueError, "odd kernel_size"),
        (lambda: FCNBasic(upsample_kernel_size=2), ValueError, "at least 3 taps"),
        (lambda: FCNBasic(num_classes=0), ValueError, "num_classes"),
        (lambda: BilinearBasic(channels=2.5), ValueError, "channels"),
        (lambda: BilinearBasic(kernel_size=6), ValueError, "odd kernel_size"),
        (lambda: build_model("fcn-basic-noaddition", skips="add"), TypeError, "does not take skips"),
    ],
)
def test_bad_constructor_arguments_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- shapes and what the decoder keeps ---------------------------------------------------------------
@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("batch, height, width", [(2, 45, 60), (1, 23, 30), (2, 20, 28), (1, 3, 5)])
def test_output_has_the_input_size(arch, batch, height, width):
    model = build_model(arch, **SMALL).eval()
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    logits = model(x)
    assert logits.shape == (batch, 5, height, width) and logits.dtype == np.float32
    assert model.predict(x).shape == (batch, height, width)


def test_what_each_decoder_keeps_from_the_encoder():
    x = np.zeros((2, 3, 45, 60), dtype=np.float32)
    sizes = [(45, 60), (23, 30), (12, 15), (6, 8)]  # each encoder stage's input: the decoder's targets
    with no_grad():
        _, kept = FCNBasic(**SMALL).encode(x)
        assert [entry[-1] for entry in kept] == sizes
        assert len(kept[0]) == 1  # the image: nothing to add at full size
        assert [a.shape for a in kept_arrays(kept)] == [(2, 5, 23, 30), (2, 5, 12, 15), (2, 5, 6, 8)]
        assert all(a.dtype == np.float32 for a in kept_arrays(kept))
        _, kept = FCNBasic(**SMALL, reduce_skips=False).encode(x)
        assert [a.shape for a in kept_arrays(kept)] == [(2, 6, 23, 30), (2, 6, 12, 15), (2, 6, 6, 8)]
        for arch in ("fcn-basic-noaddition", "bilinear-basic"):
            _, kept = build_model(arch, **SMALL).encode(x)
            assert kept_arrays(kept) == [] and [entry for entry in kept] == [(s,) for s in sizes]


def test_decoder_memory_at_360x480_in_the_module_docstring():
    """The bytes each decoder keeps per image at 360x480 (arithmetic on the measured shapes above)."""
    pooled = [(180, 240), (90, 120), (45, 60), (23, 30)]  # pool1 .. pool4
    segnet = sum(64 * h * w for h, w in pooled)  # uint8 indices of the four poolings
    fcn = sum(11 * 4 * h * w for h, w in pooled[:3])  # float32, K = 11 channels, pool1 .. pool3
    wide = sum(64 * 4 * h * w for h, w in pooled[:3])
    assert (segnet, fcn, wide) == (3_672_960, 2_494_800, 14_515_200)


def test_summary_measures_the_kept_arrays():
    model = FCNBasic(**SMALL)
    summary = model.summary(input_size=(3, 45, 60))
    text = str(summary)
    assert "decoder.stage4.up" in text and "score_skips.pool1" in text
    expected = 4 * 5 * (23 * 30 + 12 * 15 + 6 * 8) + 8 * 2 * 4  # float32 maps + 2 ints per stage
    assert summary.decoder_bytes == expected
    assert BilinearBasic(**SMALL).summary(input_size=(3, 45, 60)).decoder_bytes == 8 * 2 * 4


def test_decode_checks_what_it_is_given():
    model = FCNBasic(**SMALL)
    bottom, kept = model.encode(np.zeros((1, 3, 20, 28), np.float32))
    with pytest.raises(ValueError, match="what 4 encoder stages kept, got 3"):
        model.decode(bottom, kept[1:])
    bad = list(kept)
    bad[0] = ((41, 57),)
    with pytest.raises(ValueError, match="FCNDecoderStage: expected a target size of 19 or 20 by 27 or 28"):
        model.decode(bottom, bad)
    with pytest.raises(ValueError, match="FCNBasic: expected input with 3 channels, got 1"):
        model(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="BilinearBasic: expected a 4-D input"):
        BilinearBasic(**SMALL)(np.zeros((3, 16, 16), np.float32))


# -- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", VARIANTS)
def test_gradcheck_whole_network(arch, rng):
    """Directional checks over every parameter and the input at once, then a few elements of each tensor.

    As in tests/test_models.py (see ``_train_mode_checks`` there for why eps = 1e-8 along
    random directions and 1e-6 per element): training mode, float64, random upstream
    gradient, 36x52 -> 18x26 -> 9x13 -> 5x7 -> 3x4, so the FCN decoder crops 6 -> 5 -> 9 and 8 -> 7 -> 13.
    FCN's upsampling kernels are 4x4 here: on maps this small some taps of an 8x8 kernel
    reach only cropped pixels, and their exact gradient is 0 (the 8x8 default is checked
    along random directions below).
    """
    extra = {} if arch == "bilinear-basic" else {"upsample_kernel_size": 4}
    model = seeded(build_model(arch, channels=4, kernel_size=3, num_classes=3, **extra), seed=3).double().train()
    x = rng.standard_normal((1, 3, 36, 52))

    def backward(g):
        return model.backward(g, input_grad=True)

    gradcheck_directional(model.forward, backward, [x], model, directions=4, eps=1e-8, seed=1)
    # a conv bias followed by BatchNorm has an exact gradient of 0 (BN removes any constant shift)
    gradcheck(model.forward, backward, [x], model, eps=1e-6, atol=1e-5, max_elements=2, seed=2,
              allow_zero="*.convs.*.conv.bias")


def test_gradcheck_default_fcn_basic_along_random_directions(rng):
    """The real configuration: 64 channels, 7x7 encoder, 8x8 upsampling on 11 channels."""
    model = seeded(FCNBasic(), seed=8).double().train()
    x = rng.standard_normal((1, 3, 20, 28))
    gradcheck_directional(model.forward, lambda g: model.backward(g, input_grad=True), [x], model,
                          directions=2, eps=1e-8, seed=4)


@pytest.mark.parametrize("arch", ["fcn-basic", "bilinear-basic"])
def test_eval_mode_forward_can_be_differentiated(arch, rng):
    model = seeded(build_model(arch, channels=4, kernel_size=3, num_classes=3), seed=6).double().eval()
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    x = rng.standard_normal((1, 3, 10, 14))
    gradcheck_directional(model.forward, lambda g: model.backward(g, input_grad=True), [x], model,
                          directions=3, eps=1e-8, seed=3)


@pytest.mark.parametrize("arch", VARIANTS)
def test_backward_returns_the_image_gradient_only_when_asked(arch, rng):
    model = seeded(build_model(arch, **SMALL), seed=1).double()
    x = rng.standard_normal((1, 3, 12, 16))
    dlogits = rng.standard_normal((1, 5, 12, 16))
    model.forward(x)
    assert model.backward(dlogits) is None and model.input_layer.needs_input_grad is False
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dlogits, input_grad=True)
    assert dx.shape == x.shape and model.input_layer.needs_input_grad is True
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-14)


# -- parity with PyTorch ----------------------------------------------------------------------------------
def _torch_twin(torch, channels, kernel, num_classes, skips, reduce_skips, up_kernel, bilinear=False):
    """FCN-Basic (or Bilinear-Basic) from torch.nn layers, parameters registered in minisegnet's order."""
    nn, f = torch.nn, torch.nn.functional

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList()
            c = 3
            for _ in range(4):
                self.enc.append(nn.Sequential(nn.Conv2d(c, channels, kernel, padding=kernel // 2),
                                              nn.BatchNorm2d(channels), nn.ReLU()))
                c = channels
            self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
            if bilinear:
                self.dec = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2),
                                                       nn.BatchNorm2d(channels)) for _ in range(4))
                self.classifier = nn.Conv2d(channels, num_classes, 1)
                return
            width = num_classes if reduce_skips else channels
            self.score = nn.Conv2d(channels, num_classes, 1) if reduce_skips else None
            self.score_skips = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(3)) \
                if skips and reduce_skips else None
            pad = up_kernel // 2 - 1 if up_kernel % 2 == 0 else (up_kernel - 1) // 2
            out_pad = 0 if up_kernel % 2 == 0 else 1
            self.ups = nn.ModuleList(nn.ConvTranspose2d(width, width, up_kernel, 2, pad, out_pad, bias=False)
                                     for _ in range(4))
            self.classifier = None if reduce_skips else nn.Conv2d(channels, num_classes, 1)

        def forward(self, x):
            inputs = []  # each encoder stage's input: pool0 = the image, pool1, pool2, pool3
            for block in self.enc:
                inputs.append(x)
                x = self.pool(block(x))
            if bilinear:
                for block, skip in zip(self.dec, reversed(inputs)):
                    x = block(f.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False))
                return self.classifier(x)
            y = self.score(x) if reduce_skips else x
            for stage, up in zip((4, 3, 2, 1), self.ups):
                target = inputs[stage - 1]
                y = up(y)[:, :, : target.shape[2], : target.shape[3]]
                if skips and stage > 1:
                    y = y + (self.score_skips[stage - 2](target) if reduce_skips else target)
            return y if self.classifier is None else self.classifier(y)

    return Twin().double()


@pytest.mark.torch
@pytest.mark.parametrize(
    "arch, spec",
    [
        ("fcn-basic", dict(skips="add", reduce_skips=True, up_kernel=8)),
        ("fcn-basic-nodimreduction", dict(skips="add", reduce_skips=False, up_kernel=8)),
        ("fcn-basic-noaddition", dict(skips=None, reduce_skips=True, up_kernel=8)),
        ("bilinear-basic", dict(skips=None, reduce_skips=True, up_kernel=8, bilinear=True)),
    ],
)
def test_forward_and_backward_match_pytorch(torch, rng, arch, spec):
    model = seeded(build_model(arch, channels=6, kernel_size=5, num_classes=4), seed=7).double().train()
    twin = _torch_twin(torch, channels=6, kernel=5, num_classes=4, **spec).train()
    mine, theirs = list(model.named_parameters()), list(twin.named_parameters())
    assert len(mine) == len(theirs)
    for (name, p), (tname, t) in zip(mine, theirs):
        assert tuple(p.shape) == tuple(t.shape), (name, tname)
        with torch.no_grad():
            t.copy_(torch.from_numpy(p.data))
    x = rng.standard_normal((2, 3, 21, 30))  # odd sizes: 21 -> 11 -> 6 -> 3 -> 2, crops on the way back
    dlogits = rng.standard_normal((2, 4, 21, 30))
    logits = model.forward(x)
    dx = model.backward(dlogits, input_grad=True)
    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = twin(tx)
    tlogits.backward(torch.from_numpy(dlogits))
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-9 * np.abs(dx).max())
    for (name, p), (_, t) in zip(mine, theirs):
        ref = t.grad.numpy()
        np.testing.assert_allclose(p.grad, ref, rtol=1e-8, atol=1e-9 * max(np.abs(ref).max(), 1.0), err_msg=name)


# -- inference, grad mode, checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize("arch", VARIANTS)
def test_predict_keeps_nothing_and_leaves_a_training_step_alone(arch, rng):
    model = seeded(build_model(arch, **SMALL), seed=2).double()
    x = rng.standard_normal((2, 3, 21, 30))
    dlogits = rng.standard_normal((2, 5, 21, 30))
    fresh = build_model(arch, **SMALL)
    fresh.predict(x.astype(np.float32))
    assert held_arrays(fresh) == []  # an inference forward keeps nothing

    model.forward(x)
    dx = model.backward(dlogits, input_grad=True)
    expected = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    labels = model.predict(rng.standard_normal((1, 3, 13, 17)))  # another size, between forward and backward
    assert labels.shape == (1, 13, 17) and labels.dtype == np.int64
    assert model.training
    np.testing.assert_array_equal(model.backward(dlogits, input_grad=True), dx)
    for g, p in zip(expected, model.parameters()):
        np.testing.assert_array_equal(p.grad, g)


@pytest.mark.parametrize("arch", VARIANTS)
def test_checkpoint_round_trip(arch, tmp_path, rng):
    model = seeded(build_model(arch, **SMALL), seed=4)
    x = rng.standard_normal((1, 3, 23, 30)).astype(np.float32)
    model.train()
    model.forward(x)  # move the BatchNorm statistics away from their initial values
    path = save_checkpoint(tmp_path / f"{arch}.npz", model, extra={"note": "test"})
    loaded, extra = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config and extra["note"] == "test"
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


# -- training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", VARIANTS)
def test_loss_falls_on_synthetic_street_scenes(arch):
    """Thirty Adam steps on four synthetic 32x48 scenes: the loss must fall clearly."""
    scenes = SyntheticStreets(4, size=(32, 48), seed=1)
    images = np.stack([scenes[i][0] for i in range(4)]).astype(np.float32).transpose(0, 3, 1, 2)
    labels = np.stack([scenes[i][1] for i in range(4)]).astype(np.int64)
    images = (images - images.mean(axis=(0, 2, 3), keepdims=True)) / images.std(axis=(0, 2, 3), keepdims=True)
    model = build_model(arch, channels=8, kernel_size=3, rng=0).train()
    optimizer = Adam(model.parameters(), lr=1e-2)
    loss_fn = SoftmaxCrossEntropy(ignore_index=11)
    losses = []
    for _ in range(30):
        model.zero_grad()
        losses.append(loss_fn.forward(model.forward(images), labels))
        model.backward(loss_fn.backward())
        optimizer.step()
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


GPU = "cuda"  # a module constant, so that the test itself can be exercised on "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("arch", VARIANTS)
def test_cupy_matches_numpy(arch, rng):
    from minisegnet.backend import device_of, to_device, to_numpy

    model = seeded(build_model(arch, **SMALL), seed=5).double().train()
    x = rng.standard_normal((2, 3, 21, 30))
    dlogits = rng.standard_normal((2, 5, 21, 30))
    logits, dx = model.forward(x), model.backward(dlogits, input_grad=True)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.to(GPU)
    glogits = model.forward(to_device(x, GPU))
    gdx = model.backward(to_device(dlogits, GPU), input_grad=True)
    assert device_of(glogits) == GPU and device_of(gdx) == GPU
    np.testing.assert_allclose(to_numpy(glogits), logits, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(to_numpy(gdx), dx, rtol=1e-8, atol=1e-9 * np.abs(dx).max())
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), g, rtol=1e-8, atol=1e-9 * max(np.abs(g).max(), 1.0))
    labels = model.predict(to_device(x, GPU))
    assert device_of(labels) == GPU and labels.dtype == np.int64

"""CuPy against NumPy: every layer's forward and backward give the same numbers on the GPU.

Each test builds a layer (or a model) on the CPU, copies it (``copy.deepcopy``) and moves
the copy with ``.to("cuda")``, feeds both the same inputs and compares outputs, input
gradients, parameter gradients and buffers.  float64 agrees to summation-order rounding
(``rtol=1e-9``); float32 layers to ``rtol=1e-4``; a float32 model's training step within
the tolerances stated in :func:`test_segnet_basic_float32_training_step`.  Dropout masks
come from different generators on the two devices, so models with active dropout are
checked for shapes, finiteness, reproducibility with one seed on one device, and for
being exactly the eval-mode function when dropout is off.

The GPU tests carry the ``gpu`` marker and are skipped, with the reason, where CuPy or a
GPU is missing -- or *fail* with ``MINISEGNET_REQUIRE_GPU=1`` (see conftest.py), so a GPU
run (``MINISEGNET_REQUIRE_GPU=1 pytest -m gpu``) cannot pass by skipping.  The tests at the
end of this file (not marked ``gpu``) check that rule itself by running pytest in a
subprocess; they run everywhere.

``DEVICE`` is a module constant so the harness itself can be exercised on a machine
without a GPU by pointing it at ``"cpu"``.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minisegnet import BatchNorm2d, Conv2d, Dropout, MaxPool2d, MaxUnpool2d, ReLU, SoftmaxCrossEntropy
from minisegnet.layers import LossSum, LovaszSoftmax
from minisegnet.backend import cuda_is_available, device_of, to_device, to_numpy
from minisegnet.models import BayesianSegNetBasic, SegNetBasic
from minisegnet.optim import SGD

gpu = pytest.mark.gpu

DEVICE = "cuda"
TOLERANCE = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-5)}
REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_GPU_ENV_VAR = "MINISEGNET_REQUIRE_GPU"


def tie_free(rng, shape, dtype):
    """Distinct values, none zero (max pooling and ReLU are smooth there)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 0.25) / size * 2 - 1).reshape(shape).astype(dtype)


def on_device(layer):
    """A copy of ``layer`` on ``DEVICE`` (the original stays on the CPU)."""
    return copy.deepcopy(layer).to(DEVICE)


def assert_same(cpu, dev, dtype, what):
    """``dev`` (on DEVICE) equals ``cpu`` within the dtype's tolerance."""
    assert device_of(dev) == DEVICE, f"{what} is on {device_of(dev)}, expected {DEVICE}"
    np.testing.assert_allclose(to_numpy(dev), to_numpy(cpu), err_msg=what, **TOLERANCE[np.dtype(dtype).type])


def assert_same_state(cpu_layer, dev_layer, dtype):
    """Parameters, their gradients and buffers agree."""
    dev_params = dict(dev_layer.named_parameters())
    for name, p in cpu_layer.named_parameters():
        q = dev_params[name]
        assert_same(p.data, q.data, dtype, f"parameter {name}")
        assert (p.grad is None) == (q.grad is None), f"gradient of {name} exists on one device only"
        if p.grad is not None:
            assert_same(p.grad, q.grad, dtype, f"gradient of {name}")
    dev_buffers = dict(dev_layer.named_buffers())
    for name, b in cpu_layer.named_buffers():
        if np.dtype(b.dtype).kind == "f":
            assert_same(b, dev_buffers[name], dtype, f"buffer {name}")
        else:
            np.testing.assert_array_equal(to_numpy(dev_buffers[name]), to_numpy(b), err_msg=f"buffer {name}")


def compare_single_input(layer, x, dtype, rng):
    """Forward ``x`` and backward a random ``dy`` through ``layer`` on the CPU and on DEVICE."""
    dev_layer = on_device(layer)
    y = layer(x)
    y_dev = dev_layer(to_device(x, DEVICE))
    assert_same(y, y_dev, dtype, "output")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dx_dev = dev_layer.backward(to_device(dy, DEVICE))
    assert_same(dx, dx_dev, dtype, "input gradient")
    assert dx_dev.dtype == dtype
    assert_same_state(layer, dev_layer, dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "cin, cout, k, stride, padding, bias, shape",
    [
        (3, 4, 3, 1, 1, True, (2, 3, 9, 11)),
        (3, 5, 7, 1, 3, True, (2, 3, 12, 13)),  # SegNet-Basic's 7×7
        (3, 5, 7, 2, 3, False, (2, 3, 16, 13)),  # stride 2
        (4, 2, 1, 1, 0, True, (1, 4, 5, 7)),  # 1×1
    ],
)
def test_conv2d(cin, cout, k, stride, padding, bias, shape, dtype, rng):
    layer = Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias).astype(dtype)
    compare_single_input(layer, rng.standard_normal(shape).astype(dtype), dtype, rng)


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm2d(mode, dtype, rng):
    layer = BatchNorm2d(4).astype(dtype)
    layer.weight.data[:] = rng.uniform(0.5, 1.5, 4)
    layer.bias.data[:] = rng.standard_normal(4)
    layer.running_mean[:] = rng.standard_normal(4)
    layer.running_var[:] = rng.uniform(0.5, 2.0, 4)
    if mode == "eval":  # eval-mode forward + backward: the gradient of the running-statistics affine map
        layer.eval()
    x = (3 * rng.standard_normal((3, 4, 5, 7)) + 1).astype(dtype)
    compare_single_input(layer, x, dtype, rng)  # train mode also compares the updated running statistics


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu(dtype, rng):
    compare_single_input(ReLU(), tie_free(rng, (2, 3, 5, 7), dtype), dtype, rng)


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_and_unpool(dtype, rng):
    x = tie_free(rng, (2, 3, 9, 11), dtype)
    pool, unpool = MaxPool2d(2, 2, ceil_mode=True), MaxUnpool2d(2, 2)
    pool_dev, unpool_dev = on_device(pool), on_device(unpool)
    y, idx = pool(x)
    y_dev, idx_dev = pool_dev(to_device(x, DEVICE))
    assert_same(y, y_dev, dtype, "pooled values")
    assert idx_dev.dtype == np.uint8 and device_of(idx_dev) == DEVICE
    np.testing.assert_array_equal(to_numpy(idx_dev), idx)
    z = unpool(y, idx, x.shape[2:])
    z_dev = unpool_dev(y_dev, idx_dev, x.shape[2:])
    assert_same(z, z_dev, dtype, "unpooled map")
    dz = rng.standard_normal(z.shape).astype(dtype)
    dy = unpool.backward(dz)
    dy_dev = unpool_dev.backward(to_device(dz, DEVICE))
    assert_same(dy, dy_dev, dtype, "unpool input gradient")
    assert_same(pool.backward(dy), pool_dev.backward(dy_dev), dtype, "pool input gradient")


@gpu
def test_overlapping_pool(rng):
    compare_pool = MaxPool2d(3, 2)
    x = tie_free(rng, (1, 2, 7, 10), np.float64)
    dev = on_device(compare_pool)
    y, idx = compare_pool(x)
    y_dev, idx_dev = dev(to_device(x, DEVICE))
    np.testing.assert_array_equal(to_numpy(idx_dev), idx)
    dy = rng.standard_normal(y.shape)
    assert_same(compare_pool.backward(dy), dev.backward(to_device(dy, DEVICE)), np.float64, "overlapping pool gradient")


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("normalize", ["valid", "weights"])
def test_softmax_cross_entropy(normalize, dtype, rng):
    k = 5
    weight = rng.uniform(0.2, 3.0, k)
    layer = SoftmaxCrossEntropy(weight=weight, ignore_index=k, normalize=normalize)
    dev_layer = on_device(layer)
    logits = (3 * rng.standard_normal((2, k, 6, 7))).astype(dtype)
    labels = rng.integers(0, k + 1, (2, 6, 7)).astype(np.uint8)  # label k is ignored
    loss = layer(logits, labels)
    loss_dev = dev_layer(to_device(logits, DEVICE), to_device(labels, DEVICE))
    assert isinstance(loss_dev, float)
    assert loss_dev == pytest.approx(loss, rel=TOLERANCE[np.dtype(dtype).type]["rtol"])
    g = 0.7
    assert_same(layer.backward(g), dev_layer.backward(g), dtype, "logit gradient")


@gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lovasz_softmax_and_the_loss_sum(dtype, rng):
    k = 5
    logits = (3 * rng.standard_normal((2, k, 6, 7))).astype(dtype)
    labels = rng.integers(0, k + 1, (2, 6, 7)).astype(np.uint8)  # label k is ignored
    for layer in (LovaszSoftmax(ignore_index=k),
                  LossSum((1.0, SoftmaxCrossEntropy(ignore_index=k)), (0.5, LovaszSoftmax(ignore_index=k)))):
        dev_layer = on_device(layer)
        loss = layer(logits, labels)
        loss_dev = dev_layer(to_device(logits, DEVICE), to_device(labels, DEVICE))
        assert float(loss_dev) == pytest.approx(loss, rel=TOLERANCE[np.dtype(dtype).type]["rtol"])
        assert_same(layer.backward(0.7), dev_layer.backward(0.7), dtype, f"{type(layer).__name__} logit gradient")


@gpu
def test_dropout_statistics(rng):
    """CuPy's and NumPy's generators differ, so compare the behaviour, not the masks."""
    p = 0.3
    layer = Dropout(p, seed=0).to(DEVICE)
    x = to_device(np.ones((4, 8, 16, 16)), DEVICE)
    y = layer(x)
    assert device_of(y) == DEVICE
    y_host = to_numpy(y)
    kept = y_host != 0
    np.testing.assert_allclose(y_host[kept], 1 / (1 - p))  # inverted dropout: survivors scaled up
    assert abs(1 - kept.mean() - p) < 0.03  # 8192 draws: the dropped fraction is p within ~4 sigma
    dy = rng.standard_normal(x.shape)
    dx = to_numpy(layer.backward(to_device(dy, DEVICE)))
    np.testing.assert_allclose(dx, dy * kept / (1 - p), rtol=1e-12)  # the same mask in backward
    layer.reseed(0)
    np.testing.assert_array_equal(to_numpy(layer(x)), y_host)  # a seed makes the GPU masks reproducible
    layer.eval()
    assert layer(x) is x  # identity in eval mode ...
    layer.mc_sampling = True
    assert (to_numpy(layer(x)) == 0).any()  # ... unless Monte-Carlo sampling is on


# -- models ----------------------------------------------------------------------------------------
def small_model(cls=SegNetBasic, **kwargs):
    """A small SegNet-Basic (8 channels, 3×3) with fixed weights; float32 as built."""
    config = dict(in_channels=3, num_classes=5, channels=8, kernel_size=3, rng=0)
    config.update(kwargs)
    return cls(**config)


def randomise_bn(model, rng):
    """Non-trivial BN parameters and running statistics (the defaults 1, 0 would hide mistakes)."""
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b[...] = 0.3 * rng.standard_normal(b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    for name, p in model.named_parameters():
        if name.endswith("bn.weight"):
            p.data[...] = rng.uniform(0.5, 1.5, p.data.shape)
    return model


@gpu
def test_segnet_basic_forward_backward(rng):
    model = small_model().double()
    dev_model = on_device(model)
    x = rng.standard_normal((2, 3, 21, 30))  # odd sizes: ceil-mode pooling and unpooling to odd maps
    logits = model(x)
    logits_dev = dev_model(to_device(x, DEVICE))
    assert_same(logits, logits_dev, np.float64, "logits")
    dlogits = rng.standard_normal(logits.shape)
    dx = model.backward(dlogits, input_grad=True)
    dx_dev = dev_model.backward(to_device(dlogits, DEVICE), input_grad=True)
    assert_same(dx, dx_dev, np.float64, "input gradient")
    assert_same_state(model, dev_model, np.float64)


def relative_error(dev, cpu) -> float:
    cpu64 = np.asarray(cpu, dtype=np.float64)
    return float(np.linalg.norm(to_numpy(dev).astype(np.float64) - cpu64) / np.linalg.norm(cpu64))


def training_step(model, x, labels, loss_fn):
    """zero_grad, forward, loss, backward, SGD step; returns (logits, loss, {name: grad copy})."""
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = loss_fn(logits, labels)
    model.backward(loss_fn.backward())
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    optimizer.step()
    return logits, loss, grads


@gpu
def test_segnet_basic_float32_training_step(rng):
    """One float32 SGD step of SegNet-Basic on both devices.

    Tolerances, from float32 (eps 6e-8) through 9 convolutions and BatchNorms: measured
    against a float64 run on the CPU, the float32 logits are off by ~5e-7 relative (norm),
    the loss by ~3e-7 and each gradient by ~2e-6; CuPy and NumPy are each that far from the
    exact values, in different directions, so the bounds are 1e-4 for logits and loss and
    ``1e-3 |g| + 1e-4 rms(all gradients) sqrt(size)`` for each gradient.  The second term is
    for the conv biases that feed a BatchNorm: their exact gradient is 0 (BN removes any
    constant shift), so each device returns its own rounding noise and only an absolute
    bound makes sense.  A routing or formula bug is off by O(1).
    """
    model = randomise_bn(small_model(), rng)
    dev_model = on_device(model)
    weight = rng.uniform(0.5, 2.0, 5)
    x = rng.standard_normal((2, 3, 21, 30)).astype(np.float32)
    labels = rng.integers(0, 6, (2, 21, 30)).astype(np.uint8)  # 5 = ignored
    loss_fn = SoftmaxCrossEntropy(weight, ignore_index=5)
    logits, loss, grads = training_step(model, x, labels, loss_fn)
    logits_dev, loss_dev, grads_dev = training_step(
        dev_model, to_device(x, DEVICE), to_device(labels, DEVICE), on_device(loss_fn)
    )
    assert device_of(logits_dev) == DEVICE and logits_dev.dtype == np.float32
    assert relative_error(logits_dev, logits) < 1e-4
    assert loss_dev == pytest.approx(loss, rel=1e-4)
    all_grads = np.concatenate([g.ravel() for g in grads.values()]).astype(np.float64)
    rms = float(np.sqrt(np.mean(all_grads**2)))
    for name, g in grads.items():
        g_dev = grads_dev[name]
        assert device_of(g_dev) == DEVICE and g_dev.dtype == np.float32, name
        error = float(np.linalg.norm(to_numpy(g_dev).astype(np.float64) - g))
        bound = 1e-3 * float(np.linalg.norm(g.astype(np.float64))) + 1e-4 * rms * np.sqrt(g.size)
        assert error <= bound, f"gradient of {name}: |dev - cpu| = {error:.3g} > {bound:.3g}"
    dev_params = dict(dev_model.named_parameters())
    for name, p in model.named_parameters():  # after the step
        np.testing.assert_allclose(to_numpy(dev_params[name].data), p.data, rtol=1e-5, atol=1e-6, err_msg=name)
    dev_buffers = dict(dev_model.named_buffers())
    for name, b in model.named_buffers():  # the running statistics the step updated
        if np.dtype(b.dtype).kind == "f":
            np.testing.assert_allclose(to_numpy(dev_buffers[name]), b, rtol=1e-4, atol=1e-6, err_msg=name)


def reseed_dropouts(model, seed):
    for i, layer in enumerate(model.dropout_layers()):
        layer.reseed(seed + i)


@gpu
def test_bayesian_segnet_basic_active_dropout_on_device(rng):
    """Training mode with dropout on CuPy: masks differ from NumPy's, so check what does not depend on them."""
    model = randomise_bn(small_model(BayesianSegNetBasic, channels=6), rng).double()
    dev_model = on_device(model)
    x = rng.standard_normal((2, 3, 20, 28))
    x_dev = to_device(x, DEVICE)

    dev_model.train()
    reseed_dropouts(dev_model, 3)
    logits = dev_model(x_dev)
    assert device_of(logits) == DEVICE and logits.shape == (2, 5, 20, 28) and logits.dtype == np.float64
    assert bool(np.isfinite(to_numpy(logits)).all())
    for layer in dev_model.dropout_layers():
        assert layer.active and device_of(layer._keep_mask) == DEVICE  # masks drawn on the GPU
    dlogits = to_device(rng.standard_normal(logits.shape), DEVICE)
    assert dev_model.backward(dlogits) is None  # no image gradient unless asked for
    for name, p in dev_model.named_parameters():
        assert p.grad is not None and device_of(p.grad) == DEVICE, name
        assert bool(np.isfinite(to_numpy(p.grad)).all()), name

    reseed_dropouts(dev_model, 3)  # one seed, one device: the same masks, the same logits
    np.testing.assert_array_equal(to_numpy(dev_model(x_dev)), to_numpy(logits))
    reseed_dropouts(dev_model, 4)  # another seed: other masks
    assert not np.array_equal(to_numpy(dev_model(x_dev)), to_numpy(logits))

    # Eval mode: dropout is the identity, so both devices compute the same deterministic function
    # (BatchNorm with the running statistics the training forwards above updated on each side).
    model.train()
    for _ in range(3):
        reseed_dropouts(model, 3)
        model(x)
    reseed_dropouts(model, 3)  # drops the generators: a Dropout that holds one cannot be deep-copied
    dev_model = on_device(model).eval()
    model.eval()
    eval_logits = model(x)
    eval_dev = dev_model(x_dev)
    assert_same(eval_logits, eval_dev, np.float64, "eval-mode logits")
    np.testing.assert_array_equal(to_numpy(dev_model(x_dev)), to_numpy(eval_dev))  # no randomness left
    dlogits = rng.standard_normal(eval_logits.shape)
    dx = model.backward(dlogits, input_grad=True)  # eval forward + backward works
    dx_dev = dev_model.backward(to_device(dlogits, DEVICE), input_grad=True)
    assert_same(dx, dx_dev, np.float64, "eval-mode input gradient")
    assert_same_state(model, dev_model, np.float64)


@gpu
def test_host_floats_reads_device_scalars_in_one_transfer(monkeypatch):
    import cupy

    from minisegnet.finite import host_floats
    reads = []
    real = cupy.asnumpy
    monkeypatch.setattr(cupy, "asnumpy", lambda a, *args, **kw: reads.append(1) or real(a, *args, **kw))
    values = host_floats(cupy.asarray(1.5, dtype=cupy.float32), cupy.asarray(2.0), None, 3)
    assert values == (1.5, 2.0, 0.0, 3.0) and len(reads) == 1


@gpu
def test_predict_and_predict_mc_on_device(rng):
    model = randomise_bn(small_model(BayesianSegNetBasic, channels=6), rng).double()
    dev_model = on_device(model)
    x = rng.standard_normal((2, 3, 20, 28))
    x_dev = to_device(x, DEVICE)

    labels = model.predict(x)
    labels_dev = dev_model.predict(x_dev)
    assert device_of(labels_dev) == DEVICE and labels_dev.dtype == np.int64 and labels_dev.shape == (2, 20, 28)
    np.testing.assert_array_equal(to_numpy(labels_dev), labels)  # float64, eval mode: the same argmax
    probs_dev = dev_model.predict_proba(x_dev)
    assert_same(model.predict_proba(x), probs_dev, np.float64, "predict_proba")

    mean, uncertainty = dev_model.predict_mc(x_dev, samples=4, seed=5)
    assert device_of(mean) == DEVICE and device_of(uncertainty) == DEVICE
    assert mean.shape == (2, 5, 20, 28) and uncertainty.shape == (2, 20, 28)
    mean_h, unc_h = to_numpy(mean), to_numpy(uncertainty)
    assert np.isfinite(mean_h).all() and np.isfinite(unc_h).all()
    np.testing.assert_allclose(mean_h.sum(axis=1), 1.0, rtol=1e-12)
    assert (unc_h >= 0).all() and (unc_h > 0).any()  # dropout active: the samples disagree somewhere
    again, again_unc = dev_model.predict_mc(x_dev, samples=4, seed=5)  # one seed, one device: the same samples
    np.testing.assert_array_equal(to_numpy(again), mean_h)
    np.testing.assert_array_equal(to_numpy(again_unc), unc_h)
    assert dev_model.training  # the modes are put back


@gpu
def test_inference_between_forward_and_backward_changes_nothing_on_device(rng):
    """predict / predict_mc in the middle of a training step on the GPU: same gradients, same next masks."""
    model = randomise_bn(small_model(BayesianSegNetBasic, channels=6), rng).double()
    plain, interrupted = on_device(model), on_device(model)
    x = to_device(rng.standard_normal((2, 3, 20, 28)), DEVICE)
    dlogits = to_device(rng.standard_normal((2, 5, 20, 28)), DEVICE)
    for m in (plain, interrupted):
        m.train()
        reseed_dropouts(m, 9)
    plain(x)
    plain.backward(dlogits)
    interrupted(x)
    interrupted.predict(x)
    interrupted.predict_mc(x, samples=2, seed=1)
    interrupted.backward(dlogits)
    assert_same_state(plain, interrupted, np.float64)
    assert_same(plain(x), interrupted(x), np.float64, "the next training forward (dropout masks)")


# -- the rule that a GPU run cannot pass by skipping (runs everywhere) ---------------------------------
def run_pytest(args, cwd, require_gpu: bool):
    env = dict(os.environ)
    env.pop(REQUIRE_GPU_ENV_VAR, None)
    if require_gpu:
        env[REQUIRE_GPU_ENV_VAR] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_require_gpu_makes_a_missing_gpu_fail_the_run():
    args = ["-m", "gpu", "tests/test_gpu.py", "-k", "test_relu"]
    code, output = run_pytest(args, REPO_ROOT, require_gpu=True)
    if cuda_is_available():  # a GPU is here: the run must simply pass
        assert code == 0 and "2 passed" in output, output
        return
    assert code != 0, output
    assert "2 errors" in output or "2 failed" in output, output
    assert f"{REQUIRE_GPU_ENV_VAR}=1 forbids skipping" in output, output
    code, output = run_pytest(args, REPO_ROOT, require_gpu=False)  # without the variable: skipped
    assert code == 0 and "2 skipped" in output, output


def test_require_gpu_fails_a_gpu_test_that_skips_for_another_reason(tmp_path):
    """A GPU is present (pretended: the conftest's cached answer is set), but a test skips itself."""
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest + "\n_GPU_SKIP_REASON.append(None)  # pretend a GPU answered\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (tmp_path / "test_fake_gpu.py").write_text(textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.gpu


        def test_skips_itself():
            pytest.skip("a dependency is missing")


        def test_runs():
            pass


        @pytest.mark.xfail(reason="known", strict=True)
        def test_expected_failure():
            assert False
    """))
    code, output = run_pytest([], tmp_path, require_gpu=True)
    assert code != 0 and "1 failed, 1 passed, 1 xfailed" in output, output
    assert "a dependency is missing" in output and "forbids skipping" in output, output
    code, output = run_pytest([], tmp_path, require_gpu=False)
    assert code == 0 and "1 passed, 1 skipped, 1 xfailed" in output, output


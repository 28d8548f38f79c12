"""Checkpoints: round trips, atomic writes, clear refusals, VGG16 encoder import.

The first part uses tiny Modules built here from :mod:`minisegnet.module` (so it tests the
file format on its own); the second part uses the real models (SegNetBasic, SegNet).
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from minisegnet.checkpoint import (
    FORMAT_VERSION,
    VGG16_CONV_KEYS,
    load_checkpoint,
    load_model,
    load_vgg16_encoder,
    read_checkpoint,
    save_checkpoint,
)
from minisegnet.module import Module, Parameter
from minisegnet.optim import SGD, Adam


class Affine(Module):
    """``y = x W^T + b`` with a running mean of its inputs (a stand-in for a buffer like BN's)."""

    def __init__(self, n_in=3, n_out=2, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = Parameter(rng.standard_normal((n_out, n_in)).astype(np.float32))
        self.bias = Parameter(rng.standard_normal(n_out).astype(np.float32))
        self.register_buffer("running_mean", np.zeros(n_in, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.asarray(0, dtype=np.int64))

    def forward(self, x):
        if self.training:  # in place, through locals: `self.running_mean = ...` (even `+=`) would unregister it
            running_mean, tracked = self.running_mean, self.num_batches_tracked
            running_mean *= 0.9
            running_mean += 0.1 * x.mean(axis=0).astype(running_mean.dtype)
            tracked += 1
        self._input = x
        return x @ self.weight.data.T + self.bias.data

    def backward(self, dy):
        self.weight.accumulate_grad(dy.T @ self._input)
        self.bias.accumulate_grad(dy.sum(axis=0))
        return dy @ self.weight.data


class TwoLayer(Module):
    """A registered-looking model: it has ``arch`` and ``config`` like the real ones."""

    arch = "two-layer"

    def __init__(self, n_in=3, hidden=4, seed=0):
        super().__init__()
        self.first = Affine(n_in, hidden, seed)
        self.second = Affine(hidden, 2, seed + 1)
        self.config = {"n_in": n_in, "hidden": hidden}  # the seed only picks initial values

    def forward(self, x):
        return self.second(self.first(x))

    def backward(self, dy):
        return self.first.backward(self.second.backward(dy))


def train_steps(model, optimizer, steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((5, 3)).astype(model.dtype)
        y = model(x)
        optimizer.zero_grad()
        model.backward(rng.standard_normal(y.shape).astype(y.dtype))
        optimizer.step()


def assert_same_state(a: Module, b: Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def temp_files(directory):
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


# -- format and round trip -------------------------------------------------------------

def test_round_trip_model_optimizer_extra_and_resume(tmp_path):
    model, path = TwoLayer(), tmp_path / "ckpt.npz"
    opt = SGD(model.parameters(), lr=0.05, nesterov=True)
    train_steps(model, opt, 3)
    rng_state = np.random.default_rng(7).bit_generator.state
    extra = {"epoch": 3, "miou": np.float32(0.25), "history": [1.0, 0.5], "rng": rng_state,
             "mean": np.array([0.4, 0.5, 0.6], dtype=np.float32), "note": None}
    assert save_checkpoint(path, model, opt, extra=extra) == str(path)

    fresh = TwoLayer(seed=99)
    fresh_opt = SGD(fresh.parameters(), lr=1.0, nesterov=True)
    got = load_checkpoint(path, fresh, fresh_opt)
    assert_same_state(model, fresh)
    assert fresh.second.num_batches_tracked == 3
    assert got["epoch"] == 3 and got["miou"] == pytest.approx(0.25) and got["history"] == [1.0, 0.5]
    assert got["rng"] == json.loads(json.dumps(rng_state)) and got["note"] is None
    np.testing.assert_array_equal(got["mean"], extra["mean"])
    assert got["mean"].dtype == np.float32
    assert fresh_opt.lr == 0.05
    # the restored optimizer continues exactly as the original would
    train_steps(model, opt, 2, seed=1)
    train_steps(fresh, fresh_opt, 2, seed=1)
    assert_same_state(model, fresh)


def test_file_layout_is_plain_numpy_without_pickles(tmp_path):
    model = TwoLayer()
    opt = Adam(model.parameters(), lr=1e-3)
    train_steps(model, opt, 1)
    path = tmp_path / "no_suffix_added"
    save_checkpoint(path, model, opt, extra={"epoch": 1})
    assert os.listdir(tmp_path) == ["no_suffix_added"]
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        assert int(z["format_version"]) == FORMAT_VERSION and z["format"].item() == "minisegnet-checkpoint"
        assert z["arch"].item() == "two-layer" and json.loads(z["config"].item()) == model.config
        assert z["dtype"].item() == "float32"
        meta = json.loads(z["optim/meta"].item())
        assert meta["type"] == "Adam" and meta["hyperparameters"]["lr"] == 1e-3
        assert json.loads(z["extra"].item()) == {"epoch": 1}
        assert all(z[k].dtype != object for k in z.files)
    assert {f"model/{k}" for k in model.state_dict()} <= files
    assert {"optim/state/0/exp_avg", "optim/state/0/exp_avg_sq", "optim/state/0/step"} <= files
    info = read_checkpoint(path, weights=False)
    assert info["model"] == {} and info["arch"] == "two-layer" and info["extra"] == {"epoch": 1}


def test_float64_model_round_trip(tmp_path):
    model = TwoLayer().double()
    save_checkpoint(tmp_path / "c.npz", model)
    fresh = TwoLayer(seed=5).double()
    assert load_checkpoint(tmp_path / "c.npz", fresh) == {}
    assert_same_state(model, fresh)
    assert fresh.dtype == np.float64


# -- atomic writes ---------------------------------------------------------------------

def test_failure_mid_write_leaves_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, TwoLayer(), extra={"epoch": 1})
    before = path.read_bytes()

    def half_written_then_crash(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_written_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, TwoLayer(seed=3), extra={"epoch": 2})
    monkeypatch.undo()

    def interrupted(file, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, TwoLayer(seed=3), extra={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and temp_files(tmp_path) == []
    assert load_checkpoint(path, TwoLayer()) == {"epoch": 1}


@pytest.mark.parametrize("extra,message", [
    ({"bad": object()}, "extra must be JSON-serialisable: object is not JSON serialisable"),
    ({"nested": {"a": np.zeros(2)}}, r"ndarray of shape \(2,\) nested inside extra"),
    ({3: "x"}, "extra keys must be strings"),
    ({"objects": np.array([{}, 1], dtype=object)}, "object array"),
    ([1, 2], "extra must be a dict"),
])
def test_bad_extra_is_refused_before_touching_the_file(tmp_path, extra, message):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, TwoLayer())
    before = path.read_bytes()
    with pytest.raises(TypeError, match=message):
        save_checkpoint(path, TwoLayer(seed=1), extra=extra)
    assert path.read_bytes() == before and temp_files(tmp_path) == []


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "c.npz", TwoLayer())


# -- refusals --------------------------------------------------------------------------

def _rewrite(src, dst, edit):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(dst, **arrays)


def test_missing_extra_and_misshaped_arrays_are_listed_and_model_untouched(tmp_path):
    src = tmp_path / "good.npz"
    save_checkpoint(src, TwoLayer())

    def edit(a):
        del a["model/first.bias"]
        a["model/third.weight"] = np.zeros(3, dtype=np.float32)
        a["model/second.weight"] = np.zeros((2, 5), dtype=np.float32)

    _rewrite(src, tmp_path / "bad.npz", edit)
    target = TwoLayer(seed=42)
    before = target.state_dict()
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "bad.npz", target)
    msg = str(err.value)
    assert "bad.npz" in msg and "missing: first.bias" in msg and "unexpected: third.weight" in msg
    assert "second.weight: expected (2, 4), got (2, 5)" in msg
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_different_architecture_is_refused_naming_both(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, TwoLayer(hidden=4))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, TwoLayer(hidden=6))
    msg = str(err.value)
    assert "c.npz holds 'two-layer'" in msg and "hidden: file 4, model 6" in msg
    assert "first.weight: model (6, 3), file (4, 3)" in msg
    with pytest.raises(ValueError, match=r"holds 'two-layer' .* but the model is .*Affine \(no registered arch\)"):
        load_checkpoint(path, Affine())
    save_checkpoint(path, Affine())
    with pytest.raises(ValueError, match=r"holds .*Affine \(no registered arch\), but the model is 'two-layer'"):
        load_checkpoint(path, TwoLayer())


def test_optimizer_mismatch_leaves_model_and_optimizer_untouched(tmp_path):
    model = TwoLayer()
    opt = SGD(model.parameters(), lr=0.1)
    train_steps(model, opt, 1)
    save_checkpoint(tmp_path / "sgd.npz", model, opt)
    save_checkpoint(tmp_path / "plain.npz", model)
    target = TwoLayer(seed=3)
    adam = Adam(target.parameters())
    before = target.state_dict()
    with pytest.raises(ValueError, match="sgd.npz: cannot load SGD state into Adam"):
        load_checkpoint(tmp_path / "sgd.npz", target, adam)
    with pytest.raises(ValueError, match="plain.npz holds no optimizer state"):
        load_checkpoint(tmp_path / "plain.npz", target, adam)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert adam.state_dict()["state"] == {}


def test_object_arrays_are_refused(tmp_path):
    src = tmp_path / "good.npz"
    save_checkpoint(src, TwoLayer())
    _rewrite(src, tmp_path / "pickled.npz", lambda a: a.update({"extra_arrays/evil": np.array([{}], dtype=object)}))
    with pytest.raises(ValueError, match="pickled.npz: holds object arrays that need pickle; refused"):
        load_checkpoint(tmp_path / "pickled.npz", TwoLayer())


def test_unreadable_files_are_named(tmp_path):
    model = TwoLayer()
    with pytest.raises(FileNotFoundError, match="missing.npz not found"):
        load_checkpoint(tmp_path / "missing.npz", model)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text.npz is not a minisegnet checkpoint: not an .npz \(zip\) archive"):
        load_checkpoint(tmp_path / "text.npz", model)
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("format", "not an array")
    with pytest.raises(ValueError, match="plain.zip is not a minisegnet checkpoint: format not NumPy arrays"):
        load_checkpoint(tmp_path / "plain.zip", model)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not a minisegnet checkpoint .*it holds: weights"):
        load_checkpoint(tmp_path / "other.npz", model)
    good = tmp_path / "good.npz"
    save_checkpoint(good, model)
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_checkpoint(tmp_path / "truncated.npz", model)
    # corrupt one stored array's bytes (the zip directory stays intact): the CRC catches it
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("model/first.weight.npy")
    corrupt = bytearray(data)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    corrupt[start + info.compress_size - 4] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="corrupt.npz: corrupt or truncated minisegnet checkpoint: BadZipFile"):
        load_checkpoint(tmp_path / "corrupt.npz", model)
    _rewrite(good, tmp_path / "future.npz", lambda a: a.update({"format_version": np.asarray(FORMAT_VERSION + 1)}))
    with pytest.raises(ValueError, match="future.npz has checkpoint format 2, newer than"):
        load_checkpoint(tmp_path / "future.npz", model)


def test_load_model_refuses_unregistered_arch(tmp_path):
    save_checkpoint(tmp_path / "c.npz", TwoLayer())
    with pytest.raises(ValueError, match="'two-layer' .* not in minisegnet.models.MODELS"):
        load_model(tmp_path / "c.npz")


# -- the real models -------------------------------------------------------------------

def _small_models():
    from minisegnet.models import SegNet, SegNetBasic

    return [SegNetBasic(channels=4, kernel_size=3, num_classes=5), SegNet(width=1 / 16, num_classes=5)]


@pytest.mark.parametrize("index", [0, 1], ids=["segnet-basic", "segnet"])
def test_model_round_trip_bit_identical_predictions_and_resume(tmp_path, index):
    model = _small_models()[index]
    opt = SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 20, 28)).astype(np.float32)

    def train_step(m, o, seed):
        g = np.random.default_rng(seed)
        o.zero_grad()
        y = m.train()(x)
        m.backward(g.standard_normal(y.shape).astype(y.dtype))
        o.step()

    train_step(model, opt, 1)  # moves weights, BN running stats and momentum away from their initial values
    path = tmp_path / "m.npz"
    save_checkpoint(path, model, opt, extra={"epoch": 1, "mean": np.array([0.1, 0.2, 0.3])})

    loaded, extra = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert extra["epoch"] == 1
    assert_same_state(model, loaded)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    # resume: a fresh model + optimizer loaded from the file takes the same next step
    resumed = type(model)(**model.config)
    resumed_opt = SGD(resumed.parameters(), lr=0.5)
    load_checkpoint(path, resumed, resumed_opt)
    train_step(model, opt, 2)
    train_step(resumed, resumed_opt, 2)
    assert_same_state(model, resumed)


def test_model_into_other_architecture_lists_names(tmp_path):
    basic, segnet = _small_models()
    save_checkpoint(tmp_path / "basic.npz", basic)
    save_checkpoint(tmp_path / "segnet.npz", segnet)
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "basic.npz", segnet)
    msg = str(err.value)
    assert "basic.npz holds 'segnet-basic' with config" in msg and "but the model is 'segnet' with config" in msg
    assert "missing: encoder.stage1.convs.1.conv.weight" in msg
    assert "wrong shape: encoder.stage2.convs.0.conv.weight: model (8, 4, 3, 3), file (4, 4, 3, 3)" in msg
    with pytest.raises(ValueError, match="unexpected: encoder.stage1.convs.1.conv.weight"):
        load_checkpoint(tmp_path / "segnet.npz", basic)
    from minisegnet.models import SegNetBasic

    wider = SegNetBasic(channels=6, kernel_size=3, num_classes=5)
    shapes = r"wrong shape: .*model \(6, 3, 3, 3\), file \(4, 3, 3, 3\)"
    with pytest.raises(ValueError, match=r"channels: file 4, model 6.*" + shapes):
        load_checkpoint(tmp_path / "basic.npz", wider)


# -- VGG16 -----------------------------------------------------------------------------

VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random arrays with the shapes of torchvision's vgg16().features (14.7 M floats)."""
    rng = np.random.default_rng(0)
    arrays, c_in = {}, 3
    for key, c_out in zip(VGG16_CONV_KEYS, VGG16_CHANNELS):
        arrays[f"{key}.weight"] = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
        arrays[f"{key}.bias"] = rng.standard_normal(c_out, dtype=np.float32)
        c_in = c_out
    path = tmp_path_factory.mktemp("vgg") / "vgg16.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_vgg16_weights_land_in_the_encoder_convs(vgg_file):
    from minisegnet.models import SegNet

    path, arrays = vgg_file
    model = SegNet()
    before = model.state_dict()
    loaded = load_vgg16_encoder(model, path)
    assert len(loaded) == 26
    convs = model.encoder_convs()
    assert len(convs) == 13
    names = {id(m): n for n, m in model.named_modules()}
    for key, conv, c_out in zip(VGG16_CONV_KEYS, convs, VGG16_CHANNELS):
        assert conv.weight.data.shape[0] == c_out
        np.testing.assert_array_equal(conv.weight.data, arrays[f"{key}.weight"])
        np.testing.assert_array_equal(conv.bias.data, arrays[f"{key}.bias"])
        assert f"{names[id(conv)]}.weight" in loaded
    after = model.state_dict()
    unchanged = [k for k in after if k not in loaded]
    assert unchanged and all(np.array_equal(after[k], before[k]) for k in unchanged)


def test_wrong_vgg_files_and_models_are_refused(vgg_file, tmp_path):
    from minisegnet.models import SegNet, SegNetBasic

    path, arrays = vgg_file
    small = SegNet(width=1 / 16)
    before = small.state_dict()
    with pytest.raises(ValueError) as err:
        load_vgg16_encoder(small, path)
    msg = str(err.value)
    assert "need SegNet(in_channels=3, width=1.0)" in msg
    assert "features.0.weight -> encoder.stage1" in msg and "model expects (4, 3, 3, 3), file has (64, 3, 3, 3)" in msg
    assert all(np.array_equal(v, before[k]) for k, v in small.state_dict().items())

    with pytest.raises(ValueError, match="expected a model with VGG16's 13 encoder convolutions .* has 4"):
        load_vgg16_encoder(SegNetBasic(channels=4), path)

    partial = {k: v for k, v in arrays.items() if k not in ("features.28.bias", "features.5.weight")}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ValueError, match="partial.npz: not a torchvision VGG16 weight file: missing features.5.weight, "
                                         "features.28.bias"):
        load_vgg16_encoder(small, tmp_path / "partial.npz")
    with pytest.raises(FileNotFoundError, match="VGG16 weight file .*absent.npz not found"):
        load_vgg16_encoder(small, tmp_path / "absent.npz")


# -- GPU (the `gpu` marker skips these without CuPy and a GPU) ----------------------------

@pytest.mark.gpu
def test_checkpoint_from_and_to_the_gpu(tmp_path):
    import cupy  # the `gpu` marker skips this test where CuPy or a GPU is missing (tests/conftest.py)

    model = TwoLayer().to("cuda")
    opt = SGD(model.parameters(), lr=0.1)
    train_steps_on(model, opt, 0, cupy)
    save_checkpoint(tmp_path / "gpu.npz", model, opt, extra={"mean": cupy.arange(3.0)})
    fresh = TwoLayer(seed=4).to("cuda")
    fresh_opt = SGD(fresh.parameters(), lr=0.1)
    extra = load_checkpoint(tmp_path / "gpu.npz", fresh, fresh_opt)
    assert isinstance(extra["mean"], np.ndarray)
    assert all(isinstance(v, cupy.ndarray) for s in fresh_opt.state for v in s.values())
    assert all(isinstance(p.data, cupy.ndarray) for p in fresh.parameters())
    train_steps_on(model, opt, 1, cupy)
    train_steps_on(fresh, fresh_opt, 1, cupy)
    assert_same_state(model, fresh)
    cpu = TwoLayer(seed=5)  # a GPU checkpoint loads on the CPU
    load_checkpoint(tmp_path / "gpu.npz", cpu)
    assert isinstance(cpu.first.weight.data, np.ndarray)


def train_steps_on(model, optimizer, seed, xp):
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((5, 3)).astype(np.float32))
    y = model(x)
    optimizer.zero_grad()
    model.backward(xp.asarray(rng.standard_normal(y.shape).astype(np.float32)))
    optimizer.step()


# -- damaged checkpoints: one ValueError naming the file, never a traceback of another kind ---------

def _basic_checkpoint(tmp_path, name="basic.npz"):
    from minisegnet.models import SegNetBasic

    model = SegNetBasic(channels=4, kernel_size=3, num_classes=5)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    y = model.train()(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    model.backward(np.ones_like(y))
    opt.step()  # momentum buffers exist after one step
    path = tmp_path / name
    save_checkpoint(path, model, opt, extra={"epoch": 1})
    return model, path


def _config_of(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["config"]))


DAMAGED_ENTRIES = {  # entry -> (new value or a function of the stored config, what the message says)
    "version 0": ("format_version", np.asarray(0), r"format 0, but formats start at 1 and this minisegnet reads "
                                                   r"format 1"),
    "negative version": ("format_version", np.asarray(-3), "format -3, but formats start at 1"),
    "float version": ("format_version", np.asarray(1.5), r"format_version 1.5 \(dtype float64\) is not an integer"),
    "string version": ("format_version", np.asarray("1"), "format_version '1' .* is not an integer"),
    "unknown constructor key": ("config", lambda c: json.dumps({**c, "frobs": 3}),
                                "'frobs' that SegNetBasic does not take"),
    "config is a list": ("config", lambda c: json.dumps([1, 2]), "'config' .* should be a JSON object"),
    "config is null": ("config", lambda c: "null", "has no constructor arguments"),
    "bad constructor value": ("config", lambda c: json.dumps({**c, "channels": "many"}), "cannot be rebuilt"),
    "extra is a list": ("extra", lambda c: "[1]", "'extra' should hold a JSON object"),
    "unknown dtype": ("dtype", np.asarray("float13"), "'dtype' is 'float13'"),
}


@pytest.mark.parametrize("case", list(DAMAGED_ENTRIES))
@pytest.mark.parametrize("loader", ["load_model", "load_checkpoint"])
def test_damaged_entries_are_refused_naming_the_file(tmp_path, case, loader):
    model, good = _basic_checkpoint(tmp_path)
    key, value, message = DAMAGED_ENTRIES[case]
    if callable(value):
        value = np.asarray(value(_config_of(good)))
    bad = tmp_path / "damaged.npz"
    _rewrite(good, bad, lambda a: a.update({key: value}))
    if loader == "load_checkpoint" and case == "bad constructor value":
        message = "config differs in channels"  # the model is given: its config is compared instead
    with pytest.raises(ValueError, match=message) as err:
        load_model(bad) if loader == "load_model" else load_checkpoint(bad, model)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("where", ["weight", "running_var", "optimizer"])
def test_non_finite_weights_statistics_or_state_are_refused(tmp_path, where):
    model, good = _basic_checkpoint(tmp_path)
    with np.load(good, allow_pickle=False) as z:
        names = [k for k in z.files if k.startswith("optim/state/" if where == "optimizer" else "model/")
                 and k.endswith(where if where != "optimizer" else "")]
    name = names[0]
    bad = tmp_path / "diverged.npz"

    def poison(arrays):
        value = arrays[name].astype(np.float32).copy()
        value.flat[0] = np.inf if where == "running_var" else np.nan
        arrays[name] = value

    _rewrite(good, bad, poison)
    shown = name.split("/", 1)[1] if where != "optimizer" else "optimizer state"
    with pytest.raises(ValueError, match=r"diverged.npz holds non-finite values \(NaN or inf\) in .*"
                                         + shown.split("/")[0]):
        load_model(bad)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="diverged"):
        load_checkpoint(bad, model, SGD(model.parameters(), lr=0.1, momentum=0.9))
    for k, v in model.state_dict().items():  # nothing was changed
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_nonfinite_arrays_names_and_counts():
    from minisegnet.checkpoint import nonfinite_arrays

    arrays = {"a": np.ones(3), "b": np.array([1.0, np.nan, np.inf]), "c": np.arange(3)}
    assert nonfinite_arrays(arrays) == ["b (2 of 3)"]

"""The training loop: learning, exact resumption, files, time budget, the order of its preparation.

Everything runs on tiny synthetic data (a few 32×48 scenes) and a tiny SegNet-Basic
(8 channels, 3×3 kernels), so the file takes seconds; one test trains on real CamVid for a few
minutes and is skipped without the data.  ``evaluate`` and the BatchNorm recomputation are
tested in test_evaluation.py, the pieces of a run in test_config.py, test_budget.py and
test_run_folder.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minisegnet.checkpoint import load_model, read_checkpoint
from minisegnet.train import TrainConfig, Trainer, train

TINY = dict(
    model="segnet-basic", channels=8, kernel_size=3, dataset="synthetic", synthetic_train=16, synthetic_val=8,
    size=(32, 48), batch_size=4, figure_interval=1e9,
)


def tiny_config(tmp_path, name="run", **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "out_dir": str(tmp_path / name), **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short training run shared by the tests that only inspect its results."""
    out = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(**{**TINY, "out_dir": str(out), "epochs": 5, "optimizer": "adam", "lr": 1e-2,
                            "weight_decay": 0.0})
    return config, train(config, progress=False)


# -- learning ----------------------------------------------------------------------------------
def test_loss_falls_over_a_few_epochs(tiny_run):
    _, result = tiny_run
    losses = [r["mean_loss"] for r in result.history]
    assert len(losses) == 5
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.epochs_completed == 5 and result.steps == 5 * 4 and result.stopped_by == "epochs"


def test_run_writes_checkpoints_log_and_figure(tiny_run):
    config, result = tiny_run
    out = Path(config.out_dir)
    assert result.best_checkpoint == str(out / "best.npz") and result.last_checkpoint == str(out / "last.npz")
    assert result.figure == str(out / "figure.png") and result.log == str(out / "log.jsonl")
    assert not list(out.glob(".*tmp*")), "temporary files left behind"

    records = [json.loads(line) for line in open(result.log)]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_mean_iou" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert [r["epoch"] for r in evals] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(0.0 <= r["val_mean_iou"] <= 1.0 and 0.0 <= r["val_global_accuracy"] <= 1.0 for r in evals)

    with Image.open(result.figure) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 400

    extra = read_checkpoint(result.last_checkpoint, weights=False)["extra"]
    assert extra["epoch"] == 5 and extra["batch"] == 0 and extra["step"] == 20
    assert TrainConfig.from_dict(extra["train_config"]).channels == 8
    assert len(extra["normalization"]["mean"]) == 3 and len(extra["class_weights"]) == 11
    assert len(extra["history"]) == 5
    best = read_checkpoint(result.best_checkpoint, weights=False)["extra"]
    assert best["metrics"]["mean_iou"] == pytest.approx(max(r["val_mean_iou"] for r in evals))

    model, _ = load_model(result.last_checkpoint)  # a checkpoint rebuilds the trained network
    assert model.arch == "segnet-basic" and model.config["channels"] == 8


def test_final_metrics_are_those_of_the_last_evaluation(tiny_run):
    _, result = tiny_run
    assert result.metrics["mean_iou"] == pytest.approx(result.history[-1]["val_mean_iou"])
    assert len(result.metrics["per_class_iou"]) == 11


# -- exact resumption --------------------------------------------------------------------------
def _weights(path):
    contents = read_checkpoint(path)
    return contents["model"], contents["optimizer"]["state"]


def _assert_same_state(path_a, path_b):
    model_a, optim_a = _weights(path_a)
    model_b, optim_b = _weights(path_b)
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        np.testing.assert_array_equal(model_a[name], model_b[name], err_msg=name)
    assert optim_a.keys() == optim_b.keys()
    for i in optim_a:
        for key in optim_a[i]:
            np.testing.assert_array_equal(optim_a[i][key], optim_b[i][key], err_msg=f"optimizer {i} {key}")


@pytest.mark.parametrize("stop_after", [4, 3], ids=["after-an-epoch", "mid-epoch"])
def test_resumed_run_gives_the_same_weights(tmp_path, stop_after):
    # Dropout (Bayesian SegNet-Basic), flips, SGD momentum and a poly schedule: every source of
    # state or randomness that resumption must restore.
    common = dict(model="bayesian-segnet-basic", epochs=2, schedule="poly", lr=0.05, figure=False)
    straight = train(tiny_config(tmp_path, "straight", **common), progress=False)

    interrupted = train(tiny_config(tmp_path, "resumed", max_steps=stop_after, **common), progress=False)
    assert interrupted.steps == stop_after and interrupted.stopped_by == "max_steps"
    resumed = train(tiny_config(tmp_path, "resumed", resume="auto", **common), progress=False)
    assert resumed.steps == straight.steps == 8

    _assert_same_state(straight.last_checkpoint, resumed.last_checkpoint)
    assert resumed.metrics["mean_iou"] == straight.metrics["mean_iou"]
    extra = read_checkpoint(resumed.last_checkpoint, weights=False)["extra"]
    assert [r["step"] for r in extra["history"]][-1] == 8
    steps = [json.loads(line)["step"] for line in open(resumed.log) if '"loss"' in line]
    assert steps == list(range(1, 9))  # the log continues without gaps or repeats


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume"):
        Trainer(tiny_config(tmp_path, epochs=1, resume=str(tmp_path / "nope.npz")), progress=False)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="junk.npz"):
        Trainer(tiny_config(tmp_path, epochs=1, resume=str(junk)), progress=False)


def test_bare_resume_takes_the_settings_and_the_length_from_the_checkpoint(tmp_path):
    first = train(tiny_config(tmp_path, epochs=1, figure=False), progress=False)
    # No length, no model, no data: a bare resume. The check "give epochs, minutes or max_steps"
    # sees the merged settings, so the run goes on as it was planned.
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), resume="auto", figure=False), progress=False)
    assert trainer.config.epochs == 1 and trainer.config.channels == 8 and trainer.config.dataset == "synthetic"
    assert trainer.config.size == (32, 48) and trainer.step == first.steps
    result = trainer.fit()
    assert result.stopped_by == "epochs" and result.steps == first.steps


def test_resume_survives_a_half_written_last_log_line(tmp_path):
    common = dict(epochs=2, figure=False)
    train(tiny_config(tmp_path, max_steps=4, **common), progress=False)
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"step": 5, "epoch": 1.25, "lo')  # the process was killed in the middle of this write
    with pytest.warns(RuntimeWarning, match=r"log\.jsonl: line \d+ is incomplete"):
        resumed = train(tiny_config(tmp_path, resume="auto", **common), progress=False)
    assert resumed.steps == 8
    records = [json.loads(line) for line in open(log, encoding="utf-8")]  # every line is a record again
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))


# -- preparation -------------------------------------------------------------------------------
def test_the_output_folder_is_checked_before_the_data_is_read(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the run folder should go")
    # The data folder is missing too, but the output folder is checked first: before minutes of decoding.
    with pytest.raises(NotADirectoryError, match="output folder .*taken"):
        Trainer(TrainConfig(out_dir=str(blocker), dataset="camvid", data_dir=str(tmp_path / "nope"), epochs=1),
                progress=False)


def test_a_failed_start_leaves_the_previous_run_alone(tmp_path):
    first = train(tiny_config(tmp_path, epochs=1, figure=False), progress=False)
    before = {name: (Path(first.log).parent / name).read_bytes() for name in ("log.jsonl", "best.npz", "last.npz")}
    # --overwrite replaces an earlier run, but only once the new one has started: not when its data is missing
    with pytest.raises(FileNotFoundError):
        Trainer(tiny_config(tmp_path, dataset="camvid", data_dir=str(tmp_path / "nope"), epochs=1, overwrite=True),
                progress=False)
    assert {name: (Path(first.log).parent / name).read_bytes() for name in before} == before
    assert not (tmp_path / "run" / "run.lock").exists()  # and the lock went with the failed start


def test_initial_weights_come_from_the_seed_alone(tmp_path):
    before = np.random.get_state()
    a = Trainer(tiny_config(tmp_path, "a", epochs=1), progress=False).model.state_dict()
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(before[1:], after[1:]))  # NumPy's global generator untouched
    np.random.seed(123)  # ... and it plays no part
    b = Trainer(tiny_config(tmp_path, "b", epochs=1), progress=False).model.state_dict()
    c = Trainer(tiny_config(tmp_path, "c", epochs=1, seed=1), progress=False).model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_the_training_step_does_not_differentiate_the_image(tmp_path, monkeypatch):
    calls = []
    trainer = Trainer(tiny_config(tmp_path, max_steps=1, figure=False), progress=False)
    backward = trainer.model.backward
    monkeypatch.setattr(trainer.model, "backward", lambda *a, **kw: calls.append(kw) or backward(*a, **kw),
                        raising=False)
    trainer.fit()
    assert calls == [{"input_grad": False}]


# -- time budget -------------------------------------------------------------------------------
def test_time_budget_is_respected(tmp_path):
    budget = 0.15  # minutes: the whole call, data preparation and final evaluation included
    started = time.monotonic()
    # No schedule: a poly schedule stretched over the budget may end the run just before it
    # ("schedule"); this test is about the budget itself stopping the run.
    result = train(tiny_config(tmp_path, minutes=budget, schedule="none"), progress=False)
    wall = time.monotonic() - started
    assert result.stopped_by == "minutes"
    assert result.steps > 0 and Path(result.last_checkpoint).is_file() and Path(result.figure).is_file()
    assert wall < 60 * budget + 3.0, f"{wall:.1f} s for a budget of {60 * budget:.0f} s"


def test_the_budget_counts_from_the_start_it_is_given(tmp_path):
    """``started`` (the command's import time) is when the budget's clock began: the time before it counts."""
    earlier = time.monotonic() - 6.0  # six of the budget's nine seconds already spent
    trainer = Trainer(tiny_config(tmp_path, minutes=0.15, schedule="none"), progress=False, started=earlier)
    assert trainer.start_time == earlier and trainer.elapsed() >= 6.0
    result = trainer.fit()
    assert result.stopped_by == "minutes" and time.monotonic() - earlier < 9.0 + 3.0


def test_the_installed_command_counts_its_budget_from_the_package_import(monkeypatch):
    import minisegnet
    import minisegnet.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "main", lambda argv=None, *, started=None: seen.setdefault("started", started) and 0)
    cli.command()
    assert seen["started"] == minisegnet.IMPORT_STARTED <= time.monotonic()


def test_the_import_time_comes_before_numpy_is_imported():
    """In a fresh interpreter, ``IMPORT_STARTED`` is taken before the imports it must cover (NumPy's above all)."""
    import subprocess
    import sys

    probe = ("import time, sys; before = time.monotonic(); import minisegnet; after = time.monotonic(); "
             "print(before <= minisegnet.IMPORT_STARTED <= after, 'numpy' in sys.modules, "
             "(after - minisegnet.IMPORT_STARTED) / (after - before))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["True", "True"] and float(out[2]) > 0.9, out  # nearly all of the import comes after it


def test_time_budget_stretches_a_poly_schedule(tmp_path):
    result = train(tiny_config(tmp_path, minutes=0.15, schedule="poly", figure=False), progress=False)
    extra = read_checkpoint(result.last_checkpoint, weights=False)["extra"]
    lrs = [json.loads(line)["lr"] for line in open(result.log) if '"loss"' in line]
    assert extra["schedule_steps"] is not None and extra["schedule_steps"] >= result.steps - 1
    assert lrs[-1] < lrs[0]


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(model="unet"), "unknown model"),
        (dict(epochs=None), "epochs, minutes or max_steps"),
        (dict(size="180by240"), "bad size"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(batch_size=0), "batch_size"),
        (dict(crop=(64, 64)), "crop"),
    ],
)
def test_bad_configuration_is_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_config(tmp_path, **{"epochs": 1, **overrides}), progress=False)


def test_missing_camvid_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="CamVid folder not found"):
        Trainer(tiny_config(tmp_path, dataset="camvid", data_dir=str(tmp_path / "nope"), epochs=1), progress=False)


# -- BatchNorm statistics ----------------------------------------------------------------------
def test_recompute_bn_option_records_a_final_evaluation(tmp_path):
    result = train(tiny_config(tmp_path, epochs=1, recompute_bn=True, figure=False), progress=False)
    assert [r.get("bn_recomputed", False) for r in result.history] == [False, True]
    assert result.metrics["mean_iou"] == pytest.approx(result.history[-1]["val_mean_iou"])


# -- real data ---------------------------------------------------------------------------------
# A fixed number of steps (not a time budget), so that what is learnt does not depend on how
# busy the machine is: two epochs of CamVid at 72x96, about a minute on two idle cores.
CAMVID_EPOCHS = 2
CAMVID_MIOU_FLOOR = 0.15  # predicting the most frequent class everywhere gives about 0.03


@pytest.mark.camvid
@pytest.mark.slow
def test_short_camvid_training_learns(camvid_root, tmp_path):
    config = TrainConfig(
        model="segnet-basic", channels=32, kernel_size=3, dataset="camvid", data_dir=str(camvid_root),
        size=(72, 96), batch_size=8, epochs=CAMVID_EPOCHS, optimizer="adam", lr=2e-3, weight_decay=0.0,
        schedule="poly", recompute_bn=True, out_dir=str(tmp_path / "camvid"), figure=False,
    )
    result = train(config, progress=False)
    losses = [json.loads(line)["loss"] for line in open(result.log) if '"loss"' in line]
    k = max(1, len(losses) // 5)
    assert np.mean(losses[-k:]) < 0.8 * np.mean(losses[:k]), "the training loss did not fall"
    assert result.metrics["mean_iou"] > CAMVID_MIOU_FLOOR, result.metrics

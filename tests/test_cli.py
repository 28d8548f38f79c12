"""The ``minisegnet`` command: help, version, each command, and one-line errors for user mistakes.

Most tests call ``main(argv)`` in-process (fast); a few run ``python -m minisegnet`` in a
subprocess to check what a user really sees: exit status, stderr, no traceback, Ctrl-C.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minisegnet
from minisegnet.checkpoint import load_model
from minisegnet.cli import main
from minisegnet.data import SyntheticStreets
from cli_helpers import assert_one_line_error

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = ["--synthetic", "--model", "segnet-basic", "--channels", "8", "--kernel-size", "3", "--size", "32x48",
              "--batch-size", "4", "--train-limit", "16", "--val-limit", "8", "--quiet"]


def run_cli(*args, timeout=120):
    """``python -m minisegnet ARGS`` in a subprocess (repository root on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "minisegnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the command line (one epoch of synthetic scenes)."""
    out = tmp_path_factory.mktemp("cli-run")
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A street scene saved as an RGB PNG of an odd size."""
    image, _ = SyntheticStreets(1, size=(37, 53), seed=3)[0]
    path = tmp_path_factory.mktemp("photos") / "street.png"
    Image.fromarray(image).save(path)
    return path


# -- help and version --------------------------------------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"minisegnet {minisegnet.__version__}"


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "evaluate", "predict", "download-camvid"):
        assert command in out


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "predict", "download-camvid"])
def test_each_command_has_help(capsys, command):
    assert main([command, "--help"]) == 0
    assert f"usage: minisegnet {command}" in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"minisegnet {minisegnet.__version__}"


# -- user mistakes: one line on stderr, exit status 2 --------------------------------------------
@pytest.fixture
def junk_checkpoint(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a checkpoint")
    return path


@pytest.fixture
def foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.zeros(3))
    return path


USER_MISTAKES = {
    "bad size": (["train", "--synthetic", "--epochs", "1", "--size", "180by240"], ["--size", "180by240"]),
    "unknown model": (["train", "--synthetic", "--epochs", "1", "--model", "unet"], ["unet"]),
    "missing data folder": (["train", "--data", "{tmp}/nowhere", "--epochs", "1"], ["nowhere"]),
    "no length": (["train", "--synthetic"], ["--epochs"]),
    "negative minutes": (["train", "--synthetic", "--minutes", "-1"], ["--minutes"]),
    "unknown option": (["train", "--synthetic", "--epochs", "1", "--frobnicate"], ["--frobnicate"]),
    "unknown command": (["fly"], ["fly"]),
    "missing checkpoint": (["evaluate", "--synthetic", "{tmp}/none.npz"], ["none.npz"]),
    "corrupt checkpoint": (["evaluate", "--synthetic", "{junk}"], ["junk.npz"]),
    "foreign npz": (["predict", "{foreign}", "{photo}", "--out", "{tmp}/p"], ["foreign.npz", "not a minisegnet"]),
    "missing image": (["predict", "{ckpt}", "{tmp}/nope.png", "--out", "{tmp}/p"], ["nope.png"]),
    "unreadable image": (["predict", "{ckpt}", "{junk}", "--out", "{tmp}/p"], ["junk.npz"]),
    "uncertainty without dropout": (["predict", "{ckpt}", "{photo}", "--out", "{tmp}/p", "--uncertainty"],
                                    ["dropout"]),
    "missing evaluation data": (["evaluate", "--data", "{tmp}/nowhere", "{ckpt}"], ["nowhere"]),
    "resume from nothing": (["train", "--synthetic", "--epochs", "1", "--resume", "{tmp}/none.npz"], ["none.npz"]),
    "download into a used folder": (["download-camvid", "{used}"], ["not a complete CamVid folder"]),
    "cuda without a GPU": (["train", *TINY_TRAIN, "--epochs", "1", "--device", "cuda", "--out", "{tmp}/g"], ["cuda"]),
    "scale jitter of one number": (["train", "--synthetic", "--epochs", "1", "--scale-jitter", "1.2"],
                                   ["--scale-jitter", "LO,HI", "'1.2'"]),
    "scale jitter not numbers": (["train", "--synthetic", "--epochs", "1", "--scale-jitter", "a,b"],
                                 ["--scale-jitter", "LO,HI", "'a,b'"]),
    "scale jitter backwards": (["train", "--synthetic", "--epochs", "1", "--scale-jitter", "1.25,0.75"],
                               ["--scale-jitter", "0 < LO <= HI"]),
}


@pytest.mark.parametrize("mistake", list(USER_MISTAKES))
def test_user_mistake_is_one_line_and_status_2(mistake, capsys, tmp_path, trained, junk_checkpoint, foreign_npz,
                                               photo):
    argv, fragments = USER_MISTAKES[mistake]
    if mistake == "cuda without a GPU" and minisegnet.cuda_is_available():
        pytest.skip("a GPU is present here")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    names = dict(tmp=tmp_path, junk=junk_checkpoint, foreign=foreign_npz, photo=photo, ckpt=trained / "best.npz",
                 used=used)
    argv = [a.format(**names) for a in argv]
    rc = main(argv)
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.err, *fragments)


def test_user_mistake_in_a_real_process(tmp_path, junk_checkpoint):
    proc = run_cli("evaluate", "--synthetic", junk_checkpoint)
    assert_one_line_error(proc.returncode, proc.stderr, "junk.npz")
    proc = run_cli("train", "--data", tmp_path / "nowhere", "--epochs", "1")
    assert_one_line_error(proc.returncode, proc.stderr, "nowhere")


# -- the commands ------------------------------------------------------------------------------
def test_train_writes_a_usable_run(trained, capsys):
    for name in ("best.npz", "last.npz", "log.jsonl", "figure.png"):
        assert (trained / name).is_file(), name
    model, extra = load_model(trained / "best.npz")
    assert model.arch == "segnet-basic" and extra["size"] == [32, 48]


def test_train_resume_continues_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out / "last.npz"), "--epochs", "2", "--quiet"]) == 0
    _, extra = load_model(out / "last.npz")
    assert extra["epoch"] == 2
    assert "mIoU" in capsys.readouterr().out


def _checkpoint_arrays(path):
    contents = np.load(path, allow_pickle=False)
    return {k: contents[k] for k in contents.files if k.startswith(("model/", "optim/state/"))}


def test_bare_resume_goes_on_as_planned(tmp_path, monkeypatch, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "2", "--out", str(straight)]) == 0

    # The same run, interrupted (Ctrl-C) in its second epoch: last.npz holds the end of epoch 1.
    import minisegnet.train as train_module

    reseed = train_module._reseed_dropout

    def interrupt_in_epoch_2(model, seed, epoch, batch):
        if (epoch, batch) == (1, 2):
            raise KeyboardInterrupt
        reseed(model, seed, epoch, batch)

    monkeypatch.setattr(train_module, "_reseed_dropout", interrupt_in_epoch_2)
    assert main(["train", *TINY_TRAIN, "--epochs", "2", "--out", str(run)]) == 130
    monkeypatch.undo()
    assert load_model(run / "last.npz")[1]["epoch"] == 1

    # `minisegnet train --resume DIR` alone: no length, no data, no model; all from the checkpoint.
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _, extra = load_model(run / "last.npz")
    assert extra["epoch"] == 2 and extra["step"] == 8 and extra["train_config"]["epochs"] == 2
    assert "mIoU" in capsys.readouterr().out
    resumed, uninterrupted = _checkpoint_arrays(run / "last.npz"), _checkpoint_arrays(straight / "last.npz")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


def test_a_library_warning_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    with open(out / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 5, "epo')  # a kill in the middle of a log write
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minisegnet: warning: ") and "log.jsonl: line" in err[0], err


def test_evaluate_prints_scores_and_the_class_table(trained, capsys):
    assert main(["evaluate", "--synthetic", str(trained / "best.npz"), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    for word in ("Sky", "Road", "Bicyclist", "IoU", "G ", "C ", "mIoU", "BF"):
        assert word in out, word
    assert main(["evaluate", "--synthetic", "--no-boundary", str(trained / "best.npz"), "--limit", "4"]) == 0
    assert "BF" not in capsys.readouterr().out


def test_predict_writes_label_pngs_and_overlays(trained, photo, tmp_path, capsys):
    out = tmp_path / "predictions"
    assert main(["predict", str(trained / "best.npz"), str(photo), "--out", str(out)]) == 0
    for suffix in ("labels", "overlay", "ids"):
        with Image.open(out / f"street_{suffix}.png") as im:
            assert im.size == (53, 37), suffix  # the photo's own size
    ids = np.asarray(Image.open(out / "street_ids.png"))
    assert ids.dtype == np.uint8 and ids.max() <= 10
    assert "street_overlay.png" in capsys.readouterr().out


def test_predict_uncertainty_for_a_bayesian_model(tmp_path, photo):
    run = tmp_path / "bayes"
    argv = ["train", *TINY_TRAIN, "--epochs", "1", "--out", str(run)]
    argv[argv.index("segnet-basic")] = "bayesian-segnet-basic"
    assert main(argv) == 0
    out = tmp_path / "predictions"
    assert main(["predict", str(run / "last.npz"), str(photo), "--out", str(out), "--uncertainty",
                 "--samples", "3"]) == 0
    with Image.open(out / "street_uncertainty.png") as im:
        assert im.size == (53, 37)


def test_demo_smoke(tmp_path):
    proc = run_cli("demo", "--minutes", "0.25", "--out", tmp_path / "demo", "--quiet", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "mIoU" in proc.stdout and "figure:" in proc.stdout
    assert (tmp_path / "demo" / "figure.png").is_file()


def test_ctrl_c_exits_130_and_leaves_complete_checkpoints(tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # SIGINT as a terminal gives it: restored to its default in the child, since the suite itself may run
    # with SIGINT ignored (a background job, nohup), and an ignored SIGINT stays ignored (issue 10).
    proc = subprocess.Popen(
        [sys.executable, "-m", "minisegnet", "train", *TINY_TRAIN, "--epochs", "1000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.npz").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "last.npz").is_file(), "no checkpoint appeared"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("minisegnet: interrupted")
    assert f"resume with: minisegnet train --resume {out}" in err
    load_model(out / "last.npz")  # complete and loadable
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_eval_every_scores_every_nth_epoch_and_the_end(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "3", "--eval-every", "2", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scored = [r["epoch"] for r in records if "val_mean_iou" in r]
    assert scored == [2, 3]  # epoch 2, then the end of the run (epoch 3), not epoch 1
    assert load_model(out / "last.npz")[1]["train_config"]["eval_every"] == 2
    # a bare resume goes on with the run's interval; --eval-every given with it decides
    assert main(["train", "--resume", str(out), "--epochs", "4", "--quiet"]) == 0
    assert load_model(out / "last.npz")[1]["train_config"]["eval_every"] == 2
    assert main(["train", "--resume", str(out), "--epochs", "5", "--eval-every", "1", "--quiet"]) == 0
    assert load_model(out / "last.npz")[1]["train_config"]["eval_every"] == 1
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_mean_iou" in r] == [2, 3, 4, 5]


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_eval_every_must_be_a_positive_number_of_epochs(value, capsys):
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--eval-every", value]) == 2
    assert "--eval-every" in capsys.readouterr().err


def test_scale_jitter_reaches_the_run_and_a_resume_keeps_it(tmp_path, capsys, monkeypatch):
    import minisegnet.run_setup as run_setup
    from minisegnet.data import TrainTransform

    made = []

    def recording(*args, **kwargs):  # the training loader's transform, as the run builds it
        made.append(TrainTransform(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(run_setup, "TrainTransform", recording)
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--scale-jitter", "0.75,1.25", "--out", str(out)]) == 0
    assert [t.scale for t in made] == [(0.75, 1.25)]
    assert load_model(out / "last.npz")[1]["train_config"]["scale_jitter"] == [0.75, 1.25]
    capsys.readouterr()
    # another value with --resume is refused, in one line naming the option, the value and the run's
    rc = main(["train", "--resume", str(out), "--epochs", "2", "--scale-jitter", "0.8,1.2", "--quiet"])
    assert_one_line_error(rc, capsys.readouterr().err, "--scale-jitter 0.8,1.2 (the run has 0.75,1.25)")
    # the same value typed again, or none: the run goes on with its jitter
    assert main(["train", "--resume", str(out), "--epochs", "2", "--scale-jitter", "0.75,1.25", "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    assert [t.scale for t in made] == [(0.75, 1.25)] * 3
    assert load_model(out / "last.npz")[1]["train_config"]["scale_jitter"] == [0.75, 1.25]


def test_no_scale_jitter_by_default(tmp_path, monkeypatch):
    import minisegnet.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_run_training",
                        lambda config, progress, given=None, started=None: seen.append(config) or 0)
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(tmp_path / "b"), "--scale-jitter=0.5,2"]) == 0
    assert [c.scale_jitter for c in seen] == [None, (0.5, 2.0)]

"""The run folder: probing, cleaning up after killed writes, the log, the two checkpoints, resume reading."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import minisegnet.run_folder as run_folder
from minisegnet.checkpoint import save_checkpoint
from minisegnet.config import TrainConfig
from minisegnet.models import SegNetBasic
from minisegnet.run_folder import (
    CHECKPOINT_KIND,
    RunFolder,
    checkpoint_preprocessing,
    json_ready,
    read_log,
    read_resume_state,
    resolve_resume,
)


def test_prepare_creates_the_folder_and_removes_only_leftovers_of_killed_writes(tmp_path):
    folder = RunFolder(tmp_path / "a" / "run")
    assert folder.prepare() == [] and folder.path.is_dir()
    leftovers = [".last.npz.1f2e3d4c.tmp", ".best.npz.00aa11bb.tmp", ".log.jsonl.tmp", ".figure.png.tmp"]
    mine = ["notes.tmp", ".last.npz", "last.npz.tmp", ".other.npz.1234.tmp", "best.npz"]
    for name in leftovers + mine:
        (folder.path / name).write_text("x")
    removed = folder.prepare()
    assert sorted(p.name for p in removed) == sorted(leftovers)
    assert sorted(p.name for p in folder.path.iterdir()) == sorted(mine)  # nothing else is touched


def test_prepare_refuses_a_file_or_an_unwritable_folder_in_one_clear_sentence(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(NotADirectoryError, match=f"output folder {taken} is a file"):
        RunFolder(taken).prepare()
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("permissions do not stop root (or this system)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OSError, match=f"cannot write into the output folder {locked}.*--out"):
            RunFolder(locked / "run").prepare()
        with pytest.raises(OSError, match="cannot write into the output folder"):
            RunFolder(locked).prepare()
    finally:
        locked.chmod(0o700)


# -- the log -----------------------------------------------------------------------------------
def test_a_half_written_last_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match=rf"{log}: line 4 is incomplete \(a write was interrupted\)"):
        assert read_log(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')
    with pytest.warns(RuntimeWarning, match="line 2 is not a JSON record"):
        assert read_log(log) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\n{"step": 2}')  # complete, only the newline missing: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_log(log) == [{"step": 1}, {"step": 2}]


def test_restart_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    folder.restart_log()
    for step in range(1, 6):
        folder.append_log({"step": step, "loss": float(step)})
    folder.append_log({"epoch": 1.0, "step": 4, "val_mean_iou": float("nan")})  # NaN is written as null
    folder.log.write_text(folder.log.read_text() + '{"step": 6, "lo')  # killed while writing
    with pytest.warns(RuntimeWarning, match="incomplete"):
        folder.restart_log(keep_until=4, event={"event": "resume", "step": 4})
    records = [json.loads(line) for line in folder.log.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4, 4]
    assert records[4]["val_mean_iou"] is None and records[-1] == {"event": "resume", "step": 4}
    folder.restart_log()
    assert folder.log.read_text() == ""
    assert not list(tmp_path.glob(".*tmp"))


def test_json_ready():
    assert json_ready({"a": np.float32(0.5), "b": [float("inf"), np.int64(3)], 4: (1, float("nan"))}) == \
        {"a": 0.5, "b": [None, 3], "4": [1, None]}


# -- checkpoints -------------------------------------------------------------------------------
def _extra(**overrides):
    extra = {"kind": CHECKPOINT_KIND, "epoch": 2, "batch": 1, "step": 9, "size": [32, 48],
             "train_config": TrainConfig(channels=8, epochs=3).to_dict(),
             "normalization": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}, "class_weights": None,
             "history": [{"step": 8}], "best_mean_iou": None, "schedule_steps": 30, "wall_seconds": 12.5}
    return {**extra, **overrides}


def test_best_is_written_before_last(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(run_folder, "save_checkpoint", lambda path, *a: written.append(path.name))
    folder = RunFolder(tmp_path)
    folder.save_checkpoints(None, None, {}, best=True)
    folder.save_checkpoints(None, None, {}, best=False)
    assert written == ["best.npz", "last.npz", "last.npz"]


def test_read_resume_state(tmp_path):
    model = SegNetBasic(channels=4, kernel_size=3, rng=0)
    path = tmp_path / "last.npz"
    save_checkpoint(path, model, None, _extra())
    state = read_resume_state(path)
    assert (state.epoch, state.batch, state.step, state.schedule_steps) == (2, 1, 9, 30)
    assert state.config.channels == 8 and state.config.epochs == 3 and state.best_mean_iou == float("-inf")
    assert state.mean.dtype == np.float32 and state.class_weights is None and state.wall_seconds == 12.5
    assert checkpoint_preprocessing(_extra(), path)[2] == (32, 48)
    assert state.schedule_anchor == (0, 0.0)  # written before schedules were re-planned: from the start
    save_checkpoint(path, model, None, _extra(schedule_anchor=[12, 0.25]))
    assert read_resume_state(path).schedule_anchor == (12, 0.25)
    for bad in ([12, 1.5], [-1, 0.2], [12], "12,0.2", [True, 0.2]):
        save_checkpoint(path, model, None, _extra(schedule_anchor=bad))
        with pytest.raises(ValueError, match=r"last.npz: expected schedule_anchor as \[step >= 0, progress in "
                                             r"\[0, 1\]\], got .*damaged checkpoint"):
            read_resume_state(path)

    save_checkpoint(path, model, None, {"epoch": 1})
    with pytest.raises(ValueError, match="last.npz was not written by minisegnet's training loop"):
        read_resume_state(path)
    with pytest.raises(ValueError, match="holds no normalisation"):
        checkpoint_preprocessing({"epoch": 1}, path)
    save_checkpoint(path, model, None, _extra(normalization=None, epoch="two"))
    with pytest.raises(ValueError, match="last.npz lacks epoch, normalization"):
        read_resume_state(path)


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing to resume: a fresh run
    (tmp_path / "last.npz").write_bytes(b"")
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.npz"
    assert resolve_resume(str(tmp_path), "elsewhere") == tmp_path / "last.npz"  # a run folder
    with pytest.raises(FileNotFoundError, match="resume from not found: .*nope.npz"):
        resolve_resume(str(tmp_path / "nope.npz"), tmp_path)


# -- failed writes, an earlier run, the lock ------------------------------------------------------
def test_a_failed_checkpoint_write_is_one_sentence_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    model = SegNetBasic(channels=4, kernel_size=3, rng=0)
    folder = RunFolder(tmp_path)
    folder.save_checkpoints(model, None, _extra(), best=True)
    before = folder.last.read_bytes()

    def full_disk(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "save_checkpoint", full_disk)
    with pytest.raises(run_folder.RunFolderWriteError,
                       match=rf"^cannot write {tmp_path}/last.npz \(No space left on device\); the previous last.npz "
                             "is kept$"):
        folder.save_checkpoints(model, None, _extra(), best=False)
    assert folder.last.read_bytes() == before
    monkeypatch.undo()

    def full_append(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", full_append)
    with pytest.raises(run_folder.RunFolderWriteError, match="cannot write .*log.jsonl"):
        folder.append_log({"step": 1})


def test_existing_run_and_checkpoint_step(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.existing_run() is None
    folder.log.write_text("")
    assert folder.existing_run() is None  # an empty log is no run
    save_checkpoint(folder.last, SegNetBasic(channels=4, kernel_size=3, rng=0), None, _extra())
    folder.log.write_text('{"step": 1}\n')
    assert folder.existing_run() == "last.npz (step 9), log.jsonl"
    assert run_folder.checkpoint_step(folder.last) == 9 and run_folder.checkpoint_step(tmp_path / "none") is None
    folder.remove_old_run()
    assert not folder.last.exists() and folder.log.exists()


def test_catch_up_copies_last_when_it_is_the_best(tmp_path):
    folder = RunFolder(tmp_path)
    save_checkpoint(folder.last, SegNetBasic(channels=4, kernel_size=3, rng=0), None, _extra(best_step=9))
    state = read_resume_state(folder.last)
    assert state.best_step == 9
    assert "caught up" in folder.catch_up_best(state)
    assert folder.best.read_bytes() == folder.last.read_bytes()
    assert folder.catch_up_best(state) is None  # consistent now
    # an old checkpoint without best_step: the last record marked best
    save_checkpoint(folder.last, SegNetBasic(channels=4, kernel_size=3, rng=0), None,
                    _extra(history=[{"step": 4, "best": True}, {"step": 8, "best": False}]))
    assert read_resume_state(folder.last).best_step == 4

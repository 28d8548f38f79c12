"""write_atomically: the old file or the whole new one, and no temporary file left behind."""
from __future__ import annotations

import pytest

from minisegnet.atomic import write_atomically


def test_writes_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    assert write_atomically(target, lambda f: f.write("new\n"), binary=False) == str(target)
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_an_interruption_right_after_the_temporary_is_created_removes_it(tmp_path, monkeypatch):
    """A second Ctrl-C can raise between ``os.open`` creating the file and the name ``fd`` being bound."""
    import os

    import minisegnet.atomic as atomic

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        real_open(*args, **kwargs)  # the file exists now ...
        raise KeyboardInterrupt  # ... and the signal's exception comes before the descriptor is returned

    monkeypatch.setattr(atomic.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_name_taken_by_somebody_else_is_left_alone(tmp_path, monkeypatch):
    import minisegnet.atomic as atomic

    target = tmp_path / "a.bin"
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "cafe")
    theirs = tmp_path / ".a.bin.cafe.tmp"
    theirs.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_atomically(target, lambda f: f.write(b"new"))
    assert theirs.read_bytes() == b"theirs" and not target.exists()

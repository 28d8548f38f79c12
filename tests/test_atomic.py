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

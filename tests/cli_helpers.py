"""Helpers shared by the command-line tests (imported by name: pytest puts tests/ on sys.path)."""
from __future__ import annotations


def assert_one_line_error(rc, err, *fragments):
    """A user mistake: exit status 2 and one line ``minisegnet: error: ...`` holding every fragment."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minisegnet: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], err

"""minisegnet.allocator: freed large blocks are kept for reuse (glibc), the environment wins, the command applies it.

The effect is measured where it shows: the page faults of allocating a 64 MB array again
after freeing it, in a fresh interpreter each time (the policy is process-wide, and this
test process may already have it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minisegnet import allocator, cli

REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, resource, sys
import numpy as np
from minisegnet.allocator import keep_freed_memory
result = keep_freed_memory() if sys.argv[1] == "keep" else (False, "not asked")
faults = []
for _ in range(3):  # allocate, touch and free 64 MB three times: the last two are what reuse saves
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(16 * 2**20, dtype=np.float32)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(json.dumps({"in_effect": result[0], "why": result[1], "faults": faults}))
"""


def probe(mode: str, **environment) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout)


glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="the policy is glibc's (this is not glibc)")


@glibc_only
def test_a_freed_block_is_reused_without_page_faults():
    kept = probe("keep")
    assert kept["in_effect"], kept["why"]
    system = probe("system")
    # 64 MB is at least 32 huge pages or 16,384 small ones; the system default maps it afresh every time
    assert min(system["faults"][1:]) >= 32, system
    assert max(kept["faults"][1:]) <= 4, kept  # taken back warm from the heap


@glibc_only
@pytest.mark.parametrize("variable, value", [("MALLOC_MMAP_THRESHOLD_", "1048576"),
                                             ("MALLOC_TRIM_THRESHOLD_", "1048576"),
                                             ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")])
def test_the_environment_wins(variable, value):
    result = probe("keep", **{variable: value})
    assert not result["in_effect"] and variable in result["why"]


@glibc_only
def test_an_unrelated_glibc_tunable_does_not_count_as_a_choice():
    result = probe("keep", GLIBC_TUNABLES="glibc.rtld.optional_static_tls=1024")
    assert result["in_effect"], result["why"]


def test_not_glibc_is_left_alone_and_says_so(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    for variable in allocator.USER_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    in_effect, why = allocator.keep_freed_memory()
    assert not in_effect and "not glibc" in why


def test_the_command_applies_it_before_running_a_command(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("called") or (True, "test"))
    status = cli.main(["evaluate", "--data", str(tmp_path / "nowhere"), str(tmp_path / "missing.npz")])
    assert status == cli.EXIT_USAGE and calls == ["called"]
    assert "error" in capsys.readouterr().err
    calls.clear()
    assert cli.main(["--version"]) == 0 and calls == []  # nothing to run: nothing changed

"""The scripts in examples/ run on the public API and exit with status 0 (small arguments).

Each runs in a fresh interpreter (``sys.executable``), from a temporary working directory, with
the repository root first on ``PYTHONPATH`` so that this checkout's ``minisegnet`` is the one
imported, installed or not.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
TIMEOUT = 300  # seconds per script; each takes a few seconds on an idle 2-core machine

# script -> (arguments, what its output must contain)
RUNS = {
    "gradcheck_layers.py": (
        ["--max-elements", "20"],
        ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "MaxUnpool2d", "Dropout", "SoftmaxCrossEntropy",
         "all gradients agree"],
    ),
    "segnet_memory.py": (["--width", "0.0625", "--size", "45x60"], ["uint8 (1, 4, 23, 30)", "FCN-style"]),
    "train_synthetic.py": (["--quick"], ["stopped by max_steps", "reloaded segnet-basic"]),
}


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, "1")  # small matrices: see BLAS_THREADS in test_tutorials.py
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )


def test_every_example_is_exercised():
    """A new script in examples/ must get a smoke run here."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name, tmp_path):
    args, expected = RUNS[name]
    result = run_example(name, args, tmp_path)
    assert result.returncode == 0, (
        f"examples/{name} {' '.join(args)} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    missing = [text for text in expected if text not in result.stdout]
    assert not missing, f"examples/{name}: output lacks {missing}\n--- stdout ---\n{result.stdout[-3000:]}"
    assert list(tmp_path.iterdir()) == [], f"examples/{name} left files in its working directory"


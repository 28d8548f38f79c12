"""The tutorials are executed, top to bottom, and their check cells must pass.

d2l's rule: every notebook runs in CI, so a tutorial that stops being true fails the build.
Each notebook in tutorials/ ends with a "# Check" cell of assertions about what it teaches;
running the notebook runs them.

* ``test_notebook_runs`` executes each notebook with nbclient in a fresh ``python3`` kernel,
  working directory tutorials/, at most ``CELL_TIMEOUT`` seconds per cell.  The kernel inherits
  the environment, with this repository first on ``PYTHONPATH`` (so it imports this checkout's
  ``minisegnet``, installed or not) and one BLAS thread (see ``BLAS_THREADS``).  Skipped, with
  the reason, where nbclient, nbformat or ipykernel is missing (``pip install -e ".[test]"``).
* The other tests only read the files (plain JSON): notebooks are stored without outputs or
  execution counts, use the ``python3`` kernel, are numbered, and end with a check cell.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = REPO_ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT = 180  # seconds; every cell takes a few seconds on an idle 2-core machine
KERNEL = "python3"
# One BLAS thread in the kernels (unless the caller set these variables).  On a 2-core machine
# shared with other work, OpenBLAS's spinning worker threads made the notebooks' small matrix
# products many times slower: at a load of ~4, notebook 06 took 47 s with the default threads and
# 6 s with one, and a training step of SegNet-Basic(channels=16) at 8x48x64 12 s instead of 0.3 s.
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# -- the stored files -----------------------------------------------------------------------------------
def test_tutorials_exist_and_are_numbered():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"
    numbers = []
    for path in NOTEBOOKS:
        match = re.fullmatch(r"(\d\d)_[a-z0-9_]+\.ipynb", path.name)
        assert match, f"{path.name}: expected NN_lowercase_name.ipynb"
        numbers.append(int(match.group(1)))
    assert numbers == list(range(len(numbers))), f"notebooks should be numbered 00, 01, ... without gaps: {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    """No outputs and no execution counts in the repository (they are produced by running it)."""
    nb = _load(path)
    dirty = [
        i for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    assert kernel == KERNEL, f"{path.name}: kernel should be {KERNEL!r}, got {kernel!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_ends_with_a_check_cell(path):
    code = _code_cells(_load(path))
    assert code, f"{path.name} has no code"
    last = _source(code[-1])
    assert last.lstrip().startswith("# Check"), f"{path.name}: the last code cell should be the '# Check' cell"
    assert last.count("assert ") >= 3, f"{path.name}: the check cell should assert what the notebook teaches"
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).startswith("# "), f"{path.name}: start with a title"


# -- running them ---------------------------------------------------------------------------------------
def _client_or_skip():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[test]')")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip(f"no Jupyter kernel named {KERNEL!r} (python -m ipykernel install --user)")
    return nbformat, nbclient


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat, nbclient = _client_or_skip()
    # The kernel is a child process: it inherits os.environ, so put this checkout first on its path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.delenv("MINISEGNET_DEVICE", raising=False)  # the tutorials compute on the CPU
    for name, value in BLAS_THREADS.items():  # unless the caller chose otherwise
        monkeypatch.setenv(name, os.environ.get(name, value))
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL, resources={"metadata": {"path": str(TUTORIALS)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as error:
        pytest.fail(f"{path.name}: a cell ran longer than {CELL_TIMEOUT} s:\n{error}", pytrace=False)
    elapsed = time.perf_counter() - start
    outputs = nb.cells[-1].get("outputs", [])
    printed = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert "all checks passed" in printed, f"{path.name}: the check cell did not finish ({elapsed:.0f} s)"

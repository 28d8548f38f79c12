"""The tutorials are executed, top to bottom, and their check cells must pass.

d2l's rule: every notebook runs in CI, so a tutorial that stops being true fails the build.
Each notebook in tutorials/ is a lesson: figures that carry it, a "Your turn" exercise, and a
last "# Check" cell of assertions about what it teaches; running the notebook runs them.

Running them
------------
``test_notebook_runs`` executes each notebook with nbclient in a fresh ``python3`` kernel,
working directory tutorials/, at most ``CELL_TIMEOUT`` seconds per cell.  The kernel inherits
the environment, with this repository first on ``PYTHONPATH`` (so it imports this checkout's
``minisegnet``, installed or not), one BLAS thread (see ``BLAS_THREADS``), no
``MINISEGNET_DEVICE`` (the lessons compute on the CPU) and no ``MPLBACKEND`` (so figures go
to the inline backend and become outputs).  Skipped, with the reason, where nbclient,
nbformat or ipykernel is missing (``pip install -e ".[test]"``).  It fails when

* a cell raises (a failed assertion included) or the check cell does not print
  ``all checks passed``;
* the executed notebook shows fewer than ``MIN_FIGURES`` images (``image/png`` outputs of
  ``display_data`` / ``execute_result``, over all cells): the lessons teach by picture, and a
  figure that is only saved to a file is not shown to the learner;
* the notebook used more than its time budget (below).

``test_course_fits_its_budget`` adds the notebooks' times up when every notebook ran in this
session (skipped otherwise, e.g. under ``-k``) and holds the course to ``COURSE_BUDGET``.

The time budget: CPU seconds of the kernel, not wall-clock seconds
------------------------------------------------------------------
The budgets (``BUDGETS``: 90 s per lesson, 180 s for ``09_training``; 600 s for the course)
are what a lesson may cost on a 2-core CI machine.  CI machines are shared: on a runner
whose two cores are also busy with other jobs (or, locally, with other test processes) a
notebook's *wall-clock* time grows with the load -- at a load of 4 on 2 cores it roughly
doubles -- so a wall-clock limit would measure the neighbours, and fail (or pass) at random.
What a notebook itself costs is the CPU time of the kernel that runs it, which load barely
changes.  So the test wraps the notebook in two cells of its own, which read ``os.times()``
in the kernel before the notebook's first cell and after its last, and compares the
difference -- user +
system time of all the kernel's threads, plus any child processes it waited for -- with the
budget.  Kernel start-up is not counted; the figures' rendering is.

What CPU time does not remove, and the margin for it:

* contention for the shared caches, memory bandwidth and an SMT sibling makes each
  instruction slower under load: a few tens of percent on a busy machine, not the factor of
  2-5 of wall-clock time.  Lessons should therefore take **at most two thirds of their
  budget** (60 s, 120 s for ``09_training``) measured on an idle machine, which leaves a
  50 % margin for contention;
* a slower CI machine than the one the lessons were measured on: set
  ``MINISEGNET_TUTORIAL_TIME_SCALE`` (default 1) to scale every budget, e.g. 1.5;
* threads spinning while waiting count as CPU time: OpenBLAS worker threads do, which is one
  more reason the kernel gets one BLAS thread.  A notebook that computes on two threads at
  once is charged for both (CPU time is the work done, not the time it took).

The wall-clock time is measured too and reported (``record_property`` in JUnit XML, and a
line per notebook in the test's output, shown with ``-rA`` or ``-s``); it fails nothing,
except through ``CELL_TIMEOUT``, which stops a hung cell.

Reading the files
-----------------
The other tests only read the notebooks (plain JSON): they are numbered ``NN_name.ipynb``
from 00 without gaps (while the course is being rewritten, a missing lesson is a gap and
fails this test, as it should), stored without outputs or execution counts with the
``python3`` kernel, start with a title, end with a check cell, hold a "Your turn" exercise
(see ``tutorials/exercises.py``) and draw their random numbers from seeded generators.
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
CELL_TIMEOUT = 180  # seconds per cell (wall clock): only stops a hung cell
KERNEL = "python3"
MIN_FIGURES = 2  # image outputs an executed notebook must show
DEFAULT_BUDGET = 90.0  # CPU seconds of the kernel per notebook (see the module docstring)
BUDGETS = {"09_training": 180.0}  # notebooks with another budget, by stem
COURSE_BUDGET = 600.0  # CPU seconds for all notebooks together
TIME_SCALE_ENV = "MINISEGNET_TUTORIAL_TIME_SCALE"
# One BLAS thread in the kernels (unless the caller set these variables).  On a 2-core machine
# shared with other work, OpenBLAS's spinning worker threads made the notebooks' small matrix
# products many times slower: at a load of ~4, notebook 06 took 47 s with the default threads and
# 6 s with one, and a training step of SegNet-Basic(channels=16) at 8x48x64 12 s instead of 0.3 s.
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# The two cells the test wraps a notebook in, to read the kernel's CPU time (module docstring).
_CPU_MARK = "__tutorial_cpu_seconds__="
_START_CELL = "import os as _tutorial_os\n_tutorial_times = _tutorial_os.times()"
_END_CELL = (
    "import os as _tutorial_os\n"
    "print('" + _CPU_MARK + "' + repr(sum(_tutorial_os.times()[:4]) - sum(_tutorial_times[:4])))"
)

_MEASURED: dict[str, tuple[float, float]] = {}  # stem -> (CPU s, wall s), for the course total


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _budget(stem: str) -> float:
    """CPU seconds allowed for notebook ``stem``, scaled by ``$MINISEGNET_TUTORIAL_TIME_SCALE``."""
    scale = float(os.environ.get(TIME_SCALE_ENV, "1") or 1)
    return BUDGETS.get(stem, DEFAULT_BUDGET) * scale


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
    assert "all checks passed" in last, f"{path.name}: the check cell should end by printing 'all checks passed'"
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).startswith("# "), f"{path.name}: start with a title"


def _is_solution(cell: dict) -> bool:
    return "solution" in cell.get("metadata", {}).get("tags", [])


def _exercise_problems(nb: dict) -> list[str]:
    """What is missing for one complete "Your turn" exercise (empty: there is one).

    The convention of ``tutorials/exercises.py``: a markdown cell saying "Your turn", then a
    code cell whose function starts as ``raise NotImplementedError``, then the solution (a code
    cell tagged "solution", source hidden, defining ``<name>_solution``), then a code cell
    calling ``your_turn(...)``, in that order.
    """
    cells = nb["cells"]

    def first(after: int, test) -> int | None:
        return next((i for i in range(after + 1, len(cells)) if test(cells[i])), None)

    def learner(c):
        return c["cell_type"] == "code" and "raise NotImplementedError" in _source(c) and not _is_solution(c)

    def solution(c):
        return c["cell_type"] == "code" and _is_solution(c)

    def call(c):
        return c["cell_type"] == "code" and "your_turn(" in _source(c) and not _is_solution(c)

    headings = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "Your turn" in _source(c)]
    if not headings:
        return ["no markdown cell saying 'Your turn'"]
    problems = []
    for h in headings:
        steps = [("a code cell with `raise NotImplementedError` (the learner's function)", learner),
                 ("a code cell tagged 'solution'", solution),
                 ("a code cell calling `your_turn(`", call)]
        at, missing = h, None
        for what, test in steps:
            found = first(at, test)
            if found is None:
                missing = what
                break
            at = found
        if missing is not None:
            problems.append(f"after the 'Your turn' cell {h}: no {missing} in order")
            continue
        sol = first(first(h, learner), solution)
        meta = cells[sol].get("metadata", {})
        if meta.get("jupyter", {}).get("source_hidden") is not True:
            problems.append(f"solution cell {sol}: metadata should have jupyter.source_hidden = true")
        elif not re.search(r"^def \w+_solution\(", _source(cells[sol]), re.M):
            problems.append(f"solution cell {sol}: should define a function named <name>_solution")
        else:
            return []  # one complete exercise is enough
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_an_exercise(path):
    """At least one "Your turn" exercise, laid out as tutorials/exercises.py describes."""
    problems = _exercise_problems(_load(path))
    assert not problems, f"{path.name}: no complete 'Your turn' exercise: " + "; ".join(problems)


# Draws from NumPy's global generator (np.random.rand, np.random.seed, ...) are not reproducible
# from the notebook alone; np.random.default_rng(seed) and the models' rng= are.
_GLOBAL_RANDOM = re.compile(r"\bnp\.random\.(?!default_rng\b|Generator\b|SeedSequence\b|PCG64\b)\w+")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_seeded_generators(path):
    used = sorted({m.group(0) for c in _code_cells(_load(path)) for m in _GLOBAL_RANDOM.finditer(_source(c))})
    assert not used, (f"{path.name} uses NumPy's global random state ({', '.join(used)}); draw from "
                      "np.random.default_rng(seed) and pass rng= to the models instead")


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


def _count_figures(cells) -> int:
    """``image/png`` outputs of ``display_data`` and ``execute_result`` over all cells."""
    return sum(
        1
        for cell in cells if cell.get("cell_type") == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result") and "image/png" in out.get("data", {})
    )


def _printed(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, record_property):
    nbformat, nbclient = _client_or_skip()
    # The kernel is a child process: it inherits os.environ, so put this checkout first on its path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.delenv("MINISEGNET_DEVICE", raising=False)  # the tutorials compute on the CPU
    monkeypatch.delenv("MPLBACKEND", raising=False)  # figures to the inline backend, i.e. to outputs
    for name, value in BLAS_THREADS.items():  # unless the caller chose otherwise
        monkeypatch.setenv(name, os.environ.get(name, value))
    nb = nbformat.read(str(path), as_version=4)
    lesson_cells = len(nb.cells)
    nb.cells = [nbformat.v4.new_code_cell(_START_CELL), *nb.cells, nbformat.v4.new_code_cell(_END_CELL)]
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
    wall = time.perf_counter() - start
    lesson = nb.cells[1 : 1 + lesson_cells]
    match = re.search(re.escape(_CPU_MARK) + r"([0-9.eE+-]+)", _printed(nb.cells[-1]))
    assert match, f"{path.name}: the kernel did not report its CPU time"
    cpu = float(match.group(1))
    figures = _count_figures(lesson)
    _MEASURED[path.stem] = (cpu, wall)
    record_property("cpu_seconds", round(cpu, 2))
    record_property("wall_seconds", round(wall, 2))
    record_property("figures", figures)
    print(f"{path.stem}: {cpu:.1f} s CPU, {wall:.1f} s wall, {figures} figures")

    last_code = [c for c in lesson if c.cell_type == "code"][-1]
    assert "all checks passed" in _printed(last_code), f"{path.name}: the check cell did not finish"
    assert figures >= MIN_FIGURES, (
        f"{path.name} showed {figures} figure(s), expected at least {MIN_FIGURES}: display each figure "
        "(plt.show() with %matplotlib inline), do not only save it"
    )
    budget = _budget(path.stem)
    assert cpu <= budget, (
        f"{path.name} used {cpu:.1f} s of CPU time ({wall:.1f} s wall clock), over its budget of {budget:.0f} s "
        f"(${TIME_SCALE_ENV} scales the budgets for a slower machine)"
    )


@pytest.mark.slow
def test_course_fits_its_budget():
    """All notebooks together within ``COURSE_BUDGET`` CPU seconds (when all of them ran above)."""
    missing = [p.stem for p in NOTEBOOKS if p.stem not in _MEASURED]
    if missing:
        pytest.skip(f"{len(missing)} of {len(NOTEBOOKS)} notebooks did not run in this session: {', '.join(missing)}")
    cpu = sum(c for c, _ in _MEASURED.values())
    wall = sum(w for _, w in _MEASURED.values())
    budget = COURSE_BUDGET * float(os.environ.get(TIME_SCALE_ENV, "1") or 1)
    table = ", ".join(f"{stem} {c:.0f} s" for stem, (c, _) in sorted(_MEASURED.items()))
    print(f"course: {cpu:.0f} s CPU, {wall:.0f} s wall clock ({table})")
    assert cpu <= budget, f"the course used {cpu:.0f} s of CPU time, over its budget of {budget:.0f} s: {table}"

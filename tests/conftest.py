"""Fixtures and helpers shared by the whole test suite.

* ``rng``: a seeded NumPy generator, so every test is reproducible.
* ``tie_free``: a factory for float arrays without ties and without zeros, for max
  pooling and ReLU, whose gradients are undefined exactly at a tie or at 0.
* ``torch``: the PyTorch module, or a skip with the reason when it is not installed
  (parity tests use it as the reference; the library itself never imports it).
* ``camvid_root``: the CamVid directory (``$MINISEGNET_CAMVID`` or ``<repo>/../shared/data/camvid``),
  or a skip saying where it was looked for.
* Tests marked ``gpu`` are skipped, with the reason, where CuPy or a GPU is missing --
  unless ``MINISEGNET_REQUIRE_GPU=1`` is set: then a missing GPU or CuPy *fails* every
  gpu test, and a gpu test that skips for any other reason fails too, so a GPU run
  (``MINISEGNET_REQUIRE_GPU=1 pytest -m gpu``) cannot pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMVID_ENV_VAR = "MINISEGNET_CAMVID"


# -- optional dependencies -----------------------------------------------------------
def import_torch_or_skip():
    """``torch``, or skip the calling test when it is not installed."""
    return pytest.importorskip("torch", reason="PyTorch is not installed; it is only the reference for parity tests")


@pytest.fixture
def torch():
    """The ``torch`` module (skips the test without it)."""
    return import_torch_or_skip()


def camvid_candidates() -> list[Path]:
    """Where the CamVid data is looked for, in order."""
    env = os.environ.get(CAMVID_ENV_VAR)
    if env:
        return [Path(env)]
    return [REPO_ROOT.parent / "shared" / "data" / "camvid"]


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The CamVid root directory, or a skip that says where it was looked for."""
    for path in camvid_candidates():
        if path.is_dir() and any(path.iterdir()):
            return path
    where = ", ".join(str(p) for p in camvid_candidates())
    pytest.skip(f"CamVid data not found (looked in {where}; set ${CAMVID_ENV_VAR} to its directory)")


# -- GPU tests -------------------------------------------------------------------------
REQUIRE_GPU_ENV_VAR = "MINISEGNET_REQUIRE_GPU"
_GPU_SKIP_REASON: list[str | None] = []  # computed once, only when a gpu test is collected


def gpu_required() -> bool:
    """True when ``$MINISEGNET_REQUIRE_GPU`` is set to anything but "", "0", "false", "no", "off"."""
    return os.environ.get(REQUIRE_GPU_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


def _gpu_skip_reason() -> str | None:
    if not _GPU_SKIP_REASON:
        from minisegnet.backend import DeviceUnavailableError, import_cupy

        try:
            import_cupy()
        except DeviceUnavailableError as exc:
            _GPU_SKIP_REASON.append(f"GPU test: {exc}")
        else:
            _GPU_SKIP_REASON.append(None)
    return _GPU_SKIP_REASON[0]


def _is_gpu_test(item) -> bool:
    return item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if _is_gpu_test(item)]
    if not gpu_items or gpu_required():  # required: no skip marker, the setup below fails instead
        return
    reason = _gpu_skip_reason()
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    if _is_gpu_test(item) and gpu_required():
        reason = _gpu_skip_reason()
        if reason is not None:
            pytest.fail(f"{reason} -- and {REQUIRE_GPU_ENV_VAR}=1 forbids skipping GPU tests", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``MINISEGNET_REQUIRE_GPU=1`` a gpu test that skips (``importorskip``, ``pytest.skip``) fails."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _is_gpu_test(item) and gpu_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"GPU test skipped ({reason}), but {REQUIRE_GPU_ENV_VAR}=1 forbids skipping GPU tests"


# -- random inputs -------------------------------------------------------------------------
@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(20240601)


def draw_tie_free(rng: np.random.Generator, shape, dtype=np.float64, low: float = -1.0, high: float = 1.0):
    """Distinct values in ``(low, high)`` in random order, never 0 when ``low = -high``.

    A random permutation of ``size`` equally spaced levels: neighbouring values differ by
    ``(high - low) / size``, far more than a finite-difference step of 1e-6 for the
    tiny tensors used in tests, so a perturbation never changes which element of a
    pooling window is the largest.  The levels sit a quarter step off the grid, so with
    ``low = -high`` no value is 0 (ReLU's kink).
    """
    shape = tuple(shape)
    size = int(np.prod(shape))
    levels = (rng.permutation(size) + 0.25) / size
    return (low + (high - low) * levels).reshape(shape).astype(dtype)


@pytest.fixture
def tie_free(rng):
    """``tie_free(shape, dtype=np.float64, low=-1, high=1)``: see :func:`draw_tie_free`."""

    def draw(shape, dtype=np.float64, low=-1.0, high=1.0):
        return draw_tie_free(rng, shape, dtype, low, high)

    return draw

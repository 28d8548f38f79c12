"""The NumPy/CuPy switch: device names, the environment variable, clear errors without a GPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minisegnet import backend
from minisegnet.backend import (
    DEVICE_ENV_VAR,
    DeviceUnavailableError,
    array_module_for,
    cuda_is_available,
    device_of,
    get_array_module,
    is_array,
    resolve_device,
    to_device,
    to_numpy,
)

needs_no_gpu = pytest.mark.skipif(cuda_is_available(), reason="a GPU is available here: the 'no GPU' errors cannot occur")


@pytest.fixture
def no_device_env(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)


@pytest.mark.parametrize(
    "name, expected",
    [("cpu", "cpu"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda", "cuda"), ("cuda:0", "cuda"), ("CUDA:0", "cuda")],
)
def test_resolve_device_names(name, expected, no_device_env):
    assert resolve_device(name) == expected


def test_resolve_device_default_is_cpu(no_device_env):
    assert resolve_device() == "cpu"
    assert resolve_device(None) == "cpu"


@pytest.mark.parametrize("value, expected", [("cuda", "cuda"), ("cpu", "cpu"), ("", "cpu"), ("cuda:0", "cuda")])
def test_resolve_device_reads_environment(monkeypatch, value, expected):
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    assert resolve_device() == expected
    assert resolve_device("cpu") == "cpu"  # an explicit device beats the environment


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda1", "mps", ""])
def test_resolve_device_rejects_unknown_names(name, no_device_env):
    with pytest.raises(ValueError, match=r"unknown device .*expected one of \('cpu', 'cuda'\)"):
        resolve_device(name)


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "gpu0")
    with pytest.raises(ValueError, match="'gpu0'"):
        resolve_device()


def test_cpu_array_module_is_numpy(no_device_env):
    assert array_module_for("cpu") is np
    assert array_module_for() is np


@needs_no_gpu
def test_asking_for_cuda_without_gpu_says_why(no_device_env):
    with pytest.raises(DeviceUnavailableError) as info:
        array_module_for("cuda")
    message = str(info.value)
    assert "device 'cuda'" in message
    assert ("CuPy" in message and "pip install" in message) or ("GPU" in message and "device='cpu'" in message)
    assert isinstance(info.value, RuntimeError)  # callers may catch RuntimeError
    with pytest.raises(DeviceUnavailableError):
        to_device(np.zeros(3), "cuda")
    assert cuda_is_available() is False


@needs_no_gpu
def test_environment_asking_for_cuda_without_gpu_raises(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda'"):
        array_module_for()


def test_missing_cupy_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail as if not installed
    with pytest.raises(DeviceUnavailableError, match=r"needs CuPy.*pip install"):
        backend.import_cupy()
    assert cuda_is_available() is False
    assert get_array_module(np.zeros(2)) is np  # the CPU path never needs CuPy


def test_cupy_without_gpu_names_the_gpu(no_device_env):
    pytest.importorskip("cupy", reason="CuPy is not installed")
    if cuda_is_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(DeviceUnavailableError, match="needs an NVIDIA GPU"):
        backend.import_cupy()


def test_numpy_helpers():
    a = np.arange(6.0).reshape(2, 3)
    assert get_array_module(a) is np
    assert get_array_module(a, [1, 2], 3.0) is np
    assert get_array_module() is np
    assert device_of(a) == "cpu"
    assert to_numpy(a) is a
    np.testing.assert_array_equal(to_numpy([[1, 2]]), np.array([[1, 2]]))
    moved = to_device(a, "cpu")
    assert isinstance(moved, np.ndarray)
    np.testing.assert_array_equal(moved, a)
    assert is_array(a) and not is_array([1.0]) and not is_array(1.0)


def test_importing_the_package_does_not_import_cupy():
    code = "import sys, minisegnet; print('cupy' in sys.modules)"
    repo_root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "False"

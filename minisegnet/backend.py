"""NumPy or CuPy: the one place that answers the array-module question.

Every layer asks ``xp = get_array_module(x)`` and then writes ``xp.zeros``,
``xp.matmul`` ... so the very same code runs on the CPU (NumPy) and on an
NVIDIA GPU (CuPy).  This module is the only file in the package that imports
CuPy, and it does so lazily: merely importing :mod:`minisegnet` never touches
CUDA, and a machine without CuPy or without a GPU loses nothing but the
``"cuda"`` device.

Devices are named as in PyTorch: ``"cpu"`` or ``"cuda"``.  Where a function
takes ``device=None`` the environment variable ``MINISEGNET_DEVICE`` decides,
and ``"cpu"`` when it is unset.  There is no global flag to edit.
"""
from __future__ import annotations

import os
import sys

import numpy as np

DEVICES = ("cpu", "cuda")
DEVICE_ENV_VAR = "MINISEGNET_DEVICE"

_CUPY_INSTALL_HINT = 'pip install "minisegnet[gpu]"  (installs cupy-cuda12x; CUDA 12 driver needed)'


class DeviceUnavailableError(RuntimeError):
    """Raised when CUDA is asked for but CuPy or a usable GPU is missing."""


def _cupy_if_imported():
    """CuPy if something already imported it, else None (never imports it)."""
    return sys.modules.get("cupy")


def import_cupy():
    """Import CuPy and check that a GPU answers; raise a clear error otherwise."""
    try:
        import cupy  # the only CuPy import in the package
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceUnavailableError(
            f"device 'cuda' needs CuPy, which is not installed ({exc}). Install it with: {_CUPY_INSTALL_HINT}"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver library, ...
        raise DeviceUnavailableError(
            f"device 'cuda' needs an NVIDIA GPU, but CuPy found none ({type(exc).__name__}: {exc}). "
            "Use device='cpu', or run on a machine with a GPU and CUDA 12 driver."
        ) from None
    if count < 1:  # pragma: no cover - depends on the machine
        raise DeviceUnavailableError("device 'cuda' needs an NVIDIA GPU, but CuPy reports 0 devices. Use device='cpu'.")
    return cupy


def cuda_is_available() -> bool:
    """True when CuPy imports and at least one GPU answers."""
    try:
        import_cupy()
    except DeviceUnavailableError:
        return False
    return True


def resolve_device(device: str | None = None) -> str:
    """Normalise a device name; ``None`` reads ``MINISEGNET_DEVICE`` (default ``"cpu"``)."""
    if device is None:
        device = os.environ.get(DEVICE_ENV_VAR, "cpu") or "cpu"
    name = str(device).strip().lower()
    if name.startswith("cuda:"):  # accept torch-style "cuda:0" for the first GPU
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return name


def array_module_for(device: str | None = None):
    """The array module (numpy or cupy) that holds arrays on ``device``."""
    if resolve_device(device) == "cuda":
        return import_cupy()
    return np


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (DeZero's switch)."""
    cupy = _cupy_if_imported()
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def device_of(array) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cuda" if get_array_module(array) is not np else "cpu"


def to_device(array, device: str | None = None):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    device = resolve_device(device)
    if device == "cuda":
        cupy = import_cupy()
        return cupy.asarray(array)
    return to_numpy(array)


def to_numpy(array):
    """A NumPy array with the values of ``array`` (a CuPy array is copied to the host)."""
    cupy = _cupy_if_imported()
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return np.asarray(array)


def is_array(obj) -> bool:
    """True for a NumPy or CuPy ndarray."""
    if isinstance(obj, np.ndarray):
        return True
    cupy = _cupy_if_imported()
    return cupy is not None and isinstance(obj, cupy.ndarray)

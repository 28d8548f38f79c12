"""Clear errors for bad input: what was expected, what came, which layer.

Every layer calls these at the top of ``forward`` so that a user mistake reads as a
sentence instead of a broadcasting error three functions deeper.
"""
from __future__ import annotations

import numpy as np

from .backend import is_array


def check_feature_map(layer: str, x, *, channels: int | None = None, name: str = "input"):
    """A floating NCHW array, with ``channels`` channels when given."""
    if not is_array(x):
        raise TypeError(f"{layer}: expected {name} as a NumPy/CuPy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{layer}: expected a 4-D {name} (N, C, H, W), got {x.ndim}-D of shape {tuple(x.shape)}")
    if np.dtype(x.dtype).kind != "f":
        raise ValueError(f"{layer}: expected a floating-point {name} (float32 or float64), got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {name} with {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def require_cache(layer: str, cache, what: str = "forward"):
    """Raise a RuntimeError when backward runs without a stored forward."""
    if cache is None:
        raise RuntimeError(
            f"{layer}.backward called before {what} (or after a forward inside `with minisegnet.no_grad():`, "
            "which keeps nothing for backward: run the forward outside that block; or after release_caches(), "
            "which a model's backward calls unless release=False)"
        )
    return cache


def check_grad_shape(layer: str, grad, expected_shape):
    """The upstream gradient must have the shape of the forward's output."""
    if tuple(grad.shape) != tuple(expected_shape):
        raise ValueError(
            f"{layer}.backward: expected an upstream gradient of shape {tuple(expected_shape)} "
            f"(the forward output), got {tuple(grad.shape)}"
        )
    return grad


def check_matches_parameters(layer: str, x, parameter):
    """The input must live on the parameter's device and have its dtype (no silent casts).

    A float64 input into a float32 layer is refused rather than cast, so a float64 gradient
    check can never run through float32 arithmetic unnoticed; convert the layer with
    ``.double()`` / ``.float()`` or the input.  Returns the array module.
    """
    from .backend import device_of, get_array_module

    xp = get_array_module(x)
    if xp is not get_array_module(parameter):
        raise ValueError(
            f"{layer}: expected the input on the parameters' device {device_of(parameter)!r}, got a "
            f"{device_of(x)!r} input (move one of them with .to())"
        )
    if x.dtype != parameter.dtype:
        raise TypeError(
            f"{layer}: expected an input of the layer's dtype {parameter.dtype}, got {x.dtype} "
            "(convert the input, or the layer with .double() / .float())"
        )
    return xp

"""What the Conv2d test files share: building a layer, running it, and its three references.

``run`` is one forward and backward of our layer; ``definition`` is :mod:`minisegnet.reference`'s
plain loops; ``torch_conv`` is PyTorch's ``conv2d`` and its autograd gradients for the same weights
and upstream gradient.  Each returns ``(y, dx, dW, db)`` (``db`` None without a bias).
"""
from __future__ import annotations

import numpy as np

from minisegnet import reference
from minisegnet.backend import device_of, to_numpy
from minisegnet.layers.conv import Conv2d


def make_conv(c, o, k, stride=1, padding=0, bias=True, *, dtype=np.float64, algorithm="auto", seed=0, **kwargs):
    """A Conv2d with a random (non-zero) bias, in ``dtype``, running ``algorithm``."""
    conv = Conv2d(c, o, k, stride, padding, bias, rng=seed, algorithm=algorithm, **kwargs).astype(dtype)
    if conv.bias is not None:
        conv.bias.data[...] = np.random.default_rng(seed + 1).standard_normal(o)
    return conv


def run(conv, x, dy):
    """``(y, dx, dW, db)`` of one forward and backward, gradients freshly zeroed."""
    conv.zero_grad()
    y = conv.forward(x)
    dx = conv.backward(dy)
    return y, dx, conv.weight.grad, None if conv.bias is None else conv.bias.grad


def definition(conv, x, dy):
    """``(y, dx, dW, db)`` of :mod:`minisegnet.reference` for the layer's weights."""
    b = None if conv.bias is None else conv.bias.data
    y = reference.conv2d(x, conv.weight.data, b, conv.stride, conv.padding)
    dx, dw, db = reference.conv2d_backward(x, conv.weight.data, dy, conv.stride, conv.padding)
    return y, dx, dw, (db if conv.bias is not None else None)


def torch_conv(torch, conv, x, dy):
    """``(y, dx, dW, db)`` of ``torch.nn.functional.conv2d`` with the layer's weights, backward of ``dy``."""
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(conv.weight.data.copy()).requires_grad_(True)
    tb = None if conv.bias is None else torch.from_numpy(conv.bias.data.copy()).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=conv.stride, padding=conv.padding)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy()


def assert_results_close(got, expected, what: str, rtol=1e-10, atol=1e-12):
    """Every array of ``(y, dx, dW, db)`` close to its expected value (None where it should be None)."""
    for name, a, b in zip(["y", "dx", "dW", "db"], got, expected):
        if b is None:
            assert a is None, f"{what}: {name} should be None"
            continue
        assert a.shape == b.shape, f"{what}: {name} shape {a.shape} != {b.shape}"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, np.abs(b).max()), err_msg=f"{what}: {name}")


def assert_device_results_close(got, expected, device: str, dtype, what: str = "") -> None:
    """``(y, dx, dW, db)`` computed on ``device`` in ``dtype``, against NumPy's ``expected``.

    float32: rtol 1e-4 and atol 1e-4 of each array's largest value; float64: 1e-9 and 1e-11.
    """
    rtol, atol = (1e-4, 1e-4) if np.dtype(dtype) == np.float32 else (1e-9, 1e-11)
    for name, a, b in zip(["y", "dx", "dW", "db"], got, expected):
        label = f"{what}: {name}" if what else name
        assert device_of(a) == device and a.dtype == dtype, label
        np.testing.assert_allclose(to_numpy(a), b, rtol=rtol, atol=atol * float(np.abs(b).max()), err_msg=label)


def assert_frozen_gradients(conv, x, dy, frozen: str) -> None:
    """Freeze ``"weight"``, the ``"input"`` gradient or ``"both"``: what is left equals the definition, the rest None.

    The bias gradient is computed in every case.
    """
    expected = definition(conv, x, dy)
    conv.weight.requires_grad = frozen == "input"
    conv.needs_input_grad = frozen == "weight"
    conv.zero_grad()
    conv.forward(x)
    dx = conv.backward(dy)
    if frozen == "weight":
        np.testing.assert_allclose(dx, expected[1], rtol=1e-10)
    else:
        assert dx is None
    if frozen == "input":
        np.testing.assert_allclose(conv.weight.grad, expected[2], rtol=1e-10)
    else:
        assert conv.weight.grad is None
    np.testing.assert_allclose(conv.bias.grad, expected[3], rtol=1e-10)

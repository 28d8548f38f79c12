r"""The layers of SegNet written as plainly as possible: read these before the fast code.

**SLOW.**  Every function here loops in Python over output pixels or windows, so that each
line is one term of the definition.  They are for reading and for testing (the layers in
:mod:`minisegnet.layers` are compared with them, and they are compared with PyTorch in
``tests/test_reference.py``), never for training: they are orders of magnitude slower than
the layers.  NumPy only, float64 throughout (inputs are converted), NCHW layout.

What each fast layer does instead of the loops here:

* :func:`conv2d` -- :class:`~minisegnet.layers.Conv2d`: shifted matrix products over a
  flat padded grid, no loop over pixels;
* :func:`max_pool2d`, :func:`max_unpool2d` -- :class:`~minisegnet.layers.MaxPool2d`,
  :class:`~minisegnet.layers.MaxUnpool2d`: a loop over the k×k window *offsets* with
  strided views, one masked copy per offset;
* :func:`batch_norm` -- :class:`~minisegnet.layers.BatchNorm2d`: reused buffers, the
  running statistics updated in place;
* :func:`softmax_cross_entropy` -- :class:`~minisegnet.layers.SoftmaxCrossEntropy`: no
  one-hot, the softmax buffer becomes the gradient;
* :func:`conv_transpose2d` -- :class:`~minisegnet.layers.ConvTranspose2d`: one matrix
  product per kernel offset, added into a strided view of the output;
* :func:`bilinear_upsample` -- :class:`~minisegnet.layers.Upsample`: two small
  interpolation matrices, one per axis.

Each function's docstring states the formula it implements; the backward functions
state theirs (derived in the layers' docstrings).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_eval",
    "batch_norm_eval_backward",
    "update_running_stats",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "conv_transpose2d",
    "bilinear_upsample",
]


# -- helpers -----------------------------------------------------------------------------
def _pair(value) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def _f64(x) -> np.ndarray:
    """``x`` as a float64 NumPy array."""
    return np.asarray(x, dtype=np.float64)


def _pad(x, padding) -> np.ndarray:
    """Zero padding of ``ph`` rows above and below, ``pw`` columns left and right."""
    ph, pw = _pair(padding)
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


# -- convolution ---------------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0)) -> np.ndarray:
    r"""2-D convolution (a cross-correlation, as in every deep-learning library).

    ``x`` (N, C, H, W), ``weight`` (O, C, kh, kw), ``bias`` (O,) or None.  With ``x_pad``
    the input zero-padded by ``padding = (ph, pw)`` and ``stride = (sh, sw)``::

        y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x_pad[n, c, i*sh + u, j*sw + v]

    for ``0 <= i < Ho = (H + 2 ph - kh) // sh + 1`` (and likewise ``j < Wo``).  SLOW: a
    Python loop over the Ho×Wo output pixels; each pixel is one contraction of its
    window with the kernel over (c, u, v).
    """
    x, weight = _f64(x), _f64(weight)
    (sh, sw), (kh, kw) = _pair(stride), weight.shape[2:]
    xp = _pad(x, padding)
    n, _, hp, wp = xp.shape
    o = weight.shape[0]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (N, C, kh, kw)
            y[:, :, i, j] = np.einsum("ncuv,ocuv->no", window, weight)
    if bias is not None:
        y += _f64(bias).reshape(1, o, 1, 1)
    return y


def conv2d_backward(x, weight, dy, stride=(1, 1), padding=(0, 0)):
    r"""Gradients of :func:`conv2d`: ``(dx, dweight, dbias)`` for an upstream ``dy`` (N, O, Ho, Wo).

    Every output pixel ``(i, j)`` read the window ``x_pad[:, :, i*sh : i*sh+kh, j*sw : j*sw+kw]``
    through the kernel, so by the chain rule each pixel sends back::

        dweight[o, c, u, v]                      += sum_n dy[n, o, i, j] * x_pad[n, c, i*sh+u, j*sw+v]
        dx_pad[n, c, i*sh + u, j*sw + v]         += sum_o dy[n, o, i, j] * w[o, c, u, v]
        dbias[o]                                  = sum_{n, i, j} dy[n, o, i, j]

    and ``dx`` is ``dx_pad`` with the padding cropped off (the padded zeros are not
    inputs).  Windows overlap when the stride is smaller than the kernel: their
    contributions add up.  SLOW: a Python loop over output pixels.
    """
    x, weight, dy = _f64(x), _f64(weight), _f64(dy)
    (sh, sw), (ph, pw), (kh, kw) = _pair(stride), _pair(padding), weight.shape[2:]
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dweight = np.zeros_like(weight)
    ho, wo = dy.shape[2:]
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            g = dy[:, :, i, j]  # (N, O)
            dweight += np.einsum("no,ncuv->ocuv", g, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("no,ocuv->ncuv", g, weight)
    h, w = x.shape[2:]
    dx = dxp[:, :, ph : ph + h, pw : pw + w].copy()
    dbias = dy.sum(axis=(0, 2, 3))
    return dx, dweight, dbias


# -- max pooling with indices, and unpooling -------------------------------------------------
def _pooled_size(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """Windows along one axis: floor ``(size - k) // s + 1``; ceil ``ceil((size - k) / s) + 1``,
    minus one if that last window would start past the map (no padding)."""
    if ceil_mode:
        out = -(-(size - kernel) // stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        return out
    return (size - kernel) // stride + 1


def max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True):
    r"""Max pooling that also returns where each maximum was: ``(y, indices)``.

    Window ``(i, j)`` covers rows ``i*sh .. i*sh + kh - 1`` and columns ``j*sw .. j*sw + kw - 1``
    **of the pixels that exist** (in ceil mode the last row and column of windows hang
    over the border; the missing pixels are left out, as if they were -inf)::

        y[n, c, i, j]       = max_{(u, v) in window} x[n, c, i*sh + u, j*sw + v]
        indices[n, c, i, j] = u * kw + v  of the first maximum in row-major order (u, then v)

    ``indices`` is window-local (0..3 for 2×2), uint8.  The number of windows is
    ``(H - kh) // sh + 1`` in floor mode and ``ceil((H - kh) / sh) + 1`` in ceil mode (one
    less if that last window would start past the map).  ``stride=None`` means
    ``kernel_size``.  SLOW: a loop over windows.
    """
    x = _f64(x)
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = (kh, kw) if stride is None else _pair(stride)
    n, c, h, w = x.shape
    ho, wo = _pooled_size(h, kh, sh, ceil_mode), _pooled_size(w, kw, sw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"max_pool2d: a {kh}×{kw} window does not fit a {h}×{w} map")
    y = np.empty((n, c, ho, wo))
    indices = np.empty((n, c, ho, wo), dtype=np.uint8)
    for i in range(ho):
        for j in range(wo):
            window = x[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # cut at the border
            rows, cols = window.shape[2:]
            flat = window.reshape(n, c, rows * cols)
            first = flat.argmax(axis=2)  # argmax returns the first maximum
            y[:, :, i, j] = flat.max(axis=2)
            u, v = first // cols, first % cols  # position inside the (possibly cut) window
            indices[:, :, i, j] = u * kw + v  # ... numbered as in the full kh×kw window
    return y, indices


def max_pool2d_backward(dy, indices, input_shape, kernel_size=2, stride=2) -> np.ndarray:
    r"""Gradient of :func:`max_pool2d`: each window's gradient goes to its winning pixel.

    ``y[n, c, i, j] = x[n, c, i*sh + u, j*sw + v]`` with ``(u, v) = divmod(indices[n, c, i, j], kw)``,
    so ::

        dx[n, c, i*sh + u, j*sw + v] += dy[n, c, i, j]           (all other pixels: 0)

    summed where overlapping windows chose the same pixel.  SLOW: a loop over windows.
    """
    dy = _f64(dy)
    (_, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    n, c = dy.shape[:2]
    dx = np.zeros(tuple(input_shape))
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            u, v = np.divmod(indices[:, :, i, j].astype(np.int64), kw)
            dx[nn, cc, i * sh + u, j * sw + v] += dy[:, :, i, j]  # one pixel per (n, c): no repeats
    return dx


def max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=None) -> np.ndarray:
    r"""Put every pooled value back where its maximum was; zeros elsewhere.

    ``x`` and ``indices`` (N, C, Ho, Wo) as :func:`max_pool2d` returned them; the output is
    (N, C, H, W) with ``(H, W) = output_size`` (the size before pooling; ``(N, C, H, W)``
    is accepted too), by default ``((Ho - 1) sh + kh, (Wo - 1) sw + kw)``::

        y = 0;   y[n, c, i*sh + u, j*sw + v] += x[n, c, i, j]   with (u, v) = divmod(indices[n, c, i, j], kw)

    (a pixel chosen by two overlapping windows receives the sum, which makes unpooling the
    exact transpose of pooling).  SLOW: a loop over windows.
    """
    x = _f64(x)
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    n, c, ho, wo = x.shape
    if output_size is None:
        h, w = (ho - 1) * sh + kh, (wo - 1) * sw + kw
    else:
        h, w = (int(s) for s in tuple(output_size)[-2:])
    y = np.zeros((n, c, h, w))
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(ho):
        for j in range(wo):
            u, v = np.divmod(indices[:, :, i, j].astype(np.int64), kw)
            y[nn, cc, i * sh + u, j * sw + v] += x[:, :, i, j]
    return y


def max_unpool2d_backward(dy, indices, kernel_size=2, stride=2) -> np.ndarray:
    r"""Gradient of :func:`max_unpool2d`: read each value's gradient where it was written.

    ``dx[n, c, i, j] = dy[n, c, i*sh + u, j*sw + v]`` with ``(u, v) = divmod(indices[n, c, i, j], kw)``.
    SLOW: a loop over windows.
    """
    dy = _f64(dy)
    (_, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    n, c, ho, wo = indices.shape
    dx = np.empty((n, c, ho, wo))
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(ho):
        for j in range(wo):
            u, v = np.divmod(indices[:, :, i, j].astype(np.int64), kw)
            dx[:, :, i, j] = dy[nn, cc, i * sh + u, j * sw + v]
    return dx


# -- batch normalisation -----------------------------------------------------------------------
def batch_norm(x, gamma, beta, eps=1e-5):
    r"""Training-mode batch normalisation, per channel: ``(y, mean, var)``.

    For channel ``c``, over its ``m = N*H*W`` values ``x_i = x[n, c, h, w]``::

        mean_c = (1/m) sum_i x_i
        var_c  = (1/m) sum_i (x_i - mean_c)^2          (biased: divides by m)
        y_i    = gamma_c * (x_i - mean_c) / sqrt(var_c + eps) + beta_c

    Returns ``y`` and the batch ``mean`` and biased ``var`` (C,) that were used.  A loop
    over channels, each written out as above.
    """
    x, gamma, beta = _f64(x), _f64(gamma), _f64(beta)
    y = np.empty_like(x)
    channels = x.shape[1]
    mean, var = np.empty(channels), np.empty(channels)
    for c in range(channels):
        values = x[:, c]
        m = values.size
        mean[c] = values.sum() / m
        var[c] = ((values - mean[c]) ** 2).sum() / m
        y[:, c] = gamma[c] * (values - mean[c]) / np.sqrt(var[c] + eps) + beta[c]
    return y, mean, var


def batch_norm_backward(x, gamma, dy, eps=1e-5):
    r"""Gradients of training-mode :func:`batch_norm`: ``(dx, dgamma, dbeta)``.

    The mean and variance depend on every ``x_i`` of the channel; with
    ``xhat_i = (x_i - mean) / sigma``, ``sigma = sqrt(var + eps)`` (derivation in
    :class:`~minisegnet.layers.BatchNorm2d`)::

        dbeta  = sum_i dy_i
        dgamma = sum_i dy_i * xhat_i
        dx_i   = (gamma / sigma) * (dy_i - dbeta / m - xhat_i * dgamma / m)
    """
    x, gamma, dy = _f64(x), _f64(gamma), _f64(dy)
    dx = np.empty_like(x)
    channels = x.shape[1]
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    for c in range(channels):
        values, g = x[:, c], dy[:, c]
        m = values.size
        mean = values.sum() / m
        sigma = np.sqrt(((values - mean) ** 2).sum() / m + eps)
        xhat = (values - mean) / sigma
        dbeta[c] = g.sum()
        dgamma[c] = (g * xhat).sum()
        dx[:, c] = (gamma[c] / sigma) * (g - dbeta[c] / m - xhat * dgamma[c] / m)
    return dx, dgamma, dbeta


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5) -> np.ndarray:
    r"""Eval-mode batch normalisation: the fixed per-channel affine map of the running statistics.

    ``y[n, c, h, w] = gamma_c * (x[n, c, h, w] - running_mean_c) / sqrt(running_var_c + eps) + beta_c``
    """
    x = _f64(x)
    shape = (1, -1, 1, 1)
    sigma = np.sqrt(_f64(running_var) + eps).reshape(shape)
    return _f64(gamma).reshape(shape) * (x - _f64(running_mean).reshape(shape)) / sigma + _f64(beta).reshape(shape)


def batch_norm_eval_backward(x, gamma, running_mean, running_var, dy, eps=1e-5):
    r"""Gradients of :func:`batch_norm_eval`: ``(dx, dgamma, dbeta)``.

    The statistics are constants, so with ``xhat = (x - running_mean) / sigma``::

        dx = (gamma / sigma) * dy,     dgamma = sum_{n,h,w} dy * xhat,     dbeta = sum_{n,h,w} dy
    """
    x, dy = _f64(x), _f64(dy)
    shape = (1, -1, 1, 1)
    sigma = np.sqrt(_f64(running_var) + eps).reshape(shape)
    xhat = (x - _f64(running_mean).reshape(shape)) / sigma
    dx = _f64(gamma).reshape(shape) / sigma * dy
    return dx, (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


def update_running_stats(running_mean, running_var, mean, var, m, momentum=0.1):
    r"""PyTorch's running estimates after one training batch: ``(running_mean, running_var)``.

    ::

        running_mean <- (1 - momentum) running_mean + momentum * mean
        running_var  <- (1 - momentum) running_var  + momentum * var * m / (m - 1)

    with the *unbiased* batch variance (``var`` is the biased one :func:`batch_norm`
    returns, ``m = N*H*W``).  New arrays; the arguments are not changed.
    """
    running_mean, running_var = _f64(running_mean), _f64(running_var)
    new_mean = (1 - momentum) * running_mean + momentum * _f64(mean)
    new_var = (1 - momentum) * running_var + momentum * _f64(var) * m / (m - 1)
    return new_mean, new_var


# -- softmax cross-entropy ------------------------------------------------------------------
def _pixel_terms(logits, labels, weight, ignore_index):
    """Per pixel ``(n, i, j, label, w_label)``, ignored pixels left out."""
    n, k, h, w = logits.shape
    class_weight = np.ones(k) if weight is None else _f64(weight)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                label = int(labels[b, i, j])
                if ignore_index is not None and label == ignore_index:
                    continue
                yield b, i, j, label, class_weight[label]


def _normaliser(logits, labels, weight, ignore_index, normalize) -> float:
    n, _, h, w = logits.shape
    kept = list(_pixel_terms(logits, labels, weight, ignore_index))
    if normalize == "valid" or (normalize == "weights" and weight is None):
        return float(len(kept))
    if normalize == "weights":
        return float(sum(w_y for *_, w_y in kept))
    if normalize == "full":
        return float(n * h * w)
    if normalize == "batch":
        return float(n)
    if normalize == "sum":
        return 1.0
    raise ValueError(f"softmax_cross_entropy: unknown normalize {normalize!r}")


def softmax_cross_entropy(logits, labels, weight=None, ignore_index=None, normalize="valid") -> float:
    r"""Mean per-pixel softmax cross-entropy, with class weights and ignored pixels.

    ``logits`` (N, K, H, W), integer ``labels`` (N, H, W), ``weight`` (K,) or None (all 1).
    For every pixel whose label ``y`` is not ``ignore_index``, with ``z`` its K logits::

        log p_y  = z_y - log sum_k exp(z_k)         (computed as z_y - M - log sum_k exp(z_k - M), M = max z)
        loss     = sum_pixels  w_y * (-log p_y)  /  normaliser

    ``normaliser`` by ``normalize``: ``"valid"`` the number of non-ignored pixels (Caffe's
    SoftmaxWithLoss; weights do not enter it), ``"weights"`` the sum of ``w_y`` over
    non-ignored pixels (PyTorch's CrossEntropyLoss; "valid" without weights), ``"full"``
    all N·H·W pixels, ``"batch"`` N, ``"sum"`` 1.  A normaliser of 0 gives a loss of 0.
    SLOW: a loop over pixels.
    """
    logits = _f64(logits)
    normaliser = _normaliser(logits, labels, weight, ignore_index, normalize)
    if normaliser == 0:
        return 0.0
    total = 0.0
    for b, i, j, label, w_y in _pixel_terms(logits, labels, weight, ignore_index):
        z = logits[b, :, i, j]
        top = z.max()
        log_p = z[label] - top - np.log(np.exp(z - top).sum())
        total += w_y * -log_p
    return total / normaliser


def softmax_cross_entropy_backward(logits, labels, weight=None, ignore_index=None, normalize="valid"):
    r"""Gradient of :func:`softmax_cross_entropy` with respect to the logits (N, K, H, W).

    For a non-ignored pixel with label ``y`` and softmax ``p``::

        dloss/dz_k = w_y * (p_k - [k == y]) / normaliser

    and 0 for ignored pixels (and everywhere when the normaliser is 0).  The normaliser is
    a constant: it depends on the labels and weights only.  SLOW: a loop over pixels.
    """
    logits = _f64(logits)
    grad = np.zeros_like(logits)
    normaliser = _normaliser(logits, labels, weight, ignore_index, normalize)
    if normaliser == 0:
        return grad
    for b, i, j, label, w_y in _pixel_terms(logits, labels, weight, ignore_index):
        z = logits[b, :, i, j]
        p = np.exp(z - z.max())
        p /= p.sum()
        p[label] -= 1.0
        grad[b, :, i, j] = w_y * p / normaliser
    return grad


# -- FCN's upsampling: transposed convolution and bilinear interpolation -------------------
def conv_transpose2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), output_size=None) -> np.ndarray:
    r"""Transposed convolution: every input pixel paints a kh×kw patch of the output.

    ``weight`` is (C_in, C_out, kh, kw), as in PyTorch.  On the full grid ::

        full[n, o, sh*r + i, sw*c + j] += sum_ci x[n, ci, r, c] * weight[ci, o, i, j]

    then ``padding`` rows/columns are cropped from the top/left, and the output has
    ``output_size`` (default ``(H - 1)*s - 2p + k``; PyTorch's ``output_padding`` adds up to
    ``s - 1`` more).  It is the gradient of :func:`conv2d` with respect to its input.  SLOW: a
    loop over input pixels.
    """
    x, weight = _f64(x), _f64(weight)
    n, c, h, w = x.shape
    _, o, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    if output_size is None:
        output_size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    ho, wo = (int(v) for v in tuple(output_size)[-2:])
    full = np.zeros((n, o, max((h - 1) * sh + kh, ph + ho), max((w - 1) * sw + kw, pw + wo)))
    for r in range(h):
        for col in range(w):
            patch = np.einsum("nc,cokl->nokl", x[:, :, r, col], weight)  # the patch of input pixel (r, col)
            full[:, :, sh * r : sh * r + kh, sw * col : sw * col + kw] += patch
    y = full[:, :, ph : ph + ho, pw : pw + wo].copy()
    if bias is not None:
        y += _f64(bias).reshape(1, -1, 1, 1)
    return y


def bilinear_upsample(x, output_size, align_corners: bool = False) -> np.ndarray:
    r"""Bilinear interpolation to ``output_size`` (H', W'), written out per output pixel.

    Output pixel ``(i, j)`` reads the input at the source coordinate ``(u, v)``:
    ``u = (i + 0.5) * H / H' - 0.5`` clamped at 0 (``align_corners=False``, PyTorch's
    default), or ``u = i * (H - 1) / (H' - 1)`` (``align_corners=True``); likewise ``v``.
    With ``i0 = floor(u)``, ``a = u - i0`` (and ``j0``, ``b``) ::

        y = (1-a)(1-b) x[i0, j0] + (1-a) b x[i0, j0+1] + a (1-b) x[i0+1, j0] + a b x[i0+1, j0+1]

    (indices clamped to the map).  SLOW: a loop over output pixels.
    """
    x = _f64(x)
    n, c, h, w = x.shape
    out_h, out_w = (int(v) for v in output_size)
    y = np.empty((n, c, out_h, out_w))

    def source(d, n_in, n_out):
        if align_corners:
            return d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((d + 0.5) * n_in / n_out - 0.5, 0.0)

    for i in range(out_h):
        u = source(i, h, out_h)
        i0 = min(int(np.floor(u)), h - 1)
        i1, a = min(i0 + 1, h - 1), u - i0
        for j in range(out_w):
            v = source(j, w, out_w)
            j0 = min(int(np.floor(v)), w - 1)
            j1, b = min(j0 + 1, w - 1), v - j0
            y[:, :, i, j] = ((1 - a) * (1 - b) * x[:, :, i0, j0] + (1 - a) * b * x[:, :, i0, j1]
                             + a * (1 - b) * x[:, :, i1, j0] + a * b * x[:, :, i1, j1])
    return y

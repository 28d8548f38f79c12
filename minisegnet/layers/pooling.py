"""Max pooling that remembers where each maximum was, and the unpooling that puts it back.

This is the idea that gives SegNet its name.  Every encoder stage ends with a 2×2 max
pooling; instead of throwing away *where* each maximum came from, SegNet keeps the
position and hands it to the matching decoder stage, whose unpooling writes every
value back at exactly that position (zeros elsewhere).  The decoder's convolutions
then fill in the sparse map.  Boundaries stay sharp without copying whole encoder
feature maps across, as U-Net does.

Indices are **window-local**: the position of the maximum inside its own k×k window,
``ky * kw + kx`` (0, 1, 2 or 3 for 2×2), as in Chainer and Caffe's SegNet, not PyTorch's
flat position in the whole map.  Local indices fit in the smallest unsigned integer
type, ``uint8``: one byte per pooled value instead of the eight of PyTorch's int64 flat
indices (the article notes that 2 bits per 2×2 window suffice in principle).  For the
first stage of SegNet at 360×480 with 64 channels that is 2.8 MB instead of 22 MB per
image.  ``MaxPool2d(pack_indices=True)`` goes down to those 2 bits: four windows share a
byte (:class:`PackedIndices`), 32× smaller than int64.

Odd sizes, ``ceil_mode=True`` (SegNet/Caffe): 45×60 pools to 23×30; the last window in
each direction hangs over the border and only compares the pixels that exist, as if
the map were padded with -inf.  (Padding with 0 would be wrong: in a window of
negative values the "maximum" would be a pixel that does not exist.)  ``MaxUnpool2d``
takes the size of the map before pooling (``output_size``) to restore 45×60 exactly.

How it is computed: a loop over the k×k *offsets* of the window (four for 2×2), never
over pixels or images.  For offset ``(ky, kx)`` the strided view
``x[:, :, ky::sh, kx::sw]`` holds that pixel of every window at once; a running
maximum, and the offset at which it was first reached, are updated in place.  Windows
whose pixel at that offset would lie outside the map are simply left out of the
comparison (a slice ``[:ho, :wo]``), so nothing is padded and nothing is copied.  Any
kernel and stride work; with overlapping windows (stride < kernel) a pixel may be the
maximum of several windows, and the scatters below then add up.
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, get_array_module, is_array
from ..grad_mode import is_grad_enabled
from .masking import select
from ..module import Module, releases_cache
from ..validation import check_feature_map, check_grad_shape, require_cache


# -- window arithmetic (shared by both layers) -------------------------------------
def _pair(value, name: str, layer: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{layer}: {name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def pooled_size(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """Number of windows along one axis of ``size`` pixels (no padding; PyTorch's and Caffe's rule).

    ``floor``: only whole windows, ``(size - kernel) // stride + 1``.
    ``ceil``: one more window when pixels are left over, ``ceil((size - kernel) / stride) + 1``,
    as long as that last window starts on a real pixel.  45 → 23 and 60 → 30 for 2×2/2.
    """
    if ceil_mode:
        out = -(-(size - kernel) // stride) + 1
        if (out - 1) * stride >= size:  # a window must start inside the map
            out -= 1
    else:
        out = (size - kernel) // stride + 1
    return out


def index_dtype(window_size: int):
    """The smallest unsigned integer type holding ``0 .. window_size - 1`` (uint8 up to 16×16)."""
    return np.min_scalar_type(window_size - 1)


def _window_offsets(pooled_hw, input_hw, kernel, stride):
    """For each window offset ``(ky, kx)``: ``(k, ky, kx, ho, wo)``.

    ``k = ky * kw + kx`` is the window-local index; ``ho`` × ``wo`` is how many windows
    (from the top-left) have a real pixel at that offset.  Only the last row/column of
    windows in ceil mode can miss pixels, so ``ho`` is ``Ho`` or ``Ho - 1`` (and 0 when
    the map is smaller than the window).
    """
    (ph, pw), (h, w), (kh, kw), (sh, sw) = pooled_hw, input_hw, kernel, stride
    for ky in range(kh):
        ho = min(ph, max(0, -(-(h - ky) // sh)))
        for kx in range(kw):
            wo = min(pw, max(0, -(-(w - kx) // sw)))
            yield ky * kw + kx, ky, kx, ho, wo


def _at_offset(a, ky, kx, stride, ho, wo):
    """View of the pixels at offset ``(ky, kx)`` of the first ``ho × wo`` windows."""
    sh, sw = stride
    return a[:, :, ky::sh, kx::sw][:, :, :ho, :wo]


def _scatter(values, argmax, full_shape, kernel, stride):
    """``out`` of ``full_shape``, zero except ``values`` placed at their windows' argmax pixels.

    Where windows overlap (stride < kernel) a pixel chosen by several windows receives
    their sum: this is the exact transpose of :func:`_gather`.
    """
    xp = get_array_module(values)
    out = xp.zeros(full_shape, dtype=values.dtype)
    overlapping = stride[0] < kernel[0] or stride[1] < kernel[1]
    chosen = xp.empty(argmax.shape, dtype=bool)  # one mask buffer, reused for every offset
    for k, ky, kx, ho, wo in _window_offsets(argmax.shape[2:], full_shape[2:], kernel, stride):
        if ho == 0 or wo == 0:
            continue
        mask = chosen[:, :, :ho, :wo]
        xp.equal(argmax[:, :, :ho, :wo], k, out=mask)
        target = _at_offset(out, ky, kx, stride, ho, wo)
        if overlapping:
            target += select(mask, values[:, :, :ho, :wo])
        else:
            # Each pixel belongs to one window, so it is written once: value or exactly 0
            # (a selection, not a product with the mask: an infinite value elsewhere in the
            # window must not become inf * 0 = nan here; see masking.py).
            select(mask, values[:, :, :ho, :wo], out=target)
    return out


def _gather(full, argmax, kernel, stride):
    """``out[n, c, i, j] = full[n, c, i*sh + ky, j*sw + kx]`` where ``argmax[n, c, i, j] = ky*kw + kx``."""
    xp = get_array_module(full)
    out = xp.empty(argmax.shape, dtype=full.dtype)
    picked = xp.empty(argmax.shape, dtype=full.dtype)
    chosen = xp.empty(argmax.shape, dtype=bool)
    for k, ky, kx, ho, wo in _window_offsets(argmax.shape[2:], full.shape[2:], kernel, stride):
        if ho == 0 or wo == 0:
            continue
        mask = chosen[:, :, :ho, :wo]
        xp.equal(argmax[:, :, :ho, :wo], k, out=mask)
        if k == 0:  # offset (0, 0) exists in every window: it initialises ``out``
            select(mask, _at_offset(full, ky, kx, stride, ho, wo), out=out)
        else:  # the pixels a window did not choose add exactly 0, even where they are infinite
            term = picked[:, :, :ho, :wo]
            select(mask, _at_offset(full, ky, kx, stride, ho, wo), out=term)
            out[:, :, :ho, :wo] += term
    return out


# -- 2-bit packed indices ----------------------------------------------------------
PACKED_BITS = 2
PACKED_PER_BYTE = 8 // PACKED_BITS  # four window indices share one byte
PACKED_LIMIT = 1 << PACKED_BITS  # a packed index is 0, 1, 2 or 3: windows of at most 4 pixels


class PackedIndices:
    """Window-local indices of a 2×2 pooling, 2 bits each: four windows to a byte.

    A 2×2 window has four positions, so its index ``ky * 2 + kx`` needs only 2 bits, not
    the 8 of a uint8.  ``data`` is a uint8 array of shape ``(N, C, Ho, ceil(Wo / 4))``; the
    index of window ``(i, j)`` sits in byte ``j // 4`` of row ``i``, at bits
    ``2 * (j % 4)`` and ``2 * (j % 4) + 1`` (the first window of a byte in the lowest two
    bits)::

        windows j:      0    1    2    3  |  4    5 ...
        byte j // 4:  [ b1b0 b3b2 b5b4 b7b6 ] [ b1b0 b3b2 ...
                       j=0  j=1  j=2  j=3    j=4  j=5      (bits listed high to low: j=3 | j=2 | j=1 | j=0)

    A row of ``Wo`` windows takes ``ceil(Wo / 4)`` bytes; when ``Wo`` is not a multiple of
    4 the last byte is padded with zero bits, so rows never share a byte and the packing
    is a loop over the four positions in a byte, each a strided slice of the whole map
    (``indices[..., q::4]``), never over pixels.

    ``shape`` is the shape of the unpacked indices (that of the pooled map), ``nbytes`` the
    memory the packed form holds, ``unpack()`` gives the uint8 indices back.
    :class:`MaxUnpool2d` and ``MaxPool2d.backward`` accept either form.
    """

    def __init__(self, data, shape):
        self.data = data
        self.shape = tuple(int(s) for s in shape)

    @classmethod
    def pack(cls, indices) -> "PackedIndices":
        """Pack window-local indices (each < 4) of shape (N, C, Ho, Wo) into 2 bits each."""
        xp = get_array_module(indices)
        *lead, wo = indices.shape
        data = xp.zeros((*lead, -(-wo // PACKED_PER_BYTE)), dtype=np.uint8)
        for q in range(min(PACKED_PER_BYTE, wo)):  # position inside the byte
            column = indices[..., q::PACKED_PER_BYTE].astype(np.uint8, copy=False)  # windows q, q+4, q+8 ...
            data[..., : column.shape[-1]] |= column << np.uint8(PACKED_BITS * q)
        return cls(data, indices.shape)

    def unpack(self):
        """The uint8 indices, shape ``self.shape``: ``(byte >> 2q) & 3`` for the q-th window of a byte."""
        xp = get_array_module(self.data)
        out = xp.empty(self.shape, dtype=np.uint8)
        wo = self.shape[-1]
        for q in range(min(PACKED_PER_BYTE, wo)):
            target = out[..., q::PACKED_PER_BYTE]
            xp.right_shift(self.data[..., : target.shape[-1]], np.uint8(PACKED_BITS * q), out=target)
            target &= np.uint8(PACKED_LIMIT - 1)
        return out

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return f"PackedIndices(shape={self.shape}, {self.data.shape[-1]} bytes per row)"


def _unpacked(indices):
    """The plain window-local indices, whether they came packed or not."""
    return indices.unpack() if isinstance(indices, PackedIndices) else indices


# -- the layers --------------------------------------------------------------------
class MaxPool2d(Module):
    """Max pooling over k×k windows that also returns where each maximum was.

    ``forward(x) -> (y, indices)``: ``x`` is (N, C, H, W); ``y`` and ``indices`` are
    (N, C, Ho, Wo) with ``Ho = ceil((H - kh) / sh) + 1`` in ceil mode (``floor`` otherwise).
    ``indices[n, c, i, j] = ky * kw + kx`` is the position of the maximum inside window
    ``(i, j)``, dtype uint8 (see the module docstring for the memory argument).  Ties:
    the first maximum in row-major order within the window wins (PyTorch and Chainer do
    the same), so the result is deterministic.  NaN inputs are not supported.
    ``stride`` defaults to ``kernel_size`` (SegNet's non-overlapping 2×2, stride 2), as in
    PyTorch; overlapping windows (stride < kernel) are supported too.

    Backward.  Each output is one input pixel, ``y[i, j] = x[p(i, j)]`` with
    ``p(i, j) = (i*sh + ky, j*sw + kx)`` the argmax.  Away from ties the choice of ``p``
    does not change under a small perturbation, so

        dy[i, j]/dx[p] = 1 if p = p(i, j) else 0,
        dL/dx[p] = sum over windows (i, j) with p(i, j) = p of dL/dy[i, j].

    The gradient of each output flows back to the single pixel that won its window,
    every other pixel gets 0: ``dx = scatter(dy, argmax)``, a masked copy per window
    offset (an addition where overlapping windows chose the same pixel).  The indices
    carry no gradient.

    ``pack_indices=True`` returns the indices as :class:`PackedIndices`, 2 bits per window,
    four windows to a byte (``ceil(Wo / 4)`` bytes per row instead of ``Wo``): a quarter of
    the uint8 memory, for the encoder's indices that wait for the decoder.  It needs a
    window of at most 4 pixels (2×2, as in SegNet); the unpool and this layer's backward
    unpack them (a few vectorised passes over a uint8 map, no loop over pixels).  The
    values are the same as without packing, so results are identical bit for bit.

    Train and eval behave alike; forward keeps the argmax (a reference to the returned
    ``indices``) and the input shape for backward, except inside ``minisegnet.no_grad()``
    (which keeps nothing and leaves what an earlier forward stored untouched).
    The layer has no parameters.
    """

    def __init__(self, kernel_size=2, stride=None, ceil_mode: bool = True, pack_indices: bool = False):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", "MaxPool2d")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", "MaxPool2d")
        self.ceil_mode = bool(ceil_mode)
        if not isinstance(pack_indices, (bool, np.bool_)):
            raise TypeError(f"MaxPool2d: pack_indices must be True or False, got {pack_indices!r}")
        kh, kw = self.kernel_size
        if pack_indices and kh * kw > PACKED_LIMIT:
            raise ValueError(
                f"MaxPool2d: pack_indices=True stores each window-local index in {PACKED_BITS} bits, which hold "
                f"{PACKED_LIMIT} positions (a 2×2 window); a {kh}×{kw} window has {kh * kw}. "
                "Use pack_indices=False (uint8 indices) for larger windows"
            )
        self.pack_indices = bool(pack_indices)
        self._argmax = None
        self._input_shape = None

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Pooled height and width for an input of ``height × width``."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho = pooled_size(height, kh, sh, self.ceil_mode)
        wo = pooled_size(width, kw, sw, self.ceil_mode)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"MaxPool2d: a {kh}×{kw} window (stride {sh}×{sw}, ceil_mode={self.ceil_mode}) does not fit "
                f"an input of {height}×{width}"
            )
        return ho, wo

    def forward(self, x):
        check_feature_map("MaxPool2d", x)
        xp = get_array_module(x)
        n, c, h, w = x.shape
        ho, wo = self.output_hw(h, w)
        kh, kw = self.kernel_size
        # Offset (0, 0) exists for every window: start the running maximum there.
        y = _at_offset(x, 0, 0, self.stride, ho, wo).copy()
        argmax = xp.zeros((n, c, ho, wo), dtype=index_dtype(kh * kw))
        stamp = xp.empty((n, c, ho, wo), dtype=argmax.dtype)  # one buffer reused for all offsets
        for k, ky, kx, rows, cols in _window_offsets((ho, wo), (h, w), self.kernel_size, self.stride):
            if k == 0 or rows == 0 or cols == 0:
                continue
            candidate = _at_offset(x, ky, kx, self.stride, rows, cols)
            best, arg, wins = y[:, :, :rows, :cols], argmax[:, :, :rows, :cols], stamp[:, :, :rows, :cols]
            xp.greater(candidate, best, out=wins)  # 1 where strictly greater: the first maximum keeps ties
            wins *= k  # k where this offset wins, 0 elsewhere
            # Offsets come in increasing k, so every earlier winner is < k and "set to k
            # where it wins" is a maximum: vectorised, ~40x faster than copyto(where=).
            xp.maximum(arg, wins, out=arg)
            xp.maximum(best, candidate, out=best)
        indices = PackedIndices.pack(argmax) if self.pack_indices else argmax
        if is_grad_enabled():
            self._argmax, self._input_shape = indices, tuple(x.shape)
        return y, indices

    def _release_cache(self) -> None:
        self._argmax = None

    @releases_cache
    def backward(self, dy):
        """``dx = scatter(dy, argmax)``: each gradient goes to the pixel that won its window."""
        argmax = require_cache("MaxPool2d", self._argmax)
        check_grad_shape("MaxPool2d", dy, argmax.shape)
        return _scatter(dy, _unpacked(argmax), self._input_shape, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        packed = ", pack_indices=True" if self.pack_indices else ""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, ceil_mode={self.ceil_mode}{packed}"


class MaxUnpool2d(Module):
    """Put every pooled value back where its maximum came from; zeros elsewhere.

    ``forward(x, indices, output_size=None) -> y``.  ``x`` and ``indices`` are the
    (N, C, Ho, Wo) map and the window-local indices that :class:`MaxPool2d` returned;
    ``output_size`` is the size of the map *before* pooling, ``(H, W)`` or the full
    ``(N, C, H, W)``, needed to undo ceil mode on odd sizes (23×30 → 45×60).  Without
    it, ``H = (Ho - 1) * sh + kh`` (46×60: one row too many), as in PyTorch.

    The article's figure, 2×2 windows, ``indices = [[1, 2], [3, 0]]``::

        pooled x      indices        unpooled y (4×4)
        +---+---+     +---+---+      +---+---+---+---+
        | a | b |     | 1 | 2 |      | 0 | a | 0 | 0 |
        +---+---+     +---+---+      | 0 | 0 | b | 0 |
        | c | d |     | 3 | 0 |      | 0 | 0 | d | 0 |
        +---+---+     +---+---+      | 0 | c | 0 | 0 |
                                     +---+---+---+---+

    Backward.  Unpooling is linear, ``y = S^T x``, where ``S`` is the 0/1 selection
    matrix of the pooling (``S[(i, j), p] = 1`` when pixel ``p`` won window ``(i, j)``),
    so ``dL/dx = S dL/dy``: the gradient of each pooled value is read back from the
    pixel it was written to, ``dx[i, j] = dy[p(i, j)]``, i.e. ``dx = gather(dy, argmax)``.
    Gradients written to the zero pixels go nowhere.  The indices carry no gradient.
    (With overlapping windows a pixel chosen twice receives the *sum* of both values,
    which keeps unpooling the exact transpose of pooling; PyTorch overwrites instead.)

    ``indices`` may be a uint8 (or any integer) array or the :class:`PackedIndices` of
    ``MaxPool2d(pack_indices=True)``; packed indices are unpacked for the scatter and kept
    packed for backward.

    Checking the indices.  Their type, shape, dtype and device are always checked: that
    reads only metadata the host already has.  Their *values* (each in ``[0, kh*kw)``, and
    in ceil mode pointing at a pixel that exists) can only be checked by reading the
    array, which on a GPU means copying a result to the host and waiting for every queued
    kernel: about 15 such stalls per SegNet forward.  ``validate_indices`` chooses:
    ``None`` (default) checks the values on NumPy, where they are cheap and a learner's
    mistake is caught at once, and skips them on CuPy; ``True`` checks them on any device
    (for debugging a GPU run); ``False`` never checks them.  Unchecked wrong indices are
    not caught: an index ``>= kh*kw`` then leaves its value out of the output.

    Train and eval behave alike; forward keeps a reference to ``indices`` and the output
    shape, except inside ``minisegnet.no_grad()``.  The layer has no parameters.
    """

    def __init__(self, kernel_size=2, stride=None, validate_indices: bool | None = None):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", "MaxUnpool2d")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", "MaxUnpool2d")
        if validate_indices is not None and not isinstance(validate_indices, (bool, np.bool_)):
            raise TypeError(f"MaxUnpool2d: validate_indices must be None, True or False, got {validate_indices!r}")
        self.validate_indices = None if validate_indices is None else bool(validate_indices)
        self._argmax = None
        self._output_shape = None

    def _full_output_shape(self, x_shape, output_size):
        n, c, ho, wo = (int(s) for s in x_shape)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if output_size is None:
            h, w = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        else:
            size = tuple(int(s) for s in output_size)
            if len(size) == 4:
                if size[:2] != (n, c):
                    raise ValueError(
                        f"MaxUnpool2d: output_size {size} has batch and channels {size[:2]}, "
                        f"but the input is {(n, c)} (shape {(n, c, ho, wo)})"
                    )
                size = size[2:]
            if len(size) != 2:
                raise ValueError(f"MaxUnpool2d: output_size must be (H, W) or (N, C, H, W), got {output_size!r}")
            h, w = size
            ok_h = ho in (pooled_size(h, kh, sh, True), pooled_size(h, kh, sh, False))
            ok_w = wo in (pooled_size(w, kw, sw, True), pooled_size(w, kw, sw, False))
            if not (ok_h and ok_w):
                raise ValueError(
                    f"MaxUnpool2d: output_size {h}×{w} does not pool to the input's {ho}×{wo} with a {kh}×{kw} "
                    f"window and stride {sh}×{sw} (it gives {pooled_size(h, kh, sh, True)}×"
                    f"{pooled_size(w, kw, sw, True)} in ceil mode, {pooled_size(h, kh, sh, False)}×"
                    f"{pooled_size(w, kw, sw, False)} in floor mode)"
                )
        return n, c, h, w

    def checks_index_values(self, xp) -> bool:
        """Whether forward reads the index values to check them, for arrays of module ``xp``.

        ``validate_indices`` when set, else only on NumPy (on CuPy it would stall the GPU).
        """
        return xp is np if self.validate_indices is None else self.validate_indices

    def _checked_indices(self, indices, x, full_shape):
        """The plain (unpacked) window-local indices, once checked (see the class docstring)."""
        stored = indices.data if isinstance(indices, PackedIndices) else indices
        if not is_array(stored):
            raise TypeError(
                f"MaxUnpool2d: expected indices as a NumPy/CuPy array (or PackedIndices), got {type(indices).__name__}"
            )
        if np.dtype(stored.dtype).kind not in "ui":
            raise TypeError(f"MaxUnpool2d: expected integer indices (uint8 from MaxPool2d), got dtype {stored.dtype}")
        if device_of(stored) != device_of(x):
            raise ValueError(
                f"MaxUnpool2d: input is on {device_of(x)!r} but indices are on {device_of(stored)!r}"
            )
        if tuple(indices.shape) != tuple(x.shape):
            raise ValueError(
                f"MaxUnpool2d: indices of shape {tuple(indices.shape)} do not match the input of shape "
                f"{tuple(x.shape)}; pass the indices MaxPool2d returned with this map"
            )
        indices = _unpacked(indices)
        if indices.size == 0 or not self.checks_index_values(get_array_module(indices)):
            return indices
        self._check_index_values(indices, x, full_shape)
        return indices

    def _check_index_values(self, indices, x, full_shape):
        """Every index inside its window, and inside the map: reads the values (a host sync on a GPU)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        high = int(indices.max())
        low = int(indices.min()) if np.dtype(indices.dtype).kind == "i" else 0
        if low < 0 or high >= kh * kw:
            raise ValueError(
                f"MaxUnpool2d: window-local indices must lie in [0, {kh * kw}) for a {kh}×{kw} window, "
                f"got values in [{low}, {high}]"
            )
        # In ceil mode the last row/column of windows may hang over the border; an index
        # there must still point at a pixel that exists.
        _, _, h, w = full_shape
        ho, wo = x.shape[2:]
        rows_left, cols_left = h - (ho - 1) * sh, w - (wo - 1) * sw
        if rows_left < kh and bool((indices[:, :, -1, :] // kw >= rows_left).any()):
            raise ValueError(
                f"MaxUnpool2d: an index in the last row of windows points below the {h}-pixel-high output"
            )
        if cols_left < kw and bool((indices[:, :, :, -1] % kw >= cols_left).any()):
            raise ValueError(
                f"MaxUnpool2d: an index in the last column of windows points right of the {w}-pixel-wide output"
            )

    def forward(self, x, indices, output_size=None):
        check_feature_map("MaxUnpool2d", x)
        full_shape = self._full_output_shape(x.shape, output_size)
        argmax = self._checked_indices(indices, x, full_shape)
        y = _scatter(x, argmax, full_shape, self.kernel_size, self.stride)
        if is_grad_enabled():  # packed indices stay packed until backward needs them
            self._argmax, self._output_shape = indices, full_shape
        return y

    def _release_cache(self) -> None:
        self._argmax = None

    @releases_cache
    def backward(self, dy):
        """``dx = gather(dy, argmax)``: each pooled value's gradient is read where it was written."""
        argmax = require_cache("MaxUnpool2d", self._argmax)
        check_grad_shape("MaxUnpool2d", dy, self._output_shape)
        return _gather(dy, _unpacked(argmax), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        checks = "" if self.validate_indices is None else f", validate_indices={self.validate_indices}"
        return f"kernel_size={self.kernel_size}, stride={self.stride}{checks}"

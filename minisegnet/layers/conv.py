r"""2-D convolution as a sum of shifted matrix products: no im2col buffer.

The identity
------------
Cut the weight ``W`` (O, C, kh, kw) into kh·kw small matrices ``W_ij = W[:, :, i, j]``
(O × C), one per kernel offset.  A stride-1 convolution (a cross-correlation, as in every
deep-learning library) is ::

    y[n, :, r, c] = b + sum_ij  W_ij @ x_pad[n, :, r + i, c + j]

a sum of kh·kw matrix products, each with the input *shifted* by (i, j).  Store the
zero-padded input channel-major and flat, ``X`` (C, N·Hp·Wp): pixel (n, r, c) is column
``n·Hp·Wp + r·Wp + c``.  "Shift by (i, j)" is then "start ``s_ij = i·Wp + j`` columns
later", and the shifted input is the column slice ``X[:, s_ij : s_ij + L]``, a view ::

    Y = sum_ij  W_ij @ X[:, s_ij : s_ij + L]            (O × L; one GEMM per offset, no copy)

computed at every position of the padded grid.  The positions whose window runs over the
right or bottom border, or into the next image, are garbage and are cropped at the end.
That is what the trick wastes: ``1 - Ho·Wo / (Hp·Wp)`` of the arithmetic, 20 % for a 7×7
kernel on SegNet-Basic's smallest map (45×60 -> 51×66 padded), 3 % at 360×480.

The backward, derived
---------------------
With ``x_ij`` the input shifted by offset (i, j) and ``dy`` the upstream gradient (on the
padded grid, zero at the cropped positions)::

    y = sum_ij W_ij x_ij + b
    dL/dW_ij = dy @ x_ij^T                  (O × L) @ (L × C): one product per offset
    dL/db    = sum of dy over n, r, c
    dL/dx_ij = W_ij^T @ dy, and x_ij is x read s_ij columns later, so it lands there:
    dx[:, t] = sum_ij W_ij^T dy[:, t - s_ij]

The last line can be computed two ways, and the layer uses both:

* **scatter**: compute ``W_ij^T @ dy`` (C × L) and add it into ``dx[:, s_ij : s_ij + L]``
  for every offset (k² in-place additions of a C-row array);
* **flipped**: read the sum the other way round -- it is a correlation of ``dy`` (with
  ``(kh-1)·Wp + kw-1`` zero columns in front, so ``t - s_ij`` never goes negative) with the
  kernel flipped in both directions and its channels swapped, ``W[:, :, ::-1, ::-1]^T``.
  That is the forward's machinery run on ``dy``, and the same shifted slices of ``dy`` give
  ``dW`` (at the flipped offset) by one more product each.  The zero columns of ``dy`` at
  the cropped positions keep the flat layout's wrap-around from leaking between rows or
  images.

"flipped" multiplies matrices with O rows stacked (good when C >= O: every 64->64 layer,
the classifier); "scatter" multiplies with C rows stacked (good when C < O: the 3->64
input layer, where "flipped" would run GEMMs with 3 output rows).  Measured, one thread,
float32, batch 4: backward of 64->64 7×7 on 45×60, flipped 166 ms vs scatter 184 ms; of
3->64 7×7 on 90×120, scatter 59 ms vs flipped 215 ms; of 64->11 7×7 on 90×120, flipped
143 ms vs scatter 344 ms.

Memory, and why not im2col
--------------------------
im2col copies every input pixel once per kernel offset into a (C·kh·kw) × (N·Ho·Wo)
matrix and runs one big GEMM.  For a 3×3, 64-channel SegNet layer at 360×480 with a batch
of 4 in float32 that matrix is 4 · (64·9) · 360·480 · 4 B = 1.6 GB (8.7 GB for
SegNet-Basic's 7×7 kernels), built again in the backward.  Here the extra memory is the
padded channel-major copy of the input (kept for the backward, about the size of ``x``),
a few output- or input-sized scratch arrays, and the optional shifted-copy buffer below,
capped by ``Conv2d.max_workspace_bytes``.

Speed: stacking the horizontal offsets
--------------------------------------
A GEMM with inner dimension C = 64 runs well below BLAS peak, and each of the 49 adds
into the output.  So the ``g`` horizontal shifts ``j0 .. j0+g-1`` of ``X`` are copied once,
stacked, into a (g·C) × (L + (kh-1)·Wp) buffer; since the next kernel row is the same data
``Wp`` columns later, that one buffer serves *every* kernel row as a view: a 7×7 layer
costs 7 GEMMs of inner dimension 7·C instead of 49 of inner dimension C.  The buffer holds
``g`` shifted copies of the input (``1/kh`` of im2col when ``g = kw``).  To keep it within
``max_workspace_bytes`` (64 MiB) on large maps, the output columns are cut into equal
*blocks*, each computed from its own stacked copy (block plus the ``(kh-1)·Wp`` columns the
lower kernel rows reach): the GEMMs stay 7·C deep and only get shorter, which costs nothing
measurable (a whole SegNet-Basic step at 4×180×240 took the same time with a 256 MiB and
a 64 MiB budget: 2 and 6 blocks for the 64-channel 180×240 layer).  Only when a block of
16 384 columns would not fit does ``g`` shrink; ``g = 1`` copies nothing.
Measured with ``benchmarks/bench_conv.py --threads 1 --cpu-time --variants`` (2-core AMD
EPYC, OpenBLAS 0.3.31, float32, batch 4), forward of 64->64 7×7:

    map        grouped (g = 7)   plain (49 GEMMs)   im2col   torch (oneDNN)
    45×60           115 ms            190 ms          252 ms      59 ms
    90×120          400 ms            543 ms         1173 ms     232 ms

im2col loses on these layers because its 49-fold copy costs more memory traffic than its
single GEMM saves; it wins only where its matrix is small: the 3-channel input layer (by
1.9×) and 512-channel layers on 23×30 and 12×15 maps (by 10-30 %).  Forward + backward
took 1.4-1.6× torch's time on the 7×7 64->64 layers and 1.0-1.7× on the others (table in
the benchmark).

Large scratch arrays are kept between calls (:class:`_Workspace`), shared by all layers:
with NumPy a fresh 100 MB array costs page faults (and huge-page compaction) every step.
On CuPy, ``cupy.matmul`` copies a non-contiguous operand before calling cuBLAS, so there
each shifted view becomes a transient contiguous copy of one slice: still no im2col matrix.

Stride > 1
----------
The shifted input is then a strided window ``x_pad[:, :, i::sh, j::sw]``, not a flat
slice, so each group of offsets is gathered into a reused (g·C) × (N·Ho·Wo) buffer and
the same GEMMs run; the backward ("scatter") adds ``W_ij^T dy`` back through the same
strided views (``+=`` on a strided slice is safe: within one offset no two outputs share
an input pixel).

Train / eval
------------
The layer computes the same thing in both modes.  It keeps the padded input
(``self._padded_input``) for the backward only while ``self.requires_grad`` is set.
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from ..module import Module, Parameter
from ..validation import check_feature_map, check_grad_shape, require_cache

__all__ = ["Conv2d", "clear_workspace"]


def _pair(value, name: str) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(3, 5) -> (3, 5)``; anything else is a clear error."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"Conv2d: expected {name} as an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"Conv2d: expected {name} as an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


class _Workspace:
    """Scratch arrays kept between calls, per thread, device, dtype and role.

    All Conv2d layers share it (they run one after another), so it costs the largest
    layer's scratch, not the sum over layers.  An array handed out is valid until the
    next request for the same role; none leaves the layer (outputs, gradients and the
    cached input are always fresh arrays).
    """

    def __init__(self):
        self._local = threading.local()

    def arrays(self) -> dict:
        return self._local.__dict__.setdefault("arrays", {})

    def take(self, like, role: str, shape, dtype=None):
        """An uninitialised array of ``shape`` on the device of ``like`` (in its dtype by default)."""
        xp = get_array_module(like)
        dtype = np.dtype(like.dtype if dtype is None else dtype)
        key = (xp.__name__, str(getattr(like, "device", "cpu")), dtype.str, role)
        size = int(np.prod(shape))
        arrays = self.arrays()
        flat = arrays.get(key)
        if flat is None or flat.size < size:
            arrays.pop(key, None)  # let the smaller one go before allocating the larger
            arrays[key] = flat = xp.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def clear(self) -> None:
        self._local.__dict__.pop("arrays", None)


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free the scratch arrays that convolutions keep between calls (in this thread)."""
    _WORKSPACE.clear()


def _row_weights(xp, weight, j0: int, g: int):
    """``(kh, O, g·C)``: ``[i][o, jj·C + c] = weight[o, c, i, j0 + jj]``, the order of the stacked shifts."""
    o, c, kh, _ = weight.shape
    return xp.ascontiguousarray(weight[:, :, :, j0 : j0 + g].transpose(2, 0, 3, 1)).reshape(kh, o, g * c)


class Conv2d(Module):
    r"""``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)``.

    NCHW input ``x`` (N, C, H, W) -> output (N, O, Ho, Wo) with
    ``Ho = (H + 2·ph - kh) // sh + 1`` (and likewise Wo), zero padding, as
    ``torch.nn.Conv2d``.  ``kernel_size``, ``stride`` and ``padding`` take an int or an
    (h, w) pair.  How it is computed (shifted GEMMs, no im2col), the derivation of the
    backward and the memory arithmetic are in the module docstring.

    Parameters: ``weight`` (O, C, kh, kw), He-initialised -- Kaiming normal for ReLU,
    standard deviation ``sqrt(2 / fan_in)`` with ``fan_in = C·kh·kw``, which keeps the
    variance of the activations steady through a deep ReLU network -- and ``bias`` (O,)
    zeros, or None with ``bias=False``.  Both are created as float32 NumPy arrays; use
    ``.double()`` / ``.to("cuda")``.  ``rng`` (keyword only; not in PyTorch): a NumPy
    Generator or seed for the initialisation; None draws from NumPy's global state, so
    ``np.random.seed`` makes it reproducible.

    ``forward(x)`` computes in ``x.dtype``, which must equal the weight's.
    ``backward(dy)`` returns ``dL/dx`` and *adds* ``dL/dW``, ``dL/db`` into ``weight.grad``
    / ``bias.grad`` (``zero_grad()`` clears them).  Same computation in training and eval
    mode; the padded input is kept for the backward only while ``requires_grad`` is set.
    """

    #: Cap, in bytes, on the buffer of stacked shifted copies (module docstring); 0: no
    #: copies, one plain shifted GEMM per offset.  Set it on the class or on one layer.
    max_workspace_bytes: int = 64 * 2**20

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 *, rng=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Conv2d: expected {name} as a positive int, got {value!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"Conv2d: expected kernel_size >= 1, stride >= 1, padding >= 0, got kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}"
            )
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        normal = np.random.standard_normal(shape) if rng is None else np.random.default_rng(rng).standard_normal(shape)
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter((normal * np.sqrt(2.0 / fan_in)).astype(np.float32))
        self.bias = Parameter(np.zeros(self.out_channels, dtype=np.float32)) if bias else None
        self._padded_input = None  # (C, N, Hp, Wp): the zero-padded input, channel-major, for the backward
        self._input_shape = None  # (N, C, H, W) of that forward
        self._output_shape = None  # (N, O, Ho, Wo) of that forward
        # Private switches for the tests and the benchmark: force the strided path at
        # stride 1, or one of the two backward formulations ("flipped" / "scatter").
        self._allow_flat = True
        self._dx_form = "auto"
        self._min_block_columns = 16384  # see _tiling; the tests make it tiny to exercise the block seams

    # -- description and sizes ----------------------------------------------------
    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.bias is None:
            text += ", bias=False"
        return text

    @property
    def _name(self) -> str:
        return f"Conv2d({self.extra_repr()})"

    @property
    def _flat(self) -> bool:
        """Stride 1 uses flat shifted views; any other stride gathers strided windows."""
        return self.stride == (1, 1) and self._allow_flat

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _tiling(self, kw: int, rows: int, length: int, halo: int, itemsize: int, min_block: int) -> tuple[int, int]:
        """``(g, block)``: stack ``g`` horizontal offsets per GEMM, over blocks of ``block`` columns.

        A stacked copy of a block spans its ``block`` columns plus the ``halo`` that the
        lower kernel rows reach.  ``g = kw`` (the fewest, deepest GEMMs) whenever a block of
        ``min_block`` columns fits ``max_workspace_bytes``; the budget is then met by cutting
        the columns into equal blocks.  Otherwise ``g`` shrinks to what fits, in groups of
        equal size (room for 5 of 7 offsets gives 4 + 3, not 5 + 2).  ``g = 1`` copies
        nothing, so its one block is all the columns.
        """
        smallest = rows * itemsize * (min(min_block, length) + halo)  # bytes of one shifted copy
        fits = int(max(1, min(kw, self.max_workspace_bytes // max(smallest, 1))))
        groups = -(-kw // fits)
        g = -(-kw // groups)
        if g == 1:
            return 1, length
        block = max(min(min_block, length), self.max_workspace_bytes // (g * rows * itemsize) - halo)
        blocks = -(-length // block)
        return g, -(-length // blocks)

    # -- walking over the kernel offsets ----------------------------------------------
    # Both generators yield (start, stop, i, j0, gg, cols) for kernel row i and its offsets
    # j0..j0+gg-1: cols (gg·rows, stop - start) holds the source under those offsets at the
    # output positions start..stop-1 -- a block of the im2col matrix, never the whole matrix.
    def _flat_windows(self, src, row_stride: int, length: int):
        """Stride 1: M = ``length`` columns of the flat padded grid, as views of gg stacked shifts of ``src``.

        Yields ``(start, stop, i, j0, gg, cols)``: ``cols`` covers output columns
        ``start .. stop-1``; the columns come in blocks so that the stacked copy fits
        ``max_workspace_bytes`` without making the GEMMs shallower.
        """
        rows = src.shape[0]
        kh, kw = self.kernel_size
        halo = (kh - 1) * row_stride  # the lower kernel rows read this many columns further
        g, block = self._tiling(kw, rows, length, halo, src.dtype.itemsize, self._min_block_columns)
        for start in range(0, length, block):
            stop = min(length, start + block)
            span = stop - start + halo  # one horizontal shift of the block, long enough for every kernel row
            for j0 in range(0, kw, g):
                gg = min(g, kw - j0)
                if gg > 1:  # copy the gg horizontal shifts once, stacked: (gg·rows, span)
                    stacked = _WORKSPACE.take(src, "shifted", (gg, rows, span))
                    for jj in range(gg):
                        stacked[jj] = src[:, start + j0 + jj : start + j0 + jj + span]
                    stacked = stacked.reshape(gg * rows, span)
                else:  # one shift: a view of src itself, nothing copied
                    stacked = src[:, start + j0 : start + j0 + span]
                for i in range(kh):  # kernel row i is the same data i·Wp columns later: a view
                    yield start, stop, i, j0, gg, stacked[:, i * row_stride : i * row_stride + stop - start]

    def _strided_windows(self, padded, ho: int, wo: int):
        """Any stride: M = N·Ho·Wo; the strided windows of the padded input, gathered into a reused buffer."""
        c, n = padded.shape[:2]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        length = n * ho * wo
        g, _ = self._tiling(kw, c, length, 0, padded.dtype.itemsize, min_block=length)  # one block: all of M
        for j0 in range(0, kw, g):
            gg = min(g, kw - j0)
            for i in range(kh):
                cols = _WORKSPACE.take(padded, "gathered", (gg, c, n, ho, wo))
                for jj in range(gg):
                    j = j0 + jj
                    cols[jj] = padded[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                yield 0, length, i, j0, gg, cols.reshape(gg * c, length)

    # -- forward ------------------------------------------------------------------
    def _check_input(self, x):
        check_feature_map(self._name, x, channels=self.in_channels)
        xp = get_array_module(x)
        if xp is not get_array_module(self.weight.data):
            where = "cpu" if xp is np else "cuda"
            raise ValueError(
                f"{self._name}: expected the input on the weight's device, got a {where} input for a layer on "
                f"{'cpu' if where == 'cuda' else 'cuda'} (move one of them with .to())"
            )
        if x.dtype != self.weight.data.dtype:
            raise TypeError(
                f"{self._name}: expected an input of the weight's dtype {self.weight.data.dtype}, got {x.dtype} "
                "(convert the input, or the layer with .double() / .float())"
            )
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2], x.shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self._name}: expected a padded input at least as large as the kernel {kh}x{kw}, got "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph},{pw})"
            )
        return xp

    def _pad(self, xp, x):
        """The zero-padded input, channel-major (C, N, Hp, Wp).

        Kept for the backward, so it is a layer-owned array: the previous step's is
        overwritten when the shape still fits (one large allocation less per step).
        """
        n, c, h, w = x.shape
        ph, pw = self.padding
        shape = (c, n, h + 2 * ph, w + 2 * pw)
        previous = self._padded_input
        if not self.requires_grad:
            padded = _WORKSPACE.take(x, "padded", shape)  # not kept: scratch will do
        elif previous is not None and previous.shape == shape and previous.dtype == x.dtype \
                and get_array_module(previous) is xp:
            padded = previous
        else:
            self._padded_input = None  # let the old one go before allocating the new one
            padded = xp.empty(shape, dtype=x.dtype)
        if ph:
            padded[:, :, :ph] = 0
            padded[:, :, ph + h :] = 0
        if pw:
            padded[:, :, :, :pw] = 0
            padded[:, :, :, pw + w :] = 0
        padded[:, :, ph : ph + h, pw : pw + w] = x.transpose(1, 0, 2, 3)
        return padded

    def forward(self, x):
        xp = self._check_input(x)
        n, c, h, w = x.shape
        o = self.out_channels
        ho, wo = self._output_size(h, w)
        padded = self._pad(xp, x)
        hp, wp = padded.shape[2], padded.shape[3]

        if self._flat:  # Y = sum_ij W_ij @ X[:, s_ij : s_ij + L] on the flat padded grid
            grid = n * hp * wp
            length = (n - 1) * hp * wp + (ho - 1) * wp + wo  # up to the last valid output; never reads past X
            y_grid = _WORKSPACE.take(x, "y_grid", (o, grid))
            out = y_grid[:, :length]
            windows = self._flat_windows(padded.reshape(c, grid), wp, length)
            y_cnhw = y_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo]  # the valid positions
        else:
            out = _WORKSPACE.take(x, "y_grid", (o, n * ho * wo))
            windows = self._strided_windows(padded, ho, wo)
            y_cnhw = out.reshape(o, n, ho, wo)
        w_rows = {}  # j0 -> (kh, O, gg·C) weights in the order of the stacked shifts
        for start, stop, i, j0, gg, cols in windows:
            if j0 not in w_rows:
                w_rows[j0] = _row_weights(xp, self.weight.data, j0, gg)
            target = out[:, start:stop]
            if i == 0 and j0 == 0:
                xp.matmul(w_rows[j0][i], cols, out=target)
            else:  # target += W_rows @ cols, without a new array
                product = _WORKSPACE.take(x, "product", target.shape)
                xp.matmul(w_rows[j0][i], cols, out=product)
                target += product

        y = xp.empty((n, o, ho, wo), dtype=x.dtype)
        if self.bias is not None:  # crop, back to NCHW and add the bias, in one pass
            xp.add(y_cnhw.transpose(1, 0, 2, 3), self.bias.data.reshape(1, o, 1, 1), out=y)
        else:
            y[...] = y_cnhw.transpose(1, 0, 2, 3)

        keep = self.requires_grad
        self._padded_input = padded if keep else None
        self._input_shape = tuple(x.shape) if keep else None
        self._output_shape = tuple(y.shape) if keep else None
        return y

    # -- backward -----------------------------------------------------------------
    def backward(self, dy):
        padded = require_cache(self._name, self._padded_input)
        check_grad_shape(self._name, dy, self._output_shape)
        xp = get_array_module(padded)
        n, c, h, w = self._input_shape
        ph, pw = self.padding
        if self.bias is not None:
            self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3), dtype=padded.dtype))
        form = self._dx_form
        if form == "auto":
            form = "flipped" if self.in_channels >= self.out_channels else "scatter"
        if self._flat and form == "flipped":
            dx_pad, dw = self._backward_flipped(xp, dy, padded)
        else:
            dx_pad, dw = self._backward_scatter(xp, dy, padded)
        self.weight.accumulate_grad(dw)
        dx = xp.empty((n, c, h, w), dtype=padded.dtype)
        dx[...] = dx_pad[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)  # crop the padding, back to NCHW
        return dx

    def _backward_flipped(self, xp, dy, padded):
        """Stride 1: dx correlates zero-embedded dy with the flipped kernel; dW from the same slices.

        Returns dx on the padded grid (C, N, Hp, Wp) and dW (O, C, kh, kw).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (ph, pw) = self.out_channels, self.kernel_size, self.padding
        ho, wo = dy.shape[2], dy.shape[3]
        grid = n * hp * wp
        lead = (kh - 1) * wp + (kw - 1)  # zero columns before dy: t - s_ij never goes negative
        dy_grid = _WORKSPACE.take(padded, "dy_grid", (o, lead + grid))
        dy_grid[...] = 0  # zero at the cropped positions and in the lead
        dy_grid[:, lead:].reshape(o, n, hp, wp)[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
        # dx is needed up to the last real input pixel; after it the padded input is all padding
        length = (n - 1) * hp * wp + (ph + self._input_shape[2] - 1) * wp + pw + self._input_shape[3]
        dx_grid = _WORKSPACE.take(padded, "dx_grid", (c, grid))
        out = dx_grid[:, :length]
        x_cols = padded.reshape(c, grid)[:, :length]
        flipped = self.weight.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (C, O, kh, kw)
        dw_flipped = xp.empty((kh, kw, o, c), dtype=padded.dtype)
        w_rows = {}
        for start, stop, i, j0, gg, dy_cols in self._flat_windows(dy_grid, wp, length):
            if j0 not in w_rows:
                w_rows[j0] = _row_weights(xp, flipped, j0, gg)
            target = out[:, start:stop]
            if i == 0 and j0 == 0:
                xp.matmul(w_rows[j0][i], dy_cols, out=target)
            else:
                product = _WORKSPACE.take(padded, "product", target.shape)
                xp.matmul(w_rows[j0][i], dy_cols, out=product)
                target += product
            # dW at the flipped offset (kh-1-i, kw-1-j) from the same slices of dy, summed over the blocks
            dw_block = dw_flipped[i, j0 : j0 + gg].reshape(gg * o, c)
            if start == 0:
                xp.matmul(dy_cols, x_cols[:, start:stop].T, out=dw_block)
            else:
                dw_block += xp.matmul(dy_cols, x_cols[:, start:stop].T)
        dw = dw_flipped[::-1, ::-1].transpose(2, 3, 0, 1)  # back to (O, C, kh, kw)
        return dx_grid.reshape(c, n, hp, wp), dw

    def _backward_scatter(self, xp, dy, padded):
        """dW_ij = dy @ window_ij^T; W_ij^T @ dy added back into window ij of dx (any stride).

        Returns dx on the padded grid (C, N, Hp, Wp) and dW (O, C, kh, kw).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (sh, sw) = self.out_channels, self.kernel_size, self.stride
        ho, wo = dy.shape[2], dy.shape[3]
        dx_pad = _WORKSPACE.take(padded, "dx_grid", (c, n, hp, wp))
        dx_pad[...] = 0
        if self._flat:  # dy on the padded grid, zero at the cropped positions
            grid = n * hp * wp
            length = (n - 1) * hp * wp + (ho - 1) * wp + wo
            dy_grid = _WORKSPACE.take(padded, "dy_grid", (o, grid))
            dy_grid[...] = 0
            dy_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
            dy_cols = dy_grid[:, :length]
            dx_flat = dx_pad.reshape(c, grid)
            windows = self._flat_windows(padded.reshape(c, grid), wp, length)
        else:
            length = n * ho * wo
            dy_cols = _WORKSPACE.take(padded, "dy_grid", (o, n, ho, wo))
            dy_cols[...] = dy.transpose(1, 0, 2, 3)
            dy_cols = dy_cols.reshape(o, length)
            windows = self._strided_windows(padded, ho, wo)
        dw = xp.zeros((kh, o, kw, c), dtype=padded.dtype)
        w_rows = {}
        for start, stop, i, j0, gg, cols in windows:
            if j0 not in w_rows:
                w_rows[j0] = _row_weights(xp, self.weight.data, j0, gg)
            dy_block = dy_cols[:, start:stop]
            dw[i, :, j0 : j0 + gg] += xp.matmul(dy_block, cols.T).reshape(o, gg, c)  # summed over the blocks
            d_cols = _WORKSPACE.take(padded, "d_windows", (gg * c, stop - start))
            xp.matmul(w_rows[j0][i].T, dy_block, out=d_cols)
            for jj in range(gg):  # each offset's share goes back where its window was read
                j = j0 + jj
                d_window = d_cols[jj * c : (jj + 1) * c]
                if self._flat:
                    dx_flat[:, i * wp + j + start : i * wp + j + stop] += d_window
                else:
                    window = dx_pad[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                    window += d_window.reshape(c, n, ho, wo)
        return dx_pad, dw.transpose(1, 3, 0, 2)

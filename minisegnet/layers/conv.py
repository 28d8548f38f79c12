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

The three lines are independent, so each is computed only when someone needs it: a frozen
``weight`` (``weight.requires_grad = False``) skips the ``dW`` products, a frozen ``bias``
the sum, and ``needs_input_grad=False`` (a network's first layer: nobody needs d image)
skips ``dx``, about half the backward's arithmetic.

The last line can be computed two ways, and the layer has both:

* **scatter**: compute ``W_ij^T @ dy`` (C × L) and add it into ``dx[:, s_ij : s_ij + L]``
  for every offset (k² in-place additions of a C-row array);
* **flipped**: read the sum the other way round -- it is a correlation of ``dy`` (with
  ``(kh-1)·Wp + kw-1`` zero columns in front, so ``t - s_ij`` never goes negative) with the
  kernel flipped in both directions and its channels swapped, ``W[:, :, ::-1, ::-1]^T``.
  That is the forward's machinery run on ``dy``, and the same shifted slices of ``dy`` give
  ``dW`` (at the flipped offset) by one more product each.  The zero columns of ``dy`` at
  the cropped positions keep the flat layout's wrap-around from leaking between rows or
  images.

"flipped" multiplies matrices with O rows stacked, which is good when C >= O (every 64->64
layer, the classifier); "scatter" multiplies with C rows stacked, better when C < O (the
3->64 input layer, where "flipped" would run GEMMs with 3 output rows) -- though there the
tiled im2col below beats both (timings: ``BENCHMARKS.md``).

Stride > 1
----------
The shifted input is then a strided window ``x_pad[:, :, i::sh, j::sw]``, not a flat
slice, so each group of offsets is *gathered* into a reused (g·C) × (N·Ho·Wo) buffer and
the same GEMMs run; the backward ("scatter") adds ``W_ij^T dy`` back through the same
strided views (``+=`` on a strided slice is safe: within one offset no two outputs share
an input pixel).

Memory, and why not im2col
--------------------------
im2col copies every input pixel once per kernel offset into a (C·kh·kw) × (N·Ho·Wo)
matrix and runs one big GEMM.  For a 3×3, 64-channel SegNet layer at 360×480 with a batch
of 4 in float32 that matrix is 4 · (64·9) · 360·480 · 4 B = 1.6 GB (8.7 GB for
SegNet-Basic's 7×7 kernels), built again in the backward.  Here the extra memory is the
padded channel-major copy of the input (kept for the backward, about the size of ``x``),
a few output- or input-sized scratch arrays, and the optional shifted-copy buffer below,
capped by ``Conv2d.max_workspace_bytes``.  Speed agrees with memory: on SegNet's layers
im2col's kh·kw-fold copy costs more memory traffic than its single GEMM saves; it wins
only where its matrix is small (the 3-channel input layer, 512-channel layers on the
smallest maps).  Measured: ``BENCHMARKS.md``.

Speed: deeper GEMMs (:mod:`minisegnet.layers.conv_tiling`)
-----------------------------------------------------------
A GEMM with inner dimension C = 64 runs well below BLAS peak, so the horizontal offsets of
a kernel row are copied once, stacked, and serve every kernel row as a view: a 7×7 layer
runs 7 GEMMs of inner dimension 7·C instead of 49 of inner dimension C.  The copy is capped
by ``max_workspace_bytes`` (0: nothing is stacked); :mod:`~minisegnet.layers.conv_tiling`
plans it, and :mod:`minisegnet.workspace` keeps the scratch arrays between calls.  One copy
serves up to ``max_copy_columns`` (8192) columns (the lower kernel rows read past its end,
so each copy repeats that reach); its columns are multiplied in blocks of at most
``max_block_columns`` (2048), views of the copy: each kernel row's product is added into
the output once more, and a block that short keeps the product and the sum it goes into
in the core's cache, so those k-1 additions cost little.

Tiled im2col: contiguous GEMM operands, one deep GEMM
-----------------------------------------------------
The shifted views above are *not contiguous*: a view ``stacked[:, i·Wp : i·Wp + B]`` has
rows ``span > B`` apart.  BLAS on the CPU takes such a matrix as it is (a leading
dimension), but ``cupy.matmul`` first copies a non-contiguous operand (and computes a
non-contiguous ``out`` into a temporary), so on CuPy every shifted GEMM would pay a
transient copy of its slice.  ``"tiled-im2col"`` gives the GEMMs contiguous operands
instead.  Cut the output positions into *tiles* -- whole images, or a run of output rows
of one image -- and copy, for one tile, the window of every offset into one contiguous
block (:func:`~minisegnet.layers.conv_tiling.gather_tile`)::

    cols[(i, j, c), t] = x_pad[c, n, sh·r + i, sw·q + j]      for the tile's positions t = (n, r, q)
    Y[:, tile] = W_mat @ cols,   W_mat[o, (i, j, c)] = W[o, c, i, j]      (O × kh·kw·C, one GEMM)

which is the im2col matrix, one tile of it at a time: its memory is one tile's block
(``max_workspace_bytes``, on the CPU also at most ``max_tile_columns`` = 4096 positions,
so the block and the GEMM's output stay in cache), never the whole matrix.  Any stride:
a tile of rows is one strided window per offset.  The backward per tile::

    dL/dW_mat += dy_tile @ cols^T        computed as  cols @ dy_tile^T  (the faster orientation
                                          for OpenBLAS: the long block is the left operand)
    dcols      = W_mat^T @ dy_tile       (kh·kw·C × B), then col2im: dcols[i, j] is added back
                                          into the window it was read from (the transpose of the gather)

(``+=`` into a strided window is safe: within one offset no two positions read the same
pixel.)  Every operand is C- or F-contiguous (a transpose is a cuBLAS flag, not a copy).
On the CPU the deep GEMM (inner dimension kh·kw·C) wins where C is small: the 3-channel
input layer's kw-stacked GEMMs have an inner dimension of 21 and its "flipped" dx runs
GEMMs with 3 output rows, while its im2col block is only 147 rows deep.  On 64-channel
layers the GEMMs run at the same speed either way, so the kh·kw-fold copy (against
"flat"'s kw-fold one) and the col2im additions make it the slower choice there, even
though it computes no garbage positions.

Few output channels: stack the weights, not the inputs
------------------------------------------------------
With O small (the 64 -> 11 classifier) every GEMM above has only O rows, and a GEMM that
short runs far below BLAS peak: its cost is reading the long operand, not the arithmetic.
Read the sum the other way round: multiply *every* offset's weights at once, then shift
the products instead of the input::

    P = W_stack @ X,   W_stack = [W_00; W_01; ...; W_(kh-1)(kw-1)]      (kh·kw·O × C, one GEMM)
    Y[:, t] = sum_ij P_ij[:, t + s_ij]                                (kh·kw shifted additions of O rows)

(on the flat grid ``X[:, t + s_ij] = x_ij[:, t]``, so ``P_ij[:, t + s_ij] = W_ij x_ij[:, t]``:
the same sum).  The GEMM has kh·kw·O rows (539 for 7×7, O = 11) and X is read once; the
additions touch kh·kw·O·L values, cheap while O is small, which is why the rule below
uses it only then.  Columns come in blocks (``max_workspace_bytes`` caps the products,
kh·kw·O × (block + reach)); the backward is "flipped"'s.

Algorithms: ``Conv2d(..., algorithm=...)``
------------------------------------------
Each formulation above is a named entry of :data:`ALGORITHMS`:

``"flat-flipped"``   stride 1: column slices of the flat padded grid; dx by the flipped kernel.
``"flat-scatter"``   stride 1: the same forward; dx scattered back through the shifted slices.
``"gathered"``       any stride: strided windows gathered into a buffer; dx scattered back.
``"tiled-im2col"``   any stride: per tile of output rows, every offset in one contiguous block,
                     one GEMM; dx by col2im.  Contiguous operands: the CuPy path.
``"flat-stacked-weights"``  stride 1: all kh·kw·O weight rows in one GEMM, the products summed
                     shifted (below); the backward of "flat-flipped".
``"flat-stacked-rows"``  stride 1: the kernel's rows stacked in the weights, its columns' shifts in
                     the input: one square GEMM (kh·O × kw·C) per block of columns, the kernel rows'
                     products added back shifted; derivation, backward included, in
                     :mod:`~minisegnet.layers.conv_stacked_rows`.
``"winograd"``       3×3, stride 1: Winograd's F(2×2, 3×3) on 4×4 input tiles, 16 products per
                     chunk of tiles, 2.25 times fewer multiplications; derivation, backward
                     included, in :mod:`~minisegnet.layers.conv_winograd`.

``"auto"`` (the default) decides from the weight's array module, the layer's shape and, in
one line, the input's height:

* not NumPy (CuPy): ``"tiled-im2col"``, for its contiguous operands;
* NumPy, stride > 1: ``"gathered"``;
* NumPy, stride 1, a 3×3 kernel with C and O both at least 256: ``"winograd"`` (2.25 times
  fewer multiplications; its transforms are passes over memory, which the products of
  wide layers outweigh and those of 64 or 128 channels do not);
* NumPy, stride 1, C < O: ``"tiled-im2col"`` (the kw-stacked GEMMs would be only kw·C deep);
* NumPy, stride 1, C >= O, O < 32 and a kernel larger than 1×1: ``"flat-stacked-weights"``
  (GEMMs with O < 32 rows run far below BLAS peak; kh·kw·O rows do not; for 1×1 both are
  the same GEMM);
* NumPy, stride 1, C >= O, a kernel of 5×5 or larger and an input at least
  ``conv_stacked_rows.ROWS_PER_KERNEL_ROW · (kh-1)`` (20·(kh-1)) padded rows tall:
  ``"flat-stacked-rows"`` (one GEMM with kh·O rows per block instead of kh GEMMs with O
  rows; it multiplies every kernel row at every input row, (kh-1)/Hp more arithmetic
  than needed, which a tall map makes small: SegNet-Basic's 7×7 layers at 180×240, not
  at 90×120 and below, where "flat-flipped" is as fast or faster);
* NumPy, stride 1, otherwise: ``"flat-flipped"`` (its GEMMs stack O rows; the C-row stacking
  of "scatter" and the col2im of "tiled-im2col" add more memory traffic).

Measured comparisons behind the rule: ``BENCHMARKS.md``.  ``conv.algorithm`` is what was
asked for, ``conv.algorithm_for(input_shape)`` what runs on an input of that shape, and
``conv.resolved_algorithm`` what runs on one the size of the last forward's;
``conv.algorithm`` can be changed at any time (a backward uses the algorithm of the
forward it differentiates).  Another formulation (FFT for 7×7, say) is one more
:class:`Algorithm` entry with its forward, its backward and the layers it can serve, and a
line in :meth:`Conv2d.algorithm_for` if "auto" should pick it, as "winograd" and
"flat-stacked-rows" were added.

What is kept for the backward
-----------------------------
Train and eval mode compute the same thing (a convolution has no mode).  A forward keeps
the padded input (``self._padded_input``) for the backward while gradients are enabled;
inside ``with minisegnet.no_grad():`` it keeps nothing and leaves what an earlier forward
kept untouched (it pads into scratch instead), so an inference call between a forward and
its backward changes nothing.

Inference in bands of rows
--------------------------
A forward that keeps nothing need not hold the whole padded input, nor the whole output on
its padded grid: output rows ``r0 .. r1-1`` read only padded rows ``sh·r0`` to
``sh·(r1-1) + kh - 1``, and those rows are a padded input of their own, whose output rows are
exactly the band's.  So on the CPU the no-grad forward cuts the output into *bands* (whole
images when they fit ``Conv2d.max_band_columns`` positions of the padded grid, else equal
runs of rows of one image, :func:`~minisegnet.layers.conv_tiling.plan_output_tiles`), pads
each band's rows from ``x`` into scratch (zeros above, below and at the sides), runs the
layer's algorithm on that small padded input unchanged, and writes the band's result,
bias added, straight into the output.  The memory of a call is then ``x``, ``y`` and one
band's scratch, where the whole-batch forward held two more maps (the padded copy and the
output grid), and those stayed in the workspace for the rest of the pass.  The price is that
the ``kh - sh`` padded rows two neighbouring bands share are copied twice (2 rows of every
band's 18 for a 3×3 layer at 360×480, in a copy that is one pass over the input); the GEMMs
keep their shapes, because a band (8192 positions) is as long as one stacked copy's stretch.
An algorithm can ask for taller bands (:attr:`Algorithm.band_rows`): "flat-stacked-rows"
computes kh-1 rows of products more than its output, 15 % of a 7×7 band of the default length
(about 33 rows at 180×240), so its bands hold up to ``ROWS_PER_KERNEL_ROW · (kh-1)`` rows (then cut
into equal runs like the others), at the price of a few megabytes more scratch.
A forward that keeps its input for the backward still pads the whole batch (the backward
needs it), and so does CuPy, whose kernels want the whole batch per launch.  Measured in ``BENCHMARKS.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from ..backend import get_array_module
from ..grad_mode import is_grad_enabled
from ..module import Module, Parameter, releases_cache
from ..validation import check_feature_map, check_grad_shape, check_matches_parameters, require_cache
from ..workspace import MAP_SCRATCH, WORKSPACE, clear_workspace
from .conv_stacked_rows import (ROWS_PER_KERNEL_ROW, stacked_rows_backward, stacked_rows_band_rows,
                                stacked_rows_forward, stacked_rows_unsupported)
from .conv_winograd import winograd_backward, winograd_forward, winograd_unsupported
from .conv_tiling import (embed_on_grid, flat_windows, gather_tile, gathered_windows, image_ranges, output_tiles,
                          plan_output_tiles, row_weights, scatter_tile)

__all__ = ["Conv2d", "Algorithm", "ALGORITHMS", "clear_workspace"]


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


@dataclass(frozen=True)
class Algorithm:
    """One named way to compute a :class:`Conv2d`: an entry of :data:`ALGORITHMS`.

    ``forward(layer, xp, padded, ho, wo)`` gets the zero-padded input, channel-major
    (C, N, Hp, Wp), and returns the output channel-major (O, N, Ho, Wo) without the bias
    (a view of scratch is fine: the layer copies it out).
    ``backward(layer, xp, dy, padded, need_dx, need_dw)`` returns ``(dx, dW)``: dx on the
    padded grid (C, N, Hp, Wp) or None when ``need_dx`` is False, dW (O, C, kh, kw) or None
    when ``need_dw`` is False (scratch is fine for both).
    ``unsupported(layer)`` says why the layer cannot use it (None: it can).
    ``grid_multiple``: the algorithm computes the output on a grid whose height and width
    are multiples of this (Winograd's 2×2 tiles: 2), so the padded input it gets has the
    zero rows at the bottom and columns at the right that such a grid reads.
    ``band_rows(layer)``: the output rows a band of a no-grad forward may hold at least (a
    band then holds up to ``max(Conv2d.max_band_columns, band_rows · Wp)`` positions, cut
    into equal runs of rows); 1 for all but "flat-stacked-rows", which computes kh-1 rows
    more than a band's output.
    """

    name: str
    about: str
    forward: Callable
    backward: Callable
    unsupported: Callable = lambda layer: None
    grid_multiple: int = 1
    band_rows: Callable = lambda layer: 1


def _needs_stride_one(layer) -> str | None:
    return None if layer.stride == (1, 1) else f"needs stride 1 (this layer has stride {layer.stride})"


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
    ``.double()`` / ``.to("cuda")``.

    Keyword-only arguments (not in PyTorch):

    ``rng``
        A NumPy Generator or seed for the initialisation; None draws from NumPy's global
        state, so ``np.random.seed`` makes it reproducible.
    ``algorithm``
        ``"auto"`` or a name in :data:`ALGORITHMS` (``"flat-flipped"``, ``"flat-scatter"``,
        ``"gathered"``, ``"tiled-im2col"``, ``"flat-stacked-weights"``, ``"flat-stacked-rows"``,
        ``"winograd"``): which formulation computes forward and backward; "auto" chooses by the
        rule of the module docstring.  All give the same numbers up to rounding.  Readable and
        settable as ``conv.algorithm``; ``conv.algorithm_for(input_shape)`` is the name that runs
        on an input of that shape, ``conv.resolved_algorithm`` on one like the last forward's.
    ``needs_input_grad``
        False: ``backward`` computes no ``dL/dx`` and returns None (for a network's first
        layer).  Also a plain attribute.

    ``forward(x)`` computes in ``x.dtype``, which must equal the weight's; it keeps the
    padded input for the backward unless called inside ``minisegnet.no_grad()``.
    ``backward(dy)`` returns ``dL/dx`` (or None) and *adds* ``dL/dW``, ``dL/db`` into
    ``weight.grad`` / ``bias.grad`` (``zero_grad()`` clears them), skipping a parameter
    whose ``requires_grad`` is False.  Same computation in training and eval mode.
    """

    #: Cap, in bytes, on the buffer of stacked shifted copies (module docstring and
    #: :mod:`~minisegnet.layers.conv_tiling`); 0: no copies, one plain shifted GEMM per
    #: offset.  Set it on the class (every layer) or on one layer (``del`` goes back).
    max_workspace_bytes: int = 64 * 2**20
    #: The shortest block of output columns the budget may cut the GEMMs into before
    #: fewer offsets are stacked instead (very short blocks mean short, slow GEMMs).
    min_block_columns: int = 1024
    #: The longest block of output columns per GEMM (stride-1 algorithms): one block's
    #: products stay in cache (:mod:`~minisegnet.layers.conv_tiling`).  None: blocks as
    #: long as the stacked copies.
    max_block_columns: int | None = 2048
    #: The longest stretch of output columns one stacked copy serves ("flat-flipped",
    #: "flat-scatter"), in blocks of ``max_block_columns``: long against the kernel's reach,
    #: which every copy repeats.  None: as long as ``max_workspace_bytes`` allows.
    max_copy_columns: int | None = 8192
    #: The most output positions (columns) per tile of "tiled-im2col" on the CPU
    #: (:func:`~minisegnet.layers.conv_tiling.plan_output_tiles`; reasons: module docstring).
    #: None, and on a GPU: as many as ``max_workspace_bytes`` allows.
    max_tile_columns: int | None = 4096
    #: The most positions of the padded grid per *band* of a forward that keeps nothing (inside
    #: ``no_grad()``, on the CPU): whole images when they fit, else a run of output rows of one
    #: image, each computed from its own padded rows and written straight into the output, so
    #: the padded input and the output grid are one band's, not the batch's (module docstring).
    #: None: the whole batch at once, as a forward that keeps its input does.
    max_band_columns: int | None = 8192

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 *, rng=None, algorithm: str = "auto", needs_input_grad: bool = True):
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
        self.needs_input_grad = bool(needs_input_grad)
        self._algorithm = "auto"
        self.algorithm = algorithm  # validated by the property below
        self._padded_input = None  # (C, N, Hp, Wp): the zero-padded input, channel-major, for the backward
        self._input_shape = None  # (N, C, H, W) of that forward
        self._last_input_shape = None  # (N, C, H, W) of the last forward, kept or not (resolved_algorithm)
        self._output_shape = None  # (N, O, Ho, Wo) of that forward
        self._forward_algorithm = None  # the name that ran that forward (its backward uses the same)

    # -- description and sizes ----------------------------------------------------
    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.bias is None:
            text += ", bias=False"
        if self._algorithm != "auto":
            text += f", algorithm={self._algorithm!r}"
        if not self.needs_input_grad:
            text += ", needs_input_grad=False"
        return text

    @property
    def _name(self) -> str:
        return f"Conv2d({self.extra_repr()})"

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    # -- which algorithm ------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        """The formulation asked for: ``"auto"`` or a name in :data:`ALGORITHMS`."""
        return self._algorithm

    @algorithm.setter
    def algorithm(self, name: str) -> None:
        valid = ("auto", *ALGORITHMS)
        if not isinstance(name, str) or name not in valid:
            raise ValueError(
                f"{self._name}: unknown algorithm {name!r}; expected one of {', '.join(map(repr, valid))}"
            )
        if name != "auto":
            reason = ALGORITHMS[name].unsupported(self)
            if reason is not None:
                usable = ["auto"] + [a for a, spec in ALGORITHMS.items() if spec.unsupported(self) is None]
                raise ValueError(f"{self._name}: algorithm {name!r} {reason}; this layer can use "
                                 f"{', '.join(map(repr, usable))}")
        self._algorithm = name

    @property
    def resolved_algorithm(self) -> str:
        """The name in :data:`ALGORITHMS` that runs ("auto" resolved) on an input the size of the last forward's.

        Before any forward the size is unknown: :meth:`algorithm_for` with ``None``.
        """
        return self.algorithm_for(self._last_input_shape)

    def algorithm_for(self, input_shape=None) -> str:
        """The name in :data:`ALGORITHMS` that a forward of an input of ``input_shape`` (N, C, H, W) runs.

        ``conv.algorithm`` itself unless it is "auto"; then the rule of the module docstring, on
        the weight's array module.  ``None`` (size unknown) leaves out the rule's one
        size-dependent choice ("flat-stacked-rows" on tall maps).
        """
        if self._algorithm != "auto":
            return self._algorithm
        if get_array_module(self.weight.data) is not np:  # CuPy: contiguous GEMM operands
            return "tiled-im2col"
        if self.stride != (1, 1):
            return "gathered"
        c, o, (kh, kw) = self.in_channels, self.out_channels, self.kernel_size
        if (kh, kw) == (3, 3) and min(c, o) >= 256:
            return "winograd"
        if c < o:
            return "tiled-im2col"
        if o < 32 and kh * kw > 1:
            return "flat-stacked-weights"
        if input_shape is not None and min(kh, kw) >= 5:
            padded_rows = input_shape[2] + 2 * self.padding[0]
            if padded_rows >= ROWS_PER_KERNEL_ROW * (kh - 1):
                return "flat-stacked-rows"
        return "flat-flipped"

    # -- forward ------------------------------------------------------------------
    def _check_input(self, x):
        check_feature_map(self._name, x, channels=self.in_channels)
        xp = check_matches_parameters(self._name, x, self.weight.data)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2], x.shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self._name}: expected a padded input at least as large as the kernel {kh}x{kw}, got "
                f"{h + 2 * ph}x{w + 2 * pw} (input {h}x{w}, padding {ph},{pw})"
            )
        return xp

    def _pad(self, xp, x, keep: bool, extra=(0, 0)):
        """The zero-padded input, channel-major (C, N, Hp, Wp), with ``extra`` more zero rows and columns.

        Kept for the backward (``keep``), it is a layer-owned array: the previous forward's
        is overwritten when the shape still fits and it was not released
        (:meth:`~minisegnet.module.Module.release_caches`, which a model's backward calls), so a
        forward repeated without a backward allocates nothing new.
        Not kept, it is scratch, and the previous forward's stays as it was.
        """
        n, c, h, w = x.shape
        ph, pw = self.padding
        shape = (c, n, h + 2 * ph + extra[0], w + 2 * pw + extra[1])
        previous = self._padded_input
        if not keep:
            padded = WORKSPACE.take(x, "conv.padded", shape)
        elif previous is not None and previous.shape == shape and previous.dtype == x.dtype \
                and get_array_module(previous) is xp:
            padded = previous
        else:
            self._padded_input = None  # let the old one go before allocating the new one
            padded = xp.empty(shape, dtype=x.dtype)
        return _fill_padded(padded, x, ph, pw)

    def forward(self, x):
        xp = self._check_input(x)
        self._last_input_shape = tuple(x.shape)
        algorithm = ALGORITHMS[self.algorithm_for(x.shape)]
        reason = algorithm.unsupported(self)
        if reason is not None:  # the layer's stride was changed after the algorithm was set
            raise ValueError(f"{self._name}: algorithm {algorithm.name!r} {reason}")
        n, c, h, w = x.shape
        o = self.out_channels
        ho, wo = self._output_size(h, w)
        y = xp.empty((n, o, ho, wo), dtype=x.dtype)
        keep = is_grad_enabled()
        if not keep and xp is np and self.max_band_columns is not None:  # nothing kept: in bands of rows
            wp = w + 2 * self.padding[1]
            columns = max(self.max_band_columns, algorithm.band_rows(self) * wp)  # what the algorithm needs
            images, rows = plan_output_tiles(n, ho, wp, 1, columns)
            for n0, n1, r0, r1 in output_tiles(n, ho, images, rows):
                band = self._padded_band(xp, x, n0, n1, r0, r1, algorithm.grid_multiple)
                self._write_output(xp, algorithm.forward(self, xp, band, r1 - r0, wo), y[n0:n1, :, r0:r1])
            return y

        multiple = algorithm.grid_multiple
        padded = self._pad(xp, x, keep, extra=((-ho) % multiple, (-wo) % multiple))
        self._write_output(xp, algorithm.forward(self, xp, padded, ho, wo), y)
        if keep:  # inside no_grad() the previous forward's cache stays as it was
            self._padded_input = padded
            self._input_shape = tuple(x.shape)
            self._output_shape = tuple(y.shape)
            self._forward_algorithm = algorithm.name
        return y

    def _write_output(self, xp, y_cnhw, out):
        """``out`` (N, O, Ho, Wo) <- ``y_cnhw`` (O, N, Ho, Wo) + bias: back to NCHW and the bias added, one pass."""
        if self.bias is not None:
            xp.add(y_cnhw.transpose(1, 0, 2, 3), self.bias.data.reshape(1, -1, 1, 1), out=out)
        else:
            out[...] = y_cnhw.transpose(1, 0, 2, 3)

    def _padded_band(self, xp, x, n0: int, n1: int, r0: int, r1: int, multiple: int = 1):
        """Scratch (C, n1-n0, rows, Wp): the zero-padded rows that output rows ``r0 .. r1-1`` read, channel-major.

        Those are padded rows ``sh·r0`` to ``sh·(r1-1) + kh - 1``: a padded input of its own,
        whose output rows are the band's (every algorithm computes it unchanged).  Padding
        rows above and below the image and the padding columns are zeros; the rest is
        copied from ``x[n0:n1]``.  ``multiple``: the algorithm's
        :attr:`Algorithm.grid_multiple` (zero rows and columns added to match).
        """
        c, h, w = x.shape[1:]
        (kh, _), (sh, _), (ph, pw) = self.kernel_size, self.stride, self.padding
        wo = self._output_size(h, w)[1]
        top, rows = sh * r0, sh * (r1 - r0 - 1) + kh + (-(r1 - r0)) % multiple
        band = WORKSPACE.take(x, "conv.padded", (c, n1 - n0, rows, w + 2 * pw + (-wo) % multiple))
        first = min(max(top, ph), top + rows) - top  # band rows first .. last-1 hold input rows
        last = max(min(top + rows, ph + h) - top, first)
        return _fill_padded(band, x[n0:n1, :, top + first - ph : top + last - ph], first, pw)

    def _forward_shifted(self, xp, padded, ho: int, wo: int, flat: bool):
        """``Y = sum_ij W_ij @ X_ij``: flat column slices (stride 1) or gathered strided windows.

        Returns the output channel-major (O, N, Ho, Wo), a view of scratch, without the bias.
        """
        c, n, hp, wp = padded.shape
        o = self.out_channels
        if flat:  # Y = sum_ij W_ij @ X[:, s_ij : s_ij + L] on the flat padded grid
            grid = n * hp * wp
            # each image up to its last valid output (the rows below are garbage); never reads past X
            ranges = image_ranges(n, hp * wp, 0, (ho - 1) * wp + wo)
            y_grid = WORKSPACE.take(padded, MAP_SCRATCH, (o, grid))
            out = y_grid
            windows = flat_windows(padded.reshape(c, grid), self.kernel_size, wp, ranges,
                                   self.max_workspace_bytes, self.min_block_columns,
                                   max_block=self.max_block_columns, max_stretch=self.max_copy_columns)
            y_cnhw = y_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo]  # the valid positions
        else:  # the same sum over gathered windows, M = N·Ho·Wo columns
            out = WORKSPACE.take(padded, MAP_SCRATCH, (o, n * ho * wo))
            windows = gathered_windows(padded, self.kernel_size, self.stride, ho, wo, self.max_workspace_bytes)
            y_cnhw = out.reshape(o, n, ho, wo)
        w_rows = {}  # j0 -> (kh, O, gg·C) weights in the order of the stacked shifts
        for start, stop, i, j0, gg, cols in windows:
            if j0 not in w_rows:
                w_rows[j0] = row_weights(xp, self.weight.data, j0, gg)
            target = out[:, start:stop]
            if i == 0 and j0 == 0:
                xp.matmul(w_rows[j0][i], cols, out=target)
            else:  # target += W_rows @ cols, without a new array
                product = WORKSPACE.take(padded, "conv.product", target.shape)
                xp.matmul(w_rows[j0][i], cols, out=product)
                target += product
        return y_cnhw

    def _forward_stacked_weights(self, xp, padded, ho: int, wo: int):
        """Stride 1: ``P = W_stack @ X`` (all kh·kw·O products in one GEMM), then ``Y = sum_ij P_ij`` shifted.

        Returns the output channel-major (O, N, Ho, Wo), a view of scratch, without the bias.
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw) = self.out_channels, self.kernel_size
        grid = n * hp * wp
        ranges = image_ranges(n, hp * wp, 0, (ho - 1) * wp + wo)  # as in the forward above
        length = ranges[0][1] - ranges[0][0]
        reach = (kh - 1) * wp + (kw - 1)  # the last offset reads this many columns further (never past X)
        w_stack = xp.ascontiguousarray(self.weight.data.transpose(2, 3, 0, 1)).reshape(kh * kw * o, c)
        x_flat = padded.reshape(c, grid)
        y_grid = WORKSPACE.take(padded, MAP_SCRATCH, (o, grid))
        room = self.max_workspace_bytes // (kh * kw * o * padded.dtype.itemsize) - reach
        block = max(1, min(length, max(self.min_block_columns, room)))
        for start, stop in ((start, min(last, start + block)) for first, last in ranges
                            for start in range(first, last, block)):
            span = stop - start + reach
            products = WORKSPACE.take(padded, "conv.products", (kh, kw, o, span))
            xp.matmul(w_stack, x_flat[:, start : start + span], out=products.reshape(kh * kw * o, span))
            target = y_grid[:, start:stop]
            target[...] = products[0, 0, :, : stop - start]
            for i in range(kh):
                for j in range(kw):
                    if i or j:  # y[:, t] += (W_ij @ X)[:, t + s_ij]
                        target += products[i, j, :, i * wp + j : i * wp + j + stop - start]
        return y_grid.reshape(o, n, hp, wp)[:, :, :ho, :wo]

    def _release_cache(self) -> None:
        self._padded_input = None

    # -- backward -----------------------------------------------------------------
    @releases_cache
    def backward(self, dy):
        padded = require_cache(self._name, self._padded_input)
        check_grad_shape(self._name, dy, self._output_shape)
        xp = get_array_module(padded)
        n, c, h, w = self._input_shape
        ph, pw = self.padding
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3), dtype=padded.dtype))
        need_dx, need_dw = self.needs_input_grad, self.weight.requires_grad
        if not (need_dx or need_dw):
            return None
        algorithm = ALGORITHMS[self._forward_algorithm]
        dx_pad, dw = algorithm.backward(self, xp, dy, padded, need_dx, need_dw)
        if need_dw:
            self.weight.accumulate_grad(dw)
        if not need_dx:
            return None
        dx = xp.empty((n, c, h, w), dtype=padded.dtype)
        dx[...] = dx_pad[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)  # crop the padding, back to NCHW
        return dx

    def _backward_flipped(self, xp, dy, padded, need_dx: bool, need_dw: bool):
        """Stride 1: dx correlates zero-embedded dy with the flipped kernel; dW from the same slices.

        Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (ph, pw) = self.out_channels, self.kernel_size, self.padding
        grid = n * hp * wp
        lead = (kh - 1) * wp + (kw - 1)  # zero columns before dy: t - s_ij never goes negative
        dy_grid = WORKSPACE.take(padded, "conv.dy_grid", (o, lead + grid))
        dy_grid[:, :lead] = 0
        embed_on_grid(dy, dy_grid[:, lead:].reshape(o, n, hp, wp))
        # dx (and the dW sum) is needed in each image from its first row of real pixels to its last
        # real pixel: the rest is padding, cropped from dx and zero in x
        h, w = self._input_shape[2], self._input_shape[3]
        ranges = image_ranges(n, hp * wp, ph * wp, (ph + h - 1) * wp + pw + w)
        if need_dx:
            dx_grid = WORKSPACE.take(padded, MAP_SCRATCH, (c, grid))
            out = dx_grid
            flipped = self.weight.data.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (C, O, kh, kw)
        if need_dw:
            x_cols = padded.reshape(c, grid)
            dw_flipped = xp.empty((kh, kw, o, c), dtype=padded.dtype)
        w_rows = {}
        dw_started = set()  # the (i, j0) blocks of dW written once already: later blocks add
        windows = flat_windows(dy_grid, self.kernel_size, wp, ranges, self.max_workspace_bytes, self.min_block_columns,
                               max_block=self.max_block_columns, max_stretch=self.max_copy_columns)
        for start, stop, i, j0, gg, dy_cols in windows:
            if need_dx:  # the forward's sum, run on dy with the flipped kernel
                if j0 not in w_rows:
                    w_rows[j0] = row_weights(xp, flipped, j0, gg)
                target = out[:, start:stop]
                if i == 0 and j0 == 0:
                    xp.matmul(w_rows[j0][i], dy_cols, out=target)
                else:
                    product = WORKSPACE.take(padded, "conv.product", target.shape)
                    xp.matmul(w_rows[j0][i], dy_cols, out=product)
                    target += product
            if need_dw:  # dW at the flipped offset (kh-1-i, kw-1-j) from the same slices of dy, summed over blocks
                dw_block = dw_flipped[i, j0 : j0 + gg].reshape(gg * o, c)
                if (i, j0) not in dw_started:
                    dw_started.add((i, j0))
                    xp.matmul(dy_cols, x_cols[:, start:stop].T, out=dw_block)
                else:
                    dw_block += xp.matmul(dy_cols, x_cols[:, start:stop].T)
        dx = dx_grid.reshape(c, n, hp, wp) if need_dx else None
        dw = dw_flipped[::-1, ::-1].transpose(2, 3, 0, 1) if need_dw else None  # back to (O, C, kh, kw)
        return dx, dw

    def _backward_scatter(self, xp, dy, padded, need_dx: bool, need_dw: bool, flat: bool):
        """dW_ij = dy @ window_ij^T; W_ij^T @ dy added back into window ij of dx (flat or gathered windows).

        Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw), (sh, sw) = self.out_channels, self.kernel_size, self.stride
        ho, wo = dy.shape[2], dy.shape[3]
        if need_dx:
            dx_pad = WORKSPACE.take(padded, MAP_SCRATCH, (c, n, hp, wp))
            dx_pad[...] = 0
        if flat:  # dy on the padded grid, zero at the cropped positions
            grid = n * hp * wp
            dy_grid = WORKSPACE.take(padded, "conv.dy_grid", (o, grid))
            embed_on_grid(dy, dy_grid.reshape(o, n, hp, wp))
            dy_cols = dy_grid
            ranges = image_ranges(n, hp * wp, 0, (ho - 1) * wp + wo)  # as in the forward
            windows = flat_windows(padded.reshape(c, grid), self.kernel_size, wp, ranges,
                                   self.max_workspace_bytes, self.min_block_columns, copy=need_dw,
                                   max_block=self.max_block_columns, max_stretch=self.max_copy_columns)
            if need_dx:
                dx_flat = dx_pad.reshape(c, grid)
        else:
            length = n * ho * wo
            dy_cols = WORKSPACE.take(padded, "conv.dy_grid", (o, n, ho, wo))
            dy_cols[...] = dy.transpose(1, 0, 2, 3)
            dy_cols = dy_cols.reshape(o, length)
            windows = gathered_windows(padded, self.kernel_size, self.stride, ho, wo, self.max_workspace_bytes,
                                       copy=need_dw)
        if need_dw:
            dw = xp.zeros((kh, o, kw, c), dtype=padded.dtype)
        w_rows = {}
        for start, stop, i, j0, gg, cols in windows:
            dy_block = dy_cols[:, start:stop]
            if need_dw:
                dw[i, :, j0 : j0 + gg] += xp.matmul(dy_block, cols.T).reshape(o, gg, c)  # summed over the blocks
            if not need_dx:
                continue
            if j0 not in w_rows:
                w_rows[j0] = row_weights(xp, self.weight.data, j0, gg)
            d_cols = WORKSPACE.take(padded, "conv.d_windows", (gg * c, stop - start))
            xp.matmul(w_rows[j0][i].T, dy_block, out=d_cols)
            for jj in range(gg):  # each offset's share goes back where its window was read
                j = j0 + jj
                d_window = d_cols[jj * c : (jj + 1) * c]
                if flat:
                    dx_flat[:, i * wp + j + start : i * wp + j + stop] += d_window
                else:
                    window = dx_pad[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                    window += d_window.reshape(c, n, ho, wo)
        return (dx_pad if need_dx else None), (dw.transpose(1, 3, 0, 2) if need_dw else None)

    # -- tiled im2col: contiguous operands, one deep GEMM per tile ------------------------
    def _im2col_weights(self, xp):
        """``(O, kh·kw·C)``: ``[o, (i·kw + j)·C + c] = weight[o, c, i, j]``, the rows of :func:`gather_tile`."""
        o, c, kh, kw = self.weight.data.shape
        return xp.ascontiguousarray(self.weight.data.transpose(0, 2, 3, 1)).reshape(o, kh * kw * c)

    def _tiles(self, padded, ho: int, wo: int):
        """``(tile, start, stop)``: the output tiles and their columns in the flat (·, N·Ho·Wo) output."""
        c, n = padded.shape[:2]
        kh, kw = self.kernel_size
        column_bytes = kh * kw * c * padded.dtype.itemsize
        budget = self.max_workspace_bytes
        if get_array_module(padded) is np and self.max_tile_columns is not None:  # a CPU core's cache
            budget = min(budget, self.max_tile_columns * column_bytes)
        images, rows = plan_output_tiles(n, ho, wo, column_bytes, budget)
        for tile in output_tiles(n, ho, images, rows):
            n0, n1, r0, r1 = tile
            yield tile, (n0 * ho + r0) * wo, ((n1 - 1) * ho + r1) * wo

    def _forward_tiled(self, xp, padded, ho: int, wo: int):
        """``Y[:, tile] = W_mat @ im2col(tile)``: every offset of a tile stacked, one GEMM per tile.

        Returns the output channel-major (O, N, Ho, Wo), a view of scratch, without the bias.
        """
        c, n = padded.shape[:2]
        o, (kh, kw) = self.out_channels, self.kernel_size
        w_mat = self._im2col_weights(xp)
        y_flat = WORKSPACE.take(padded, MAP_SCRATCH, (o, n * ho * wo))
        for tile, start, stop in self._tiles(padded, ho, wo):
            n0, n1, r0, r1 = tile
            cols = WORKSPACE.take(padded, "conv.im2col", (kh, kw, c, n1 - n0, r1 - r0, wo))
            gather_tile(padded, self.kernel_size, self.stride, tile, wo, cols)
            _matmul_into(xp, w_mat, cols.reshape(kh * kw * c, stop - start), y_flat[:, start:stop])
        return y_flat.reshape(o, n, ho, wo)

    def _backward_tiled(self, xp, dy, padded, need_dx: bool, need_dw: bool):
        """Per tile: ``dW_mat += dy_tile @ im2col(tile)^T``; ``W_mat^T @ dy_tile`` scattered back (col2im).

        Returns dx on the padded grid (C, N, Hp, Wp) (or None) and dW (O, C, kh, kw) (or None).
        """
        c, n, hp, wp = padded.shape
        o, (kh, kw) = self.out_channels, self.kernel_size
        ho, wo = dy.shape[2], dy.shape[3]
        depth = kh * kw * c
        if need_dx:
            w_mat = self._im2col_weights(xp)
            dx_pad = WORKSPACE.take(padded, MAP_SCRATCH, padded.shape)
            dx_pad[...] = 0
        if need_dw:  # dW_mat^T = im2col(tile) @ dy_tile^T: the long block as the left operand is the faster GEMM
            dw_mat_t = xp.empty((depth, o), dtype=padded.dtype)
        for tile, start, stop in self._tiles(padded, ho, wo):
            n0, n1, r0, r1 = tile
            dy_tile = WORKSPACE.take(padded, "conv.dy_grid", (o, n1 - n0, r1 - r0, wo))
            dy_tile[...] = dy[n0:n1, :, r0:r1].transpose(1, 0, 2, 3)
            dy_tile = dy_tile.reshape(o, stop - start)
            # one block serves both: the im2col columns for dW, then (overwritten) their gradient for dx
            cols = WORKSPACE.take(padded, "conv.im2col", (kh, kw, c, n1 - n0, r1 - r0, wo))
            if need_dw:
                gather_tile(padded, self.kernel_size, self.stride, tile, wo, cols)
                if start == 0:
                    xp.matmul(cols.reshape(depth, stop - start), dy_tile.T, out=dw_mat_t)
                else:  # summed over the tiles
                    dw_part = WORKSPACE.take(padded, "conv.product", (depth, o))
                    xp.matmul(cols.reshape(depth, stop - start), dy_tile.T, out=dw_part)
                    dw_mat_t += dw_part
            if need_dx:
                xp.matmul(w_mat.T, dy_tile, out=cols.reshape(depth, stop - start))
                scatter_tile(cols, self.kernel_size, self.stride, tile, wo, dx_pad)
        dw = dw_mat_t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1) if need_dw else None
        return (dx_pad if need_dx else None), dw


def _fill_padded(out, x_part, top: int, left: int):
    """``out`` (C, N, rows, cols) <- ``x_part`` (N, C, h, w), channel-major, from row ``top`` and column ``left``.

    Every entry outside the copied block is written (with 0), whatever the padding: the
    padding rows and columns, and those an algorithm's grid multiple adds, never keep stale
    scratch.  (Empty slices cost nothing.)
    """
    h, w = x_part.shape[2], x_part.shape[3]
    out[:, :, :top] = 0
    out[:, :, top + h :] = 0
    out[:, :, top : top + h, :left] = 0
    out[:, :, top : top + h, left + w :] = 0
    out[:, :, top : top + h, left : left + w] = x_part.transpose(1, 0, 2, 3)
    return out


def _matmul_into(xp, a, b, out):
    """``out[...] = a @ b`` with a contiguous result for the GEMM itself where the array module needs one.

    NumPy hands a row-strided ``out`` (unit stride along a row) to BLAS as it is; CuPy
    would compute into a temporary and copy, so there the product goes to scratch first.
    """
    if xp is np or out.flags.c_contiguous:
        return xp.matmul(a, b, out=out)
    product = WORKSPACE.take(out, "conv.tile_product", out.shape)
    xp.matmul(a, b, out=product)
    out[...] = product
    return out


#: The formulations ``Conv2d(..., algorithm=name)`` can run, by name (module docstring).
ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("flat-flipped", "stride 1: flat shifted slices; dx by the flipped kernel (good when C >= O)",
                  partial(Conv2d._forward_shifted, flat=True), Conv2d._backward_flipped, _needs_stride_one),
        Algorithm("flat-scatter", "stride 1: flat shifted slices; dx scattered back (good when C < O)",
                  partial(Conv2d._forward_shifted, flat=True), partial(Conv2d._backward_scatter, flat=True),
                  _needs_stride_one),
        Algorithm("gathered", "any stride: strided windows gathered into a buffer; dx scattered back",
                  partial(Conv2d._forward_shifted, flat=False), partial(Conv2d._backward_scatter, flat=False)),
        Algorithm("tiled-im2col", "any stride: every offset of a tile of output rows copied into one contiguous "
                  "block, one deep GEMM per tile; dx scattered back (col2im)",
                  Conv2d._forward_tiled, Conv2d._backward_tiled),
        Algorithm("flat-stacked-weights", "stride 1: all kh·kw·O weight rows in one GEMM, the products summed "
                  "shifted (good when O is small); the backward of 'flat-flipped'",
                  Conv2d._forward_stacked_weights, Conv2d._backward_flipped, _needs_stride_one),
        Algorithm("flat-stacked-rows", "stride 1: the kernel's rows stacked in the weights (kh·O rows), its "
                  "columns' shifts in the input (kw·C rows), one square GEMM per block of columns, the kernel rows' "
                  "products added back shifted; dx by the flipped kernel, dW by one more square GEMM (good for large "
                  "kernels with C >= O)",
                  stacked_rows_forward, stacked_rows_backward, stacked_rows_unsupported,
                  band_rows=stacked_rows_band_rows),
        Algorithm("winograd", "3x3, stride 1: Winograd's F(2x2, 3x3), 16 batched GEMMs per tile chunk on "
                  "transformed 4x4 input tiles, 2.25 times fewer multiplications; the backward by the "
                  "transposed transforms (good when C and O are large)",
                  winograd_forward, winograd_backward, winograd_unsupported, grid_multiple=2),
    )
}

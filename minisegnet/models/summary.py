"""What a network is made of, measured: layers, shapes, parameters, memory and arithmetic.

:func:`summarize` (``model.summary(input_size)``) runs **one forward on zeros** and records
what every layer actually returned, as PyTorch's forward hooks would (each layer's
``forward`` is wrapped for the duration of the call).  The result is a
:class:`ModelSummary`: a list of :class:`LayerRecord` that programs and tutorials can use,
and, made from them, the text table ``str(summary)`` prints.

For each row (a layer without sub-modules, or a block that asks to be shown as one row,
``summary_as_one_row = True``, e.g. conv → BN → ReLU) it records:

``output_shape``, ``parameters``
    what the layer returned, and how many learnable values it owns.
``backward_bytes``
    the bytes the layer keeps for its backward after a training forward: the padded input
    of a convolution, BatchNorm's input, ReLU's mask, the pooling's argmax.
    Measured on the arrays the layers hold (each array counted once, where it is first
    kept).  This is the memory a training step needs besides the weights.
``decoder_bytes``
    the bytes of this layer's output that the decoder receives from the encoder: SegNet's
    uint8 pooling indices at the pooling layers; the encoder maps an FCN-style decoder adds
    back.  Measured on the arrays ``model.encode(x)`` hands to ``model.decode``.
``flops``
    floating-point operations of the forward, a multiply-add counted as 2: convolutions
    ``2·N·O·C·kh·kw·Ho·Wo``; element-wise layers one operation per output value
    (BatchNorm two: scale and shift); pooling one comparison per window element.

How the measurement changes nothing: the forward runs on a *shallow twin* of the model
(the same parameter and buffer arrays, fresh layer objects with empty caches), in eval mode
with gradients enabled so that the layers keep what a backward would need.  The original
model's mode, caches and pending backward are untouched, and BatchNorm's running
statistics are not updated (eval mode).

Models that hand something from encoder to decoder define ``encode(x) -> (bottom, kept)``
and ``decode(bottom, kept)``; ``kept`` is a list with one entry per decoder stage, each an
array or a tuple of arrays and sizes.  For SegNet each entry is ``(indices, size)``;
beside it the summary also shows what an FCN/U-Net-style decoder would keep instead (the
encoder map before pooling, ``N·C·H·W`` values of the model's dtype), the comparison the
SegNet article makes.

Cost: one forward at ``input_size`` with the caches of a training step (seconds and about
a gigabyte for the full SegNet at 360×480 on a CPU).
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import numpy as np

from ..backend import array_module_for, is_array
from ..grad_mode import enable_grad
from ..module import Module

__all__ = ["LayerRecord", "DecoderMemoryRecord", "ModelSummary", "summarize"]


@dataclass(frozen=True)
class LayerRecord:
    """One row of a model summary (see the module docstring for what each field measures)."""

    layer: str  # dotted name in the model, e.g. "encoder.stage1.convs.0"
    type: str  # class name, e.g. "ConvBNReLU"
    output_shape: tuple  # of the first array the layer returned
    parameters: int
    backward_bytes: int
    decoder_bytes: int
    flops: int
    detail: str = ""  # e.g. "+ indices uint8 (1, 64, 180, 240)" or the layer's extra_repr


@dataclass(frozen=True)
class DecoderMemoryRecord:
    """What one decoder stage receives from the encoder, measured, and an FCN skip's cost."""

    stage: int  # 1 = the shallowest encoder stage
    description: str  # e.g. "uint8 (1, 64, 180, 240) + size"
    kept_bytes: int  # measured nbytes of the arrays (+ 8 bytes per integer of a size)
    fcn_skip_bytes: int | None  # SegNet-style entries: the encoder map an FCN skip would keep
    fcn_skip_shape: tuple | None = None  # (N, C, H, W) of that map


@dataclass
class ModelSummary:
    """The records of :func:`summarize`; ``str(summary)`` is the text table."""

    model_name: str
    arch: str
    config: dict
    input_shape: tuple
    dtype: str
    output_shape: tuple
    parameters: int
    records: list[LayerRecord] = field(default_factory=list)
    decoder_memory: list[DecoderMemoryRecord] = field(default_factory=list)

    @property
    def backward_bytes(self) -> int:
        """Bytes kept for the backward by all layers (a training step's activations)."""
        return sum(r.backward_bytes for r in self.records)

    @property
    def decoder_bytes(self) -> int:
        """Bytes the decoder receives from the encoder, measured on the arrays."""
        return sum(r.kept_bytes for r in self.decoder_memory)

    @property
    def fcn_skip_bytes(self) -> int | None:
        """Bytes FCN-style skips would keep instead (None when the model has no pooling indices)."""
        values = [r.fcn_skip_bytes for r in self.decoder_memory]
        return sum(values) if values and all(v is not None for v in values) else None

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.records)

    def to_dicts(self) -> list[dict]:
        """The layer records as plain dicts (for JSON, pandas, a plot)."""
        return [r.__dict__.copy() for r in self.records]

    def __str__(self) -> str:
        return "\n".join(self._lines())

    __repr__ = __str__  # shown as the table in a notebook

    def _lines(self) -> list[str]:
        dtype = np.dtype(self.dtype)
        header = ("layer", "type", "output shape", "params", "kept for backward", "GFLOP", "")
        rows = [
            (r.layer, r.type, str(r.output_shape), f"{r.parameters:,}", _mib(r.backward_bytes),
             f"{r.flops / 1e9:.3f}", r.detail)
            for r in self.records
        ]
        table = _format_table(header, rows, right=(3, 4, 5))
        rule = "-" * max(len(r) for r in table)
        out = [
            f"{self.model_name} (arch {self.arch!r}) {self.config}",
            f"input {self.input_shape} {dtype.name}, eval mode",
            rule,
            table[0],
            rule,
            *table[1:],
            rule,
            f"output (logits): {self.output_shape}",
            f"parameters: {self.parameters:,} ({self.parameters * dtype.itemsize / 2**20:.1f} MiB as {dtype.name})",
            f"kept for the backward of a training step: {_mib(self.backward_bytes)}; "
            f"forward arithmetic: {self.flops / 1e9:.2f} GFLOP",
        ]
        if self.decoder_memory:
            out += [rule, *self._decoder_lines()]
        return out

    def _decoder_lines(self) -> list[str]:
        compare = self.fcn_skip_bytes is not None
        header = ("stage", "the decoder receives", "bytes") + (("U-Net/FCN-style skip would keep", "bytes") if compare else ())
        rows = []
        for r in self.decoder_memory:
            row = (str(r.stage), r.description, f"{r.kept_bytes:,}")
            if compare:
                row += (_skip_description(r), f"{r.fcn_skip_bytes:,}")
            rows.append(row)
        total = ("total", "", f"{self.decoder_bytes:,}") + (("", f"{self.fcn_skip_bytes:,}") if compare else ())
        rows.append(total)
        lines = [
            "memory kept for the decoder during one inference forward:",
            *_format_table(header, rows, right=(2, 4) if compare else (2,)),
        ]
        if compare:
            ratio = self.fcn_skip_bytes / self.decoder_bytes if self.decoder_bytes else float("nan")
            lines.append(
                f"SegNet keeps {self.decoder_bytes / 2**20:.2f} MiB of pooling indices; FCN-style skips would keep "
                f"{self.fcn_skip_bytes / 2**20:.2f} MiB of feature maps: {ratio:.1f}x more."
            )
        else:
            lines.append(f"The decoder keeps {self.decoder_bytes / 2**20:.2f} MiB from the encoder.")
        return lines


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _skip_description(record: DecoderMemoryRecord) -> str:
    return f"encoder map {record.fcn_skip_shape}" if record.fcn_skip_shape is not None else ""


def _format_table(header, rows, right=()) -> list[str]:
    """Rows of strings as aligned columns (columns in ``right`` right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


# -- the measurement ----------------------------------------------------------------------
def row_modules(model: Module) -> list[tuple[str, Module]]:
    """The modules a summary shows as rows, in registration order."""
    rows = []

    def visit(prefix, module):
        for name, child in module._modules.items():
            full = f"{prefix}.{name}" if prefix else name
            if getattr(child, "summary_as_one_row", False) or not child._modules:
                rows.append((full, child))
            else:
                visit(full, child)

    visit("", model)
    return rows


def _shallow_twin(model: Module) -> Module:
    """A copy of ``model`` that shares its parameter and buffer arrays but none of its caches."""
    memo = {}
    for m in model.modules():
        for value in m.__dict__.values():
            if is_array(value) or isinstance(value, types.ModuleType):
                memo[id(value)] = value  # share, do not copy (statistics, caches, Dropout's numpy/cupy)
        for p in m._parameters.values():
            if p is not None:
                for array in (p.data, p.grad):
                    if array is not None:
                        memo[id(array)] = array  # the weights and their gradients, shared
    twin = copy.deepcopy(model, memo)
    for m in twin.modules():
        kept = set(m._buffers) | set(m._parameters)
        for name, value in list(m.__dict__.items()):
            if name.startswith("_") and name not in kept and is_array(value):
                object.__setattr__(m, name, None)  # the twin's layers start with empty caches
    return twin


def _arrays_in(value):
    """Every array inside ``value`` (an array, or nested tuples/lists of arrays and ints)."""
    if is_array(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays_in(v)


def _integers_in(value) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return 1
    if isinstance(value, (tuple, list)):
        return sum(_integers_in(v) for v in value)
    return 0


def _cached_arrays(module: Module):
    """The arrays a layer holds besides its parameters and buffers: what it keeps for backward."""
    kept = set(module._buffers) | set(module._parameters)
    for name, value in module.__dict__.items():
        if name.startswith("_") and name not in kept and is_array(value):
            yield value


def _leaf_flops(module: Module, inputs, output) -> int:
    """Forward FLOPs of one leaf layer from the shapes it saw (see the module docstring)."""
    y = next(_arrays_in(output), None)
    if y is None:
        return 0
    kind = type(module).__name__
    if hasattr(module, "kernel_size") and hasattr(module, "in_channels") and hasattr(module, "weight"):
        kh, kw = module.kernel_size
        if kind == "ConvTranspose2d":  # every input value meets every kernel tap once
            x = inputs[0]
            return 2 * int(x.size) * module.out_channels * kh * kw
        n, o, ho, wo = y.shape
        return 2 * n * o * module.in_channels * kh * kw * ho * wo
    if kind == "BatchNorm2d":
        return 2 * int(y.size)
    if kind == "MaxPool2d":
        kh, kw = module.kernel_size
        return int(y.size) * kh * kw
    if kind in ("MaxUnpool2d", "Dropout"):  # data movement, no arithmetic
        return 0
    return int(y.size)  # ReLU, Upsample and other element-wise layers: one per output value


def summarize(model, input_size=(3, 360, 480), batch_size: int = 1) -> ModelSummary:
    """Run one measured forward of ``model`` on zeros and return its :class:`ModelSummary`."""
    input_size = tuple(int(s) for s in input_size)
    twin = _shallow_twin(model)
    twin.eval()
    xp = array_module_for(model.device)
    x = xp.zeros((int(batch_size), *input_size), dtype=model.dtype)

    rows = row_modules(twin)
    leaves = {id(m): m for m in twin.modules() if not m._modules}
    seen_output: dict[int, tuple] = {}  # id(module) -> (inputs, output) of its last forward

    def wrap(module):
        forward = module.forward

        def recorded(*args, **kwargs):
            out = forward(*args, **kwargs)
            seen_output[id(module)] = (args, out)
            return out

        object.__setattr__(module, "forward", recorded)

    wrapped = {id(m): m for _, m in rows} | leaves
    for m in wrapped.values():
        wrap(m)
    with enable_grad():
        if hasattr(twin, "encode") and hasattr(twin, "decode"):
            bottom, kept = twin.encode(x)
            logits = twin.decode(bottom, kept)
        else:
            kept = []
            logits = twin.forward(x)

    kept_ids = {id(a): a for entry in kept for a in _arrays_in(entry)}
    counted: set[int] = set()
    records = []
    for name, module in rows:
        args, out = seen_output.get(id(module), ((), None))
        y = next(_arrays_in(out), None)
        detail = module.extra_repr()
        if isinstance(out, tuple) and len(out) > 1 and is_array(out[1]):  # max pooling: (y, indices)
            detail = f"+ indices {out[1].dtype} {tuple(out[1].shape)}"
        backward_bytes = 0
        flops = 0
        for sub in module.modules():
            for a in _cached_arrays(sub):
                if id(a) not in counted:
                    counted.add(id(a))
                    backward_bytes += int(a.nbytes)
            if id(sub) in leaves and id(sub) in seen_output:
                flops += _leaf_flops(sub, *seen_output[id(sub)])
        decoder_bytes = sum(int(a.nbytes) for a in _arrays_in(out) if id(a) in kept_ids)
        records.append(
            LayerRecord(
                layer=name,
                type=type(module).__name__,
                output_shape=tuple(int(s) for s in y.shape) if y is not None else (),
                parameters=module.num_parameters(),
                backward_bytes=backward_bytes,
                decoder_bytes=decoder_bytes,
                flops=flops,
                detail=detail,
            )
        )

    decoder_memory = [_decoder_record(stage, entry, model.dtype) for stage, entry in enumerate(kept, start=1)]
    return ModelSummary(
        model_name=type(model).__name__,
        arch=getattr(model, "arch", ""),
        config=dict(getattr(model, "config", {})),
        input_shape=tuple(x.shape),
        dtype=np.dtype(model.dtype).name,
        output_shape=tuple(int(s) for s in logits.shape),
        parameters=model.num_parameters(),
        records=records,
        decoder_memory=decoder_memory,
    )


def _decoder_record(stage: int, entry, dtype) -> DecoderMemoryRecord:
    """Measured bytes of one decoder stage's inputs from the encoder, and an FCN skip's bytes.

    A SegNet entry is ``(indices, size)``: the indices' nbytes plus 8 bytes per integer of
    the size.  The skip it replaces is the encoder map before pooling (what U-Net and FCN/U-Net-style
    decoders keep; FCN-Basic keeps the *pooled* maps reduced to K channels), ``N·C·H·W``
    values of ``dtype`` (N and C from the indices, H and W from the size).
    """
    arrays = list(_arrays_in(entry))
    kept = sum(int(a.nbytes) for a in arrays) + 8 * _integers_in(entry)
    description = " + ".join(f"{a.dtype} {tuple(int(s) for s in a.shape)}" for a in arrays)
    fcn = fcn_shape = None
    is_indices = (
        isinstance(entry, tuple) and len(entry) == 2 and is_array(entry[0])
        and np.dtype(entry[0].dtype).kind == "u" and _integers_in(entry[1]) == 2
    )
    if is_indices:
        n, c = (int(s) for s in entry[0].shape[:2])
        h, w = (int(s) for s in tuple(entry[1])[-2:])
        fcn, fcn_shape = n * c * h * w * np.dtype(dtype).itemsize, (n, c, h, w)
        description += " + size"
    return DecoderMemoryRecord(stage=stage, description=description, kept_bytes=kept, fcn_skip_bytes=fcn,
                               fcn_skip_shape=fcn_shape)

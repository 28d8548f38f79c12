"""Parameters and modules: the bookkeeping every layer and model shares.

A :class:`Parameter` is a learnable array ``.data`` with its gradient ``.grad``.
A :class:`Module` is a layer or a network: it owns parameters, buffers (state that is
saved but not learnt, such as BatchNorm's running statistics) and sub-modules, all
registered simply by assigning them as attributes, as in PyTorch.

Three switches, kept apart as in PyTorch:

``module.training`` -- ``train()`` / ``eval()``, set recursively
    *What the layers compute*: BatchNorm uses batch statistics and Dropout drops only in
    training mode.  Nothing else: an eval-mode forward can be differentiated like any
    other (the gradient of BatchNorm with its running statistics, say).
``with minisegnet.no_grad():`` -- :mod:`minisegnet.grad_mode`
    *What the layers keep*: inside the block no forward stores anything for a backward,
    so inference holds no activations (``predict``, ``evaluate`` and ``predict_mc`` use it).
``parameter.requires_grad`` -- ``requires_grad_(False)`` sets it on every parameter
    *Which gradients are computed*: a frozen parameter (``requires_grad = False``) gets no
    ``.grad``, and its layer skips the matrix product that would compute it; the
    optimizers leave it alone.

What a forward keeps for its backward (the padded input of a convolution, BatchNorm's
input, ReLU's mask, pooling's indices) stays with the layer until the next forward
replaces it, so a layer's ``backward`` may be called again with another upstream gradient.
:meth:`Module.release_caches` lets it go.  A model's ``backward`` (``release=True``, the
default) has every layer let go of its cache as soon as that layer's own backward has
returned (``release_after_backward``, :func:`releases_cache`), as PyTorch frees a graph's saved
tensors during its backward: the decoder's maps are free again before the encoder's backward
needs room for its gradients.

Gradients **accumulate**: ``backward`` adds into ``param.grad`` (as PyTorch does, so
micro-batches can be summed) and ``zero_grad()`` clears them.  Forgetting
``zero_grad()`` is the classic bug that micrograd's users met first; the training loop
calls it once per step, visibly.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Iterator

import numpy as np

from .backend import array_module_for, device_of, get_array_module, is_array, resolve_device, to_device, to_numpy


def releases_cache(backward):
    """Decorate a layer's ``backward``: with ``release_after_backward`` set, drop the forward's cache after it.

    A model's backward sets ``release_after_backward`` on its modules for its own duration
    (``SegmentationModel.backward(..., release=True)``), so each layer's cache goes the moment
    it has been used, and not only when the whole backward is over.  Set or not, the backward
    computes the same; with it set, a second backward needs a new forward.
    """

    @functools.wraps(backward)
    def backward_then_release(self, *args, **kwargs):
        grad = backward(self, *args, **kwargs)
        if self.release_after_backward:
            self._release_cache()
        return grad

    return backward_then_release


class Parameter:
    """A learnable array and the gradient accumulated for it."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad: bool = True):
        if not is_array(data):
            raise TypeError(f"Parameter expects a NumPy or CuPy array, got {type(data).__name__}")
        self.data = data
        self.grad = None
        #: False freezes the parameter: layers compute no gradient for it and ``accumulate_grad`` ignores one.
        self.requires_grad = bool(requires_grad)

    def accumulate_grad(self, grad) -> None:
        """``self.grad += grad`` (the first call stores a copy); nothing for a frozen parameter."""
        if not self.requires_grad:
            return
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient of shape {grad.shape} for a parameter of shape {self.data.shape}")
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=True)
        else:
            self.grad += grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={device_of(self.data)!r})"


class Module:
    """Base class of layers and networks (forward, backward, parameters, modes, state)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning {name!r}")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            # Re-assigning a buffer (``self.running_mean *= m`` included) keeps it a buffer, in place.
            object.__setattr__(self, name, value)
            return
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` as state that is saved and moved with the module but not learnt."""
        setattr(self, name, array)
        self._buffers[name] = True

    def _buffer_items(self):
        for name in self._buffers:
            yield name, getattr(self, name)

    # -- the computation ------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def release_caches(self) -> None:
        """Let go of what the last forward kept for a backward, in this module and every module below it.

        The memory returns at once (nothing else holds those arrays), and a ``backward`` of
        a released layer raises until its next forward.  Weights, gradients, buffers and the
        scratch arrays that layers share (:mod:`minisegnet.workspace`) are not touched.
        """
        for module in self.modules():
            module._release_cache()

    def _release_cache(self) -> None:
        """Drop this module's own forward cache; layers that keep one override it."""

    #: Whether this layer's backward drops its forward cache once it has returned (see
    #: :func:`releases_cache`); a model's backward sets it on its modules for its own duration.
    release_after_backward = False

    # -- traversal ------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for mod_name, module in self.named_modules(prefix):
            for name, b in module._buffer_items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode: BatchNorm uses batch statistics, Dropout drops (eval: neither).

        Only what the layers compute changes; what they keep for backward is
        :func:`minisegnet.no_grad`'s business.
        """
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Eval mode: BatchNorm uses its running statistics, Dropout is the identity."""
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Freeze (``False``) or unfreeze every parameter: ``p.requires_grad = flag``."""
        for p in self.parameters():
            p.requires_grad = bool(flag)
        return self

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``param.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    # -- device and dtype -----------------------------------------------------------
    @property
    def device(self) -> str:
        for p in self.parameters():
            return device_of(p.data)
        for _, b in self.named_buffers():
            return device_of(b)
        return "cpu"

    @property
    def dtype(self):
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(np.float32)

    def _map_arrays(self, fn) -> None:
        for m in self.modules():
            for p in m._parameters.values():
                p.data = fn(p.data)
                if p.grad is not None:
                    p.grad = fn(p.grad)
            for name, b in list(m._buffer_items()):
                object.__setattr__(m, name, fn(b))

    def to(self, device: str | None = None) -> "Module":
        """Move parameters, gradients and buffers to ``"cpu"`` or ``"cuda"`` (in place)."""
        device = resolve_device(device)
        array_module_for(device)  # fail early, clearly, if CUDA is unusable
        self._map_arrays(lambda a: to_device(a, device))
        return self

    def astype(self, dtype) -> "Module":
        """Convert floating parameters, gradients and buffers to ``dtype`` (in place)."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise ValueError(f"{type(self).__name__}.astype expects a floating dtype, got {dtype}")

        def convert(a):
            return a.astype(dtype) if a.dtype.kind == "f" else a

        self._map_arrays(convert)
        return self

    def double(self) -> "Module":
        return self.astype(np.float64)

    def float(self) -> "Module":
        return self.astype(np.float32)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by dotted name, as host (NumPy) copies."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = to_numpy(p.data).copy()
        for name, b in self.named_buffers():
            state[name] = to_numpy(b).copy()
        return state

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this module (onto its device, in its dtypes).

        Raises ``KeyError``/``ValueError`` listing every missing, unexpected or mis-shaped
        name before anything is changed, so a failed load leaves the module untouched.
        """
        own = OrderedDict(self.named_parameters())
        own_buffers = OrderedDict(self.named_buffers())
        expected = {n: p.data for n, p in own.items()}
        expected.update(own_buffers)
        missing = [n for n in expected if n not in state]
        unexpected = [n for n in state if n not in expected]
        mismatched = [
            f"{n}: expected {tuple(expected[n].shape)}, got {tuple(np.shape(state[n]))}"
            for n in expected
            if n in state and tuple(np.shape(state[n])) != tuple(expected[n].shape)
        ]
        problems = []
        if missing and strict:
            problems.append("missing: " + ", ".join(missing))
        if unexpected and strict:
            problems.append("unexpected: " + ", ".join(unexpected))
        if mismatched:
            problems.append("wrong shape: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"cannot load state into {type(self).__name__}: " + " | ".join(problems))
        for name, p in own.items():
            if name in state:
                xp = get_array_module(p.data)
                p.data = xp.asarray(to_device(np.asarray(state[name]), device_of(p.data)), dtype=p.data.dtype).copy()
        for mod_name, module in self.named_modules():
            for bname, b in list(module._buffer_items()):
                full = f"{mod_name}.{bname}" if mod_name else bname
                if full in state:
                    xp = get_array_module(b)
                    value = xp.asarray(to_device(np.asarray(state[full]), device_of(b)), dtype=b.dtype).copy()
                    object.__setattr__(module, bname, value)

    # -- display --------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


class Sequential(Module):
    """Modules run in order; backward runs them in reverse (one input, one output each)."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential expects Modules, got {type(m).__name__} at position {i}")
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, grad):
        for m in reversed(self._modules.values()):
            grad = m.backward(grad)
        return grad

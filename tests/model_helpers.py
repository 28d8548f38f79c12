"""Helpers shared by the model tests (imported by name: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import numpy as np

from minisegnet.backend import is_array


def seeded(model, seed=0):
    """Give every parameter a reproducible random value (He-like scale), in place.

    BatchNorm scales in [0.5, 1.5] and biases in [-0.1, 0.1], so that no parameter sits at a
    special value (ones, zeros) that could hide a wrong gradient.
    """
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bn.weight"):
            p.data[...] = rng.uniform(0.5, 1.5, p.shape)
        elif name.endswith("bias"):
            p.data[...] = rng.uniform(-0.1, 0.1, p.shape)
        else:
            fan_in = int(np.prod(p.shape[1:]))
            p.data[...] = rng.standard_normal(p.shape) * np.sqrt(2.0 / fan_in)
    return model


def held_arrays(model):
    """Arrays a model's modules hold besides parameters and buffers (activation caches), by name."""
    held = []
    for name, m in model.named_modules():
        skip = {"_parameters", "_buffers", "_modules", *m._buffers}
        for attr, value in vars(m).items():
            if attr in skip:
                continue
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(is_array(v) for v in values):
                held.append(f"{name or type(model).__name__}.{attr}")
    return held

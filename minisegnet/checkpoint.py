"""Checkpoints: a trained network in one ``.npz`` file, and VGG16's ImageNet weights.

A checkpoint is a plain NumPy ``.npz`` archive (a zip of ``.npy`` arrays) that any NumPy
can open with ``np.load(path, allow_pickle=False)`` -- no pickles, so loading a file
cannot run code.  Its entries:

=====================================  ===================================================
``format``, ``format_version``         ``"minisegnet-checkpoint"``, ``1``
``arch``, ``config``                   registry name and constructor arguments (JSON), so
                                       ``build_model(arch, **config)`` rebuilds the network
``model_class``, ``dtype``             e.g. ``"minisegnet.models.segnet.SegNet"``, ``"float32"``
``minisegnet_version``                 the library version that wrote the file
``model/<name>``                       every parameter and buffer of ``model.state_dict()``
                                       (weights, BatchNorm running statistics, ...)
``optim/meta``                         optimizer type, hyper-parameters and ``lr`` (JSON)
``optim/state/<i>/<name>``             its per-parameter state (momentum buffers, moments)
``extra``                              your JSON-serialisable dict (epoch, metrics, rng state)
``extra_arrays/<key>``                 NumPy arrays found at the top level of ``extra``
=====================================  ===================================================

Strings are 0-d unicode arrays.  Files are written atomically: into a temporary file in the
same directory, flushed to disk, then renamed over the target in one step, so a crash or an
error while saving never leaves a half-written checkpoint, and an older checkpoint at the
same path survives any failure.

:func:`load_checkpoint` and :func:`load_model` refuse, with a ``ValueError`` (or
``OSError``) naming the file, anything that is not exactly right: a missing file, a file that
is not a minisegnet checkpoint, a truncated or corrupt archive, a format version that is not an
integer in ``1..FORMAT_VERSION``, a stored architecture whose config is not a dict or holds
keys its constructor does not take, an ``extra`` that is not a dict, a different architecture,
missing / unexpected / mis-shaped arrays, and weights, buffers or optimizer state holding NaN or
inf (what a diverged run leaves; :func:`nonfinite_arrays` lists them).  Nothing in the model or
optimizer changes unless everything fits.

:func:`load_vgg16_encoder` starts SegNet's encoder from VGG16 trained on ImageNet, as the
SegNet paper did.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .atomic import write_atomically
from .backend import device_of, get_array_module, is_array, to_device, to_numpy
from .module import Module

__all__ = [
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "nonfinite_arrays",
    "load_vgg16_encoder",
    "VGG16_CONV_KEYS",
]

FORMAT = "minisegnet-checkpoint"
FORMAT_VERSION = 1

# torchvision's vgg16().features: conv layers sit at these indices (ReLUs and max-pools between)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_KEYS = tuple(f"features.{i}" for i in VGG16_CONV_INDICES)

_MODEL, _OPTIM_META, _OPTIM_STATE, _EXTRA_ARRAYS = "model/", "optim/meta", "optim/state/", "extra_arrays/"


# -- JSON helpers ------------------------------------------------------------------------

def _json_default(obj):
    """Let ``json`` write NumPy scalars; refuse anything else with a helpful message."""
    if isinstance(obj, np.generic):
        return obj.item()
    if is_array(obj):
        raise TypeError(
            f"a {type(obj).__name__} of shape {tuple(obj.shape)} nested inside extra: put arrays at the top level "
            "of extra (they are stored as arrays) or convert with .tolist()"
        )
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _to_json(obj, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save_checkpoint: {what} must be JSON-serialisable: {exc}") from None


def _string(value: str) -> np.ndarray:
    return np.asarray(str(value))


def _model_class(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _model_config(model):
    """The model's ``config`` as it reads back from JSON (tuples become lists)."""
    config = getattr(model, "config", None)
    return None if config is None else json.loads(_to_json(config, "model.config"))


# -- saving ------------------------------------------------------------------------------

def save_checkpoint(path, model: Module, optimizer=None, extra: dict | None = None) -> str:
    """Write ``model`` (and ``optimizer``, and ``extra``) to one ``.npz`` file, atomically.

    ``path`` is used exactly as given (no ``.npz`` is appended); its directory must exist.
    ``extra`` is a dict of anything JSON can hold -- epoch, metrics, the normalisation
    mean/std, ``rng.bit_generator.state`` -- plus NumPy/CuPy arrays at its top level, which
    are stored as arrays.  JSON turns tuples into lists.  Returns the path written.

    Everything is converted (and checked) in memory before the file is opened; the file
    is then written to a temporary name beside ``path``, flushed and fsynced, and renamed
    onto ``path``.  On any error the temporary file is removed and an existing file at
    ``path`` is left as it was.
    """
    from . import __version__

    if not isinstance(model, Module):
        raise TypeError(f"save_checkpoint expects a minisegnet Module, got {type(model).__name__}")
    path = os.fspath(path)
    arrays: "OrderedDict[str, np.ndarray]" = OrderedDict()
    arrays["format"] = _string(FORMAT)
    arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)
    arrays["arch"] = _string(getattr(model, "arch", "") or "")
    arrays["config"] = _string(_to_json(getattr(model, "config", None), "model.config"))
    arrays["model_class"] = _string(_model_class(model))
    arrays["dtype"] = _string(np.dtype(model.dtype).name)
    arrays["minisegnet_version"] = _string(__version__)
    for name, value in model.state_dict().items():
        arrays[_MODEL + name] = value
    if optimizer is not None:
        state = optimizer.state_dict()
        meta = {k: state[k] for k in ("type", "num_params", "hyperparameters")}
        arrays[_OPTIM_META] = _string(_to_json(meta, "the optimizer's hyper-parameters"))
        for i, entries in state["state"].items():
            for name, value in entries.items():
                arrays[f"{_OPTIM_STATE}{i}/{name}"] = value
    if extra is not None:
        if not isinstance(extra, dict):
            raise TypeError(f"save_checkpoint: extra must be a dict, got {type(extra).__name__}")
        plain = {}
        for key, value in extra.items():
            if not isinstance(key, str):
                raise TypeError(f"save_checkpoint: extra keys must be strings, got {key!r}")
            if is_array(value):
                value = to_numpy(value)
                if value.dtype.hasobject:
                    raise TypeError(f"save_checkpoint: extra[{key!r}] is an object array, which needs pickle: refused")
                arrays[_EXTRA_ARRAYS + key] = value
            else:
                plain[key] = value
        arrays["extra"] = _string(_to_json(plain, "extra"))
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path: str, arrays) -> None:
    """``np.savez`` into a temporary file beside ``path``, fsync, then ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save checkpoint {path}: directory {directory} does not exist")
    write_atomically(path, lambda f: np.savez(f, **arrays))


# -- reading -----------------------------------------------------------------------------

def _read_npz(path, what: str, wanted=None) -> dict:
    """All arrays (or those whose name satisfies ``wanted``) of an ``.npz``, as NumPy arrays.

    Every way a file can be unreadable becomes an error naming the file: missing, not a
    zip archive, truncated, corrupt (bad CRC), or holding object arrays (pickles).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} not found")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a directory, not an .npz file")
    with open(path, "rb"):  # a PermissionError names the file; is_zipfile would hide it
        pass
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a {what}: not an .npz (zip) archive, or truncated")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files if wanted is None or wanted(k)}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(
                f"{path}: holds object arrays that need pickle; refused (loaded with allow_pickle=False)"
            ) from None
        raise ValueError(f"{path}: unreadable {what} (corrupt?): {exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"{path}: corrupt or truncated {what}: {type(exc).__name__}: {exc}") from None
    not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]  # zip members that are not .npy
    if not_arrays:
        shown = ", ".join(not_arrays[:5])
        raise ValueError(f"{path} is not a {what}: {shown} not NumPy arrays (a zip, but not an .npz)")
    return arrays


def _text(arrays: dict, key: str, path):
    value = arrays.get(key)
    if value is None:
        return None
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{path}: entry {key!r} should be a 0-d string, got dtype {value.dtype} shape {value.shape}")
    return str(value[()])


def _json(arrays: dict, key: str, path):
    text = _text(arrays, key, path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: entry {key!r} is not valid JSON ({exc})") from None


def _format_version(value: np.ndarray, path) -> int:
    """The file's format version: a 0-d integer array holding 1..FORMAT_VERSION (else ValueError naming both)."""
    if value.shape != () or value.dtype.kind not in "iu":
        shown = value.tolist() if value.size <= 4 else f"an array of shape {value.shape}"
        raise ValueError(f"{path}: format_version {shown!r} (dtype {value.dtype}) is not an integer; "
                         f"this minisegnet reads format {FORMAT_VERSION}: damaged checkpoint")
    version = int(value)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {version}, newer than this minisegnet reads ({FORMAT_VERSION}): "
            "upgrade minisegnet"
        )
    if version < 1:
        raise ValueError(
            f"{path} has checkpoint format {version}, but formats start at 1 and this minisegnet reads "
            f"format {FORMAT_VERSION}: damaged checkpoint, or not written by minisegnet"
        )
    return version


def read_checkpoint(path, *, weights: bool = True) -> dict:
    """The contents of a checkpoint as plain Python and NumPy objects, without a model.

    Returns ``{"arch", "config", "model_class", "dtype", "format_version",
    "minisegnet_version", "model": {name: array}, "optimizer": state_dict or None,
    "extra": dict}``.  With ``weights=False`` only the small entries are read (the model
    and optimizer arrays stay on disk): quick for listing what a run saved.

    ``model.load_state_dict(read_checkpoint(path)["model"], strict=False)`` loads weights
    into a model whose configuration differs (e.g. another dropout rate).
    """
    skip = (_MODEL, _OPTIM_STATE)
    arrays = _read_npz(path, "minisegnet checkpoint", None if weights else (lambda k: not k.startswith(skip)))
    if _text(arrays, "format", path) != FORMAT or "format_version" not in arrays:
        shown = ", ".join(sorted(arrays)[:6]) + (", ..." if len(arrays) > 6 else "")
        raise ValueError(
            f"{path} is not a minisegnet checkpoint (no '{FORMAT}' format entry; it holds: {shown or 'nothing'})"
        )
    version = _format_version(arrays["format_version"], path)
    config = _json(arrays, "config", path)
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"{path}: entry 'config' (the model's constructor arguments) should be a JSON object "
                         f"(a dict), got {type(config).__name__} {json.dumps(config)[:60]}: damaged checkpoint")
    dtype = _text(arrays, "dtype", path)
    if dtype is not None:
        try:
            if np.dtype(dtype).kind != "f":
                raise TypeError
        except TypeError:
            raise ValueError(f"{path}: entry 'dtype' is {dtype!r}, not a floating-point dtype such as 'float32': "
                             "damaged checkpoint") from None
    contents = {
        "format_version": version,
        "arch": _text(arrays, "arch", path) or "",
        "config": config,
        "model_class": _text(arrays, "model_class", path),
        "dtype": dtype,
        "minisegnet_version": _text(arrays, "minisegnet_version", path),
        "model": OrderedDict((k[len(_MODEL):], v) for k, v in arrays.items() if k.startswith(_MODEL)),
        "optimizer": None,
    }
    meta = _json(arrays, _OPTIM_META, path)
    if meta is not None:
        state = {}
        for key, value in arrays.items():
            if key.startswith(_OPTIM_STATE):
                index, _, name = key[len(_OPTIM_STATE):].partition("/")
                if not index.isdigit() or not name:
                    raise ValueError(f"{path}: malformed optimizer entry {key!r} (expected optim/state/<index>/<name>)")
                state.setdefault(int(index), {})[name] = value
        contents["optimizer"] = {**meta, "state": state}
    extra = _json(arrays, "extra", path)
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ValueError(f"{path}: entry 'extra' should hold a JSON object (a dict), got {type(extra).__name__}: "
                         "damaged checkpoint")
    for key, value in arrays.items():
        if key.startswith(_EXTRA_ARRAYS):
            extra[key[len(_EXTRA_ARRAYS):]] = value
    contents["extra"] = extra
    return contents


def _describe(arch, config, model_class) -> str:
    if arch:
        return f"{arch!r} with config {json.dumps(config, sort_keys=True)}"
    return f"{model_class} (no registered arch)"


def _state_differences(model: Module, state: dict, limit: int = 8) -> str:
    """Missing / unexpected / mis-shaped array names, a few of each, for error messages."""
    own = model.state_dict()

    def few(items, sep=", "):
        return sep.join(items[:limit]) + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")

    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    shapes = [f"{n}: model {tuple(own[n].shape)}, file {tuple(state[n].shape)}"
              for n in own if n in state and tuple(own[n].shape) != tuple(state[n].shape)]
    parts = [f"{label}: {few(items, sep)}" for label, items, sep in
             (("missing", missing, ", "), ("unexpected", unexpected, ", "), ("wrong shape", shapes, "; ")) if items]
    return " | ".join(parts) if parts else "all arrays have matching names and shapes"


def _check_stored_config(path, arch: str, config) -> None:
    """A registered ``arch`` needs a config dict whose keys its constructor takes (else ValueError naming the file).

    ``None`` (``"config": null``) and unknown keys never come from :func:`save_checkpoint` of a
    registered model: the file was edited or damaged, and saying so beats the traceback of
    ``build_model(arch, **config)`` or a list of mis-shaped arrays.
    """
    import inspect

    from .models import MODELS

    if arch not in MODELS:
        return
    cls = MODELS[arch]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the stored architecture {arch!r} has no constructor arguments (config is "
                         f"{json.dumps(config)}, expected a dict such as {{\"num_classes\": 11}}): damaged checkpoint")
    accepted = [name for name in list(inspect.signature(cls.__init__).parameters)[1:] if name != "rng"]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(
            f"{path}: the stored architecture {arch!r} has constructor argument(s) {', '.join(map(repr, unknown))} "
            f"that {cls.__name__} does not take (it takes {', '.join(accepted)}): damaged checkpoint, or written "
            "by another minisegnet version"
        )


def nonfinite_arrays(arrays: dict) -> list[str]:
    """Names of the floating arrays of ``arrays`` (name -> array) that hold a NaN or an infinity, with counts.

    One reduction per array, on the host (checkpoint arrays are NumPy).
    """
    bad = []
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad.append(f"{name} ({int(value.size - np.count_nonzero(np.isfinite(value)))} of {value.size})")
    return bad


def _check_finite(path, contents: dict) -> None:
    """Refuse weights, buffers or optimizer state with NaN/inf: a diverged run's file is not a model."""
    arrays = dict(contents["model"])
    for index, entries in (contents.get("optimizer") or {}).get("state", {}).items():
        arrays.update({f"optimizer state {index}/{name}": value for name, value in entries.items()})
    bad = nonfinite_arrays(arrays)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(
            f"{path} holds non-finite values (NaN or inf) in {shown}: the run that wrote it diverged; "
            "use an earlier checkpoint, or train again with a lower learning rate"
        )


def _check_architecture(path, contents: dict, model: Module) -> None:
    """The checkpoint's arch and config must be the model's (else ValueError naming both)."""
    arch, config = contents["arch"], contents["config"]
    _check_stored_config(path, arch, config)
    model_arch, model_config = getattr(model, "arch", "") or "", _model_config(model)
    if arch or model_arch:
        same = arch == model_arch and config == model_config
    else:  # plain Modules (no registry name): the class must match
        same = contents["model_class"] == _model_class(model)
    if same:
        return
    message = (f"{path} holds {_describe(arch, config, contents['model_class'])}, "
               f"but the model is {_describe(model_arch, model_config, _model_class(model))}")
    if arch and arch == model_arch and isinstance(config, dict) and isinstance(model_config, dict):
        diffs = [f"{k}: file {config.get(k, '<absent>')!r}, model {model_config.get(k, '<absent>')!r}"
                 for k in sorted(set(config) | set(model_config)) if config.get(k) != model_config.get(k)]
        message += "; config differs in " + "; ".join(diffs)
    message += f". Arrays: {_state_differences(model, contents['model'])}"
    message += ". Build the stored model with load_model(path), or load weights only with read_checkpoint."
    raise ValueError(message)


def load_checkpoint(path, model: Module, optimizer=None) -> dict:
    """Restore ``model`` (and ``optimizer``) from ``path``; return the saved ``extra`` dict.

    The file's architecture and config must be the model's, and its arrays must match the
    model's parameters and buffers by name and shape (the error lists every offender).
    Weights go onto the model's device in the model's dtype; optimizer state goes onto its
    parameters' devices.  Everything is validated before anything is changed: on error the
    model and optimizer are left untouched.  ``extra`` comes back as saved (through JSON),
    with its arrays as NumPy arrays.
    """
    if not isinstance(model, Module):
        raise TypeError(f"load_checkpoint expects a minisegnet Module, got {type(model).__name__}")
    contents = read_checkpoint(path)
    _check_architecture(path, contents, model)
    _check_finite(path, contents)
    prepared = None
    if optimizer is not None:
        if contents["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state (it was saved without an optimizer)")
        try:
            prepared = optimizer._prepare_state(contents["optimizer"])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(contents["model"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if prepared is not None:
        optimizer._apply_state(prepared)
    return contents["extra"]


def load_model(path, device: str | None = None):
    """Build the network stored in ``path``, load its weights; return ``(model, extra)``.

    The model is rebuilt with ``minisegnet.models.build_model(arch, **config)`` in the
    dtype it was saved in, moved to ``device`` (``None``: ``$MINISEGNET_DEVICE`` or CPU)
    and put in eval mode (call ``model.train()`` to go on training).
    """
    from .backend import resolve_device
    from .models import MODELS, build_model  # imported here: models must not depend on checkpoints

    device = resolve_device(device)
    contents = read_checkpoint(path)
    arch, config = contents["arch"], contents["config"]
    if arch not in MODELS:
        raise ValueError(
            f"{path} holds {_describe(arch, config or {}, contents['model_class'])}, "
            "which is not in minisegnet.models.MODELS "
            f"({', '.join(MODELS)}): build the model yourself and call load_checkpoint(path, model)"
        )
    _check_stored_config(path, arch, config)
    _check_finite(path, contents)
    try:
        model = build_model(arch, **config)
    except (TypeError, ValueError) as exc:  # a value the constructor refuses (channels "many", ...)
        raise ValueError(f"{path}: the stored architecture {arch!r} cannot be rebuilt ({exc}): damaged checkpoint") \
            from None
    if contents["dtype"] and np.dtype(contents["dtype"]) != np.dtype(model.dtype):
        model.astype(contents["dtype"])
    try:
        model.load_state_dict(contents["model"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    model.to(device)
    model.eval()
    return model, contents["extra"]


# -- VGG16 -------------------------------------------------------------------------------

def _encoder_convs(model: Module) -> list:
    """``(name, Conv2d)`` for the encoder's convolutions, in order.

    Uses ``model.encoder_convs()`` when the model offers it, else every ``Conv2d`` whose
    dotted name starts with ``"encoder"``, in registration (= forward) order.
    """
    from .layers import Conv2d

    names = {id(m): n for n, m in model.named_modules()}
    if callable(getattr(model, "encoder_convs", None)):
        convs = []
        for item in model.encoder_convs():
            name, conv = item if isinstance(item, tuple) else (names.get(id(item), "?"), item)
            convs.append((name, conv))
        return convs
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Conv2d) and n.startswith("encoder")]


def load_vgg16_encoder(model: Module, path) -> list[str]:
    """Initialise SegNet's 13 encoder convolutions from ImageNet VGG16 weights.

    ``path`` is an ``.npz`` with torchvision's names ``features.<i>.weight`` (64, 3, 3, 3) and
    ``features.<i>.bias`` for the 13 convolutions of ``vgg16().features`` (``i`` = 0, 2, 5,
    7, 10, 12, 14, 17, 19, 21, 24, 26, 28; other keys are ignored).  Make it once on a machine
    with internet::

        import torchvision, numpy as np
        sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
        np.savez("vgg16.npz", **{k: v.numpy() for k, v in sd.items() if k.startswith("features")})

    The shapes fit only ``SegNet(in_channels=3, width=1.0)``.  The file's ImageNet weights
    expect RGB images normalised with ImageNet's mean and std.  Only the convolutions
    change (BatchNorm and the decoder keep their initialisation); a conv built without a
    bias keeps none.  Everything is checked first -- missing keys, shapes -- and on error
    nothing is changed.  Returns the names of the model's parameters that were loaded.
    """
    convs = _encoder_convs(model)
    if len(convs) != len(VGG16_CONV_KEYS):
        raise ValueError(
            f"load_vgg16_encoder: expected a model with VGG16's 13 encoder convolutions (SegNet), "
            f"but {type(model).__name__} has {len(convs)}: {', '.join(n for n, _ in convs) or 'none'}"
        )
    arrays = _read_npz(path, "VGG16 weight file", lambda k: k.startswith("features."))
    wanted = [(f"{key}.{kind}", f"{name}.{kind}", getattr(conv, kind))
              for key, (name, conv) in zip(VGG16_CONV_KEYS, convs) for kind in ("weight", "bias")]
    wanted = [(src, dst, p) for src, dst, p in wanted if p is not None]
    missing = [src for src, _, _ in wanted if src not in arrays]
    if missing:
        raise ValueError(
            f"{path}: not a torchvision VGG16 weight file: missing {', '.join(missing)}"
            f" (it holds {len(arrays)} 'features.*' arrays). See load_vgg16_encoder's docstring to make one."
        )
    problems = [f"{src} -> {dst}: model expects {tuple(p.data.shape)}, file has {tuple(arrays[src].shape)}"
                for src, dst, p in wanted if tuple(arrays[src].shape) != tuple(p.data.shape)]
    problems += [f"{src}: dtype {arrays[src].dtype} is not floating" for src, _, _ in wanted
                 if arrays[src].dtype.kind != "f"]
    if problems:
        raise ValueError(
            f"{path}: VGG16 weights do not fit {type(model).__name__} (they need SegNet(in_channels=3, width=1.0)): "
            + "; ".join(problems)
        )
    for src, _, p in wanted:
        xp = get_array_module(p.data)
        p.data = xp.ascontiguousarray(to_device(arrays[src], device_of(p.data)), dtype=p.data.dtype)
    return [dst for _, dst, _ in wanted]

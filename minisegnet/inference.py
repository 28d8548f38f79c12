"""Segmenting image files with a trained checkpoint (``minisegnet predict``).

A checkpoint written by the training loop holds what the network expects of its input: the
image size it was trained at and the normalisation mean/std of its training split
(:func:`~minisegnet.run_folder.checkpoint_preprocessing`).  Each image is resized to that size
and normalised, the network predicts inside ``with no_grad():`` (nothing kept for a backward),
and the labels are resized back to the image's own size (nearest neighbour: labels are not
blended), so the outputs lie over the photo.  Bayesian models can also give Monte-Carlo dropout
uncertainty.  The files are drawn by :func:`minisegnet.viz.save_prediction`.

**Inputs and output names.**  Each input is an image file or a folder; a folder stands for every
image inside it and its sub-folders (by extension, :data:`IMAGE_EXTENSIONS`; hidden files, the
output folder and the outputs of an earlier ``predict`` -- ``x_labels.png`` beside ``x.png`` --
are left out), in sorted order.  The outputs keep the inputs' folder
structure below their deepest common folder (:func:`output_stems`): ``predict a/x.png b/x.png``
writes ``OUT/a/x_labels.png`` and ``OUT/b/x_labels.png``, ``predict photos/`` writes
``OUT/street/x_labels.png`` for ``photos/street/x.png``, and files of one folder land directly in
``OUT`` as before.  Two inputs that would still share a name (``x.png`` and ``x.jpg``) get their
extension in it (``x-png_labels.png``, ``x-jpg_labels.png``).  So no output overwrites another,
and the names depend only on the inputs, never on the order in which they were written.

**Which sizes a model takes** (:func:`minimum_input_size`): every 2×2 max pooling of the encoder
needs a map of at least 2 pixels a side, so SegNet-Basic's four poolings need 9×9 and SegNet's
five 17×17 (9 → 5 → 3 → 2 → 1).  Smaller inputs run, but the deepest stages then pool a single
pixel and the scores mean nothing, so ``train``, ``evaluate`` and ``predict`` refuse them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backend import to_device, to_numpy
from .checkpoint import load_model
from .data import normalize, parse_size, read_image, resize_image, resize_label
from .grad_mode import no_grad
from .layers import Conv2d, ConvTranspose2d, Dropout, MaxPool2d, MaxUnpool2d, Upsample
from .layers.pooling import pooled_size
from .run_folder import checked_normalization, checkpoint_preprocessing

__all__ = ["predict_images", "find_images", "output_stems", "minimum_input_size", "check_input_size",
           "checkpoint_inputs", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PREDICTION_KINDS = ("labels", "overlay", "ids", "uncertainty")  # STEM_<kind>.png: what predict writes
_LARGEST_SIDE = 1 << 16  # the search for the smallest size stops here


# -- what sizes a model takes --------------------------------------------------------------------

def _encoder_layers(model):
    """Conv2d and MaxPool2d layers in forward order, up to the first layer that enlarges the map.

    A model registers its layers in the order of its forward (the encoder first), so the layers
    before the first unpooling / upsampling are the encoder's.
    """
    for module in model.modules():
        if isinstance(module, (MaxUnpool2d, ConvTranspose2d, Upsample)):
            return
        if isinstance(module, (Conv2d, MaxPool2d)):
            yield module


def _fits(layers, size: int, axis: int) -> bool:
    """Does a side of ``size`` pixels pass every layer with a whole window at each?"""
    for layer in layers:
        kernel, stride = layer.kernel_size[axis], layer.stride[axis]
        padding = layer.padding[axis] if isinstance(layer, Conv2d) else 0
        if size + 2 * padding < kernel:
            return False
        if isinstance(layer, MaxPool2d):
            size = pooled_size(size, kernel, stride, layer.ceil_mode)
        else:
            size = (size + 2 * padding - kernel) // stride + 1
    return True


def minimum_input_size(model) -> tuple[int, int]:
    """The smallest ``(H, W)`` at which every encoder convolution and pooling has a whole window.

    Computed from the model's layers (kernel, stride, padding, ceil mode), not from a table:
    for n 2×2 poolings of stride 2 in ceil mode that is ``2 ** (n - 1) + 1`` (SegNet-Basic 9,
    SegNet 17); the "same"-padded convolutions add no constraint.
    """
    layers = list(_encoder_layers(model))
    smallest = []
    for axis in (0, 1):
        size = 1
        while not _fits(layers, size, axis):
            size += 1
            if size > _LARGEST_SIDE:
                raise ValueError(f"{type(model).__name__}: no input size up to {_LARGEST_SIDE} fits its layers")
        smallest.append(size)
    return smallest[0], smallest[1]


def check_input_size(model, size, what: str = "size") -> tuple[int, int]:
    """``size`` as ``(H, W)``; ``ValueError`` saying the minimum when it is too small for ``model``."""
    h, w = parse_size(size)
    min_h, min_w = minimum_input_size(model)
    if h < min_h or w < min_w:
        pools = sum(isinstance(m, MaxPool2d) for m in _encoder_layers(model))
        name = getattr(model, "arch", "") or type(model).__name__
        raise ValueError(
            f"{what} {h}x{w} is too small for {name}: its {pools} max poolings need at least {min_h}x{min_w} "
            "(a whole 2x2 window at each pooling)"
        )
    return h, w


# -- what a checkpoint says about its inputs -----------------------------------------------------

def checkpoint_inputs(extra: dict, path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`~minisegnet.run_folder.checkpoint_preprocessing`, checked: 3 finite means, 3 positive stds.

    Every problem is a ``ValueError`` that names the file.
    """
    try:
        mean, std, size = checkpoint_preprocessing(extra, path)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        raise ValueError(message if str(path) in message else f"{path}: {message} (damaged checkpoint)") from None
    mean, std = checked_normalization(mean.tolist(), std.tolist(), path, "cannot use it")
    return mean, std, size


# -- inputs and output names ---------------------------------------------------------------------

def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def _images_of_folder(files) -> list[str]:
    """The image files among the names ``files`` of one folder, without the outputs of an earlier predict.

    ``x_labels.png``, ``x_overlay.png``, ``x_ids.png`` and ``x_uncertainty.png`` are left out when
    an image ``x.*`` sits beside them (so ``predict photos --out photos`` can be run twice).
    """
    images = [f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    stems = {os.path.splitext(f)[0] for f in images}

    def earlier_output(name):
        stem, ext = os.path.splitext(name)
        base, _, kind = stem.rpartition("_")
        return ext.lower() == ".png" and kind in PREDICTION_KINDS and base in stems

    return [f for f in images if not earlier_output(f)]


def find_images(inputs, exclude=None) -> list[tuple[Path, str]]:
    """The image files that ``inputs`` (files and folders) name, each with the folder it counts from.

    Returns ``(image, anchor)`` pairs in input order (a folder's images sorted by their path
    inside it; earlier outputs of predict lying beside their image are left out), each file
    once; ``image`` is spelt as given (a folder's path joined with the
    file's path inside it), ``anchor`` is an absolute path: the file's own folder for a file
    given directly, the folder given for a file found inside one.  Files under ``exclude`` (the output folder)
    are skipped when folders are searched.  Raises ``FileNotFoundError`` for a path that does
    not exist and ``ValueError`` for a folder without images, naming it.
    """
    exclude = None if exclude is None else os.path.abspath(exclude)
    found, seen = [], set()

    def add(shown: Path, anchor: str):
        key = os.path.realpath(shown)
        if key not in seen:
            seen.add(key)
            found.append((shown, anchor))

    missing = [str(p) for p in inputs if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"image file(s) or folder(s) not found: {', '.join(missing)}")
    for item in inputs:
        path = os.path.abspath(item)
        if not os.path.isdir(path):
            add(Path(item), os.path.dirname(path))
            continue
        images = []
        for folder, subfolders, files in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                                   and not _inside(os.path.join(folder, d), exclude))
            images += [os.path.join(folder, f) for f in _images_of_folder(files)]
        if not images:
            raise ValueError(
                f"folder {item} holds no images (looked for {' '.join(IMAGE_EXTENSIONS)}, sub-folders included)"
            )
        for image in sorted(images, key=lambda p: Path(os.path.relpath(p, path)).parts):
            add(Path(item) / os.path.relpath(image, path), path)
    return found


def output_stems(found) -> list[str]:
    """Output names (without ``_labels.png``) for :func:`find_images`' pairs: unique, relative, '/'-separated.

    Each image keeps its path below the deepest folder common to all anchors, without its
    extension; names that would still collide (``x.png``, ``x.jpg``) get the extension
    (``x-png``, ``x-jpg``), then, if need be, a number.
    """
    if not found:
        return []
    base = os.path.commonpath([anchor for _, anchor in found])
    stems = [Path(os.path.relpath(os.path.abspath(path), base)).with_suffix("").as_posix() for path, _ in found]
    taken = {}
    for stem in stems:
        taken[stem] = taken.get(stem, 0) + 1
    unique = []
    for (path, _), stem in zip(found, stems):
        if taken[stem] > 1 and path.suffix:
            stem = f"{stem}-{path.suffix[1:].lower()}"
        candidate, n = stem, 1
        while candidate in unique:
            n += 1
            candidate = f"{stem}-{n}"
        unique.append(candidate)
    return unique


# -- prediction ----------------------------------------------------------------------------------

def predict_images(checkpoint, images, out_dir, *, uncertainty: bool = False, samples: int = 8,
                   size=None, device=None) -> list[dict]:
    """Segment image files (or every image in folders) with a trained checkpoint; write PNGs into ``out_dir``.

    For each image: ``STEM_labels.png`` (the prediction in CamVid's colours), ``STEM_overlay.png``
    (the colours blended over the photo), ``STEM_ids.png`` (the raw class indices 0..10, one byte
    a pixel, as in CamVid's annotation folders) and, with ``uncertainty=True`` (models with
    dropout: Bayesian SegNet), ``STEM_uncertainty.png`` from ``samples`` Monte-Carlo dropout
    passes.  ``STEM`` is the image's path below the inputs' common folder, without extension
    (see the module's docstring), so outputs never overwrite each other.  The network sees the
    image resized to its training size (``size`` overrides it; too small for the model is an
    error); the outputs have the image's own size.  Returns one dict of paths per image
    (``{"image", "labels", "overlay", "ids"[, "uncertainty"]}``), in input order.
    """
    from .viz import save_prediction

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    found = find_images(images, exclude=out_dir)
    stems = output_stems(found)
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = checkpoint_inputs(extra, checkpoint)
    size = check_input_size(model, train_size if size is None else size,
                            "--size" if size is not None else f"the training size of {checkpoint}")
    if uncertainty and not any(isinstance(m, Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(
            f"uncertainty needs a model with dropout (a bayesian-* architecture); {checkpoint} holds {model.arch!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (path, _), stem in zip(found, stems):
        image = read_image(path)
        x = to_device(normalize(resize_image(image, size), mean, std), model.device)
        spread = None
        with no_grad():
            if uncertainty:
                mean_probs, spread = model.predict_mc(x, samples=samples)
                labels = to_numpy(mean_probs.argmax(axis=1))[0]
                spread = resize_label(to_numpy(spread)[0], image.shape[:2])
            else:
                labels = to_numpy(model.predict(x))[0]
        labels = resize_label(labels.astype(np.uint8), image.shape[:2])
        written.append({"image": str(path), **save_prediction(out_dir, stem, image, labels, spread)})
    return written

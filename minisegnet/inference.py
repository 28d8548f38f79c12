"""Segmenting image files with a trained checkpoint (``minisegnet predict``).

A checkpoint written by the training loop holds what the network expects of its input: the
image size it was trained at and the normalisation mean/std of its training split
(:func:`~minisegnet.run_folder.checkpoint_preprocessing`).  Each image is resized to that size
and normalised, the network predicts inside ``with no_grad():`` (nothing kept for a backward),
and the labels are resized back to the image's own size (nearest neighbour: labels are not
blended), so the outputs lie over the photo.  Bayesian models can also give Monte-Carlo dropout
uncertainty.  The files are drawn by :func:`minisegnet.viz.save_prediction`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import to_device, to_numpy
from .checkpoint import load_model
from .data import normalize, parse_size, read_image, resize_image, resize_label
from .grad_mode import no_grad
from .layers import Dropout
from .run_folder import checkpoint_preprocessing

__all__ = ["predict_images"]


def predict_images(checkpoint, images, out_dir, *, uncertainty: bool = False, samples: int = 8,
                   size=None, device=None) -> list[dict]:
    """Segment image files with a trained checkpoint; write PNGs into ``out_dir``.

    For each image ``NAME.ext``: ``NAME_labels.png`` (the prediction in CamVid's colours),
    ``NAME_overlay.png`` (the colours blended over the photo), ``NAME_ids.png`` (the raw class
    indices 0..10, one byte a pixel, as in CamVid's annotation folders) and, with
    ``uncertainty=True`` (models with dropout: Bayesian SegNet), ``NAME_uncertainty.png`` from
    ``samples`` Monte-Carlo dropout passes.  The network sees the image resized to its training
    size (``size`` overrides it); the outputs have the image's own size.  Returns one dict of
    paths per image (``{"image", "labels", "overlay", "ids"[, "uncertainty"]}``).
    """
    from .viz import save_prediction

    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = checkpoint_preprocessing(extra, checkpoint)
    size = train_size if size is None else parse_size(size)
    if uncertainty and not any(isinstance(m, Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(
            f"uncertainty needs a model with dropout (a bayesian-* architecture); {checkpoint} holds {model.arch!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
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
        written.append({"image": str(path), **save_prediction(out_dir, path.stem, image, labels, spread)})
    return written

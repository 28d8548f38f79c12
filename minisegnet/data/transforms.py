"""Resizing, augmentation and normalisation of (image, label) pairs, on the host with NumPy and Pillow.

Images travel as uint8 ``(H, W, 3)`` and labels as uint8 ``(H, W)`` until the very end, where
:func:`normalize` turns a batch of images into the float32 NCHW array a model eats.  Two rules keep
image and label aligned:

- images are resized **bilinearly** (a blend of neighbours is a plausible colour) but labels with
  **nearest neighbour** (a blend of class 3 and class 5 is not class 4);
- every geometric change (scale, flip, crop, pad) is applied to both with the **same** parameters;
  where a change has to invent pixels (the border a shrunken image is padded with), the image gets
  0 and the label the void label, which the loss ignores.

The random choices come from a ``numpy.random.Generator`` passed in by the caller, never from a
global RNG: :class:`~minisegnet.data.BatchLoader` derives one per batch from ``(seed, epoch, batch)``,
which is what makes an interrupted training run resumable batch for batch.

:class:`TrainTransform` (resize, optional random scale jitter, random flip, optional random crop; the
jittered pair is cropped or padded back to the output size) and :class:`EvalTransform` (resize only)
bundle these for the loader; each is a callable ``(image, label, rng) -> (image, label)``.
"""
from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image

__all__ = [
    "parse_size",
    "resize_image",
    "resize_label",
    "hflip",
    "random_crop",
    "compute_mean_std",
    "normalize",
    "TrainTransform",
    "EvalTransform",
]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(size) -> tuple[int, int]:
    """``"180x240"`` (height × width) or a pair of ints -> ``(180, 240)``; ``ValueError`` otherwise."""
    if isinstance(size, str):
        match = _SIZE_RE.match(size)
        if not match:
            raise ValueError(f"bad size {size!r}: expected HEIGHTxWIDTH, e.g. 180x240")
        h, w = int(match.group(1)), int(match.group(2))
    else:
        try:
            h, w = size
        except (TypeError, ValueError):
            raise ValueError(f"bad size {size!r}: expected (height, width) or a string like '180x240'") from None
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)):
            raise ValueError(f"bad size {size!r}: height and width must be integers")
        h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"bad size {size!r}: height and width must be positive")
    return h, w


def _check_image(image, who):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{who}: expected a uint8 image (H, W, 3), got {desc}")


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` image to ``size = (H', W')`` with Pillow.

    Pillow's bilinear filter widens with the scale factor when shrinking, so it also low-passes (no
    aliasing when halving 360×480 to 180×240).  Returns the input itself when it already has that size.
    """
    _check_image(image, "resize_image")
    h, w = parse_size(size)
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of label maps ``(..., H, W)`` to ``(..., H', W')``; values never mix.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * H / H')`` (the input pixel under the
    output pixel's centre) along each axis, so halving takes every second pixel and doubling repeats
    each pixel twice.  Any integer dtype and any number of leading axes; one fancy-indexing gather.
    """
    label = np.asarray(label)
    if label.ndim < 2:
        raise ValueError(f"resize_label: expected labels (..., H, W), got shape {label.shape}")
    h, w = parse_size(size)
    h_in, w_in = label.shape[-2:]
    if (h_in, w_in) == (h, w):
        return label
    rows = ((np.arange(h) + 0.5) * (h_in / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (w_in / w)).astype(np.intp)
    return label[..., rows[:, None], cols[None, :]]


def hflip(image: np.ndarray, label: np.ndarray):
    """Mirror an image ``(..., H, W, 3)`` and its label ``(..., H, W)`` left-right (views, no copy)."""
    return image[..., ::-1, :], label[..., ::-1]


def random_crop(image: np.ndarray, label: np.ndarray, size, rng: np.random.Generator):
    """Cut the same random ``size = (h, w)`` window out of an image ``(H, W, 3)`` and its label ``(H, W)``.

    The window's top-left corner is uniform over every position that fits.  Returns views.
    """
    h, w = parse_size(size)
    H, W = label.shape[-2:]
    if image.shape[-3:-1] != (H, W):
        raise ValueError(f"random_crop: image {image.shape} and label {label.shape} differ in size")
    if h > H or w > W:
        raise ValueError(f"random_crop: crop {h}x{w} is larger than the image {H}x{W}")
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    return image[..., top : top + h, left : left + w, :], label[..., top : top + h, left : left + w]


def compute_mean_std(data):
    """Per-channel mean and standard deviation of uint8 RGB images, in ``[0, 1]`` units.

    ``data`` is a uint8 array ``(N, H, W, 3)`` / ``(H, W, 3)``, a list of such images, or a dataset whose
    items are ``(image, label)``.  Computed exactly from a per-channel histogram of the 256 byte
    values (integer counts, no float round-off and no float copy of the data):
    ``mean = Σ v·n_v / (255 N)``, ``var = Σ v²·n_v / (255² N) − mean²``.  Returns two float32 arrays
    of shape (3,) (population std), to be stored with the model and given to :func:`normalize`.
    """
    hist = np.zeros((3, 256), dtype=np.int64)

    def add(image):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape[-1] != 3:
            raise ValueError(f"compute_mean_std: expected uint8 RGB images (..., 3), got {image.dtype} {image.shape}")
        for c in range(3):
            hist[c] += np.bincount(image[..., c].ravel(), minlength=256)

    if isinstance(data, np.ndarray):
        if data.ndim == 3:
            add(data)
        else:
            for image in data:  # one image at a time keeps the channel copies small
                add(image)
    else:
        stacked = getattr(data, "images", None)  # an ArrayDataset
        items = stacked if isinstance(stacked, np.ndarray) else (data[i] for i in range(len(data)))
        for item in items:
            add(item[0] if isinstance(item, tuple) else item)
    count = hist[0].sum()
    if count == 0:
        raise ValueError("compute_mean_std: no pixels given")
    values = np.arange(256, dtype=np.float64)
    mean = hist @ values / count
    var = hist @ (values * values) / count - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    return (mean / 255).astype(np.float32), (std / 255).astype(np.float32)


def normalize(images: np.ndarray, mean=None, std=None, dtype=np.float32, out=None) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` (or one ``(H, W, 3)``) -> normalised ``(N, 3, H, W)`` float array.

    ``x = (images / 255 - mean) / std`` per channel, written as ``images * a + b`` with
    ``a = 1 / (255 std)`` and ``b = -mean / std`` straight into the NCHW output (two passes, no
    temporary).  ``mean=None`` means 0 and ``std=None`` means 1 (plain scaling to ``[0, 1]``).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"normalize: expected images (N, H, W, 3), got shape {images.shape}")
    mean = np.zeros(3) if mean is None else np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.ones(3) if std is None else np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"normalize: mean and std need 3 values (RGB), got {mean.shape} and {std.shape}")
    if np.any(std <= 0):
        raise ValueError(f"normalize: std must be positive, got {std}")
    n, h, w, _ = images.shape
    if out is None:
        out = np.empty((n, 3, h, w), dtype=dtype)
    scale = (1.0 / (255.0 * std)).astype(out.dtype)[:, None, None]
    shift = (-mean / std).astype(out.dtype)[:, None, None]
    np.multiply(images.transpose(0, 3, 1, 2), scale, out=out)
    out += shift
    return out


class EvalTransform:
    """Resize only (or nothing when ``size`` is None): ``(image, label, rng) -> (image, label)``."""

    def __init__(self, size=None):
        self.size = None if size is None else parse_size(size)

    def __call__(self, image, label, rng=None):
        if self.size is not None:
            image, label = resize_image(image, self.size), resize_label(label, self.size)
        return image, label

    def __repr__(self):
        return f"EvalTransform(size={self.size})"


def scale_range(value) -> tuple | None:
    """``value`` as a scale-jitter range ``(lo, hi)`` of floats, finite with ``0 < lo <= hi``; None if it is not one."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        return None
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in (lo, hi)):
        return None
    lo, hi = float(lo), float(hi)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi else None


def _check_scale(scale):
    """``scale`` as ``(lo, hi)`` floats (:func:`scale_range`); ``ValueError`` naming TrainTransform otherwise."""
    checked = scale_range(scale)
    if checked is None:
        raise ValueError(f"TrainTransform: scale must be a pair (lo, hi) of finite numbers with 0 < lo <= hi, "
                         f"e.g. (0.75, 1.25), got {scale!r}")
    return checked


def _crop_or_pad(image, label, size, rng, fill_label):
    """Bring an image ``(H, W, 3)`` and its label ``(H, W)`` to ``size = (h, w)`` at a random offset, per axis.

    Along an axis where the pair is longer, a random window is cut (as :func:`random_crop`); where it is
    shorter, it is placed at a random offset in a canvas of image 0 and label ``fill_label``.  The
    offsets are drawn top first, then left, one ``rng.integers`` each (as :func:`random_crop` draws them),
    so a pair that needs no padding gets exactly :func:`random_crop`'s window and views.
    """
    h, w = size
    H, W = label.shape
    if H >= h and W >= w:
        return random_crop(image, label, size, rng)
    src, dst = [], []
    for have, want in ((H, h), (W, w)):
        offset = int(rng.integers(0, abs(have - want) + 1))
        n = min(have, want)
        src.append(slice(offset, offset + n) if have >= want else slice(0, n))
        dst.append(slice(0, n) if have >= want else slice(offset, offset + n))
    out_image = np.zeros((h, w, image.shape[2]), dtype=image.dtype)
    out_label = np.full((h, w), fill_label, dtype=label.dtype)
    out_image[dst[0], dst[1]] = image[src[0], src[1]]
    out_label[dst[0], dst[1]] = label[src[0], src[1]]
    return out_image, out_label


class TrainTransform(EvalTransform):
    """Resize to ``size`` (None: keep), jitter the scale, flip left-right, then crop or pad to the output size.

    Args:
        size: ``(H, W)`` or ``"HxW"`` to resize to first, or None (e.g. when the dataset is already
            resized by :func:`~minisegnet.data.cache_resized`).
        flip: probability of a horizontal flip (``True`` means 0.5, ``False`` 0).
        crop: ``(h, w)`` of a random crop taken after resizing, or None.
        scale: ``(lo, hi)`` with ``0 < lo <= hi`` (e.g. ``(0.75, 1.25)``): random scale jitter, or None.

    The steps, in order: resize to ``size``; with ``scale``, draw ``s`` uniformly in ``[lo, hi)`` and
    resize the pair to ``(round(s·H), round(s·W))`` (at least 1), the image bilinearly
    (:func:`resize_image`) and the label by nearest neighbour (:func:`resize_label`); flip; then bring
    the pair to the **output size**, ``crop`` when given, else the size the pair had before the
    jitter (so every pair of a batch has the same shape): a random window where it is larger, and where
    it is smaller (s < 1) a random placement in a border of image 0 and label :data:`VOID_LABEL`.

    The jitter is label-preserving: nearest-neighbour resizing copies label values and never blends
    two classes into a third, and the padded border is void, which the loss and the metrics ignore;
    so it adds no wrong label, only the same scene seen nearer or farther.

    All randomness comes from the ``rng`` argument, so the same generator state gives the same pair
    (and a resumed run the same batches).  ``lo == hi`` is a fixed scale and draws nothing for ``s``;
    ``scale=(1, 1)`` therefore gives exactly the pairs, and uses the generator exactly as, ``scale=None``.
    """

    def __init__(self, size=None, flip=True, crop=None, scale=None):
        super().__init__(size)
        p = 0.5 if flip is True else 0.0 if flip is False else float(flip)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"TrainTransform: flip probability must be in [0, 1], got {flip}")
        self.flip = p
        self.crop = None if crop is None else parse_size(crop)
        self.scale = None if scale is None else _check_scale(scale)
        from .camvid import VOID_LABEL  # here: camvid imports this module

        self.void_label = VOID_LABEL

    def __call__(self, image, label, rng):
        image, label = super().__call__(image, label)
        out_size = self.crop if self.crop is not None else label.shape[-2:]
        if self.scale is not None:
            lo, hi = self.scale
            s = lo if lo == hi else float(rng.uniform(lo, hi))
            h, w = label.shape[-2:]
            scaled = (max(1, round(s * h)), max(1, round(s * w)))
            image, label = resize_image(image, scaled), resize_label(label, scaled)
        if self.flip and rng.random() < self.flip:
            image, label = hflip(image, label)
        if self.crop is not None or label.shape[-2:] != tuple(out_size):
            image, label = _crop_or_pad(image, label, out_size, rng, self.void_label)
        return image, label

    def __repr__(self):
        return f"TrainTransform(size={self.size}, flip={self.flip}, crop={self.crop}, scale={self.scale})"

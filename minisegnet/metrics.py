"""How good is a segmentation? The four numbers of the SegNet article, computed on the host.

SegNet (Badrinarayanan et al., 2017, section 5) reports four measures, because each one
favours something different:

Let ``M`` be the confusion matrix accumulated over a whole split, rows = ground-truth class,
columns = predicted class, void pixels left out: ``M[i, j]`` counts the pixels of class ``i``
predicted as ``j``.  With ``TP_i = M[i, i]``, ``GT_i = sum_j M[i, j]`` (pixels of class i) and
``PR_i = sum_j M[j, i]`` (pixels predicted as i):

* **G, global accuracy** ``G = sum_i TP_i / sum_ij M[i, j]``: the fraction of all (non-void)
  pixels labelled correctly.  Dominated by the large classes: on CamVid road, sky and building
  are about 3/4 of the pixels, so a model that ignores poles and sign-symbols can still score
  a high G.
* **C, class-average accuracy** ``C = mean_i TP_i / GT_i``: the recall of each class, averaged
  with equal weight.  A pole counts as much as the road, so C rewards the small classes.
  The mean runs over the classes present in the ground truth (``GT_i > 0``); a class absent from
  the whole split has no recall and is left out (on the CamVid test split all 11 are present, so
  this is SegNet's mean over the 11 classes).
* **mIoU, mean intersection over union** ``IoU_i = TP_i / (GT_i + PR_i - TP_i)``, averaged over
  the 11 classes.  Unlike C it also punishes false positives: predicting "pole" everywhere gives
  the pole a recall of 1 but an IoU near 0.  A class with neither ground truth nor prediction has
  an undefined IoU (NaN) and is left out of the mean; a class predicted but absent from the ground
  truth has IoU 0 and counts.  The PASCAL VOC measure, and the hardest of the three.
* **BF, boundary F1** (Csurka et al., 2013, "What is a good evaluation measure for semantic
  segmentation?"): G, C and mIoU count pixels, so a blurry outline costs little.  BF looks only at
  the class contours: per image and per class, the boundary pixels of the prediction and of the
  ground truth are matched within a tolerance of 0.75% of the image diagonal, giving a precision
  and a recall and their F1; the F1 is averaged over the classes present in the image, then over
  the images.  Details and the choices made are in :func:`boundary_f1`.

Everything here is NumPy: metrics run once per batch on small integer label maps, so CuPy
arrays are simply copied to the host (:func:`minisegnet.backend.to_numpy`) first.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import to_numpy

__all__ = [
    "ConfusionMatrix",
    "BoundaryF1",
    "boundary_f1",
    "boundary_f1_per_class",
    "boundary_tolerance",
    "boundary_map",
    "dilate_disk",
    "evaluate_predictions",
]

DEFAULT_NUM_CLASSES = 11  # CamVid's 11 classes (minisegnet.data.camvid.NUM_CLASSES)
DEFAULT_IGNORE_INDEX = 11  # CamVid's void label (minisegnet.data.camvid.VOID_LABEL)


# --------------------------------------------------------------------------------------------
# input checks shared by the confusion matrix and the boundary score
# --------------------------------------------------------------------------------------------
def _as_label_array(name: str, where: str, a) -> np.ndarray:
    a = to_numpy(a)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{where}: expected {name} as an integer label array, got dtype {a.dtype}")
    return a


def _out_of_range(values: np.ndarray, num_classes: int) -> np.ndarray:
    return (values < 0) | (values >= num_classes)


def _check_pair(where: str, pred, target, num_classes: int, ignore_index):
    """Validate a prediction/target pair; return (pred, target, valid) as NumPy arrays.

    ``valid`` marks the pixels that are scored (target != ignore_index).  Target values that
    are neither a class nor ``ignore_index`` and predictions outside ``[0, num_classes)`` at
    scored pixels raise ValueError (predictions at void pixels are never looked at).
    """
    pred = _as_label_array("predictions", where, pred)
    target = _as_label_array("targets", where, target)
    if pred.shape != target.shape:
        raise ValueError(
            f"{where}: predictions and targets must have the same shape, got {pred.shape} and {target.shape}"
        )
    valid = np.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    if target.size == 0:
        return pred, target, valid
    # fast path: min/max over the whole arrays; the exact, masked check only when they fail
    t_lo, t_hi = int(target.min()), int(target.max())
    allowed_hi = num_classes if ignore_index == num_classes else num_classes - 1
    if t_lo < 0 or t_hi > allowed_hi:
        bad = _out_of_range(target, num_classes) & valid
        if bad.any():
            values = np.unique(target[bad])[:5].tolist()
            raise ValueError(
                f"{where}: target labels must be in [0, {num_classes}) or ignore_index={ignore_index}, "
                f"found {values}"
            )
    if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
        bad = _out_of_range(pred, num_classes) & valid
        if bad.any():
            values = np.unique(pred[bad])[:5].tolist()
            raise ValueError(f"{where}: predicted labels must be in [0, {num_classes}), found {values}")
    return pred, target, valid


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (and no warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    return float(values[keep].mean()) if keep.any() else float("nan")


# --------------------------------------------------------------------------------------------
# the confusion matrix: G, C, mIoU
# --------------------------------------------------------------------------------------------
class ConfusionMatrix:
    """A ``num_classes x num_classes`` confusion matrix accumulated over a whole split.

    ``matrix[i, j]`` (int64) counts the pixels whose ground truth is ``i`` and whose prediction
    is ``j``; pixels whose target equals ``ignore_index`` (CamVid's void, 11) are not counted.
    Accumulate every batch of a split with :meth:`update`, then read G, C and mIoU once: the
    scores of a split are ratios of sums over the split, not means of per-batch scores.

    Example::

        cm = ConfusionMatrix()
        for images, labels in loader:
            cm.update(model.predict(images), labels)
        print(cm.format_table(CLASS_NAMES))
    """

    def __init__(self, num_classes: int = DEFAULT_NUM_CLASSES, ignore_index: int | None = DEFAULT_IGNORE_INDEX):
        if int(num_classes) < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix, ignore_index: int | None = DEFAULT_IGNORE_INDEX) -> "ConfusionMatrix":
        """Wrap an existing (K, K) count matrix (rows = ground truth, columns = prediction)."""
        matrix = np.asarray(to_numpy(matrix))
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"ConfusionMatrix.from_matrix: expected a square (K, K) matrix, got shape {matrix.shape}")
        if matrix.dtype.kind not in "iu" or (matrix < 0).any():
            raise ValueError("ConfusionMatrix.from_matrix: expected non-negative integer counts")
        cm = cls(matrix.shape[0], ignore_index)
        cm.matrix[...] = matrix
        return cm

    # ---- accumulation -----------------------------------------------------------------------
    def update(self, pred, target) -> "ConfusionMatrix":
        """Add the pixels of ``pred`` vs ``target`` (same shape, any number of dims, e.g. (N, H, W)).

        One vectorised ``bincount`` of ``num_classes * target + pred`` (void pixels sent to a spare bin).
        Raises ValueError on a shape mismatch or a label out of range (a target that is neither a
        class nor ``ignore_index``; a prediction outside ``[0, num_classes)`` at a scored pixel),
        TypeError on non-integer labels.  Returns ``self``.
        """
        pred, target, valid = _check_pair("ConfusionMatrix.update", pred, target, self.num_classes, self.ignore_index)
        k = self.num_classes
        flat = target.astype(np.intp).ravel() * k  # cell index k * target + pred ...
        flat += pred.astype(np.intp, copy=False).ravel()
        flat[~valid.ravel()] = k * k  # ... and one extra bin that collects the void pixels
        self.matrix += np.bincount(flat, minlength=k * k + 1)[: k * k].reshape(k, k)
        return self

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self.matrix[...] = 0

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add the counts of ``other`` (e.g. from another worker or split); returns ``self``."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"ConfusionMatrix.merge: expected a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                "ConfusionMatrix.merge: matrices differ: "
                f"num_classes {self.num_classes} vs {other.num_classes}, "
                f"ignore_index {self.ignore_index} vs {other.ignore_index}"
            )
        self.matrix += other.matrix
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.copy().merge(other)

    def copy(self) -> "ConfusionMatrix":
        return ConfusionMatrix.from_matrix(self.matrix.copy(), self.ignore_index)

    @property
    def num_pixels(self) -> int:
        """Number of scored (non-void) pixels counted so far."""
        return int(self.matrix.sum())

    # ---- scores -----------------------------------------------------------------------------
    def _counts(self):
        m = self.matrix
        tp = np.diag(m).astype(np.float64)
        gt = m.sum(axis=1).astype(np.float64)  # pixels of each class in the ground truth
        pr = m.sum(axis=0).astype(np.float64)  # pixels predicted as each class
        return tp, gt, pr

    def global_accuracy(self) -> float:
        """G = sum_i M[i,i] / sum_ij M[i,j]: correct pixels over all scored pixels (NaN if none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total > 0 else float("nan")

    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each class, ``M[i,i] / sum_j M[i,j]``; NaN for a class with no ground-truth pixel."""
        tp, gt, _ = self._counts()
        return np.divide(tp, gt, out=np.full(self.num_classes, np.nan), where=gt > 0)

    def class_accuracy(self) -> float:
        """C = mean of :meth:`per_class_accuracy` over the classes present in the ground truth.

        Classes with no ground-truth pixel in everything accumulated (NaN recall) are excluded
        from the mean rather than counted as 0 or 1.  NaN if no pixel was counted.
        """
        return _nanmean(self.per_class_accuracy())

    def per_class_iou(self) -> np.ndarray:
        """IoU_i = M[i,i] / (GT_i + PR_i - M[i,i]); NaN for a class with no ground truth and no prediction."""
        tp, gt, pr = self._counts()
        union = gt + pr - tp
        return np.divide(tp, union, out=np.full(self.num_classes, np.nan), where=union > 0)

    def mean_iou(self) -> float:
        """mIoU: mean of :meth:`per_class_iou` over the classes, NaN entries (class neither in the
        ground truth nor predicted) left out.  A class predicted but absent from the ground truth
        has IoU 0 and lowers the mean."""
        return _nanmean(self.per_class_iou())

    def summary(self, prefix: str = "") -> dict:
        """The scores as a plain dict of Python floats/lists (JSON-ready; undefined scores are NaN).

        Keys (each with ``prefix`` in front, e.g. ``prefix="val_"``): ``global_accuracy``,
        ``class_accuracy``, ``mean_iou``, ``per_class_iou``, ``per_class_accuracy``, ``num_pixels``.
        """
        out = {
            "global_accuracy": self.global_accuracy(),
            "class_accuracy": self.class_accuracy(),
            "mean_iou": self.mean_iou(),
            "per_class_iou": [float(v) for v in self.per_class_iou()],
            "per_class_accuracy": [float(v) for v in self.per_class_accuracy()],
            "num_pixels": self.num_pixels,
        }
        return {prefix + key: value for key, value in out.items()}

    def format_table(self, class_names=None, boundary_f1: float | None = None) -> str:
        """A text table: one row per class (IoU, accuracy, share of ground-truth pixels), then G, C, mIoU.

        ``class_names`` defaults to CamVid's names when there are 11 classes (``class 0`` ... otherwise).
        Undefined values print as ``-``.  Pass ``boundary_f1`` to add BF to the last line.
        """
        names = _default_class_names(self.num_classes) if class_names is None else [str(n) for n in class_names]
        if len(names) != self.num_classes:
            raise ValueError(
                f"ConfusionMatrix.format_table: expected {self.num_classes} class names, got {len(names)}"
            )
        width = max(len("class"), *(len(n) for n in names))
        _, gt, _ = self._counts()
        total = gt.sum()

        def fmt(v: float) -> str:
            return f"{v:7.3f}" if not math.isnan(v) else f"{'-':>7}"

        lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'GT share':>8}", "-" * (width + 30)]
        for name, iou, acc, n in zip(names, self.per_class_iou(), self.per_class_accuracy(), gt):
            share = f"{100.0 * n / total:7.2f}%" if total > 0 else f"{'-':>8}"
            lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}  {share}")
        lines.append("-" * (width + 30))
        last = (
            f"G {self.global_accuracy():.4f}   C {self.class_accuracy():.4f}   mIoU {self.mean_iou():.4f}"
        )
        if boundary_f1 is not None:
            last += f"   BF {boundary_f1:.4f}"
        lines.append(last + f"   ({self.num_pixels} pixels)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={self.num_pixels})"
        )


def _default_class_names(num_classes: int) -> list[str]:
    if num_classes == DEFAULT_NUM_CLASSES:
        try:
            from .data.camvid import CLASS_NAMES
        except ImportError:  # the data package is optional for the metrics
            pass
        else:
            return [str(n) for n in CLASS_NAMES]
    return [f"class {i}" for i in range(num_classes)]


# --------------------------------------------------------------------------------------------
# boundary F1 (BF)
# --------------------------------------------------------------------------------------------
def boundary_tolerance(height: int, width: int, tolerance: float = 0.0075) -> float:
    """The BF matching distance in pixels: ``tolerance * sqrt(H^2 + W^2)`` (SegNet: 0.75% of the diagonal).

    Not rounded: boundary pixels match when their Euclidean distance is ``<= theta``, and since
    pixel offsets are integers a real ``theta`` is exact.  360x480 (diagonal 600) gives 4.5 px,
    i.e. every offset with ``dy^2 + dx^2 <= 20.25``: 4 px along the axes, (4, 2) and (3, 3) diagonally.
    """
    return float(tolerance) * math.hypot(int(height), int(width))


def boundary_map(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels on a class contour: a valid pixel with a valid 4-neighbour of another label.

    For one class ``c`` the boundary is ``boundary_map(labels) & (labels == c)``, which is the
    classic ``mask XOR erode(mask)`` with a 4-connected cross, except that two kinds of neighbour
    never make a boundary: pixels outside the image (the image frame is not a class contour) and
    invalid (void) pixels (an unlabelled region has no contour to match).  Both sides of a label
    change are marked, so each class gets its own inner boundary.
    """
    labels = np.asarray(labels)
    if valid is None:
        valid = np.ones(labels.shape, dtype=bool)
    edge = np.zeros(labels.shape, dtype=bool)
    # vertical neighbours (rows y and y+1), then horizontal neighbours (columns x and x+1)
    diff = (labels[1:, :] != labels[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[1:, :] |= diff
    edge[:-1, :] |= diff
    diff = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[:, 1:] |= diff
    edge[:, :-1] |= diff
    return edge


def dilate_disk(masks: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of boolean maps ``(..., H, W)`` by the Euclidean disk ``dy^2 + dx^2 <= radius^2``.

    ``out[y, x]`` is True when some True pixel lies within distance ``radius`` of ``(y, x)``.
    The disk is a stack of horizontal segments, row ``dy`` having half-width
    ``w(dy) = floor(sqrt(radius^2 - dy^2))``.  Going from the outer rows (narrow) to the centre
    row (wide), a horizontal dilation is widened one pixel at a time and each row's result is
    OR-ed in shifted up and down by ``dy``: about ``4 * radius`` shifted ORs of the whole map in
    place of one per disk offset (~``pi * radius^2``), and no loop over pixels.
    """
    masks = np.asarray(masks, dtype=bool)
    r = int(math.floor(radius + 1e-9)) if radius >= 0 else -1
    if r < 0:
        raise ValueError(f"dilate_disk: radius must be >= 0, got {radius}")
    if r == 0:
        return masks.copy()
    out = np.zeros_like(masks)
    row = masks.copy()  # horizontal dilation of `masks` by a segment of half-width `w`
    w = 0
    for dy in range(r, -1, -1):
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        while w < half:
            w += 1
            row[..., w:] |= masks[..., :-w]
            row[..., :-w] |= masks[..., w:]
        if dy == 0:
            out |= row
        else:
            out[..., dy:, :] |= row[..., :-dy, :]
            out[..., :-dy, :] |= row[..., dy:, :]
    return out


def boundary_f1_per_class(
    pred,
    target,
    num_classes: int = DEFAULT_NUM_CLASSES,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    tolerance: float = 0.0075,
    *,
    tolerance_px: float | None = None,
) -> np.ndarray:
    """Boundary F1 of each class for one image: a ``(num_classes,)`` float64 array, NaN for absent classes.

    ``pred`` and ``target`` are (H, W) integer label maps.  For each class ``c`` present in the
    ground truth (see :func:`boundary_f1` for the rules), with ``B_p`` and ``B_g`` the boundary
    pixels of class ``c`` in the prediction and the ground truth (:func:`boundary_map`) and
    ``D(B)`` the pixels within ``theta`` of ``B`` (:func:`dilate_disk`)::

        P = |B_p & D(B_g)| / |B_p|        R = |B_g & D(B_p)| / |B_g|        F1 = 2 P R / (P + R)
    """
    where = "boundary_f1"
    pred, target, valid = _check_pair(where, pred, target, num_classes, ignore_index)
    if target.ndim != 2:
        raise ValueError(f"{where}: expected one (H, W) label map per image, got shape {target.shape}")
    h, w = target.shape
    theta = boundary_tolerance(h, w, tolerance) if tolerance_px is None else float(tolerance_px)
    scores = np.full(num_classes, np.nan)

    present = np.flatnonzero(np.bincount(target[valid].astype(np.int64), minlength=num_classes))
    if present.size == 0:
        return scores
    # Void pixels of the ground truth are unscored in the prediction too: mark them with -1 there,
    # so that neither map has a contour inside or along the void region.
    fill = -1
    gt = np.where(valid, target.astype(np.int64), fill)
    pr = np.where(valid, pred.astype(np.int64), fill)
    classes = present[:, None, None]
    gt_b = boundary_map(gt, valid)[None] & (gt[None] == classes)  # (k, H, W) boundaries per class
    pr_b = boundary_map(pr, valid)[None] & (pr[None] == classes)
    gt_hit = (gt_b & dilate_disk(pr_b, theta)).sum(axis=(1, 2))  # GT contour found by the prediction
    pr_hit = (pr_b & dilate_disk(gt_b, theta)).sum(axis=(1, 2))  # predicted contour that is real
    n_gt = gt_b.sum(axis=(1, 2))
    n_pr = pr_b.sum(axis=(1, 2))
    # An empty contour has nothing to miss: precision (recall) is 1 when there is no predicted
    # (ground-truth) boundary pixel, so "no contour in either" scores 1 and "a contour in only
    # one of them" scores 0.
    precision = np.divide(pr_hit, n_pr, out=np.ones(len(present)), where=n_pr > 0)
    recall = np.divide(gt_hit, n_gt, out=np.ones(len(present)), where=n_gt > 0)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros(len(present)), where=denom > 0)
    predicted = np.bincount(pr[valid], minlength=num_classes)[present] > 0
    f1[~predicted] = 0.0  # a class of the ground truth that is never predicted scores 0
    scores[present] = f1
    return scores


def boundary_f1(
    pred,
    target,
    num_classes: int = DEFAULT_NUM_CLASSES,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    tolerance: float = 0.0075,
    *,
    tolerance_px: float | None = None,
) -> float:
    """The boundary F1 score (BF) of one image: the mean over its classes of the contour F1.

    Following SegNet (section 5: "the F1-measure for each class that is present in the ground
    truth test image is averaged to produce an image F1-measure"), with these rules:

    * **Present classes** are those with at least one non-void ground-truth pixel.  A class that
      is only predicted is not averaged (its false contours still lower the precision of the
      true classes they border).  A present class that is never predicted scores 0.
    * **Boundary pixels** of a class: the pixels of its mask with a 4-neighbour of another class
      (:func:`boundary_map`).  The image frame is not a boundary.
    * **Void**: ground-truth void pixels are unscored.  They are removed from the prediction too,
      and a neighbour that is void never makes a boundary, so contours along the void region
      (where the truth is unknown) are neither required nor penalised.
    * **Tolerance**: ``theta = tolerance * sqrt(H^2 + W^2)`` pixels, not rounded (4.5 px at
      360x480); pass ``tolerance_px`` to give it in pixels instead.  A boundary pixel matches
      when a boundary pixel of the other map lies at Euclidean distance ``<= theta``.
    * **Empty contours**: precision is 1 when the prediction has no boundary pixel of the class
      and recall is 1 when the ground truth has none; F1 = 2PR/(P+R), 0 when P+R = 0.  So a
      class covering the whole valid image, predicted everywhere, scores 1.

    Returns NaN for an image with no valid pixel (no present class).  Per-class scores:
    :func:`boundary_f1_per_class`; over a dataset: :class:`BoundaryF1`.
    """
    return _nanmean(
        boundary_f1_per_class(pred, target, num_classes, ignore_index, tolerance, tolerance_px=tolerance_px)
    )


class BoundaryF1:
    """The BF score of a split: :func:`boundary_f1` per image, averaged over the images.

    ``update(pred, target)`` takes one (H, W) image or a batch (N, H, W).  An image with no
    valid ground-truth pixel has no present class and is skipped (counted in ``skipped``).
    :meth:`value` is the mean over the scored images; :meth:`per_class` the mean BF of each class
    over the images where it is present.
    """

    def __init__(
        self,
        num_classes: int = DEFAULT_NUM_CLASSES,
        ignore_index: int | None = DEFAULT_IGNORE_INDEX,
        tolerance: float = 0.0075,
        *,
        tolerance_px: float | None = None,
    ):
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.tolerance = float(tolerance)
        self.tolerance_px = None if tolerance_px is None else float(tolerance_px)
        self.reset()

    def reset(self) -> None:
        self._image_scores: list[float] = []
        self._class_sum = np.zeros(self.num_classes, dtype=np.float64)
        self._class_count = np.zeros(self.num_classes, dtype=np.int64)
        self.skipped = 0

    def update(self, pred, target) -> "BoundaryF1":
        """Score each image of ``pred`` vs ``target`` ((H, W) or (N, H, W), same shape); returns ``self``."""
        pred = to_numpy(pred)
        target = to_numpy(target)
        if pred.shape != target.shape:
            raise ValueError(
                f"BoundaryF1.update: predictions and targets must have the same shape, got {pred.shape} and {target.shape}"
            )
        if target.ndim == 2:
            pred, target = pred[None], target[None]
        if target.ndim != 3:
            raise ValueError(f"BoundaryF1.update: expected (H, W) or (N, H, W) label maps, got shape {target.shape}")
        for p, t in zip(pred, target):  # BF is defined per image
            scores = boundary_f1_per_class(
                p, t, self.num_classes, self.ignore_index, self.tolerance, tolerance_px=self.tolerance_px
            )
            present = ~np.isnan(scores)
            if not present.any():
                self.skipped += 1
                continue
            self._image_scores.append(float(scores[present].mean()))
            self._class_sum[present] += scores[present]
            self._class_count[present] += 1
        return self

    def merge(self, other: "BoundaryF1") -> "BoundaryF1":
        """Add the images scored by ``other``; returns ``self``."""
        if not isinstance(other, BoundaryF1):
            raise TypeError(f"BoundaryF1.merge: expected a BoundaryF1, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"BoundaryF1.merge: num_classes {self.num_classes} vs {other.num_classes}")
        self._image_scores.extend(other._image_scores)
        self._class_sum += other._class_sum
        self._class_count += other._class_count
        self.skipped += other.skipped
        return self

    def __iadd__(self, other: "BoundaryF1") -> "BoundaryF1":
        return self.merge(other)

    @property
    def num_images(self) -> int:
        """Number of images scored so far."""
        return len(self._image_scores)

    @property
    def scores(self) -> np.ndarray:
        """The BF of each scored image, in order."""
        return np.asarray(self._image_scores, dtype=np.float64)

    def value(self) -> float:
        """BF of the split: mean over the scored images (NaN before any)."""
        return float(np.mean(self._image_scores)) if self._image_scores else float("nan")

    def per_class(self) -> np.ndarray:
        """Mean BF of each class over the images where it is present (NaN for a class never present)."""
        return np.divide(
            self._class_sum, self._class_count, out=np.full(self.num_classes, np.nan), where=self._class_count > 0
        )

    def __repr__(self) -> str:
        return f"BoundaryF1(num_classes={self.num_classes}, images={self.num_images}, value={self.value():.4f})"


def evaluate_predictions(
    predictions,
    targets,
    num_classes: int = DEFAULT_NUM_CLASSES,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    boundary: bool = True,
) -> dict:
    """All four scores of a set of predictions: :meth:`ConfusionMatrix.summary` plus ``boundary_f1``.

    ``predictions`` and ``targets``: (N, H, W) arrays, or equally long sequences of (H, W) or
    (n, H, W) arrays (images of different sizes are fine).  ``boundary=False`` skips BF (NaN).
    """
    if not isinstance(predictions, (list, tuple)):
        predictions, targets = [predictions], [targets]
    if len(predictions) != len(targets):
        raise ValueError(f"evaluate_predictions: {len(predictions)} predictions for {len(targets)} targets")
    cm = ConfusionMatrix(num_classes, ignore_index)
    bf = BoundaryF1(num_classes, ignore_index)
    for p, t in zip(predictions, targets):
        cm.update(p, t)
        if boundary:
            bf.update(p, t)
    out = cm.summary()
    out["boundary_f1"] = bf.value()
    return out

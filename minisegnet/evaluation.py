"""Scoring a network: :func:`evaluate` over a split, BatchNorm statistics, and scoring a saved checkpoint.

**The scores** are those of the whole split: one confusion matrix is accumulated over every
batch (void pixels left out), and global accuracy G, class-average accuracy C and mean IoU are
computed from it once (:class:`~minisegnet.metrics.ConfusionMatrix`), not averaged over batches.
The boundary F1 score (BF) is optional: it is computed per image and class, and is slower.

**At the labels' own resolution.**  Published CamVid scores are those of 360×480 label maps,
while a CPU run trains and predicts at 180×240.  Scoring the prediction against labels shrunk
to 180×240 is another measurement: shrinking drops every second row and column of the labels,
so thin classes (poles, sign symbols, pedestrians) lose pixels and boundaries move.  So the
labels are kept at their own size, and when a batch's labels are larger than the predicted class
map, the map is resized to them by nearest neighbour before it is counted (each predicted pixel
covers the label pixels under it: 2×2 of them at half size; the same rule as
:func:`~minisegnet.data.resize_label`, one gather).  That is the argmax at the network's size,
upsampled, not an upsampling of the scores: upsampling is only how a coarse prediction is laid
over a fine truth, and the argmax of upsampled nearest-neighbour scores would be the same map.
:func:`scoring_set` builds such a split (images at the network's size, labels at their own), and
every result says where it was scored: ``scored_at`` ``[H, W]``.  ``at_train_size=True``
(``--at-train-size``) scores against labels resized to the network's size instead, as before.
Synthetic scenes are drawn at the training size, so for them nothing changes.

**Inference keeps nothing.**  Every pass here runs inside ``with no_grad():``
(:mod:`minisegnet.grad_mode`): the layers store nothing for a backward and leave what they
stored before untouched, so scoring a model in the middle of a training step changes nothing
of that step, and an evaluation holds only the current feature map and the pooling indices.

**BatchNorm statistics.**  By default evaluation uses BatchNorm's running averages (momentum
0.1).  ``recompute_bn=True`` (``--recompute-bn``) does what SegNet's
``compute_bn_statistics.py`` does after training: one pass over the training images (no
augmentation) with the final weights, averaging each BatchNorm layer's batch mean and variance
into its running statistics (:func:`recompute_bn_statistics`).

**Reports.**  :func:`evaluation_report` gathers the scores of :func:`evaluate_checkpoint` with
what produced them (checkpoint, data folder, split, size) into one JSON-ready dict, and
:func:`write_json` writes it atomically (``minisegnet evaluate --json FILE``): a temporary file
beside ``FILE``, fsynced, renamed over it, so a reader never sees half a report.
"""
from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .atomic import write_atomically
from .backend import to_device, to_numpy
from .checkpoint import load_model
from .config import TrainConfig
from .data import (CLASS_NAMES, NUM_CLASSES, VOID_LABEL, ArrayDataset, BatchLoader, CamVid, SyntheticStreets,
                   find_camvid, parse_size, read_label, resize_image, resize_label)
from .grad_mode import no_grad
from .inference import check_input_size, checkpoint_inputs
from .layers import BatchNorm2d, Dropout
from .metrics import BoundaryF1, ConfusionMatrix
from .run_data import evenly_spaced
from .run_folder import json_ready

__all__ = ["evaluate", "recompute_bn_statistics", "evaluate_checkpoint", "evaluation_report", "write_json",
           "check_output_file", "ScoringSet", "scoring_set", "with_labels_at_own_size"]


def _batches(loader):
    return loader.iter_epoch(0) if hasattr(loader, "iter_epoch") else iter(loader)


def evaluate(model, loader, num_classes: int = NUM_CLASSES, ignore_index: int | None = VOID_LABEL,
             boundary: bool = False, samples: int | None = None, progress: bool = False) -> dict:
    """Score ``model`` on every batch of ``loader``: G, C, mIoU, per-class IoU (and BF).

    One confusion matrix is accumulated over the whole split (void pixels left out), so the
    scores are those of the split, not an average of per-batch scores.  ``boundary=True`` adds
    the boundary F1 score (slower: per image and class).  ``samples`` > 0 predicts with
    Monte-Carlo dropout (Bayesian SegNet: argmax of the mean of that many softmax samples).

    Labels larger (or smaller) than the prediction are scored at their own size: the predicted
    class map is resized to them by nearest neighbour first (see the module's docstring), so a
    loader over a :class:`ScoringSet` scores at the labels' resolution.

    Returns :meth:`~minisegnet.metrics.ConfusionMatrix.summary` (``global_accuracy``,
    ``class_accuracy``, ``mean_iou``, ``per_class_iou``, ...) plus ``boundary_f1`` and
    ``per_class_boundary_f1`` (NaN when not asked), ``confusion_matrix`` (a nested list),
    ``num_images`` and ``scored_at`` (``[H, W]`` of the label maps counted; None if they differ
    from batch to batch).  Runs inside ``no_grad()``; the model's modes are left as they were.
    ``progress=True`` shows a tqdm bar (images scored) on stderr.
    """
    from tqdm.auto import tqdm

    cm = ConfusionMatrix(num_classes, ignore_index)
    bf = BoundaryF1(num_classes, ignore_index) if boundary else None
    images = 0
    scored_at = set()
    dataset = getattr(loader, "dataset", None)
    bar = tqdm(total=len(dataset) if dataset is not None else None, desc="evaluate", unit="image",
               disable=not progress, dynamic_ncols=True, leave=False)
    with no_grad(), bar:
        for x, y in _batches(loader):
            x = to_device(x, model.device)
            if samples:
                mean_probs, _ = model.predict_mc(x, samples=samples)
                pred = to_numpy(mean_probs.argmax(axis=1))
            else:
                pred = to_numpy(model.predict(x))
            y = to_numpy(y)
            if pred.shape[-2:] != y.shape[-2:]:  # labels at their own resolution: lay the prediction over them
                pred = resize_label(pred, y.shape[-2:])
            scored_at.add(tuple(int(n) for n in y.shape[-2:]))
            cm.update(pred, y)
            if bf is not None:
                bf.update(pred, y)
            images += len(y)
            bar.update(len(y))
    out = cm.summary()
    out["boundary_f1"] = bf.value() if bf is not None else float("nan")
    per_class_bf = bf.per_class() if bf is not None else [float("nan")] * num_classes
    out["per_class_boundary_f1"] = [float(v) for v in per_class_bf]
    out["confusion_matrix"] = cm.matrix.tolist()
    out["num_images"] = images
    out["scored_at"] = list(scored_at.pop()) if len(scored_at) == 1 else None
    return out


def recompute_bn_statistics(model, loader, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance over ``loader`` with the current weights.

    What SegNet's ``compute_bn_statistics.py`` does after training: the running averages that
    BatchNorm kept during training mix statistics of weights that have since changed, so run
    the final network over the training images once more, in training mode (each layer
    normalised by its batch statistics, as during training), and store in each layer the
    *average* of its batch means and of its (unbiased) batch variances.  Here that is
    BatchNorm2d's ``momentum=None`` mode: a cumulative average (``1/k`` weight for the k-th
    batch) that starts afresh.  Dropout is off, and the pass runs inside ``no_grad()``:
    nothing is kept for backward.

    Use a loader without augmentation or shuffling.  Returns the number of batches used.
    Every module's mode and each layer's momentum are restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    saved_modes = [(m, m.training) for m in model.modules()]
    saved_momentum = [bn.momentum for bn in norms]
    used = 0
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, Dropout):
                m.eval()
        for bn in norms:
            bn.momentum = None  # cumulative average over the batches that follow
            bn.num_batches_tracked[...] = 0
        with no_grad():
            for x, _ in _batches(loader):
                if max_batches is not None and used >= max_batches:
                    break
                model.forward(to_device(x, model.device))
                used += 1
    finally:
        for bn, momentum in zip(norms, saved_momentum):
            bn.momentum = momentum
        for m, training in saved_modes:
            object.__setattr__(m, "training", training)  # this module only (train() would recurse)
    return used


class ScoringSet(ArrayDataset):
    """A split to score: images at the network's input size, labels at their own resolution.

    ``images`` uint8 ``(N, h, w, 3)`` and ``labels`` uint8 ``(N, H, W)``: an
    :class:`~minisegnet.data.ArrayDataset` whose labels need not share the images' size, so
    that :class:`~minisegnet.data.BatchLoader` gathers a batch with one indexing copy of each.
    ``ds[i]`` is ``(images[i], labels[i])``; ``size`` the images' ``(h, w)``, ``label_size``
    the labels' ``(H, W)``.  For scoring only: no training transform can take such pairs.
    """

    labels_share_image_size = False

    @property
    def label_size(self):
        """``(H, W)`` of the labels (where the split is scored)."""
        return tuple(self.labels.shape[1:3])

    def __repr__(self) -> str:
        (h, w), (lh, lw) = self.size, self.label_size
        return f"ScoringSet(images={len(self)}, size={h}x{w}, labels at {lh}x{lw})"


def _stacked(pairs, what: str, hint: str):
    """``(images, labels)`` arrays from a list of pairs that must share their sizes (else ``ValueError``)."""
    image_shape, label_shape = pairs[0][0].shape, pairs[0][1].shape
    for i, (image, label) in enumerate(pairs):
        if image.shape != image_shape or label.shape != label_shape:
            raise ValueError(f"{what}: item {i} has labels of {label.shape[0]}x{label.shape[1]} but item 0 has "
                             f"{label_shape[0]}x{label_shape[1]}; {hint}")
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def scoring_set(dataset, size, *, at_train_size: bool = False, workers: int = 2):
    """Every pair of ``dataset`` decoded once, ready to score: images at ``size``, labels at their own size.

    Images are resized to ``size`` (bilinear, what the network takes); labels stay as they are
    (CamVid: 360×480), or with ``at_train_size=True`` are resized to ``size`` too (nearest), the
    old way.  Returns an :class:`~minisegnet.data.ArrayDataset` when the labels end up at
    ``size``, else a :class:`ScoringSet`.  All labels must share one size (else ``ValueError``:
    score with ``at_train_size``).  ``workers`` threads decode in parallel.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("scoring_set: the dataset is empty")
    size = parse_size(size)

    def load(i):
        image, label = dataset[i]
        label = resize_label(label, size) if at_train_size else np.asarray(label)
        return resize_image(image, size), label

    if workers > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pairs = list(pool.map(load, range(n)))
    else:
        pairs = [load(i) for i in range(n)]
    images, labels = _stacked(pairs, "scoring_set", "score at the training size (--at-train-size)")
    names = getattr(dataset, "names", None)
    names = names if names is not None and len(names) == n else None
    if labels.shape[1:] == images.shape[1:3]:
        return ArrayDataset(images, labels, names=names)
    return ScoringSet(images, labels, names=names)


def with_labels_at_own_size(dataset, camvid: CamVid, workers: int = 2):
    """``dataset`` (resized images and labels of CamVid files) with the labels of ``camvid`` at their own size.

    What a training run's validation passes score on: the images the run already holds at its
    training size, and each image's label file read again, by image name, without resizing
    (only the label files are decoded: 101 of 360×480 for CamVid's val split, 17 MB).  Returns
    ``dataset`` itself when its labels already have that size (a run at 360×480), else a
    :class:`ScoringSet`.  ``ValueError`` when an image of ``dataset`` has no label in ``camvid``.
    """
    names = getattr(dataset, "names", None)
    label_files = dict(zip(camvid.names, camvid.label_paths))
    missing = [name for name in names if name not in label_files] if names is not None else ["(unnamed)"]
    if missing:
        raise ValueError(f"cannot score at the labels' resolution: {len(missing)} of the {len(dataset)} validation "
                         f"images ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) have no label in "
                         f"{camvid.root / (camvid.split + 'annot')}; score at the training size (--at-train-size)")
    paths = [label_files[name] for name in names]
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            labels = list(pool.map(read_label, paths))
    else:
        labels = [read_label(path) for path in paths]
    first = labels[0].shape
    odd = next((path for path, label in zip(paths, labels) if label.shape != first), None)
    if odd is not None:
        raise ValueError(f"cannot score at the labels' resolution: {odd} is not {first[0]}x{first[1]} like "
                         f"{paths[0]}; score at the training size (--at-train-size)")
    images = dataset.images if hasattr(dataset, "images") else np.stack([dataset[i][0] for i in range(len(dataset))])
    if first == tuple(images.shape[1:3]):
        return dataset
    return ScoringSet(images, np.stack(labels), names=names)


def evaluate_checkpoint(checkpoint, data_dir=None, split: str = "val", *, boundary: bool = True,
                        size=None, batch_size: int = 4, device=None, samples: int | None = None,
                        limit: int | None = None, dataset: str = "camvid", progress: bool = False,
                        at_train_size: bool = False):
    """Load ``checkpoint`` and score it on a CamVid split (or on synthetic scenes).

    Images are resized to the training size (``size`` overrides it; too small for the model is
    an error) and normalised with the training split's statistics, both read from the
    checkpoint.  The labels keep their own resolution (CamVid: 360×480, as published scores
    are), and the prediction is laid over them by nearest neighbour; ``at_train_size=True``
    resizes the labels to the input size instead.  ``dataset="synthetic"`` scores the
    validation scenes of the run that wrote the checkpoint (drawn at the input size).  Returns
    ``(scores, model, extra)`` with ``scores`` as :func:`evaluate` gives them (``scored_at``:
    the labels' ``[H, W]``), plus ``size`` (``[H, W]``, the network's input size).
    """
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = checkpoint_inputs(extra, checkpoint)
    size = check_input_size(model, train_size if size is None else size,
                            "--size" if size is not None else f"the training size of {checkpoint}")
    if dataset == "synthetic":  # the validation scenes of the run that wrote the checkpoint
        stored = extra.get("train_config", {})
        if not isinstance(stored, dict):
            raise ValueError(f"{checkpoint}: its train_config is {json.dumps(stored)[:40]}, not a dict of settings: "
                             "damaged checkpoint (the synthetic scenes of its run cannot be made again)")
        run = TrainConfig.from_dict(stored)
        data = evenly_spaced(SyntheticStreets.splits(run.synthetic_train, run.synthetic_val, size=size,
                                                     seed=run.synthetic_seed)[1], limit)
    else:
        root = data_dir if data_dir is not None else find_camvid()
        if root is None:
            raise FileNotFoundError("no CamVid folder given and none found: pass --data DIR")
        data = scoring_set(evenly_spaced(CamVid(root, split), limit), size, at_train_size=at_train_size)
    loader = BatchLoader(data, batch_size, mean=mean, std=std)
    scores = evaluate(model, loader, boundary=boundary, samples=samples, progress=progress)
    scores["size"] = list(size)
    return scores, model, extra


def evaluation_report(scores: dict, *, checkpoint, model, extra: dict, data_dir=None, split: str = "val",
                      dataset: str = "camvid", samples: int | None = None, limit: int | None = None,
                      class_names=CLASS_NAMES) -> dict:
    """The scores of :func:`evaluate_checkpoint` and what produced them, as one JSON-ready dict.

    Keys: ``checkpoint`` (absolute path), ``arch``, ``step`` and ``epoch`` of the checkpoint,
    ``dataset``, ``data`` (the CamVid folder, absolute; None for synthetic scenes), ``split``,
    ``size`` ``[H, W]`` (the network's input), ``scored_at`` ``[H, W]`` (the labels the scores
    were counted on), ``num_images``, ``samples``, ``limit``; the scores ``global_accuracy``,
    ``class_accuracy``, ``mean_iou``, ``boundary_f1``; ``per_class``: for each class name its
    ``iou``, ``accuracy`` and ``boundary_f1``; ``confusion_matrix`` (rows: truth, columns:
    prediction); ``minisegnet_version``.  Undefined scores (a class absent from the split, BF
    not computed) are ``null``.
    """
    from . import __version__

    names = list(class_names) if len(class_names) == len(scores["per_class_iou"]) else \
        [f"class {i}" for i in range(len(scores["per_class_iou"]))]
    per_class = {
        name: {"iou": iou, "accuracy": accuracy, "boundary_f1": bf}
        for name, iou, accuracy, bf in zip(names, scores["per_class_iou"], scores["per_class_accuracy"],
                                           scores["per_class_boundary_f1"])
    }
    if dataset == "camvid" and data_dir is None:
        data_dir = find_camvid()
    report = {
        "checkpoint": os.path.abspath(checkpoint),
        "arch": getattr(model, "arch", None),
        "step": extra.get("step"),
        "epoch": extra.get("epoch"),
        "dataset": dataset,
        "data": None if dataset == "synthetic" or data_dir is None else os.path.abspath(data_dir),
        "split": "val" if dataset == "synthetic" else split,
        "size": list(scores["size"]),
        "scored_at": scores.get("scored_at", list(scores["size"])),
        "num_images": scores["num_images"],
        "samples": samples,
        "limit": limit,
        "global_accuracy": scores["global_accuracy"],
        "class_accuracy": scores["class_accuracy"],
        "mean_iou": scores["mean_iou"],
        "boundary_f1": scores["boundary_f1"],
        "per_class": per_class,
        "confusion_matrix": scores["confusion_matrix"],
        "minisegnet_version": __version__,
    }
    return json_ready(report)


def check_output_file(path) -> Path:
    """Make sure ``path`` can be written (its folder created, writable; not a folder) before any work.

    Raises ``OSError`` naming the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder (give a file name, e.g. {path / 'scores.json'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe.tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"cannot write {path} ({exc.strerror or type(exc).__name__}): choose another file or folder") \
            from None
    return path


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, fsync, rename); return ``path``.

    On any error the temporary file is removed and an older file at ``path`` is left as it was.
    """
    path = check_output_file(path)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda f: f.write(text), binary=False)
    return path

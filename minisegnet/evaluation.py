"""Scoring a network: :func:`evaluate` over a split, BatchNorm statistics, and scoring a saved checkpoint.

**The scores** are those of the whole split: one confusion matrix is accumulated over every
batch (void pixels left out), and global accuracy G, class-average accuracy C and mean IoU are
computed from it once (:class:`~minisegnet.metrics.ConfusionMatrix`), not averaged over batches.
The boundary F1 score (BF) is optional: it is computed per image and class, and is slower.

**Inference keeps nothing.**  Every pass here runs inside ``with no_grad():``
(:mod:`minisegnet.grad_mode`): the layers store nothing for a backward and leave what they
stored before untouched, so scoring a model in the middle of a training step changes nothing
of that step, and an evaluation holds only the current feature map and the pooling indices.

**BatchNorm statistics.**  By default evaluation uses BatchNorm's running averages (momentum
0.1).  ``recompute_bn=True`` (``--recompute-bn``) does what SegNet's
``compute_bn_statistics.py`` does after training: one pass over the training images (no
augmentation) with the final weights, averaging each BatchNorm layer's batch mean and variance
into its running statistics (:func:`recompute_bn_statistics`).
"""
from __future__ import annotations

from .backend import to_device, to_numpy
from .checkpoint import load_model
from .config import TrainConfig
from .data import NUM_CLASSES, VOID_LABEL, BatchLoader, CamVid, SyntheticStreets, find_camvid, parse_size
from .grad_mode import no_grad
from .layers import BatchNorm2d, Dropout
from .metrics import BoundaryF1, ConfusionMatrix
from .run_data import evenly_spaced
from .run_folder import checkpoint_preprocessing

__all__ = ["evaluate", "recompute_bn_statistics", "evaluate_checkpoint"]


def _batches(loader):
    return loader.iter_epoch(0) if hasattr(loader, "iter_epoch") else iter(loader)


def evaluate(model, loader, num_classes: int = NUM_CLASSES, ignore_index: int | None = VOID_LABEL,
             boundary: bool = False, samples: int | None = None) -> dict:
    """Score ``model`` on every batch of ``loader``: G, C, mIoU, per-class IoU (and BF).

    One confusion matrix is accumulated over the whole split (void pixels left out), so the
    scores are those of the split, not an average of per-batch scores.  ``boundary=True`` adds
    the boundary F1 score (slower: per image and class).  ``samples`` > 0 predicts with
    Monte-Carlo dropout (Bayesian SegNet: argmax of the mean of that many softmax samples).

    Returns :meth:`~minisegnet.metrics.ConfusionMatrix.summary` (``global_accuracy``,
    ``class_accuracy``, ``mean_iou``, ``per_class_iou``, ...) plus ``boundary_f1`` (NaN when
    not asked), ``confusion_matrix`` (a nested list) and ``num_images``.  Runs inside
    ``no_grad()``; the model's modes are left as they were.
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    bf = BoundaryF1(num_classes, ignore_index) if boundary else None
    images = 0
    with no_grad():
        for x, y in _batches(loader):
            x = to_device(x, model.device)
            if samples:
                mean_probs, _ = model.predict_mc(x, samples=samples)
                pred = to_numpy(mean_probs.argmax(axis=1))
            else:
                pred = to_numpy(model.predict(x))
            y = to_numpy(y)
            cm.update(pred, y)
            if bf is not None:
                bf.update(pred, y)
            images += len(y)
    out = cm.summary()
    out["boundary_f1"] = bf.value() if bf is not None else float("nan")
    out["confusion_matrix"] = cm.matrix.tolist()
    out["num_images"] = images
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


def evaluate_checkpoint(checkpoint, data_dir=None, split: str = "val", *, boundary: bool = True,
                        size=None, batch_size: int = 4, device=None, samples: int | None = None,
                        limit: int | None = None, dataset: str = "camvid"):
    """Load ``checkpoint`` and score it on a CamVid split (or on synthetic scenes).

    Images and labels are resized to the training size (``size`` overrides it) and normalised
    with the training split's statistics, both read from the checkpoint.  ``dataset="synthetic"``
    scores the validation scenes of the run that wrote the checkpoint.  Returns
    ``(scores, model, extra)`` with ``scores`` as :func:`evaluate` gives them.
    """
    model, extra = load_model(checkpoint, device=device)
    mean, std, train_size = checkpoint_preprocessing(extra, checkpoint)
    size = train_size if size is None else parse_size(size)
    if dataset == "synthetic":  # the validation scenes of the run that wrote the checkpoint
        run = TrainConfig.from_dict(extra.get("train_config", {}))
        data = evenly_spaced(SyntheticStreets.splits(run.synthetic_train, run.synthetic_val, size=size,
                                                     seed=run.synthetic_seed)[1], limit)
    else:
        root = data_dir if data_dir is not None else find_camvid()
        if root is None:
            raise FileNotFoundError("no CamVid folder given and none found: pass --data DIR")
        data = evenly_spaced(CamVid(root, split, size=size), limit)
    loader = BatchLoader(data, batch_size, mean=mean, std=std)
    scores = evaluate(model, loader, boundary=boundary, samples=samples)
    return scores, model, extra

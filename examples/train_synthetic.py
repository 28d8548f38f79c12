"""Train SegNet-Basic on synthetic street scenes from Python, then reload the best checkpoint and use it.

    python examples/train_synthetic.py                  # ~2 minutes on 2 CPU cores
    python examples/train_synthetic.py --quick          # a few seconds: a smoke test
    python examples/train_synthetic.py --minutes 10 --out runs/synthetic

What ``minisegnet demo`` does, from Python and shorter: a :class:`minisegnet.train.TrainConfig`
describes the run (SegNet-Basic with 32 channels on 64x88 synthetic scenes, Adam, median-frequency
class weights) and :func:`minisegnet.train.train` runs it (validation after every epoch, best and
last checkpoints, a JSON-lines log and a PNG figure in ``--out``).  The checkpoint then
rebuilds its own network with :func:`minisegnet.checkpoint.load_model`, together with the
normalisation statistics the run stored, to segment new scenes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from minisegnet.checkpoint import load_model
from minisegnet.data import SyntheticStreets, normalize
from minisegnet.metrics import ConfusionMatrix
from minisegnet.train import TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default: a temporary folder, removed at exit)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (without it, an earlier run there is refused)")
    parser.add_argument("--minutes", type=float, default=2.0, help="wall-time budget of the training (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, data and step count: finishes in seconds (for smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.quick:
        setup = dict(channels=8, kernel_size=3, size=(32, 48), synthetic_train=16, synthetic_val=4,
                     batch_size=4, max_steps=6)
    else:
        setup = dict(channels=32, kernel_size=7, size=(64, 88), synthetic_train=160, synthetic_val=40,
                     batch_size=8, minutes=args.minutes)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        config = TrainConfig(model="segnet-basic", dataset="synthetic", optimizer="adam", lr=2e-3,
                             weight_decay=0.0, seed=args.seed, out_dir=out, overwrite=args.overwrite, **setup)
        result = train(config, progress=not args.quick)
        print(f"{result.steps} steps, {result.epochs_completed} epochs, stopped by {result.stopped_by}, "
              f"{result.wall_time:.1f} s")
        print("validation:", ", ".join(f"{k} {result.metrics[k]:.3f}"
                                       for k in ("global_accuracy", "class_accuracy", "mean_iou")))
        print("files:", result.best_checkpoint, result.figure, result.log, sep="\n  ")

        # Reload: the checkpoint knows its architecture and the run's normalisation statistics.
        model, extra = load_model(result.best_checkpoint)
        mean, std = extra["normalization"]["mean"], extra["normalization"]["std"]
        scenes = SyntheticStreets(4, size=config.size, seed=args.seed + 1)   # scenes never seen in training
        confusion = ConfusionMatrix()
        for image, label in (scenes[i] for i in range(len(scenes))):
            confusion.update(model.predict(normalize(image, mean, std)), label[None])
        print(f"reloaded {model.arch} ({model.num_parameters():,} parameters): on 4 new scenes "
              f"G {confusion.global_accuracy():.3f}, mIoU {confusion.mean_iou():.3f}")
        if args.out is None:
            print("(outputs were written to a temporary folder; pass --out DIR to keep them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

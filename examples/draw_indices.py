"""Draw a pooling layer's indices over an image: where each 2x2 window's maximum was, saved as a PNG.

    python examples/draw_indices.py --out indices.png                       # a synthetic scene, trained model
    python examples/draw_indices.py --image street.png --stage 2 --out indices.png
    python examples/draw_indices.py --image street.png --no-model --out indices.png   # pool the image itself

SegNet's encoder stages end with ``MaxPool2d(2, 2)``, which returns the pooled map *and*, for every
window, the window-local index of its maximum (0 top-left, 1 top-right, 2 bottom-left,
3 bottom-right, ``uint8``); the decoder unpools with them.  This script runs the encoder of a
checkpoint (default: the tutorials' SegNet-Basic trained on synthetic street scenes) up to encoder
stage ``--stage`` on an image, takes the indices of one channel of that stage's pooling (``--channel``;
default: the channel that varies most) and draws three panels: the image; the feature map before
pooling with a circle on every window's winner; and the index of every window in four colours, over
the image (one window of stage ``s`` covers ``2**s`` pixels of the image along each side).

``--no-model`` pools the image's grey values directly with a ``MaxPool2d``, no network needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import minisegnet
from minisegnet import MaxPool2d
from minisegnet.checkpoint import load_model
from minisegnet.data import SyntheticStreets, normalize, parse_size, read_image, resize_image

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "tutorials" / "checkpoints" / "segnet_basic_synthetic.npz"
INDEX_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right


def pooled_indices(image, checkpoint, stage: int, channel, no_model: bool):
    """``(feature map before pooling (H, W), indices (h, w) uint8, channel, description)``."""
    if no_model:
        grey = image.astype(np.float32).mean(axis=2)[None, None] / 255.0
        _, indices = MaxPool2d(2)(grey)
        return grey[0, 0], indices[0, 0], 0, "grey values of the image, MaxPool2d(2)"
    model, extra = load_model(checkpoint)
    x = normalize(image, extra["normalization"]["mean"], extra["normalization"]["std"])
    with minisegnet.no_grad():                                # inference: nothing kept for a backward
        for s, encoder_stage in enumerate(model.encoder, start=1):
            features = encoder_stage.convs(x)                 # the map the stage's pooling sees
            if s == stage:
                break
            x, _, _ = encoder_stage(x)
    _, indices = encoder_stage.pool(features)
    if channel is None:
        channel = int(np.argmax(features[0].reshape(features.shape[1], -1).std(axis=1)))
    description = f"{model.arch}, encoder stage {stage}, channel {channel} of {features.shape[1]}"
    return features[0, channel], indices[0, channel], channel, description


def draw(image, features, indices, stage: int, description: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    scale = 2 ** stage                                          # image pixels per window side
    h, w = indices.shape
    ky, kx = np.divmod(indices.astype(np.int64), 2)
    rows, cols = 2 * np.arange(h)[:, None] + ky, 2 * np.arange(w)[None, :] + kx   # winners in the map
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    axes[0].imshow(image)
    axes[0].set_title(f"image {image.shape[0]}x{image.shape[1]}")
    axes[1].imshow(features, cmap="magma", interpolation="nearest")
    axes[1].scatter(cols.ravel(), rows.ravel(), s=4, c=[INDEX_COLOURS[k] for k in indices.ravel()])
    axes[1].set_title(f"before pooling ({features.shape[0]}x{features.shape[1]}): the winners")
    covered = np.kron(indices, np.ones((scale, scale), dtype=indices.dtype))[: image.shape[0], : image.shape[1]]
    axes[2].imshow(image)
    im = axes[2].imshow(covered, cmap=ListedColormap(INDEX_COLOURS), vmin=-0.5, vmax=3.5, alpha=0.55,
                        interpolation="nearest")
    axes[2].set_title(f"indices ({h}x{w}, uint8) over the image")
    bar = fig.colorbar(im, ax=axes[2], ticks=range(4), fraction=0.035)
    bar.ax.set_yticklabels(["0 top-left", "1 top-right", "2 bottom-left", "3 bottom-right"])
    for ax in axes:
        ax.axis("off")
    fig.suptitle(description)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="an image file (default: a synthetic street scene)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="a .npz checkpoint (default: the tutorials' synthetic SegNet-Basic)")
    parser.add_argument("--stage", type=int, default=1, help="encoder stage whose pooling to draw (default: 1)")
    parser.add_argument("--channel", type=int, default=None, help="channel to draw (default: the most varied)")
    parser.add_argument("--size", default=None,
                        help="resize the image to HxW first (default: the checkpoint's training size; "
                             "with --no-model: the image's own size)")
    parser.add_argument("--no-model", action="store_true", help="pool the image's grey values, no network")
    parser.add_argument("--out", default="indices.png", help="the PNG to write (default: indices.png)")
    args = parser.parse_args(argv)

    size = parse_size(args.size) if args.size else None
    if size is None and not args.no_model:
        size = tuple(load_model(args.checkpoint)[1]["size"])  # what the network was trained at
    if args.image is None:
        image = SyntheticStreets(1, size=size or (64, 88), seed=0, offset=384)[0][0]
    else:
        image = read_image(args.image)
    if size is not None and image.shape[:2] != tuple(size):
        image = resize_image(image, size)
    features, indices, channel, description = pooled_indices(image, args.checkpoint, args.stage, args.channel,
                                                             args.no_model)
    path = draw(image, features, indices, 1 if args.no_model else args.stage, description, Path(args.out))
    share = np.bincount(indices.ravel(), minlength=4) / indices.size
    print(f"{description}: indices {indices.shape} {indices.dtype}; share of each index "
          + ", ".join(f"{k}: {s:.0%}" for k, s in enumerate(share)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

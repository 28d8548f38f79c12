"""What SegNet's decoder keeps: pooling indices, beside the feature maps FCN-style skips would keep.

    python examples/segnet_memory.py                          # SegNet at 360x480 (one forward: seconds on a CPU)
    python examples/segnet_memory.py --arch segnet-basic
    python examples/segnet_memory.py --width 0.25 --size 180x240 --batch 4
    python examples/segnet_memory.py --arch fcn-basic           # FCN-Basic: K-channel encoder maps instead

Prints ``model.summary()``: the layers with their output shapes and parameters, then, measured on
the arrays of one inference forward, the bytes of the uint8 pooling indices (and the sizes before
pooling) that travel from each encoder stage to its decoder stage, next to the bytes of the encoder
feature maps a U-Net/FCN-style decoder would keep instead.  The ratio is close to 16 whatever the
network: 4 bytes per float32 value times 4 values per 2x2 window, against 1 byte per window.
For the decoder variants (``--arch fcn-basic`` ...) it prints what their decoder receives instead
(tutorial 07 compares them all).
"""
from __future__ import annotations

import argparse
import sys
import time

from minisegnet.data import parse_size
from minisegnet.models import MODELS, build_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="segnet", choices=sorted(MODELS), help="architecture (default: segnet)")
    parser.add_argument("--size", default="360x480", help="input size HxW (default: 360x480, the paper's)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier for segnet (default: 1.0)")
    parser.add_argument("--channels", type=int, default=64, help="channels of segnet-basic and its variants (default: 64)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--float64", action="store_true", help="a float64 model (feature maps of 8 bytes)")
    args = parser.parse_args(argv)

    height, width = parse_size(args.size)
    if args.arch == "segnet" or args.arch == "bayesian-segnet":
        model = build_model(args.arch, width=args.width, rng=0)
    else:  # SegNet-Basic and its decoder variants (FCN-Basic, Bilinear-Basic, ...)
        model = build_model(args.arch, channels=args.channels, rng=0)
    if args.float64:
        model.double()
    start = time.perf_counter()
    print(model.summary(input_size=(3, height, width), batch_size=args.batch))
    print(f"(one inference forward at {height}x{width}, batch {args.batch}: {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check every layer's hand-written backward against finite differences, and print a table.

    python examples/gradcheck_layers.py [--seed 0] [--max-elements 50]

Each row is one layer in one configuration, run in float64 on a small random input with a
random upstream gradient (``minisegnet.gradcheck``).  The largest errors should be around
1e-9; a wrong backward is off by O(1).  Exits with status 1, naming the layer, the tensor
and the index, at the first disagreement.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from minisegnet import BatchNorm2d, Conv2d, Dropout, MaxPool2d, MaxUnpool2d, ReLU, SoftmaxCrossEntropy
from minisegnet.gradcheck import GradcheckError, gradcheck


def tie_free(rng, shape):
    """Distinct values away from 0: no pooling window has two maxima, no ReLU input sits on its kink."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 0.25) / size * 2.0 - 1.0).reshape(shape)


def cases(rng):
    """(description, forward, backward, inputs, parameters) for every layer configuration."""
    x = rng.standard_normal((2, 3, 7, 9))

    for desc, conv in [
        ("Conv2d 3x3, padding 1", Conv2d(3, 4, 3, padding=1, rng=0)),
        ("Conv2d 7x7, padding 3", Conv2d(3, 2, 7, padding=3, rng=1)),
        ("Conv2d 3x3, stride 2", Conv2d(3, 4, 3, stride=2, padding=1, rng=2)),
        ("Conv2d 1x1, no bias", Conv2d(3, 5, 1, bias=False, rng=3)),
    ]:
        conv.double()
        yield desc, conv.forward, conv.backward, [x], conv

    bn = BatchNorm2d(3).double()
    yield "BatchNorm2d, training mode", bn.forward, bn.backward, [x], bn
    bn_eval = BatchNorm2d(3).double()
    bn_eval.running_mean[...] = rng.standard_normal(3)
    bn_eval.running_var[...] = rng.uniform(0.5, 2.0, 3)
    bn_eval.eval()  # running statistics; an eval-mode forward can still be differentiated
    yield "BatchNorm2d, eval mode", bn_eval.forward, bn_eval.backward, [x], bn_eval

    relu = ReLU()
    yield "ReLU", relu.forward, relu.backward, [tie_free(rng, (2, 3, 7, 9))], ()

    pool = MaxPool2d(2, 2, ceil_mode=True)
    odd = tie_free(rng, (2, 3, 7, 9))  # 7x9 pools to 4x5 in ceil mode: partial border windows
    yield "MaxPool2d 2x2, ceil mode (7x9)", (lambda a: pool.forward(a)[0]), pool.backward, [odd], ()

    unpool = MaxUnpool2d(2, 2)
    pooled, indices = MaxPool2d(2, 2).forward(odd)
    yield ("MaxUnpool2d to 7x9", (lambda a: unpool.forward(a, indices, (7, 9))), unpool.backward,
           [pooled], ())

    dropout = Dropout(0.5)

    def dropout_forward(a):
        dropout.reseed(7)  # the same mask for every forward of the check
        return dropout.forward(a)

    yield "Dropout p=0.5 (fixed mask)", dropout_forward, dropout.backward, [x], ()

    logits = rng.standard_normal((2, 4, 5, 6))
    labels = rng.integers(0, 5, (2, 5, 6))  # 4 = void
    for normalize in ("valid", "weights"):
        loss = SoftmaxCrossEntropy(weight=[0.5, 1.0, 2.0, 4.0], ignore_index=4, normalize=normalize)
        yield (f"SoftmaxCrossEntropy, weights, void, {normalize!r}",
               (lambda z, loss=loss: loss.forward(z, labels)), loss.backward, [logits], ())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the checks")
    parser.add_argument("--max-elements", type=int, default=None,
                        help="check at most this many random entries per tensor (default: all)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    print(f"{'layer':46s} {'tensors':>7s} {'entries':>8s} {'max abs error':>14s}")
    for desc, forward, backward, inputs, params in cases(rng):
        try:
            reports = gradcheck(forward, backward, inputs, params, seed=args.seed, max_elements=args.max_elements)
        except GradcheckError as error:
            print(f"{desc}: FAILED: {error}", file=sys.stderr)
            return 1
        entries = sum(r.checked for r in reports)
        worst = max(r.max_abs_error for r in reports)
        print(f"{desc:46s} {len(reports):7d} {entries:8d} {worst:14.1e}")
    print("all gradients agree with finite differences")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a training run shows while it runs: a line about the run, a bar per epoch, a line per evaluation.

Everything goes through tqdm (``tqdm.write`` keeps the lines above the bar, and the bar adapts
to a terminal or a notebook); ``Progress(enabled=False)`` (``--quiet``) shows nothing.  What
a run *keeps* goes to its log, not here (:mod:`minisegnet.run_folder`).
"""
from __future__ import annotations

import math

import numpy as np

from .budget import format_clock

__all__ = ["Progress"]


class Progress:
    """The console side of a training run (``enabled=False``: silent)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def say(self, message: str) -> None:
        """One line, above the progress bar."""
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def epoch_bar(self, epoch: int, epochs: int | None, total: int, done: int):
        """The bar of epoch ``epoch`` (0-based) with ``done`` of its ``total`` steps behind it."""
        from tqdm.auto import tqdm

        title = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        return tqdm(total=total, initial=done, desc=title, unit="step", disable=not self.enabled,
                    dynamic_ncols=True, leave=False)

    @staticmethod
    def update(bar, losses: list, images_per_second: float, lr: float, seconds_left: float) -> None:
        """One more step on ``bar``: the recent mean loss, the speed, the learning rate, the time left."""
        postfix = {"loss": f"{np.mean(losses[-20:]):.3f}", "img/s": f"{images_per_second:.1f}", "lr": f"{lr:.3g}"}
        if math.isfinite(seconds_left):
            postfix["left"] = format_clock(seconds_left)
        bar.update(1)
        bar.set_postfix(postfix, refresh=False)

    def describe_run(self, config, parameters: int, train_images: int, val_images: int, class_weights: bool,
                     out_dir, resumed: tuple | None = None) -> None:
        """The run in one line; ``resumed``: (checkpoint, epoch, step) of a resumed run."""
        length = ", ".join(x for x in (config.epochs and f"{config.epochs} epochs",
                                       config.minutes and f"{config.minutes:g} min",
                                       config.max_steps and f"{config.max_steps} steps") if x)
        self.say(
            f"{config.model} ({parameters:,} parameters) on {config.dataset} "
            f"{train_images} train / {val_images} val images at {config.size[0]}x{config.size[1]}, "
            f"{config.optimizer} lr {config.lr:g}"
            + (f" after {config.warmup_steps} warm-up steps" if getattr(config, "warmup_steps", 0) else "")
            + f", batch {config.batch_size}, "
            f"class weights {_weights_in_words(config) if class_weights else 'off'}"
            + (f", + {config.lovasz_weight:g} x Lovasz-softmax" if getattr(config, "lovasz_weight", 0) else "")
            + f", {length}, "
            f"device {config.device}, out {out_dir}"
            + (f"; resumed from {resumed[0]} at epoch {resumed[1]} step {resumed[2]}" if resumed else "")
        )

    def evaluation(self, epoch: float, step: int, mean_loss: float | None, scores: dict, best: bool,
                   bn_recomputed: bool, elapsed: float) -> None:
        """The line of one validation pass."""
        self.say(
            f"epoch {epoch:.2f} step {step}: loss {mean_loss or float('nan'):.4f}  "
            f"val G {scores['global_accuracy']:.4f} C {scores['class_accuracy']:.4f} "
            f"mIoU {scores['mean_iou']:.4f}{_scored_at(scores)}{'  (best)' if best else ''}"
            f"{'  [BN recomputed]' if bn_recomputed else ''}  [{format_clock(elapsed)}]"
        )


def _weights_in_words(config) -> str:
    power, end = getattr(config, "class_weight_power", 1.0), getattr(config, "class_weight_power_end", None)
    if end is not None:
        return f"median frequency ** ({power:g} -> {end:g} over the schedule)"
    return "median frequency" if power == 1 else f"median frequency ** {power:g}"


def _scored_at(scores: dict) -> str:
    at = scores.get("scored_at")
    return f" (at {at[0]}x{at[1]})" if at else ""

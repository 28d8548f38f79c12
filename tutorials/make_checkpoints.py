"""Train the small models that the tutorials load, and save them into tutorials/checkpoints/.

    python tutorials/make_checkpoints.py                 # both checkpoints (about 6 minutes on 2 CPU cores)
    python tutorials/make_checkpoints.py --only segnet_basic_synthetic

Lessons 00 (a prediction of a model that works), 05 (a trained decoder convolution filling in the
sparse unpooled map) and 11 (Monte-Carlo dropout on a *trained* Bayesian model) need a model that
has learnt something, and a lesson has only 90 seconds.  So the models are trained once, here,
with the library's public training API (``minisegnet.train.train(TrainConfig(...))``, what
``minisegnet train`` runs), and shipped as two small files:

``segnet_basic_synthetic.npz``
    ``SegNetBasic(channels=32, kernel_size=3)``;
``bayesian_segnet_basic_synthetic.npz``
    ``BayesianSegNetBasic(channels=32, kernel_size=3, dropout=0.2)`` (dropout after encoder stages
    3, 4 and decoder stages 4, 3, as in SegNet-Tutorial's Bayesian prototxt), fine-tuned from the
    weights of the first file.  Not the paper's dropout 0.5: in a network this narrow, 0.5 leaves too
    little of the central stages (measured: see ``RECIPES``) and the uncertainty came out nearly
    uniform instead of high on boundaries, which is what lesson 11 is about.

The recipe is ``minisegnet demo``'s (measured to learn the synthetic streets in minutes on two
CPU cores: SegNet-Basic narrowed to 32 channels with 3×3 kernels, 64×88 images, batch 8, Adam
lr 2e-3 with a poly schedule, median-frequency class weights, BatchNorm statistics recomputed
over the training set at the end), with a fixed number of epochs instead of a time budget, so
that the same seed gives the same weights on any machine as fast or slow as it may be.  The data
are ``SyntheticStreets`` scenes (no download): scenes 0..383 of seed 0 for training, 384..447
for validation (``SyntheticStreets.splits(384, 64, size=(64, 88), seed=0)``).

Each file is re-saved from the run's last checkpoint with
:func:`minisegnet.checkpoint.save_checkpoint` and the model only: weights, BatchNorm running
statistics, the architecture (``arch`` + ``config``, so :func:`minisegnet.checkpoint.load_model`
rebuilds it), and in ``extra`` what a user of the weights needs (the normalisation mean/std and
image size the weights expect, the class names, the training settings, the validation scores and
how the file was made) -- no optimizer state, about 0.3 MB each.  ``minisegnet evaluate
--synthetic`` and ``minisegnet predict`` read them like any checkpoint of ``minisegnet train``.

The script prints, for each model, the command, the training time and the validation scores, and
rewrites ``tutorials/checkpoints/README.md`` from what the files hold.

Measured on 2 CPU cores shared with other jobs (load average 2-5), ``OPENBLAS_NUM_THREADS=1``:
segnet_basic_synthetic 30 epochs (1440 steps) in 4.2 min, val G 0.785, C 0.720, mIoU 0.487, BF 0.216;
bayesian_segnet_basic_synthetic 12 epochs (576 steps) in 1.4 min, val G 0.771, C 0.739, mIoU 0.476
(8 MC-dropout samples: G 0.775, mIoU 0.478).  About 6 minutes in all.  The README written next to the
files records the run that made them (date, machine, time, scores) from what the files hold.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy: one BLAS thread is fastest on 2 busy cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minisegnet.checkpoint import load_model, read_checkpoint, save_checkpoint  # noqa: E402
from minisegnet.data import BatchLoader, CLASS_NAMES  # noqa: E402
from minisegnet.train import TrainConfig, Trainer, evaluate, load_datasets, train  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "checkpoints"
COMMAND = "python tutorials/make_checkpoints.py"

# minisegnet demo's recipe (minisegnet/cli.py, DEMO_DEFAULTS) with a fixed number of epochs.
COMMON = dict(
    channels=32, kernel_size=3, dataset="synthetic", synthetic_train=384, synthetic_val=64, synthetic_seed=0,
    size=(64, 88), batch_size=8, optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="poly",
    class_weights=True, recompute_bn=True, seed=0, device="cpu", figure=False, log_steps=False,
)
RECIPES = {
    "segnet_basic_synthetic": dict(model="segnet-basic", epochs=30),
    # Fine-tuned with dropout 0.2 from the plain model's weights (same layers; Dropout has none), lr 1e-3.
    # Measured first with the paper's dropout 0.5, from scratch, 40 epochs (6 min): at 32 channels half of
    # the central stages is too much noise -- training loss 0.62 (plain: 0.29), val G 0.70 / mIoU 0.38, and
    # an uncertainty that is nearly uniform (boundary/interior 1.25x, the lesson's point lost).  Fine-tuned
    # from the plain weights with 0.5 (8 epochs): 1.4x; with 0.3: 1.6x; with 0.2: 1.9x and G 0.77.
    "bayesian_segnet_basic_synthetic": dict(model="bayesian-segnet-basic", dropout=0.2, epochs=12, lr=1e-3,
                                            init_from="segnet_basic_synthetic"),
}
MC_SAMPLES = 8  # the Bayesian model is also scored with Monte-Carlo dropout (mean of 8 softmax samples)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({cpu}), {platform.system()} {platform.release()}, NumPy {np.__version__}"


def make(name: str, progress: bool) -> dict:
    """Train one recipe, re-save its last checkpoint slim, return what was measured."""
    recipe = dict(RECIPES[name])
    init_from = recipe.pop("init_from", None)
    config = TrainConfig(**{**COMMON, **recipe})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        config.out_dir = tmp
        if init_from is None:
            result = train(config, progress=progress)
        else:  # train() with the initial weights of another checkpoint (same parameter names and shapes)
            trainer = Trainer(config, progress=progress)
            trainer.model.load_state_dict(read_checkpoint(OUT / f"{init_from}.npz")["model"])
            result = trainer.fit()
        model, extra = load_model(result.last_checkpoint)  # the final state: BN statistics recomputed
    seconds = time.perf_counter() - started

    # Score it once more with the boundary F1 score (and, for the Bayesian model, MC dropout).
    _, val_set = load_datasets(config)
    mean = np.asarray(extra["normalization"]["mean"], np.float32)
    std = np.asarray(extra["normalization"]["std"], np.float32)
    loader = BatchLoader(val_set, 16, mean=mean, std=std)
    scores = {"deterministic": _scores(evaluate(model, loader, boundary=True))}
    if model.dropout_layers():
        for layer in model.dropout_layers():
            layer.reseed(0)
        scores[f"mc{MC_SAMPLES}"] = _scores(evaluate(model, loader, boundary=True, samples=MC_SAMPLES))

    config.out_dir = f"tutorials/checkpoints ({name})"
    made = {
        "command": COMMAND, "script": "tutorials/make_checkpoints.py", "machine": machine(),
        "date": datetime.date.today().isoformat(), "train_seconds": round(seconds, 1),
        "val_split": f"SyntheticStreets.splits({config.synthetic_train}, {config.synthetic_val}, "
                     f"size={tuple(config.size)}, seed={config.synthetic_seed})[1]",
        "initialised_from": None if init_from is None else f"{init_from}.npz",
    }
    slim = {key: extra[key] for key in ("kind", "epoch", "batch", "step", "size", "normalization",
                                        "class_weights", "class_names", "ignore_index")}
    slim.update(train_config=config.to_dict(), metrics=scores, made_by=made,
                history=[{k: r.get(k) for k in ("epoch", "step", "mean_loss", "val_global_accuracy",
                                                  "val_class_accuracy", "val_mean_iou")} for r in extra["history"]])
    path = OUT / f"{name}.npz"
    save_checkpoint(path, model, extra=slim)  # no optimizer: weights, BN statistics, architecture
    return {"name": name, "path": path, "bytes": path.stat().st_size, "seconds": seconds, "scores": scores,
            "parameters": model.num_parameters(), "arch": model.arch, "config": model.config,
            "steps": extra["step"], "epochs": extra["epoch"]}


def _scores(s: dict) -> dict:
    keep = ("global_accuracy", "class_accuracy", "mean_iou", "boundary_f1")
    out = {k: round(float(s[k]), 4) for k in keep}
    out["per_class_iou"] = {n: (None if not np.isfinite(v) else round(float(v), 4))
                            for n, v in zip(CLASS_NAMES, s["per_class_iou"])}
    return out


def _line(scores: dict) -> str:
    return "  ".join(f"{label} {scores[key]:.3f}" for label, key in
                     (("G", "global_accuracy"), ("C", "class_accuracy"), ("mIoU", "mean_iou"), ("BF", "boundary_f1")))


def write_readme() -> Path:
    """tutorials/checkpoints/README.md, from what the checkpoint files themselves hold."""
    rows = []
    for name in RECIPES:
        path = OUT / f"{name}.npz"
        if not path.exists():
            continue
        info = read_checkpoint(path, weights=False)
        extra, made, cfg = info["extra"], info["extra"]["made_by"], info["extra"]["train_config"]
        scores = "; ".join(f"{kind}: {_line(s)}" for kind, s in extra["metrics"].items())
        rows.append(
            f"| `{path.name}` | `{info['arch']}` {json_config(info['config'])} | "
            + (f"from `{made['initialised_from']}`, " if made.get("initialised_from") else "from scratch, ")
            + f"{cfg['epochs']} epochs, "
            f"{extra['step']} steps, {made['train_seconds'] / 60:.1f} min | {scores} | {made['date']}, "
            f"{made['machine']} | {path.stat().st_size / 1e6:.2f} MB |"
        )
    text = f"""# Checkpoints for the tutorials

Small models trained on `SyntheticStreets` (no download) for the lessons that need a trained network
(00 overview, 05 unpooling, 11 Bayesian SegNet). Made by `{COMMAND}` (the script documents the recipe:
`minisegnet demo`'s, 64×88 images, 384 training scenes, a fixed number of epochs, seed 0; the Bayesian
model is fine-tuned from the plain one's weights with dropout 0.2, and the script says why not 0.5),
which trains them with `minisegnet.train` (`TrainConfig`, `train`, `Trainer`) and re-saves each with
`minisegnet.checkpoint.save_checkpoint(path, model, extra=...)`: weights, BatchNorm statistics,
architecture and the normalisation (mean, std, image size) in `extra` — no optimizer state.

Load one with `model, extra = minisegnet.checkpoint.load_model(path)`; normalise images with
`extra["normalization"]` at `extra["size"]`. Scores are on the run's 64 validation scenes
(`SyntheticStreets.splits(384, 64, size=(64, 88), seed=0)[1]`), void excluded; "mc8" is the mean of 8
Monte-Carlo dropout samples.

| file | model | training | validation scores | made (date, machine) | size |
|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    readme = OUT / "README.md"
    readme.write_text(text, encoding="utf-8")
    return readme


def json_config(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("in_channels", "num_classes"))


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(RECIPES), action="append", help="make only this checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    print(f"$ {COMMAND}" + "".join(f" --only {n}" for n in args.only or ()))
    print(f"machine: {machine()}")
    total = time.perf_counter()
    for name in args.only or RECIPES:
        made = make(name, progress=not args.quiet)
        print(f"{_shown(made['path'])}: {made['arch']} {json_config(made['config'])}, "
              f"{made['parameters']:,} parameters, {made['bytes'] / 1e6:.2f} MB; {made['epochs']} epochs = "
              f"{made['steps']} steps in {made['seconds'] / 60:.1f} min")
        for kind, scores in made["scores"].items():
            print(f"    val ({kind}): {_line(scores)}")
    print(f"wrote {_shown(write_readme())}; total {(time.perf_counter() - total) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

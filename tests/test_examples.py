"""The scripts in examples/ run on the public API and exit with status 0 (small arguments).

Each runs in a fresh interpreter (``sys.executable``), from an empty temporary working directory,
with the repository root first on ``PYTHONPATH`` so that this checkout's ``minisegnet`` is the one
imported, installed or not.  Inputs a script needs (a tiny CamVid-layout folder, a folder of images)
are made in a second temporary folder, and outputs go there too: the working directory must stay
empty.  Arguments may name ``{inputs}`` and ``{outputs}``, filled in per run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
TIMEOUT = 300  # seconds per script; each takes a few seconds on an idle 2-core machine


def _save_png(path: Path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def tiny_camvid(root: Path) -> Path:
    """A CamVid-layout folder of synthetic scenes: 4 train and 2 val pairs of 36x48 (image RGB, labels mode L)."""
    from minisegnet.data import SyntheticStreets

    for split, count, offset in (("train", 4, 0), ("val", 2, 4)):
        for i, (image, label) in enumerate(SyntheticStreets(count, size=(36, 48), seed=0, offset=offset)):
            _save_png(root / split / f"scene{i}.png", image)
            _save_png(root / f"{split}annot" / f"scene{i}.png", label)  # uint8 (H, W): one byte a pixel
    return root


def image_folder(root: Path) -> Path:
    """Two synthetic scenes of different sizes as PNGs (the predictions come back at each image's size)."""
    from minisegnet.data import SyntheticStreets

    for name, size in (("street_a", (64, 88)), ("street_b", (45, 61))):
        _save_png(root / f"{name}.png", SyntheticStreets(1, size=size, seed=5)[0][0])
    return root


# script -> (prepare inputs, arguments, what its output must contain, files it must write under {outputs})
RUNS = {
    "gradcheck_layers.py": (
        None,
        ["--max-elements", "20"],
        ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "MaxUnpool2d", "Dropout", "SoftmaxCrossEntropy",
         "all gradients agree"],
        [],
    ),
    "segnet_memory.py": (None, ["--width", "0.0625", "--size", "45x60"], ["uint8 (1, 4, 23, 30)", "FCN-style"], []),
    "train_synthetic.py": (None, ["--quick"], ["stopped by max_steps", "reloaded segnet-basic"], []),
    "train_camvid.py": (
        tiny_camvid,
        ["--smoke", "--data", "{inputs}", "--out", "{outputs}/run"],
        ["stopped by max_steps", "reloaded segnet-basic", "validation: G"],
        ["run/last.npz", "run/log.jsonl"],
    ),
    "predict_folder.py": (
        image_folder,
        ["{inputs}", "--out", "{outputs}/predictions"],
        ["street_a.png: street_a_labels.png (64x88", "street_b.png: street_b_labels.png (45x61",
         "predicted 2 images"],
        ["predictions/street_a_labels.png", "predictions/street_a_overlay.png", "predictions/street_b_ids.png"],
    ),
    "draw_indices.py": (
        None,
        ["--stage", "2", "--out", "{outputs}/indices.png"],
        ["encoder stage 2", "uint8", "wrote"],
        ["indices.png"],
    ),
}


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    env.pop("MINISEGNET_DEVICE", None)  # the smoke runs compute on the CPU
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, "1")  # small matrices: see BLAS_THREADS in test_tutorials.py
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )


def test_every_example_is_exercised():
    """A new script in examples/ must get a smoke run here."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name, tmp_path):
    prepare, args, expected, files = RUNS[name]
    cwd, inputs, outputs = tmp_path / "cwd", tmp_path / "inputs", tmp_path / "outputs"
    for folder in (cwd, inputs, outputs):
        folder.mkdir()
    if prepare is not None:
        prepare(inputs)
    args = [a.format(inputs=inputs, outputs=outputs) for a in args]
    result = run_example(name, args, cwd)
    assert result.returncode == 0, (
        f"examples/{name} {' '.join(args)} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    missing = [text for text in expected if text not in result.stdout]
    assert not missing, f"examples/{name}: output lacks {missing}\n--- stdout ---\n{result.stdout[-3000:]}"
    absent = [f for f in files if not (outputs / f).is_file()]
    assert not absent, f"examples/{name} did not write {absent} (it wrote {sorted(p.name for p in outputs.rglob('*'))})"
    assert list(cwd.iterdir()) == [], f"examples/{name} left files in its working directory"


def test_predict_folder_writes_labels_at_each_images_size(tmp_path):
    """The colourised labels come back at the size of each image, in CamVid's palette."""
    from PIL import Image

    from minisegnet.data import PALETTE

    inputs, outputs = image_folder(tmp_path / "inputs"), tmp_path / "out"
    result = run_example("predict_folder.py", [str(inputs), "--out", str(outputs)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, size in (("street_a", (64, 88)), ("street_b", (45, 61))):
        labels = np.asarray(Image.open(outputs / f"{name}_labels.png").convert("RGB"))
        ids = np.asarray(Image.open(outputs / f"{name}_ids.png"))
        assert labels.shape[:2] == size and ids.shape == size
        assert np.array_equal(labels, PALETTE[ids]), "the colours are the palette of the predicted classes"
        assert len(np.unique(ids)) > 1, "the shipped model predicts more than one class on a street scene"

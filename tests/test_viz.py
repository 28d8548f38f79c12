"""Visualisation: overlay arithmetic, PNG files of the right size and colours, figures that render."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minisegnet import viz

PALETTE = np.array([[200, 0, 50], [0, 100, 0], [10, 20, 30], [0, 0, 0]], dtype=np.uint8)  # 3 classes + void
NAMES = ["red", "green", "navy"]


def labels_hw(h=12, w=16):
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, w // 2:] = 1
    labels[: h // 3, :] = 2
    labels[-1, -1] = 3
    return labels


def read_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")), im.size


def test_colorize_uses_the_palette_and_rejects_unknown_labels():
    labels = labels_hw()
    np.testing.assert_array_equal(viz.colorize(labels, PALETTE), PALETTE[labels])
    with pytest.raises(ValueError, match="0..3"):
        viz.colorize(np.array([[0, 4]]), PALETTE)
    with pytest.raises(ValueError, match="integer"):
        viz.colorize(np.zeros((2, 2)), PALETTE)


def test_overlay_math():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 1, 3], [0, 0, 1]])
    out = viz.overlay(image, labels, alpha=0.5, palette=PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [150, 50, 75])  # (100 + 200)/2, (100 + 0)/2, (100 + 50)/2
    np.testing.assert_array_equal(out[0, 1], [50, 100, 50])
    np.testing.assert_array_equal(viz.overlay(image, labels, alpha=0.0, palette=PALETTE), image)
    np.testing.assert_array_equal(viz.overlay(image, labels, alpha=1.0, palette=PALETTE), PALETTE[labels])
    kept = viz.overlay(image, labels, alpha=0.5, palette=PALETTE, ignore_index=3)
    np.testing.assert_array_equal(kept[0, 2], [100, 100, 100])  # void shows the bare image
    with pytest.raises(ValueError, match="do not match"):
        viz.overlay(image, labels.T, palette=PALETTE)
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(image, labels, alpha=1.5, palette=PALETTE)


def test_to_uint8_image_denormalises_channels_first_floats():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    mean = np.array([120.0, 110.0, 100.0])
    std = np.array([60.0, 55.0, 50.0])
    normalised = ((original - mean) / std).astype(np.float32).transpose(2, 0, 1)  # (3, H, W) as the loader gives
    np.testing.assert_array_equal(viz.to_uint8_image(normalised, mean, std), original)
    np.testing.assert_array_equal(viz.to_uint8_image(original / 255.0), original)  # floats in [0, 1]
    assert viz.to_uint8_image(original) is not None and viz.to_uint8_image(original).dtype == np.uint8
    stretched = viz.to_uint8_image(normalised)  # no mean/std: min-max stretch, still a valid image
    assert stretched.shape == (5, 7, 3) and stretched.min() == 0 and stretched.max() == 255
    assert viz.to_uint8_image(np.zeros((4, 6))).shape == (4, 6, 3)  # grey
    with pytest.raises(ValueError):
        viz.to_uint8_image(np.zeros((4, 6, 5)))


def test_save_label_png_writes_the_colours(tmp_path):
    labels = labels_hw(12, 16)
    path = viz.save_label_png(tmp_path / "sub" / "labels.png", labels, palette=PALETTE)
    pixels, size = read_png(path)
    assert size == (16, 12)  # Pillow: (width, height)
    np.testing.assert_array_equal(pixels, PALETTE[labels])
    with pytest.raises(ValueError):
        viz.save_label_png(tmp_path / "x.png", labels[None], palette=PALETTE)


def test_save_png_and_heatmap(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    pixels, size = read_png(viz.save_png(tmp_path / "image.png", image))
    np.testing.assert_array_equal(pixels, image)
    heat = np.linspace(0, 1, 9 * 11).reshape(9, 11)
    pixels, size = read_png(viz.save_heatmap_png(tmp_path / "heat.png", heat))
    assert size == (11, 9)
    assert not np.array_equal(pixels[0, 0], pixels[-1, -1])


def test_prediction_grid_renders_rows(tmp_path):
    rng = np.random.default_rng(2)
    n, h, w = 3, 12, 16
    images = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    targets = np.stack([labels_hw(h, w)] * n)
    preds = np.clip(targets, 0, 2)
    path = viz.prediction_grid(
        images, targets, preds, tmp_path / "grid.png", NAMES, PALETTE,
        mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], title="epoch 1",
    )
    pixels, (width, height) = read_png(path)
    assert width == 3 * 260  # three columns of 2.6 inches at 100 dpi
    assert pixels.std() > 0
    _, (_, height_one) = read_png(viz.prediction_grid(images, None, preds, tmp_path / "one.png", NAMES, PALETTE, max_rows=1))
    assert height_one < height
    _, (width4, _) = read_png(
        viz.prediction_grid(images, targets, preds, tmp_path / "unc.png", NAMES, PALETTE, uncertainty=rng.random((n, h, w)))
    )
    assert width4 == 4 * 260
    with pytest.raises(ValueError, match="palette"):
        viz.prediction_grid(images, targets, preds, tmp_path / "bad.png", NAMES + ["a", "b"], PALETTE)


def test_training_curves_from_records_and_jsonl(tmp_path):
    records = [{"epoch": e // 10, "step": e, "loss": 2.0 * 0.97**e} for e in range(60)]
    records += [{"epoch": e, "val_mean_iou": 0.1 * e, "val_global_accuracy": 0.5 + 0.05 * e, "val_class_accuracy": 0.08 * e}
                for e in range(1, 7)]
    pixels, size = read_png(viz.training_curves(records, tmp_path / "curves.png", title="run"))
    assert size == (1000, 380)
    assert pixels.std() > 0
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert viz.read_log(log) == records
    _, size = read_png(viz.training_curves(log, tmp_path / "from_file.png"))
    assert size == (1000, 380)
    _, size = read_png(viz.training_curves([], tmp_path / "empty.png"))  # nothing logged yet still draws
    assert size == (1000, 380)
    log.write_text(log.read_text() + '{"step": 61, "lo')  # a run killed while logging
    with pytest.warns(RuntimeWarning, match="log.jsonl: line .* incomplete"):
        assert viz.read_log(log) == records


def test_save_prediction_writes_labels_overlay_ids_and_uncertainty(tmp_path):
    image = np.full((12, 16, 3), 100, dtype=np.uint8)
    labels = labels_hw(12, 16).astype(np.uint8)
    files = viz.save_prediction(tmp_path / "out", "street", image, labels, palette=PALETTE)
    assert set(files) == {"labels", "overlay", "ids"} and files["ids"].endswith("street_ids.png")
    np.testing.assert_array_equal(read_png(files["labels"])[0], PALETTE[labels])
    np.testing.assert_array_equal(read_png(files["overlay"])[0], viz.overlay(image, labels, palette=PALETTE))
    with Image.open(files["ids"]) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), labels)  # the raw class indices, one byte a pixel
    with_spread = viz.save_prediction(tmp_path / "out", "b", image, labels, np.random.default_rng(0).random((12, 16)),
                                      palette=PALETTE)
    assert read_png(with_spread["uncertainty"])[1] == (16, 12)
    with pytest.raises(ValueError, match="0..255"):
        viz.save_ids_png(tmp_path / "x.png", np.array([[0, 300]]))


def test_training_figure_stacks_curves_over_the_grid_in_one_write(tmp_path):
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 30)] + [{"epoch": 1.0, "val_mean_iou": 0.3}]
    images = np.random.default_rng(3).integers(0, 256, size=(2, 12, 16, 3)).astype(np.uint8)
    targets = np.stack([labels_hw(12, 16)] * 2)
    path = viz.training_figure(records, images, targets, np.clip(targets, 0, 10), tmp_path / "figure.png",
                               title="run", max_rows=2)
    _, (width, height) = read_png(path)
    _, (curves_w, curves_h) = read_png(viz.training_curves(records, tmp_path / "curves.png", title="run"))
    assert width == max(curves_w, 3 * 260) and height > curves_h
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "figure.png"]  # no temporary files


def test_class_legend(tmp_path):
    pixels, size = read_png(viz.class_legend(tmp_path / "legend.png", NAMES, PALETTE))
    assert size[0] > 0 and size[1] > 0
    assert (pixels == PALETTE[0]).all(axis=-1).any()  # the red swatch is drawn


def test_defaults_are_camvid():
    camvid = pytest.importorskip("minisegnet.data.camvid")
    labels = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(viz.colorize(labels), camvid.colorize(labels))
    assert [h.get_label() for h in viz._legend_handles(None, None)] == list(camvid.CLASS_NAMES) + ["void"]


def test_figures_never_touch_pyplot(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from minisegnet import viz\n"
        f"viz.training_curves([{{'step': 1, 'loss': 1.0}}], r'{tmp_path / 'c.png'}')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(viz.__file__).parents[1]))


class _ThresholdModel:
    """predict: class 1 where the first channel of the normalised image is positive, else 0."""

    def predict(self, x):
        return (x[:, 0] > 0).astype(np.int64)


def test_run_figure_draws_at_the_labels_resolution_as_they_are_scored(tmp_path, monkeypatch):
    from minisegnet.data import ArrayDataset, resize_label
    from minisegnet.evaluation import ScoringSet

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, 6, 8, 3)).astype(np.uint8)
    fine_labels = rng.integers(0, 2, size=(3, 12, 16)).astype(np.uint8)
    drawn = {}

    def capture(records, images, targets, predictions, path, **kwargs):
        drawn.update(images=images, targets=targets, predictions=predictions)
        return path

    monkeypatch.setattr(viz, "training_figure", capture)
    mean, std = np.full(3, 0.5), np.full(3, 0.25)  # on the 0..1 scale: positive above 127.5
    at_network_size = (images[..., 0] > 127).astype(np.int64)  # what _ThresholdModel predicts
    viz.run_figure([], _ThresholdModel(), ScoringSet(images, fine_labels), tmp_path / "f.png", mean=mean, std=std)
    assert drawn["targets"].shape == drawn["predictions"].shape == (3, 12, 16)
    np.testing.assert_array_equal(drawn["predictions"], resize_label(at_network_size, (12, 16)))  # evaluate's rule
    np.testing.assert_array_equal(drawn["images"][:, ::2, ::2], images)  # each input pixel drawn 2x2
    np.testing.assert_array_equal(drawn["images"][:, 1::2, 1::2], images)
    # labels at the images' size: nothing is resized
    viz.run_figure([], _ThresholdModel(), ArrayDataset(images, fine_labels[:, ::2, ::2]), tmp_path / "g.png",
                   mean=mean, std=std)
    np.testing.assert_array_equal(drawn["predictions"], at_network_size)
    np.testing.assert_array_equal(drawn["images"], images)

"""compare-decoders on a tiny synthetic run: every variant trained, scored, measured, written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minisegnet.compare import VARIANTS, compare_decoders, kept_bytes, main, markdown_table, measure_model
from minisegnet.models import build_model

TINY = dict(synthetic=True, size=(24, 32), max_steps=2, seed=3, memory_size=(45, 60), repeats=1, progress=False,
            channels=6, kernel_size=3, batch_size=2, synthetic_train=6, synthetic_val=3, figure=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return compare_decoders(tmp_path_factory.mktemp("compare"), **TINY)


def test_every_variant_is_trained_scored_and_measured(report):
    rows = report["variants"]
    assert [r["arch"] for r in rows] == [arch for arch, _ in VARIANTS]
    for r in rows:
        assert r["steps"] == 2 and r["stopped_by"] == "max_steps" and r["val_images"] == 3
        for key in ("global_accuracy", "class_accuracy", "mean_iou", "boundary_f1"):
            assert 0.0 <= r[key] <= 1.0, (r["arch"], key)
        assert r["parameters"] == build_model(r["arch"], channels=6, kernel_size=3).num_parameters()
        assert r["inference_seconds"] > 0 and r["train_step_seconds"] > 0
        assert r["peak_train_bytes"] > r["peak_inference_bytes"] > 0
        assert r["config"]["channels"] == 6


def test_decoder_memory_is_what_each_decoder_keeps(report):
    rows = {r["arch"]: r for r in report["variants"]}
    pooled = [(23, 30), (12, 15), (6, 8), (3, 4)]  # 45x60 pooled four times (ceil mode)
    assert rows["segnet-basic"]["decoder_bytes"] == sum(6 * h * w for h, w in pooled)  # uint8 indices
    assert rows["fcn-basic"]["decoder_bytes"] == sum(11 * 4 * h * w for h, w in pooled[:3])  # float32, K = 11
    assert rows["fcn-basic-nodimreduction"]["decoder_bytes"] == sum(6 * 4 * h * w for h, w in pooled[:3])
    assert rows["fcn-basic-noaddition"]["decoder_bytes"] == rows["bilinear-basic"]["decoder_bytes"] == 0
    assert rows["segnet-basic"]["decoder_memory_vs_segnet"] == 1.0
    assert rows["fcn-basic"]["decoder_memory_vs_segnet"] == pytest.approx(
        rows["fcn-basic"]["decoder_bytes"] / rows["segnet-basic"]["decoder_bytes"])


def test_files_are_written(report):
    files = report["files"]
    stored = json.loads(open(files["json"]).read())
    assert [r["arch"] for r in stored["variants"]] == [r["arch"] for r in report["variants"]]
    assert stored["settings"]["dataset"] == "synthetic" and stored["settings"]["size"] == [24, 32]
    assert stored["settings"]["recipe"]["batch_size"] == 2 and "cpu_count" in stored["machine"]
    assert set(stored["methods"]) >= {"decoder_bytes", "peak_train_bytes", "scores"}
    table = open(files["markdown"]).read()
    assert table == markdown_table(report) + "\n"
    lines = table.splitlines()
    assert lines[0].startswith("| variant | parameters | decoder memory per image at 45×60")
    assert len([line for line in lines if line.startswith("| ")]) == 1 + len(VARIANTS)
    assert "FCN-Basic-NoDimReduction" in table and "max_steps 2" in table
    with open(files["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_measure_model_leaves_the_model_alone(rng):
    model = build_model("fcn-basic", channels=4, kernel_size=3, rng=0)
    before = [p.data.copy() for p in model.parameters()]
    stats = [b.copy() for _, b in model.named_buffers()]
    out = measure_model(model, (16, 24), batch_size=2, memory_size=(16, 24), repeats=1)
    assert out["decoder_bytes"] == kept_bytes(model, (16, 24)) == 11 * 4 * (8 * 12 + 4 * 6 + 2 * 3)
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, p.data)
    for a, (_, b) in zip(stats, model.named_buffers()):
        np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_main_runs_a_subset_and_prints_the_table(tmp_path, capsys):
    status = main(["--synthetic", "--size", "16x24", "--max-steps", "1", "--variants", "fcn-basic,bilinear-basic",
                   "--out", str(tmp_path), "--memory-size", "16x24", "--repeats", "1", "--batch-size", "2",
                   "--synthetic-train", "4", "--synthetic-val", "2", "--channels", "4", "--kernel-size", "3",
                   "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert "| FCN-Basic |" in out and "| Bilinear-Basic |" in out and "| SegNet-Basic |" not in out
    stored = json.loads((tmp_path / "decoders.json").read_text())
    assert stored["variants"][0]["decoder_memory_vs_segnet"] is None  # no SegNet-Basic to compare with
    assert stored["settings"]["command"].startswith("minisegnet compare-decoders --synthetic")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--synthetic", "--max-steps", "1", "--variants", "unet"], "unknown variants"),
        (["--synthetic"], "give --minutes-each, --max-steps or --epochs"),
        (["--data", "/nonexistent/camvid", "--max-steps", "1", "--variants", "fcn-basic"], "camvid"),
    ],
)
def test_main_reports_mistakes_in_one_line(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minisegnet compare-decoders: error:") and message in err.lower() and err.count("\n") == 1


def test_bad_settings_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="the comparison sets model itself"):
        compare_decoders(tmp_path, synthetic=True, max_steps=1, model="segnet")
    with pytest.raises(ValueError, match="unknown TrainConfig fields widht"):
        compare_decoders(tmp_path, synthetic=True, max_steps=1, widht=2)
    with pytest.raises(ValueError, match="give epochs, minutes or max_steps"):
        compare_decoders(tmp_path, synthetic=True)
    with pytest.raises(ValueError, match="checkpoint 'last' or 'best'"):
        compare_decoders(tmp_path, synthetic=True, max_steps=1, checkpoint="first")
    assert not (tmp_path / "segnet-basic").exists()


def test_the_minisegnet_command_runs_compare_decoders(tmp_path, capsys):
    from minisegnet.cli import main as minisegnet

    status = minisegnet(["compare-decoders", "--synthetic", "--size", "16x24", "--max-steps", "1",
                         "--variants", "segnet-basic,fcn-basic", "--out", str(tmp_path), "--memory-size", "16x24",
                         "--repeats", "1", "--batch-size", "2", "--synthetic-train", "4", "--synthetic-val", "2",
                         "--channels", "4", "--kernel-size", "3", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0 and "| SegNet-Basic |" in out and "| FCN-Basic |" in out
    assert (tmp_path / "decoders.json").is_file() and (tmp_path / "decoders.png").is_file()
    assert minisegnet(["compare-decoders", "--synthetic", "--out", str(tmp_path)]) == 2  # no budget: one line
    err = capsys.readouterr().err
    assert err.startswith("minisegnet: error:") and err.count("\n") == 1


def test_an_earlier_comparison_is_kept_unless_overwrite(tmp_path, capsys):
    argv = ["--synthetic", "--size", "16x24", "--max-steps", "1", "--variants", "fcn-basic", "--out", str(tmp_path),
            "--memory-size", "16x24", "--repeats", "1", "--batch-size", "2", "--synthetic-train", "4",
            "--synthetic-val", "2", "--channels", "4", "--kernel-size", "3", "--quiet"]
    assert main(argv) == 0
    before = (tmp_path / "decoders.json").read_text()
    assert main(argv) == 2  # refused before anything is trained: the earlier results stay
    err = capsys.readouterr().err
    assert "already holds a comparison" in err and "--overwrite" in err
    assert (tmp_path / "decoders.json").read_text() == before
    assert main(argv + ["--overwrite"]) == 0


def test_the_class_weight_power_option_reaches_every_variants_run(tmp_path, monkeypatch):
    import argparse

    import minisegnet.compare as compare

    seen = {}
    monkeypatch.setattr(compare, "compare_decoders", lambda out, **kwargs: seen.update(kwargs) or {})
    parser = compare.add_arguments(argparse.ArgumentParser())
    compare.run_from_args(parser.parse_args(["--synthetic", "--max-steps", "1", "--class-weight-power", "1"]))
    assert seen["class_weight_power"] == 1.0
    seen.clear()
    compare.run_from_args(parser.parse_args(["--synthetic", "--max-steps", "1"]))
    assert "class_weight_power" not in seen  # TrainConfig's default
    with pytest.raises(SystemExit):
        parser.parse_args(["--synthetic", "--class-weight-power", "-1"])

"""``python -m benchmarks.run``: every row present, numbers that follow from each other, the machine recorded.

The harness runs in fresh interpreters with ``--quick`` (2×3×32×48 images, SegNet at width
0.25, one repeat, one thread), writing its JSON to a temporary folder.  Timings are never
asserted -- only that they are there and positive, and that everything derived from them
(ratios, GFLOP/s, fractions of the SGEMM peak, sums over a model's layers, the summary's
verdicts) is what the medians and the shapes give.  The expected layer shapes are worked
out here from the architectures (not from the harness's own recording), and PyTorch is
made unimportable for one run to check that its rows are left empty and ours still filled.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from minisegnet.layers import BatchNorm2d, Conv2d, MaxPool2d
from minisegnet.models import build_model
from minisegnet.models.segnet import SEGNET_DECODER, VGG16_ENCODER

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # plain `pytest` (unlike `python -m pytest`) leaves the repository root out
    sys.path.insert(0, str(REPO_ROOT))  # and `benchmarks` is not an installed package
HEIGHT, WIDTH, BATCH, SEGNET_WIDTH = 32, 48, 2, 0.25  # what --quick means
QUICK = ["--quick", "--threads", "1"]
TIMEOUT = 300

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def run_harness(tmp_path: Path, name: str, *args: str, hide_torch: bool = False):
    """Run the harness in a fresh interpreter; return (JSON record, stdout, stderr)."""
    out = tmp_path / f"{name}.json"
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if hide_torch:
        hidden = tmp_path / "hidden"
        (hidden / "torch").mkdir(parents=True, exist_ok=True)
        (hidden / "torch" / "__init__.py").write_text('raise ImportError("torch is hidden by the test")\n')
        paths.insert(0, str(hidden))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *QUICK, *args, "--json", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), done.stdout, done.stderr


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every section, both models, no memory processes."""
    return run_harness(tmp_path_factory.mktemp("full"), "full", "--no-memory")


@pytest.fixture(scope="module")
def with_memory(tmp_path_factory):
    return run_harness(tmp_path_factory.mktemp("memory"), "memory", "--models", "segnet-basic", "--only", "step,eval")


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory):
    return run_harness(tmp_path_factory.mktemp("notorch"), "notorch", "--models", "segnet-basic",
                       "--only", "conv,pool,step", hide_torch=True)


# -- the layer shapes, worked out from the architectures -------------------------------------
def _halve(size: int) -> int:
    return -(-size // 2)  # 2×2 pooling in ceil mode


def expected_convs(arch: str) -> dict:
    """{(C, O, k, H, W, needs_dx): number of layers} at HEIGHT×WIDTH."""
    sizes = [(HEIGHT, WIDTH)]
    for _ in range(5):
        sizes.append((_halve(sizes[-1][0]), _halve(sizes[-1][1])))
    shapes = {}

    def add(c, o, k, hw, needs_dx=True):
        key = (c, o, k, *hw, needs_dx)
        shapes[key] = shapes.get(key, 0) + 1

    if arch == "segnet-basic":  # 4 × 7×7 conv to 64 each side, then a 1×1 classifier
        for stage in range(4):
            add(3 if stage == 0 else 64, 64, 7, sizes[stage], needs_dx=stage > 0)
        for stage in reversed(range(4)):
            add(64, 64, 7, sizes[stage])
        add(64, 11, 1, sizes[0])
        return shapes
    channels, first = 3, True
    for stage, convs in enumerate(VGG16_ENCODER):
        for c in convs:
            c = max(1, round(c * SEGNET_WIDTH))
            add(channels, c, 3, sizes[stage], needs_dx=not first)
            channels, first = c, False
    for stage, convs in zip(reversed(range(5)), SEGNET_DECODER):
        for c in convs:
            c = max(1, round(c * SEGNET_WIDTH))
            add(channels, c, 3, sizes[stage])
            channels = c
    add(channels, 11, 3, sizes[0])
    return shapes


def _model(arch):
    return build_model(arch, **({"width": SEGNET_WIDTH} if arch == "segnet" else {}))


def _count(model, cls) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def rows_of(record, section, model=None):
    return [r for r in record["rows"] if r["section"] == section and (model is None or r["model"] == model)]


@pytest.mark.parametrize("arch", ["segnet-basic", "segnet"])
def test_every_distinct_conv_shape_is_one_row_with_its_layer_count(full, arch):
    record = full[0]
    rows = rows_of(record, "conv", arch)
    found = {}
    for r in rows:
        n, c, h, w = r["shape"]
        assert n == BATCH
        k = r["extra"]["kernel"]
        assert k[0] == k[1]
        key = (c, r["extra"]["out_channels"], k[0], h, w, r["extra"]["needs_input_grad"])
        assert key not in found, f"shape {key} appears in two rows"
        found[key] = r["count"]
        assert r["count"] == len(r["layers"]) == len(set(r["layers"]))
    assert found == expected_convs(arch)
    assert sum(found.values()) == _count(_model(arch), Conv2d)
    assert sum(not key[-1] for key in found) == 1  # only the first layer skips its input gradient


@pytest.mark.parametrize("arch, pools", [("segnet-basic", 4), ("segnet", 5)])
def test_norm_pool_step_and_eval_rows_cover_the_model(full, arch, pools):
    record = full[0]
    model = _model(arch)
    norms = rows_of(record, "norm", arch)
    assert sum(r["count"] for r in norms) == _count(model, BatchNorm2d)
    with_relu = sum(r["count"] for r in norms if "ReLU" in r["what"])
    # SegNet-Basic's decoder has no ReLU (its 4 BN stand alone); every SegNet BN is followed by one
    assert with_relu == (4 if arch == "segnet-basic" else _count(model, BatchNorm2d))
    pool_rows = rows_of(record, "pool", arch)
    assert sum(r["count"] for r in pool_rows) == _count(model, MaxPool2d) == pools
    for section in ("step", "eval"):
        (row,) = rows_of(record, section, arch)
        assert row["shape"] == [BATCH, 3, HEIGHT, WIDTH]
        assert list(row["phases"]) == [section]


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_ratios_gflops_and_fractions_follow_from_the_medians_and_shapes(full):
    record = full[0]
    peak = record["settings"]["sgemm_peak"]["gflops"]
    assert peak > 0
    for r in record["rows"]:
        assert set(r["phases"]) == ({"fwd", "fwd+bwd"} if r["section"] in ("conv", "norm", "pool") else {r["section"]})
        for phase, p in r["phases"].items():
            assert len(p["ours_samples_ms"]) == record["settings"]["repeats"]
            assert _close(p["ours_ms"], statistics.median(p["ours_samples_ms"]))
            assert p["ours_ms"] > 0
            if HAVE_TORCH:
                assert _close(p["torch_ms"], statistics.median(p["torch_samples_ms"])) and p["torch_ms"] > 0
                assert _close(p["ratio"], p["ours_ms"] / p["torch_ms"])
            if p["flops"] is None:
                assert r["section"] in ("norm", "pool") and p["ours_gflops"] is None
                continue
            for side in ("ours", "torch") if HAVE_TORCH else ("ours",):
                assert _close(p[f"{side}_gflops"], p["flops"] / (p[f"{side}_ms"] * 1e-3) / 1e9)
                assert _close(p[f"{side}_peak_fraction"], p[f"{side}_gflops"] / peak)
    for arch in ("segnet-basic", "segnet"):
        forward, training = 0, 0
        for r in rows_of(record, "conv", arch):
            n, c, h, w = r["shape"]
            k, o = r["extra"]["kernel"][0], r["extra"]["out_channels"]
            fwd = 2 * n * o * h * w * c * k * k  # stride 1, 'same' padding in both models
            backward_products = 2 if r["extra"]["needs_input_grad"] else 1
            assert r["phases"]["fwd"]["flops"] == fwd
            assert r["phases"]["fwd+bwd"]["flops"] == fwd * (1 + backward_products)
            forward += r["count"] * fwd
            training += r["count"] * fwd * (1 + backward_products)
        assert rows_of(record, "step", arch)[0]["phases"]["step"]["flops"] == training
        assert rows_of(record, "eval", arch)[0]["phases"]["eval"]["flops"] == forward


@pytest.mark.skipif(not HAVE_TORCH, reason="the summary's ratios need PyTorch")
def test_summary_states_each_target_from_the_rows(full):
    record = full[0]
    for arch in ("segnet-basic", "segnet"):
        lines = {s["measure"]: s for s in record["summary"] if s["model"] == arch}
        assert len(lines) == 7, sorted(lines)
        for s in lines.values():
            if s["value"] is None:
                assert s["met"] is None
            else:
                assert s["met"] == (s["value"] <= s["target"] if s["better"] == "<=" else s["value"] >= s["target"])
        convs = rows_of(record, "conv", arch)
        worst = max(r["phases"]["fwd+bwd"]["ratio"] for r in convs)
        assert _close(lines["conv fwd+bwd, worst layer shape, ours / PyTorch"]["value"], worst)
        total = (sum(r["count"] * r["phases"]["fwd+bwd"]["ours_ms"] for r in convs)
                 / sum(r["count"] * r["phases"]["fwd+bwd"]["torch_ms"] for r in convs))
        assert _close(lines["conv fwd+bwd, sum over the model's layers, ours / PyTorch"]["value"], total)
        step = rows_of(record, "step", arch)[0]["phases"]["step"]
        assert _close(lines["training step time, ours / PyTorch"]["value"], step["ratio"])
        assert _close(lines["training step conv GFLOP/s / SGEMM peak, ours"]["value"], step["ours_peak_fraction"])
        eval_ = rows_of(record, "eval", arch)[0]["phases"]["eval"]
        assert _close(lines["eval forward time, ours / PyTorch"]["value"], eval_["ratio"])
        assert lines["training step peak working memory, ours / PyTorch"]["value"] is None  # --no-memory


def test_machine_and_settings_are_recorded(full):
    record, stdout, _ = full
    machine = record["machine"]
    assert machine["date"][:4].isdigit() and machine["cpu"]
    assert machine["logical_cores"] >= 1 and machine["usable_cores"] >= 1
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert machine["numpy"] and machine["blas"]["name"]
    if machine["blas"]["threads"] is not None:  # the BLAS could be probed: --threads 1 took effect
        assert machine["blas"]["threads"] == 1
    assert "--quick" in machine["command"] and "--no-memory" in machine["command"]
    assert machine["torch"]["installed"] is HAVE_TORCH
    if HAVE_TORCH:
        assert machine["torch"]["version"] and machine["torch"]["threads"] == 1
        assert record["settings"]["torch_sgemm"]["gflops"] > 0
    settings = record["settings"]
    assert settings["repeats"] == 1 and settings["device"] == "cpu" and settings["threads"] == 1
    assert settings["batches"] == {"segnet-basic": BATCH, "segnet": BATCH}
    # the Markdown: the machine paragraph, the summary and one table per section
    for heading in ("Against the targets", "Conv2d, every distinct layer shape", "BatchNorm2d", "Max pooling",
                    "Whole model"):
        assert f"#### {heading}" in stdout
    assert machine["cpu"] in stdout and machine["command"] in stdout
    table_lines = [line for line in stdout.splitlines() if line.startswith("| segnet")]
    assert len(table_lines) == len(record["rows"]) + len(record["summary"])


@pytest.mark.skipif(not HAVE_TORCH, reason="compares the memory of both sides")
def test_peak_memory_of_step_and_eval_is_measured_for_both_sides(with_memory):
    record, stdout, _ = with_memory
    assert {r["section"] for r in record["rows"]} == {"step", "eval"}
    lines = {s["measure"]: s for s in record["summary"]}
    for r in record["rows"]:
        memory = r["extra"]["memory"]
        for side in ("ours", "torch"):
            assert isinstance(memory[f"{side}_peak_bytes"], int) and memory[f"{side}_peak_bytes"] > 0, memory
            assert "VmHWM" in memory[f"{side}_method"] or "allocated" in memory[f"{side}_method"]
        name = "training step" if r["section"] == "step" else "eval forward"
        value = lines[f"{name} peak working memory, ours / PyTorch"]["value"]
        assert _close(value, memory["ours_peak_bytes"] / memory["torch_peak_bytes"])
    assert r["extra"]["peer_max_relative_difference"] < 1e-3  # the PyTorch twin computes our network


def test_without_torch_its_rows_are_empty_and_ours_are_measured(without_torch):
    record, stdout, stderr = without_torch
    assert record["machine"]["torch"] == {"installed": False}
    assert "torch_sgemm" not in record["settings"]
    assert any("not installed" in note for note in record["settings"]["notes"])
    sections = {r["section"] for r in record["rows"]}
    assert sections == {"conv", "pool", "step"}
    for r in record["rows"]:
        for p in r["phases"].values():
            assert p["ours_ms"] > 0
            assert p["torch_ms"] is None and p["ratio"] is None and p["torch_samples_ms"] is None
            assert p["torch_gflops"] is None
    memory = rows_of(record, "step")[0]["extra"]["memory"]
    assert memory["ours_peak_bytes"] > 0 and "torch_peak_bytes" not in memory
    for s in record["summary"]:
        if "ours / PyTorch" in s["measure"]:
            assert s["value"] is None and s["met"] is None
    assert "–" in stdout


def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    from minisegnet.backend import cuda_is_available

    if cuda_is_available():
        pytest.skip("a GPU is present: --device cuda would run")
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--device", "cuda"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["--only", "conv,bogus"], "unknown section bogus"),
    (["--models", "unet"], "unknown model unet"),
    (["--size", "180"], "HEIGHTxWIDTH"),
    (["--batch", "segnet=0"], "--batch"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_options_are_refused_naming_the_option(argv, message, capsys):
    from benchmarks.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_batch_option_sets_every_model_or_one():
    from benchmarks.run import parse_args

    assert parse_args([]).batches == {"segnet-basic": 4, "segnet": 2}
    assert parse_args(["--batch", "3"]).batches == {"segnet-basic": 3, "segnet": 3}
    assert parse_args(["--batch", "segnet=1", "--models", "segnet"]).batches == {"segnet": 1}


def test_blas_thread_limit_works_without_threadpoolctl():
    from benchmarks.harness.machine import numpy_blas

    blas = numpy_blas()
    before = blas.threads
    if before is None:
        pytest.skip("NumPy's BLAS could not be probed on this machine")
    try:
        blas.set_threads(1)
        assert blas.threads == 1
    finally:
        blas.set_threads(before)
    assert blas.threads == before


def assert_tables_are_rectangular(markdown: str) -> None:
    """Every row of every Markdown table has as many cells as its header."""
    for block in markdown.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert {line.count("|") for line in rows} == {rows[0].count("|")}, block


def test_step_profile_times_every_layer_inside_the_step(capsys):
    """benchmarks.profile_step: each leaf layer timed in the step; the types add up to the step with the rest."""
    from benchmarks import profile_step
    from minisegnet.models import build_model

    result = profile_step.profile("segnet-basic", 2, 32, 48, repeats=1, warmup=1)
    model = build_model("segnet-basic", **profile_step.model_config("segnet-basic", 1.0), rng=0)
    leaves = {name for name, layer in model.named_modules() if name and not list(layer.children())}
    assert set(result["kinds"]) == leaves | {"loss"}
    assert set(result["layer_s"]) == {(name, m) for name in leaves | {"loss"} for m in ("forward", "backward")}
    inside = sum(result["layer_s"].values())
    assert 0 < inside <= result["step_s"]
    assert profile_step.main(["--quick"]) == 0
    out = capsys.readouterr().out
    conv_row = next(line for line in out.splitlines() if line.startswith("| Conv2d |"))
    assert conv_row.split("|")[2].strip() == "9"  # SegNet-Basic's 8 stage convolutions and the classifier
    assert "| outside the layers" in out and "**the whole step**" in out
    assert_tables_are_rectangular(out)


def test_eval_profile_times_every_forward_inside_the_eval_call(capsys):
    """``--eval``: the leaf layers' forwards inside an eval forward, no backward, no loss."""
    from benchmarks import profile_step
    from minisegnet.models import build_model

    result = profile_step.profile("segnet-basic", 2, 32, 48, repeats=1, warmup=1, mode="eval")
    model = build_model("segnet-basic", **profile_step.model_config("segnet-basic", 1.0), rng=0)
    leaves = {name for name, layer in model.named_modules() if name and not list(layer.children())}
    assert {name for name, _ in result["layer_s"]} <= leaves and {m for _, m in result["layer_s"]} == {"forward"}
    assert {name for name in leaves if "conv" in name} <= {name for name, _ in result["layer_s"]}
    assert 0 < sum(result["layer_s"].values()) <= result["step_s"]
    assert profile_step.main(["--quick", "--eval"]) == 0
    out = capsys.readouterr().out
    assert "eval forward (no_grad)" in out and "**the whole forward**" in out and "zero_grad" not in out
    assert_tables_are_rectangular(out)


REPO = Path(__file__).resolve().parent.parent


def test_both_thread_pools_are_told_to_wait_passively():
    """benchmarks.run sets OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT unless the user did (a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    probe = "import os, benchmarks.run; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "4"]
    env["OPENBLAS_THREAD_TIMEOUT"] = "10"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "10"]  # the user's setting wins


@pytest.mark.parametrize("script", ["benchmarks/run.py", "benchmarks/bench_conv.py",
                                    "benchmarks/bench_training_step.py"])
def test_passive_waiting_comes_before_numpy_and_torch_start(script):
    """The variables are read when the thread pools start: the call must precede every import that starts them."""
    import ast

    tree = ast.parse((REPO / script).read_text())
    order = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == "wait_passively":
            order.append("wait")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("numpy", "torch", "minisegnet") or n.startswith("benchmarks.harness.")
                   and not n.endswith("waiting") for n in names):
                order.append("import")
    assert "wait" in order and "import" not in order[: order.index("wait")], order

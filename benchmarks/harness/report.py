"""Rows, the summary against the issue's targets, and the Markdown and JSON they are written as.

A :class:`Row` is one case (a layer shape, a model's step, a model's eval forward) with one
entry per reported phase: median milliseconds of each side, the ratio ours / PyTorch, and,
where convolution flops are counted, GFLOP/s and their fraction of the measured SGEMM peak.
The ratio is computed from the two medians shown, so the table can be checked by hand.

The summary states, per model, the numbers the targets of issue 11 are about, each with its
target and whether it is met (``None`` where a side is missing, e.g. without PyTorch):

* training step and eval forward: time ours / PyTorch, target ≤ 1.3;
* every conv layer shape, forward + backward: the worst ratio, target ≤ 1.5;
* the sum over a model's conv layers (each shape × the number of layers that have it),
  forward + backward: target ≤ 1.3;
* the training step's conv GFLOP/s as a fraction of the SGEMM peak: target ≥ 0.6;
* peak working memory of the step and of the eval forward, ours / PyTorch: target ≤ 1.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

DASH = "–"


@dataclass
class Row:
    section: str  # conv, norm, pool, step, eval
    model: str
    what: str
    shape: tuple
    layers: list[str]
    phases: dict[str, dict]
    extra: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.layers)


def phase_entry(ours_samples, torch_samples, flops: int | None, peak_gflops: float | None) -> dict:
    """One phase of a row from the per-repeat seconds of each side (``torch_samples`` may be None)."""
    import statistics

    ours_ms = statistics.median(ours_samples) * 1e3
    torch_ms = statistics.median(torch_samples) * 1e3 if torch_samples else None
    entry = {
        "ours_ms": ours_ms,
        "torch_ms": torch_ms,
        "ratio": ours_ms / torch_ms if torch_ms else None,
        "flops": flops,
        "ours_samples_ms": [s * 1e3 for s in ours_samples],
        "torch_samples_ms": [s * 1e3 for s in torch_samples] if torch_samples else None,
    }
    for side, ms in (("ours", ours_ms), ("torch", torch_ms)):
        gflops = flops / (ms * 1e-3) / 1e9 if flops and ms else None
        entry[f"{side}_gflops"] = gflops
        entry[f"{side}_peak_fraction"] = gflops / peak_gflops if gflops and peak_gflops else None
    return entry


# -- summary ---------------------------------------------------------------------------------
def _ratio(a, b):
    return a / b if a is not None and b else None


def _target(model, measure, value, target, better, note=""):
    met = None if value is None else (value <= target if better == "<=" else value >= target)
    return {"model": model, "measure": measure, "value": value, "target": target, "better": better, "met": met,
            "note": note}


def summarize(rows: list[Row], models: list[str]) -> list[dict]:
    lines = []
    for model in models:
        step = next((r for r in rows if r.model == model and r.section == "step"), None)
        evaluation = next((r for r in rows if r.model == model and r.section == "eval"), None)
        convs = [r for r in rows if r.model == model and r.section == "conv"]
        if step is not None:
            p = step.phases["step"]
            lines.append(_target(model, "training step time, ours / PyTorch", p["ratio"], 1.3, "<=",
                                 f"{step.extra.get('input', '')}"))
        if evaluation is not None:
            p = evaluation.phases["eval"]
            lines.append(_target(model, "eval forward time, ours / PyTorch", p["ratio"], 1.3, "<=",
                                 f"{evaluation.extra.get('input', '')}"))
        if convs:
            rated = [(r.phases["fwd+bwd"]["ratio"], r) for r in convs if r.phases["fwd+bwd"]["ratio"] is not None]
            worst = max(rated, key=lambda t: t[0]) if rated else None
            lines.append(_target(model, "conv fwd+bwd, worst layer shape, ours / PyTorch",
                                 worst[0] if worst else None, 1.5, "<=",
                                 f"{worst[1].what} on {_shape(worst[1].shape)}" if worst else ""))
            complete = len(rated) == len(convs)
            ours_sum = sum(r.count * r.phases["fwd+bwd"]["ours_ms"] for r in convs)
            torch_sum = sum(r.count * r.phases["fwd+bwd"]["torch_ms"] for r in convs) if complete else None
            lines.append(_target(model, "conv fwd+bwd, sum over the model's layers, ours / PyTorch",
                                 _ratio(ours_sum, torch_sum), 1.3, "<=",
                                 f"{ours_sum:.0f} ms against {torch_sum:.0f} ms" if torch_sum else
                                 f"ours {ours_sum:.0f} ms"))
        if step is not None:
            p = step.phases["step"]
            theirs = p.get("torch_peak_fraction")
            lines.append(_target(model, "training step conv GFLOP/s / SGEMM peak, ours", p.get("ours_peak_fraction"),
                                 0.6, ">=", f"PyTorch {theirs:.0%}" if theirs is not None else ""))
        for row, name in ((step, "training step"), (evaluation, "eval forward")):
            if row is None:
                continue
            memory = row.extra.get("memory", {})
            ours_b, torch_b = memory.get("ours_peak_bytes"), memory.get("torch_peak_bytes")
            note = f"{_mib(ours_b)} MiB against {_mib(torch_b)} MiB" if ours_b is not None else "not measured"
            lines.append(_target(model, f"{name} peak working memory, ours / PyTorch", _ratio(ours_b, torch_b),
                                 1.0, "<=", note))
    return lines


# -- Markdown --------------------------------------------------------------------------------
def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)


def _ms(v) -> str:
    if v is None:
        return DASH
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _x(v) -> str:
    return DASH if v is None else f"{v:.2f}×"


def _mib(nbytes) -> str:
    return DASH if nbytes is None else f"{nbytes / 2**20:.0f}"


def _gflops(entry, side) -> str:
    g, f = entry.get(f"{side}_gflops"), entry.get(f"{side}_peak_fraction")
    if g is None:
        return DASH
    return f"{g:.0f} ({f:.0%})" if f is not None else f"{g:.0f}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def machine_paragraph(record: dict, settings: dict) -> str:
    blas = record["blas"]
    torch = record["torch"]
    torch_text = (f"PyTorch {torch['version']} (threads: {torch['threads']}"
                  + (f", BLAS {torch['blas']}" if torch.get("blas") else "")
                  + (f", mkldnn {'on' if torch.get('mkldnn') else 'off'}" if "mkldnn" in torch else "") + ")"
                  if torch.get("installed") else "PyTorch not installed (its columns are empty)")
    if torch.get("not_used"):
        torch_text = f"PyTorch not used ({torch['not_used']}; its columns are empty)"
    peak = settings["sgemm_peak"]
    text = (f"Measured on {record['date']}. CPU: {record['cpu']} "
            f"({', '.join(record['cpu_vector_extensions']) or 'no AVX flags seen'}), "
            f"{record['usable_cores']} usable cores ({record['logical_cores']} logical), "
            f"load average {record['load_average_at_start']} at the start and "
            f"{record.get('load_average_at_end')} at the end; Python {record['python']}, "
            f"NumPy {record['numpy']} with {blas.get('name')} {blas.get('version')} "
            f"(kernel {blas.get('kernel') or '?'}, threads: {blas.get('threads') or '?'}), {torch_text}")
    if "cupy" in record:
        cupy = record["cupy"]
        text += f"; GPU {cupy['gpu']}, CuPy {cupy['version']} (TF32 {'on' if cupy['tf32'] else 'off'})"
        if torch.get("gpu"):
            text += (f", PyTorch CUDA {torch.get('cuda')} cuDNN {torch.get('cudnn')} "
                     f"(TF32 {'on' if torch.get('tf32_cudnn') else 'off'})")
    text += (f"; device {settings['device']}, float32, {settings['clock']} time, median of {settings['repeats']} "
             f"interleaved repeats after {settings['warmup']} warm-up; git {record.get('git') or '?'}. "
             f"SGEMM peak ({peak['library']} matmul {peak['n']}×{peak['n']}): {peak['gflops']:.0f} GFLOP/s"
             + (f" (torch.mm: {settings['torch_sgemm']['gflops']:.0f})" if settings.get("torch_sgemm") else "")
             + f". Environment: {_environment_text(record)}. Command: `{record['command']}`")
    return text


def _environment_text(record: dict) -> str:
    env = record.get("environment") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "no thread variables set"


def markdown(rows: list[Row], summary: list[dict], record: dict, settings: dict) -> str:
    parts = [f"### {settings['device'].upper()}: {record.get('cupy', {}).get('gpu') or record['cpu']}, "
             f"{record['blas'].get('name')} kernel {record['blas'].get('kernel') or '?'} "
             f"({record['date'][:10]})", "", machine_paragraph(record, settings), ""]
    if summary:
        lines = [[s["model"], s["measure"], _x(s["value"]) if "GFLOP" not in s["measure"] else
                  (DASH if s["value"] is None else f"{s['value']:.0%}"),
                  f"{s['better']} {s['target']:.0%}" if "GFLOP" in s["measure"] else f"{s['better']} {s['target']}×",
                  DASH if s["met"] is None else ("yes" if s["met"] else "**no**"), s["note"]] for s in summary]
        parts += ["#### Against the targets", "", _table(["model", "measure", "value", "target", "met", ""], lines),
                  ""]
    conv = [r for r in rows if r.section == "conv"]
    if conv:
        lines = []
        for r in conv:
            f, fb = r.phases["fwd"], r.phases["fwd+bwd"]
            lines.append([r.model, r.what, _shape(r.shape), str(r.count), r.extra.get("algorithm") or DASH,
                          _ms(f["ours_ms"]), _ms(f["torch_ms"]), _x(f["ratio"]),
                          _ms(fb["ours_ms"]), _ms(fb["torch_ms"]), _x(fb["ratio"]),
                          _gflops(fb, "ours"), _gflops(fb, "torch")])
        parts += ["#### Conv2d, every distinct layer shape (ms; GFLOP/s of fwd+bwd, % of SGEMM peak)", "",
                  _table(["model", "layer", "input", "layers", "ours algorithm", "fwd ours", "fwd torch", "ratio",
                          "f+b ours", "f+b torch", "ratio", "f+b GFLOP/s ours", "f+b GFLOP/s torch"], lines), ""]
    for section, title in (("norm", "BatchNorm2d (+ in-place ReLU), training mode (ms)"),
                           ("pool", "Max pooling with indices + unpooling (ms)")):
        chosen = [r for r in rows if r.section == section]
        if not chosen:
            continue
        lines = []
        for r in chosen:
            f, fb = r.phases["fwd"], r.phases["fwd+bwd"]
            lines.append([r.model, r.what, _shape(r.shape), str(r.count), _ms(f["ours_ms"]), _ms(f["torch_ms"]),
                          _x(f["ratio"]), _ms(fb["ours_ms"]), _ms(fb["torch_ms"]), _x(fb["ratio"])])
        parts += [f"#### {title}", "", _table(["model", "what", "input", "layers", "fwd ours", "fwd torch", "ratio",
                                               "f+b ours", "f+b torch", "ratio"], lines), ""]
    whole = [r for r in rows if r.section in ("step", "eval")]
    if whole:
        lines = []
        for r in whole:
            p = r.phases[r.section]
            memory = r.extra.get("memory", {})
            lines.append([r.model, r.what, _shape(r.shape), _ms(p["ours_ms"]), _ms(p["torch_ms"]), _x(p["ratio"]),
                          _gflops(p, "ours"), _gflops(p, "torch"), _mib(memory.get("ours_peak_bytes")),
                          _mib(memory.get("torch_peak_bytes")),
                          _x(_ratio(memory.get("ours_peak_bytes"), memory.get("torch_peak_bytes")))])
        parts += ["#### Whole model (ms; conv GFLOP/s, % of SGEMM peak; peak working memory in MiB above the "
                  "baseline, see `benchmarks/harness/memory.py`)", "",
                  _table(["model", "what", "input", "ours", "torch", "ratio", "GFLOP/s ours", "GFLOP/s torch",
                          "peak MiB ours", "peak MiB torch", "memory ratio"], lines), ""]
    notes = settings.get("notes") or []
    if notes:
        parts += ["Notes: " + " ".join(notes), ""]
    return "\n".join(parts)


def to_json(rows: list[Row], summary: list[dict], record: dict, settings: dict) -> str:
    return json.dumps({"machine": record, "settings": settings, "summary": summary,
                       "rows": [asdict(r) | {"count": r.count} for r in rows]}, indent=1, default=str, ensure_ascii=False)

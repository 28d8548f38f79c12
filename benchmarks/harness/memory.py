"""Peak working memory of a training step or an eval forward, one side at a time, in a fresh process.

What is measured: the most memory the process held at any moment during two calls (the
first allocates what is made lazily: gradients, optimizer state, workspaces; the second is
the steady state), *minus* what it held just before them, after the libraries were imported
and the model, its input and the loss were built.  So the import of PyTorch (hundreds of
MB) and the weights do not count; activations kept for the backward, gradients, optimizer
state, scratch buffers and the allocator's fragmentation do.  So does what each library
sets up on its first call (PyTorch's oneDNN and OpenMP state, our conv workspaces): a few
tens of MB that dominate at ``--quick``'s tiny sizes and matter little at 180×240.  A peak
measured after a warm-up call instead would be biased the other way: whatever a side keeps
between calls (optimizer state, our layers' caches and workspaces) would sit in the
baseline and go uncounted.

How, on the CPU: the kernel keeps a high-water mark of the resident set (``VmHWM`` in
``/proc/self/status``).  Writing ``5`` to ``/proc/self/clear_refs`` resets it to the current
resident size (Linux 4.0 and later), so ``VmHWM`` after the calls minus ``VmRSS`` before them
is the peak above the baseline.  Where the reset is refused the mark since the start of the
process is used, an upper bound, and the record says so.  The resident set counts what was
touched, whoever allocated it (NumPy, PyTorch's allocator, OpenBLAS, oneDNN), which is why
this is used rather than tracemalloc (blind to PyTorch).

Why a fresh process per measurement: freed memory often stays with the process (glibc's
heap, PyTorch's and our workspaces), so a second measurement in the same process would start
from a baseline that already holds the first one's buffers and undercount.  Each
measurement runs ``python -m benchmarks.harness.memory ...`` and reads one JSON line back.

On the GPU the two sides count what their allocator handed out: CuPy through a memory hook
on its pool (bytes live at the peak, above those live before), PyTorch through
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the same quantity).
Memory the libraries take outside their pools (cuBLAS and cuDNN handles) is not counted on
either side.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CALLS = 2


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_above_baseline(fn) -> dict:
    gc.collect()
    baseline = _status_bytes("VmRSS")
    if baseline is None:
        return {"peak_bytes": None, "method": "unavailable: no /proc/self/status (not Linux)"}
    reset = _reset_high_water_mark()
    for _ in range(CALLS):
        fn()
    peak = _status_bytes("VmHWM")
    method = ("VmHWM after the calls - VmRSS before them (high-water mark reset via /proc/self/clear_refs)" if reset
              else "VmHWM since process start - VmRSS before the calls (clear_refs refused: an upper bound)")
    return {"peak_bytes": peak - baseline, "baseline_bytes": baseline, "method": method}


def _peak_cupy_above_baseline(fn, cupy, sync) -> dict:
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.live = self.peak = 0

        def malloc_postprocess(self, **kwargs):  # a block handed out by the pool
            self.live += kwargs["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kwargs):  # a block given back to the pool
            self.live -= kwargs["mem_size"]

    gc.collect()
    sync()
    hook = PeakHook()
    with hook:
        for _ in range(CALLS):
            fn()
        sync()
    return {"peak_bytes": int(hook.peak), "method": "CuPy pool: peak of bytes handed out above those live before"}


def _peak_torch_cuda_above_baseline(fn, torch) -> dict:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return {"peak_bytes": int(torch.cuda.max_memory_allocated() - baseline), "baseline_bytes": int(baseline),
            "method": "torch.cuda.max_memory_allocated - memory_allocated before (reset_peak_memory_stats)"}


def measure(side: str, arch: str, mode: str, batch: int, height: int, width: int, device: str, threads: int | None,
            optimizer: str, segnet_width: float, tf32: bool) -> dict:
    """Peak working memory of ``CALLS`` steps (``mode="step"``) or eval forwards of one side."""
    from benchmarks.harness.cases import ModelCase, OurDevice, TorchDevice, model_config

    torch = cupy = None
    if side == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
    if device == "cuda":
        from minisegnet.backend import import_cupy

        cupy = import_cupy()
    ours = OurDevice(device, cupy)
    peer = TorchDevice(torch, device) if torch is not None else None
    case = ModelCase(arch, model_config(arch, segnet_width), batch, height, width, ours, peer, optimizer,
                     sides=(side,), check_peer=False)
    if side == "ours":
        fn = case.our_step() if mode == "step" else case.our_eval()
    else:
        fn = case.torch_step() if mode == "step" else case.torch_eval()
    if device == "cuda" and side == "ours":
        result = _peak_cupy_above_baseline(fn, cupy, ours.sync)
    elif device == "cuda":
        result = _peak_torch_cuda_above_baseline(fn, torch)
    else:
        result = _peak_rss_above_baseline(fn)
    return {"side": side, "arch": arch, "mode": mode, "calls": CALLS, **result}


def measure_in_subprocess(side: str, arch: str, mode: str, batch: int, height: int, width: int, device: str,
                          threads: int | None, optimizer: str, segnet_width: float, tf32: bool,
                          timeout: float = 900) -> dict:
    """:func:`measure` in a fresh interpreter; a failure comes back as ``{"error": ...}``."""
    command = [sys.executable, "-m", "benchmarks.harness.memory", "--side", side, "--arch", arch, "--mode", mode,
               "--batch", str(batch), "--size", f"{height}x{width}", "--device", device, "--optimizer", optimizer,
               "--segnet-width", str(segnet_width)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads:
        command += ["--threads", str(threads)]
        env["OPENBLAS_NUM_THREADS"] = str(threads)  # read when NumPy loads OpenBLAS in the child
    if tf32:
        command.append("--tf32")
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit status {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one peak-memory measurement (used by benchmarks.run)")
    parser.add_argument("--side", choices=("ours", "torch"), required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--mode", choices=("step", "eval"), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--segnet-width", type=float, default=1.0)
    parser.add_argument("--tf32", action="store_true")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    if args.threads and args.side == "ours":
        from benchmarks.harness.machine import set_blas_threads

        set_blas_threads(args.threads)
    print(json.dumps(measure(args.side, args.arch, args.mode, args.batch, height, width, args.device, args.threads,
                             args.optimizer, args.segnet_width, args.tf32)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a benchmark ran on, how many threads it used, and how fast the machine multiplies matrices.

A timing means little without the machine: the same code is 1.5× PyTorch on one CPU and 2×
on another, because the BLAS picks a different kernel (OpenBLAS's "Zen" or "SkylakeX"), the
core count differs, or another process holds the cores.  :func:`machine_record` gathers all
of it into one dictionary that the report prints and the JSON keeps.

**The BLAS, with or without threadpoolctl.**  NumPy's OpenBLAS can be asked at run time for
its kernel (``openblas_get_corename``), its build configuration and its thread count, and
told to use fewer threads (``openblas_set_num_threads``).  threadpoolctl does exactly that;
when it is not installed, :class:`Blas` calls the same functions itself through ctypes, on
the OpenBLAS library that NumPy has already loaded (found in ``/proc/self/maps``).  The
scipy-openblas wheels that NumPy ships rename the symbols (``scipy_openblas_..._64_``), so
both spellings are tried.  Setting the environment variable ``OPENBLAS_NUM_THREADS`` would
work only before NumPy is imported; the run-time call works at any point.

**The SGEMM peak.**  The GFLOP/s of a convolution are read against what the same BLAS reaches
on the easiest possible problem: ``matmul`` of two large square float32 matrices, with the
same thread count, median of a few calls (:func:`sgemm_peak`).  A layer at 60 % of it keeps
the cores busy with useful multiply-adds 60 % of the time; what is lost is copies, passes over
memory and GEMMs too thin to reach the kernel's speed.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "CUPY_TF32", "MINISEGNET_DEVICE")


# -- the CPU ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_vector_extensions() -> list[str]:
    """The SIMD extensions a BLAS kernel cares about, from the CPU flags (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    return [f for f in wanted if f in flags]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else the logical core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- NumPy's BLAS ----------------------------------------------------------------------------
def _numpy_blas_build() -> dict:
    """Name, version and configuration string of the BLAS NumPy was built against."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return {"name": blas.get("name"), "version": blas.get("version"),
                "configuration": blas.get("openblas configuration")}
    except Exception:  # older NumPy: no mode="dicts"
        return {"name": None, "version": None, "configuration": None}


def _loaded_openblas_paths() -> list[str]:
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split()[-1] for line in lines if "/" in line}
    return sorted(p for p in paths if "openblas" in os.path.basename(p).lower())


class Blas:
    """NumPy's BLAS at run time: kernel, configuration, thread count, and a thread limit.

    Uses threadpoolctl when it is installed, else ctypes on the loaded OpenBLAS.  Anything
    it cannot find is ``None`` (and :meth:`set_threads` says so with an error).
    """

    _SPELLINGS = (("scipy_openblas", "64_"), ("scipy_openblas", "_64_"), ("scipy_openblas", ""),
                  ("openblas", "64_"), ("openblas", ""))

    def __init__(self):
        self.build = _numpy_blas_build()
        self.source = None
        self._lib = None
        self._suffix = self._prefix = None
        self._threadpoolctl = None
        self._limits = None  # keeps a threadpoolctl limit alive for the whole run
        try:
            import threadpoolctl

            self._threadpoolctl = threadpoolctl
            self.source = f"threadpoolctl {threadpoolctl.__version__}"
        except ImportError:
            self._find_openblas()

    def _find_openblas(self) -> None:
        for path in _loaded_openblas_paths():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in self._SPELLINGS:
                if getattr(lib, f"{prefix}_get_num_threads{suffix}", None) is not None:
                    self._lib, self._prefix, self._suffix = lib, prefix, suffix
                    self.source = f"ctypes on {os.path.basename(path)}"
                    return

    def _function(self, name: str, restype=ctypes.c_int, argtypes=()):
        fn = getattr(self._lib, f"{self._prefix}_{name}{self._suffix}", None)
        if fn is not None:
            fn.restype, fn.argtypes = restype, list(argtypes)
        return fn

    def _threadpool_entry(self) -> dict | None:
        infos = [i for i in self._threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        numpy_owned = [i for i in infos if "numpy" in i.get("filepath", "")]
        return (numpy_owned or infos or [None])[0]

    @property
    def threads(self) -> int | None:
        if self._threadpoolctl is not None:
            entry = self._threadpool_entry()
            return None if entry is None else int(entry["num_threads"])
        fn = self._function("get_num_threads") if self._lib is not None else None
        return None if fn is None else int(fn())

    @property
    def kernel(self) -> str | None:
        """OpenBLAS's core name: the kernel it picked for this CPU ("Zen", "SkylakeX", "Haswell")."""
        if self._threadpoolctl is not None:
            entry = self._threadpool_entry()
            return None if entry is None else entry.get("architecture")
        fn = self._function("get_corename", ctypes.c_char_p) if self._lib is not None else None
        return None if fn is None else fn().decode().strip()

    @property
    def runtime_configuration(self) -> str | None:
        if self._lib is None:
            return None
        fn = self._function("get_config", ctypes.c_char_p)
        return None if fn is None else fn().decode().strip()

    def set_threads(self, count: int) -> None:
        if self._threadpoolctl is not None:
            self._limits = self._threadpoolctl.threadpool_limits(count, user_api="blas")
            return
        fn = self._function("set_num_threads", None, (ctypes.c_int,)) if self._lib is not None else None
        if fn is None:
            raise RuntimeError("benchmarks: cannot set NumPy's BLAS threads (no OpenBLAS found and no threadpoolctl); "
                               f"set OPENBLAS_NUM_THREADS={count} in the environment instead")
        fn(count)

    def record(self) -> dict:
        return {**self.build, "kernel": self.kernel, "threads": self.threads,
                "runtime_configuration": self.runtime_configuration, "probed_with": self.source}


_BLAS = None


def numpy_blas() -> Blas:
    """The one :class:`Blas` of this process."""
    global _BLAS
    if _BLAS is None:
        _BLAS = Blas()
    return _BLAS


def set_blas_threads(count: int) -> None:
    """Limit NumPy's BLAS to ``count`` threads from now on (threadpoolctl not needed)."""
    numpy_blas().set_threads(count)


# -- PyTorch and CuPy ------------------------------------------------------------------------
def torch_record(torch, device: str) -> dict:
    if torch is None:
        return {"installed": False}
    try:
        config = torch.__config__.show()
    except Exception:
        config = ""
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    record = {
        "installed": True,
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "blas": blas.group(1) if blas else None,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
    if device == "cuda" and torch.cuda.is_available():
        record.update({
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "gpu": torch.cuda.get_device_name(0),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        })
    return record


def cupy_record(cupy) -> dict:
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = properties["name"]
    return {
        "version": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "gpu": name.decode() if isinstance(name, bytes) else str(name),
        "gpu_memory_bytes": int(properties["totalGlobalMem"]),
        "tf32": os.environ.get("CUPY_TF32", "0") == "1",
    }


def git_revision() -> str | None:
    """The commit of this checkout, with ``+dirty`` when files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_record(torch, device: str, cupy=None, command: list[str] | None = None) -> dict:
    """Everything a table in BENCHMARKS.md must say about where and how it was measured."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_vector_extensions": cpu_vector_extensions(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_at_start": [round(v, 2) for v in load] if load else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": numpy_blas().record(),
        "torch": torch_record(torch, device),
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "git": git_revision(),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if command is None else command),
    }
    if cupy is not None:
        record["cupy"] = cupy_record(cupy)
    return record


# -- the SGEMM peak --------------------------------------------------------------------------
def sgemm_peak(xp, n: int, repeats: int = 5, sync=lambda: None) -> dict:
    """Median GFLOP/s of ``xp.matmul`` on two n×n float32 matrices (2·n³ flops a call)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    # NumPy writes into one preallocated product (no page faults timed); CuPy's pool recycles its own
    out = {"out": np.empty((n, n), dtype=np.float32)} if xp is np else {}
    xp.matmul(a, b, **out)  # warm-up: threads started, pages touched
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        xp.matmul(a, b, **out)
        sync()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"n": n, "repeats": repeats, "median_ms": median * 1e3, "gflops": 2.0 * n**3 / median / 1e9}


def torch_sgemm(torch, n: int, device: str, repeats: int = 5, sync=lambda: None) -> dict:
    """The same for ``torch.mm`` (context only: the fractions are read against NumPy's/CuPy's peak)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"n": n, "repeats": repeats, "median_ms": median * 1e3, "gflops": 2.0 * n**3 / median / 1e9}

"""The budgets of a training run: the time it may take, and the memory it will need.

**Time.**

``TrainConfig.minutes`` bounds the whole :func:`~minisegnet.train.train` call, data
preparation and final evaluation included: the clock starts when the run is created, or, for
the ``minisegnet`` command, when the package began to import (``minisegnet.IMPORT_STARTED``,
before NumPy and the rest are imported), so that ``--minutes 30`` bounds what
``time minisegnet train ...`` measures.  (Not the process's start, which ``/proc`` knows: a shell
that ends a script by ``exec``-ing the command would lend it its own age.)  A run that must stop
in time has to know three things, all measured on the run itself:

* **what a step costs**: the mean of the recent steps (the very first, with its allocations,
  left out);
* **what the end of the run costs** (the *final reserve*): the last evaluation (measured on one
  validation batch before training, then on every evaluation, keeping the slowest: evaluations
  on a shared machine differ by a third from one to the next), the figure, writing both
  checkpoints and, with ``recompute_bn``, the pass over the training images;
* **whether another step fits**: elapsed + the slowest recent step + the final reserve <= the budget.  Before
  each step the loop asks; when it does not fit, the run stops, evaluates, saves ``last.npz``
  and draws the figure.

**A schedule as long as the budget.**  With ``schedule="poly"`` or ``"cosine"`` and no epoch
count, the schedule is stretched over the number of steps the budget allows, so the learning
rate comes down as the time runs out: :meth:`TimeBudget.planned_steps` divides the time left
(less the final reserve) into steps and the evaluations that fall between them.  The loop
plans once, after :data:`PLAN_AFTER_STEPS` steps have been timed, and plans again after every
evaluation, when the cost of an epoch and its evaluation is known better.  A new plan goes on from
where the schedule stands (its progress re-spaced over the steps left, :mod:`minisegnet.schedule`),
so a machine that slows down shortens the schedule without a sudden drop of the learning rate.
The plan is saved in the checkpoints, so a resumed run goes on with it.

**Memory** (:func:`estimate_training_memory`).  A too-large ``--size`` or batch used to end
in a ``MemoryError`` traceback minutes in, or in the kernel's OOM killer.  Now the run is
measured before any data is decoded: one training step (forward, loss, backward) of a copy of
the model at a small size, batch 1, in a thread of its own (so that its scratch arrays are
its own, :mod:`minisegnet.workspace`) and under :mod:`tracemalloc`, which sees every NumPy
allocation.  Its peak, less the gradients (one per weight: they do not grow with the
image), is what an image of that size costs: the activations kept for the backward, the
gradient flowing back, the convolutions' scratch.  That grows with the pixels and the batch,
so it is scaled to ``batch_size × H × W``; the scratch buffers that ``Conv2d`` caps
(``max_workspace_bytes``) are scaled up to their cap only.  Added: the weights, their
gradients and the optimizer's state (SGD's velocity, Adam's two moments), and the decoded
images and labels the run keeps in memory.  The sum is compared with the memory available
(``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup's limit, as in a container; on
CUDA, the device's free memory for the step), and a run that would not fit is refused with
the estimate and what to lower (the largest batch that fits, or a smaller size).  Scaling
from a small size slightly overestimates (the last feature maps round up), which errs on the
side of refusing; ``memory_check=False`` (``--no-memory-check``) skips the check.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
import time
import tracemalloc
from collections import deque

import numpy as np

__all__ = ["TimeBudget", "PLAN_AFTER_STEPS", "format_clock", "MemoryEstimate", "estimate_training_memory",
           "available_memory", "InsufficientMemory"]

PLAN_AFTER_STEPS = 5  # steps timed before a schedule is planned from the budget
RECENT_STEPS = 20  # the step estimate is the mean of this many recent steps
FIGURE_SECONDS_GUESS = 4.0  # the figure's cost before it has been drawn once
BN_PASS_MARGIN = 1.2  # a BN-recomputation batch (training mode) costs about this many eval batches


class TimeBudget:
    """The wall-time budget of one run (``minutes=None``: no budget, every step fits).

    ``train_batches``/``val_batches``: batches of a training epoch and of an evaluation;
    ``figure``/``recompute_bn``: whether the end of the run draws the figure / recomputes the
    BatchNorm statistics; ``start``: when the clock started (default: now, by ``clock``).

    The loop feeds in what it measures: :meth:`record_step` after each step,
    :meth:`record_evaluation` after each evaluation (``eval_batch_seconds``: the slowest validation
    batch so far), and the attributes ``save_seconds`` (writing the checkpoints once) and
    ``figure_seconds`` (drawing the figure once).
    """

    def __init__(self, minutes: float | None, *, train_batches: int, val_batches: int, figure: bool = True,
                 recompute_bn: bool = False, start: float | None = None, clock=time.monotonic):
        self.minutes = minutes
        self.train_batches, self.val_batches = train_batches, val_batches
        self.figure, self.recompute_bn = figure, recompute_bn
        self.clock = clock
        self.start = clock() if start is None else start
        self.steps_timed = 0
        self._first_step = None
        self._recent = deque(maxlen=RECENT_STEPS)
        self.eval_batch_seconds: float | None = None
        self.save_seconds = 0.0
        self.figure_seconds: float | None = None

    # -- measurements -----------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """The whole budget in seconds (infinite without one)."""
        return math.inf if self.minutes is None else 60.0 * self.minutes

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left (infinite without a budget)."""
        return self.seconds - self.elapsed()

    def record_step(self, seconds: float) -> None:
        """One more step took ``seconds``."""
        if self.steps_timed == 0:
            self._first_step = seconds
        else:
            self._recent.append(seconds)
        self.steps_timed += 1

    def step_estimate(self) -> float:
        """Mean duration of the recent steps (the very first, with its allocations, left out)."""
        if self._recent:
            return sum(self._recent) / len(self._recent)
        return self._first_step or 0.0

    def record_evaluation(self, seconds: float, batches: int) -> None:
        """An evaluation of ``batches`` batches took ``seconds``: reserve the slowest one seen for the next.

        On a shared machine one evaluation can take a third longer than the one before (10.0 and
        then 14.3 s, measured in one run), and a run that reserved the last one's time for its
        final evaluation ended seconds after its budget.  So ``eval_batch_seconds`` keeps the
        slowest per-batch time measured in this run (the warm-up probe's included).
        """
        if batches > 0:
            self.eval_batch_seconds = max(self.eval_batch_seconds or 0.0, seconds / batches)

    def measure_eval_batch(self, model, images) -> float:
        """Time one validation forward of ``images`` (after a warm-up one) and remember it."""
        from .grad_mode import no_grad

        with no_grad():
            model.predict(images)  # warm-up (allocations)
            start = time.perf_counter()
            model.predict(images)
            self.eval_batch_seconds = time.perf_counter() - start
        return self.eval_batch_seconds

    # -- decisions --------------------------------------------------------------------------
    def _figure_reserve(self) -> float:
        if not self.figure:
            return 0.0
        return self.figure_seconds if self.figure_seconds is not None else FIGURE_SECONDS_GUESS

    def final_reserve(self) -> float:
        """Seconds the end of a run needs: evaluation, BN recomputation, figure, checkpoints."""
        per_batch = self.eval_batch_seconds or 0.0
        seconds = per_batch * self.val_batches + self._figure_reserve() + 2 * self.save_seconds
        if self.recompute_bn:
            seconds += per_batch * (self.train_batches * BN_PASS_MARGIN + self.val_batches)
        return seconds

    def slowest_recent_step(self) -> float:
        """The longest of the recent steps (the very first left out): what one more step may cost."""
        if self._recent:
            return max(self._recent)
        return self._first_step or 0.0

    def allows_step(self, steps_done: int) -> bool:
        """Whether one more step and the end of the run still fit (a run's first step always runs).

        The step is charged as the slowest of the recent ones, not their mean: the decision is
        made once per step, and a run that stops one step early loses a second, one that
        overruns its budget breaks its promise.
        """
        if self.minutes is None or steps_done == 0:
            return True
        return self.elapsed() + self.slowest_recent_step() + self.final_reserve() <= self.seconds

    def planned_steps(self, step: int, eval_every: int) -> int | None:
        """How many steps in all (``step`` done) a schedule stretched over the budget should have.

        The most steps ``k`` whose time, with the evaluations that fall *between* them,
        fits the time left after the final reserve: ``k·step + m(k)·evaluation <= left``.
        An evaluation follows every ``eval_every``-th epoch (``train_batches · eval_every``
        steps); ``m(k)`` counts those boundaries the ``k`` steps pass before their end (the
        evaluation at the end is the final one, already in the reserve).  So a last, partial
        epoch is not charged for an evaluation it never runs.  None until
        :data:`PLAN_AFTER_STEPS` steps have been timed, or without a budget.
        """
        if self.minutes is None or self.steps_timed < PLAN_AFTER_STEPS:
            return None
        per_step = max(self.step_estimate(), 1e-9)
        per_eval = (self.eval_batch_seconds or 0.0) * self.val_batches
        between = max(1, self.train_batches * eval_every)  # steps from one evaluation to the next
        left = self.left() - self.final_reserve()

        def fits(k: int) -> bool:
            evaluations = (step + k - 1) // between - step // between
            return k * per_step + evaluations * per_eval <= left

        low, high = 1, max(1, int(left / per_step))  # the answer is at least one step, at most high
        while low < high:  # the time of k steps grows with k: bisect for the last k that fits
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        return step + low

    def bn_batches(self) -> int | None:
        """How many training batches the BatchNorm recomputation may use now (None: all of them)."""
        if self.minutes is None or not self.eval_batch_seconds:
            return None
        after = self.eval_batch_seconds * self.val_batches + self._figure_reserve()
        left = self.left() - after - 2 * self.save_seconds
        return max(1, min(self.train_batches, int(left / (1.1 * self.eval_batch_seconds))))


def format_clock(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on (negative times show as 00:00)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


# -- memory ----------------------------------------------------------------------------------
PROBE_PIXELS = 64 * 96  # the measured step runs at the run's size, or scaled down to about this many pixels
# Scratch roles whose size Conv2d caps by max_workspace_bytes (the stacked shifted copies and the
# products and window gradients of one column block): they grow with the image only up to the cap.
CAPPED_WORKSPACE_ROLES = ("conv.shifted", "conv.product", "conv.d_windows", "conv.gathered")
_OPTIMIZER_STATES = {"adam": 2, "sgd": 1}  # arrays of the weights' size the optimizer keeps


class InsufficientMemory(ValueError):
    """A run whose training step would not fit in the available memory (refused before it starts)."""


@dataclasses.dataclass
class MemoryEstimate:
    """What a training run will hold in memory, in bytes (see the module docstring).

    ``per_image``: activations kept for the backward, the gradient flowing back and the
    uncapped scratch, for one image of the run's size; ``capped_workspace``: the capped
    scratch, for the whole batch; ``parameters``: weights, gradients and optimizer state;
    ``data``: the decoded images and labels; ``available``: what the machine has (None:
    unknown).  On CUDA the step (all but ``data``) lives on the device: ``device_available``.
    """

    per_image: int
    capped_workspace: int
    capped_limit: int
    parameters: int
    data: int
    batch_size: int
    size: tuple
    available: int | None = None
    device: str = "cpu"
    device_available: int | None = None
    probe_size: tuple = (0, 0)

    def step(self, batch_size: int | None = None) -> int:
        """Bytes of one training step with ``batch_size`` images (default: the run's)."""
        batch = self.batch_size if batch_size is None else batch_size
        return self.per_image * batch + min(self.capped_workspace * batch, self.capped_limit) + self.parameters

    @property
    def total(self) -> int:
        return self.step() + self.data

    def _limits(self):
        """(bytes needed, bytes available, where) for each memory that must hold part of the run."""
        if self.device == "cpu":
            return [(self.total, self.available, "memory")]
        return [(self.step(), self.device_available, f"{self.device} memory"), (self.data, self.available, "memory")]

    def fits(self) -> bool:
        return all(have is None or need <= have for need, have, _ in self._limits())

    def largest_batch(self) -> int:
        """The largest batch size that fits at this size (0: not even one image)."""
        batch = 0
        while batch < 4096 and self._fits_batch(batch + 1):
            batch += 1
        return batch

    def _fits_batch(self, batch: int) -> bool:
        return dataclasses.replace(self, batch_size=batch).fits()

    def describe(self) -> str:
        """The estimate in words: the total and its parts."""
        gib = 2 ** 30
        per_batch = self.per_image * self.batch_size + min(self.capped_workspace * self.batch_size, self.capped_limit)
        return (f"{self.total / gib:.2f} GiB (a training step of {self.batch_size} image(s) at "
                f"{self.size[0]}x{self.size[1]}: {per_batch / gib:.2f} GiB of activations kept for the backward and "
                f"scratch; weights, gradients and optimizer state {self.parameters / gib:.2f} GiB; decoded images "
                f"{self.data / gib:.2f} GiB)")

    def scaled(self, factor: float) -> "MemoryEstimate":
        """The estimate at ``factor`` times the pixels (a smaller ``--size``): images and scratch scale, weights not."""
        return dataclasses.replace(self, per_image=int(self.per_image * factor),
                                   capped_workspace=int(self.capped_workspace * factor), data=int(self.data * factor))

    def refusal(self) -> str:
        """Why the run does not fit and what to lower (for :class:`InsufficientMemory`)."""
        gib = 2 ** 30
        short = [f"{where}: {have / gib:.2f} GiB available" for need, have, where in self._limits()
                 if have is not None and need > have]
        batch = self.largest_batch()
        if batch >= 1:
            advice = f"lower --batch-size to {batch} (fits at this size) or --size"
        else:
            advice = f"lower --size (not even one image of {self.size[0]}x{self.size[1]} fits)"
            low, high = 0.0, 1.0  # the largest fraction of the pixels that fits with batch 1, by bisection
            one = dataclasses.replace(self, batch_size=1)
            for _ in range(30):
                middle = (low + high) / 2
                low, high = (middle, high) if one.scaled(middle).fits() else (low, middle)
            h, w = (int(v * math.sqrt(low)) // 32 * 32 for v in self.size)
            if h >= 32 and w >= 32:
                advice += f": about {h}x{w} would fit with batch 1"
        return (f"this run needs about {self.describe()}, more than this machine has ({'; '.join(short)}): "
                f"{advice}, use a narrower model, or pass --no-memory-check to try anyway")


def probe_size(size) -> tuple[int, int]:
    """The size the memory of a step is measured at: ``size`` itself when small, else scaled down (multiples of 32)."""
    h, w = size
    if h * w <= PROBE_PIXELS:
        return int(h), int(w)
    scale = math.sqrt(PROBE_PIXELS / (h * w))
    return max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)


def measure_step(model, size, num_classes: int, lovasz_weight: float = 0.0) -> tuple[int, dict]:
    """Peak bytes NumPy allocates in one training step of a copy of ``model`` on one image of ``size``.

    The step's loss is the run's: the cross-entropy, plus the Lovász-softmax when ``lovasz_weight``
    is > 0 (its sort's arrays, a few per logit, are there at the step's peak, the end of the forward).

    Returns ``(peak, workspace)`` with ``workspace`` the bytes of each scratch role at the
    end of the step.  The step runs in a thread of its own (fresh scratch, freed with it),
    on a copy of the model (the model's weights, statistics, caches and gradients are left
    alone), on the CPU.  The gradients' bytes are part of the peak.
    """
    from .layers import LossSum, LovaszSoftmax, SoftmaxCrossEntropy
    from .workspace import WORKSPACE

    result = {}

    def run():
        probe = copy.deepcopy(model)
        if probe.device != "cpu":
            probe.to("cpu")
        probe.train()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 3, *size)).astype(probe.dtype)
        y = rng.integers(0, num_classes, (1, *size))
        criterion = SoftmaxCrossEntropy()
        if lovasz_weight > 0:
            criterion = LossSum((1.0, criterion), (lovasz_weight, LovaszSoftmax()))
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            criterion.forward(probe.forward(x), y)
            probe.backward(criterion.backward(), input_grad=False)
            result["peak"] = tracemalloc.get_traced_memory()[1] - base
            result["workspace"] = {key[-1]: int(a.nbytes) for key, a in WORKSPACE.arrays().items()}
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc
        finally:
            if not was_tracing:
                tracemalloc.stop()

    thread = threading.Thread(target=run, name="minisegnet-memory-probe")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["peak"], result["workspace"]


def estimate_training_memory(model, *, size, batch_size: int, optimizer: str = "adam", images: int = 0,
                             num_classes: int = 11, device: str = "cpu",
                             lovasz_weight: float = 0.0) -> MemoryEstimate:
    """Estimate the memory a run of ``model`` at ``size`` with ``batch_size`` needs (module docstring).

    ``images``: how many decoded images (with their labels) the run keeps in memory;
    ``lovasz_weight``: the run's Lovász-softmax term (> 0: the probe's loss has it too).
    """
    from .layers import Conv2d

    size = (int(size[0]), int(size[1]))
    probe = probe_size(size)
    peak, workspace = measure_step(model, probe, num_classes, lovasz_weight)
    itemsize = np.dtype(model.dtype).itemsize
    weights = model.num_parameters() * itemsize
    scale = (size[0] * size[1]) / (probe[0] * probe[1])
    capped = sum(v for k, v in workspace.items() if k in CAPPED_WORKSPACE_ROLES)
    capped_roles = sum(1 for k in workspace if k in CAPPED_WORKSPACE_ROLES)
    per_image = max(peak - weights - capped, 0) * scale  # the gradients (one per weight) do not grow
    return MemoryEstimate(
        per_image=int(math.ceil(per_image)), capped_workspace=int(math.ceil(capped * scale)),
        capped_limit=capped_roles * int(Conv2d.max_workspace_bytes),
        parameters=weights * (2 + _OPTIMIZER_STATES.get(optimizer, 2)), data=int(images) * size[0] * size[1] * 4,
        batch_size=int(batch_size), size=size, available=available_memory(), device=device,
        device_available=None if device == "cpu" else available_device_memory(), probe_size=probe,
    )


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable``, capped by a cgroup limit (None: unknown)."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    limit = _cgroup_room()
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, then v1); None without a limit."""
    for limit_file, usage_file, stat_key in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current",
                                              "inactive_file"),
                                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                              "/sys/fs/cgroup/memory/memory.usage_in_bytes", "total_inactive_file")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 2 ** 60:
            continue
        reclaimable = 0
        try:
            with open(os.path.join(os.path.dirname(limit_file), "memory.stat"), encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == stat_key:
                        reclaimable = int(value)
        except (OSError, ValueError):
            pass
        return max(limit - usage + reclaimable, 0)
    return None


def available_device_memory() -> int | None:
    """Free bytes on the current CUDA device, counting what CuPy's pool holds but does not use."""
    try:
        from .backend import import_cupy

        cupy = import_cupy()
        free, _ = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return int(free) + int(pool.total_bytes() - pool.used_bytes())
    except Exception:  # noqa: BLE001 - no device, no estimate
        return None


def check_training_memory(model, config):
    """Refuse a size or batch whose training step would not fit (raises :class:`InsufficientMemory`).

    Returns the estimate (:func:`estimate_training_memory`) when it fits.
    """
    from .data import NUM_CLASSES

    estimate = estimate_training_memory(model, size=config.size, batch_size=config.batch_size,
                                        optimizer=config.optimizer, images=_image_count(config),
                                        num_classes=NUM_CLASSES, device=config.device,
                                        lovasz_weight=config.lovasz_weight)
    if not estimate.fits():
        raise InsufficientMemory(estimate.refusal())
    return estimate


def _image_count(config) -> int:
    """How many images (with labels) the run will decode into memory; 0 when that is not cheap to know."""
    if config.dataset == "synthetic":
        counts = [config.synthetic_train, config.synthetic_val]
    else:
        from .data import CamVid, find_camvid

        root = config.data_dir if config.data_dir is not None else find_camvid()
        try:
            counts = [len(CamVid(root, "train")), len(CamVid(root, "val"))]
        except Exception:  # noqa: BLE001 - the data is checked when it is loaded, with a proper message
            return 0
    limits = [config.train_limit, config.val_limit]
    return sum(n if limit is None else min(n, limit) for n, limit in zip(counts, limits))

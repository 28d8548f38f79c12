"""The time budget, on a fake clock: the step estimate, the final reserve, whether a step fits, the plan."""
from __future__ import annotations

import math

import pytest

from minisegnet.budget import PLAN_AFTER_STEPS, TimeBudget, format_clock


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def budget(minutes=1.0, **kw):
    clock = Clock()
    values = dict(train_batches=10, val_batches=4, figure=False, recompute_bn=False)
    return TimeBudget(minutes, **{**values, **kw}, clock=clock), clock


def test_the_step_estimate_leaves_out_the_first_step_and_keeps_the_recent_ones():
    b, _ = budget()
    assert b.step_estimate() == 0.0
    b.record_step(5.0)  # the first, with its allocations
    assert b.step_estimate() == 5.0  # nothing better yet
    b.record_step(1.0)
    b.record_step(2.0)
    assert b.step_estimate() == 1.5
    for _ in range(30):
        b.record_step(0.5)
    assert b.step_estimate() == 0.5 and b.steps_timed == 33


def test_the_final_reserve_counts_evaluation_figure_checkpoints_and_bn():
    b, _ = budget()
    assert b.final_reserve() == 0.0
    b.eval_batch_seconds, b.save_seconds = 0.5, 0.25
    assert b.final_reserve() == pytest.approx(4 * 0.5 + 2 * 0.25)
    b.figure = True
    assert b.final_reserve() == pytest.approx(2.5 + 4.0)  # a guess until the figure has been drawn once
    b.figure_seconds = 1.0
    assert b.final_reserve() == pytest.approx(3.5)
    b.recompute_bn = True  # a pass over the training set (1.2 eval batches a batch) and one more evaluation
    assert b.final_reserve() == pytest.approx(3.5 + 0.5 * (10 * 1.2 + 4))


def test_another_step_is_charged_as_the_slowest_recent_one():
    b, clock = budget(minutes=1.0)
    for seconds in (9.0, 2.0, 3.0, 2.0):  # the first (allocations) is left out
        b.record_step(seconds)
    assert b.step_estimate() == pytest.approx(7 / 3) and b.slowest_recent_step() == 3.0
    clock.now += 56.5
    assert b.allows_step(steps_done=4)  # 56.5 + 3 <= 60
    clock.now += 1.0
    assert not b.allows_step(steps_done=4)  # the mean (2.33 s) would still fit; the slowest does not


def test_the_reserve_keeps_the_slowest_evaluation_seen():
    """Evaluations vary from one to the next: the end of the run reserves the slowest, not the last."""
    b, _ = budget()
    b.eval_batch_seconds = 0.5  # the probe before training
    b.record_evaluation(12.0, batches=4)  # 3 s a batch
    b.record_evaluation(8.0, batches=4)  # a faster one does not lower the reserve
    assert b.eval_batch_seconds == 3.0 and b.final_reserve() == pytest.approx(4 * 3.0)
    b.record_evaluation(14.0, batches=4)
    assert b.eval_batch_seconds == 3.5
    b.record_evaluation(5.0, batches=0)  # an empty validation split: nothing learnt
    assert b.eval_batch_seconds == 3.5
    fresh, _ = budget()
    fresh.record_evaluation(2.0, batches=4)
    assert fresh.eval_batch_seconds == 0.5


def test_a_step_fits_when_it_and_the_end_of_the_run_fit():
    b, clock = budget(minutes=1.0)
    b.record_step(2.0)
    b.record_step(2.0)
    b.eval_batch_seconds = 1.0  # reserve 4 s
    clock.now += 53.0
    assert b.allows_step(steps_done=2)  # 53 + 2 + 4 <= 60
    clock.now += 2.0
    assert not b.allows_step(steps_done=2)
    assert b.allows_step(steps_done=0)  # a run's first step always runs
    unbounded, _ = budget(minutes=None)
    assert unbounded.allows_step(10**6) and unbounded.left() == math.inf


def test_planned_steps_fill_the_time_left_with_steps_and_the_evaluations_between_them():
    b, clock = budget(minutes=1.0)
    b.eval_batch_seconds = 0.5  # an evaluation: 2 s, a final reserve of 2 s
    for i in range(PLAN_AFTER_STEPS):
        assert b.planned_steps(i, eval_every=1) is None  # not enough measured yet
        b.record_step(1.0)
    clock.now += 10.0
    # left: 60 - 10 - 2 = 48 s at 1 s a step; from step 5, 40 steps pass the evaluations after
    # steps 10, 20, 30 and 40 (8 s) and end at 45, whose evaluation is the final one: 40 + 8 = 48
    assert b.planned_steps(5, eval_every=1) == 5 + 40
    # an evaluation every 20 steps: 44 steps pass two of them (after 20 and 40): 44 + 4 = 48
    assert b.planned_steps(5, eval_every=2) == 5 + 44
    clock.now += 1000.0
    assert b.planned_steps(5, eval_every=1) == 6  # at least one more step
    assert budget(minutes=None)[0].planned_steps(5, 1) is None


def test_a_last_partial_epoch_is_not_charged_for_an_evaluation_it_never_runs():
    b, clock = budget(minutes=1.0, train_batches=100)
    b.eval_batch_seconds = 0.5  # an evaluation: 2 s, a final reserve of 2 s
    for _ in range(PLAN_AFTER_STEPS):
        b.record_step(1.0)
    clock.now += 49.0  # 9 s left after the reserve, just after the evaluation at step 100
    assert b.planned_steps(100, eval_every=1) == 100 + 9  # not 9 / (1 + 2/100) -> 8
    clock.now -= 100.0  # 109 s left: the steps reach the boundary at 200, which costs an evaluation
    assert b.planned_steps(100, eval_every=1) == 100 + 107  # 107 steps + one evaluation = 109 s


def test_bn_batches_fit_the_time_left():
    b, clock = budget(minutes=1.0)
    assert b.bn_batches() is None  # nothing measured: all of them
    b.eval_batch_seconds = 1.0
    clock.now += 50.0  # left 10 s - 4 s of evaluation = 6 s, at 1.1 s a batch
    assert b.bn_batches() == 5
    clock.now += 100.0
    assert b.bn_batches() == 1


def test_format_clock():
    assert format_clock(0) == "00:00" and format_clock(75.4) == "01:15" and format_clock(-3) == "00:00"
    assert format_clock(3 * 3600 + 61) == "3:01:01"


# -- memory ------------------------------------------------------------------------------------
def test_the_probe_is_the_run_size_when_small_else_about_as_many_pixels_as_allowed():
    from minisegnet.budget import PROBE_PIXELS, probe_size

    assert probe_size((32, 48)) == (32, 48)
    h, w = probe_size((360, 480))
    assert h % 32 == 0 and w % 32 == 0 and 0.5 * PROBE_PIXELS <= h * w <= 2 * PROBE_PIXELS
    assert abs(w / h - 480 / 360) < 0.4


def test_the_estimate_grows_with_the_batch_and_capped_scratch_stops_at_its_cap():
    from minisegnet.budget import MemoryEstimate

    e = MemoryEstimate(per_image=100, capped_workspace=30, capped_limit=50, parameters=7, data=11, batch_size=1,
                       size=(64, 96), available=1000)
    assert e.step(1) == 100 + 30 + 7 and e.step(4) == 400 + 50 + 7 and e.total == e.step() + 11
    assert e.fits() and e.largest_batch() == 9  # 900 + 50 + 7 + 11 <= 1000
    assert not MemoryEstimate(**{**e.__dict__, "batch_size": 10}).fits()
    unknown = MemoryEstimate(**{**e.__dict__, "available": None, "batch_size": 10 ** 6})
    assert unknown.fits()  # nothing known: nothing refused
    gpu = MemoryEstimate(**{**e.__dict__, "device": "cuda", "device_available": 100, "available": 20})
    assert not gpu.fits() and "cuda memory: 0.00 GiB available" in gpu.refusal()  # the step is on the device
    assert MemoryEstimate(**{**gpu.__dict__, "device_available": 200}).fits()  # the images (11) are on the host

"""The run's learning-rate schedule: its length rules and its position after a resume."""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet.config import TrainConfig
from minisegnet.module import Parameter
from minisegnet.optim import SGD, CosineLR, PolyLR, StepLR
from minisegnet.schedule import make_scheduler, planned_from_budget, schedule_length


def optimizer(lr=0.1):
    return SGD([Parameter(np.zeros(3, dtype=np.float32))], lr=lr)


@pytest.mark.parametrize(
    "settings, planned, length",
    [
        (dict(epochs=3, max_steps=7), 99, 30),  # epochs win, even over a planned length (resume with more epochs)
        (dict(minutes=1.0), 99, 99),  # the length already planned
        (dict(minutes=1.0, max_steps=7), None, 7),
        (dict(minutes=1.0), None, None),  # to be planned from the budget
        (dict(epochs=3, schedule="step"), None, None),
        (dict(epochs=3, schedule="none"), 99, None),
    ],
)
def test_schedule_length(settings, planned, length):
    assert schedule_length(TrainConfig(**settings), 10, planned) == length


def test_planned_from_budget():
    assert planned_from_budget(TrainConfig(minutes=1.0)) and planned_from_budget(TrainConfig(minutes=1.0,
                                                                                            schedule="cosine"))
    assert not planned_from_budget(TrainConfig(minutes=1.0, epochs=2))
    assert not planned_from_budget(TrainConfig(minutes=1.0, max_steps=9))
    assert not planned_from_budget(TrainConfig(minutes=1.0, schedule="step"))


def test_make_scheduler_positions_the_schedule_at_the_step():
    config = TrainConfig(epochs=2, lr=0.1, poly_power=0.9)
    straight = make_scheduler(config, opt := optimizer(), 10, 0, 20)
    assert isinstance(straight, PolyLR)
    for _ in range(7):
        straight.step()
    resumed = make_scheduler(config, opt2 := optimizer(), 10, 7, 20)  # a run resumed at step 7
    assert opt2.lr == pytest.approx(opt.lr) and opt.lr == pytest.approx(0.1 * (1 - 7 / 20) ** 0.9)
    straight.step()
    resumed.step()
    assert opt2.lr == opt.lr
    assert isinstance(make_scheduler(TrainConfig(schedule="cosine"), optimizer(), 10, 0, 5), CosineLR)
    assert isinstance(make_scheduler(TrainConfig(schedule="step", lr_step_epochs=2), optimizer(), 10, 0, None), StepLR)
    assert make_scheduler(TrainConfig(schedule="none"), optimizer(), 10, 0, 5) is None
    assert make_scheduler(TrainConfig(minutes=1.0), optimizer(), 10, 0, None) is None  # not planned yet


def test_make_scheduler_goes_on_from_a_replanning_anchor():
    config = TrainConfig(minutes=1.0, lr=0.1, poly_power=0.9)
    replanned = make_scheduler(config, opt := optimizer(), 10, 30, 50, anchor=(30, 0.5))
    assert (replanned.start_step, replanned.start_progress, replanned.max_steps) == (30, 0.5, 50)
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 0.9)  # where the old schedule stood, not 0.1 * (1 - 30/50) ** 0.9
    assert make_scheduler(config, optimizer(), 10, 0, 50).start_step == 0  # by default: from the start

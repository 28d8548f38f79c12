"""Optimizers and schedules: parity with torch.optim, resume, dtype, errors.

Parity tests feed the same random gradients to our optimizer and to ``torch.optim`` in
float64 for several steps and compare the parameters; they agree to rounding (the update
formulas are the same up to the order of a few floating-point operations).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from minisegnet.module import Parameter
from minisegnet.optim import SGD, Adam, CosineLR, PolyLR, StepLR

SHAPES = [(4, 3, 3, 3), (4,), (2, 5)]


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def random_grads(steps, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def run_ours(opt, params, grads):
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.accumulate_grad(g)
        opt.step()


SGD_CASES = [
    dict(lr=0.1, momentum=0.0, weight_decay=0.0),
    dict(lr=0.1, momentum=0.9, weight_decay=0.0),
    dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.8, weight_decay=1e-2, nesterov=True),
    dict(lr=0.1, momentum=0.0, weight_decay=1e-3),
]
ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
]


@pytest.mark.torch
@pytest.mark.parametrize("kind,kwargs", [("SGD", c) for c in SGD_CASES] + [("Adam", c) for c in ADAM_CASES])
def test_matches_torch_optim(kind, kwargs, torch):
    params = make_params()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours_cls, torch_cls = {"SGD": (SGD, torch.optim.SGD), "Adam": (Adam, torch.optim.Adam)}[kind]
    ours = ours_cls(params, **kwargs)
    torch_kwargs = dict(kwargs)
    if kind == "SGD":  # torch's defaults differ from ours (momentum 0, weight decay 0): be explicit
        torch_kwargs.setdefault("nesterov", False)
    ref = torch_cls(theirs, **torch_kwargs)
    grads = random_grads(6)
    for step_grads in grads:
        run_ours(ours, params, [step_grads])
        ref.zero_grad()
        for t, g in zip(theirs, step_grads):
            t.grad = torch.from_numpy(g.copy())
        ref.step()
        for p, t in zip(params, theirs):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_sgd_defaults_are_segnet_solver():
    opt = SGD(make_params(), lr=0.1)
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (0.1, 0.9, 5e-4, False)


def test_sgd_update_by_hand():
    """Two steps of the documented equations, written out."""
    w0 = np.array([1.0, -2.0])
    p = Parameter(w0.copy())
    opt = SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    g1, g2 = np.array([0.2, 0.4]), np.array([-1.0, 3.0])
    p.grad = g1.copy()
    opt.step()
    v = g1 + 0.1 * w0
    w1 = w0 - 0.5 * v
    np.testing.assert_allclose(p.data, w1)
    p.grad = g2.copy()
    opt.step()
    v = 0.9 * v + (g2 + 0.1 * w1)
    np.testing.assert_allclose(p.data, w1 - 0.5 * v)
    np.testing.assert_array_equal(p.grad, g2)  # the gradient is never modified


def test_params_without_grad_are_skipped():
    params = make_params()
    before = [p.data.copy() for p in params]
    for opt in (SGD(params, lr=0.1), Adam(params, lr=0.1)):
        params[1].accumulate_grad(np.ones(SHAPES[1]))
        opt.step()
        np.testing.assert_array_equal(params[0].data, before[0])
        np.testing.assert_array_equal(params[2].data, before[2])
        assert not np.array_equal(params[1].data, before[1])
        assert opt.state[0] == {} and opt.state[2] == {}
        opt.zero_grad()
        assert all(p.grad is None for p in params)


def test_updates_in_place_and_keep_float32():
    params = make_params(np.float32)
    arrays = [p.data for p in params]
    for opt in (SGD(params, lr=0.1, nesterov=True), Adam(params, lr=0.1, weight_decay=1e-2)):
        run_ours(opt, params, random_grads(3, dtype=np.float32))
        for p, a in zip(params, arrays):
            assert p.data is a and p.data.dtype == np.float32
        for s in opt.state:
            for v in s.values():
                assert not hasattr(v, "dtype") or v.dtype == np.float32
        sd = opt.state_dict()
        assert all(isinstance(v, np.ndarray) for s in sd["state"].values() for v in s.values())


def test_float64_hyperparameters_do_not_promote_float32():
    """A np.float64 lr (e.g. from a schedule computed with NumPy) must not upcast the update."""
    params = make_params(np.float32)
    opt = SGD(params, lr=np.float64(0.1), momentum=np.float64(0.9))
    opt.lr = np.float64(0.05)
    run_ours(opt, params, random_grads(2, dtype=np.float32))
    assert all(p.data.dtype == np.float32 for p in params)
    assert type(opt.lr) is float


def test_state_follows_the_parameters_dtype():
    params = make_params(np.float32)
    opt = SGD(params, lr=0.1)
    run_ours(opt, params, random_grads(1, dtype=np.float32))
    for p in params:  # as model.double() would do after the optimizer was built
        p.data = p.data.astype(np.float64)
    run_ours(opt, params, random_grads(1, dtype=np.float64))
    assert all(s["momentum_buffer"].dtype == np.float64 for s in opt.state)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-3),
])
def test_state_dict_round_trip_resumes_identically(make):
    grads = random_grads(6)
    # uninterrupted run
    params_a = make_params()
    opt_a = make(params_a)
    run_ours(opt_a, params_a, grads)
    # run 3 steps, save, rebuild from scratch, load, run 3 more
    params_b = make_params()
    opt_b = make(params_b)
    run_ours(opt_b, params_b, grads[:3])
    saved_params = [p.data.copy() for p in params_b]
    saved = opt_b.state_dict()
    run_ours(opt_b, params_b, grads[3:4])  # mutating the optimizer must not change `saved`
    params_c = [Parameter(a.copy()) for a in saved_params]
    opt_c = make(params_c)
    opt_c.lr = 123.0  # overwritten by the loaded hyper-parameters
    opt_c.load_state_dict(saved)
    run_ours(opt_c, params_c, grads[3:])
    for a, c in zip(params_a, params_c):
        np.testing.assert_array_equal(a.data, c.data)


def test_load_state_dict_rejects_mismatch_and_leaves_optimizer_untouched():
    params = make_params()
    opt = SGD(params, lr=0.1)
    run_ours(opt, params, random_grads(1))
    before = opt.state_dict()
    with pytest.raises(ValueError, match="cannot load Adam state into SGD"):
        opt.load_state_dict(Adam(make_params(), lr=0.1).state_dict())
    other = SGD(make_params()[:2], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="state for 2 parameters, but this optimizer has 3"):
        opt.load_state_dict(other)
    bad = opt.state_dict()
    bad["state"][0]["momentum_buffer"] = np.zeros((1, 2))
    bad["hyperparameters"]["lr"] = 7.0
    with pytest.raises(ValueError, match=r"param 0: momentum_buffer has shape \(1, 2\), parameter has \(4, 3, 3, 3\)"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["hyperparameters"]["momentum"] = 1.5
    with pytest.raises(ValueError, match="bad hyper-parameters.*momentum"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["hyperparameters"] == before["hyperparameters"]
    for i in before["state"]:
        np.testing.assert_array_equal(after["state"][i]["momentum_buffer"], before["state"][i]["momentum_buffer"])


@pytest.mark.parametrize("make,message", [
    (lambda ps: SGD(ps, lr=-0.1), r"SGD: lr must be >= 0.0, got -0.1"),
    (lambda ps: SGD(ps, lr=float("nan")), "lr must be finite"),
    (lambda ps: SGD(ps, lr=0.1, momentum=1.0), r"momentum must be in \[0.0, 1.0\), got 1.0"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.1), "momentum must be in"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1e-4), "weight_decay must be"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.0, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda ps: Adam(ps, betas=(0.9, 1.0)), r"beta2 must be in \[0.0, 1.0\)"),
    (lambda ps: Adam(ps, betas=(-0.1, 0.99)), "beta1 must be in"),
    (lambda ps: Adam(ps, betas=0.9), "betas must be a pair"),
    (lambda ps: Adam(ps, eps=-1.0), "eps must be"),
    (lambda ps: Adam(ps, lr=-1.0), "Adam: lr must be"),
    (lambda ps: SGD([], lr=0.1), "empty parameter list"),
    (lambda ps: SGD(ps + ps[:1], lr=0.1), "more than once"),
])
def test_bad_hyperparameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_params())


def test_bad_parameter_lists_raise_type_errors():
    from minisegnet.module import Module

    with pytest.raises(TypeError, match="pass model.parameters"):
        SGD(Module(), lr=0.1)
    with pytest.raises(TypeError, match="got ndarray at position 0"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD(make_params(), lr="0.1")
    opt = SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = -1.0


# -- schedules -------------------------------------------------------------------------

def _torch_lrs(torch, make_sched, steps, lr):
    t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([t], lr=lr)
    sched = make_sched(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _our_lrs(make_sched, steps, lr):
    opt = SGD(make_params(), lr=lr)
    sched = make_sched(opt)
    lrs = [opt.lr]
    for _ in range(steps):
        sched.step()
        lrs.append(opt.lr)
    return lrs


@pytest.mark.torch
@pytest.mark.parametrize("case", ["step", "poly", "poly-linear", "cosine"])
def test_schedules_match_torch(case, torch):
    S = torch.optim.lr_scheduler
    ours, theirs = {
        "step": (lambda o: StepLR(o, step_size=3, gamma=0.5), lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
        "poly": (lambda o: PolyLR(o, max_steps=10, power=0.9), lambda o: S.PolynomialLR(o, total_iters=10, power=0.9)),
        "poly-linear": (lambda o: PolyLR(o, max_steps=7, power=1.0),
                        lambda o: S.PolynomialLR(o, total_iters=7, power=1.0)),
        "cosine": (lambda o: CosineLR(o, max_steps=10, min_lr=1e-3),
                   lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    }[case]
    steps = 10 if case == "cosine" else 14  # torch's cosine keeps oscillating past T_max; ours holds min_lr
    expected = _torch_lrs(torch, theirs, steps, 0.1)
    np.testing.assert_allclose(_our_lrs(ours, steps, 0.1), expected, rtol=1e-12, atol=1e-15)


def test_poly_with_min_lr_and_closed_form():
    opt = SGD(make_params(), lr=0.1)
    sched = PolyLR(opt, max_steps=4, power=2.0, min_lr=0.01)
    assert opt.lr == 0.1 and sched.base_lr == 0.1
    lrs = [sched.step() for _ in range(6)]
    expected = [0.01 + 0.09 * (1 - min(t, 4) / 4) ** 2 for t in range(1, 7)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)
    assert lrs[-1] == lrs[-2] == pytest.approx(0.01)


def test_schedule_state_dict_resume():
    opt = SGD(make_params(), lr=0.2)
    sched = StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert state == {"type": "StepLR", "base_lr": 0.2, "last_step": 3}
    opt2 = SGD(make_params(), lr=5.0)  # a fresh run built with another lr
    sched2 = StepLR(opt2, step_size=2, gamma=0.1)
    sched2.load_state_dict(state)
    assert sched2.base_lr == 0.2 and opt2.lr == pytest.approx(0.02)
    assert [sched.step() for _ in range(3)] == [sched2.step() for _ in range(3)]
    with pytest.raises(ValueError, match="cannot load StepLR state into PolyLR"):
        PolyLR(opt2, max_steps=3).load_state_dict(state)


@pytest.mark.parametrize("make,message", [
    (lambda o: StepLR(o, step_size=0), "step_size must be a positive integer"),
    (lambda o: StepLR(o, step_size=2.5), "step_size must be a positive integer"),
    (lambda o: StepLR(o, step_size=2, gamma=-0.5), "gamma must be"),
    (lambda o: PolyLR(o, max_steps=0), "max_steps must be a positive integer"),
    (lambda o: PolyLR(o, max_steps=5, power=-1.0), "power must be"),
    (lambda o: PolyLR(o, max_steps=5, min_lr=1.0), r"min_lr \(1.0\) exceeds the optimizer's lr \(0.1\)"),
    (lambda o: CosineLR(o, max_steps=5, min_lr=-1.0), "min_lr must be"),
])
def test_bad_schedule_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(SGD(make_params(), lr=0.1))


def test_cosine_endpoints():
    opt = SGD(make_params(), lr=0.1)
    sched = CosineLR(opt, max_steps=4)
    assert sched.lr_at(0) == 0.1 and sched.lr_at(2) == pytest.approx(0.05) and sched.lr_at(4) == pytest.approx(0.0)
    assert sched.lr_at(100) == sched.lr_at(4) and math.isclose(opt.lr, 0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, nesterov=True),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
])
def test_gpu_matches_cpu_and_state_stays_on_the_gpu(make):
    import cupy  # the `gpu` marker skips this test where CuPy or a GPU is missing (tests/conftest.py)

    cpu = make_params()
    gpu = [Parameter(cupy.asarray(p.data)) for p in cpu]
    opt_cpu, opt_gpu = make(cpu), make(gpu)
    grads = random_grads(3)
    run_ours(opt_cpu, cpu, grads)
    run_ours(opt_gpu, gpu, [[cupy.asarray(g) for g in step] for step in grads])
    for c, g in zip(cpu, gpu):
        assert isinstance(g.data, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(g.data), c.data, rtol=1e-12, atol=1e-13)
    assert all(isinstance(v, cupy.ndarray) for s in opt_gpu.state for v in s.values() if hasattr(v, "dtype"))
    saved = opt_gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for s in saved["state"].values() for v in s.values())
    fresh = make([Parameter(cupy.asarray(p.data)) for p in cpu])
    fresh.load_state_dict(saved)
    assert all(isinstance(v, cupy.ndarray) for s in fresh.state for v in s.values() if hasattr(v, "dtype"))


# -- re-planned schedules: the progress goes on from where it stood -----------------------------------
def test_planned_progress():
    from minisegnet.optim import planned_progress

    assert [planned_progress(t, 10) for t in (0, 4, 10, 15)] == [0.0, 0.4, 1.0, 1.0]
    # re-planned at step 4 (progress 0.4) to end at step 7: 0.4 + 0.6 * (t - 4) / 3
    assert [planned_progress(t, 7, 4, 0.4) for t in (2, 4, 5, 7, 9)] == pytest.approx([0.4, 0.4, 0.6, 1.0, 1.0])


@pytest.mark.parametrize("make", [lambda o, **k: PolyLR(o, power=0.9, min_lr=0.01, **k),
                                  lambda o, **k: CosineLR(o, min_lr=0.01, **k)], ids=["poly", "cosine"])
def test_a_replanned_schedule_starts_at_the_rate_it_replaces_and_still_ends_at_min_lr(make):
    old = make(SGD(make_params(), lr=0.1), max_steps=100)
    for _ in range(40):
        old.step()
    rate, progress = old.lr, old.progress_at(40)
    assert progress == pytest.approx(0.4)
    new = make(opt := SGD(make_params(), lr=0.1), max_steps=70, start_step=40, start_progress=progress)
    new.load_state_dict({**new.state_dict(), "last_step": 40})
    assert opt.lr == pytest.approx(rate, rel=1e-12)  # no jump: a new schedule of 70 steps would give another rate
    assert make(SGD(make_params(), lr=0.1), max_steps=70).lr_at(40) < 0.99 * rate
    rates = [new.step() for _ in range(35)]
    assert all(a > b for a, b in zip([rate] + rates[:29], rates[:30]))  # falls every step up to the end
    assert rates[29] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.01)  # min_lr from step 70 on


def test_a_replanned_schedule_state_round_trips_and_older_states_mean_the_start():
    sched = PolyLR(SGD(make_params(), lr=0.1), max_steps=50, start_step=20, start_progress=0.3)
    for _ in range(25):
        sched.step()
    state = sched.state_dict()
    assert state == {"type": "PolyLR", "base_lr": 0.1, "last_step": 25, "start_step": 20, "start_progress": 0.3}
    again = PolyLR(opt := SGD(make_params(), lr=5.0), max_steps=50)
    again.load_state_dict(state)
    assert (again.start_step, again.start_progress) == (20, 0.3) and opt.lr == sched.lr
    older = PolyLR(SGD(make_params(), lr=0.1), max_steps=50, start_step=20, start_progress=0.3)
    older.load_state_dict({"type": "PolyLR", "base_lr": 0.1, "last_step": 25})  # written before re-planning
    assert (older.start_step, older.start_progress) == (0, 0.0) and older.lr == pytest.approx(0.1 * 0.5 ** 0.9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_step=10), r"start_step \(10\) must come before max_steps \(10\)"),
    (dict(start_step=-1), "start_step must be an integer >= 0"),
    (dict(start_step=2, start_progress=1.5), "start_progress must be"),
    (dict(start_step=2, start_progress=float("nan")), "start_progress must be finite"),
])
def test_bad_replanning_points_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosineLR(SGD(make_params(), lr=0.1), max_steps=10, **kwargs)

"""Parameter and Module bookkeeping: registration, traversal, modes, gradients, state, dtype, device."""
from __future__ import annotations

import numpy as np
import pytest

from minisegnet.backend import DeviceUnavailableError, cuda_is_available
from minisegnet.grad_mode import enable_grad, is_grad_enabled, no_grad
from minisegnet.module import Module, Parameter, Sequential


class Scale(Module):
    """``y = x * weight + bias`` per channel of an (N, C) input; counts its forwards in a buffer."""

    def __init__(self, channels: int, log: list | None = None, name: str = ""):
        super().__init__()
        self.weight = Parameter(np.linspace(0.5, 1.5, channels).astype(np.float32))
        self.bias = Parameter(np.zeros(channels, np.float32))
        self.register_buffer("calls", np.zeros((), np.int64))
        self.register_buffer("running", np.zeros(channels, np.float32))
        self._input = None
        self._log, self._name = log, name

    def forward(self, x):
        if self._log is not None:
            self._log.append(f"forward {self._name}")
        self.calls = self.calls + 1  # re-assigning a buffer keeps it a buffer
        if is_grad_enabled():
            self._input = x
        return x * self.weight.data + self.bias.data

    def backward(self, dy):
        if self._log is not None:
            self._log.append(f"backward {self._name}")
        self.weight.accumulate_grad((dy * self._input).sum(axis=0))
        self.bias.accumulate_grad(dy.sum(axis=0))
        return dy * self.weight.data


class Net(Module):
    def __init__(self):
        super().__init__()
        self.head = Scale(3)
        self.body = Sequential(Scale(3), Scale(3))
        self.scale = Parameter(np.ones(1, np.float32))


# -- Parameter ----------------------------------------------------------------------------
def test_parameter_holds_data_and_no_grad():
    p = Parameter(np.zeros((2, 3), np.float32))
    assert p.grad is None and p.shape == (2, 3) and p.size == 6
    assert "shape=(2, 3)" in repr(p) and "float32" in repr(p)
    with pytest.raises(TypeError, match="Parameter expects a NumPy or CuPy array"):
        Parameter([1.0, 2.0])


def test_accumulate_grad_copies_then_adds():
    p = Parameter(np.zeros(3, np.float32))
    g = np.ones(3, np.float64)
    p.accumulate_grad(g)
    assert p.grad.dtype == np.float32  # the parameter's dtype
    g[:] = 100.0  # the first call stored a copy, not the caller's array
    np.testing.assert_array_equal(p.grad, [1, 1, 1])
    p.accumulate_grad(np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(p.grad, [3, 3, 3])
    with pytest.raises(ValueError, match=r"gradient of shape \(4,\) for a parameter of shape \(3,\)"):
        p.accumulate_grad(np.ones(4))


# -- registration and traversal -------------------------------------------------------------------
def test_attributes_register_parameters_modules_and_buffers():
    m = Scale(2)
    assert list(m._parameters) == ["weight", "bias"]
    assert set(m._buffers) == {"calls", "running"}
    m.bias = None  # re-assigning a non-parameter unregisters it
    assert list(m._parameters) == ["weight"]
    m.extra = Scale(1)
    assert list(m._modules) == ["extra"]


def test_reassigning_a_buffer_keeps_it_registered():
    m = Scale(2)
    m.running = np.ones(2, np.float32)  # as BatchNorm may update its running statistics
    m.calls += 1  # augmented assignment rebinds the attribute too
    assert set(m._buffers) == {"calls", "running"}
    assert "running" in m.state_dict() and "calls" in m.state_dict()


def test_assigning_before_super_init_is_explained():
    class Broken(Module):
        def __init__(self):
            self.weight = Parameter(np.zeros(1))

    with pytest.raises(RuntimeError, match=r"Broken.__init__ must call super\(\).__init__\(\) before assigning 'weight'"):
        Broken()


def test_named_parameters_order_and_names():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "head.weight", "head.bias", "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"]
    assert [p for _, p in net.named_parameters()] == net.parameters()
    assert net.num_parameters() == 1 + 3 * 6
    assert [n for n, _ in net.named_modules()] == ["", "head", "body", "body.0", "body.1"]
    assert [n for n, _ in net.named_buffers()] == [
        "head.calls", "head.running", "body.0.calls", "body.0.running", "body.1.calls", "body.1.running"
    ]
    assert len(list(net.children())) == 2


def test_bare_module_has_no_computation():
    with pytest.raises(NotImplementedError, match="Module does not implement forward"):
        Module()(np.zeros(1))
    with pytest.raises(NotImplementedError, match="backward"):
        Module().backward(np.zeros(1))


# -- modes -------------------------------------------------------------------------------------------------
def test_train_and_eval_are_recursive_and_only_switch_training():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())  # eval() freezes nothing
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_eval_mode_forward_can_be_differentiated():
    """PyTorch's semantics: eval() changes what is computed, not whether backward works."""
    m = Scale(3).eval()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    m.backward(np.ones_like(m(x)))
    np.testing.assert_array_equal(m.weight.grad, x.sum(axis=0))


def test_requires_grad_freezes_and_unfreezes_every_parameter():
    net = Net()
    assert net.requires_grad_(False) is net
    assert not any(p.requires_grad for p in net.parameters())
    p = net.parameters()[0]
    p.accumulate_grad(np.ones_like(p.data))  # a frozen parameter ignores gradients
    assert p.grad is None
    net.requires_grad_(True)
    p.accumulate_grad(np.ones_like(p.data))
    assert p.grad is not None and all(q.requires_grad for q in net.parameters())


def test_no_grad_is_a_thread_local_context_that_restores_on_exit_and_on_error():
    import threading

    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        with enable_grad():
            assert is_grad_enabled()
        assert not is_grad_enabled()
        seen = []
        thread = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        thread.start()
        thread.join()
        assert seen == [True]  # another thread is not affected
    assert is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()

    @no_grad()
    def infer():
        return is_grad_enabled()

    assert infer() is False and is_grad_enabled()


def test_no_grad_forward_keeps_nothing_and_leaves_a_pending_backward_alone():
    m = Scale(3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    m(x)
    with no_grad():
        m(100 * x)  # an inference call between the forward and its backward
    m.backward(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(m.weight.grad, x.sum(axis=0))  # the first forward's input


def test_zero_grad_clears_every_gradient():
    net = Net()
    x = np.ones((2, 3), np.float32)
    net.body.backward(net.body(x))
    assert all(p.grad is not None for p in net.body.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_gradients_accumulate_over_two_backward_passes():
    m = Scale(3)
    x = np.ones((2, 3), np.float32)
    m.backward(np.ones_like(m(x)))
    first = m.bias.grad.copy()
    m.backward(np.ones_like(m(x)))
    np.testing.assert_array_equal(m.bias.grad, 2 * first)


# -- Sequential -----------------------------------------------------------------------------------------------
def test_sequential_runs_forward_in_order_and_backward_in_reverse():
    log: list[str] = []
    seq = Sequential(Scale(2, log, "a"), Scale(2, log, "b"), Scale(2, log, "c"))
    x = np.ones((1, 2), np.float32)
    y = seq(x)
    seq.backward(np.ones_like(y))
    assert log == ["forward a", "forward b", "forward c", "backward c", "backward b", "backward a"]
    assert len(seq) == 3 and seq[1] is list(seq)[1]
    np.testing.assert_allclose(y, x * seq[0].weight.data * seq[1].weight.data * seq[2].weight.data)
    with pytest.raises(TypeError, match="Sequential expects Modules, got int at position 1"):
        Sequential(Scale(1), 3)
    assert "(0): Scale()" in repr(seq)


# -- state_dict ------------------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    net = Net()
    rng = np.random.default_rng(0)
    for p in net.parameters():
        p.data = rng.standard_normal(p.shape).astype(np.float32)
    net.head.running[...] = 7.0
    state = net.state_dict()
    assert list(state) == [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["head.weight"][:] = 0  # a copy: editing it leaves the module alone
    assert not np.all(net.head.weight.data == 0)
    state = net.state_dict()

    fresh = Net()
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    state["scale"][:] = 42  # the loaded arrays are copies too
    assert fresh.scale.data[0] != 42


def test_load_state_dict_keeps_the_module_dtype():
    m = Scale(3)
    state = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    assert m.weight.data.dtype == np.float32 and m.running.dtype == np.float32
    assert m.calls.dtype == np.int64


def test_failed_load_lists_every_problem_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    state = Net().state_dict()
    for v in state.values():
        v[...] = 3
    del state["head.bias"]
    state["tail.weight"] = np.zeros(3, np.float32)
    state["body.0.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    assert "missing: head.bias" in message
    assert "unexpected: tail.weight" in message
    assert "body.0.weight: expected (3,), got (4,)" in message
    for name, value in net.state_dict().items():  # nothing was loaded, not even the good entries
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_non_strict_load_ignores_missing_and_unexpected_but_not_shapes():
    net = Net()
    state = {"head.weight": np.full(3, 2.0, np.float32), "other": np.zeros(1)}
    net.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(net.head.weight.data, [2, 2, 2])
    with pytest.raises(ValueError, match="wrong shape"):
        net.load_state_dict({"head.weight": np.zeros(2)}, strict=False)


# -- dtype and device ------------------------------------------------------------------------------------------
def test_astype_double_float():
    m = Scale(3)
    m.backward(m(np.ones((2, 3), np.float32)))
    assert m.dtype == np.float32
    assert m.double() is m
    assert m.dtype == np.float64
    assert m.weight.data.dtype == m.weight.grad.dtype == m.running.dtype == np.float64
    assert m.calls.dtype == np.int64  # integer buffers keep their type
    m.float()
    assert m.weight.data.dtype == m.weight.grad.dtype == np.float32
    with pytest.raises(ValueError, match="Scale.astype expects a floating dtype, got int32"):
        m.astype(np.int32)
    assert Module().dtype == np.float32  # no parameters: the default


def test_to_cpu_keeps_values():
    m = Scale(3)
    w = m.weight.data.copy()
    assert m.to("cpu") is m and m.device == "cpu"
    np.testing.assert_array_equal(m.weight.data, w)
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


@pytest.mark.skipif(cuda_is_available(), reason="a GPU is available here: moving to CUDA would succeed")
def test_to_cuda_without_gpu_raises_clearly():
    m = Scale(3)
    w = m.weight.data
    with pytest.raises(DeviceUnavailableError, match="device 'cuda'"):
        m.to("cuda")
    assert m.weight.data is w  # nothing moved

"""Host synchronisation: a training step reads at most one value back from the device, an eval forward none.

On a GPU, ``int(a)``, ``bool(a)``, ``float(a)``, ``a.item()``, ``a.tolist()`` or ``np.asarray(a)``
of a device array copies it to the host, and the copy waits until every kernel queued
before it has finished: the CPU stops feeding the GPU.  Such a read is easy to write by
accident (``if mask.any():``) and invisible on the CPU, where it costs nothing.

No GPU is needed to count them.  ``DeviceArray`` is a NumPy array that counts every
conversion to a host value, and ``device_numpy`` is NumPy made to look like CuPy: every
array its functions return is a ``DeviceArray`` (as every array CuPy returns is a
``cupy.ndarray``), reductions and element reads give 0-d arrays instead of host scalars,
and it is not the ``numpy`` module, so the layers take the path they take on CuPy.  The
layers' ``get_array_module`` is pointed at it for ``DeviceArray`` inputs, and the model's
parameters and buffers are turned into ``DeviceArray`` views.  The tests check that the
arrays really stay ``DeviceArray`` all the way to the logits, the loss and the
gradients (otherwise a count of 0 would prove nothing), and that deliberate reads are
counted.
"""
from __future__ import annotations

import collections
import functools
import sys
import types

import numpy as np
import pytest

import minisegnet
from minisegnet import backend
from minisegnet.layers import BatchNorm2d, SoftmaxCrossEntropy
from minisegnet.layers.pooling import MaxPool2d, MaxUnpool2d
from minisegnet.models import SegNet, SegNetBasic
from minisegnet.optim import SGD, Adam

VOID = 11
NUM_CLASSES = 11
SYNCS: collections.Counter = collections.Counter()  # what was read back, by kind of conversion


def _counted(kind: str, method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        SYNCS[kind] += 1
        return method(self, *args, **kwargs)

    return wrapper


class DeviceArray(np.ndarray):
    """A NumPy array that counts each conversion of its values to the host (a sync on a GPU)."""

    __bool__ = _counted("__bool__", np.ndarray.__bool__)
    __int__ = _counted("__int__", np.ndarray.__int__)
    __float__ = _counted("__float__", np.ndarray.__float__)
    __index__ = _counted("__index__", np.ndarray.__index__)
    __complex__ = _counted("__complex__", np.ndarray.__complex__)
    __format__ = _counted("__format__", np.ndarray.__format__)
    item = _counted("item", np.ndarray.item)
    tolist = _counted("tolist", np.ndarray.tolist)
    __array__ = _counted("__array__", np.ndarray.__array__)

    def __getitem__(self, key):
        # CuPy returns a 0-d device array for a single element, not a host scalar
        return _on_device(super().__getitem__(key))


def _on_device(result):
    """Results as a device library gives them: arrays and scalars become ``DeviceArray``s."""
    if isinstance(result, DeviceArray):
        return result
    if isinstance(result, np.ndarray):
        return result.view(DeviceArray)
    if isinstance(result, (np.generic, int, float)) and not isinstance(result, (bool, np.bool_)):
        return np.array(result).view(DeviceArray)  # count_nonzero, a full sum ...: 0-d arrays on CuPy
    if isinstance(result, tuple):
        return tuple(_on_device(r) for r in result)
    return result


class DeviceNumpy(types.ModuleType):
    """NumPy whose functions return ``DeviceArray``s; types, dtypes and ufuncs are NumPy's own."""

    def __init__(self):
        super().__init__("device_numpy")

    def __getattr__(self, name):
        obj = getattr(np, name)
        if isinstance(obj, (type, np.ufunc, types.ModuleType)) or not callable(obj):
            return obj  # ufuncs keep the subclass of their inputs by themselves

        @functools.wraps(obj)
        def on_device(*args, **kwargs):
            return _on_device(obj(*args, **kwargs))

        setattr(self, name, on_device)
        return on_device


device_numpy = DeviceNumpy()
_real_asarray, _real_array = np.asarray, np.array


def _library_host_copy(real, kind):
    """``np.asarray``/``np.array`` that count a ``DeviceArray`` argument passed from minisegnet's code."""

    @functools.wraps(real)
    def conversion(obj, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if isinstance(obj, DeviceArray) and caller.split(".")[0] == "minisegnet":
            SYNCS[kind] += 1
        return real(obj, *args, **kwargs)

    return conversion


@pytest.fixture
def device(monkeypatch):
    """Route ``DeviceArray`` inputs of every minisegnet module to ``device_numpy``; yield the counter."""
    real, real_device_of = backend.get_array_module, backend.device_of

    def get_array_module(*arrays):
        return device_numpy if any(isinstance(a, DeviceArray) for a in arrays) else real(*arrays)

    def device_of(array):  # the pretend device is still "cpu" to to_device(): its arrays need no copy
        return "cpu" if isinstance(array, DeviceArray) else real_device_of(array)

    for name, module in list(sys.modules.items()):
        if name == "minisegnet" or name.startswith("minisegnet."):
            if getattr(module, "get_array_module", None) is real:
                monkeypatch.setattr(module, "get_array_module", get_array_module)
            if getattr(module, "device_of", None) is real_device_of:
                monkeypatch.setattr(module, "device_of", device_of)
    monkeypatch.setattr(np, "asarray", _library_host_copy(_real_asarray, "np.asarray"))
    monkeypatch.setattr(np, "array", _library_host_copy(_real_array, "np.array"))
    SYNCS.clear()
    yield SYNCS
    SYNCS.clear()


def on_device(module):
    """The module's parameters and buffers as ``DeviceArray`` views (its ``.to("cuda")`` here)."""
    module._map_arrays(lambda a: a.view(DeviceArray))
    return module


def small_models():
    return [
        SegNetBasic(3, NUM_CLASSES, channels=4, kernel_size=3, rng=0),
        SegNet(3, NUM_CLASSES, width=1 / 32, rng=0),
    ]


def batch(seed=0, shape=(2, 3, 32, 48)):
    rng = np.random.default_rng(seed)
    n, _, h, w = shape
    images = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES + 1, (n, h, w)).astype(np.uint8)  # 11 = void, ignored
    return images.view(DeviceArray), labels.view(DeviceArray)


def criterion():
    weight = np.linspace(0.5, 2.0, NUM_CLASSES)
    return SoftmaxCrossEntropy(weight=weight, ignore_index=VOID)


def training_step(model, optimizer, loss_fn, images, labels):
    model.train()
    optimizer.zero_grad()
    logits = model.forward(images)
    loss = loss_fn.forward(logits, labels)
    dlogits = loss_fn.backward()
    model.backward(dlogits)
    optimizer.step()
    return logits, loss, dlogits


# -- the counter counts ---------------------------------------------------------------
def test_the_counter_sees_every_kind_of_read(device):
    a = np.arange(6.0).reshape(2, 3).view(DeviceArray)
    total = a.sum()
    assert type(total) is DeviceArray and total.ndim == 0  # a reduction stays on the device
    assert type(a[0, 1]) is DeviceArray  # so does a single element
    float(total), int(total), bool(total), total.item(), a.tolist(), f"{total:.2f}"
    backend.to_numpy(a)  # the library's explicit copy to the host
    assert device == {"__float__": 1, "__int__": 1, "__bool__": 1, "item": 1, "tolist": 1, "__format__": 1,
                      "np.asarray": 1}
    assert type(device_numpy.zeros(3)) is DeviceArray and type(device_numpy.count_nonzero(a)) is DeviceArray


# -- eval forward: nothing read -------------------------------------------------------
@pytest.mark.parametrize("model", small_models(), ids=["SegNetBasic", "SegNet"])
def test_eval_forward_reads_nothing_from_the_device(device, model):
    images, _ = batch()
    on_device(model).eval()
    with minisegnet.no_grad():
        logits = model.forward(images)
    assert type(logits) is DeviceArray and logits.shape == (2, NUM_CLASSES, 32, 48)
    assert dict(device) == {}


@pytest.mark.parametrize("model", small_models(), ids=["SegNetBasic", "SegNet"])
def test_validating_the_indices_is_a_counted_read(device, model):
    """The unpool's value checks (``validate_indices=True``) do sync: the zero above is not for lack of seeing."""
    images, _ = batch()
    on_device(model).eval()
    unpools = [m for m in model.modules() if isinstance(m, MaxUnpool2d)]
    for unpool in unpools:
        assert not unpool.checks_index_values(device_numpy)  # the CuPy default: no value checks
        unpool.validate_indices = True
    with minisegnet.no_grad():
        model.forward(images)
    assert sum(device.values()) >= len(unpools) == len(model.encoder)


def test_the_default_checks_values_on_numpy_only():
    unpool, loss = MaxUnpool2d(), SoftmaxCrossEntropy()
    assert unpool.checks_index_values(np) and loss.checks_label_values(np)
    assert not unpool.checks_index_values(device_numpy) and not loss.checks_label_values(device_numpy)
    assert MaxUnpool2d(validate_indices=True).checks_index_values(device_numpy)
    assert SoftmaxCrossEntropy(validate_labels=True).checks_label_values(device_numpy)
    assert not MaxUnpool2d(validate_indices=False).checks_index_values(np)
    assert not SoftmaxCrossEntropy(validate_labels=False).checks_label_values(np)


# -- a training step: the loss, read once by the caller, or nothing ------------------
@pytest.mark.parametrize("make_optimizer", [lambda p: SGD(p, lr=0.01), lambda p: Adam(p, lr=1e-3)],
                         ids=["SGD", "Adam"])
@pytest.mark.parametrize("model", small_models(), ids=["SegNetBasic", "SegNet"])
def test_training_step_reads_only_the_loss(device, model, make_optimizer):
    images, labels = batch()
    on_device(model)
    optimizer = make_optimizer(model.parameters())
    loss_fn = on_device(criterion())
    for step in range(2):  # the second step finds the optimizer state and BN buffers of the first
        logits, loss, dlogits = training_step(model, optimizer, loss_fn, images, labels)
        assert dict(device) == {}, f"step {step}"
    # the counting was real: every array stayed a device array
    assert type(logits) is DeviceArray and type(dlogits) is DeviceArray
    assert type(loss) is DeviceArray and loss.ndim == 0 and loss.dtype == np.float32
    for name, p in model.named_parameters():
        assert type(p.data) is DeviceArray and type(p.grad) is DeviceArray, name
    for state in optimizer.state:
        assert all(type(v) is DeviceArray for v in state.values() if isinstance(v, np.ndarray))
    for name, b in model.named_buffers():
        assert type(b) is DeviceArray, name
    value = float(loss)  # the caller logs the loss: the one read of the step
    assert dict(device) == {"__float__": 1}
    assert np.isfinite(value) and value > 0


def test_checking_the_labels_is_a_counted_read(device):
    images, labels = batch()
    model = on_device(small_models()[0])
    loss_fn = SoftmaxCrossEntropy(ignore_index=VOID, validate_labels=True)
    loss_fn.forward(model.forward(images), labels)
    assert device["__bool__"] == 1  # is any label out of range?


def test_the_loss_of_a_device_step_equals_the_host_step(device):
    """The device path (0-d arrays, no host branch) computes what the NumPy path computes."""
    images, labels = batch()
    logits = small_models()[0].forward(images.view(np.ndarray))
    host_loss_fn, device_loss_fn = criterion(), criterion()
    host_loss = host_loss_fn.forward(logits, labels.view(np.ndarray))  # plain NumPy: checked labels
    host_grad = host_loss_fn.backward()
    device_loss = device_loss_fn.forward(logits.view(DeviceArray), labels)
    device_grad = device_loss_fn.backward()
    assert dict(device) == {}
    assert type(host_loss) is np.float64 and type(device_loss) is DeviceArray
    assert device_loss.dtype == logits.dtype == np.float32
    assert float(device_loss) == host_loss  # the host rounds the same float32 value to float64
    np.testing.assert_array_equal(device_grad.view(np.ndarray), host_grad)


@pytest.mark.parametrize("normalize", ["valid", "weights"])
def test_all_pixels_ignored_gives_zero_on_the_device_without_a_read(device, normalize):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 4, 3, 5)).view(DeviceArray)
    labels = np.full((1, 3, 5), VOID, np.uint8).view(DeviceArray)
    loss_fn = SoftmaxCrossEntropy(weight=[1.0, 2.0, 3.0, 4.0], ignore_index=VOID, normalize=normalize)
    loss = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    assert dict(device) == {}
    assert type(loss) is DeviceArray and float(loss) == 0.0
    assert not np.any(grad.view(np.ndarray))


# -- BatchNorm with a cumulative average ------------------------------------------------
def test_batchnorm_cumulative_average_reads_nothing(device):
    """``momentum=None`` (average over all batches) must not read ``num_batches_tracked`` back.

    ``momentum = 1 / tracked`` can stay a 0-d device array: ``running *= 1 - momentum``
    works with one as well as with a Python float.
    """
    bn = on_device(BatchNorm2d(3, momentum=None))
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32).view(DeviceArray)
    bn.train()
    y = bn.forward(x)
    bn.backward(y)
    assert type(y) is DeviceArray and type(bn.running_mean) is DeviceArray
    assert dict(device) == {}


# -- packed indices on the device ---------------------------------------------------------
def test_packed_indices_stay_on_the_device(device):
    x = np.random.default_rng(3).permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9).astype(np.float32)
    x = x.view(DeviceArray)
    pool, unpool = MaxPool2d(pack_indices=True), MaxUnpool2d()
    y, packed = pool.forward(x)
    z = unpool.forward(y, packed, x.shape)
    dx = pool.backward(unpool.backward(z))
    assert type(packed.data) is DeviceArray and type(z) is DeviceArray and type(dx) is DeviceArray
    assert dict(device) == {}

"""BatchLoader: shapes, coverage, reproducibility per (seed, epoch), resume, prefetch errors and shutdown;
ArrayDataset and cache_resized."""
import threading
import time

import numpy as np
import pytest

from minisegnet.data import ArrayDataset, BatchLoader, SyntheticStreets, TrainTransform, cache_resized, resize_label

N, H, W = 10, 4, 6


def indexed_dataset(n=N):
    """Image i is filled with the value i (so a batch tells which items it holds); labels vary by column."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, H, W, 3)).copy()
    labels = np.broadcast_to((np.arange(W) % 12).astype(np.uint8), (n, H, W)).copy()
    return ArrayDataset(images, labels)


def items(images):
    """The dataset indices of a batch built from indexed_dataset with mean=None, std=None."""
    return np.rint(images[:, 0, 0, 0] * 255).astype(int).tolist()


def epoch_batches(loader, epoch, **kw):
    return [(x.copy(), y.copy()) for x, y in loader.iter_epoch(epoch, **kw)]


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "minisegnet-prefetch"]


def wait_no_prefetch_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not prefetch_threads()


def test_array_dataset_validation():
    ds = indexed_dataset()
    assert len(ds) == N and ds.size == (H, W)
    image, label = ds[3]
    assert image.shape == (H, W, 3) and label.shape == (H, W)
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(ds.images.astype(np.float32), ds.labels)
    with pytest.raises(ValueError, match="do not match"):
        ArrayDataset(ds.images, ds.labels[:, :2])


@pytest.mark.parametrize("prefetch", [True, False])
def test_shapes_dtypes_and_coverage(prefetch):
    loader = BatchLoader(indexed_dataset(), 4, shuffle=True, seed=1, prefetch=prefetch)
    assert len(loader) == 3
    batches = epoch_batches(loader, 0)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (3, H, W) and x.flags.c_contiguous
        assert y.dtype == np.uint8 and y.shape[1:] == (H, W)
    seen = sum((items(x) for x, _ in batches), [])
    assert sorted(seen) == list(range(N)) and seen != list(range(N))  # every item once, shuffled
    dropped = BatchLoader(indexed_dataset(), 4, drop_last=True, prefetch=prefetch)
    assert len(dropped) == 2 and sum(len(x) for x, _ in dropped.iter_epoch(0)) == 8
    ordered = BatchLoader(indexed_dataset(), 3, prefetch=prefetch)
    assert sum((items(x) for x, _ in ordered.iter_epoch(5)), []) == list(range(N))


def test_normalisation_applied():
    ds = indexed_dataset()
    loader = BatchLoader(ds, 5, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.25], prefetch=False)
    x, _ = next(loader.iter_epoch(0))
    expected = (ds.images[:5] / 255.0 - [0.1, 0.2, 0.3]) / [0.5, 0.5, 0.25]
    np.testing.assert_allclose(x, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    x64, _ = next(BatchLoader(ds, 5, dtype=np.float64, prefetch=False).iter_epoch(0))
    assert x64.dtype == np.float64


def test_reproducible_per_seed_and_epoch_with_augmentation():
    def make(seed=7):
        return BatchLoader(indexed_dataset(), 3, shuffle=True, seed=seed, transform=TrainTransform(flip=0.5))

    a, b = make(), make()
    for x, _ in a.iter_epoch(0):  # a has a history, b has none: epoch 2 must not care
        pass
    for (xa, ya), (xb, yb) in zip(epoch_batches(a, 2), epoch_batches(b, 2), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    orders = [sum((items(x) for x, _ in epoch_batches(a, e)), []) for e in range(4)]
    assert len({tuple(o) for o in orders}) == 4  # a new order each epoch
    other = sum((items(x) for x, _ in epoch_batches(make(seed=8), 2)), [])
    assert other != orders[2]
    flipped = [bool(y[k, 0, 0] != 0) for _, y in epoch_batches(a, 1) for k in range(len(y))]
    assert any(flipped) and not all(flipped)  # labels run 0..5 left to right unless flipped


def test_resume_mid_epoch_and_iteration_advances_epoch():
    loader = BatchLoader(indexed_dataset(), 3, shuffle=True, seed=3, transform=TrainTransform(flip=0.5))
    full = epoch_batches(loader, 4)
    tail = epoch_batches(loader, 4, start=2)
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="start"):
        loader.iter_epoch(0, start=99)

    loop = BatchLoader(indexed_dataset(), 3, shuffle=True, seed=3)
    first = [items(x) for x, _ in loop]
    second = [items(x) for x, _ in loop]
    assert loop.epoch == 2 and first != second
    assert first == [items(x) for x, _ in loop.iter_epoch(0)]
    loop.set_epoch(1)
    assert [items(x) for x, _ in loop] == second


class Exploding:
    """A dataset whose item 5 cannot be read."""

    def __init__(self):
        self.inner = indexed_dataset()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if i == 5:
            raise OSError("disk on fire at item 5")
        return self.inner[i]


def test_worker_exception_reaches_consumer():
    loader = BatchLoader(Exploding(), 2)  # generic path: one item at a time
    got = []
    with pytest.raises(OSError, match="disk on fire"):
        for x, _ in loader.iter_epoch(0):
            got.append(items(x))
    assert got == [[0, 1], [2, 3]]  # the batches before the broken one arrived
    assert wait_no_prefetch_threads()


def test_early_stop_shuts_the_thread_down():
    loader = BatchLoader(indexed_dataset(), 1, prefetch=2)
    for k, _ in enumerate(loader.iter_epoch(0)):
        assert prefetch_threads()  # the worker is running while we consume
        if k == 1:
            break
    assert wait_no_prefetch_threads()  # break closed the generator, which stopped the worker
    it = loader.iter_epoch(1)
    next(it)
    del it  # an abandoned iterator is closed by the garbage collector
    assert wait_no_prefetch_threads()
    it = loader.iter_epoch(2)
    next(it)
    it.close()
    assert wait_no_prefetch_threads()


def test_generic_dataset_with_transform_and_size_mismatch():
    syn = SyntheticStreets(5, size=(20, 24), seed=0)
    loader = BatchLoader(syn, 2, transform=TrainTransform("16x20", flip=False))
    x, y = next(loader.iter_epoch(0))
    assert x.shape == (2, 3, 16, 20) and y.shape == (2, 16, 20)
    np.testing.assert_array_equal(y[1], resize_label(syn[1][1], (16, 20)))

    class Mixed:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            s = 4 + i
            return np.zeros((s, s, 3), np.uint8), np.zeros((s, s), np.uint8)

    with pytest.raises(ValueError, match="give a size"):
        next(BatchLoader(Mixed(), 2, prefetch=False).iter_epoch(0))


def test_cache_resized():
    syn = SyntheticStreets(6, size=(20, 24), seed=2)
    cached = cache_resized(syn, (10, 12))
    assert isinstance(cached, ArrayDataset) and cached.images.shape == (6, 10, 12, 3)
    assert cached.names == syn.names
    for i in (0, 5):
        np.testing.assert_array_equal(cached.labels[i], resize_label(syn[i][1], (10, 12)))
    same = cache_resized(syn, workers=1)
    np.testing.assert_array_equal(same.images[3], syn[3][0])


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=2.0), dict(batch_size=2, seed=-1),
                                dict(batch_size=2, prefetch=-1), dict(batch_size=2, transform=3)])
def test_argument_errors(kw):
    with pytest.raises((ValueError, TypeError)):
        BatchLoader(indexed_dataset(), **kw)


@pytest.mark.parametrize("mean, std, message", [
    ([0.5], [1, 1, 1], r"mean must be 3 finite numbers \(R, G, B\), got \[0.5\]"),
    (None, [1, float("nan"), 1], "std must be 3 finite numbers"),
    ("abc", None, "mean must be 3 numbers"),
    (None, [1, 0, 1], "std must be positive"),
])
def test_bad_normalisation_statistics_are_named(mean, std, message):
    with pytest.raises(ValueError, match=message):
        BatchLoader(indexed_dataset(), 2, mean=mean, std=std)

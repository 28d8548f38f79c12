"""Batches for training and evaluation: a seeded, resumable, prefetching iterator over a dataset.

A *dataset* here is anything with ``len(ds)`` and ``ds[i] -> (image uint8 (H, W, 3), label uint8
(H, W))``: :class:`~minisegnet.data.CamVid`, :class:`~minisegnet.data.SyntheticStreets`, or the
in-memory :class:`ArrayDataset` that :func:`cache_resized` builds from either.

:class:`BatchLoader` turns it into batches ``(images float32 (N, 3, H, W), labels uint8 (N, H, W))``.

Reproducibility.  Every random choice of epoch ``e`` comes from ``(seed, e)``: the shuffling order from
``default_rng((seed, e, 1))`` and the augmentation of batch ``b`` from ``default_rng((seed, e, 2, b))``.
Nothing depends on what happened before, so a training run stopped after epoch 4 and resumed with
``loader.iter_epoch(5)`` sees exactly the batches an uninterrupted run would have seen.

Prefetching.  While the model works on batch ``b`` a background thread assembles batch ``b + 1``
(decoding, resizing, flipping and normalising are NumPy/Pillow calls that release the GIL).  The
queue between them is bounded, an exception in the thread is re-raised in the consumer, and a
consumer that stops early (``break``) stops the thread too.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .transforms import normalize, parse_size, resize_image, resize_label

__all__ = ["ArrayDataset", "cache_resized", "BatchLoader"]


class ArrayDataset:
    """A dataset held in two arrays: ``images`` uint8 ``(N, H, W, 3)`` and ``labels`` uint8 ``(N, H, W)``.

    ``ds[i]`` returns views ``(images[i], labels[i])``; :class:`BatchLoader` gathers whole batches with
    one fancy-indexing copy when no per-image transform is asked for.
    """

    #: Whether every label map must have its image's size (a subclass that scores at the labels'
    #: own resolution, :class:`minisegnet.evaluation.ScoringSet`, only needs one label per image).
    labels_share_image_size = True

    def __init__(self, images, labels, names=None):
        images, labels = np.asarray(images), np.asarray(labels)
        kind = type(self).__name__
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{kind}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.ndim != 3 or labels.dtype != np.uint8:
            raise ValueError(f"{kind}: labels must be uint8 (N, H, W), got {labels.dtype} {labels.shape}")
        if self.labels_share_image_size and labels.shape != images.shape[:3]:
            raise ValueError(f"{kind}: images {images.shape} and labels {labels.shape} do not match")
        if len(images) != len(labels):
            raise ValueError(f"{kind}: {len(images)} images but {len(labels)} label maps")
        self.images = images
        self.labels = labels
        self.names = tuple(names) if names is not None else tuple(f"{i:05d}" for i in range(len(images)))
        if len(self.names) != len(images):
            raise ValueError(f"{kind}: {len(self.names)} names for {len(images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def size(self):
        """``(H, W)`` of every image."""
        return self.images.shape[1:3]

    def __repr__(self) -> str:
        return f"ArrayDataset(images={len(self)}, size={self.size[0]}x{self.size[1]})"


def cache_resized(dataset, size=None, *, workers: int = 2) -> ArrayDataset:
    """Read every pair of ``dataset`` once, resized to ``size``, into an in-memory :class:`ArrayDataset`.

    For CamVid this is the difference between decoding 367 PNGs of 360×480 every epoch (about 4 s on one
    core) and gathering batches from memory (milliseconds); at 180×240 the whole training split takes
    48 MB.  Images are resized bilinearly and labels with nearest neighbour; ``size=None`` keeps the
    size of the first item (all items must then share it).  ``workers`` threads decode in parallel
    (Pillow releases the GIL while decoding).
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cache_resized: the dataset is empty")
    size = None if size is None else parse_size(size)

    def load(i):
        image, label = dataset[i]
        if size is not None:
            image, label = resize_image(image, size), resize_label(label, size)
        return image, label

    first_image, first_label = load(0)
    h, w = first_label.shape
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    labels = np.empty((n, h, w), dtype=np.uint8)

    def store(i, pair=None):
        image, label = pair if pair is not None else load(i)
        if image.shape != (h, w, 3) or label.shape != (h, w):
            raise ValueError(
                f"cache_resized: item {i} is {image.shape[:2]} but item 0 is {(h, w)}; pass size=(H, W)"
            )
        images[i] = image
        labels[i] = label

    store(0, (first_image, first_label))
    if workers > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(store, range(1, n)))  # list() re-raises the first error
    else:
        for i in range(1, n):
            store(i)
    names = getattr(dataset, "names", None)
    return ArrayDataset(images, labels, names=names if names is not None and len(names) == n else None)


def _channel_statistic(name: str, value):
    """None, or 3 finite float64 values (R, G, B); ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"BatchLoader: {name} must be 3 numbers (R, G, B), got {value!r}") from None
    if array.size != 3 or not np.isfinite(array).all():
        raise ValueError(f"BatchLoader: {name} must be 3 finite numbers (R, G, B), got {array.tolist()}")
    return array.reshape(3)


_END = object()  # the worker's "no more batches" marker


class _WorkerError:
    def __init__(self, exc):
        self.exc = exc


class BatchLoader:
    """Seeded, resumable, prefetching batches ``(images float32 (N, 3, H, W), labels uint8 (N, H, W))``.

    Args:
        dataset: ``len(ds)`` and ``ds[i] -> (image uint8 (H, W, 3), label uint8 (H, W))``.
        batch_size: images per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: visit the images in a new random order each epoch (order from ``(seed, epoch)``).
        seed: the seed all shuffling and augmentation derive from.
        transform: a callable ``(image, label, rng) -> (image, label)`` applied to each pair, e.g.
            :class:`~minisegnet.data.TrainTransform`; ``rng`` is the batch's own generator.
        mean, std: per-channel statistics in ``[0, 1]`` units (see :func:`~minisegnet.data.compute_mean_std`);
            None means 0 and 1 (images scaled to ``[0, 1]`` only).
        drop_last: drop a last batch smaller than ``batch_size``.
        prefetch: assemble the next batch in a background thread (a bounded queue of ``prefetch``
            batches when an int; ``True`` means 1 — one batch ahead is all the overlap there is to have).
        dtype: float dtype of the images (float32; float64 for exact checks).

    Iterating: ``loader.iter_epoch(epoch)`` gives the batches of that epoch (``start=b`` skips to batch
    ``b``) and is what a training loop should call.  ``for batch in loader`` runs epoch
    ``loader.epoch`` and then advances it, so repeated loops see fresh orders; ``set_epoch(e)`` chooses
    the next one.  ``len(loader)`` is the number of batches per epoch.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        transform=None,
        mean=None,
        std=None,
        drop_last: bool = False,
        prefetch=True,
        dtype=np.float32,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"BatchLoader: seed must be a non-negative integer, got {seed!r}")
        if len(dataset) == 0:
            raise ValueError("BatchLoader: the dataset is empty")
        if transform is not None and not callable(transform):
            raise TypeError(f"BatchLoader: transform must be callable (image, label, rng), got {transform!r}")
        depth = 1 if prefetch is True else 0 if prefetch is False else int(prefetch)
        if depth < 0:
            raise ValueError(f"BatchLoader: prefetch must be a bool or a non-negative int, got {prefetch!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.transform = transform
        self.mean = _channel_statistic("mean", mean)
        self.std = _channel_statistic("std", std)
        if self.std is not None and not (self.std > 0).all():
            raise ValueError(f"BatchLoader: std must be positive, got {self.std.tolist()}")
        self.drop_last = bool(drop_last)
        self.prefetch = depth
        self.dtype = np.dtype(dtype)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``for batch in loader`` runs."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch`` in visiting order (a permutation when shuffling)."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, int(epoch), 1)).permutation(n)

    def batch_rng(self, epoch: int, batch: int) -> np.random.Generator:
        """The generator that drives the augmentation of one batch: a function of (seed, epoch, batch)."""
        return np.random.default_rng((self.seed, int(epoch), 2, int(batch)))

    def load_batch(self, indices, rng=None):
        """Assemble the batch of the given dataset indices (transform, stack, normalise)."""
        indices = np.asarray(indices, dtype=np.intp)
        stacked_images = getattr(self.dataset, "images", None)
        stacked_labels = getattr(self.dataset, "labels", None)
        if self.transform is None and isinstance(stacked_images, np.ndarray) and isinstance(stacked_labels, np.ndarray):
            images, labels = stacked_images[indices], stacked_labels[indices]  # one gather each
        else:
            images = labels = None
            for k, i in enumerate(indices):
                image, label = self.dataset[int(i)]
                if self.transform is not None:
                    image, label = self.transform(image, label, rng)
                if images is None:
                    h, w = label.shape
                    images = np.empty((len(indices), h, w, 3), dtype=np.uint8)
                    labels = np.empty((len(indices), h, w), dtype=np.uint8)
                if image.shape != images.shape[1:] or label.shape != labels.shape[1:]:
                    raise ValueError(
                        f"BatchLoader: item {int(i)} gives image {image.shape} and label {label.shape}, but the "
                        f"batch holds {images.shape[1:3]}: give a size (resize) so that all items match"
                    )
                images[k] = image
                labels[k] = label
        return normalize(images, self.mean, self.std, dtype=self.dtype), labels

    def _batches(self, epoch: int, start: int):
        order = self.order(epoch)
        for b in range(start, len(self)):
            indices = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.load_batch(indices, self.batch_rng(epoch, b))

    def iter_epoch(self, epoch: int, start: int = 0):
        """An iterator over the batches of ``epoch`` (from batch ``start``); depends only on (seed, epoch)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"BatchLoader: start batch {start} out of range 0..{len(self)}")
        if self.prefetch == 0:
            return self._batches(epoch, start)
        return self._prefetching(self._batches(epoch, start))

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def _prefetching(self, batches):
        """Run ``batches`` in a daemon thread, ``self.prefetch`` items ahead, and yield its results."""
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for batch in batches:
                    if not put(batch):
                        return
                put(_END)
            except BaseException as exc:  # handed to the consumer, who re-raises it
                put(_WorkerError(exc))
            finally:
                batches.close()

        thread = threading.Thread(target=work, name="minisegnet-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = q.get(timeout=1.0)
                except queue.Empty:  # never happens while the worker lives: it always ends with a message
                    if thread.is_alive():
                        continue
                    raise RuntimeError("BatchLoader: the prefetch thread died without a result") from None
                if item is _END:
                    return
                if isinstance(item, _WorkerError):
                    raise item.exc
                yield item
        finally:  # normal end, error, or the consumer stopped early (generator closed)
            stop.set()
            thread.join(timeout=10)

    def __repr__(self) -> str:
        return (
            f"BatchLoader({len(self.dataset)} images, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, transform={self.transform!r}, batches={len(self)})"
        )

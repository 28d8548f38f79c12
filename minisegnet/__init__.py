"""minisegnet: SegNet from scratch on NumPy and CuPy, every backward written by hand."""
import time as _time

#: When this package began to import (``time.monotonic()``), before NumPy: the ``minisegnet`` command's
#: time budget counts from here, so that ``--minutes`` covers its imports too (:func:`minisegnet.cli.command`).
IMPORT_STARTED = _time.monotonic()

from importlib.metadata import PackageNotFoundError, version as _version  # noqa: E402

try:
    __version__ = _version("minisegnet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

from .backend import cuda_is_available, get_array_module, to_device, to_numpy  # noqa: E402
from .grad_mode import enable_grad, is_grad_enabled, no_grad  # noqa: E402
from .module import Module, Parameter, Sequential  # noqa: E402
from .layers import (  # noqa: E402
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    LossSum,
    LovaszSoftmax,
    MaxPool2d,
    MaxUnpool2d,
    ReLU,
    SoftmaxCrossEntropy,
    Upsample,
)
from .models import (  # noqa: E402
    MODELS,
    BayesianSegNet,
    BayesianSegNetBasic,
    BilinearBasic,
    FCNBasic,
    FCNBasicNoAddition,
    FCNBasicNoDimReduction,
    SegmentationModel,
    SegNet,
    SegNetBasic,
    build_model,
)

__all__ = [
    "__version__",
    "cuda_is_available",
    "get_array_module",
    "to_device",
    "to_numpy",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "Module",
    "Parameter",
    "Sequential",
    "Conv2d",
    "BatchNorm2d",
    "ReLU",
    "Dropout",
    "MaxPool2d",
    "MaxUnpool2d",
    "SoftmaxCrossEntropy",
    "LovaszSoftmax",
    "LossSum",
    "ConvTranspose2d",
    "Upsample",
    "SegmentationModel",
    "SegNet",
    "SegNetBasic",
    "BayesianSegNet",
    "BayesianSegNetBasic",
    "FCNBasic",
    "FCNBasicNoAddition",
    "FCNBasicNoDimReduction",
    "BilinearBasic",
    "MODELS",
    "build_model",
]

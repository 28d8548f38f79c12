"""The layers of SegNet, one concept per file, each with a hand-written backward."""
from .activation import ReLU
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .conv_transpose import ConvTranspose2d
from .dropout import Dropout
from .loss import SoftmaxCrossEntropy
from .lovasz import LovaszSoftmax
from .loss_sum import LossSum
from .pooling import MaxPool2d, MaxUnpool2d, PackedIndices
from .upsample import Upsample

__all__ = ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "MaxPool2d", "MaxUnpool2d", "SoftmaxCrossEntropy",
           "ConvTranspose2d", "Upsample", "PackedIndices", "LovaszSoftmax", "LossSum"]

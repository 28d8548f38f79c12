"""PLACEHOLDER: being written."""
from ..module import Module


class SoftmaxCrossEntropy(Module):
    pass

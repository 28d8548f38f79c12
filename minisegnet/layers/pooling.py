"""PLACEHOLDER: being written."""
from ..module import Module


class MaxPool2d(Module):
    pass


class MaxUnpool2d(Module):
    pass

"""PLACEHOLDER: being written."""
from ..module import Module


class Conv2d(Module):
    pass

"""PLACEHOLDER: being written."""
from ..module import Module


class ReLU(Module):
    pass

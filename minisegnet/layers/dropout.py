"""PLACEHOLDER: being written."""
from ..module import Module


class Dropout(Module):
    pass

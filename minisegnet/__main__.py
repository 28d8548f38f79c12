"""``python -m minisegnet``: the same as the ``minisegnet`` command."""
import sys

from .cli import command

sys.exit(command())

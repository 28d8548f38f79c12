"""``python -m minisegnet``: the same as the ``minisegnet`` command."""
import sys

from .cli import main

sys.exit(main())

"""Writing a file so that it is either the old one or the whole new one, never half of either.

The new content goes into a temporary file beside the target (``O_EXCL``: never somebody else's
file; mode ``0o666``, so the umask decides, as ``open()`` does), is flushed and ``fsync``-ed,
then renamed over the target (``os.replace`` is atomic on POSIX and Windows), and the folder is
fsynced so that the rename itself survives a power cut.  On any error -- a full disk, Ctrl-C --
the temporary file is removed and the old file is left as it was.  Checkpoints, JSON reports and
logs are all written this way.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Callable

__all__ = ["write_atomically"]


def write_atomically(path, write: Callable, binary: bool = True) -> str:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``binary``: open the temporary file as ``"wb"`` (else ``"w"``, UTF-8).  Returns ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = None
    try:
        # inside the try: a signal's exception (Ctrl-C twice during a save) can come right after the
        # file is created and before ``fd`` is bound, and the file must still go
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if fd is not None or not isinstance(exc, FileExistsError):  # FileExistsError: the name was somebody else's
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX); harmless where folders cannot be opened
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path

"""Files a source keeps in the state directory: written atomically, read whole.

A source cannot reach the state store from its plugin context, so what it
must keep across restarts (syncrepl's checkpoint, JumpCloud's events cursor)
is a file in ``state_dir``. :func:`write_atomic` writes it so that a reader,
or the next start after a crash, finds either the old file or the new one
whole: a temporary file beside it (mode 0600: it may hold directory data),
flushed to disk, then renamed over it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; raises :class:`OSError`."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    # The rename itself reaches the disk with the directory (best effort: not
    # every system lets a directory be opened).
    with contextlib.suppress(OSError):
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def read_whole(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` when there is none; raises :class:`OSError` otherwise."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None

"""Small file helpers: atomic writes that never leave a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SpeechtlError


def default_permissions(path: str | os.PathLike) -> None:
    """Give a temp file (0600) or folder (0700) the permissions a plain ``open``/``mkdir`` would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder, fsync, rename.

    A failed write (disk full, quota, permissions) leaves the old file as it was and raises one
    :class:`SpeechtlError` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise SpeechtlError(f"{path}: cannot write ({e.strerror or e}); free disk space or choose another "
                                "folder, then run again") from e
        raise

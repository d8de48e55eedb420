"""Small file helpers: atomic writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import SpeechtlError


def default_permissions(path: str | os.PathLike) -> None:
    """Give a temp file (0600) or folder (0700) the permissions a plain ``open``/``mkdir`` would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 before_replace: Callable[[Path], None] | None = None, what: str = "",
                 then: str = "run again") -> None:
    """Write ``path`` through a temp file in the same folder: ``write(f)``, fsync, rename, fsync the folder.

    ``before_replace(temp_path)`` sees the complete, fsynced temp file just before it takes
    ``path``'s name (to read it back, or to move the old file aside). Until the rename ``path``
    keeps its old content; on any failure the temp file is removed. An ``OSError`` (disk full,
    quota, permissions) becomes one :class:`SpeechtlError` naming ``path``: "cannot write
    ``what`` (...); free disk space or choose another folder, then ``then``".
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        default_permissions(tmp)
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise SpeechtlError(f"{path}: cannot write{' ' + what if what else ''} ({e.strerror or e}); free disk "
                                f"space or choose another folder, then {then}") from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder, fsync, rename.

    A failed write (disk full, quota, permissions) leaves the old file as it was and raises one
    :class:`SpeechtlError` naming ``path``.
    """
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on folders, and renames stay atomic there.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

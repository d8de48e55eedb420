"""Small file helpers: atomic writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
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


def _owner() -> str:
    """This process as a staging folder's name records it: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_dead_staging(final_dir: Path) -> None:
    """Tidy what writers of ``final_dir`` on this host left when they were killed mid-write.

    Their staging folders (``.<name>.<host>-<pid>.<random>.tmp``) are removed. The previous folder an
    overwrite had moved aside (``.<name>.<host>-<pid>.<n>.old``) is removed once ``final_dir`` exists,
    and put back as ``final_dir`` when the writer died before its new folder took the place. A folder of
    a live process, of another host, or without a recorded owner is left alone.
    """
    pattern = re.compile(rf"\.{re.escape(final_dir.name)}\.(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.(?P<kind>tmp|old)")
    host = socket.gethostname()
    for stale in sorted(final_dir.parent.glob(f".{glob.escape(final_dir.name)}.*")):
        m = pattern.fullmatch(stale.name)
        if m is None or m["host"] != host or not stale.is_dir():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            if m["kind"] == "old" and not final_dir.exists():
                with contextlib.suppress(OSError):  # another writer's folder took the place meanwhile: keep it
                    os.rename(stale, final_dir)
            else:
                shutil.rmtree(stale, ignore_errors=True)
        except (PermissionError, OverflowError):  # alive, another user's; or no such pid at all here
            continue


@contextlib.contextmanager
def staging_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden folder beside ``final_dir`` (``.<name>.<host>-<pid>.<random>.tmp``), removed on exit.

    Beside, so that :func:`atomic_replace_dir` can rename it onto ``final_dir`` (same filesystem).
    It gets the permissions a plain ``mkdir`` would give, not ``mkdtemp``'s private 0700. Folders
    that killed writers of ``final_dir`` on this host left behind are removed first.
    """
    final_dir = Path(final_dir)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(final_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.{_owner()}.", suffix=".tmp", dir=final_dir.parent))
        default_permissions(tmp)
    except OSError as e:
        raise SpeechtlError(
            f"cannot create a folder next to {final_dir} ({e.strerror}); choose a writable location."
        ) from e
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, *, overwrite: bool = False) -> bool:
    """Move the finished folder ``tmp_dir`` to ``final_dir`` in one rename, after flushing it to disk.

    Returns False when ``final_dir`` appeared, non-empty, in the meantime and ``overwrite`` is False
    (``tmp_dir`` is left for the caller to discard). With ``overwrite`` an existing ``final_dir`` is
    moved aside first and deleted after the rename; if the rename fails it is put back (and if this process
    is killed in between, the next :func:`staging_dir` of ``final_dir`` puts it back or removes it).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    _fsync_tree(tmp_dir)
    old = None
    if overwrite and final_dir.exists():
        old = final_dir.parent / f".{final_dir.name}.{_owner()}.{time.monotonic_ns()}.old"  # see remove_dead_staging
        os.rename(final_dir, old)
    try:
        # rename() onto an empty folder replaces it and fails on a non-empty one: that is the race check.
        os.rename(tmp_dir, final_dir)
    except OSError as e:
        if old is not None:
            os.rename(old, final_dir)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise SpeechtlError(f"cannot move the finished folder to {final_dir} ({e.strerror}); free disk space "
                            "or choose another folder, then run again.") from e
    _fsync_dir(final_dir.parent)
    if old is not None:
        # Renamed to a staging name first: a kill while it is deleted leaves a folder that is removed, not put back.
        doomed = final_dir.parent / f".{final_dir.name}.{_owner()}.{time.monotonic_ns()}.tmp"
        try:
            os.rename(old, doomed)
        except OSError:
            doomed = old
        shutil.rmtree(doomed, ignore_errors=True)
    return True


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def out_in_use(out: os.PathLike) -> bool:
    """Whether ``--out`` holds anything: False when it is absent or an empty folder; an error when it is a file.

    What a killed writer of ``out`` left is tidied first (:func:`remove_dead_staging`), so that a folder
    an interrupted overwrite had moved aside is back in place before it is looked at."""
    remove_dead_staging(Path(out))
    if not os.path.exists(out):
        return False
    if not os.path.isdir(out):
        raise SpeechtlError(f"--out {out} is a file; give a folder")
    return any(os.scandir(out))


def check_apart(out: str | os.PathLike, sources: dict[str, str | os.PathLike | None], *, writes: str) -> None:
    """Refuse an output folder that is, holds or sits inside a folder that is only read.

    ``sources`` maps what each input is (``"model"``, ``"adapter"``, ...) to its path; hub ids, registered
    names and other paths that do not exist here are skipped. ``writes`` names what goes to ``out``.
    """
    target = Path(out).resolve()
    for what, src in sources.items():
        if src is None or not Path(src).exists():
            continue
        src = Path(src).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise SpeechtlError(f"the output folder {out} overlaps the {what} folder {src}; the {what} is only read: "
                                f"write {writes} to a folder of its own")

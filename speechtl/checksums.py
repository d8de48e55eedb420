"""``checksums.json``: the size and sha256 of every file of a folder speechtl wrote, checked on read.

Written last, after every other file is in place, so a folder without it is incomplete. Reading
compares the file list and sizes every time and the hashes once per process (again if a file's
size or modification time changed since).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SpeechtlError

CHECKSUMS = "checksums.json"

# Folders whose every file was hashed in this process: path -> (name, size, mtime) of each file then.
_VERIFIED: dict[str, tuple[tuple[str, int, int], ...]] = {}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def record_checksum(record: dict[str, Any], own_key: str) -> str:
    """SHA-256 of a JSON record's entries but ``own_key`` (where the record keeps it), as sorted compact JSON.

    Hashed as the record reads back from its file, so a reader can check it; layout changes do not count.
    """
    body = {k: v for k, v in record.items() if k != own_key}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def listed_files(folder: Path) -> list[str]:
    """Every file below ``folder`` but ``checksums.json``, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(folder: str | os.PathLike, *, read_only: bool = False, **header: Any) -> Path:
    """Record size and sha256 of every file of ``folder`` in ``folder/checksums.json`` (with ``header`` keys).

    With ``read_only`` every file (and the record) is made read-only first.
    """
    folder = Path(folder)
    entries = {}
    for rel in listed_files(folder):
        p = folder / rel
        if read_only:
            os.chmod(p, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        entries[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    out = folder / CHECKSUMS
    out.write_text(json.dumps({**header, "files": entries}, indent=1) + "\n", encoding="utf-8")
    if read_only:
        os.chmod(out, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return out


def verify_checksums(folder: str | os.PathLike, corrupt: Callable[[str], SpeechtlError] | None = None,
                     **header: Any) -> dict[str, Any]:
    """Check ``folder`` against its ``checksums.json``; return the record.

    ``corrupt(detail)`` builds the error to raise (by default one naming the folder and the
    problem); ``header`` keys must have those values in the record (e.g. a format version).
    """
    folder = Path(folder)
    if corrupt is None:
        def corrupt(detail: str) -> SpeechtlError:
            return SpeechtlError(f"{folder}: the folder was modified, truncated or is incomplete ({detail}); "
                                 "write it again")
    try:
        record = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        entries = record["files"]
        for k, v in header.items():
            if record.get(k) != v:
                raise corrupt(f"{CHECKSUMS} has {k} {record.get(k)!r}, expected {v!r}")
        sizes = {rel: int(e["size"]) for rel, e in entries.items()}
        hashes = {rel: str(e["sha256"]) for rel, e in entries.items()}
    except FileNotFoundError:
        raise corrupt(f"{CHECKSUMS} is missing") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError, UnicodeDecodeError):
        raise corrupt(f"{CHECKSUMS} is unreadable") from None
    present = listed_files(folder)
    if present != sorted(entries):
        added, removed = sorted(set(present) - set(entries)), sorted(set(entries) - set(present))
        raise corrupt(f"files added {added} / removed {removed}")
    state = []
    for rel in present:
        st = (folder / rel).stat()
        if st.st_size != sizes[rel]:
            raise corrupt(f"{rel} is {st.st_size} bytes, expected {sizes[rel]}")
        state.append((rel, st.st_size, st.st_mtime_ns))
    key = str(folder.resolve())
    if _VERIFIED.get(key) != tuple(state):
        for rel in present:
            if sha256_file(folder / rel) != hashes[rel]:
                raise corrupt(f"the sha256 of {rel} changed")
        _VERIFIED[key] = tuple(state)
    return record


def verify_packaged(folder: str | os.PathLike, files: dict[str, str], *, reinstall: str) -> None:
    """Check files that ship inside an installed package against the sha256 of its release.

    ``files`` maps names under ``folder`` to their sha256; ``reinstall`` is the command that puts them
    back. Hashed once per process while a file's size and modification time stay the same.
    """
    folder = Path(folder)
    for rel, expected in files.items():
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            raise SpeechtlError(f"{path}: missing from its package; reinstall it: {reinstall}") from None
        key, state = str(path.resolve()), (("", st.st_size, st.st_mtime_ns),)
        if _VERIFIED.get(key) == state:
            continue
        if sha256_file(path) != expected:
            raise SpeechtlError(f"{path}: modified or truncated (its sha256 is not the released package's); "
                                f"reinstall it: {reinstall}")
        _VERIFIED[key] = state


def forget_verified() -> None:
    """Hash every folder and packaged file again at its next check, as a new process would."""
    _VERIFIED.clear()

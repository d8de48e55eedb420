"""Reading a corpus's own files: the folders and files its layout promises, UTF-8 lines, Kaldi tables.

Every importer raises :class:`CorpusImportError` naming ``file:line`` for a layout it cannot read,
and fills durations from audio headers the same way (:func:`fill_durations`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from ...errors import SpeechtlError
from ..manifest import Utterance


class CorpusImportError(SpeechtlError):
    """A corpus folder that does not have the layout its format expects."""


def require_dir(src: str | os.PathLike, fmt: str) -> Path:
    p = Path(src)
    if not p.is_dir():
        raise CorpusImportError(f"{p}: no such folder; give the {fmt} corpus folder as distributed")
    return p


def require_file(path: Path, fmt: str, what: str) -> Path:
    if not path.is_file():
        raise CorpusImportError(f"{path}: missing; a {fmt} corpus has {what} here (is this the right folder?)")
    return path


def read_lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusImportError(f"{path}: not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line.rstrip("\r")


def read_kaldi_table(path: Path, min_fields: int = 2) -> dict[str, tuple[str, int]]:
    """``key value...`` lines -> ``{key: (rest of line, line number)}``; errors name ``file:line``."""
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) < min_fields:
            raise CorpusImportError(f"{path}:{lineno}: expected '<key> <value>', got {line.strip()!r}")
        key = parts[0]
        if key in out:
            raise CorpusImportError(f"{path}:{lineno}: key {key!r} repeats line {out[key][1]}; keys must be unique")
        out[key] = (parts[1].strip() if len(parts) > 1 else "", lineno)
    return out


def audio_duration(path: str, offset: float | None = None, seg: float | None = None) -> float | None:
    if seg is not None:
        return round(seg, 4)
    try:
        info = sf.info(path)
    except Exception:  # unreadable here (e.g. mp3 without codec support): validate reports it
        return None
    return round(max(0.0, info.duration - (offset or 0.0)), 4)


def parse_gender(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if not v:
        return None
    if v in ("m", "male", "male_masculine", "man"):
        return "m"
    if v in ("f", "female", "female_feminine", "woman"):
        return "f"
    return v


def fill_durations(utts: list[Utterance], durations: bool) -> list[Utterance]:
    if durations:
        for u in utts:
            if u.duration is None:
                u.duration = audio_duration(u.audio, u.offset)
    return utts


def resolve_base(paths: list[str], candidates: list[Path]) -> Path:
    """The first candidate folder under which the first relative path exists (else the first candidate)."""
    rel = next((p for p in paths if not os.path.isabs(p)), None)
    if rel is None:
        return candidates[0]
    for c in candidates:
        if (c / rel).exists():
            return c
    return candidates[0]

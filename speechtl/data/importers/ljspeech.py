"""LJSpeech: one US-English speaker reading non-fiction."""

from __future__ import annotations

import os

from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, read_lines, require_dir, require_file


def import_ljspeech(src: str | os.PathLike, *, normalized: bool = True, durations: bool = True) -> list[Utterance]:
    """LJSpeech 1.1: ``metadata.csv`` (``id|text|normalized text``, no header) + ``wavs/<id>.wav``.

    One US-English speaker (``LJ``, female). ``normalized`` picks the third column, where numbers
    and abbreviations are spelled out as they are spoken.
    """
    root = require_dir(src, "LJSpeech")
    meta = require_file(root / "metadata.csv", "LJSpeech", "metadata.csv")
    utts = []
    for lineno, line in read_lines(meta):
        f = line.split("|")
        if len(f) < 2:
            raise CorpusImportError(f"{meta}:{lineno}: expected 'id|text|normalized text', got {line.strip()!r}")
        text = f[2] if normalized and len(f) > 2 and f[2].strip() else f[1]
        utts.append(Utterance(
            id=f[0], audio=str(root / "wavs" / f"{f[0]}.wav"), text=text.strip(), speaker="LJ", accent="US",
            lang="en", gender="f", corpus="ljspeech",
        ))
    return fill_durations(utts, durations)

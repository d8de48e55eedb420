"""Speech Accent Archive: one paragraph read by speakers of many first languages."""

from __future__ import annotations

import csv
import os

from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, parse_gender, require_dir, require_file

SPEECH_ACCENT_ARCHIVE_TEXT = (
    "Please call Stella. Ask her to bring these things with her from the store: Six spoons of fresh snow peas, "
    "five thick slabs of blue cheese, and maybe a snack for her brother Bob. We also need a small plastic snake "
    "and a big toy frog for the kids. She can scoop these things into three red bags, and we will go meet her "
    "Wednesday at the train station."
)


def import_speech_accent_archive(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """Speech Accent Archive (Kaggle release): ``speakers_all.csv`` + ``recordings/<filename>.mp3``.

    Every speaker reads the same "Please call Stella" paragraph. Accent is ``<Language>-L1`` for
    non-native speakers and ``English-<country>`` for native ones; rows marked ``file_missing?``
    are skipped. Kaggle's doubled ``recordings/recordings/`` folder is found too.
    """
    root = require_dir(src, "Speech Accent Archive")
    csv_path = require_file(root / "speakers_all.csv", "Speech Accent Archive", "speakers_all.csv")
    rec_dir = root / "recordings"
    if (rec_dir / "recordings").is_dir():
        rec_dir = rec_dir / "recordings"
    utts = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for col in ("filename", "native_language", "speakerid"):
            if col not in cols:
                raise CorpusImportError(f"{csv_path}:1: no {col!r} column (columns: {', '.join(c for c in cols if c)})")
        missing_col = next((c for c in cols if c and c.startswith("file_missing")), None)
        for row in reader:
            if missing_col and (row.get(missing_col) or "").strip().lower() == "true":
                continue
            name = (row["filename"] or "").strip()
            if not name:
                continue
            lang = (row["native_language"] or "").strip()
            country = (row.get("country") or "").strip()
            if lang.lower() == "english":
                accent = f"English-{country}" if country else "English"
            else:
                accent = f"{lang.capitalize()}-L1" if lang else "unknown"
            extra = {k: row[k].strip() for k in ("birthplace", "country", "age_onset") if row.get(k)}
            utts.append(Utterance(
                id=f"saa_{name}", audio=str(rec_dir / f"{name}.mp3"), text=SPEECH_ACCENT_ARCHIVE_TEXT,
                speaker=(row["speakerid"] or name).strip(), accent=accent, lang="en",
                gender=parse_gender(row.get("sex")), age=(row.get("age") or "").strip() or None,
                corpus="speech-accent-archive", extra=extra,
            ))
    return fill_durations(utts, durations)

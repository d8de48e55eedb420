"""Hugging Face ``datasets``: a Dataset, a DatasetDict or a folder written by ``save_to_disk``."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import soundfile as sf

from ...fileio import atomic_write
from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, parse_gender

_HF_SPLITS = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev", "test": "test"}


def import_hf(
    src: Any,
    *,
    audio_dir: str | os.PathLike | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = "speaker",
    accent_column: str | None = "accent",
    id_column: str | None = None,
    gender_column: str | None = "gender",
    accent: str | None = None,
    corpus: str | None = "hf",
    durations: bool = True,
) -> list[Utterance]:
    """A Hugging Face ``datasets`` Dataset/DatasetDict, or a folder written by ``save_to_disk``.

    The audio column is read with ``Audio(decode=False)`` (no torchcodec needed): embedded bytes
    are decoded with soundfile and written to ``audio_dir/<id>.flac``; bare paths that exist are
    referenced where they are. ``speaker_column``/``accent_column`` may be None (speaker
    ``unknown``; accent from ``accent``). Splits of a DatasetDict become ``train``/``dev``/
    ``test`` where the name says so.
    """
    import datasets

    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise CorpusImportError(f"{p}: no such folder; give a folder written by Dataset.save_to_disk")
        try:
            src = datasets.load_from_disk(str(p))
        except Exception as e:  # datasets raises FileNotFoundError / ValueError with long texts
            raise CorpusImportError(f"{p}: not a saved Hugging Face dataset ({str(e).splitlines()[0][:160]})") from None
    parts = list(src.items()) if isinstance(src, datasets.DatasetDict) else [(None, src)]
    utts: list[Utterance] = []
    seen: set[str] = set()
    for split_name, ds in parts:
        cols = ds.column_names
        where = f"dataset split {split_name!r}" if split_name else "dataset"
        for col, opt in ((audio_column, "--audio-column"), (text_column, "--text-column"),
                         (speaker_column, "--speaker-column"), (accent_column, "--accent-column"),
                         (id_column, "--id-column")):
            if col is not None and col not in cols:
                raise CorpusImportError(f"{where}: no column {col!r} (columns: {', '.join(cols)}); set {opt}")
        if accent_column is None and accent is None:
            raise CorpusImportError(f"{where}: no accent column chosen; set --accent-column or a fixed --accent")
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
        split = _HF_SPLITS.get(split_name or "", None)
        for i, row in enumerate(ds):
            uid = str(row[id_column]) if id_column else f"{split_name or 'row'}-{i:06d}"
            if uid in seen:
                raise CorpusImportError(f"{where}, row {i}: id {uid!r} repeats; choose a unique --id-column")
            seen.add(uid)
            audio = _hf_audio(row[audio_column], uid, audio_dir, f"{where}, row {i}")
            utts.append(Utterance(
                id=uid, audio=audio, text=str(row[text_column]).strip(),
                speaker=str(row[speaker_column]) if speaker_column else "unknown",
                accent=str(row[accent_column]) if accent_column else str(accent),
                split=split, gender=parse_gender(row.get(gender_column)) if gender_column in cols else None,
                corpus=corpus, extra={"subset": split_name} if split_name and split is None else {},
            ))
    return fill_durations(utts, durations)


def _file_stem(uid: str) -> str:
    """A file name for ``uid``: the id itself when it is a safe name, else its safe characters and a hash of it
    (so ids such as ``a/b`` and ``a_b`` never share a file)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uid).lstrip(".") or "_"
    return safe if safe == uid else f"{safe}-{hashlib.sha256(uid.encode()).hexdigest()[:10]}"


def _hf_audio(value: Any, uid: str, audio_dir: str | os.PathLike | None, where: str) -> str:
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if data:
        if audio_dir is None:
            raise CorpusImportError(f"{where}: audio is embedded bytes; give an output folder (--out) to write them")
        try:
            wav, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as e:
            raise CorpusImportError(
                f"{where}: embedded audio cannot be decoded by soundfile ({str(e)[:120]})"
            ) from None
        out = Path(audio_dir) / f"{_file_stem(uid)}.flac"
        atomic_write(out, lambda f: sf.write(f, wav, rate, format="FLAC", subtype="PCM_16"), what="the audio",
                     then="import again")
        return str(out.resolve())
    if path and Path(path).is_file():
        return str(Path(path).resolve())
    raise CorpusImportError(f"{where}: audio has neither bytes nor an existing file path ({path!r})")

"""Mozilla Common Voice: crowd-sourced read speech with self-reported accents."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, parse_gender, require_dir, require_file


def import_commonvoice(src: str | os.PathLike, *, tsv: str = "validated", durations: bool = True) -> list[Utterance]:
    """Mozilla Common Voice: ``<tsv>.tsv`` + ``clips/*.mp3``.

    ``tsv`` is ``validated`` (default), ``train``, ``dev``, ``test``, ``other``..., or ``splits``
    for train+dev+test with ``split`` set. The accent column is ``accents`` (newer releases;
    several answers are joined by ``|``, the first is used and all are kept as ``accents``) or
    ``accent``; empty means ``unknown``. Clips are recorded even when this machine cannot decode
    mp3 (their duration is then None; ``validate`` reports them).
    """
    root = require_dir(src, "Common Voice")
    names = ["train", "dev", "test"] if tsv == "splits" else [tsv]
    utts = []
    seen: set[str] = set()
    for name in names:
        path = require_file(root / f"{name}.tsv", "Common Voice", f"{name}.tsv")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            cols = reader.fieldnames or []
            for col in ("client_id", "path", "sentence"):
                if col not in cols:
                    raise CorpusImportError(f"{path}:1: no {col!r} column (columns: {', '.join(cols)})")
            acc_col = "accents" if "accents" in cols else "accent" if "accent" in cols else None
            for lineno, row in enumerate(reader, start=2):
                clip = row["path"] or ""
                uid = Path(clip).stem
                if not clip or uid in seen:
                    continue
                seen.add(uid)
                raw_acc = (row.get(acc_col) or "").strip() if acc_col else ""
                accents = [a.strip() for a in re.split(r"\|", raw_acc) if a.strip()]
                extra: dict[str, Any] = {}
                if len(accents) > 1:
                    extra["accents"] = accents
                if row.get("locale"):
                    extra["locale"] = row["locale"]
                utts.append(Utterance(
                    id=uid, audio=str(root / "clips" / clip), text=(row["sentence"] or "").strip(),
                    speaker=row["client_id"], accent=accents[0] if accents else "unknown",
                    split=name if tsv == "splits" else (name if name in ("train", "dev", "test") else None),
                    lang=row.get("locale") or "en", gender=parse_gender(row.get("gender")), age=row.get("age") or None,
                    corpus="commonvoice", extra=extra,
                ))
    return fill_durations(utts, durations)

"""Corpora in Kaldi's data-folder layout: plain Kaldi, speechocean762 and EdAcc."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..manifest import Utterance
from .files import (
    CorpusImportError,
    fill_durations,
    parse_gender,
    read_kaldi_table,
    read_lines,
    require_dir,
    require_file,
    resolve_base,
)


def import_kaldi(
    src: str | os.PathLike,
    *,
    accent: str | None = "unknown",
    corpus: str | None = None,
    audio_root: str | os.PathLike | None = None,
    lang: str | None = "en",
    split: str | None = None,
    durations: bool = True,
) -> list[Utterance]:
    """A Kaldi data folder: ``wav.scp``, ``text``, ``utt2spk`` (+ ``segments``, ``spk2gender``, ``spk2age``).

    ``wav.scp`` entries must be file paths; piped commands (``sox ... |``) and ark offsets are
    errors naming the line. Relative paths are resolved against ``audio_root``, else the first of
    the data folder, its parent and grandparent under which they exist (corpora differ). Accent
    comes from ``spk2accent``/``utt2accent`` when present, else ``accent`` (None: ``unknown``).
    """
    d = require_dir(src, "Kaldi")
    scp_path = require_file(d / "wav.scp", "Kaldi", "wav.scp")
    text = read_kaldi_table(require_file(d / "text", "Kaldi", "text"), min_fields=1)
    utt2spk = read_kaldi_table(require_file(d / "utt2spk", "Kaldi", "utt2spk"))
    scp = read_kaldi_table(scp_path)
    for rec, (value, lineno) in scp.items():
        if value.endswith("|") or value.startswith("|"):
            raise CorpusImportError(
                f"{scp_path}:{lineno}: {rec!r} is a piped command ({value!r}); convert the audio to files "
                "(e.g. run the command once per line into .wav/.flac) and list their paths"
            )
        if re.search(r"\.ark:\d+$", value):
            raise CorpusImportError(f"{scp_path}:{lineno}: {rec!r} points into a Kaldi archive ({value!r}); "
                               "extract the audio to files first")
    if audio_root is not None:
        base = Path(audio_root)
    else:
        base = resolve_base([v for v, _ in scp.values()], [d, d.parent, d.parent.parent])
    recordings = {rec: os.path.normpath(v if os.path.isabs(v) else base / v) for rec, (v, _) in scp.items()}

    segments: dict[str, tuple[str, float, float | None]] | None = None
    if (d / "segments").is_file():
        segments = {}
        for utt, (value, lineno) in read_kaldi_table(d / "segments").items():
            f = value.split()
            try:
                rec, start, end = f[0], float(f[1]), float(f[2])
            except (IndexError, ValueError):
                raise CorpusImportError(
                    f"{d / 'segments'}:{lineno}: expected '<utt> <recording> <start> <end>'"
                ) from None
            if rec not in recordings:
                raise CorpusImportError(f"{d / 'segments'}:{lineno}: recording {rec!r} is not in wav.scp")
            segments[utt] = (rec, start, None if end < 0 else end - start)

    def optional(name: str) -> dict[str, str]:
        p = d / name
        return {k: v for k, (v, _) in read_kaldi_table(p).items()} if p.is_file() else {}

    spk2gender, spk2age = optional("spk2gender"), optional("spk2age")
    spk2accent, utt2accent = optional("spk2accent"), optional("utt2accent")
    utts = []
    for utt, (words, lineno) in text.items():
        if utt not in utt2spk:
            raise CorpusImportError(f"{d / 'text'}:{lineno}: utterance {utt!r} has no speaker in utt2spk")
        spk = utt2spk[utt][0]
        offset = seg = None
        if segments is not None and utt in segments:
            rec, offset, seg = segments[utt]
            audio = recordings[rec]
        elif utt in recordings:
            audio = recordings[utt]
        else:
            raise CorpusImportError(f"{d / 'text'}:{lineno}: utterance {utt!r} has no audio in wav.scp"
                               + (" or segments" if segments is not None else ""))
        utts.append(Utterance(
            id=utt, audio=audio, text=words, speaker=spk,
            accent=utt2accent.get(utt) or spk2accent.get(spk) or accent or "unknown",
            duration=None if seg is None else round(seg, 4), split=split, lang=lang,
            gender=parse_gender(spk2gender.get(spk)), age=spk2age.get(spk), corpus=corpus, offset=offset,
        ))
    return fill_durations(utts, durations)


def import_speechocean762(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """speechocean762: Mandarin-L1 speakers reading English, Kaldi layout.

    ``src`` is the corpus root (with ``train/`` and/or ``test/``; both are imported, ``split``
    set from the folder) or one of those data folders. Age becomes ``child`` (under 18) or
    ``adult``; the years are kept as ``age_years``.
    """
    d = require_dir(src, "speechocean762")
    if (d / "wav.scp").is_file():
        parts = [(d, d.name if d.name in ("train", "test") else None)]
    else:
        parts = [(d / s, s) for s in ("train", "test") if (d / s / "wav.scp").is_file()]
        if not parts:
            raise CorpusImportError(f"{d}: neither a Kaldi data folder (wav.scp) nor a speechocean762 root with "
                               "train/ or test/; give the corpus folder")
    utts = []
    for folder, split in parts:
        for u in import_kaldi(folder, accent="Mandarin-L1", corpus="speechocean762", split=split,
                              durations=durations):
            if u.age is not None:
                try:
                    years = float(u.age)
                except ValueError:
                    raise CorpusImportError(f"{folder / 'spk2age'}: age {u.age!r} of speaker {u.speaker!r} is not a "
                                       "number") from None
                u.extra["age_years"] = int(years) if years.is_integer() else years
                u.age = "child" if years < 18 else "adult"
            utts.append(u)
    return utts


def import_edacc(src: str | os.PathLike, *, subsets: Iterable[str] = ("dev", "test"), keep_tags: bool = False,
                 durations: bool = True) -> list[Utterance]:
    """EdAcc v1.0 (Edinburgh International Accents of English Corpus).

    Layout (``edacc_v1.0/``): ``data/<conversation>.wav``; ``dev/`` and ``test/`` each with
    ``text``, ``segments`` (``<utt> <conversation> <start> <end>``), ``utt2spk`` and ``stm``
    (its ``<gender,l1>`` field gives the speaker's gender); ``linguistic_background.csv`` with one
    row per ``PARTICIPANT_ID``. Accent is the speaker's first language as ``<L1>-L1`` (column
    whose header mentions "first language", else the 13th column as in the v1.0 release); the
    self-described accent is kept as ``accent_described``. Non-speech tags (``<laugh>``...) are
    removed unless ``keep_tags``; turns left empty are skipped.
    """
    root = require_dir(src, "EdAcc")
    background = _edacc_background(require_file(root / "linguistic_background.csv", "EdAcc",
                                                 "linguistic_background.csv"))
    utts = []
    for subset in subsets:
        sd = require_dir(root / subset, "EdAcc")
        seg_path = sd / "segments" if (sd / "segments").is_file() else sd / "segment"
        text = read_kaldi_table(require_file(sd / "text", "EdAcc", f"{subset}/text"), min_fields=1)
        utt2spk = read_kaldi_table(require_file(sd / "utt2spk", "EdAcc", f"{subset}/utt2spk"))
        segs = read_kaldi_table(require_file(seg_path, "EdAcc", f"{subset}/segments"))
        genders = _edacc_stm_genders(sd / "stm") if (sd / "stm").is_file() else {}
        for utt, (words, lineno) in text.items():
            if utt not in segs:
                raise CorpusImportError(f"{sd / 'text'}:{lineno}: turn {utt!r} has no line in {seg_path.name}")
            f = segs[utt][0].split()
            try:
                conv, start, end = f[0], float(f[1]), float(f[2])
            except (IndexError, ValueError):
                raise CorpusImportError(
                    f"{seg_path}:{segs[utt][1]}: expected '<utt> <conversation> <start> <end>'"
                ) from None
            spk = utt2spk.get(utt, (None, 0))[0]
            if spk is None:
                raise CorpusImportError(f"{sd / 'text'}:{lineno}: turn {utt!r} has no speaker in utt2spk")
            if not keep_tags:
                words = " ".join(w for w in words.split() if not (w.startswith("<") and w.endswith(">")))
            if not words.strip():
                continue
            bg = background.get(spk, {})
            l1 = bg.get("l1")
            extra: dict[str, Any] = {"conversation": conv}
            if bg.get("accent"):
                extra["accent_described"] = bg["accent"]
            utts.append(Utterance(
                id=utt, audio=str(root / "data" / f"{conv}.wav"), text=words, speaker=spk,
                accent=f"{l1}-L1" if l1 else "unknown", duration=round(end - start, 4),
                split="dev" if subset == "dev" else "test" if subset == "test" else None, lang="en",
                gender=genders.get(spk), corpus="edacc", offset=start, extra=extra,
            ))
    return utts


def _edacc_background(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise CorpusImportError(f"{path}: empty; expected a header with PARTICIPANT_ID")
    header = [h.strip() for h in rows[0]]
    try:
        pid = next(i for i, h in enumerate(header) if h.upper().replace(" ", "_") == "PARTICIPANT_ID")
    except StopIteration:
        raise CorpusImportError(f"{path}:1: no PARTICIPANT_ID column (columns: {', '.join(header[:6])}...)") from None
    l1 = next((i for i, h in enumerate(header) if "first language" in h.lower() or h.strip().upper() == "L1"),
              12 if len(header) > 12 else None)
    acc = next((i for i, h in enumerate(header) if "describe your accent" in h.lower()), None)
    out = {}
    for row in rows[1:]:
        if len(row) <= pid or not row[pid].strip():
            continue
        rec = {}
        if l1 is not None and len(row) > l1 and row[l1].strip():
            rec["l1"] = row[l1].strip()
        if acc is not None and len(row) > acc and row[acc].strip():
            rec["accent"] = row[acc].strip()
        out[row[pid].strip()] = rec
    return out


def _edacc_stm_genders(path: Path) -> dict[str, str]:
    out = {}
    for _, line in read_lines(path):
        if line.startswith(";;"):
            continue
        f = line.split()
        m = re.match(r"<\s*([^,>]*)", f[5]) if len(f) > 5 else None
        if m and (g := parse_gender(m.group(1))) in ("m", "f"):
            out[f[2]] = g
    return out

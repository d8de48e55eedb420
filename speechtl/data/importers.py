"""Importers: read a speech corpus in its own on-disk layout and return manifest utterances.

One function per format (``import_kaldi``, ``import_vctk``, ...), each taking the corpus folder
as distributed and returning :class:`Utterance` objects with absolute audio paths; audio is
never copied (except for ``hf``, whose audio lives inside the dataset). :func:`import_corpus`
dispatches by name and optionally writes the manifest. Durations are read from audio headers
when ``durations=True``; a file that cannot be read gets ``duration=None`` and is left for
``speechtl-corpus validate`` to report.

Accent labels: native varieties are named as the corpus names them (VCTK's ``English``,
``Scottish``...; ``US`` for LJSpeech and CMU ARCTIC's American speakers); non-native speakers
are labelled by first language, ``<L1>-L1`` (``Mandarin-L1``, ``Hindi-L1``...), across corpora.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import soundfile as sf

from ..errors import SpeechtlError
from .manifest import Utterance, write_manifest


class CorpusImportError(SpeechtlError):
    """A corpus folder that does not have the layout its format expects."""

# ---------------------------------------------------------------------------------------------
# Known speaker tables
# ---------------------------------------------------------------------------------------------

# L2-ARCTIC v5: 24 speakers, four per first language, two women and two men each.
L2ARCTIC_SPEAKERS: dict[str, tuple[str, str]] = {
    "ABA": ("Arabic", "m"), "SKA": ("Arabic", "f"), "YBAA": ("Arabic", "m"), "ZHAA": ("Arabic", "f"),
    "BWC": ("Mandarin", "m"), "LXC": ("Mandarin", "f"), "NCC": ("Mandarin", "f"), "TXHC": ("Mandarin", "m"),
    "ASI": ("Hindi", "m"), "RRBI": ("Hindi", "m"), "SVBI": ("Hindi", "f"), "TNI": ("Hindi", "f"),
    "HJK": ("Korean", "f"), "HKK": ("Korean", "m"), "YDCK": ("Korean", "f"), "YKWK": ("Korean", "m"),
    "EBVS": ("Spanish", "m"), "ERMS": ("Spanish", "m"), "MBMPS": ("Spanish", "f"), "NJS": ("Spanish", "f"),
    "HQTV": ("Vietnamese", "m"), "PNV": ("Vietnamese", "f"), "THV": ("Vietnamese", "f"), "TLV": ("Vietnamese", "m"),
}

# CMU ARCTIC speakers (festvox.org/cmu_arctic): accent and gender. rxr is left out: its accent is
# not documented; pass speaker_accents={"rxr": ...} to import it.
CMU_ARCTIC_SPEAKERS: dict[str, tuple[str, str]] = {
    "aew": ("US", "m"), "ahw": ("German-L1", "m"), "aup": ("Indian", "m"), "awb": ("Scottish", "m"),
    "axb": ("Indian", "f"), "bdl": ("US", "m"), "clb": ("US", "f"), "eey": ("US", "f"), "fem": ("US", "m"),
    "gka": ("Indian", "m"), "jmk": ("Canadian", "m"), "ksp": ("Indian", "m"), "ljm": ("US", "f"),
    "lnh": ("US", "f"), "rms": ("US", "m"), "slp": ("Indian", "f"), "slt": ("US", "f"),
}

SPEECH_ACCENT_ARCHIVE_TEXT = (
    "Please call Stella. Ask her to bring these things with her from the store: Six spoons of fresh snow peas, "
    "five thick slabs of blue cheese, and maybe a snack for her brother Bob. We also need a small plastic snake "
    "and a big toy frog for the kids. She can scoop these things into three red bags, and we will go meet her "
    "Wednesday at the train station."
)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _require_dir(src: str | os.PathLike, fmt: str) -> Path:
    p = Path(src)
    if not p.is_dir():
        raise CorpusImportError(f"{p}: no such folder; give the {fmt} corpus folder as distributed")
    return p


def _require_file(path: Path, fmt: str, what: str) -> Path:
    if not path.is_file():
        raise CorpusImportError(f"{path}: missing; a {fmt} corpus has {what} here (is this the right folder?)")
    return path


def _read_lines(path: Path) -> Iterable[tuple[int, str]]:
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
    for lineno, line in _read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) < min_fields:
            raise CorpusImportError(f"{path}:{lineno}: expected '<key> <value>', got {line.strip()!r}")
        key = parts[0]
        if key in out:
            raise CorpusImportError(f"{path}:{lineno}: key {key!r} repeats line {out[key][1]}; keys must be unique")
        out[key] = (parts[1].strip() if len(parts) > 1 else "", lineno)
    return out


def _duration(path: str, offset: float | None = None, seg: float | None = None) -> float | None:
    if seg is not None:
        return round(seg, 4)
    try:
        info = sf.info(path)
    except Exception:  # unreadable here (e.g. mp3 without codec support): validate reports it
        return None
    return round(max(0.0, info.duration - (offset or 0.0)), 4)


def _gender(value: str | None) -> str | None:
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


def _fill_durations(utts: list[Utterance], durations: bool) -> list[Utterance]:
    if durations:
        for u in utts:
            if u.duration is None:
                u.duration = _duration(u.audio, u.offset)
    return utts


def _resolve_base(paths: list[str], candidates: list[Path]) -> Path:
    """The first candidate folder under which the first relative path exists (else the first candidate)."""
    rel = next((p for p in paths if not os.path.isabs(p)), None)
    if rel is None:
        return candidates[0]
    for c in candidates:
        if (c / rel).exists():
            return c
    return candidates[0]


# ---------------------------------------------------------------------------------------------
# Kaldi family
# ---------------------------------------------------------------------------------------------


def import_kaldi(
    src: str | os.PathLike,
    *,
    accent: str = "unknown",
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
    comes from ``spk2accent``/``utt2accent`` when present, else ``accent``.
    """
    d = _require_dir(src, "Kaldi")
    scp_path = _require_file(d / "wav.scp", "Kaldi", "wav.scp")
    text = read_kaldi_table(_require_file(d / "text", "Kaldi", "text"), min_fields=1)
    utt2spk = read_kaldi_table(_require_file(d / "utt2spk", "Kaldi", "utt2spk"))
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
        base = _resolve_base([v for v, _ in scp.values()], [d, d.parent, d.parent.parent])
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
            accent=utt2accent.get(utt) or spk2accent.get(spk) or accent,
            duration=None if seg is None else round(seg, 4), split=split, lang=lang,
            gender=_gender(spk2gender.get(spk)), age=spk2age.get(spk), corpus=corpus, offset=offset,
        ))
    return _fill_durations(utts, durations)


def import_speechocean762(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """speechocean762: Mandarin-L1 speakers reading English, Kaldi layout.

    ``src`` is the corpus root (with ``train/`` and/or ``test/``; both are imported, ``split``
    set from the folder) or one of those data folders. Age becomes ``child`` (under 18) or
    ``adult``; the years are kept as ``age_years``.
    """
    d = _require_dir(src, "speechocean762")
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
    root = _require_dir(src, "EdAcc")
    background = _edacc_background(_require_file(root / "linguistic_background.csv", "EdAcc",
                                                 "linguistic_background.csv"))
    utts = []
    for subset in subsets:
        sd = _require_dir(root / subset, "EdAcc")
        seg_path = sd / "segments" if (sd / "segments").is_file() else sd / "segment"
        text = read_kaldi_table(_require_file(sd / "text", "EdAcc", f"{subset}/text"), min_fields=1)
        utt2spk = read_kaldi_table(_require_file(sd / "utt2spk", "EdAcc", f"{subset}/utt2spk"))
        segs = read_kaldi_table(_require_file(seg_path, "EdAcc", f"{subset}/segments"))
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
    for _, line in _read_lines(path):
        if line.startswith(";;"):
            continue
        f = line.split()
        m = re.match(r"<\s*([^,>]*)", f[5]) if len(f) > 5 else None
        if m and (g := _gender(m.group(1))) in ("m", "f"):
            out[f[2]] = g
    return out


# ---------------------------------------------------------------------------------------------
# Read-speech corpora with their own layouts
# ---------------------------------------------------------------------------------------------


def import_vctk(src: str | os.PathLike, *, mic: str = "mic1", durations: bool = True) -> list[Utterance]:
    """CSTR VCTK: ``speaker-info.txt`` + ``txt/<spk>/<spk>_<nnn>.txt`` + audio.

    Audio from ``wav48_silence_trimmed/<spk>/<spk>_<nnn>_<mic>.flac`` (release 0.92) or
    ``wav48/<spk>/<spk>_<nnn>.wav`` (older releases). Accent is the ACCENTS column; REGION is
    kept as ``region``. Recordings without a transcript (speaker p315, a few others) are skipped.
    """
    root = _require_dir(src, "VCTK")
    info = _require_file(root / "speaker-info.txt", "VCTK", "speaker-info.txt")
    speakers: dict[str, dict[str, str]] = {}
    for lineno, line in _read_lines(info):
        f = line.split()
        if lineno == 1 and f and f[0].upper() == "ID":
            continue
        if len(f) < 4:
            raise CorpusImportError(f"{info}:{lineno}: expected 'ID AGE GENDER ACCENTS [REGION]', got {line.strip()!r}")
        spk = f[0] if not f[0].isdigit() else f"p{f[0]}"  # releases before 0.92 drop the "p"
        speakers[spk] = {"age": f[1], "gender": f[2], "accent": f[3], "region": " ".join(f[4:])}
    if (root / "wav48_silence_trimmed").is_dir():
        audio_dir, pattern = root / "wav48_silence_trimmed", "{spk}/{stem}_" + mic + ".flac"
    elif (root / "wav48").is_dir():
        audio_dir, pattern = root / "wav48", "{spk}/{stem}.wav"
    else:
        raise CorpusImportError(f"{root}: no wav48_silence_trimmed/ or wav48/ folder; give the VCTK corpus folder")
    txt_dir = _require_dir(root / "txt", "VCTK")
    utts = []
    for spk in sorted(speakers):
        for txt in sorted((txt_dir / spk).glob("*.txt")):
            audio = audio_dir / pattern.format(spk=spk, stem=txt.stem)
            if not audio.is_file():
                continue
            s = speakers[spk]
            extra = {"region": s["region"]} if s["region"] else {}
            utts.append(Utterance(
                id=f"vctk_{txt.stem}", audio=str(audio), text=txt.read_text(encoding="utf-8").strip(), speaker=spk,
                accent=s["accent"], lang="en", gender=_gender(s["gender"]), age=s["age"], corpus="vctk", extra=extra,
            ))
    return _fill_durations(utts, durations)


def import_l2arctic(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """L2-ARCTIC: ``<SPK>/wav/arctic_*.wav`` + ``<SPK>/transcript/arctic_*.txt`` for its 24 speakers.

    Accent is the speaker's first language (``Hindi-L1``...) from :data:`L2ARCTIC_SPEAKERS`;
    folders that are not speakers (``suitcase_corpus``) are skipped.
    """
    root = _require_dir(src, "L2-ARCTIC")
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.upper() in L2ARCTIC_SPEAKERS]
    if not found:
        raise CorpusImportError(
            f"{root}: no L2-ARCTIC speaker folders (ABA, BWC, ...); give the folder that holds them"
        )
    utts = []
    for spk_dir in found:
        spk = spk_dir.name.upper()
        l1, gender = L2ARCTIC_SPEAKERS[spk]
        for wav in sorted((spk_dir / "wav").glob("*.wav")):
            txt = spk_dir / "transcript" / f"{wav.stem}.txt"
            if not txt.is_file():
                continue
            utts.append(Utterance(
                id=f"{spk}_{wav.stem}", audio=str(wav), text=" ".join(txt.read_text(encoding="utf-8").split()),
                speaker=spk, accent=f"{l1}-L1", lang="en", gender=gender, corpus="l2arctic",
            ))
    return _fill_durations(utts, durations)


_ARCTIC_LINE = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def import_cmu_arctic(src: str | os.PathLike, *, speaker_accents: dict[str, str] | None = None,
                      durations: bool = True) -> list[Utterance]:
    """CMU ARCTIC: ``cmu_us_<spk>_arctic/wav/*.wav`` + ``etc/txt.done.data``.

    ``src`` is a folder of speaker folders or one speaker folder. Accents come from
    :data:`CMU_ARCTIC_SPEAKERS` (override or extend with ``speaker_accents``); a speaker with no
    known accent gets ``unknown`` and a warning.
    """
    root = _require_dir(src, "CMU ARCTIC")
    pat = re.compile(r"cmu_us_(\w+?)_arctic")
    dirs = [root] if pat.fullmatch(root.name) else sorted(p for p in root.iterdir() if pat.fullmatch(p.name))
    if not dirs:
        raise CorpusImportError(f"{root}: no cmu_us_<speaker>_arctic folders; give the folder that holds them")
    table = {k: v[0] for k, v in CMU_ARCTIC_SPEAKERS.items()} | (speaker_accents or {})
    utts = []
    for sd in dirs:
        spk = pat.fullmatch(sd.name).group(1)
        done = _require_file(sd / "etc" / "txt.done.data", "CMU ARCTIC", "etc/txt.done.data")
        if spk not in table:
            warnings.warn(f"CMU ARCTIC speaker {spk!r} has no known accent; labelled 'unknown' "
                          "(pass speaker_accents to set it)", stacklevel=2)
        for lineno, line in _read_lines(done):
            m = _ARCTIC_LINE.match(line.strip())
            if m is None:
                raise CorpusImportError(f'{done}:{lineno}: expected ( <utt> "<text>" ), got {line.strip()!r}')
            uid, text = m.groups()
            wav = sd / "wav" / f"{uid}.wav"
            if not wav.is_file():
                continue
            utts.append(Utterance(
                id=f"{spk}_{uid}", audio=str(wav), text=text.replace('\\"', '"'), speaker=spk,
                accent=table.get(spk, "unknown"), lang="en", gender=CMU_ARCTIC_SPEAKERS.get(spk, (None, None))[1],
                corpus="cmu_arctic",
            ))
    return _fill_durations(utts, durations)


def import_ljspeech(src: str | os.PathLike, *, normalized: bool = True, durations: bool = True) -> list[Utterance]:
    """LJSpeech 1.1: ``metadata.csv`` (``id|text|normalized text``, no header) + ``wavs/<id>.wav``.

    One US-English speaker (``LJ``, female). ``normalized`` picks the third column, where numbers
    and abbreviations are spelled out as they are spoken.
    """
    root = _require_dir(src, "LJSpeech")
    meta = _require_file(root / "metadata.csv", "LJSpeech", "metadata.csv")
    utts = []
    for lineno, line in _read_lines(meta):
        f = line.split("|")
        if len(f) < 2:
            raise CorpusImportError(f"{meta}:{lineno}: expected 'id|text|normalized text', got {line.strip()!r}")
        text = f[2] if normalized and len(f) > 2 and f[2].strip() else f[1]
        utts.append(Utterance(
            id=f[0], audio=str(root / "wavs" / f"{f[0]}.wav"), text=text.strip(), speaker="LJ", accent="US",
            lang="en", gender="f", corpus="ljspeech",
        ))
    return _fill_durations(utts, durations)


def import_commonvoice(src: str | os.PathLike, *, tsv: str = "validated", durations: bool = True) -> list[Utterance]:
    """Mozilla Common Voice: ``<tsv>.tsv`` + ``clips/*.mp3``.

    ``tsv`` is ``validated`` (default), ``train``, ``dev``, ``test``, ``other``..., or ``splits``
    for train+dev+test with ``split`` set. The accent column is ``accents`` (newer releases;
    several answers are joined by ``|``, the first is used and all are kept as ``accents``) or
    ``accent``; empty means ``unknown``. Clips are recorded even when this machine cannot decode
    mp3 (their duration is then None; ``validate`` reports them).
    """
    root = _require_dir(src, "Common Voice")
    names = ["train", "dev", "test"] if tsv == "splits" else [tsv]
    utts = []
    seen: set[str] = set()
    for name in names:
        path = _require_file(root / f"{name}.tsv", "Common Voice", f"{name}.tsv")
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
                    lang=row.get("locale") or "en", gender=_gender(row.get("gender")), age=row.get("age") or None,
                    corpus="commonvoice", extra=extra,
                ))
    return _fill_durations(utts, durations)


def import_speech_accent_archive(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """Speech Accent Archive (Kaggle release): ``speakers_all.csv`` + ``recordings/<filename>.mp3``.

    Every speaker reads the same "Please call Stella" paragraph. Accent is ``<Language>-L1`` for
    non-native speakers and ``English-<country>`` for native ones; rows marked ``file_missing?``
    are skipped. Kaggle's doubled ``recordings/recordings/`` folder is found too.
    """
    root = _require_dir(src, "Speech Accent Archive")
    csv_path = _require_file(root / "speakers_all.csv", "Speech Accent Archive", "speakers_all.csv")
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
                gender=_gender(row.get("sex")), age=(row.get("age") or "").strip() or None,
                corpus="speech-accent-archive", extra=extra,
            ))
    return _fill_durations(utts, durations)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------

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
                split=split, gender=_gender(row.get(gender_column)) if gender_column in cols else None,
                corpus=corpus, extra={"subset": split_name} if split_name and split is None else {},
            ))
    return _fill_durations(utts, durations)


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
        out = Path(audio_dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', uid)}.flac"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.flac")
        sf.write(str(tmp), wav, rate, format="FLAC", subtype="PCM_16")
        os.replace(tmp, out)
        return str(out.resolve())
    if path and Path(path).is_file():
        return str(Path(path).resolve())
    raise CorpusImportError(f"{where}: audio has neither bytes nor an existing file path ({path!r})")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "kaldi": import_kaldi,
    "speechocean762": import_speechocean762,
    "vctk": import_vctk,
    "l2arctic": import_l2arctic,
    "commonvoice": import_commonvoice,
    "cmu-arctic": import_cmu_arctic,
    "edacc": import_edacc,
    "ljspeech": import_ljspeech,
    "speech-accent-archive": import_speech_accent_archive,
    "hf": import_hf,
}


def list_importers() -> list[str]:
    return sorted(IMPORTERS)


def import_corpus(fmt: str, src: Any, out: str | os.PathLike | None = None, **kwargs: Any) -> list[Utterance]:
    """Import ``src`` with the ``fmt`` importer; writes the manifest to ``out`` when given.

    For ``hf`` the embedded audio goes to ``<out folder>/audio`` unless ``audio_dir`` is given.
    """
    if fmt not in IMPORTERS:
        raise CorpusImportError(f"unknown corpus format {fmt!r}; choose from {', '.join(list_importers())}")
    if fmt == "hf" and out is not None:
        kwargs.setdefault("audio_dir", Path(out).resolve().parent / "audio")
    utts = IMPORTERS[fmt](src, **kwargs)
    if not utts:
        raise CorpusImportError(f"{src}: no utterances found for format {fmt!r}; check the folder and format")
    if out is not None:
        write_manifest(utts, out)
    return utts

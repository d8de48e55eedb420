"""Manifests: one JSON object per line describing an utterance (JSONL).

A line holds at least ``id``, ``audio``, ``text``, ``speaker`` and ``accent``; ``duration``,
``split``, ``lang``, ``gender``, ``age``, ``corpus`` and ``offset`` are optional, and any other
key is kept in :attr:`Utterance.extra` and written back unchanged. ``audio`` paths that are
relative resolve against the manifest's folder, so a corpus folder with its manifest can be
moved as a whole.

Example line::

    {"id": "p225_001", "audio": "wav/p225_001.flac", "text": "Please call Stella.",
     "speaker": "p225", "accent": "English", "duration": 2.1, "split": "train"}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpeechtlError
from ..fileio import atomic_write_text

SPLITS = ("train", "dev", "test", "test_heldout")
REQUIRED = ("id", "audio", "text", "speaker", "accent")
# Optional known keys and the JSON types they accept (bool is excluded from numbers below).
_OPTIONAL_STR = ("split", "lang", "gender", "age", "corpus")
_OPTIONAL_NUM = ("duration", "offset")
_FIELD_ORDER = REQUIRED + ("duration", "offset", "split", "lang", "gender", "age", "corpus")


class ManifestError(SpeechtlError):
    """A manifest that is missing, not JSONL, or has a line with a bad or missing field."""


@dataclass
class Utterance:
    """One utterance of a manifest.

    ``audio`` is an absolute path once read; ``offset``/``duration`` (seconds) select a segment
    of a longer file (``offset`` None means the file starts the utterance).
    """

    id: str
    audio: str
    text: str
    speaker: str
    accent: str
    duration: float | None = None
    split: str | None = None  # "train" | "dev" | "test" | "test_heldout" (held-out accent) or None
    lang: str | None = None
    gender: str | None = None
    age: str | None = None
    corpus: str | None = None
    offset: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, base: str | os.PathLike | None = None) -> dict[str, Any]:
        """The manifest line as a dict; ``audio`` is made relative when it lies under ``base``."""
        out: dict[str, Any] = {}
        for key in _FIELD_ORDER:
            value = getattr(self, key)
            if value is None and key not in REQUIRED:
                continue
            out[key] = value
        if base is not None:
            out["audio"] = _relative_if_under(self.audio, base)
        for key, value in self.extra.items():
            if key not in out:
                out[key] = value
        return out


def parse_manifest(path: str | os.PathLike) -> tuple[list[Utterance], list[str]]:
    """Read every line of ``path``, collecting problems instead of stopping at the first.

    Returns ``(utterances, problems)``; each problem is a ``"file:line: ..."`` sentence. Lines
    with problems are left out of ``utterances``. Blank lines are allowed and skipped.
    """
    numbered, problems = _parse_numbered(path)
    return [u for _, u in numbered], problems


def _parse_numbered(path: str | os.PathLike) -> tuple[list[tuple[int, Utterance]], list[str]]:
    p = Path(path)
    if p.is_dir():
        raise ManifestError(f"{p}: is a folder, not a manifest; give the path of a .jsonl manifest")
    if not p.is_file():
        raise ManifestError(f"{p}: no such manifest file; give the path of a .jsonl manifest")
    base = p.resolve().parent
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ManifestError(f"{p}: cannot read manifest ({e.strerror})") from None
    utts: list[tuple[int, Utterance]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{p}:{lineno}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not valid UTF-8 (byte {e.start}); re-save the manifest as UTF-8")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: a JSON {type(obj).__name__}, not an object; write one JSON object per line")
            continue
        utt, errs = _utterance_from_dict(obj, base)
        problems.extend(f"{where}: {e}" for e in errs)
        if utt is None:
            continue
        if utt.id in first_line:
            problems.append(f"{where}: id {utt.id!r} repeats line {first_line[utt.id]}; ids must be unique")
            continue
        first_line[utt.id] = lineno
        utts.append((lineno, utt))
    return utts, problems


def read_manifest(path: str | os.PathLike, *, require_text: bool = False) -> list[Utterance]:
    """Read a JSONL manifest; raises :class:`ManifestError` naming ``file:line`` of the first problem.

    ``require_text`` makes an empty (or all-space) transcript a problem too, as training needs one
    (evaluation reports such lines apart instead).
    """
    numbered, problems = _parse_numbered(path)
    if require_text:
        problems += [f"{path}:{lineno}: {u.id}: empty text; give the transcript or drop the line"
                     for lineno, u in numbered if not u.text.strip()]
        problems.sort(key=_line_key)
    utts = [u for _, u in numbered]
    if problems:
        more = f" (and {len(problems) - 1} more problems; `speechtl-corpus validate` lists them all)"
        raise ManifestError(problems[0] + (more if len(problems) > 1 else ""))
    return utts


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike) -> None:
    """Write ``utts`` to ``path`` atomically (a temp file in the same folder, then rename).

    Audio paths under the manifest's folder are written relative to it; others stay absolute.
    """
    p = Path(path)
    folder = p.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines = []
    for u in utts:
        if u.id in seen:
            raise ManifestError(f"{p}: utterance id {u.id!r} appears twice; ids in a manifest must be unique")
        seen.add(u.id)
        lines.append(json.dumps(u.to_json(folder), ensure_ascii=False))
    # Disk full, quota, permissions: one error naming the file; the old manifest is kept.
    atomic_write_text(folder / p.name, "".join(line + "\n" for line in lines))


def filter_manifest(
    utts: Iterable[Utterance],
    accents: Iterable[str] | None = None,
    speakers: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    min_duration: float | None = None,
    max_duration: float | None = None,
) -> list[Utterance]:
    """Keep utterances whose accent, speaker and split are in the given sets (None keeps all).

    Duration bounds are inclusive. An utterance without ``duration`` has it read from its audio
    header (cheap, no decoding) when a bound is given.
    """
    acc = None if accents is None else set(accents)
    spk = None if speakers is None else set(speakers)
    spl = None if splits is None else set(splits)
    out = []
    for u in utts:
        if acc is not None and u.accent not in acc:
            continue
        if spk is not None and u.speaker not in spk:
            continue
        if spl is not None and u.split not in spl:
            continue
        if min_duration is not None or max_duration is not None:
            d = utterance_duration(u)
            if min_duration is not None and d < min_duration:
                continue
            if max_duration is not None and d > max_duration:
                continue
        out.append(u)
    return out


def utterance_duration(u: Utterance) -> float:
    """``u.duration`` or, when absent, the audio file's length after ``u.offset``."""
    if u.duration is not None:
        return u.duration
    from ..audio import audio_duration

    return max(0.0, audio_duration(u.audio) - (u.offset or 0.0))


def split_by_speaker(
    utts: Iterable[Utterance],
    dev: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    heldout_accents: Iterable[str] = (),
) -> list[Utterance]:
    """Assign ``split`` by speaker so that no speaker is in two splits; returns new utterances.

    Speakers of each accent are shuffled with ``seed`` and a ``test`` then ``dev`` fraction of
    them (rounded, at least one when the accent has three or more speakers and the fraction is
    positive) goes to that split, so every accent appears in every split where it can. Every
    utterance of a ``heldout_accents`` accent gets ``"test_heldout"``: a held-out accent is
    never seen in training or model selection. Input order is kept.
    """
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise ManifestError(f"split fractions dev={dev} test={test} must be in [0, 1) and sum below 1")
    utts = list(utts)
    heldout = set(heldout_accents)
    present = {u.accent for u in utts if u.accent is not None}
    if missing := sorted(heldout - present, key=str):
        raise ManifestError(f"held-out accent(s) {', '.join(map(repr, missing))} not in the manifest; accents there: "
                            f"{', '.join(sorted(present)) or 'none'}")
    # A speaker key includes the corpus: different corpora reuse ids like "0001".
    spk_accents: dict[tuple, Counter] = defaultdict(Counter)
    for u in utts:
        if u.accent not in heldout:
            spk_accents[(u.corpus, u.speaker)][u.accent] += 1
    by_accent: dict[str, list[tuple]] = defaultdict(list)
    for spk, counts in spk_accents.items():
        # Ties resolved by name so the result does not depend on input order.
        accent = min(counts, key=lambda a: (-counts[a], a))
        by_accent[accent].append(spk)
    rng = random.Random(seed)
    assignment: dict[tuple, str] = {}
    for accent in sorted(by_accent):
        spks = sorted(by_accent[accent], key=lambda s: (s[0] or "", s[1]))
        rng.shuffle(spks)
        n = len(spks)
        n_test, n_dev = _split_counts(n, test), _split_counts(n, dev)
        while n_test + n_dev >= n and n > 0 and (n_test or n_dev):
            # Keep at least one training speaker: shrink the larger held part first.
            if n_dev >= n_test and n_dev:
                n_dev -= 1
            else:
                n_test -= 1
        for i, s in enumerate(spks):
            assignment[s] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    out = []
    for u in utts:
        split = "test_heldout" if u.accent in heldout else assignment[(u.corpus, u.speaker)]
        out.append(dataclasses.replace(u, split=split, extra=dict(u.extra)))
    return out


@dataclass
class ValidationReport:
    """What :func:`validate_manifest` found: every problem (``file:line: ...``) and a summary."""

    problems: list[str]
    utterances: list[Utterance]
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_manifest(
    path: str | os.PathLike,
    min_sample_rate: int = 16000,
    max_duration: float | None = 600.0,
    decode: bool = True,
    duration_tolerance: float = 0.1,
    workers: int | None = None,
    progress: bool = False,
) -> ValidationReport:
    """Check every line and every audio file of a manifest; collect all problems.

    Lines: UTF-8, JSON object, required fields and types, unique ids, non-empty text. Audio:
    exists, readable header, sample rate at least ``min_sample_rate`` (lower rates cannot be
    restored by resampling), segment inside the file, stated ``duration`` matching the file
    within ``duration_tolerance`` seconds, duration above zero and at most ``max_duration``;
    with ``decode`` the samples are read and must be finite.
    """
    numbered, problems = _parse_numbered(path)
    p = Path(path)
    for lineno, u in numbered:
        if not u.text.strip():
            problems.append(f"{p}:{lineno}: {u.id}: empty text; give the transcript or drop the line")
    durations: dict[str, float] = {}

    def check(item: tuple[int, Utterance]) -> tuple[str, float | None, list[str]]:
        lineno, u = item
        dur, errs = _check_audio(u, min_sample_rate, max_duration, decode, duration_tolerance)
        return u.id, dur, [f"{p}:{lineno}: {u.id}: {e}" for e in errs]

    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    audio_problems: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        results = pool.map(check, numbered)
        for uid, dur, errs in tqdm(results, total=len(numbered), desc="validate", unit="utt", disable=not progress):
            if dur is not None:
                durations[uid] = dur
            audio_problems[uid] = errs
    for _, u in numbered:  # keep problems in line order
        problems.extend(audio_problems.get(u.id, []))
    problems.sort(key=_line_key)
    utts = [u for _, u in numbered]
    return ValidationReport(problems, utts, summarize(utts, durations))


def _line_key(problem: str) -> tuple[int, str]:
    m = re.match(r".*?:(\d+): ", problem)
    return (int(m.group(1)) if m else 0, problem)


def _check_audio(u: Utterance, min_rate: int, max_duration: float | None, decode: bool,
                 tol: float) -> tuple[float | None, list[str]]:
    import numpy as np
    import soundfile as sf

    a = Path(u.audio)
    if not a.exists():
        return None, [f"audio {u.audio} does not exist"]
    if not a.is_file():
        return None, [f"audio {u.audio} is not a file"]
    try:
        info = sf.info(str(a))
    except Exception as e:
        msg = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        return None, [f"audio {u.audio} cannot be decoded here ({msg}); convert it to wav/flac"]
    errs = []
    total = info.frames / info.samplerate if info.samplerate else 0.0
    if info.samplerate < min_rate:
        errs.append(f"sample rate {info.samplerate} Hz is below {min_rate} Hz")
    offset = u.offset or 0.0
    if offset > total:
        errs.append(f"offset {offset:g} s is past the end of the {total:.2f} s file")
    if u.duration is not None and u.offset is not None and offset + u.duration > total + tol:
        errs.append(f"segment {offset:g}+{u.duration:g} s runs past the end of the {total:.2f} s file")
    if u.duration is not None and u.offset is None and abs(total - u.duration) > tol:
        errs.append(f"manifest duration {u.duration:g} s but the file lasts {total:.2f} s")
    dur = u.duration if u.duration is not None else max(0.0, total - offset)
    if dur <= 0:
        errs.append("holds no audio (duration 0)")
    if max_duration is not None and dur > max_duration:
        errs.append(f"{dur:.1f} s long, over the {max_duration:g} s limit; segment it")
    if decode and not errs:
        start = round(offset * info.samplerate)
        stop = None if u.duration is None else start + round(u.duration * info.samplerate)
        try:
            wav, _ = sf.read(str(a), start=start, stop=stop, dtype="float32", always_2d=True)
        except Exception as e:
            return dur, [f"audio {u.audio} fails to decode ({str(e).strip()[:120]}); the file may be corrupt"]
        if wav.shape[0] == 0:
            errs.append("decodes to no samples")
        elif not np.isfinite(wav).all():
            errs.append("audio holds NaN or infinite samples")
    return dur, errs


def summarize(utts: list[Utterance], durations: dict[str, float] | None = None) -> dict[str, Any]:
    """Counts and hours overall, per accent and per split (durations from ``durations`` or the utterances)."""
    durations = durations or {}
    per_accent: dict[str, dict[str, Any]] = {}
    per_split: Counter = Counter()
    total = 0.0
    spk_by_accent: dict[str, set] = defaultdict(set)
    for u in utts:
        d = durations.get(u.id, u.duration) or 0.0
        total += d
        a = per_accent.setdefault(u.accent, {"utterances": 0, "hours": 0.0})
        a["utterances"] += 1
        a["hours"] += d / 3600
        spk_by_accent[u.accent].add((u.corpus, u.speaker))
        per_split[u.split or "none"] += 1
    for acc, a in per_accent.items():
        a["speakers"] = len(spk_by_accent[acc])
        a["hours"] = round(a["hours"], 4)
    return {
        "utterances": len(utts),
        "speakers": len({(u.corpus, u.speaker) for u in utts}),
        "accents": len(per_accent),
        "hours": round(total / 3600, 4),
        "per_accent": dict(sorted(per_accent.items())),
        "per_split": dict(sorted(per_split.items())),
    }


def _split_counts(n: int, frac: float) -> int:
    if frac <= 0:
        return 0
    k = round(frac * n)
    return max(k, 1) if n >= 3 else k


def _utterance_from_dict(obj: dict, base: Path) -> tuple[Utterance | None, list[str]]:
    errs = []
    for key in REQUIRED:
        if key not in obj:
            errs.append(f"missing required key {key!r}")
        elif not isinstance(obj[key], str):
            errs.append(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    for key in ("id", "audio", "speaker", "accent"):
        if isinstance(obj.get(key), str) and not obj[key].strip():
            errs.append(f"{key!r} is empty")
    for key in _OPTIONAL_STR:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            # Ages are often written as numbers; accept them as text rather than reject the corpus.
            if key == "age" and isinstance(obj[key], (int, float)) and not isinstance(obj[key], bool):
                obj = {**obj, "age": str(obj[key])}
            else:
                errs.append(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    for key in _OPTIONAL_NUM:
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v)):
            errs.append(f"{key!r} must be a non-negative number of seconds, got {v!r}")
    split = obj.get("split")
    if isinstance(split, str) and split not in SPLITS:
        errs.append(f"'split' is {split!r}; use one of {', '.join(SPLITS)}")
    if errs:
        return None, errs
    audio = obj["audio"]
    if not os.path.isabs(audio):
        audio = os.path.normpath(os.path.join(base, audio))
    known = set(REQUIRED) | set(_OPTIONAL_STR) | set(_OPTIONAL_NUM)
    utt = Utterance(
        id=obj["id"],
        audio=audio,
        text=obj["text"],
        speaker=obj["speaker"],
        accent=obj["accent"],
        duration=None if obj.get("duration") is None else float(obj["duration"]),
        split=obj.get("split"),
        lang=obj.get("lang"),
        gender=obj.get("gender"),
        age=obj.get("age"),
        corpus=obj.get("corpus"),
        offset=None if obj.get("offset") is None else float(obj["offset"]),
        extra={k: v for k, v in obj.items() if k not in known},
    )
    return utt, []


def _relative_if_under(audio: str, base: str | os.PathLike) -> str:
    a = os.path.abspath(audio)
    b = os.path.abspath(base)
    try:
        common = os.path.commonpath([a, b])
    except ValueError:  # different drives on Windows
        return a
    return os.path.relpath(a, b) if common == b else a

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
import os
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpeechtlError

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
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: no such manifest file; give the path of a .jsonl manifest")
    base = p.resolve().parent
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ManifestError(f"{p}: cannot read manifest ({e.strerror})") from None
    utts: list[Utterance] = []
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
        utts.append(utt)
    return utts, problems


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; raises :class:`ManifestError` naming ``file:line`` of the first problem."""
    utts, problems = parse_manifest(path)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, folder / p.name)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v):
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

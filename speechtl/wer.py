"""Word and character error rates: text normalisers and per-utterance scoring with jiwer.

One normaliser object is applied to references and hypotheses alike, then jiwer aligns the
normalised words (Levenshtein, unit costs) and the counts are kept per utterance so that any
grouping (accent, speaker, split) is a sum of counts: a group's WER is *micro*, total errors
over total reference words.

Normalisers (``get_normalizer(name)``):

- ``whisper`` (default): Whisper's English normaliser (transformers' ``EnglishTextNormalizer``):
  lower-case, drop bracketed/parenthesised spans and fillers ("um", "uh"), expand contractions
  and titles ("mr" -> "mister"), spell numbers as digits ("twenty five" -> "25"), British to
  American spelling ("colour" -> "color") and remove punctuation. The spelling map ships with
  speechtl (``speechtl._english_spelling``), so it works offline.
- ``basic``: lower-case, punctuation and symbols removed except apostrophes inside words
  ("don't" stays, "'quoted'" loses its quotes), whitespace collapsed.
- ``none``: the text as given, only whitespace collapsed (case and punctuation count).

A reference that normalises to nothing (e.g. only "um") has no words: its utterance is scored
and kept, flagged ``empty_ref``, and left out of every WER (a warning says how many), since
its insertions have no denominator.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol, runtime_checkable

import jiwer

from .errors import SpeechtlError

NormalizerName = Literal["whisper", "basic", "none"]
NORMALIZERS: tuple[str, ...] = ("whisper", "basic", "none")


@runtime_checkable
class Normalizer(Protocol):
    """A text normaliser: ``name`` (saved in reports) and ``__call__(text) -> text``."""

    name: str

    def __call__(self, text: str) -> str: ...


class WhisperNormalizer:
    """Whisper's English text normaliser with the full British-to-American spelling map."""

    name = "whisper"

    @cached_property
    def _normalize(self):
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        from ._english_spelling import ENGLISH_SPELLING

        return EnglishTextNormalizer(ENGLISH_SPELLING)

    def __call__(self, text: str) -> str:
        return self._normalize(text)

    def __repr__(self) -> str:
        return "WhisperNormalizer()"


# Apostrophes that do not sit between two word characters: quotes, not contractions.
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


class BasicNormalizer:
    """Lower-case, remove punctuation and symbols (apostrophes inside words stay), collapse spaces."""

    name = "basic"

    def __call__(self, text: str) -> str:
        s = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
        s = _STRAY_APOSTROPHE.sub(" ", s)
        # Hyphens and slashes become spaces so "well-known" scores as two words on both sides.
        s = "".join(" " if c != "'" and unicodedata.category(c)[0] in "PS" else c for c in s)
        return " ".join(s.split())

    def __repr__(self) -> str:
        return "BasicNormalizer()"


class NoNormalizer:
    """The text unchanged except that runs of whitespace become one space (words are split on it)."""

    name = "none"

    def __call__(self, text: str) -> str:
        return " ".join(text.split())

    def __repr__(self) -> str:
        return "NoNormalizer()"


def get_normalizer(name: str | Normalizer = "whisper") -> Normalizer:
    """The normaliser called ``name`` (``whisper``, ``basic`` or ``none``); a normaliser object passes through."""
    if not isinstance(name, str):
        if isinstance(name, Normalizer):
            return name
        raise SpeechtlError(
            f"normalizer {name!r} is neither a name nor a callable with a .name; use one of {', '.join(NORMALIZERS)}"
        )
    if name == "whisper":
        return WhisperNormalizer()
    if name == "basic":
        return BasicNormalizer()
    if name == "none":
        return NoNormalizer()
    raise SpeechtlError(f"unknown normalizer {name!r}; use one of: {', '.join(NORMALIZERS)}")


@dataclass
class PairScore:
    """Scores of one reference/hypothesis pair, after normalisation.

    ``substitution_pairs`` are the (reference word, hypothesis word) substitutions of the
    alignment, ``deleted``/``inserted`` the words it deleted and inserted.
    """

    ref: str
    hyp: str
    ref_norm: str
    hyp_norm: str
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    hyp_words: int
    ref_chars: int
    char_errors: int
    substitution_pairs: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def empty_ref(self) -> bool:
        return self.ref_words == 0

    @property
    def wer(self) -> float | None:
        """This utterance's WER; None for an empty reference."""
        return None if self.ref_words == 0 else self.errors / self.ref_words

    @property
    def cer(self) -> float | None:
        return None if self.ref_chars == 0 else self.char_errors / self.ref_chars


def score_pairs(
    refs: Sequence[str], hyps: Sequence[str], normalizer: str | Normalizer = "whisper"
) -> list[PairScore]:
    """Normalise both sides with the same normaliser and score each pair (word and character level).

    Character counts are over the normalised strings with single spaces counted as characters
    (jiwer's CER convention).
    """
    if len(refs) != len(hyps):
        raise SpeechtlError(f"{len(refs)} references but {len(hyps)} hypotheses; give one hypothesis per reference")
    norm = get_normalizer(normalizer)
    if not refs:
        return []
    refs_n = [norm(r) for r in refs]
    hyps_n = [norm(h) for h in hyps]
    words = jiwer.process_words(refs_n, hyps_n)
    chars = jiwer.process_characters(refs_n, hyps_n)
    out = []
    for i in range(len(refs)):
        r_words, h_words = words.references[i], words.hypotheses[i]
        counts = Counter()
        subs: list[tuple[str, str]] = []
        dels: list[str] = []
        ins: list[str] = []
        for chunk in words.alignments[i]:
            n_ref = chunk.ref_end_idx - chunk.ref_start_idx
            if chunk.type == "equal":
                counts["hits"] += n_ref
            elif chunk.type == "substitute":
                counts["substitutions"] += n_ref
                ref_span = r_words[chunk.ref_start_idx : chunk.ref_end_idx]
                subs.extend(zip(ref_span, h_words[chunk.hyp_start_idx : chunk.hyp_end_idx]))
            elif chunk.type == "delete":
                counts["deletions"] += n_ref
                dels.extend(r_words[chunk.ref_start_idx : chunk.ref_end_idx])
            elif chunk.type == "insert":
                counts["insertions"] += chunk.hyp_end_idx - chunk.hyp_start_idx
                ins.extend(h_words[chunk.hyp_start_idx : chunk.hyp_end_idx])
        # Substitutions and deletions span reference characters, insertions hypothesis ones.
        char_errors = sum(
            (c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else (c.ref_end_idx - c.ref_start_idx)
            for c in chars.alignments[i]
            if c.type != "equal"
        )
        out.append(
            PairScore(
                ref=refs[i],
                hyp=hyps[i],
                ref_norm=refs_n[i],
                hyp_norm=hyps_n[i],
                hits=counts["hits"],
                substitutions=counts["substitutions"],
                deletions=counts["deletions"],
                insertions=counts["insertions"],
                ref_words=len(r_words),
                hyp_words=len(h_words),
                ref_chars=len(chars.references[i]),
                char_errors=char_errors,
                substitution_pairs=subs,
                deleted=dels,
                inserted=ins,
            )
        )
    return out


@dataclass
class ErrorCounts:
    """Summed counts of a group of utterances; WER and CER are micro (total errors / total reference units).

    Utterances with an empty normalised reference are counted in ``empty_refs`` only.
    """

    utterances: int = 0
    empty_refs: int = 0
    words: int = 0
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    chars: int = 0
    char_errors: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        return None if self.words == 0 else self.errors / self.words

    @property
    def cer(self) -> float | None:
        return None if self.chars == 0 else self.char_errors / self.chars

    def add(self, s: PairScore) -> None:
        if s.empty_ref:
            self.empty_refs += 1
            return
        self.utterances += 1
        self.words += s.ref_words
        self.hits += s.hits
        self.substitutions += s.substitutions
        self.deletions += s.deletions
        self.insertions += s.insertions
        self.chars += s.ref_chars
        self.char_errors += s.char_errors


def aggregate(scores: Iterable[PairScore]) -> ErrorCounts:
    """Sum the counts of ``scores`` (empty references are counted apart, not scored)."""
    total = ErrorCounts()
    for s in scores:
        total.add(s)
    return total


def warn_empty_refs(n: int, where: str = "") -> None:
    if n:
        warnings.warn(
            f"{n} reference(s){where} are empty after normalisation; they are left out of the WER",
            stacklevel=3,
        )


def wer(refs: Sequence[str], hyps: Sequence[str], normalizer: str | Normalizer = "whisper") -> float:
    """Corpus (micro) WER of ``hyps`` against ``refs`` after normalising both; empty references are left out."""
    total = aggregate(score_pairs(refs, hyps, normalizer))
    if total.wer is None:
        raise SpeechtlError("every reference is empty after normalisation; there is nothing to score")
    warn_empty_refs(total.empty_refs)
    return total.wer


def cer(refs: Sequence[str], hyps: Sequence[str], normalizer: str | Normalizer = "whisper") -> float:
    """Corpus character error rate after normalising both sides (spaces count as characters)."""
    total = aggregate(score_pairs(refs, hyps, normalizer))
    if total.cer is None:
        raise SpeechtlError("every reference is empty after normalisation; there is nothing to score")
    warn_empty_refs(total.empty_refs)
    return total.cer


def top_confusions(pairs: Iterable[tuple[str, str]], n: int = 20) -> list[tuple[str, str, int]]:
    """The ``n`` most frequent (reference word, hypothesis word) substitutions with their counts.

    Ties are broken alphabetically so the list is stable across runs.
    """
    counts = Counter(tuple(p) for p in pairs)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(r, h, c) for (r, h), c in ranked[:n]]


def top_words(words: Iterable[str], n: int = 20) -> list[tuple[str, int]]:
    """The ``n`` most frequent words (e.g. deleted or inserted ones) with counts, ties alphabetical."""
    counts = Counter(words)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

"""Evaluation results as data: per-utterance records, WER per group, the :class:`Report` and its files.

:func:`summarize` turns scored :class:`UtteranceRecord` s into a :class:`Report`: WER per
accent, per speaker and overall with speaker-bootstrap confidence intervals
(:mod:`speechtl.stats`), held-out (unseen) accents apart, and the most frequent word
confusions. ``report.save(dir)`` writes ``report.json``, ``utterances.jsonl``, ``report.md``
(:mod:`speechtl.render`) and ``wer_per_accent.png`` (:mod:`speechtl.plots`); ``Report.load(dir)``
reads them back. ``adapted.compare(baseline)`` gives a :class:`~speechtl.comparison.Comparison`
(:func:`~speechtl.comparison.compare`).

- WERs are micro: total errors (S + D + I) over total reference words of the group.
- The macro WER is the unweighted mean of the accents' WERs; its interval resamples
  speakers within each accent (a stratified bootstrap) and needs two or more speakers in
  every accent.
- A group with a single speaker gets no interval and no p-value (None): resampling one
  speaker always returns it, which would fake certainty.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import render
from .checksums import record_checksum
from .errors import SpeechtlError
from .fileio import atomic_write_text
from .stats import CI_LEVEL, N_BOOTSTRAP, bootstrap_wers, percentile_interval, seeded_rng, speaker_totals
from .wer import PairScore, top_confusions, top_words

if TYPE_CHECKING:
    from .comparison import Comparison

TOP_CONFUSIONS = 20
REPORT_SHA256 = "report_sha256"  # report.json's own record: the sha256 of its other entries
UTTERANCES_SHA256 = "utterances_sha256"  # and of the utterances.jsonl written beside it
# PairScore's counts and texts in utterances.jsonl, in file order ("wer" is written, not read back).
_SCORE_KEYS = ("ref", "hyp", "ref_norm", "hyp_norm", "wer", "hits", "substitutions", "deletions", "insertions",
               "ref_words", "hyp_words", "ref_chars", "char_errors")


@dataclass
class UtteranceRecord:
    """One scored utterance: who said it, what was said and recognised, and the error counts.

    With accent routing (:mod:`speechtl.routing`): ``route`` is the adapter's accent or ``base``,
    ``route_prob`` the classifier's probability of it (for ``base``, of the most likely adapter
    accent), ``route_weights`` a soft mixture's weights.
    """

    id: str
    speaker: str
    accent: str
    corpus: str | None
    split: str | None
    heldout: bool
    score: PairScore
    route: str | None = None
    route_prob: float | None = None
    route_weights: dict[str, float] | None = None

    @property
    def speaker_key(self) -> str:
        # Corpora reuse speaker ids like "0001": the corpus keeps them apart.
        return f"{self.corpus}/{self.speaker}" if self.corpus else self.speaker

    def to_json(self) -> dict[str, Any]:
        s = self.score
        return {
            "id": self.id,
            "speaker": self.speaker,
            "accent": self.accent,
            "corpus": self.corpus,
            "split": self.split,
            "heldout": self.heldout,
            **{k: getattr(s, k) for k in _SCORE_KEYS},
            "substitution_pairs": [list(p) for p in s.substitution_pairs],
            "deleted": s.deleted,
            "inserted": s.inserted,
            **({"route": self.route, "route_prob": self.route_prob, "route_weights": self.route_weights}
               if self.route is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UtteranceRecord:
        score = PairScore(
            **{k: obj[k] for k in _SCORE_KEYS if k != "wer"},
            substitution_pairs=[(r, h) for r, h in obj.get("substitution_pairs", [])],
            deleted=list(obj.get("deleted", [])),
            inserted=list(obj.get("inserted", [])),
        )
        return cls(
            id=obj["id"],
            speaker=obj["speaker"],
            accent=obj["accent"],
            corpus=obj.get("corpus"),
            split=obj.get("split"),
            heldout=bool(obj.get("heldout", False)),
            score=score,
            route=obj.get("route"),
            route_prob=obj.get("route_prob"),
            route_weights=obj.get("route_weights"),
        )


@dataclass
class GroupStats:
    """Micro error rates of a group of utterances (an accent, a speaker, everything).

    ``wer``/``cer`` and the interval are fractions (0.125 = 12.5 %); None when the group has
    no reference words. Speakers get no interval (``ci_low``/``ci_high`` None).
    """

    name: str
    utterances: int
    speakers: int
    words: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    chars: int
    char_errors: int
    empty_refs: int
    wer: float | None
    cer: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    heldout: bool = False
    accent: str | None = None  # for speakers: their accent

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GroupStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


def _group_stats(
    name: str, records: list[UtteranceRecord], *, n_resamples: int, seed: int, with_ci: bool
) -> tuple[GroupStats, np.ndarray | None]:
    """Stats of ``records``; also the bootstrap WERs ``(n_resamples,)`` when ``with_ci`` (else None)."""
    scored = [r for r in records if not r.score.empty_ref]
    words = sum(r.score.ref_words for r in scored)
    chars = sum(r.score.ref_chars for r in scored)
    sub = sum(r.score.substitutions for r in scored)
    dele = sum(r.score.deletions for r in scored)
    ins = sum(r.score.insertions for r in scored)
    char_errors = sum(r.score.char_errors for r in scored)
    stats = GroupStats(
        name=name,
        utterances=len(scored),
        speakers=len({r.speaker_key for r in scored}),
        words=words,
        hits=sum(r.score.hits for r in scored),
        substitutions=sub,
        deletions=dele,
        insertions=ins,
        chars=chars,
        char_errors=char_errors,
        empty_refs=len(records) - len(scored),
        wer=(sub + dele + ins) / words if words else None,
        cer=char_errors / chars if chars else None,
    )
    boot = None
    if with_ci and words:
        totals = speaker_totals(scored)
        e = np.array([t[0] for t in totals.values()], dtype=np.float64)
        w = np.array([t[1] for t in totals.values()], dtype=np.float64)
        boot = bootstrap_wers(e, w, n_resamples=n_resamples, rng=seeded_rng(seed, name))
        if len(totals) > 1:
            stats.ci_low, stats.ci_high = percentile_interval(boot, CI_LEVEL)
    return stats, boot


@dataclass
class MacroStats:
    """Unweighted mean of the accents' WERs with a stratified speaker-bootstrap interval."""

    wer: float | None
    ci_low: float | None
    ci_high: float | None
    accents: int


def _macro(groups: list[tuple[GroupStats, np.ndarray | None]]) -> MacroStats | None:
    scored = [(g, b) for g, b in groups if g.wer is not None and b is not None]
    if not scored:
        return None
    wer = float(np.mean([g.wer for g, _ in scored]))
    if any(g.speakers < 2 for g, _ in scored):
        # A one-speaker accent contributes no resampling variance: the interval would be too narrow.
        return MacroStats(wer=wer, ci_low=None, ci_high=None, accents=len(scored))
    boot = np.mean(np.stack([b for _, b in scored]), axis=0)
    lo, hi = percentile_interval(boot, CI_LEVEL)
    return MacroStats(wer=wer, ci_low=lo, ci_high=hi, accents=len(scored))


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    """Everything one evaluation measured.

    ``accents`` are sorted by name and flag held-out ones; ``overall`` covers every
    utterance, ``seen``/``heldout`` (only when held-out accents exist) the two parts;
    ``macro``/``macro_heldout`` average the seen/held-out accents. ``meta`` records the
    model, adapter, normaliser, decoding settings, target and held-out accents.
    """

    meta: dict[str, Any]
    utterances: list[UtteranceRecord]
    accents: dict[str, GroupStats]
    speakers: dict[str, GroupStats]
    overall: GroupStats
    seen: GroupStats | None = None
    heldout: GroupStats | None = None
    macro: MacroStats | None = None
    macro_heldout: MacroStats | None = None
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    deleted: list[tuple[str, int]] = field(default_factory=list)
    inserted: list[tuple[str, int]] = field(default_factory=list)

    @property
    def normalizer(self) -> str:
        return self.meta.get("normalizer", "")

    @property
    def target_accent(self) -> str | None:
        return self.meta.get("target_accent")

    @property
    def heldout_accents(self) -> list[str]:
        return [a for a, g in self.accents.items() if g.heldout]

    @property
    def empty_refs(self) -> int:
        return self.overall.empty_refs

    # -- serialisation ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (per-utterance records go to ``utterances.jsonl``)."""

        def opt(x):
            return None if x is None else dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x

        return {
            "meta": self.meta,
            "overall": self.overall.to_json(),
            "seen": opt(self.seen),
            "heldout": opt(self.heldout),
            "macro": opt(self.macro),
            "macro_heldout": opt(self.macro_heldout),
            "accents": [g.to_json() for g in self.accents.values()],
            "speakers": [g.to_json() for g in self.speakers.values()],
            "confusions": [{"ref": r, "hyp": h, "count": c} for r, h, c in self.confusions],
            "deleted": [{"word": w, "count": c} for w, c in self.deleted],
            "inserted": [{"word": w, "count": c} for w, c in self.inserted],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], utterances: list[UtteranceRecord] | None = None) -> Report:
        def group(x):
            return None if x is None else GroupStats.from_json(x)

        def macro(x):
            return None if x is None else MacroStats(**x)

        return cls(
            meta=obj["meta"],
            utterances=utterances or [],
            accents={g["name"]: GroupStats.from_json(g) for g in obj["accents"]},
            speakers={g["name"]: GroupStats.from_json(g) for g in obj["speakers"]},
            overall=GroupStats.from_json(obj["overall"]),
            seen=group(obj.get("seen")),
            heldout=group(obj.get("heldout")),
            macro=macro(obj.get("macro")),
            macro_heldout=macro(obj.get("macro_heldout")),
            confusions=[(c["ref"], c["hyp"], c["count"]) for c in obj.get("confusions", [])],
            deleted=[(d["word"], d["count"]) for d in obj.get("deleted", [])],
            inserted=[(d["word"], d["count"]) for d in obj.get("inserted", [])],
        )

    def save(self, out_dir: str | os.PathLike, *, plots: bool = True) -> Path:
        """Write ``report.json``, ``utterances.jsonl``, ``report.md`` and ``wer_per_accent.png``.

        Returns the path of ``report.json``.

        Each file is written to a temporary name in ``out_dir`` and renamed, so a failure
        leaves no half-written file.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        utterances = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in self.utterances)
        atomic_write_text(out / "utterances.jsonl", utterances)
        atomic_write_text(out / "report.md", self.to_markdown())
        if plots and self.accents:
            from .plots import plot_wer_per_accent

            plot_wer_per_accent(self, out / "wer_per_accent.png")
        # report.json last: it is never newer than the files it describes, and records what load checks.
        record = json.loads(json.dumps(self.to_json()))
        record[UTTERANCES_SHA256] = hashlib.sha256(utterances.encode("utf-8")).hexdigest()
        record[REPORT_SHA256] = record_checksum(record, REPORT_SHA256)
        atomic_write_text(out / "report.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return out / "report.json"

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """Read a saved report from its folder or its ``report.json`` (with ``utterances.jsonl`` beside it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.is_file():
            raise SpeechtlError(f"{p}: no such report; give a report.json (or its folder) written by speechtl-eval")
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpeechtlError(f"{p}: not valid JSON ({e}); the report is damaged, evaluate again") from None
        if not isinstance(obj, dict) or not {"meta", "overall", "accents", "speakers"} <= set(obj):
            raise SpeechtlError(f"{p}: not a speechtl report (needs meta, overall, accents, speakers)")
        # Reports written before the records existed have neither; the checks below are all there is for them.
        if REPORT_SHA256 in obj and obj[REPORT_SHA256] != record_checksum(obj, REPORT_SHA256):
            raise SpeechtlError(f"{p}: its entries changed since speechtl-eval wrote it (their sha256 differs from "
                                f"{REPORT_SHA256}); evaluate again")
        utts_path = p.parent / "utterances.jsonl"
        records: list[UtteranceRecord] = []
        if UTTERANCES_SHA256 in obj:
            try:
                data = utts_path.read_bytes()
            except FileNotFoundError:
                raise SpeechtlError(f"{utts_path}: missing, but {p.name} was written with it; copy it back beside "
                                    f"{p.name} or evaluate again") from None
            if hashlib.sha256(data).hexdigest() != obj[UTTERANCES_SHA256]:
                raise SpeechtlError(f"{utts_path}: changed since speechtl-eval wrote it (its sha256 differs from the "
                                    f"one {p.name} records); evaluate again")
        if utts_path.is_file():
            for lineno, line in enumerate(utts_path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    records.append(UtteranceRecord.from_json(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise SpeechtlError(f"{utts_path}:{lineno}: not a valid utterance record ({e})") from None
        return cls.from_json(obj, records)

    # -- presentation ----------------------------------------------------------------------

    def accent_rows(self) -> list[dict[str, Any]]:
        """Seen accents first, then held-out ones; each a dict for tables."""
        rows = []
        for heldout in (False, True):
            for g in self.accents.values():
                if g.heldout == heldout:
                    rows.append({"accent": g.name, "stats": g, "heldout": heldout,
                                 "target": g.name == self.target_accent})
        return rows

    def to_markdown(self) -> str:
        """``report.md`` (see :func:`speechtl.render.report_markdown`)."""
        return render.report_markdown(self)

    def route_counts(self) -> dict[str, int]:
        """Utterances per route (adapter accent or ``base``), empty without routing."""
        return dict(sorted(Counter(r.route for r in self.utterances if r.route is not None).items()))

    def format_table(self, comparison: Comparison | None = None) -> str:
        """A plain-text per-accent table for terminals (with the change vs a baseline when given)."""
        return render.report_table(self, comparison)

    # -- comparison --------------------------------------------------------------------------

    def compare(
        self,
        baseline: Report,
        *,
        target_accent: str | None = None,
        n_resamples: int | None = None,
        seed: int | None = None,
    ) -> Comparison:
        """Compare this (adapted) report with ``baseline`` evaluated on the same utterances.

        Raises :class:`SpeechtlError` when the utterance ids, references or normalisers differ.
        ``target_accent`` defaults to this report's, then the baseline's.
        """
        from .comparison import compare

        return compare(baseline, self, target_accent=target_accent, n_resamples=n_resamples, seed=seed)



# --------------------------------------------------------------------------------------------
# Building reports


def summarize(
    records: list[UtteranceRecord],
    meta: dict[str, Any],
    *,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Report:
    """Build a :class:`Report` from scored utterance records (no model involved)."""
    if not records:
        raise SpeechtlError("no utterances to summarise")
    meta = {**meta, "n_bootstrap": n_resamples, "seed": seed, "ci_level": CI_LEVEL}
    by_accent: dict[str, list[UtteranceRecord]] = defaultdict(list)
    by_speaker: dict[str, list[UtteranceRecord]] = defaultdict(list)
    for r in records:
        by_accent[r.accent].append(r)
        by_speaker[r.speaker_key].append(r)
    accent_stats: dict[str, GroupStats] = {}
    seen_groups, heldout_groups = [], []
    for accent in sorted(by_accent):
        recs = by_accent[accent]
        stats, boot = _group_stats(accent, recs, n_resamples=n_resamples, seed=seed, with_ci=True)
        stats.heldout = any(r.heldout for r in recs)
        accent_stats[accent] = stats
        (heldout_groups if stats.heldout else seen_groups).append((stats, boot))
    speaker_stats = {}
    for key in sorted(by_speaker):
        recs = by_speaker[key]
        stats, _ = _group_stats(key, recs, n_resamples=n_resamples, seed=seed, with_ci=False)
        accents = Counter(r.accent for r in recs)
        stats.accent = min(accents, key=lambda a: (-accents[a], a))
        stats.heldout = any(r.heldout for r in recs)
        speaker_stats[key] = stats
    overall, _ = _group_stats("ALL", records, n_resamples=n_resamples, seed=seed, with_ci=True)
    seen = heldout = None
    if heldout_groups:
        heldout, _ = _group_stats("held-out", [r for r in records if r.heldout], n_resamples=n_resamples,
                                  seed=seed, with_ci=True)
        heldout.heldout = True
        if seen_groups:
            seen, _ = _group_stats("seen", [r for r in records if not r.heldout], n_resamples=n_resamples,
                                   seed=seed, with_ci=True)
    if overall.empty_refs:
        warnings.warn(
            f"{overall.empty_refs} reference(s) are empty after normalisation ({meta.get('normalizer')}); "
            "they are left out of the WER",
            stacklevel=2,
        )
    return Report(
        meta=meta,
        utterances=records,
        accents=accent_stats,
        speakers=speaker_stats,
        overall=overall,
        seen=seen,
        heldout=heldout,
        macro=_macro(seen_groups),
        macro_heldout=_macro(heldout_groups),
        confusions=top_confusions((p for r in records for p in r.score.substitution_pairs), TOP_CONFUSIONS),
        deleted=top_words((w for r in records for w in r.score.deleted), TOP_CONFUSIONS),
        inserted=top_words((w for r in records for w in r.score.inserted), TOP_CONFUSIONS),
    )





__all__ = ["GroupStats", "MacroStats", "Report", "TOP_CONFUSIONS", "UtteranceRecord", "speaker_totals", "summarize"]

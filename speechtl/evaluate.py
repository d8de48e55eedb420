"""Evaluation: WER per accent with speaker-level bootstrap intervals, and comparison to a baseline.

``evaluate(model, manifest)`` transcribes a manifest, scores every utterance (:mod:`speechtl.wer`)
and returns a :class:`Report`: per-utterance records, WER per accent, per speaker and overall
with 95 % confidence intervals, held-out (unseen) accents apart, and the most frequent word
confusions. ``report.save(dir)`` writes ``report.json``, ``utterances.jsonl``, ``report.md`` and
``wer_per_accent.png``; ``Report.load(dir)`` reads them back.

``adapted.compare(baseline)`` gives a :class:`Comparison`: absolute and relative WER change per
accent, a paired bootstrap p-value per accent, and the forgetting score.

Statistics
- WERs are micro: total errors (S + D + I) over total reference words of the group.
- Confidence intervals are percentile intervals of a *cluster* bootstrap over speakers:
  utterances of one speaker are correlated (same voice, often the same prompts), so
  speakers, not utterances, are resampled with replacement; each resample's WER is its
  summed errors over its summed words. With few speakers the interval is wide.
- The macro WER is the unweighted mean of the accents' WERs; its interval resamples
  speakers within each accent (a stratified bootstrap) and needs two or more speakers in
  every accent.
- The paired test resamples speakers once and scores both systems on the same resample;
  ``p_value`` is the two-sided bootstrap p-value of the WER change being zero,
  ``2 * min(P(delta* <= 0), P(delta* >= 0))`` with add-one smoothing, and
  ``p_improve = P(delta* < 0)`` (Bisani & Ney's probability of improvement).
- A group with a single speaker gets no interval and no p-value (None): resampling one
  speaker always returns it, which would fake certainty.
- Forgetting: the mean, over the non-target accents (every accent evaluated except the
  target one, held-out accents included), of ``max(0, WER_adapted - WER_base)`` in
  percentage points. Gains on one accent do not offset losses on another; 0 means no
  accent got worse. Without a target accent every accent counts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.manifest import Utterance, read_manifest
from .fileio import atomic_write_text
from .errors import SpeechtlError
from .wer import Normalizer, PairScore, get_normalizer, score_pairs, top_confusions, top_words

Transcriber = Callable[[list[Utterance]], list[str]]

CI_LEVEL = 0.95
N_BOOTSTRAP = 1000
ROUTE_BY = ("utterance", "speaker")
TOP_CONFUSIONS = 20
# Resamples are drawn in chunks so that the (resamples, speakers) index matrix stays small.
_MAX_BOOT_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# Bootstrap


def _rng(seed: int, name: str) -> np.random.Generator:
    # A stream per group, independent of the order in which groups are visited.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _resample_sums(
    values: Sequence[np.ndarray], n_resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sum each ``values[k]`` ``(clusters,)`` over the same bootstrap resamples of clusters.

    Returns one ``(n_resamples,)`` array per input: row ``b`` is the sum over a sample, with
    replacement, of ``clusters`` clusters.
    """
    n = len(values[0])
    out = [np.empty(n_resamples, dtype=np.float64) for _ in values]
    step = max(1, _MAX_BOOT_CELLS // max(n, 1))
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        for o, v in zip(out, values):
            o[start:stop] = v[idx].sum(axis=1)
    return out


def bootstrap_wers(
    errors: np.ndarray, words: np.ndarray, *, n_resamples: int = N_BOOTSTRAP, rng: np.random.Generator
) -> np.ndarray:
    """WERs of ``n_resamples`` cluster-bootstrap resamples; ``errors``/``words`` are per speaker ``(speakers,)``.

    Speakers without reference words must be left out beforehand (they would allow a resample
    with no words). Returns ``(n_resamples,)``.
    """
    errors = np.asarray(errors, dtype=np.float64)
    words = np.asarray(words, dtype=np.float64)
    if errors.shape != words.shape or errors.ndim != 1 or len(errors) == 0:
        raise ValueError("errors and words must be non-empty 1-D arrays of the same length")
    if (words <= 0).any():
        raise ValueError("every speaker must have at least one reference word")
    e, w = _resample_sums([errors, words], n_resamples, rng)
    return e / w


def bootstrap_ci(
    errors: np.ndarray,
    words: np.ndarray,
    *,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile confidence interval of the micro WER ``sum(errors) / sum(words)``, resampling speakers.

    ``errors`` and ``words`` are per-speaker totals ``(speakers,)``.
    """
    wers = bootstrap_wers(errors, words, n_resamples=n_resamples, rng=np.random.default_rng(seed))
    return _percentile_interval(wers, level)


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedResult:
    """A paired bootstrap of the WER change ``adapted - base`` (fractions of words)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_improve: float


def paired_bootstrap(
    errors_base: np.ndarray,
    words_base: np.ndarray,
    errors_new: np.ndarray,
    words_new: np.ndarray,
    *,
    n_resamples: int = N_BOOTSTRAP,
    rng: np.random.Generator,
    level: float = CI_LEVEL,
) -> PairedResult:
    """Paired cluster bootstrap: the same speaker resample scores both systems.

    All inputs are per-speaker totals ``(speakers,)`` in the same speaker order.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (errors_base, words_base, errors_new, words_new)]
    if any(a.shape != arrays[0].shape for a in arrays) or len(arrays[0]) == 0:
        raise ValueError("paired_bootstrap needs four non-empty per-speaker arrays of one length")
    eb, wb, en, wn = arrays
    delta = en.sum() / wn.sum() - eb.sum() / wb.sum()
    reb, rwb, ren, rwn = _resample_sums([eb, wb, en, wn], n_resamples, rng)
    deltas = ren / rwn - reb / rwb
    # Rounding noise would split exact ties (identical systems) between the two tails.
    deltas = np.where(np.abs(deltas) < 1e-12, 0.0, deltas)
    lo, hi = _percentile_interval(deltas, level)
    below = int((deltas <= 0).sum())
    above = int((deltas >= 0).sum())
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_resamples + 1))
    return PairedResult(
        delta=float(delta), ci_low=lo, ci_high=hi, p_value=p, p_improve=float((deltas < 0).mean())
    )


# --------------------------------------------------------------------------------------------
# Records and statistics


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
            "ref": s.ref,
            "hyp": s.hyp,
            "ref_norm": s.ref_norm,
            "hyp_norm": s.hyp_norm,
            "wer": s.wer,
            "hits": s.hits,
            "substitutions": s.substitutions,
            "deletions": s.deletions,
            "insertions": s.insertions,
            "ref_words": s.ref_words,
            "hyp_words": s.hyp_words,
            "ref_chars": s.ref_chars,
            "char_errors": s.char_errors,
            "substitution_pairs": [list(p) for p in s.substitution_pairs],
            "deleted": s.deleted,
            "inserted": s.inserted,
            **({"route": self.route, "route_prob": self.route_prob, "route_weights": self.route_weights}
               if self.route is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UtteranceRecord:
        score = PairScore(
            ref=obj["ref"],
            hyp=obj["hyp"],
            ref_norm=obj["ref_norm"],
            hyp_norm=obj["hyp_norm"],
            hits=obj["hits"],
            substitutions=obj["substitutions"],
            deletions=obj["deletions"],
            insertions=obj["insertions"],
            ref_words=obj["ref_words"],
            hyp_words=obj["hyp_words"],
            ref_chars=obj["ref_chars"],
            char_errors=obj["char_errors"],
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


def speaker_totals(records: Iterable[UtteranceRecord]) -> dict[str, tuple[int, int]]:
    """``{speaker_key: (errors, words)}`` over non-empty references, speakers in first-seen order."""
    totals: dict[str, list[int]] = {}
    for r in records:
        if r.score.empty_ref:
            continue
        t = totals.setdefault(r.speaker_key, [0, 0])
        t[0] += r.score.errors
        t[1] += r.score.ref_words
    return {k: (e, w) for k, (e, w) in totals.items()}


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
        boot = bootstrap_wers(e, w, n_resamples=n_resamples, rng=_rng(seed, name))
        if len(totals) > 1:
            stats.ci_low, stats.ci_high = _percentile_interval(boot, CI_LEVEL)
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
    lo, hi = _percentile_interval(boot, CI_LEVEL)
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
        _atomic_write(out / "utterances.jsonl", "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n"
                                                        for r in self.utterances))
        _atomic_write(out / "report.md", self.to_markdown())
        if plots and self.accents:
            from .plots import plot_wer_per_accent

            plot_wer_per_accent(self, out / "wer_per_accent.png")
        # report.json last: it is never newer than the files it describes.
        _atomic_write(out / "report.json", json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
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
        utts_path = p.parent / "utterances.jsonl"
        records: list[UtteranceRecord] = []
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
        m = self.meta
        lines = [f"# WER report: {_system_name(m)}", ""]
        lines.append(
            f"Normaliser `{m.get('normalizer')}`, beam size {m.get('beam_size')}, "
            f"{self.overall.utterances} utterances, {self.overall.speakers} speakers, {self.overall.words} words. "
            f"Intervals: {int(CI_LEVEL * 100)} % speaker bootstrap "
            f"({m.get('n_bootstrap')} resamples, seed {m.get('seed')})."
        )
        if self.empty_refs:
            lines.append(f"{self.empty_refs} utterance(s) with an empty normalised reference are left out of the WER.")
        lines += ["", "## WER per accent", ""]
        lines += _markdown_table(
            ["accent", "utterances", "speakers", "words", "WER %", "95 % CI", "CER %", "S", "D", "I"],
            [[_accent_label(r["accent"], r["target"], r["heldout"]), g.utterances, g.speakers, g.words, _pct(g.wer),
              _ci(g), _pct(g.cer), g.substitutions, g.deletions, g.insertions]
             for r in self.accent_rows() for g in [r["stats"]]],
        )
        lines += ["", "## Summary", ""]
        rows = []
        for label, g in (("all", self.overall), ("seen accents", self.seen), ("held-out accents", self.heldout)):
            if g is not None:
                rows.append([label + " (micro)", g.utterances, g.words, _pct(g.wer), _ci(g)])
        for label, mac in (("seen accents", self.macro), ("held-out accents", self.macro_heldout)):
            if mac is not None:
                plural = "s" if mac.accents != 1 else ""
                rows.append([f"{label} (macro over {mac.accents} accent{plural})", "", "", _pct(mac.wer),
                             _macro_ci(mac)])
        lines += _markdown_table(["group", "utterances", "words", "WER %", "95 % CI"], rows)
        if self.heldout_accents:
            lines += ["", f"Held-out (unseen in training) accents: {', '.join(self.heldout_accents)}."]
        lines += self._routes_markdown()
        lines += ["", "## WER per speaker", ""]
        lines += _markdown_table(
            ["speaker", "accent", "utterances", "words", "WER %"],
            [[g.name, g.accent or "", g.utterances, g.words, _pct(g.wer)]
             for g in sorted(self.speakers.values(), key=lambda g: (g.accent or "", g.name))],
        )
        if self.confusions:
            lines += ["", "## Most frequent substitutions", ""]
            lines += _markdown_table(["reference", "hypothesis", "count"], [list(c) for c in self.confusions])
        if self.deleted or self.inserted:
            lines += ["", "## Most frequent deletions and insertions", ""]
            n = max(len(self.deleted), len(self.inserted))
            lines += _markdown_table(
                ["deleted", "count", "inserted", "count"],
                [[*(self.deleted[i] if i < len(self.deleted) else ("", "")),
                  *(self.inserted[i] if i < len(self.inserted) else ("", ""))] for i in range(n)],
            )
        return "\n".join(lines) + "\n"

    def route_counts(self) -> dict[str, int]:
        """Utterances per route (adapter accent or ``base``), empty without routing."""
        return dict(sorted(Counter(r.route for r in self.utterances if r.route is not None).items()))

    def _routes_markdown(self) -> list[str]:
        routed = [r for r in self.utterances if r.route is not None]
        if not routed:
            return []
        m = self.meta
        how = (f"route `{m.get('route')}`" + (", soft LoRA mixture (route = largest weight)" if m.get("soft_route")
                                              else f", min_prob {m.get('min_prob')}" if m.get("route") == "auto"
                                              else "")
               + (", one route per speaker (the classifier's evidence pooled over the speaker's utterances)"
                  if m.get("route_by") == "speaker" else ""))
        adapters = ", ".join(f"{a} = `{d}`" for a, d in (m.get("adapters") or {}).items())
        lines = ["", "## Routes", "", f"Adapters: {adapters or 'none'}; {how}.", ""]
        by_route: dict[str, list[UtteranceRecord]] = defaultdict(list)
        for r in routed:
            by_route[r.route].append(r)
        rows = []
        for name in sorted(by_route):
            recs = by_route[name]
            probs = [r.route_prob for r in recs if r.route_prob is not None]
            words = sum(r.score.ref_words for r in recs)
            errors = sum(r.score.substitutions + r.score.deletions + r.score.insertions for r in recs)
            rows.append([name, len(recs), f"{100 * len(recs) / len(routed):.1f}",
                         f"{np.mean(probs):.3f}" if probs else "", _pct(errors / words if words else None)])
        lines += _markdown_table(["route", "utterances", "share %", "mean adapter probability", "WER %"], rows)
        routes = sorted(by_route)
        accents = sorted({r.accent for r in routed})
        lines += ["", "Utterances per accent (rows) and route (columns):", ""]
        lines += _markdown_table(["accent", *routes],
                                 [[a, *(sum(r.accent == a for r in by_route[name]) for name in routes)]
                                  for a in accents])
        return lines

    def format_table(self, comparison: Comparison | None = None) -> str:
        """A plain-text per-accent table for terminals (with the change vs a baseline when given)."""
        header = ["accent", "utts", "words", "WER %", "95 % CI"]
        changes = {}
        if comparison is not None:
            header += ["base %", "change", "p"]
            changes = {c.accent: c for c in comparison.accents}
        rows = []
        for r in self.accent_rows():
            g = r["stats"]
            row = [_accent_label(r["accent"], r["target"], r["heldout"]), g.utterances, g.words, _pct(g.wer), _ci(g)]
            if comparison is not None:
                row += _change_cells(changes.get(r["accent"]))
            rows.append(row)
        for label, g in (("ALL", self.overall), ("seen", self.seen), ("held-out", self.heldout)):
            if g is None:
                continue
            row = [label, g.utterances, g.words, _pct(g.wer), _ci(g)]
            if comparison is not None:
                row += _change_cells(comparison.group(label))
            rows.append(row)
        if self.macro is not None:
            row = [f"macro ({self.macro.accents})", "", "", _pct(self.macro.wer), _macro_ci(self.macro)]
            rows.append(row + ([""] * 3 if comparison is not None else []))
        out = _text_table(header, rows)
        notes = []
        if self.target_accent:
            notes.append("* target accent")
        if self.heldout_accents:
            notes.append("† held-out accent")
        if notes:
            out.append("  ".join(notes))
        return "\n".join(out)

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
        return compare(baseline, self, target_accent=target_accent, n_resamples=n_resamples, seed=seed)


# --------------------------------------------------------------------------------------------
# Comparison


@dataclass
class AccentChange:
    """WER change of one accent (or ``ALL``) from baseline to adapted; fractions, not percent.

    ``delta = wer_adapted - wer_base``; ``rel_delta = delta / wer_base`` (None when the
    baseline WER is 0); ``ci_low``/``ci_high`` bound ``delta``. The interval and p-values
    are None for a group of one speaker.
    """

    accent: str
    utterances: int
    speakers: int
    words: int
    wer_base: float
    wer_adapted: float
    delta: float
    rel_delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_improve: float | None
    heldout: bool = False
    target: bool = False

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 0.05


@dataclass
class Comparison:
    """Baseline vs adapted: change per accent, overall, and the forgetting score (see module doc)."""

    base_model: str
    adapted_model: str
    normalizer: str
    target_accent: str | None
    accents: list[AccentChange]
    overall: AccentChange
    seen: AccentChange | None
    heldout: AccentChange | None
    forgetting_points: float | None
    forgetting_accents: list[str]
    mean_change_non_target_points: float | None
    n_bootstrap: int
    seed: int

    @property
    def target(self) -> AccentChange | None:
        return next((c for c in self.accents if c.target), None)

    def group(self, name: str) -> AccentChange | None:
        """The change of an accent by name, or of ``ALL``, ``seen`` or ``held-out``."""
        special = {"ALL": self.overall, "seen": self.seen, "held-out": self.heldout}
        if name in special:
            return special[name]
        return next((c for c in self.accents if c.accent == name), None)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["forgetting_definition"] = (
            "mean over non-target accents of max(0, WER_adapted - WER_base), in percentage points"
        )
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Comparison:
        obj = {k: v for k, v in obj.items() if k != "forgetting_definition"}
        obj["accents"] = [AccentChange(**a) for a in obj["accents"]]
        for key in ("overall", "seen", "heldout"):
            obj[key] = None if obj.get(key) is None else AccentChange(**obj[key])
        return cls(**obj)

    def to_markdown(self) -> str:
        lines = [f"# {self.adapted_model} vs baseline {self.base_model}", ""]
        lines += _markdown_table(
            ["accent", "utterances", "speakers", "base WER %", "adapted WER %", "change (points)", "95 % CI",
             "relative", "p", "P(better)"],
            [[_accent_label(c.accent, c.target, c.heldout), c.utterances, c.speakers, _pct(c.wer_base),
              _pct(c.wer_adapted), _signed(c.delta), _delta_ci(c), _rel(c.rel_delta), _p(c.p_value),
              "–" if c.p_improve is None else f"{c.p_improve:.2f}"]
             for c in [*self.accents, self.overall, self.seen, self.heldout] if c is not None],
        )
        lines.append("")
        if self.forgetting_points is not None:
            lines.append(
                f"Forgetting: **{self.forgetting_points:.2f} points** — the mean over the non-target accents "
                f"({', '.join(self.forgetting_accents)}) of max(0, WER_adapted − WER_base). Mean signed change "
                f"over them: {self.mean_change_non_target_points:+.2f} points."
            )
        else:
            lines.append("Forgetting: not defined (no accent other than the target was evaluated).")
        lines.append(
            f"p: two-sided paired speaker-bootstrap p-value of the change ({self.n_bootstrap} resamples, "
            f"seed {self.seed}); P(better): share of resamples where the adapted WER is lower."
        )
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike, *, plots: bool = True, base: Report | None = None,
             adapted: Report | None = None) -> Path:
        """Write ``comparison.json`` and ``comparison.md`` (and ``wer_vs_baseline.png`` when both reports are given)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "comparison.md", self.to_markdown())
        if plots and base is not None and adapted is not None:
            from .plots import plot_wer_per_accent

            plot_wer_per_accent(adapted, out / "wer_vs_baseline.png", baseline=base)
        _atomic_write(out / "comparison.json", json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return out / "comparison.json"


def compare(
    baseline: Report,
    adapted: Report,
    *,
    target_accent: str | None = None,
    n_resamples: int | None = None,
    seed: int | None = None,
) -> Comparison:
    """Change from ``baseline`` to ``adapted`` per accent and overall, with paired bootstrap tests.

    Both reports must cover the same utterance ids with the same normalised references
    (evaluate both on one manifest with one normaliser).
    """
    if not baseline.utterances or not adapted.utterances:
        raise SpeechtlError("a report has no utterance records (utterances.jsonl missing?); re-run the evaluation")
    if baseline.normalizer != adapted.normalizer:
        raise SpeechtlError(
            f"the baseline was scored with normaliser {baseline.normalizer!r} and the adapted model with "
            f"{adapted.normalizer!r}; evaluate both with the same --normalizer"
        )
    base_by_id = {r.id: r for r in baseline.utterances}
    new_by_id = {r.id: r for r in adapted.utterances}
    only_base = sorted(set(base_by_id) - set(new_by_id))
    only_new = sorted(set(new_by_id) - set(base_by_id))
    if only_base or only_new:
        parts = []
        if only_base:
            parts.append(f"{len(only_base)} only in the baseline (e.g. {', '.join(only_base[:3])})")
        if only_new:
            parts.append(f"{len(only_new)} only in the adapted report (e.g. {', '.join(only_new[:3])})")
        raise SpeechtlError(
            "the two reports cover different utterances: " + "; ".join(parts)
            + "; evaluate both models on the same manifest"
        )
    for uid, r in new_by_id.items():
        if base_by_id[uid].score.ref_norm != r.score.ref_norm:
            raise SpeechtlError(
                f"utterance {uid!r} has different references in the two reports "
                f"({base_by_id[uid].score.ref_norm!r} vs {r.score.ref_norm!r}); evaluate both on the same manifest"
            )
    n_resamples = n_resamples or int(adapted.meta.get("n_bootstrap") or N_BOOTSTRAP)
    seed = seed if seed is not None else int(adapted.meta.get("seed") or 0)
    target = target_accent or adapted.target_accent or baseline.target_accent
    accents = sorted({r.accent for r in adapted.utterances})
    if target is not None and target not in accents:
        raise SpeechtlError(f"target accent {target!r} is not among the evaluated accents: {', '.join(accents)}")
    heldout = {r.accent for r in adapted.utterances if r.heldout} | {
        r.accent for r in baseline.utterances if r.heldout
    }

    def change(name: str, ids: list[str]) -> AccentChange | None:
        base_recs = [base_by_id[i] for i in ids]
        new_recs = [new_by_id[i] for i in ids]
        tb, tn = speaker_totals(base_recs), speaker_totals(new_recs)
        keys = list(tb)
        if not keys:
            return None
        eb = np.array([tb[k][0] for k in keys], dtype=np.float64)
        wb = np.array([tb[k][1] for k in keys], dtype=np.float64)
        en = np.array([tn[k][0] for k in keys], dtype=np.float64)
        wn = np.array([tn[k][1] for k in keys], dtype=np.float64)
        res = paired_bootstrap(eb, wb, en, wn, n_resamples=n_resamples, rng=_rng(seed, "paired:" + name))
        wer_b, wer_n = float(eb.sum() / wb.sum()), float(en.sum() / wn.sum())
        return AccentChange(
            accent=name,
            utterances=sum(1 for r in new_recs if not r.score.empty_ref),
            speakers=len(keys),
            words=int(wn.sum()),
            wer_base=wer_b,
            wer_adapted=wer_n,
            delta=res.delta,
            rel_delta=None if wer_b == 0 else res.delta / wer_b,
            ci_low=res.ci_low if len(keys) > 1 else None,
            ci_high=res.ci_high if len(keys) > 1 else None,
            p_value=res.p_value if len(keys) > 1 else None,
            p_improve=res.p_improve if len(keys) > 1 else None,
            heldout=name in heldout,
            target=name == target,
        )

    ids_by_accent: dict[str, list[str]] = defaultdict(list)
    for r in adapted.utterances:
        ids_by_accent[r.accent].append(r.id)
    # Seen accents first, held-out ones after, as in the report's tables.
    accents.sort(key=lambda a: (a in heldout, a))
    changes = [c for a in accents if (c := change(a, ids_by_accent[a])) is not None]
    overall = change("ALL", [r.id for r in adapted.utterances])
    if overall is None:
        raise SpeechtlError("every reference is empty after normalisation; there is nothing to compare")
    seen_part = heldout_part = None
    if heldout:
        heldout_part = change("held-out", [r.id for r in adapted.utterances if r.accent in heldout])
        if heldout_part is not None:
            heldout_part.heldout = True
        if any(r.accent not in heldout for r in adapted.utterances):
            seen_part = change("seen", [r.id for r in adapted.utterances if r.accent not in heldout])
    non_target = [c for c in changes if not c.target]
    forgetting = float(np.mean([max(0.0, c.delta) for c in non_target]) * 100) if non_target else None
    mean_change = float(np.mean([c.delta for c in non_target]) * 100) if non_target else None
    return Comparison(
        base_model=_system_name(baseline.meta),
        adapted_model=_system_name(adapted.meta),
        normalizer=adapted.normalizer,
        target_accent=target,
        accents=changes,
        overall=overall,
        seen=seen_part,
        heldout=heldout_part,
        forgetting_points=forgetting,
        forgetting_accents=[c.accent for c in non_target],
        mean_change_non_target_points=mean_change,
        n_bootstrap=n_resamples,
        seed=seed,
    )


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


def score_utterances(
    utts: Sequence[Utterance],
    hyps: Sequence[str],
    *,
    normalizer: str | Normalizer = "whisper",
    heldout_accents: Iterable[str] = (),
) -> list[UtteranceRecord]:
    """Score hypotheses against the manifest's texts; an utterance is held out when its accent is
    in ``heldout_accents`` or its split is ``test_heldout``."""
    if len(hyps) != len(utts):
        raise SpeechtlError(f"got {len(hyps)} transcripts for {len(utts)} utterances; expected one per utterance")
    bad = next((i for i, h in enumerate(hyps) if not isinstance(h, str)), None)
    if bad is not None:
        raise SpeechtlError(f"transcript for utterance {utts[bad].id!r} is a {type(hyps[bad]).__name__}, not a string")
    held = set(heldout_accents)
    scores = score_pairs([u.text for u in utts], list(hyps), normalizer)
    return [
        UtteranceRecord(
            id=u.id,
            speaker=u.speaker,
            accent=u.accent,
            corpus=u.corpus,
            split=u.split,
            heldout=u.accent in held or u.split == "test_heldout",
            score=s,
        )
        for u, s in zip(utts, scores)
    ]


def evaluate(
    model: Any,
    manifest: str | os.PathLike | Sequence[Utterance],
    *,
    adapter: str | os.PathLike | None = None,
    adapters: dict[str, str | os.PathLike] | None = None,
    accent_classifier: Any = None,
    route: str = "auto",
    min_prob: float = 0.5,
    soft_route: bool = False,
    route_by: str = "utterance",
    normalizer: str | Normalizer = "whisper",
    batch_size: int = 8,
    beam_size: int = 1,
    heldout_accents: Iterable[str] = (),
    target_accent: str | None = None,
    out_dir: str | os.PathLike | None = None,
    transcriber: Transcriber | None = None,
    progress: bool = True,
    splits: Iterable[str] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    device: str | None = None,
) -> Report:
    """Transcribe ``manifest`` with ``model`` (+ ``adapter``) and measure WER per accent.

    Args:
        model: a backbone name, folder or object (see :func:`speechtl.transcribe.transcribe`);
            only recorded in the report when ``transcriber`` is given.
        manifest: a JSONL manifest path or a list of :class:`Utterance`.
        adapters, accent_classifier, route, min_prob, soft_route: route each utterance to the
            adapter of its accent (see :func:`speechtl.transcribe.transcribe`, where ``soft_route``
            is ``soft``); each record keeps its route and probability.
        route_by: ``"utterance"`` (each utterance decides alone) or ``"speaker"`` (with ``route="auto"``,
            a speaker's utterances share one route, chosen on the classifier's evidence pooled over them).
        normalizer: ``whisper``, ``basic``, ``none`` or a normaliser object, applied to
            references and hypotheses alike.
        heldout_accents: accents unseen in training, reported apart (utterances whose split
            is ``test_heldout`` are held out too).
        target_accent: the accent adapted to; recorded and used by :meth:`Report.compare`.
        out_dir: when given, the report is saved there (see :meth:`Report.save`).
        transcriber: ``fn(utterances) -> transcripts`` used instead of the model, e.g. to
            score transcripts produced elsewhere.
        splits: keep only utterances with these ``split`` values (None keeps all).
        n_bootstrap, seed: speaker-bootstrap resamples and their seed.
        device: where the model runs (``cpu``, ``cuda``); the model's own device by default.
    """
    if isinstance(manifest, str | os.PathLike):
        manifest_name = str(manifest)
        utts = read_manifest(manifest)
    else:
        manifest_name = None
        utts = list(manifest)
    if splits is not None:
        wanted = set(splits)
        utts = [u for u in utts if u.split in wanted]
        if not utts:
            raise SpeechtlError(f"{manifest_name or 'manifest'}: no utterance has split in {sorted(wanted)}")
    if not utts:
        raise SpeechtlError(f"{manifest_name or 'manifest'}: holds no utterances to evaluate")
    if batch_size < 1 or beam_size < 1 or n_bootstrap < 1:
        raise SpeechtlError(
            f"batch_size, beam_size and n_bootstrap must be at least 1 (got {batch_size}, {beam_size}, {n_bootstrap})"
        )
    norm = get_normalizer(normalizer)
    accents = sorted({u.accent for u in utts})
    held = list(dict.fromkeys(heldout_accents))
    missing = [a for a in held if a not in accents]
    if missing:
        raise SpeechtlError(
            f"held-out accent(s) {', '.join(missing)} not in the evaluated utterances; "
            f"accents are: {', '.join(accents)}"
        )
    if target_accent is not None:
        if target_accent not in accents:
            raise SpeechtlError(f"target accent {target_accent!r} not in the evaluated utterances; "
                                f"accents are: {', '.join(accents)}")
        if target_accent in held or any(u.split == "test_heldout" and u.accent == target_accent for u in utts):
            raise SpeechtlError(f"target accent {target_accent!r} is also held out; an accent cannot be both")

    routing = bool(adapters) or accent_classifier is not None
    if route_by not in ROUTE_BY:
        raise SpeechtlError(f"route_by={route_by!r}: choose {' or '.join(ROUTE_BY)}")
    if route_by == "speaker" and (not routing or route != "auto"):
        raise SpeechtlError("route_by='speaker' pools the accent classifier's evidence per speaker; it needs "
                            "route='auto' with adapters and an accent_classifier")
    if routing and transcriber is not None:
        raise SpeechtlError("routing (adapters, accent_classifier) needs the model to transcribe, not a transcriber")
    routes = None
    if transcriber is not None:
        hyps = list(transcriber(list(utts)))
    elif routing:
        hyps, routes = _transcribe(model, utts, adapter=adapter, batch_size=batch_size, beam_size=beam_size,
                                   progress=progress, device=device,
                                   routing={"adapters": adapters, "accent_classifier": accent_classifier,
                                            "route": route, "min_prob": min_prob, "soft": soft_route,
                                            "speakers": [u.speaker for u in utts] if route_by == "speaker" else None,
                                            "return_routes": True})
    else:
        hyps = _transcribe(model, utts, adapter=adapter, batch_size=batch_size, beam_size=beam_size,
                           progress=progress, device=device)
    records = score_utterances(utts, hyps, normalizer=norm, heldout_accents=held)
    if routes is not None:
        for rec, r in zip(records, routes):
            rec.route, rec.route_prob, rec.route_weights = r.name, r.prob, r.weights
    meta = {
        "model": _model_name(model) if model is not None else ("transcriber" if transcriber is not None else None),
        "adapter": None if adapter is None else str(adapter),
        "normalizer": norm.name,
        "batch_size": batch_size,
        "beam_size": beam_size,
        "manifest": manifest_name,
        "splits": dict(sorted(Counter(u.split or "none" for u in utts).items())),
        "target_accent": target_accent,
        "heldout_accents": sorted({r.accent for r in records if r.heldout}),
        **({"adapters": {a: str(d) for a, d in (adapters or {}).items()},
            "accent_classifier": str(accent_classifier) if isinstance(accent_classifier, str | os.PathLike)
            else None if accent_classifier is None else type(accent_classifier).__name__,
            "route": route, "min_prob": min_prob, "soft_route": soft_route, "route_by": route_by}
           if routing else {}),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "speechtl_version": _version(),
    }
    report = summarize(records, meta, n_resamples=n_bootstrap, seed=seed)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _transcribe(model: Any, utts: Sequence[Utterance], *, adapter: str | os.PathLike | None, batch_size: int,
                beam_size: int, progress: bool, device: str | None, routing: dict[str, Any] | None = None) -> Any:
    """Transcripts of ``utts`` with a backbone; segments (``offset``/``duration``) are cut first.

    ``routing``: keyword arguments of :func:`speechtl.transcribe.transcribe` for accent routing
    (then ``(texts, routes)`` is returned)."""
    from .transcribe import transcribe

    audio: list[Any] = [u.audio for u in utts]
    if any(u.offset is not None for u in utts):
        from .audio import load_audio
        from .backbones import create_backbone

        # Segments need the model's sample rate, so the backbone is built here once.
        if isinstance(model, str | os.PathLike):
            model = create_backbone(model)
        rate = model.sample_rate
        audio = [
            load_audio(u.audio, rate, offset=u.offset, duration=u.duration, max_seconds=None) if u.offset is not None
            else u.audio
            for u in utts
        ]
    return transcribe(model, audio, batch_size=batch_size, beam_size=beam_size, adapter=adapter, progress=progress,
                      device=device, **(routing or {}))


# --------------------------------------------------------------------------------------------
# Helpers


def _model_name(model: Any) -> str:
    if isinstance(model, str | os.PathLike):
        return str(model)
    return str(getattr(model, "name", type(model).__name__))


def _system_name(meta: dict[str, Any]) -> str:
    name = str(meta.get("model") or "?")
    if meta.get("adapters"):
        return name + f" + routed adapters ({', '.join(meta['adapters'])}; route {meta.get('route')})"
    return name + (f" + {meta['adapter']}" if meta.get("adapter") else "")


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:
        return "unknown"


_atomic_write = atomic_write_text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _ci(g: GroupStats) -> str:
    if g.ci_low is None or g.ci_high is None:
        return "– (1 speaker)" if g.speakers == 1 else "–"
    return f"{100 * g.ci_low:.2f}–{100 * g.ci_high:.2f}"


def _macro_ci(m: MacroStats) -> str:
    return "–" if m.ci_low is None or m.ci_high is None else f"{_pct(m.ci_low)}–{_pct(m.ci_high)}"


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def _rel(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} %"


def _accent_label(name: str, target: bool, heldout: bool) -> str:
    return name + ("*" if target else "") + ("†" if heldout else "")


def _change_cells(c: AccentChange | None) -> list[str]:
    if c is None:
        return ["", "", ""]
    return [_pct(c.wer_base), _signed(c.delta), _p(c.p_value)]


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3f}"


def _delta_ci(c: AccentChange) -> str:
    return "–" if c.ci_low is None or c.ci_high is None else f"{_signed(c.ci_low)}…{_signed(c.ci_high)}"


def _text_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Columns padded to width: the first left-aligned, the rest right-aligned."""
    cells = [header, *[[str(x) for x in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in cells[1:]]]


def _markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return out


from ._callable import callable_module  # noqa: E402

callable_module(__name__, "evaluate")

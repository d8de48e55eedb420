"""Baseline vs adapted: the WER change per accent with paired bootstrap tests, and forgetting.

:func:`compare` (also ``adapted_report.compare(baseline)``) pairs two :class:`~speechtl.report.Report` s
of the same utterances and gives a :class:`Comparison`: absolute and relative WER change per
accent, a paired speaker-bootstrap p-value per accent (:func:`speechtl.stats.paired_bootstrap`),
and the forgetting score.

Forgetting (:func:`forgetting`, the one definition: training-time dev evaluation in
:func:`speechtl.replay.forgetting_dev_fn` uses it too) is ``max(0, WER_after - WER_before)`` of
source speech, in percentage points. A comparison averages it over the non-target accents
(every accent evaluated except the target one, held-out accents included): gains on one accent
do not offset losses on another; 0 means no accent got worse. Without a target accent every
accent counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import render
from .errors import SpeechtlError
from .fileio import atomic_write_text
from .render import system_name
from .stats import N_BOOTSTRAP, paired_bootstrap, seeded_rng, speaker_totals

if TYPE_CHECKING:
    from .report import Report

FORGETTING_DEFINITION = "mean over non-target accents of max(0, WER_adapted - WER_base), in percentage points"


def forgetting(wer_before: float, wer_after: float) -> float:
    """Forgetting on source speech, in WER percentage points: ``max(0, wer_after - wer_before) * 100``.

    ``wer_before``/``wer_after`` are the WERs (fractions) of one group of source (non-target)
    utterances before and after adaptation; a gain counts as 0, never as negative forgetting.
    """
    return max(0.0, float(wer_after) - float(wer_before)) * 100


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
    """Baseline vs adapted: change per accent, overall, and the forgetting score (see :func:`forgetting`).

    ``forgetting_points``: the mean of :func:`forgetting` over ``forgetting_accents`` (every accent
    but the target); ``mean_change_non_target_points``: their mean signed change, in points.
    """

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
        out["forgetting_definition"] = FORGETTING_DEFINITION
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Comparison:
        obj = {k: v for k, v in obj.items() if k != "forgetting_definition"}
        obj["accents"] = [AccentChange(**a) for a in obj["accents"]]
        for key in ("overall", "seen", "heldout"):
            obj[key] = None if obj.get(key) is None else AccentChange(**obj[key])
        return cls(**obj)

    def to_markdown(self) -> str:
        """``comparison.md`` (see :func:`speechtl.render.comparison_markdown`)."""
        return render.comparison_markdown(self)

    def save(self, out_dir: str | os.PathLike, *, plots: bool = True, base: Report | None = None,
             adapted: Report | None = None) -> Path:
        """Write ``comparison.json`` and ``comparison.md`` (and ``wer_vs_baseline.png`` when both reports are given)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "comparison.md", self.to_markdown())
        if plots and base is not None and adapted is not None:
            from .plots import plot_wer_per_accent

            plot_wer_per_accent(adapted, out / "wer_vs_baseline.png", baseline=base)
        atomic_write_text(out / "comparison.json", json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
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
        res = paired_bootstrap(eb, wb, en, wn, n_resamples=n_resamples, rng=seeded_rng(seed, "paired:" + name))
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
    forgetting_points = (float(np.mean([forgetting(c.wer_base, c.wer_adapted) for c in non_target]))
                         if non_target else None)
    mean_change = float(np.mean([c.delta for c in non_target]) * 100) if non_target else None
    return Comparison(
        base_model=system_name(baseline.meta),
        adapted_model=system_name(adapted.meta),
        normalizer=adapted.normalizer,
        target_accent=target,
        accents=changes,
        overall=overall,
        seen=seen_part,
        heldout=heldout_part,
        forgetting_points=forgetting_points,
        forgetting_accents=[c.accent for c in non_target],
        mean_change_non_target_points=mean_change,
        n_bootstrap=n_resamples,
        seed=seed,
    )

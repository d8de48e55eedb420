"""Speaker-level bootstrap statistics for WER: confidence intervals and the paired test.

- WERs are micro: total errors (S + D + I) over total reference words of the group.
- Confidence intervals are percentile intervals of a *cluster* bootstrap over speakers:
  utterances of one speaker are correlated (same voice, often the same prompts), so
  speakers, not utterances, are resampled with replacement; each resample's WER is its
  summed errors over its summed words. With few speakers the interval is wide.
- The paired test resamples speakers once and scores both systems on the same resample;
  ``p_value`` is the two-sided bootstrap p-value of the WER change being zero,
  ``2 * min(P(delta* <= 0), P(delta* >= 0))`` with add-one smoothing, and
  ``p_improve = P(delta* < 0)`` (Bisani & Ney's probability of improvement).

Every input here is per-speaker totals ``(speakers,)``; :mod:`speechtl.report` builds them from
utterance records.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CI_LEVEL = 0.95
N_BOOTSTRAP = 1000
# Resamples are drawn in chunks so that the (resamples, speakers) index matrix stays small.
_MAX_BOOT_CELLS = 4_000_000


def seeded_rng(seed: int, name: str) -> np.random.Generator:
    """A random stream for group ``name``, independent of the order in which groups are visited."""
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


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``samples``."""
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


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
    return percentile_interval(wers, level)


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
    lo, hi = percentile_interval(deltas, level)
    below = int((deltas <= 0).sum())
    above = int((deltas >= 0).sum())
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n_resamples + 1))
    return PairedResult(
        delta=float(delta), ci_low=lo, ci_high=hi, p_value=p, p_improve=float((deltas < 0).mean())
    )


# The names these had inside speechtl.evaluate.
_rng = seeded_rng
_percentile_interval = percentile_interval


def speaker_totals(records: Iterable[Any]) -> dict[str, tuple[int, int]]:
    """``{speaker_key: (errors, words)}`` over non-empty references, speakers in first-seen order."""
    totals: dict[str, list[int]] = {}
    for r in records:
        if r.score.empty_ref:
            continue
        t = totals.setdefault(r.speaker_key, [0, 0])
        t[0] += r.score.errors
        t[1] += r.score.ref_words
    return {k: (e, w) for k, (e, w) in totals.items()}

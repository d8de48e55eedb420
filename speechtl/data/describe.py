"""A corpus described in a few lines of text, as ``speechtl-corpus`` prints it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .manifest import Utterance


def describe_summary(summary: dict[str, Any]) -> list[str]:
    """Totals, one line per accent and the split counts of a :func:`~speechtl.data.manifest.summarize` summary."""
    s = summary
    lines = [f"ok: {s['utterances']} utterances, {s['speakers']} speakers, {s['accents']} accents, {s['hours']:.2f} h"]
    width = max((len(a) for a in s["per_accent"]), default=6)
    for accent, a in s["per_accent"].items():
        lines.append(f"  {accent:<{width}}  {a['utterances']:>7} utts  {a['speakers']:>5} speakers  {a['hours']:8.3f} h")
    lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in s["per_split"].items()))
    return lines


def describe_import(utts: list[Utterance]) -> str:
    """Utterances, speakers and (the first twelve) accents, in one line."""
    accents = sorted({u.accent for u in utts})
    return (f"{len(utts)} utterances, {len({u.speaker for u in utts})} speakers, "
            f"accents: {', '.join(accents[:12])}{' ...' if len(accents) > 12 else ''}")


def describe_synth(utts: list[Utterance]) -> list[str]:
    """One line per accent of a synthetic corpus: utterances, and how many each engine and split holds."""
    lines = []
    for accent in dict.fromkeys(u.accent for u in utts):
        mine = [u for u in utts if u.accent == accent]
        engines, splits = Counter(u.extra.get("engine", "?") for u in mine), Counter(u.split for u in mine)
        lines.append(f"  {accent:<10} {len(mine):>5} utts  engines: "
                     + ", ".join(f"{e} {n}" for e, n in sorted(engines.items()))
                     + "  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    return lines


def describe_splits(utts: list[Utterance]) -> str:
    """Utterances per split, in split order: ``train 80, dev 10, test 10``."""
    counts = Counter(u.split for u in utts)
    return ", ".join(f"{k} {counts[k]}" for k in ("train", "dev", "test", "test_heldout") if counts[k])

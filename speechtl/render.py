"""Rendering of reports and comparisons: markdown (``report.md``, ``comparison.md``) and terminal tables.

Numbers are fractions in the data (:mod:`speechtl.report`) and percent here: ``_pct(0.125)`` is
``12.50``. :meth:`Report.to_markdown`, :meth:`Report.format_table` and
:meth:`Comparison.to_markdown` call the functions of this module.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .stats import CI_LEVEL

if TYPE_CHECKING:
    from .comparison import AccentChange, Comparison
    from .report import GroupStats, MacroStats, Report, UtteranceRecord


# --------------------------------------------------------------------------------------------
# Cells


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


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3f}"


def _accent_label(name: str, target: bool, heldout: bool) -> str:
    return name + ("*" if target else "") + ("†" if heldout else "")


def _change_cells(c: AccentChange | None) -> list[str]:
    if c is None:
        return ["", "", ""]
    return [_pct(c.wer_base), _signed(c.delta), _p(c.p_value)]


def _delta_ci(c: AccentChange) -> str:
    return "–" if c.ci_low is None or c.ci_high is None else f"{_signed(c.ci_low)}…{_signed(c.ci_high)}"


def system_name(meta: dict[str, Any]) -> str:
    """The evaluated system in words: the model, and its adapter or routed adapters."""
    name = str(meta.get("model") or "?")
    if meta.get("adapters"):
        return name + f" + routed adapters ({', '.join(meta['adapters'])}; route {meta.get('route')})"
    return name + (f" + {meta['adapter']}" if meta.get("adapter") else "")


# --------------------------------------------------------------------------------------------
# Tables


def text_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Columns padded to width: the first left-aligned, the rest right-aligned."""
    cells = [header, *[[str(x) for x in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in cells[1:]]]


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return out


# --------------------------------------------------------------------------------------------
# Report


def report_markdown(report: Report) -> str:
    """``report.md``: WER per accent, summary, routes, WER per speaker, frequent errors."""
    m = report.meta
    lines = [f"# WER report: {system_name(m)}", ""]
    lines.append(
        f"Normaliser `{m.get('normalizer')}`, beam size {m.get('beam_size')}, "
        f"{report.overall.utterances} utterances, {report.overall.speakers} speakers, {report.overall.words} words. "
        f"Intervals: {int(CI_LEVEL * 100)} % speaker bootstrap "
        f"({m.get('n_bootstrap')} resamples, seed {m.get('seed')})."
    )
    if report.empty_refs:
        lines.append(f"{report.empty_refs} utterance(s) with an empty normalised reference are left out of the WER.")
    lines += ["", "## WER per accent", ""]
    lines += markdown_table(
        ["accent", "utterances", "speakers", "words", "WER %", "95 % CI", "CER %", "S", "D", "I"],
        [[_accent_label(r["accent"], r["target"], r["heldout"]), g.utterances, g.speakers, g.words, _pct(g.wer),
          _ci(g), _pct(g.cer), g.substitutions, g.deletions, g.insertions]
         for r in report.accent_rows() for g in [r["stats"]]],
    )
    lines += ["", "## Summary", ""]
    rows = []
    for label, g in (("all", report.overall), ("seen accents", report.seen), ("held-out accents", report.heldout)):
        if g is not None:
            rows.append([label + " (micro)", g.utterances, g.words, _pct(g.wer), _ci(g)])
    for label, mac in (("seen accents", report.macro), ("held-out accents", report.macro_heldout)):
        if mac is not None:
            plural = "s" if mac.accents != 1 else ""
            rows.append([f"{label} (macro over {mac.accents} accent{plural})", "", "", _pct(mac.wer), _macro_ci(mac)])
    lines += markdown_table(["group", "utterances", "words", "WER %", "95 % CI"], rows)
    if report.heldout_accents:
        lines += ["", f"Held-out (unseen in training) accents: {', '.join(report.heldout_accents)}."]
    lines += routes_markdown(report)
    lines += ["", "## WER per speaker", ""]
    lines += markdown_table(
        ["speaker", "accent", "utterances", "words", "WER %"],
        [[g.name, g.accent or "", g.utterances, g.words, _pct(g.wer)]
         for g in sorted(report.speakers.values(), key=lambda g: (g.accent or "", g.name))],
    )
    if report.confusions:
        lines += ["", "## Most frequent substitutions", ""]
        lines += markdown_table(["reference", "hypothesis", "count"], [list(c) for c in report.confusions])
    if report.deleted or report.inserted:
        lines += ["", "## Most frequent deletions and insertions", ""]
        n = max(len(report.deleted), len(report.inserted))
        lines += markdown_table(
            ["deleted", "count", "inserted", "count"],
            [[*(report.deleted[i] if i < len(report.deleted) else ("", "")),
              *(report.inserted[i] if i < len(report.inserted) else ("", ""))] for i in range(n)],
        )
    return "\n".join(lines) + "\n"


def routes_markdown(report: Report) -> list[str]:
    """The ``## Routes`` section: utterances, probability and WER per route, and accent × route counts."""
    routed = [r for r in report.utterances if r.route is not None]
    if not routed:
        return []
    m = report.meta
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
    lines += markdown_table(["route", "utterances", "share %", "mean adapter probability", "WER %"], rows)
    routes = sorted(by_route)
    accents = sorted({r.accent for r in routed})
    lines += ["", "Utterances per accent (rows) and route (columns):", ""]
    lines += markdown_table(["accent", *routes],
                            [[a, *(sum(r.accent == a for r in by_route[name]) for name in routes)] for a in accents])
    return lines


def report_table(report: Report, comparison: Comparison | None = None) -> str:
    """A plain-text per-accent table for terminals (with the change vs a baseline when given)."""
    header = ["accent", "utts", "words", "WER %", "95 % CI"]
    changes = {}
    if comparison is not None:
        header += ["base %", "change", "p"]
        changes = {c.accent: c for c in comparison.accents}
    rows = []
    for r in report.accent_rows():
        g = r["stats"]
        row = [_accent_label(r["accent"], r["target"], r["heldout"]), g.utterances, g.words, _pct(g.wer), _ci(g)]
        if comparison is not None:
            row += _change_cells(changes.get(r["accent"]))
        rows.append(row)
    for label, g in (("ALL", report.overall), ("seen", report.seen), ("held-out", report.heldout)):
        if g is None:
            continue
        row = [label, g.utterances, g.words, _pct(g.wer), _ci(g)]
        if comparison is not None:
            row += _change_cells(comparison.group(label))
        rows.append(row)
    if report.macro is not None:
        row = [f"macro ({report.macro.accents})", "", "", _pct(report.macro.wer), _macro_ci(report.macro)]
        rows.append(row + ([""] * 3 if comparison is not None else []))
    out = text_table(header, rows)
    notes = []
    if report.target_accent:
        notes.append("* target accent")
    if report.heldout_accents:
        notes.append("† held-out accent")
    if notes:
        out.append("  ".join(notes))
    return "\n".join(out)


def systems_table(baseline: tuple[str, Report], systems: list[tuple[str, Report, Comparison]], *,
                  markdown: bool = False) -> str:
    """WER per accent of a baseline and of each system beside it, with each system's change and p-value.

    ``baseline`` is ``(label, report)``; ``systems`` are ``(label, report, comparison against the
    baseline)``. Rows: the baseline's accents (target marked *, held-out †), then ALL.
    """
    base_label, base = baseline
    header = ["accent", "utts", "speakers", f"{base_label} WER %"]
    for label, _, _ in systems:
        header += [f"{label} WER %", "change", "p"]
    rows = []
    for r in base.accent_rows():
        g = r["stats"]
        row = [_accent_label(r["accent"], r["target"], r["heldout"]), g.utterances, g.speakers, _pct(g.wer)]
        for _, rep, comparison in systems:
            row += _system_cells(rep.accents.get(r["accent"]), comparison.group(r["accent"]))
        rows.append(row)
    row = ["ALL", base.overall.utterances, base.overall.speakers, _pct(base.overall.wer)]
    for _, rep, comparison in systems:
        row += _system_cells(rep.overall, comparison.overall)
    rows.append(row)
    lines = markdown_table(header, rows) if markdown else text_table(header, rows)
    notes = [n for n, on in (("* target accent", base.target_accent), ("† held-out accent", base.heldout_accents))
             if on]
    notes.append("change: WER points against " + base_label + "; p: paired speaker-bootstrap p-value")
    lines += [""] + (["; ".join(notes) + "."] if markdown else ["  ".join(notes)])
    return "\n".join(lines) + "\n"


def _system_cells(g: GroupStats | None, c: AccentChange | None) -> list[str]:
    if g is None:
        return ["", "", ""]
    return [_pct(g.wer), "" if c is None else _signed(c.delta), "" if c is None else _p(c.p_value)]


# --------------------------------------------------------------------------------------------
# Comparison


def comparison_markdown(c: Comparison) -> str:
    """``comparison.md``: the change per accent with its interval and p-values, and the forgetting score."""
    lines = [f"# {c.adapted_model} vs baseline {c.base_model}", ""]
    lines += markdown_table(
        ["accent", "utterances", "speakers", "base WER %", "adapted WER %", "change (points)", "95 % CI",
         "relative", "p", "P(better)"],
        [[_accent_label(a.accent, a.target, a.heldout), a.utterances, a.speakers, _pct(a.wer_base),
          _pct(a.wer_adapted), _signed(a.delta), _delta_ci(a), _rel(a.rel_delta), _p(a.p_value),
          "–" if a.p_improve is None else f"{a.p_improve:.2f}"]
         for a in [*c.accents, c.overall, c.seen, c.heldout] if a is not None],
    )
    lines.append("")
    if c.forgetting_points is not None:
        lines.append(
            f"Forgetting: **{c.forgetting_points:.2f} points** — the mean over the non-target accents "
            f"({', '.join(c.forgetting_accents)}) of max(0, WER_adapted − WER_base). Mean signed change "
            f"over them: {c.mean_change_non_target_points:+.2f} points."
        )
    else:
        lines.append("Forgetting: not defined (no accent other than the target was evaluated).")
    lines.append(
        f"p: two-sided paired speaker-bootstrap p-value of the change ({c.n_bootstrap} resamples, "
        f"seed {c.seed}); P(better): share of resamples where the adapted WER is lower."
    )
    return "\n".join(lines) + "\n"


def forgetting_line(c: Comparison) -> str:
    """The forgetting score in one line, for terminals."""
    if c.forgetting_points is None:
        return "forgetting: not defined (no accent other than the target)"
    return (f"forgetting: {c.forgetting_points:.2f} points (mean over non-target accents of "
            f"max(0, WER change); mean signed change {c.mean_change_non_target_points:+.2f})")


# The names these had inside speechtl.evaluate.
_system_name = system_name
_text_table = text_table
_markdown_table = markdown_table

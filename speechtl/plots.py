"""Figures for reports: WER per accent (optionally against a baseline) and training curves.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, so no
display and no global ``pyplot`` state are involved; files are written under a temporary
name and renamed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpeechtlError
from .fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import Report

_BASE_COLOR = "#9e9e9e"
_ADAPTED_COLOR = "#1f77b4"
_SYSTEM_COLORS = (_ADAPTED_COLOR, "#2ca02c", "#ff7f0e", "#9467bd")
_HELDOUT_HATCH = "//"


def plot_wer_per_accent(
    report: Report, path: str | os.PathLike, *, baseline: Report | None = None, title: str | None = None
) -> Path:
    """Bar chart of WER (%) per accent with 95 % CI error bars; baseline bars beside when given.

    Held-out accents are hatched and marked †, the target accent is marked *. Accents only in
    one of the two reports are drawn for that report alone.
    """
    systems: list[tuple[str, Report]] = []
    if baseline is not None:
        systems.append((_system_label(baseline, "baseline"), baseline))
    systems.append((_system_label(report, "adapted" if baseline is not None else "model"), report))
    return plot_wer_systems(systems, path, title=title)


def plot_wer_systems(systems: list[tuple[str, Report]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Bar chart of WER (%) per accent for several systems side by side, ``[(label, report), ...]``.

    The first system is drawn grey (the baseline), the others in distinct colours; 95 % CI error
    bars, held-out accents hatched and marked †, the target accent (of the last report) marked *.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not systems:
        raise SpeechtlError("plot_wer_systems needs at least one (label, report)")
    last = systems[-1][1]
    names = [r["accent"] for r in last.accent_rows()]
    for _, rep in systems:
        names += [a for a in rep.accents if a not in names]
    labels = []
    for name in names:
        g = next((rep.accents[name] for _, rep in reversed(systems) if name in rep.accents), None)
        mark = ("*" if name == last.target_accent else "") + ("†" if g is not None and g.heldout else "")
        labels.append(name + mark)
    colors = [_BASE_COLOR] if len(systems) > 1 else []
    colors += [_SYSTEM_COLORS[k % len(_SYSTEM_COLORS)] for k in range(len(systems) - len(colors))]

    fig = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(names) * len(systems) ** 0.5), 4.2), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / len(systems)
    top = 0.0
    for k, ((label, rep), color) in enumerate(zip(systems, colors)):
        xs, ys, lo, hi, hatches = [], [], [], [], []
        for i, name in enumerate(names):
            g = rep.accents.get(name)
            if g is None or g.wer is None:
                continue
            x = i - 0.4 + width * (k + 0.5)
            y = 100 * g.wer
            xs.append(x)
            ys.append(y)
            lo.append(y - 100 * g.ci_low if g.ci_low is not None else 0.0)
            hi.append(100 * g.ci_high - y if g.ci_high is not None else 0.0)
            hatches.append(_HELDOUT_HATCH if g.heldout else "")
            top = max(top, y + hi[-1])
        bars = ax.bar(xs, ys, width=width * 0.95, color=color, label=label, yerr=[lo, hi], capsize=3,
                      error_kw={"elinewidth": 1, "ecolor": "#333333"})
        for bar, hatch, y, up in zip(bars, hatches, ys, hi):
            bar.set_hatch(hatch)
            # Above the error bar, where the label cannot collide with it.
            ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y + up), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    crowded = len(names) > 5
    ax.set_xticks(range(len(names)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("WER (%)")
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, texts = ax.get_legend_handles_labels()
    if any(g.heldout for _, rep in systems for g in rep.accents.values()):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=_HELDOUT_HATCH))
        texts.append("held-out accent (†)")
    ax.legend(handles, texts, fontsize=8, loc="upper left")
    default_title = "WER per accent, 95 % speaker-bootstrap CI" + (" (* target)" if last.target_accent else "")
    ax.set_title(title or default_title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a training metrics JSONL into ``(train_rows, eval_rows)``.

    Every line is a JSON object; lines with a ``loss`` are training rows, lines with a key
    starting with ``dev_`` are evaluation rows (a line may be both); lines without an integer
    ``step`` (headers, notes) are skipped. Nested dicts of an evaluation row (e.g.
    ``{"dev_wer_per_accent": {"US": 0.1}}``) are flattened to ``dev_wer_per_accent/US``. The lines
    training writes after each evaluation, ``{"step", "eval": {"wer", ...}}``, read as ``dev_wer``, ....
    A file with neither kind of row is an error (nothing to plot).
    """
    p = Path(path)
    if not p.is_file():
        raise SpeechtlError(f"{p}: no such metrics file; give the metrics.jsonl written by training")
    train, evals = [], []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpeechtlError(f"{p}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise SpeechtlError(f"{p}:{lineno}: a JSON {type(obj).__name__}, not an object")
        step = obj.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        flat: dict[str, Any] = {}
        for k, v in obj.items():
            if k == "eval" and isinstance(v, dict):  # training's evaluation lines: {"eval": {"wer", "loss", ...}}
                flat.update({f"dev_{kk}": vv for kk, vv in v.items()})
            elif isinstance(v, dict):
                flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        if _number(flat.get("loss")) is not None:
            train.append(flat)
        if any(k.startswith("dev_") and _number(v) is not None for k, v in flat.items()):
            evals.append(flat)
    if not train and not evals:
        raise SpeechtlError(f"{p}: no line has a step with a loss or a dev_ metric; nothing to plot")
    return train, evals


def plot_learning_curves(
    metrics: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Training loss (and learning rate, on a second axis) and dev WER against step.

    ``metrics`` is a JSONL file: training lines ``{"step", "loss", "lr"}`` and evaluation lines
    ``{"step", "dev_wer", ...}`` with WERs as fractions. Every numeric ``dev_*wer*`` key gets a
    line on the WER panel and ``dev_loss`` joins the loss panel.
    """
    from matplotlib.figure import Figure

    train, evals = read_metrics(metrics)
    wer_keys = sorted({k for r in evals for k, v in r.items()
                       if k.startswith("dev_") and "wer" in k and _number(v) is not None})
    panels = (1 if train or any("dev_loss" in r for r in evals) else 0) + (1 if wer_keys else 0)
    fig = Figure(figsize=(7, 3.2 * panels), dpi=120)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    i = 0
    if panels == 2 or not wer_keys:
        ax = axes[0]
        if train:
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=_ADAPTED_COLOR, lw=1,
                    label="train loss")
        dev_loss = [(r["step"], r["dev_loss"]) for r in evals if _number(r.get("dev_loss")) is not None]
        if dev_loss:
            ax.plot(*zip(*dev_loss), "o-", color="#d62728", ms=3, label="dev loss")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        lr = [(r["step"], r["lr"]) for r in train if _number(r.get("lr")) is not None]
        lines, labels = ax.get_legend_handles_labels()
        if lr:
            ax2 = ax.twinx()
            ax2.plot(*zip(*lr), color=_BASE_COLOR, lw=1, ls="--", label="learning rate")
            ax2.set_ylabel("learning rate")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            l2, t2 = ax2.get_legend_handles_labels()
            lines, labels = lines + l2, labels + t2
        ax.legend(lines, labels, fontsize=8, loc="upper right")
        i = 1
    if wer_keys:
        ax = axes[i]
        for k in wer_keys:
            pts = [(r["step"], 100 * r[k]) for r in evals if _number(r.get(k)) is not None]
            ax.plot(*zip(*pts), "o-", ms=3, lw=1.5 if k == "dev_wer" else 1, label=k)
        ax.set_ylabel("dev WER (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    axes[0].set_title(title or "Learning curves", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _system_label(report: Report, default: str) -> str:
    name = report.meta.get("model") or default
    adapter = report.meta.get("adapter")
    return f"{default}: {name}" + (f" + {Path(adapter).name}" if adapter else "")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    atomic_write(out, lambda f: fig.savefig(f, format="png"), what="the plot")
    return out

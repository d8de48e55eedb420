"""Classification metrics, in one place: accuracy, per-class recall, the confusion matrix, macro-F1.

Labels are any hashable values (class names, or class indices); ``gold`` and ``pred`` are
sequences of equal length. Used by accent identification (:mod:`speechtl.accent_id`), the
training-time dev metric (:func:`speechtl.tasks.classification_dev_fn`) and image/text
classification (:func:`speechtl.data.classify.classification_metrics`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _check(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not len(gold):
        raise ValueError("no examples to score")


def accuracy(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """The fraction of predictions equal to their gold label."""
    _check(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def confusion_matrix(gold: Sequence[Hashable], pred: Sequence[Hashable], labels: Sequence[Hashable],
                     rows: Sequence[Hashable] | None = None) -> list[list[int]]:
    """``matrix[i][j]``: examples of gold class ``rows[i]`` predicted as ``labels[j]``.

    ``labels`` are the classes a prediction can take (columns); ``rows`` the gold classes
    (default ``labels``), which may include classes never predicted. Raises ``ValueError`` for a
    gold label not in ``rows`` or a prediction not in ``labels``.
    """
    _check(gold, pred)
    rows = list(labels) if rows is None else list(rows)
    col = {c: j for j, c in enumerate(labels)}
    row = {r: i for i, r in enumerate(rows)}
    matrix = [[0] * len(col) for _ in rows]
    for g, p in zip(gold, pred):
        if g not in row or p not in col:
            raise ValueError(f"gold {g!r} or prediction {p!r} is not among the classes")
        matrix[row[g]][col[p]] += 1
    return matrix


def per_class_recall(gold: Sequence[Hashable], pred: Sequence[Hashable],
                     classes: Sequence[Hashable] | None = None) -> dict[Hashable, float | None]:
    """``{class: fraction of its gold examples predicted as it}``; None for a class without gold examples.

    ``classes`` default to the gold classes in first-seen order.
    """
    _check(gold, pred)
    classes = list(dict.fromkeys(gold)) if classes is None else list(classes)
    total = dict.fromkeys(classes, 0)
    right = dict.fromkeys(classes, 0)
    for g, p in zip(gold, pred):
        if g in total:
            total[g] += 1
            right[g] += int(g == p)
    return {c: right[c] / total[c] if total[c] else None for c in classes}


def macro_f1(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in ``gold`` or ``pred``, as scikit-learn's
    ``f1_score(average="macro", zero_division=0)``: a class with no true positive scores 0."""
    _check(gold, pred)
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    f1s = []
    for c in sorted(set(gold) | set(pred), key=repr):
        tp = float(np.sum((g == c) & (p == c)))
        fp = float(np.sum((g != c) & (p == c)))
        fn = float(np.sum((g == c) & (p != c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)
    return float(np.mean(f1s))

"""Image and text classification data: JSONL manifests, datasets, the task and its metrics.

Manifests hold one JSON object per line: images as ``{"path": ..., "label": ...}`` and texts as
``{"text": ..., "label": ...}``; ``id`` and ``split`` are optional and other keys are kept in
:attr:`ClassifyExample.extra`. Relative image paths resolve against the manifest's folder, so a
folder of images and its manifest move together. Labels are strings (integers are accepted and
read as their decimal string).

Example lines::

    {"id": "digits-0007", "path": "images/0007.png", "label": "7", "split": "train"}
    {"id": "wn-00042", "text": "he ate the cake", "label": "verb.consumption", "split": "test"}

:class:`ClassifyDataset` yields ``{"id", "input", "label"}`` dicts (``input`` is an RGB PIL image
or a string); :class:`ClassifyTask` batches them for any image or text backbone adapted with a
classifier head and trains through :func:`speechtl.training.train` like the speech tasks.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from ..tasks import ClassificationTask
from .manifest import ManifestError
from ..fileio import atomic_write_text

Kind = Literal["image", "text"]
_INPUT_KEY: dict[str, str] = {"image": "path", "text": "text"}


@dataclass
class ClassifyExample:
    """One labelled image or text. ``input`` is an absolute image path (images) or the text itself."""

    id: str
    input: str
    label: str
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _kind_of(obj: dict[str, Any], where: str) -> Kind:
    if "path" in obj and "text" not in obj:
        return "image"
    if "text" in obj and "path" not in obj:
        return "text"
    raise ManifestError(f"{where}: a line needs exactly one of 'path' (image) or 'text'")


def read_classify_manifest(path: str | os.PathLike, kind: Kind | None = None) -> tuple[list[ClassifyExample], Kind]:
    """Read a classification manifest; returns the examples and their kind (``image`` or ``text``).

    The kind comes from the first line's keys unless given. Raises :class:`ManifestError` naming
    ``file:line`` for a missing file, bad JSON, a missing or mistyped key, a missing image file
    or a repeated id.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: no such manifest file; give the path of a .jsonl manifest")
    base = p.resolve().parent
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{p}: not valid UTF-8 (byte {e.start}); re-save the manifest as UTF-8") from None
    out: list[ClassifyExample] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(
                f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: a JSON {type(obj).__name__}, not an object; write one JSON object per line")
        if kind is None:
            kind = _kind_of(obj, where)
        key = _INPUT_KEY[kind]
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"{where}: {kind} manifests need a non-empty string {key!r}")
        label = obj.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise ManifestError(f"{where}: 'label' must be a non-empty string (or an integer), got {label!r}")
        if kind == "image":
            value = str((base / value).resolve()) if not os.path.isabs(value) else value
            if not os.path.isfile(value):
                raise ManifestError(f"{where}: image file {value} not found; fix the path "
                                    "(relative paths start at the manifest's folder)")
        ex_id = obj.get("id", f"{p.stem}-{lineno}")
        if not isinstance(ex_id, str) or not ex_id:
            raise ManifestError(f"{where}: 'id' must be a non-empty string, got {ex_id!r}")
        if ex_id in seen:
            raise ManifestError(f"{where}: id {ex_id!r} repeats line {seen[ex_id]}; ids must be unique")
        seen[ex_id] = lineno
        split = obj.get("split")
        if split is not None and not isinstance(split, str):
            raise ManifestError(f"{where}: 'split' must be a string, got {split!r}")
        extra = {k: v for k, v in obj.items() if k not in ("id", key, "label", "split")}
        out.append(ClassifyExample(ex_id, value, str(label), split, extra))
    if not out:
        raise ManifestError(f"{p}: the manifest has no examples")
    return out, kind


def write_classify_manifest(examples: Iterable[ClassifyExample], path: str | os.PathLike, kind: Kind) -> None:
    """Write ``examples`` atomically (temp file in the same folder, then rename); image paths under
    the manifest's folder are written relative to it."""
    p = Path(path)
    folder = p.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    key = _INPUT_KEY[kind]
    lines, seen = [], set()
    for ex in examples:
        if ex.id in seen:
            raise ManifestError(f"{p}: id {ex.id!r} appears twice; ids in a manifest must be unique")
        seen.add(ex.id)
        value = ex.input
        if kind == "image":
            if Path(value).resolve().is_relative_to(folder):
                value = os.path.relpath(Path(value).resolve(), folder)
        obj: dict[str, Any] = {"id": ex.id, key: value, "label": ex.label}
        if ex.split is not None:
            obj["split"] = ex.split
        obj.update({k: v for k, v in ex.extra.items() if k not in obj})
        lines.append(json.dumps(obj, ensure_ascii=False))
    atomic_write_text(folder / p.name, "".join(line + "\n" for line in lines))


def label_set(examples: Iterable[ClassifyExample]) -> list[str]:
    """Distinct labels in a stable order: numerically when all are integers, else alphabetically."""
    labels = {ex.label for ex in examples}
    if all(re.fullmatch(r"-?\d+", lb) for lb in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def split_examples(examples: Iterable[ClassifyExample], split: str) -> list[ClassifyExample]:
    return [ex for ex in examples if ex.split == split]


def stratified_subset(examples: Sequence[ClassifyExample], fraction: float, *, seed: int = 0) -> list[ClassifyExample]:
    """About ``fraction`` of ``examples`` with every label kept in proportion (at least one each).

    Subsets for growing fractions with one seed are nested: the 5 % subset lies inside the 20 % one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    by_label: dict[str, list[ClassifyExample]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rng = random.Random(seed)
    keep: set[str] = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda e: e.id)
        rng.shuffle(group)
        keep.update(e.id for e in group[: max(1, round(fraction * len(group)))])
    return [ex for ex in examples if ex.id in keep]


# --------------------------------------------------------------------------------------------
# Dataset and task


class ClassifyDataset(Dataset):
    """Items ``{"id", "input", "label"}``: ``input`` is an RGB PIL image (images) or the string (texts).

    Args:
        examples: from :func:`read_classify_manifest`.
        kind: ``image`` or ``text``.
        cache: keep decoded images in memory after the first read (small data sets).
    """

    def __init__(self, examples: Sequence[ClassifyExample], kind: Kind, *, cache: bool = False):
        self.examples = list(examples)
        self.kind = kind
        self.cache = cache
        self._images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        value: Any = ex.input
        if self.kind == "image":
            value = self._images.get(i)
            if value is None:
                from ..backbones.image import to_pil

                value = to_pil(ex.input)
                if self.cache:
                    self._images[i] = value
        return {"id": ex.id, "input": value, "label": ex.label}


class ClassifyTask(ClassificationTask):
    """:class:`~speechtl.tasks.ClassificationTask` over :class:`ClassifyDataset` items (``input``, ``label``).

    ``model`` is an :class:`~speechtl.transfer.AdaptedModel` with a classifier head (``adapt(...,
    labels=[...])``); ``labels`` are its classes in output order. Batches are ``{"inputs", "lengths",
    "labels", "ids", ...}`` from the backbone's ``prepare``.
    """

    def __init__(self, model: nn.Module, labels: Sequence[str], *, input_key: str = "input", label_key: str = "label"):
        super().__init__(model, labels, label_key=label_key, input_key=input_key)


# --------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (unweighted mean of per-class F1 over classes seen in ``gold`` or ``pred``,
    as scikit-learn's ``f1_score(average="macro")``; a class with no true or predicted example scores 0);
    computed by :mod:`speechtl.metrics`."""
    from ..metrics import accuracy, macro_f1

    acc = accuracy(gold, pred)
    return {"accuracy": acc, "macro_f1": macro_f1(gold, pred), "error": 1.0 - acc, "examples": float(len(gold))}


@torch.no_grad()
def predict_all(task: ClassifyTask, model: nn.Module, loader: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Gold and predicted labels over ``loader`` (batches from ``task.collate``); ``model`` is put in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gold: list[str] = []
    pred: list[str] = []
    try:
        for batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            pred += task.predict(model, batch)
            gold += [task.labels[i] for i in batch["labels"].tolist()]
    finally:
        model.train(was_training)
    return gold, pred


def classify_dev_fn(task: ClassifyTask, loader: Iterable[dict[str, Any]]) -> Callable[[nn.Module], dict[str, float]]:
    """A ``dev_fn`` for :func:`speechtl.training.train` giving ``accuracy``, ``macro_f1``, ``error`` and ``examples``."""

    def dev_fn(model: nn.Module) -> dict[str, float]:
        return classification_metrics(*predict_all(task, model, loader))

    return dev_fn

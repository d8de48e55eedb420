"""Accent identification: the trained classifier (:class:`AccentClassifier`) and its scores.

:func:`load_accent_classifier` reads a ``speechtl-adapt --task accent-id`` adapter folder;
routing (:mod:`speechtl.routing`) asks it which accent an utterance has. :func:`evaluate_accent_id`
runs a classifier on a manifest and scores it with :func:`accent_id_scores` into an
:class:`AccentIdReport` (accuracy, recall per accent and the confusion matrix; the metrics
themselves are :mod:`speechtl.metrics`). The names are importable from :mod:`speechtl.routing` too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import SpeechtlError
from .fileio import atomic_write_text
from .metrics import accuracy, confusion_matrix, per_class_recall

if TYPE_CHECKING:
    from torch import nn


def _prepare_for_classification(backbone: nn.Module, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    # Whisper pads to 30 s unless told otherwise; the classifier pools over valid frames only, so the
    # batch is cut to its longest clip (with an attention mask inside the encoder).
    if hasattr(backbone, "short_clips"):
        return backbone.prepare(waves, short_clips=True)
    return backbone.prepare(waves)


class AccentClassifier:
    """A trained accent classifier head with its labels and the encoder it reads.

    Build it with :func:`load_accent_classifier` (a saved ``--task accent-id`` adapter folder) or
    :meth:`from_model` (an adapted model with a classifier head). ``shared`` is True when the head
    reads a router's base encoder instead of its own copy.
    """

    def __init__(self, head: nn.Module, backbone: nn.Module, *, shared: bool = False,
                 model: nn.Module | None = None, base_checksum: str | None = None):
        self.head = head
        self.backbone = backbone
        self.shared = shared
        self.model = model
        self.base_checksum = base_checksum
        self.labels: list[str] = list(head.labels)

    @classmethod
    def from_model(cls, model: nn.Module) -> AccentClassifier:
        """Wrap an :class:`~speechtl.transfer.AdaptedModel` whose head is a classifier."""
        from .heads import ClassifierHead

        if not isinstance(getattr(model, "head", None), ClassifierHead):
            raise SpeechtlError(f"{getattr(model, 'name', model)!r} has no classifier head; train one with "
                                "speechtl-adapt --task accent-id")
        return cls(model.head, model.backbone, model=model, base_checksum=getattr(model, "base_checksum", None))

    @torch.no_grad()
    def probabilities(self, waves: Sequence[np.ndarray], *, batch_size: int = 8,
                      encoder_context: Any = None) -> np.ndarray:
        """Class probabilities ``(len(waves), len(labels))`` for waveforms ``(samples,)`` at the encoder's rate.

        ``encoder_context`` (a context manager factory) wraps each encoder call, e.g. to disable
        a shared encoder's adapters.
        """
        device = next(self.backbone.parameters()).device
        self.head.to(device).eval()
        was_training = self.backbone.training
        self.backbone.eval()
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                inputs, lengths = _prepare_for_classification(self.backbone, [waves[i] for i in idx])
                with encoder_context() if encoder_context is not None else nullcontext():
                    enc = self.backbone.encode(inputs.to(device), lengths.to(device))
                probs = torch.softmax(self.head(enc).float(), dim=-1).cpu().numpy()
                out[idx] = probs
        finally:
            self.backbone.train(was_training)
        return out

    def predict(self, waves: Sequence[np.ndarray], *, batch_size: int = 8) -> list[str]:
        """The most probable accent of each waveform."""
        probs = self.probabilities(waves, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(1)]


def load_accent_classifier(directory: str | os.PathLike, *, backbone: nn.Module | None = None,
                           base_checksum: str | None = None) -> AccentClassifier:
    """Load a saved accent classifier (``speechtl-adapt --task accent-id`` writes ``OUT/adapter``).

    With ``backbone`` and its ``base_checksum`` (the weights before any adaptation) given and
    equal to the classifier's, a ``features``-mode head is put on that backbone's encoder
    (``shared``); otherwise the classifier's own base model is built and loaded.
    """
    from .adapters.saved import SavedAdapter

    saved = SavedAdapter.read(directory)
    head_desc = saved.head or {}
    if head_desc.get("type") != "ClassifierHead":
        raise SpeechtlError(f"{saved.directory}: not an accent classifier (its head is {head_desc.get('type')!r}); "
                            "train one with speechtl-adapt --task accent-id")
    if backbone is not None and base_checksum == saved.base_checksum and saved.method == "features":
        # The head as adapt() built it; keys a folder predates take their defaults.
        head = saved.build_head(backbone)
        return AccentClassifier(head, backbone, shared=True, base_checksum=base_checksum)
    model = saved.build()
    if backbone is not None:
        model.to(next(backbone.parameters()).device)
    model.eval()
    return AccentClassifier.from_model(model)



@dataclass
class AccentIdReport:
    """Accent identification scores on a labelled set.

    ``confusion[i][j]``: utterances of gold accent ``gold[i]`` predicted as ``labels[j]``;
    ``recall[a]``: the fraction of accent ``a``'s utterances predicted as ``a`` (None when the
    set has none of it); ``speakers[s]``: speaker ``s``'s gold accent, utterances and how many of
    them were called right (empty when the utterances carry no speakers).
    """

    labels: list[str]
    gold: list[str]
    confusion: list[list[int]]
    accuracy: float
    recall: dict[str, float | None]
    utterances: int
    meta: dict[str, Any] = field(default_factory=dict)
    speakers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the gold accents present."""
        vals = [r for r in self.recall.values() if r is not None]
        return float(np.mean(vals)) if vals else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "utterances": self.utterances, "accuracy": self.accuracy,
                "balanced_accuracy": self.balanced_accuracy, "recall": self.recall, "labels": self.labels,
                "gold": self.gold, "confusion": self.confusion, "speakers": self.speakers}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AccentIdReport:
        return cls(labels=obj["labels"], gold=obj["gold"], confusion=obj["confusion"], accuracy=obj["accuracy"],
                   recall=obj["recall"], utterances=obj["utterances"], meta=obj.get("meta", {}),
                   speakers=obj.get("speakers", {}))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return path

    def format_table(self) -> str:
        """Accuracy, then a confusion matrix (rows gold, columns predicted) with each accent's recall."""
        width = max(8, *(len(x) for x in self.labels + self.gold))
        lines = [f"accent id: accuracy {100 * self.accuracy:.1f} % ({self.utterances} utterances), "
                 f"balanced accuracy {100 * self.balanced_accuracy:.1f} %",
                 "gold \\ predicted".ljust(width + 2) + "".join(lab.rjust(width + 2) for lab in self.labels)
                 + "recall %".rjust(10)]
        for g, row in zip(self.gold, self.confusion):
            r = self.recall.get(g)
            lines.append(g.ljust(width + 2) + "".join(str(c).rjust(width + 2) for c in row)
                         + (f"{100 * r:.1f}" if r is not None else "-").rjust(10))
        missed = {s: v for s, v in self.speakers.items() if v["correct"] < v["utterances"]}
        if missed:
            lines.append(f"speakers not always right ({len(missed)} of {len(self.speakers)}): " + ", ".join(
                f"{s} ({v['accent']}) {v['correct']}/{v['utterances']}" for s, v in sorted(missed.items())))
        return "\n".join(lines)


def accent_id_scores(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
                     meta: dict[str, Any] | None = None, speakers: Sequence[str | None] | None = None) -> AccentIdReport:
    """Accuracy, per-accent recall and confusion matrix (:mod:`speechtl.metrics`) of ``predicted``
    against ``gold`` accents (and, given each utterance's speaker, how often each speaker was called right).

    ``labels`` are the classifier's classes; gold accents it does not know get a row of their own
    (recall 0)."""
    if len(gold) != len(predicted) or (speakers is not None and len(speakers) != len(gold)):
        raise SpeechtlError(f"got {len(predicted)} predictions for {len(gold)} utterances")
    if not gold:
        raise SpeechtlError("no utterances to score accent identification on")
    labels = list(labels)
    gold_names = list(labels) + sorted(set(gold) - set(labels))  # accents the classifier does not know, last
    unknown = sorted(set(predicted) - set(labels))
    if unknown:
        raise SpeechtlError(f"predicted accent(s) {', '.join(map(str, unknown))} are not among the labels "
                            f"({', '.join(labels)})")
    confusion = confusion_matrix(gold, predicted, labels, rows=gold_names)
    recall = per_class_recall(gold, predicted, gold_names)
    per_speaker: dict[str, dict[str, Any]] = {}
    for s, g, p in zip(speakers or (), gold, predicted):
        if s is None:
            continue
        row = per_speaker.setdefault(s, {"accent": g, "utterances": 0, "correct": 0})
        row["utterances"] += 1
        row["correct"] += int(g == p)
    return AccentIdReport(labels=labels, gold=gold_names, confusion=confusion, accuracy=accuracy(gold, predicted),
                          recall=recall, utterances=len(gold), meta=dict(meta or {}), speakers=per_speaker)


def evaluate_accent_id(classifier: AccentClassifier | nn.Module | str | os.PathLike,
                       manifest: str | os.PathLike | Sequence[Any], *, batch_size: int = 8,
                       splits: Sequence[str] | None = None) -> AccentIdReport:
    """Score an accent classifier on a manifest's ``accent`` fields.

    Args:
        classifier: a saved classifier folder, an :class:`AccentClassifier`, or an adapted model
            with a classifier head.
        manifest: a JSONL manifest path or a list of :class:`~speechtl.data.manifest.Utterance`.
        splits: keep only utterances with these ``split`` values (None keeps all).
    """
    from .audio import load_audio
    from .data.manifest import read_manifest

    if isinstance(classifier, str | os.PathLike):
        classifier = load_accent_classifier(classifier)
    elif not isinstance(classifier, AccentClassifier):
        classifier = AccentClassifier.from_model(classifier)
    name = str(manifest) if isinstance(manifest, str | os.PathLike) else None
    utts = read_manifest(manifest) if name is not None else list(manifest)
    if splits is not None:
        utts = [u for u in utts if u.split in set(splits)]
    if not utts:
        raise SpeechtlError(f"{name or 'manifest'}: no utterances to score accent identification on")
    rate = classifier.backbone.sample_rate
    waves = [load_audio(u.audio, rate, offset=u.offset, duration=u.duration, max_seconds=None)
             if u.offset is not None else load_audio(u.audio, rate) for u in utts]
    probs = classifier.probabilities(waves, batch_size=batch_size)
    predicted = [classifier.labels[i] for i in probs.argmax(1)]
    return accent_id_scores([u.accent for u in utts], predicted, classifier.labels,
                            meta={"manifest": name, "speakers": len({u.speaker for u in utts})},
                            speakers=[u.speaker for u in utts])

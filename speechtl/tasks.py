"""Tasks: what turns a batch into a loss (and into predictions for the dev metric).

The training loop (:mod:`speechtl.training`) knows nothing about speech: it calls
``task.loss(model, batch)``. A task knows its data: ``collate(items) -> batch`` builds the batch
from dataset items (dicts such as ``{"id", "audio", "text", "accent", "speaker"}``) and
``predict(model, batch)`` gives what the dev metric compares.

- :class:`CTCASRTask`: CTC speech recognition through a new CTC head or the backbone's own
  (wav2vec2 family ``lm_head``).
- :class:`Seq2SeqASRTask`: Whisper-style teacher-forced cross-entropy; decoding for the dev WER.
- :class:`ClassificationTask`: one label per utterance (accent, speaker, ...), cross-entropy.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpeechtlError
from .specaug import SpecAugment, specaug_applied

Batch = dict[str, Any]


class Task(Protocol):
    """``collate`` dataset items into a batch; ``loss(model, batch)`` is a scalar tensor."""

    def collate(self, items: list[dict[str, Any]]) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


class _BackboneTask:
    """Shared by the tasks: the backbone's ``prepare`` batches item ``input_key``; optional SpecAugment."""

    def __init__(self, model: nn.Module, *, specaug: SpecAugment | None = None, input_key: str = "audio"):
        self.prepare = model.prepare
        self.specaug = specaug
        self.input_key = input_key

    def collate(self, items: list[dict[str, Any]], **prepare_kwargs: Any) -> Batch:
        """Items (``audio`` ``(samples,)``, ``text``) to ``{"inputs", "lengths", "texts", "ids"}``.

        ``prepare_kwargs`` go to the backbone's ``prepare`` (e.g. Whisper's ``short_clips``)."""
        inputs, lengths = self.prepare([it[self.input_key] for it in items], **prepare_kwargs)
        return {
            "inputs": inputs,
            "lengths": lengths,
            "texts": [it.get("text", "") for it in items],
            "ids": [it.get("id", str(i)) for i, it in enumerate(items)],
        }

    def _augment(self, model: nn.Module):
        backbone = getattr(model, "backbone", model)
        return specaug_applied(backbone, self.specaug, enabled=model.training)


class CTCASRTask(_BackboneTask):
    """CTC speech recognition; ``model`` is an :class:`~speechtl.transfer.AdaptedModel`."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with self._augment(model):
            return model.asr_loss(batch["inputs"], batch["lengths"], batch["texts"])

    def predict(self, model: nn.Module, batch: Batch, *, beam_size: int = 1) -> list[str]:
        return model.generate(batch["inputs"], batch["lengths"], beam_size=beam_size)


class Seq2SeqASRTask(CTCASRTask):
    """Sequence-to-sequence speech recognition (Whisper): the backbone's teacher-forced loss.

    With ``timestamp_share`` > 0 that share of the clips (drawn per batch, seeded by ``seed`` and
    the batch's ids) is trained in Whisper's timestamped form: the speech span that voice-activity
    detection finds in the clip (:func:`speechtl.vad.speech_bounds`) becomes a start and an end
    timestamp token around the transcript, so fine-tuning trains the timestamp mode too (training
    only without them can make Whisper forget it); the rest of the clips keep the ``<|notimestamps|>`` mode.
    """

    def __init__(self, model: nn.Module, *, specaug: SpecAugment | None = None, timestamp_share: float = 0.0,
                 seed: int = 0):
        super().__init__(model, specaug=specaug)
        if not 0.0 <= timestamp_share <= 1.0:
            raise SpeechtlError(f"timestamp_share {timestamp_share}: give a share of the clips between 0 and 1")
        self.timestamp_share = timestamp_share
        self.seed = seed

    def collate(self, items: list[dict[str, Any]], *, timestamps: bool = True, **prepare_kwargs: Any) -> Batch:
        """As :meth:`CTCASRTask.collate`, plus ``spans``: a clip's speech ``(start, end)`` in seconds where it
        trains with timestamp tokens, else ``None`` (all ``None`` with ``timestamps=False``, as for dev decoding)."""
        batch = super().collate(items, **prepare_kwargs)
        if timestamps and self.timestamp_share > 0:
            rng = random.Random(f"{self.seed}:" + "\x1f".join(batch["ids"]))
            batch["spans"] = [_speech_span(it[self.input_key]) if rng.random() < self.timestamp_share else None
                              for it in items]
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with self._augment(model):
            return model.asr_loss(batch["inputs"], batch["lengths"], batch["texts"], spans=batch.get("spans"))


def _speech_span(audio: Any) -> tuple[float, float]:
    """The clip's speech bounds in seconds (the whole clip where voice-activity detection finds none)."""
    from .vad import SAMPLE_RATE, speech_bounds

    wav = audio.numpy() if torch.is_tensor(audio) else audio
    return speech_bounds(wav) or (0.0, len(wav) / SAMPLE_RATE)


class ClassificationTask(_BackboneTask):
    """Utterance classification on the item field ``label_key`` (``accent`` by default).

    ``labels`` are the classes in the classifier head's output order; ``input_key`` names the
    item field the backbone prepares (``audio``; an image or a text for other modalities).
    """

    def __init__(self, model: nn.Module, labels: Sequence[str], *, label_key: str = "accent",
                 specaug: SpecAugment | None = None, input_key: str = "audio"):
        super().__init__(model, specaug=specaug, input_key=input_key)
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.label_key = label_key

    def collate(self, items: list[dict[str, Any]], **prepare_kwargs: Any) -> Batch:
        batch = super().collate(items, **prepare_kwargs)
        try:
            batch["labels"] = torch.tensor([self.index[it[self.label_key]] for it in items])
        except KeyError as e:
            raise SpeechtlError(f"{self.label_key} {e.args[0]!r} is not one of the classes {self.labels}") from None
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with self._augment(model):
            logits = model.classify(batch["inputs"], batch["lengths"])
        return F.cross_entropy(logits.float(), batch["labels"])

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch, **_: Any) -> list[str]:
        logits = model.classify(batch["inputs"], batch["lengths"])
        return [self.labels[i] for i in logits.argmax(-1).tolist()]


def task_for(model: nn.Module, *, specaug: SpecAugment | None = None, label_key: str = "accent",
             timestamp_share: float = 0.0, seed: int = 0) -> Task:
    """The task matching an adapted model's head: classifier, new CTC head, or the backbone's own ASR.

    ``timestamp_share`` (and the ``seed`` that draws its clips) applies to sequence-to-sequence ASR only."""
    from .heads import ClassifierHead, CTCHead

    head = getattr(model, "head", None)
    seq2seq = head is None and model.backbone.task == "seq2seq"
    if timestamp_share and not seq2seq:
        raise SpeechtlError(f"timestamp_share trains Whisper's timestamp tokens; {model.name} with "
                            f"{type(head).__name__ if head is not None else 'its ' + model.backbone.task + ' head'} "
                            "has none: leave timestamp_share at 0")
    if isinstance(head, ClassifierHead):
        return ClassificationTask(model, head.labels, label_key=label_key, specaug=specaug)
    if isinstance(head, CTCHead) or model.backbone.task == "ctc":
        return CTCASRTask(model, specaug=specaug)
    if seq2seq:
        return Seq2SeqASRTask(model, specaug=specaug, timestamp_share=timestamp_share, seed=seed)
    raise SpeechtlError(f"no task fits {model.name} ({model.backbone.task}) without a head; adapt with head=ctc")


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def asr_dev_fn(
    task: CTCASRTask, loader: Iterable[Batch], *, normalizer: str = "whisper", beam_size: int = 1
) -> Callable[[nn.Module], dict[str, float]]:
    """A ``dev_fn`` for :func:`speechtl.training.train`: decode ``loader`` and return ``{"wer", "cer", "utterances"}``."""
    from .wer import cer, wer

    def dev_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        refs: list[str] = []
        hyps: list[str] = []
        for batch in loader:
            hyps += task.predict(model, _to(batch, device), beam_size=beam_size)
            refs += batch["texts"]
        return {"wer": wer(refs, hyps, normalizer), "cer": cer(refs, hyps, normalizer), "utterances": len(refs)}

    return dev_fn


def classification_dev_fn(task: ClassificationTask, loader: Iterable[Batch]) -> Callable[[nn.Module], dict[str, float]]:
    """A ``dev_fn`` returning ``{"accuracy", "error", "loss", "utterances"}``.

    ``error`` = 1 - accuracy (:func:`speechtl.metrics.accuracy`), to minimise; ``loss`` is the mean
    cross-entropy, which breaks ties between evaluations of equal accuracy (the more confident model is kept).
    """
    from .metrics import accuracy

    @torch.no_grad()
    def dev_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        gold: list[int] = []
        pred: list[int] = []
        nll = 0.0
        for batch in loader:
            batch = _to(batch, device)
            logits = model.classify(batch["inputs"], batch["lengths"]).float()
            labels = batch["labels"]
            gold += labels.tolist()
            pred += logits.argmax(-1).tolist()
            nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        total = len(gold)
        acc = accuracy(gold, pred) if total else 0.0
        return {"accuracy": acc, "error": 1.0 - acc, "loss": nll / max(total, 1), "utterances": total}

    return dev_fn

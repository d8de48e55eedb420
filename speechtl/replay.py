"""Forgetting control while adapting to an accent: replay of source speech and distillation.

Adapting a model to one accent tends to make it worse on the speech it handled well before
(catastrophic forgetting). Two standard counter-measures, both off by default:

- **Replay**: every training batch also holds a share of *replay* utterances (native/source
  speech), so the model keeps seeing what it must not forget. :class:`ReplayBatchSampler`
  adds them to the batches of the target-accent sampler, drawn reproducibly from
  ``(seed, epoch)`` so that a resumed run sees the same batches.
- **Distillation**: on the replay utterances, a KL term keeps the adapted model's output
  distributions close to the base model's (Learning without Forgetting, Li & Hoiem 2016).
  The base model is the same network with its adapters switched off (LoRA, bottleneck, ...),
  or a frozen copy taken before training for full fine-tuning. :class:`ReplayTask` wraps the
  ASR task and adds ``distill_weight * KL(base || adapted)`` (softened by ``temperature``,
  scaled by ``temperature**2``) to the usual loss. For Whisper trained on unpadded clips the base
  model still sees each replay clip padded to 30 s, as it was trained and is decoded, so the adapted
  model at the clip's own length learns the base model's 30-s outputs rather than its short-clip slips.

The forgetting score at each dev evaluation comes from :func:`forgetting_dev_fn`: the WER on
held-apart source utterances, and its rise over the base model's WER on them.

Typical use (``speechtl-adapt`` does this for ``replay_manifest=...``)::

    data = ReplayDataset(AudioDataset(target_utts), AudioDataset(native_utts))
    sampler = ReplayBatchSampler(DurationBatchSampler(target_durs, 40 * 0.75), len(target_utts),
                                 len(native_utts), fraction=0.25, seed=0)
    task = ReplayTask(task_for(model), model, distill_weight=1.0)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=task.collate)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpeechtlError


class ReplayDataset:
    """Target items ``0..len(target)-1`` followed by replay items; each item gets ``"replay": bool``."""

    def __init__(self, target: Any, replay: Any):
        self.target, self.replay = target, replay

    def __len__(self) -> int:
        return len(self.target) + len(self.replay)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.target)
        item = dict(self.target[index] if index < n else self.replay[index - n])
        item["replay"] = index >= n
        return item

    def set_epoch(self, epoch: int) -> None:
        for ds in (self.target, self.replay):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)


class ReplayBatchSampler:
    """Adds replay utterances to each batch of ``sampler`` (a batch sampler over the target items).

    A batch of ``n`` target utterances gets ``fraction / (1 - fraction) * n`` replay utterances
    (stochastically rounded), so that replay makes up ``fraction`` of the batch's utterances on
    average. Replay indices are ``num_target + j``; the ``j`` walk a shuffled order of the
    replay set (reshuffled when used up). Everything is drawn from ``(seed, epoch, rank)``, so an
    epoch's batches are the same however often it is iterated — which exact resume relies on.
    """

    def __init__(self, sampler: Any, num_target: int, num_replay: int, fraction: float, seed: int = 0,
                 rank: int = 0):
        if not 0.0 <= fraction < 1.0:
            raise SpeechtlError(f"replay_fraction must be in [0, 1), got {fraction}")
        if num_replay < 1 and fraction > 0:
            raise SpeechtlError("replay_fraction is set but there are no replay utterances")
        self.sampler = sampler
        self.num_target, self.num_replay = num_target, num_replay
        self.fraction, self.seed, self.rank = fraction, seed, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 0x7e91a7])
        ratio = self.fraction / (1.0 - self.fraction)
        order: list[int] = []
        for batch in self.sampler:
            want = ratio * len(batch)
            k = int(math.floor(want)) + int(rng.random() < want - math.floor(want))
            extra: list[int] = []
            while len(extra) < k:
                if not order:
                    order = rng.permutation(self.num_replay).tolist()
                extra.append(self.num_target + order.pop())
            yield list(batch) + extra


class WrappedTask:
    """A task around another (``self.task``); what it does not define (``predict``, ``prepare``, ...) is the inner one's."""

    task: Any

    def __getattr__(self, name: str) -> Any:
        task = self.__dict__.get("task")
        if task is None:
            raise AttributeError(name)
        return getattr(task, name)


class BaseTeacher:
    """The base model as a distillation teacher: ``model`` with its adapters switched off, or (a model
    without adapters: full fine-tuning) a frozen copy of its backbone taken now, before training."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.copy = None if model.adapter_names else copy.deepcopy(model.backbone).eval().requires_grad_(False)

    @contextmanager
    def __call__(self, device: torch.device) -> Iterator[nn.Module]:
        """Inside this block, the backbone that computes the base model's outputs (on ``device``)."""
        if self.copy is not None:
            if next(self.copy.parameters()).device != device:
                self.copy.to(device)
            yield self.copy
            return
        with self.model.adapters_disabled():
            yield self.model.backbone


def padded_teacher_inputs(task: Any, backbone: nn.Module, items: list[dict[str, Any]], inputs: torch.Tensor
                          ) -> torch.Tensor | None:
    """Whisper's 30-s features of ``items`` when the batch's ``inputs`` were cut shorter, else None."""
    if getattr(backbone, "task", None) != "seq2seq" or inputs.shape[-1] >= backbone.max_frames:
        return None
    feats, _ = task.prepare([it[task.input_key] for it in items], short_clips=False)
    return feats


class ReplayTask(WrappedTask):
    """Wraps an ASR task: batches carry a ``replay`` mask; adds a distillation term on replay rows.

    With ``distill_weight=0`` the loss is the wrapped task's (replay utterances are ordinary
    training data). Otherwise the adapted model's logits are computed once for the whole batch:
    the task's loss comes from them, and on the replay rows ``distill_weight * T^2 *
    KL(softmax(base/T) || softmax(adapted/T))``, averaged over the valid positions (Whisper:
    target tokens; CTC: encoder frames), is added. A Whisper batch cut to its longest clip also
    carries ``teacher_inputs``: the replay rows' features padded to 30 s, which the base model reads.
    """

    def __init__(self, task: Any, model: nn.Module, *, distill_weight: float = 0.0, temperature: float = 1.0):
        if distill_weight < 0 or temperature <= 0:
            raise SpeechtlError(f"distill_weight must be >= 0 and distill_temperature > 0 "
                                f"(got {distill_weight}, {temperature})")
        self.task = task
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        self._backbone = model.backbone
        self._teacher: BaseTeacher | None = None
        if self.distill_weight > 0:
            if getattr(model, "head", None) is not None:
                raise SpeechtlError("distillation needs the backbone's own ASR output (Whisper, or a wav2vec2 "
                                    "model with its CTC head); this model trains a new head: set distill_weight=0")
            if getattr(model.backbone, "task", None) not in ("seq2seq", "ctc"):
                raise SpeechtlError(f"distillation applies to speech recognition, not {model.backbone.task!r}")
            self._teacher = BaseTeacher(model)

    def collate(self, items: list[dict[str, Any]], **prepare_kwargs: Any) -> dict[str, Any]:
        batch = self.task.collate(items, **prepare_kwargs)
        batch["replay"] = replay = torch.tensor([bool(it.get("replay", False)) for it in items])
        if self._teacher is not None and bool(replay.any()):
            rows = replay.nonzero().flatten().tolist()
            padded = padded_teacher_inputs(self.task, self._backbone, [items[i] for i in rows], batch["inputs"])
            if padded is not None:
                batch["teacher_inputs"] = padded  # one row per replay row, in order
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        replay = batch.get("replay")
        if self.distill_weight == 0 or replay is None or not bool(replay.any()):
            return self.task.loss(model, batch)
        backbone = model.backbone
        inputs, lengths, texts = batch["inputs"], batch["lengths"], list(batch["texts"])
        rows = replay.to(inputs.device).nonzero().flatten()
        with self.task._augment(model):
            spans = batch.get("spans")
            if backbone.task == "seq2seq":
                logits, targets = backbone.logits(inputs, lengths, texts, spans)
                loss = backbone.loss_from_logits(logits, targets)
                mask = targets[rows] != -100
            else:
                logits, frames = backbone.logits(inputs, lengths)
                loss = backbone.loss_from_logits(logits, frames, texts)
                mask = torch.arange(logits.shape[1], device=logits.device)[None, :] < frames[rows, None]
        sub_texts = [texts[i] for i in rows.tolist()]
        teacher_inputs = batch.get("teacher_inputs")
        teacher_inputs = inputs[rows] if teacher_inputs is None else teacher_inputs.to(inputs.device)
        with torch.no_grad(), self._teacher(inputs.device) as teacher:
            if backbone.task == "seq2seq":
                t_logits, _ = teacher.logits(teacher_inputs, lengths[rows], sub_texts,
                                             None if spans is None else [spans[i] for i in rows.tolist()])
            else:
                t_logits, _ = teacher.logits(inputs[rows], lengths[rows])
        s_logits = logits[rows]
        if t_logits.shape[1] != s_logits.shape[1]:  # CTC: a sub-batch may pad to fewer frames
            t_logits = t_logits[:, : s_logits.shape[1]]
            s_logits, mask = s_logits[:, : t_logits.shape[1]], mask[:, : t_logits.shape[1]]
        return loss + self.distill_weight * distillation_kl(s_logits, t_logits, mask, self.temperature)


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` averaged over positions where ``mask``.

    ``student``, ``teacher``: ``(batch, positions, classes)`` logits; ``mask``: ``(batch, positions)`` bool.
    """
    t = temperature
    s_log = F.log_softmax(student.float() / t, dim=-1)
    t_log = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1)  # (batch, positions)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * t * t


def forgetting_dev_fn(
    dev_fn: Callable[[nn.Module], dict[str, float]] | None,
    source_fn: Callable[[nn.Module], dict[str, float]],
    model: nn.Module,
) -> Callable[[nn.Module], dict[str, float]]:
    """A ``dev_fn`` that adds the source-speech WER and the forgetting score to ``dev_fn``'s results.

    ``source_fn(model)`` scores held-apart source (native) utterances and returns ``{"wer", ...}``.
    The base model's WER on them (``source_wer_base``) is measured once: at the first evaluation
    with the adapters switched off, or right away for a model without adapters (full
    fine-tuning, before it trains). Added keys: ``source_wer``, ``source_wer_base`` and
    ``forgetting`` = ``max(0, source_wer - source_wer_base)`` in WER points (percent;
    :func:`speechtl.comparison.forgetting`, the definition a report comparison averages over the
    non-target accents), so the training log shows forgetting at every evaluation.
    """
    from .comparison import forgetting

    base: dict[str, float] = {}

    def score_base() -> None:
        was_training = model.training
        model.eval()
        ctx = model.adapters_disabled() if getattr(model, "adapter_names", None) else nullcontext()
        with torch.no_grad(), ctx:
            base["wer"] = float(source_fn(model)["wer"])
        model.train(was_training)

    if not getattr(model, "adapter_names", None):
        score_base()

    def fn(m: nn.Module) -> dict[str, float]:
        if not base:
            score_base()
        out = dict(dev_fn(m)) if dev_fn is not None else {}
        wer = float(source_fn(m)["wer"])
        out["source_wer"] = wer
        out["source_wer_base"] = base["wer"]
        out["forgetting"] = forgetting(base["wer"], wer)
        return out

    return fn

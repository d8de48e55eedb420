"""Short-context distillation: teach Whisper to transcribe a clip encoded at its own length as it does at 30 s.

Whisper always saw 30 s of audio in pre-training, so an utterance of a few seconds is padded to
30 s and most of the encoder's work goes to silence. Encoded unpadded, the pretrained model
drifts: it repeats itself or stops early. Adapters trained on unpadded clips learn the short
context along with their accent; this objective teaches it on its own, for the base model (the
route of native speech), in the spirit of FUTO's whisper-acft: the student is the adapted model
reading each clip's features only up to the clip's end (the batch cut to its longest clip), the
teacher is the base model reading the same clip padded to 30 s, and the loss is
``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` over the transcript's tokens (teacher
forcing; the transcript's end-of-text included, which is where an unpadded model goes wrong).
There is no cross-entropy on the transcripts: the student learns the base model's behaviour,
not the transcripts', so an adapter trained this way on native speech keeps the base model's
WER while it decodes short.

With ``distill_targets=teacher`` the tokens the decoder is forced along are the base model's own
30-s transcripts (:func:`teacher_transcripts`, decoded once before training) rather than the
manifest's: sequence-level distillation. The student then learns the teacher's distributions on
the paths the teacher takes when it decodes, which is what short decoding must reproduce; where
the teacher misreads a clip (accented or noisy speech), a reference transcript would force both
models through states neither visits at inference. The manifest's text is not used, so unlabelled
audio (lines whose ``text`` is empty) serves as well, and dev WER becomes the student's
disagreement with the teacher.

The run folder keeps those transcripts (``teacher_targets/``, with checksums), so ``--resume``
reads them back instead of decoding every clip again.

``speechtl-adapt --method lora objective=short-context`` trains it; the adapter records
``short_clips: true``, so ``speechtl-transcribe --adapter DIR`` decodes short by default, and
``--adapters base=DIR`` makes it the base route of accent routing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checksums import verify_checksums, write_checksums
from .errors import SpeechtlError
from .fileio import atomic_replace_dir, staging_dir
from .replay import BaseTeacher, WrappedTask, distillation_kl, padded_teacher_inputs


class ShortContextTask(WrappedTask):
    """Wraps a Whisper :class:`~speechtl.tasks.Seq2SeqASRTask`: the loss is the short-context distillation term.

    ``collate`` builds the batch the wrapped task builds (``inputs`` cut to the longest clip,
    ``spans`` where the task draws timestamps) plus ``teacher_inputs``, the same clips padded to
    30 s (absent when the longest clip fills 30 s, so the batch was not cut). ``predict`` and the
    rest come from the wrapped task, so dev decoding is unchanged.
    """

    def __init__(self, task: Any, model: nn.Module, *, temperature: float = 1.0):
        backbone = model.backbone
        if getattr(model, "head", None) is not None or getattr(backbone, "task", None) != "seq2seq":
            what = type(model.head).__name__ if getattr(model, "head", None) is not None else backbone.task
            raise SpeechtlError(f"objective=short-context distils Whisper's own decoder; {model.name} ({what}) "
                                "has none: use objective=transcripts")
        if not getattr(backbone, "short_clips", False):
            raise SpeechtlError("objective=short-context teaches the model clips encoded at their own length; "
                                "with short_clips=false the student reads 30 s like the teacher: set short_clips=true")
        if temperature <= 0:
            raise SpeechtlError(f"distill_temperature must be > 0, got {temperature}")
        self.task = task
        self.temperature = float(temperature)
        self._backbone = backbone
        self._teacher = BaseTeacher(model)

    def teacher_targets(self, utts: Sequence[Any], *, device: torch.device | None = None,
                        progress: bool = False) -> list[Any]:
        """:func:`teacher_transcripts` of ``utts`` by the base model (the adapters switched off), on ``device``
        (the model is moved there, where training will put it; default: where it is)."""
        if device is not None:
            self._teacher.model.to(device)
        device = next(self._backbone.parameters()).device
        with torch.no_grad(), self._teacher(device) as teacher:
            return teacher_transcripts(teacher, utts, progress=progress)

    def collate(self, items: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        batch = self.task.collate(items, **kwargs)
        padded = padded_teacher_inputs(self.task, self._backbone, items, batch["inputs"])
        if padded is not None:
            batch["teacher_inputs"] = padded
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        backbone = model.backbone
        inputs, lengths, texts = batch["inputs"], batch["lengths"], list(batch["texts"])
        spans = batch.get("spans")
        # A batch whose longest clip fills 30 s is not cut: teacher and student read the same features.
        teacher_inputs = batch.get("teacher_inputs", inputs)
        with self.task._augment(model):
            s_logits, targets = backbone.logits(inputs, lengths, texts, spans)
        with torch.no_grad(), self._teacher(inputs.device) as teacher:
            t_logits, _ = teacher.logits(teacher_inputs.to(inputs.device), lengths, texts, spans)
        return distillation_kl(s_logits, t_logits, targets != -100, self.temperature)


def teacher_transcripts(backbone: nn.Module, utts: Sequence[Any], *, batch_size: int = 8, chunk: int = 256,
                        progress: bool = False) -> list[Any]:
    """Per utterance, a copy whose text is ``backbone``'s transcript at 30 s, or None where that is empty.

    ``backbone`` is the base model (a backbone whose adapters are switched off serves). Decoding is
    :func:`speechtl.transcribe`'s (greedy with the temperature fallback, every clip padded to 30 s), ``chunk``
    clips read at a time.
    """
    from .data.loader import AudioDataset
    from .transcription import transcribe

    data = AudioDataset(utts, backbone.sample_rate)
    out: list[Any] = []
    for start in range(0, len(utts), chunk):
        idx = range(start, min(start + chunk, len(utts)))
        texts = transcribe(backbone, [data[i]["audio"] for i in idx], batch_size=batch_size, short_clips="off",
                           progress=False)
        out += [dataclasses.replace(utts[i], text=t) if t.strip() else None for i, t in zip(idx, texts)]
        if progress:
            print(f"short-context targets: the base model transcribed {idx.stop}/{len(utts)} clips at 30 s",
                  file=sys.stderr)
    return out


TEACHER_TARGETS = "teacher_targets"  # the run folder's record of the teacher's transcripts
_TARGETS_FILE = "targets.jsonl"
_KIND = "teacher-targets"


def save_teacher_targets(run_dir: str | os.PathLike, *, utts: Sequence[Any], labelled: Sequence[Any]) -> None:
    """Write ``labelled`` (:func:`teacher_transcripts` of ``utts``) into ``run_dir/teacher_targets`` with its
    checksums, in one rename."""
    folder = Path(run_dir) / TEACHER_TARGETS
    rows = [{"id": u.id, "audio": u.audio, "offset": u.offset, "text": None if v is None else v.text}
            for u, v in zip(utts, labelled, strict=True)]
    with staging_dir(folder) as tmp:
        (tmp / _TARGETS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        write_checksums(tmp, kind=_KIND)
        atomic_replace_dir(tmp, folder, overwrite=True)


def load_teacher_targets(run_dir: str | os.PathLike, utts: Sequence[Any]) -> list[Any] | None:
    """What :func:`save_teacher_targets` kept in ``run_dir`` for ``utts``, as :func:`teacher_transcripts` returns it.

    None when ``run_dir`` has no ``teacher_targets`` folder, or one of other clips (their ids, files or
    offsets differ). A record that was modified or truncated is an error.
    """
    folder = Path(run_dir) / TEACHER_TARGETS
    if not folder.exists():
        return None
    verify_checksums(folder, lambda detail: SpeechtlError(
        f"{folder}: the base model's saved transcripts were modified or truncated ({detail}); remove that "
        "folder and resume again (the base model then transcribes the clips anew)"), kind=_KIND)
    rows = [json.loads(line) for line in (folder / _TARGETS_FILE).read_text(encoding="utf-8").splitlines()]
    if [(r["id"], r["audio"], r["offset"]) for r in rows] != [(u.id, u.audio, u.offset) for u in utts]:
        return None
    return [None if r["text"] is None else dataclasses.replace(u, text=r["text"]) for u, r in zip(utts, rows)]

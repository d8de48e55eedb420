"""Speech recognition (and speech classification by label): manifests of utterances in, a CTC or seq2seq run out.

Batches hold up to ``batch_seconds`` of audio; Whisper pads each batch to its longest clip
(``short_clips``) and dev decoding pads to 30 s like inference (``dev_short_clips``). With
``replay_manifest`` a share of every batch is native speech, optionally distilled towards the
base model, and each dev evaluation also reports forgetting on the replay dev lines. With
``timestamp_share`` a share of Whisper's training clips carries timestamp tokens (speech bounds from
voice-activity detection), so the adapted model keeps placing them. With
``objective=short-context`` the loss is the short-context distillation of
:mod:`speechtl.short_context` instead of the transcripts' cross-entropy, and dev decodes clips
unpadded (the way such an adapter is used).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import SpeechtlError
from .base import Run, RunInputs, audio_loader, drop_long, select

# Settings this recipe starts from where the user gave none, for every speech model (none beyond the config's own).
DEFAULTS: dict[str, Any] = {}

# What Whisper's adapters train with where the user gave no value: the setting under 1 % of the
# parameters that bench/adapt_search.py chose on dev speakers at an equal wall-clock budget
# (bench/results/adapt_search.json): every linear layer, rank 4, lr 1e-3 after 10 warm-up steps, SpecAugment.
WHISPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 1e-3, "warmup_steps": 10, "lora_r": 4, "lora_alpha": 8.0, "specaug": True,
             "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]},
}
WHISPER_DEFAULTS["dora"] = WHISPER_DEFAULTS["lora"]
_PLACEMENT = ("target_modules", "target_regex")


def backbone_defaults(cfg: RunConfig, backbone) -> dict[str, Any]:
    """The defaults that depend on the model and the method: Whisper's adapter settings.

    Where the user placed the adapters (``target_modules`` or ``target_regex``) the default
    placement yields too, rather than adding modules to theirs.
    """
    if getattr(backbone, "task", None) != "seq2seq":
        return {}
    chosen = dict(WHISPER_DEFAULTS.get(cfg.adapt.method, {}))
    if cfg.user_keys & set(_PLACEMENT):
        chosen.pop("target_modules", None)
    if cfg.data.objective == "short-context":
        chosen["dev_short_clips"] = True  # the dev WER of what the objective trains for: unpadded decoding
        # The student learns to match the base model on the same clean clips: with masked features it
        # would chase outputs it cannot reach. A user's specaug=true still wins.
        chosen["specaug"] = False
    return chosen


def data_task(cfg: RunConfig) -> str:
    """``asr``, or ``speech-classify`` when the run trains a classifier of a label field on speech."""
    return "speech-classify" if cfg.adapt.head == "classifier" or cfg.adapt.labels else "asr"


def utterances(inputs: RunInputs, *, require_text: bool) -> tuple[list, list]:
    """The (train, dev) utterances: train or unsplit lines of ``train``; dev from ``dev`` or train's dev lines."""
    from ..data.manifest import read_manifest

    train_all = read_manifest(inputs.train, require_text=require_text)
    train = select(train_all, splits=(None, "train"), accent=inputs.target_accent, where=inputs.train)
    if inputs.dev:
        dev = select(read_manifest(inputs.dev, require_text=require_text), splits=(None, "dev"),
                     accent=inputs.target_accent, where=inputs.dev)
    else:
        dev = select(train_all, splits=("dev",), accent=inputs.target_accent, where=f"{inputs.train} (split=dev)")
    if not train:
        raise SpeechtlError(f"{inputs.train}: no training utterances (split train or none)")
    return train, dev


def replay_utterances(d, classification: bool) -> tuple[list, list]:
    """``replay_manifest``'s (train-or-unsplit, dev) utterances, checked against the replay settings."""
    from ..data.manifest import read_manifest

    if d.replay_manifest is None:
        if d.replay_fraction > 0 or d.distill_weight > 0:
            raise SpeechtlError("replay_fraction and distill_weight need replay_manifest=PATH (native/source speech)")
        return [], []
    if classification:
        raise SpeechtlError("replay_manifest applies to speech recognition, not classification")
    utts = read_manifest(d.replay_manifest)
    train = [u for u in utts if u.split in (None, "train")] if d.replay_fraction > 0 else []
    dev = [u for u in utts if u.split == "dev"]
    if d.replay_fraction > 0 and not train:
        raise SpeechtlError(f"{d.replay_manifest}: no train (or unsplit) lines to replay; "
                            "add some or set replay_fraction=0")
    if d.distill_weight > 0 and not train:
        raise SpeechtlError("distill_weight works on the replay utterances: set replay_fraction > 0 too")
    if not train and not dev:
        raise SpeechtlError(f"{d.replay_manifest}: no train or dev lines; nothing to replay or to measure "
                            "forgetting on")
    return train, dev


def _teacher_targets(task, backbone, train_utts: list, durations: list, dev_utts: list, cfg: RunConfig, rank: int,
                     world: int, resume_dir: Path | None) -> tuple[list, list, list, Callable[[Path], None] | None]:
    """``objective=short-context distill_targets=teacher``: train and dev utterances with the base model's
    30-s transcripts as their text (with the training durations). Clips it transcribes as empty are left
    out, and training clips whose transcript is longer than ``backbone``'s decoder trains on (it can run
    on to its token limit).

    A resumed run reads the transcripts back from its folder (``teacher_targets/``) when they are of the
    same clips. The fourth value writes freshly decoded ones there (:attr:`Run.save_state`), else None.
    The base model decodes on the device the run trains on (the ``device`` key: by default this
    process's GPU when there is one), and reports its pass on stderr (rank 0 only) if ``progress`` is on.
    Under torchrun each of the ``world`` processes decodes a share of the clips, and all get every transcript.
    """
    from ..distributed import map_shards, run_device, setup_distributed
    from ..short_context import TEACHER_TARGETS, load_teacher_targets, save_teacher_targets

    n, utts = len(train_utts), [*train_utts, *dev_utts]
    labelled = load_teacher_targets(resume_dir, utts) if resume_dir is not None else None
    if labelled is not None:
        save = None
        if rank == 0:
            print(f"distill_targets=teacher: the base model's transcripts of {len(utts)} clips are read back from "
                  f"{resume_dir / TEACHER_TARGETS}", file=sys.stderr)
    else:
        if resume_dir is not None and (resume_dir / TEACHER_TARGETS).exists() and rank == 0:
            print(f"distill_targets=teacher: {resume_dir / TEACHER_TARGETS} holds the transcripts of other clips; "
                  "the base model transcribes these again", file=sys.stderr)
        if world > 1 and rank == 0:
            print(f"distill_targets=teacher: the base model transcribes {len(utts)} clips, a share on each of "
                  f"{world} processes", file=sys.stderr)
        device, progress = run_device(cfg.train.device, rank), cfg.train.progress and rank == 0
        if world > 1:
            setup_distributed(cfg.train.device)  # the group training joins, started now to share this pass
        labelled = map_shards(lambda share: task.teacher_targets(share, device=device, progress=progress), utts,
                              rank, world)
        save = functools.partial(save_teacher_targets, utts=utts, labelled=labelled)
    heard = [i for i in range(n) if labelled[i] is not None]
    long = set(_too_long(backbone, [labelled[i] for i in heard], timestamps=cfg.data.timestamp_share > 0))
    kept = [i for k, i in enumerate(heard) if k not in long]
    if not kept:
        raise SpeechtlError("distill_targets=teacher: the base model's transcript of every training clip is empty "
                            "(silence?) or longer than the decoder takes; train on speech")
    empty = len(labelled) - sum(u is not None for u in labelled)
    if empty and rank == 0:
        print(f"distill_targets=teacher: {empty} clip(s) the base model transcribes as empty are left out",
              file=sys.stderr)
    if long and rank == 0:
        print(f"distill_targets=teacher: {len(long)} clip(s) whose transcript by the base model is longer than the "
              "decoder takes are left out", file=sys.stderr)
    return ([labelled[i] for i in kept], [durations[i] for i in kept],
            [u for u in labelled[n:] if u is not None], save)


def _too_long(backbone, utts: list, *, timestamps: bool) -> list[int]:
    """Indices of ``utts`` whose transcript is longer than Whisper's decoder trains on (``max_label_tokens``,
    prompt and end of text included; with ``timestamps`` counted in the timestamped form)."""
    limit = backbone.max_label_tokens
    return [i for i, u in enumerate(utts) if backbone.label_length(u.text, timestamps=timestamps) > limit]


def _refuse_too_long(backbone, where: str, utts: list, *, timestamps: bool) -> None:
    """Training transcripts longer than the decoder takes are an error naming the first and ``where`` they
    come from (dev transcripts are only scored: any length serves)."""
    long = _too_long(backbone, utts, timestamps=timestamps)
    if long:
        first = utts[long[0]]
        raise SpeechtlError(f"{where}: {len(long)} training transcript(s) longer than {backbone.name}'s decoder "
                            f"takes ({backbone.max_label_tokens} tokens with its prompt), the first id {first.id!r} "
                            f"({backbone.label_length(first.text, timestamps=timestamps)} tokens); split those "
                            "clips or leave them out")


def _ctc_spelling(model, backbone):
    """The text → CTC target ids function a run trains with: a new CTC head's or a CTC model's own (else None)."""
    from ..heads import CTCHead

    head = getattr(model, "head", None)
    if isinstance(head, CTCHead):
        return head.vocab.encode
    if head is None and hasattr(backbone, "text_to_ids"):
        return backbone.text_to_ids
    return None


def _refuse_unspellable(spell, where: str, utts: list) -> None:
    """CTC training transcripts with no character of the model's alphabet are an error naming the first and
    ``where`` they come from (before training, not when their batch comes up)."""
    bad = [u for u in utts if not spell(re.sub(r"\s+", "", u.text))]  # a word delimiter alone is no target
    if bad:
        raise SpeechtlError(f"{where}: {len(bad)} training transcript(s) have no character of the CTC model's "
                            f"alphabet, the first id {bad[0].id!r} ({bad[0].text!r}); write them out in its "
                            "letters (numbers as words) or leave them out")


def build(inputs: RunInputs, cfg: RunConfig, backbone, *, world: int = 1, rank: int = 0,
          resume_dir: Path | None = None) -> Run:
    """Wire a speech recognition run; ``resume_dir``: the folder of the run it continues (what it saved is reused)."""
    from torch.utils.data import DataLoader

    from ..data.loader import AudioDataset, DurationBatchSampler, augmentation, durations_of
    from ..specaug import SpecAugment
    from ..tasks import ClassificationTask, asr_dev_fn, classification_dev_fn, task_for
    from ..transfer import adapt

    d = cfg.data
    # Speech recognition trains on transcripts: an empty one is a manifest error, with its line. With
    # distill_targets=teacher the base model's transcripts replace them, so unlabelled audio is accepted.
    labelled = data_task(cfg) == "asr" and d.distill_targets != "teacher"
    train_utts, dev_utts = utterances(inputs, require_text=labelled)
    train_utts, durations = drop_long(train_utts, durations_of(train_utts), d.max_clip_seconds)

    if hasattr(backbone, "short_clips"):
        backbone.short_clips = d.short_clips
    model = adapt(backbone, **dataclasses.asdict(cfg.adapt))
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    specaug = (SpecAugment(d.specaug_freq_masks, d.specaug_freq_width, d.specaug_time_masks, d.specaug_time_width)
               if d.specaug else None)
    task = task_for(model, specaug=specaug, timestamp_share=d.timestamp_share, seed=cfg.train.seed)
    classification = isinstance(task, ClassificationTask)
    save_state = None
    if d.objective == "short-context":
        from ..short_context import ShortContextTask

        if d.replay_manifest is not None:
            raise SpeechtlError("objective=short-context already distils every training clip towards the base "
                                "model; leave replay_manifest unset (put the native speech in the training manifest)")
        task = ShortContextTask(task, model, temperature=d.distill_temperature)
        if d.distill_targets == "teacher":
            train_utts, durations, dev_utts, save_state = _teacher_targets(
                task, backbone, train_utts, durations, dev_utts, cfg, rank, world, resume_dir)
    elif d.distill_targets == "teacher":
        raise SpeechtlError("distill_targets=teacher applies to objective=short-context; set that objective "
                            "or remove the key")
    decoder = not classification and getattr(model, "head", None) is None and hasattr(backbone, "label_length")
    if decoder and d.distill_targets != "teacher":  # the teacher's targets were checked as they were made
        _refuse_too_long(backbone, inputs.train, train_utts, timestamps=d.timestamp_share > 0)
    spell = None if classification else _ctc_spelling(model, backbone)
    if spell is not None:
        _refuse_unspellable(spell, inputs.train, train_utts)
    # SpecAugment's sizes mean nothing with it off.
    if not d.specaug and (sizes := sorted(k for k in cfg.user_keys if k.startswith("specaug_"))):
        raise SpeechtlError(f"{', '.join(sizes)} shape SpecAugment, which is off in this run; set specaug=true "
                            "or remove them")
    # Keys that only Whisper's decoder or its 30-s padding read would be silently ignored.
    ignored, reasons = [], []
    if spell is not None and "beam_size" in cfg.user_keys:
        ignored, reasons = ["beam_size"], ["its CTC dev decoding is greedy"]
    if padding := [k for k in ("dev_short_clips", "short_clips")
                   if k in cfg.user_keys and not hasattr(backbone, "short_clips")]:
        ignored, reasons = ignored + padding, reasons + ["they pad Whisper's 30-s input"]
    if ignored:
        many = len(ignored) > 1
        raise SpeechtlError(f"config key{'s' if many else ''} {', '.join(ignored)} {'do' if many else 'does'} not "
                            f"apply to {backbone.name} ({'; '.join(reasons)}); remove {'them' if many else 'it'}")
    train_cfg = cfg.train
    if classification and train_cfg.metric == "wer":
        train_cfg = dataclasses.replace(train_cfg, metric="error")

    rate, seed = backbone.sample_rate, cfg.train.seed
    replay_train, replay_dev = replay_utterances(d, classification)
    if decoder and replay_train:
        _refuse_too_long(backbone, d.replay_manifest, replay_train, timestamps=d.timestamp_share > 0)
    if spell is not None and replay_train:
        _refuse_unspellable(spell, d.replay_manifest, replay_train)
    if replay_train:
        from ..replay import ReplayBatchSampler, ReplayDataset, ReplayTask

        # The target share of the batch keeps (1 - fraction) of batch_seconds; replay fills the rest.
        inner = DurationBatchSampler(durations, d.batch_seconds * (1 - d.replay_fraction), shuffle=True, seed=seed,
                                     num_replicas=world, rank=rank)
        sampler = ReplayBatchSampler(inner, len(train_utts), len(replay_train), d.replay_fraction, seed=seed,
                                     rank=rank)
        data = ReplayDataset(AudioDataset(train_utts, rate, seed=seed, **augmentation(d)),
                             AudioDataset(replay_train, rate, seed=seed))
        task = ReplayTask(task, model, distill_weight=d.distill_weight, temperature=d.distill_temperature)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=task.collate, num_workers=d.num_workers)
    else:
        loader = audio_loader(train_utts, rate, d.batch_seconds, task.collate, num_workers=d.num_workers,
                              shuffle=True, seed=seed, world=world, rank=rank, **augmentation(d))

    # Dev batches need no teacher: short-context dev decoding collates like the wrapped task.
    dev_collate = task.task.collate if d.objective == "short-context" else task.collate
    if d.timestamp_share:  # dev decoding scores transcripts without timestamps
        dev_collate = functools.partial(dev_collate, timestamps=False)
    if hasattr(backbone, "short_clips") and not d.dev_short_clips:
        dev_collate = functools.partial(dev_collate, short_clips=False)

    def dev_loader(utts):
        return audio_loader(utts, rate, d.batch_seconds, dev_collate, num_workers=d.num_workers)

    dev_fn = None
    if dev_utts:
        dev_fn = (classification_dev_fn(task, dev_loader(dev_utts)) if classification
                  else asr_dev_fn(task, dev_loader(dev_utts), normalizer=d.normalizer, beam_size=d.beam_size))
    elif rank == 0:
        print("no dev utterances: training without evaluation (the last weights are kept)", file=sys.stderr)
    if replay_dev and rank == 0:
        from ..replay import forgetting_dev_fn

        source_fn = asr_dev_fn(task, dev_loader(replay_dev), normalizer=d.normalizer, beam_size=d.beam_size)
        dev_fn = forgetting_dev_fn(dev_fn, source_fn, model)
    summary = {"train_utterances": len(train_utts), "train_hours": round(sum(durations) / 3600, 4),
               "dev_utterances": len(dev_utts), "replay_utterances": len(replay_train),
               "replay_dev_utterances": len(replay_dev)}
    return Run("asr", inputs, cfg, model, task, loader, dev_fn, train_cfg, summary, save_state=save_state)

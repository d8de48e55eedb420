"""Accent identification: a classifier of the manifests' ``accent`` field on the frozen speech encoder.

By default (each yields to what the user set) the encoder is frozen (``features``) and a small
head reads a normalised, learned mix of all layers, pooled by mean and standard deviation over
the valid frames. The label set is the training accents and is saved with the head. After
training, :func:`report` scores the dev utterances: accuracy, recall per accent, the confusion
matrix and the speakers not always right.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import SpeechtlError
from . import asr
from .base import Run, RunInputs, audio_loader, drop_long

DEFAULTS: dict[str, Any] = {"method": "features", "weighted_layers": True, "head": "classifier",
                            "head_pooling": "stats", "head_norm": True}


def build(inputs: RunInputs, cfg: RunConfig, backbone, *, world: int = 1, rank: int = 0) -> Run:
    from ..data.loader import augmentation, durations_of
    from ..tasks import ClassificationTask, classification_dev_fn
    from ..transfer import adapt

    if backbone.modality != "audio":
        raise SpeechtlError(f"--task accent-id needs a speech model; {inputs.model} is a {backbone.modality} model")
    if inputs.target_accent is not None:
        raise SpeechtlError("--target-accent selects one accent, but --task accent-id learns to tell accents apart; "
                            "leave it out")
    train_utts, dev_utts = asr.utterances(inputs, require_text=False)
    labels = sorted({u.accent for u in train_utts})
    if len(labels) < 2:
        raise SpeechtlError(f"{inputs.train}: accent identification needs at least two accents in the training "
                            f"utterances, found {labels}")
    unseen = sorted({u.accent for u in dev_utts} - set(labels))
    if unseen:
        raise SpeechtlError(f"{inputs.dev or inputs.train}: dev accent(s) {', '.join(unseen)} do not occur in the "
                            f"training utterances ({', '.join(labels)}); a classifier cannot predict them")
    d = cfg.data
    train_utts, durations = drop_long(train_utts, durations_of(train_utts), d.max_clip_seconds)
    if hasattr(backbone, "short_clips"):
        # The head mean-pools over valid frames: pad each batch to its longest clip, not to 30 s.
        backbone.short_clips = True
    model = adapt(backbone, **{**dataclasses.asdict(cfg.adapt), "labels": labels})
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    task = ClassificationTask(model, labels, label_key="accent")
    train_cfg = cfg.train if cfg.train.metric != "wer" else dataclasses.replace(cfg.train, metric="error")
    rate = backbone.sample_rate
    loader = audio_loader(train_utts, rate, d.batch_seconds, task.collate, num_workers=d.num_workers, shuffle=True,
                          seed=cfg.train.seed, world=world, rank=rank, **augmentation(d))
    dev_fn = None
    if dev_utts:
        dev_fn = classification_dev_fn(task, audio_loader(dev_utts, rate, d.batch_seconds, task.collate,
                                                          num_workers=d.num_workers))
    elif rank == 0:
        print("no dev utterances: training without evaluation (the last weights are kept)", file=sys.stderr)
    counts = {a: sum(u.accent == a for u in train_utts) for a in labels}
    summary = {"task": "accent-id", "labels": labels, "train_utterances": len(train_utts),
               "train_per_accent": counts, "train_hours": round(sum(durations) / 3600, 4),
               "dev_utterances": len(dev_utts)}

    def after_training(out: Path):
        return report(model, dev_utts, out, manifest=inputs.dev or f"{inputs.train} (split=dev)")

    return Run("accent-id", inputs, cfg, model, task, loader, dev_fn, train_cfg, summary, after_training)


def report(model, dev_utts: list, out: Path, *, manifest: str):
    """Score the trained classifier on ``dev_utts`` and save the scores to ``out/accent_id.json`` (None: no dev)."""
    from ..routing import AccentClassifier, evaluate_accent_id

    if not dev_utts:
        return None
    scores = evaluate_accent_id(AccentClassifier.from_model(model), dev_utts)
    scores.meta.update({"manifest": manifest, "adapter": str(out / "adapter")})
    scores.save(out / "accent_id.json")
    return scores

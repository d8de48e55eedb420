"""Image or text classification: ``{path|text, label, split}`` manifests, fixed-size batches, a classifier head."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ..config import RunConfig
from ..errors import SpeechtlError
from .base import Run, RunInputs

DEFAULTS: dict[str, Any] = {}


def build(inputs: RunInputs, cfg: RunConfig, backbone, *, world: int = 1, rank: int = 0) -> Run:
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from ..data.classify import (ClassifyDataset, ClassifyTask, classify_dev_fn, label_set, read_classify_manifest,
                                 split_examples)
    from ..transfer import adapt

    if inputs.target_accent is not None:
        raise SpeechtlError("--target-accent applies to speech; image and text manifests have no accents")
    train_all, kind = read_classify_manifest(inputs.train)
    train_ex = [e for e in train_all if e.split in (None, "train")]
    dev_ex = read_classify_manifest(inputs.dev, kind)[0] if inputs.dev else split_examples(train_all, "dev")
    if not train_ex:
        raise SpeechtlError(f"{inputs.train}: no training examples (split train or none)")
    labels = label_set(train_ex)
    model = adapt(backbone, **{**dataclasses.asdict(cfg.adapt), "labels": labels})
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    task = ClassifyTask(model, labels)
    train_cfg = cfg.train if cfg.train.metric != "wer" else dataclasses.replace(cfg.train, metric="error")
    dataset = ClassifyDataset(train_ex, kind, cache=True)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=cfg.train.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=task.collate, num_workers=cfg.data.num_workers)
    dev_fn = None
    if dev_ex:
        dev_loader = DataLoader(ClassifyDataset(dev_ex, kind, cache=True), batch_size=cfg.data.batch_size,
                                collate_fn=task.collate)
        dev_fn = classify_dev_fn(task, dev_loader)
    summary = {"task": "classify", "kind": kind, "labels": labels, "train_examples": len(train_ex),
               "dev_examples": len(dev_ex)}
    return Run("classify", inputs, cfg, model, task, loader, dev_fn, train_cfg, summary)

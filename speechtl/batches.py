"""The stream of training batches: epoch after epoch, each sampler told its epoch, resumable mid-epoch.

A resumed run starts ``skip`` batches into an epoch without loading the batches it skips (a
``DataLoader`` gets a batch sampler that leaves them out), and without drawing from the global
torch generator, so every later random number matches the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from .errors import SpeechtlError


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts, lists and tuples to ``device``; everything else as is."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class _SkipBatches:
    """A batch sampler without its first ``skip`` batches (to resume inside an epoch without loading them)."""

    def __init__(self, batch_sampler: Iterable, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        for i, b in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield b

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _set_epoch(loader: Iterable, epoch: int) -> None:
    # The samplers reshuffle; the dataset draws fresh augmentation.
    for obj in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None),
                getattr(loader, "dataset", None), loader):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _iterate_from(loader: Iterable, skip: int) -> Iterator:
    if skip == 0:
        return iter(loader)
    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        resumed = DataLoader(
            loader.dataset,
            batch_sampler=_SkipBatches(loader.batch_sampler, skip),
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            persistent_workers=False,
            **({"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}),
        )
        # A DataLoader iterator draws its base seed from the global torch generator. The uninterrupted
        # run drew it at the start of this epoch, before the checkpoint; drawing again here would shift
        # every later random number (dropout, augmentation) of the resumed run.
        with torch.random.fork_rng(devices=[]):
            return iter(resumed)
    it = iter(loader)
    for _ in range(skip):  # any other iterable: read and drop what was already used
        next(it)
    return it


def batch_stream(loader: Iterable, epoch: int, skip: int) -> Iterator[tuple[int, int, bool, Any]]:
    """``(epoch, index in epoch, last of epoch, batch)`` forever, starting ``skip`` batches into ``epoch``."""
    while True:
        _set_epoch(loader, epoch)
        n = len(loader) if hasattr(loader, "__len__") else None
        got = False
        for i, batch in enumerate(_iterate_from(loader, skip), start=skip):
            got = True
            yield epoch, i, n is not None and i == n - 1, batch
        if not got and skip == 0:
            raise SpeechtlError("the training data yields no batches; check the manifest and batch size")
        epoch, skip = epoch + 1, 0

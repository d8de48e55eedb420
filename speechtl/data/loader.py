"""Training data: a lazily decoding audio dataset and a duration-capped, DDP-aware batch sampler.

Typical use::

    ds = AudioDataset(utts, sample_rate=16000, speed_perturb=(0.9, 1.0, 1.1), noise_snr=(10, 30))
    sampler = DurationBatchSampler([u.duration for u in utts], max_seconds=120, seed=0,
                                   num_replicas=world_size, rank=rank)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio, num_workers=2)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..audio import load_audio
from ..augment import augmentation, perturb  # noqa: F401  (augmentation: the recipes' entry)
from ..errors import SpeechtlError
from .manifest import Utterance, utterance_duration


class AudioDataset:
    """Utterances decoded on access with :func:`speechtl.audio.load_audio`.

    Item ``i`` is ``{"id", "audio", "text", "accent", "speaker"}`` with ``audio`` a float32
    array ``(samples,)`` at ``sample_rate``, read from ``offset`` for ``duration`` seconds when
    the utterance is a segment of a longer file. Optional augmentation, drawn per item from
    ``(seed, epoch, index)`` so that it is reproducible across workers and resumes:

    - ``speed_perturb``: factors such as ``(0.9, 1.0, 1.1)``; one is picked per item and the
      audio resampled so that it plays that much faster (pitch and tempo change together).
    - ``noise_snr``: a number or ``(low, high)`` range in dB; white noise is mixed at an SNR
      drawn uniformly from it, computed from the RMS of the speech.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        sample_rate: int = 16000,
        speed_perturb: Sequence[float] | None = None,
        noise_snr: float | tuple[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.utts = list(utts)
        self.sample_rate = sample_rate
        if speed_perturb is not None and (not speed_perturb or any(f <= 0 for f in speed_perturb)):
            raise SpeechtlError(f"speed_perturb {speed_perturb!r}: give positive factors such as (0.9, 1.0, 1.1)")
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else None
        if isinstance(noise_snr, (int, float)):
            noise_snr = (float(noise_snr), float(noise_snr))
        self.noise_snr = noise_snr
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh augmentation for ``epoch`` (call it from every dataloader worker's parent)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        u = self.utts[index]
        if u.offset is not None:
            wav = load_audio(u.audio, self.sample_rate, offset=u.offset, duration=u.duration)
        else:
            wav = load_audio(u.audio, self.sample_rate)
        if self.speed_perturb or self.noise_snr:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            wav = perturb(wav, self.sample_rate, rng, speed_factors=self.speed_perturb, noise_snr=self.noise_snr)
        return {"id": u.id, "audio": np.ascontiguousarray(wav, dtype=np.float32), "text": u.text,
                "accent": u.accent, "speaker": u.speaker}


def collate_audio(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of :class:`AudioDataset` items: ``audio`` ``(batch, samples)`` float32 tensor and
    ``lengths`` ``(batch,)``; ``id``/``text``/``accent``/``speaker`` as lists."""
    import torch

    lengths = torch.tensor([len(x["audio"]) for x in items], dtype=torch.long)
    audio = torch.zeros(len(items), int(lengths.max()) if len(items) else 0, dtype=torch.float32)
    for i, x in enumerate(items):
        audio[i, : len(x["audio"])] = torch.from_numpy(x["audio"])
    out: dict[str, Any] = {"audio": audio, "lengths": lengths}
    for key in ("id", "text", "accent", "speaker"):
        out[key] = [x[key] for x in items]
    return out


def durations_of(utts: Sequence[Utterance]) -> list[float]:
    """Each utterance's duration (from the manifest, else the audio header), for the sampler."""
    return [utterance_duration(u) for u in utts]


class DurationBatchSampler:
    """Batches of indices whose total audio stays under ``max_seconds``, bucketed by length.

    Each epoch: indices are shuffled with ``(seed, epoch)`` (kept in order when ``shuffle`` is
    False), cut into buckets of ``bucket_size`` items, sorted by duration inside a bucket so that
    a batch holds similar lengths (little padding), packed greedily under the cap, and the batches
    are shuffled. An item longer than the cap gets a batch of its own (with a warning). With
    ``padded=True`` the cap applies to ``longest * count`` (what a padded batch costs) instead of
    the sum.

    Distributed: every rank computes the same batch list and takes every ``num_replicas``-th
    batch from ``rank`` on, so ranks never share an index. Ranks whose share is one batch short
    repeat their own first batch so that all ranks take the same number of steps (a collective
    op would hang otherwise); those few items are seen twice in the epoch.

    Resuming: :meth:`state_dict` records the epoch and how many batches this rank has handed out;
    after :meth:`load_state_dict` (and ``set_epoch`` with the same epoch) iteration continues with
    the remaining batches of that epoch. A DataLoader with workers prefetches batches, so store
    the number of batches the training loop actually consumed as ``position``.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        bucket_size: int = 2000,
        padded: bool = False,
    ) -> None:
        if max_seconds <= 0:
            raise SpeechtlError(f"max_seconds must be positive, got {max_seconds}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise SpeechtlError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if bucket_size < 1:
            raise SpeechtlError(f"bucket_size must be at least 1, got {bucket_size}")
        durs = [float(d) if d is not None else math.nan for d in durations]
        if bad := [i for i, d in enumerate(durs) if not math.isfinite(d) or d < 0]:
            raise SpeechtlError(f"{len(bad)} utterances (first index {bad[0]}) have no valid duration; "
                                "fill durations first (speechtl.data.loader.durations_of)")
        if not durs:
            raise SpeechtlError("no utterances to batch")
        self.durations = durs
        self.max_seconds = float(max_seconds)
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket_size = bucket_size
        self.padded = padded
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        long = [d for d in durs if d > max_seconds]
        if long:
            warnings.warn(f"{len(long)} utterances are longer than max_seconds={max_seconds:g} (longest "
                          f"{max(long):.1f} s); each gets a batch of its own", stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; moving to another epoch restarts at its first batch."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        """Every batch of the epoch, before splitting between ranks (identical on all ranks)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = list(range(len(self.durations)))
        if self.shuffle:
            rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.bucket_size):
            bucket = sorted(order[start:start + self.bucket_size], key=lambda i: (self.durations[i], i))
            batch: list[int] = []
            total = longest = 0.0
            for i in bucket:
                d = self.durations[i]
                new_longest = max(longest, d)
                cost = new_longest * (len(batch) + 1) if self.padded else total + d
                if batch and cost > self.max_seconds:
                    batches.append(batch)
                    batch, total, new_longest = [], 0.0, d
                batch.append(i)
                total += d
                longest = new_longest
            if batch:
                batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        self._cache = (self.epoch, batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        mine = batches[self.rank::self.num_replicas]
        per_rank = math.ceil(len(batches) / self.num_replicas)
        if not mine:  # fewer batches than ranks: borrow one so that every rank takes a step
            mine = [batches[self.rank % len(batches)]]
        while len(mine) < per_rank:
            mine.append(mine[0])
        return mine

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)
        self.position = 0  # a finished epoch can be iterated again from the start

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_replicas": self.num_replicas, "rank": self.rank, "max_seconds": self.max_seconds,
                "num_items": len(self.durations)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the seed, world size, cap and data size must match or the order would differ."""
        for key, mine in (("seed", self.seed), ("num_replicas", self.num_replicas),
                          ("max_seconds", self.max_seconds), ("num_items", len(self.durations))):
            if key in state and state[key] != mine:
                raise SpeechtlError(f"sampler state has {key}={state[key]!r} but this sampler has {mine!r}; "
                                    "resume with the same settings or restart the epoch")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._cache = None

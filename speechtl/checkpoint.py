"""Training checkpoints: what a run saves to continue exactly where it stopped, and how it survives a crash.

``out_dir/checkpoints/last.pt`` and ``best.pt`` each hold one :class:`CheckpointState`: only the
trainable parameters plus optimizer, schedule, loss-scaler, every rank's RNG states and the
:class:`Progress` (data position and best-so-far tracking). :func:`save_checkpoint` writes one
atomically (temp file, fsync, read back against its sha256, rename); the one before stays as
``last.prev.pt``/``best.prev.pt`` and ``checksums.json`` lists the digest of each, so
:func:`load_checkpoint` after a crash that tore or corrupted ``last.pt`` warns once and uses
``last.prev.pt``. Files are read with ``torch.load(weights_only=True)``: loading never runs code.

``checksums.json`` is ``{"version": 1, "files": {name: {"sha256", "size", "step"}}}``, where the
name ``"pending"`` is the checkpoint being put in place at that moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from .checksums import CHECKSUMS, sha256_file
from .errors import SpeechtlError
from .fileio import atomic_write, atomic_write_text

CHECKPOINT_VERSION = 1
PENDING = "pending"


@dataclass
class Progress:
    """Where a run is: optimizer steps taken, the data position, and the best dev result so far."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping counts these)
    best_loss: float | None = None  # dev loss at the best step: breaks a tie on the metric


@dataclass
class CheckpointState:
    """Everything a run needs to continue.

    ``trainable`` maps parameter names to tensors (only parameters that train); ``optimizer``,
    ``scheduler`` and ``scaler`` are ``state_dict()``s; ``rng`` holds one :func:`rng_state` per
    rank of a ``world_size``-process run; ``config`` is the run's ``TrainConfig`` as a dict.
    """

    progress: Progress = field(default_factory=Progress)
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)  # the file it was loaded from; not saved

    def to_dict(self) -> dict[str, Any]:
        """The saved form: one flat dict with ``version``, the progress fields and the rest."""
        rest = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_SAVED}
        return {"version": CHECKPOINT_VERSION, **dataclasses.asdict(self.progress), **rest}

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str | os.PathLike | None = None) -> CheckpointState:
        """The state saved as ``record`` (read from ``source``, which errors name)."""
        where = source or "checkpoint"
        if record.get("version") != CHECKPOINT_VERSION:
            raise SpeechtlError(f"{where}: checkpoint version {record.get('version')} is not {CHECKPOINT_VERSION}")
        progress_names = [f.name for f in dataclasses.fields(Progress)]
        state_names = [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_SAVED]
        optional = {"best_loss", "config"}  # added within version 1; older files lack them
        missing = [n for n in progress_names + state_names if n not in record and n not in optional]
        if missing:
            raise SpeechtlError(f"{where}: not a speechtl training checkpoint (it has no {', '.join(missing)}); "
                                "start the run again without resume")
        progress = Progress(**{n: record.get(n) for n in progress_names})
        return cls(progress, **{n: record[n] for n in state_names if n in record},
                   source=None if source is None else Path(source))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, *,
                rank: int = 0, world_size: int = 1) -> None:
        """Put the saved state into a freshly built ``model``, ``optimizer``, schedule and loss scaler.

        This process's random generators continue rank ``rank``'s streams when the run had the
        same ``world_size``; otherwise they keep their fresh seeds, with a warning.
        """
        load_trainable(model, self.trainable, source=self.source)
        try:
            optimizer.load_state_dict(self.optimizer)
            scheduler.load_state_dict(self.scheduler)
            scaler.load_state_dict(self.scaler)
        except (ValueError, KeyError, RuntimeError) as e:
            raise SpeechtlError(f"{self.source or 'checkpoint'}: the saved optimizer state does not fit this model "
                                f"({e}); resume with the same method and config") from e
        if self.world_size == world_size:
            set_rng_state(self.rng[rank])
        else:
            warnings.warn(f"{self.source or 'checkpoint'}: saved with {self.world_size} processes, resuming with "
                          f"{world_size}; random streams restart", RuntimeWarning, stacklevel=3)


_NOT_SAVED = {"progress", "source"}  # progress is saved flat, as its fields


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor on CPU}`` of the parameters with ``requires_grad``: all a checkpoint keeps of the model."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], *,
                   source: str | os.PathLike | None = None) -> None:
    """Copy ``tensors`` (read from ``source``, which errors name) into ``model``'s trainable parameters.

    The names must be exactly those of the parameters with ``requires_grad``.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        extra, missing = sorted(set(tensors) - set(params)), sorted(set(params) - set(tensors))
        where = f"{source}: " if source else ""
        raise SpeechtlError(f"{where}checkpoint does not match the model's trainable parameters "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the same method and config")
    # Same names, other shapes: another lora_r or head width (copy_ would fail, or broadcast a rank-1 tensor).
    if shaped := [n for n, p in params.items() if tensors[n].shape != p.shape]:
        where = f"{source}: " if source else ""
        n = shaped[0]
        raise SpeechtlError(f"{where}checkpoint's {n} is {tuple(tensors[n].shape)}, the model's "
                            f"{tuple(params[n].shape)} ({len(shaped)} such parameter(s)); resume with the same "
                            "method and config")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])


def rng_state() -> dict[str, Any]:
    """Every random generator's state as plain Python values (they travel through all_gather_object)."""
    kind, keys, *rest = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), *rest],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --------------------------------------------------------------------------------------------
# Writing


class _HashingWriter:
    """A write-only file wrapper that hashes and counts the bytes going through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0
        self.error: OSError | None = None  # torch.save reports a failed write as a RuntimeError; keep the cause

    def write(self, data: bytes) -> int:
        try:
            written = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(data)
        self.size += len(data)
        return written

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(ckpt_dir: str | os.PathLike, name: str, state: CheckpointState) -> Path:
    """Write ``state`` to ``ckpt_dir/<name>.pt`` so that a crash at any moment leaves a verifiable checkpoint.

    The new file is written beside it, read back and compared with the sha256 of what was
    written; only then does the old file become ``<name>.prev.pt`` (a hard link, so
    ``<name>.pt`` never disappears) and the new one take its name. ``checksums.json`` lists the
    digest of every checkpoint on disk, and of the incoming one before it is renamed, so
    :func:`verified_checkpoint` can tell a complete file from a torn or corrupt one.
    """
    path = Path(ckpt_dir) / f"{name}.pt"
    prev = _previous(path)
    writer: _HashingWriter | None = None
    files: dict[str, Any] = {}

    def write(f: BinaryIO) -> None:
        nonlocal writer
        writer = _HashingWriter(f)
        try:
            torch.save(state.to_dict(), writer)
        except RuntimeError as e:
            if writer.error is None:
                raise
            raise writer.error from e

    def before_replace(tmp: Path) -> None:
        entry = {"sha256": writer.sha256.hexdigest(), "size": writer.size, "step": state.progress.step}
        if (sha256_file(tmp), tmp.stat().st_size) != (entry["sha256"], entry["size"]):
            raise SpeechtlError(f"{path}: the checkpoint read back differs from what was written; check the disk")
        files.update(_read_checksums(path.parent) or {})
        files[PENDING] = entry
        _write_checksums(path.parent, files)
        if path.exists():
            _keep_as_previous(path, prev, tmp)
            if path.name in files:
                files[prev.name] = files[path.name]

    # Disk full, quota, permissions: the user's to fix, and the old checkpoint stays.
    atomic_write(path, write, before_replace=before_replace, what="the checkpoint", then="resume")
    files[path.name] = files.pop(PENDING)
    _write_checksums(path.parent, files)
    return path


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _keep_as_previous(path: Path, prev: Path, tmp: Path) -> None:
    link = Path(f"{tmp}.prev")
    try:
        os.link(path, link)
        os.replace(link, prev)
    except OSError:  # no hard links here: the old file moves aside, leaving a moment without `path`
        link.unlink(missing_ok=True)
        os.replace(path, prev)


def _read_checksums(ckpt_dir: Path) -> dict[str, Any] | None:
    """The ``files`` of ``checksums.json``; None if there is none (a run from before checksums)."""
    try:
        return dict(json.loads((ckpt_dir / CHECKSUMS).read_text(encoding="utf-8"))["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Written atomically, so this is outside damage; every checkpoint then fails its check and
        # resuming stops with a message rather than trusting unverified files.
        return {}


def _write_checksums(ckpt_dir: Path, files: dict[str, Any]) -> None:
    record = {"version": CHECKPOINT_VERSION, "files": files}
    atomic_write_text(ckpt_dir / CHECKSUMS, json.dumps(record, indent=1) + "\n")


def remove_stale_temp_files(ckpt_dir: str | os.PathLike) -> None:
    """Temp files of a run that was killed while saving (``.last.pt.*.tmp`` and the like)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                p.unlink()


# --------------------------------------------------------------------------------------------
# Reading


def verified_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """Load ``path`` (``checkpoints/<name>.pt``) or, when it is missing, torn or corrupt, ``<name>.prev.pt``.

    A file counts when its size and sha256 are listed in ``checksums.json`` (checkpoints written
    before checksums existed are only loaded), ``torch.load(weights_only=True)`` reads it and it
    holds a versioned dict. Falling back gives one warning; if neither file is intact it is a
    :class:`SpeechtlError` naming ``path``. Returns the saved dict and the file it came from.
    """
    path = Path(path)
    prev = _previous(path)
    files = _read_checksums(path.parent)
    if files == {}:  # there, but unreadable: nothing can be verified, and it is not the checkpoints' fault
        raise SpeechtlError(f"{path.parent / CHECKSUMS}: unreadable, so no checkpoint can be verified; restore it, "
                            "or start the run again without resume")
    known = None if files is None else {(e.get("sha256"), e.get("size")) for e in files.values() if isinstance(e, dict)}
    problems: list[str] = []
    for candidate in (path, prev):
        if not candidate.is_file():
            problems.append(f"{candidate.name} is missing")
            continue
        if known is not None and (sha256_file(candidate), candidate.stat().st_size) not in known:
            problems.append(f"{candidate.name} does not match its sha256 in {CHECKSUMS} (torn write or corruption)")
            continue
        try:
            record = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, unpickling refused, ...: all mean the file is unusable
            problems.append(f"{candidate.name} cannot be read ({str(e).strip().splitlines()[0][:120]})")
            continue
        if not isinstance(record, dict) or "version" not in record:
            problems.append(f"{candidate.name} is not a speechtl training checkpoint")
            continue
        if candidate != path:
            warnings.warn(f"{path}: {problems[0]}; using {candidate.name} (step {record.get('step')}) instead",
                          RuntimeWarning, stacklevel=3)
        return record, candidate
    if not path.is_file() and not prev.is_file():
        raise SpeechtlError(f"{path}: no checkpoint to resume from; run without resume")
    raise SpeechtlError(f"{path}: no intact checkpoint to resume from ({'; '.join(problems)}); "
                        "start the run again without resume")


def load_checkpoint(path: str | os.PathLike) -> CheckpointState:
    """The :class:`CheckpointState` at ``path``, verified, from ``<name>.prev.pt`` if ``path`` is damaged."""
    return CheckpointState.from_dict(*verified_checkpoint(path))

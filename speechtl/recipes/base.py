"""What every recipe shares: the run's inputs, the :class:`Run` it builds, and the output folder's rules."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, TrainConfig
from ..errors import SpeechtlError
from ..fileio import check_apart, out_in_use

# Files a run leaves in its folder; --overwrite removes a folder only when it looks like one.
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "checkpoints", "adapter", "result.json")


@dataclass(frozen=True)
class RunInputs:
    """Where a run's model and data come from (the command line's ``--model``, ``--train``, ...)."""

    model: str
    train: str
    dev: str | None = None
    target_accent: str | None = None


@dataclass
class Run:
    """A training run wired by a recipe, ready for :func:`speechtl.training.train`.

    ``after_training(out)`` scores what the run promises beyond its dev metric (accent-id's
    confusion matrix); it returns an object with ``format_table()``, or None. ``save_state(out)``
    writes into the run folder, before training, what a resumed run reads back instead of computing
    it again (the base model's transcripts of ``distill_targets=teacher``).
    """

    recipe: str
    inputs: RunInputs
    config: RunConfig
    model: Any  # AdaptedModel
    task: Any  # speechtl.tasks.Task
    loader: Iterable
    dev_fn: Callable | None
    train_config: TrainConfig
    summary: dict[str, Any] = field(default_factory=dict)
    after_training: Callable[[Path], Any] | None = None
    save_state: Callable[[Path], None] | None = None


@dataclass
class RunResult:
    """What :func:`speechtl.recipes.execute` leaves: the training result, the adapter and the summary."""

    run: Run
    train: Any  # speechtl.training.TrainResult
    adapter: Path | None
    summary: dict[str, Any]
    report: Any = None


def select(utts: Sequence, *, splits: tuple, accent: str | None, where: str) -> list:
    """The utterances of ``splits`` (and of ``accent`` when given); an unknown accent is an error naming the others."""
    chosen = [u for u in utts if u.split in splits]
    if accent is not None:
        accents = sorted({u.accent for u in chosen})
        chosen = [u for u in chosen if u.accent == accent]
        if not chosen and accents:
            raise SpeechtlError(f"{where}: no utterance of accent {accent!r}; accents there: {', '.join(accents)}")
    return chosen


def drop_long(utts: list, durations: list[float], max_seconds: float) -> tuple[list, list[float]]:
    """Leave out (with a warning) the clips longer than ``max_seconds``; an error when none is left."""
    keep = [i for i, d in enumerate(durations) if d <= max_seconds]
    if len(keep) < len(utts):
        warnings.warn(f"{len(utts) - len(keep)} training clips are longer than max_clip_seconds={max_seconds:g} "
                      "and are left out", stacklevel=2)
        utts, durations = [utts[i] for i in keep], [durations[i] for i in keep]
        if not utts:
            raise SpeechtlError("every training clip is longer than max_clip_seconds; raise it")
    return utts, durations


def audio_loader(utts: Sequence, rate: int, batch_seconds: float, collate: Callable, *, num_workers: int = 0,
                 shuffle: bool = False, seed: int = 0, world: int = 1, rank: int = 0, **augment: Any):
    """A DataLoader of duration-capped batches of ``utts`` at ``rate`` Hz (evaluation order unless ``shuffle``)."""
    from torch.utils.data import DataLoader

    from ..data.loader import AudioDataset, DurationBatchSampler, durations_of

    sampler = DurationBatchSampler(durations_of(utts), batch_seconds, shuffle=shuffle, seed=seed,
                                   num_replicas=world, rank=rank)
    return DataLoader(AudioDataset(list(utts), rate, seed=seed, **augment), batch_sampler=sampler,
                      collate_fn=collate, num_workers=num_workers)


def check_out(out: Path, *, overwrite: bool, resume: bool, is_main: bool = True, model: str | None = None) -> bool:
    """Check ``out`` for a new run (empty, or an earlier run's folder with ``overwrite``) or for ``resume``.

    ``out`` must also lie apart from a local ``model`` folder, which the run only reads. Returns whether an
    earlier run's folder is to be replaced; :func:`clear_out` removes it once the new run is built, so a run
    that fails to start (a bad manifest, a key that does not apply) leaves the earlier one as it was.
    """
    check_apart(out, {"model": model}, writes="the run")
    if overwrite and resume:
        raise SpeechtlError("--overwrite and --resume contradict each other; choose one")
    if resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise SpeechtlError(f"{out}: no checkpoints/last.pt to resume from; start a new run instead")
        return False
    if not is_main or not out_in_use(out):
        return False
    if not overwrite:
        raise SpeechtlError(f"--out {out} is not empty; pass --overwrite to replace it or --resume to continue it")
    if not any((out / name).exists() for name in RUN_FILES):
        raise SpeechtlError(f"--out {out} does not look like a speechtl-adapt output; remove it yourself")
    return True


def clear_out(out: Path) -> None:
    """Remove the earlier run that :func:`check_out` found in ``out``."""
    if out.exists():
        shutil.rmtree(out)


def check_resume_config(out: Path, cfg: RunConfig) -> None:
    """Resuming must use the interrupted run's adapt and data settings (the train section may change)."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(s, {}), dict) for s in ("adapt", "data")):
        raise SpeechtlError(f"{saved_path}: not the config an interrupted run saved (unreadable, or not a mapping "
                            "of sections); restore it, or remove it to resume with the settings given now")
    now = cfg.to_dict()
    changed = [f"{section}.{k}" for section in ("adapt", "data") for k, v in now[section].items()
               if saved.get(section, {}).get(k, v) != v]
    if changed:
        raise SpeechtlError(f"{saved_path}: resuming with a different {', '.join(changed)}; "
                            "give the same config as the interrupted run")

"""The training loop: one loop for every modality.

It sees a model, a task with ``task.loss(model, batch) -> scalar`` and an iterable of batches; it
never looks inside a batch beyond moving its tensors to the device. Read it top to bottom in
:func:`train`: set-up (device, precision, distributed, optimizer, schedule), resume, then the
step loop (gradient accumulation, clipping, one path for a skipped step, optimizer and schedule
step, logging, evaluation, checkpoints) and the end of training.

Checkpoints (``out_dir/checkpoints/last.pt`` and ``best.pt``, see :mod:`speechtl.checkpoint`) hold
only the trainable parameters plus optimizer, schedule, loss-scaler, every rank's RNG states and the
data position (epoch and batches consumed), verified on load with a fall-back to the previous one.
Resuming continues exactly where the run stopped, given a sampler whose order depends only on the
epoch (``set_epoch``), as :class:`speechtl.data.loader.DurationBatchSampler` and
``DistributedSampler`` do.

Distributed data parallel runs under ``torchrun`` (detected from ``RANK``/``WORLD_SIZE``; gloo on
CPU, nccl on CUDA); gradients are synchronised only on the last micro-step of an accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import RandomSampler
from tqdm.auto import tqdm

from .batches import batch_stream, move_to
from .checkpoint import CHECKPOINT_VERSION, CHECKSUMS, set_rng_state  # noqa: F401  (importable from here too)
from .checkpoint import (CheckpointState, Progress, load_checkpoint, load_trainable, remove_stale_temp_files,
                         rng_state, save_checkpoint, trainable_state)
from .config import TrainConfig
from .distributed import (DistInfo, all_agree, autocast_context, mean_over_ranks, run_device, setup_distributed,
                          teardown_distributed)
from .errors import SpeechtlError
from .fileio import atomic_write_text


@dataclass
class TrainResult:
    """What a run did: steps taken, the best dev metric and where it was, whether it stopped early."""

    steps: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    last_eval: dict[str, float] | None
    out_dir: Path


# --------------------------------------------------------------------------------------------
# The loop


def train(
    model: nn.Module,
    task: Any,
    train_loader: Iterable,
    *,
    dev_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike,
    resume: bool = False,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``task.loss(model, batch)`` over ``train_loader``.

    Args:
        model: any ``nn.Module``; parameters with ``requires_grad`` train. If it has
            ``param_groups(lr, weight_decay)`` those become the optimizer's groups (layer-wise
            learning rates); if it has ``enable_gradient_checkpointing()`` it is used on request;
            a true ``skips_layers`` attribute makes DDP look for unused parameters.
        task: has ``loss(model, batch) -> scalar tensor``.
        train_loader: an iterable of batches (usually a ``DataLoader``); with ``torchrun`` it
            must already give each rank its own share.
        dev_fn: ``dev_fn(model) -> {"wer": ..., ...}``, run on rank 0 at each evaluation; the
            ``config.metric`` entry picks the best checkpoint and drives early stopping.
        config: loop settings (:class:`speechtl.config.TrainConfig`).
        out_dir: receives ``metrics.jsonl`` and ``checkpoints/{last,best}.pt``.
        resume: continue from ``out_dir/checkpoints/last.pt``.
    """
    cfg = config or TrainConfig()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.grad_accum < 1:
        raise SpeechtlError(f"grad_accum must be at least 1, got {cfg.grad_accum}")
    run, total_steps = _set_up(model, task, train_loader, cfg)
    info = run.info
    progress = _resume(run, ckpt_dir, train_loader) if resume else Progress()
    log = MetricsLog(out_dir / "metrics.jsonl", info.is_main, keep_until_step=progress.step if resume else None)

    batches = batch_stream(train_loader, progress.epoch, progress.batch_in_epoch)
    bar = tqdm(total=total_steps, initial=progress.step, desc="train", unit="step",
               disable=not (cfg.progress and info.is_main))
    model.train()
    nonfinite_streak, interval_losses, t_start = 0, [], time.time()
    last_eval: dict[str, float] | None = None
    stopped_early = False
    while progress.step < total_steps:
        loss, epoch, epoch_ended = _accumulate_gradients(run, batches, progress)
        grad_norm = math.nan if loss is None else _unscale_and_clip(run)
        if not math.isfinite(grad_norm):  # a non-finite loss or gradient on any micro-batch of any rank
            nonfinite_streak = _skip_step(run, nonfinite_streak, progress.step + 1, unscaled=loss is not None)
            continue
        nonfinite_streak = 0
        _optimizer_step(run)
        progress.step += 1
        step = progress.step
        interval_losses.append(loss)
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            _log_steps(run, log, bar, step, epoch, interval_losses, grad_norm, t_start)
            interval_losses = []

        eval_due = ((step % cfg.eval_every == 0) if cfg.eval_every else epoch_ended) or step == total_steps
        if eval_due and dev_fn is not None:
            last_eval, improved = _evaluate(run, dev_fn, progress, log, bar, epoch)
            if improved:
                _save(run, ckpt_dir, "best", progress)
            patience = cfg.early_stopping_patience
            stopped_early = not improved and patience is not None and progress.bad_evals >= patience
        ckpt_due = (step % cfg.checkpoint_every == 0) if cfg.checkpoint_every else eval_due
        if ckpt_due or stopped_early or step == total_steps:
            _save(run, ckpt_dir, "last", progress)
        if stopped_early:
            if info.is_main:
                bar.write(f"early stop at step {step}: no better {cfg.metric} in {cfg.early_stopping_patience} "
                          f"evaluations (best {progress.best_metric:.4g} at step {progress.best_step})")
            break
    bar.close()

    if cfg.load_best_at_end and progress.best_step is not None and progress.best_step != progress.step:
        best = load_checkpoint(ckpt_dir / "best.pt")
        load_trainable(model, best.trainable, source=best.source)
        # A damaged best.pt falls back (with a warning) to best.prev.pt, an earlier best: report what was loaded.
        progress.best_step, progress.best_metric = best.progress.best_step, best.progress.best_metric
    log.write({"step": progress.step, "event": "end", "best_metric": progress.best_metric,
               "best_step": progress.best_step, "stopped_early": stopped_early})
    teardown_distributed(info)
    return TrainResult(progress.step, progress.epoch, progress.best_metric, progress.best_step, stopped_early,
                       last_eval, out_dir)


# --------------------------------------------------------------------------------------------
# What the loop calls: set-up and resume, the parts of a step, evaluation, checkpoints, logging


@dataclass
class _Run:
    """What the step helpers share."""

    cfg: TrainConfig
    info: DistInfo
    model: nn.Module
    step_module: nn.Module  # batch -> loss, wrapped in DDP under torchrun
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]


def check_settings(cfg: TrainConfig, model: nn.Module | None = None) -> None:
    """Refuse what :func:`train` cannot run on this machine (and ``model``), before anything is set up.

    Recipes call it when they build a run, so that a run that cannot start never replaces an earlier one:
    the device and the precision on it; with ``model``, gradient checkpointing and the trainable parameters.
    """
    try:
        device = run_device(cfg.device)
    except RuntimeError as e:
        raise SpeechtlError(f"device={cfg.device}: not a device ({str(e).splitlines()[0]}); use cpu, cuda or "
                            "cuda:N, or leave it unset") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:  # run_device always names the index
            chosen = f"device={cfg.device}" if cfg.device else f"this process's GPU ({device}, by its LOCAL_RANK)"
            raise SpeechtlError(f"{chosen}: this machine has {count} CUDA device(s); "
                                + ("use device=cpu" if count == 0 else
                                   f"use cuda:0 to cuda:{count - 1}, or at most {count} processes per machine"))
    if cfg.precision != "auto":  # "auto" asks the GPU what it supports, and always finds something
        autocast_context(device, cfg.precision)  # refuses fp16 off CUDA
    if model is None:
        return
    if cfg.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing",
                                                  hasattr(model, "enable_gradient_checkpointing")):
        raise SpeechtlError(f"{getattr(model, 'name', type(model).__name__)} does not support gradient "
                            "checkpointing; set gradient_checkpointing=false")
    if not any(p.requires_grad for p in model.parameters()):
        raise SpeechtlError("the model has no trainable parameters; check the transfer method")


def _set_up(model: nn.Module, task: Any, train_loader: Iterable, cfg: TrainConfig) -> tuple[_Run, int]:
    """Device, distributed, seeds, precision, optimizer and schedule; also the number of steps to take."""
    check_settings(cfg, model)
    info = setup_distributed(cfg.device)
    seed_everything(cfg.seed + info.rank)
    model.to(info.device)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    autocast, use_scaler = autocast_context(info.device, cfg.precision)
    scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)

    trainable = [p for p in model.parameters() if p.requires_grad]
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr, cfg.weight_decay)
    else:
        groups = [{"params": trainable, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    elif hasattr(train_loader, "__len__"):
        total_steps = cfg.epochs * math.ceil(len(train_loader) / cfg.grad_accum)
    else:
        raise SpeechtlError("the training data has no length: set max_steps")
    if total_steps < 1:
        raise SpeechtlError(f"nothing to train: {total_steps} steps (epochs={cfg.epochs}, max_steps={cfg.max_steps})")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.schedule, cfg.min_lr_ratio))

    step_module: nn.Module = _LossModule(model, task)
    if info.world_size > 1:
        step_module = DistributedDataParallel(
            step_module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters or bool(getattr(model, "skips_layers", False)),
            broadcast_buffers=False)
    return _Run(cfg, info, model, step_module, trainable, optimizer, scheduler, scaler, autocast), total_steps


def _resume(run: _Run, ckpt_dir: Path, train_loader: Iterable) -> Progress:
    """Load ``last.pt`` (or its previous copy) into the model, optimizer, schedule, scaler and RNGs."""
    if run.info.is_main:
        remove_stale_temp_files(ckpt_dir)
    state = load_checkpoint(ckpt_dir / "last.pt")
    state.restore(run.model, run.optimizer, run.scheduler, run.scaler, rank=run.info.rank,
                  world_size=run.info.world_size)
    if isinstance(getattr(train_loader, "sampler", None), RandomSampler):
        warnings.warn("resuming with a RandomSampler: its order is not reproducible, so the resumed run "
                      "sees batches in a different order", RuntimeWarning, stacklevel=3)
    return state.progress


def _accumulate_gradients(run: _Run, batches: Iterator, progress: Progress) -> tuple[float | None, int, bool]:
    """Forward and backward ``grad_accum`` micro-batches; gradients sync only on the last one.

    Returns the mean loss (None when a micro-batch's loss was not finite on some rank: its
    backward is left out), the epoch of the last batch and whether an epoch ended.
    """
    cfg, info = run.cfg, run.info
    step_loss, finite, epoch_ended = 0.0, True, False
    for micro in range(cfg.grad_accum):
        epoch, index, last_of_epoch, batch = next(batches)
        progress.epoch, progress.batch_in_epoch = (epoch + 1, 0) if last_of_epoch else (epoch, index + 1)
        epoch_ended |= last_of_epoch
        batch = move_to(batch, info.device)
        sync = micro == cfg.grad_accum - 1 or info.world_size == 1
        with contextlib.nullcontext() if sync else run.step_module.no_sync():
            with run.autocast():
                loss = run.step_module(batch)
            if not all_agree(bool(torch.isfinite(loss).all()), info):
                finite = False
                continue
            # The loss scaler is a no-op unless fp16; dividing by grad_accum averages the micro-batches.
            run.scaler.scale(loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
    return (step_loss if finite else None), epoch, epoch_ended


def _unscale_and_clip(run: _Run) -> float:
    """The gradient norm (before clipping to ``max_grad_norm``); inf when it is not finite on some rank."""
    run.scaler.unscale_(run.optimizer)
    if run.cfg.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(run.trainable, run.cfg.max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().float().norm() for p in run.trainable if p.grad is not None]))
    return float(norm) if all_agree(bool(torch.isfinite(norm)), run.info) else math.inf


def _skip_step(run: _Run, streak: int, step: int, *, unscaled: bool) -> int:
    """Drop this step's gradients; returns the non-finite steps in a row, and gives up at ``max_nonfinite``."""
    run.optimizer.zero_grad(set_to_none=True)
    if unscaled:
        # fp16 overflow is normal while the loss scale settles: update() lowers the scale, and it is not counted.
        overflow = run.scaler.is_enabled() and run.scaler.get_scale() >= 1.0
        run.scaler.update()  # closes the scaler's iteration that unscale_ opened
        if overflow:
            return streak
    streak += 1
    warnings.warn(f"step {step}: non-finite loss or gradient, batch skipped ({streak} in a row)",
                  RuntimeWarning, stacklevel=3)
    if streak >= run.cfg.max_nonfinite:
        raise SpeechtlError(f"{streak} batches in a row gave a non-finite loss or gradient (last at step {step}); "
                            "lower lr, use precision=fp32 or bf16, or check the data")
    return streak


def _optimizer_step(run: _Run) -> None:
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _evaluate(run: _Run, dev_fn: Callable[[nn.Module], dict[str, float]], progress: Progress, log: MetricsLog,
              bar: tqdm, epoch: int) -> tuple[dict[str, float], bool]:
    """Run ``dev_fn`` on rank 0, share the result, track the best; returns it and whether it is the best yet."""
    cfg, info = run.cfg, run.info
    shared: list[dict[str, float] | None] = [None]
    if info.is_main:
        run.model.eval()
        with torch.no_grad(), run.autocast():
            shared[0] = {k: float(v) for k, v in dev_fn(run.model).items()}
        run.model.train()
        if cfg.metric not in shared[0]:
            raise SpeechtlError(f"metric {cfg.metric!r} is not among the dev results {sorted(shared[0])}")
    if info.world_size > 1:
        dist.broadcast_object_list(shared, src=0)
    result = shared[0]
    value, best = result[cfg.metric], progress.best_metric
    improved = best is None or (value < best if cfg.metric_mode == "min" else value > best)
    # A tie on a coarse metric (accuracy on a small dev set) goes to the lower dev loss, when reported.
    dev_loss = result.get("loss")
    if not improved and value == best and dev_loss is not None and progress.best_loss is not None:
        improved = dev_loss < progress.best_loss
    if improved:
        progress.best_metric, progress.best_step, progress.bad_evals = value, progress.step, 0
        progress.best_loss = dev_loss
    else:
        progress.bad_evals += 1
    log.write({"step": progress.step, "epoch": epoch, "eval": result, "best": improved})
    if info.is_main:
        bar.write(f"step {progress.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items())
                  + (" (best)" if improved else ""))
    return result, improved


def _save(run: _Run, ckpt_dir: Path, name: str, progress: Progress) -> None:
    # Every rank's RNG goes in, so each resumes its own stream (augmentation, dropout).
    states: list[Any] = [None] * run.info.world_size
    if run.info.world_size > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if run.info.is_main:
        save_checkpoint(ckpt_dir, name, CheckpointState(
            dataclasses.replace(progress), trainable_state(run.model), run.optimizer.state_dict(),
            run.scheduler.state_dict(), run.scaler.state_dict(), states, run.info.world_size,
            dataclasses.asdict(run.cfg)))
    if run.info.world_size > 1:
        dist.barrier()


def _log_steps(run: _Run, log: MetricsLog, bar: tqdm, step: int, epoch: int, losses: list[float],
               grad_norm: float, t_start: float) -> None:
    """One metrics record for the steps since the last: their mean loss over ranks, the lr, the last grad norm."""
    mean_loss = mean_over_ranks(sum(losses) / len(losses), run.info)
    lr = max(g["lr"] for g in run.optimizer.param_groups)
    log.write({"step": step, "epoch": epoch, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
               "seconds": round(time.time() - t_start, 3)})
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")


# --------------------------------------------------------------------------------------------
# Seeds, schedule, the loss as a module, the metrics log


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of each group's base lr at a step: linear warm-up, then cosine/linear decay or constant."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * decay

    return f


class _LossModule(nn.Module):
    """``forward(batch) = task.loss(model, batch)``, so DDP sees the loss come out of its own forward."""

    def __init__(self, model: nn.Module, task: Any):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.loss(self.model, batch)


class MetricsLog:
    """Append-only JSONL, one record per line, flushed as written (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None = None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and path.exists():
            # Resuming: drop records written after the checkpoint, they are about to be redone.
            kept = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if _record_step(line) <= keep_until_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif keep_until_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _record_step(line: str) -> float:
    """The step of a metrics line; a torn line (the process was killed while writing it) sorts last."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf

"""The training loop: one loop for every modality.

It sees a model, a task with ``task.loss(model, batch) -> scalar`` and an iterable of batches; it
never looks inside a batch beyond moving its tensors to the device. Read it top to bottom in
:func:`train`: set-up (device, precision, distributed, optimizer, schedule), resume, then the
step loop (gradient accumulation, clipping, optimizer and schedule step, logging, evaluation,
checkpoints) and the end of training.

Checkpoints (``out_dir/checkpoints/last.pt`` and ``best.pt``) hold only the trainable parameters
plus optimizer, schedule, loss-scaler, every rank's RNG states and the data position (epoch and
batches consumed), written atomically (temp file, fsync, read back against its sha256, rename). The
one before stays as ``last.prev.pt``/``best.prev.pt`` and ``checksums.json`` lists the digest of each,
so a resume after a crash that tore or corrupted ``last.pt`` warns once and uses ``last.prev.pt``.
Resuming continues exactly where the run stopped, given a sampler whose order depends only on the
epoch (``set_epoch``), as :class:`speechtl.data.loader.DurationBatchSampler` and
``DistributedSampler`` do.

Distributed data parallel runs under ``torchrun`` (detected from ``RANK``/``WORLD_SIZE``; gloo on
CPU, nccl on CUDA); gradients are synchronised only on the last micro-step of an accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import tempfile
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
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from .config import TrainConfig, default_permissions
from .errors import SpeechtlError
from .fileio import atomic_write_text

CHECKPOINT_VERSION = 1


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
# Small helpers the loop calls: distributed set-up, precision, seeds, schedule, data position.


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run initialised the process group and tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
        owns = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:  # plain "cuda": this process's local GPU
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return DistInfo(rank, world, dev, owns)


def autocast_context(
    device: torch.device, precision: str
) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """A factory of autocast contexts for ``precision`` and whether fp16 loss scaling is needed."""
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext, False
    if precision == "fp16" and device.type != "cuda":
        raise SpeechtlError("precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), precision == "fp16"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


class _LossModule(nn.Module):
    """``forward(batch) = task.loss(model, batch)``, so DDP sees the loss come out of its own forward."""

    def __init__(self, model: nn.Module, task: Any):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.loss(self.model, batch)


def _all_agree(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks skip or step together)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _mean_over_ranks(value: float, info: DistInfo) -> float:
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


CHECKSUMS = "checksums.json"
_PENDING = "pending"  # the digest of a checkpoint being put in place (see _atomic_torch_save)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts the bytes going through it."""

    def __init__(self, f: Any):
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


def _sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders; renames stay atomic
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_checksums(ckpt_dir: Path) -> dict[str, Any] | None:
    """``checkpoints/checksums.json``: ``{file name or "pending": {"sha256", "size", "step"}}``; None if absent."""
    path = ckpt_dir / CHECKSUMS
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return dict(record["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Written atomically, so this is outside damage; every checkpoint then fails its check and
        # resuming stops with a message rather than trusting unverified files.
        return {}


def _write_checksums(ckpt_dir: Path, files: dict[str, Any]) -> None:
    atomic_write_text(ckpt_dir / CHECKSUMS, json.dumps({"version": CHECKPOINT_VERSION, "files": files}, indent=1)
                      + "\n")


def _atomic_torch_save(obj: Any, path: Path, step: int | None = None) -> None:
    """Save ``obj`` to ``path`` so that a crash at any moment leaves a verifiable checkpoint behind.

    The new file is written beside ``path`` (temp file, fsync), read back and compared with the
    sha256 of what was written; only then does the old ``path`` become ``<name>.prev.pt`` (a hard
    link, so ``path`` never disappears) and the new file take its name. ``checksums.json`` lists
    the digest of every checkpoint on disk, and of the incoming one before it is renamed, so
    :func:`_verified_checkpoint` can tell a complete file from a torn or corrupt one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prev = path.with_name(path.stem + ".prev" + path.suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    link_tmp, writer = None, None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        entry = {"sha256": writer.sha256.hexdigest(), "size": writer.size, "step": step}
        if _sha256_file(Path(tmp)) != (entry["sha256"], entry["size"]):
            raise SpeechtlError(f"{path}: the checkpoint read back differs from what was written; check the disk")
        default_permissions(tmp)
        files = _read_checksums(path.parent) or {}
        files[_PENDING] = entry
        _write_checksums(path.parent, files)
        if path.exists():
            link_tmp = f"{tmp}.prev"
            try:
                os.link(path, link_tmp)
                os.replace(link_tmp, prev)
            except OSError:  # no hard links here: the old file moves aside, leaving a moment without `path`
                os.replace(path, prev)
            link_tmp = None
            if path.name in files:
                files[prev.name] = files[path.name]
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        files[path.name] = files.pop(_PENDING)
        _write_checksums(path.parent, files)
    except BaseException as e:
        for leftover in (tmp, link_tmp):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
        cause = e if isinstance(e, OSError) else getattr(writer, "error", None)
        if cause is not None:  # disk full, quota, permissions: the user's to fix, the old checkpoint stays
            raise SpeechtlError(f"{path}: cannot write the checkpoint ({cause.strerror or cause}); free disk space or "
                                "choose another output folder, then resume") from e
        raise


def _remove_stale_temp_files(ckpt_dir: Path) -> None:
    """Temp files of a run that was killed while saving (``.last.pt.*.tmp`` and the like)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                p.unlink()


def _verified_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """Load ``path`` (``checkpoints/<name>.pt``) or, when it is missing, torn or corrupt, ``<name>.prev.pt``.

    A file counts when its size and sha256 are listed in ``checksums.json`` (checkpoints written
    before checksums existed are only loaded) and ``torch.load(weights_only=True)`` reads it.
    Falling back prints one warning; if neither file is intact it is a :class:`SpeechtlError`.
    """
    ckpt_dir = path.parent
    prev = path.with_name(path.stem + ".prev" + path.suffix)
    files = _read_checksums(ckpt_dir)
    known = None if files is None else {(e.get("sha256"), e.get("size")) for e in files.values() if isinstance(e, dict)}
    problems: list[str] = []
    for candidate in (path, prev):
        if not candidate.is_file():
            problems.append(f"{candidate.name} is missing")
            continue
        if known is not None and _sha256_file(candidate) not in known:
            problems.append(f"{candidate.name} does not match its sha256 in {CHECKSUMS} (torn write or corruption)")
            continue
        try:
            ckpt = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, unpickling refused, ...: all mean the file is unusable
            problems.append(f"{candidate.name} cannot be read ({str(e).strip().splitlines()[0][:120]})")
            continue
        if candidate != path:
            warnings.warn(f"{path}: {problems[0]}; using {candidate.name} (step {ckpt.get('step')}) instead",
                          RuntimeWarning, stacklevel=3)
        return ckpt, candidate
    if not path.is_file() and not prev.is_file():
        raise SpeechtlError(f"{path}: no checkpoint to resume from; run without resume")
    raise SpeechtlError(f"{path}: no intact checkpoint to resume from ({'; '.join(problems)}); "
                        "start the run again without resume")


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

    # -- set-up: device, distributed, seeds, precision ----------------------------------------
    info = setup_distributed(cfg.device)
    seed_everything(cfg.seed + info.rank)
    model.to(info.device)
    if cfg.gradient_checkpointing:
        if not hasattr(model, "enable_gradient_checkpointing"):
            raise SpeechtlError(f"{type(model).__name__} has no enable_gradient_checkpointing(); "
                                "set gradient_checkpointing=false")
        model.enable_gradient_checkpointing()
    autocast, use_scaler = autocast_context(info.device, cfg.precision)
    scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)

    # -- optimizer and schedule -------------------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SpeechtlError("the model has no trainable parameters; check the transfer method")
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

    # -- resume ---------------------------------------------------------------------------------------
    pos = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "best_step": None, "bad_evals": 0,
           "best_loss": None}
    if resume:
        pos = _load_checkpoint(ckpt_dir / "last.pt", model, optimizer, scheduler, scaler, info)
        if isinstance(getattr(train_loader, "sampler", None), RandomSampler):
            warnings.warn("resuming with a RandomSampler: its order is not reproducible, so the resumed run "
                          "sees batches in a different order", RuntimeWarning, stacklevel=2)
    log = MetricsLog(out_dir / "metrics.jsonl", info.is_main, keep_until_step=pos["step"] if resume else None)

    def save(name: str) -> None:
        # Every rank's RNG goes in, so each resumes its own stream (augmentation, dropout).
        states = [None] * info.world_size
        if info.world_size > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if info.is_main:
            _atomic_torch_save({
                "version": CHECKPOINT_VERSION,
                **pos,
                "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
                "world_size": info.world_size,
                "config": dataclasses.asdict(cfg),
            }, ckpt_dir / f"{name}.pt", step=pos["step"])
        if info.world_size > 1:
            dist.barrier()

    def evaluate() -> dict[str, float] | None:
        if dev_fn is None:
            return None
        result = [None]
        if info.is_main:
            model.eval()
            with torch.no_grad(), autocast():
                result[0] = {k: float(v) for k, v in dev_fn(model).items()}
            model.train()
            if cfg.metric not in result[0]:
                raise SpeechtlError(f"metric {cfg.metric!r} is not among the dev results {sorted(result[0])}")
        if info.world_size > 1:
            dist.broadcast_object_list(result, src=0)
        return result[0]

    # -- the step loop ------------------------------------------------------------------------------
    batches = batch_stream(train_loader, pos["epoch"], pos["batch_in_epoch"])
    bar = tqdm(total=total_steps, initial=pos["step"], desc="train", unit="step",
               disable=not (cfg.progress and info.is_main))
    model.train()
    nonfinite_streak = 0
    interval_loss, interval_steps, t_start = 0.0, 0, time.time()
    last_eval: dict[str, float] | None = None
    stopped_early = False
    while pos["step"] < total_steps:
        # One optimizer step = grad_accum micro-batches; gradients sync only on the last one.
        step_ok = True
        step_loss = 0.0
        epoch_ended = False
        for micro in range(cfg.grad_accum):
            epoch, index, last_of_epoch, batch = next(batches)
            pos["epoch"], pos["batch_in_epoch"] = (epoch + 1, 0) if last_of_epoch else (epoch, index + 1)
            epoch_ended |= last_of_epoch
            batch = move_to(batch, info.device)
            sync = micro == cfg.grad_accum - 1 or info.world_size == 1
            with contextlib.nullcontext() if sync else step_module.no_sync():
                with autocast():
                    loss = step_module(batch)
                if not _all_agree(bool(torch.isfinite(loss).all()), info):
                    step_ok = False
                    continue
                # The loss scaler is a no-op unless fp16; dividing by grad_accum averages the micro-batches.
                scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum

        unscaled = step_ok
        if step_ok:
            scaler.unscale_(optimizer)
            if cfg.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            else:
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([p.grad.detach().float().norm() for p in trainable if p.grad is not None]))
            if not _all_agree(bool(torch.isfinite(grad_norm)), info):
                if use_scaler and scaler.get_scale() >= 1.0:
                    # fp16 overflow, normal while the loss scale settles: the scaler lowers it, the batch is dropped.
                    optimizer.zero_grad(set_to_none=True)
                    scaler.update()
                    continue
                step_ok = False
        if not step_ok:
            optimizer.zero_grad(set_to_none=True)
            if use_scaler and unscaled:
                scaler.update()  # closes the scaler's iteration (and lowers its scale)
            nonfinite_streak += 1
            warnings.warn(f"step {pos['step'] + 1}: non-finite loss or gradient, batch skipped "
                          f"({nonfinite_streak} in a row)", RuntimeWarning, stacklevel=2)
            if nonfinite_streak >= cfg.max_nonfinite:
                raise SpeechtlError(
                    f"{nonfinite_streak} batches in a row gave a non-finite loss or gradient (last at step "
                    f"{pos['step'] + 1}); lower lr, use precision=fp32 or bf16, or check the data")
            continue
        nonfinite_streak = 0
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pos["step"] += 1
        step = pos["step"]
        interval_loss += step_loss
        interval_steps += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == total_steps:
            mean_loss = _mean_over_ranks(interval_loss / interval_steps, info)
            lrs = [g["lr"] for g in optimizer.param_groups]
            record = {"step": step, "epoch": epoch, "loss": mean_loss, "lr": max(lrs),
                      "grad_norm": float(grad_norm), "seconds": round(time.time() - t_start, 3)}
            log.write(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{max(lrs):.2e}")
            interval_loss, interval_steps = 0.0, 0

        # -- evaluation, best checkpoint, early stopping, last checkpoint ------------------------
        eval_due = (step % cfg.eval_every == 0) if cfg.eval_every else epoch_ended
        eval_due |= step == total_steps
        if eval_due and dev_fn is not None:
            last_eval = evaluate()
            value = last_eval[cfg.metric]
            best = pos["best_metric"]
            improved = best is None or (value < best if cfg.metric_mode == "min" else value > best)
            # A tie on a coarse metric (accuracy on a small dev set) goes to the lower dev loss, when reported.
            tie_loss = last_eval.get("loss")
            if not improved and value == best and tie_loss is not None and pos.get("best_loss") is not None:
                improved = tie_loss < pos["best_loss"]
            log.write({"step": step, "epoch": epoch, "eval": last_eval, "best": improved})
            if info.is_main:
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in last_eval.items())
                          + (" (best)" if improved else ""))
            if improved:
                pos["best_metric"], pos["best_step"], pos["bad_evals"] = value, step, 0
                pos["best_loss"] = last_eval.get("loss")
                save("best")
            else:
                pos["bad_evals"] += 1
                if cfg.early_stopping_patience is not None and pos["bad_evals"] >= cfg.early_stopping_patience:
                    stopped_early = True
        ckpt_due = (step % cfg.checkpoint_every == 0) if cfg.checkpoint_every else eval_due
        if ckpt_due or stopped_early or step == total_steps:
            save("last")
        if stopped_early:
            if info.is_main:
                bar.write(f"early stop at step {step}: no better {cfg.metric} in "
                          f"{cfg.early_stopping_patience} evaluations (best {pos['best_metric']:.4g} at step "
                          f"{pos['best_step']})")
            break
    bar.close()

    # -- the end: keep the best weights -----------------------------------------------------------
    if cfg.load_best_at_end and pos["best_step"] is not None and pos["best_step"] != pos["step"]:
        _load_trainable(_verified_checkpoint(ckpt_dir / "best.pt")[0]["trainable"], model)
    log.write({"step": pos["step"], "event": "end", "best_metric": pos["best_metric"], "best_step": pos["best_step"],
               "stopped_early": stopped_early})
    if info.owns_group:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(pos["step"], pos["epoch"], pos["best_metric"], pos["best_step"], stopped_early, last_eval,
                       out_dir)


def _load_trainable(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        extra, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
        raise SpeechtlError(f"checkpoint does not match the model's trainable parameters "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the same method and config")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def _load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, scaler, info: DistInfo) -> dict[str, Any]:
    if info.is_main:
        _remove_stale_temp_files(path.parent)
    ckpt, path = _verified_checkpoint(path)
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise SpeechtlError(f"{path}: checkpoint version {ckpt.get('version')} is not {CHECKPOINT_VERSION}")
    _load_trainable(ckpt["trainable"], model)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if ckpt["world_size"] == info.world_size:
        set_rng_state(ckpt["rng"][info.rank])
    else:
        warnings.warn(f"{path}: saved with {ckpt['world_size']} processes, resuming with {info.world_size}; "
                      "random streams restart", RuntimeWarning, stacklevel=3)
    return {**{k: ckpt[k] for k in ("step", "epoch", "batch_in_epoch", "best_metric", "best_step", "bad_evals")},
            "best_loss": ckpt.get("best_loss")}


from ._callable import callable_module  # noqa: E402

callable_module(__name__, "train")

"""Where the training loop runs: torchrun's process group, each rank's device, precision, agreement across ranks.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) each process joins the group,
gloo on CPU and nccl on CUDA; a plain run is one process, rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import SpeechtlError


@dataclass
class DistInfo:
    """This process: its rank among ``world_size``, its device, and whether it set up the process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run initialised the process group and tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_JOINED = False  # the process group was started by setup_distributed, so teardown_distributed ends it


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any.

    Called again (a recipe joins before training, to share work), it returns the same group; a group
    this function started is owned (``owns_group``) however often it was called, one started by the
    caller is not."""
    global _JOINED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
        _JOINED = True
    owns = _JOINED and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dev = run_device(device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistInfo(rank, world, dev, owns)


def run_device(device: str | None = None, rank: int | None = None) -> torch.device:
    """The device a process of the run computes on: ``device`` (plain ``"cuda"``: its local GPU), or by
    default its local GPU when CUDA is available, else the CPU. The local GPU is ``LOCAL_RANK``'s, else
    ``rank``'s (default: ``RANK``, as torchrun sets it before the process group exists)."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # plain "cuda": this process's local GPU
        dev = torch.device("cuda", local)
    return dev


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


def teardown_distributed(info: DistInfo) -> None:
    """End the process group if this run owns it (:func:`setup_distributed` started it), after a barrier."""
    global _JOINED
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        # Gloo's worker threads free each finished work just after it completes, and a work that holds
        # tensors made in Python (all_gather_object's) needs the GIL to be freed. The group is destroyed
        # later with the GIL held (when DDP's reducer, its last owner, is freed) and joins those threads:
        # a thread still freeing a work would wait on the GIL for ever. Sleeping hands them the GIL first.
        time.sleep(0.2)
        dist.destroy_process_group()
        _JOINED = False


def all_agree(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks skip or step together)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over all ranks."""
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def map_shards(fn: Callable[[list[Any]], list[Any]], items: Sequence[Any], rank: int = 0, world: int = 1) -> list[Any]:
    """``fn(items)`` computed once across the ranks: each rank runs ``fn`` on its share (every ``world``-th
    item from ``rank``), and every rank gets all the results in ``items``' order. ``fn`` returns one picklable
    result per item it is given. With one process it is ``fn(items)``."""
    items = list(items)
    share = items[rank::world]
    if world == 1:
        return list(fn(share))
    # Every rank reaches the gather, a failed one too, so that all stop together rather than wait.
    error: BaseException | None = None
    try:
        mine, failure = list(fn(share)), None
        if len(mine) != len(share):
            failure = f"{len(mine)} results for {len(share)} items"
    except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks learn of it)
        mine, failure, error = None, f"{type(e).__name__}: {e}", e
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, (mine, failure))
    for r, (_, f) in enumerate(shards):
        if f is not None:
            if r == rank and error is not None:
                raise error
            raise SpeechtlError(f"process {r} of {world} failed on its share: {f}")
    out: list[Any] = [None] * len(items)
    for r, (shard, _) in enumerate(shards):
        out[r::world] = shard
    return out

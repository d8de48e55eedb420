"""The contract every adapter kind answers: what trains, what is saved, how it merges, how to run without it.

An :class:`AdapterSet` is named adapters of one kind living inside a model, one of them active at
a time. :class:`~speechtl.transfer.AdaptedModel`, saving (:mod:`speechtl.adapters.io`), export and
routing ask it these questions instead of switching on the adapter kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch


@dataclass
class InjectionReport:
    """What an injection did: replaced module names and parameter counts."""

    method: str
    replaced: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        more = f", … ({len(self.replaced)} in all)" if len(self.replaced) > 4 else ""
        shown = ", ".join(self.replaced[:4]) + more
        return (f"{self.method}: {len(self.replaced)} modules ({shown}); "
                f"{self.trainable:,} of {self.total:,} parameters train ({pct:.3f}%)")


class AdapterSet(Protocol):
    """Named adapters of one kind living inside a model, one of them active at a time.

    Implemented by :class:`speechtl.adapters.lora.PeftAdapters` (LoRA, DoRA, IA3) and
    :class:`speechtl.adapters.bottleneck.BottleneckAdapters`.
    """

    kind: str
    names: list[str]
    active: str | None
    report: InjectionReport
    mergeable: ClassVar[bool]  # whether merge() can fold an adapter into the base weights
    mixable: bool  # whether mixed() can run several adapters at once, weighted

    # -- which adapter runs ----------------------------------------------------------------------
    def add(self, name: str) -> None:
        """Add a fresh adapter (same shape and targets as the first) and make it active."""
        ...

    def set_active(self, name: str) -> None:
        """Route the forward pass through adapter ``name``; only its weights train."""
        ...

    def delete(self, name: str) -> None:
        ...

    def disable(self) -> None:
        """Forward as the base model (adapters kept)."""
        ...

    def enable(self) -> None:
        """Undo :meth:`disable`."""
        ...

    def disabled(self) -> AbstractContextManager[None]:
        """Forward as the base model inside this block."""
        ...

    def mixed(self, weights: dict[str, float]) -> AbstractContextManager[None]:
        """Inside this block every adapter in ``weights`` runs at once, its contribution scaled by its weight."""
        ...

    # -- what trains -------------------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        """Full parameter names (relative to the model the set was injected into) that train."""
        ...

    # -- what is saved -----------------------------------------------------------------------------
    def state(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s weights under keys that do not contain the adapter's name."""
        ...

    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        ...

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Trained tensors that belong to no single named adapter (saved once beside them), by full name
        relative to the model; empty when every trained tensor is some adapter's."""
        ...

    def save_native(self, directory: str | os.PathLike) -> None:
        """Also write the adapters in their library's own format into ``directory`` (or nothing)."""
        ...

    # -- merging -----------------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the active adapter into the base weights and remove the adapter layers
        (a :class:`~speechtl.errors.SpeechtlError` when the kind is not ``mergeable``)."""
        ...


@contextmanager
def running_as_base(adapters: AdapterSet) -> Iterator[None]:
    """:meth:`AdapterSet.disabled` for any kind: adapters off for the block, back on after it (also on errors)."""
    adapters.disable()
    try:
        yield
    finally:
        adapters.enable()

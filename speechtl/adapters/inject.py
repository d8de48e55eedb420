"""Find modules by name and put adapters on them.

Targets are chosen like peft does: by name suffix (``q_proj`` matches
``model.encoder.layers.3.self_attn.q_proj``), by a regular expression over the full name, and
optionally only inside some layer indices (``"8-11"``, ``"0,2,4"``). Matching nothing is an error,
never a silent no-op, and every injection reports what it replaced and how many parameters train.

An adapter module answers one method, ``adapter_params() -> list[str]`` (its own parameter names
that belong to adapters, torchtune style); :func:`get_adapter_params` collects them across a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import SpeechtlError
from .base import AdapterSet, InjectionReport

__all__ = ["AdapterModule", "AdapterSet", "InjectionReport", "count_parameters", "find_targets", "get_adapter_params",
           "layer_index", "parse_layers", "replace_modules", "set_requires_grad"]

# A layer index inside a module name: ``...layers.3.``, ``...layer.3.``, ``...blocks.3.``, ``...h.3.``.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|blocks|h)\.(\d+)(?:\.|$)")


@runtime_checkable
class AdapterModule(Protocol):
    """A module holding adapter weights next to (or around) a frozen base layer."""

    def adapter_params(self) -> list[str]:
        """Names, relative to this module, of the parameters that belong to adapters."""
        ...


def parse_layers(spec: str | Sequence[int] | None) -> set[int] | None:
    """``"0-3"``, ``"0,2,5-7"`` or a list of ints to a set of layer indices (None: every layer)."""
    if spec is None or spec == "" or spec == []:
        return None
    if not isinstance(spec, str):
        return {int(i) for i in spec}
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
        if not m:
            raise SpeechtlError(f"target_layers {spec!r}: write layer indices like '0-3' or '0,2,5-7'")
        if m.group(3) is not None:
            out.add(int(m.group(3)))
        else:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise SpeechtlError(f"target_layers {spec!r}: range {part!r} runs backwards")
            out.update(range(lo, hi + 1))
    return out


def layer_index(name: str) -> int | None:
    """The last layer index in a dotted module name, or None outside any numbered layer stack."""
    found = _LAYER_INDEX.findall(name)
    return int(found[-1]) if found else None


def find_targets(
    model: nn.Module,
    *,
    suffixes: Iterable[str] = (),
    regex: str | None = None,
    layers: str | Sequence[int] | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
    what: str = "adapter",
) -> list[str]:
    """Full names of ``model``'s modules to adapt.

    A module matches when its name ends with one of ``suffixes`` (at a dot boundary) or
    ``regex`` matches its whole name, it is an instance of ``types``, and (when ``layers`` is
    given) its layer index is one of ``layers``. Raises :class:`SpeechtlError` naming close
    candidates when nothing matched.
    """
    suffixes = tuple(suffixes)
    if not suffixes and not regex:
        raise SpeechtlError(f"{what}: give target_modules (name suffixes) or target_regex to say where adapters go")
    try:
        pattern = re.compile(regex) if regex else None
    except re.error as e:
        raise SpeechtlError(f"target_regex {regex!r} is not a valid regular expression: {e}") from None
    wanted_layers = parse_layers(layers)
    out = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, types):
            continue
        by_suffix = any(name == s or name.endswith("." + s) for s in suffixes)
        by_regex = bool(pattern and pattern.fullmatch(name))
        if not (by_suffix or by_regex):
            continue
        if wanted_layers is not None and layer_index(name) not in wanted_layers:
            continue
        out.append(name)
    if not out:
        linear = [n for n, m in model.named_modules() if n and isinstance(m, types)]
        leaf_names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        where = f" in layers {sorted(wanted_layers)}" if wanted_layers is not None else ""
        raise SpeechtlError(
            f"{what}: no {'/'.join(t.__name__ for t in types)} module matched target_modules={list(suffixes)} "
            f"target_regex={regex!r}{where}; this model's candidates end with: {', '.join(leaf_names[:30])}"
        )
    return out


def replace_modules(model: nn.Module, names: Sequence[str], build: Callable[[str, nn.Module], nn.Module]) -> list[str]:
    """Replace each named submodule ``m`` by ``build(name, m)``; returns the names replaced."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        setattr(parent, child, build(name, old))
    return list(names)


def get_adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter of ``model`` by full name, from modules answering ``adapter_params()``."""
    out: dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        if isinstance(module, AdapterModule) and not isinstance(module, type):
            for pname in module.adapter_params():
                full = f"{mname}.{pname}" if mname else pname
                out[full] = module.get_parameter(pname)
    return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared ones counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def set_requires_grad(params: Iterable[torch.Tensor], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)

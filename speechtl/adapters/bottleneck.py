"""Bottleneck (Houlsby / Pfeiffer) residual adapters.

An adapter is a small residual MLP ``h + up(act(down(h)))`` applied to the output of a
sub-layer: after the attention output projection and after the feed-forward output (Houlsby,
2019), or only after the feed-forward output (Pfeiffer, 2020). The up-projection starts at zero,
so an adapted model computes exactly what its base model does until training moves it.

The adapter is put on a sub-layer by wrapping it (:class:`BottleneckLayer` keeps the original as
``base_layer``), so one wrapper can hold several named adapters (one per accent, say) and route
through the active one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import ClassVar, Literal

import torch
from torch import nn

from ..errors import SpeechtlError
from .base import InjectionReport, running_as_base
from .inject import count_parameters, find_targets, replace_modules

Style = Literal["houlsby", "pfeiffer"]

# Sub-layer outputs by family: Whisper (self_attn / encoder_attn / fc2) and the wav2vec2 family
# (wav2vec2, HuBERT, WavLM, data2vec-audio: attention.out_proj / feed_forward.output_dense).
ATTENTION_OUTPUTS = ("self_attn.out_proj", "encoder_attn.out_proj", "attention.out_proj")
FFN_OUTPUTS = ("fc2", "feed_forward.output_dense")

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def default_targets(style: Style) -> tuple[str, ...]:
    """Module-name suffixes adapters go after: attention and feed-forward outputs (houlsby) or feed-forward only."""
    if style == "houlsby":
        return ATTENTION_OUTPUTS + FFN_OUTPUTS
    if style == "pfeiffer":
        return FFN_OUTPUTS
    raise SpeechtlError(f"bottleneck_style {style!r} is not one of houlsby, pfeiffer")


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpeechtlError(f"adapter name {name!r}: use letters, digits, '_' or '-' only")
    return name


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))`` on ``(..., features)``; ``up`` is zero-initialised.

    Args:
        features: width of the sub-layer output it adapts.
        dim: bottleneck width.
        activation: ``relu``, ``gelu``, ``silu`` or ``tanh``.
    """

    def __init__(self, features: int, dim: int, activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise SpeechtlError(f"bottleneck_activation {activation!r} is not one of {', '.join(_ACTIVATIONS)}")
        self.down = nn.Linear(features, dim)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(dim, features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Adapters stay fp32 when the base runs in half precision: compute in their dtype, add back in h's.
        return h + self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)

    def adapter_params(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]


class BottleneckLayer(nn.Module):
    """A sub-layer followed by the active one of its named bottleneck adapters.

    ``forward`` takes whatever the wrapped ``base_layer`` takes; its output ``(..., features)``
    goes through the active adapter unless adapters are disabled.
    """

    def __init__(self, base_layer: nn.Module, features: int):
        super().__init__()
        self.base_layer = base_layer
        self.features = features
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False

    def add(self, name: str, dim: int, activation: str) -> None:
        ref = next(self.base_layer.parameters(), None)
        adapter = Bottleneck(self.features, dim, activation)
        if ref is not None:
            adapter.to(device=ref.device)
        self.adapters[name] = adapter

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if self.disabled or self.active is None:
            return out
        return self.adapters[self.active](out)

    def adapter_params(self) -> list[str]:
        return [f"adapters.{n}" for n, _ in self.adapters.named_parameters()]

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}, active={self.active!r}, disabled={self.disabled}"


def _out_features(module: nn.Module, name: str) -> int:
    features = getattr(module, "out_features", None)
    if features is None:
        raise SpeechtlError(
            f"bottleneck target {name} ({type(module).__name__}) has no out_features; target linear layers")
    return int(features)


class BottleneckAdapters:
    """Named bottleneck adapters injected into ``model`` at the modules ``targets`` (full names).

    They are non-linear, so they neither merge into the base weights nor mix. Base modules named
    by ``modules_to_save`` train beside the active adapter and are shared by every named adapter
    (``shared_state``).

    Args:
        model: the module to adapt (modified in place).
        targets: full module names whose outputs get an adapter (see :func:`~speechtl.adapters.inject.find_targets`).
        name: the first adapter's name.
        dim: bottleneck width.
        activation: the adapter's non-linearity.
        modules_to_save: name suffixes of whole base modules that train too (e.g. a layer norm).
    """

    kind = "bottleneck"
    mergeable: ClassVar[bool] = False
    mixable = False

    def __init__(self, model: nn.Module, targets: list[str], name: str, *, dim: int, activation: str = "relu",
                 modules_to_save: Sequence[str] = ()):
        if dim < 1:
            raise SpeechtlError(f"bottleneck width must be at least 1, got {dim}")
        self.model = model
        self.dim = dim
        self.activation = activation
        self.targets = list(targets)
        replace_modules(model, self.targets, lambda n, m: BottleneckLayer(m, _out_features(m, n)))
        # Found after the wrapping, so that the names are those of the adapted model.
        self.saved_modules = find_targets(model, suffixes=modules_to_save, types=(nn.Module,),
                                          what="modules_to_save") if modules_to_save else []
        self.names: list[str] = []
        self.active: str | None = None
        self.add(name)
        self.report = InjectionReport("bottleneck", list(self.targets))

    def _layers(self) -> list[tuple[str, BottleneckLayer]]:
        return [(t, self.model.get_submodule(t)) for t in self.targets]

    def add(self, name: str) -> None:
        check_adapter_name(name)
        if name in self.names:
            raise SpeechtlError(f"an adapter named {name!r} already exists; pick another name")
        for _, layer in self._layers():
            layer.add(name, self.dim, self.activation)
        self.names.append(name)
        self.set_active(name)

    def set_active(self, name: str) -> None:
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        for _, layer in self._layers():
            layer.active = name
            for key, adapter in layer.adapters.items():
                adapter.requires_grad_(key == name)
        self.active = name

    def disable(self) -> None:
        for _, layer in self._layers():
            layer.disabled = True

    def enable(self) -> None:
        for _, layer in self._layers():
            layer.disabled = False

    def disabled(self) -> AbstractContextManager[None]:
        return running_as_base(self)

    def mixed(self, weights: dict[str, float]) -> AbstractContextManager[None]:
        raise SpeechtlError("bottleneck adapters do not mix (only LoRA's updates add up); use one at a time")

    def delete(self, name: str) -> None:
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        for _, layer in self._layers():
            del layer.adapters[name]
        self.names.remove(name)
        if self.active == name:
            self.active = None
            for _, layer in self._layers():
                layer.active = None
            if self.names:
                self.set_active(self.names[-1])

    def merge(self) -> None:
        raise SpeechtlError(
            "bottleneck adapters are non-linear and cannot be merged into the base weights; "
            "save them with save_adapter and load them on the base model instead"
        )

    def state(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        out = {}
        for target, layer in self._layers():
            for pname, p in layer.adapters[name].named_parameters():
                out[f"{target}.{pname}"] = p.detach()
        return out

    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        own = self.state(name)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise SpeechtlError(
                f"bottleneck adapter weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for key, p in own.items():
                if p.shape != state[key].shape:
                    raise SpeechtlError(f"bottleneck adapter weight {key} has shape {tuple(state[key].shape)}, "
                                        f"this model needs {tuple(p.shape)}")
                p.copy_(state[key])

    def shared_state(self) -> dict[str, torch.Tensor]:
        return {f"{m}.{k}": v.detach() for m in self.saved_modules
                for k, v in self.model.get_submodule(m).state_dict().items()}

    def save_native(self, directory: str | os.PathLike) -> None:
        """Nothing: bottleneck adapters have no other library's format."""

    def trainable_names(self) -> list[str]:
        shared = [f"{m}.{n}" for m in self.saved_modules for n, _ in self.model.get_submodule(m).named_parameters()]
        if self.active is None:
            return shared
        return [f"{t}.adapters.{self.active}.{n}" for t, layer in self._layers()
                for n, _ in layer.adapters[self.active].named_parameters()] + shared

    def num_parameters(self, name: str | None = None) -> int:
        name = name or self.active
        return sum(count_parameters(layer.adapters[name]) for _, layer in self._layers()) if name else 0

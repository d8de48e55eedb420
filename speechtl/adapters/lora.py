"""LoRA, DoRA and IA3 through the ``peft`` library.

peft does the layer surgery (each targeted linear layer becomes a wrapper that keeps
``base_layer`` and computes ``base(x) + B(A(dropout(x))) * scale``); this module chooses the
targets (full module names from :func:`~speechtl.adapters.inject.find_targets`, so a layer range
or regex resolves to an explicit list), keeps several named adapters, and writes adapters in
peft's own format (``adapter_model.safetensors`` + ``adapter_config.json``) so that
``peft.PeftModel.from_pretrained(plain_transformers_model, folder)`` loads them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import torch
from peft import IA3Config, LoraConfig, PeftConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save
from torch import nn

from ..errors import SpeechtlError
from ..fileio import atomic_write, atomic_write_text
from .base import InjectionReport, running_as_base
from .bottleneck import FFN_OUTPUTS, check_adapter_name

PeftMethod = Literal["lora", "dora", "ia3"]
PEFT_METHODS: tuple[str, ...] = ("lora", "dora", "ia3")

# IA3 rescales keys, values and the feed-forward output layer's *input* (Liu et al., 2022).
IA3_TARGETS = ("k_proj", "v_proj") + FFN_OUTPUTS


def make_peft_config(
    method: PeftMethod,
    targets: list[str],
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    modules_to_save: list[str] | None = None,
    base_model_name: str | None = None,
) -> PeftConfig:
    """A peft config for ``method`` on the modules ``targets`` (full names, so the layer choice is exact)."""
    modules_to_save = list(modules_to_save) if modules_to_save else None
    if method in ("lora", "dora"):
        if r < 1:
            raise SpeechtlError(f"lora_r must be at least 1, got {r}")
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(targets),
            use_dora=method == "dora",
            modules_to_save=modules_to_save,
            bias="none",
            base_model_name_or_path=base_model_name,
        )
    if method == "ia3":
        feedforward = [t for t in targets if any(t == s or t.endswith("." + s) for s in FFN_OUTPUTS)]
        return IA3Config(
            target_modules=list(targets),
            feedforward_modules=feedforward,
            modules_to_save=modules_to_save,
            base_model_name_or_path=base_model_name,
        )
    raise SpeechtlError(f"peft method {method!r} is not one of {', '.join(PEFT_METHODS)}")


class PeftAdapters:
    """Named peft adapters (all of one config) injected in place into ``model``.

    They merge into the base weights (``merge``); LoRA adapters also mix (``mixed``: each adapted
    layer computes ``base(x) + sum_a w_a * B_a A_a x * scale_a``). peft keeps ``modules_to_save``
    per adapter, so all trained tensors are some adapter's (``shared_state`` is empty).

    Args:
        model: the transformers model to adapt (modified in place; its parameter names gain
            ``.base_layer`` on the wrapped layers, as with peft).
        config: the peft config of every adapter of this set.
        name: the first adapter's name.
        kind: ``lora``, ``dora`` or ``ia3``.
    """

    mergeable: ClassVar[bool] = True

    def __init__(self, model: nn.Module, config: PeftConfig, name: str, kind: str):
        check_adapter_name(name)
        self.kind = kind
        # DoRA rescales by the norm of the adapted weight and IA3 multiplies: only LoRA's updates add up linearly.
        self.mixable = kind == "lora"
        self.model = model
        self.config = config
        tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
        # The tuner wraps ``model`` but is kept off the module tree, so ``model``'s parameters keep their names.
        self._tuner = tuner_cls(model, copy.deepcopy(config), adapter_name=name)
        self.names = [name]
        self.active: str | None = name
        self.report = InjectionReport(kind, list(self._tuner.targeted_module_names))

    def add(self, name: str) -> None:
        check_adapter_name(name)
        if name in self.names:
            raise SpeechtlError(f"an adapter named {name!r} already exists; pick another name")
        self._tuner.peft_config[name] = copy.deepcopy(self.config)
        self._tuner.inject_adapter(self.model, name)
        self.names.append(name)
        self.set_active(name)

    def set_active(self, name: str) -> None:
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        self._tuner.set_adapter(name)
        self.active = name

    def disable(self) -> None:
        self._tuner.disable_adapter_layers()

    def enable(self) -> None:
        self._tuner.enable_adapter_layers()

    def disabled(self) -> AbstractContextManager[None]:
        return running_as_base(self)

    @contextmanager
    def mixed(self, weights: dict[str, float]) -> Iterator[None]:
        """Every adapter of ``weights`` active at once, each layer's scale multiplied by its adapter's weight."""
        from peft.tuners.lora import LoraLayer

        if not self.mixable:
            raise SpeechtlError(f"{self.kind} adapters do not mix (only LoRA's updates add up); use one at a time")
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise SpeechtlError(f"no adapter named {unknown[0]!r}; adapters: {', '.join(self.names)}")
        active = self.active
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        saved = [dict(m.scaling) for m in layers]
        names = list(weights)
        try:
            for m in layers:
                m.set_adapter(names, inference_mode=True)
                for n, w in weights.items():
                    if n in m.scaling:
                        m.scaling[n] = m.scaling[n] * w
            yield
        finally:
            for m, s in zip(layers, saved):
                m.scaling.update(s)
            if active is not None:
                self.set_active(active)

    def delete(self, name: str) -> None:
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        if len(self.names) == 1:
            raise SpeechtlError(f"{name!r} is the only adapter; keep it or build the model again without adapters")
        self._tuner.delete_adapter(name)
        self.names.remove(name)
        if self.active == name:
            self.set_active(self.names[-1])

    def merge(self) -> None:
        """Fold the active adapter into the base weights and remove every adapter layer (peft ``merge_and_unload``)."""
        if self.active is None:
            raise SpeechtlError("no active adapter to merge")
        self.enable()
        self._tuner.merge_and_unload(adapter_names=[self.active])
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        self.names, self.active = [], None
        self.report = InjectionReport(self.kind + " (merged)")

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s weights keyed like peft's checkpoints, relative to ``model``."""
        if name not in self.names:
            raise SpeechtlError(f"no adapter named {name!r}; adapters: {', '.join(self.names)}")
        sd = get_peft_model_state_dict(self._tuner, adapter_name=name, save_embedding_layers=False)
        return {k.removeprefix("model."): v.detach() for k, v in sd.items()}

    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        own = self.state(name)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise SpeechtlError(
                f"{self.kind} adapter weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise SpeechtlError(f"{self.kind} adapter weight {key} has shape {tuple(value.shape)}, "
                                    f"this model needs {tuple(own[key].shape)}")
        set_peft_model_state_dict(self._tuner, {"model." + k: v for k, v in state.items()}, adapter_name=name)

    def shared_state(self) -> dict[str, torch.Tensor]:
        return {}

    def trainable_names(self) -> list[str]:
        if self.active is None:
            return []
        mark = re.compile(rf"(^|\.)(lora_\w+|ia3_\w+|modules_to_save)\.{re.escape(self.active)}(\.|$)")
        return [n for n, _ in self.model.named_parameters() if mark.search(n)]

    def save_native(self, directory: str | os.PathLike) -> None:
        """Every adapter in peft's layout: the active one at the top of ``directory``, the others in ``<name>/``
        (as ``PeftModel.save_pretrained`` lays them out)."""
        directory = Path(directory)
        for name in self.names:
            self.save_peft(name, directory if name == self.active else directory / name)

    def save_peft(self, name: str, directory: str | os.PathLike) -> None:
        """Write adapter ``name`` as peft does: ``adapter_model.safetensors`` + ``adapter_config.json``.

        Keys are peft's (``base_model.model.<module>.lora_A.weight``), so
        ``PeftModel.from_pretrained(model, directory)`` loads it on the plain transformers model.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"base_model.model." + k: v.contiguous().cpu() for k, v in self.state(name).items()}
        atomic_write(directory / "adapter_model.safetensors", lambda f: f.write(save(state, metadata={"format": "pt"})))
        config = copy.deepcopy(self._tuner.peft_config[name])
        config.inference_mode = True
        cfg = config.to_dict()
        for key, value in cfg.items():  # sets are not JSON
            if isinstance(value, set):
                cfg[key] = sorted(value)
        atomic_write_text(directory / "adapter_config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")

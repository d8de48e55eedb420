"""The one interface every backbone answers, whatever its modality or family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

Modality = Literal["audio", "image", "text"]
Task = Literal["seq2seq", "ctc", "encoder"]


@dataclass
class EncoderOutput:
    """Per-layer encoder states.

    hidden_states: ``num_layers + 1`` tensors ``(batch, frames, hidden)``: the embedding
        output, then each layer's output (the last one after any final norm).
    lengths: ``(batch,)`` number of valid frames per item.
    """

    hidden_states: tuple[torch.Tensor, ...]
    lengths: torch.Tensor

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]

    def padding_mask(self) -> torch.Tensor:
        """``(batch, frames)`` bool, True on valid frames."""
        frames = self.hidden_states[-1].shape[1]
        return torch.arange(frames, device=self.lengths.device)[None, :] < self.lengths[:, None]


@runtime_checkable
class Backbone(Protocol):
    """A pretrained model behind one small surface.

    Backbones are ``nn.Module``s: ``.model`` is the wrapped model (a transformers model for
    the speech families) and ``parameters()`` are its parameters. (``model`` is not a protocol
    member: submodules live in ``_modules``, which ``isinstance`` checks cannot see on 3.12+.)
    """

    name: str
    modality: Modality
    task: Task
    sample_rate: int | None  # audio backbones only
    hidden_size: int
    num_layers: int
    processor: Any  # feature extractor + tokenizer (audio), tokenizer (text), transform (image)
    default_adapter_targets: tuple[str, ...]  # module-name suffixes adapters go on by default

    def prepare(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw items (waveforms ``(samples,)`` at ``sample_rate``, images, strings) to a padded
        batch and lengths: ``(inputs, lengths)``."""
        ...

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Run the encoder on a padded batch; padding never changes the valid frames' states."""
        ...

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """Named groups of parameter names, bottom to top: ``frontend``, ``layer.0`` …
        ``layer.{N-1}``, then ``head``. Drives freezing and layer-wise learning rates."""
        ...


def group_parameters(backbone: nn.Module, groups: list[tuple[str, list[str]]]) -> dict[str, list[nn.Parameter]]:
    """Resolve :meth:`Backbone.layer_groups` names to parameters; checks each parameter is in one group."""
    params = dict(backbone.named_parameters())
    seen: set[str] = set()
    out: dict[str, list[nn.Parameter]] = {}
    for gname, names in groups:
        out[gname] = []
        for n in names:
            if n in seen:
                raise ValueError(f"parameter {n} is in two layer groups")
            seen.add(n)
            out[gname].append(params[n])
    missing = set(params) - seen
    if missing:
        raise ValueError(f"parameters in no layer group: {sorted(missing)[:5]}")
    return out


def layer_groups_by_prefix(
    backbone: nn.Module, frontend: tuple[str, ...], layers: str, num_layers: int
) -> list[tuple[str, list[str]]]:
    """Group parameter names: those under ``layers.{i}.`` by layer, those starting with a
    ``frontend`` prefix as the frontend, everything else (norms after the stack, heads,
    decoders) as the head."""
    groups: dict[str, list[str]] = {"frontend": []}
    groups.update({f"layer.{i}": [] for i in range(num_layers)})
    groups["head"] = []
    for n, _ in backbone.named_parameters():
        if n.startswith(layers + "."):
            idx = int(n[len(layers) + 1 :].split(".", 1)[0])
            groups[f"layer.{idx}"].append(n)
        elif n.startswith(frontend):
            groups["frontend"].append(n)
        else:
            groups["head"].append(n)
    return list(groups.items())

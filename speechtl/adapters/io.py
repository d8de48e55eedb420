"""Save and load only what was trained.

A saved adapter is a folder:

- ``adapter.safetensors``: the trained tensors only: every named adapter's weights
  (``adapter.<name>.<key>``), a new head (``head.<key>``) and, for ``finetune``, the backbone
  parameters that trained (``backbone.<name>``). Base weights that did not train are never written.
- ``adapter.json``: the base model's name and a checksum of its weights (taken before
  adaptation), the adapt config, the adapter names and which is active, for Whisper whether its
  training padded clips only to each batch's longest (``short_clips``: transcription then decodes
  them unpadded too), and the size and sha256 of every weights file (``files``). Loading onto a
  base whose weights differ is an error.
- LoRA/DoRA/IA3 adapters also in peft's own format: the active adapter as
  ``adapter_model.safetensors`` + ``adapter_config.json`` at the top, the others in
  ``<name>/`` (as ``PeftModel.save_pretrained`` lays them out), so
  ``peft.PeftModel.from_pretrained(plain_transformers_model, folder)`` works.

This module is the one writer of the format (:func:`save_adapter`);
:class:`~speechtl.adapters.saved.SavedAdapter` is the one reader: every loader (``load_adapter``, routing,
accent classifiers, export, transcription) goes through it. It checks ``adapter.json`` when read
and the weights against their recorded size and sha256 before any tensor is used, so a
truncated, damaged or swapped file is one :class:`~speechtl.errors.SpeechtlError` naming it.
Folders saved before the record existed are checked as before (safetensors header, key and
shape fit, base checksum).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..checksums import record_checksum, sha256_file
from ..errors import SpeechtlError
from ..fileio import atomic_replace_dir, default_permissions, staging_dir

if TYPE_CHECKING:
    from ..transfer import AdaptedModel

FORMAT = "speechtl-adapter"
VERSION = 1
WEIGHTS = "adapter.safetensors"
META = "adapter.json"
# Config entries that fix an adapter's places, shape and scale: adapters loaded as named adapters of one
# model must agree on them (every named adapter of a set is built from the first one's config).
SHAPE_KEYS = ("method", "target_modules", "target_regex", "target_layers", "modules_to_save", "lora_r", "lora_alpha",
              "bottleneck_style", "bottleneck_reduction", "bottleneck_dim", "bottleneck_activation")
REQUIRED = {"base_model": str, "base_checksum": str, "method": str, "config": dict}  # adapter.json's entries
META_CHECKSUM = "meta_sha256"  # adapter.json's own record: the sha256 of every other entry
HEAD_KINDS = {"CTCHead": "ctc", "ClassifierHead": "classifier"}  # a saved head's type -> AdaptConfig.head


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 over every parameter's name, shape and values rounded to bfloat16 (sorted by name), as hex.

    Identifies the base weights an adapter was trained on. Rounding to bfloat16 first lets the
    same checkpoint loaded in float32 or bfloat16 match (any real difference between models
    still changes it); a float16 load may round differently and not match.
    """
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().to(device="cpu", dtype=torch.bfloat16).contiguous().reshape(-1)
        h.update(f"{name}|{tuple(p.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trained_state(model: AdaptedModel) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_adapter` writes, by their keys in ``adapter.safetensors``."""
    out: dict[str, torch.Tensor] = {}
    if model.adapters is not None:
        for name in model.adapters.names:
            for k, v in model.adapters.state(name).items():
                out[f"adapter.{name}.{k}"] = v
    if model.head is not None:
        for k, v in model.head.state_dict().items():
            out[f"head.{k}"] = v
    if model.method == "finetune":
        for n, p in model.backbone.named_parameters():
            if p.requires_grad:
                out[f"backbone.{n}"] = p
    elif model.adapters is not None:
        for k, v in model.adapters.shared_state().items():
            out[f"backbone.model.{k}"] = v
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_adapter(model: AdaptedModel, directory: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model``'s trained weights and metadata to ``directory`` (replaced as a whole, atomically).

    ``meta`` adds JSON-serialisable entries to ``adapter.json`` (e.g. the target accent).
    """
    if model.merged:
        raise SpeechtlError("the adapter was merged into the base weights; save the whole model with "
                            "model.backbone.model.save_pretrained(folder) instead")
    directory = Path(directory)
    try:
        with staging_dir(directory) as tmp:  # removed on any failure: nothing half-written is left
            state = trained_state(model)
            save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
            if model.adapters is not None:
                model.adapters.save_native(tmp)
            info = {
                "format": FORMAT,
                "version": VERSION,
                "base_model": model.name,
                "base_checksum": model.base_checksum,
                "method": model.method,
                "config": dataclasses.asdict(model.config),
                "adapters": model.adapter_names,
                "active": model.active_adapter,
                "head": _describe_head(model.head),
                # Whisper: trained on clips padded to each batch's longest (true) or to 30 s (false); null
                # where it does not apply. Transcription decodes short only after short training.
                "short_clips": model.trained_short_clips,
                "trainable_parameters": model.num_trainable(),
                "total_parameters": model.num_parameters(),
                **meta,
                # Written last, over the finished weights files: what every read verifies them against.
                "files": {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                          for p in sorted(tmp.rglob("*.safetensors"))},
            }
            info = json.loads(json.dumps(info))  # hashed as it will read back (tuples as lists)
            info[META_CHECKSUM] = record_checksum(info, META_CHECKSUM)
            (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
            for path in tmp.rglob("*"):
                default_permissions(path)  # safetensors writes its files 0600
            # Flushed, then one rename; an earlier folder is moved aside first and put back if the rename fails.
            if not atomic_replace_dir(tmp, directory, overwrite=True):
                raise SpeechtlError(f"{directory}: another process wrote an adapter there meanwhile; save again")
    except OSError as e:  # disk full, quota, permissions
        raise SpeechtlError(f"{directory}: cannot write the adapter ({e.strerror or e}); free disk space or "
                            "choose another folder") from e
    return directory


def _describe_head(head: nn.Module | None) -> dict[str, Any] | None:
    if head is None:
        return None
    out: dict[str, Any] = {"type": type(head).__name__}
    if hasattr(head, "vocab"):
        out["vocab"] = head.vocab.symbols
    if hasattr(head, "labels"):
        out["labels"] = head.labels
    return out

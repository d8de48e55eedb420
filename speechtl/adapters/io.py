"""Save and load only what was trained.

A saved adapter is a folder:

- ``adapter.safetensors``: the trained tensors only: every named adapter's weights
  (``adapter.<name>.<key>``), a new head (``head.<key>``) and, for ``finetune``, the backbone
  parameters that trained (``backbone.<name>``). Base weights that did not train are never written.
- ``adapter.json``: the base model's name and a checksum of its weights (taken before
  adaptation), the adapt config, the adapter names and which is active. Loading onto a base
  whose weights differ is an error.
- LoRA/DoRA/IA3 adapters also in peft's own format: the active adapter as
  ``adapter_model.safetensors`` + ``adapter_config.json`` at the top, the others in
  ``<name>/`` (as ``PeftModel.save_pretrained`` lays them out), so
  ``peft.PeftModel.from_pretrained(plain_transformers_model, folder)`` works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import default_permissions
from ..errors import SpeechtlError

if TYPE_CHECKING:
    from ..transfer import AdaptedModel

FORMAT = "speechtl-adapter"
VERSION = 1
WEIGHTS = "adapter.safetensors"
META = "adapter.json"


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
    elif model.adapters is not None and model.adapters.kind == "bottleneck":
        for mname in model._extra_trainable_modules():
            for k, v in model.backbone.model.get_submodule(mname).state_dict().items():
                out[f"backbone.model.{mname}.{k}"] = v
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_adapter(model: AdaptedModel, directory: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model``'s trained weights and metadata to ``directory`` (replaced as a whole, atomically).

    ``meta`` adds JSON-serialisable entries to ``adapter.json`` (e.g. the target accent).
    """
    if model.merged:
        raise SpeechtlError("the adapter was merged into the base weights; save the whole model with "
                            "model.backbone.model.save_pretrained(folder) instead")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        state = trained_state(model)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
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
            "trainable_parameters": model.num_trainable(),
            "total_parameters": model.num_parameters(),
            **meta,
        }
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
        adapters = model.adapters
        if adapters is not None and adapters.kind != "bottleneck":
            for name in adapters.names:
                adapters.save_peft(name, tmp if name == adapters.active else tmp / name)
        for path in tmp.rglob("*"):
            default_permissions(path)  # safetensors writes its files 0600
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        default_permissions(tmp)
        _swap_in(tmp, directory)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, quota, permissions: nothing half-written is left
            raise SpeechtlError(f"{directory}: cannot write the adapter ({e.strerror or e}); free disk space or "
                                "choose another folder") from e
        raise
    return directory


def _swap_in(tmp: Path, directory: Path) -> None:
    """Replace ``directory`` by the finished folder ``tmp`` (the old one is removed only after the rename)."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def _describe_head(head: nn.Module | None) -> dict[str, Any] | None:
    if head is None:
        return None
    out: dict[str, Any] = {"type": type(head).__name__}
    if hasattr(head, "vocab"):
        out["vocab"] = head.vocab.symbols
    if hasattr(head, "labels"):
        out["labels"] = head.labels
    return out


def read_adapter_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter.json`` of a saved adapter folder."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        hint = " (a peft-only folder: load it with peft.PeftModel.from_pretrained)" if (
            directory / "adapter_config.json").is_file() else ""
        raise SpeechtlError(f"{directory}: not a speechtl adapter folder, {META} is missing{hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpeechtlError(f"{path}: not valid JSON ({e}); the adapter folder is damaged") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SpeechtlError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
                            f"{FORMAT!r} version {VERSION}")
    return meta


def load_adapter(backbone: nn.Module | str | None, directory: str | os.PathLike) -> AdaptedModel:
    """Apply a saved adapter to ``backbone`` (a backbone object, modified in place, a name, or
    None for the base model named in ``adapter.json``).

    Returns the :class:`~speechtl.transfer.AdaptedModel`; with adapter methods and ``finetune``
    the backbone itself now computes the adapted model too. Raises :class:`SpeechtlError` when
    the backbone's weights are not the ones the adapter was trained on.
    """
    from ..transfer import adapt

    directory = Path(directory)
    meta = read_adapter_meta(directory)
    if backbone is None or isinstance(backbone, str | os.PathLike):
        from ..backbones import create_backbone

        backbone = create_backbone(meta["base_model"] if backbone is None else str(backbone))
    actual = weights_checksum(backbone)
    if actual != meta["base_checksum"]:
        raise SpeechtlError(
            f"{directory}: this adapter was trained on {meta['base_model']!r} (weights {meta['base_checksum'][:12]}), "
            f"but {getattr(backbone, 'name', 'the given model')!r} has other weights ({actual[:12]}); "
            "load it on the model it was trained on"
        )
    config = dict(meta["config"])
    names = meta.get("adapters") or []
    if names:
        config["adapter_name"] = names[0]
    method = config.pop("method")
    model = adapt(backbone, method, **config)
    for name in names[1:]:
        model.add_adapter(name)
    try:
        state = load_file(str(directory / WEIGHTS))
    except FileNotFoundError:
        raise SpeechtlError(f"{directory}: {WEIGHTS} is missing; the adapter folder is incomplete") from None
    for name in names:
        prefix = f"adapter.{name}."
        model.adapters.load_state(name, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    if model.head is not None:
        desc = meta.get("head") or {}
        if "vocab" in desc and desc["vocab"] != model.head.vocab.symbols:
            raise SpeechtlError(f"{directory}: the saved CTC head's vocabulary differs from this version's")
        try:
            model.head.load_state_dict(head_state)
        except RuntimeError as e:
            raise SpeechtlError(f"{directory}: saved head does not fit: {str(e).splitlines()[0]}") from None
    backbone_state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
    if backbone_state:
        own = dict(model.backbone.named_parameters())
        own.update(dict(model.backbone.named_buffers()))
        unknown = sorted(set(backbone_state) - set(own))
        if unknown:
            raise SpeechtlError(f"{directory}: saved backbone weights {unknown[:3]} do not exist in {model.name}")
        with torch.no_grad():
            for k, v in backbone_state.items():
                own[k].copy_(v)
    if meta.get("active"):
        model.set_adapter(meta["active"])
    return model

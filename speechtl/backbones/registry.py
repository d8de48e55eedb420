"""Backbone registry: builder functions by name, ``create_backbone`` and ``list_backbones``.

Names resolve like ``from_pretrained``: a registered name (packaged offline models and tiny
random builders), then an existing local folder, then a hub id: of a known family by its prefix, or
any other by the ``model_type`` of its config.json.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError

_REGISTRY: dict[str, Callable[..., Any]] = {}
# Hub-id prefixes → family builder taking (name_or_path, **kw); checked in order.
_HUB_FAMILIES: list[tuple[str, Callable[..., Any]]] = []
# HF config ``model_type`` → family builder, for local folders.
_MODEL_TYPES: dict[str, Callable[..., Any]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a builder ``fn(**kw) -> Backbone`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def register_family(builder: Callable[..., Any], *, hub_prefixes: tuple[str, ...] = (), model_types: tuple[str, ...] = ()):
    """Route hub ids starting with ``hub_prefixes`` and local folders of ``model_types`` to ``builder``."""
    for prefix in hub_prefixes:
        _HUB_FAMILIES.append((prefix, builder))
    for mt in model_types:
        _MODEL_TYPES[mt] = builder


def offline_hint() -> str:
    """What a failed hub load adds to its error when HF_HUB_OFFLINE is set (else nothing)."""
    return " (HF_HUB_OFFLINE=1 is set: only cached models load)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a glob ``pattern`` (hub ids and folders are not listed)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_backbone(name: str | os.PathLike, **kwargs: Any):
    """Build a backbone from a registered name, a local HF folder, or a hub id.

    Extra keyword arguments go to the family's builder (e.g. ``dtype``, ``vocab``).
    Raises :class:`ModelNotFoundError` listing close matches when nothing fits.
    """
    key = str(name)
    if key in _REGISTRY:
        return _REGISTRY[key](**kwargs)
    path = Path(key).expanduser()
    if path.is_dir():
        from ..exporting import export_short_clips, verify_model_folder

        info = verify_model_folder(path)  # an export or a converted model, before anything in it is read
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelNotFoundError(f"{path}: folder has no config.json; give a Hugging Face model folder")
        try:
            model_type = json.loads(cfg.read_text()).get("model_type", "")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelNotFoundError(f"{cfg}: not valid JSON ({e}); the model folder is damaged") from None
        builder = _MODEL_TYPES.get(model_type)
        if builder is None:
            known = ", ".join(sorted(_MODEL_TYPES))
            raise ModelNotFoundError(f"{path}: model_type {model_type!r} is not supported; supported: {known}")
        backbone = builder(str(path), **kwargs)
        if info is not None:
            # Transcription's short_clips=auto decodes an export as its adapter trained (unpadded or 30 s).
            backbone.trained_short_clips = export_short_clips(info)
        return backbone
    for prefix, builder in _HUB_FAMILIES:
        if key.startswith(prefix):
            return builder(key, **kwargs)
    if _HUB_ID.fullmatch(key):
        if Path(key.split("/")[0]).is_dir():
            raise ModelNotFoundError(f"{key}: no such model folder (and {key.split('/')[0]}/ here makes it a path, "
                                     "not a hub id); give an existing folder")
        # Any other hub id (a fine-tuned checkpoint under its author's name): its config says the family.
        model_type = _hub_model_type(key)
        builder = _MODEL_TYPES.get(model_type)
        if builder is None:
            raise ModelNotFoundError(f"{key}: model_type {model_type!r} is not supported; supported: "
                                     f"{', '.join(sorted(_MODEL_TYPES))}")
        return builder(key, **kwargs)
    close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {key!r}{hint} Give a name from speechtl.list_backbones(), a local model folder, "
        "or a hub id (owner/name) of a supported model type"
    )


# A hub repository id, "owner/name" (a path with more parts, or one that exists, is a folder).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _hub_model_type(repo_id: str) -> str:
    """The ``model_type`` in a hub model's config.json (fetched, or read from the hub cache when offline)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json")
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001  (not found, offline, gated, no config.json, damaged: all say the same)
        offline = offline_hint()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelNotFoundError(
            f"unknown model {repo_id!r}: not a registered name or a local folder, and its config.json could not be "
            f"read from the hub{offline} ({reason}). Give a name from speechtl.list_backbones(), a local model folder, "
            "or a hub model id"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise ModelNotFoundError(f"{repo_id}: its config.json names no model_type; give a transformers model")
    return model_type

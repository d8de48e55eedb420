"""Read a saved adapter folder: :class:`SavedAdapter`, the one reader of the format :mod:`.io` writes.

Every loader (``load_adapter``, routing, accent classifiers, export, transcription) goes through
it. ``adapter.json`` is checked when read, and the weights against their recorded size and
sha256 before any tensor is used, so a truncated, damaged or swapped file is one
:class:`~speechtl.errors.SpeechtlError` naming it. Folders saved before the record existed are
checked as before (safetensors header, key and shape fit, base checksum).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..checksums import record_checksum, sha256_file
from ..errors import SpeechtlError
from .io import FORMAT, HEAD_KINDS, META, META_CHECKSUM, REQUIRED, SHAPE_KEYS, VERSION, WEIGHTS, weights_checksum

if TYPE_CHECKING:
    from ..config import AdaptConfig
    from ..transfer import AdaptedModel


def read_adapter_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter.json`` of a saved adapter folder (checked as :meth:`SavedAdapter.read` checks it)."""
    return SavedAdapter.read(directory).meta


def load_adapter(backbone: nn.Module | str | None, directory: str | os.PathLike) -> AdaptedModel:
    """Apply a saved adapter to ``backbone`` (a backbone object, modified in place, a name, or
    None for the base model named in ``adapter.json``).

    Returns the :class:`~speechtl.transfer.AdaptedModel`; with adapter methods and ``finetune``
    the backbone itself now computes the adapted model too. Raises :class:`SpeechtlError` when
    the weights file is damaged or the backbone's weights are not the ones the adapter was trained on.
    """
    return SavedAdapter.read(directory).build(backbone)


def _damaged(path: Path, detail: str) -> SpeechtlError:
    return SpeechtlError(f"{path}: {detail}; the adapter folder is damaged or was partly replaced: copy it again "
                         "from where it was saved, or save the adapter again")


class SavedAdapter:
    """A saved adapter folder: its ``adapter.json`` (checked by :meth:`read`), its weights (verified by :meth:`state`).

    Build one with :meth:`read`; :meth:`build` applies it to a backbone (what :func:`load_adapter` does).
    """

    def __init__(self, directory: Path, meta: dict[str, Any]):
        self.directory = directory
        self.meta = meta
        self._state: dict[str, torch.Tensor] | None = None

    @classmethod
    def read(cls, directory: str | os.PathLike) -> SavedAdapter:
        """Read and check ``directory/adapter.json`` (the weights are verified when first used)."""
        directory = Path(directory)
        path = directory / META
        if not path.is_file():
            hint = " (a peft-only folder: load it with peft.PeftModel.from_pretrained)" if (
                directory / "adapter_config.json").is_file() else ""
            raise SpeechtlError(f"{directory}: not a speechtl adapter folder, {META} is missing{hint}")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpeechtlError(f"{path}: not valid JSON ({e}); the adapter folder is damaged") from None
        if not isinstance(meta, dict):
            raise SpeechtlError(f"{path}: holds a JSON {type(meta).__name__}, not a speechtl adapter's description; "
                                "the adapter folder is damaged")
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise SpeechtlError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
                                f"{FORMAT!r} version {VERSION}")
        for key, kind in REQUIRED.items():
            if not isinstance(meta.get(key), kind):
                raise SpeechtlError(f"{path}: {key!r} is missing or not a {kind.__name__}; the adapter folder is "
                                    "damaged: save the adapter again")
        if not isinstance(meta.get("files", {}), dict):
            raise SpeechtlError(f"{path}: 'files' is not a mapping of file records; the adapter folder is damaged: "
                                "save the adapter again")
        # Folders saved before the record existed have none; the checks above are all there is for them.
        if META_CHECKSUM in meta and meta[META_CHECKSUM] != record_checksum(meta, META_CHECKSUM):
            raise SpeechtlError(f"{path}: its entries changed since the adapter was saved (their sha256 differs from "
                                f"{META_CHECKSUM}); the adapter folder was edited or damaged: save or copy it again")
        return cls(directory, meta)

    # -- what adapter.json says --------------------------------------------------------------------
    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS

    @property
    def base_model(self) -> str:
        return self.meta["base_model"]

    @property
    def base_checksum(self) -> str:
        """:func:`weights_checksum` of the base model the adapter was trained on (taken before adaptation)."""
        return self.meta["base_checksum"]

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def names(self) -> list[str]:
        """The named adapters, in the order they were added."""
        return list(self.meta.get("adapters") or [])

    @property
    def active(self) -> str | None:
        return self.meta.get("active")

    @property
    def head(self) -> dict[str, Any] | None:
        """The new head's description (``type``, and ``labels`` or ``vocab``), None without one."""
        return self.meta.get("head")

    @property
    def short_clips(self) -> bool | None:
        """Whether it trained on clips padded only to each batch's longest (Whisper), so that it may
        decode them so; None where the folder predates the record or it does not apply."""
        value = self.meta.get("short_clips")
        if value is not None and not isinstance(value, bool):
            raise SpeechtlError(f"{self.directory / META}: 'short_clips' is {value!r}, not true, false or null; the "
                                "adapter folder is damaged: save the adapter again")
        return value

    @property
    def config(self) -> AdaptConfig:
        """The adapt config it was trained with; keys the folder predates take their defaults."""
        from ..config import AdaptConfig, make

        return make(AdaptConfig, self.meta["config"], where=str(self.directory / META))

    def adapt_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The saved config as :func:`~speechtl.transfer.adapt` keywords (``method`` included), with ``overrides``."""
        self.config  # an unknown or ill-typed key is an error naming adapter.json, not adapt()
        return {**self.meta["config"], **overrides}

    @property
    def shape(self) -> dict[str, Any]:
        """The config entries that fix the adapters' places, shape and scale (:data:`SHAPE_KEYS`)."""
        return {key: self.meta["config"].get(key) for key in SHAPE_KEYS}

    @property
    def trains_base_modules(self) -> bool:
        """Whether base-model tensors were saved too (``finetune``, or ``modules_to_save``)."""
        return any(k.startswith("backbone.") for k in self.state())

    @property
    def weights_sha256(self) -> str:
        """The sha256 of ``adapter.safetensors``: as recorded at save (and verified), else computed."""
        entry = (self.meta.get("files") or {}).get(WEIGHTS)
        if isinstance(entry, dict) and "sha256" in entry:
            self.state()
            return str(entry["sha256"])
        return sha256_file(self.weights_path)

    # -- the weights -----------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor of ``adapter.safetensors``, after checking its size and sha256 against ``adapter.json``."""
        if self._state is None:
            path = self.weights_path
            if not path.is_file():
                raise SpeechtlError(f"{self.directory}: {WEIGHTS} is missing; the adapter folder is incomplete")
            self._verify(path)
            try:
                self._state = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as e:
                raise _damaged(path, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None
        return self._state

    def _verify(self, path: Path) -> None:
        entry = (self.meta.get("files") or {}).get(WEIGHTS)
        if entry is None:
            return  # saved before sizes and hashes were recorded: the other checks are all there is
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise SpeechtlError(f"{self.directory / META}: its record of {WEIGHTS} is unreadable; the adapter folder "
                                "is damaged: save the adapter again") from None
        actual = path.stat().st_size
        if actual != size:
            raise _damaged(path, f"{actual} bytes, but {size} were saved (truncated or another file)")
        if sha256_file(path) != digest:
            raise _damaged(path, "its sha256 differs from the one recorded at save (modified, or another adapter's)")

    def adapter_state(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """Named adapter ``name``'s weights (default: the active one), keyed as ``AdapterSet.load_state`` takes them."""
        name = name or self.active
        if not name:
            raise SpeechtlError(f"{self.directory}: the saved adapter has no active adapter")
        prefix = f"adapter.{name}."
        return {k[len(prefix):]: v for k, v in self.state().items() if k.startswith(prefix)}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k[5:]: v for k, v in self.state().items() if k.startswith("head.")}

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """Base-model tensors that trained, by name relative to the backbone."""
        return {k[9:]: v for k, v in self.state().items() if k.startswith("backbone.")}

    # -- applying it ---------------------------------------------------------------------------------
    def check_base(self, backbone: nn.Module, checksum: str | None = None) -> str:
        """Raise unless ``backbone``'s weights (``checksum``, computed when None) are the adapter's base; return it."""
        actual = checksum if checksum is not None else weights_checksum(backbone)
        if actual != self.base_checksum:
            raise SpeechtlError(
                f"{self.directory}: this adapter was trained on {self.base_model!r} "
                f"(weights {self.base_checksum[:12]}), but {getattr(backbone, 'name', 'the given model')!r} has other "
                f"weights ({actual[:12]}); load it on the model it was trained on"
            )
        return actual

    def build(self, backbone: nn.Module | str | os.PathLike | None = None) -> AdaptedModel:
        """The adapted model: ``backbone`` (an object, modified in place; a name; None for the saved base)
        with this folder's method, adapters, head and trained weights."""
        from ..transfer import adapt

        self.state()  # a damaged file fails before any model is built or changed
        if backbone is None or isinstance(backbone, str | os.PathLike):
            from ..backbones import create_backbone

            backbone = create_backbone(self.base_model if backbone is None else str(backbone))
        self.check_base(backbone)
        names = self.names
        model = adapt(backbone, **self.adapt_kwargs(**({"adapter_name": names[0]} if names else {})))
        for name in names[1:]:
            model.add_adapter(name)
        for name in names:
            try:
                model.adapters.load_state(name, self.adapter_state(name))
            except SpeechtlError as e:
                raise SpeechtlError(f"{self.weights_path}: {e}") from None
        if model.head is not None:
            self._load_head(model.head)
        backbone_state = self.backbone_state()
        if backbone_state:
            own = dict(model.backbone.named_parameters())
            own.update(dict(model.backbone.named_buffers()))
            unknown = sorted(set(backbone_state) - set(own))
            if unknown:
                raise SpeechtlError(f"{self.directory}: saved backbone weights {unknown[:3]} do not exist in "
                                    f"{model.name}")
            with torch.no_grad():
                for k, v in backbone_state.items():
                    own[k].copy_(v)
        if self.active:
            model.set_adapter(self.active)
        model.trained_short_clips = self.short_clips
        return model

    def build_head(self, backbone: nn.Module) -> nn.Module:
        """The saved head alone, rebuilt on ``backbone`` (the base it was trained on) with its weights, in eval mode."""
        from ..config import AdaptConfig, make
        from ..heads import build_head

        desc = self.head or {}
        kind = HEAD_KINDS.get(desc.get("type"))
        if kind is None:
            raise SpeechtlError(f"{self.directory}: the saved adapter has no new head to rebuild")
        cfg = make(AdaptConfig, {**self.meta["config"], "head": kind, "labels": desc.get("labels") or []},
                   where=str(self.directory / META))
        head = build_head(backbone, cfg)
        self._load_head(head)
        return head.to(next(backbone.parameters()).device).eval()

    def _load_head(self, head: nn.Module) -> None:
        desc = self.head or {}
        if "vocab" in desc and desc["vocab"] != head.vocab.symbols:
            raise SpeechtlError(f"{self.directory}: the saved CTC head's vocabulary differs from this version's")
        try:
            head.load_state_dict(self.head_state())
        except RuntimeError as e:
            raise SpeechtlError(f"{self.directory}: saved head does not fit: {str(e).splitlines()[0]}") from None

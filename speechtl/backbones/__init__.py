"""Backbones: pretrained models behind one interface (see :mod:`speechtl.backbones.base`).

The family modules (whisper, wav2vec2, image, text) register their builders when imported; they
load on the first :func:`create_backbone` or :func:`list_backbones`, so that importing the
package stays quick.
"""

from __future__ import annotations

import os
from typing import Any

from . import registry
from .base import Backbone, EncoderOutput
from .registry import register_backbone

__all__ = ["Backbone", "EncoderOutput", "create_backbone", "list_backbones", "register_backbone"]


def _load_families() -> None:
    from . import image, text, wav2vec2, whisper  # noqa: F401  (their decorators register the builders)


def create_backbone(name: str | os.PathLike, **kwargs: Any):
    _load_families()
    return registry.create_backbone(name, **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    _load_families()
    return registry.list_backbones(pattern)


create_backbone.__doc__ = registry.create_backbone.__doc__
list_backbones.__doc__ = registry.list_backbones.__doc__

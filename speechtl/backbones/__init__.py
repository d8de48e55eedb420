"""Backbones: pretrained models behind one interface (see :mod:`speechtl.backbones.base`)."""

from .base import Backbone, EncoderOutput
from .registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "EncoderOutput", "create_backbone", "list_backbones", "register_backbone"]

"""Converters from other checkpoint formats to transformers folders, and the packaged pretrained models."""

from .ct2 import convert_ct2_whisper, read_ct2_model
from .packaged import PACKAGED, packaged_model_dir

__all__ = ["PACKAGED", "convert_ct2_whisper", "packaged_model_dir", "read_ct2_model"]

"""speechtl: transfer learning for speech — adapt pretrained speech models to an accent, measure WER per accent."""

from .audio import load_audio
from .backbones import create_backbone, list_backbones
from .errors import AudioError, ModelNotFoundError, SpeechtlError

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "ModelNotFoundError",
    "SpeechtlError",
    "create_backbone",
    "list_backbones",
    "load_audio",
]

"""speechtl: transfer learning for speech — adapt pretrained speech models to an accent, measure WER per accent."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import AudioError, ModelNotFoundError, SpeechtlError

__version__ = "0.1.0"

# Heavy modules (torch, transformers, peft) load on first use so that `import speechtl`
# and the command-line tools start quickly.
_LAZY = {
    "load_audio": ".audio",
    "create_backbone": ".backbones",
    "list_backbones": ".backbones",
    "transcribe": ".transcription",
    "adapt": ".transfer",
    "AdaptedModel": ".transfer",
    "load_adapter": ".adapters",
    "train": ".training",
    "TrainConfig": ".training",
    "evaluate": ".evaluation",
    "export": ".exporting",
    "Report": ".evaluation",
    "compare": ".evaluation",
    "read_manifest": ".data",
    "write_manifest": ".data",
    "AccentClassifier": ".routing",
    "AccentIdReport": ".routing",
    "Router": ".routing",
    "evaluate_accent_id": ".routing",
    "load_accent_classifier": ".routing",
}

__all__ = ["AudioError", "ModelNotFoundError", "SpeechtlError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speechtl' has no attribute {name!r}")


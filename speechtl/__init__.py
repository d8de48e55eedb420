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
    "transcribe": ".transcribe",
    "adapt": ".transfer",
    "AdaptedModel": ".transfer",
    "load_adapter": ".adapters",
    "train": ".train",
    "TrainConfig": ".train",
    "evaluate": ".evaluate",
    "export": ".export",
    "Report": ".evaluate",
    "compare": ".evaluate",
    "read_manifest": ".data",
    "write_manifest": ".data",
    "AccentClassifier": ".routing",
    "AccentIdReport": ".routing",
    "Router": ".routing",
    "evaluate_accent_id": ".routing",
    "load_accent_classifier": ".routing",
}

__all__ = ["AudioError", "ModelNotFoundError", "SpeechtlError", *_LAZY]


# These names are both a submodule and its main function: the submodule itself is callable
# (see speechtl/_callable.py), so `speechtl.transcribe(...)` and `import speechtl.transcribe as t`
# both work whichever happens first.
_CALLABLE_MODULES = {"transcribe", "train", "evaluate", "export"}


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speechtl' has no attribute {name!r}")


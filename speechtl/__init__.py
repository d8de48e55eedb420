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
    "Report": ".evaluate",
    "compare": ".evaluate",
    "read_manifest": ".data",
    "write_manifest": ".data",
}

__all__ = ["AudioError", "ModelNotFoundError", "SpeechtlError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speechtl' has no attribute {name!r}")


class _Package(type(importlib)):
    # `speechtl.transcribe`, `.train` and `.evaluate` name both a submodule and the function
    # users call. Importing the submodule would rebind the package attribute to the module;
    # keep the function instead (the submodule stays reachable through sys.modules/imports).
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, type(importlib)):
            return
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package

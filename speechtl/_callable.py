"""Make a module callable as its main function (``speechtl.transcribe(...)`` calls
``speechtl.transcribe.transcribe(...)``) while it stays an ordinary, importable module."""

from __future__ import annotations

import sys
import types


def callable_module(module_name: str, function_name: str) -> None:
    module = sys.modules[module_name]
    fn = getattr(module, function_name)

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    _CallableModule.__call__.__doc__ = fn.__doc__
    module.__class__ = _CallableModule

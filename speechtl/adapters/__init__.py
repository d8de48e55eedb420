"""Adapters: the contract every kind answers (:mod:`.base`), inject by name (:mod:`.inject`), LoRA/DoRA/IA3
via peft (:mod:`.lora`), bottleneck adapters (:mod:`.bottleneck`), and the saved format, written in one
place (:mod:`.io`) and read in one (:mod:`.saved`)."""

from .base import AdapterSet, InjectionReport
from .bottleneck import Bottleneck, BottleneckAdapters, BottleneckLayer
from .inject import AdapterModule, find_targets, get_adapter_params, parse_layers
from .io import save_adapter, weights_checksum
from .saved import SavedAdapter, load_adapter, read_adapter_meta
from .lora import PEFT_METHODS, PeftAdapters, make_peft_config

__all__ = [
    "PEFT_METHODS",
    "AdapterModule",
    "AdapterSet",
    "Bottleneck",
    "BottleneckAdapters",
    "BottleneckLayer",
    "InjectionReport",
    "PeftAdapters",
    "SavedAdapter",
    "find_targets",
    "get_adapter_params",
    "load_adapter",
    "make_peft_config",
    "parse_layers",
    "read_adapter_meta",
    "save_adapter",
    "weights_checksum",
]

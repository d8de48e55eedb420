"""Adapters: inject by name (:mod:`.inject`), LoRA/DoRA/IA3 via peft (:mod:`.lora`), bottleneck
adapters (:mod:`.bottleneck`), and saving/loading only what was trained (:mod:`.io`)."""

from .bottleneck import Bottleneck, BottleneckAdapters, BottleneckLayer
from .inject import AdapterModule, AdapterSet, InjectionReport, find_targets, get_adapter_params, parse_layers
from .io import load_adapter, read_adapter_meta, save_adapter, weights_checksum
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
    "find_targets",
    "get_adapter_params",
    "load_adapter",
    "make_peft_config",
    "parse_layers",
    "read_adapter_meta",
    "save_adapter",
    "weights_checksum",
]

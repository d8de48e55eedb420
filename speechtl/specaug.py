"""SpecAugment (Park et al., 2019): random frequency and time masks while training.

Whisper reads a log-mel spectrogram ``(batch, mels, frames)``; the masks go on it just before
the encoder's first convolution. The wav2vec2 family reads waveforms, so the masks go on its
convolutional features ``(batch, channels, frames)`` (as wav2vec2's own fine-tuning does on the
same features). Either way the masks are torchaudio's ``FrequencyMasking``/``TimeMasking`` with
independent masks per example, applied through a forward hook that exists only inside
:func:`specaug_applied`, so evaluation and decoding never see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torchaudio.transforms import FrequencyMasking, TimeMasking

from .errors import SpeechtlError


class SpecAugment(nn.Module):
    """Frequency and time masks on ``(batch, channels, frames)``; the identity in eval mode.

    Args:
        freq_masks, freq_width: number of channel masks and their largest width.
        time_masks, time_width: number of time masks and their largest width in frames.
        max_time_ratio: no time mask covers more than this fraction of the frames.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: int = 40,
        max_time_ratio: float = 0.2,
    ):
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0 or not 0.0 <= max_time_ratio <= 1.0:
            raise SpeechtlError("SpecAugment counts and widths must be >= 0 and max_time_ratio in [0, 1]")
        self.freq_masks = freq_masks
        self.time_masks = time_masks
        self.freq = FrequencyMasking(freq_width, iid_masks=True)
        self.time = TimeMasking(time_width, iid_masks=True, p=max_time_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        for _ in range(self.freq_masks):
            x = self.freq(x)
        for _ in range(self.time_masks):
            x = self.time(x)
        return x


def spec_module(backbone: nn.Module) -> tuple[nn.Module, Literal["input", "output"]]:
    """Where SpecAugment acts: the output of a wav2vec2-style convolutional feature encoder, or
    the input of the first 1-D convolution (Whisper's ``conv1``, which reads the log-mel)."""
    for _, module in backbone.named_modules():
        if type(module).__name__.endswith("FeatureEncoder"):
            return module, "output"
    for _, module in backbone.named_modules():
        if isinstance(module, nn.Conv1d):
            return module, "input"
    raise SpeechtlError(f"SpecAugment: {getattr(backbone, 'name', type(backbone).__name__)} has neither a "
                        "convolutional feature encoder nor a spectrogram convolution to mask; set specaug=false")


@contextmanager
def specaug_applied(backbone: nn.Module, specaug: SpecAugment | None, enabled: bool = True) -> Iterator[None]:
    """Within this block, ``backbone``'s spectrogram/features pass through ``specaug``."""
    if specaug is None or not enabled:
        yield
        return
    module, where = spec_module(backbone)
    if where == "output":
        handle = module.register_forward_hook(lambda m, args, out: specaug(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: (specaug(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()

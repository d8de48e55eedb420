"""Batched transcription for every ASR backbone (Whisper and the wav2vec2 family)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import DEFAULT_MAX_SECONDS, load_audio
from .backbones import create_backbone
from .errors import SpeechtlError

AudioInput = str | os.PathLike | np.ndarray


def transcribe(
    model,
    audio: AudioInput | Sequence[AudioInput],
    *,
    batch_size: int = 8,
    beam_size: int = 1,
    adapter: str | os.PathLike | None = None,
    max_new_tokens: int = 128,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Transcribe audio files or waveforms; returns one string per input, in input order.

    Args:
        model: a backbone name (``"whisper-tiny.en"``, a folder, a hub id) or a backbone object.
        audio: a path, a float32 waveform ``(samples,)`` at the model's rate, or a list of them.
        batch_size: clips per forward pass; clips are sorted by length first so a batch holds
            clips of similar length (less padding), and results return in input order.
        beam_size: 1 for greedy decoding, more for beam search (Whisper).
        adapter: a saved adapter folder to apply to the model first.
        device: where to run; the model's own device by default.
        progress: show a progress bar; by default when there is more than one batch.
    """
    backbone = create_backbone(model) if isinstance(model, str | os.PathLike) else model
    if getattr(backbone, "modality", None) != "audio" or not hasattr(backbone, "generate"):
        raise SpeechtlError(f"{getattr(backbone, 'name', backbone)!r} is not a speech recognition model")
    if batch_size < 1 or beam_size < 1:
        raise SpeechtlError(f"batch_size and beam_size must be at least 1 (got {batch_size}, {beam_size})")
    if adapter is not None:
        from .adapters import load_adapter

        backbone = load_adapter(backbone, adapter)
    items = [audio] if isinstance(audio, str | os.PathLike | np.ndarray) else list(audio)
    if device is not None:
        backbone.to(device)
    device = next(backbone.parameters()).device
    backbone.eval()
    # Decode everything up front: a bad file fails before any compute, naming the file.
    waves = [
        load_audio(a, backbone.sample_rate, max_seconds=max_seconds) if not isinstance(a, np.ndarray) else a
        for a in items
    ]
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(batches) > 1
    texts: list[str] = [""] * len(waves)
    for idx in tqdm(batches, desc="transcribe", unit="batch", disable=not show):
        inputs, lengths = backbone.prepare([waves[i] for i in idx])
        out = backbone.generate(inputs.to(device), lengths.to(device), beam_size=beam_size,
                                max_new_tokens=max_new_tokens)
        for i, t in zip(idx, out):
            texts[i] = t
    return texts


from ._callable import callable_module  # noqa: E402

callable_module(__name__, "transcribe")

"""Batched transcription for every ASR backbone (Whisper and the wav2vec2 family), with optional
routing of each utterance to the adapter of its accent (:mod:`speechtl.routing`)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

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
    adapters: Mapping[str, str | os.PathLike] | None = None,
    accent_classifier: Any = None,
    route: str = "auto",
    min_prob: float = 0.5,
    soft: bool = False,
    speakers: Sequence[Any] | None = None,
    return_routes: bool = False,
    max_new_tokens: int = 128,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> list[str] | tuple[list[str], list[Any]]:
    """Transcribe audio files or waveforms; returns one string per input, in input order.

    Args:
        model: a backbone name (``"whisper-tiny.en"``, a folder, a hub id) or a backbone object.
        audio: a path, a float32 waveform ``(samples,)`` at the model's rate, or a list of them.
        batch_size: clips per forward pass; clips are sorted by length first so a batch holds
            clips of similar length (less padding), and results return in input order.
        beam_size: 1 for greedy decoding, more for beam search (Whisper).
        adapter: a saved adapter folder to apply to the model first.
        adapters: ``{accent: saved adapter folder}`` loaded once onto the model as named adapters;
            each utterance runs with the one ``route`` picks (see :mod:`speechtl.routing`).
        accent_classifier: a saved ``--task accent-id`` folder (or a loaded classifier) for ``route="auto"``.
        route: ``"auto"`` (the classifier picks per utterance), ``"none"`` (the base model) or an
            accent of ``adapters`` (that adapter for every utterance).
        min_prob: with ``"auto"``, utterances whose most probable adapter accent is below this
            probability go to the base model.
        soft: with ``"auto"``, mix the LoRA adapters weighted by the classifier's probabilities
            (weights rounded to 0.01) instead of picking one.
        speakers: one speaker label per input (None: decide that input alone); with ``"auto"`` a
            speaker's inputs share one route, chosen on the classifier's evidence pooled over them.
        return_routes: return ``(texts, routes)``, with a :class:`speechtl.routing.Route` per input.
        device: where to run; the model's own device by default.
        progress: show a progress bar; by default when there is more than one batch.
    """
    backbone = create_backbone(model) if isinstance(model, str | os.PathLike) else model
    if getattr(backbone, "modality", None) != "audio" or not hasattr(backbone, "generate"):
        raise SpeechtlError(f"{getattr(backbone, 'name', backbone)!r} is not a speech recognition model")
    if batch_size < 1 or beam_size < 1:
        raise SpeechtlError(f"batch_size and beam_size must be at least 1 (got {batch_size}, {beam_size})")
    routing = bool(adapters) or accent_classifier is not None
    if routing and adapter is not None:
        raise SpeechtlError("give either adapter (one adapter for everything) or adapters (routed per accent), "
                            "not both")
    if soft and not routing:
        raise SpeechtlError("soft routing needs adapters={accent: DIR, ...} and an accent_classifier")
    router = None
    if routing:
        from .routing import get_router

        if device is not None:
            backbone.to(device)
        router = get_router(backbone, adapters, accent_classifier)
        if soft and route != "auto":
            raise SpeechtlError(f"soft routing mixes adapters by the classifier's probabilities; it needs route "
                                f"'auto', not {route!r}")
    elif adapter is not None:
        from .adapters import load_adapter

        backbone = load_adapter(backbone, adapter)
    items = [audio] if isinstance(audio, str | os.PathLike | np.ndarray) else list(audio)
    if speakers is not None:
        if router is None:
            raise SpeechtlError("speakers groups inputs for routing; give adapters={accent: DIR, ...} and an "
                                "accent_classifier too")
        if len(speakers) != len(items):
            raise SpeechtlError(f"got {len(speakers)} speakers for {len(items)} inputs; give one per input")
    if device is not None:
        backbone.to(device)
    device = next(backbone.parameters()).device
    backbone.eval()
    # Decode everything up front: a bad file fails before any compute, naming the file.
    waves = [
        load_audio(a, backbone.sample_rate, max_seconds=max_seconds) if not isinstance(a, np.ndarray) else a
        for a in items
    ]
    if router is not None:
        routes = router.choose(waves, route=route, min_prob=min_prob, soft=soft, batch_size=batch_size,
                               groups=speakers)
        generator = router.generator
    else:
        routes = []
        generator = backbone
    # Utterances sharing a route run together, so each adapter setting is switched to once.
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(waves)):
        groups[routes[i].key if routes else ()].append(i)
    plan = []
    for key, members in groups.items():
        order = sorted(members, key=lambda i: -len(waves[i]))
        plan += [(key, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(plan) > 1
    texts: list[str] = [""] * len(waves)
    with torch.no_grad():
        for key, idx in tqdm(plan, desc="transcribe", unit="batch", disable=not show):
            inputs, lengths = backbone.prepare([waves[i] for i in idx])
            with router.using(routes[idx[0]]) if router is not None else nullcontext():
                out = generator.generate(inputs.to(device), lengths.to(device), beam_size=beam_size,
                                         max_new_tokens=max_new_tokens)
            for i, t in zip(idx, out):
                texts[i] = t
    if return_routes:
        if not routes:
            from .routing import BASE, Route

            # Without routing every utterance ran the same way: the base model or the one adapter.
            routes = [Route(BASE if adapter is None else "adapter")] * len(waves)
        return texts, routes
    return texts


from ._callable import callable_module  # noqa: E402

callable_module(__name__, "transcribe")

"""Batched transcription for every ASR backbone (Whisper and the wav2vec2 family), of clips or of
recordings hours long, on PyTorch or CTranslate2, with optional routing of each utterance to the
adapter of its accent (:mod:`speechtl.routing`).

The path of one call: each input is checked (exists, decodes, within ``max_seconds``) and cut
into segments (:mod:`speechtl.segments`: a clip of up to 30 s is one segment; a longer recording
is streamed through voice-activity detection and cut at silences); segments of similar length
are decoded together (:mod:`speechtl.engines`) with the temperature fallback that catches
repetition loops (:mod:`speechtl.decoding`); each input's segments come back in order with their
times (:class:`~speechtl.segments.Transcript`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import create_backbone
from .decoding import DecodeOptions, Hypothesis, decode_with_fallback, short_clips_mode, too_repetitive
from .engines import ENGINES, Ct2Whisper
from .errors import SpeechtlError
from .segments import (LONG_FORM_LIMIT, MAX_SEGMENT_SECONDS, Planned, Segment, Transcript, join_texts, open_source,
                       plan_segments)
from .vad import VadOptions, speech_bounds

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
    router: Any = None,
    route: str = "auto",
    min_prob: float = 0.5,
    soft: bool = False,
    speakers: Sequence[Any] | None = None,
    return_routes: bool = False,
    return_segments: bool = False,
    max_new_tokens: int = 128,
    max_seconds: float | None = LONG_FORM_LIMIT,
    decode_options: DecodeOptions | None = None,
    short_clips: str | bool = "auto",
    vad: VadOptions | None = None,
    engine: str = "torch",
    merge_adapter: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> list[str] | tuple[list[str], list[Any]] | list[Transcript]:
    """Transcribe audio files or waveforms; returns one string per input, in input order.

    Args:
        model: a backbone name (``"whisper-tiny.en"``, a folder, a hub id) or a backbone object;
            with ``engine="ct2"`` a CTranslate2 folder, a packaged name or a :class:`~speechtl.engines.Ct2Whisper`.
        audio: a path, a float32 waveform ``(samples,)`` at the model's rate, or a list of them;
            any length up to ``max_seconds`` (4 hours by default).
        batch_size: segments per forward pass; segments are sorted by length first so a batch
            holds segments of similar length (less padding), and results return in input order.
        beam_size: 1 for greedy decoding, more for beam search (Whisper; a CTC model decodes greedily and
            refuses more than 1).
        adapter: a saved adapter folder to apply to the model first. A LoRA/DoRA/IA3 adapter is
            merged into the weights for speed (see ``merge_adapter``).
        adapters: ``{accent: saved adapter folder}`` loaded once onto the model as named adapters;
            each utterance runs with the one ``route`` picks (see :mod:`speechtl.routing`).
        accent_classifier: a saved ``--task accent-id`` folder (or a loaded classifier) for ``route="auto"``.
        router: a built :class:`speechtl.routing.Router` (adapters and classifier loaded once, e.g. by
            :func:`speechtl.routing.get_router`) instead of ``adapters`` and ``accent_classifier``;
            ``model`` may then be None (the router's backbone).
        route: ``"auto"`` (the classifier picks per utterance), ``"none"`` (the base model) or an
            accent of ``adapters`` (that adapter for every utterance).
        min_prob: with ``"auto"``, utterances whose most probable adapter accent is below this
            probability go to the base model.
        soft: with ``"auto"``, mix the LoRA adapters weighted by the classifier's probabilities
            (weights rounded to 0.01) instead of picking one.
        speakers: one speaker label per input (None: decide that input alone); with ``"auto"`` a
            speaker's inputs share one route, chosen on the classifier's evidence pooled over them.
            Without it each input is routed alone (a long recording on the evidence of all its segments).
        return_routes: return ``(texts, routes)``, with a :class:`speechtl.routing.Route` per input
            (a long recording's first segment's route).
        return_segments: return a :class:`~speechtl.segments.Transcript` per input (text, segments with
            start and end seconds and decoder evidence, route).
        max_new_tokens: tokens decoded per segment at most.
        max_seconds: refuse inputs longer than this (None: no limit).
        decode_options: Whisper's decoding and fallback settings (:class:`~speechtl.decoding.DecodeOptions`;
            by default OpenAI's thresholds and temperatures with ``beam_size`` and ``max_new_tokens``).
            ``DecodeOptions.plain()`` decodes once at temperature 0. A CTC model decodes once greedily and
            refuses fallback settings other than these two.
        short_clips: Whisper: how far each batch of segments is padded before encoding. ``"auto"``
            (default) decodes each route the way its model trained: an adapter whose training padded
            clips only to the batch's longest (``short_clips`` in its ``adapter.json``, the Whisper
            default of ``speechtl-adapt``; an export records it too) encodes each batch at its longest
            segment, which is several times faster on short clips; the base model, soft mixtures and
            adapters trained at 30 s (or saved before the record) pad to 30 s, since the pretrained
            model loops on unpadded clips. Under ``"auto"`` only whole clips (inputs of one segment, up to 30 s)
            decode short: the segments of a long recording, which may hold several utterances, pad to 30 s, as
            an adapter trained on single utterances stops after the first when decoding such a segment
            unpadded. A clip that ``"auto"`` decoded short and whose transcript
            still loops after the fallback (compression ratio above
            ``decode_options.compression_ratio_threshold``) is decoded again at 30 s, and that result is kept unless it
            loops too. ``"on"`` (True) or ``"off"`` (False) decides for every route, with no retry.
        vad: voice-activity detection settings for cutting long recordings (:class:`~speechtl.vad.VadOptions`).
        engine: ``"torch"`` (default; adapters and routing) or ``"ct2"`` (CTranslate2 via faster-whisper).
        merge_adapter: fold ``adapter`` into the weights (one set of weights, no adapter layers to run):
            None (default) merges when this call loaded the model itself (``model`` a name or folder);
            True merges into a given backbone too (it stays merged); False keeps the adapter switchable.
        device: where to run; the model's own device by default.
        progress: show a progress bar; by default when there is more than one batch.
    """
    if engine not in ENGINES:
        raise SpeechtlError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    forced = short_clips_mode(short_clips)
    if batch_size < 1 or beam_size < 1:
        raise SpeechtlError(f"batch_size and beam_size must be at least 1 (got {batch_size}, {beam_size})")
    if router is not None and (adapters or accent_classifier is not None):
        raise SpeechtlError("give either router (built once) or adapters and accent_classifier, not both")
    routing = bool(adapters) or accent_classifier is not None or router is not None
    if routing and adapter is not None:
        raise SpeechtlError("give either adapter (one adapter for everything) or adapters (routed per accent), "
                            "not both")
    if soft and not routing:
        raise SpeechtlError("soft routing needs adapters={accent: DIR, ...} and an accent_classifier")
    items = [audio] if isinstance(audio, str | os.PathLike | np.ndarray) else list(audio)
    if speakers is not None:
        if not routing:
            raise SpeechtlError("speakers groups inputs for routing; give adapters={accent: DIR, ...} and an "
                                "accent_classifier too")
        if len(speakers) != len(items):
            raise SpeechtlError(f"got {len(speakers)} speakers for {len(items)} inputs; give one per input")
    if engine == "ct2":
        if not isinstance(model, str | os.PathLike | Ct2Whisper):
            raise SpeechtlError(f"engine ct2 takes a CTranslate2 folder, a packaged name or a Ct2Whisper, not "
                                f"{type(model).__name__}; use engine torch for a PyTorch model")
        if routing or adapter is not None:
            raise SpeechtlError("the ct2 engine runs exported models: export the adapted model first "
                                "(speechtl-export --adapter DIR --format ct2), or use engine torch for adapters")
        runner = model if isinstance(model, Ct2Whisper) else Ct2Whisper(model, device=str(device or "cpu"))
        router = None
    else:
        runner, router = _torch_runner(model, adapter, adapters, accent_classifier, router, soft, route,
                                       merge_adapter, device)
    seq2seq = getattr(runner, "task", None) == "seq2seq"
    opts = decode_options or DecodeOptions(beam_size=beam_size, max_new_tokens=max_new_tokens)
    if not seq2seq:
        name = getattr(runner, "name", "this model")
        if opts.beam_size > 1:
            raise SpeechtlError(f"beam_size={opts.beam_size}: a CTC model ({name}) decodes greedily here; use "
                                "beam_size 1 (for beam search with a word LM, speechtl.ctc_decode.CTCBeamDecoder)")
        fallback = opts.fallback_settings_set()
        if fallback:
            raise SpeechtlError(f"decode options {', '.join(fallback)}: Whisper's fallback settings do not apply to "
                                f"a CTC model ({name}), which decodes once greedily; leave them at their defaults "
                                "(speechtl-transcribe: the --temperatures, --best-of and --*-threshold flags)")
        opts = DecodeOptions.plain(opts.beam_size, opts.max_new_tokens)  # CTC: one pass, nothing to fall back on

    # Check every input and find its segments before any model compute: a bad file fails first, named.
    rate = runner.sample_rate
    sources = [open_source(a, rate, max_seconds) for a in items]
    jobs: list[tuple[int, Planned]] = []  # (input, its segment)
    held: dict[int, np.ndarray] = {}
    for k, src in enumerate(sources):
        if src.duration <= MAX_SEGMENT_SECONDS:
            held[len(jobs)] = src.read()  # a clip is read once and kept; a long recording is read per batch
            src.item, src.duration = held[len(jobs)], len(held[len(jobs)]) / rate
        jobs += [(k, plan) for plan in plan_segments(src, vad=vad)]

    def wave(j: int) -> np.ndarray:
        if j in held:
            return held[j]
        k, plan = jobs[j]
        return sources[k].read_pieces(plan.pieces)

    routes: list[Any] = []
    if router is not None:
        waves = [wave(j) for j in range(len(jobs))]
        per_input = [sum(1 for job in jobs if job[0] == k) for k in range(len(sources))]
        groups = [speakers[k] if speakers is not None else (("input", k) if per_input[k] > 1 else None)
                  for k, *_ in jobs]
        routes = router.choose(waves, route=route, min_prob=min_prob, soft=soft, batch_size=batch_size, groups=groups)
        # Routing reads every segment first (the classifier pools over an input's segments); each is
        # freed once decoded.
        held = dict(enumerate(waves))
        del waves
    # Segments sharing a route run together, so each adapter setting is switched to once; a long input's
    # segments and whole clips run apart, as "auto" decodes only whole clips short (see trained_short).
    whole = [sources[k].duration <= MAX_SEGMENT_SECONDS for k, _ in jobs]
    by_route: dict[tuple, list[int]] = defaultdict(list)
    for j in range(len(jobs)):
        by_route[(routes[j].key if routes else (), whole[j])].append(j)
    plan = []
    for key, members in by_route.items():
        order = sorted(members, key=lambda j: -jobs[j][1].samples)
        plan += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(plan) > 1
    hyps: list[Hypothesis | None] = [None] * len(jobs)
    short: list[bool | None] = [None] * len(jobs)  # how each segment was encoded (None: CTC, no padding)
    speech = [plan.speech for _, plan in jobs]  # the detector's verdict (None: a clip, asked when needed)
    quiet = opts.no_speech_threshold
    with torch.no_grad():
        for idx in tqdm(plan, desc="transcribe", unit="batch", disable=not show):
            route_ = routes[idx[0]] if routes else None
            cut = None if not seq2seq else forced if forced is not None else (
                whole[idx[0]] and trained_short(runner, router, route_))
            with router.using(route_) if router is not None else nullcontext():
                batch = [wave(j) for j in idx]
                got = _decode_batch(runner, batch, opts, cut)
                how = _retry_loops_padded(runner, batch, got, opts) if cut and forced is None else [cut] * len(idx)
                for j, h, c in zip(idx, got, how):
                    hyps[j], short[j] = h, c
            for j, w in zip(idx, batch):
                # A clip's detector verdict matters only where the model says no speech; asked only there.
                if seq2seq and speech[j] is None and quiet is not None and hyps[j].no_speech_prob > quiet:
                    speech[j] = speech_bounds(w, vad or VadOptions()) is not None
                held.pop(j, None)  # decoded: its audio is not needed again

    transcripts = [Transcript("", [], src.duration) for src in sources]
    for j, (k, plan) in enumerate(jobs):
        h, a, b = hyps[j], plan.start, plan.end
        if seq2seq and speech[j] is False and quiet is not None and h.no_speech_prob > quiet:
            h.text = ""  # the detector heard no speech and the model agrees: silence, whatever it decoded
        transcripts[k].segments.append(Segment(a / rate, b / rate, h.text, h.avg_logprob if seq2seq else None,
                                               h.no_speech_prob if seq2seq else None,
                                               h.compression_ratio if seq2seq else None,
                                               h.temperature if seq2seq else None, speech[j]))
        if routes and transcripts[k].route is None:  # a long input: the route of its segments (one per input)
            transcripts[k].route = routes[j]
        if short[j] is not None:  # short only if every segment was (a retry keeps one at 30 s)
            was = transcripts[k].short_clips
            transcripts[k].short_clips = short[j] if was is None else was and short[j]
    for t in transcripts:
        t.text = join_texts(t.segments)
    if return_segments:
        return transcripts
    texts = [t.text for t in transcripts]
    if return_routes:
        if not routes:
            from .routing import BASE, Route

            # Without routing every utterance ran the same way: the base model or the one adapter.
            return texts, [Route(BASE if adapter is None else "adapter")] * len(texts)
        from .routing import BASE, Route

        # An input without speech had nothing to route: it ran nowhere, as the base model would.
        return texts, [t.route if t.route is not None else Route(BASE) for t in transcripts]
    return texts


def _torch_runner(model, adapter, adapters, accent_classifier, router, soft, route, merge_adapter, device):
    """The PyTorch model that decodes (the backbone, its adapted model, or a router's) and the router."""
    if router is not None and model is None:
        model = router.backbone
    own = isinstance(model, str | os.PathLike)
    backbone = create_backbone(model) if own else model
    if getattr(backbone, "modality", None) != "audio" or not hasattr(backbone, "generate"):
        raise SpeechtlError(f"{getattr(backbone, 'name', backbone)!r} is not a speech recognition model")
    if device is not None:
        backbone.to(device)
    if router is not None and router.backbone is not backbone:
        raise SpeechtlError("the router was built on another model; pass its backbone as model, or model=None")
    if router is None and (bool(adapters) or accent_classifier is not None):
        from .routing import get_router

        router = get_router(backbone, adapters, accent_classifier)
    if router is not None:
        if soft and route != "auto":
            raise SpeechtlError(f"soft routing mixes adapters by the classifier's probabilities; it needs route "
                                f"'auto', not {route!r}")
        runner = router.generator
    elif adapter is not None:
        from .adapters import load_adapter

        runner = load_adapter(backbone, adapter)
        merge = own if merge_adapter is None else merge_adapter
        if merge and runner.mergeable:
            runner.merge_adapter()  # one set of weights: no adapter layers to run at every step
    else:
        runner = backbone
    runner.eval()
    return runner, router


def trained_short(runner, router, route) -> bool:
    """Whether ``route`` (or ``runner`` without routing) was trained on unpadded clips, so decodes them so.

    A route of an adapter saved with ``short_clips: true`` (a base-route adapter included) decodes short;
    the plain base model, a soft mixture (partly the base model) and adapters trained at 30 s or saved
    before the record do not.
    """
    if router is not None and route is not None:
        return router.trained_short(route)
    return getattr(runner, "trained_short_clips", None) is True


# Whisper's 30 s of log-mel frames: the encoder's 1500 positions, all of them taken, with no padding mask.
FULL_FRAMES = 3000


def _decode_batch(runner, waves: list[np.ndarray], opts: DecodeOptions, short: bool | None) -> list[Hypothesis]:
    """Hypotheses for one batch of segments: features once, then decoding with the fallback.

    ``short``: Whisper: encode at the batch's longest segment (True) or at 30 s (False); None: CTC.
    """
    seq2seq = short is not None
    inputs, lengths = runner.prepare(waves, short_clips=short) if seq2seq else runner.prepare(waves)
    if short:
        # A clip of the full 30 s gives the encoder all its positions, where no padding mask applies:
        # the batch's shorter clips would attend to their zero fill. They are decoded apart from it.
        full = [i for i, n in enumerate(lengths.tolist()) if n >= FULL_FRAMES - 1]
        rest = [i for i in range(len(waves)) if i not in full]
        if full and rest:
            out: list[Hypothesis | None] = [None] * len(waves)
            for group in (full, rest):
                for i, h in zip(group, _decode_batch(runner, [waves[i] for i in group], opts, short)):
                    out[i] = h
            return out
    if torch.is_tensor(inputs):
        device = next(runner.parameters()).device
        inputs, lengths = inputs.to(device), lengths.to(device)
    if not seq2seq:
        return [Hypothesis(t) for t in runner.generate(inputs, lengths, beam_size=opts.beam_size)]

    memory = runner.decoder_memory(inputs, lengths)  # encoded once; the fallback decodes from it again

    # With the fallback on, a loop fails the fallback's test and is decoded again: it stops at the threshold
    # rather than running to the token limit (a clip that loops at every temperature keeps the shorter loop).
    loops = opts.compression_ratio_threshold if opts.fallback else None

    def decode(idx: Sequence[int], temperature: float) -> list[Hypothesis]:
        sel = list(idx)
        return runner.decode(inputs[sel], lengths[sel], temperature=temperature, beam_size=opts.beam_size,
                             best_of=opts.best_of, max_new_tokens=opts.max_new_tokens, seed=opts.seed,
                             encoder_states=memory[sel], compression_ratio_threshold=loops)

    return decode_with_fallback(decode, len(waves), opts)


def _retry_loops_padded(runner, waves: list[np.ndarray], hyps: list[Hypothesis], opts: DecodeOptions) -> list[bool]:
    """Decode again at 30 s the segments whose short decoding still loops; per segment, whether it stayed short.

    30 s is the padding Whisper was pretrained on, so a model trained on unpadded clips that loops on
    one (an unfamiliar voice, say) gets the regime it knows. ``hyps`` is updated in place; a 30-s
    result that loops too is dropped (the short one stays).
    """
    loops = [i for i, h in enumerate(hyps) if h.text and too_repetitive(h, opts)]  # silence was blanked: no retry
    short = [True] * len(hyps)
    if loops:
        for i, h in zip(loops, _decode_batch(runner, [waves[i] for i in loops], opts, False)):
            if not too_repetitive(h, opts):
                hyps[i], short[i] = h, False
    return short


OUTPUT_FORMATS = ("tsv", "json", "srt", "vtt")


def load_model(name: str, *, engine: str = "torch", device: str | None = None, compute_type: str = "default",
               bf16: bool = False):
    """The model :func:`transcribe` runs, loaded as ``speechtl-transcribe`` loads it.

    ``engine="torch"``: a backbone (:func:`~speechtl.create_backbone`), in bfloat16 with ``bf16``;
    ``engine="ct2"``: a CTranslate2 Whisper folder or packaged name at ``compute_type``. ``device``
    defaults to cuda when available.
    """
    if engine not in ENGINES:
        raise SpeechtlError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if engine == "ct2":
        if bf16:
            raise SpeechtlError("--bf16 is for --engine torch; with ct2 give --compute-type float16 or bfloat16")
        return Ct2Whisper(name, device=device, compute_type=compute_type)
    if compute_type != "default":
        raise SpeechtlError("--compute-type is for --engine ct2; with torch use --bf16 (CUDA)")
    return create_backbone(name, **({"dtype": torch.bfloat16} if bf16 else {})).to(device)


def format_transcript(path: str, t: Transcript, fmt: str = "tsv") -> str:
    """One input's transcript as ``speechtl-transcribe`` prints it (``fmt`` of :data:`OUTPUT_FORMATS`), newline-ended.

    ``tsv``: ``path<TAB>text``, plus ``<TAB>route`` when routed; ``json``: one line
    ``{path, text, duration, segments, ...}``; ``srt``/``vtt``: subtitles, one cue per segment.
    """
    from .subtitles import RENDERERS

    if fmt in RENDERERS:
        return RENDERERS[fmt](t)
    if fmt == "json":
        return json.dumps({"path": path, **t.to_json()}, ensure_ascii=False) + "\n"
    if fmt != "tsv":
        raise SpeechtlError(f"output format {fmt!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    return f"{path}\t{t.text}" + (f"\t{t.route.name}" if t.route is not None else "") + "\n"

"""Evaluation: transcribe a manifest, score every utterance, and summarise WER per accent.

``evaluate(model, manifest)`` goes hypotheses → records → summary: it transcribes the manifest
(or takes a ``transcriber``'s transcripts), scores each utterance against its reference
(:func:`score_utterances`, :mod:`speechtl.wer`) and summarises the records into a
:class:`~speechtl.report.Report` (:func:`~speechtl.report.summarize`): WER per accent, per
speaker and overall with 95 % speaker-bootstrap intervals (:mod:`speechtl.stats`), held-out
accents apart. ``report.save(dir)`` writes it (:mod:`speechtl.render` for ``report.md``);
``adapted.compare(baseline)`` gives the change per accent and the forgetting score
(:mod:`speechtl.comparison`).

Routing each utterance to the adapter of its accent reaches evaluation as one object,
``router=``: a :class:`Routing` (a built :class:`speechtl.routing.Router` with its route settings)
or a bare ``Router``. The keywords ``adapters``, ``accent_classifier``, ``route``, ``min_prob``,
``soft_route`` and ``route_by`` still work: they build the :class:`Routing` once.

The data, statistics and rendering live in :mod:`speechtl.report`, :mod:`speechtl.comparison`,
:mod:`speechtl.stats` and :mod:`speechtl.render`; their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .comparison import FORGETTING_DEFINITION, AccentChange, Comparison, compare, forgetting
from .data.manifest import Utterance, read_manifest
from .decoding import DecodeOptions, short_clips_mode
from .errors import SpeechtlError
from .render import system_name
from .report import TOP_CONFUSIONS, GroupStats, MacroStats, Report, UtteranceRecord, speaker_totals, summarize
from .stats import (CI_LEVEL, N_BOOTSTRAP, PairedResult, bootstrap_ci, bootstrap_wers, paired_bootstrap,
                    percentile_interval, seeded_rng)
from .wer import Normalizer, get_normalizer, score_pairs

if TYPE_CHECKING:
    from .routing import Router

Transcriber = Callable[[list[Utterance]], list[str]]

ROUTE_BY = ("utterance", "speaker")
_system_name = system_name  # its name before speechtl.render

__all__ = [
    "CI_LEVEL", "FORGETTING_DEFINITION", "N_BOOTSTRAP", "ROUTE_BY", "TOP_CONFUSIONS", "AccentChange", "Comparison",
    "GroupStats", "MacroStats", "PairedResult", "Report", "Routing", "Transcriber", "UtteranceRecord", "bootstrap_ci",
    "bootstrap_wers", "compare", "evaluate", "forgetting", "paired_bootstrap", "percentile_interval",
    "score_utterances", "seeded_rng", "speaker_totals", "summarize",
]


# --------------------------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class Routing:
    """How evaluation routes each utterance to the adapter of its accent: one object.

    Args:
        router: a built :class:`speechtl.routing.Router` (adapters loaded once on one base model,
            and the accent classifier), e.g. from :func:`speechtl.routing.get_router` or :meth:`build`.
        route: ``"auto"`` (the classifier picks), ``"none"`` (the base model) or an adapter's accent.
        min_prob: with ``auto``, utterances whose most probable adapter accent is below this go to
            the base model.
        soft: with ``auto``, mix the LoRA adapters by the classifier's probabilities.
        by: ``"utterance"`` (each utterance decides alone) or ``"speaker"`` (with ``auto``, a
            speaker's utterances share one route, chosen on the classifier's evidence pooled over them).
        classifier_name: how the report names the accent classifier (its folder); by default its type.
    """

    router: Router
    route: str = "auto"
    min_prob: float = 0.5
    soft: bool = False
    by: str = "utterance"
    classifier_name: str | None = None

    def __post_init__(self) -> None:
        self.check(self.route, self.soft, self.by)

    @staticmethod
    def check(route: str, soft: bool, by: str) -> None:
        """Refuse settings that contradict each other (before any model is loaded)."""
        if by not in ROUTE_BY:
            raise SpeechtlError(f"route_by={by!r}: choose {' or '.join(ROUTE_BY)}")
        if by == "speaker" and route != "auto":
            raise SpeechtlError("route_by='speaker' pools the accent classifier's evidence per speaker; it needs "
                                "route='auto'")
        if soft and route != "auto":
            raise SpeechtlError(f"soft routing mixes adapters by the classifier's probabilities; it needs route "
                                f"'auto', not {route!r}")

    @classmethod
    def build(cls, model: Any, adapters: dict[str, str | os.PathLike] | None, accent_classifier: Any = None, *,
              route: str = "auto", min_prob: float = 0.5, soft: bool = False, by: str = "utterance",
              device: str | None = None) -> Routing:
        """Load ``adapters`` ``{accent: folder}`` and the classifier onto ``model`` (a name, folder or
        backbone) once (:func:`speechtl.routing.get_router`) and keep the route settings with them."""
        cls.check(route, soft, by)
        from .backbones import create_backbone
        from .routing import get_router

        backbone = create_backbone(model) if isinstance(model, str | os.PathLike) else model
        if device is not None:
            backbone.to(device)
        name = (None if accent_classifier is None else str(accent_classifier)
                if isinstance(accent_classifier, str | os.PathLike) else type(accent_classifier).__name__)
        return cls(get_router(backbone, adapters, accent_classifier), route, min_prob, soft, by, name)

    def meta(self) -> dict[str, Any]:
        """What a report records about the routing."""
        clf = self.router.classifier
        return {"adapters": {a: str(d) for a, d in self.router.adapter_dirs.items()},
                "accent_classifier": self.classifier_name or (None if clf is None else type(clf).__name__),
                "route": self.route, "min_prob": self.min_prob, "soft_route": self.soft, "route_by": self.by}


def _routing(model: Any, router: Routing | Router | None, adapters: Any, accent_classifier: Any, route: str,
             min_prob: float, soft_route: bool, route_by: str, device: str | None) -> Routing | None:
    """The one routing object from ``router=`` or the convenience keywords (None: no routing)."""
    keywords = bool(adapters) or accent_classifier is not None
    if router is None:
        if keywords:
            return Routing.build(model, adapters, accent_classifier, route=route, min_prob=min_prob, soft=soft_route,
                                 by=route_by, device=device)
        if route_by not in ROUTE_BY:
            raise SpeechtlError(f"route_by={route_by!r}: choose {' or '.join(ROUTE_BY)}")
        if route_by == "speaker":
            raise SpeechtlError("route_by='speaker' pools the accent classifier's evidence per speaker; it needs "
                                "route='auto' with adapters and an accent_classifier (or router=)")
        return None
    if keywords:
        raise SpeechtlError("router= already holds the adapters and the accent classifier; give adapters and "
                            "accent_classifier only without it")
    if not isinstance(router, Routing):
        return Routing(router, route, min_prob, soft_route, route_by)
    if (route, min_prob, soft_route, route_by) != ("auto", 0.5, False, "utterance"):
        raise SpeechtlError("router= is a Routing, which holds route, min_prob, soft and by itself; set them there")
    return router


# --------------------------------------------------------------------------------------------
# Hypotheses → records → summary


def score_utterances(
    utts: Sequence[Utterance],
    hyps: Sequence[str],
    *,
    normalizer: str | Normalizer = "whisper",
    heldout_accents: Iterable[str] = (),
) -> list[UtteranceRecord]:
    """Score hypotheses against the manifest's texts; an utterance is held out when its accent is
    in ``heldout_accents`` or its split is ``test_heldout``."""
    if len(hyps) != len(utts):
        raise SpeechtlError(f"got {len(hyps)} transcripts for {len(utts)} utterances; expected one per utterance")
    bad = next((i for i, h in enumerate(hyps) if not isinstance(h, str)), None)
    if bad is not None:
        raise SpeechtlError(f"transcript for utterance {utts[bad].id!r} is a {type(hyps[bad]).__name__}, not a string")
    held = set(heldout_accents)
    scores = score_pairs([u.text for u in utts], list(hyps), normalizer)
    return [
        UtteranceRecord(
            id=u.id,
            speaker=u.speaker,
            accent=u.accent,
            corpus=u.corpus,
            split=u.split,
            heldout=u.accent in held or u.split == "test_heldout",
            score=s,
        )
        for u, s in zip(utts, scores)
    ]


def evaluate(
    model: Any,
    manifest: str | os.PathLike | Sequence[Utterance],
    *,
    adapter: str | os.PathLike | None = None,
    router: Routing | Router | None = None,
    normalizer: str | Normalizer = "whisper",
    batch_size: int = 8,
    beam_size: int = 1,
    heldout_accents: Iterable[str] = (),
    target_accent: str | None = None,
    out_dir: str | os.PathLike | None = None,
    transcriber: Transcriber | None = None,
    progress: bool = True,
    splits: Iterable[str] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    device: str | None = None,
    adapters: dict[str, str | os.PathLike] | None = None,
    accent_classifier: Any = None,
    route: str = "auto",
    min_prob: float = 0.5,
    soft_route: bool = False,
    route_by: str = "utterance",
    decode_options: DecodeOptions | None = None,
    short_clips: str | bool = "auto",
) -> Report:
    """Transcribe ``manifest`` with ``model`` (+ ``adapter``) and measure WER per accent.

    Args:
        model: a backbone name, folder or object (see :func:`speechtl.transcription.transcribe`);
            only recorded in the report when ``transcriber`` is given. With ``router`` it names
            the model (None: the router's backbone).
        manifest: a JSONL manifest path or a list of :class:`Utterance`.
        router: route each utterance to the adapter of its accent: a :class:`Routing`, or a
            :class:`speechtl.routing.Router` (routed by ``route``, ``min_prob``, ``soft_route`` and
            ``route_by``); each record keeps its route and probability.
        normalizer: ``whisper``, ``basic``, ``none`` or a normaliser object, applied to
            references and hypotheses alike.
        heldout_accents: accents unseen in training, reported apart (utterances whose split
            is ``test_heldout`` are held out too).
        target_accent: the accent adapted to; recorded and used by :meth:`Report.compare`.
        out_dir: when given, the report is saved there (see :meth:`Report.save`).
        transcriber: ``fn(utterances) -> transcripts`` used instead of the model, e.g. to
            score transcripts produced elsewhere.
        splits: keep only utterances with these ``split`` values (None keeps all).
        n_bootstrap, seed: speaker-bootstrap resamples and their seed.
        device: where the model runs (``cpu``, ``cuda``); the model's own device by default.
        adapters, accent_classifier, route, min_prob, soft_route, route_by: the convenience form
            of ``router``: ``{accent: adapter folder}`` and a classifier folder (or object) are
            loaded onto ``model`` once (:meth:`Routing.build`) and routed by the other four
            (``route_by="speaker"`` needs ``route="auto"``).
        decode_options: Whisper's decoding and fallback settings (:class:`speechtl.decoding.DecodeOptions`);
            by default OpenAI's temperature fallback with ``beam_size``. Recorded in the report.
        short_clips: Whisper: ``auto`` (default) decodes each route the way its model trained (an
            adapter trained on unpadded clips decodes them unpadded, and a clip whose short transcript
            loops again at 30 s; the base model at 30 s), ``on`` or ``off`` for every route (see
            :func:`speechtl.transcribe`). Recorded in the report.
    """
    short_clips_mode(short_clips)  # a bad value fails before any audio is read
    manifest_name, utts = _read_utterances(manifest, splits)
    if batch_size < 1 or beam_size < 1 or n_bootstrap < 1:
        raise SpeechtlError(
            f"batch_size, beam_size and n_bootstrap must be at least 1 (got {batch_size}, {beam_size}, {n_bootstrap})"
        )
    norm = get_normalizer(normalizer)
    held = _check_accents(utts, heldout_accents, target_accent)
    routed = router is not None or bool(adapters) or accent_classifier is not None
    if routed and transcriber is not None:
        raise SpeechtlError("routing (router, adapters, accent_classifier) needs the model to transcribe, "
                            "not a transcriber")
    if routed and adapter is not None:
        raise SpeechtlError("give either adapter (one adapter for everything) or routed adapters (router, adapters), "
                            "not both")
    routing = _routing(model, router, adapters, accent_classifier, route, min_prob, soft_route, route_by, device)
    if routing is not None:
        if model is None:
            model = routing.router.backbone
        elif not isinstance(model, str | os.PathLike) and model is not routing.router.backbone \
                and model is not routing.router.generator:
            raise SpeechtlError("router= was built on another model object than model=; give its backbone or the "
                                "model's name")

    routes = None
    if transcriber is not None:
        hyps = list(transcriber(list(utts)))
    elif routing is not None:
        hyps, routes = _transcribe(model, utts, adapter=None, batch_size=batch_size, beam_size=beam_size,
                                   progress=progress, device=device, routing=routing, decode_options=decode_options,
                                   short_clips=short_clips)
    else:
        hyps = _transcribe(model, utts, adapter=adapter, batch_size=batch_size, beam_size=beam_size,
                           progress=progress, device=device, decode_options=decode_options,
                           short_clips=short_clips)
    records = score_utterances(utts, hyps, normalizer=norm, heldout_accents=held)
    if routes is not None:
        for rec, r in zip(records, routes):
            rec.route, rec.route_prob, rec.route_weights = r.name, r.prob, r.weights
    meta = {
        "model": _model_name(model) if model is not None else ("transcriber" if transcriber is not None else None),
        "adapter": None if adapter is None else str(adapter),
        "normalizer": norm.name,
        "batch_size": batch_size,
        "beam_size": beam_size if decode_options is None else decode_options.beam_size,
        **({} if decode_options is None else {"decode_options": dataclasses.asdict(decode_options)}),
        "short_clips": {True: "on", False: "off"}.get(short_clips, short_clips),
        "manifest": manifest_name,
        "splits": dict(sorted(Counter(u.split or "none" for u in utts).items())),
        "target_accent": target_accent,
        "heldout_accents": sorted({r.accent for r in records if r.heldout}),
        **(routing.meta() if routing is not None else {}),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "speechtl_version": _version(),
    }
    report = summarize(records, meta, n_resamples=n_bootstrap, seed=seed)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _read_utterances(manifest: str | os.PathLike | Sequence[Utterance],
                     splits: Iterable[str] | None) -> tuple[str | None, list[Utterance]]:
    """The manifest's name (None for a list) and its utterances of ``splits``; refuses none left."""
    if isinstance(manifest, str | os.PathLike):
        name, utts = str(manifest), read_manifest(manifest)
    else:
        name, utts = None, list(manifest)
    if splits is not None:
        wanted = set(splits)
        utts = [u for u in utts if u.split in wanted]
        if not utts:
            raise SpeechtlError(f"{name or 'manifest'}: no utterance has split in {sorted(wanted)}")
    if not utts:
        raise SpeechtlError(f"{name or 'manifest'}: holds no utterances to evaluate")
    return name, utts


def _check_accents(utts: Sequence[Utterance], heldout_accents: Iterable[str], target_accent: str | None) -> list[str]:
    """The held-out accents, checked against the utterances' accents and the target accent."""
    accents = sorted({u.accent for u in utts})
    held = list(dict.fromkeys(heldout_accents))
    missing = [a for a in held if a not in accents]
    if missing:
        raise SpeechtlError(
            f"held-out accent(s) {', '.join(missing)} not in the evaluated utterances; "
            f"accents are: {', '.join(accents)}"
        )
    if target_accent is not None:
        if target_accent not in accents:
            raise SpeechtlError(f"target accent {target_accent!r} not in the evaluated utterances; "
                                f"accents are: {', '.join(accents)}")
        if target_accent in held or any(u.split == "test_heldout" and u.accent == target_accent for u in utts):
            raise SpeechtlError(f"target accent {target_accent!r} is also held out; an accent cannot be both")
    return held


def _transcribe(model: Any, utts: Sequence[Utterance], *, adapter: str | os.PathLike | None, batch_size: int,
                beam_size: int, progress: bool, device: str | None, routing: Routing | None = None,
                decode_options: DecodeOptions | None = None, short_clips: str | bool = "auto") -> Any:
    """Transcripts of ``utts`` with a backbone; segments (``offset``/``duration``) are cut first.

    With ``routing``, ``(texts, routes)``: :func:`speechtl.transcribe` routes each utterance (with
    ``by="speaker"``, a speaker's utterances together) and runs it with the adapter its route picks."""
    from .transcription import transcribe

    if routing is not None:
        model = routing.router.backbone
    audio: list[Any] = [u.audio for u in utts]
    if any(u.offset is not None for u in utts):
        from .audio import load_audio
        from .backbones import create_backbone

        # Segments need the model's sample rate, so the backbone is built here once.
        if isinstance(model, str | os.PathLike):
            model = create_backbone(model)
        rate = model.sample_rate
        audio = [
            load_audio(u.audio, rate, offset=u.offset, duration=u.duration, max_seconds=None) if u.offset is not None
            else u.audio
            for u in utts
        ]
    if routing is None:
        return transcribe(model, audio, batch_size=batch_size, beam_size=beam_size, adapter=adapter,
                          progress=progress, device=device, decode_options=decode_options,
                          short_clips=short_clips)
    # Corpora reuse speaker ids: a speaker is (corpus, speaker).
    speakers = [(u.corpus, u.speaker) for u in utts] if routing.by == "speaker" else None
    return transcribe(model, audio, router=routing.router, route=routing.route, min_prob=routing.min_prob,
                      soft=routing.soft, speakers=speakers, return_routes=True, batch_size=batch_size,
                      beam_size=beam_size, progress=progress, device=device, decode_options=decode_options,
                      short_clips=short_clips)


# --------------------------------------------------------------------------------------------
# Helpers


def _model_name(model: Any) -> str:
    if isinstance(model, str | os.PathLike):
        return str(model)
    return str(getattr(model, "name", type(model).__name__))


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:
        return "unknown"

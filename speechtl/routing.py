"""Accent identification and routing each utterance to the adapter of its accent.

An accent classifier is the feature-extraction transfer mode on a speech encoder: the encoder
stays frozen, a small :class:`~speechtl.heads.ClassifierHead` reads a learned softmax-weighted
sum of its layers and pools over the valid frames (``speechtl-adapt --task accent-id``: layer-normalised
states, mean and standard deviation pooling).

:class:`Router` loads several accent adapters once onto one base model (as named adapters,
switched by name; the base model is the adapters disabled) and picks, per utterance:

- ``route="none"``: the base route for every utterance;
- ``route=ACCENT``: that accent's adapter for every utterance;
- ``route="auto"``: the classifier's most probable accent among those with an adapter, or the
  base model when none reaches ``min_prob`` (classes without an adapter, e.g. a native accent,
  thus send utterances to the base model);
- ``soft=True`` (LoRA only): a mixture of every LoRA adapter weighted by the classifier's
  probability of its accent (classes without an adapter keep their share on the base model):
  each adapted layer computes ``base(x) + sum_a p_a * B_a A_a x * scale_a``.

Accent belongs to the speaker, not the utterance: given ``groups`` (e.g. each utterance's
speaker), ``auto`` pools the classifier's evidence over a group (the mean of its utterances'
log-probabilities, renormalised) and sends the whole group one way, which is steadier than
deciding each short utterance alone.

The base route is the adapters disabled, unless ``adapters`` gives one under the name ``base``
(``--adapters base=DIR``): typically an adapter trained with ``objective=short-context`` on native
speech, which transcribes like the base model but may decode clips unpadded. Soft mixtures keep
the share of the classes without an adapter on the plain base model.

When the classifier was trained on the same base weights in ``features`` mode it shares the
router's encoder (run with adapters disabled, so it sees exactly the encoder it was trained on);
otherwise it runs on its own copy of its base model.

:func:`~speechtl.accent_id.evaluate_accent_id` scores a classifier on a manifest: accuracy, recall per
accent and the confusion matrix (:class:`~speechtl.accent_id.AccentIdReport`, in :mod:`speechtl.accent_id`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .accent_id import AccentClassifier, load_accent_classifier  # noqa: F401  (routes by them)
from .errors import SpeechtlError

BASE = "base"
# Route names that mean something else on the command line and in reports.
RESERVED = (BASE, "none", "auto")
SOFT_DECIMALS = 2  # soft-routing weights are rounded so that utterances with the same mixture batch together


# --------------------------------------------------------------------------------------------
# Routes


@dataclass(frozen=True)
class Route:
    """Where one utterance was sent.

    name: the accent whose adapter ran, or ``"base"``; for a soft mixture the accent with the
        largest weight (``"base"`` when every weight rounds to zero).
    prob: the classifier's probability of ``name`` (None when no classifier chose the route); for
        ``base`` under ``auto``, the probability of the most likely adapter accent (below ``min_prob``).
    weights: soft routing only: mixture weight per adapter accent.
    """

    name: str
    prob: float | None = None
    weights: dict[str, float] | None = None

    @property
    def key(self) -> tuple:
        """Utterances with equal keys run with the same adapter setting."""
        if self.weights is not None:
            return ("soft", *sorted(self.weights.items()))
        return ("hard", self.name)

    def to_json(self) -> dict[str, Any]:
        return {"route": self.name, "route_prob": self.prob, "route_weights": self.weights}


def parse_adapter_specs(specs: Sequence[str] | None) -> dict[str, str]:
    """``["us=runs/us/adapter", "gb=runs/gb/adapter"]`` to ``{accent: folder}``; ``base=DIR`` gives the base route.

    Raises :class:`SpeechtlError` with one sentence on a missing ``=``, an empty or reserved
    accent, a repeated accent, or a folder that does not exist.
    """
    out: dict[str, str] = {}
    for spec in specs or []:
        accent, sep, folder = spec.partition("=")
        accent, folder = accent.strip(), folder.strip()
        if not sep or not accent or not folder:
            raise SpeechtlError(f"--adapters {spec!r}: write ACCENT=DIR, e.g. mandarin=runs/mandarin/adapter")
        if accent != BASE:
            check_accent_name(accent, where=f"--adapters {spec!r}")
        if accent in out:
            raise SpeechtlError(f"--adapters: accent {accent!r} is given twice; give one adapter per accent")
        if not Path(folder).is_dir():
            raise SpeechtlError(f"--adapters {spec!r}: folder {folder} does not exist; give a saved adapter folder")
        out[accent] = folder
    return out


def check_accent_name(accent: str, *, where: str = "adapters") -> str:
    if accent in RESERVED:
        raise SpeechtlError(f"{where}: {accent!r} is a route keyword ({', '.join(RESERVED)}); "
                            "name the accent otherwise")
    return accent


# --------------------------------------------------------------------------------------------
# Accent classifier


# --------------------------------------------------------------------------------------------
# Router


class Router:
    """One base model carrying one named adapter per accent, and optionally an accent classifier.

    Args:
        backbone: the plain base model (a backbone object, not yet adapted), modified in place.
        adapters: ``{accent: saved adapter folder}``; all of one method and shape (the same
            ``speechtl-adapt`` settings), trained on this base model's weights, without new heads.
            The key ``"base"`` names the adapter of the base route (else the adapters disabled).
        accent_classifier: a saved classifier folder, an :class:`AccentClassifier`, or an adapted
            model with a classifier head.
    """

    def __init__(self, backbone: nn.Module, adapters: Mapping[str, str | os.PathLike] | None = None,
                 accent_classifier: str | os.PathLike | AccentClassifier | nn.Module | None = None):
        from .adapters.io import weights_checksum
        from .adapters.saved import SavedAdapter
        from .transfer import ADAPTER_METHODS, adapt, adapted_with

        if adapted_with(backbone):
            raise SpeechtlError(f"{backbone.name} already carries an adapter; routing loads the adapters itself, "
                                "so give it the plain base model")
        self.backbone = backbone
        self.adapter_dirs = {a if a == BASE else check_accent_name(a): str(d) for a, d in (adapters or {}).items()}
        self.accents = [a for a in self.adapter_dirs if a != BASE]  # the accents the classifier may pick
        self.internal: dict[str, str] = {}  # accent -> adapter name inside the model (accents may hold any character)
        self.short_clips: dict[str, bool | None] = {}  # accent -> how its adapter's training padded clips
        self.model = None
        self.method: str | None = None
        saved = {a: SavedAdapter.read(d) for a, d in self.adapter_dirs.items()}
        need_checksum = bool(saved) or isinstance(accent_classifier, str | os.PathLike)
        self.base_checksum = weights_checksum(backbone) if need_checksum else None
        first_cfg: dict[str, Any] | None = None
        for k, (accent, ad) in enumerate(saved.items()):
            directory = ad.directory
            if ad.base_checksum != self.base_checksum:
                raise SpeechtlError(f"{directory}: adapter for {accent!r} was trained on {ad.base_model!r} "
                                    f"with other weights than {backbone.name!r}; route only adapters of this model")
            if ad.head is not None:
                raise SpeechtlError(f"{directory}: adapter for {accent!r} brings a new {ad.head.get('type')}; routing "
                                    "switches adapters on one model and its own head, so give adapters without heads")
            if ad.method not in ADAPTER_METHODS:
                raise SpeechtlError(f"{directory}: method {ad.method!r} changes the base weights; routing needs "
                                    f"adapters ({', '.join(ADAPTER_METHODS)})")
            if not ad.active:
                raise SpeechtlError(f"{directory}: the saved adapter has no active adapter to route to")
            if ad.trains_base_modules:
                raise SpeechtlError(f"{directory}: the adapter also trained base-model modules (modules_to_save), "
                                    "which differ per adapter; routing switches adapter weights only")
            cfg = ad.shape
            name = f"route{k}"
            self.short_clips[accent] = ad.short_clips
            self.internal[accent] = name
            state = ad.adapter_state()
            if first_cfg is None:
                first_cfg = cfg
                self.method = ad.method
                self.model = adapt(backbone, **ad.adapt_kwargs(adapter_name=name, labels=[]))
            else:
                differ = [key for key in cfg if cfg[key] != first_cfg[key]]
                if differ:
                    first = next(iter(saved))
                    raise SpeechtlError(f"{directory}: adapter for {accent!r} differs from the one for {first!r} in "
                                        f"{', '.join(differ)}; routed adapters must share method, targets and rank")
                self.model.add_adapter(name)
            self.model.adapters.load_state(name, state)
        if self.model is not None:
            self.model.eval()
        self.classifier = self._classifier(accent_classifier)

    def _classifier(self, spec: Any) -> AccentClassifier | None:
        if spec is None:
            return None
        if isinstance(spec, AccentClassifier):
            return spec
        if isinstance(spec, str | os.PathLike):
            return load_accent_classifier(spec, backbone=self.backbone, base_checksum=self.base_checksum)
        return AccentClassifier.from_model(spec)

    # -- choosing ---------------------------------------------------------------------------------
    def choose(self, waves: Sequence[np.ndarray], *, route: str = "auto", min_prob: float = 0.5, soft: bool = False,
               batch_size: int = 8, groups: Sequence[Any] | None = None) -> list[Route]:
        """The route of each waveform ``(samples,)`` (see the module docstring for the modes).

        ``groups``: one label per waveform (e.g. its speaker; None decides alone); with ``auto``
        the waveforms of a label share one route, chosen on their pooled probabilities.
        """
        if groups is not None and len(groups) != len(waves):
            raise SpeechtlError(f"got {len(groups)} route groups for {len(waves)} utterances; give one per utterance")
        if route == "none":
            return [Route(BASE)] * len(waves)
        if route != "auto":
            if route not in self.internal:
                have = ", ".join(self.accents) or "none loaded"
                raise SpeechtlError(f"route {route!r}: no adapter for that accent (adapters: {have}); "
                                    "use auto, none or one of the adapters' accents")
            return [Route(route)] * len(waves)
        if self.classifier is None:
            raise SpeechtlError("route 'auto' needs an accent classifier (accent_classifier=DIR, "
                                "--accent-classifier DIR); or give route=none or route=ACCENT")
        if not self.accents:
            raise SpeechtlError("route 'auto' has no adapters to choose from; give adapters={accent: DIR, ...}")
        if not 0.0 <= min_prob <= 1.0:
            raise SpeechtlError(f"min_prob must be between 0 and 1, got {min_prob}")
        unknown = [a for a in self.accents if a not in self.classifier.labels]
        if unknown:
            raise SpeechtlError(f"adapter accent(s) {', '.join(unknown)} are not among the classifier's classes "
                                f"({', '.join(self.classifier.labels)}); name the adapters by those classes")
        if soft:
            self.check_soft()
        probs = self.classifier.probabilities(waves, batch_size=batch_size, encoder_context=self._encoder_context())
        if groups is not None:
            probs = pool_by_group(probs, groups)
        cols = [self.classifier.labels.index(a) for a in self.accents]
        routes = []
        for p in probs:
            mine = p[cols]
            best = int(mine.argmax())
            if soft:
                weights = {a: round(float(w), SOFT_DECIMALS) for a, w in zip(self.accents, mine)}
                name = self.accents[best] if weights[self.accents[best]] > 0 else BASE
                routes.append(Route(name, float(mine[best]), weights))
            elif mine[best] >= min_prob:
                routes.append(Route(self.accents[best], float(mine[best])))
            else:
                routes.append(Route(BASE, float(mine[best])))
        return routes

    def _encoder_context(self):
        if self.classifier is not None and self.classifier.shared and self.model is not None:
            return self.model.adapters_disabled
        return None

    def check_soft(self) -> None:
        if self.model is None or not self.model.adapters.mixable:
            raise SpeechtlError(f"soft routing mixes LoRA adapters only; these adapters are {self.method!r}: "
                                "use hard routing (soft=False)")

    # -- running ----------------------------------------------------------------------------------
    @property
    def generator(self) -> nn.Module:
        """What transcribes: the adapted model, or the backbone when no adapter was loaded."""
        return self.model if self.model is not None else self.backbone

    def trained_short(self, route: Route) -> bool:
        """Whether ``route`` runs a model trained on unpadded clips: one adapter saved with
        ``short_clips: true`` (the base route's own adapter included), or, on the base route without
        one, a base model that is such an export (its ``trained_short_clips``). A plain base model and
        soft mixtures (partly the plain base) were not."""
        if route.weights is not None:
            return False
        if route.name == BASE and BASE not in self.short_clips:
            return getattr(self.backbone, "trained_short_clips", None) is True
        return self.short_clips.get(route.name) is True

    @contextmanager
    def using(self, route: Route) -> Iterator[None]:
        """Run the model inside this block as ``route`` says: base, one adapter, or a LoRA mixture."""
        if self.model is None:
            if route.name != BASE or route.weights:
                raise SpeechtlError(f"route {route.name!r}: no adapters are loaded")
            yield
            return
        if route.weights is not None:
            self.check_soft()
            with self.model.adapters_mixed({self.internal[a]: w for a, w in route.weights.items()}):
                yield
        elif route.name == BASE and BASE not in self.internal:
            with self.model.adapters_disabled():
                yield
        else:
            self.model.set_adapter(self.internal[route.name])
            yield


def pool_by_group(probs: np.ndarray, groups: Sequence[Any]) -> np.ndarray:
    """Each row replaced by its group's pooled class distribution: the softmax of the mean
    log-probability over the group's rows (rows whose group is None stay as they are)."""
    out = np.array(probs, dtype=np.float64, copy=True)
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            members.setdefault(g, []).append(i)
    for idx in members.values():
        logp = np.log(np.clip(out[idx], 1e-12, 1.0)).mean(0)
        pooled = np.exp(logp - logp.max())
        out[idx] = pooled / pooled.sum()
    return out


def get_router(backbone: nn.Module, adapters: Mapping[str, str | os.PathLike] | None,
               accent_classifier: Any) -> Router:
    """A :class:`Router` for ``backbone``, built once and kept on it: calling again with the same
    adapters and classifier reuses it; other adapters on the same backbone object are an error."""
    spec = (tuple(sorted((a, os.path.abspath(d)) for a, d in (adapters or {}).items())),
            os.path.abspath(accent_classifier) if isinstance(accent_classifier, str | os.PathLike)
            else id(accent_classifier))
    cached = getattr(backbone, "_speechtl_router", None)
    if cached is not None:
        if cached[0] == spec:
            return cached[1]
        raise SpeechtlError(f"{backbone.name} already carries the adapters {sorted(cached[1].accents)}; "
                            "create a fresh backbone to route with other adapters")
    router = Router(backbone, adapters, accent_classifier)
    backbone._speechtl_router = (spec, router)
    return router


# --------------------------------------------------------------------------------------------
# The accent classifier and its evaluation live in speechtl.accent_id (these names stay importable from here)

from .accent_id import AccentIdReport, accent_id_scores, evaluate_accent_id  # noqa: E402, F401

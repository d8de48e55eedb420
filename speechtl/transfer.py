"""Transfer learning modes behind one call: ``adapt(backbone, method=..., **config) -> AdaptedModel``.

Methods (keyword arguments are the fields of :class:`speechtl.config.AdaptConfig`):

- ``features``: the backbone is frozen; a new head (CTC or classifier) reads its last layer,
  or a learned softmax-weighted sum of all layers (``weighted_layers=True``, as in SUPERB).
- ``finetune``: the backbone trains, all of it or only the top ``top_n_layers`` layers (plus
  its head group, e.g. Whisper's decoder); the wav2vec2-family frontend stays frozen by
  default; ``layer_decay`` gives the group ``depth`` steps below the top ``lr * decay**depth``.
- ``lora``, ``dora``, ``ia3``: peft adapters on the backbone's linear layers, placed by name
  suffix, regex and layer range (:mod:`speechtl.adapters.lora`).
- ``bottleneck``: zero-initialised Houlsby/Pfeiffer residual adapters after the attention and/or
  feed-forward outputs (:mod:`speechtl.adapters.bottleneck`).

An :class:`AdaptedModel` keeps several named adapters (``add_adapter``, ``set_adapter``,
``adapters_disabled``, ``merge_adapter``, ``average_adapters``), reports what trains, gives the
optimizer its parameter groups, and saves/loads only what was trained (:mod:`speechtl.adapters.io`).
New heads (CTC, classifier, layer mix) live in :mod:`speechtl.heads`; what each adapter kind trains,
saves and merges is its :class:`~speechtl.adapters.base.AdapterSet`'s answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .adapters.base import AdapterSet, InjectionReport
from .adapters.bottleneck import BottleneckAdapters, default_targets
from .adapters.inject import count_parameters, find_targets
from .adapters.lora import IA3_TARGETS, PEFT_METHODS, PeftAdapters, make_peft_config
from .backbones.base import EncoderOutput
from .config import AdaptConfig, make
from .decoding import Hypothesis
from .errors import SpeechtlError
from .heads import POOLINGS, CharVocab, ClassifierHead, CTCHead, LayerMix, build_head

__all__ = ["ADAPTER_KINDS", "ADAPTER_METHODS", "POOLINGS", "AdaptedModel", "CTCHead", "CharVocab", "ClassifierHead",
           "LayerMix", "adapt", "adapted_with", "build_head", "injection_report"]

# Each adapter method and the kind of adapter set it injects (what trains, what is saved, how it merges).
ADAPTER_KINDS: dict[str, type[AdapterSet]] = {**dict.fromkeys(PEFT_METHODS, PeftAdapters),
                                              "bottleneck": BottleneckAdapters}
ADAPTER_METHODS = tuple(ADAPTER_KINDS)

# --------------------------------------------------------------------------------------------
# The adapted model


class AdaptedModel(nn.Module):
    """A backbone with its transfer method applied: what trains, heads, and named adapters.

    It offers the backbone's surface (``name``, ``modality``, ``sample_rate``, ``prepare``,
    ``encode``, ``generate``) so it can stand in for the backbone when transcribing.
    Build it with :func:`adapt` (or :func:`speechtl.adapters.load_adapter`).
    """

    def __init__(self, backbone: nn.Module, config: AdaptConfig, *, head: nn.Module | None,
                 adapters: AdapterSet | None, base_checksum: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.adapters = adapters
        self.base_checksum = base_checksum
        # How its training batches were padded (Whisper): True to each batch's longest clip, False to
        # 30 s, None where it does not apply or was not recorded. Transcription decodes the same way.
        self.trained_short_clips: bool | None = getattr(backbone, "short_clips", None)
        self.merged = False
        self._configure_trainable()

    # -- the backbone's surface ---------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def sample_rate(self) -> int | None:
        return self.backbone.sample_rate

    def prepare(self, items: list[Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.prepare(items, **kwargs)

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Encoder states; without graph when nothing in the backbone trains (saves the activations)."""
        if self.backbone_frozen:
            with torch.no_grad():
                return self.backbone.encode(inputs, lengths)
        return self.backbone.encode(inputs, lengths)

    def asr_loss(self, inputs: torch.Tensor, lengths: torch.Tensor, texts: Sequence[str],
                 spans: Sequence[tuple[float, float] | None] | None = None) -> torch.Tensor:
        """Speech recognition loss: the new CTC head's, or the backbone's own (CTC or seq2seq).

        ``spans``: Whisper only, each clip's speech ``(start, end)`` in seconds to train with timestamp tokens."""
        if spans is not None and (self.head is not None or self.backbone.task != "seq2seq"):
            raise SpeechtlError(f"timestamp spans train Whisper's timestamp tokens; {self.name} has none")
        if isinstance(self.head, CTCHead):
            return self.head.loss(self.encode(inputs, lengths), texts)
        if self.head is not None:
            raise SpeechtlError("this model has a classifier head; use a classification task, not ASR")
        if self.backbone.task == "seq2seq":
            return self.backbone.loss(inputs, lengths, list(texts), None if spans is None else list(spans))
        return self.backbone.loss(inputs, lengths, list(texts))

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor, lengths: torch.Tensor, *, beam_size: int = 1, **kwargs: Any) -> list[str]:
        """Transcripts: greedy CTC with a new CTC head, else the backbone's own decoding."""
        if isinstance(self.head, CTCHead):
            return self.head.decode(self.backbone.encode(inputs, lengths))
        if self.head is not None:
            raise SpeechtlError("this model has a classifier head and does not transcribe")
        return self.backbone.generate(inputs, lengths, beam_size=beam_size, **kwargs)

    @property
    def task(self) -> str | None:
        """``ctc`` with a new CTC head, else the backbone's own task (``seq2seq`` for Whisper)."""
        return "ctc" if isinstance(self.head, CTCHead) else getattr(self.backbone, "task", None)

    @torch.no_grad()
    def decode(self, inputs: torch.Tensor, lengths: torch.Tensor, **kwargs: Any) -> list[Hypothesis]:
        """The backbone's scored decoding (Whisper; see :meth:`WhisperBackbone.decode`)."""
        if self.head is not None or not hasattr(self.backbone, "decode"):
            raise SpeechtlError("this model has a new head; it has no scored seq2seq decoding (use generate)")
        return self.backbone.decode(inputs, lengths, **kwargs)

    def decoder_memory(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The backbone's encoder states for :meth:`decode` (adapters in the encoder included)."""
        if self.head is not None or not hasattr(self.backbone, "decoder_memory"):
            raise SpeechtlError("this model has a new head; it has no scored seq2seq decoding (use generate)")
        return self.backbone.decoder_memory(inputs, lengths)

    def classify(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, len(labels))``."""
        if not isinstance(self.head, ClassifierHead):
            raise SpeechtlError("this model has no classifier head; adapt it with labels=[...]")
        return self.head(self.encode(inputs, lengths))

    def train(self, mode: bool = True) -> AdaptedModel:
        super().train(mode)
        if mode and self.backbone_frozen:
            # A frozen backbone is a fixed feature extractor: no dropout, LayerDrop or model-internal masking.
            self.backbone.eval()
        return self

    @property
    def skips_layers(self) -> bool:
        """Whether LayerDrop may skip layers while training, leaving some trainable parameters without
        a gradient in a step (distributed training must then look for unused parameters)."""
        cfg = getattr(self.backbone.model, "config", None)
        drops = [getattr(cfg, k, 0) or 0 for k in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")]
        return not self.backbone_frozen and any(d > 0 for d in drops)

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.backbone.model, "supports_gradient_checkpointing", False))

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the backbone's layer activations in backward (less memory, ~30% more compute)."""
        if not self.supports_gradient_checkpointing:
            raise SpeechtlError(f"{self.name} does not support gradient checkpointing; "
                                "set gradient_checkpointing=false")
        self.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # -- what trains ----------------------------------------------------------------------------
    def _finetune_groups(self) -> set[str]:
        cfg = self.config
        groups = [g for g, _ in self.backbone.layer_groups()]
        n = self.backbone.num_layers
        freeze_frontend = cfg.freeze_frontend if cfg.freeze_frontend is not None else self.backbone.task == "ctc"
        if cfg.top_n_layers is None:
            return {g for g in groups if not (g == "frontend" and freeze_frontend)}
        if not 0 <= cfg.top_n_layers <= n:
            raise SpeechtlError(f"top_n_layers={cfg.top_n_layers}: {self.name} has {n} layers")
        return {"head"} | {f"layer.{i}" for i in range(n - cfg.top_n_layers, n)}

    def _configure_trainable(self) -> None:
        self.backbone.requires_grad_(False)
        if self.method == "finetune":
            wanted = self._finetune_groups()
            params = dict(self.backbone.named_parameters())
            for group, names in self.backbone.layer_groups():
                if group in wanted:
                    for n in names:
                        params[n].requires_grad_(True)
        elif self.adapters is not None:
            inner = self.backbone.model
            for n in self.adapters.trainable_names():
                inner.get_parameter(n).requires_grad_(True)
        if self.head is not None:
            self.head.requires_grad_(True)
        if self.adapters is not None:
            self.adapters.report.trainable = self.num_trainable()
            self.adapters.report.total = self.num_parameters()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        return count_parameters(self, trainable_only=True)

    def num_parameters(self) -> int:
        """All parameters (base, head and every adapter)."""
        return count_parameters(self)

    def summary(self) -> str:
        """One line: method, what was replaced, trainable / total parameters."""
        total, trainable = self.num_parameters(), self.num_trainable()
        parts = [f"{self.name} + {self.method}"]
        if self.adapters is not None:
            rep = self.adapters.report
            parts.append(f"{len(rep.replaced)} modules adapted ({', '.join(rep.replaced[:3])}"
                         f"{', …' if len(rep.replaced) > 3 else ''}); adapters {self.adapters.names}, "
                         f"active {self.adapters.active!r}")
        if self.head is not None:
            parts.append(f"new {type(self.head).__name__} ({count_parameters(self.head):,} params)")
        parts.append(f"{trainable:,} of {total:,} parameters train ({100.0 * trainable / max(total, 1):.3f}%)")
        return "; ".join(parts)

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """AdamW parameter groups of the trainable parameters, with layer-wise learning rates.

        Groups follow ``backbone.layer_groups()`` (frontend, layer.0 …, head); a group at depth
        ``d`` (head 0, top layer 1, …, frontend N+1) gets ``lr * layer_decay ** d``; new heads
        get ``lr``. Biases, norms and other 1-D parameters get no weight decay.
        """
        groups = self.backbone.layer_groups()
        where: dict[str, tuple[str, int]] = {}
        for k, (gname, names) in enumerate(groups):
            for n in names:
                where["backbone." + n] = (gname, len(groups) - 1 - k)
        buckets: dict[tuple[str, bool], dict[str, Any]] = {}
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            gname, depth = where.get(n, ("new_head", 0))
            decay = p.ndim >= 2
            key = (gname, decay)
            if key not in buckets:
                buckets[key] = {
                    "name": gname if decay else f"{gname}.no_decay",
                    "params": [],
                    "param_names": [],
                    "lr": lr * self.config.layer_decay**depth,
                    "weight_decay": weight_decay if decay else 0.0,
                }
            buckets[key]["params"].append(p)
            buckets[key]["param_names"].append(n)
        return list(buckets.values())

    # -- named adapters ---------------------------------------------------------------------------
    def _need_adapters(self) -> AdapterSet:
        if self.merged:
            raise SpeechtlError("the adapter was merged into the base weights; there are no adapters left")
        if self.adapters is None:
            raise SpeechtlError(f"method {self.method!r} has no adapters; use one of {', '.join(ADAPTER_METHODS)}")
        return self.adapters

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters.names) if self.adapters is not None else []

    @property
    def active_adapter(self) -> str | None:
        return self.adapters.active if self.adapters is not None else None

    def add_adapter(self, name: str) -> None:
        """Add a fresh adapter like the first (same targets and shape) and make it the active, training one."""
        self._need_adapters().add(name)
        self._configure_trainable()

    def set_adapter(self, name: str) -> None:
        self._need_adapters().set_active(name)
        self._configure_trainable()

    def delete_adapter(self, name: str) -> None:
        self._need_adapters().delete(name)
        self._configure_trainable()

    def disable_adapters(self) -> None:
        self._need_adapters().disable()

    def enable_adapters(self) -> None:
        self._need_adapters().enable()

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run as the base model inside this block."""
        with self._need_adapters().disabled():
            yield

    @contextmanager
    def adapters_mixed(self, weights: dict[str, float]) -> Iterator[None]:
        """Run with every adapter of ``weights`` at once, each weighted (LoRA only; see ``AdapterSet.mixed``)."""
        adapters = self._need_adapters()
        try:
            with adapters.mixed(weights):
                yield
        finally:
            self._configure_trainable()

    @property
    def mergeable(self) -> bool:
        """Whether :meth:`merge_adapter` can fold the active adapter into the base weights."""
        return self.adapters is not None and not self.merged and self.adapters.mergeable

    def merge_adapter(self) -> None:
        """Fold the active LoRA/DoRA/IA3 adapter into the base weights (for export); other adapters are dropped.

        Afterwards ``backbone.model`` is a plain transformers model (``save_pretrained`` writes it).
        """
        self._need_adapters().merge()
        self.adapters = None
        self.merged = True
        self._configure_trainable()

    def average_adapters(
        self, names: Sequence[str], weights: Sequence[float] | None = None, new_name: str = "average"
    ) -> None:
        """Add adapter ``new_name`` whose weights are the weighted mean of the ``names`` adapters' weights.

        Each weight tensor is averaged on its own (for LoRA that averages A and B separately, which
        is not the average of the products B·A). ``weights`` are normalised to sum to one.
        """
        adapters = self._need_adapters()
        names = list(names)
        if not names:
            raise SpeechtlError("average_adapters needs at least one adapter name")
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names) or sum(weights) <= 0 or any(w < 0 for w in weights):
            raise SpeechtlError("average_adapters: give one non-negative weight per adapter, not all zero")
        states = [adapters.state(n) for n in names]
        for n, s in zip(names[1:], states[1:]):
            if s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s):
                raise SpeechtlError(f"adapters {names[0]!r} and {n!r} differ in shape and cannot be averaged")
        total = sum(weights)
        mean = {k: sum((w / total) * s[k].float() for w, s in zip(weights, states)).to(states[0][k].dtype)
                for k in states[0]}
        active = adapters.active
        adapters.add(new_name)
        adapters.load_state(new_name, mean)
        adapters.set_active(active if active is not None else new_name)
        self._configure_trainable()

    # -- saving -----------------------------------------------------------------------------------
    def save_adapter(self, directory, **meta: Any):
        """Write only what was trained (see :func:`speechtl.adapters.io.save_adapter`)."""
        from .adapters.io import save_adapter

        return save_adapter(self, directory, **meta)


# --------------------------------------------------------------------------------------------
# adapt()


def _default_targets(backbone: nn.Module, method: str) -> tuple[str, ...]:
    if method in ("lora", "dora"):
        return tuple(backbone.default_adapter_targets)
    if method == "ia3":
        return IA3_TARGETS
    raise AssertionError(method)


def _inject(backbone: nn.Module, cfg: AdaptConfig) -> AdapterSet | None:
    if cfg.method not in ADAPTER_METHODS:
        stray = [k for k in ("target_modules", "target_regex", "target_layers", "modules_to_save") if getattr(cfg, k)]
        if stray:
            raise SpeechtlError(f"{', '.join(stray)} only apply to adapter methods ({', '.join(ADAPTER_METHODS)}), "
                                f"not {cfg.method!r}")
        return None
    if cfg.top_n_layers is not None:
        raise SpeechtlError(f"top_n_layers applies to method 'finetune', not {cfg.method!r}; use target_layers")
    if cfg.method == "bottleneck":
        suffixes = cfg.target_modules or (() if cfg.target_regex else default_targets(cfg.bottleneck_style))
    else:
        suffixes = cfg.target_modules or (() if cfg.target_regex else _default_targets(backbone, cfg.method))
    model = backbone.model
    targets = find_targets(model, suffixes=suffixes, regex=cfg.target_regex, layers=cfg.target_layers,
                           what=f"{cfg.method} on {backbone.name}")
    if cfg.method == "bottleneck":
        dim = cfg.bottleneck_dim or max(1, backbone.hidden_size // max(cfg.bottleneck_reduction, 1))
        return BottleneckAdapters(model, targets, cfg.adapter_name, dim=dim, activation=cfg.bottleneck_activation,
                                  modules_to_save=cfg.modules_to_save or ())
    peft_cfg = make_peft_config(cfg.method, targets, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                modules_to_save=cfg.modules_to_save, base_model_name=backbone.name)
    try:
        return PeftAdapters(model, peft_cfg, cfg.adapter_name, cfg.method)
    except ValueError as e:  # peft's own checks (e.g. modules_to_save not found)
        raise SpeechtlError(f"{cfg.method} on {backbone.name}: {e}") from None


def adapt(backbone: nn.Module, method: str = "lora", **config: Any) -> AdaptedModel:
    """Apply a transfer method to ``backbone`` (modified in place) and return the :class:`AdaptedModel`.

    Args:
        backbone: a backbone from :func:`speechtl.create_backbone` (not yet adapted).
        method: ``features``, ``finetune``, ``lora``, ``dora``, ``ia3`` or ``bottleneck``.
        **config: fields of :class:`speechtl.config.AdaptConfig` (``lora_r=16``,
            ``target_layers="6-11"``, ``weighted_layers=True``, ...); unknown keys are errors.
    """
    from .adapters.io import weights_checksum

    cfg = make(AdaptConfig, {"method": method, **config}, where="adapt()")
    if adapted_with(backbone):
        raise SpeechtlError(f"{backbone.name} was already adapted ({adapted_with(backbone)}); "
                            "create a fresh backbone for another adaptation")
    checksum = weights_checksum(backbone)
    head = build_head(backbone, cfg)
    adapters = _inject(backbone, cfg)
    ref = next(backbone.parameters())
    if head is not None:
        head.to(device=ref.device)
    backbone._speechtl_adapted = cfg.method
    return AdaptedModel(backbone, cfg, head=head, adapters=adapters, base_checksum=checksum)


def adapted_with(backbone: nn.Module) -> str | None:
    """The method :func:`adapt` applied to ``backbone`` (modified in place), or None for a plain backbone."""
    return getattr(backbone, "_speechtl_adapted", None)


def injection_report(model: AdaptedModel) -> InjectionReport | None:
    """What the injection replaced and how many parameters train (None for features/finetune)."""
    return model.adapters.report if model.adapters is not None else None

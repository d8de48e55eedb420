"""Configuration: dataclasses whose fields are the keyword arguments of the functions they feed.

``AdaptConfig`` feeds :func:`speechtl.transfer.adapt`, ``TrainConfig`` :func:`speechtl.training.train`
and ``DataConfig`` the data loading of ``speechtl-adapt``. Keys are unique across the three, so a
YAML file or command line can use flat keys (``lr=3e-4 lora_r=16``); a YAML file may also group
them under ``adapt:``, ``train:`` and ``data:`` (as the resolved config written beside every run
is). Unknown keys and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SpeechtlError
from .fileio import atomic_write_text, default_permissions  # noqa: F401  (re-exported)

Method = Literal["features", "finetune", "lora", "dora", "ia3", "bottleneck"]
METHODS: tuple[str, ...] = typing.get_args(Method)


@dataclass
class AdaptConfig:
    """How to adapt a backbone (see :func:`speechtl.transfer.adapt`)."""

    method: Method = "lora"
    adapter_name: str = "default"
    # Head: "auto" = a new CTC head for `features` (or a classifier when labels are given),
    # otherwise the backbone's own ASR head ("backbone").
    head: Literal["auto", "backbone", "ctc", "classifier"] = "auto"
    labels: list[str] = field(default_factory=list)  # classifier classes, in output order
    weighted_layers: bool = False  # new head reads a softmax-weighted sum of all layers (SUPERB)
    head_layers: int = 0  # BiLSTM layers under a new CTC head (0: linear)
    head_hidden: int = 256  # width of a new head's hidden layer (BiLSTM / classifier projection)
    head_dropout: float = 0.1
    head_pooling: Literal["mean", "stats"] = "mean"  # a classifier's pooling over frames: mean, or mean and std
    head_norm: bool = False  # a classifier layer-normalises each hidden state before mixing (s3prl's normalize)
    # finetune
    top_n_layers: int | None = None  # train only the top N encoder layers (+ the backbone's head group)
    layer_decay: float = 1.0  # lr of a group = lr * layer_decay ** depth (depth 0 = head, grows downwards)
    freeze_frontend: bool | None = None  # None: frozen for waveform (wav2vec2-family) models, trained for Whisper
    # where adapters go (lora, dora, ia3, bottleneck); empty target_modules = the method's default
    target_modules: list[str] = field(default_factory=list)  # module-name suffixes
    target_regex: str | None = None  # full-name regular expression (instead of, or as well as, suffixes)
    target_layers: str | None = None  # layer indices, e.g. "6-11" or "0,2,4"
    modules_to_save: list[str] = field(default_factory=list)  # modules trained in full beside the adapter
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    bottleneck_style: Literal["houlsby", "pfeiffer"] = "houlsby"
    bottleneck_reduction: int = 16  # bottleneck width = hidden size // reduction (unless bottleneck_dim)
    bottleneck_dim: int | None = None
    bottleneck_activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"


@dataclass
class TrainConfig:
    """The training loop's settings (see :func:`speechtl.training.train`)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # the schedule decays to lr * min_lr_ratio
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA when supported, fp32 on CPU
    gradient_checkpointing: bool = False
    eval_every: int | None = None  # steps between dev evaluations; None: after every epoch
    checkpoint_every: int | None = None  # steps between "last" checkpoints; None: at each evaluation
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    metric: str = "wer"  # the dev_fn result that selects the best checkpoint
    metric_mode: Literal["min", "max"] = "min"
    load_best_at_end: bool = True
    seed: int = 0
    log_every: int = 10
    max_nonfinite: int = 5  # consecutive skipped batches (non-finite loss or gradient) before giving up
    progress: bool = True
    device: str | None = None  # None: cuda:LOCAL_RANK when available, else cpu
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient


@dataclass
class DataConfig:
    """Data loading for ``speechtl-adapt``."""

    batch_seconds: float = 60.0  # audio per batch (per process)
    batch_size: int = 32  # images or texts per batch (per process), for classification
    max_clip_seconds: float = 30.0
    short_clips: bool = True  # Whisper: pad to the batch's longest clip, not 30 s
    num_workers: int = 0
    # Training audio augmentation, drawn per clip and epoch (speechtl.data.loader.AudioDataset):
    speed_perturb: list[float] = field(default_factory=list)  # speed factors, e.g. 0.9,1.0,1.1 (empty: off)
    noise_snr: list[float] = field(default_factory=list)  # white noise at an SNR in dB: one value or low,high
    specaug: bool = False
    specaug_freq_masks: int = 2
    specaug_freq_width: int = 27  # mel bins (Whisper) or CNN channels (wav2vec2 family)
    specaug_time_masks: int = 2
    specaug_time_width: int = 40  # frames (100/s for Whisper log-mel, ~50/s for wav2vec2 features)
    beam_size: int = 1  # dev decoding
    # Whisper dev decoding pads to 30 s like inference by default; short clips decode faster but the
    # pretrained model hallucinates on them, so dev WER would not show what users get.
    dev_short_clips: bool = False
    # Whisper: the share of training clips whose targets carry timestamp tokens around the transcript
    # (start and end from voice-activity detection on the clip), so the adapter keeps timestamps.
    timestamp_share: float = 0.0
    # Whisper: what the loss teaches. "transcripts": cross-entropy on the manifest's transcripts.
    # "short-context": the adapted model reading each clip unpadded learns the base model's outputs at
    # 30 s (speechtl.short_context), e.g. on native speech, so the base route can decode short too.
    objective: Literal["transcripts", "short-context"] = "transcripts"
    # objective=short-context: the tokens the decoder is forced along. "transcripts": the manifest's;
    # "teacher": the base model's own 30-s transcripts, decoded once before training (text may be empty)
    # and kept in the run folder (teacher_targets/), so --resume reads them back.
    distill_targets: Literal["transcripts", "teacher"] = "transcripts"
    normalizer: Literal["whisper", "basic", "none"] = "whisper"
    # Forgetting control (speechtl.replay): a manifest of source/native speech whose train (or
    # unsplit) lines are mixed into the batches and whose dev lines measure forgetting at each evaluation.
    replay_manifest: str | None = None
    replay_fraction: float = 0.0  # share of each batch's utterances drawn from the replay lines
    distill_weight: float = 0.0  # weight of KL(base || adapted) on the replay utterances
    distill_temperature: float = 1.0


SECTIONS: dict[str, type] = {"adapt": AdaptConfig, "train": TrainConfig, "data": DataConfig}


@dataclass
class RunConfig:
    """The three sections together, as ``speechtl-adapt`` resolves and saves them."""

    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # The keys the user gave (YAML, key=value, --method); a recipe's defaults never override them,
    # and a given key that does not apply to the run's method or task is an error.
    user_keys: frozenset[str] = field(default=frozenset(), compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}

    def save(self, path: str | os.PathLike) -> None:
        """Write as YAML (atomically: temp file in the same folder, then rename), with the keys the user set."""
        text = yaml.safe_dump({**self.to_dict(), USER_KEYS: sorted(self.user_keys)}, sort_keys=False)
        atomic_write_text(Path(path), text)

    def with_defaults(self, defaults: dict[str, Any], where: str = "recipe defaults") -> RunConfig:
        """This config with ``defaults`` (flat keys) applied wherever the user did not set the key."""
        index = _key_index()
        changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for k, v in defaults.items():
            if k not in index:
                raise _unknown(k, where)
            if k not in self.user_keys:
                changes[index[k][0]][k] = coerce(v, _field_type(k), k, where)
                check_range(k, changes[index[k][0]][k], where)
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **c)
                                            for s, c in changes.items() if c})


USER_KEYS = "set_by_user"  # the saved config's list of keys the user gave

# The keys that mean something for each method, head and task; others keep their defaults.
_TARGET_KEYS = ("target_modules", "target_regex", "target_layers", "modules_to_save", "layer_decay")
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "features": (),
    "finetune": ("top_n_layers", "layer_decay", "freeze_frontend"),
    "lora": (*_TARGET_KEYS, "lora_r", "lora_alpha", "lora_dropout"),
    "dora": (*_TARGET_KEYS, "lora_r", "lora_alpha", "lora_dropout"),
    "ia3": _TARGET_KEYS,
    "bottleneck": (*_TARGET_KEYS, "bottleneck_style", "bottleneck_reduction", "bottleneck_dim",
                   "bottleneck_activation"),
}
HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "backbone": (),
    "ctc": ("weighted_layers", "head_layers", "head_hidden", "head_dropout"),
    "classifier": ("labels", "weighted_layers", "head_hidden", "head_dropout", "head_pooling", "head_norm"),
}
_SPEECH_DATA = ("batch_seconds", "max_clip_seconds", "num_workers", "speed_perturb", "noise_snr")
_SPECAUG = ("specaug", "specaug_freq_masks", "specaug_freq_width", "specaug_time_masks", "specaug_time_width")
_REPLAY = ("replay_manifest", "replay_fraction", "distill_weight", "distill_temperature")
TASK_DATA_KEYS: dict[str, tuple[str, ...]] = {
    "asr": (*_SPEECH_DATA, "short_clips", *_SPECAUG, "beam_size", "dev_short_clips", "normalizer", "timestamp_share",
            "objective", "distill_targets", *_REPLAY),
    "speech-classify": (*_SPEECH_DATA, "short_clips", *_SPECAUG),
    "accent-id": _SPEECH_DATA,
    "classify": ("batch_size", "num_workers"),
}


def check_applicable(cfg: RunConfig, *, task: str, head: str) -> None:
    """Refuse a key the user set that the run would silently ignore (``lora_r`` with ``method=bottleneck``).

    ``task`` is a key of :data:`TASK_DATA_KEYS`; ``head`` the resolved head kind (a key of :data:`HEAD_KEYS`).
    """
    method = cfg.adapt.method
    allowed = {
        "adapt": {"method", "adapter_name", "head", *METHOD_KEYS[method], *HEAD_KEYS[head]},
        "train": {f.name for f in fields(TrainConfig)},
        "data": set(TASK_DATA_KEYS[task]),
    }
    if task in ("classify", "accent-id"):
        allowed["adapt"].discard("labels")  # the classes come from the training manifest
    index = _key_index()
    for section, why in (("adapt", f"method {method!r} with a {head} head on task {task!r}"),
                         ("data", f"task {task!r}")):
        foreign = sorted(k for k in cfg.user_keys if index[k][0] == section and k not in allowed[section])
        if foreign:
            keys = ", ".join(sorted(allowed[section] - {"method", "adapter_name"}))
            raise SpeechtlError(f"config key{'s' if len(foreign) > 1 else ''} {', '.join(foreign)} "
                                f"{'do' if len(foreign) > 1 else 'does'} not apply to {why}; "
                                f"the {section} keys that do: {keys or 'none'}")


def _key_index() -> dict[str, tuple[str, dataclasses.Field]]:
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in index:  # guarded by a test; flat keys must be unambiguous
                raise AssertionError(f"config key {f.name} is in two sections")
            index[f.name] = (section, f)
    return index


def all_keys() -> list[str]:
    return sorted(_key_index())


def _unknown(key: str, where: str) -> SpeechtlError:
    close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run with --help-config for the list of keys"
    return SpeechtlError(f"{where}: unknown config key {key!r}{hint}")


def coerce(value: Any, tp: Any, key: str, where: str = "config") -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (strings from the command line included)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = SpeechtlError(f"{where}: {key}={value!r} is not a valid {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        nullish = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if nullish and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, where)
            except SpeechtlError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise SpeechtlError(f"{where}: {key}={value!r} is not one of {', '.join(map(str, args))}")
    if origin is list:
        (item,) = args
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad
        return [coerce(v, item, key, where) for v in value]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(coerce(v, a, key, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad from None
                if f.is_integer():
                    return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise AssertionError(f"unsupported config type {tp!r} for {key}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])} (comma-separated)"
    if origin is tuple:
        return "tuple of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _at_least(low: float) -> tuple[str, Callable[[Any], bool]]:
    return f"at least {low:g}", lambda v: v >= low


_POSITIVE = ("> 0", lambda v: v > 0)
_FRACTION = ("in [0, 1)", lambda v: 0 <= v < 1)
_SHARE = ("in [0, 1]", lambda v: 0 <= v <= 1)
# The values each numeric key can take (None, where a key allows it, always passes; eval_every and
# checkpoint_every 0 mean None, epochs 0 needs max_steps); a value outside fails when the config is
# read, not as a library error steps into training.
RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "lr": _POSITIVE, "weight_decay": _at_least(0), "adam_betas": _FRACTION, "epochs": _at_least(0),
    "max_steps": _at_least(1), "warmup_steps": _at_least(0), "min_lr_ratio": _SHARE, "grad_accum": _at_least(1),
    "max_grad_norm": _POSITIVE, "eval_every": _at_least(0), "checkpoint_every": _at_least(0),
    "early_stopping_patience": _at_least(1), "log_every": _at_least(1), "max_nonfinite": _at_least(1),
    "head_layers": _at_least(0), "head_hidden": _at_least(1), "head_dropout": _FRACTION, "top_n_layers": _at_least(0),
    "layer_decay": _POSITIVE, "lora_r": _at_least(1), "lora_alpha": _POSITIVE, "lora_dropout": _FRACTION,
    "bottleneck_reduction": _at_least(1), "bottleneck_dim": _at_least(1),
    "batch_seconds": _POSITIVE, "batch_size": _at_least(1), "max_clip_seconds": _POSITIVE, "num_workers": _at_least(0),
    "speed_perturb": _POSITIVE, "specaug_freq_masks": _at_least(0), "specaug_freq_width": _at_least(0),
    "specaug_time_masks": _at_least(0), "specaug_time_width": _at_least(0), "beam_size": _at_least(1),
    "timestamp_share": _SHARE, "replay_fraction": _FRACTION, "distill_weight": _at_least(0),
    "distill_temperature": _POSITIVE,
}


def check_range(key: str, value: Any, where: str = "config") -> None:
    """Refuse a value of ``key`` outside :data:`RANGES` (each item, for a list or tuple)."""
    rule = RANGES.get(key)
    if rule is None or value is None:
        return
    what, ok = rule
    items = value if isinstance(value, list | tuple) else [value]
    if not all(ok(v) for v in items):
        shown = ",".join(f"{v:g}" for v in items) if isinstance(value, list | tuple) else f"{value:g}"
        each = "each value " if isinstance(value, list | tuple) else ""
        raise SpeechtlError(f"{where}: {key}={shown}: {each}must be {what}")


def make(cls: type, values: dict[str, Any], where: str = "config"):
    """``cls(**values)`` with each value checked against its field's type and range; unknown keys are errors."""
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(names))}"
            raise SpeechtlError(f"{where}: unknown {cls.__name__} key {key!r}{hint}")
        out[key] = coerce(value, hints[key], key, where)
        check_range(key, out[key], where)
    return cls(**out)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["lr=3e-4", "lora_r=16"]`` to a dict (values still strings)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SpeechtlError(f"override {pair!r}: write key=value, e.g. lr=3e-4")
        out[key] = value.strip()
    return out


def _flatten_yaml(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpeechtlError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SpeechtlError(f"{where}: section {key!r} must be a mapping of keys")
            for k, v in value.items():
                section = _key_index().get(k, (None,))[0]
                if section != key:
                    raise _unknown(k, f"{where} section {key}") if section is None else SpeechtlError(
                        f"{where}: key {k!r} belongs in section {section!r}, not {key!r}")
                flat[k] = v
        else:
            flat[key] = value
    return flat


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | dict[str, Any] | None = None, **fixed: Any
) -> RunConfig:
    """Defaults, then the YAML file ``path``, then ``overrides`` (``key=value`` strings or a dict), then ``fixed``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given: set[str] = set()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpeechtlError(f"{p}: config file not found") from None
        except IsADirectoryError:
            raise SpeechtlError(f"{p}: a folder, not a config file; give the YAML file "
                                "(a run folder's config.yaml)") from None
        except UnicodeDecodeError:
            raise SpeechtlError(f"{p}: not UTF-8 text; give a YAML config file") from None
        except yaml.YAMLError as e:
            raise SpeechtlError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        saved_given = data.pop(USER_KEYS, None) if isinstance(data, dict) else None
        for k, v in _flatten_yaml(data, str(p)).items():
            values[k], sources[k] = v, str(p)
        # A config speechtl saved lists what its user set; the rest of it is resolved defaults.
        if saved_given is None:
            given |= set(values)
        elif isinstance(saved_given, list) and all(isinstance(k, str) for k in saved_given):
            given |= set(saved_given) & set(values)
        else:
            raise SpeechtlError(f"{p}: {USER_KEYS} must be a list of config keys")
    if overrides:
        pairs = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides)
        for k, v in pairs.items():
            if isinstance(v, str) and typing.get_origin(_field_type(k)) not in (list, tuple):
                # YAML typing for command-line values: "1e-4" -> float, "true" -> bool, "null" -> None.
                try:
                    parsed = yaml.safe_load(v) if v else v
                except yaml.YAMLError:
                    parsed = v
                v = v if isinstance(parsed, dict | list) else parsed
            values[k], sources[k] = v, "command line"
    for k, v in fixed.items():
        values[k], sources[k] = v, "command line"
    given |= {k for k, src in sources.items() if src == "command line"}
    index = _key_index()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for k, v in values.items():
        if k not in index:
            raise _unknown(k, sources[k])
        per_section[index[k][0]][k] = v
    return RunConfig(**{s: make(SECTIONS[s], per_section[s], "config") for s in SECTIONS},
                     user_keys=frozenset(given))


def _field_type(key: str) -> Any:
    entry = _key_index().get(key)
    if entry is None:
        return None
    return _hints(SECTIONS[entry[0]])[key]


def describe_keys() -> str:
    """Every key, its section, type and default (for ``--help-config``)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        hints = _hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {f.name} = {default!r}  ({_type_name(hints[f.name])})")
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj

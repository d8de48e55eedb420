"""Export a model, with its adapter merged in, to the runtimes people deploy.

- ``transformers``: the merged model written with ``save_pretrained`` with its processor,
  ``preprocessor_config.json`` and full generation config, so that
  ``transformers.pipeline("automatic-speech-recognition", model=DIR)`` loads it offline.
- ``ct2``: the same merged model converted by CTranslate2's own converter
  (``ctranslate2.converters.TransformersConverter``) at the chosen quantization, with
  ``tokenizer.json`` and ``preprocessor_config.json``, so that ``faster_whisper.WhisperModel(DIR)``
  and ``speechtl-transcribe --engine ct2 DIR`` load it.

LoRA, DoRA and IA3 adapters are merged into the weights; a ``finetune`` run's weights are
written as they are. Bottleneck adapters add modules neither format can hold, and a new head
(``features``) is not a Whisper or CTC model: both are refused. The export folder appears
complete or not at all, carries ``speechtl_export.json`` (base model and its checksum, adapter
and its checksum, format, quantization, whether it may decode unpadded clips (``short_clips``,
from the adapter; both engines read it), speechtl version) and ``checksums.json`` over every file,
which every reader checks. The base model's files are only read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checksums import CHECKSUMS, verify_checksums, write_checksums
from .errors import SpeechtlError
from .fileio import check_apart, remove_dead_staging

if TYPE_CHECKING:
    from .adapters.saved import SavedAdapter

FORMATS = ("transformers", "ct2")
QUANTIZATIONS = ("int8", "int8_float32", "float16", "float32")
DEFAULT_QUANTIZATION = "int8"
EXPORT_INFO = "speechtl_export.json"
EXPORT_FORMAT = "speechtl-export"


def export(
    model: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    format: str = "transformers",
    quantization: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (plus ``adapter``, merged) to ``out`` in ``format``; returns ``out``.

    Args:
        model: a backbone name, folder or hub id; None takes the base named in the adapter.
        out: the folder to create (built beside it, then renamed into place).
        adapter: a saved adapter folder (``speechtl-adapt``'s ``OUT/adapter``).
        format: ``transformers`` or ``ct2``.
        quantization: with ``ct2``: ``int8`` (default), ``int8_float32``, ``float16`` or ``float32``.
        overwrite: replace a non-empty ``out``.

    Raises:
        SpeechtlError: unknown format or quantization, a bottleneck or head adapter, an adapter of
            another base, a non-Whisper model for ``ct2``, a non-empty ``out`` without ``overwrite``.
    """
    if format not in FORMATS:
        raise SpeechtlError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "transformers" and quantization is not None:
        raise SpeechtlError(f"quantization {quantization!r} applies to the ct2 format only; drop it or give "
                            "--format ct2")
    if format == "ct2":
        quantization = quantization or DEFAULT_QUANTIZATION
        if quantization not in QUANTIZATIONS:
            raise SpeechtlError(f"quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    out = Path(out)
    remove_dead_staging(out)  # a killed export's leftovers (its moved-aside folder back in place) before the check
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SpeechtlError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    check_apart(out, {"model": model, "adapter": adapter}, writes="the export")
    saved = None
    if adapter is not None:
        from .adapters.saved import SavedAdapter

        saved = SavedAdapter.read(adapter)
        _check_exportable(saved)
        saved.state()  # a damaged weights file fails before the base model loads
        if model is None:
            model = saved.base_model
    if model is None:
        raise SpeechtlError("give the model to export (a name, folder or hub id), or an adapter that names its base")

    from .adapters.io import weights_checksum
    from .backbones import create_backbone

    backbone = create_backbone(model)
    hf_model = getattr(backbone, "model", None)
    if getattr(backbone, "modality", None) != "audio" or not hasattr(hf_model, "save_pretrained"):
        raise SpeechtlError(f"{model}: not a speech recognition model with a transformers form; export takes "
                            "Whisper and wav2vec2-family models")
    if format == "ct2" and getattr(backbone, "task", None) != "seq2seq":
        raise SpeechtlError(f"{model}: the ct2 format holds Whisper models; export this one with --format transformers")
    base_checksum = weights_checksum(backbone)
    if saved is not None:
        adapted = saved.build(backbone)  # refuses an adapter of other base weights, naming it
        if adapted.mergeable:
            adapted.merge_adapter()
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "export_format": format,
        "quantization": quantization,
        "base_model": str(model),
        "base_checksum": base_checksum,
        "adapter": None if saved is None else {
            "path": str(saved.directory.resolve()),
            "method": saved.method,
            "target_accent": saved.meta.get("target_accent"),
            "adapter_sha256": saved.weights_sha256,
        },
        "max_target_positions": getattr(hf_model.config, "max_target_positions", None),
        # Whisper: whether it may decode clips unpadded (its adapter trained so); transcription's auto reads it.
        # An export exported again without an adapter keeps its own record.
        "short_clips": None if getattr(backbone, "task", None) != "seq2seq" else (
            saved.short_clips is True if saved is not None else getattr(backbone, "trained_short_clips", None) is True),
        "speechtl_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from .convert.ct2 import publish_dir, staging_dir

    with staging_dir(out) as tmp:
        try:
            if format == "transformers":
                _save_transformers(backbone, tmp)
            else:
                _save_ct2(backbone, tmp, quantization)
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            write_checksums(tmp, format=EXPORT_FORMAT)
        except OSError as e:
            raise SpeechtlError(f"{out}: cannot write the export ({e.strerror or e}); free disk space or choose "
                                "another folder") from e
        if not publish_dir(tmp, out, overwrite=overwrite):
            raise SpeechtlError(f"{out} was created by another process during the export; pass overwrite=True")
    return out


def _check_exportable(saved: SavedAdapter) -> None:
    from .transfer import ADAPTER_KINDS

    method, kind = saved.method, ADAPTER_KINDS.get(saved.method)
    if kind is not None and not kind.mergeable:  # what does not merge leaves modules no plain model holds
        raise SpeechtlError(f"{saved.directory}: {method} adapters add modules that neither transformers nor "
                            "CTranslate2 can hold; train a LoRA adapter (speechtl-adapt --method lora) to export")
    if saved.head:
        raise SpeechtlError(f"{saved.directory}: this {method} run trained a new {saved.head.get('type', 'head')}, "
                            "which is not a Whisper or CTC model format; export LoRA, DoRA, IA3 or finetune runs")


def _save_transformers(backbone, folder: Path) -> None:
    """``save_pretrained`` of the model, processor and feature extractor (``preprocessor_config.json``)."""
    model = backbone.model
    model.save_pretrained(folder)
    processor = backbone.processor
    processor.save_pretrained(folder)
    # transformers 5 folds the feature extractor into processor_config.json; the pipeline's older readers
    # and faster-whisper look for preprocessor_config.json.
    processor.feature_extractor.save_pretrained(folder)
    for leftover in ("adapter_config.json", "adapter_model.safetensors"):
        if (folder / leftover).exists():
            raise SpeechtlError(f"{folder}: the model still holds adapter layers after merging; report this")


def _save_ct2(backbone, folder: Path, quantization: str) -> None:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise SpeechtlError("the ct2 format needs ctranslate2: pip install ctranslate2==4.8.5") from None
    hf = folder / ".transformers"
    hf.mkdir()
    _save_transformers(backbone, hf)
    converted = folder / ".ct2"
    TransformersConverter(str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(converted), quantization=quantization)
    for p in converted.iterdir():
        os.replace(p, folder / p.name)
    shutil.rmtree(hf)
    converted.rmdir()


def verify_model_folder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Verify a model folder speechtl wrote before anything in it is read: an export against its checksums
    (one whose ``checksums.json`` is gone is refused), any other folder with a ``checksums.json`` (a converted
    model) against that. A folder with neither is not speechtl's: there is nothing to check it against.

    Returns an export's ``speechtl_export.json``, None for any other folder."""
    folder = Path(folder)
    if (folder / EXPORT_INFO).is_file():
        return verify_export(folder)
    if (folder / CHECKSUMS).is_file():
        verify_checksums(folder)
    return None


def export_short_clips(info: dict[str, Any] | None) -> bool | None:
    """Whether an export may decode clips unpadded (its adapter trained on them), from its
    ``speechtl_export.json``; None where it is not recorded (a CTC model, or not an export)."""
    value = (info or {}).get("short_clips")
    return value if isinstance(value, bool) else None


def verify_export(folder: str | os.PathLike) -> dict[str, Any]:
    """Check an export folder against its checksums; return its ``speechtl_export.json``."""
    folder = Path(folder)
    verify_checksums(folder, lambda detail: SpeechtlError(
        f"{folder}: the exported model was modified, truncated or is incomplete ({detail}); export it again "
        "(speechtl-export ... --overwrite)"))
    try:
        info = json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SpeechtlError(f"{folder / EXPORT_INFO}: unreadable ({e}); export the model again") from None
    if info.get("format") != EXPORT_FORMAT:
        raise SpeechtlError(f"{folder / EXPORT_INFO}: not a speechtl export (format {info.get('format')!r})")
    return info


def _version() -> str:
    from . import __version__

    return __version__

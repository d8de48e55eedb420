"""CTranslate2 Whisper checkpoints (the faster-whisper format) to a transformers Whisper folder.

A CTranslate2 model folder holds ``model.bin`` (binary format version 6, ``WhisperSpec``
revision 3), ``config.json`` (suppressed token ids, alignment heads) and, in the
faster-whisper layout, ``tokenizer.json`` and ``vocabulary.txt``. :func:`convert_ct2_whisper`
turns it into a folder that ``WhisperForConditionalGeneration.from_pretrained`` and
``WhisperProcessor.from_pretrained`` load offline: ``config.json``, ``generation_config.json``,
``model.safetensors``, the tokenizer files and ``preprocessor_config.json``.

Reading ``model.bin`` is :mod:`speechtl.convert.ct2_format`; the tokenizer,
:mod:`speechtl.convert.ct2_tokenizer`; naming the weights and building the configs,
:mod:`speechtl.convert.ct2_to_transformers`. This module checks and writes the folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..checksums import CHECKSUMS, verify_checksums, write_checksums
from ..errors import SpeechtlError
from ..fileio import atomic_replace_dir, check_apart, remove_dead_staging, staging_dir
from .ct2_format import BINARY_VERSION, MODEL_BIN, SPEC_NAME, SPEC_REVISION, Ct2Checkpoint, dequantized, read_ct2_model
from .ct2_to_transformers import (
    check_whisper_flags,
    count_layers,
    read_ct2_config,
    transformers_weights,
    whisper_configs,
)
from .ct2_tokenizer import build_tokenizer

__all__ = [
    "BINARY_VERSION",
    "MODEL_BIN",
    "OUTPUT_DTYPES",
    "SPEC_NAME",
    "SPEC_REVISION",
    "Ct2Checkpoint",
    "convert_ct2_whisper",
    "publish_dir",
    "read_ct2_model",
    "staging_dir",
    "write_whisper_folder",
]

OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
# Part of this module's API: the folder swap a finished conversion is published with.
publish_dir = atomic_replace_dir


def write_whisper_folder(
    src_dir: Path,
    dest: Path,
    *,
    dtype: str = "float32",
    model_bin_parts: Sequence[Path] | None = None,
    multilingual: bool | None = None,
) -> dict:
    """Convert the CTranslate2 model in ``src_dir`` into the (empty) folder ``dest``; no atomicity here.

    Returns a short summary (sizes, dtype) for reports.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    if dtype not in OUTPUT_DTYPES:
        raise SpeechtlError(f"dtype {dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}.")
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise SpeechtlError(f"{src_dir} is not a folder; give the CTranslate2 model folder (with {MODEL_BIN}).")
    parts = list(model_bin_parts) if model_bin_parts else [src_dir / MODEL_BIN]
    ckpt = read_ct2_model(parts)
    if ckpt.spec != SPEC_NAME:
        raise SpeechtlError(f"{ckpt.path} holds a CTranslate2 {ckpt.spec!r} model, not a Whisper model.")
    if ckpt.revision != SPEC_REVISION:
        raise SpeechtlError(
            f"{ckpt.path} is WhisperSpec revision {ckpt.revision}; this converter reads revision {SPEC_REVISION} "
            "(ctranslate2 >= 3.10). Convert the model again with a recent ctranslate2."
        )
    v = dequantized(ckpt)
    check_whisper_flags(v, ckpt.path)
    n_enc, n_dec = count_layers(v, "encoder"), count_layers(v, "decoder")
    weights, tied = transformers_weights(v, ckpt.path, n_enc, n_dec)
    vocab_size = weights["model.decoder.embed_tokens.weight"].shape[0]
    tokenizer, tokens = build_tokenizer(src_dir, vocab_size)
    config, gen = whisper_configs(
        v, weights, tied, read_ct2_config(src_dir), tokens, n_enc, n_dec, multilingual, dtype, ckpt.path
    )

    # Check names and shapes against the model transformers will build (on the meta device: no memory, no init).
    with torch.device("meta"):
        reference = WhisperForConditionalGeneration(config).state_dict()
    expected = {k: tuple(t.shape) for k, t in reference.items() if not (tied and k == "proj_out.weight")}
    got = {k: tuple(a.shape) for k, a in weights.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise SpeechtlError(
            f"{ckpt.path}: converted weights do not fit WhisperForConditionalGeneration "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {shapes[:3]})."
        )

    torch_dtype = getattr(torch, dtype)
    # Arrays read straight from the file are read-only views of it; torch wants writable memory.
    tensors = {k: torch.from_numpy(np.require(a, requirements=("C", "W"))).to(torch_dtype) for k, a in weights.items()}
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(dest)
    gen.save_pretrained(dest)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    # transformers 5 folds the feature extractor into processor_config.json; preprocessor_config.json is
    # what WhisperFeatureExtractor.from_pretrained and older readers look for, so write both.
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(dest)
    feature_extractor.save_pretrained(dest)
    return {
        "d_model": config.d_model,
        "encoder_layers": n_enc,
        "decoder_layers": n_dec,
        "vocab_size": config.vocab_size,
        "multilingual": gen.is_multilingual,
        "dtype": dtype,
        "parameters": sum(int(np.prod(a.shape)) for a in weights.values()),
    }


def convert_ct2_whisper(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    *,
    overwrite: bool = False,
    model_bin_parts: Sequence[str | os.PathLike] | None = None,
    multilingual: bool | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper folder (faster-whisper format) to a transformers Whisper folder.

    Args:
        src_dir: folder with ``model.bin``, ``tokenizer.json`` and usually ``config.json`` and ``vocabulary.txt``.
        out_dir: the folder to create; it appears complete or not at all (built beside it, then renamed).
        dtype: weight dtype in ``model.safetensors``: ``float32`` (for training on CPU), ``float16`` or ``bfloat16``.
            int8/int16 checkpoints are de-quantized.
        overwrite: replace an existing non-empty ``out_dir`` (otherwise that is an error).
        model_bin_parts: read ``model.bin`` as these files concatenated (a checkpoint split across packages)
            instead of ``src_dir/model.bin``.
        multilingual: override the vocabulary-size rule (51865+ tokens = multilingual), for small test models.

    Returns:
        ``out_dir`` as a Path.

    The new folder carries ``checksums.json``, which :func:`speechtl.create_backbone` verifies on load.
    A source folder with a ``checksums.json`` (a speechtl CTranslate2 export) is verified before it is read.

    Raises:
        SpeechtlError: a missing/corrupt/truncated/modified source, an output that overlaps the source,
            or an existing output without ``overwrite``.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_apart(out_dir, {"source": src_dir, **{f"{MODEL_BIN} part": Path(p).parent for p in model_bin_parts or ()}},
                writes="the converted model")
    remove_dead_staging(out_dir)  # a killed conversion's leftovers (its moved-aside folder back) before the check
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise SpeechtlError(
                f"{out_dir} already exists and is not empty; pass overwrite=True (--overwrite) to replace it."
            )
    # Fail on bad arguments or a missing source before creating anything next to out_dir.
    if dtype not in OUTPUT_DTYPES:
        raise SpeechtlError(f"dtype {dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}.")
    parts = [Path(p) for p in model_bin_parts] if model_bin_parts else [src_dir / MODEL_BIN]
    if not src_dir.is_dir():
        raise SpeechtlError(f"{src_dir} is not a folder; give the CTranslate2 model folder (with {MODEL_BIN}).")
    for p in parts:
        if not p.is_file():
            raise SpeechtlError(f"{p} does not exist; a CTranslate2 model folder must contain {MODEL_BIN}.")
    if (src_dir / CHECKSUMS).is_file():
        verify_checksums(src_dir, lambda detail: SpeechtlError(
            f"{src_dir}: the CTranslate2 model folder was modified, truncated or is incomplete ({detail}); "
            "export or fetch it again"))
    with staging_dir(out_dir) as tmp:
        write_whisper_folder(
            src_dir,
            tmp,
            dtype=dtype,
            multilingual=multilingual,
            model_bin_parts=parts,
        )
        write_checksums(tmp, converted_from=str(src_dir.resolve()), dtype=dtype)
        if not atomic_replace_dir(tmp, out_dir, overwrite=overwrite):
            raise SpeechtlError(
                f"{out_dir} was created by another process during the conversion; pass overwrite=True to replace it."
            )
    return out_dir

"""CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` weights and its two configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import SpeechtlError
from .ct2_tokenizer import WhisperTokens

_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU

# Attention heads of the released Whisper sizes, for checkpoints that do not store them.
_HEADS_BY_WIDTH = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}


def _scalar(v: dict[str, np.ndarray], name: str) -> int | None:
    arr = v.get(name)
    return None if arr is None or arr.ndim != 0 else int(arr)


def count_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    idx = {int(m.group(1)) for k in v if (m := re.match(rf"{prefix}/layer_(\d+)/", k))}
    if idx != set(range(len(idx))):
        raise SpeechtlError(f"{prefix} layers are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def transformers_weights(v: dict[str, np.ndarray], path: Path, n_enc: int, n_dec: int) -> tuple[dict[str, np.ndarray], bool]:
    """Map CTranslate2 Whisper variables to ``WhisperForConditionalGeneration`` parameter names.

    Returns the weights and whether ``proj_out`` is tied to the token embeddings (it then is
    left out, as transformers re-ties it on load).
    """
    v = dict(v)
    out: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        if name not in v:
            raise SpeechtlError(f"{path} has no variable {name!r}; it is not a complete Whisper checkpoint.")
        return v.pop(name)

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}/gamma")
        out[f"{dst}.bias"] = take(f"{src}/beta")

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}/weight")
        out[f"{dst}.bias"] = take(f"{src}/bias")

    def split(src: str, dsts: list[str | None]) -> None:
        """A fused projection ([q;k;v] or [k;v]) cut into equal row blocks."""
        w = take(f"{src}/weight")
        b = take(f"{src}/bias")
        n = len(dsts)
        if w.shape[0] % n:
            raise SpeechtlError(f"{path}: {src}/weight has {w.shape[0]} rows, not a multiple of {n}.")
        for dst, wi, bi in zip(dsts, np.split(w, n), np.split(b, n), strict=True):
            out[f"{dst}.weight"] = wi
            # A key bias adds q·b_k to every score of a query, which softmax cancels, so dropping it is exact.
            if not dst.endswith("k_proj"):
                out[f"{dst}.bias"] = bi

    def attention_block(src: str, dst: str) -> None:
        split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    out[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", f"{enc}.layer_norm")
    for i in range(n_enc):
        attention_block(f"encoder/layer_{i}", f"{enc}.layers.{i}")

    out[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    norm("decoder/layer_norm", f"{dec}.layer_norm")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        attention_block(src, dst)
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        split(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")

    proj = take("decoder/projection/weight")
    proj_bias = v.pop("decoder/projection/bias", None)
    if proj_bias is not None and np.any(proj_bias != 0):
        raise SpeechtlError(
            f"{path}: decoder/projection/bias is non-zero, but Whisper's output projection has no bias."
        )
    emb = out[f"{dec}.embed_tokens.weight"]
    tied = proj is emb or (proj.shape == emb.shape and np.array_equal(proj, emb))
    if not tied:
        out["proj_out.weight"] = proj

    leftover = sorted(k for k, a in v.items() if a.ndim > 0)
    if leftover:
        raise SpeechtlError(
            f"{path} has variables this converter does not know ({', '.join(leftover[:5])}"
            f"{', ...' if len(leftover) > 5 else ''}); it is not a standard Whisper checkpoint."
        )
    return out, tied


def check_whisper_flags(v: dict[str, np.ndarray], path: Path) -> None:
    """Refuse decoder options that transformers' Whisper does not implement."""
    expect = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0}
    for name, want in expect.items():
        got = _scalar(v, name)
        if got is not None and got != want:
            raise SpeechtlError(f"{path}: {name} is {got}, but Whisper needs {want}; this is not a Whisper model.")

def read_ct2_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpeechtlError(f"{path} is not valid JSON ({e}).") from e
    if not isinstance(cfg, dict):
        raise SpeechtlError(f"{path} should hold a JSON object.")
    return cfg


def whisper_configs(
    v: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    tied: bool,
    ct2_cfg: dict,
    tokens: WhisperTokens,
    n_enc: int,
    n_dec: int,
    multilingual: bool | None,
    dtype: str,
    path: Path,
):
    """``WhisperConfig`` and ``GenerationConfig`` from tensor shapes, CTranslate2's config.json and the tokenizer."""
    from transformers import GenerationConfig, WhisperConfig

    d_model, n_mels = weights["model.encoder.conv1.weight"].shape[:2]
    vocab_size = weights["model.decoder.embed_tokens.weight"].shape[0]
    heads = {}
    for side in ("encoder", "decoder"):
        h = _scalar(v, f"{side}/num_heads") or ct2_cfg.get(f"{side}_attention_heads") or ct2_cfg.get("num_heads")
        h = h or _HEADS_BY_WIDTH.get(int(d_model))
        if not h:
            raise SpeechtlError(
                f"{path} stores no {side} head count and d_model={d_model} is not a released Whisper size."
            )
        if d_model % int(h):
            raise SpeechtlError(f"{path}: {side}/num_heads={h} does not divide d_model={d_model}.")
        heads[side] = int(h)
    if multilingual is None:
        # transformers' own rule: English-only vocabularies have 51864 tokens, multilingual ones at least 51865.
        multilingual = vocab_size >= 51865

    # Ids past the vocabulary (a test model converted with default settings) cannot be produced: drop them.
    suppress = [int(i) for i in (ct2_cfg.get("suppress_ids") or []) if 0 <= int(i) < vocab_size]
    begin_suppress = ct2_cfg.get("suppress_ids_begin") or [220, tokens.eot]
    begin_suppress = [int(i) for i in begin_suppress if 0 <= int(i) < vocab_size]
    align = ct2_cfg.get("alignment_heads")
    if align:
        align = [[int(layer), int(head)] for layer, head in align]
    else:
        # CTranslate2's default: every head of the last half of the decoder layers.
        align = [[layer, head] for layer in range(n_dec // 2, n_dec) for head in range(heads["decoder"])]

    config = WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=int(weights["model.encoder.layers.0.fc1.weight"].shape[0]) if n_enc else 4 * int(d_model),
        decoder_ffn_dim=int(weights["model.decoder.layers.0.fc1.weight"].shape[0]) if n_dec else 4 * int(d_model),
        max_source_positions=int(weights["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(weights["model.decoder.embed_positions.weight"].shape[0]),
        decoder_start_token_id=tokens.sot,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        tie_word_embeddings=tied,
        scale_embedding=False,
    )
    config.dtype = dtype

    gen = GenerationConfig(
        decoder_start_token_id=tokens.sot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        max_length=config.max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    # Whisper-specific keys that transformers' WhisperGenerationMixin reads from the generation config.
    gen.alignment_heads = align
    gen.no_timestamps_token_id = tokens.no_timestamps
    gen.is_multilingual = bool(multilingual)
    gen.return_timestamps = False
    gen.max_initial_timestamp_index = 50
    if tokens.prev_sot is not None:
        gen.prev_sot_token_id = tokens.prev_sot
    if multilingual:
        gen.lang_to_id = dict(tokens.languages)
        gen.task_to_id = {
            k: i for k, i in (("transcribe", tokens.transcribe), ("translate", tokens.translate)) if i is not None
        }
        # Prompt <|sot|> <|lang|> <|transcribe|> <|notimestamps|>: the language is detected unless
        # generate(language=...) names it; a default task replaces the deprecated forced_decoder_ids.
        if "transcribe" in gen.task_to_id:
            gen.task = "transcribe"
    # English-only models get no lang_to_id/task_to_id: transformers would otherwise run language
    # detection and put a language token in the prompt; their prompt is <|sot|> <|notimestamps|>.
    return config, gen

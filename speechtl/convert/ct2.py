"""CTranslate2 Whisper checkpoints (the faster-whisper format) to a transformers Whisper folder.

A CTranslate2 model folder holds ``model.bin`` (binary format version 6, ``WhisperSpec``
revision 3), ``config.json`` (suppressed token ids, alignment heads) and, in the
faster-whisper layout, ``tokenizer.json`` and ``vocabulary.txt``. :func:`convert_ct2_whisper`
turns it into a folder that ``WhisperForConditionalGeneration.from_pretrained`` and
``WhisperProcessor.from_pretrained`` load offline: ``config.json``, ``generation_config.json``,
``model.safetensors``, the tokenizer files and ``preprocessor_config.json``.

``model.bin`` layout (little endian): u32 version, then the spec name and a u32 revision,
u32 variable count, then per variable a name, u8 rank, u32 dims, u8 dtype, u32 byte count
and the raw data, and finally a u32 alias count and (alias, target) name pairs. Strings are
a u16 length (counting a trailing NUL) followed by UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpeechtlError

MODEL_BIN = "model.bin"
BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")

# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 has no numpy type and is read as uint16.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU

# Attention heads of the released Whisper sizes, for checkpoints that do not store them.
_HEADS_BY_WIDTH = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}

_LANG_TOKEN = re.compile(r"<\|([a-z]{2,3}|haw|yue)\|>")


@dataclass
class Ct2Checkpoint:
    """The variables of a CTranslate2 ``model.bin``.

    Attributes:
        path: the file it was read from (for messages).
        spec: the spec name, ``"WhisperSpec"`` for Whisper.
        revision: the spec revision.
        variables: name -> array as stored (aliases resolved; quantized weights still integers,
            bfloat16 already widened to float32).
    """

    path: Path
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    """Bounds-checked reads from a byte buffer; running past the end means the file is truncated."""

    def __init__(self, data: bytes | memoryview, path: Path):
        self.data = data
        self.path = path
        self.pos = 0
        self.what = "the header"

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise SpeechtlError(
                f"{self.path} ends early (byte {len(self.data)}, while reading {self.what}): the file is truncated "
                "or not a CTranslate2 model; download or copy it again."
            )
        out = memoryview(self.data)[self.pos : end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<H")
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise SpeechtlError(
                f"{self.path}: malformed string at byte {self.pos - n}; the file is not a CTranslate2 model."
            )
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_model(parts: Sequence[Path]) -> Ct2Checkpoint:
    """Read a CTranslate2 ``model.bin`` given as one file or as pieces to concatenate in order.

    Raises:
        SpeechtlError: a missing file, a wrong header or version, a truncated file or trailing bytes.
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise SpeechtlError("no model.bin given to read")
    for p in parts:
        if not p.is_file():
            raise SpeechtlError(f"{p} does not exist; a CTranslate2 model folder must contain {MODEL_BIN}.")
    path = parts[0] if len(parts) == 1 else Path(" + ".join(str(p) for p in parts))
    data = parts[0].read_bytes() if len(parts) == 1 else b"".join(p.read_bytes() for p in parts)
    r = _Reader(data, path)

    version = r.unpack("<I")
    if version != BINARY_VERSION:
        raise SpeechtlError(
            f"{path} is not a CTranslate2 binary model of version {BINARY_VERSION} (its header reads {version}); "
            "convert it with ctranslate2 >= 3 or check that the file is a CTranslate2 model.bin."
        )
    r.what = "the spec name"
    spec = r.string()
    revision = r.unpack("<I")
    r.what = "the variable count"
    count = r.unpack("<I")

    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        r.what = f"variable {i + 1} of {count}"
        name = r.string()
        r.what = f"variable {name!r}"
        rank = r.unpack("<B")
        shape = tuple(r.unpack("<I") for _ in range(rank))
        type_id = r.unpack("<B")
        nbytes = r.unpack("<I")
        if type_id not in _CT2_DTYPES:
            raise SpeechtlError(f"{path}: variable {name!r} has unknown dtype id {type_id}; the file is corrupt.")
        dtype = _CT2_DTYPES[type_id]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise SpeechtlError(
                f"{path}: variable {name!r} declares {nbytes} bytes but shape {list(shape)} needs {expected}; "
                "the file is corrupt."
            )
        arr = np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape)
        if type_id == _BF16:
            # bfloat16 is the top half of a float32.
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr

    r.what = "the alias table"
    aliases = {}
    for _ in range(r.unpack("<I")):
        alias = r.string()
        aliases[alias] = r.string()
    if r.pos != len(data):
        raise SpeechtlError(
            f"{path} has {len(data) - r.pos} unexpected bytes after the alias table; the file is corrupt "
            "(or pieces were concatenated in the wrong order)."
        )
    for alias, target in aliases.items():
        seen = {alias}
        while target in aliases and target not in seen:
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise SpeechtlError(f"{path}: alias {alias!r} points to missing variable {target!r}; the file is corrupt.")
        variables[alias] = variables[target]
        # An alias of a quantized weight shares its scale (e.g. the output projection of an int8 model).
        for suffix in ("_scale", "_zero"):
            if target + suffix in variables:
                variables.setdefault(alias + suffix, variables[target + suffix])
    return Ct2Checkpoint(path=path, spec=spec, revision=revision, variables=variables)


def _dequantized(ckpt: Ct2Checkpoint) -> dict[str, np.ndarray]:
    """All floating variables as float32; int8/int16 weights divided by their ``*_scale``.

    CTranslate2 quantizes a weight ``w`` as ``round(w * scale)``: int8 with one scale per output
    row (conv kernels flattened per output channel), int16 with one scalar scale.
    """
    out: dict[str, np.ndarray] = {}
    v = ckpt.variables
    for name, arr in v.items():
        if name.endswith("_scale") or name.endswith("_zero"):
            continue
        if name + "_zero" in v:
            raise SpeechtlError(
                f"{ckpt.path}: {name!r} uses zero-point (AWQ-style) quantization, which this converter does not read; "
                "convert the original model with --quantization float16 or float32 instead."
            )
        scale = v.get(name + "_scale")
        if scale is not None:
            w = arr.astype(np.float32)
            s = np.asarray(scale, dtype=np.float32)
            if s.ndim == 1:
                s = s.reshape((-1,) + (1,) * (w.ndim - 1))
            out[name] = w / s
        elif arr.dtype.kind == "f":
            out[name] = arr.astype(np.float32, copy=False)
        else:
            out[name] = arr
    return out


def _scalar(v: dict[str, np.ndarray], name: str) -> int | None:
    arr = v.get(name)
    return None if arr is None or arr.ndim != 0 else int(arr)


def _count_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    idx = {int(m.group(1)) for k in v if (m := re.match(rf"{prefix}/layer_(\d+)/", k))}
    if idx != set(range(len(idx))):
        raise SpeechtlError(f"{prefix} layers are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def _hf_weights(v: dict[str, np.ndarray], path: Path, n_enc: int, n_dec: int) -> tuple[dict[str, np.ndarray], bool]:
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


def _check_flags(v: dict[str, np.ndarray], path: Path) -> None:
    """Refuse decoder options that transformers' Whisper does not implement."""
    expect = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0}
    for name, want in expect.items():
        got = _scalar(v, name)
        if got is not None and got != want:
            raise SpeechtlError(f"{path}: {name} is {got}, but Whisper needs {want}; this is not a Whisper model.")


@dataclass
class _Tokens:
    """Token ids the configs need, read from the tokenizer."""

    eot: int
    sot: int
    no_timestamps: int
    transcribe: int | None
    translate: int | None
    prev_sot: int | None
    languages: dict[str, int]  # "<|en|>" -> id


def _build_tokenizer(src: Path, vocab_size: int):
    """A ``WhisperTokenizer`` from faster-whisper's ``tokenizer.json`` plus the timestamp tokens.

    faster-whisper's ``tokenizer.json`` stops at ``<|notimestamps|>``; the model's vocabulary goes
    on with 1501 timestamp tokens ``<|0.00|>`` .. ``<|30.00|>``, added here as ordinary (non-special)
    tokens because transformers finds the first timestamp id as "last special id + 1".
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        raise SpeechtlError(
            f"{tok_file} does not exist; the converter needs the model's tokenizer.json "
            "(ct2-transformers-converter writes it with --copy_files tokenizer.json)."
        )
    try:
        spec = json.loads(tok_file.read_text(encoding="utf-8"))
        model = spec["model"]
        if model.get("type") != "BPE":
            raise SpeechtlError(f"{tok_file}: expected a byte-level BPE tokenizer, found {model.get('type')!r}.")
        vocab = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = sorted(spec.get("added_tokens", []), key=lambda a: a["id"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise SpeechtlError(f"{tok_file} is not a valid tokenizers JSON file ({e}).") from e

    specials = [a["content"] for a in added if a.get("special", True)]
    tok = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # as OpenAI's Whisper tokenizers: batched labels pad with end-of-text
        additional_special_tokens=[s for s in specials if s != "<|endoftext|>"],
    )
    for a in added:
        if tok.convert_tokens_to_ids(a["content"]) != a["id"]:
            raise SpeechtlError(
                f"{tok_file}: added token {a['content']!r} should have id {a['id']}; the file is inconsistent."
            )
    for required in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if required not in tok.get_vocab():
            raise SpeechtlError(f"{tok_file} has no {required} token; it is not a Whisper tokenizer.")

    n = len(tok)
    if n > vocab_size:
        raise SpeechtlError(f"{tok_file} has {n} tokens but the model's vocabulary has only {vocab_size}.")
    no_ts = tok.convert_tokens_to_ids("<|notimestamps|>")
    if n != no_ts + 1:
        raise SpeechtlError(
            f"{tok_file}: <|notimestamps|> (id {no_ts}) should be the last token, before the timestamps."
        )
    tok.add_tokens(
        [
            AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False)
            for i in range(vocab_size - n)
        ]
    )
    _check_vocabulary(tok, src)

    ids = tok.get_vocab()
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tokens = _Tokens(
        eot=ids["<|endoftext|>"],
        sot=ids["<|startoftranscript|>"],
        no_timestamps=no_ts,
        transcribe=ids.get("<|transcribe|>"),
        translate=ids.get("<|translate|>"),
        prev_sot=ids.get("<|startofprev|>"),
        languages={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in ids},
    )
    return tok, tokens


def _check_vocabulary(tok, src: Path) -> None:
    """Compare against CTranslate2's own id -> token list when the folder has one."""
    txt, js = src / "vocabulary.txt", src / "vocabulary.json"
    if txt.is_file():
        tokens = txt.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        where = txt
    elif js.is_file():
        tokens = json.loads(js.read_text(encoding="utf-8"))
        where = js
    else:
        return
    if len(tokens) != len(tok):
        raise SpeechtlError(f"{where} lists {len(tokens)} tokens but tokenizer.json plus timestamps gives {len(tok)}.")
    ids = tok.convert_tokens_to_ids(tokens)
    bad = [i for i, j in enumerate(ids) if i != j]
    if bad:
        raise SpeechtlError(
            f"{where}: token {tokens[bad[0]]!r} has id {bad[0]} there but {ids[bad[0]]} in tokenizer.json "
            f"({len(bad)} tokens differ); the two files come from different models."
        )


def _read_ct2_config(src: Path) -> dict:
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


def _configs(
    v: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    tied: bool,
    ct2_cfg: dict,
    tokens: _Tokens,
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


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    # Some filesystems refuse fsync on directories; the rename is still atomic.
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``out_dir`` (same filesystem, so it can be renamed onto it); removed on exit."""
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        # mkdtemp makes it private (0700); the published folder should get the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except OSError as e:
        raise SpeechtlError(
            f"cannot create a folder next to {out_dir} ({e.strerror}); choose a writable location."
        ) from e
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, out_dir: Path, overwrite: bool = False) -> bool:
    """Move the finished folder ``tmp`` to ``out_dir`` in one rename, after flushing it to disk.

    Returns False when ``out_dir`` appeared, non-empty, in the meantime and ``overwrite`` is False
    (``tmp`` is left for the caller to discard). With ``overwrite`` an existing ``out_dir`` is moved
    aside first and deleted after the rename.
    """
    _fsync_tree(tmp)
    old = None
    if overwrite and out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out_dir, old)
    try:
        # rename() onto an empty folder replaces it and fails on a non-empty one: that is the race check.
        os.rename(tmp, out_dir)
    except OSError as e:
        if old is not None:
            os.rename(old, out_dir)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise SpeechtlError(f"cannot move the converted model to {out_dir} ({e.strerror}).") from e
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


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
    v = _dequantized(ckpt)
    _check_flags(v, ckpt.path)
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    weights, tied = _hf_weights(v, ckpt.path, n_enc, n_dec)
    vocab_size = weights["model.decoder.embed_tokens.weight"].shape[0]
    tokenizer, tokens = _build_tokenizer(src_dir, vocab_size)
    config, gen = _configs(
        v, weights, tied, _read_ct2_config(src_dir), tokens, n_enc, n_dec, multilingual, dtype, ckpt.path
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

    Raises:
        SpeechtlError: a missing/corrupt/truncated source, or an existing output without ``overwrite``.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
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
    with staging_dir(out_dir) as tmp:
        write_whisper_folder(
            src_dir,
            tmp,
            dtype=dtype,
            multilingual=multilingual,
            model_bin_parts=parts,
        )
        if not publish_dir(tmp, out_dir, overwrite=overwrite):
            raise SpeechtlError(
                f"{out_dir} was created by another process during the conversion; pass overwrite=True to replace it."
            )
    return out_dir

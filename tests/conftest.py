from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_whisper import EOT, NO_TS, SOT, SPECIALS, VOCAB, ctranslate2_or_skip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPEECHTL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module: tiny models run fastest so, and the test machines are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tone_manifest(tmp_path):
    """``make(lines, speaker=...)``: a manifest of short tone clips, one per ``(text, accent, split)`` line.

    Clip ``i`` lasts 0.5 + 0.1 i s at 200 + 60 i Hz with a little noise (fixed seed); ``speaker(i)``
    names its speaker.
    """
    import json

    import numpy as np
    import soundfile as sf

    def make(lines, speaker=lambda i: f"s{i}") -> Path:
        rng = np.random.default_rng(0)
        rows = []
        for i, (text, accent, split) in enumerate(lines):
            t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
            wav = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
            sf.write(tmp_path / f"u{i}.wav", wav, 16000)
            rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "speaker": speaker(i), "accent": accent,
                         "split": split})
        path = tmp_path / "all.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real accented speech); tests that need it skip on a plain clone."""
    if not (SHARED_DATA / "real" / "manifest.jsonl").is_file():
        pytest.skip(f"real speech not found at {SHARED_DATA} (set SPEECHTL_SHARED_DATA to a copy of shared/data)")
    return SHARED_DATA


@pytest.fixture
def sine_wav(tmp_path):
    """Write a short mono sine wave and return its path (16 kHz, 1 s)."""
    import numpy as np
    import soundfile as sf

    def make(seconds: float = 1.0, rate: int = 16000, channels: int = 1, name: str = "tone.wav") -> Path:
        t = np.arange(int(seconds * rate)) / rate
        wav = 0.3 * np.sin(2 * np.pi * 220 * t).astype("float32")
        if channels > 1:
            wav = np.stack([wav] * channels, axis=1)
        path = tmp_path / name
        sf.write(path, wav, rate)
        return path

    return make


# -- tiny random Whisper in transformers and CTranslate2 form, and a packaged model backed by it --


@pytest.fixture(scope="session")
def random_hf(tmp_path_factory) -> Path:
    """A tiny random transformers Whisper (d_model 64, 2+2 layers) with a byte-level Whisper tokenizer."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer

    folder = tmp_path_factory.mktemp("random_hf")
    vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = EOT
    tok = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=SPECIALS[1:])
    assert [tok.convert_tokens_to_ids(s) for s in SPECIALS] == list(range(EOT, NO_TS + 1))
    tok.save_pretrained(folder)

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=32,
        decoder_start_token_id=SOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Random layer norms and biases too, so that a swapped or dropped tensor cannot go unnoticed; at this
        # scale greedy decoding depends on the audio and on the prompt (smaller weights repeat one token).
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        suppress_tokens=[],
        begin_suppress_tokens=[220, EOT],
    )
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def random_ct2(random_hf, tmp_path_factory):
    """``quantization -> CTranslate2 folder`` of the random model, converted once per quantization."""
    made: dict[str, Path] = {}

    def get(quantization: str) -> Path:
        if quantization not in made:
            ctranslate2 = ctranslate2_or_skip()
            out = tmp_path_factory.mktemp(f"ct2_{quantization}") / "model"
            conv = ctranslate2.converters.TransformersConverter(str(random_hf), copy_files=["tokenizer.json"])
            conv.convert(str(out), quantization=quantization)
            made[quantization] = out
        return made[quantization]

    return get


@pytest.fixture
def fake_packaged(random_ct2, tmp_path, monkeypatch):
    """A packaged model backed by an importable package in tmp_path, and an empty cache."""
    import hashlib
    import shutil

    from speechtl.convert.packaged import FORMAT_VERSION, PACKAGED, PackagedModel

    pkg = tmp_path / "site" / "speechtl_fake_weights"
    shutil.copytree(random_ct2("float16"), pkg / "model")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = hashlib.sha256((pkg / "model" / "model.bin").read_bytes()).hexdigest()
    monkeypatch.setitem(
        PACKAGED,
        "whisper-fake",
        PackagedModel(
            name="whisper-fake",
            description="random test model",
            distributions=("speechtl-fake-weights==1.0",),
            model_bin=(("speechtl_fake_weights", "model/model.bin"),),
            files=("speechtl_fake_weights", "model"),
            model_bin_sha256=digest,
        ),
    )
    monkeypatch.setenv("SPEECHTL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / f"v{FORMAT_VERSION}" / "whisper-fake"


@pytest.fixture
def frames(monkeypatch) -> list[int]:
    """The log-mel frame count of every batch the PyTorch Whisper encoder receives."""
    from speechtl.backbones.whisper import WhisperBackbone

    seen: list[int] = []
    encode = WhisperBackbone.encode

    def spy(self, inputs, lengths):
        seen.append(int(inputs.shape[-1]))
        return encode(self, inputs, lengths)

    monkeypatch.setattr(WhisperBackbone, "encode", spy)
    return seen

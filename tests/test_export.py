"""Export with the adapter merged: transformers (pipeline) and CTranslate2 (faster-whisper, --engine ct2)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import speechtl
from speechtl.checksums import sha256_file
from speechtl.cli.export import main as export_main
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.decoding import DecodeOptions
from speechtl.engines import Ct2Whisper
from speechtl.errors import SpeechtlError
from speechtl.exporting import export, verify_export
from speechtl.transfer import adapt

PLAIN = DecodeOptions.plain(max_new_tokens=20)


def _randomize(module, seed, scale=0.2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.1)
            else:
                p.normal_(0.0, scale)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random Whisper folder whose greedy output depends on the audio (large random weights)."""
    b = speechtl.create_backbone("whisper-tiny-random")
    _randomize(b.model, 0)
    # Only printable ASCII bytes may be decoded, so that transcripts compare as text in every runtime, and
    # no special token but the end (as the real models' generation configs suppress them).
    tok = b.tokenizer
    single = [tok.decode([i]) for i in range(256)]
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    b.model.generation_config.suppress_tokens = (
        [i for i, t in enumerate(single) if not (t.isascii() and t.isprintable())]
        + [i for i in range(256, len(tok)) if i != eot])
    folder = tmp_path_factory.mktemp("base") / "whisper"
    b.model.save_pretrained(folder)
    b.processor.save_pretrained(folder)
    b.processor.feature_extractor.save_pretrained(folder)
    return folder


def _adapter(base_dir, out, method="lora", **kw):
    m = adapt(speechtl.create_backbone(base_dir), method, **kw)
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking adapter weights: a zero-initialised one would change nothing
        for n, p in m.backbone.named_parameters():
            if p.requires_grad and ("lora_" in n or "ia3_" in n or "adapter" in n or "magnitude" in n):
                p.add_(0.3 * torch.randn_like(p))
    m.save_adapter(out)
    return m


@pytest.fixture(scope="module")
def lora(base_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    return _adapter(base_dir, folder, lora_r=4), folder


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.6, 1.3, 0.9, 2.0)]


def _logits(backbone, waves):
    feats, lens = backbone.prepare(waves)
    with torch.no_grad():
        return backbone.logits(feats, lens, ["hello there", "a b c", "yes", "no way home"])[0]


@pytest.mark.parametrize("method,kw", [("lora", {"lora_r": 4}), ("dora", {"lora_r": 4}), ("ia3", {})])
def test_transformers_export_merges_the_adapter_exactly(base_dir, tmp_path, waves, method, kw):
    m = _adapter(base_dir, tmp_path / "adapter", method, **kw)
    before = {p.name: sha256_file(p) for p in base_dir.iterdir()}
    out = export(None, tmp_path / "hf", adapter=tmp_path / "adapter")
    exported = speechtl.create_backbone(out)
    torch.testing.assert_close(_logits(exported, waves), _logits(m.backbone, waves), atol=2e-4, rtol=1e-4)
    assert not torch.allclose(_logits(speechtl.create_backbone(base_dir), waves), _logits(m.backbone, waves), atol=1e-2)
    assert {p.name: sha256_file(p) for p in base_dir.iterdir()} == before  # the base model is only read
    info = verify_export(out)
    assert info["adapter"]["method"] == method and info["export_format"] == "transformers"
    assert info["base_checksum"] == json.loads((tmp_path / "adapter" / "adapter.json").read_text())["base_checksum"]
    assert not (out / "adapter_config.json").exists()


def test_pipeline_on_the_export_gives_speechtls_transcripts(lora, tmp_path, waves):
    from transformers import pipeline

    model, adapter = lora
    out = speechtl.export(None, tmp_path / "hf", adapter=adapter)  # the public call
    ours = speechtl.transcribe(model, waves, decode_options=PLAIN)
    pipe = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    theirs = [o["text"].strip() for o in pipe([{"raw": w, "sampling_rate": 16000} for w in waves], batch_size=2,
                                              generate_kwargs={"num_beams": 1, "max_new_tokens": 20})]
    assert theirs == ours
    assert speechtl.transcribe(out, waves, decode_options=PLAIN) == ours


def test_ct2_export_decodes_like_pytorch_and_loads_in_faster_whisper(lora, tmp_path, waves):
    from faster_whisper import WhisperModel

    model, adapter = lora
    out = export(None, tmp_path / "ct2", adapter=adapter, format="ct2", quantization="float32")
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json", "checksums.json",
            "speechtl_export.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    feats, lens = model.prepare(waves)
    torch_h = model.decode(feats, lens, max_new_tokens=20)
    ct2 = Ct2Whisper(out)
    f2, l2 = ct2.prepare(waves)
    np.testing.assert_allclose(f2, feats.numpy(), atol=1e-6)
    ct2_h = ct2.decode(f2, l2, max_new_tokens=20)
    assert [h.text for h in ct2_h] == [h.text for h in torch_h]
    np.testing.assert_allclose([h.avg_logprob for h in ct2_h], [h.avg_logprob for h in torch_h], atol=2e-3)
    np.testing.assert_allclose([h.no_speech_prob for h in ct2_h], [h.no_speech_prob for h in torch_h], atol=1e-3)
    assert WhisperModel(str(out), device="cpu", compute_type="float32").model.is_multilingual is False
    assert speechtl.transcribe(out, waves, engine="ct2", decode_options=PLAIN) == speechtl.transcribe(
        model, waves, decode_options=PLAIN)


def test_int8_export_is_smaller_and_close(lora, tmp_path, waves):
    model, adapter = lora
    f32 = export(None, tmp_path / "f32", adapter=adapter, format="ct2", quantization="float32")
    i8 = export(None, tmp_path / "i8", adapter=adapter, format="ct2")  # int8 by default
    assert verify_export(i8)["quantization"] == "int8"
    assert (i8 / "model.bin").stat().st_size < 0.6 * (f32 / "model.bin").stat().st_size
    feats, lens = Ct2Whisper(f32).prepare(waves)
    b = Ct2Whisper(i8).decode(feats, lens, max_new_tokens=5)
    # A non-finite score (int8 saturating in this random model) must fail the thresholds, not pass them.
    assert all(h.avg_logprob <= 0 and not np.isnan(h.avg_logprob) for h in b)


def test_cli_exports_and_transcribes_with_the_ct2_engine(lora, tmp_path, waves, capsys):
    import soundfile as sf

    _, adapter = lora
    out = tmp_path / "ct2"
    assert export_main(["--adapter", str(adapter), "--format", "ct2", "--quantization", "float32",
                        "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.concatenate([np.zeros(8000, np.float32), waves[3]]), 16000)
    assert transcribe_main(["--engine", "ct2", str(out), str(clip), "--json", "--no-fallback", "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out)
    base = json.loads((adapter / "adapter.json").read_text())["base_model"]
    assert transcribe_main([base, str(clip), "--adapter", str(adapter), "--json", "--no-fallback",
                            "--no-progress"]) == 0
    torch_row = json.loads(capsys.readouterr().out)
    assert row["text"] == torch_row["text"] and row["segments"][0]["end"] == torch_row["segments"][0]["end"]
    # Overwriting needs the flag; with it the folder is replaced whole.
    assert export_main(["--adapter", str(adapter), "--format", "ct2", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert export_main(["--adapter", str(adapter), "--format", "ct2", "--out", str(out), "--overwrite"]) == 0
    assert verify_export(out)["quantization"] == "int8"


def test_refusals(base_dir, lora, tmp_path):
    _, adapter = lora
    bottleneck = tmp_path / "bn"
    _adapter(base_dir, bottleneck, "bottleneck")
    with pytest.raises(SpeechtlError, match="bottleneck adapters add modules.*train a LoRA adapter"):
        export(None, tmp_path / "o1", adapter=bottleneck, format="ct2")
    with pytest.raises(SpeechtlError, match="adapter was trained on"):
        export("whisper-tiny-random", tmp_path / "o2", adapter=adapter)
    with pytest.raises(SpeechtlError, match="format 'onnx'"):
        export(base_dir, tmp_path / "o3", format="onnx")
    with pytest.raises(SpeechtlError, match="quantization 'int4'"):
        export(base_dir, tmp_path / "o4", format="ct2", quantization="int4")
    with pytest.raises(SpeechtlError, match="ct2 format only"):
        export(base_dir, tmp_path / "o5", quantization="int8")
    with pytest.raises(SpeechtlError, match="holds Whisper models"):
        export("wav2vec2-tiny-random", tmp_path / "o6", format="ct2")
    before = {p.name: sha256_file(p) for p in base_dir.iterdir() if p.is_file()}
    for out in (base_dir, base_dir / "inside", adapter.parent):
        with pytest.raises(SpeechtlError, match="overlaps the (model|adapter) folder"):
            export(base_dir, out, adapter=adapter if out == adapter.parent else None, overwrite=True)
    assert {p.name: sha256_file(p) for p in base_dir.iterdir() if p.is_file()} == before
    assert not (base_dir / "inside").exists() and (adapter / "adapter.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o") or ".tmp" in p.name]


def test_cli_adapter_is_merged_for_transcription(lora, tmp_path, waves, monkeypatch, capsys):
    import soundfile as sf

    from speechtl.transfer import AdaptedModel

    model, adapter = lora
    merged = []
    real = AdaptedModel.merge_adapter
    monkeypatch.setattr(AdaptedModel, "merge_adapter", lambda self: (merged.append(self.method), real(self))[1])
    clip = tmp_path / "clip.wav"
    sf.write(clip, waves[1], 16000, subtype="FLOAT")
    base = json.loads((adapter / "adapter.json").read_text())["base_model"]
    assert transcribe_main([base, str(clip), "--adapter", str(adapter), "--no-fallback", "--no-progress"]) == 0
    assert merged == ["lora"]
    expected = speechtl.transcribe(model, waves[1], decode_options=DecodeOptions.plain())[0]
    assert capsys.readouterr().out.split("\t")[1].rstrip("\n") == expected


def test_a_wav2vec2_model_exports_to_transformers(tmp_path, waves):
    b = speechtl.create_backbone("wav2vec2-tiny-random")
    base = tmp_path / "w2v"
    b.model.save_pretrained(base)
    b.processor.save_pretrained(base)
    m = _adapter(base, tmp_path / "adapter", lora_r=2)
    out = export(None, tmp_path / "hf", adapter=tmp_path / "adapter")
    exported = speechtl.create_backbone(out)
    feats, lens = m.prepare(waves)
    with torch.no_grad():
        torch.testing.assert_close(exported.logits(feats, lens)[0], m.backbone.logits(feats, lens)[0],
                                   atol=2e-4, rtol=1e-4)
    assert speechtl.transcribe(out, waves) == speechtl.transcribe(m, waves)


def test_tampered_or_truncated_exports_are_refused(lora, tmp_path):
    _, adapter = lora
    hf = export(None, tmp_path / "hf", adapter=adapter)
    ct2 = export(None, tmp_path / "ct2", adapter=adapter, format="ct2")
    with open(hf / "model.safetensors", "r+b") as f:  # one flipped byte, same size
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(SpeechtlError, match="hf: the exported model was modified.*sha256 of model.safetensors.*"
                                            "export it again"):
        speechtl.create_backbone(hf)
    with open(ct2 / "model.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(SpeechtlError, match="ct2: the exported model was modified.*model.bin is 1000 bytes"):
        Ct2Whisper(ct2)
    with pytest.raises(SpeechtlError, match="not a CTranslate2 model folder.*transformers folder"):
        Ct2Whisper(export(None, tmp_path / "hf2", adapter=adapter))


@pytest.mark.slow
def test_packaged_tiny_en_runs_on_both_engines(shared_data):
    """The packaged CTranslate2 checkpoint as it ships (--engine ct2) against its PyTorch conversion."""
    import jiwer

    from speechtl.wer import get_normalizer

    rows = [json.loads(line) for line in (shared_data / "real" / "manifest.jsonl").read_text().splitlines()][:16]
    paths = [shared_data / "real" / r["audio"] for r in rows]
    norm = get_normalizer("whisper")
    refs = [norm(r["text"]) for r in rows]
    torch_wer = jiwer.wer(refs, [norm(h) for h in speechtl.transcribe("whisper-tiny.en", paths, progress=False)])
    ct2_wer = jiwer.wer(refs, [norm(h) for h in speechtl.transcribe("whisper-tiny.en", paths, engine="ct2")])
    assert abs(torch_wer - ct2_wer) <= 0.01, (torch_wer, ct2_wer)
    assert ct2_wer < 0.03, ct2_wer  # measured 1.8 % (4 errors in 227 words) on both engines


def test_a_damaged_adapter_is_refused_before_the_base_model_loads(lora, tmp_path, monkeypatch):
    import shutil

    _, adapter = lora
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    weights = copy / "adapter.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 7)
    monkeypatch.setattr(speechtl.backbones, "create_backbone", lambda *a, **k: pytest.fail("the base model loaded"))
    with pytest.raises(SpeechtlError, match=r"adapter.safetensors: \d+ bytes, but \d+ were saved"):
        export(None, tmp_path / "out", adapter=copy)
    assert not (tmp_path / "out").exists()
    info_sha = json.loads((adapter / "adapter.json").read_text())["files"]["adapter.safetensors"]["sha256"]
    assert info_sha == sha256_file(adapter / "adapter.safetensors")

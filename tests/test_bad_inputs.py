"""Bad input to every tool: one ``error: ...`` line naming the input and what to do, exit 2, nothing half-written.

Each case builds its inputs in ``tmp_path`` and runs a tool's ``main(argv)`` in-process (stderr
captured), on tiny random backbones, offline. The rule checked for every case:

- exit status 2;
- exactly one line of stderr starts with ``error: ``, and it names the input (and says what to do);
- no ``Traceback`` (unless ``--debug``, checked once);
- no partial output: the output path is absent (or holds only complete files) and no temp file is left.

A few inputs are not errors (another sample rate, stereo): the library resamples and downmixes,
as :func:`speechtl.audio.load_audio` documents; those cases check that the tools then work.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtl.cli import adapt as adapt_cli
from speechtl.cli import convert as convert_cli
from speechtl.cli import corpus as corpus_cli
from speechtl.cli import demo as demo_cli
from speechtl.cli import eval as eval_cli
from speechtl.cli import export as export_cli
from speechtl.cli import transcribe as transcribe_cli

TOOLS = {"transcribe": transcribe_cli.main, "corpus": corpus_cli.main, "adapt": adapt_cli.main,
         "eval": eval_cli.main, "convert": convert_cli.main, "demo": demo_cli.main, "export": export_cli.main}
MODEL = "whisper-tiny-random"
ADAPT_KEYS = ["--model", MODEL, "--method", "lora", "lora_r=2", "max_steps=2", "batch_seconds=1.0", "progress=false",
              "log_every=1", "checkpoint_every=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Inputs


def wav(path: Path, seconds: float = 0.5, rate: int = 16000, channels: int = 1, subtype: str | None = None,
        nan: bool = False) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    if nan:
        x[len(x) // 2] = np.nan
    if channels > 1:
        x = np.stack([x, 0.5 * x], axis=1)
    sf.write(path, x, rate, subtype=subtype)
    return path


def hours_long_flac(path: Path, hours: float = 3.0) -> Path:
    """One second of FLAC whose header says it lasts ``hours`` (what the length guard reads)."""
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    data = bytearray(path.read_bytes())
    # STREAMINFO follows "fLaC" and a 4-byte block header; its bytes 10-17 end with the 36-bit sample count.
    bits = int.from_bytes(data[18:26], "big")
    bits = (bits & ~((1 << 36) - 1)) | int(hours * 3600 * 16000)
    data[18:26] = bits.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def rows(tmp: Path, n: int = 4) -> list[dict]:
    """``n`` utterances of accents A and B with their clips (split train, the last dev)."""
    out = []
    for i in range(n):
        wav(tmp / f"u{i}.wav", seconds=0.4 + 0.05 * i)
        out.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": ["hello there", "yes sir", "go home", "no way"][i % 4],
                    "speaker": f"s{i % 2}", "accent": "AB"[i % 2], "split": "dev" if i == n - 1 else "train"})
    return out


def manifest(tmp: Path, lines: list[dict] | None = None, raw: bytes | None = None, name: str = "m.jsonl") -> Path:
    path = tmp / name
    path.write_bytes(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in lines).encode())
    return path


def broken_json(tmp: Path) -> Path:
    good = [json.dumps(r) for r in rows(tmp)]
    return manifest(tmp, raw=("\n".join([good[0], good[1][:-9], *good[2:]]) + "\n").encode())


def saved_wav2vec2_adapter(tmp: Path) -> Path:
    from speechtl.backbones import create_backbone
    from speechtl.transfer import adapt

    return adapt(create_backbone("wav2vec2-tiny-random"), "lora", lora_r=2).save_adapter(tmp / "w2v_adapter")


# --------------------------------------------------------------------------------------------
# Cases: (tool, argv built in tmp, words the error line must hold, outputs that must not exist)


@dataclass
class Case:
    tool: str
    argv: Callable[[Path], list[str]]
    says: tuple[str, ...]
    absent: tuple[str, ...] = ("out",)  # relative to tmp_path
    patch: Callable[[pytest.MonkeyPatch], None] | None = field(default=None)


def saved_whisper_adapter(tmp: Path, method: str = "lora") -> Path:
    from speechtl.backbones import create_backbone
    from speechtl.transfer import adapt

    return adapt(create_backbone(MODEL), method).save_adapter(tmp / f"{method}_adapter")


def exported(tmp: Path, damage: str) -> Path:
    """A ct2 export of the random Whisper, then damaged: ``truncate`` model.bin, ``flip`` a byte, ``drop`` a file."""
    from speechtl.exporting import export

    out = export(MODEL, tmp / "exported", format="ct2", quantization="float32")
    target = out / "model.bin"
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    elif damage == "flip":
        with open(target, "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0x40]))
    elif damage == "drop":
        (out / "tokenizer.json").unlink()
    elif damage == "garbage, unchecked":  # a folder speechtl did not write: nothing to verify it against
        for name in ("checksums.json", "speechtl_export.json"):
            (out / name).unlink()
        target.write_bytes(os.urandom(4096))
    return out


def hf_export(tmp: Path) -> Path:
    """A transformers export of the random Whisper, in ``tmp/hf``."""
    from speechtl.exporting import export

    return export(MODEL, tmp / "hf")


def hf_export_without_checksums(tmp: Path) -> Path:
    """A transformers export of the random Whisper whose ``checksums.json`` was removed."""
    out = hf_export(tmp)
    (out / "checksums.json").unlink()
    return out


def _adapt_into_the_model(tmp: Path) -> list[str]:
    model = hf_export(tmp)
    return ["--model", str(model), *ADAPT_KEYS[2:], "--train", str(manifest(tmp, rows(tmp))), "--out",
            str(model / "run")]


def _eval_into_the_adapter(tmp: Path) -> list[str]:
    adapter = saved_whisper_adapter(tmp)
    return ["--model", MODEL, "--adapter", str(adapter), "--manifest", str(manifest(tmp, rows(tmp))), "--out",
            str(adapter / "report"), "--n-bootstrap", "10", "--no-progress"]


def _ct2(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--engine", "ct2", str(make(tmp)), str(wav(tmp / "a.wav")), "--no-progress"]


def _export(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [*[str(x(tmp)) if callable(x) else x for x in extra], "--out", str(tmp / "out")]


def _transcribe(make: Callable[[Path], Path | str]) -> Callable[[Path], list[str]]:
    return lambda tmp: [MODEL, str(make(tmp)), "--no-progress"]


def _split(make: Callable[[Path], Path | str]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["split", str(make(tmp)), "--out", str(tmp / "out" / "split.jsonl")]


def _adapt(make: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [*ADAPT_KEYS, "--train", str(make(tmp)), "--out", str(tmp / "out"), *extra]


def _eval(make: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--model", MODEL, "--manifest", str(make(tmp)), "--out", str(tmp / "out"),
                        "--n-bootstrap", "10", "--no-progress", *extra]


def _missing_key(tmp: Path) -> Path:
    lines = rows(tmp)
    del lines[2]["speaker"]
    return manifest(tmp, lines)


def _duplicate_id(tmp: Path) -> Path:
    lines = rows(tmp)
    lines[3]["id"] = "u1"
    return manifest(tmp, lines)


def _not_utf8(tmp: Path) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(tmp)).encode()
    return manifest(tmp, raw=text.replace(b"yes sir", b"yes s\xe9r"))  # Latin-1, not UTF-8


def _empty_text(tmp: Path) -> Path:
    lines = rows(tmp)
    lines[1]["text"] = "   "
    return manifest(tmp, lines)


def _with_audio(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A good manifest whose second clip is replaced by ``make(tmp)``."""

    def build(tmp: Path) -> Path:
        lines = rows(tmp)
        lines[1]["audio"] = str(make(tmp))
        return manifest(tmp, lines)

    return build


def _nonempty_out(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("someone's notes")
    return tmp / "out"


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync fails as on a full disk (what an atomic writer sees after its write() calls)."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


def _disk_full_in_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up in the middle of writing the first checkpoint."""
    from speechtl import checkpoint as train

    class FullDisk:
        def __init__(self, f):
            self.f, self.room = f, 1000

        def write(self, data: bytes) -> int:
            self.room -= len(data)
            if self.room < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    real_init = train._HashingWriter.__init__

    def init(self, f) -> None:
        real_init(self, FullDisk(f))

    monkeypatch.setattr(train._HashingWriter, "__init__", init)


def _nan_loss_always(monkeypatch: pytest.MonkeyPatch) -> None:
    from speechtl.transfer import AdaptedModel

    monkeypatch.setattr(AdaptedModel, "asr_loss", lambda self, *a, **k: torch.tensor(float("nan")))


CASES: dict[str, Case] = {
    # speechtl-transcribe: one audio file
    "transcribe/corrupt audio": Case("transcribe", _transcribe(lambda t: _bytes(t / "bad.wav", os.urandom(3000))),
                                     ("bad.wav", "cannot decode audio", "re-export")),
    "transcribe/empty file": Case("transcribe", _transcribe(lambda t: _bytes(t / "empty.wav", b"")),
                                  ("empty.wav", "empty file (0 bytes)")),
    "transcribe/zero-length audio": Case("transcribe", _transcribe(lambda t: wav(t / "zero.wav", seconds=0)),
                                         ("zero.wav", "holds no samples", "remove it")),
    "transcribe/NaN samples": Case("transcribe", _transcribe(lambda t: wav(t / "nan.wav", subtype="FLOAT", nan=True)),
                                   ("nan.wav", "NaN", "re-export")),
    "transcribe/past the 4-hour limit": Case("transcribe",
                                             _transcribe(lambda t: hours_long_flac(t / "long.flac", hours=5.0)),
                                             ("long.flac", "18000.0 s long", "14400 s limit", "split it")),
    "transcribe/missing file": Case("transcribe", _transcribe(lambda t: t / "nowhere.wav"),
                                    ("nowhere.wav", "no such audio file", "check the path")),
    "transcribe/folder for a file": Case("transcribe", _transcribe(lambda t: _folder(t / "clips.wav")),
                                         ("clips.wav", "is not a file")),
    "transcribe/unknown model": Case("transcribe", lambda t: ["whisper-tinny", str(wav(t / "a.wav"))],
                                     ("whisper-tinny",)),
    "transcribe/adapter of another base model": Case(
        "transcribe", lambda t: [MODEL, str(wav(t / "a.wav")), "--adapter", str(saved_wav2vec2_adapter(t))],
        ("w2v_adapter", "wav2vec2-tiny-random", "load it on the model it was trained on")),
    "transcribe/ct2 export truncated": Case("transcribe", _ct2(lambda t: exported(t, "truncate")),
                                            ("exported", "modified, truncated", "model.bin is", "export it again")),
    "transcribe/ct2 export with a flipped byte": Case("transcribe", _ct2(lambda t: exported(t, "flip")),
                                                      ("exported", "sha256 of model.bin", "export it again")),
    "transcribe/ct2 export missing a file": Case("transcribe", _ct2(lambda t: exported(t, "drop")),
                                                 ("exported", "removed ['tokenizer.json']", "export it again")),
    "transcribe/ct2 folder with a garbage model.bin": Case(
        "transcribe", _ct2(lambda t: exported(t, "garbage, unchecked")),
        ("exported", "CTranslate2 cannot load this model", "export it again")),
    "transcribe/transformers export without its checksums": Case(
        "transcribe", lambda t: [str(hf_export_without_checksums(t)), str(wav(t / "a.wav")), "--no-progress"],
        ("hf", "checksums.json is missing", "export it again")),
    "transcribe/unknown engine": Case("transcribe", lambda t: ["--engine", "onnx", MODEL, str(wav(t / "a.wav"))],
                                      ("--engine onnx", "torch, ct2")),
    "transcribe/ct2 on a folder that is not CTranslate2": Case(
        "transcribe", _ct2(lambda t: _folder(t / "notes")), ("notes", "not a CTranslate2 model folder")),
    "transcribe/ct2 on a transformers folder": Case(
        "transcribe", _ct2(lambda t: __import__("speechtl.exporting", fromlist=["export"]).export(MODEL, t / "hf")),
        ("hf", "transformers folder", "--engine torch", "--format ct2")),
    "transcribe/ct2 with an adapter": Case(
        "transcribe", lambda t: [*_ct2(lambda t: "whisper-tiny.en")(t), "--adapter", str(saved_whisper_adapter(t))],
        ("ct2 engine runs exported models", "speechtl-export --adapter DIR --format ct2")),
    # speechtl-export
    "export/bottleneck adapter to ct2": Case(
        "export", _export("--adapter", lambda t: saved_whisper_adapter(t, "bottleneck"), "--format", "ct2"),
        ("bottleneck_adapter", "neither transformers nor CTranslate2", "train a LoRA adapter")),
    "export/adapter of another base": Case(
        "export", _export("--model", MODEL, "--adapter", saved_wav2vec2_adapter, "--format", "transformers"),
        ("w2v_adapter", "wav2vec2-tiny-random", "load it on the model it was trained on")),
    "export/unknown format": Case("export", _export("--model", MODEL, "--format", "onnx"),
                                  ("format 'onnx'", "transformers, ct2")),
    "export/unknown quantization": Case("export", _export("--model", MODEL, "--format", "ct2", "--quantization",
                                                          "int4"), ("quantization 'int4'", "int8, int8_float32")),
    "export/quantization for transformers": Case(
        "export", _export("--model", MODEL, "--format", "transformers", "--quantization", "int8"),
        ("applies to the ct2 format only",)),
    "export/not a folder speechtl can read": Case("export", _export("--model", "whisper-tinny", "--format", "ct2"),
                                                  ("whisper-tinny",)),
    "export/non-empty output folder": Case("export", lambda t: ["--model", MODEL, "--format", "ct2", "--out",
                                                                str(_nonempty_out(t))],
                                           ("out", "not empty", "--overwrite"), absent=("out/model.bin",)),
    # speechtl-corpus split: a manifest in, a manifest out
    "corpus/broken JSON": Case("corpus", _split(broken_json), ("m.jsonl:2", "not valid JSON", "one JSON object")),
    "corpus/missing field": Case("corpus", _split(_missing_key), ("m.jsonl:3", "missing required key 'speaker'")),
    "corpus/duplicate ids": Case("corpus", _split(_duplicate_id), ("m.jsonl:4", "'u1' repeats line 2", "unique")),
    "corpus/non-UTF-8 bytes": Case("corpus", _split(_not_utf8), ("m.jsonl:2", "not valid UTF-8", "re-save")),
    "corpus/missing manifest": Case("corpus", _split(lambda t: t / "none.jsonl"), ("none.jsonl", "no such manifest")),
    "corpus/folder for a manifest": Case("corpus", _split(lambda t: _folder(t / "m.jsonl")),
                                         ("m.jsonl", "is a folder", "give the path of a .jsonl manifest")),
    "corpus/disk full": Case("corpus", _split(lambda t: manifest(t, rows(t))),
                             ("split.jsonl", "No space left on device", "free disk space"), absent=("out/split.jsonl",),
                             patch=_disk_full),
    "corpus/synth into a non-empty folder": Case(
        "corpus", lambda t: ["synth", "--out", str(_nonempty_out(t)), "--accents", "us", "--per-accent", "1"],
        ("out", "not empty", "choose a new folder"), absent=("out/manifest.jsonl", "out/audio")),
    # speechtl-adapt
    "adapt/held-out accent absent": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "--target-accent", "C"),
                                         ("m.jsonl", "no utterance of accent 'C'", "accents there: A, B")),
    "adapt/unknown model": Case("adapt", lambda t: [*ADAPT_KEYS, "--model", "wav2vec3-tiny", "--train",
                                                    str(manifest(t, rows(t))), "--out", str(t / "out")],
                                ("wav2vec3-tiny",)),
    "adapt/broken JSON": Case("adapt", _adapt(broken_json), ("m.jsonl:2", "not valid JSON")),
    # A key the chosen method, head or task would silently ignore.
    "adapt/a LoRA key with method bottleneck": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "a.wav")), "--method", "bottleneck"),
        ("lora_r does not apply to method 'bottleneck'", "keys that do:", "bottleneck_dim")),
    "adapt/a classifier-head key on Whisper's own head": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "a.wav")), "head_pooling=stats"),
        ("head_pooling does not apply to method 'lora' with a backbone head", "keys that do:")),
    "adapt/an image batch key on speech": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "a.wav")), "batch_size=8"),
        ("batch_size does not apply to task 'asr'", "batch_seconds")),
    "adapt/a decoding key on accent-id": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "a.wav")), "--task", "accent-id", "beam_size=4"),
        ("beam_size does not apply to task 'accent-id'",)),
    "adapt/missing audio in manifest": Case("adapt", _adapt(_with_audio(lambda t: t / "gone.wav")),
                                            ("gone.wav", "no such audio file")),
    "adapt/NaN samples in training audio": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "nan.wav", subtype="FLOAT", nan=True))), ("nan.wav", "NaN"),
        absent=("out/checkpoints", "out/adapter")),
    "adapt/NaN samples read in a loader worker": Case(
        "adapt", _adapt(_with_audio(lambda t: wav(t / "nan.wav", subtype="FLOAT", nan=True)), "num_workers=1"),
        ("nan.wav", "NaN"), absent=("out/checkpoints", "out/adapter")),
    "adapt/NaN loss that persists": Case("adapt", _adapt(lambda t: manifest(t, rows(t))),
                                         ("5 batches in a row gave a non-finite loss", "lower lr"),
                                         absent=("out/checkpoints", "out/adapter"), patch=_nan_loss_always),
    "adapt/disk full in a checkpoint": Case("adapt", _adapt(lambda t: manifest(t, rows(t))),
                                            ("checkpoints/last.pt", "No space left on device", "free disk space"),
                                            absent=("out/checkpoints/last.pt", "out/adapter"),
                                            patch=_disk_full_in_checkpoint),
    "adapt/non-empty output folder": Case("adapt", lambda t: [*ADAPT_KEYS, "--train", str(manifest(t, rows(t))),
                                                              "--out", str(_nonempty_out(t))],
                                          ("out", "is not empty", "--overwrite"), absent=("out/config.yaml",)),
    "adapt/output inside the model folder": Case("adapt", _adapt_into_the_model,
                                                 ("hf/run", "overlaps the model folder", "a folder of its own"),
                                                 absent=("hf/run",)),
    "adapt/config is a folder": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "--config", "."),
                                     ("a folder, not a config file",), absent=("out/config.yaml",)),
    "adapt/setting out of range": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "log_every=0"),
                                       ("log_every=0", "must be at least 1"), absent=("out/config.yaml",)),
    "adapt/negative learning rate": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "lr=-1e-4"),
                                         ("lr=-0.0001", "must be > 0"), absent=("out/config.yaml",)),
    "adapt/Adam beta of 1": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "adam_betas=0.9,1.0"),
                                 ("adam_betas=0.9,1", "each value must be in [0, 1)"), absent=("out/config.yaml",)),
    "adapt/resume without a checkpoint": Case("adapt", _adapt(lambda t: manifest(t, rows(t)), "--resume"),
                                              ("checkpoints/last.pt", "start a new run")),
    # speechtl-eval
    "eval/held-out accent absent": Case("eval", _eval(lambda t: manifest(t, rows(t)), "--heldout-accents", "Z"),
                                        ("Z", "not in the evaluated utterances", "accents are: A, B")),
    "eval/missing manifest": Case("eval", _eval(lambda t: t / "none.jsonl"), ("none.jsonl", "no such manifest")),
    "eval/duplicate ids": Case("eval", _eval(_duplicate_id), ("m.jsonl:4", "repeats line 2")),
    "eval/corrupt audio in manifest": Case("eval", _eval(_with_audio(lambda t: _bytes(t / "bad.wav", b"RIFF..."))),
                                           ("bad.wav", "cannot decode audio")),
    "eval/output inside the adapter folder": Case("eval", _eval_into_the_adapter,
                                                  ("lora_adapter/report", "overlaps the adapter folder"),
                                                  absent=("lora_adapter/report",)),
    "eval/unknown model": Case("eval", lambda t: ["--model", "whisper-tinny", "--manifest", str(manifest(t, rows(t))),
                                                  "--out", str(t / "out")], ("whisper-tinny",)),
    # speechtl-demo
    "demo/non-empty output folder": Case("demo", lambda t: ["--out", str(_nonempty_out(t))],
                                         ("out", "not empty", "--overwrite"),
                                         absent=("out/synth", "out/manifest.jsonl")),
    # speechtl-adapt and speechtl-eval, continued
    "adapt/empty text": Case("adapt", _adapt(_empty_text), ("m.jsonl:2", "empty text")),
    "eval/non-empty output folder": Case("eval", lambda t: [*_eval(lambda t: manifest(t, rows(t)))(t)[:4],
                                                            "--out", str(_nonempty_out(t)), "--n-bootstrap", "10"],
                                         ("out", "not empty", "--overwrite"), absent=("out/report.json",)),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def check_one_error(code: int, err: str, says: tuple[str, ...]) -> str:
    """The rule for every bad input; returns the error line."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert len(errors) == 1, err
    for word in says:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert "Traceback" not in err, err
    return errors[0]


def no_partial_output(tmp: Path, absent: tuple[str, ...]) -> None:
    for rel in absent:
        assert not (tmp / rel).exists(), f"{rel} was left behind"
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line_and_exit_2(name, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    argv = case.argv(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    code = TOOLS[case.tool](argv)
    monkeypatch.undo()
    line = check_one_error(code, capsys.readouterr().err, case.says)
    print(f"{name}: {line}")  # the table in the report comes from `pytest -s`
    no_partial_output(tmp_path, case.absent)


def _api_cases() -> dict[str, tuple[Callable[[Path], object], str]]:
    from speechtl.adapters import load_adapter
    from speechtl.audio import load_audio
    from speechtl.backbones import create_backbone
    from speechtl.data.manifest import read_manifest

    return {
        "read_manifest/empty text for training": (lambda t: read_manifest(_empty_text(t), require_text=True),
                                                  "m.jsonl:2: u1: empty text; give the transcript"),
        "read_manifest/broken JSON": (lambda t: read_manifest(broken_json(t)), "m.jsonl:2: not valid JSON"),
        "load_audio/NaN samples": (lambda t: load_audio(wav(t / "n.wav", subtype="FLOAT", nan=True)),
                                   "n.wav: contains NaN"),
        "load_audio/three hours long": (lambda t: load_audio(hours_long_flac(t / "l.flac")), "l.flac: 10800.0 s long"),
        "create_backbone/unknown model": (lambda t: create_backbone("wav2vec2-tiny-randon"),
                                          "unknown model 'wav2vec2-tiny-randon'; did you mean wav2vec2-tiny-random"),
        "load_adapter/other base model": (lambda t: load_adapter(create_backbone(MODEL), saved_wav2vec2_adapter(t)),
                                          "trained on 'wav2vec2-tiny-random'"),
    }


@pytest.mark.parametrize("name", ["read_manifest/empty text for training", "read_manifest/broken JSON",
                                  "load_audio/NaN samples", "load_audio/three hours long",
                                  "create_backbone/unknown model", "load_adapter/other base model"])
def test_python_api_raises_speechtl_error_naming_the_input(name, tmp_path):
    from speechtl.errors import SpeechtlError

    call, says = _api_cases()[name]
    with pytest.raises(SpeechtlError) as caught:
        call(tmp_path)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such audio file"):
        transcribe_cli.main([MODEL, str(tmp_path / "nowhere.wav"), "--debug"])


# --------------------------------------------------------------------------------------------
# Inputs that are not errors: documented conversions


@pytest.mark.parametrize("kind", ["8 kHz", "stereo 44.1 kHz"])
def test_other_rates_are_resampled_and_stereo_is_downmixed(kind, tmp_path, capsys):
    from speechtl.audio import load_audio

    path = wav(tmp_path / "x.wav", seconds=1.0, rate=8000) if kind == "8 kHz" else \
        wav(tmp_path / "x.wav", seconds=1.0, rate=44100, channels=2)
    x = load_audio(path, 16000)
    assert x.shape == (16000,) and x.dtype == np.float32 and np.isfinite(x).all()
    assert transcribe_cli.main([MODEL, str(path), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}\t") and "error" not in err


def test_a_transient_nan_loss_skips_the_batch_with_one_warning(tmp_path, capsys, monkeypatch):
    from speechtl.transfer import AdaptedModel

    real, calls = AdaptedModel.asr_loss, []

    def nan_once(self, *args, **kwargs):
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 2 else real(self, *args, **kwargs)

    monkeypatch.setattr(AdaptedModel, "asr_loss", nan_once)
    code = adapt_cli.main([*ADAPT_KEYS, "--train", str(manifest(tmp_path, rows(tmp_path))), "--out",
                           str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warned == ["warning: step 2: non-finite loss or gradient, batch skipped (1 in a row)"], err
    assert json.loads((tmp_path / "out" / "result.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------------------------
# Packaged-model cache: an interrupted conversion, a modified cache



def test_killed_conversion_leaves_no_half_cache_and_the_next_run_rebuilds(fake_packaged, monkeypatch, capsys):
    from speechtl.convert import packaged

    real = packaged.write_whisper_folder

    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)  # the weights are written into the staging folder...
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the process is killed before the folder is published

    monkeypatch.setattr(packaged, "write_whisper_folder", write_then_die)
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        try:
            packaged.packaged_model_dir("whisper-fake")
        finally:
            os._exit(3)
    deadline = time.monotonic() + 120
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the conversion child did not finish in 120 s")
        time.sleep(0.05)
    status = done[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    monkeypatch.setattr(packaged, "write_whisper_folder", real)
    models = fake_packaged.parent
    assert not fake_packaged.exists()
    assert [p.name for p in models.iterdir() if p.name.endswith(".tmp")]  # the killed run's staging folder

    assert convert_cli.main(["packaged", "whisper-fake"]) == 0
    assert capsys.readouterr().out.strip() == str(fake_packaged)
    assert (fake_packaged / "checksums.json").is_file()
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == ["whisper-fake"]


def test_a_modified_cache_says_how_to_rebuild_it(fake_packaged, capsys):
    assert convert_cli.main(["packaged", "whisper-fake"]) == 0
    capsys.readouterr()
    weights = fake_packaged / "model.safetensors"
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:  # same size: only the sha256 notices
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    from speechtl import checksums

    checksums.forget_verified()  # as in a new process
    line = check_one_error(convert_cli.main(["packaged", "whisper-fake"]), capsys.readouterr().err,
                           (str(fake_packaged), "sha256 of model.safetensors changed", "rm -rf", "rebuilt"))
    print(line)


def test_convert_into_a_non_empty_folder_needs_overwrite(random_ct2, tmp_path, capsys):
    out = _nonempty_out(tmp_path)
    check_one_error(convert_cli.main(["ct2", str(random_ct2("float16")), str(out)]), capsys.readouterr().err,
                    (str(out), "not empty", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_wav_header_claiming_hours_is_measured_from_the_file(tmp_path):
    # A WAV header cannot mislead the guard: libsndfile counts the frames actually present.
    path = tmp_path / "claims.wav"
    claimed = 3 * 3600 * 16000 * 2
    header = (b"RIFF" + struct.pack("<I", 36 + claimed) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", claimed))
    path.write_bytes(header + np.zeros(16000, dtype="<i2").tobytes())
    from speechtl.audio import load_audio

    assert load_audio(path).shape == (16000,)

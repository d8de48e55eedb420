"""Accent identification: speechtl-adapt --task accent-id on a trivially separable synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtl.adapters import read_adapter_meta
from speechtl.backbones import create_backbone
from speechtl.cli.adapt import main
from speechtl.routing import (AccentClassifier, AccentIdReport, accent_id_scores, evaluate_accent_id,
                              load_accent_classifier)
from speechtl.transfer import adapt

# Accent "hum" is a 250 Hz tone, accent "hiss" white noise: far apart even for a random encoder
# (wav2vec2-tiny-random; a random Whisper's pooled states are dominated by its positional embeddings).
ACCENTS = ("hiss", "hum")


pytestmark = pytest.mark.usefixtures("one_thread")


def accent_clip(accent: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(16000 * seconds)
    if accent == "hiss":
        return (0.1 * rng.standard_normal(n)).astype(np.float32)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 250.0 * t + rng.uniform(0, 6)) + 0.02 * rng.standard_normal(n)).astype(np.float32)


def write_tone_manifest(folder, *, per_accent_speaker: int = 4, speakers: int = 4, dev_speaker: bool = True):
    """Clips of the two synthetic accents; the last speaker of each accent is the dev split."""
    rng = np.random.default_rng(0)
    rows = []
    for accent in ACCENTS:
        for s in range(speakers):
            split = "dev" if dev_speaker and s == speakers - 1 else "train"
            for k in range(per_accent_speaker):
                uid = f"{accent}-{s}-{k}"
                sf.write(folder / f"{uid}.wav", accent_clip(accent, rng.uniform(0.4, 0.8), rng), 16000)
                rows.append({"id": uid, "audio": f"{uid}.wav", "text": "a tone", "speaker": f"{accent}{s}",
                             "accent": accent, "split": split})
    path = folder / "tones.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One accent-id run on wav2vec2-tiny-random, shared by the tests below."""
    folder = tmp_path_factory.mktemp("accent_id")
    manifest = write_tone_manifest(folder)
    out = folder / "run"
    code = main(["--task", "accent-id", "--model", "wav2vec2-tiny-random", "--train", str(manifest), "--out", str(out),
                 "lr=1e-2", "max_steps=30", "eval_every=10", "batch_seconds=8", "log_every=1", "progress=false"])
    return code, out, manifest


def test_accent_id_trains_loss_falls_and_dev_accuracy_is_perfect(trained, capsys):
    code, out, manifest = trained
    assert code == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    scores = AccentIdReport.from_json(json.loads((out / "accent_id.json").read_text()))
    assert scores.accuracy == 1.0 and scores.recall == {"hiss": 1.0, "hum": 1.0}
    assert scores.confusion == [[4, 0], [0, 4]] and scores.labels == ["hiss", "hum"]

    meta = read_adapter_meta(out / "adapter")
    assert meta["method"] == "features" and meta["config"]["weighted_layers"] is True
    assert meta["config"]["head_pooling"] == "stats" and meta["config"]["head_norm"] is True
    assert meta["head"]["labels"] == ["hiss", "hum"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["task"] == "accent-id" and run_info["train_per_accent"] == {"hiss": 12, "hum": 12}


def test_saved_classifier_reloads_and_scores_the_same(trained):
    _, out, manifest = trained
    classifier = load_accent_classifier(out / "adapter")
    scores = evaluate_accent_id(classifier, manifest, splits=["dev"])
    assert scores.accuracy == 1.0 and scores.utterances == 8


@pytest.mark.parametrize("pooling,norm", [("mean", False), ("stats", True), ("stats", False)])
def test_whisper_classifier_pads_only_to_the_longest_clip(pooling, norm):
    """Short clips with a mask: a clip's probabilities do not depend on what it is batched with."""
    torch.manual_seed(0)
    model = adapt(create_backbone("whisper-tiny-random"), "features", labels=["hiss", "hum"], weighted_layers=True,
                  head_pooling=pooling, head_norm=norm)
    classifier = AccentClassifier.from_model(model)
    rng = np.random.default_rng(1)
    waves = [accent_clip("hum", 0.3, rng), accent_clip("hiss", 1.5, rng)]
    together = classifier.probabilities(waves, batch_size=2)
    alone = np.concatenate([classifier.probabilities([w]) for w in waves])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("pooling,norm", [("stats", True), ("mean", False)])
def test_classifier_on_a_shared_encoder_scores_as_its_own_copy(tmp_path, pooling, norm):
    """A saved head rebuilt on another object holding the same base weights gives the same probabilities;
    a folder saved before the pooling options existed loads as mean pooling without normalisation."""
    from speechtl.adapters.io import weights_checksum

    torch.manual_seed(0)
    model = adapt(create_backbone("wav2vec2-tiny-random"), "features", labels=["hiss", "hum"], weighted_layers=True,
                  head_pooling=pooling, head_norm=norm)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    own = AccentClassifier.from_model(model.eval())
    folder = model.save_adapter(tmp_path / "clf")
    if pooling == "mean":  # drop the keys, as in a folder written by an earlier version
        meta_path = folder / "adapter.json"
        meta = json.loads(meta_path.read_text())
        meta["config"].pop("head_pooling"), meta["config"].pop("head_norm"), meta.pop("meta_sha256")
        meta_path.write_text(json.dumps(meta))
    base = create_backbone("wav2vec2-tiny-random")
    shared = load_accent_classifier(folder, backbone=base, base_checksum=weights_checksum(base))
    assert shared.shared and shared.head.pooling == pooling and shared.head.normalize == norm
    rng = np.random.default_rng(2)
    waves = [accent_clip(a, 0.5, rng) for a in ACCENTS]
    np.testing.assert_allclose(shared.probabilities(waves), own.probabilities(waves), atol=1e-5)


def test_scores_recall_and_confusion_by_hand():
    r = accent_id_scores(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b"], speakers=["s1", "s1", "s2", "s3"])
    assert r.gold == ["a", "b", "c"] and r.confusion == [[1, 1], [0, 1], [1, 0]]
    assert r.recall == {"a": 0.5, "b": 1.0, "c": 0.0} and r.accuracy == 0.5
    assert r.speakers == {"s1": {"accent": "a", "utterances": 2, "correct": 1},
                          "s2": {"accent": "b", "utterances": 1, "correct": 1},
                          "s3": {"accent": "c", "utterances": 1, "correct": 0}}
    table = r.format_table()
    assert "recall %" in table and "speakers not always right (2 of 3): s1 (a) 1/2, s3 (c) 0/1" in table
    assert AccentIdReport.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_accent_id_cli_errors_are_one_line(tmp_path, capsys):
    rows = [{"id": f"u{i}", "audio": "x.wav", "text": "t", "speaker": "s", "accent": "only"} for i in range(2)]
    sf.write(tmp_path / "x.wav", np.zeros(1600, dtype=np.float32), 16000)
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["--task", "accent-id", "--model", "wav2vec2-tiny-random", "--train", str(path),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "at least two accents" in err


def test_accent_id_defaults_yield_to_what_the_user_set(tmp_path):
    from speechtl.cli.adapt import build_parser
    from speechtl.config import load_config
    from speechtl.recipes import accent_id

    def resolved(*argv):
        args = build_parser().parse_args(["--task", "accent-id", "--model", "m", "--train", "t", "--out", "o", *argv])
        fixed = {"method": args.method} if args.method else {}
        return load_config(args.config, args.overrides, **fixed).with_defaults(accent_id.DEFAULTS).adapt

    cfg = resolved()
    assert (cfg.method, cfg.weighted_layers, cfg.head) == ("features", True, "classifier")
    assert (cfg.head_pooling, cfg.head_norm) == ("stats", True)
    cfg = resolved("--method", "lora", "weighted_layers=false", "head_pooling=mean", "head_norm=false")
    assert (cfg.method, cfg.weighted_layers, cfg.head_pooling, cfg.head_norm) == ("lora", False, "mean", False)
    (tmp_path / "c.yaml").write_text("adapt:\n  method: finetune\n")
    assert resolved("--config", str(tmp_path / "c.yaml")).method == "finetune"

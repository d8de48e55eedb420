"""speechtl-eval end to end on a tiny real model: transcripts equal the Python API's, WER equals jiwer's, routes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

import speechtl
from speechtl.accent_id import AccentClassifier
from speechtl.backbones import create_backbone
from speechtl.cli.eval import main as eval_main
from speechtl.tasks import ClassificationTask
from speechtl.transfer import adapt
from speechtl.wer import get_normalizer

sys.path.insert(0, str(Path(__file__).parent))
from test_accent_id import accent_clip  # noqa: E402

MODEL = "wav2vec2-tiny-random"  # CTC: fast and deterministic
TEXTS = ["the cat sat", "a big red hat", "go home now", "see you", "near the old tree", "blue shoes"]
# Two speakers speak both synthetic accents: per-utterance routing splits them, speaker routing must not.
CLIPS = [("p1", "hiss"), ("p1", "hiss"), ("p2", "hum"), ("p2", "hum"), ("m1", "hiss"), ("m1", "hum"),
         ("m1", "hum"), ("m2", "hum"), ("m2", "hiss")]


pytestmark = pytest.mark.usefixtures("one_thread")


def random_lora(folder: Path, seed: int) -> Path:
    """A saved LoRA adapter with random A and B (a zero-initialised one would change nothing)."""
    model = adapt(create_backbone(MODEL), "lora", lora_r=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.save_adapter(folder / f"lora{seed}")


def saved_classifier(folder: Path, rng: np.random.Generator) -> Path:
    """A features-mode hiss/hum accent classifier fitted on fresh clips (full batch, Adam)."""
    torch.manual_seed(0)
    waves = [accent_clip(a, rng.uniform(0.4, 0.8), rng) for a in ("hiss", "hum") for _ in range(8)]
    accents = ["hiss"] * 8 + ["hum"] * 8
    model = adapt(create_backbone(MODEL), "features", labels=["hiss", "hum"], weighted_layers=True)
    task = ClassificationTask(model, ["hiss", "hum"])
    batch = task.collate([{"audio": w, "accent": a} for w, a in zip(waves, accents)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(40):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return AccentClassifier.from_model(model).model.save_adapter(folder / "classifier")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-cli")
    rng = np.random.default_rng(0)
    rows, paths = [], []
    for i, (speaker, accent) in enumerate(CLIPS):
        sf.write(folder / f"u{i}.wav", accent_clip(accent, 0.5 + 0.05 * i, rng), 16000)
        paths.append(folder / f"u{i}.wav")
        # The manifest's accent is the speaker's (one per speaker), as a corpus would label it.
        label = {"p1": "hiss", "p2": "hum", "m1": "hiss", "m2": "hum"}[speaker]
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": TEXTS[i % len(TEXTS)], "speaker": speaker,
                     "accent": label, "split": "test"})
    manifest = folder / "test.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapters = {"hiss": random_lora(folder, 1), "hum": random_lora(folder, 2)}
    return {"folder": folder, "manifest": manifest, "rows": rows, "paths": paths, "adapters": adapters,
            "classifier": saved_classifier(folder, rng)}


def run_eval(capsys, out: Path, *argv) -> tuple[str, list[dict], dict]:
    code = eval_main(["--model", MODEL, "--out", str(out), "--n-bootstrap", "50", "--no-progress", *map(str, argv)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    utts = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    return stdout, utts, json.loads((out / "report.json").read_text())


def jiwer_wer(refs: list[str], hyps: list[str]) -> float:
    norm = get_normalizer("whisper")
    return jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])


def test_eval_cli_transcribes_with_the_model_and_scores_like_jiwer(world, tmp_path, capsys):
    rows, paths = world["rows"], world["paths"]
    adapter = world["adapters"]["hum"]
    base_hyps = speechtl.transcribe(create_backbone(MODEL), paths, progress=False)
    adapted_hyps = speechtl.transcribe(create_backbone(MODEL), paths, adapter=adapter, progress=False)
    assert base_hyps != adapted_hyps  # the adapter changes what is recognised

    stdout, utts, _ = run_eval(capsys, tmp_path / "base", "--manifest", world["manifest"])
    assert [u["id"] for u in utts] == [r["id"] for r in rows]
    assert [u["hyp"] for u in utts] == base_hyps and [u["ref"] for u in utts] == [r["text"] for r in rows]
    for u in utts:
        assert u["wer"] == pytest.approx(jiwer_wer([u["ref"]], [u["hyp"]]))
    base_wer = {}
    for accent in ("hiss", "hum"):
        mine = [i for i, r in enumerate(rows) if r["accent"] == accent]
        base_wer[accent] = jiwer_wer([rows[i]["text"] for i in mine], [base_hyps[i] for i in mine])
        line = next(x for x in stdout.splitlines() if x.startswith(accent))
        assert f"{100 * base_wer[accent]:.2f}" in line, line
    report = speechtl.Report.load(tmp_path / "base")
    assert report.overall.wer == pytest.approx(jiwer_wer([r["text"] for r in rows], base_hyps))

    stdout, utts, _ = run_eval(capsys, tmp_path / "adapted", "--manifest", world["manifest"], "--adapter", adapter,
                               "--baseline", tmp_path / "base", "--target-accent", "hum")
    assert [u["hyp"] for u in utts] == adapted_hyps
    adapted = speechtl.Report.load(tmp_path / "adapted")
    comparison = json.loads((tmp_path / "adapted" / "comparison.json").read_text())
    for accent in ("hiss", "hum"):
        mine = [i for i, r in enumerate(rows) if r["accent"] == accent]
        wer = jiwer_wer([rows[i]["text"] for i in mine], [adapted_hyps[i] for i in mine])
        assert adapted.accents[accent].wer == pytest.approx(wer)
        change = next(a for a in comparison["accents"] if a["accent"] == accent)
        assert change["delta"] == pytest.approx(wer - base_wer[accent])
    hiss_rise = 100 * max(0.0, adapted.accents["hiss"].wer - base_wer["hiss"])  # the only non-target accent
    assert comparison["forgetting_points"] == pytest.approx(hiss_rise)
    assert f"forgetting: {hiss_rise:.2f} points" in stdout and "hum*" in stdout


def routed(world, *extra) -> list:
    specs = [f"{a}={d}" for a, d in world["adapters"].items()]
    return ["--manifest", world["manifest"], "--adapters", *specs, "--accent-classifier", world["classifier"], *extra]


def classifier_probs(world) -> np.ndarray:
    """The saved classifier's (hiss, hum) probabilities for each clip, from a copy loaded on its own."""
    clf = speechtl.load_accent_classifier(world["classifier"])
    probs = clf.probabilities([speechtl.load_audio(p) for p in world["paths"]])
    return probs[:, [clf.labels.index(a) for a in ("hiss", "hum")]]


def test_eval_cli_routes_each_speaker_to_one_adapter(world, tmp_path, capsys):
    paths, accents = world["paths"], ("hiss", "hum")
    alone = {a: speechtl.transcribe(create_backbone(MODEL), paths, adapter=d, progress=False)
             for a, d in world["adapters"].items()}
    probs = classifier_probs(world)
    _, per_utt, _ = run_eval(capsys, tmp_path / "utt", *routed(world))
    assert [u["route"] for u in per_utt] == [accents[i] for i in probs.argmax(1)]
    assert [u["route_prob"] for u in per_utt] == pytest.approx(probs.max(1), abs=1e-4)
    speakers = [u["speaker"] for u in per_utt]
    split = {s for s in speakers if len({u["route"] for u in per_utt if u["speaker"] == s}) > 1}
    assert split == {"m1", "m2"}  # alone, the utterances of the two mixed speakers go different ways

    stdout, utts, report = run_eval(capsys, tmp_path / "spk", *routed(world, "--route-by", "speaker"))
    for s in set(speakers):
        mine = [i for i, x in enumerate(speakers) if x == s]
        assert len({(utts[i]["route"], utts[i]["route_prob"]) for i in mine}) == 1, s
        # the speaker's evidence pooled: the class of the largest mean log-probability over its utterances
        pooled = np.log(np.clip(probs[mine], 1e-12, 1.0)).mean(0)
        assert utts[mine[0]]["route"] == accents[int(pooled.argmax())], s
    assert [u["hyp"] for u in utts] == [alone[u["route"]][i] for i, u in enumerate(utts)]
    assert report["meta"]["route_by"] == "speaker"
    counts = {a: sum(u["route"] == a for u in utts) for a in accents}
    assert "routes: " + ", ".join(f"{a} {n}" for a, n in counts.items() if n) in stdout


def test_eval_cli_soft_route_records_the_mixture_per_utterance(world, tmp_path, capsys):
    paths = world["paths"]
    _, utts, report = run_eval(capsys, tmp_path / "soft", *routed(world, "--soft-route"))
    probs = classifier_probs(world)
    for u, p in zip(utts, probs):
        weights = u["route_weights"]
        assert set(weights) == {"hiss", "hum"} and sum(weights.values()) == pytest.approx(1.0, abs=0.011)
        assert [weights["hiss"], weights["hum"]] == pytest.approx(p, abs=0.011)
        assert u["route"] == max(weights, key=weights.get) and u["route_prob"] == pytest.approx(p.max(), abs=1e-4)
    expected = speechtl.transcribe(create_backbone(MODEL), paths, adapters=world["adapters"],
                                   accent_classifier=world["classifier"], soft=True, progress=False)
    assert [u["hyp"] for u in utts] == expected
    assert report["meta"]["soft_route"] is True
    # Where the classifier hesitates the mixture is neither adapter: the weights were applied, not just the top one.
    mixed = [i for i, u in enumerate(utts) if min(u["route_weights"].values()) >= 0.1]
    assert mixed
    alone = {a: speechtl.transcribe(create_backbone(MODEL), [paths[i] for i in mixed], adapter=d, progress=False)
             for a, d in world["adapters"].items()}
    for k, i in enumerate(mixed):
        assert utts[i]["hyp"] not in (alone["hiss"][k], alone["hum"][k])

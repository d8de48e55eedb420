"""speechtl-demo's success path, small: synthetic accents only, a tiny random CTC model, two LoRA steps."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from speechtl.cli.demo import main as demo_main

HAVE_TTS = all(shutil.which(b) for b in ("sox", "espeak-ng", "mbrola", "pico2wave")) and any(
    Path("/usr/share/wordnet").glob("data.*"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TTS, reason="Debian TTS voices and wordnet-base not installed (corpora/install_tts.sh)")
@pytest.mark.usefixtures("one_thread")
def test_demo_runs_end_to_end_on_synthetic_accents(tmp_path, capsys):
    out = tmp_path / "demo"
    code = demo_main(["--out", str(out), "--model", "wav2vec2-tiny-random", "--native-clips", "10", "--target-clips",
                      "24", "--heldout-clips", "3", "--max-steps", "2", "--classifier-epochs", "1",
                      "--synthetic-only", "--shared-data", str(tmp_path / "none")])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((out / "demo.json").read_text())
    assert summary["mode"] == "synthetic" and summary["target_accent"] == "german"
    accents = {a["accent"]: a for a in summary["accents"]}
    assert set(accents) == {"german", "us", "gb", "scottish"}
    assert accents["german"]["target"] and accents["scottish"]["heldout"] and accents["scottish"]["utterances"] == 3
    assert not accents["us"]["heldout"] and not accents["gb"]["heldout"]
    # The test set is what the three systems were scored on, and no test speaker trained anything.
    test = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(test) == summary["data"]["test"] == sum(a["utterances"] for a in accents.values())
    trained = {json.loads(line)["speaker"] for name in ("target.jsonl", "accent_id.jsonl")
               for line in (out / name).read_text().splitlines()}
    assert trained and not trained & {r["speaker"] for r in test}
    clf = Counter((json.loads(line)["accent"], json.loads(line)["split"])
                  for line in (out / "accent_id.jsonl").read_text().splitlines())
    assert set(clf) == {("german", "train"), ("native", "train"), ("german", "dev"), ("native", "dev")}
    for a in accents.values():
        for system in ("zero-shot", "LoRA", "routed"):
            assert 0 <= a[system] <= 5, (a["accent"], system)
        assert sum(a["routes"].values()) == a["utterances"] and set(a["routes"]) <= {"german", "base"}
    # Routed per speaker: a speaker's utterances all take one route.
    meta = json.loads((out / "routed" / "report.json").read_text())["meta"]
    assert meta["route_by"] == "speaker" and meta["min_prob"] == 0.6
    by_speaker: dict[str, set] = {}
    for line in (out / "routed" / "utterances.jsonl").read_text().splitlines():
        u = json.loads(line)
        by_speaker.setdefault(u["speaker"], set()).add(u["route"])
    assert all(len(r) == 1 for r in by_speaker.values())
    for name in ("wer_per_accent.png", "demo.md", "compare-lora/comparison.json", "compare-routed/comparison.md",
                 "adapter-run/adapter/adapter.json", "accent-id-run/adapter/adapter.json", "zero-shot/report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "adapter-run" / "result.json").read_text())["steps"] == 2  # --max-steps reached
    md = (out / "demo.md").read_text()
    assert "| german* |" in md and "| scottish† |" in md and "LoRA WER %" in md and "routed WER %" in md
    assert "== 6/6" in stdout and "routes:" in stdout and f"plot: {out / 'wer_per_accent.png'}" in stdout
    # Run again into the same folder: refused without --overwrite, which keeps the synthesised audio.
    assert demo_main(["--out", str(out), "--synthetic-only"]) == 2
    assert "--overwrite" in capsys.readouterr().err

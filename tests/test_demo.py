"""speechtl-demo's success path, small: synthetic accents only, a tiny CTC model, two LoRA steps."""

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
    code = demo_main(["--out", str(out), "--model", "wav2vec2-tiny-random", "--per-accent", "6",
                      "--max-steps", "2", "--synthetic-only", "--shared-data", str(tmp_path / "none")])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    accents = {"us", "gb", "scottish", "german", "french", "russian"}
    assert {r["accent"] for r in rows} == accents and len(rows) == 6 * 6  # synthetic only: no real corpora
    splits = Counter((r["accent"], r["split"]) for r in rows)
    assert splits[("russian", "test_heldout")] == 6 and all(splits[(a, "test")] >= 1 for a in accents - {"russian"})
    for name in ("zero-shot/report.json", "adapted/report.json", "comparison/comparison.md",
                 "comparison/comparison.json", "comparison/wer_vs_baseline.png", "adapter-run/adapter/adapter.json"):
        assert (out / name).is_file(), name
    comparison = json.loads((out / "comparison" / "comparison.json").read_text())
    assert comparison["target_accent"] == "german" and comparison["base_model"] == "wav2vec2-tiny-random"
    assert {a["accent"] for a in comparison["accents"]} == accents
    adapted = json.loads((out / "adapted" / "report.json").read_text())["meta"]
    assert adapted["adapter"].endswith("adapter-run/adapter") and adapted["heldout_accents"] == ["russian"]
    assert json.loads((out / "adapter-run" / "result.json").read_text())["steps"] == 2  # --max-steps reached
    assert "== 4/4" in stdout and "german*" in stdout and "russian†" in stdout and "report:" in stdout
    # Run again into the same folder: refused without --overwrite, which keeps the synthesised audio.
    assert demo_main(["--out", str(out), "--synthetic-only"]) == 2
    assert "--overwrite" in capsys.readouterr().err

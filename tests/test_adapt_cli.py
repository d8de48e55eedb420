"""speechtl-adapt end to end on a tiny synthetic manifest."""

from __future__ import annotations

import json

import pytest
import yaml

from speechtl.adapters import load_adapter, read_adapter_meta
from speechtl.backbones import create_backbone
from speechtl.cli.adapt import main
from speechtl.plots import read_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def manifest(tone_manifest):
    """Five short tone clips: four of accent A (one of them dev), one of accent B."""
    return tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("go home", "A", "train"),
                          ("no way", "B", "train"), ("see you", "A", "dev")], speaker=lambda i: f"s{i % 2}")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


BASE = ["--model", "whisper-tiny-random", "--method", "lora", "--target-accent", "A"]
KEYS = ["lr=1e-2", "log_every=1", "batch_seconds=1.5", "eval_every=2", "progress=false", "lora_r=4"]


def test_adapt_writes_config_adapter_metrics_and_prints_dev_wer(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *BASE, "--train", manifest, "--out", out, *KEYS, "max_steps=2")
    assert code == 0, err
    assert "final dev WER:" in stdout and "best at step 2 of 2" in stdout
    assert "lora" in err and "parameters train" in err  # the model summary

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["adapt"]["method"] == "lora" and cfg["adapt"]["lora_r"] == 4 and cfg["train"]["max_steps"] == 2
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["train_utterances"] == 3 and run_info["dev_utterances"] == 1  # only accent A
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert any("eval" in m and "wer" in m["eval"] for m in metrics)
    _, evals = read_metrics(out / "metrics.jsonl")  # what speechtl-eval --metrics plots
    assert [e["step"] for e in evals] == [2] and 0.0 <= evals[0]["dev_wer"]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 2 and 0.0 <= result["best_metric"]

    meta = read_adapter_meta(out / "adapter")
    assert meta["target_accent"] == "A" and meta["method"] == "lora" and meta["dev_wer"] == result["best_metric"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # written through temp files, yet with the usual permissions (not the temp files' 0600)
    for path in (out / "adapter", out / "adapter" / "adapter.safetensors", out / "config.yaml",
                 out / "checkpoints" / "last.pt"):
        assert path.stat().st_mode & 0o044, path
    model = load_adapter(create_backbone("whisper-tiny-random"), out / "adapter")
    assert model.num_trainable() == run_info["trainable_parameters"]

    # The folder is now taken: refused, then replaced with --overwrite, or continued with --resume.
    code, _, err = run(capsys, *BASE, "--train", manifest, "--out", out, *KEYS, "max_steps=2")
    assert code == 2 and "is not empty; pass --overwrite" in err
    code, stdout, err = run(capsys, *BASE, "--train", manifest, "--out", out, "--resume", *KEYS, "max_steps=4")
    assert code == 0, err
    assert "of 4)" in stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]
    code, _, err = run(capsys, *BASE, "--train", manifest, "--out", out, "--resume", *KEYS, "lora_r=8")
    assert code == 2 and "different adapt.lora_r" in err
    # --overwrite with a run that cannot start (a missing manifest, a key that does not apply, a precision or
    # device this machine lacks) keeps the old run.
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for bad, says in ((["--train", tmp_path / "missing.jsonl", *KEYS], "missing.jsonl"),
                      (["--train", manifest, *KEYS, "bottleneck_dim=8"], "bottleneck_dim"),
                      (["--train", manifest, *KEYS, "precision=fp16", "device=cpu"], "precision=fp16 needs a CUDA"),
                      (["--train", manifest, *KEYS, "device=cuda:99"], "device=cuda:99: this machine has"),
                      (["--train", manifest, *KEYS, "device=gpu"], "device=gpu: not a device")):
        code, _, err = run(capsys, *BASE, "--out", out, "--overwrite", *bad)
        assert code == 2 and says in err, err
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    for damaged in ("adapt: [unclosed\n", "- a list\n", "adapt: 3\n"):  # one error naming the file, no traceback
        (out / "config.yaml").write_text(damaged)
        code, _, err = run(capsys, *BASE, "--train", manifest, "--out", out, "--resume", *KEYS, "max_steps=4")
        assert code == 2 and "config.yaml: not the config an interrupted run saved" in err, err
        assert "Traceback" not in err


def test_adapt_cli_errors(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, *BASE, "--train", manifest, "--out", out, "lora_rank=4")
    assert code == 2 and err.startswith("error: command line: unknown config key 'lora_rank'; did you mean lora_r")
    code, _, err = run(capsys, *BASE[:-1], "C", "--train", manifest, "--out", out)
    assert code == 2 and "no utterance of accent 'C'; accents there: A, B" in err
    code, _, err = run(capsys, *BASE, "--train", manifest, "--out", out, "--resume")
    assert code == 2 and "no checkpoints/last.pt" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run(capsys, *BASE, "--train", manifest, "--out", tmp_path / "mine", "--overwrite")
    assert code == 2 and "does not look like a speechtl-adapt output" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit):
        main(["--help-config"])
    assert "lora_alpha = 16.0" in capsys.readouterr().out


def test_progress_false_also_silences_the_model_loading_bar(tmp_path, manifest, capsys):
    folder = tmp_path / "whisper"
    b = create_backbone("whisper-tiny-random")
    b.model.save_pretrained(folder)
    b.processor.save_pretrained(folder)
    capsys.readouterr()  # the saving's own bar
    argv = ["--model", folder, "--method", "lora", "--train", manifest, *KEYS[:-2], "lora_r=4", "max_steps=1"]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "quiet", "progress=false")
    assert code == 0, err
    assert "Loading weights" not in err
    code, _, err = run(capsys, *argv, "--out", tmp_path / "shown", "progress=true")
    assert code == 0, err
    assert "Loading weights" in err  # transformers' own bar, as the folder loads

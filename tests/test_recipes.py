"""Recipes: the run speechtl-adapt trains is the one the Python API builds; config keys keep their promise."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speechtl import recipes
from speechtl.cli.adapt import main
from speechtl.config import load_config
from speechtl.errors import SpeechtlError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def manifest(tone_manifest):
    """Six short tone clips of two accents; one of each accent is dev."""
    return tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("go home", "B", "train"),
                          ("no way", "B", "train"), ("see you", "A", "dev"), ("all right", "B", "dev")])


KEYS = ["lr=1e-2", "log_every=1", "batch_seconds=1.5", "eval_every=2", "progress=false", "lora_r=4", "max_steps=2"]


def test_the_command_trains_exactly_the_recipe_run(tmp_path, manifest, capsys):
    code = main(["--model", "whisper-tiny-random", "--method", "lora", "--train", str(manifest),
                 "--out", str(tmp_path / "cli"), *KEYS])
    assert code == 0, capsys.readouterr().err
    api = recipes.run(recipes.RunInputs("whisper-tiny-random", str(manifest)), load_config(None, KEYS, method="lora"),
                      tmp_path / "api")
    a = load_file(tmp_path / "cli" / "adapter" / "adapter.safetensors")
    b = load_file(api.adapter / "adapter.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # The trained weights moved: a recipe that built but did not train would also agree with itself.
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    assert api.summary["steps"] == 2 and json.loads((tmp_path / "cli" / "result.json").read_text())["steps"] == 2


def test_recipe_batches_hold_at_most_batch_seconds_of_the_selected_accent(manifest):
    cfg = load_config(None, ["batch_seconds=1.5", "progress=false"], method="lora")
    run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest), target_accent="B"), cfg)
    assert run.recipe == "asr" and run.summary["train_utterances"] == 2 and run.summary["dev_utterances"] == 1
    seen = []
    for batch in run.loader:
        seen += batch["ids"]
        assert batch["lengths"].numel() >= 1
    assert sorted(seen) == ["u2", "u3"]  # accent B's train clips, each once per epoch
    assert sum(len(b["ids"]) for b in run.loader) == 2
    assert run.dev_fn is not None


def test_saved_config_lists_the_keys_the_user_set(tmp_path, manifest, capsys):
    out = tmp_path / "run"
    code = main(["--model", "whisper-tiny-random", "--task", "accent-id", "--train", str(manifest), "--out", str(out),
                 "max_steps=1", "progress=false", "head_pooling=mean", "batch_seconds=2"])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["set_by_user"] == ["batch_seconds", "head_pooling", "max_steps", "progress"]
    # The recipe's defaults fill what the user left, and never what they set.
    assert saved["adapt"]["method"] == "features" and saved["adapt"]["head_norm"] is True
    assert saved["adapt"]["head_pooling"] == "mean"
    again = load_config(out / "config.yaml")
    assert again.user_keys == {"batch_seconds", "head_pooling", "max_steps", "progress"}
    assert again.to_dict() == {k: v for k, v in saved.items() if k != "set_by_user"}


@pytest.mark.parametrize("argv, fragment", [
    (["--method", "bottleneck", "lora_r=4"], "lora_r does not apply to method 'bottleneck'"),
    (["--method", "lora", "bottleneck_dim=8", "top_n_layers=2"],
     "bottleneck_dim, top_n_layers do not apply to method 'lora'"),
    (["--method", "finetune", "target_modules=q_proj"], "target_modules does not apply to method 'finetune'"),
    (["--method", "lora", "head_pooling=stats"],
     "head_pooling does not apply to method 'lora' with a backbone head on task 'asr'"),
    (["--method", "features", "head_pooling=stats"], "with a ctc head"),
    (["--method", "lora", "batch_size=8"], "batch_size does not apply to task 'asr'"),
    (["--task", "accent-id", "beam_size=4"], "beam_size does not apply to task 'accent-id'"),
    (["--task", "accent-id", "labels=a,b"], "labels does not apply"),
])
def test_a_key_the_run_would_ignore_is_one_error_line(tmp_path, manifest, capsys, argv, fragment):
    code = main(["--model", "whisper-tiny-random", "--train", str(manifest), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err and "keys that do:" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_foreign_keys_from_a_yaml_file_are_refused_too(tmp_path, manifest):
    (tmp_path / "c.yaml").write_text("adapt:\n  method: ia3\n  lora_alpha: 8\n")
    cfg = load_config(tmp_path / "c.yaml")
    with pytest.raises(SpeechtlError, match="lora_alpha does not apply to method 'ia3'"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)


def test_keys_left_at_their_default_never_count_as_set(manifest):
    cfg = load_config(None, ["lr=1e-3"], method="bottleneck")
    assert cfg.user_keys == {"lr", "method"} and cfg.adapt.lora_r == 8  # lora_r's default is not an error
    run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)
    assert run.model.method == "bottleneck"

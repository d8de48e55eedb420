"""Recipes: the run speechtl-adapt trains is the one the Python API builds; config keys keep their promise."""

from __future__ import annotations

import json
import re

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


# -- the recipe's model defaults -------------------------------------------------------------------


def _resolved(cfg) -> dict:
    return {k: v for section in cfg.to_dict().values() for k, v in section.items()}


def _as_keys(settings: dict) -> list[str]:
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={text(v)}" for k, v in settings.items()]


def test_bare_whisper_lora_run_trains_with_the_searched_defaults(manifest):
    from speechtl.recipes import asr
    from speechtl.transfer import injection_report

    run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)),
                        load_config(None, ["progress=false"], method="lora"))
    resolved = _resolved(run.config)
    chosen = asr.WHISPER_DEFAULTS["lora"]
    assert chosen, "Whisper's LoRA defaults are empty"
    # The bare command resolves to exactly the config of a user who typed every default out.
    typed = load_config(None, ["progress=false", *_as_keys(chosen)], method="lora")
    assert resolved == _resolved(typed)
    assert resolved != _resolved(load_config(None, ["progress=false"], method="lora"))
    # The optimiser and the adapters are the ones the config names, not only the saved config.
    assert run.train_config.lr == resolved["lr"]
    replaced = injection_report(run.model).replaced
    targets = resolved["target_modules"] or ["q_proj", "v_proj"]
    assert {name.rsplit(".", 1)[-1] for name in replaced} == set(targets)
    assert "lr" not in run.config.user_keys  # a default, not a key the user set


def test_keys_the_user_sets_win_over_whisper_defaults(manifest):
    from speechtl.transfer import injection_report

    cfg = load_config(None, ["lr=5e-4", "target_regex=.*decoder.*fc1", "progress=false"], method="lora")
    run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)
    assert run.train_config.lr == 5e-4
    # Placing the adapters yourself replaces the default placement instead of adding to it.
    assert run.config.adapt.target_modules == []
    replaced = injection_report(run.model).replaced
    assert replaced and all("decoder" in n and n.endswith("fc1") for n in replaced)


def test_wav2vec2_runs_do_not_get_whisper_defaults(tone_manifest):
    from speechtl.config import TrainConfig

    m = tone_manifest([("hello there", "A", "train"), ("go home", "A", "train")])
    run = recipes.build(recipes.RunInputs("wav2vec2-tiny-random", str(m)), load_config(None, ["progress=false"],
                                                                                       method="lora"))
    assert run.train_config.lr == TrainConfig().lr and run.config.adapt.target_modules == []


def test_whisper_defaults_are_the_setting_the_committed_search_chose():
    from pathlib import Path

    from speechtl.recipes import asr

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "adapt_search.json"
    result = json.loads(path.read_text())
    row = next(r for r in result["rows"] if r["setting"] == result["chosen_by_dev"])
    assert row["method"] == "lora"
    # The winner's keys on top of the defaults the search ran with: what a bare command now resolves to.
    winner = load_config(None, [*_as_keys(row["lora"]["defaults"]), *row["keys"]], method="lora")
    assert _resolved(load_config(None, _as_keys(asr.WHISPER_DEFAULTS["lora"]), method="lora")) == _resolved(winner)


def test_a_transcript_longer_than_whispers_decoder_takes_is_an_error_naming_it(tone_manifest, capsys):
    long = " ".join(["word"] * 200)  # the tiny model's decoder takes 128 tokens
    manifest = tone_manifest([("hello there", "A", "train"), (long, "A", "train"), ("go home", "A", "dev")])
    cfg = load_config(None, ["progress=false"], method="lora")
    with pytest.raises(SpeechtlError, match=r"all.jsonl: 1 training transcript\(s\) longer than .* the first id 'u1' "
                                            r"\(\d+ tokens\); split those clips"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)
    # The same line through the command: one error line, no traceback.
    assert main(["--model", "whisper-tiny-random", "--train", str(manifest), "--out", str(manifest.parent / "o"),
                 "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "first id 'u1'" in err and "Traceback" not in err
    # A CTC head reads no decoder: the same manifest builds.
    recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), load_config(None, ["progress=false"],
                                                                                       method="features"))
    # Dev transcripts are only scored against what the model decodes: any length builds.
    scored = tone_manifest([("hello there", "A", "train"), ("go home", "A", "train"), (long, "A", "dev")])
    assert recipes.build(recipes.RunInputs("whisper-tiny-random", str(scored)), cfg).summary["dev_utterances"] == 1
    # Replay lines train the decoder too.
    replay = scored.parent / "replay.jsonl"
    replay.write_text(json.dumps({"id": "r0", "audio": "u0.wav", "text": long, "speaker": "n", "accent": "N"}) + "\n")
    keys = ["progress=false", f"replay_manifest={replay}", "replay_fraction=0.3"]
    with pytest.raises(SpeechtlError, match=r"replay.jsonl: 1 training transcript\(s\) longer than .* id 'r0'"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(scored)), load_config(None, keys, method="lora"))


@pytest.mark.parametrize("model,method", [("wav2vec2-tiny-random", "lora"), ("whisper-tiny-random", "features")])
def test_a_ctc_transcript_with_no_letter_of_the_alphabet_is_an_error_before_training(tone_manifest, model, method):
    # "20 19" has no letter of a CTC model's alphabet, only a word delimiter: its target would be that delimiter,
    # or its loss would fail when its batch came up.
    manifest = tone_manifest([("hello there", "A", "train"), ("20 19", "A", "train"), ("go home", "A", "dev")])
    cfg = load_config(None, ["progress=false"], method=method)
    with pytest.raises(SpeechtlError, match=r"all.jsonl: 1 training transcript\(s\) have no character of the CTC "
                                            r"model's alphabet, the first id 'u1' \('20 19'\)"):
        recipes.build(recipes.RunInputs(model, str(manifest)), cfg)
    # Spelt out, the line trains; a dev line is only scored, so its digits need no letters.
    fine = tone_manifest([("hello there", "A", "train"), ("twenty nineteen", "A", "train"), ("2019", "A", "dev")])
    assert recipes.build(recipes.RunInputs(model, str(fine)), cfg).summary["train_utterances"] == 2


def test_whisper_decoding_keys_on_a_ctc_model_are_refused_not_ignored(tone_manifest):
    import speechtl

    manifest = tone_manifest([("hello there", "A", "train"), ("go home", "A", "dev")])
    for keys, says in ((["beam_size=4"], "beam_size does not apply to wav2vec2-tiny-random (its CTC dev decoding "
                                         "is greedy); remove it"),
                       (["short_clips=false", "dev_short_clips=true"],
                        "dev_short_clips, short_clips do not apply to wav2vec2-tiny-random (they pad Whisper's "
                        "30-s input); remove them")):
        with pytest.raises(SpeechtlError, match=re.escape(says)):
            recipes.build(recipes.RunInputs("wav2vec2-tiny-random", str(manifest)),
                          load_config(None, ["progress=false", *keys], method="lora"))
    # A CTC head on Whisper's encoder reads its padding, but decodes greedily.
    with pytest.raises(SpeechtlError, match="beam_size does not apply to whisper-tiny-random"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)),
                      load_config(None, ["progress=false", "beam_size=2"], method="features"))
    assert recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)),
                         load_config(None, ["progress=false", "short_clips=false"], method="features"))
    # SpecAugment's sizes with SpecAugment off (a CTC model's default) would be ignored too.
    with pytest.raises(SpeechtlError, match="specaug_time_masks shape SpecAugment, which is off in this run"):
        recipes.build(recipes.RunInputs("wav2vec2-tiny-random", str(manifest)),
                      load_config(None, ["progress=false", "specaug_time_masks=4"], method="lora"))
    assert recipes.build(recipes.RunInputs("wav2vec2-tiny-random", str(manifest)),
                         load_config(None, ["progress=false", "specaug=true", "specaug_time_masks=4"], method="lora"))
    # Transcription and evaluation say so too, instead of reporting a beam search that never ran.
    clip = str(manifest.parent / "u0.wav")
    with pytest.raises(SpeechtlError, match="beam_size=3: a CTC model"):
        speechtl.transcribe("wav2vec2-tiny-random", [clip], beam_size=3)
    assert len(speechtl.transcribe("wav2vec2-tiny-random", [clip], beam_size=1)) == 1
    # So do Whisper's fallback settings, which a CTC model has nothing to apply to; the defaults and the
    # plain options (--no-fallback) are what it runs anyway.
    from speechtl.decoding import DecodeOptions

    for opts, says in ((DecodeOptions(logprob_threshold=-2.0), "logprob_threshold: Whisper's fallback settings"),
                       (DecodeOptions(temperatures=(0.0, 0.5), best_of=2), "temperatures, best_of: Whisper's")):
        with pytest.raises(SpeechtlError, match=re.escape(says)):
            speechtl.transcribe("wav2vec2-tiny-random", [clip], decode_options=opts)
    for opts in (DecodeOptions(), DecodeOptions(temperatures=(0.0,)), DecodeOptions.plain()):
        assert len(speechtl.transcribe("wav2vec2-tiny-random", [clip], decode_options=opts)) == 1

"""Adapters: injection by name, zero-init no-ops, named adapters, save/load (speechtl and peft formats)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechtl.adapters import (
    BottleneckAdapters,
    find_targets,
    get_adapter_params,
    load_adapter,
    parse_layers,
    read_adapter_meta,
)
from speechtl.backbones import create_backbone
from speechtl.errors import SpeechtlError
from speechtl.transfer import adapt, adapted_with


pytestmark = pytest.mark.usefixtures("one_thread")


def _waves(n: int = 2, seconds: float = 0.6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * (seconds + 0.2 * i)))).astype(np.float32) for i in range(n)]


def whisper():
    return create_backbone("whisper-tiny-random", short_clips=True)


def w2v():
    return create_backbone("wav2vec2-tiny-random")


def logits(backbone, waves=None) -> torch.Tensor:
    """Whisper decoder logits under teacher forcing, or wav2vec2 CTC logits, in eval mode."""
    backbone.eval()
    x, n = backbone.prepare(waves or _waves())
    with torch.no_grad():
        if backbone.task == "seq2seq":
            return backbone.logits(x, n, ["hello there", "yes"])[0]
        return backbone.logits(x, n)[0]


# -- injection by name -------------------------------------------------------------------------------


def test_parse_layers():
    assert parse_layers("0-2,5") == {0, 1, 2, 5}
    assert parse_layers([3, 4]) == {3, 4}
    assert parse_layers(None) is None
    with pytest.raises(SpeechtlError, match="target_layers"):
        parse_layers("a-b")


def test_find_targets_by_suffix_regex_and_layers():
    model = whisper().model
    assert find_targets(model, suffixes=["q_proj"], layers="1") == [
        "model.encoder.layers.1.self_attn.q_proj",
        "model.decoder.layers.1.self_attn.q_proj",
        "model.decoder.layers.1.encoder_attn.q_proj",
    ]
    enc = find_targets(model, regex=r"model\.encoder\.layers\.\d+\.(fc1|fc2)")
    assert enc == [f"model.encoder.layers.{i}.fc{j}" for i in range(2) for j in (1, 2)]
    with pytest.raises(SpeechtlError, match="no Linear module matched.*candidates end with: .*k_proj"):
        find_targets(model, suffixes=["query"])
    with pytest.raises(SpeechtlError, match="in layers"):
        find_targets(model, suffixes=["q_proj"], layers="7")


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "bottleneck"])
@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_fresh_adapter_leaves_outputs_unchanged(method, family):
    backbone = whisper() if family == "whisper" else w2v()
    before = logits(backbone)
    model = adapt(backbone, method)
    assert model.adapters.report.replaced, "nothing was adapted"
    assert torch.equal(logits(backbone), before) if method != "dora" else torch.allclose(logits(backbone), before,
                                                                                         atol=1e-5)


def test_bottleneck_answers_adapter_params_and_zero_inits_up():
    backbone = whisper()
    model = adapt(backbone, "bottleneck", bottleneck_style="pfeiffer", target_layers="0")
    params = get_adapter_params(backbone.model)
    # Pfeiffer: one adapter after each feed-forward block of layer 0 (encoder and decoder).
    assert model.adapters.report.replaced == ["model.encoder.layers.0.fc2", "model.decoder.layers.0.fc2"]
    assert sorted(params) == sorted(
        f"model.{part}.layers.0.fc2.adapters.default.{lin}.{w}"
        for part in ("encoder", "decoder") for lin in ("down", "up") for w in ("weight", "bias"))
    ups = [p for n, p in params.items() if ".up." in n]
    assert all(torch.count_nonzero(p) == 0 for p in ups)
    assert set(model.trainable_parameters()) == {f"backbone.model.{n}" for n in params}


def test_bottleneck_needs_linear_targets():
    backbone = whisper()
    with pytest.raises(SpeechtlError, match="out_features"):
        BottleneckAdapters(backbone.model, ["model.encoder.layers.0.self_attn_layer_norm"], "a", dim=4)


# -- several named adapters ---------------------------------------------------------------------------


def _perturb(model, scale: float = 0.5, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_named_adapters_switch_disable_merge_and_average():
    backbone = whisper()
    base = logits(backbone)
    model = adapt(backbone, "lora", adapter_name="scottish")
    _perturb(model, seed=1)
    scottish = logits(backbone)
    assert not torch.allclose(scottish, base)

    model.add_adapter("welsh")
    assert model.adapter_names == ["scottish", "welsh"] and model.active_adapter == "welsh"
    # Only the active adapter trains.
    assert all(".welsh." in n for n in model.trainable_parameters())
    assert torch.equal(logits(backbone), base)  # a fresh adapter is a no-op
    _perturb(model, seed=2)
    welsh = logits(backbone)

    model.set_adapter("scottish")
    assert torch.allclose(logits(backbone), scottish, atol=1e-6)
    with model.adapters_disabled():
        assert torch.allclose(logits(backbone), base, atol=1e-6)
    assert torch.allclose(logits(backbone), scottish, atol=1e-6)

    model.average_adapters(["scottish", "welsh"], [3, 1], new_name="mix")
    mix, a, b = (model.adapters.state(n) for n in ("mix", "scottish", "welsh"))
    assert mix.keys() == a.keys()
    for k in mix:
        torch.testing.assert_close(mix[k], 0.75 * a[k] + 0.25 * b[k])
    assert model.active_adapter == "scottish"

    with pytest.raises(SpeechtlError, match="already exists"):
        model.add_adapter("welsh")
    with pytest.raises(SpeechtlError, match="no adapter named"):
        model.set_adapter("irish")

    model.set_adapter("welsh")
    model.merge_adapter()
    assert torch.allclose(logits(backbone), welsh, atol=1e-5)
    assert not any("lora" in n for n, _ in backbone.named_parameters())
    with pytest.raises(SpeechtlError, match="merged"):
        model.add_adapter("again")


def test_bottleneck_adapters_cannot_merge():
    model = adapt(w2v(), "bottleneck")
    with pytest.raises(SpeechtlError, match="cannot be merged"):
        model.merge_adapter()


def test_averaging_adapters_of_other_shapes_fails():
    model = adapt(w2v(), "bottleneck")
    model.adapters.dim = 1  # a second adapter of another width (the first is 32 // 16 = 2 wide)
    model.add_adapter("narrow")
    with pytest.raises(SpeechtlError, match="differ in shape"):
        model.average_adapters(["default", "narrow"])


# -- save / load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "bottleneck", "features", "finetune"])
def test_save_load_round_trip_writes_only_trained_weights(tmp_path, method):
    backbone = w2v()
    kwargs = {"top_n_layers": 1} if method == "finetune" else {}
    model = adapt(backbone, method, **kwargs)
    _perturb(model, 0.1)
    if model.adapters is not None:
        model.add_adapter("second")
        _perturb(model, 0.1, seed=3)
        model.set_adapter("default")
    model.eval()
    x, n = backbone.prepare(_waves())
    with torch.no_grad():
        expected = model.generate(x, n), model.head(model.encode(x, n))[0] if model.head else backbone.logits(x, n)[0]
    model.save_adapter(tmp_path / "ad", target_accent="scottish")

    saved = load_file(tmp_path / "ad" / "adapter.safetensors")
    trained = sum(v.numel() for v in saved.values())
    base = sum(p.numel() for p in w2v().parameters())
    assert trained < base
    if method in ("lora", "bottleneck"):
        assert all(k.startswith(("adapter.default.", "adapter.second.")) for k in saved)
    meta = read_adapter_meta(tmp_path / "ad")
    assert meta["base_model"] == "wav2vec2-tiny-random" and meta["target_accent"] == "scottish"

    fresh = w2v()
    loaded = load_adapter(fresh, tmp_path / "ad")
    loaded.eval()
    assert loaded.adapter_names == model.adapter_names and loaded.active_adapter == model.active_adapter
    with torch.no_grad():
        got = loaded.generate(x, n), loaded.head(loaded.encode(x, n))[0] if loaded.head else fresh.logits(x, n)[0]
    assert got[0] == expected[0]
    torch.testing.assert_close(got[1], expected[1])


def test_loading_onto_other_base_weights_fails(tmp_path):
    model = adapt(w2v(), "lora")
    model.save_adapter(tmp_path / "ad")
    other = create_backbone("wav2vec2-tiny-random", seed=1)
    with pytest.raises(SpeechtlError, match="trained on 'wav2vec2-tiny-random'.*other weights"):
        load_adapter(other, tmp_path / "ad")
    with pytest.raises(SpeechtlError, match="adapter.json is missing"):
        load_adapter(w2v(), tmp_path)


def test_adapting_twice_fails():
    backbone = w2v()
    adapt(backbone, "lora")
    with pytest.raises(SpeechtlError, match="already adapted"):
        adapt(backbone, "bottleneck")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_format_loads_in_peft_with_same_logits(tmp_path, method):
    from peft import PeftModel

    backbone = whisper()
    model = adapt(backbone, method, target_layers="1")
    _perturb(model, 0.3)
    model.add_adapter("other")
    _perturb(model, 0.3, seed=5)
    model.eval()
    waves = _waves()
    model.set_adapter("default")
    want_default = logits(backbone, waves)
    model.set_adapter("other")
    want_other = logits(backbone, waves)
    model.save_adapter(tmp_path / "ad")

    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == method.upper()
    keys = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert keys and all(k.startswith("base_model.model.") for k in keys)

    plain = whisper()  # the plain transformers model under a plain backbone
    peft_model = PeftModel.from_pretrained(plain.model, tmp_path / "ad").eval()
    assert torch.allclose(logits(plain, waves), want_other, atol=1e-5)  # the active adapter is at the top
    peft_model.load_adapter(tmp_path / "ad" / "default", adapter_name="default_copy")
    peft_model.set_adapter("default_copy")
    assert torch.allclose(logits(plain, waves), want_default, atol=1e-5)
    assert not torch.allclose(want_default, want_other)


# -- trainable parameters per method --------------------------------------------------------------------


def _linear(i: int, o: int) -> int:
    return i * o + o


@pytest.mark.parametrize(
    "method,kwargs,expected",
    [
        # d_model 64, ffn 128, 2+2 layers; LoRA r=8 on q,v: enc 2x2 + dec 2x4 modules of 8*(64+64)
        ("lora", {}, 12 * 8 * (64 + 64)),
        ("lora", {"lora_r": 2, "target_modules": ["fc1"], "target_layers": "0"}, 2 * 2 * (64 + 128)),
        # DoRA adds a magnitude vector (64) per module
        ("dora", {}, 12 * (8 * 128 + 64)),
        # IA3: k and v scale outputs (64) in 6 attention blocks, fc2 scales its input (128) in 4 layers
        ("ia3", {}, 12 * 64 + 4 * 128),
        # Houlsby: after self-attn (4 layers), cross-attn (2) and fc2 (4): 64 -> 4 -> 64
        ("bottleneck", {}, 10 * (_linear(64, 4) + _linear(4, 64))),
        ("bottleneck", {"bottleneck_style": "pfeiffer", "bottleneck_dim": 8}, 4 * (_linear(64, 8) + _linear(8, 64))),
        # a linear CTC head over 64 features to 29 characters; + 3 layer weights when mixing layers
        ("features", {}, _linear(64, 29)),
        ("features", {"weighted_layers": True}, _linear(64, 29) + 3),
    ],
)
def test_trainable_parameter_counts(method, kwargs, expected):
    model = adapt(whisper(), method, **kwargs)
    assert model.num_trainable() == expected
    assert f"{expected:,} of" in model.summary()


# -- the saved format: one reader, weights verified on every read ----------------------------------------


def _saved_lora(tmp_path, name: str = "ad", seed: int = 0):
    model = adapt(w2v(), "lora", lora_r=2)
    _perturb(model, 0.1, seed=seed)
    return model.save_adapter(tmp_path / name)


def _damage(folder, how: str, tmp_path) -> None:
    """``truncate`` the weights, ``flip`` one bit of a tensor, put ``another adapter``'s weights in their place,
    or write ``another format`` (a torch pickle) under their name."""
    weights = folder / "adapter.safetensors"
    if how == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif how == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x10  # inside the last tensor's values: the file still parses
        weights.write_bytes(bytes(data))
    elif how == "another adapter":
        weights.write_bytes((_saved_lora(tmp_path, "other", seed=9) / "adapter.safetensors").read_bytes())
    elif how == "another format":
        torch.save({"adapter.default.x": torch.zeros(3)}, weights)
    else:
        raise AssertionError(how)


def test_save_records_size_and_sha256_of_every_weights_file(tmp_path):
    from speechtl.checksums import sha256_file

    model = adapt(w2v(), "lora", lora_r=2)
    model.add_adapter("second")
    folder = model.save_adapter(tmp_path / "ad")
    files = read_adapter_meta(folder)["files"]
    assert sorted(files) == ["adapter.safetensors", "adapter_model.safetensors", "default/adapter_model.safetensors"]
    for rel, entry in files.items():
        assert entry == {"size": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}


@pytest.mark.parametrize("how,says", [("truncate", "were saved (truncated"), ("flip", "sha256 differs"),
                                      ("another adapter", "sha256 differs"), ("another format", "bytes, but")])
def test_a_damaged_weights_file_is_one_error_naming_it_before_anything_is_built(tmp_path, how, says):
    folder = _saved_lora(tmp_path)
    _damage(folder, how, tmp_path)
    backbone = w2v()
    with pytest.raises(SpeechtlError) as caught:
        load_adapter(backbone, folder)
    message = str(caught.value)
    assert str(folder / "adapter.safetensors") in message and says in message and "copy it again" in message
    assert "\n" not in message
    assert adapted_with(backbone) is None  # refused before the backbone was touched


def _without_record(folder):
    """The folder as an earlier version wrote it: no sizes or hashes in adapter.json."""
    meta = json.loads((folder / "adapter.json").read_text())
    del meta["files"], meta["meta_sha256"]
    (folder / "adapter.json").write_text(json.dumps(meta))


def test_a_folder_without_a_record_loads_with_the_checks_it_had(tmp_path):
    folder = _saved_lora(tmp_path)
    _without_record(folder)
    model = load_adapter(w2v(), folder)
    want = load_file(folder / "adapter.safetensors")
    assert all(torch.equal(v, want[f"adapter.default.{k}"]) for k, v in model.adapters.state("default").items())
    for how in ("truncate", "another format"):  # what the safetensors header catches is still one error
        _damage(folder, how, tmp_path)
        with pytest.raises(SpeechtlError, match="adapter.safetensors: not a readable safetensors file"):
            load_adapter(w2v(), folder)


def test_an_edited_adapter_json_is_refused(tmp_path):
    folder = _saved_lora(tmp_path)
    saved = (folder / "adapter.json").read_text()
    meta = json.loads(saved)
    assert len(meta["meta_sha256"]) == 64
    (folder / "adapter.json").write_text(json.dumps(meta))  # the same entries, laid out differently: still fine
    load_adapter(w2v(), folder)
    for edit in ({"target_accent": "B"}, {"config": {**meta["config"], "lora_alpha": 64.0}}, {"short_clips": True}):
        (folder / "adapter.json").write_text(json.dumps({**meta, **edit}))
        with pytest.raises(SpeechtlError, match=r"adapter\.json: its entries changed since the adapter was saved"):
            load_adapter(w2v(), folder)
    (folder / "adapter.json").write_text(saved)
    load_adapter(w2v(), folder)


def test_a_damaged_adapter_json_is_one_error_naming_it(tmp_path):
    folder = _saved_lora(tmp_path)
    meta = json.loads((folder / "adapter.json").read_text())
    del meta["base_checksum"]
    (folder / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(SpeechtlError, match=r"adapter.json: 'base_checksum' is missing"):
        load_adapter(w2v(), folder)
    (folder / "adapter.json").write_text("[1, 2]")
    with pytest.raises(SpeechtlError, match="adapter.json: holds a JSON list"):
        load_adapter(w2v(), folder)


def _wav(path):
    import soundfile as sf

    sf.write(path, (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)
    return path


def _foreign_base(folder, tmp_path) -> None:
    """Replace ``folder`` by an adapter trained on other base weights."""
    import shutil

    shutil.rmtree(folder)
    adapt(create_backbone("wav2vec2-tiny-random", seed=1), "lora", lora_r=2).save_adapter(folder)


@pytest.mark.parametrize("tool", ["transcribe", "eval"])
@pytest.mark.parametrize("how,says", [("truncate", "truncated"), ("flip", "sha256 differs"),
                                      ("another base", "load it on the model it was trained on")])
def test_cli_with_a_damaged_or_foreign_adapter_prints_one_error_line(tmp_path, capsys, monkeypatch, tool, how, says):
    from speechtl.cli import eval as eval_cli
    from speechtl.cli import transcribe as transcribe_cli

    folder = _saved_lora(tmp_path)
    if how == "another base":
        _foreign_base(folder, tmp_path)
    else:
        _damage(folder, how, tmp_path)
    clip = _wav(tmp_path / "a.wav")
    monkeypatch.chdir(tmp_path)
    if tool == "transcribe":
        code = transcribe_cli.main(["wav2vec2-tiny-random", str(clip), "--adapter", str(folder), "--no-progress"])
    else:
        (tmp_path / "m.jsonl").write_text(json.dumps({"id": "u0", "audio": "a.wav", "text": "hi", "speaker": "s",
                                                      "accent": "A"}) + "\n")
        code = eval_cli.main(["--model", "wav2vec2-tiny-random", "--manifest", str(tmp_path / "m.jsonl"), "--adapter",
                              str(folder), "--out", str(tmp_path / "out"), "--n-bootstrap", "10", "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert str(folder) in errors[0] and says in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


# -- adapter kinds answer one protocol ---------------------------------------------------------------------


def test_adapter_kinds_say_what_trains_what_is_saved_and_whether_they_merge(tmp_path):
    from speechtl.transfer import ADAPTER_KINDS

    assert {m: k.mergeable for m, k in ADAPTER_KINDS.items()} == {"lora": True, "dora": True, "ia3": True,
                                                                  "bottleneck": False}
    lora = adapt(w2v(), "lora", lora_r=2)
    assert lora.mergeable and lora.adapters.mixable and lora.adapters.shared_state() == {}

    # A bottleneck set trains its modules_to_save beside the active adapter and saves them once, for all adapters.
    backbone = w2v()
    model = adapt(backbone, "bottleneck", modules_to_save=["final_layer_norm"])
    assert not model.mergeable and not model.adapters.mixable
    shared = model.adapters.shared_state()
    assert sorted(shared) == [f"wav2vec2.encoder.layers.{i}.final_layer_norm.{k}" for i in (0, 1)
                              for k in ("bias", "weight")]
    assert {f"backbone.model.{k}" for k in shared} <= set(model.trainable_parameters())
    with pytest.raises(SpeechtlError, match="cannot be merged"):
        model.merge_adapter()
    with pytest.raises(SpeechtlError, match="do not mix"), model.adapters_mixed({"default": 1.0}):
        pass
    _perturb(model, 0.2)
    model.save_adapter(tmp_path / "ad")
    saved = load_file(tmp_path / "ad" / "adapter.safetensors")
    assert {k for k in saved if k.startswith("backbone.")} == {f"backbone.model.{k}" for k in shared}
    assert not (tmp_path / "ad" / "adapter_model.safetensors").exists()  # no peft copy of a bottleneck set
    loaded = load_adapter(w2v(), tmp_path / "ad")
    for k, v in loaded.adapters.shared_state().items():
        torch.testing.assert_close(v, shared[k])

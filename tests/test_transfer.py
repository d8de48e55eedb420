"""Transfer methods on both families: loss falls, what trains, layer-wise rates, heads, SpecAugment, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechtl.backbones import create_backbone
from speechtl.config import AdaptConfig, TrainConfig, all_keys, load_config
from speechtl.errors import SpeechtlError
from speechtl.specaug import SpecAugment, spec_module
from speechtl.tasks import ClassificationTask, CTCASRTask, Seq2SeqASRTask, task_for
from speechtl.training import train
from speechtl.transfer import CharVocab, ClassifierHead, CTCHead, LayerMix, adapt


pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = {"whisper": "whisper-tiny-random", "wav2vec2": "wav2vec2-tiny-random"}


def backbone(family: str):
    kw = {"short_clips": True} if family == "whisper" else {}
    return create_backbone(FAMILIES[family], **kw)


def utterances() -> list[dict]:
    """Two tiny synthetic utterances: a tone plus a little noise each, different pitch and length."""
    rng = np.random.default_rng(0)
    out = []
    for i, (freq, text, accent) in enumerate([(220.0, "hello", "scottish"), (440.0, "yes", "welsh")]):
        t = np.arange(int(16000 * (0.5 + 0.2 * i))) / 16000
        wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
        out.append({"id": f"u{i}", "audio": wav.astype(np.float32), "text": text, "accent": accent})
    return out


# Learning rates that overfit two utterances quickly with each method, and the least fall (last three
# steps against the first) each must show. IA3 has the fewest knobs (256 scales on the 45k-parameter
# wav2vec2) and moves the random models' loss least.
LR = {"features": 2e-2, "finetune": 2e-3, "lora": 1e-2, "dora": 1e-1, "ia3": 3e-1, "bottleneck": 2e-2}
FALL = {"ia3": 0.99}


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("method", ["features", "finetune", "lora", "dora", "ia3", "bottleneck"])
@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_loss_falls_within_20_steps(tmp_path, family, method):
    torch.manual_seed(0)
    model = adapt(backbone(family), method)
    task = task_for(model)
    assert isinstance(task, CTCASRTask if method == "features" or family == "wav2vec2" else Seq2SeqASRTask)
    batch = task.collate(utterances())
    config = TrainConfig(lr=LR[method], max_steps=20, schedule="constant", log_every=1, progress=False)
    train(model, task, [batch], config=config, out_dir=tmp_path)
    seen = losses(tmp_path)
    assert len(seen) == 20
    assert np.mean(seen[-3:]) < FALL.get(method, 0.95) * seen[0], seen
    assert seen[-1] < seen[0]


def test_classifier_on_weighted_layers_learns_the_accent(tmp_path):
    torch.manual_seed(0)
    model = adapt(backbone("wav2vec2"), "features", labels=["scottish", "welsh"], weighted_layers=True)
    assert isinstance(model.head, ClassifierHead)
    task = task_for(model)
    assert isinstance(task, ClassificationTask)
    batch = task.collate(utterances())
    assert batch["labels"].tolist() == [0, 1]
    train(model, task, [batch], config=TrainConfig(lr=1e-2, max_steps=15, log_every=1, progress=False),
          out_dir=tmp_path)
    seen = losses(tmp_path)
    assert seen[-1] < seen[0]
    model.eval()
    assert task.predict(model, batch) == ["scottish", "welsh"]
    weights = model.head.mix.layer_weights()
    assert len(weights) == 3 and weights != pytest.approx([1 / 3] * 3)  # the layer mix trained
    with pytest.raises(SpeechtlError, match="not one of the classes"):
        task.collate([{**utterances()[0], "accent": "irish"}])


def test_normalised_layer_mix_ignores_each_layers_scale():
    """head_norm: a layer whose states are 100 times larger does not drown the others in the mix."""
    torch.manual_seed(0)
    states = [torch.randn(2, 5, 8) for _ in range(3)]
    scaled = [s * k for s, k in zip(states, (1.0, 100.0, 10.0))]
    mix = LayerMix(3, normalize=True)
    torch.testing.assert_close(mix(states), mix(scaled), atol=1e-4, rtol=1e-4)
    plain = LayerMix(3)
    assert not torch.allclose(plain(states), plain(scaled), atol=1e-2)


# -- what trains --------------------------------------------------------------------------------------


def test_features_freezes_the_backbone_and_keeps_it_in_eval_mode():
    model = adapt(backbone("wav2vec2"), "features", weighted_layers=True, head_layers=1, head_hidden=8)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert set(model.trainable_parameters()) == {f"head.{n}" for n, _ in model.head.named_parameters()}
    model.train()
    assert model.training and model.head.training and not model.backbone.training


def test_finetune_top_layers_and_frontend():
    w2v = adapt(backbone("wav2vec2"), "finetune")
    groups = dict(w2v.backbone.layer_groups())
    trains = {n for n, p in w2v.backbone.named_parameters() if p.requires_grad}
    assert trains == set(groups["layer.0"] + groups["layer.1"] + groups["head"])  # wav2vec2 frontend frozen

    whisper = adapt(backbone("whisper"), "finetune", top_n_layers=1)
    groups = dict(whisper.backbone.layer_groups())
    trains = {n for n, p in whisper.backbone.named_parameters() if p.requires_grad}
    assert trains == set(groups["layer.1"] + groups["head"])

    everything = adapt(backbone("whisper"), "finetune")  # Whisper's frontend trains by default
    assert everything.num_trainable() == sum(p.numel() for p in everything.backbone.parameters())
    with pytest.raises(SpeechtlError, match="top_n_layers=5"):
        adapt(backbone("whisper"), "finetune", top_n_layers=5)


def test_layerdrop_is_reported_for_distributed_training():
    model = adapt(backbone("wav2vec2"), "lora")
    assert not model.skips_layers
    model.backbone.model.config.layerdrop = 0.1
    assert model.skips_layers  # DDP then looks for parameters without gradient
    frozen = adapt(backbone("wav2vec2"), "features")
    frozen.backbone.model.config.layerdrop = 0.1
    assert not frozen.skips_layers


def test_layer_wise_learning_rates():
    model = adapt(backbone("wav2vec2"), "finetune", layer_decay=0.5, freeze_frontend=False)
    groups = model.param_groups(lr=1.0, weight_decay=0.1)
    lr = {g["name"]: g["lr"] for g in groups}
    # depth: head 0, layer.1 1, layer.0 2, frontend 3
    assert lr["head"] == 1.0 and lr["layer.1"] == 0.5 and lr["layer.0"] == 0.25 and lr["frontend"] == 0.125
    assert lr["layer.0.no_decay"] == 0.25
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay["layer.0"] == 0.1 and decay["layer.0.no_decay"] == 0.0
    assert all(p.ndim < 2 for g in groups if g["name"].endswith("no_decay") for p in g["params"])
    named = {n for g in groups for n in g["param_names"]}
    assert named == set(model.trainable_parameters())
    # The optimizer really runs with these rates (scaled by the schedule's warm-up).
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]

    lora = adapt(backbone("whisper"), "lora", layer_decay=0.5)
    rates = {g["name"]: g["lr"] for g in lora.param_groups(lr=1.0)}
    assert rates == {"layer.0": 0.25, "layer.1": 0.5, "head": 1.0}  # decoder LoRA sits in Whisper's head group


def test_adapt_config_errors():
    with pytest.raises(SpeechtlError, match="unknown AdaptConfig key 'lora_rank'.*lora_r"):
        adapt(backbone("wav2vec2"), "lora", lora_rank=4)
    with pytest.raises(SpeechtlError, match="not one of"):
        adapt(backbone("wav2vec2"), "prompt")
    with pytest.raises(SpeechtlError, match="only apply to adapter methods"):
        adapt(backbone("wav2vec2"), "finetune", target_modules=["q_proj"])
    with pytest.raises(SpeechtlError, match="new head"):
        adapt(backbone("wav2vec2"), "features", head="backbone")


def test_ctc_head_vocab_and_greedy_decoding():
    vocab = CharVocab()
    assert vocab.decode(vocab.encode("It's  OK, 42!")) == "it's ok"
    head = CTCHead(4, 3, vocab=vocab)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.copy_(torch.tensor([5.0 if i == vocab.index["a"] else 0.0 for i in range(len(vocab))]))
    from speechtl.backbones.base import EncoderOutput

    enc = EncoderOutput((torch.zeros(1, 6, 4),) * 3, torch.tensor([6]))
    head.eval()
    assert head.decode(enc) == ["a"]  # six frames of "a" collapse to one


# -- SpecAugment --------------------------------------------------------------------------------------------


def test_specaug_masks_in_training_only():
    torch.manual_seed(0)
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    x = torch.ones(3, 80, 200)
    aug.train()
    y = aug(x)
    assert y.shape == x.shape and (y == 0).any() and not (y[0] == y[1]).all()  # masks differ per example
    aug.eval()
    assert torch.equal(aug(x), x)


@pytest.mark.parametrize("family,where", [("whisper", "input"), ("wav2vec2", "output")])
def test_specaug_acts_on_both_families_during_training(family, where):
    model = adapt(backbone(family), "lora")
    assert spec_module(model.backbone)[1] == where
    task = task_for(model, specaug=SpecAugment(time_width=5, freq_width=5, max_time_ratio=0.5))
    plain = task_for(model)
    batch = task.collate(utterances())
    model.eval()
    with torch.no_grad():
        assert torch.equal(task.loss(model, batch), plain.loss(model, batch))  # eval: no masks
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(task.loss(model, batch), plain.loss(model, batch))
    # the hook is gone after the loss
    assert not spec_module(model.backbone)[0]._forward_hooks and not spec_module(model.backbone)[0]._forward_pre_hooks


# -- config --------------------------------------------------------------------------------------------------


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 3\nlora_r: 4\n")
    cfg = load_config(path, ["lr=3e-4", "target_modules=q_proj,v_proj", "max_steps=null", "short_clips=false"],
                      method="bottleneck")
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 3 and cfg.adapt.lora_r == 4
    assert cfg.adapt.target_modules == ["q_proj", "v_proj"] and cfg.adapt.method == "bottleneck"
    assert cfg.train.max_steps is None and cfg.data.short_clips is False
    cfg.save(tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg  # the saved resolved config reads back to the same thing
    with pytest.raises(SpeechtlError, match="command line: unknown config key 'lerning_rate'"):
        load_config(None, ["lerning_rate=1"])
    with pytest.raises(SpeechtlError, match="epochs='three' is not a valid int"):
        load_config(None, ["epochs=three"])
    with pytest.raises(SpeechtlError, match="precision='fp8' is not one of"):
        load_config(None, ["precision=fp8"])
    (tmp_path / "bad.yaml").write_text("adapt:\n  lr: 1\n")
    with pytest.raises(SpeechtlError, match="'lr' belongs in section 'train'"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(SpeechtlError, match="write key=value"):
        load_config(None, ["lr"])


def test_config_keys_are_unique_and_adapt_keys_are_adapt_arguments():
    from dataclasses import dataclass, fields

    from speechtl.config import SECTIONS

    # Flat keys (lr=1e-3 on the command line) must name one field of one section: count the fields themselves.
    declared = [f.name for cls in SECTIONS.values() for f in fields(cls)]
    twice = sorted(k for k in set(declared) if declared.count(k) > 1)
    assert not twice, f"config keys in two sections: {twice}"
    keys = all_keys()
    assert keys == sorted(declared)  # every field is a key, none lost or invented

    @dataclass
    class Clash:
        lr: float = 1.0

    with pytest.MonkeyPatch.context() as mp:  # and the index refuses a clash instead of keeping one of the two
        mp.setitem(SECTIONS, "clash", Clash)
        with pytest.raises(AssertionError, match="config key lr is in two sections"):
            all_keys()
    assert {"lr", "epochs", "max_steps", "batch_seconds", "eval_every", "seed", "lora_r", "lora_alpha",
            "target_modules", "short_clips", "warmup_steps", "grad_accum"} <= set(keys)
    assert "lora_r" in AdaptConfig.__dataclass_fields__


def test_heads_live_in_their_module_and_build_as_adapt_builds_them():
    from speechtl import heads, transfer

    for name in ("CharVocab", "LayerMix", "CTCHead", "ClassifierHead", "build_head"):
        assert getattr(transfer, name) is getattr(heads, name)
    backbone = create_backbone("wav2vec2-tiny-random")
    head = heads.build_head(backbone, AdaptConfig(method="features", labels=["a", "b"], head_pooling="stats"))
    assert isinstance(head, heads.ClassifierHead) and head.labels == ["a", "b"] and head.pooling == "stats"
    assert isinstance(heads.build_head(backbone, AdaptConfig(method="features")), heads.CTCHead)
    assert heads.build_head(create_backbone("whisper-tiny-random"), AdaptConfig(method="lora")) is None
    with pytest.raises(SpeechtlError, match="head=classifier needs labels"):
        heads.build_head(backbone, AdaptConfig(method="features", head="classifier"))

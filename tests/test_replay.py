"""Forgetting control: replay batches, the distillation term, and the forgetting score in the dev log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from speechtl.backbones import create_backbone
from speechtl.cli.adapt import main
from speechtl.data.loader import DurationBatchSampler
from speechtl.errors import SpeechtlError
from speechtl.replay import ReplayBatchSampler, ReplayDataset, ReplayTask, distillation_kl
from speechtl.tasks import task_for
from speechtl.transfer import adapt


pytestmark = pytest.mark.usefixtures("one_thread")


def test_replay_sampler_mixes_the_set_fraction_reproducibly():
    inner = DurationBatchSampler([1.0] * 200, max_seconds=6.0, seed=3)
    sampler = ReplayBatchSampler(inner, num_target=200, num_replay=50, fraction=0.25, seed=3)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert batches == list(sampler)  # the same epoch gives the same batches again (exact resume)
    target = sorted(i for b in batches for i in b if i < 200)
    replay = [i for b in batches for i in b if i >= 200]
    assert target == list(range(200))  # every target utterance once per epoch
    assert all(200 <= i < 250 for i in replay)
    assert len(replay) / (len(replay) + len(target)) == pytest.approx(0.25, abs=0.03)
    assert len(set(replay[:50])) == 50  # the replay set is walked without repeats before reshuffling
    sampler.set_epoch(2)
    assert list(sampler) != batches
    with pytest.raises(SpeechtlError, match="replay_fraction"):
        ReplayBatchSampler(inner, 200, 50, fraction=1.0)


def test_replay_dataset_flags_items():
    ds = ReplayDataset([{"id": "t0"}, {"id": "t1"}], [{"id": "r0"}])
    assert len(ds) == 3
    assert [ds[i]["replay"] for i in range(3)] == [False, False, True] and ds[2]["id"] == "r0"


def test_distillation_kl_matches_torch_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.ones(2, 5, dtype=torch.bool)
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="sum") / 10 * 4
    assert distillation_kl(s, t, mask, temperature=2.0) == pytest.approx(ref.item(), rel=1e-5)
    mask[1] = False  # masked positions do not count
    ref0 = F.kl_div(F.log_softmax(s[0], -1), F.log_softmax(t[0], -1), log_target=True, reduction="sum") / 5
    assert distillation_kl(s, t, mask) == pytest.approx(ref0.item(), rel=1e-5)


def _batch(task, n=3, seed=0):
    rng = np.random.default_rng(seed)
    items = [{"id": f"u{i}", "audio": rng.standard_normal(8000 + 1600 * i).astype(np.float32) * 0.1,
              "text": ["hello there", "go home", "yes"][i % 3], "replay": i > 0} for i in range(n)]
    return task.collate(items)


@pytest.mark.parametrize("name", ["whisper-tiny-random", "wav2vec2-tiny-random"])
def test_distillation_is_zero_at_start_and_positive_once_adapted(name):
    torch.manual_seed(0)
    model = adapt(create_backbone(name), "lora", lora_r=4)
    model.eval()
    task = ReplayTask(task_for(model), model, distill_weight=1.0)
    batch = _batch(task)
    assert batch["replay"].tolist() == [False, True, True]
    plain = task.task.loss(model, batch)
    # zero-initialised LoRA: the adapted model is the base model, so the KL term vanishes
    assert task.loss(model, batch).item() == pytest.approx(plain.item(), abs=1e-5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    loss = task.loss(model, batch)
    assert loss.item() > task.task.loss(model, batch).item() + 1e-4
    loss.backward()  # the term trains the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_whisper_on_unpadded_clips_distils_towards_the_base_model_at_30s():
    torch.manual_seed(0)
    backbone = create_backbone("whisper-tiny-random")
    backbone.short_clips = True
    model = adapt(backbone, "lora", lora_r=4)
    model.eval()
    task = ReplayTask(task_for(model), model, distill_weight=1.0)
    batch = _batch(task)
    assert batch["inputs"].shape[-1] < 3000 and batch["teacher_inputs"].shape == (2, 80, 3000)  # replay rows only
    rows = [1, 2]
    with torch.no_grad(), model.adapters_disabled():
        t_logits, targets = backbone.logits(batch["teacher_inputs"], batch["lengths"][rows],
                                            [batch["texts"][i] for i in rows])
    with torch.no_grad():
        logits, _ = backbone.logits(batch["inputs"], batch["lengths"], batch["texts"])
        plain = task.task.loss(model, batch)
        total = task.loss(model, batch)
    s_logits = logits[rows][:, : t_logits.shape[1]]
    expected = distillation_kl(s_logits, t_logits, targets != -100)
    # Even a zero-initialised adapter differs from the base model at 30 s, which is what the term pulls towards.
    assert expected.item() > 1e-4
    assert total.item() == pytest.approx(plain.item() + expected.item(), rel=1e-4)


def test_distillation_with_full_finetuning_uses_a_frozen_copy():
    torch.manual_seed(0)
    model = adapt(create_backbone("whisper-tiny-random"), "finetune")
    model.eval()
    task = ReplayTask(task_for(model), model, distill_weight=1.0)
    batch = _batch(task)
    assert task.loss(model, batch).item() == pytest.approx(task.task.loss(model, batch).item(), abs=1e-5)
    with torch.no_grad():
        for p in model.backbone.model.model.decoder.layers[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert task.loss(model, batch).item() > task.task.loss(model, batch).item()


def test_distillation_needs_the_backbones_own_head():
    model = adapt(create_backbone("wav2vec2-tiny-random"), "features", head="ctc")
    with pytest.raises(SpeechtlError, match="distillation"):
        ReplayTask(task_for(model), model, distill_weight=1.0)


@pytest.fixture
def manifests(tmp_path):
    """Target accent A (train/dev) and a native replay manifest (train/dev) of short tone clips."""
    rng = np.random.default_rng(0)

    def write(name, rows):
        lines = []
        for i, (text, split) in enumerate(rows):
            t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
            wav = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.01 * rng.standard_normal(len(t)))
            sf.write(tmp_path / f"{name}{i}.wav", wav.astype(np.float32), 16000)
            lines.append(json.dumps({"id": f"{name}{i}", "audio": f"{name}{i}.wav", "text": text, "speaker": name,
                                     "accent": name, "split": split}) + "\n")
        (tmp_path / f"{name}.jsonl").write_text("".join(lines))
        return tmp_path / f"{name}.jsonl"

    target = write("A", [("hello there", "train"), ("yes sir", "train"), ("go home", "train"), ("see you", "dev")])
    native = write("N", [("good day", "train"), ("thank you", "train"), ("all right", "dev")])
    return target, native


def test_adapt_cli_replays_distils_and_logs_forgetting(tmp_path, manifests, capsys):
    target, native = manifests
    out = tmp_path / "run"
    code = main(["--model", "whisper-tiny-random", "--method", "lora", "--train", str(target), "--out", str(out),
                 "lr=1e-2", "batch_seconds=2", "eval_every=2", "max_steps=4", "progress=false", "lora_r=4",
                 f"replay_manifest={native}", "replay_fraction=0.4", "distill_weight=0.5"])
    _, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["replay_utterances"] == 2 and info["replay_dev_utterances"] == 1
    evals = [m["eval"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in m]
    assert len(evals) == 2
    # The base WER on the source dev line, scored here from scratch: the base model, the Whisper normaliser, jiwer.
    import jiwer

    import speechtl
    from speechtl.decoding import DecodeOptions
    from speechtl.wer import get_normalizer

    norm = get_normalizer("whisper")
    hyp = speechtl.transcribe(create_backbone("whisper-tiny-random"), [tmp_path / "N2.wav"], progress=False,
                              decode_options=DecodeOptions.plain())[0]  # as dev decoding: one pass at temperature 0
    base_wer = jiwer.wer(norm("all right"), norm(hyp) or "<empty>")
    for e in evals:
        assert {"wer", "source_wer", "source_wer_base", "forgetting"} <= set(e)
        assert e["source_wer_base"] == pytest.approx(base_wer)
        assert e["forgetting"] == pytest.approx(max(0.0, e["source_wer"] - e["source_wer_base"]) * 100)


def test_forgetting_is_the_rise_of_source_wer_in_points_over_the_base_model():
    """A known case: the base model scores 10 % WER on the source speech, the adapted one 25 %, then 5 %."""
    from speechtl.replay import forgetting_dev_fn

    torch.manual_seed(0)
    model = adapt(create_backbone("wav2vec2-tiny-random"), "lora", lora_r=4)
    model.eval()
    probe = torch.randn(1, 8000)
    with torch.no_grad():
        base_logits = model.backbone.model(input_values=probe).logits
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapted_wers = iter([0.25, 0.05])

    def source_fn(m):  # tells the base model from the adapted one by its outputs
        with torch.no_grad():
            is_base = torch.allclose(m.backbone.model(input_values=probe).logits, base_logits)
        return {"wer": 0.10 if is_base else next(adapted_wers)}

    fn = forgetting_dev_fn(lambda m: {"wer": 0.5}, source_fn, model)
    assert fn(model) == {"wer": 0.5, "source_wer": 0.25, "source_wer_base": 0.10,
                         "forgetting": pytest.approx(15.0)}  # 25 % - 10 %, in points
    assert fn(model) == {"wer": 0.5, "source_wer": 0.05, "source_wer_base": 0.10, "forgetting": 0.0}  # improved
    assert model.training is False and model.adapter_names == ["default"]


def test_adapt_cli_replay_settings_need_a_manifest(tmp_path, manifests, capsys):
    target, _ = manifests
    code = main(["--model", "whisper-tiny-random", "--train", str(target), "--out", str(tmp_path / "r"),
                 "replay_fraction=0.3", "progress=false"])
    _, err = capsys.readouterr()
    assert code == 2 and "replay_manifest" in err and "Traceback" not in err

"""Short-context distillation: the student reads clips unpadded, the base model reads them at 30 s."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import speechtl
from speechtl import recipes
from speechtl.adapters import load_adapter
from speechtl.backbones.whisper import WhisperBackbone
from speechtl.config import load_config
from speechtl.data.manifest import read_manifest
from speechtl.decoding import DecodeOptions
from speechtl.errors import SpeechtlError
from speechtl.routing import BASE, Route, Router, parse_adapter_specs
from speechtl.short_context import ShortContextTask
from speechtl.tasks import task_for
from speechtl.transfer import adapt

sys.path.insert(0, str(Path(__file__).parent))
from test_export import _randomize  # noqa: E402

FULL = 3000  # log-mel frames of 30 s

pytestmark = pytest.mark.usefixtures("one_thread")


def _backbone(short: bool = True) -> WhisperBackbone:
    b = speechtl.create_backbone("whisper-tiny-random")
    _randomize(b.model, 0)  # outputs that depend on the audio, and on how far it is padded
    b.short_clips = short
    return b


def _items(n=4, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["hello there", "go home now", "yes", "see you soon"]
    return [{"id": f"u{i}", "audio": (0.1 * rng.standard_normal(6400 + 3200 * i)).astype(np.float32),
             "text": texts[i % 4]} for i in range(n)]


def _kl_reference(student, teacher, mask):
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


def test_the_student_reads_each_batch_cut_short_and_the_teacher_reads_it_at_30s():
    model = adapt(_backbone(), "lora", lora_r=4)
    task = ShortContextTask(task_for(model), model)
    items = _items()
    batch = task.collate(items)
    assert batch["teacher_inputs"].shape[-1] == FULL
    assert batch["inputs"].shape[-1] == int(batch["lengths"].max()) < FULL
    # The student's features are the teacher's, cut at the longest clip and zero beyond each clip.
    assert torch.equal(WhisperBackbone.shorten(batch["teacher_inputs"], batch["lengths"]), batch["inputs"])
    assert torch.equal(batch["teacher_inputs"], model.prepare([it["audio"] for it in items], short_clips=False)[0])


def test_the_loss_is_the_kl_from_the_base_model_at_30s_to_the_student_unpadded():
    torch.manual_seed(0)
    model = adapt(_backbone(), "lora", lora_r=4)
    model.eval()
    task = ShortContextTask(task_for(model), model)
    batch = task.collate(_items())
    b = model.backbone
    with torch.no_grad():
        loss = task.loss(model, batch)
        with model.adapters_disabled():
            teacher, targets = b.logits(batch["teacher_inputs"], batch["lengths"], batch["texts"])
            short, _ = b.logits(batch["inputs"], batch["lengths"], batch["texts"])
    # A zero-initialised adapter is the base model, and the base model unpadded is not the base model at 30 s.
    expected = _kl_reference(short, teacher, targets != -100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and loss.item() > 1e-3
    # A batch whose clips fill 30 s is not cut, so teacher and student read the same features: nothing to learn.
    long = [{"id": "x", "audio": np.zeros(16000 * 30, np.float32) + 0.01, "text": "hello"}]
    full = task.collate(long)
    assert "teacher_inputs" not in full and full["inputs"].shape[-1] == FULL
    assert task.loss(model, full).item() == pytest.approx(0.0, abs=1e-6)


def test_training_makes_unpadded_outputs_follow_the_30s_base_model_and_leaves_the_base_weights():
    torch.manual_seed(0)
    model = adapt(_backbone(), "lora", lora_r=8, lora_alpha=16.0)
    base = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" not in n}
    task = ShortContextTask(task_for(model), model)
    batch = task.collate(_items())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    after = dict(model.backbone.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())  # only the adapter trained
    # What decoding sees: greedy transcripts of the unpadded clips come closer to the base model's at 30 s.
    model.eval()
    opts = dict(max_new_tokens=8)
    with torch.no_grad(), model.adapters_disabled():
        target = [h.text for h in model.backbone.decode(batch["teacher_inputs"], batch["lengths"], **opts)]
        before = [h.text for h in model.backbone.decode(batch["inputs"], batch["lengths"], **opts)]
    with torch.no_grad():
        trained = [h.text for h in model.backbone.decode(batch["inputs"], batch["lengths"], **opts)]
    assert sum(a == b for a, b in zip(trained, target)) > sum(a == b for a, b in zip(before, target))


def _manifest(tone_manifest):
    return tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("go home", "A", "train"),
                          ("no way", "A", "dev")])


def test_the_recipe_trains_the_objective_and_dev_decodes_unpadded(tone_manifest, tmp_path, frames):
    manifest = _manifest(tone_manifest)
    cfg = load_config(None, ["progress=false", "objective=short-context", "max_steps=3", "eval_every=3"],
                      method="lora")
    built = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)
    assert isinstance(built.task, ShortContextTask)
    # The recipe's defaults for this objective: dev decodes unpadded, and the student reads clean clips.
    assert built.config.data.dev_short_clips is True and built.config.data.specaug is False
    assert built.task.specaug is None
    frames.clear()
    result = recipes.execute(built, tmp_path / "run")
    assert FULL in frames and min(frames) < FULL  # the teacher at 30 s, student and dev decoding unpadded
    meta = json.loads((result.adapter / "adapter.json").read_text())
    assert meta["short_clips"] is True
    assert load_config(tmp_path / "run" / "config.yaml").data.objective == "short-context"


def test_teacher_targets_are_the_base_models_30s_transcripts_and_need_no_text(tone_manifest, tmp_path):
    lines = [("", "A", "train"), ("", "A", "train"), ("", "A", "train"), ("", "A", "dev")]  # unlabelled audio
    manifest = tone_manifest(lines)
    clips = [str(tmp_path / f"u{i}.wav") for i in range(len(lines))]
    expected = speechtl.transcribe(_backbone(), clips, short_clips="off", progress=False)
    assert all(expected)  # the randomised model says something on each clip
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher", "max_steps=2",
                             "eval_every=2"], method="lora")
    built = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, backbone=_backbone())
    train = built.loader.dataset.utts
    assert [u.text for u in train] == expected[:3]
    assert built.summary["dev_utterances"] == 1
    result = recipes.execute(built, tmp_path / "run")
    assert np.isfinite(json.loads((tmp_path / "run" / "result.json").read_text())["last_eval"]["wer"])
    assert result.adapter is not None


def test_teacher_targets_leave_out_clips_the_base_model_transcribes_as_empty(monkeypatch, tone_manifest, tmp_path):
    manifest = _manifest(tone_manifest)

    def silent(backbone, waves, **kw):  # the base model hears nothing in the first and the last (dev) clip
        return ["" if i in (0, 3) else f"clip {i}" for i in range(len(waves))]

    monkeypatch.setattr("speechtl.transcription.transcribe", silent)
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher"], method="lora")
    built = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg)
    assert [u.id for u in built.loader.dataset.utts] == ["u1", "u2"]
    assert [u.text for u in built.loader.dataset.utts] == ["clip 1", "clip 2"]
    assert built.summary["dev_utterances"] == 0  # the dev line went through the base model too


def test_a_resumed_run_reads_the_teacher_targets_back_unless_its_clips_changed(monkeypatch, tone_manifest, tmp_path,
                                                                              capsys):
    calls = []

    def teacher(backbone, waves, **kw):
        calls.append(len(waves))
        return ["" if i == 0 else f"pass {len(calls)} clip {i}" for i in range(len(waves))]

    monkeypatch.setattr("speechtl.transcription.transcribe", teacher)
    manifest, out = _manifest(tone_manifest), tmp_path / "run"
    keys = ["progress=false", "objective=short-context", "distill_targets=teacher", "max_steps=1", "eval_every=1"]
    cfg = load_config(None, keys, method="lora")
    recipes.execute(recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg), out)
    assert calls == [4]
    resumed = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, resume_dir=out)
    assert calls == [4]  # read back, not decoded again: the same texts, the empty clip still left out
    assert [(u.id, u.text) for u in resumed.loader.dataset.utts] == [("u1", "pass 1 clip 1"), ("u2", "pass 1 clip 2")]
    assert resumed.summary["dev_utterances"] == 1 and resumed.save_state is None
    # Other clips (a line more) are transcribed again, and the new transcripts replace the old.
    grown = tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("go home", "A", "train"),
                           ("go on", "A", "train"), ("no way", "A", "dev")])
    again = recipes.build(recipes.RunInputs("whisper-tiny-random", str(grown)), cfg, resume_dir=out)
    assert calls == [4, 5] and [u.text for u in again.loader.dataset.utts][-1] == "pass 2 clip 3"
    assert "holds the transcripts of other clips" in capsys.readouterr().err
    again.save_state(out)
    assert len(recipes.build(recipes.RunInputs("whisper-tiny-random", str(grown)), cfg,
                             resume_dir=out).loader.dataset.utts) == 3 and calls == [4, 5]


def test_tampered_teacher_targets_are_an_error_on_resume(monkeypatch, tone_manifest, tmp_path):
    monkeypatch.setattr("speechtl.transcription.transcribe", lambda b, waves, **kw: ["a b"] * len(waves))
    manifest, out = _manifest(tone_manifest), tmp_path / "run"
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher", "max_steps=1",
                             "eval_every=1"], method="lora")
    recipes.execute(recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg), out)
    saved = out / "teacher_targets" / "targets.jsonl"
    saved.write_text(saved.read_text().replace('"a b"', '"a c"'))
    with pytest.raises(SpeechtlError, match="teacher_targets: the base model's saved transcripts were modified"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, resume_dir=out)


def test_the_teacher_decodes_on_the_device_the_run_trains_on(monkeypatch, tone_manifest):
    seen = []

    def teacher(backbone, waves, **kw):
        seen.append(next(backbone.parameters()).device.type)
        return ["a b"] * len(waves)

    monkeypatch.setattr("speechtl.transcription.transcribe", teacher)
    # "meta" stands in for a GPU: the model must be on the run's device when the base model decodes.
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher", "device=meta"],
                      method="lora")
    recipes.build(recipes.RunInputs("whisper-tiny-random", str(_manifest(tone_manifest))), cfg)
    assert seen == ["meta"]


def test_under_torchrun_each_rank_transcribes_its_share_of_the_teacher_targets(monkeypatch, tone_manifest,
                                                                              tmp_path):
    seen = []

    def teacher(backbone, waves, **kw):
        seen.append(len(waves))
        return [f"mine {i}" for i in range(len(waves))]

    manifest = _manifest(tone_manifest)
    utts = read_manifest(manifest)

    def gather(shards, mine):  # rank 0's share (clips 0 and 2), as the process group would pass it to rank 1
        shards[:] = [([dataclasses.replace(utts[i], text=f"theirs {k}") for k, i in enumerate((0, 2))], None), mine]

    monkeypatch.setattr("speechtl.transcription.transcribe", teacher)
    monkeypatch.setattr("speechtl.distributed.dist.all_gather_object", gather)
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher"], method="lora")
    built = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, world=2, rank=1)
    assert seen == [2]  # clips 1 and 3 of the four: this rank's share only
    # Every clip's transcript in its place: rank 0 had clips 0 and 2, rank 1 clips 1 and 3 (the dev clip).
    assert {u.id: u.text for u in built.loader.dataset.utts} == {"u0": "theirs 0", "u1": "mine 0", "u2": "theirs 1"}
    assert built.summary["dev_utterances"] == 1
    built.save_state(tmp_path)  # the record holds all four, the dev clip's included
    rows = [json.loads(line) for line in (tmp_path / "teacher_targets" / "targets.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in rows] == [("u0", "theirs 0"), ("u1", "mine 0"), ("u2", "theirs 1"),
                                                    ("u3", "mine 1")]


def test_teacher_targets_leave_out_transcripts_longer_than_the_decoder_takes(monkeypatch, tone_manifest, capsys):
    # The base model can run on to its token limit, and its text may take more tokens when encoded again.
    monkeypatch.setattr("speechtl.transcription.transcribe",
                        lambda b, waves, **kw: ["word " * 300 if i == 1 else f"clip {i}" for i in range(len(waves))])
    cfg = load_config(None, ["progress=false", "objective=short-context", "distill_targets=teacher"], method="lora")
    built = recipes.build(recipes.RunInputs("whisper-tiny-random", str(_manifest(tone_manifest))), cfg)
    assert [u.id for u in built.loader.dataset.utts] == ["u0", "u2"]
    assert "1 clip(s) whose transcript by the base model is longer than the decoder takes are left out" in capsys.readouterr().err


def test_teacher_targets_need_the_short_context_objective(tone_manifest):
    cfg = load_config(None, ["progress=false", "distill_targets=teacher"], method="lora")
    with pytest.raises(SpeechtlError, match="applies to objective=short-context"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(_manifest(tone_manifest))), cfg)


@pytest.mark.parametrize("keys, model, message", [
    (["short_clips=false"], "whisper-tiny-random", "set short_clips=true"),
    ([], "wav2vec2-tiny-random", "use objective=transcripts"),
    (["replay_manifest=REPLAY", "replay_fraction=0.2"], "whisper-tiny-random", "leave replay_manifest unset"),
])
def test_the_objective_refuses_runs_it_cannot_train(tone_manifest, keys, model, message):
    manifest = _manifest(tone_manifest)
    keys = [k.replace("REPLAY", str(manifest)) for k in keys]
    cfg = load_config(None, ["progress=false", "objective=short-context", *keys], method="lora")
    with pytest.raises(SpeechtlError, match=message):
        recipes.build(recipes.RunInputs(model, str(manifest)), cfg)


def test_the_objective_key_does_not_apply_to_classification(tone_manifest):
    manifest = _manifest(tone_manifest)
    cfg = load_config(None, ["progress=false", "objective=short-context", "head=classifier"], method="lora")
    with pytest.raises(SpeechtlError, match="objective does not apply"):
        recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, task="asr")


# -- the base route ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_and_adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("route")
    base = _backbone(short=False)
    base.model.save_pretrained(folder / "whisper")
    base.processor.save_pretrained(folder / "whisper")
    saved = {}
    for name, short, seed in (("native", True, 1), ("A", False, 2)):
        b = speechtl.create_backbone(folder / "whisper")
        b.short_clips = short
        m = adapt(b, "lora", lora_r=4)
        torch.manual_seed(seed)
        with torch.no_grad():
            for n, p in m.backbone.named_parameters():
                if "lora_" in n:
                    p.add_(0.3 * torch.randn_like(p))
        saved[name] = m.save_adapter(folder / name)
    return folder / "whisper", saved


def test_a_base_adapter_runs_the_base_route_and_decodes_it_short(base_and_adapters, frames):
    base_dir, saved = base_and_adapters
    assert parse_adapter_specs([f"base={saved['native']}", f"A={saved['A']}"]) == {
        "base": str(saved["native"]), "A": str(saved["A"])}
    router = Router(speechtl.create_backbone(base_dir), {BASE: saved["native"], "A": saved["A"]})
    assert router.accents == ["A"] and router.trained_short(Route(BASE)) and not router.trained_short(Route("A"))
    plain = Router(speechtl.create_backbone(base_dir), {"A": saved["A"]})
    assert not plain.trained_short(Route(BASE))

    waves = [it["audio"] for it in _items()]
    feats, lens = router.generator.prepare(waves, short_clips=True)
    with torch.no_grad():
        with router.using(Route(BASE)):
            routed = router.generator.backbone.encode(feats, lens).last_hidden_state
        with plain.using(Route(BASE)):
            bare = plain.generator.backbone.encode(feats, lens).last_hidden_state
        own = load_adapter(speechtl.create_backbone(base_dir), saved["native"])
        alone = own.backbone.encode(feats, lens).last_hidden_state
    torch.testing.assert_close(routed, alone)  # the base route is the base adapter,
    assert not torch.allclose(routed, bare)    # not the adapters switched off

    frames.clear()  # what transcription encodes, from here on
    out = speechtl.transcribe(base_dir, waves, adapters={BASE: saved["native"], "A": saved["A"]}, route="none",
                              decode_options=DecodeOptions.plain(max_new_tokens=6), return_segments=True)
    assert [t.route.name for t in out] == [BASE] * 4 and all(t.short_clips for t in out)
    assert frames and max(frames) < FULL

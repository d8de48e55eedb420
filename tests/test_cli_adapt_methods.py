"""speechtl-adapt with DoRA and IA3, and gradient checkpointing: what users switch on with one key."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtl.adapters import load_adapter, read_adapter_meta
from speechtl.backbones import create_backbone
from speechtl.cli.adapt import main as adapt_main
from speechtl.config import load_config
from speechtl.tasks import task_for
from speechtl.transfer import adapt

MODEL = "whisper-tiny-random"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def manifest(tmp_path):
    """Three training tone clips and one dev clip of accent A."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (text, split) in enumerate([("hello there", "train"), ("yes sir", "train"), ("go home", "train"),
                                       ("see you", "dev")]):
        t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", wav, 16000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "speaker": "s0", "accent": "A",
                     "split": split})
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_adapt(capsys, manifest, out, *keys) -> str:
    code = adapt_main(["--model", MODEL, "--train", str(manifest), "--out", str(out), "lr=1e-2", "max_steps=2",
                       "eval_every=2", "batch_seconds=2", "log_every=1", "progress=false", "seed=0", *keys])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    return stdout


def logits(model) -> torch.Tensor:
    """Decoder logits ``(1, 4, vocab)`` for fixed log-mel features and decoder tokens."""
    hf = model.backbone.model
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, hf.config.num_mel_bins, 3000, generator=gen)
    tokens = torch.tensor([[hf.config.decoder_start_token_id, 5, 6, 7]])
    model.eval()
    with torch.no_grad():
        return hf(input_features=features, decoder_input_ids=tokens).logits


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_adapt_cli_trains_saves_and_reloads(tmp_path, manifest, capsys, method):
    out = tmp_path / method
    stdout = run_adapt(capsys, manifest, out, f"--method={method}")
    assert "best at step 2 of 2" in stdout
    meta = read_adapter_meta(out / "adapter")
    assert meta["method"] == method and (out / "adapter" / "adapter_model.safetensors").is_file()
    # The weights as training left them (the best step is the last), put into a fresh model by hand.
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=False)["trainable"]
    # The adapter the run's saved config describes (the recipe's Whisper defaults place it), built by hand.
    adapt_cfg = dataclasses.asdict(load_config(str(out / "config.yaml"), []).adapt)
    trained = adapt(create_backbone(MODEL), **adapt_cfg)
    assert set(state) == {n for n, p in trained.named_parameters() if p.requires_grad}
    trained.load_state_dict(state, strict=False)
    reloaded = load_adapter(create_backbone(MODEL), out / "adapter")
    assert reloaded.method == method and reloaded.num_trainable() == trained.num_trainable()
    base = logits(adapt(create_backbone(MODEL), **adapt_cfg))  # an untrained DoRA/IA3 adapter is the base model
    assert not torch.allclose(logits(trained), base, atol=1e-4)  # training moved the adapter
    torch.testing.assert_close(logits(reloaded), logits(trained), rtol=1e-5, atol=1e-6)


def _loss_and_grads(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = adapt(create_backbone(MODEL), "lora", lora_r=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # non-zero B: A's gradient is not zero either
                p.normal_(0, 0.1)
    if checkpointing:
        model.enable_gradient_checkpointing()
        assert model.backbone.model.is_gradient_checkpointing
    model.train()
    task = task_for(model)
    rng = np.random.default_rng(0)
    batch = task.collate([{"audio": (0.1 * rng.standard_normal(8000 + 1600 * i)).astype(np.float32),
                           "text": t} for i, t in enumerate(["hello there", "go home", "yes"])])
    loss = task.loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    loss, grads = _loss_and_grads(False)
    ck_loss, ck_grads = _loss_and_grads(True)
    assert ck_loss == pytest.approx(loss, rel=1e-6)
    assert set(ck_grads) == set(grads) and all(g.abs().sum() > 0 for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(ck_grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_adapt_cli_with_gradient_checkpointing_trains_alike(tmp_path, manifest, capsys):
    run_adapt(capsys, manifest, tmp_path / "plain", "--method=lora", "lora_r=4")
    run_adapt(capsys, manifest, tmp_path / "ckpt", "--method=lora", "lora_r=4", "gradient_checkpointing=true")
    assert "gradient_checkpointing: true" in (tmp_path / "ckpt" / "config.yaml").read_text()
    steps = {}
    for name in ("plain", "ckpt"):
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        steps[name] = [v for r in records if "loss" in r for v in (r["loss"], r["grad_norm"])]
    assert len(steps["plain"]) == 4  # loss and gradient norm of steps 1 and 2
    assert steps["ckpt"] == pytest.approx(steps["plain"], rel=1e-4)
    a = load_adapter(create_backbone(MODEL), tmp_path / "plain" / "adapter")
    b = load_adapter(create_backbone(MODEL), tmp_path / "ckpt" / "adapter")
    torch.testing.assert_close(logits(b), logits(a), rtol=1e-4, atol=1e-5)

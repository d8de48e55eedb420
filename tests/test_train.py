"""The training loop on a toy model: accumulation, exact resume, non-finite batches, early stopping, DDP."""

from __future__ import annotations

import json
import math
import os
import re
import socket

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from speechtl.config import TrainConfig
from speechtl.errors import SpeechtlError
from speechtl.training import autocast_context, check_settings, lr_lambda, train


pytestmark = pytest.mark.usefixtures("one_thread")


torch.manual_seed(0)
X = torch.randn(16, 4)
Y = torch.sin(X @ torch.randn(4, 1))


class EpochSampler:
    """Batches of ``size`` indices; the order depends only on the epoch (seeded shuffle), so resume is exact."""

    def __init__(self, n: int, size: int, shuffle: bool = True, pick: tuple[int, int] = (0, 1)):
        self.n, self.size, self.shuffle, self.epoch = n, size, shuffle, 0
        self.rank, self.world = pick

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist() \
            if self.shuffle else list(range(self.n))
        # With world > 1 each global batch of size*world is split between ranks.
        step = self.size * self.world
        return [order[i + self.rank * self.size: i + (self.rank + 1) * self.size] for i in range(0, self.n, step)]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate(items: list[int]) -> dict[str, torch.Tensor]:
    return {"x": X[items], "y": Y[items]}


def loader(size: int = 4, **kw) -> DataLoader:
    return DataLoader(list(range(len(X))), batch_sampler=EpochSampler(len(X), size, **kw), collate_fn=collate)


class MSE:
    """A task: mean squared error of ``model(x)`` against ``y``."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def toy(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, max_steps=8, log_every=1, progress=False, warmup_steps=2)
    return TrainConfig(**{**base, **kw})


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(warmup=4, total=14, schedule="cosine", min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1)
    lin = lr_lambda(warmup=0, total=10, schedule="linear", min_ratio=0.0)
    assert lin(5) == pytest.approx(0.5)
    assert lr_lambda(2, 10, "constant", 0.0)(9) == 1.0


def test_cpu_precision():
    ctx, scaler = autocast_context(torch.device("cpu"), "auto")
    assert not scaler and ctx().__class__.__name__ == "nullcontext"
    with pytest.raises(SpeechtlError, match="fp16 needs a CUDA"):
        autocast_context(torch.device("cpu"), "fp16")


def test_settings_training_cannot_run_are_refused_before_it_starts():
    class NoCheckpointing(nn.Linear):
        supports_gradient_checkpointing = False

        def enable_gradient_checkpointing(self):  # present, as on every speechtl model, yet unsupported
            raise AssertionError("check_settings must not call it")

    model = NoCheckpointing(2, 2)
    check_settings(TrainConfig(device="cpu"), model)
    for cfg, says in ((TrainConfig(device="cpu", gradient_checkpointing=True), "does not support gradient checkpoint"),
                      (TrainConfig(device="cpu", precision="fp16"), "fp16 needs a CUDA"),
                      (TrainConfig(device="tpu0"), "device=tpu0: not a device"),
                      (TrainConfig(device=f"cuda:{torch.cuda.device_count() + 3}"), "CUDA device(s)")):
        with pytest.raises(SpeechtlError, match=re.escape(says)):
            check_settings(cfg, model)
    model.weight.requires_grad_(False)
    model.bias.requires_grad_(False)
    with pytest.raises(SpeechtlError, match="no trainable parameters"):
        check_settings(TrainConfig(device="cpu"), model)
    check_settings(TrainConfig(device="cpu"))  # without a model, only the device and precision


def test_loss_falls_and_log_and_checkpoint_hold_only_trainable(tmp_path):
    model = toy()
    model[0].requires_grad_(False)  # a frozen "backbone"
    result = train(model, MSE(), loader(), config=cfg(max_steps=12), out_dir=tmp_path)
    assert result.steps == 12 and result.epoch == 3
    losses = [r["loss"] for r in records(tmp_path) if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert records(tmp_path)[-1]["event"] == "end"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert sorted(ckpt["trainable"]) == ["3.bias", "3.weight"]
    assert ckpt["step"] == 12 and ckpt["epoch"] == 3 and ckpt["batch_in_epoch"] == 0
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_gradient_accumulation_matches_the_bigger_batch(tmp_path):
    a, b = toy(), toy()
    train(a, MSE(), loader(4, shuffle=False), config=cfg(), out_dir=tmp_path / "a")
    train(b, MSE(), loader(2, shuffle=False), config=cfg(grad_accum=2), out_dir=tmp_path / "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


class Crash(MSE):
    """Fails on the ``at``-th loss call, like a killed job."""

    def __init__(self, at: int):
        self.calls, self.at = 0, at

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("simulated interruption")
        return super().loss(model, batch)


def test_resume_after_interruption_ends_with_the_same_weights(tmp_path):
    # Dropout makes the result depend on the restored RNG; batches of 3 make an epoch end mid-accumulation.
    config = cfg(max_steps=10, checkpoint_every=3, grad_accum=2)
    whole = toy(dropout=0.3)
    train(whole, MSE(), loader(3), config=config, out_dir=tmp_path / "whole")

    out = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="simulated"):
        train(toy(dropout=0.3), Crash(at=2 * 7 + 1), loader(3), config=config, out_dir=out)  # dies in step 8
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    resumed = toy(dropout=0.3)  # a new process: fresh weights, then the checkpoint
    result = train(resumed, MSE(), loader(3), config=config, out_dir=out, resume=True)
    assert result.steps == 10
    for pw, pr in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(pw, pr)
    steps = [r["step"] for r in records(out) if "loss" in r]
    assert steps == list(range(1, 11))  # records after the checkpoint were dropped, then redone


def test_resume_without_checkpoint_fails(tmp_path):
    with pytest.raises(SpeechtlError, match="no checkpoint to resume"):
        train(toy(), MSE(), loader(), config=cfg(), out_dir=tmp_path, resume=True)


class NaNAt(MSE):
    def __init__(self, bad: set[int]):
        self.calls, self.bad = 0, bad

    def loss(self, model, batch):
        self.calls += 1
        loss = super().loss(model, batch)
        return loss * float("nan") if self.calls in self.bad else loss


def test_non_finite_loss_skips_the_batch_then_gives_up(tmp_path):
    model = toy()
    with pytest.warns(RuntimeWarning, match="non-finite loss or gradient, batch skipped"):
        result = train(model, NaNAt({2, 3}), loader(), config=cfg(max_steps=4), out_dir=tmp_path / "a")
    assert result.steps == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.warns(RuntimeWarning), pytest.raises(SpeechtlError, match="5 batches in a row"):
        train(toy(), NaNAt(set(range(3, 100))), loader(), config=cfg(max_steps=20), out_dir=tmp_path / "b")


def test_early_stopping_keeps_the_best_weights(tmp_path):
    scores = iter([3.0, 2.0, 2.5, 2.2, 1.0])
    seen: list[torch.Tensor] = []

    def dev_fn(model):
        seen.append(model[3].weight.detach().clone())
        return {"wer": next(scores)}

    model = toy()
    result = train(model, MSE(), loader(), dev_fn=dev_fn,
                   config=cfg(max_steps=20, eval_every=2, early_stopping_patience=2), out_dir=tmp_path)
    assert result.stopped_early and result.steps == 8
    assert result.best_metric == 2.0 and result.best_step == 4
    assert torch.equal(model[3].weight, seen[1])  # the weights evaluated at step 4
    evals = [r for r in records(tmp_path) if "eval" in r]
    assert [r["best"] for r in evals] == [True, True, False, False]
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_a_damaged_best_checkpoint_reports_the_earlier_best_it_falls_back_to(tmp_path):
    scores = iter([3.0, 2.0, 2.5, 2.2])
    seen: list[torch.Tensor] = []

    def dev_fn(model):
        seen.append(model[3].weight.detach().clone())
        if len(seen) == 4:  # before the run ends: best.pt (step 4) is damaged on disk, best.prev.pt (step 2) is not
            best = tmp_path / "checkpoints" / "best.pt"
            data = bytearray(best.read_bytes())
            data[len(data) // 2] ^= 1
            best.write_bytes(bytes(data))
        return {"wer": next(scores)}

    model = toy()
    with pytest.warns(RuntimeWarning, match=r"best\.pt: .*using best\.prev\.pt \(step 2\)"):
        result = train(model, MSE(), loader(), dev_fn=dev_fn,
                       config=cfg(max_steps=20, eval_every=2, early_stopping_patience=2), out_dir=tmp_path)
    assert result.steps == 8
    assert result.best_step == 2 and result.best_metric == 3.0  # what the weights kept were scored
    assert torch.equal(model[3].weight, seen[0])


def test_a_tie_on_the_metric_goes_to_the_lower_dev_loss(tmp_path):
    # Accuracy on a small dev set saturates early; the more confident later model must be kept.
    evals = iter([(0.0, 0.6), (0.0, 0.3), (0.0, 0.4), (0.1, 0.1)])

    def dev_fn(model):
        error, loss = next(evals)
        return {"error": error, "loss": loss}

    result = train(toy(), MSE(), loader(), dev_fn=dev_fn, config=cfg(max_steps=8, eval_every=2, metric="error"),
                   out_dir=tmp_path)
    assert result.best_step == 4 and result.best_metric == 0.0
    assert [r["best"] for r in records(tmp_path) if "eval" in r] == [True, True, False, False]


def test_unknown_dev_metric_is_an_error(tmp_path):
    with pytest.raises(SpeechtlError, match="metric 'wer' is not among the dev results"):
        train(toy(), MSE(), loader(), dev_fn=lambda m: {"accuracy": 1.0}, config=cfg(eval_every=1), out_dir=tmp_path)


def test_nothing_to_train_is_an_error(tmp_path):
    model = toy().requires_grad_(False)
    with pytest.raises(SpeechtlError, match="no trainable parameters"):
        train(model, MSE(), loader(), config=cfg(), out_dir=tmp_path)


# -- distributed ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = toy()
    # Each rank sees its half of every global batch of 4, one item per micro-step (no_sync on the first).
    train(model, MSE(), loader(1, shuffle=False, pick=(rank, world)), config=cfg(grad_accum=2),
          out_dir=os.path.join(out, "ddp"))
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


def test_two_process_ddp_matches_one_process_with_the_doubled_batch(tmp_path):
    import torch.multiprocessing as mp

    single = toy()
    train(single, MSE(), loader(4, shuffle=False), config=cfg(), out_dir=tmp_path / "single")
    # spawn, not fork: a child forked from a process whose threads hold locks (torch, onnxruntime) can hang.
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, p in single.state_dict().items():
            torch.testing.assert_close(state[name], p, rtol=1e-5, atol=1e-6)
    losses = [r["loss"] for r in records(tmp_path / "ddp") if "loss" in r]
    single_losses = [r["loss"] for r in records(tmp_path / "single") if "loss" in r]
    assert losses == pytest.approx(single_losses, rel=1e-5)

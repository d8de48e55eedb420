"""Crash safety of training: verified checkpoints, fall back to the previous one, SIGKILL and resume.

The unit tests use a toy model in-process; the kill test runs ``speechtl-adapt`` on
whisper-tiny-random in forked children (the parent has already imported torch and transformers,
so a child starts in milliseconds), kills them with SIGKILL at random steps and resumes, then
compares the final adapter with an uninterrupted run's.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from speechtl.config import TrainConfig
from speechtl.errors import SpeechtlError
from speechtl.training import train


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Checkpoint files on a toy model

torch.manual_seed(0)
X = torch.randn(12, 4)
Y = torch.sin(X @ torch.randn(4, 1))


class EpochBatches:
    """Batches of 3 indices whose order depends only on the epoch, so resuming is exact."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(self.epoch)).tolist()
        return iter([order[i: i + 3] for i in range(0, len(X), 3)])

    def __len__(self) -> int:
        return len(X) // 3


class MSE:
    def loss(self, model: nn.Module, batch: list[int]) -> torch.Tensor:
        return ((model(X[batch]) - Y[batch]) ** 2).mean()


def toy() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))


def run(out: Path, *, resume: bool = False, max_steps: int = 6) -> nn.Module:
    model = toy()
    loader = DataLoader(list(range(len(X))), batch_sampler=EpochBatches(), collate_fn=lambda b: b)
    # A constant schedule: a run stopped at max_steps=4 then resumed to 6 equals one run of 6 steps.
    config = TrainConfig(lr=1e-2, max_steps=max_steps, checkpoint_every=1, log_every=1, progress=False,
                         schedule="constant", warmup_steps=0)
    train(model, MSE(), loader, config=config, out_dir=out, resume=resume)
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_each_checkpoint_is_recorded_with_its_sha256_and_the_previous_one_is_kept(tmp_path):
    run(tmp_path, max_steps=3)
    ckpts = tmp_path / "checkpoints"
    files = json.loads((ckpts / "checksums.json").read_text())["files"]
    assert sorted(files) == ["last.prev.pt", "last.pt"]
    assert files["last.pt"]["step"] == 3 and files["last.prev.pt"]["step"] == 2
    assert torch.load(ckpts / "last.prev.pt", weights_only=True)["step"] == 2
    assert not [p.name for p in ckpts.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "deleted"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    whole = run(tmp_path / "whole")
    out = tmp_path / "broken"
    run(out, max_steps=4)  # the same run, stopped after step 4
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "truncated":  # a write torn by a crash
        last.write_bytes(data[: len(data) // 2])
    elif damage == "bit flip":  # same size, still a readable zip: only the checksum notices
        i = data.index(b"archive/data/") + 200
        last.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    else:
        last.unlink()
    (out / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"left by a killed save")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(out, resume=True)
    messages = [str(w.message) for w in caught if "last.prev.pt" in str(w.message)]
    assert len(messages) == 1 and "using last.prev.pt (step 3) instead" in messages[0], messages
    assert "\n" not in messages[0]
    assert same_weights(whole, resumed)  # redoing step 4 from step 3 gives the same weights
    assert not (out / "checkpoints" / ".last.pt.abc123.tmp").exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    run(tmp_path, max_steps=2)
    for name in ("last.pt", "last.prev.pt"):
        path = tmp_path / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SpeechtlError, match=r"no intact checkpoint to resume from \(last.pt does not match its "
                       r"sha256.*; last.prev.pt .*start the run again without resume"):
        run(tmp_path, resume=True)


def test_a_torn_metrics_line_from_a_kill_is_dropped_on_resume(tmp_path):
    whole = run(tmp_path / "whole")
    out = tmp_path / "broken"
    run(out, max_steps=3)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 1, "lo')  # killed in the middle of a line
    resumed = run(out, resume=True)
    assert same_weights(whole, resumed)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"loss"' in line] == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_saving_keeps_the_old_checkpoint_and_names_the_file(tmp_path, monkeypatch):
    run(tmp_path, max_steps=2)
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("speechtl.training.torch.save", full)
    with pytest.raises(SpeechtlError, match=r"checkpoints/last.pt: cannot write the checkpoint \(No space left"):
        run(tmp_path, resume=True, max_steps=4)
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # nothing half-written, nothing lost


def _truncate(last: Path) -> None:
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])


def _flip_a_bit(last: Path) -> None:
    data = last.read_bytes()
    i = data.index(b"archive/data/") + 200
    last.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])


def _text_file(last: Path) -> None:
    last.write_text("step,loss\n1,0.5\n")
    (last.parent / "checksums.json").unlink()  # as if copied in from elsewhere: nothing to check it against


def _foreign_torch_file(last: Path) -> None:
    torch.save(toy().state_dict(), last)  # a model's weights, not a training checkpoint
    (last.parent / "checksums.json").unlink()


def _versioned_foreign_dict(last: Path) -> None:
    torch.save({"version": 1, "state_dict": toy().state_dict()}, last)
    (last.parent / "checksums.json").unlink()


@pytest.mark.parametrize(("damage", "says"), [
    (_truncate, r"last.pt does not match its sha256 in checksums.json \(torn write or corruption\); last.prev.pt is "
                r"missing\); start the run again without resume"),
    (_flip_a_bit, r"last.pt does not match its sha256 in checksums.json"),
    (_text_file, r"last.pt cannot be read \("),
    (_foreign_torch_file, r"last.pt is not a speechtl training checkpoint"),
    (_versioned_foreign_dict, r"not a speechtl training checkpoint \(it has no step, epoch, .*trainable"),
], ids=["truncated", "bit flip", "text file", "a model's weights", "foreign dict with a version"])
def test_a_damaged_or_foreign_last_checkpoint_without_a_previous_one_is_one_error_naming_it(tmp_path, damage, says):
    run(tmp_path, max_steps=2)
    last = tmp_path / "checkpoints" / "last.pt"
    (tmp_path / "checkpoints" / "last.prev.pt").unlink()
    damage(last)
    with pytest.raises(SpeechtlError, match=says) as caught:
        run(tmp_path, resume=True)
    message = str(caught.value)
    assert str(last) in message and "\n" not in message


def test_an_unreadable_checksum_record_is_named_rather_than_blamed_on_the_checkpoints(tmp_path):
    run(tmp_path, max_steps=2)
    (tmp_path / "checkpoints" / "checksums.json").write_text('{"version": 1, "fi')
    with pytest.raises(SpeechtlError, match=r"checkpoints/checksums.json: unreadable, so no checkpoint can be "
                                            r"verified; restore it, or start the run again without resume"):
        run(tmp_path, resume=True)


def test_resuming_with_other_trainable_parameters_names_the_checkpoint(tmp_path):
    run(tmp_path, max_steps=2)
    model = toy()
    model[0].requires_grad_(False)  # another transfer method: fewer parameters train
    loader = DataLoader(list(range(len(X))), batch_sampler=EpochBatches(), collate_fn=lambda b: b)
    with pytest.raises(SpeechtlError, match=r"checkpoints/last.pt: checkpoint does not match the model's trainable "
                       r"parameters \(missing \[\], unexpected \['0.bias', '0.weight'\]\)"):
        train(model, MSE(), loader, config=TrainConfig(max_steps=4, progress=False), out_dir=tmp_path, resume=True)
    # The same names with other shapes (another lora_r, a wider head): named too, not a tensor error.
    torch.manual_seed(1)
    wider = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
    with pytest.raises(SpeechtlError, match=r"checkpoints/last.pt: checkpoint's 0.weight is \(8, 4\), the model's "
                                            r"\(16, 4\) \(3 such parameter\(s\)\); resume with the same method"):
        train(wider, MSE(), loader, config=TrainConfig(max_steps=4, progress=False), out_dir=tmp_path, resume=True)


def test_checkpoint_state_round_trips_and_older_files_without_the_later_keys_load(tmp_path):
    from speechtl.checkpoint import CHECKPOINT_VERSION, CheckpointState, Progress, load_checkpoint, save_checkpoint

    state = CheckpointState(Progress(step=7, epoch=2, batch_in_epoch=1, best_metric=0.25, best_step=6, bad_evals=1,
                                     best_loss=0.5), {"w": torch.arange(3.0)}, {"state": {}, "param_groups": []},
                            {"last_epoch": 7}, {"scale": 1.0}, [{"python": None}], 1, {"lr": 0.01})
    path = save_checkpoint(tmp_path, "last", state)
    loaded = load_checkpoint(path)
    assert loaded.source == path and loaded.progress == state.progress and loaded.config == {"lr": 0.01}
    assert torch.equal(loaded.trainable["w"], state.trainable["w"]) and loaded.rng == state.rng

    record = torch.load(path, weights_only=True)
    assert record["version"] == CHECKPOINT_VERSION and record["step"] == 7 and record["batch_in_epoch"] == 1
    del record["best_loss"], record["config"]
    old = CheckpointState.from_dict(record, path)
    assert old.progress.best_loss is None and old.progress.step == 7 and old.config == {}


# --------------------------------------------------------------------------------------------
# SIGKILL at random steps, resume, compare with an uninterrupted run

MAX_STEPS = 10
KEYS = ["--model", "whisper-tiny-random", "--method", "lora", f"max_steps={MAX_STEPS}", "checkpoint_every=1",
        "log_every=1", "batch_seconds=1.0", "progress=false", "lora_r=4", "lr=1e-2", "num_workers=0", "seed=3"]


def _manifest(folder: Path) -> Path:
    """Six short clips of tone plus noise, all training data (no dev set: no evaluation to wait for)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(["hello there", "yes sir", "go home", "no way", "see you", "good day"]):
        t = np.arange(int(16000 * (0.4 + 0.05 * i))) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
        sf.write(folder / f"u{i}.wav", wav, 16000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "speaker": f"s{i % 2}", "accent": "A"})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fork_adapt(argv: list[str], log: Path) -> int:
    """Run ``speechtl-adapt argv`` in a forked child (output to ``log``); returns its pid."""
    from speechtl.cli.adapt import main

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(log, "a", buffering=1)  # noqa: SIM115 - the child ends with os._exit
        torch.set_num_threads(1)  # one thread: deterministic, and no OpenMP pool inherited across fork
        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _wait(pid: int, log: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"speechtl-adapt did not finish in {timeout:.0f} s:\n{log.read_text()}")


def _logged_step(metrics: Path) -> int:
    steps = [0]
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(json.loads(line).get("step", 0))
            except ValueError:
                pass  # a line being written right now
    return max(steps)


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_gives_the_uninterrupted_weights(tmp_path):
    from speechtl.backbones import create_backbone

    create_backbone("whisper-tiny-random")  # warm the lazy imports once, so the children start at once
    manifest = _manifest(tmp_path)
    log = tmp_path / "adapt.log"
    ref = tmp_path / "reference"
    assert _wait(_fork_adapt([*KEYS, "--train", str(manifest), "--out", str(ref)], log), log) == 0, log.read_text()

    out = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("SPEECHTL_KILL_SEED", "0")))
    # Three kills, at increasing steps (at least step 2, so a first checkpoint exists), each after a random
    # delay so it lands anywhere in a step: forward, backward, or in the middle of writing a checkpoint.
    targets = sorted(rng.sample(range(2, MAX_STEPS - 2), 3))  # at least 3 steps left: the kill never comes late
    kills = []
    argv = [*KEYS, "--train", str(manifest), "--out", str(out)]
    for target in targets:
        pid = _fork_adapt(argv, log)
        deadline = time.monotonic() + 120
        while _logged_step(out / "metrics.jsonl") < target:
            assert os.waitpid(pid, os.WNOHANG)[0] == 0, f"finished before step {target}:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        kills.append(_logged_step(out / "metrics.jsonl"))
        argv = [*KEYS, "--train", str(manifest), "--out", str(out), "--resume"]
    assert _wait(_fork_adapt(argv, log), log) == 0, log.read_text()

    a = load_file(ref / "adapter" / "adapter.safetensors")
    b = load_file(out / "adapter" / "adapter.safetensors")
    assert sorted(a) == sorted(b) and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{k} differs after kills at steps {kills}")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, MAX_STEPS + 1))
    assert not [p.name for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]


def test_speechtl_adapt_resume_from_a_foreign_checkpoint_is_one_error_line(tmp_path, capsys):
    from speechtl.cli.adapt import main

    manifest = _manifest(tmp_path)
    argv = [*KEYS[:4], "max_steps=1", *KEYS[5:], "--train", str(manifest), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    (last.parent / "last.prev.pt").unlink(missing_ok=True)
    last.write_bytes(b"PK\x03\x04 not really a zip")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(last) in errors[0] and "Traceback" not in err, err

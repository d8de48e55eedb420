"""speechtl-adapt under torchrun: two CPU processes (gloo) train one model and end with the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtl.adapters import load_adapter
from speechtl.backbones import create_backbone

sys.path.insert(0, os.path.dirname(__file__))
from test_export import _randomize  # noqa: E402

MODEL = "wav2vec2-tiny-random"

# Runs speechtl-adapt's own main() in each torchrun process and saves that rank's trained tensors.
WRAPPER = textwrap.dedent('''
    import os, sys
    import torch
    from speechtl import recipes
    from speechtl.cli import adapt

    torch.set_num_threads(1)
    execute = recipes.execute

    def keep(run, out, **kw):
        result = execute(run, out, **kw)
        state = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
        torch.save(state, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
        return result

    recipes.execute = keep
    sys.exit(adapt.main(sys.argv[2:]))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_adapt_under_torchrun_trains_one_model_on_two_ranks(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        t = np.arange(int(16000 * (0.4 + 0.05 * i))) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", wav, 16000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": ["hello there", "yes sir", "go home"][i % 3],
                     "speaker": f"s{i % 3}", "accent": "A", "split": "dev" if i == 8 else "train"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(tmp_path / "wrapper.py"), str(tmp_path),
           "--model", MODEL, "--method", "lora", "--train", str(tmp_path / "m.jsonl"), "--out", str(out),
           "lr=1e-2", "lora_r=4", "max_steps=3", "eval_every=3", "batch_seconds=1", "progress=false", "seed=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0] and set(ranks[0]) == set(ranks[1])
    for name, p in ranks[0].items():  # gradients were averaged: every step moved both ranks alike
        torch.testing.assert_close(ranks[1][name], p, rtol=0, atol=0, msg=name)
    assert any(p.abs().sum() > 0 for n, p in ranks[0].items() if "lora_B" in n)  # and they did train
    # The one adapter written (by rank 0) is that model.
    saved = load_adapter(create_backbone(MODEL), out / "adapter")
    mine = {n: p for n, p in saved.named_parameters() if p.requires_grad}
    assert set(mine) == set(ranks[0])
    for name, p in ranks[0].items():
        torch.testing.assert_close(mine[name], p, msg=name)


def test_run_device_is_the_local_gpu_by_default(monkeypatch):
    from speechtl.distributed import run_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_device() == run_device("cuda") == torch.device("cuda", 1)
    assert run_device("cpu") == torch.device("cpu") and run_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("RANK", "2")  # torchrun's rank before the process group exists
    assert run_device() == torch.device("cuda", 2) and run_device(rank=0) == torch.device("cuda", 0)


def _shard_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from speechtl.distributed import map_shards

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        given = []

        def fn(items):
            given.extend(items)
            return [f"{x}:{rank}" for x in items]

        results = map_shards(fn, [f"c{i}" for i in range(5)], rank, 2)

        def fail_on_rank_1(items):
            if rank == 1:
                raise ValueError("clip c3 is unreadable")
            return items

        try:
            map_shards(fail_on_rank_1, ["a", "b", "c"], rank, 2)
            failed = None
        except Exception as e:  # both ranks stop, rather than rank 0 waiting for rank 1
            failed = f"{type(e).__name__}: {e}"
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"given": given, "results": results, "failed": failed}, f)
    finally:
        dist.destroy_process_group()


def test_map_shards_runs_each_item_on_one_rank_and_gives_every_rank_all_results_in_order(tmp_path):
    torch.multiprocessing.spawn(_shard_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["given"] == ["c0", "c2", "c4"] and ranks[1]["given"] == ["c1", "c3"]
    expected = ["c0:0", "c1:1", "c2:0", "c3:1", "c4:0"]
    assert ranks[0]["results"] == ranks[1]["results"] == expected
    assert ranks[1]["failed"] == "ValueError: clip c3 is unreadable"
    assert ranks[0]["failed"] == "SpeechtlError: process 1 of 2 failed on its share: ValueError: clip c3 is unreadable"


@pytest.mark.slow
def test_teacher_targets_under_torchrun_are_shared_out_and_the_run_trains(tmp_path):
    """distill_targets=teacher joins the process group before training to share the base model's pass."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        wav = (0.1 * rng.standard_normal(int(16000 * (0.5 + 0.1 * i)))).astype(np.float32)
        sf.write(tmp_path / f"u{i}.wav", wav, 16000)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": "", "speaker": f"s{i % 2}", "accent": "A",
                     "split": "dev" if i == 5 else "train"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    b = create_backbone("whisper-tiny-random")
    _randomize(b.model, 0)  # a base model that says something on noise, for the teacher's transcripts
    b.model.save_pretrained(tmp_path / "whisper")
    b.processor.save_pretrained(tmp_path / "whisper")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(tmp_path / "wrapper.py"), str(tmp_path),
           "--model", str(tmp_path / "whisper"), "--method", "lora", "--train", str(tmp_path / "m.jsonl"),
           "--out", str(out), "objective=short-context", "distill_targets=teacher", "lora_r=4", "max_steps=2",
           "eval_every=2", "batch_seconds=2", "progress=false", "seed=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a share on each of 2 processes" in done.stderr
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    targets = [json.loads(line) for line in (out / "teacher_targets" / "targets.jsonl").read_text().splitlines()]
    assert [t["id"] for t in targets] == [f"u{i}" for i in range(6)]  # every clip, in order, from both shares
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, p in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], p, rtol=0, atol=0, msg=name)

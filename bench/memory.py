#!/usr/bin/env python3
"""Training memory of LoRA, bottleneck adapters and full fine-tuning with speechtl's training core.

Run by hand (a few minutes on 2 cores for whisper-tiny.en; add whisper-base for a bigger model):

    .venv/bin/python bench/memory.py [--models whisper-tiny.en whisper-base] [--batch-seconds 40 --steps 3]

Each (model, method) runs in its own child process: the speechtl-adapt recipe (``speechtl.recipes``:
batches of ``batch_seconds`` audio, short clips) + ``speechtl.training.train`` for ``--steps`` AdamW steps
on the same clips (speechocean762 train, synthetic fallback when absent), fp32 on CPU. Reported per method: peak RSS
(``getrusage`` of the child), RSS once the model is loaded and adapted, and what torch holds for
training: parameter bytes, gradient bytes (one per trainable parameter) and AdamW state bytes
(read from the checkpoint the loop writes). Ratios are to full fine-tuning.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, benchmark_corpus, child_main, command_line, finish, machine_facts, peak_rss_mb,  # noqa: E402
                     recipe_run, rss_mb, run_child, utterance_records)

METHODS = {
    "lora": {"lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "bottleneck": {"bottleneck_style": "houlsby", "bottleneck_reduction": 16},
    "finetune": {},
}
MB = 2**20


def _tensor_bytes(obj: Any) -> int:
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from speechtl.training import train

    keys = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in METHODS[spec["method"]].items()]
    keys += [f"batch_seconds={spec['batch_seconds']}", "lr=1e-4", f"max_steps={spec['steps']}", "precision=fp32",
             "device=cpu", "progress=false", "load_best_at_end=false", "seed=0"]
    rss_start = rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        run = recipe_run(spec["model"], spec["train"], keys, work, method=spec["method"])
    model = run.model
    rss_loaded = rss_mb()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        t0 = time.perf_counter()
        train(model, run.task, run.loader, config=run.train_config, out_dir=tmp)
        seconds = time.perf_counter() - t0
        ckpt = torch.load(Path(tmp) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    optim_bytes = _tensor_bytes(ckpt["optimizer"]["state"])
    return {
        "model": spec["model"], "method": spec["method"], "config": METHODS[spec["method"]],
        "trainable_parameters": sum(p.numel() for p in trainable), "total_parameters": sum(p.numel() for p in params),
        "rss_after_imports_mb": rss_start, "rss_after_model_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
        "training_rss_increase_mb": round(peak_rss_mb() - rss_loaded, 1),
        "torch_parameter_mb": round(param_bytes / MB, 1), "torch_gradient_mb": round(grad_bytes / MB, 2),
        "torch_optimizer_state_mb": round(optim_bytes / MB, 2),
        "torch_param_grad_optim_mb": round((param_bytes + grad_bytes + optim_bytes) / MB, 1),
        "train_seconds": round(seconds, 1), "steps": spec["steps"],
    }


def main() -> int:
    if "--child" in sys.argv:
        return child_main(run_method)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["whisper-tiny.en"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--batch-seconds", type=float, default=40.0, help="audio per batch (speechtl-adapt's batch_seconds)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "memory.json"))
    args = ap.parse_args()

    splits, data = benchmark_corpus()
    train = utterance_records(splits["train"])
    random.Random(args.seed).shuffle(train)
    # Enough clips for every step's batch of batch_seconds (the recipe's sampler draws them).
    keep, total = [], 0.0
    for r in train:
        if total >= args.batch_seconds * (args.steps + 1):
            break
        keep.append(r)
        total += r["duration"]
    train = keep
    result: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(), "data": data,
        "config": {"batch_seconds": args.batch_seconds, "steps": args.steps, "optimizer": "AdamW",
                   "precision": "fp32", "path": "speechtl.recipes (speechtl-adapt's recipe)",
                   "train_clips": len(train), "train_audio_seconds": round(total, 1)},
        "runs": {},
    }
    summary = []
    for model in args.models:
        runs = {}
        for method in args.methods:
            runs[method] = run_child(__file__, {"model": model, "method": method, "train": train,
                                                "batch_seconds": args.batch_seconds,
                                                "steps": args.steps, "threads": args.threads}, threads=args.threads)
        if "finetune" in runs:
            full = runs["finetune"]
            for r in runs.values():
                r["ratios_to_full"] = {
                    "peak_rss": round(r["peak_rss_mb"] / full["peak_rss_mb"], 3),
                    "training_rss_increase": round(r["training_rss_increase_mb"] / full["training_rss_increase_mb"], 3),
                    "torch_param_grad_optim": round(r["torch_param_grad_optim_mb"] / full["torch_param_grad_optim_mb"],
                                                    3),
                }
            if "lora" in runs:
                lr = runs["lora"]["ratios_to_full"]
                runs["lora"]["target"] = "LoRA peak RSS <= 0.6x full fine-tuning"
                runs["lora"]["target_met"] = lr["peak_rss"] <= 0.6
            summary.append(f"{model}: " + ", ".join(
                f"{m} {r['peak_rss_mb']:.0f} MB ({r['ratios_to_full']['peak_rss']:.2f}x full)" for m, r in runs.items()))
        else:
            summary.append(f"{model}: " + ", ".join(f"{m} {r['peak_rss_mb']:.0f} MB" for m, r in runs.items()))
        result["runs"][model] = runs
    result["notes"] = [
        "Peak RSS holds the Python/torch/transformers runtime (rss_after_imports_mb), the fp32 model and the "
        "activations of the batch besides what training adds; only gradients and AdamW state (and the activations "
        "kept for backward of trainable weights) differ between methods.",
        "torch_param_grad_optim_mb counts parameters + one gradient per trainable parameter + AdamW's two moments "
        "(read from the checkpoint): the part of memory a method controls directly.",
    ]
    finish(result, Path(args.out), "peak RSS, " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

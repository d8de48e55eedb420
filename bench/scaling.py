#!/usr/bin/env python3
"""How LoRA adaptation time grows with the amount of training audio (one epoch each).

Run by hand (a few minutes on 2 cores with the defaults; the full sizes take about half an hour):

    .venv/bin/python bench/scaling.py [--hours 0.025 0.05 0.1]   # full: --hours 0.1 0.2 0.4

For each size, nested prefixes of the shuffled speechocean762 train clips (synthetic fallback when
absent) adapt a fresh whisper-tiny.en with LoRA (r=8, alpha=16, q_proj+v_proj, lr 3e-4) for one
epoch through the speechtl-adapt recipe (``speechtl.recipes``) and its defaults (duration-capped batches
of ``batch_seconds`` audio, short clips, fp32 on CPU, no dev evaluation). One short untimed run
warms up first. Fits seconds = a + b * hours and reports R^2 and the per-hour cost at the
largest size over the smallest (1.0 = linear). Writes bench/results/scaling.json.
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
from _common import RESULTS, benchmark_corpus, command_line, finish, load_average, machine_facts  # noqa: E402

MODEL = "whisper-tiny.en"


def adapt_once(utts: list, batch_seconds: float, *, max_steps: int | None = None) -> dict[str, Any]:
    """One LoRA adaptation (a fresh model, the speechtl-adapt recipe) for one epoch or ``max_steps``.

    Returns wall and CPU seconds of ``train()``.
    """
    from speechtl import recipes
    from speechtl.config import load_config
    from speechtl.data.manifest import write_manifest
    from speechtl.training import train

    keys = ["lora_r=8", "lora_alpha=16", "target_modules=q_proj,v_proj", "lr=3e-4", "epochs=1",
            f"max_steps={'null' if max_steps is None else max_steps}", f"batch_seconds={batch_seconds}",
            "precision=fp32", "device=cpu", "progress=false", "seed=0"]
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        write_manifest(utts, Path(tmp) / "train.jsonl")
        run = recipes.build(recipes.RunInputs(MODEL, str(Path(tmp) / "train.jsonl")),
                            load_config(None, keys, method="lora"))
        w0, c0, la0 = time.perf_counter(), time.process_time(), load_average()
        res = train(run.model, run.task, run.loader, config=run.train_config, out_dir=Path(tmp) / "run")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"steps": res.steps, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "load_average_before": la0, "load_average_after": load_average()}


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b, r2)``."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx
    a = my - b * mx
    ss_res = sum((yi - a - b * xi) ** 2 for xi, yi in zip(x, y))
    ss_tot = sum((yi - my) ** 2 for yi in y)
    return a, b, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", nargs="+", type=float, default=[0.025, 0.05, 0.1])
    ap.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (speechtl-adapt default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = ap.parse_args()
    if len(args.hours) < 2:
        ap.error("give at least two --hours to fit a line")

    import torch

    torch.set_num_threads(args.threads)
    splits, data = benchmark_corpus()
    train = list(splits["train"])
    random.Random(args.seed).shuffle(train)
    available = sum(u.duration for u in train) / 3600
    result: dict[str, Any] = {"command": command_line(), "machine": machine_facts(), "data": data, "model": MODEL,
                              "config": {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lr": 3e-4, "epochs": 1,
                                         "batch_seconds": args.batch_seconds, "short_clips": True,
                                         "threads": args.threads}}
    adapt_once(train[:16], args.batch_seconds, max_steps=2)  # warm-up: first-call costs stay out of the timings
    runs = []
    for hours in sorted(args.hours):
        if hours > available + 1e-9:
            ap.error(f"--hours {hours}: the training set holds only {available:.3f} hours")
        chosen, total = [], 0.0
        for u in train:
            if total >= hours * 3600:
                break
            chosen.append(u)
            total += u.duration
        run = adapt_once(chosen, args.batch_seconds)
        run.update({"hours_requested": hours, "hours": round(total / 3600, 4), "clips": len(chosen),
                    "seconds_per_audio_hour": round(run["seconds"] / (total / 3600), 1),
                    "audio_seconds_per_second": round(total / run["seconds"], 3)})
        runs.append(run)
        print(f"{run['hours']:.3f} h ({len(chosen)} clips, {run['steps']} steps): {run['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    result["runs"] = runs
    xs = [r["hours"] for r in runs]
    fits = {}
    for key in ("seconds", "cpu_seconds"):
        ys = [r[key] for r in runs]
        a, b, r2 = linear_fit(xs, ys)
        per_hour = [y / x for x, y in zip(xs, ys)]
        fits[key] = {"intercept_seconds": round(a, 2), "seconds_per_hour": round(b, 1), "r2": round(r2, 4),
                     "per_hour_cost_largest_over_smallest": round(per_hour[-1] / per_hour[0], 3)}
    result["fit"] = fits
    f = fits["seconds"]
    sizes = ", ".join(f"{r['hours']:.3f} h {r['seconds']:.0f} s" for r in runs)
    finish(result, Path(args.out),
           f"LoRA one epoch: {sizes}; "
           f"fit {f['seconds_per_hour']:.0f} s/h + {f['intercept_seconds']:.0f} s, R^2 {f['r2']:.3f}; per-hour cost "
           f"{xs[-1]:.2f} h vs {xs[0]:.2f} h: {f['per_hour_cost_largest_over_smallest']:.2f}x "
           f"(CPU time {fits['cpu_seconds']['per_hour_cost_largest_over_smallest']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

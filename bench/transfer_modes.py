#!/usr/bin/env python3
"""Every transfer mode through ``speechtl-adapt`` on real accented speech, and what short clips buy.

The same command — ``speechtl-adapt --model whisper-tiny.en --train so762.jsonl --method M`` on the
speechocean762 speakers (Mandarin-L1 English; split by speaker, dev = other speakers) — once per
method (lora, bottleneck, features, finetune) for the same number of steps, plus LoRA with
``short_clips=false`` (every clip padded to Whisper's 30 s, as transformers does) to measure the
short-clip speed-up and the dev WER after adaptation with and without it. Dev WER is always decoded
with 30-s padding (``dev_short_clips=false``), so the two LoRA runs are scored alike.

    python bench/transfer_modes.py [--steps 60] [--work /tmp/speechtl-modes] [--runs lora,lora-30s,...]

Writes ``bench/results/transfer_modes.json`` and ``.md``. Seconds per step are the median over the
logged 10-step windows that hold no dev evaluation. Runs go through the speechtl-adapt recipe
(``speechtl.recipes``), one after another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, benchmark_corpus, machine_facts, load_average  # noqa: E402

MODEL = "whisper-tiny.en"
COMMON = ["batch_seconds=40", "warmup_steps=10", "seed=0"]
# One learning rate per method, each the usual order of magnitude for it.
RUNS: dict[str, list[str]] = {
    "lora": ["--method", "lora", "lr=3e-4"],
    "lora-30s": ["--method", "lora", "lr=3e-4", "short_clips=false"],
    "bottleneck": ["--method", "bottleneck", "lr=3e-4"],
    "features": ["--method", "features", "lr=1e-3", "weighted_layers=true"],
    "finetune": ["--method", "finetune", "lr=2e-5", "layer_decay=0.8"],
}


def _seconds_per_step(metrics: list[dict[str, Any]], eval_steps: set[int]) -> float | None:
    train = [m for m in metrics if "loss" in m and "seconds" in m]
    gaps = []
    for a, b in zip(train, train[1:]):
        if any(a["step"] <= s < b["step"] for s in eval_steps):
            continue  # a dev evaluation ran inside this window
        gaps.append((b["seconds"] - a["seconds"]) / (b["step"] - a["step"]))
    return statistics.median(gaps) if gaps else None


def _run(name: str, argv: list[str], manifest: Path, work: Path, steps: int) -> dict[str, Any]:
    """One run of the speechtl-adapt recipe (``--method M`` and ``key=value`` items of ``argv``)."""
    from speechtl import recipes
    from speechtl.config import load_config
    from speechtl.errors import SpeechtlError

    out = work / name
    method = argv[argv.index("--method") + 1]
    keys = [a for a in argv if "=" in a] + [*COMMON, f"max_steps={steps}", f"eval_every={steps}"]
    print(f"$ speechtl-adapt --model {MODEL} --train {manifest} --method {method} --out {out} {' '.join(keys)}",
          flush=True)
    t0 = time.perf_counter()
    try:
        done = recipes.run(recipes.RunInputs(MODEL, str(manifest)), load_config(None, keys, method=method), out,
                           overwrite=True)
    except SpeechtlError as e:
        return {"run": name, "argv": argv, "error": [str(e)], "wall_seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [m for m in metrics if "eval" in m]
    result = done.summary
    row = {"run": name, "argv": argv, "steps": result["steps"], "wall_seconds": round(wall, 1),
           "seconds_per_step": _seconds_per_step(metrics, {m["step"] for m in evals}),
           "dev_wer": result.get("best_metric"), "last_eval": result.get("last_eval"),
           "first_loss": next((m["loss"] for m in metrics if "loss" in m), None),
           "last_loss": next((m["loss"] for m in reversed(metrics) if "loss" in m), None),
           "trainable": done.run.model.summary().rsplit(";", 1)[-1].strip()}
    print(f"  {name}: {row['seconds_per_step']:.2f} s/step, dev WER {row['dev_wer']}, {row['trainable']}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--work", default="/tmp/speechtl-modes")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    args = ap.parse_args()
    from speechtl.data import write_manifest

    facts = machine_facts()
    splits, what = benchmark_corpus()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "corpus.jsonl"
    write_manifest(splits["train"] + splits["dev"], manifest)
    rows = [_run(name, RUNS[name], manifest, work, args.steps) for name in args.runs.split(",")]

    by = {r["run"]: r for r in rows if "error" not in r}
    speedup = None
    if "lora" in by and "lora-30s" in by and by["lora"]["seconds_per_step"]:
        speedup = by["lora-30s"]["seconds_per_step"] / by["lora"]["seconds_per_step"]
    facts["load_average_after"] = load_average()
    result = {"bench": "transfer_modes", "model": MODEL, "corpus": what, "steps": args.steps,
              "train_utterances": len(splits["train"]), "dev_utterances": len(splits["dev"]),
              "common_settings": COMMON, "runs": rows, "short_clip_step_speedup": speedup, "machine": facts}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer_modes.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (RESULTS / "transfer_modes.md").write_text(md)
    print(md)
    return 0 if all("error" not in r for r in rows) else 1


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"# Transfer modes on {r['model']}, {r['steps']} steps each", "", f"Corpus: {r['corpus']}; "
             f"{r['train_utterances']} train / {r['dev_utterances']} dev utterances (dev speakers unseen).", "",
             "| run | settings | s/step | dev WER | loss first → last | trainable |", "|---|---|---|---|---|---|"]
    for row in r["runs"]:
        if "error" in row:
            lines.append(f"| {row['run']} | {' '.join(row['argv'])} | failed: {' '.join(row['error'])} | | | |")
            continue
        wer = "—" if row["dev_wer"] is None else f"{row['dev_wer'] * 100:.2f} %"
        lines.append(f"| {row['run']} | {' '.join(row['argv'])} | {row['seconds_per_step']:.2f} | {wer} | "
                     f"{row['first_loss']:.3f} → {row['last_loss']:.3f} | {row['trainable']} |")
    if r["short_clip_step_speedup"]:
        lines += ["", f"Short clips (pad to the batch's longest clip) vs 30-s padding: "
                  f"{r['short_clip_step_speedup']:.2f}× faster per LoRA step."]
    lines += ["", f"Settings shared by every run: {' '.join(r['common_settings'])}. "
              "Reproduce: `python bench/transfer_modes.py`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

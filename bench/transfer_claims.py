#!/usr/bin/env python3
"""Does transfer beat training from scratch with few labels? Two offline image/text experiments.

- ``digits``: scikit-learn's handwritten digits (8x8, 10 classes), upsampled to the input size of
  EfficientNet-Lite0 (packaged ImageNet weights).
- ``wordnet``: WordNet 3.0 usage examples labelled by lexicographer file (10 most frequent
  classes), with all-MiniLM-L6-v2 (packaged).

For each: the same architecture from random initialisation (``scratch``, every weight trains)
versus the pretrained backbone with ``features`` (frozen, new head), ``lora`` and ``finetune``,
at 5 %, 20 % and 100 % of the training labels (nested, stratified subsets). Every run goes through
the classification recipe (``speechtl.recipes.classify``) and ``speechtl.training.train``; the test set
is scored once at the end
(accuracy and macro-F1), never used to choose anything. Hyper-parameters are fixed in advance
(:data:`EXPERIMENTS`), not tuned.

    python bench/transfer_claims.py [digits|wordnet|all] [--threads 1] [--out bench/results]
        [--device cuda] [--image-size 224] [--suffix _224px_cuda]

Writes ``OUT/transfer_<name><suffix>.json`` (settings, every run, the verdict at 5 %) and ``.md``
(table). ``--image-size`` overrides the digits input size (96 px keeps the CPU run short).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import speechtl
from speechtl import recipes
from speechtl.config import load_config
from speechtl.data.classify import (
    ClassifyDataset,
    classification_metrics,
    label_set,
    predict_all,
    read_classify_manifest,
    split_examples,
    stratified_subset,
    write_classify_manifest,
)
from speechtl.fileio import atomic_write_text
from speechtl.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, load_average, machine_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = ("scratch", "features", "lora", "finetune")
FRACTIONS = (0.05, 0.2, 1.0)

EXPERIMENTS: dict[str, dict[str, Any]] = {
    "digits": {
        "backbone": "efficientnet-lite0",
        # 96 px instead of the weights' 224 px keeps the 12 runs under 10 minutes on 2 CPU cores.
        "backbone_kwargs": {"image_size": 96, "crop_pct": 1.0},
        "corpus": "corpora/make_digits.py",
        "train_per_class": 30,  # of 1,258 training images: a stratified pool of 300
        "test_per_class": 30,  # of 539 test images: 300
        "batch_size": 16,
        "epochs": 5,
        "min_steps": 60,  # fewer left scratch and finetune under-fitted at 5 % (train loss > 1)
        "lr": {"scratch": 1e-3, "features": 1e-3, "lora": 1e-3, "finetune": 5e-4},
    },
    "wordnet": {
        "backbone": "minilm-l6",
        "backbone_kwargs": {"max_length": 64},
        "corpus": "corpora/make_wordnet_lexnames.py",
        "train_per_class": 50,  # a balanced pool of 500 (the classes hold 1k-14k sentences)
        "test_per_class": 40,  # 400
        # Full fine-tuning steps cost ~1 s on a shared CPU core (AdamW over 22.7M weights, a dense gradient for
        # the 30k-word embedding), so fewer, larger steps: 30 steps still fit the 5 % and 20 % subsets.
        "batch_size": 32,
        "epochs": 5,
        "min_steps": 30,
        "lr": {"scratch": 5e-4, "features": 1e-3, "lora": 1e-3, "finetune": 2e-4},
    },
}


def balanced_pool(examples: list, per_class: int, seed: int) -> list:
    """``per_class`` examples of every label (all of a smaller class), chosen with ``seed``."""
    by_label: dict[str, list] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    keep = set()
    for label, group in by_label.items():
        fraction = min(1.0, per_class / len(group))
        keep.update(e.id for e in stratified_subset(group, fraction, seed=seed))
    return [ex for ex in examples if ex.id in keep]


def ensure_corpus(name: str, spec: dict[str, Any], data_dir: Path) -> Path:
    manifest = data_dir / name / "manifest.jsonl"
    if not manifest.is_file():
        subprocess.run([sys.executable, str(REPO / spec["corpus"]), str(data_dir / name)], check=True)
    return manifest


def run_one(spec: dict[str, Any], mode: str, labels: list[str], train_set: list, test_set: list, kind: str,
            seed: int, work: Path, device: str) -> dict[str, Any]:
    t0 = time.time()
    backbone = speechtl.create_backbone(spec["backbone"], pretrained=mode != "scratch", seed=seed,
                                        **spec["backbone_kwargs"])
    method = "finetune" if mode == "scratch" else mode
    bs = spec["batch_size"]
    steps = max(spec["min_steps"], math.ceil(spec["epochs"] * len(train_set) / bs))
    keys = [f"lr={spec['lr'][mode]}", "weight_decay=0.01", f"max_steps={steps}", f"warmup_steps={max(1, steps // 10)}",
            "schedule=cosine", f"precision={'fp32' if device == 'cpu' else 'auto'}", f"device={device}",
            "progress=false", f"log_every={min(10, steps)}", "metric=error", "load_best_at_end=false", f"seed={seed}",
            f"batch_size={bs}"]
    manifest = work / f"{mode}-train.jsonl"
    write_classify_manifest(train_set, manifest, kind)
    run = recipes.build(recipes.RunInputs(spec["backbone"], str(manifest)), load_config(None, keys, method=method),
                        task="classify", backbone=backbone)
    model, task = run.model, run.task
    if task.labels != list(labels):
        raise SystemExit(f"{spec['backbone']}: the training subset lacks some of the classes {labels}")
    t1 = time.time()
    train(model, task, run.loader, config=run.train_config, out_dir=work / f"{mode}")
    t2 = time.time()
    test_loader = DataLoader(ClassifyDataset(test_set, kind, cache=True), batch_size=64, collate_fn=task.collate)
    gold, pred = predict_all(task, model, test_loader)
    metrics = classification_metrics(gold, pred)
    t3 = time.time()
    losses = [json.loads(line) for line in (work / mode / "metrics.jsonl").read_text().splitlines()]
    final_loss = next((r["loss"] for r in reversed(losses) if "loss" in r), None)
    return {
        "mode": mode, "method": model.method, "train_examples": len(train_set), "steps": steps,
        "lr": spec["lr"][mode], "trainable_params": model.num_trainable(), "total_params": model.num_parameters(),
        "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
        "final_train_loss": None if final_loss is None else round(final_loss, 4),  # mean of the last 10 steps
        "build_seconds": round(t1 - t0, 2), "train_seconds": round(t2 - t1, 2), "test_seconds": round(t3 - t2, 2),
        "wall_seconds": round(t3 - t0, 2), "predictions": pred,
    }


def paired_bootstrap(gold: list[str], a: list[str], b: list[str], *, n: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Macro-F1(a) - macro-F1(b) on the test set and its 95 % interval over test examples resampled with replacement."""
    rng = np.random.default_rng(seed)
    g, pa, pb = np.asarray(gold, dtype=object), np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(g), len(g))
        diffs.append(classification_metrics(g[idx].tolist(), pa[idx].tolist())["macro_f1"]
                     - classification_metrics(g[idx].tolist(), pb[idx].tolist())["macro_f1"])
    point = classification_metrics(gold, a)["macro_f1"] - classification_metrics(gold, b)["macro_f1"]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def verdict(rows: list[dict[str, Any]], gold: list[str], fraction: float) -> dict[str, Any]:
    """Each transfer mode against scratch at ``fraction`` of the labels: macro-F1 difference with a paired
    bootstrap 95 % interval. Transfer "beats" scratch when some mode's whole interval lies above zero."""
    at = {r["mode"]: r for r in rows if r["fraction"] == fraction}
    modes = {}
    for m in ("features", "lora", "finetune"):
        diff, lo, hi = paired_bootstrap(gold, at[m]["predictions"], at["scratch"]["predictions"])
        modes[m] = {"macro_f1": at[m]["macro_f1"], "accuracy": at[m]["accuracy"], "f1_minus_scratch": round(diff, 4),
                    "ci95": [round(lo, 4), round(hi, 4)], "beats_scratch": lo > 0}
    winners = [m for m, v in modes.items() if v["beats_scratch"]]
    return {
        "fraction": fraction,
        "scratch_accuracy": at["scratch"]["accuracy"], "scratch_macro_f1": at["scratch"]["macro_f1"],
        "modes": modes, "transfer_beats_scratch": bool(winners), "modes_beating_scratch": winners,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Transfer vs scratch: {result['experiment']} ({s['backbone']})",
        "",
        f"Train pool {s['train_pool']} examples ({s['train_per_class']} per class), test {s['test_examples']} "
        f"({s['test_per_class']} per class), {s['classes']} classes; batch {s['batch_size']}, "
        f"{s['threads']} CPU thread(s), device {s.get('device', 'cpu')}, seed {s['seed']}, "
        f"backbone arguments {s['backbone_kwargs']}. Command: `{s['command']}`",
        "",
        "| labels | train ex. | mode | trainable params | steps | accuracy | macro-F1 | wall s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(f"| {int(r['fraction'] * 100)} % | {r['train_examples']} | {r['mode']} | "
                     f"{r['trainable_params']:,} | {r['steps']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['wall_seconds']:.0f} |")
    v = result["verdict_5pct"]
    if v["transfer_beats_scratch"]:
        answer = f"yes ({', '.join(v['modes_beating_scratch'])})"
    else:
        answer = "no: no transfer mode is clearly better than scratch"
    lines += [
        "",
        f"**At 5 % labels, does transfer beat scratch? {answer}.** Scratch: accuracy {v['scratch_accuracy']:.3f}, "
        f"macro-F1 {v['scratch_macro_f1']:.3f}. Macro-F1 minus scratch's, with a paired bootstrap 95 % interval "
        "over test examples (one training seed, so training noise is not in the interval):",
        "",
    ]
    for m, d in v["modes"].items():
        lines.append(f"- `{m}`: {d['f1_minus_scratch']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    lines += ["", f"Total wall time {result['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def run_experiment(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = EXPERIMENTS[name]
    if args.image_size is not None and "image_size" in spec["backbone_kwargs"]:
        spec = {**spec, "backbone_kwargs": {**spec["backbone_kwargs"], "image_size": args.image_size}}
    manifest = ensure_corpus(name, spec, args.data_dir)
    examples, kind = read_classify_manifest(manifest)
    labels = label_set(examples)
    pool = balanced_pool(split_examples(examples, "train"), spec["train_per_class"], args.seed)
    test_set = balanced_pool(split_examples(examples, "test"), spec["test_per_class"], args.seed)
    t0 = time.time()
    facts, load_before = machine_facts(), load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in FRACTIONS:
            train_set = stratified_subset(pool, fraction, seed=args.seed)  # nested: 5 % within 20 % within 100 %
            for mode in MODES:
                row = {"fraction": fraction, **run_one(spec, mode, labels, train_set, test_set, kind, args.seed,
                                                       Path(tmp) / f"{fraction}", args.device)}
                rows.append(row)
                print(f"[{name}] {int(fraction * 100):3d}% {mode:9s} acc {row['accuracy']:.3f} "
                      f"F1 {row['macro_f1']:.3f} ({row['wall_seconds']:.0f} s)", flush=True)
    options = {"--threads": args.threads, "--seed": args.seed or None,
               "--device": None if args.device == "cpu" else args.device,
               "--image-size": args.image_size, "--suffix": args.suffix or None}
    command = " ".join(["python bench/transfer_claims.py", name]
                       + [f"{k} {v}" for k, v in options.items() if v is not None])
    result = {
        "experiment": name,
        "settings": {
            "backbone": spec["backbone"], "backbone_kwargs": spec["backbone_kwargs"], "classes": len(labels),
            "labels": labels, "train_per_class": spec["train_per_class"], "test_per_class": spec["test_per_class"],
            "train_pool": len(pool), "test_examples": len(test_set), "fractions": list(FRACTIONS),
            "batch_size": spec["batch_size"], "epochs": spec["epochs"], "min_steps": spec["min_steps"],
            "lr": spec["lr"], "weight_decay": 0.01, "schedule": "cosine, 10 % warm-up", "head": "ClassifierHead(256)",
            "lora": "r=8, alpha=16 on the backbone's default targets", "seed": args.seed, "threads": args.threads,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
            "precision": "fp32" if args.device == "cpu" else "auto (bf16 autocast)", "command": command,
        },
        "runs": [{k: v for k, v in r.items() if k != "predictions"} for r in rows],
        "verdict_5pct": verdict(rows, [ex.label for ex in test_set], 0.05),
        "total_seconds": round(time.time() - t0, 1),
        "command": command_line(),
        "machine": {**facts, "load_average_before": load_before, "load_average_after": load_average()},
    }
    atomic_write_text(args.out / f"transfer_{name}{args.suffix}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / f"transfer_{name}{args.suffix}.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="all", choices=[*EXPERIMENTS, "all"])
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch CPU threads (use 1 on a machine shared with other jobs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--data-dir", type=Path, default=REPO / "out" / "bench-data",
                    help="where the corpora are built (once)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:0")
    ap.add_argument("--image-size", type=int, default=None, help="digits input size in pixels (default 96)")
    ap.add_argument("--suffix", default="", help="appended to the result file names")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in EXPERIMENTS if args.experiment == "all" else [args.experiment]:
        result = run_experiment(name, args)
        v = result["verdict_5pct"]
        diffs = ", ".join(f"{m} {d['f1_minus_scratch']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                          for m, d in v["modes"].items())
        print(f"{name}: transfer beats scratch at 5 % labels: {v['transfer_beats_scratch']} (macro-F1 vs scratch: "
              f"{diffs}); {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

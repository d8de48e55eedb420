#!/usr/bin/env python3
"""The defaults search of ``speechtl-adapt --method lora`` for Whisper: settings at an equal wall-clock budget.

Run by hand on an idle machine (about 4 minutes per setting on 2 cores with the defaults); ``--merge-with``
adds settings to an earlier result:

    .venv/bin/python bench/adapt_search.py [--model whisper-tiny.en] [--budget 2] [--only a,b]

Each setting is the recipe's defaults plus a few ``key=value`` items, trained on the
speechocean762 train speakers for ``--budget`` minutes (``max_steps`` from a 12-step calibration
run of the same setting), then scored by bench/adapt_quality.py's evaluator (greedy, 30-s padding)
on the dev speakers, which choose the winner, and on the test speakers, who only confirm it.
Writes ``bench/results/adapt_search[_<model>].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, benchmark_corpus, command_line, finish, load_average, machine_facts, run_child  # noqa: E402
from adapt_quality import budget_steps, calibrate, lora_settings, model_parameters, records  # noqa: E402

ALL_LINEAR = "target_modules=q_proj,k_proj,v_proj,out_proj,fc1,fc2"
# name -> (method, keys on top of the recipe's defaults)
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "defaults": ("lora", []),
    "lr3e-4": ("lora", ["lr=3e-4", "warmup_steps=10"]),
    "lr1e-3": ("lora", ["lr=1e-3", "warmup_steps=10"]),
    "lr1e-3-all-linear": ("lora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR]),
    "lr1e-3-all-linear-r16": ("lora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR, "lora_r=16", "lora_alpha=32"]),
    "lr1e-3-all-linear-specaug": ("lora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR, "specaug=true"]),
    "lr1e-3-all-linear-r4-specaug": ("lora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR, "lora_r=4", "lora_alpha=8",
                                              "specaug=true"]),
    "lr1e-3-specaug": ("lora", ["lr=1e-3", "warmup_steps=10", "specaug=true"]),
    "lr1e-3-all-linear-batch30": ("lora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR, "batch_seconds=30"]),
    "dora-lr1e-3-all-linear": ("dora", ["lr=1e-3", "warmup_steps=10", ALL_LINEAR]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--budget", type=float, default=2.0, help="minutes of training per setting")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SETTINGS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-trainable-percent", type=float, default=1.0,
                    help="only settings that train less than this share of the model's parameters can win")
    ap.add_argument("--merge-with", default=None,
                    help="an earlier result of this script (same model, budget and seed): its rows are kept, each "
                         "with the commit and command that measured it, and the winner is chosen over all rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/speechtl-search")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    script = str(Path(__file__).resolve().parent / "adapt_quality.py")

    facts = machine_facts()
    splits, data = benchmark_corpus()
    train, dev, test = (records(splits[s]) for s in ("train", "dev", "test"))
    work = Path(args.work)
    earlier: list[dict[str, Any]] = []
    if args.merge_with:
        old = json.loads(Path(args.merge_with).read_text())
        if (old["model"], old["budget_minutes"], old["seed"]) != (args.model, args.budget, args.seed):
            ap.error(f"{args.merge_with} measured {old['model']}, {old['budget_minutes']} min, seed {old['seed']}; "
                     "merge only results of the same model, budget and seed")
        for r in old["rows"]:
            earlier.append({"measured_at": r.get("measured_at") or {"commit": old["machine"]["git"]["commit"],
                                                                     "command": old["command"]}, **r})
    names = [n for n in args.only.split(",") if n] or list(SETTINGS)
    if "defaults" not in names and not any(r["setting"] == "defaults" for r in earlier):
        names.insert(0, "defaults")  # the reference every setting is judged against
    names = [n for n in names if not any(r["setting"] == n for r in earlier)]
    rows: list[dict[str, Any]] = []
    # The zero-shot model is scored once (an earlier result's score is kept).
    jobs: list[dict[str, Any]] = [] if earlier else [{"path": None, "test": True, "lora": lora_settings()}]
    for name in names:
        method, keys = SETTINGS[name]
        lora = lora_settings(keys, method)
        base = {"model": args.model, "train": train, "lora": lora, "keys": keys, "method": method,
                "threads": args.threads}
        per_step, before = calibrate("speechtl", base, args.threads, work / name)
        steps = budget_steps(args.budget, per_step, before)
        res = run_child(script, {**base, "side": "speechtl", "seed": args.seed, "max_steps": steps, "marks": [],
                                 "snapshot_dir": str(work / name)}, threads=args.threads)
        print(f"{name}: {res['steps']} steps in {res['wall_seconds']} s", flush=True)
        rows.append({"setting": name, "method": method, "keys": keys, "lora": lora,
                     "calibration_seconds_per_step": round(per_step, 3), "max_steps": steps,
                     "steps": res["steps"], "wall_seconds": res["wall_seconds"],
                     "measured_at": {"commit": facts["git"]["commit"], "command": command_line()},
                     "trainable_parameters": res["trainable_parameters"], "first_loss": res["first_loss"],
                     "last_loss": res["last_loss"], "load_average_after": load_average()})
        jobs.append({"path": res["snapshots"][-1]["path"], "lora": lora, "method": method})
    # Dev scores every setting; test then scores only the bare defaults and the one dev chose.
    scored = run_child(script, {"side": "eval", "threads": args.threads, "model": args.model, "dev": dev,
                                "test": test, "jobs": jobs}, threads=args.threads)["rows"]
    if earlier:
        zero_shot = old["zero_shot"]
    else:
        zero_shot = {"dev_wer": scored[0]["dev"]["wer"], "test_wer": scored[0]["test"]["wer"]}
        scored, jobs = scored[1:], jobs[1:]
    for row, s in zip(rows, scored):
        row["dev_wer"], row["dev_ci95"] = s["dev"]["wer"], s["dev"]["ci95"]
    rows = earlier + rows
    total = model_parameters(args.model)
    for row in rows:
        row["trainable_percent"] = round(100 * row["trainable_parameters"] / total, 3)
    allowed = [r for r in rows if r["trainable_percent"] < args.max_trainable_percent]
    best = min(allowed, key=lambda r: r["dev_wer"])
    confirm = [i for i, r in enumerate(rows) if (r is best or r["setting"] == "defaults") and "test_wer" not in r]
    by_setting = {r["setting"]: job for r, job in zip(rows[len(earlier):], jobs)}
    for r in earlier:  # an earlier run's final weights, still in --work
        path = work / r["setting"] / f"snapshot-{0:02d}.safetensors"
        if path.is_file():
            by_setting[r["setting"]] = {"path": str(path), "lora": r["lora"], "method": r["method"]}
    missing = [rows[i]["setting"] for i in confirm if rows[i]["setting"] not in by_setting]
    if missing:
        raise SystemExit(f"no weights of {', '.join(missing)} in {work} to score on test: re-run those settings")
    tested = run_child(script, {"side": "eval", "threads": args.threads, "model": args.model, "dev": dev,
                                "test": test, "jobs": [{**by_setting[rows[i]["setting"]], "test": True}
                                                       for i in confirm]},
                       threads=args.threads)["rows"] if confirm else []
    for i, s in zip(confirm, tested):
        rows[i]["test_wer"], rows[i]["test_ci95"] = s["test"]["wer"], s["test"]["ci95"]
    suffix = "" if args.model == "whisper-tiny.en" else "_" + args.model.replace("whisper-", "").replace(".", "")
    out = Path(args.out) if args.out else RESULTS / f"adapt_search{suffix}.json"
    result = {"bench": "adapt_search", "command": command_line(), "model": args.model, "data": data,
              "budget_minutes": args.budget, "seed": args.seed, "threads": args.threads,
              "train_utterances": len(train), "dev_utterances": len(dev), "test_utterances": len(test),
              "zero_shot": zero_shot,
              "model_parameters": total, "max_trainable_percent": args.max_trainable_percent,
              "chosen_by_dev": best["setting"], "rows": rows, "machine": facts,
              "notes": ["Dev speakers choose the setting; test speakers are reported only to confirm it.",
                        "One seed per setting at an equal wall-clock budget: differences within a dev CI are "
                        "not separable; bench/adapt_quality.py repeats the chosen defaults over seeds."]}
    finish(result, out, f"best on dev under {args.max_trainable_percent} % trainable parameters: {best['setting']} "
                        f"(dev {best['dev_wer']}, test {best.get('test_wer')})")
    for r in rows:
        test = f"  test {100 * r['test_wer']:.2f}%" if "test_wer" in r else ""
        print(f"  {r['setting']:30s} {r['trainable_percent']:5.2f}% params  steps {r['steps']:4d}  "
              f"dev {100 * r['dev_wer']:.2f}%{test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

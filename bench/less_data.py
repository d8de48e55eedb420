#!/usr/bin/env python3
"""Less data: test WER of the bare ``speechtl-adapt --method lora`` on 5, 10, 20 and 40 train speakers.

Run by hand on an idle machine (about an hour on 2 cores with the defaults):

    .venv/bin/python bench/less_data.py [--model whisper-tiny.en] [--speakers 5,10,20,40] [--draws 3]

Each run is the command a new user types, ``speechtl-adapt --model M --train T --method lora --out O``
with no keys (the recipe's defaults, its 10 epochs, no dev manifest, so the final weights), on a
manifest of n of the speechocean762 train speakers (Mandarin-L1 English, split by speaker 40 / 5 / 5).
Draw d takes the first n speakers of the train speakers shuffled with seed d, so each draw's 5
speakers are inside its 10, and so on; n equal to all the train speakers is one run. Draws
interleave (draw 0 over every n, then draw 1, ...).

Every run's adapter is scored on the same test speakers, who choose nothing (no run has a dev set):

- ``default``: as ``speechtl-eval --adapter`` scores by default (``speechtl.evaluate``: temperature
  fallback, short clips where the adapter trained on them, a looping short clip again at 30 s);
- ``search``: as bench/adapt_search.py scored its settings (greedy with no thresholds, 30-s padding), for the
  all-speaker run and the base model only, to set the bare command beside the searched best setting
  of bench/results/adapt_search.json.

WER with the Whisper normaliser and a 95 % speaker-bootstrap interval. Writes
``bench/results/less_data[_<model>].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, RESULTS, benchmark_corpus, child_env, child_main, command_line, finish,  # noqa: E402
                     load_average, machine_facts, run_child, save_plot)

SEARCH = RESULTS / "adapt_search.json"


def draw_speakers(speakers: list[str], n: int, draw: int) -> list[str]:
    """The first ``n`` of ``speakers`` (sorted) shuffled with seed ``draw``: nested over ``n`` within a draw."""
    order = sorted(speakers)
    random.Random(draw).shuffle(order)
    return sorted(order[:n])


def adapt(model: str, train: Path, out: Path, threads: int) -> dict[str, Any]:
    """The bare ``speechtl-adapt`` command in a fresh interpreter on ``threads`` threads; its wall time and result."""
    cmd = [sys.executable, str(REPO / "bin" / "speechtl-adapt"), "--model", model, "--train", str(train),
           "--method", "lora", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise RuntimeError(f"speechtl-adapt on {train} failed (exit {proc.returncode})")
    result = json.loads((out / "result.json").read_text())
    info = json.loads((out / "run.json").read_text())
    return {"command": " ".join(["speechtl-adapt", *cmd[2:]]), "wall_seconds": round(wall, 1),
            "steps": result["steps"], "epochs": result["epoch"],
            "trainable_percent": round(100 * info["trainable_parameters"] / info["total_parameters"], 3)}


# -- the evaluator (one child for every adapter) ------------------------------------------------


def _scored(report) -> dict[str, Any]:
    """Micro WER and a 95 % speaker-bootstrap interval (as bench/adapt_quality.py's ``score``)."""
    import numpy as np

    from speechtl.stats import bootstrap_ci

    g, speakers = report.overall, list(report.speakers.values())
    lo, hi = bootstrap_ci(np.array([s.errors for s in speakers]), np.array([s.words for s in speakers]))
    return {"wer": round(g.wer, 4), "ci95": [round(lo, 4), round(hi, 4)], "words": g.words,
            "utterances": g.utterances, "speakers": len(speakers)}


def run_eval(spec: dict[str, Any]) -> dict[str, Any]:
    from speechtl.data.manifest import read_manifest
    from speechtl.decoding import DecodeOptions
    from speechtl.evaluation import evaluate

    test = read_manifest(spec["test"])
    greedy = DecodeOptions.plain()  # what the search's evaluator decodes with: temperature 0, no thresholds
    rows = []
    for job in spec["jobs"]:
        row: dict[str, Any] = {"adapter": job["adapter"]}
        for mode in job["modes"]:
            kw = {"decode_options": greedy, "short_clips": "off"} if mode == "search" else {}
            t0 = time.perf_counter()
            report = evaluate(spec["model"], test, adapter=job["adapter"], progress=False, device="cpu", **kw)
            row[mode] = {**_scored(report), "short_clips": report.meta["short_clips"],
                         "eval_seconds": round(time.perf_counter() - t0, 1)}
            print(f"  {job['adapter'] or 'zero-shot'} {mode}: {row[mode]['wer']:.4f}", file=sys.stderr, flush=True)
        rows.append(row)
    return {"side": "eval", "rows": rows}


# -- parent ---------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def searched_best() -> dict[str, Any] | None:
    """The winner of bench/results/adapt_search.json (chosen on dev) with its test WER and where it came from."""
    if not SEARCH.is_file():
        return None
    search = json.loads(SEARCH.read_text())
    best = next(r for r in search["rows"] if r["setting"] == search["chosen_by_dev"])
    return {"file": str(SEARCH.relative_to(REPO)), "setting": best["setting"], "keys": best["keys"],
            "budget_minutes": search["budget_minutes"], "steps": best["steps"], "test_wer": best.get("test_wer"),
            "test_ci95": best.get("test_ci95"), "commit": search["machine"]["git"]["commit"],
            "model": search["model"], "data": search["data"], "zero_shot_test_wer": search["zero_shot"]["test_wer"]}


def main() -> int:
    if "--child" in sys.argv:
        return child_main(run_eval)
    from speechtl.data.manifest import write_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--speakers", default="5,10,20,40", help="train speaker counts (more than there are: all)")
    ap.add_argument("--draws", type=int, default=3, help="speaker draws of each count below all the train speakers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N test clips (quick checks)")
    ap.add_argument("--work", default="/tmp/speechtl-less-data")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    facts = machine_facts()
    splits, data = benchmark_corpus()
    train, test = splits["train"], splits["test"][: args.limit or None]
    everyone = sorted({u.speaker for u in train})
    counts = sorted({min(int(n), len(everyone)) for n in args.speakers.split(",")})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    test_manifest = work / "test.jsonl"
    write_manifest(test, test_manifest)

    plan = [(n, d) for d in range(args.draws) for n in counts if n < len(everyone) or d == 0]
    runs: list[dict[str, Any]] = []
    for n, d in plan:
        speakers = draw_speakers(everyone, n, d)
        utts = [u for u in train if u.speaker in speakers]
        manifest = work / f"train-{n}-draw{d}.jsonl"
        write_manifest(utts, manifest)
        out = work / f"run-{n}-draw{d}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        res = {"train_speakers": n, "draw": d, "speakers": speakers, "train_utterances": len(utts),
               "train_audio_minutes": round(sum(u.duration for u in utts) / 60, 2), **adapt(args.model, manifest, out,
                                                                                          args.threads),
               "adapter": str(out / "adapter"), "load_average_after": load_average()}
        print(f"{n} speakers, draw {d}: {res['steps']} steps in {res['wall_seconds']} s", flush=True)
        runs.append(res)

    jobs = [{"adapter": None, "modes": ["default", "search"]}] + [
        {"adapter": r["adapter"], "modes": ["default", "search"] if r["train_speakers"] == len(everyone) else
         ["default"]} for r in runs]
    scored = run_child(__file__, {"side": "eval", "threads": args.threads, "model": args.model,
                                  "test": str(test_manifest), "jobs": jobs}, threads=args.threads)["rows"]
    zero = scored[0]
    for res, row in zip(runs, scored[1:]):
        res["test"] = {m: row[m] for m in ("default", "search") if m in row}
        res.pop("adapter")

    zero_wer = zero["default"]["wer"]
    by_count = []
    for n in counts:
        wers = [r["test"]["default"]["wer"] for r in runs if r["train_speakers"] == n]
        by_count.append({"train_speakers": n, "test_wer": spread(wers),
                         "relative_cut": spread([1 - w / zero_wer for w in wers]),
                         "train_utterances": spread([r["train_utterances"] for r in runs if r["train_speakers"] == n])})
    full = next((r for r in runs if r["train_speakers"] == len(everyone)), None)
    best = searched_best()
    bare = None if full is None else {
        "command": full["command"], "test_wer": full["test"]["search"]["wer"],
        "test_ci95": full["test"]["search"]["ci95"], "steps": full["steps"], "searched_best": best}
    same = best is not None and best["model"] == args.model and best["data"] == data and not args.limit
    if bare and same and best["test_wer"] is not None:
        # The same evaluator on the same clips: the base model scores the same on both.
        bare["same_zero_shot_as_search"] = zero["search"]["wer"] == best["zero_shot_test_wer"]
        bare["points_above_searched_best"] = round(100 * (bare["test_wer"] - best["test_wer"]), 2)
        bare["within_1_point"] = bare["points_above_searched_best"] <= 1.0

    suffix = "" if args.model == "whisper-tiny.en" else "_" + args.model.replace("whisper-", "").replace(".", "")
    out = Path(args.out) if args.out else RESULTS / f"less_data{suffix}.json"
    result = {
        "bench": "less_data", "command": command_line(), "model": args.model, "data": data,
        "train_speakers_available": len(everyone), "test_speakers": sorted({u.speaker for u in test}),
        "test_utterances": len(test), "test_limit": args.limit or None, "draws": args.draws, "threads": args.threads,
        "zero_shot": {"test": {m: zero[m] for m in ("default", "search")}},
        "by_train_speakers": by_count, "bare_command": bare, "runs": runs, "machine": facts,
        "notes": [
            "Each run is the bare speechtl-adapt --method lora command (no keys, no dev manifest: final weights).",
            "Test speakers choose nothing; each interval is a 95 % speaker bootstrap over them.",
            "default: speechtl.evaluate's defaults (as speechtl-eval); search: greedy at 30-s padding, as "
            "bench/adapt_search.py scored its settings.",
            "Draws vary which speakers train; the spread over draws is per speaker count.",
        ],
    }
    out.with_suffix(".md").write_text(_markdown(result))
    png = _plot(result, out.with_suffix(".png"))
    result["plot"] = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
    finish(result, out, "test WER by train speakers: " + ", ".join(
        f"{c['train_speakers']}: {c['test_wer']['median']}" for c in by_count))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _markdown(r: dict[str, Any]) -> str:
    z = r["zero_shot"]["test"]["default"]
    lines = [f"# Less data, {r['model']}: the bare speechtl-adapt --method lora on fewer train speakers", "",
             f"Test: {len(r['test_speakers'])} speechocean762 speakers ({r['test_utterances']} clips), who choose "
             f"nothing. Zero-shot test WER {_pct(z['wer'])} ({_pct(z['ci95'][0])}–{_pct(z['ci95'][1])}).", "",
             "| train speakers | draw | clips | minutes of audio | steps | train time | test WER (95 % CI) |",
             "|---|---|---|---|---|---|---|"]
    for x in sorted(r["runs"], key=lambda x: (x["train_speakers"], x["draw"])):
        t = x["test"]["default"]
        lines.append(f"| {x['train_speakers']} | {x['draw']} | {x['train_utterances']} | {x['train_audio_minutes']} | "
                     f"{x['steps']} | {x['wall_seconds'] / 60:.1f} min | {_pct(t['wer'])} ({_pct(t['ci95'][0])}–"
                     f"{_pct(t['ci95'][1])}) |")
    lines += ["", "| train speakers | median test WER (range over draws) | median relative cut |", "|---|---|---|"]
    for c in r["by_train_speakers"]:
        w = c["test_wer"]
        lines.append(f"| {c['train_speakers']} | {_pct(w['median'])} ({_pct(w['min'])}–{_pct(w['max'])}, "
                     f"{w['n']} draw{'s' if w['n'] > 1 else ''}) | {_pct(c['relative_cut']['median'])} |")
    b = r["bare_command"]
    if b:
        lines += ["", f"Bare command on every train speaker, scored as the search scored (greedy, 30-s padding): "
                      f"{_pct(b['test_wer'])} test WER."]
    if b and b.get("searched_best") and "points_above_searched_best" in b:
        s = b["searched_best"]
        lines[-1] += (f" The searched best setting ({s['setting']}, {s['budget_minutes']:g}-minute budget, "
                      f"{s['file']}): {_pct(s['test_wer'])}; difference {b['points_above_searched_best']:+.2f} points.")
    lines += ["", f"Reproduce: `{r['command']}`", ""]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for x in result["runs"]:
        t = x["test"]["default"]
        ax.errorbar([x["train_speakers"]], [100 * t["wer"]], yerr=[[100 * (t["wer"] - t["ci95"][0])],
                                                                   [100 * (t["ci95"][1] - t["wer"])]],
                    fmt="o", color="tab:blue", alpha=0.6, capsize=3)
    counts = [c["train_speakers"] for c in result["by_train_speakers"]]
    ax.plot(counts, [100 * c["test_wer"]["median"] for c in result["by_train_speakers"]], color="tab:blue",
            label="speechtl-adapt --method lora (median over draws)")
    ax.axhline(100 * result["zero_shot"]["test"]["default"]["wer"], color="grey", ls="--", label="zero-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("train speakers")
    ax.set_ylabel("test WER (%), 95 % speaker-bootstrap CI")
    ax.set_title(f"{result['model']} on speechocean762 test speakers")
    return save_plot(fig, ax, path)


if __name__ == "__main__":
    sys.exit(main())

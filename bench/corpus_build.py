#!/usr/bin/env python3
"""Synthetic-corpus build speed on this machine: utterances/second, overall and per engine.

Run by hand (needs the engines from corpora/install_tts.sh):

    .venv/bin/python bench/corpus_build.py [--per-accent 20] [--workers N]

Builds the standard six-accent corpus into a fresh temporary folder, validates it, times a
rerun (every file is skipped), then builds 8 utterances with each engine alone to compare engines.
Writes bench/results/corpus_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine_facts  # noqa: E402

from speechtl.data.manifest import validate_manifest
from speechtl.data.synth import ENGINE_BINARIES, build_corpus

ACCENTS = ["us", "gb", "scottish", "german", "french", "russian"]
# An accent that each engine voices, for the per-engine timing.
ENGINE_ACCENT = {"espeak": "us", "mbrola": "us", "flite": "us", "festival": "gb", "rhvoice": "us", "pico": "gb"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-accent", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "corpus_build.json"))
    args = ap.parse_args()
    workers = args.workers or os.cpu_count() or 1
    result: dict = {
        "command": command_line(),
        "machine": {**machine_facts(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]},
        "workers": workers,
    }
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Path(tmp) / "corpus"
        t0 = time.perf_counter()
        utts = build_corpus(out, ACCENTS, args.per_accent, seed=args.seed, workers=workers, progress=False)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_corpus(out, ACCENTS, args.per_accent, seed=args.seed, workers=workers, progress=False)
        rerun_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = validate_manifest(out / "manifest.jsonl", workers=workers)
        validate_s = time.perf_counter() - t0
        engines: dict[str, Counter] = defaultdict(Counter)
        for u in utts:
            engines[u.accent][u.extra["engine"]] += 1
        audio_s = sum(u.duration or 0.0 for u in utts)
        result["full_build"] = {
            "accents": ACCENTS, "utterances_per_accent": args.per_accent, "seed": args.seed, "utterances": len(utts),
            "seconds": round(build_s, 2), "utterances_per_second": round(len(utts) / build_s, 2),
            "audio_seconds": round(audio_s, 1), "realtime_factor": round(audio_s / build_s, 2),
            "rerun_seconds_all_skipped": round(rerun_s, 2), "validate_seconds": round(validate_s, 2),
            "valid": report.ok, "problems": len(report.problems),
            "per_accent": {a: {"utterances": sum(c.values()), "engines": dict(sorted(c.items()))}
                           for a, c in engines.items()},
            "per_split": report.summary["per_split"],
        }
        per_engine = {}
        for engine in ENGINE_BINARIES:
            t0 = time.perf_counter()
            eu = build_corpus(Path(tmp) / f"engine-{engine}", [ENGINE_ACCENT[engine]], 8, seed=args.seed,
                              heldout=[], workers=workers, engines=[engine], progress=False)
            dt = time.perf_counter() - t0
            per_engine[engine] = {"utterances": len(eu), "seconds": round(dt, 2),
                                  "utterances_per_second": round(len(eu) / dt, 2)}
        result["per_engine_build"] = per_engine
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    fb = result["full_build"]
    print(f"{fb['utterances']} utterances in {fb['seconds']} s = {fb['utterances_per_second']} utt/s "
          f"({fb['realtime_factor']}x real time) with {workers} workers; valid={fb['valid']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

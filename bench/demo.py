#!/usr/bin/env python3
"""The demo as a user runs it: ``bin/speechtl-demo`` on its embedded defaults, synthetic and real.

Each run is a fresh process into a fresh output folder (no synthesised audio reused, as on a
fresh clone), timed from outside; cases are interleaved over ``--repeats``. The synthetic case
ignores ``../shared`` (``--synthetic-only``), as a user's fresh clone has none; the real case
uses speechocean762 and VCTK/LJSpeech from it.

    python bench/demo.py [--repeats 3] [--cases synthetic,real] [--out bench/results]

Writes ``OUT/demo.json`` (each run's wall time and ``demo.json``) and ``OUT/demo.md`` (the
per-accent table of each case's first run and the spread of the wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, SHARED, command_line, finish, machine_facts  # noqa: E402

CASES = {"synthetic": ["--synthetic-only"], "real": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="synthetic,real")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.repeats < 1:
        sys.exit(f"--cases: choose from {', '.join(CASES)} (got {', '.join(unknown)}); --repeats at least 1")
    if "real" in cases and not (SHARED / "speechocean762" / "train" / "text").is_file():
        sys.exit(f"case real: {SHARED / 'speechocean762'} not found (see ../shared/data/README.md)")

    machine = machine_facts()
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SPEECHTL_SHARED_DATA": str(SHARED)}
    for k in range(args.repeats):
        for case in cases:
            work = Path(tempfile.mkdtemp(prefix=f"speechtl-demo-{case}-"))
            cmd = [sys.executable, str(REPO / "bin" / "speechtl-demo"), "--out", str(work / "out"), *CASES[case]]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                sys.exit(f"case {case}, repeat {k}: speechtl-demo failed (exit {proc.returncode})")
            summary = json.loads((work / "out" / "demo.json").read_text())
            table = (work / "out" / "demo.md").read_text()
            runs[case].append({"repeat": k, "wall_seconds": round(wall, 1), "demo": summary, "demo_md": table})
            shutil.rmtree(work)
            print(f"{case} #{k}: {wall:.0f} s", flush=True)

    result = {
        "bench": "demo",
        "command": command_line(),
        "repeats": args.repeats,
        "cases": {c: {"wall_seconds": [r["wall_seconds"] for r in rs],
                      "median_wall_seconds": statistics.median(r["wall_seconds"] for r in rs),
                      "runs": rs} for c, rs in runs.items()},
        "machine": machine,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from speechtl.fileio import atomic_write_text

    atomic_write_text(out / "demo.md", markdown(result))
    finish(result, out / "demo.json", "demo: " + ", ".join(
        f"{c} median {v['median_wall_seconds']:.0f} s" for c, v in result["cases"].items()))
    return 0


def markdown(result: dict) -> str:
    lines = ["# `make demo` (bin/speechtl-demo on its defaults)", ""]
    for case, v in result["cases"].items():
        walls = v["wall_seconds"]
        first = v["runs"][0]
        lines += [f"## {case}", "",
                  f"Wall time of {len(walls)} fresh runs: median {v['median_wall_seconds']:.0f} s "
                  f"(range {min(walls):.0f}–{max(walls):.0f} s). The table is the first run's; "
                  "WER differs between runs only where decoding does.", ""]
        body = first["demo_md"].split("\n", 2)[2] if first["demo_md"].startswith("# ") else first["demo_md"]
        lines += [body.strip(), ""]
        differs = [r["repeat"] for r in v["runs"][1:]
                   if [a.get("routed") for a in r["demo"]["accents"]] != [a.get("routed") for a in first["demo"]["accents"]]]
        if differs:
            lines += [f"Routed WER differs from the first run's in repeats {', '.join(map(str, differs))}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the benchmark scripts: machine facts, the benchmark corpus, child processes, results.

Each benchmark measures its sides in child processes (``python bench/<script>.py --child ...``) so
that peak RSS is per side; a child prints one JSON line (prefixed ``RESULT``) that the parent reads.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("SPEECHTL_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULT_PREFIX = "RESULT "


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_state() -> dict[str, Any]:
    """The commit the benchmark ran at and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # Results that earlier benchmarks wrote (bench/results/) do not change the code being measured.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    commit = git("rev-parse", "HEAD")
    if not commit and os.environ.get("SPEECHTL_BENCH_COMMIT"):
        # A copy of the working tree without .git (a remote GPU machine): the launcher read the commit
        # and the dirty flag in the checkout it copied, and says so here.
        return {"commit": os.environ["SPEECHTL_BENCH_COMMIT"], "dirty": os.environ.get("SPEECHTL_BENCH_DIRTY") != "0",
                "commit_source": "SPEECHTL_BENCH_COMMIT (the checkout had no .git)"}
    return {"commit": commit or None, "dirty": bool(status) if commit else None}


def machine_facts() -> dict[str, Any]:
    """CPU, thread counts, library versions and the git commit (the load average is added by :func:`finish`)."""
    import peft
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        speechtl_version = version("speechtl")
    except Exception:  # not installed as a distribution: running from the source tree
        speechtl_version = "source"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "speechtl": speechtl_version},
        "git": git_state(),
        "load_average_before": load_average(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    """This process's current resident set size in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


# -- data ---------------------------------------------------------------------------------------


def benchmark_corpus(seed: int = 0) -> tuple[dict[str, list], str]:
    """``({"train": [...], "dev": [...], "test": [...]}, description)`` of Utterances with durations.

    speechocean762 (Mandarin-L1 English, split 800/100/100 by speaker as ``corpora/speechocean762.sh``
    does) when ``../shared/data/speechocean762`` exists; otherwise a synthetic accented corpus built
    offline with the Debian TTS voices (``speechtl.data.synth.build_corpus``), cached in /tmp.
    """
    from speechtl.data import split_by_speaker
    from speechtl.data.importers import import_speechocean762
    from speechtl.data.loader import durations_of

    so_dir = Path(os.environ.get("SPEECHTL_SPEECHOCEAN762", SHARED / "speechocean762"))
    if (so_dir / "train" / "text").is_file():
        utts = split_by_speaker(import_speechocean762(so_dir), dev=0.1, test=0.1, seed=seed)
        what = f"speechocean762 ({so_dir}), split by speaker dev 0.1 / test 0.1, seed {seed}"
    else:
        from speechtl.data.synth import build_corpus

        out = Path(tempfile.gettempdir()) / "speechtl-bench-synth"
        utts = build_corpus(out, ["german", "french", "us"], per_accent=120, seed=seed, heldout=[], progress=False)
        what = f"SYNTHETIC fallback corpus ({out}): speechocean762 not found under {so_dir}"
    for u, d in zip(utts, durations_of(utts)):
        u.duration = d
    splits = {s: [u for u in utts if u.split == s] for s in ("train", "dev", "test")}
    return splits, what


def real_test_set() -> list:
    """The native-English VCTK/LJSpeech clips of ``../shared/data/real`` (empty when absent), paths resolved."""
    from speechtl.data.loader import durations_of
    from speechtl.data.manifest import read_manifest

    path = SHARED / "real" / "manifest.jsonl"
    if not path.is_file():
        return []
    utts = read_manifest(path)
    for u in utts:
        if not os.path.isabs(u.audio):
            u.audio = str(path.parent / u.audio)
    for u, d in zip(utts, durations_of(utts)):
        u.duration = d
    return utts


def utterance_records(utts: list) -> list[dict[str, Any]]:
    """Plain dicts (id, audio, text, duration) to hand to a child process."""
    return [{"id": u.id, "audio": u.audio, "text": u.text, "duration": u.duration} for u in utts]


# -- child processes ----------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    """The environment of a measured child process: ``threads`` threads, offline, quiet."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def run_child(script: str, spec: dict[str, Any], *, threads: int, timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --child SPEC.json`` in a fresh interpreter; return its RESULT dict (+ wall seconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = child_env(threads)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--child", spec_path], env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(spec_path)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise RuntimeError(f"child {spec.get('side')} of {Path(script).name} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["child_wall_seconds"] = round(wall, 1)
    return result


def child_main(run) -> int:
    """Entry of a child process: read the spec, set threads, run ``run(spec) -> dict``, print RESULT."""
    import torch

    spec = json.loads(Path(sys.argv[sys.argv.index("--child") + 1]).read_text())
    torch.set_num_threads(spec["threads"])
    result = run(spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def finish(result: dict[str, Any], path: Path, summary: str) -> None:
    """Add the closing load average, write ``path`` atomically and print the one-line summary."""
    from speechtl.fileio import atomic_write_text

    result["machine"]["load_average_after"] = load_average()
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"{summary}; wrote {path}")


def save_plot(fig, ax, path: Path) -> Path:
    """Grid, legend and layout of a benchmark's figure, written to ``path`` (PNG) and closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def command_line() -> str:
    exe = Path(sys.executable)
    python = os.path.relpath(exe, REPO) if exe.is_relative_to(REPO) else exe.name
    return " ".join([python, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def recipe_run(model: str, train: list[dict[str, Any]], keys: list[str], work: str | Path, *, method: str = "lora",
               dev: list[dict[str, Any]] | None = None):
    """The ``speechtl-adapt`` recipe's run (model, task, loader, dev function) on benchmark clip records.

    ``keys`` are ``key=value`` config overrides as on the command line; the records go through a
    manifest in ``work``, so batching, padding and augmentation are the command's own.
    """
    from speechtl import recipes
    from speechtl.config import load_config
    from speechtl.data.manifest import Utterance, write_manifest

    def manifest(records: list[dict[str, Any]], name: str) -> str:
        path = Path(work) / name
        write_manifest([Utterance(id=r["id"], audio=r["audio"], text=r["text"], speaker=r.get("speaker", "-"),
                                  accent=r.get("accent", "-"), duration=r["duration"]) for r in records], path)
        return str(path)

    inputs = recipes.RunInputs(model, manifest(train, "train.jsonl"), manifest(dev, "dev.jsonl") if dev else None)
    return recipes.build(inputs, load_config(None, keys, method=method))

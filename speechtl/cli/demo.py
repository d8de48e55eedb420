"""speechtl-demo: the whole accent-adaptation story on the embedded defaults, in one command.

1. Build a synthetic multi-accent English corpus offline (Debian TTS voices), plus real
   speech when it is available: speechocean762 (Mandarin-L1 English; ``$SPEECHTL_SPEECHOCEAN762``
   or ``../shared/data/speechocean762``) and VCTK/LJSpeech (``../shared/data/real``).
2. Evaluate whisper-tiny.en zero-shot, WER per accent with 95 % speaker-bootstrap intervals.
3. LoRA-adapt it to the target accent (Mandarin-L1 when the real corpus is there, else
   synthetic German-accented English) with the one training core.
4. Evaluate again; held-out accents are reported as unseen; write the comparison report and
   plot, and print the before/after table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import add_common_args, run_cli

REPO = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--model", default="whisper-tiny.en")
    p.add_argument("--per-accent", type=int, default=16, help="synthetic utterances per accent")
    p.add_argument("--max-steps", type=int, default=60, help="LoRA training steps")
    p.add_argument("--shared-data", default=os.environ.get("SPEECHTL_SHARED_DATA", str(REPO.parent / "shared" / "data")),
                   help="folder with real speech (speechocean762/, real/); skipped when absent")
    p.add_argument("--synthetic-only", action="store_true", help="ignore real speech even when present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's results in --out (its synthesised audio is reused)")
    add_common_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..demo import run

    result = run(args.out, model=args.model, per_accent=args.per_accent, max_steps=args.max_steps,
                 shared_data=args.shared_data, synthetic_only=args.synthetic_only, seed=args.seed,
                 overwrite=args.overwrite, log=lambda line: print(line, flush=True))
    out = result.out
    print(f"\nreport: {out / 'comparison' / 'comparison.md'} (plot: wer_vs_baseline.png); "
          f"per-run reports in {out / 'zero-shot'} and {out / 'adapted'}; total {result.seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

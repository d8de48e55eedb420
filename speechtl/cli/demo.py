"""speechtl-demo: the whole accent-adaptation story on the embedded defaults, in one command.

1. Build a corpus: a target accent, native accents and a native accent held out. Synthetic
   (Debian TTS voices, offline) on a fresh clone: German-accented English as the target. With
   real speech on disk (``../shared/data``: speechocean762 and VCTK/LJSpeech, or
   ``$SPEECHTL_SPEECHOCEAN762``): Mandarin-L1 English as the target, real native speakers held out.
2. Evaluate whisper-tiny.en zero-shot, WER per accent with 95 % speaker-bootstrap intervals.
3. LoRA-adapt it to the target accent (the recipe's Whisper defaults; 60 steps of 20 s of audio).
4. Train an accent classifier (target vs native) on the frozen encoder.
5. Evaluate the adapter on every utterance, then routed: each speaker takes the adapter or the
   base model as the classifier says.
6. Print one table (zero-shot, LoRA, routed per accent, change and paired p-value against
   zero-shot) and the plot's path.
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
    p.add_argument("--native-clips", type=int, default=60, help="synthetic utterances per native accent")
    p.add_argument("--target-clips", type=int, default=180, help="synthetic target-accent utterances")
    p.add_argument("--heldout-clips", type=int, default=8, help="utterances of each held-out synthetic accent")
    p.add_argument("--max-steps", type=int, default=60, help="LoRA training steps")
    p.add_argument("--batch-seconds", type=float, default=20.0, help="seconds of audio per LoRA training batch")
    p.add_argument("--classifier-epochs", type=int, default=6, help="accent classifier training epochs")
    p.add_argument("--min-prob", type=float, default=0.6,
                   help="a speaker takes the adapter when the classifier's pooled probability of the target "
                        "reaches this")
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

    result = run(args.out, model=args.model, native_clips=args.native_clips, target_clips=args.target_clips,
                 heldout_clips=args.heldout_clips, max_steps=args.max_steps, batch_seconds=args.batch_seconds,
                 classifier_epochs=args.classifier_epochs,
                 min_prob=args.min_prob, shared_data=args.shared_data, synthetic_only=args.synthetic_only,
                 seed=args.seed, overwrite=args.overwrite, log=lambda line: print(line, flush=True))
    out = result.out
    print(f"\nplot: {out / 'wer_per_accent.png'}\ntable: {out / 'demo.md'}; every figure: {out / 'demo.json'}; "
          f"reports: {out / 'zero-shot'}, {out / 'lora'}, {out / 'routed'}; comparisons: {out / 'compare-lora'}, "
          f"{out / 'compare-routed'}\ntotal {result.seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

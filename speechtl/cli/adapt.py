"""speechtl-adapt: adapt a speech model to an accent (features, finetune, LoRA/DoRA/IA3, bottleneck adapters).

Writes into --out: config.yaml (the resolved config), run.json (inputs and what trains),
metrics.jsonl (training log), checkpoints/ (last and best, for --resume), adapter/ (only the
trained weights; LoRA also in peft's format) and result.json; with distill_targets=teacher also
teacher_targets/ (the base model's transcripts, for --resume). Prints the final dev WER.

Config keys (see --help-config) come from --config YAML, then key=value arguments, e.g.
``speechtl-adapt --model whisper-tiny.en --train train.jsonl --dev dev.jsonl --method lora
--out runs/lora lr=1e-3 lora_r=16 max_steps=500``. Multi-GPU: ``torchrun --nproc-per-node 4
-m speechtl.cli.adapt ...`` (batch_seconds is per process).

Accent identification: ``speechtl-adapt --task accent-id --model whisper-tiny.en --train M
[--dev M] --out DIR`` trains a classifier of the manifests' accent field on the frozen encoder
(unless given: method features, weighted_layers=true, head_norm=true, head_pooling=stats; the
label set is saved with the head), then prints accuracy, recall per accent, the confusion matrix
and the speakers not always right on the dev utterances and writes them to DIR/accent_id.json.
Route transcription with it: ``speechtl-transcribe --accent-classifier DIR/adapter --adapters
ACCENT=ADAPTER ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import METHODS, describe_keys, load_config
from ._common import add_common_args, library_bars, run_cli


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_keys())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-adapt", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--model", required=True, help="backbone name (speechtl.list_backbones()), model folder or hub id")
    p.add_argument("--train", required=True, help="training manifest (JSONL); utterances with split train or none")
    p.add_argument("--dev", help="dev manifest for WER during training (default: the split=dev lines of --train)")
    p.add_argument("--method", choices=METHODS, help="transfer method (or `method:` in --config; default lora)")
    p.add_argument("--task", choices=("auto", "asr", "classify", "accent-id"), default="auto",
                   help="auto: speech recognition for speech models, classification for image/text models; "
                        "accent-id: a classifier of the manifest's accent field on the frozen speech encoder "
                        "(default method features, weighted_layers=true, head_norm=true, head_pooling=stats)")
    p.add_argument("--target-accent", help="train and evaluate only on utterances of this accent")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--config", help="YAML config (flat keys, or grouped under adapt/train/data)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--help-config", action=_HelpConfig, help="list every config key with its default and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=3e-4 lora_r=16")
    add_common_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from .. import recipes

    cfg = load_config(args.config, args.overrides, **({"method": args.method} if args.method else {}))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.out)
    replace = recipes.check_out(out, overwrite=args.overwrite, resume=args.resume, is_main=rank == 0,
                                model=args.model)
    inputs = recipes.RunInputs(args.model, args.train, args.dev, args.target_accent)
    with library_bars(cfg.train.progress and rank == 0):
        run = recipes.build(inputs, cfg, task=args.task, world=world, rank=rank,
                            resume_dir=out if args.resume else None)
        if replace:  # only now: a run that fails to build leaves the earlier one in place
            recipes.clear_out(out)
        result = recipes.execute(run, out, resume=args.resume, world=world, rank=rank)
    if rank != 0:
        return 0
    if result.report is not None:
        print(result.report.format_table())
        print(f"accent-id scores: {out / 'accent_id.json'}")
    s = result.summary
    if s["best_metric"] is None:
        print(f"trained {s['steps']} steps; adapter in {result.adapter} (no dev set: nothing evaluated)")
    elif s["metric"] in ("wer", "cer", "error"):
        print(f"final dev {s['metric'].upper()}: {100 * s['best_metric']:.2f}% "
              f"(best at step {s['best_step']} of {s['steps']}); adapter in {result.adapter}")
    else:
        print(f"final dev {s['metric']}: {s['best_metric']:.4g} (best at step {s['best_step']}); "
              f"adapter in {result.adapter}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())

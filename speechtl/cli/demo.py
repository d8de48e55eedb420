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
import shutil
import sys
import time
from pathlib import Path

from ..errors import SpeechtlError
from ._common import add_common_args, out_in_use, run_cli

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


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a non-empty --out unless --overwrite, and then only an earlier demo's (keeping its synth/ audio)."""
    if not out_in_use(out):
        return
    if not overwrite:
        raise SpeechtlError(f"--out {out} is not empty; pass --overwrite to replace an earlier demo's results, "
                            "or choose a new folder")
    if not ((out / "manifest.jsonl").is_file() or (out / "synth").is_dir()):
        raise SpeechtlError(f"--out {out} does not look like a speechtl-demo output; remove it yourself")
    for item in out.iterdir():
        if item.name == "synth":  # synthesised clips are named by content hash: safe to reuse
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..data import read_manifest, split_by_speaker, write_manifest
    from ..data.importers import import_speechocean762
    from ..data.synth import build_corpus
    from .. import recipes
    from ..config import load_config
    from ..evaluate import evaluate

    torch.manual_seed(args.seed)
    out = Path(args.out)
    _prepare_out(out, overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    _step("1/4 corpus: synthetic accents (TTS), plus real speech when present")
    synth = build_corpus(out / "synth", ["us", "gb", "scottish", "german", "french", "russian"],
                         per_accent=args.per_accent, seed=args.seed, heldout=["russian"])
    utts = list(synth)
    shared = Path(args.shared_data)
    so_dir = Path(os.environ.get("SPEECHTL_SPEECHOCEAN762", shared / "speechocean762"))
    target = "german"
    if not args.synthetic_only and (so_dir / "train" / "text").is_file():
        so = import_speechocean762(so_dir)
        # Keep the demo short: 12 training speakers, 4 dev and 6 test speakers, 10 clips each.
        speakers = sorted({u.speaker for u in so})
        keep = set(speakers[:22])
        so = [u for u in so if u.speaker in keep]
        so = split_by_speaker(so, dev=4 / 22, test=6 / 22, seed=args.seed)
        per_spk: dict[str, int] = {}
        trimmed = []
        for u in so:
            per_spk[u.speaker] = per_spk.get(u.speaker, 0) + 1
            if per_spk[u.speaker] <= 10:
                trimmed.append(u)
        utts += trimmed
        target = "Mandarin-L1"
        print(f"real speech: {len(trimmed)} speechocean762 utterances from {so_dir}")
    else:
        print("real speechocean762 not found: the target accent is synthetic German-accented English")
    real = shared / "real" / "manifest.jsonl"
    heldout = ["russian"]
    if not args.synthetic_only and real.is_file():
        native = read_manifest(real)
        for u in native:
            u.split = "test_heldout"
        heldout += sorted({u.accent for u in native})
        utts += native
        print(f"real speech: {len(native)} VCTK/LJSpeech utterances (held out, native English)")
    manifest = out / "manifest.jsonl"
    write_manifest(utts, manifest)
    test = [u for u in utts if u.split in ("test", "test_heldout")]
    print(f"{len(utts)} utterances, {len({u.accent for u in utts})} accents; target {target}; "
          f"test set {len(test)} utterances; unseen accents: {', '.join(heldout)}")

    _step(f"2/4 zero-shot {args.model}: WER per accent")
    base = evaluate(args.model, test, heldout_accents=heldout, target_accent=target, out_dir=out / "zero-shot",
                    progress=True)
    print(base.format_table())

    _step(f"3/4 LoRA adaptation to {target}")
    train_m = out / "target_train.jsonl"
    dev_m = out / "target_dev.jsonl"
    write_manifest([u for u in utts if u.accent == target and u.split == "train"], train_m)
    write_manifest([u for u in utts if u.accent == target and u.split == "dev"], dev_m)
    cfg = load_config(None, {"max_steps": args.max_steps, "eval_every": 20, "lr": 3e-4, "warmup_steps": 5,
                             "batch_seconds": 40, "seed": args.seed}, method="lora")
    recipes.run(recipes.RunInputs(args.model, str(train_m), str(dev_m)), cfg, out / "adapter-run", overwrite=True)

    _step("4/4 adapted model: WER per accent, compared with zero-shot")
    adapted = evaluate(args.model, test, adapter=out / "adapter-run" / "adapter", heldout_accents=heldout,
                       target_accent=target, out_dir=out / "adapted", progress=True)
    comparison = adapted.compare(base, target_accent=target)
    comparison.save(out / "comparison", base=base, adapted=adapted)
    print(adapted.format_table(comparison))
    print(f"\nreport: {out / 'comparison' / 'comparison.md'} (plot: wer_vs_baseline.png); "
          f"per-run reports in {out / 'zero-shot'} and {out / 'adapted'}; "
          f"total {time.perf_counter() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

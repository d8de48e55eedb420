"""speechtl-export: a model with its adapter merged in, for transformers or CTranslate2 / faster-whisper.

    speechtl-export --adapter runs/lora/adapter --format transformers --out exported/hf
    speechtl-export --adapter runs/lora/adapter --format ct2 --quantization int8 --out exported/ct2
    speechtl-export --model whisper-base --format ct2 --out exported/base-ct2     # no adapter: the base model

The transformers folder loads with transformers.pipeline("automatic-speech-recognition", model=DIR);
the ct2 folder with faster_whisper.WhisperModel(DIR) and speechtl-transcribe --engine ct2 DIR.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._common import add_common_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    from ..exporting import FORMATS, QUANTIZATIONS

    p = argparse.ArgumentParser(prog="speechtl-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="base model (name, folder or hub id); default: the one the adapter names")
    p.add_argument("--adapter", help="a saved adapter folder (speechtl-adapt's OUT/adapter) to merge in")
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--quantization", help=f"with --format ct2: one of {', '.join(QUANTIZATIONS)} (default int8)")
    p.add_argument("--out", required=True, help="folder to create (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_common_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from ..exporting import export

    t0 = time.perf_counter()
    out = export(args.model, args.out, adapter=args.adapter, format=args.format, quantization=args.quantization,
                 overwrite=args.overwrite)
    what = args.format + (f" ({args.quantization or 'int8'})" if args.format == "ct2" else "")
    print(f"wrote {out} [{what}] in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

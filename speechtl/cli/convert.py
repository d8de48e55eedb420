"""``speechtl-convert``: turn other checkpoint formats into transformers folders.

speechtl-convert ct2 SRC OUT [--dtype float32|float16|bfloat16] [--overwrite]
speechtl-convert packaged NAME        # convert a packaged model into the cache, print its folder
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ._common import add_common_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechtl-convert", description="Turn other checkpoint formats into transformers folders."
    )
    add_common_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    ct2 = sub.add_parser("ct2", help="CTranslate2 Whisper folder (faster-whisper format) -> transformers folder")
    ct2.add_argument("src", help="folder with model.bin, tokenizer.json, config.json (and vocabulary.txt)")
    ct2.add_argument("out", help="folder to create (written atomically)")
    ct2.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="weight dtype of model.safetensors (default: float32)",
    )
    ct2.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    _debug_flag(ct2)

    pk = sub.add_parser("packaged", help="convert a packaged pretrained model into the cache and print its folder")
    pk.add_argument("name", help="whisper-tiny.en or whisper-base")
    _debug_flag(pk)
    return parser


def _debug_flag(sub: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after the subcommand too (SUPPRESS: do not reset one given before it)."""
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks for errors")


def _run(args: argparse.Namespace) -> int:
    if args.command == "ct2":
        from ..convert.ct2 import convert_ct2_whisper

        t0 = time.perf_counter()
        out = convert_ct2_whisper(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {out} ({args.dtype}) in {time.perf_counter() - t0:.1f} s")
        return 0
    from ..convert.packaged import packaged_model_dir

    print(packaged_model_dir(args.name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

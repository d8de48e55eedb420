"""speechtl-transcribe MODEL FILE...: one ``path<TAB>text`` line per file (or JSONL with --json)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._common import add_common_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-transcribe", description=__doc__)
    p.add_argument("model", help="backbone name (see speechtl.list_backbones()), model folder, or hub id")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, ...)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    p.add_argument("--adapter", help="a saved adapter folder to apply")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="run in bfloat16 (CUDA)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer files")
    p.add_argument("--json", action="store_true", help="JSONL output: {path, text}")
    p.add_argument("--no-progress", action="store_true")
    add_common_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    import torch

    from .. import create_backbone
    from ..transcribe import transcribe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"dtype": torch.bfloat16} if args.bf16 else {}
    backbone = create_backbone(args.model, **kwargs).to(device)
    start = time.perf_counter()
    texts = transcribe(backbone, args.files, batch_size=args.batch_size, beam_size=args.beam_size,
                       adapter=args.adapter, max_seconds=args.max_seconds,
                       progress=False if args.no_progress else None)
    elapsed = time.perf_counter() - start
    for path, text in zip(args.files, texts):
        print(json.dumps({"path": path, "text": text}, ensure_ascii=False) if args.json else f"{path}\t{text}")
    print(f"transcribed {len(texts)} file(s) in {elapsed:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

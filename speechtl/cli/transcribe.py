"""speechtl-transcribe MODEL FILE...: one ``path<TAB>text`` line per file (or JSONL with --json).

With --adapters ACCENT=DIR ... each file runs with the adapter of its accent, chosen by --route
(auto: the --accent-classifier decides; none: the base model; ACCENT: that adapter); lines then
gain a third column, the route (``path<TAB>text<TAB>route``), and JSON the route and its probability.
With --route-by all the files are taken as one speaker: one route for all of them, chosen on the
classifier's evidence pooled over every file.
"""

from __future__ import annotations

import argparse
import json
import os
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
    add_routing_args(p)
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

    routing = routing_kwargs(args)  # bad --adapters fail before the model loads
    if routing.pop("route_by", None) == "all":
        routing["speakers"] = ["all"] * len(args.files)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"dtype": torch.bfloat16} if args.bf16 else {}
    backbone = create_backbone(args.model, **kwargs).to(device)
    start = time.perf_counter()
    texts = transcribe(backbone, args.files, batch_size=args.batch_size, beam_size=args.beam_size,
                       adapter=args.adapter, max_seconds=args.max_seconds,
                       progress=False if args.no_progress else None, **routing)
    elapsed = time.perf_counter() - start
    routes = [None] * len(args.files)
    if routing:
        texts, routes = texts
    for path, text, route in zip(args.files, texts, routes):
        if args.json:
            row = {"path": path, "text": text, **(route.to_json() if route is not None else {})}
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{path}\t{text}" + (f"\t{route.name}" if route is not None else ""))
    print(f"transcribed {len(texts)} file(s) in {elapsed:.1f} s", file=sys.stderr)
    return 0


_POOLED = "share one route, chosen on the classifier's evidence pooled over them"
_ROUTE_BY_HELP = {
    "file": f"with --route auto: file: each file decides alone (default); all: the files are one speaker and {_POOLED}",
    "utterance": f"with --route auto: utterance: each utterance decides alone (default); speaker: a speaker's "
                 f"utterances {_POOLED}",
}


def add_routing_args(p: argparse.ArgumentParser, *, route_by: tuple[str, ...] = ("file", "all")) -> None:
    """--adapters, --accent-classifier, --route, --min-prob, --soft-route, --route-by (shared with speechtl-eval)."""
    p.add_argument("--adapters", nargs="+", metavar="ACCENT=DIR",
                   help="one saved adapter folder per accent, loaded once and chosen per file by --route")
    p.add_argument("--accent-classifier", metavar="DIR",
                   help="a saved accent classifier (speechtl-adapt --task accent-id) for --route auto")
    p.add_argument("--route", default="auto",
                   help="auto (the classifier picks, default), none (the base model) or an accent of --adapters")
    p.add_argument("--min-prob", type=float, default=0.5,
                   help="with --route auto: below this probability of every adapter's accent, use the base model")
    p.add_argument("--soft-route", action="store_true",
                   help="mix the LoRA adapters weighted by the classifier's probabilities instead of picking one")
    p.add_argument("--route-by", choices=route_by, default=route_by[0], help=_ROUTE_BY_HELP[route_by[0]])


def routing_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`speechtl.transcribe.transcribe` for routing (empty when not routing)."""
    from ..errors import SpeechtlError
    from ..routing import parse_adapter_specs

    adapters = parse_adapter_specs(args.adapters)
    if not adapters and args.accent_classifier is None:
        if args.route != "auto" or args.soft_route:
            raise SpeechtlError("--route and --soft-route choose between adapters: give --adapters ACCENT=DIR ...")
        return {}
    if args.adapter:
        raise SpeechtlError("give either --adapter (one adapter for every file) or --adapters (routed), not both")
    if args.accent_classifier is not None and not os.path.isdir(args.accent_classifier):
        raise SpeechtlError(f"--accent-classifier {args.accent_classifier}: no such folder; give the adapter folder "
                            "that speechtl-adapt --task accent-id wrote (OUT/adapter)")
    if not 0.0 <= args.min_prob <= 1.0:
        raise SpeechtlError(f"--min-prob {args.min_prob}: give a probability between 0 and 1")
    if args.route not in ("auto", "none") and args.route not in adapters:
        raise SpeechtlError(f"--route {args.route}: not auto, none or an accent of --adapters "
                            f"({', '.join(adapters) or 'none given'})")
    if args.route == "auto" and args.accent_classifier is None:
        raise SpeechtlError("--route auto needs --accent-classifier DIR; or give --route none or --route ACCENT")
    grouped = args.route_by in ("all", "speaker")
    if grouped and args.route != "auto":
        raise SpeechtlError(f"--route-by {args.route_by} pools the classifier's evidence; it needs --route auto")
    return {"adapters": adapters, "accent_classifier": args.accent_classifier, "route": args.route,
            "min_prob": args.min_prob, "soft": args.soft_route, "return_routes": True,
            **({"route_by": args.route_by} if grouped else {})}


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

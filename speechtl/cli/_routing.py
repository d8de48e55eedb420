"""The routing flags speechtl-transcribe and speechtl-eval share: --adapters, --accent-classifier, --route, ..."""

from __future__ import annotations

import argparse
import os

from ..errors import SpeechtlError

_POOLED = "share one route, chosen on the classifier's evidence pooled over them"
_ROUTE_BY_HELP = {
    "file": f"with --route auto: file: each file decides alone (default); all: the files are one speaker and {_POOLED}",
    "utterance": f"with --route auto: utterance: each utterance decides alone (default); speaker: a speaker's "
                 f"utterances {_POOLED}",
}


def add_routing_args(p: argparse.ArgumentParser, *, route_by: tuple[str, ...] = ("file", "all")) -> None:
    """--adapters, --accent-classifier, --route, --min-prob, --soft-route, --route-by (shared with speechtl-eval)."""
    p.add_argument("--adapters", nargs="+", metavar="ACCENT=DIR",
                   help="one saved adapter folder per accent, loaded once and chosen per file by --route; "
                        "base=DIR runs DIR on the base route (e.g. an objective=short-context adapter)")
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
    """Keyword arguments of :func:`speechtl.transcription.transcribe` for routing (empty when not routing)."""
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

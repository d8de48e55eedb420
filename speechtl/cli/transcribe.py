"""speechtl-transcribe MODEL FILE...: one ``path<TAB>text`` line per file; --json, --srt or --vtt for segments.

Files of any length up to --max-seconds (4 hours): longer than 30 s, they are cut at silences by
voice-activity detection into segments of at most 30 s, decoded in batches. --json prints one line
per file with its segments (start and end seconds, text, the decoder's evidence); --srt and --vtt
print subtitles (one file), or write OUT_DIR/<name>.srt|.vtt with --out-dir. Whisper decoding
falls back to sampling at higher temperatures when a segment loops or is unlikely (OpenAI's
thresholds; --no-fallback turns it off). --engine ct2 runs a CTranslate2 folder (speechtl-export
--format ct2, any faster-whisper model, or a packaged name) through faster-whisper.

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
from pathlib import Path

from ..decoding import DecodeOptions
from ..errors import SpeechtlError
from ..fileio import atomic_write_text
from ..segments import LONG_FORM_LIMIT
from ._common import add_common_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-transcribe", description=__doc__)
    p.add_argument("model", help="backbone name (see speechtl.list_backbones()), model folder, or hub id")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, ...)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    p.add_argument("--adapter", help="a saved adapter folder to apply")
    add_routing_args(p)
    p.add_argument("--engine", default="torch", help="torch (default; adapters, routing) or ct2 (CTranslate2)")
    p.add_argument("--compute-type", default="default",
                   help="with --engine ct2: default (the folder's), int8, int8_float32, float16, float32")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--bf16", action="store_true", help="run in bfloat16 (CUDA, --engine torch)")
    p.add_argument("--max-seconds", type=float, default=LONG_FORM_LIMIT,
                   help=f"refuse longer files (default {LONG_FORM_LIMIT:g} s, 4 hours)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSONL output: {path, text, duration, segments, ...}")
    out.add_argument("--srt", action="store_true", help="SubRip subtitles, one cue per segment")
    out.add_argument("--vtt", action="store_true", help="WebVTT subtitles, one cue per segment")
    p.add_argument("--out-dir", help="with --srt/--vtt: write OUT_DIR/<file name>.srt|.vtt per file")
    p.add_argument("--overwrite", action="store_true", help="with --out-dir: replace existing subtitle files")
    d = DecodeOptions()
    p.add_argument("--temperatures", default=",".join(f"{t:g}" for t in d.temperatures),
                   help="fallback temperatures, tried in order while a segment fails the thresholds")
    p.add_argument("--best-of", type=int, default=d.best_of, help="samples per fallback temperature")
    p.add_argument("--compression-ratio-threshold", type=float, default=d.compression_ratio_threshold,
                   help="gzip ratio above which a segment is a repetition loop")
    p.add_argument("--logprob-threshold", type=float, default=d.logprob_threshold,
                   help="mean token log-probability below which a segment failed")
    p.add_argument("--no-speech-threshold", type=float, default=d.no_speech_threshold,
                   help="no-speech probability above which a failed segment is silence")
    p.add_argument("--no-fallback", action="store_true", help="decode once at temperature 0")
    p.add_argument("--no-progress", action="store_true")
    add_common_args(p)
    return p


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The :class:`~speechtl.decoding.DecodeOptions` the decoding flags ask for."""
    try:
        temps = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        raise SpeechtlError(f"--temperatures {args.temperatures}: give numbers separated by commas, e.g. "
                            "0,0.2,0.4,0.6,0.8,1.0") from None
    return DecodeOptions(beam_size=args.beam_size, temperatures=(0.0,) if args.no_fallback else temps,
                         best_of=args.best_of, compression_ratio_threshold=args.compression_ratio_threshold,
                         logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..engines import ENGINES
    from ..transcribe import transcribe

    if args.engine not in ENGINES:
        raise SpeechtlError(f"--engine {args.engine}: choose one of {', '.join(ENGINES)}")
    if args.engine == "ct2" and (args.adapter or args.adapters or args.accent_classifier):
        raise SpeechtlError("the ct2 engine runs exported models: export the adapted model first "
                            "(speechtl-export --adapter DIR --format ct2), or use --engine torch for adapters")
    opts = decode_options(args)
    routing = routing_kwargs(args)  # bad --adapters fail before the model loads
    routing.pop("return_routes", None)
    if routing.pop("route_by", None) == "all":
        routing["speakers"] = ["all"] * len(args.files)
    subtitles = "srt" if args.srt else "vtt" if args.vtt else None
    targets = _subtitle_paths(args, subtitles)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.engine == "ct2":
        if args.bf16:
            raise SpeechtlError("--bf16 is for --engine torch; with ct2 give --compute-type float16 or bfloat16")
        from ..engines import Ct2Whisper

        model = Ct2Whisper(args.model, device=device, compute_type=args.compute_type)
    else:
        if args.compute_type != "default":
            raise SpeechtlError("--compute-type is for --engine ct2; with torch use --bf16 (CUDA)")
        from .. import create_backbone

        model = create_backbone(args.model, **({"dtype": torch.bfloat16} if args.bf16 else {})).to(device)
    start = time.perf_counter()
    results = transcribe(model, args.files, batch_size=args.batch_size, adapter=args.adapter,
                         max_seconds=args.max_seconds, decode_options=opts, engine=args.engine,
                         merge_adapter=True, return_segments=True,
                         progress=False if args.no_progress else None, **routing)
    elapsed = time.perf_counter() - start
    for path, t in zip(args.files, results):
        if subtitles:
            from ..subtitles import RENDERERS

            text = RENDERERS[subtitles](t)
            if targets:
                atomic_write_text(targets[path], text)
                print(f"wrote {targets[path]}", file=sys.stderr)
            else:
                print(text, end="")
        elif args.json:
            print(json.dumps({"path": path, **t.to_json()}, ensure_ascii=False))
        else:
            print(f"{path}\t{t.text}" + (f"\t{t.route.name}" if t.route is not None else ""))
    audio = sum(t.duration for t in results)
    print(f"transcribed {len(results)} file(s), {audio:.1f} s of audio, in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _subtitle_paths(args: argparse.Namespace, kind: str | None) -> dict[str, Path]:
    """Where --out-dir puts each file's subtitles; refuses clashes and existing files (without --overwrite)."""
    if args.out_dir and not kind:
        raise SpeechtlError("--out-dir is for --srt or --vtt; without them transcripts print to stdout")
    if not kind:
        return {}
    if not args.out_dir:
        if len(args.files) > 1:
            raise SpeechtlError(f"--{kind} with {len(args.files)} files: give --out-dir DIR to write one file each")
        return {}
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise SpeechtlError(f"--out-dir {out} is a file; give a folder")
    targets = {f: out / f"{Path(f).stem}.{kind}" for f in args.files}
    seen: dict[Path, str] = {}
    for f, t in targets.items():
        if t in seen:
            raise SpeechtlError(f"{f} and {seen[t]} would both write {t}; transcribe them in separate runs")
        seen[t] = f
        if t.exists() and not args.overwrite:
            raise SpeechtlError(f"{t} already exists; pass --overwrite to replace it")
    return targets


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

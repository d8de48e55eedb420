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
import sys
import time

from ..decoding import SHORT_CLIPS, DecodeOptions
from ..errors import SpeechtlError
from ..fileio import atomic_write_text
from ..segments import LONG_FORM_LIMIT
from ._common import add_common_args, run_cli
from ._routing import add_routing_args, routing_kwargs

__all__ = ["add_routing_args", "build_parser", "decode_options", "main", "routing_kwargs"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-transcribe", description=__doc__)
    p.add_argument("model", help="backbone name (see speechtl.list_backbones()), model folder, or hub id")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, ...)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy; more: beam search (Whisper only)")
    p.add_argument("--adapter", help="a saved adapter folder to apply")
    add_routing_args(p)
    p.add_argument("--short-clips", choices=SHORT_CLIPS, default="auto",
                   help="Whisper: encode each batch at its longest clip instead of 30 s of padding; auto "
                        "(default): where the adapter (or export) trained that way, never for the base model, and a "
                        "clip whose short transcript loops (--compression-ratio-threshold) is decoded again at 30 s; "
                        "on: short with no retry")
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
    p.add_argument("--no-fallback", action="store_true",
                   help="decode once at temperature 0 (a short-decoded clip that loops is still decoded again at "
                        "30 s; see --short-clips)")
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
    from ..subtitles import subtitle_paths
    from ..transcription import format_transcript, load_model, transcribe

    if args.engine == "ct2" and (args.adapter or args.adapters or args.accent_classifier):
        raise SpeechtlError("the ct2 engine runs exported models: export the adapted model first "
                            "(speechtl-export --adapter DIR --format ct2), or use --engine torch for adapters")
    opts = decode_options(args)
    routing = routing_kwargs(args)  # bad --adapters fail before the model loads
    routing.pop("return_routes", None)
    if routing.pop("route_by", None) == "all":
        routing["speakers"] = ["all"] * len(args.files)
    fmt = "srt" if args.srt else "vtt" if args.vtt else "json" if args.json else "tsv"
    targets = subtitle_paths(args.files, fmt, args.out_dir, overwrite=args.overwrite)
    model = load_model(args.model, engine=args.engine, device=args.device, compute_type=args.compute_type,
                       bf16=args.bf16)
    start = time.perf_counter()
    results = transcribe(model, args.files, batch_size=args.batch_size, adapter=args.adapter,
                         max_seconds=args.max_seconds, decode_options=opts, engine=args.engine,
                         short_clips=args.short_clips,
                         merge_adapter=True, return_segments=True,
                         progress=False if args.no_progress else None, **routing)
    elapsed = time.perf_counter() - start
    for path, t in zip(args.files, results):
        text = format_transcript(path, t, fmt)
        if path in targets:
            atomic_write_text(targets[path], text)
            print(f"wrote {targets[path]}", file=sys.stderr)
        else:
            print(text, end="")
    audio = sum(t.duration for t in results)
    print(f"transcribed {len(results)} file(s), {audio:.1f} s of audio, in {elapsed:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

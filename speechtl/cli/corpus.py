"""``speechtl-corpus``: validate, import, split and synthesise speech corpora (JSONL manifests).

Examples::

    speechtl-corpus validate data/manifest.jsonl
    speechtl-corpus import speechocean762 /data/speechocean762 --out so762/manifest.jsonl
    speechtl-corpus split so762/manifest.jsonl --out so762/split.jsonl --dev 0.1 --test 0.1
    speechtl-corpus synth --out /tmp/c --accents us,gb,scottish,german,french,russian --per-accent 20 --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import SpeechtlError
from ._common import add_common_args, call_printing_warnings, comma_list, comma_list_or_none, name_or_none, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-corpus", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check every line and audio file of a manifest; exit 1 on any problem")
    v.add_argument("manifest")
    v.add_argument("--min-sample-rate", type=int, default=16000, help="lowest acceptable rate in Hz (16000)")
    v.add_argument("--max-duration", type=float, default=600.0, help="longest acceptable utterance in s (600)")
    v.add_argument("--no-decode", action="store_true", help="check headers only (faster), do not decode samples")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.add_argument("--workers", type=int, default=None)

    from ..data.importers import list_importers

    i = sub.add_parser("import", help="turn a corpus in its own layout into a manifest")
    i.add_argument("format", choices=list_importers())
    i.add_argument("src", help="the corpus folder as distributed (hf: a save_to_disk folder)")
    i.add_argument("--out", required=True, help="manifest to write (.jsonl); hf: embedded audio goes to "
                                                "<manifest name>_audio/ beside it")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out manifest")
    i.add_argument("--no-durations", action="store_true", help="do not read durations from audio headers")
    i.add_argument("--accent", help="kaldi: accent when there is no spk2accent (default unknown); hf: fixed accent")
    i.add_argument("--corpus", help="kaldi: corpus name stored on each utterance")
    i.add_argument("--audio-root", help="kaldi: folder that relative wav.scp paths start from")
    i.add_argument("--tsv", default="validated", help="commonvoice: validated|train|dev|test|...|splits")
    i.add_argument("--mic", default="mic1", help="vctk 0.92: mic1 or mic2")
    i.add_argument("--speaker-accent", dest="speaker_accents", action="append", default=[], metavar="SPK=ACCENT",
                   help="cmu-arctic: set or override a speaker's accent (repeatable)")
    for col, default in (("audio", "audio"), ("text", "text"), ("speaker", "speaker"), ("accent", "accent"),
                         ("id", None), ("gender", "gender")):
        i.add_argument(f"--{col}-column", default=default, type=name_or_none,
                       help=f"hf: the {col} column (default {default}; 'none' for no such column)")

    s = sub.add_parser("split", help="assign train/dev/test by speaker (and held-out accents)")
    s.add_argument("manifest")
    s.add_argument("--out", required=True, help="manifest to write (.jsonl; may be the input with --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out manifest")
    s.add_argument("--dev", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--heldout", type=comma_list, default=[], help="accents only in split test_heldout (comma list)")

    y = sub.add_parser("synth", help="build a synthetic multi-accent corpus with the Debian TTS engines")
    y.add_argument("--out", required=True, help="output folder (audio/, manifest.jsonl, synth_config.json)")
    y.add_argument("--accents", type=comma_list, required=True, help="comma list, e.g. us,gb,scottish,german,french,russian")
    y.add_argument("--per-accent", type=int, required=True)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--workers", type=int, default=None, help="parallel syntheses (default: CPU count)")
    y.add_argument("--heldout", default=None, type=comma_list_or_none,
                   help="accents only in split test_heldout (comma list; default the last accent; 'none')")
    y.add_argument("--speakers-per-voice", type=int, default=2)
    y.add_argument("--dev", type=float, default=0.1)
    y.add_argument("--test", type=float, default=0.1)
    y.add_argument("--engines", type=comma_list, default=None, help="only these engines (comma list)")
    y.add_argument("--no-augment", action="store_true", help="no noise, reverberation or telephone channel")
    y.add_argument("--no-progress", action="store_true")
    y.add_argument("--overwrite", action="store_true",
                   help="rebuild an earlier synth folder made with other settings (clips are reused by content)")
    return p


def _validate(args: argparse.Namespace) -> int:
    from ..data.describe import describe_summary
    from ..data.manifest import validate_manifest

    report = validate_manifest(args.manifest, min_sample_rate=args.min_sample_rate, max_duration=args.max_duration,
                               decode=not args.no_decode, workers=args.workers, progress=sys.stderr.isatty())
    for problem in report.problems:
        print(problem)
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": len(report.problems), **report.summary}, indent=2))
    elif report.ok:
        print("\n".join(describe_summary(report.summary)))
    if not report.ok:
        print(f"{len(report.problems)} problem(s) in {args.manifest}", file=sys.stderr)
        return 1
    return 0


def _check_manifest_out(args: argparse.Namespace) -> None:
    """A manifest is replaced only with --overwrite (it may be the only record of a corpus's splits)."""
    out = Path(args.out)
    if out.is_dir():
        raise SpeechtlError(f"--out {out} is a folder; give the manifest file to write (.jsonl)")
    if out.exists() and not args.overwrite:
        raise SpeechtlError(f"--out {out} exists; pass --overwrite to replace it, or choose a new file")


def _import(args: argparse.Namespace) -> int:
    from ..data.describe import describe_import
    from ..data.importers import IMPORT_OPTIONS, import_corpus, parse_speaker_accents

    _check_manifest_out(args)
    applies = IMPORT_OPTIONS.get(args.format, ())
    defaults = build_parser().parse_args(["import", args.format, args.src, "--out", args.out])
    ignored = sorted({k for opts in IMPORT_OPTIONS.values() for k in opts
                      if k not in applies and getattr(args, k) != getattr(defaults, k)})
    if ignored:
        given = ", ".join("--" + k.replace("_", "-") for k in ignored)
        own = ", ".join("--" + k.replace("_", "-") for k in applies) or "none"
        raise SpeechtlError(f"{given} {'do' if len(ignored) > 1 else 'does'} not apply to the {args.format} importer "
                            f"(its options: {own}); remove {'them' if len(ignored) > 1 else 'it'}")
    kw = {k: getattr(args, k) for k in applies}
    if "speaker_accents" in kw:
        kw["speaker_accents"] = parse_speaker_accents(kw["speaker_accents"])
    utts = call_printing_warnings(import_corpus, args.format, args.src, out=args.out,
                                  durations=not args.no_durations, **kw)
    print(f"wrote {args.out}: {describe_import(utts)}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from ..data.describe import describe_splits
    from ..data.manifest import read_manifest, split_by_speaker, write_manifest

    _check_manifest_out(args)
    utts = split_by_speaker(read_manifest(args.manifest), dev=args.dev, test=args.test, seed=args.seed,
                            heldout_accents=args.heldout)
    write_manifest(utts, args.out)
    print(f"wrote {args.out}: {describe_splits(utts)}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ..data.describe import describe_synth
    from ..data.synth import build_corpus, check_synth_out

    settings = {"accents": args.accents, "per_accent": args.per_accent, "seed": args.seed, "heldout": args.heldout,
                "speakers_per_voice": args.speakers_per_voice, "dev": args.dev, "test": args.test,
                "augment": not args.no_augment, "engines": args.engines}
    check_synth_out(args.out, **settings, overwrite=args.overwrite)
    utts = call_printing_warnings(build_corpus, args.out, **settings, workers=args.workers,
                                  progress=not args.no_progress)
    print("\n".join([f"wrote {args.out}/manifest.jsonl: {len(utts)} utterances", *describe_synth(utts)]))
    return 0


def _main(args: argparse.Namespace) -> int:
    return {"validate": _validate, "import": _import, "split": _split, "synth": _synth}[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

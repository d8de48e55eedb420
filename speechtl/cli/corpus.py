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
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import SpeechtlError
from ._common import add_common_args, out_in_use, run_cli


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
    i.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    i.add_argument("--no-durations", action="store_true", help="do not read durations from audio headers")
    i.add_argument("--accent", help="kaldi: accent when there is no spk2accent (default unknown); hf: fixed accent")
    i.add_argument("--corpus", help="kaldi: corpus name stored on each utterance")
    i.add_argument("--audio-root", help="kaldi: folder that relative wav.scp paths start from")
    i.add_argument("--tsv", default="validated", help="commonvoice: validated|train|dev|test|...|splits")
    i.add_argument("--mic", default="mic1", help="vctk 0.92: mic1 or mic2")
    i.add_argument("--speaker-accent", action="append", default=[], metavar="SPK=ACCENT",
                   help="cmu-arctic: set or override a speaker's accent (repeatable)")
    for col, default in (("audio", "audio"), ("text", "text"), ("speaker", "speaker"), ("accent", "accent"),
                         ("id", None), ("gender", "gender")):
        i.add_argument(f"--{col}-column", default=default, help=f"hf: the {col} column (default {default}; "
                       "'none' for no such column)")

    s = sub.add_parser("split", help="assign train/dev/test by speaker (and held-out accents)")
    s.add_argument("manifest")
    s.add_argument("--out", required=True)
    s.add_argument("--dev", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--heldout", type=_csv, default=[], help="accents only in split test_heldout (comma list)")

    y = sub.add_parser("synth", help="build a synthetic multi-accent corpus with the Debian TTS engines")
    y.add_argument("--out", required=True, help="output folder (audio/, manifest.jsonl, synth_config.json)")
    y.add_argument("--accents", type=_csv, required=True, help="comma list, e.g. us,gb,scottish,german,french,russian")
    y.add_argument("--per-accent", type=int, required=True)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--workers", type=int, default=None, help="parallel syntheses (default: CPU count)")
    y.add_argument("--heldout", default=None,
                   help="accents only in split test_heldout (comma list; default the last accent; 'none')")
    y.add_argument("--speakers-per-voice", type=int, default=2)
    y.add_argument("--dev", type=float, default=0.1)
    y.add_argument("--test", type=float, default=0.1)
    y.add_argument("--engines", type=_csv, default=None, help="only these engines (comma list)")
    y.add_argument("--no-augment", action="store_true", help="no noise, reverberation or telephone channel")
    y.add_argument("--no-progress", action="store_true")
    y.add_argument("--overwrite", action="store_true",
                   help="rebuild an earlier synth folder made with other settings (clips are reused by content)")
    return p


def _validate(args: argparse.Namespace) -> int:
    from ..data.manifest import validate_manifest

    report = validate_manifest(args.manifest, min_sample_rate=args.min_sample_rate, max_duration=args.max_duration,
                               decode=not args.no_decode, workers=args.workers, progress=sys.stderr.isatty())
    for problem in report.problems:
        print(problem)
    s = report.summary
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": len(report.problems), **s}, indent=2))
    elif report.ok:
        print(f"ok: {s['utterances']} utterances, {s['speakers']} speakers, {s['accents']} accents, "
              f"{s['hours']:.2f} h")
        width = max((len(a) for a in s["per_accent"]), default=6)
        for accent, a in s["per_accent"].items():
            print(f"  {accent:<{width}}  {a['utterances']:>7} utts  {a['speakers']:>5} speakers  {a['hours']:8.3f} h")
        print("  splits: " + ", ".join(f"{k} {v}" for k, v in s["per_split"].items()))
    if not report.ok:
        print(f"{len(report.problems)} problem(s) in {args.manifest}", file=sys.stderr)
        return 1
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..data.importers import import_corpus

    kw: dict = {"durations": not args.no_durations}
    f = args.format
    if f == "kaldi":
        kw.update(accent=args.accent or "unknown", corpus=args.corpus, audio_root=args.audio_root)
    elif f == "commonvoice":
        kw["tsv"] = args.tsv
    elif f == "vctk":
        kw["mic"] = args.mic
    elif f == "cmu-arctic" and args.speaker_accent:
        pairs = {}
        for item in args.speaker_accent:
            if "=" not in item:
                raise SpeechtlError(f"--speaker-accent {item!r}: write SPEAKER=ACCENT, e.g. rxr=US")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v.strip()
        kw["speaker_accents"] = pairs
    elif f == "hf":
        def col(v: str | None) -> str | None:
            return None if v is None or v.lower() == "none" else v

        kw.update(audio_column=args.audio_column, text_column=args.text_column,
                  speaker_column=col(args.speaker_column), accent_column=col(args.accent_column),
                  id_column=col(args.id_column), gender_column=col(args.gender_column), accent=args.accent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        utts = import_corpus(f, args.src, out=args.out, **kw)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    accents = sorted({u.accent for u in utts})
    print(f"wrote {args.out}: {len(utts)} utterances, {len({u.speaker for u in utts})} speakers, "
          f"accents: {', '.join(accents[:12])}{' ...' if len(accents) > 12 else ''}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from collections import Counter

    from ..data.manifest import read_manifest, split_by_speaker, write_manifest

    utts = split_by_speaker(read_manifest(args.manifest), dev=args.dev, test=args.test, seed=args.seed,
                            heldout_accents=args.heldout)
    write_manifest(utts, args.out)
    counts = Counter(u.split for u in utts)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {counts[k]}" for k in ("train", "dev", "test", "test_heldout")
                                            if counts[k]))
    return 0


def _check_synth_out(out: Path, args: argparse.Namespace, heldout: list[str] | None) -> None:
    """Continue an interrupted synth run with the same settings; refuse to write over anything else."""
    if not out_in_use(out):
        return
    config_path = out / "synth_config.json"
    if not config_path.is_file():
        if (out / "audio").is_dir():  # an interrupted run: its clips are kept and the rest is made
            return
        raise SpeechtlError(f"--out {out} is not empty and holds no earlier synth output; choose a new folder")
    try:
        before = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        before = {}
    accents = list(dict.fromkeys(args.accents))
    now = {"accents": accents, "per_accent": args.per_accent, "seed": args.seed,
           "heldout": [accents[-1]] if heldout is None else list(heldout),
           "speakers_per_voice": args.speakers_per_voice, "dev": args.dev, "test": args.test, "augment": not args.no_augment,
           "engines": None if args.engines is None else sorted(args.engines)}
    changed = [k for k, v in now.items() if before.get(k) != v]
    if changed and not args.overwrite:
        raise SpeechtlError(f"--out {out} holds a synth corpus made with other {', '.join(changed)}; pass --overwrite "
                            "to rebuild its manifest there, or choose a new folder")


def _synth(args: argparse.Namespace) -> int:
    from collections import Counter, defaultdict

    from ..data.synth import build_corpus

    heldout = None if args.heldout is None else ([] if args.heldout.lower() == "none" else _csv(args.heldout))
    _check_synth_out(Path(args.out), args, heldout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        utts = build_corpus(args.out, args.accents, args.per_accent, seed=args.seed, heldout=heldout,
                            workers=args.workers, speakers_per_voice=args.speakers_per_voice, dev=args.dev,
                            test=args.test, augment=not args.no_augment, engines=args.engines,
                            progress=not args.no_progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    engines: dict[str, Counter] = defaultdict(Counter)
    for u in utts:
        engines[u.accent][u.extra.get("engine", "?")] += 1
    print(f"wrote {args.out}/manifest.jsonl: {len(utts)} utterances")
    for accent in dict.fromkeys(u.accent for u in utts):
        splits = Counter(u.split for u in utts if u.accent == accent)
        print(f"  {accent:<10} {sum(engines[accent].values()):>5} utts  engines: "
              + ", ".join(f"{e} {n}" for e, n in sorted(engines[accent].items()))
              + "  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    return 0


def _main(args: argparse.Namespace) -> int:
    return {"validate": _validate, "import": _import, "split": _split, "synth": _synth}[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

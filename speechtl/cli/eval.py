"""speechtl-eval: transcribe a manifest, print WER per accent with 95 % CIs, and save a report.

With --adapters ACCENT=DIR ... (and --accent-classifier DIR for --route auto) each utterance runs
with the adapter of its accent; the report records every utterance's route and probability.

With --baseline (a report.json of the unadapted model on the same manifest) it also prints the
change per accent with paired-bootstrap p-values and the forgetting score, and saves
comparison.json/.md and wer_vs_baseline.png beside the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..decoding import SHORT_CLIPS
from ..errors import SpeechtlError
from ..fileio import check_apart
from ..wer import NORMALIZERS
from ._common import add_common_args, out_in_use, run_cli
from ._routing import add_routing_args, routing_kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="backbone name (speechtl.list_backbones()), model folder, or hub id")
    p.add_argument("--adapter", help="a saved adapter folder to apply to the model")
    add_routing_args(p, route_by=("utterance", "speaker"))
    p.add_argument("--manifest", required=True, help="JSONL manifest of the utterances to score")
    p.add_argument("--out", required=True, help="folder for report.json, utterances.jsonl, report.md and plots")
    p.add_argument("--baseline", help="report.json (or its folder) of the baseline model on the same manifest")
    p.add_argument("--normalizer", choices=NORMALIZERS, default="whisper",
                   help="text normalisation for references and hypotheses alike (default: whisper)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy; more: beam search (Whisper only)")
    p.add_argument("--short-clips", choices=SHORT_CLIPS, default="auto",
                   help="Whisper: encode batches at their longest clip, not 30 s; auto (default): where the "
                        "adapter trained that way (as speechtl-transcribe decodes)")
    p.add_argument("--heldout-accents", default="", help="comma-separated accents unseen in training, reported apart")
    p.add_argument("--target-accent", help="the accent the adapter was trained for (excluded from forgetting)")
    p.add_argument("--splits", help="comma-separated splits to score, e.g. test,test_heldout (default: all lines)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="speaker-bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the model's)")
    p.add_argument("--metrics", help="a training metrics.jsonl to plot as learning_curves.png in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in a non-empty --out")
    add_common_args(p)
    return p


def _split_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


# Files this tool writes; --overwrite removes them (and only them) before a new report is written.
_REPORT_FILES = ("report.json", "report.md", "utterances.jsonl", "wer_per_accent.png", "comparison.md",
                 "comparison.json", "wer_vs_baseline.png", "learning_curves.png")


def _check_out(out: Path, *, overwrite: bool) -> bool:
    """Refuse a non-empty --out unless --overwrite, and then only one that holds an earlier report.

    Returns whether an earlier report is to be replaced; :func:`_clear_out` removes it once the new one is
    ready, so a run that fails (a bad manifest line, corrupt audio) leaves the earlier report as it was.
    """
    if not out_in_use(out):
        return False
    if not overwrite:
        raise SpeechtlError(f"--out {out} is not empty; pass --overwrite to replace it")
    if not (out / "report.json").is_file():
        raise SpeechtlError(f"--out {out} does not look like a speechtl-eval output; remove it yourself")
    return True


def _clear_out(out: Path) -> None:
    for name in _REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def _run(args: argparse.Namespace) -> int:
    from ..evaluation import Report, Routing, evaluate
    from ..plots import plot_learning_curves, read_metrics
    from ..render import forgetting_line, system_name

    out = Path(args.out)
    check_apart(out, {"model": args.model, "adapter": args.adapter}, writes="the report")
    replace = _check_out(out, overwrite=args.overwrite)
    baseline = Report.load(args.baseline) if args.baseline else None  # fail before transcribing
    if args.metrics:
        read_metrics(args.metrics)  # likewise (a file with nothing to plot too)
    routing = routing_kwargs(args)  # bad --adapters fail before the model loads
    router = None
    if routing:
        router = Routing.build(args.model, routing["adapters"], routing["accent_classifier"], route=routing["route"],
                               min_prob=routing["min_prob"], soft=routing["soft"],
                               by=routing.get("route_by", "utterance"), device=args.device)
    start = time.perf_counter()
    report = evaluate(
        args.model,
        args.manifest,
        adapter=args.adapter,
        router=router,
        normalizer=args.normalizer,
        batch_size=args.batch_size,
        beam_size=args.beam_size,
        short_clips=args.short_clips,
        heldout_accents=_split_list(args.heldout_accents),
        target_accent=args.target_accent,
        progress=not args.no_progress,
        splits=_split_list(args.splits) or None,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        device=args.device,
    )
    elapsed = time.perf_counter() - start
    comparison = report.compare(baseline) if baseline is not None else None
    if replace:
        _clear_out(out)
    report.save(out)
    if comparison is not None:
        comparison.save(out, base=baseline, adapted=report)
    if args.metrics:
        plot_learning_curves(args.metrics, out / "learning_curves.png")

    print(f"{system_name(report.meta)} on {args.manifest} (normaliser {report.normalizer}, {elapsed:.1f} s)")
    print(report.format_table(comparison))
    if router is not None:
        print("routes: " + ", ".join(f"{name} {n}" for name, n in report.route_counts().items()))
    if comparison is not None:
        print(forgetting_line(comparison))
    if report.empty_refs:
        print(f"note: {report.empty_refs} utterance(s) with an empty normalised reference are not scored")
    written = ["report.json", "utterances.jsonl", "wer_per_accent.png"]
    if comparison is not None:
        written += ["comparison.md", "comparison.json", "wer_vs_baseline.png"]
    if args.metrics:
        written.append("learning_curves.png")
    print(f"report: {out / 'report.md'} (also {', '.join(written)} in {out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

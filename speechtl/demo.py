"""The demo: the whole accent-adaptation story on the embedded defaults (see ``speechtl-demo``).

:func:`run` builds a corpus with a target accent, native accents and a native accent held out,
then measures three systems per accent on test speakers that no step trained on:

1. ``zero-shot``: the packaged model as is;
2. ``LoRA``: one LoRA adapter for the target accent (the asr recipe's Whisper defaults), run on
   every utterance;
3. ``routed``: the same adapter behind an accent classifier (``--task accent-id``: the frozen
   encoder, a learned layer mix and a small head, trained on target vs native speech); each
   speaker's utterances take the adapter when the classifier, pooled over them, calls the
   speaker target-accented, and the base model otherwise.

Two corpora, chosen by what is on disk:

- **synthetic** (a user's fresh clone): Debian TTS voices (:mod:`speechtl.data.synth`); the
  target is German-accented English, the natives US and British English (classifier speakers
  and test speakers disjoint), Scottish English held out.
- **real** (``shared_data`` holds ``speechocean762/`` and ``real/``): Mandarin-L1 English from
  speechocean762 (train, dev and test speakers disjoint) as the target; the synthetic US and
  British voices and two VCTK speakers teach the classifier "native"; two other VCTK speakers and
  the LJSpeech speaker are held out (real native speech none of the steps heard).

Everything lands in ``out``: ``demo.json`` (every figure), ``demo.md`` and
``wer_per_accent.png`` (all three systems), the reports of each system and comparisons against
zero-shot. ``log`` receives each line meant for the user.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpeechtlError
from .fileio import atomic_write_text, out_in_use

SYNTH_TARGET = "german"
NATIVE = ("us", "gb")
HELDOUT_NATIVE = ("scottish",)
NATIVE_LABEL = "native"  # the accent classifier's class for every native accent
REAL_TARGET = "Mandarin-L1"
REAL_CLASSIFIER_NATIVE = ("p225", "p226")  # VCTK speakers the classifier hears; the other real speakers it does not
MAX_NEW_TOKENS = 64  # the demo's references are at most 27 words (LJSpeech), about 40 tokens
LOOP_RATIO = 2.4  # a transcript compressing better than this loops (OpenAI's threshold)
CLASSIFIER_CLIPS_PER_SPEAKER = 8  # target clips per speaker in the classifier's data: near class balance


@dataclass
class DemoCorpus:
    """The demo's utterances: ``test`` is scored, ``asr_train``/``asr_dev`` adapt, ``classifier`` teaches routing."""

    mode: str  # "synthetic" or "real"
    target: str
    heldout: list[str]
    test: list = field(default_factory=list)
    asr_train: list = field(default_factory=list)
    asr_dev: list = field(default_factory=list)
    classifier: list = field(default_factory=list)  # split train/dev, accent relabelled target/native
    description: str = ""


@dataclass
class DemoResult:
    corpus: DemoCorpus
    reports: dict[str, Any]  # system name -> Report
    comparisons: dict[str, Any]  # system name -> Comparison against zero-shot
    out: Path
    seconds: float
    timings: dict[str, float]


def prepare_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``, and then only an earlier demo's (keeping its synth/ audio)."""
    if not out_in_use(out):
        return
    if not overwrite:
        raise SpeechtlError(f"--out {out} is not empty; pass --overwrite to replace an earlier demo's results, "
                            "or choose a new folder")
    if not ((out / "manifest.jsonl").is_file() or (out / "synth").is_dir()):
        raise SpeechtlError(f"--out {out} does not look like a speechtl-demo output; remove it yourself")
    for item in out.iterdir():
        if item.name == "synth":  # synthesised clips are named by content hash: safe to reuse
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _relabel(utts, accent: str | None = None, split: str | None = None, suffix: str = "") -> list:
    out = []
    for u in utts:
        v = type(u)(**{**u.__dict__})
        if accent is not None:
            v.accent = accent
        if split is not None:
            v.split = split
        if suffix:
            v.id = v.id + suffix
        out.append(v)
    return out


def _first_per_speaker(utts, n: int) -> list:
    seen: Counter = Counter()
    out = []
    for u in utts:
        seen[u.speaker] += 1
        if seen[u.speaker] <= n:
            out.append(u)
    return out


def real_data_dirs(shared_data: str | os.PathLike | None) -> tuple[Path, Path] | None:
    """``(speechocean762 folder, real-speech manifest)`` when both exist, else None."""
    shared = Path(shared_data) if shared_data is not None else None
    env = os.environ.get("SPEECHTL_SPEECHOCEAN762")
    so_dir = Path(env) if env else shared / "speechocean762" if shared is not None else None
    real = shared / "real" / "manifest.jsonl" if shared is not None else None
    if so_dir is not None and (so_dir / "train" / "text").is_file() and real is not None and real.is_file():
        return so_dir, real
    return None


def build_demo_corpus(out: Path, *, shared_data: str | os.PathLike | None = None, synthetic_only: bool = False,
                      native_clips: int = 60, target_clips: int = 180, heldout_clips: int = 8,
                      real_speakers: int = 22, real_clips: int = 8, seed: int = 0,
                      progress: bool = True) -> DemoCorpus:
    """Synthesise (and import) the demo's utterances under ``out``; see the module docstring.

    native_clips: synthetic clips per native accent (a tenth of them are test speakers');
    target_clips: synthetic target clips (a quarter are test speakers'; synthetic corpus only);
    heldout_clips: clips of each held-out synthetic accent (synthetic corpus only);
    real_speakers, real_clips: speechocean762 speakers used (12/22 train, 4/22 dev, 6/22 test) and clips each.
    """
    from .data import read_manifest, split_by_speaker
    from .data.importers import import_speechocean762
    from .data.synth import build_corpus

    native = build_corpus(out / "synth" / "native", list(NATIVE), per_accent=native_clips, seed=seed, heldout=[],
                          speakers_per_voice=2, dev=0.1, test=0.1, progress=progress)
    # Every clip of a held-out accent is a test clip (build_corpus keeps one accent for training).
    native_train = [u for u in native if u.split == "train"]
    native_dev = [u for u in native if u.split == "dev"]
    native_test = [u for u in native if u.split == "test"]
    real = None if synthetic_only else real_data_dirs(shared_data)
    if real is None:
        # Every clip of a held-out accent is a test clip (build_corpus keeps one accent for training).
        heldout = _relabel(build_corpus(out / "synth" / "heldout", list(HELDOUT_NATIVE), per_accent=heldout_clips,
                                        seed=seed, heldout=[], dev=0.0, test=0.0, progress=progress),
                           split="test_heldout")
        target = build_corpus(out / "synth" / "target", [SYNTH_TARGET], per_accent=target_clips, seed=seed,
                              heldout=[], speakers_per_voice=4, dev=0.1, test=0.25, progress=progress)
        by = {s: [u for u in target if u.split == s] for s in ("train", "dev", "test")}
        corpus = DemoCorpus("synthetic", SYNTH_TARGET, list(HELDOUT_NATIVE),
                            description="synthetic: German-accented English (target), US and British English "
                                        "(native), Scottish English (held out), Debian TTS voices")
        classifier_native = native_train
    else:
        so_dir, real_manifest = real
        so = import_speechocean762(so_dir)
        keep = set(sorted({u.speaker for u in so})[:real_speakers])
        n = len(keep)
        so = split_by_speaker([u for u in so if u.speaker in keep], dev=4 / 22, test=6 / 22, seed=seed)
        so = _first_per_speaker(so, real_clips)
        by = {s: [u for u in so if u.split == s] for s in ("train", "dev", "test")}
        spoken = read_manifest(real_manifest)
        for u in spoken:
            u.split = "test_heldout"
        known = [u for u in spoken if u.speaker in REAL_CLASSIFIER_NATIVE]
        unseen = [u for u in spoken if u.speaker not in REAL_CLASSIFIER_NATIVE]
        corpus = DemoCorpus("real", REAL_TARGET, sorted({u.accent for u in unseen}),
                            description=f"real: speechocean762 Mandarin-L1 English ({so_dir}; {n} speakers, "
                                        f"{real_clips} clips each), synthetic US and British English (native), "
                                        "real VCTK/LJSpeech speakers "
                                        f"{', '.join(sorted({u.speaker for u in unseen}))} (held out)")
        # Real native speakers the classifier hears, twice: the synthetic voices alone are a thin picture of native.
        classifier_native = native_train + _relabel(known) + _relabel(known, suffix="__copy1")
        heldout = unseen
    corpus.asr_train, corpus.asr_dev = by["train"], by["dev"]
    corpus.test = by["test"] + native_test + heldout
    corpus.classifier = (_relabel(_first_per_speaker(by["train"], CLASSIFIER_CLIPS_PER_SPEAKER), corpus.target,
                                  "train")
                         + _relabel(classifier_native, NATIVE_LABEL, "train")
                         + _relabel(by["dev"], corpus.target, "dev") + _relabel(native_dev, NATIVE_LABEL, "dev"))
    return corpus


def run(out: str | os.PathLike, *, model: str = "whisper-tiny.en", native_clips: int = 60, target_clips: int = 180,
        heldout_clips: int = 8, max_steps: int = 60, batch_seconds: float = 20.0, classifier_epochs: int = 6,
        min_prob: float = 0.6,
        shared_data: str | os.PathLike | None = None, synthetic_only: bool = False, seed: int = 0,
        overwrite: bool = False, log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring); returns every report and comparison."""
    import torch

    from . import recipes
    from .config import load_config
    from .data import write_manifest
    from .decoding import DecodeOptions
    from .evaluation import evaluate
    from .plots import plot_wer_systems
    from .render import systems_table

    torch.manual_seed(seed)
    out = Path(out)
    prepare_out(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 1)

    log("\n== 1/6 corpus: a target accent, native accents, a native accent held out")
    corpus = build_demo_corpus(out, shared_data=shared_data, synthetic_only=synthetic_only, native_clips=native_clips,
                               target_clips=target_clips, heldout_clips=heldout_clips, seed=seed)
    target = corpus.target
    write_manifest(corpus.test, out / "manifest.jsonl")
    write_manifest(corpus.asr_train + corpus.asr_dev, out / "target.jsonl")
    write_manifest(corpus.classifier, out / "accent_id.jsonl")
    counts = Counter(u.accent for u in corpus.test)
    log(f"{corpus.description}\ntest set: " + ", ".join(f"{a} {n}" for a, n in sorted(counts.items()))
        + f" utterances; adapter: {len(corpus.asr_train)} train / {len(corpus.asr_dev)} dev {target} utterances of "
        f"other speakers; classifier: {sum(u.split == 'train' for u in corpus.classifier)} train utterances")
    step("corpus")
    # Greedy decoding without the temperature fallback, the same for all three systems: on these voices the
    # fallback is set off by low confidence rather than loops, and costs several times the decoding. The
    # loop check stays: a clip that the adapter decodes short and that loops is decoded again at 30 s
    # (transcription's short_clips=auto). The token cap lies well above the longest reference.
    decoding = DecodeOptions.plain(max_new_tokens=MAX_NEW_TOKENS).with_(compression_ratio_threshold=LOOP_RATIO)
    common = dict(heldout_accents=corpus.heldout, target_accent=target, progress=True, seed=seed,
                  decode_options=decoding)

    log(f"\n== 2/6 zero-shot {model}: WER per accent")
    reports = {"zero-shot": evaluate(model, corpus.test, out_dir=out / "zero-shot", **common)}
    log(reports["zero-shot"].format_table())
    step("zero-shot")

    log(f"\n== 3/6 LoRA adapter for {target} (the recipe's Whisper defaults, {max_steps} steps of "
        f"{batch_seconds:g} s of audio)")
    cfg = load_config(None, {"max_steps": max_steps, "eval_every": max_steps, "batch_seconds": batch_seconds,
                             "seed": seed}, method="lora")
    recipes.run(recipes.RunInputs(model, str(out / "target.jsonl"), target_accent=target), cfg, out / "adapter-run",
                overwrite=True)
    adapter = out / "adapter-run" / "adapter"
    step("adapter")

    log(f"\n== 4/6 accent classifier: {target} or {NATIVE_LABEL} (frozen encoder, small head)")
    cfg = load_config(None, {"epochs": classifier_epochs, "lr": 5e-3, "batch_seconds": 60, "seed": seed})
    recipes.run(recipes.RunInputs(model, str(out / "accent_id.jsonl")), cfg, out / "accent-id-run", task="accent-id",
                overwrite=True)
    classifier = out / "accent-id-run" / "adapter"
    step("classifier")

    log("\n== 5/6 LoRA for every utterance: WER per accent")
    reports["LoRA"] = evaluate(model, corpus.test, adapter=adapter, out_dir=out / "lora", **common)
    step("eval-lora")

    log(f"\n== 6/6 routed: the classifier sends each speaker to the {target} adapter or the base model")
    reports["routed"] = evaluate(model, corpus.test, adapters={target: adapter}, accent_classifier=classifier,
                                 route="auto", route_by="speaker", min_prob=min_prob, out_dir=out / "routed",
                                 **common)
    step("eval-routed")

    base = reports["zero-shot"]
    comparisons = {}
    for name, slug in (("LoRA", "lora"), ("routed", "routed")):
        comparisons[name] = reports[name].compare(base, target_accent=target)
        comparisons[name].save(out / f"compare-{slug}", base=base, adapted=reports[name])
    systems = [(name, reports[name], comparisons[name]) for name in comparisons]
    plot_wer_systems([(name, r) for name, r in reports.items()], out / "wer_per_accent.png",
                     title=f"{model}: WER per accent, 95 % speaker-bootstrap CI (* target, † held out)")
    seconds = time.perf_counter() - start
    result = DemoResult(corpus, reports, comparisons, out, seconds, timings)
    summary = demo_summary(result, model=model, max_steps=max_steps, batch_seconds=batch_seconds, min_prob=min_prob)
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "demo.md", demo_markdown(summary, systems_table(("zero-shot", base), systems,
                                                                           markdown=True)))
    log("\n" + systems_table(("zero-shot", base), systems))
    log("routes: " + routes_line(summary))
    return result


def routes_line(summary: dict[str, Any]) -> str:
    """Where each accent's utterances went under routing, e.g. ``gb: base 8; german: german 50``."""
    return "; ".join(f"{a['accent']}: " + ", ".join(f"{k} {n}" for k, n in a["routes"].items())
                     for a in summary["accents"])


def demo_summary(result: DemoResult, *, model: str, max_steps: int, batch_seconds: float,
                 min_prob: float) -> dict[str, Any]:
    """Every figure of a demo run as plain data (``demo.json``)."""
    c = result.corpus
    base = result.reports["zero-shot"]
    accents = []
    for name, g in base.accents.items():
        row: dict[str, Any] = {"accent": name, "utterances": g.utterances, "speakers": g.speakers, "words": g.words,
                               "target": name == c.target, "heldout": g.heldout, "zero-shot": g.wer}
        for system, comparison in result.comparisons.items():
            ch = comparison.group(name)
            row[system] = result.reports[system].accents[name].wer
            row[f"{system} change"] = None if ch is None else ch.delta
            row[f"{system} p"] = None if ch is None else ch.p_value
        routes = Counter(r.route for r in result.reports["routed"].utterances if r.accent == name)
        row["routes"] = dict(sorted(routes.items()))
        accents.append(row)
    routed_adapter = {r.speaker for r in result.reports["routed"].utterances if r.route == c.target}
    return {
        "mode": c.mode,
        "corpus": c.description,
        "model": model,
        "target_accent": c.target,
        "heldout_accents": c.heldout,
        "lora_steps": max_steps,
        "lora_batch_seconds": batch_seconds,
        "decoding": f"greedy, no temperature fallback, at most {MAX_NEW_TOKENS} tokens; a clip decoded short "
                    f"whose transcript compresses over {LOOP_RATIO} is decoded again at 30 s (all three systems)",
        "min_prob": min_prob,
        "route_by": "speaker",
        "data": {"test": len(c.test), "adapter_train": len(c.asr_train), "adapter_dev": len(c.asr_dev),
                 "classifier_train": sum(u.split == "train" for u in c.classifier),
                 "classifier_dev": sum(u.split == "dev" for u in c.classifier)},
        "accents": accents,
        "speakers_routed_to_adapter": sorted(routed_adapter),
        "seconds": round(result.seconds, 1),
        "step_seconds": result.timings,
    }


def demo_markdown(summary: dict[str, Any], table: str) -> str:
    """``demo.md``: the per-accent table of the three systems and how the run was set up."""
    d = summary["data"]
    lines = [f"# speechtl demo ({summary['mode']}): {summary['model']}, target {summary['target_accent']}", "",
             f"Corpus: {summary['corpus']}. Test: {d['test']} utterances of speakers no step trained on. "
             f"LoRA: {d['adapter_train']} train / {d['adapter_dev']} dev utterances, {summary['lora_steps']} steps of "
             f"{summary['lora_batch_seconds']:g} s of audio. "
             f"Routed: the accent classifier ({d['classifier_train']} train / {d['classifier_dev']} dev utterances) "
             f"pools its evidence per speaker; below p = {summary['min_prob']} for the target the base model runs. "
             f"Decoding: {summary['decoding']}. Total {summary['seconds']:.0f} s.", "", table.rstrip(), "",
             "Routes (utterances per accent): " + routes_line(summary), ""]
    return "\n".join(lines)

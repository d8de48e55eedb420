#!/usr/bin/env python3
"""Accent adaptation without forgetting, on real speech: zero-shot vs LoRA vs LoRA+replay vs routing.

Target accent: Mandarin-L1 English (speechocean762, 50 speakers), split by speaker into train
(40 speakers), dev (5) and test (5). Native side, never trained on by the ASR adapters: VCTK
(England) and LJSpeech (US) from ``../shared/data/real``. Replay data: synthetic native voices
(Debian TTS: us, gb, scottish) built offline by :func:`speechtl.data.synth.build_corpus`.

Systems, all on whisper-tiny.en with the same LoRA settings and steps:

- ``zero-shot``: the packaged model as is.
- ``lora``: LoRA on the Mandarin-L1 train speakers (``speechtl-adapt --method lora``).
- ``lora+replay``: the same plus replay of the synthetic native voices (a quarter of each
  batch) and distillation towards the base model on them (``replay_fraction``, ``distill_weight``).
- ``routed``: the plain LoRA adapter behind an accent classifier (``speechtl-adapt --task
  accent-id``: frozen encoder, normalised learned layer mix, statistics pooling, small head); an
  utterance the classifier does not call Mandarin-L1 runs on the base model.
- ``routed per speaker``: the same, but a speaker's utterances share one route, chosen on the
  classifier's evidence pooled over them (``route_by="speaker"``, ``speechtl-eval --route-by speaker``).

The accent classifier learns Mandarin-L1 from 35 of the 40 ASR train speakers (8 clips each) and
picks its checkpoint on the other 5; native from the synthetic voices plus the real VCTK speakers
``--classifier-native`` (default p225, p226; each clip repeated ``--real-native-repeat`` times).
It never hears the ASR dev and test speakers of speechocean762, the VCTK speakers p227/p228 or
the LJSpeech speaker (another corpus, another recording set-up and an American voice): those
are its held-out speakers, on which its accuracy is reported (per speaker too). The ASR dev speakers
choose the LoRA checkpoints; every system's WER is measured on the ASR test speakers and all native
clips, none of which chose anything or was heard by the classifier.
Beside it, classifiers of other seeds (``--classifier-seeds``) and with the plain head (mean
pooling of unnormalised states; 10 and 4 epochs) are scored on the same held-out speakers.

    python bench/accent_forgetting.py [--work /tmp/accent-exp] [--steps 180] [--out bench/results]

Writes ``OUT/accent_forgetting.json`` and ``.md``. Runs found complete in ``--work`` are reused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, finish, machine_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = "Mandarin-L1"
CLASSIFIER_DEV_SPEAKERS = 5  # of the ASR train speakers: the classifier's checkpoint choice
LORA_KEYS = ["lr=3e-4", "warmup_steps=10", "batch_seconds=40", "seed=0"]


def _adapt(out: Path, train: Path, keys: list[str], *, model: str, task: str = "auto", method: str | None = None,
           target_accent: str | None = None) -> float:
    """A speechtl-adapt run through its recipe unless ``out`` holds a finished one; the wall time (0 when reused)."""
    from speechtl import recipes
    from speechtl.config import load_config

    if (out / "result.json").is_file():
        print(f"reusing {out}", flush=True)
        return json.loads((out / "result.json").read_text()).get("wall_seconds", 0.0)
    t = time.perf_counter()
    cfg = load_config(None, keys, **({"method": method} if method else {}))
    recipes.run(recipes.RunInputs(model, str(train), target_accent=target_accent), cfg, out, task=task,
                overwrite=True)
    wall = time.perf_counter() - t
    result = json.loads((out / "result.json").read_text())
    result["wall_seconds"] = wall
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return wall


def _classifier_variants(seeds: str) -> list[tuple[str, list[str], str]]:
    """(name, speechtl-adapt keys, folder suffix) of the extra classifiers scored beside the routed one."""
    out = [(f"default head, seed {s}", [f"seed={s}"], f"seed{s}") for s in (x.strip() for x in seeds.split(",")) if s]
    plain = ["seed=0", "head_pooling=mean", "head_norm=false"]
    return out + [("plain head (mean pooling, no normalisation), seed 0", plain, "plain-head"),
                  ("plain head, 4 epochs, seed 0", [*plain, "epochs=4"], "plain-head-4-epochs")]


def _wers(report) -> dict[str, Any]:
    return {a: {"wer": g.wer, "ci": [g.ci_low, g.ci_high], "utterances": g.utterances}
            for a, g in report.accents.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/accent-exp", help="folder for manifests, runs and reports")
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--steps", type=int, default=180, help="LoRA steps (both ASR adapters)")
    ap.add_argument("--replay-fraction", type=float, default=0.25)
    ap.add_argument("--distill-weight", type=float, default=1.0)
    ap.add_argument("--real-native-repeat", type=int, default=4,
                    help="copies of each real native clip in the classifier's training set (synthetic voices alone "
                         "teach it 'synthetic vs real' rather than the accent)")
    ap.add_argument("--classifier-native", default="p225,p226",
                    help="real native speakers (of ../shared/data/real) the accent classifier trains on; "
                         "the others are held out")
    ap.add_argument("--classifier-epochs", type=int, default=10)
    ap.add_argument("--classifier-seeds", default="1,2",
                    help="more classifier seeds to score on the held-out speakers (comma-separated; empty: none)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    from speechtl.data import read_manifest, split_by_speaker, write_manifest
    from speechtl.data.importers import import_speechocean762
    from speechtl.data.synth import build_corpus
    from speechtl.evaluation import Report, evaluate
    from speechtl.fileio import atomic_write_text
    from speechtl.routing import evaluate_accent_id

    shared = Path(args.shared_data)
    if not (shared / "speechocean762" / "train" / "text").is_file() or not (shared / "real").is_dir():
        sys.exit(f"{shared}: needs speechocean762/ and real/ (see ../shared/data/README.md)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    t0 = time.perf_counter()

    # -- data -------------------------------------------------------------------------------------
    so = split_by_speaker(import_speechocean762(shared / "speechocean762"), dev=0.1, test=0.1, seed=0)
    write_manifest(so, work / "so762.jsonl")
    native = read_manifest(shared / "real" / "manifest.jsonl")
    for u in native:
        u.split = "test"
    synth = build_corpus(work / "native-synth", ["us", "gb", "scottish"], per_accent=60, seed=1, heldout=[],
                         dev=0.15, test=0.0, progress=False)
    replay_manifest = work / "native-synth" / "manifest.jsonl"

    def relabel(utts, accent, split):
        out = []
        for u in utts:
            v = type(u)(**{**u.__dict__})
            v.accent, v.split = accent, split
            out.append(v)
        return out

    so_by = {s: [u for u in so if u.split == s] for s in ("train", "dev", "test")}
    train_speakers = sorted({u.speaker for u in so_by["train"]})
    clf_dev_speakers = set(random.Random(0).sample(train_speakers, CLASSIFIER_DEV_SPEAKERS))
    per_spk: dict[str, int] = {}
    clf_train_so = []
    for u in so_by["train"]:
        per_spk[u.speaker] = per_spk.get(u.speaker, 0) + 1
        if u.speaker not in clf_dev_speakers and per_spk[u.speaker] <= 8:  # 8 clips a speaker: near class balance
            clf_train_so.append(u)
    clf_dev_so = [u for u in so_by["train"] if u.speaker in clf_dev_speakers]
    native_for_classifier = [s for s in args.classifier_native.split(",") if s]
    real_native = [u for u in native if u.speaker in native_for_classifier]
    repeated = [type(u)(**{**u.__dict__, "id": f"{u.id}__copy{k}"}) for k in range(1, args.real_native_repeat)
                for u in real_native]
    clf_native_train = [u for u in synth if u.split == "train"] + real_native + repeated
    clf_rows = (relabel(clf_train_so, TARGET, "train") + relabel(clf_native_train, "native", "train")
                + relabel(clf_dev_so, TARGET, "dev") + relabel([u for u in synth if u.split == "dev"], "native", "dev"))
    write_manifest(clf_rows, work / "accent_id.jsonl")
    heldout_native = [u for u in native if u.speaker not in native_for_classifier]
    clf_test = (relabel(so_by["dev"] + so_by["test"], TARGET, "test")
                + relabel(heldout_native, "native", "test"))

    # -- training ---------------------------------------------------------------------------------
    lora_keys = [*LORA_KEYS, f"max_steps={args.steps}", f"eval_every={args.steps // 3}"]
    lora = dict(model=args.model, method="lora", target_accent=TARGET)
    clf = dict(model=args.model, task="accent-id")
    clf_keys = [f"epochs={args.classifier_epochs}", "lr=1e-3", "batch_seconds=60"]
    # The classifier first: its held-out accuracy is known a few minutes in.
    wall = {"accent-id": _adapt(work / "accent-id", work / "accent_id.jsonl", [*clf_keys, "seed=0"], **clf)}
    classifier = work / "accent-id" / "adapter"
    acc = evaluate_accent_id(classifier, clf_test)
    print(acc.format_table(), flush=True)
    # How much of that is the seed, and how much the head: other seeds, and the plain head (mean pooling of
    # unnormalised states) on the same data; only seed 0 with the default head routes below.
    variants = {"default head, seed 0": acc}
    for name, keys, slug in _classifier_variants(args.classifier_seeds):
        wall[f"accent-id {slug}"] = _adapt(work / f"accent-id-{slug}", work / "accent_id.jsonl", [*clf_keys, *keys],
                                           **clf)
        variants[name] = evaluate_accent_id(work / f"accent-id-{slug}" / "adapter", clf_test)
        print(name, variants[name].format_table(), flush=True)
    wall["lora"] = _adapt(work / "lora", work / "so762.jsonl", lora_keys, **lora)
    wall["lora+replay"] = _adapt(work / "lora-replay", work / "so762.jsonl",
                                 [*lora_keys, f"replay_manifest={replay_manifest}",
                                  f"replay_fraction={args.replay_fraction}", f"distill_weight={args.distill_weight}"],
                                 **lora)

    # -- evaluation -------------------------------------------------------------------------------
    # The dev speakers choose the LoRA checkpoints; the Mandarin-L1 WER is the test speakers', who chose nothing.
    test_utts = so_by["test"] + native
    common = dict(heldout_accents=sorted({u.accent for u in native}), target_accent=TARGET, progress=True)

    def scored(name: str, **kw):
        out_dir = work / f"eval-{name}"
        if (out_dir / "report.json").is_file() and "accent_classifier" not in kw:  # a fixed system: reuse
            print(f"reusing {out_dir}", flush=True)
            return Report.load(out_dir)
        return evaluate(args.model, test_utts, out_dir=out_dir, **common, **kw)

    reports = {
        "zero-shot": scored("zero-shot"),
        "lora": scored("lora", adapter=work / "lora" / "adapter"),
        "lora+replay": scored("lora-replay", adapter=work / "lora-replay" / "adapter"),
        "routed": scored("routed", adapters={TARGET: work / "lora" / "adapter"}, accent_classifier=classifier,
                         route="auto"),
        "routed per speaker": scored("routed-speaker", adapters={TARGET: work / "lora" / "adapter"},
                                     accent_classifier=classifier, route="auto", route_by="speaker"),
    }

    # -- table ------------------------------------------------------------------------------------
    zs = reports["zero-shot"]
    cut_lora = zs.accents[TARGET].wer - reports["lora"].accents[TARGET].wer
    heldout_ids = {u.id for u in heldout_native}
    rows = []
    for name, rep in reports.items():
        row: dict[str, Any] = {"system": name, "accents": _wers(rep)}
        cut = zs.accents[TARGET].wer - rep.accents[TARGET].wer
        row["target_cut_points"] = cut * 100
        row["share_of_lora_cut"] = cut / cut_lora if cut_lora > 0 else None
        for a in sorted({u.accent for u in native}):
            row[f"{a}_change_points"] = (rep.accents[a].wer - zs.accents[a].wer) * 100
        scores = [r.score for r in rep.utterances if r.id in heldout_ids]
        row["native_unseen_by_classifier_wer"] = (sum(s.substitutions + s.deletions + s.insertions for s in scores)
                                                  / max(1, sum(s.ref_words for s in scores)))
        routes = [(r.accent, getattr(r, "route", None)) for r in rep.utterances]
        if any(route for _, route in routes):
            row["routes"] = {}
            for accent, route in routes:
                name = getattr(route, "name", route)
                row["routes"].setdefault(accent, {}).setdefault(name, 0)
                row["routes"][accent][name] += 1
            row["wrong_routes"] = [{"id": r.id, "accent": r.accent, "route": r.route, "prob": r.route_prob}
                                   for r in rep.utterances if (r.accent == TARGET) != (r.route == TARGET)]
        rows.append(row)
    result = {
        "bench": "accent_forgetting",
        "command": command_line(),
        "repeats": 1,
        "model": args.model,
        "steps": args.steps,
        "replay_fraction": args.replay_fraction,
        "classifier_native_speakers": native_for_classifier,
        "classifier_dev_speakers": sorted(clf_dev_speakers),
        "classifier_epochs": args.classifier_epochs,
        "real_native_repeat": args.real_native_repeat,
        "distill_weight": args.distill_weight,
        "data": {"train_speakers": len({u.speaker for u in so_by["train"]}),
                 "dev_speakers": len({u.speaker for u in so_by["dev"]}),
                 "dev_utterances": len(so_by["dev"]),
                 "test_speakers": len({u.speaker for u in so_by["test"]}),
                 "test_utterances": len(so_by["test"]), "native_utterances": len(native),
                 "replay_utterances": sum(u.split == "train" for u in synth),
                 "classifier_train": f"{len(clf_train_so)} Mandarin-L1 clips of "
                                     f"{len({u.speaker for u in clf_train_so})} speakers, "
                                     f"{len(clf_native_train)} native clips ({sum(u.split == 'train' for u in synth)} "
                                     f"synthetic, {len(real_native)} real x {args.real_native_repeat} of "
                                     f"{', '.join(native_for_classifier)})",
                 "classifier_dev": f"{len(clf_dev_so)} Mandarin-L1 clips of {len(clf_dev_speakers)} other train "
                                   f"speakers and {sum(u.split == 'dev' for u in synth)} synthetic native clips"},
        "systems": rows,
        "accent_id_heldout_speakers": acc.to_json(),
        "accent_id_variants": {k: v.to_json() for k, v in variants.items()},
        "train_wall_seconds": wall,
        "total_seconds": time.perf_counter() - t0,
        "machine": machine,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "accent_forgetting.md", _markdown(result))
    print(_markdown(result))
    finish(result, out / "accent_forgetting.json", f"accent_forgetting: {len(rows)} systems")
    return 0


def _markdown(r: dict[str, Any]) -> str:
    native = [k[: -len("_change_points")] for k in r["systems"][0] if k.endswith("_change_points")]
    head = f"| system | {TARGET} test WER | share of LoRA's cut | " + " | ".join(
        f"{a} WER (Δ vs zero-shot)" for a in native) + " | native WER, speakers unseen by the classifier | routes |"
    lines = [f"# Accent adaptation without forgetting ({r['model']}, {r['steps']} LoRA steps)", "", head,
             "|" + "---|" * (5 + len(native))]
    for row in r["systems"]:
        acc = row["accents"]
        share = "—" if row["share_of_lora_cut"] is None or row["system"] == "zero-shot" else \
            f"{row['share_of_lora_cut'] * 100:.0f} %"
        cells = [row["system"], f"{acc[TARGET]['wer'] * 100:.2f} %", share]
        cells += [f"{acc[a]['wer'] * 100:.2f} % ({row[f'{a}_change_points']:+.2f})" for a in native]
        cells.append(f"{row['native_unseen_by_classifier_wer'] * 100:.2f} %")
        cells.append("; ".join(f"{a}: " + ", ".join(f"{k} {n}" for k, n in sorted(r.items()))
                               for a, r in sorted(row.get("routes", {}).items())) or "—")
        lines.append("| " + " | ".join(cells) + " |")
    for row in r["systems"]:
        if row.get("wrong_routes"):
            lines += ["", f"{row['system']}: wrong routes: " + ", ".join(
                f"{w['id']} ({w['accent']} → {w['route']}, p = {w['prob']:.2f})" for w in row["wrong_routes"])]
    a = r["accent_id_heldout_speakers"]
    missed = {s: v for s, v in a.get("speakers", {}).items() if v["correct"] < v["utterances"]}
    lines += ["", f"Accent classifier on {len(a.get('speakers', {}))} held-out speakers "
              f"({', '.join(f'{g} {n}' for g, n in zip(a['gold'], map(sum, a['confusion'])))} utterances): "
              f"accuracy {a['accuracy'] * 100:.1f} %, balanced accuracy {a['balanced_accuracy'] * 100:.1f} %; "
              "recall per class: " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in a.get("recall", {}).items())
              + "; speakers not always right: "
              + (", ".join(f"{s} {v['correct']}/{v['utterances']}" for s, v in sorted(missed.items())) or "none"),
              f"It trained on {r['data'].get('classifier_train', '?')} and chose its checkpoint on "
              f"{r['data'].get('classifier_dev', '?')}.", ""]
    if r.get("accent_id_variants"):
        lines += ["| accent classifier on the held-out speakers | accuracy | balanced accuracy | Mandarin-L1 recall "
                  "| native recall | speakers not always right |", "|---|---|---|---|---|---|"]
        for name, v in r["accent_id_variants"].items():
            wrong = {s: x for s, x in v.get("speakers", {}).items() if x["correct"] < x["utterances"]}
            lines.append(f"| {name} | {v['accuracy'] * 100:.1f} % | {v['balanced_accuracy'] * 100:.1f} % | "
                         f"{v['recall'][TARGET] * 100:.1f} % | {v['recall']['native'] * 100:.1f} % | "
                         + (", ".join(f"{s} {x['correct']}/{x['utterances']}" for s, x in sorted(wrong.items()))
                            or "none") + " |")
        lines.append("")
    lines += [
              "Data: " + ", ".join(f"{k} {v}" for k, v in r["data"].items() if not k.startswith("classifier"))
              + f". Replay fraction {r['replay_fraction']}, distillation weight {r['distill_weight']}.",
              "", "Reproduce: `python bench/accent_forgetting.py`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Deployment: transcription speed and WER of the runtimes users pick, base and adapted, clips and long-form.

Run by hand on an idle machine (about 40 minutes on 2 cores with the defaults):

    .venv/bin/python bench/inference_rtf.py [--repeats 3] [--threads 2] [--work /tmp/speechtl-deploy]

Models: whisper-tiny.en zero-shot (``base``) and with the LoRA adapter of speechtl-adapt on the
speechocean762 train speakers (``adapted``: ``--method lora``, the keys in ``LORA_KEYS``, trained
once into ``--work`` and reused), and the short-context-trained base model (``short_context``:
``--method lora objective=short-context``, the keys in ``SHORT_CONTEXT_KEYS`` and the steps, distilled from the
30-s base model on synthetic native voices (us, gb, scottish) and the audio of the speechocean762
train speakers, since the objective learns the base model's outputs rather than an accent; the
synthetic voices' dev pseudo-speakers choose the checkpoint, and no clip of the measured sets
trains or chooses anything). Each is exported with speechtl-export to transformers (what the
pipeline loads) and to CTranslate2 int8 (what faster-whisper and ``--engine ct2`` load).

Data (real speech only): the speechocean762 test speakers (100 clips, Mandarin-L1, speakers that
neither trained the adapter nor chose its checkpoint) and the 48 VCTK/LJSpeech clips of
../shared/data/real. The same clips make the long-form files: three recordings of over 5 minutes,
clips in order with 1-4 s of silence between them and 30 s of silence in the middle of each. And
ten silent clips (digital silence and faint noise), where every word is a hallucination.

Sides (each in its own process, same threads, greedy decoding, max 128 new tokens):

- ``pipeline``: ``transformers.pipeline("automatic-speech-recognition")`` on the transformers
  export, clips in batches of 8; long-form with ``chunk_length_s=30`` and ``batch_size=8``, as its
  documentation advises;
- ``speechtl``: ``speechtl.transcribe`` on PyTorch (adapter merged), its defaults (temperature fallback,
  ``short_clips="auto"``: the adapter, trained on unpadded clips, decodes them unpadded; the base model at 30 s);
- ``speechtl_30s`` and ``speechtl_short``: the same with ``short_clips`` ``"off"`` (every clip padded
  to 30 s; adapted only, as the base model's ``auto`` is that) and ``"on"`` (each batch encoded at
  its longest clip, the base model too);
- ``speechtl_ct2``: ``speechtl.transcribe(engine="ct2")`` on the CTranslate2 int8 export (its
  ``short_clips`` from the export's record, as ``auto`` decides on PyTorch);
- ``faster_whisper``: faster-whisper itself on the same folder (int8): clips one by one with
  ``WhisperModel.transcribe``, long-form with ``BatchedInferencePipeline(batch_size=8)``; beam 1.

``--models`` picks the models (all three by default), ``--sets`` the sets (clips, long, silence; all
by default) and ``--no-round-trip`` skips the round trip below, for a run that measures clips only.

The sides run ``--repeats`` times, interleaved (every side once, then again). RTF = seconds of
processing / seconds of audio, wall clock, models loaded and warmed up first; the spread is
min-max over the repeats. WER uses the Whisper normaliser. A clip "loops" when its transcript's
gzip compression ratio is above 2.4 or it has more than twice the reference's words plus 5.

Round trip (once, deterministic): WER on the 100 speechocean762 dev clips of the adapted model on
PyTorch fp32, its transformers export, and its CTranslate2 exports at int8, int8_float32 and
float32; and PyTorch with the adapter merged against unmerged (RTF).

Writes bench/results/inference_rtf.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, SHARED, benchmark_corpus, child_main, command_line, finish,  # noqa: E402
                     machine_facts, real_test_set, run_child, utterance_records)

MODEL = "whisper-tiny.en"
TARGET = "Mandarin-L1"
LORA_KEYS = ["lr=3e-4", "warmup_steps=10", "batch_seconds=40", "seed=0", "max_steps=180", "eval_every=60"]
# The short-context objective on native speech: Whisper's LoRA defaults otherwise (every linear layer, rank 4, lr 1e-3);
# train_short_context() adds the steps.
# The decoder is forced along the references. distill_targets=teacher (the base model's own 30-s transcripts) did
# no better on these clips: bench/results/inference_short_teacher.json.
SHORT_CONTEXT_KEYS = ["objective=short-context", "specaug=false", "batch_seconds=40", "seed=0"]
NATIVE_ACCENTS = ["us", "gb", "scottish"]
MODELS = ("base", "adapted", "short_context")
MAX_NEW_TOKENS = 128
BATCH = 8
SIDES = ("pipeline", "speechtl", "speechtl_30s", "speechtl_short", "speechtl_ct2", "faster_whisper")
SETS = ("clips", "long", "silence")
SHORT = {"speechtl": "auto", "speechtl_unmerged": "auto", "speechtl_30s": "off", "speechtl_short": "on"}
RATE = 16000


# -- data -----------------------------------------------------------------------------------------------


def long_files(clips: list[dict], work: Path, n_files: int = 3, seed: int = 0) -> list[dict]:
    """Concatenate the clips (in order) into ``n_files`` recordings with silences; write them as FLAC."""
    import soundfile as sf

    from speechtl.audio import load_audio

    rng = np.random.default_rng(seed)
    per = -(-len(clips) // n_files)
    files = []
    for k in range(n_files):
        part = clips[k * per:(k + 1) * per]
        pieces, refs = [], []
        for i, c in enumerate(part):
            pieces.append(np.zeros(int(rng.uniform(1.0, 4.0) * RATE), np.float32))
            if i == len(part) // 2:
                pieces.append(np.zeros(30 * RATE, np.float32))  # a long pause: nothing may be written there
            pieces.append(load_audio(c["audio"], RATE))
            refs.append(c["text"])
        audio = np.concatenate([*pieces, np.zeros(RATE, np.float32)])
        path = work / f"long{k}.flac"
        sf.write(path, audio, RATE)
        files.append({"audio": str(path), "text": " ".join(refs), "duration": round(len(audio) / RATE, 1),
                      "clips": len(part)})
    return files


def silent_clips(work: Path) -> list[dict]:
    import soundfile as sf

    rng = np.random.default_rng(1)
    out = []
    for i in range(10):
        level = [0.0, 0.0005, 0.001, 0.003, 0.01][i % 5]
        wav = (level * rng.standard_normal(int((3 + i) * RATE))).astype(np.float32)
        path = work / f"silence{i}.wav"
        sf.write(path, wav, RATE)
        out.append({"audio": str(path), "text": "", "noise_rms": level, "duration": len(wav) / RATE})
    return out


# -- sides ----------------------------------------------------------------------------------------------


decoded_short: list[int] = []


def _runner(side: str, spec: dict[str, Any]):
    """``(clips_fn, long_fn)``: each takes paths and returns transcripts.

    speechtl's sides append to ``decoded_short`` how many inputs of each call were encoded unpadded.
    """
    folders = spec["folders"]
    if side == "pipeline":
        from transformers import pipeline

        from speechtl.audio import load_audio

        pipe = pipeline("automatic-speech-recognition", model=folders["transformers"], device="cpu")
        kw = {"num_beams": 1, "max_new_tokens": MAX_NEW_TOKENS}

        def clips(paths):
            out = pipe([{"raw": load_audio(p), "sampling_rate": RATE} for p in paths], batch_size=BATCH,
                       generate_kwargs=kw)
            return [o["text"].strip() for o in out]

        def long(paths):
            return [pipe({"raw": load_audio(p, max_seconds=None), "sampling_rate": RATE}, chunk_length_s=30,
                         batch_size=BATCH, generate_kwargs=kw)["text"].strip() for p in paths]

        return clips, long
    if side in SHORT:
        import speechtl
        from speechtl.adapters import load_adapter
        from speechtl.backbones import create_backbone

        # Loaded and merged once, as speechtl-transcribe --adapter does.
        model = create_backbone(MODEL)
        if spec["adapter"]:
            model = load_adapter(model, spec["adapter"])
            if side != "speechtl_unmerged":
                model.merge_adapter()

        def run(paths):
            out = speechtl.transcribe(model, paths, batch_size=BATCH, progress=False, short_clips=SHORT[side],
                                      return_segments=True)
            decoded_short.append(sum(bool(t.short_clips) for t in out))
            return [t.text for t in out]

        return run, run
    if side.startswith("speechtl_ct2"):
        from speechtl import transcribe
        from speechtl.engines import Ct2Whisper

        engine = Ct2Whisper(folders[spec.get("ct2_folder", "ct2")], threads=spec["threads"])

        def run(paths):
            out = transcribe(engine, paths, engine="ct2", batch_size=BATCH, progress=False,
                                      return_segments=True)
            decoded_short.append(sum(bool(t.short_clips) for t in out))
            return [t.text for t in out]

        return run, run
    if side == "faster_whisper":
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = WhisperModel(folders["ct2"], device="cpu", compute_type="int8", cpu_threads=spec["threads"])
        batched = BatchedInferencePipeline(model)

        def clips(paths):
            return [" ".join(s.text.strip() for s in model.transcribe(str(p), beam_size=1, language="en")[0])
                    for p in paths]

        def long(paths):
            return [" ".join(s.text.strip() for s in batched.transcribe(str(p), batch_size=BATCH, beam_size=1,
                                                                          language="en")[0]) for p in paths]

        return clips, long
    raise ValueError(side)


def _loops(refs: list[str], hyps: list[str]) -> int:
    from speechtl.decoding import compression_ratio

    return sum(compression_ratio(h) > 2.4 or len(h.split()) > 2 * len(r.split()) + 5 for r, h in zip(refs, hyps))


def run_side(spec: dict[str, Any]) -> dict[str, Any]:
    from speechtl.wer import wer

    side = spec["side"]
    t0 = time.perf_counter()
    clips_fn, long_fn = _runner(side, spec)
    out: dict[str, Any] = {"side": side, "model": spec["model"], "repeat": spec["repeat"],
                           "model_load_seconds": round(time.perf_counter() - t0, 1)}
    sets = spec["sets"]
    clips_fn([sets["clips"][0]["audio"]])  # warm-up
    for name, fn in (("clips", clips_fn), ("long", long_fn), ("silence", clips_fn)):
        rows = sets.get(name)
        if not rows:
            continue
        decoded_short.clear()
        w0 = time.perf_counter()
        hyps = fn([r["audio"] for r in rows])
        wall = time.perf_counter() - w0
        audio = sum(r["duration"] for r in rows)
        refs = [r["text"] for r in rows]
        res = {"seconds": round(wall, 2), "audio_seconds": round(audio, 1), "rtf": round(wall / audio, 4)}
        if decoded_short:
            res["decoded_short"] = sum(decoded_short)  # inputs encoded at their own length, of len(rows)
        if name == "silence":
            res["words"] = sum(len(h.split()) for h in hyps)
            res["examples"] = [h for h in hyps if h][:3]
        else:
            res["wer"] = round(wer(refs, hyps, "whisper"), 4)
            res["loops"] = _loops(refs, hyps) if name == "clips" else None
            if name == "clips":
                res["wer_per_set"] = {s: round(wer([r for r, x in zip(refs, rows) if x["set"] == s],
                                                   [h for h, x in zip(hyps, rows) if x["set"] == s], "whisper"), 4)
                                      for s in sorted({x["set"] for x in rows})}
                res["examples"] = [{"ref": r, "hyp": h} for r, h in zip(refs, hyps) if r != h][:2]
            else:
                res["words"] = [len(h.split()) for h in hyps]
                res["reference_words"] = [len(r.split()) for r in refs]
        out[name] = res
    return out


# -- round trip -----------------------------------------------------------------------------------------


def run_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    import speechtl
    from speechtl.engines import Ct2Whisper
    from speechtl.wer import wer

    rows = spec["dev"]
    paths, refs = [r["audio"] for r in rows], [r["text"] for r in rows]
    audio = sum(r["duration"] for r in rows)
    out = {}
    runs = {
        "pytorch_fp32": lambda: speechtl.transcribe(MODEL, paths, adapter=spec["adapter"], progress=False),
        "transformers_export": lambda: speechtl.transcribe(spec["folders"]["transformers"], paths, progress=False),
    }
    for q in ("int8", "int8_float32", "float32"):
        runs[f"ct2_{q}"] = (lambda q=q: speechtl.transcribe(Ct2Whisper(spec["folders"][f"ct2_{q}"],
                                                                       threads=spec["threads"]),
                                                            paths, engine="ct2", progress=False))
    for name, fn in runs.items():
        t = time.perf_counter()
        hyps = fn()
        out[name] = {"wer": round(wer(refs, hyps, "whisper"), 4),
                     "seconds_with_load": round(time.perf_counter() - t, 1)}
    # Merged against unmerged LoRA on PyTorch, interleaved.
    from speechtl.adapters import load_adapter
    from speechtl.backbones import create_backbone

    merged = load_adapter(create_backbone(MODEL), spec["adapter"])
    merged.merge_adapter()
    unmerged = load_adapter(create_backbone(MODEL), spec["adapter"])
    times: dict[str, list[float]] = {"merged": [], "unmerged": []}
    texts = {}
    for _ in range(spec["repeats"]):
        for name, m in (("merged", merged), ("unmerged", unmerged)):
            t = time.perf_counter()
            texts[name] = speechtl.transcribe(m, paths, batch_size=BATCH, progress=False)
            times[name].append(time.perf_counter() - t)
    out["merge"] = {name: {"rtf_median": round(statistics.median(v) / audio, 4),
                           "rtf_min_max": [round(min(v) / audio, 4), round(max(v) / audio, 4)]}
                    for name, v in times.items()}
    out["merge"]["same_transcripts"] = sum(a == b for a, b in zip(texts["merged"], texts["unmerged"]))
    out["merge"]["clips"] = len(paths)
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_round_trip(spec) if spec["side"] == "round_trip" else run_side(spec)


# -- main -----------------------------------------------------------------------------------------------


def train_adapter(work: Path, train_manifest: Path, name: str = "lora", keys: list[str] = LORA_KEYS,
                  target_accent: str | None = TARGET) -> tuple[Path, float | None]:
    """``speechtl-adapt --method lora`` with ``keys`` into ``work/name`` (reused when an earlier run trained it)."""
    from speechtl import recipes
    from speechtl.config import load_config

    out = work / name
    if (out / "result.json").is_file() and (out / "adapter" / "adapter.json").is_file():
        return out / "adapter", None  # trained by an earlier run of this script
    t = time.perf_counter()
    recipes.run(recipes.RunInputs(MODEL, str(train_manifest), target_accent=target_accent),
                load_config(None, keys, method="lora"), out, overwrite=True)
    return out / "adapter", time.perf_counter() - t


def train_short_context(work: Path, steps: int, train_speech: list) -> tuple[Path, float | None, dict[str, Any]]:
    """The base model's short-context adapter, distilled on synthetic native voices (built into ``work``) and
    ``train_speech`` (utterances whose transcripts teacher-force the decoder; none of the measured clips)."""
    from speechtl.data import write_manifest
    from speechtl.data.synth import build_corpus

    synth = build_corpus(work / "native-synth", NATIVE_ACCENTS, per_accent=150, seed=0, heldout=[], dev=0.1,
                         test=0.0, progress=False)
    real = [dataclasses.replace(u, split="train") for u in train_speech]
    manifest = work / "short-context.jsonl"
    write_manifest([u for u in synth if u.split in ("train", "dev")] + real, manifest)
    keys = [*SHORT_CONTEXT_KEYS, f"max_steps={steps}", f"eval_every={max(1, steps // 3)}"]
    tag = hashlib.sha1(" ".join(keys).encode()).hexdigest()[:8]  # other keys train another adapter
    adapter, seconds = train_adapter(work, manifest, name=f"short_context{steps}-{tag}", keys=keys,
                                     target_accent=None)
    n = {s: sum(u.split == s for u in synth) for s in ("train", "dev")}
    targets = ", the base model's 30-s transcripts as targets" if "distill_targets=teacher" in keys else ""
    return adapter, seconds, {"keys": keys, "train": f"{n['train']} synthetic native clips "
                              f"({', '.join(NATIVE_ACCENTS)}) and {len(real)} speechocean762 train-speaker clips"
                              f"{targets}; {n['dev']} synthetic dev clips of other pseudo-speakers choose the checkpoint"}


def deploy_data(work: Path) -> tuple[dict[str, list], str, Path]:
    """The benchmark corpus's splits, its description, and its train + dev manifest written into ``work``."""
    from speechtl.data import write_manifest

    work.mkdir(parents=True, exist_ok=True)
    splits, data = benchmark_corpus()
    if "speechocean762 (" not in data or not real_test_set():
        sys.exit(f"needs ../shared/data (speechocean762 and real/) at {SHARED}")
    write_manifest(splits["train"] + splits["dev"], work / "train.jsonl")
    return splits, data, work / "train.jsonl"


def exported(work: Path, adapter: Path | None, name: str, fmt: str, quantization: str | None = None) -> str:
    """``work/<name>-<fmt>[_<quantization>]``: the model (with ``adapter``) exported once, reused afterwards."""
    from speechtl.exporting import export

    out = work / f"{name}-{fmt if quantization is None else f'{fmt}_{quantization}'}"
    if not (out / "checksums.json").is_file():
        export(None if adapter else MODEL, out, adapter=adapter, format=fmt, quantization=quantization, overwrite=True)
    return str(out)


def _exports(work: Path, adapter: Path | None, name: str) -> dict[str, str]:
    folders = {"transformers": exported(work, adapter, name, "transformers")}
    for q in ("int8", "int8_float32", "float32"):
        folders[f"ct2_{q}"] = exported(work, adapter, name, "ct2", q)
    folders["ct2"] = folders["ct2_int8"]
    return folders


def _summary(runs: list[dict]) -> dict[str, Any]:
    def stats(values):
        return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                "max": round(max(values), 4)}

    out: dict[str, Any] = {}
    for model in MODELS:
        for side in SIDES:
            rs = [r for r in runs if r["model"] == model and r["side"] == side]
            if not rs:
                continue
            row: dict[str, Any] = {}
            if "decoded_short" in rs[0]["clips"]:
                row["clips_decoded_short"] = rs[0]["clips"]["decoded_short"]
            for name in SETS:
                if name not in rs[0]:
                    continue
                row[f"{name}_rtf"] = stats([r[name]["rtf"] for r in rs])
                if name != "silence":
                    row[f"{name}_wer"] = rs[0][name]["wer"]
                    row[f"{name}_wer_all_repeats"] = sorted({r[name]["wer"] for r in rs})
                else:
                    row["silence_words"] = max(r["silence"]["words"] for r in rs)
            row["clip_loops"] = max(r["clips"]["loops"] for r in rs)
            out[f"{model}/{side}"] = row
    for model in MODELS:
        p = out.get(f"{model}/pipeline")
        for side in SIDES[1:]:
            s = out.get(f"{model}/{side}")
            for name in ("clips", "long"):
                if p and s and f"{name}_rtf" in s:
                    s[f"{name}_rtf_over_pipeline"] = round(s[f"{name}_rtf"]["median"] / p[f"{name}_rtf"]["median"], 3)
        if model == "adapted":  # auto: the adapter decodes unpadded, as it trained
            short, padded = out.get("adapted/speechtl"), out.get("adapted/speechtl_30s")
        elif model == "short_context":  # against the base model at 30 s, which it stands in for
            short, padded = out.get("short_context/speechtl"), out.get("base/speechtl")
        else:  # auto: the base model pads to 30 s
            short, padded = out.get("base/speechtl_short"), out.get("base/speechtl")
        if short and padded:
            short["clips_rtf_over_30s"] = round(short["clips_rtf"]["median"] / padded["clips_rtf"]["median"], 3)
    return out


def main() -> int:
    if "--child" in sys.argv:
        return child_main(child)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/speechtl-deploy", help="adapter, exports and long-form files (reused)")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--short-context-steps", type=int, default=600,
                    help="optimizer steps of the short-context adapter (300 missed the native WER goal on PyTorch)")
    ap.add_argument("--sets", default=",".join(SETS), help="which of clips, long, silence to run (clips always)")
    ap.add_argument("--no-round-trip", action="store_true", help="skip the export round trip")
    ap.add_argument("--limit", type=int, default=0, help="first N clips only (a quick check; 0: all)")
    ap.add_argument("--out", default=str(RESULTS / "inference_rtf.json"))
    args = ap.parse_args()

    work = Path(args.work)
    splits, data, train_manifest = deploy_data(work)
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS) or "base" not in models:
        sys.exit(f"--models: choose from {', '.join(MODELS)}, base included (the others are compared to it)")
    adapter, adapt_seconds = train_adapter(work, train_manifest)
    adapters = {"base": None, "adapted": adapter}
    folders = {"base": _exports(work, None, "base"), "adapted": _exports(work, adapter, "adapted")}
    sc_info = None
    if "short_context" in models:
        sc_adapter, sc_seconds, sc_info = train_short_context(work, args.short_context_steps, splits["train"])
        sc_info.update({"path": str(sc_adapter), "adapt_seconds": None if sc_seconds is None else round(sc_seconds, 1)})
        adapters["short_context"] = sc_adapter
        folders["short_context"] = _exports(work, sc_adapter, sc_adapter.parent.name)

    clips = [{**r, "set": "speechocean762_test"} for r in utterance_records(splits["test"])]
    clips += [{**r, "set": "real_vctk_ljspeech"} for r in utterance_records(real_test_set())]
    if args.limit:
        clips = clips[:: max(1, len(clips) // args.limit)][: args.limit]
    chosen = {"clips", *args.sets.split(",")} - {""}
    if chosen - set(SETS):
        sys.exit(f"--sets: unknown {', '.join(sorted(chosen - set(SETS)))}; choose from {', '.join(SETS)}")
    sets = {"clips": clips}
    if "long" in chosen:
        sets["long"] = long_files(clips, work)
    if "silence" in chosen:
        sets["silence"] = silent_clips(work)
    dev = utterance_records(splits["dev"])[: args.limit or None]

    result: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(), "data": data, "model": MODEL,
        "adapter": {"path": str(adapter), "keys": LORA_KEYS, "train": "speechocean762 train split (40 speakers)",
                    "adapt_seconds": None if adapt_seconds is None else round(adapt_seconds, 1)},
        "short_context_adapter": sc_info,
        "config": {"batch": BATCH, "decoding": f"greedy (beam 1), max {MAX_NEW_TOKENS} new tokens",
                   "threads": args.threads, "repeats": args.repeats,
                   "clips": {s: sum(c["set"] == s for c in clips) for s in sorted({c["set"] for c in clips})},
                   "clip_audio_seconds": round(sum(c["duration"] for c in clips), 1),
                   "sets": sorted(sets),
                   "long_files": [{k: f[k] for k in ("audio", "duration", "clips")} for f in sets.get("long", [])],
                   "silent_clips": len(sets.get("silence", []))},
        "runs": [],
    }
    sides = [s for s in args.sides.split(",") if s]
    for rep in range(args.repeats):
        for model in models:
            for side in sides:
                if model == "base" and side == "speechtl_30s":
                    continue  # the base model's auto is 30 s: the speechtl side already runs it
                if model != "base" and side == "speechtl_short":
                    continue  # an adapter trained unpadded: its auto is short
                spec = {"side": side, "model": model, "repeat": rep, "threads": args.threads, "sets": sets,
                        "folders": folders[model], "adapter": None if adapters[model] is None else str(adapters[model])}
                r = run_child(__file__, spec, threads=args.threads)
                print(f"repeat {rep} {model}/{side}: " + "; ".join(
                    f"{name} RTF {r[name]['rtf']:.3f}" + (f" WER {r[name]['wer']:.3f}" if "wer" in r[name] else
                                                           f" words {r[name]['words']}")
                    for name in SETS if name in r), flush=True)
                result["runs"].append(r)
    result["summary"] = s = _summary(result["runs"])
    rt = None
    if not args.no_round_trip:
        result["round_trip"] = rt = run_child(__file__, {"side": "round_trip", "dev": dev, "adapter": str(adapter),
                                                         "folders": folders["adapted"], "threads": args.threads,
                                                         "repeats": args.repeats}, threads=args.threads)
    p, c = s.get("adapted/pipeline"), s.get("adapted/speechtl_ct2")
    auto, base_short, base_30s = s.get("adapted/speechtl"), s.get("base/speechtl_short"), s.get("base/speechtl")
    result["targets"] = {
        "adapted_short_clips_rtf_over_pipeline_le_0.25_at_equal_or_better_wer": None if not (p and auto) else
        auto["clips_rtf_over_pipeline"] <= 0.25 and auto["clips_wer"] <= p["clips_wer"],
        "base_short_wer_minus_30s_points": None if not (base_short and base_30s) else
        round(100 * (base_short["clips_wer"] - base_30s["clips_wer"]), 2),
    }
    sc = s.get("short_context/speechtl")
    if sc and base_30s:
        native = "real_vctk_ljspeech"
        runs = {m: next(r for r in result["runs"] if r["model"] == m and r["side"] == "speechtl")
                for m in ("base", "short_context")}
        native_delta = 100 * (runs["short_context"]["clips"]["wer_per_set"][native]
                              - runs["base"]["clips"]["wer_per_set"][native])
        result["targets"].update({
            "short_context_native_wer_minus_base_30s_points": round(native_delta, 2),
            "short_context_native_wer_within_0.5_points": native_delta <= 0.5,
            "short_context_all_clips_wer_minus_base_30s_points":
                round(100 * (sc["clips_wer"] - base_30s["clips_wer"]), 2),
            "short_context_rtf_over_base_30s": sc["clips_rtf_over_30s"],
            "short_context_rtf_le_0.4x_base_30s": sc["clips_rtf_over_30s"] <= 0.4,
        })
    if "long" in sets:
        result["targets"].update({
            "long_form_ct2_rtf_over_pipeline_le_0.5": None if not (p and c) else c["long_rtf_over_pipeline"] <= 0.5,
            "long_form_ct2_wer_minus_clip_by_clip_within_1_point": None if not c else
            round(100 * (c["long_wer"] - c["clips_wer"]), 2)})
    if rt is not None:
        result["targets"]["ct2_export_wer_minus_pytorch_points"] = {
            q: round(100 * (rt[f"ct2_{q}"]["wer"] - rt["pytorch_fp32"]["wer"]), 2)
            for q in ("int8", "int8_float32", "float32")}
    result["targets"]["loops_and_silence_words"] = {k: {"clip_loops": v["clip_loops"],
                                                        "silence_words": v.get("silence_words")}
                                                    for k, v in s.items()}
    line = "; ".join(f"{k}: clips RTF {v['clips_rtf']['median']:.3f} WER {v['clips_wer']:.3f}" for k, v in s.items())
    finish(result, Path(args.out), line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

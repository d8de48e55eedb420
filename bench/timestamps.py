#!/usr/bin/env python3
"""Timestamps after adaptation: segment boundaries of the base and adapted Whisper on recordings with known speech times.

Run by hand (about 10 minutes on 2 cores once the adapters exist; training one adds about 10):

    .venv/bin/python bench/timestamps.py [--threads 2] [--work /tmp/speechtl-deploy] [--models base,adapted]

Recordings: the 100 speechocean762 test clips (Mandarin-L1 speakers that neither trained an adapter
nor chose its checkpoint) and the 48 VCTK/LJSpeech clips of ../shared/data/real, each trimmed of
its leading and trailing silence (``librosa.effects.trim``, 35 dB below the clip's peak: those
trimmed edges are the true speech start and end), joined in order with 0.5-3 s of silence
between clips (seeded), 12 clips to a recording.

Models (whisper-tiny.en): ``base`` zero-shot; ``adapted``, the LoRA adapter of
``bench/inference_rtf.py`` (speechtl-adapt on the 40 speechocean762 train speakers, trained without
timestamp tokens, reused from ``--work``); ``adapted_ts``, the same keys plus
``timestamp_share=0.5`` (half the training clips carry Whisper timestamp tokens around their
transcript; trained here once and reused). Each is exported to CTranslate2 float32 and to
transformers (the adapter merged).

Sides, on every model:

- ``faster_whisper``: ``WhisperModel.transcribe`` with timestamps (its default), greedy,
  ``condition_on_previous_text=False``, no VAD filter: the segments come from the model's own
  timestamp tokens, which is what adaptation can lose;
- ``pipeline``: what a transformers user runs instead: ``transformers.pipeline("automatic-speech-recognition")``
  on the model's transformers export (float32), ``chunk_length_s=30``, ``batch_size=8``,
  ``return_timestamps=True``, greedy, up to 440 new tokens a window; its chunks' times come from
  the same timestamp tokens (an open last chunk ends at the recording's end);
- ``speechtl``: ``speechtl.transcribe(engine="ct2", return_segments=True)``: its segments are cut at
  silences by voice-activity detection, so their times do not depend on the model.

Metric: for every clip, the distance from its true start to the nearest segment start and from its
true end to the nearest segment end; the median over all of them (seconds) is the boundary error.
Also the number of segments and the WER of the joined text (Whisper normaliser), and on the clips
one by one the WER of timestamp-free decoding (``speechtl.transcribe``, engine ct2), so both modes
are scored after adaptation. One pass: faster-whisper's default temperature fallback samples when a
window's greedy text loops, so a model that loops (the base model) moves a little between runs.

Writes bench/results/timestamps.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, finish, machine_facts, real_test_set, utterance_records  # noqa: E402
from inference_rtf import LORA_KEYS, MODEL, deploy_data, exported, train_adapter  # noqa: E402

RATE = 16000
PER_FILE = 12
TS_KEYS = [*LORA_KEYS, "timestamp_share=0.5"]
MODELS = ("base", "adapted", "adapted_ts")
TRIM_DB = 35
MAX_NEW_TOKENS = 440  # per 30-s window: room for a full window's text and timestamps (448 positions, as faster-whisper)


def recordings(clips: list[dict], work: Path, seed: int = 0) -> list[dict]:
    """Trimmed clips joined with silences of known length; each recording's true speech spans (s)."""
    import librosa
    import soundfile as sf

    from speechtl.audio import load_audio

    rng = np.random.default_rng(seed)
    out = []
    for k in range(0, len(clips), PER_FILE):
        pieces, spans, refs, t = [], [], [], 0
        for c in clips[k:k + PER_FILE]:
            gap = int(rng.uniform(0.5, 3.0) * RATE)
            pieces.append(np.zeros(gap, np.float32))
            t += gap
            wav, _ = librosa.effects.trim(load_audio(c["audio"], RATE), top_db=TRIM_DB)
            pieces.append(wav.astype(np.float32))
            spans.append((t / RATE, (t + len(wav)) / RATE))
            t += len(wav)
            refs.append(c["text"])
        pieces.append(np.zeros(RATE, np.float32))
        path = work / f"timestamps{k // PER_FILE}.flac"
        sf.write(path, np.concatenate(pieces), RATE)
        out.append({"audio": str(path), "spans": spans, "text": " ".join(refs), "duration": (t + RATE) / RATE})
    return out


def boundary_errors(spans: list[tuple[float, float]], segments: list[tuple[float, float]]) -> tuple[list, list]:
    """Per true span: distance to the nearest segment start, and from its end to the nearest segment end."""
    if not segments:
        return [float("inf")] * len(spans), [float("inf")] * len(spans)
    starts = np.array([s for s, _ in segments])
    ends = np.array([e for _, e in segments])
    return ([float(np.abs(starts - a).min()) for a, _ in spans], [float(np.abs(ends - b).min()) for _, b in spans])


def pipeline_segments(folder: str, files: list[dict]) -> tuple[list[list[tuple[float, float]]], list[str]]:
    """Chunk times and texts of the transformers pipeline with ``return_timestamps=True`` on each recording."""
    from transformers import pipeline

    from speechtl.audio import load_audio

    pipe = pipeline("automatic-speech-recognition", model=folder, device="cpu")
    segs, texts = [], []
    for f in files:
        got = pipe({"raw": load_audio(f["audio"], RATE, max_seconds=None), "sampling_rate": RATE}, chunk_length_s=30,
                   batch_size=8, return_timestamps=True,
                   generate_kwargs={"num_beams": 1, "max_new_tokens": MAX_NEW_TOKENS})
        times, last = [], 0.0
        for c in got["chunks"]:
            start, end = c["timestamp"]
            start = last if start is None else start  # a start lost in a chunk's stride: where the last one ended
            end = f["duration"] if end is None else end  # an open last chunk: the recording's end
            if c["text"].strip():
                times.append((start, end))
            last = end
        segs.append(times)
        texts.append(got["text"].strip())
    return segs, texts


def measure(name: str, folder: str, tf_folder: str, files: list[dict], clips: list[dict],
            threads: int) -> dict[str, dict]:
    from faster_whisper import WhisperModel

    from speechtl import transcribe
    from speechtl.audio import load_audio
    from speechtl.engines import Ct2Whisper
    from speechtl.wer import wer

    refs = [f["text"] for f in files]
    out: dict[str, dict] = {}
    fw = WhisperModel(folder, device="cpu", compute_type="float32", cpu_threads=threads)
    segs, texts = [], []
    for f in files:
        got = list(fw.transcribe(load_audio(f["audio"], RATE), beam_size=1, language="en",
                                 condition_on_previous_text=False, vad_filter=False)[0])
        segs.append([(s.start, s.end) for s in got])
        texts.append(" ".join(s.text.strip() for s in got))
    out["faster_whisper"] = _score(files, segs, wer(refs, texts, "whisper"))
    segs, texts = pipeline_segments(tf_folder, files)
    out["pipeline"] = _score(files, segs, wer(refs, texts, "whisper"))
    runner = Ct2Whisper(folder, compute_type="float32", threads=threads)
    got = transcribe(runner, [f["audio"] for f in files], engine="ct2", return_segments=True, progress=False)
    segs = [[(s.start, s.end) for s in t.segments if s.text] for t in got]
    out["speechtl"] = _score(files, segs, wer(refs, [t.text for t in got], "whisper"))
    hyps = transcribe(runner, [c["audio"] for c in clips], engine="ct2", progress=False)
    out["clips_no_timestamps"] = {"wer": round(wer([c["text"] for c in clips], hyps, "whisper"), 4)}
    print(f"{name}: " + "; ".join(f"{k} boundary error {v['boundary_error_median_s']:.2f} s, WER {v['wer']:.3f}"
                                  for k, v in out.items() if "boundary_error_median_s" in v)
          + f"; clips without timestamps WER {out['clips_no_timestamps']['wer']:.3f}", flush=True)
    return out


def _score(files: list[dict], segs: list[list[tuple[float, float]]], wer_value: float) -> dict[str, Any]:
    starts, ends = [], []
    for f, s in zip(files, segs):
        a, b = boundary_errors(f["spans"], s)
        starts += a
        ends += b
    both = starts + ends
    return {"boundary_error_median_s": round(statistics.median(both), 3),
            "start_error_median_s": round(statistics.median(starts), 3),
            "end_error_median_s": round(statistics.median(ends), 3),
            "boundaries_within_0.5_s": round(sum(e <= 0.5 for e in both) / len(both), 3),
            "segments": sum(len(s) for s in segs), "clips": sum(len(f["spans"]) for f in files),
            "wer": round(wer_value, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/speechtl-deploy", help="adapters and exports (shared with inference_rtf)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(RESULTS / "timestamps.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS):
        sys.exit(f"--models: choose from {', '.join(MODELS)}")
    work = Path(args.work)
    splits, data, train_manifest = deploy_data(work)
    trained = {"adapted": ("lora", LORA_KEYS), "adapted_ts": ("lora_ts", TS_KEYS)}
    adapters = {name: train_adapter(work, train_manifest, *trained[name])[0] if name in models else None
                for name in trained}
    adapters["base"] = None
    clips = utterance_records(splits["test"]) + utterance_records(real_test_set())
    files = recordings(clips, work)
    result: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(), "data": data, "model": MODEL,
        "adapters": {"adapted": {"keys": LORA_KEYS, "path": str(adapters["adapted"])},
                     "adapted_ts": {"keys": TS_KEYS, "path": str(adapters["adapted_ts"])}},
        "config": {"recordings": len(files), "clips": len(clips), "clips_per_recording": PER_FILE,
                   "audio_seconds": round(sum(f["duration"] for f in files), 1), "trim_db": TRIM_DB,
                   "gaps_s": [0.5, 3.0], "threads": args.threads,
                   "export": "CTranslate2 float32 (faster_whisper, speechtl); transformers (pipeline)",
                   "decoding": "greedy, condition_on_previous_text=False, no VAD filter (faster_whisper); "
                               f"chunk_length_s=30, batch_size=8, return_timestamps=True, "
                               f"max_new_tokens={MAX_NEW_TOKENS} (pipeline)"},
        "models": {},
    }
    for name in models:  # the same folders as bench/inference_rtf.py's (shared --work)
        result["models"][name] = measure(name, exported(work, adapters[name], name, "ct2", "float32"),
                                         exported(work, adapters[name], name, "transformers"), files, clips,
                                         args.threads)
    m = result["models"]
    result["targets"] = {
        f"{name}_minus_base_boundary_error_s{suffix}": round(m[name][side]["boundary_error_median_s"]
                                                             - m["base"][side]["boundary_error_median_s"], 3)
        for side, suffix in (("faster_whisper", ""), ("pipeline", "_pipeline"))
        for name in m if name != "base" and "base" in m}
    result["targets"].update({f"{k}_within_0.2_s": v <= 0.2 for k, v in list(result["targets"].items())})
    finish(result, Path(args.out), "; ".join(f"{k}: {v}" for k, v in result["targets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

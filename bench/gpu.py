#!/usr/bin/env python3
"""GPU numbers: bf16 LoRA adaptation throughput and transcription RTF on CUDA (under 5 minutes).

Run by hand on a machine with a CUDA GPU:

    .venv/bin/python bench/gpu.py [--model whisper-base --batch 16 --steps 20 --warmup 3 --rtf-clips 96]

Without CUDA it stops at once with a message. A CPU smoke test of the whole script:

    .venv/bin/python bench/gpu.py --device cpu --model whisper-tiny.en --precision fp32 --batch 2 --batch-seconds 8 \
        --steps 2 --warmup 1 --rtf-clips 4 --out /tmp/gpu_smoke.json

Training: the speechtl-adapt recipe (``speechtl.recipes``) with LoRA (r=8, alpha=16, q_proj+v_proj,
lr 3e-4) + ``speechtl.training.train`` with ``precision`` (bf16 autocast), batches of ``--batch-seconds``
of speechocean762 train audio (synthetic fallback when absent); audio-seconds per second over
the timed steps and ``torch.cuda.max_memory_allocated``. Inference: ``speechtl.transcribe`` (30-s
padding and short clips) and the transformers pipeline on the same test clips, bf16 weights, greedy,
RTF and WER. Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, benchmark_corpus, command_line, finish, machine_facts, peak_rss_mb,  # noqa: E402
                     real_test_set, recipe_run, utterance_records)
from adapt_throughput import _Clocked, _rates  # noqa: E402


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(args: argparse.Namespace, train_utts: list, device) -> dict[str, Any]:
    import torch

    from speechtl.training import train

    total = args.warmup + args.steps + 1
    keys = ["lora_r=8", "lora_alpha=16", "target_modules=q_proj,v_proj", "lr=3e-4", f"max_steps={total}",
            f"precision={args.precision}", f"device={device}", "progress=false", "load_best_at_end=false", "seed=0",
            "log_every=1", f"batch_seconds={args.batch_seconds}", "num_workers=2"]
    records = utterance_records(train_utts)
    work = tempfile.TemporaryDirectory(prefix="bench-gpu-")
    run = recipe_run(args.model, records, keys, work.name)
    model = run.model
    clocked = _Clocked(run.task)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        train(model, clocked, run.loader, config=run.train_config, out_dir=tmp)
    work.cleanup()
    # The loop reads loss.item() every step, so the step clocks are synchronised with the device.
    (w0, c0), (w1, c1) = clocked.marks[args.warmup], clocked.marks[args.warmup + args.steps]
    duration = {r["id"]: r["duration"] for r in records}
    timed = clocked.batches[args.warmup: args.warmup + args.steps]
    audio = sum(duration[i] for ids in timed for i in ids)
    out = {"model": args.model, "precision": args.precision, "batch_seconds": args.batch_seconds,
           "clips_per_batch": round(sum(map(len, timed)) / args.steps, 2),
           **_rates(w1 - w0, c1 - c0, args.steps, audio), "trainable_parameters": model.num_trainable()}
    if device.type == "cuda":
        out["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def inference_rtf(args: argparse.Namespace, clips: list, device) -> dict[str, Any]:
    import torch
    from transformers import pipeline

    from speechtl import transcribe
    from speechtl.audio import load_audio
    from speechtl.backbones import create_backbone
    from speechtl.wer import wer

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    waves = [load_audio(u.audio, 16000) for u in clips]
    refs = [u.text for u in clips]
    audio = sum(len(w) for w in waves) / 16000
    results: dict[str, Any] = {"clips": len(clips), "audio_seconds": round(audio, 1), "dtype": str(dtype)}

    def timed(name: str, fn) -> None:
        fn(waves[:1])  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        hyps = fn(waves)
        _sync(device)
        wall = time.perf_counter() - t0
        results[name] = {"seconds": round(wall, 3), "rtf": round(wall / audio, 5), "wer": round(wer(refs, hyps), 4)}

    for name, short in (("speechtl", False), ("speechtl_short", True)):
        backbone = create_backbone(args.model, short_clips=short, dtype=dtype).to(device)
        timed(name, lambda w, b=backbone: transcribe(b, w, batch_size=args.batch, progress=False))
        del backbone
    from speechtl.convert.packaged import packaged_model_dir

    folder = str(packaged_model_dir(args.model)) if args.model.startswith("whisper-") else args.model
    pipe = pipeline("automatic-speech-recognition", model=folder, device=device, dtype=dtype)
    if pipe.tokenizer.pad_token is None:  # the converted packaged folders name no pad token; the hub's use <|endoftext|>
        pipe.tokenizer.pad_token = pipe.tokenizer.eos_token
    kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False, "max_new_tokens": 128}
    if getattr(pipe.model.generation_config, "is_multilingual", False):
        kwargs.update(language="en", task="transcribe")
    timed("hf_pipeline", lambda w: [o["text"].strip() for o in pipe(
        [{"raw": x, "sampling_rate": 16000} for x in w], batch_size=args.batch, generate_kwargs=kwargs)])
    results["rtf_speechtl_short_over_pipeline"] = round(results["speechtl_short"]["rtf"] / results["hf_pipeline"]["rtf"],
                                                        3)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    ap.add_argument("--model", default="whisper-base")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--batch", type=int, default=16, help="clips per inference batch")
    ap.add_argument("--batch-seconds", type=float, default=120.0, help="audio per training batch (batch_seconds)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rtf-clips", type=int, default=96, help="test clips for the RTF (speechocean762 test + real)")
    ap.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: CUDA is not available on this machine (torch.cuda.is_available() is False); run it on a "
              "GPU machine, or smoke-test it with --device cpu --model whisper-tiny.en --precision fp32 --batch 2 "
              "--batch-seconds 8 "
              "--steps 2 --warmup 1 --rtf-clips 4 --out /tmp/gpu_smoke.json", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"gpu.py: {torch.cuda.get_device_name(device)} does not support bf16; pass --precision fp32",
              file=sys.stderr)
        return 2
    splits, data = benchmark_corpus()
    train_utts = list(splits["train"])
    random.Random(0).shuffle(train_utts)
    clips = (list(splits["test"]) + real_test_set())[: args.rtf_clips]
    result: dict[str, Any] = {"command": command_line(), "machine": machine_facts(), "data": data,
                              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    t0 = time.perf_counter()
    result["train"] = train_throughput(args, train_utts, device)
    result["inference"] = inference_rtf(args, clips, device)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    tr, inf = result["train"], result["inference"]
    mem = f", peak {tr['max_memory_allocated_mb']:.0f} MB" if "max_memory_allocated_mb" in tr else ""
    finish(result, Path(args.out),
           f"{args.model} {args.precision} LoRA on {result['device']}: {tr['audio_seconds_per_second']:.1f} audio-s/s"
           f"{mem}; RTF speechtl {inf['speechtl']['rtf']:.4f}, short clips {inf['speechtl_short']['rtf']:.4f}, "
           f"pipeline {inf['hf_pipeline']['rtf']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

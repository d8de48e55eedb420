#!/usr/bin/env python3
"""LoRA adaptation throughput: speechtl's training core against the Hugging Face Seq2SeqTrainer recipe.

Run by hand (a few minutes on 2 cores; ``--wer`` adds about ten):

    .venv/bin/python bench/adapt_throughput.py [--steps 20 --warmup 3 --batch 8] [--wer --wer-steps 60]

Both sides adapt whisper-tiny.en (the very same converted folder) on the same speechocean762 train
clips (synthetic fallback when absent) with the same LoRA (r=8, alpha=16, q_proj+v_proj, dropout 0),
AdamW lr 3e-4, linear decay, no warm-up, no weight decay, grad-norm clip 1.0, fp32 on CPU, the same
steps and, on average, the same audio per batch:

- speechtl: the speechtl-adapt recipe (``speechtl.recipes``) + ``speechtl.training.train``: batches of
  ``batch_seconds`` audio (--batch clips' mean), clips of similar length together, log-mel computed
  per batch, padded to the batch's longest clip, padding masked;
- HF: the fine-tune-whisper blog / PEFT guide recipe: ``WhisperProcessor`` features padded to 30 s
  in ``Dataset.map``, ``peft.get_peft_model(LoraConfig)``, ``Seq2SeqTrainer`` +
  ``Seq2SeqTrainingArguments`` (no eval, no saving, ``max_steps``) and the blog's
  ``DataCollatorSpeechSeq2SeqWithPadding``.

Each side runs in its own child process (separate peak RSS), back to back. ``--wer`` also trains
each side ``--wer-steps`` steps and decodes dev greedily (max 128 new tokens), WER with the
Whisper normaliser (``speechtl.wer``). Writes bench/results/adapt_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, benchmark_corpus, child_main, command_line, finish, load_average,  # noqa: E402
                     machine_facts, peak_rss_mb, recipe_run, rss_mb, run_child, utterance_records)

MODEL = "whisper-tiny.en"
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "dropout": 0.0}
LR = 3e-4


def _rates(wall: float, cpu: float, steps: int, audio: float) -> dict[str, float]:
    """Wall-clock and CPU-time rates of a timed window of ``steps`` steps holding ``audio`` seconds of audio.

    CPU time (all threads of the process) is the steadier figure on a machine shared with other jobs.
    """
    return {"timed_steps": steps, "timed_seconds": round(wall, 2), "timed_cpu_seconds": round(cpu, 2),
            "seconds_per_step": round(wall / steps, 3), "cpu_seconds_per_step": round(cpu / steps, 3),
            "timed_audio_seconds": round(audio, 1), "audio_seconds_per_second": round(audio / wall, 3),
            "audio_seconds_per_cpu_second": round(audio / cpu, 3)}


class _Clocked:
    """A task that notes (wall, CPU) clocks as each step's loss starts; everything else is the task's own."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.collate = task.collate
        self.marks: list[tuple[float, float]] = []
        self.batches: list[list[str]] = []  # each step's utterance ids

    def loss(self, model: Any, batch: Any) -> Any:
        self.marks.append((time.perf_counter(), time.process_time()))
        self.batches.append(list(batch["ids"]))
        return self.task.loss(model, batch)


# -- side A: speechtl ---------------------------------------------------------------------------


def run_speechtl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from speechtl.training import train

    warmup, steps = spec["warmup"], spec["steps"]
    # One untimed step more: the window runs from the start of step warmup+1 to the start of the step after the
    # last timed one, so it holds exactly `steps` whole steps (data loading and collation included).
    total = warmup + steps + 1
    keys = [f"lora_r={LORA['r']}", f"lora_alpha={LORA['alpha']}", f"target_modules={','.join(LORA['target_modules'])}",
            f"lora_dropout={LORA['dropout']}", f"lr={LR}", "weight_decay=0", f"max_steps={total}", "warmup_steps=0",
            "schedule=linear", "log_every=1", "precision=fp32", "device=cpu", "progress=false",
            "load_best_at_end=false", "seed=0", f"batch_seconds={spec['batch_seconds']}"]
    with tempfile.TemporaryDirectory(prefix="bench-speechtl-") as tmp:
        run = recipe_run(MODEL, spec["train"], keys, tmp, dev=spec.get("dev"))
        model, task = run.model, run.task
        rss_loaded = rss_mb()
        clocked = _Clocked(task)
        t0 = time.perf_counter()
        result = train(model, clocked, run.loader, config=run.train_config, out_dir=Path(tmp) / "run")
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    (w0, c0), (w1, c1) = clocked.marks[warmup], clocked.marks[warmup + steps]
    duration = {r["id"]: r["duration"] for r in spec["train"]}
    timed = clocked.batches[warmup: warmup + steps]
    timed_audio = sum(duration[i] for ids in timed for i in ids)
    out: dict[str, Any] = {"side": spec["side"], "steps_run": result.steps,
                           **_rates(w1 - w0, c1 - c0, steps, timed_audio), "train_call_seconds": round(wall, 2),
                           "clips_per_batch": round(sum(map(len, timed)) / steps, 2),
                           "final_loss": round(losses[-1], 4), "trainable_parameters": model.num_trainable(),
                           "rss_after_model_load_mb": rss_loaded, "peak_rss_train_mb": peak_rss_mb()}
    if run.dev_fn is not None:
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            res = run.dev_fn(model)
        out["dev_wer"] = round(res["wer"], 4)
        out["dev_decode_seconds"] = round(time.perf_counter() - t0, 1)
    return out


# -- side B: the Hugging Face recipe ------------------------------------------------------------


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The collator of the Hugging Face fine-tune-whisper blog, as written there."""

    processor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        input_features = [{"input_features": feature["input_features"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def _hf_decode(model, processor, records: list[dict[str, Any]], batch: int) -> list[str]:
    """Greedy decoding as the blog's evaluation does it: 30-s features, ``generate``, batch_decode."""
    import torch

    from speechtl.audio import load_audio

    hyps: list[str] = []
    for i in range(0, len(records), batch):
        waves = [load_audio(r["audio"], 16000) for r in records[i: i + batch]]
        feats = processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(input_features=feats, max_new_tokens=128, num_beams=1, do_sample=False)
        hyps += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return hyps


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from speechtl.audio import load_audio
    from speechtl.backbones.whisper import whisper_case
    from speechtl.convert.packaged import packaged_model_dir
    from speechtl.wer import wer

    datasets.disable_progress_bars()
    folder = str(packaged_model_dir(MODEL))
    processor = WhisperProcessor.from_pretrained(folder)
    if processor.tokenizer.pad_token is None:
        # The hub's openai/whisper-tiny.en tokenizer pads with <|endoftext|>; the converted folder names no pad
        # token, and the blog's collator needs one.
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    out: dict[str, Any] = {"side": "hf"}
    if spec.get("dev") and spec.get("zero_shot"):
        t0 = time.perf_counter()
        hyps = _hf_decode(model, processor, spec["dev"], spec["batch"])
        out["zero_shot_dev_wer"] = round(wer([r["text"] for r in spec["dev"]], hyps, "whisper"), 4)
        out["zero_shot_decode_seconds"] = round(time.perf_counter() - t0, 1)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                             target_modules=LORA["target_modules"], lora_dropout=LORA["dropout"],
                                             bias="none"))
    rss_loaded = rss_mb()
    total = spec["warmup"] + spec["steps"] + 1  # as many steps as the speechtl side takes
    b = spec["batch"]
    records = spec["train"][: total * b]

    def prepare_dataset(batch: dict[str, Any]) -> dict[str, Any]:
        # The blog reads audio through datasets' Audio column; that needs torchcodec here, so soundfile reads it.
        audio = load_audio(batch["audio"], 16000)
        batch["input_features"] = processor.feature_extractor(audio, sampling_rate=16000).input_features[0]
        # Same target text as speechtl (sentence case), so both learn the same transcripts.
        batch["labels"] = processor.tokenizer(whisper_case(batch["text"])).input_ids
        return batch

    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        ds = datasets.Dataset.from_list([{"audio": r["audio"], "text": r["text"]} for r in records])
        t0 = time.perf_counter()
        # A cache file keeps the 30-s features memory-mapped, as a hub dataset's map() would.
        ds = ds.map(prepare_dataset, remove_columns=ds.column_names, cache_file_name=str(Path(tmp) / "feats.arrow"))
        map_seconds = time.perf_counter() - t0

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[tuple[float, float]] = []

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append((time.perf_counter(), time.process_time()))

        timer = StepTimer()
        args = Seq2SeqTrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=b, gradient_accumulation_steps=1,
            learning_rate=LR, warmup_steps=0, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
            max_steps=total, eval_strategy="no", save_strategy="no", logging_steps=max(total, 1), report_to="none",
            use_cpu=True, fp16=False, bf16=False, remove_unused_columns=False, label_names=["labels"],
            disable_tqdm=True, dataloader_num_workers=0, seed=0)
        trainer = Seq2SeqTrainer(
            model=model, args=args, train_dataset=ds,
            data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id),
            processing_class=processor.feature_extractor, callbacks=[timer])
        t0 = time.perf_counter()
        train_out = trainer.train()
        wall = time.perf_counter() - t0
    # From the end of the last warm-up step to the end of the last timed step: `steps` whole steps.
    (w0, c0), (w1, c1) = timer.times[spec["warmup"] - 1], timer.times[spec["warmup"] + spec["steps"] - 1]
    durations = [r["duration"] for r in records]
    # The Trainer shuffles, so which clips fell in the timed steps is unknown: use their mean duration.
    timed_audio = sum(durations) * spec["steps"] / total
    rates = _rates(w1 - w0, c1 - c0, spec["steps"], timed_audio)
    out.update({
        **rates, "train_call_seconds": round(wall, 2),
        "feature_map_seconds": round(map_seconds, 2), "feature_map_clips": len(records),
        "audio_seconds_per_second_incl_feature_map": round(
            timed_audio / (w1 - w0 + map_seconds * spec["steps"] / total), 3),
        "train_loss": round(train_out.training_loss, 4),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rss_after_model_load_mb": rss_loaded, "peak_rss_train_mb": peak_rss_mb(),
    })
    if spec.get("dev"):
        model.eval()
        t0 = time.perf_counter()
        hyps = _hf_decode(model, processor, spec["dev"], b)
        out["dev_wer"] = round(wer([r["text"] for r in spec["dev"]], hyps, "whisper"), 4)
        out["dev_decode_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Where a LoRA step's time goes, for the same batch padded to its longest clip and to 30 s.

    One model (speechtl's LoRA whisper-tiny.en); per padding: the encoder forward, the decoder forward with
    the vocabulary projection and loss, and the backward pass, CPU seconds, median of ``repeats``.
    """
    import statistics

    import torch.nn.functional as F
    from transformers.modeling_outputs import BaseModelOutput

    from speechtl.audio import load_audio
    from speechtl.backbones import create_backbone
    from speechtl.transfer import adapt

    backbone = create_backbone(MODEL, short_clips=True)
    model = adapt(backbone, "lora", lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                  target_modules=LORA["target_modules"], lora_dropout=LORA["dropout"])
    model.train()
    records = spec["train"][: spec["batch"]]
    waves = [load_audio(r["audio"], 16000) for r in records]
    texts = [r["text"] for r in records]
    out: dict[str, Any] = {"clips": len(records), "batch_audio_seconds": round(sum(len(w) for w in waves) / 16000, 1)}
    for name, short in (("longest_clip", True), ("30_s", False)):
        parts: dict[str, list[float]] = {"features": [], "encoder_forward": [], "decoder_forward_and_loss": [],
                                         "backward": []}
        for _ in range(spec["repeats"]):
            c0 = time.process_time()
            feats, lengths = backbone.prepare(waves, short_clips=short)
            c1 = time.process_time()
            enc = backbone.encode(feats, lengths)
            c2 = time.process_time()
            dec_in, tgt = backbone.label_ids(texts)
            logits = backbone.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
                                    decoder_input_ids=dec_in, use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=-100)
            c3 = time.process_time()
            loss.backward()
            c4 = time.process_time()
            model.zero_grad(set_to_none=True)
            for k, v in zip(parts, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                parts[k].append(v)
        med = {k: round(statistics.median(v), 3) for k, v in parts.items()}
        med["total"] = round(sum(med.values()), 3)
        med["mel_frames"] = int(feats.shape[-1])
        out[name] = med
    out["total_30_s_over_longest_clip"] = round(out["30_s"]["total"] / out["longest_clip"]["total"], 2)
    return out


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["side"] == "profile":
        return run_profile(spec)
    return run_hf(spec) if spec["side"] == "hf" else run_speechtl(spec)


# -- parent ---------------------------------------------------------------------------------------


def main() -> int:
    if "--child" in sys.argv:
        return child_main(_child)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after --warmup untimed ones)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch, both sides")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    ap.add_argument("--seed", type=int, default=0, help="order of the training clips")
    ap.add_argument("--wer", action="store_true", help="also adapt --wer-steps steps per side and score dev WER")
    ap.add_argument("--wer-steps", type=int, default=60)
    ap.add_argument("--profile", action="store_true",
                    help="also split one step's CPU time into encoder, decoder and backward at both paddings")
    ap.add_argument("--out", default=str(RESULTS / "adapt_throughput.json"))
    args = ap.parse_args()

    splits, data = benchmark_corpus()
    train = utterance_records(splits["train"])
    random.Random(args.seed).shuffle(train)
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")
    need = (args.warmup + args.steps + 1) * args.batch
    result: dict[str, Any] = {
        "command": command_line(), "machine": machine_facts(), "data": data, "model": MODEL,
        "config": {"lora": LORA, "lr": LR, "schedule": "linear, no warm-up", "weight_decay": 0.0,
                   "max_grad_norm": 1.0, "precision": "fp32", "clips_per_batch": args.batch,
                   "warmup_steps_untimed": args.warmup, "timed_steps": args.steps, "threads": args.threads,
                   "train_clips_used": min(need, len(train)),
                   "mean_clip_seconds": round(sum(r["duration"] for r in train[:need]) / min(need, len(train)), 2)},
    }
    # speechtl's batches hold as much audio as an HF batch of --batch clips does on average (the recipe's
    # sampler groups clips of similar length; HF pads every clip to 30 s, so grouping would not change its cost).
    batch_seconds = round(args.batch * result["config"]["mean_clip_seconds"], 1)
    result["config"]["speechtl_batch_seconds"] = batch_seconds
    base = {"train": train, "batch": args.batch, "batch_seconds": batch_seconds, "warmup": args.warmup,
            "steps": args.steps, "threads": args.threads}
    sides: dict[str, dict[str, Any]] = {}
    for side in ("speechtl", "hf"):
        sides[side] = run_child(__file__, {**base, "side": side}, threads=args.threads)
        sides[side]["load_average_after"] = load_average()
    result.update(sides)
    s, h = sides["speechtl"], sides["hf"]
    ratios: dict[str, Any] = {
        "throughput_speechtl_over_hf": round(s["audio_seconds_per_second"] / h["audio_seconds_per_second"], 2),
        "throughput_per_cpu_second_speechtl_over_hf": round(
            s["audio_seconds_per_cpu_second"] / h["audio_seconds_per_cpu_second"], 2),
        "throughput_speechtl_over_hf_incl_feature_map": round(
            s["audio_seconds_per_second"] / h["audio_seconds_per_second_incl_feature_map"], 2),
        "peak_rss_speechtl_over_hf": round(s["peak_rss_mb"] / h["peak_rss_mb"], 2),
    }
    ratio, cpu_ratio = ratios["throughput_speechtl_over_hf"], ratios["throughput_per_cpu_second_speechtl_over_hf"]
    result["ratios"] = ratios
    result["notes"] = [
        "Throughput is audio per second, not quality per second: short-clip batches are cheaper per step but "
        "may learn less per step; bench/adapt_quality.py compares WER reached per wall-clock minute.",
        "HF pads every clip to 30 s (3000 mel frames) as the recipe does; speechtl's recipe pads each batch to its "
        "longest clip and masks the padding, with clips of similar length batched together.",
        "HF's timed steps exclude feature extraction (done beforehand in Dataset.map, timed as feature_map_seconds); "
        "speechtl computes features inside each timed step.",
        "HF's timed audio is estimated from the mean clip duration (the Trainer shuffles); speechtl's is exact.",
    ]
    summary = (f"HF Seq2SeqTrainer {h['audio_seconds_per_second']} audio-s/s ({h['seconds_per_step']} s/step, "
               f"{h['peak_rss_mb']:.0f} MB); speechtl recipe {s['audio_seconds_per_second']} audio-s/s "
               f"({s['seconds_per_step']} s/step, {s['peak_rss_mb']:.0f} MB): {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU")
    if args.profile:
        result["profile_cpu_seconds"] = run_child(__file__, {**base, "side": "profile", "repeats": 3},
                                                  threads=args.threads)
    if args.wer:
        dev = utterance_records(splits["dev"])
        # warmup 1 + steps + the one extra step = wer_steps on each side.
        wer_base = {**base, "steps": args.wer_steps - 2, "warmup": 1, "dev": dev}
        ws = run_child(__file__, {**wer_base, "side": "speechtl"}, threads=args.threads)
        wh = run_child(__file__, {**wer_base, "side": "hf", "zero_shot": True}, threads=args.threads)
        result["wer"] = {
            "steps": args.wer_steps, "dev_utterances": len(dev),
            "zero_shot_dev_wer_hf_decoding": wh.get("zero_shot_dev_wer"),
            "speechtl": {k: ws[k] for k in ("dev_wer", "train_call_seconds", "dev_decode_seconds", "final_loss")},
            "hf": {k: wh[k] for k in ("dev_wer", "train_call_seconds", "dev_decode_seconds", "train_loss")},
            "decoding": "greedy, max 128 new tokens, each side's own recipe: speechtl short-clip batches via "
                        "asr_dev_fn; HF 30-s features via model.generate; WER with the Whisper normaliser",
        }
        summary += (f"; dev WER after {args.wer_steps} steps: speechtl {100 * ws['dev_wer']:.1f}% vs HF "
                    f"{100 * wh['dev_wer']:.1f}% (zero-shot {100 * wh['zero_shot_dev_wer']:.1f}%)")
    finish(result, Path(args.out), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

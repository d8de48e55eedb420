#!/usr/bin/env python3
"""Time to quality: dev WER against wall-clock minutes, speechtl against the Hugging Face recipe.

Run by hand on an idle machine (about an hour on 2 cores with the defaults):

    .venv/bin/python bench/adapt_quality.py [--model whisper-tiny.en] [--budget 8] [--seeds 0,1,2]

Both sides adapt the same model on the same speechocean762 train speakers (Mandarin-L1 English,
split by speaker 40 / 5 / 5) with the same LoRA (rank, alpha, targets and dropout: speechtl's
``--method lora`` defaults), the same threads and the same wall-clock budget:

- speechtl: the bare ``speechtl-adapt --method lora`` recipe (its defaults), with ``max_steps``
  sized so that training fills the budget and ``seed``;
- HF: the recipe of the PEFT Whisper guide as written there: ``WhisperProcessor`` 30-s features
  made in ``Dataset.map``, the blog's data collator, ``peft.get_peft_model``, ``Seq2SeqTrainer``
  with the guide's learning rate 1e-3, 50 warm-up steps, linear decay and batches of 8 clips, its
  ``max_steps`` sized to the budget likewise. Its clock starts before ``Dataset.map``.

Each side's steps per budget come from a short calibration run of the same side (seed 0). During
training each side snapshots its LoRA weights at the ``--marks`` (minutes of wall time) and at
the end; afterwards one evaluator scores every snapshot on the dev speakers and the final one on
the test speakers, who choose nothing: speechtl's decoder, greedy, 30-s padding for both sides,
WER with the Whisper normaliser (``--decoding transcribe``: ``speechtl.transcribe``'s default decoding
instead, with its temperature fallback and loop stop, still at 30 s, for both sides). Seeds run
interleaved (speechtl, HF, speechtl, HF, ...).

``--merge-with`` adds seeds to an earlier result of the same settings (model, data, budget, marks,
LoRA and keys): its runs are kept, each with the commit and command that measured it, and the
summary covers every seed.

``--budget-runs 1,1.25`` also trains, per seed, one separate speechtl run per listed budget (minutes),
each with its own schedule and ``max_steps`` sized to that budget, and scores its final weights on
dev and test: what a user who asks for that budget gets, where a snapshot along the main run is the
middle of a longer schedule. A side's time to the HF recipe's best is then also given counting
these runs. With ``--merge-with`` and ``--only-budget-runs`` they are added to an earlier result's
seeds without training its main runs again.

Writes ``bench/results/adapt_quality[_<model>].json`` and a PNG of the curves beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, benchmark_corpus, child_main, command_line, finish, load_average,  # noqa: E402
                     machine_facts, peak_rss_mb, recipe_run, run_child, save_plot)

# The PEFT guide's Seq2SeqTrainingArguments (int8 Whisper LoRA example): lr 1e-3, warmup 50, batch 8.
HF_GUIDE = {"learning_rate": 1e-3, "warmup_steps": 50, "lr_scheduler_type": "linear", "batch": 8,
            "weight_decay": 0.0, "max_grad_norm": 1.0}
CALIBRATION_STEPS = {"speechtl": 12, "hf": 6}


def records(utts: list) -> list[dict[str, Any]]:
    return [{"id": u.id, "audio": u.audio, "text": u.text, "duration": u.duration, "speaker": u.speaker,
             "accent": u.accent} for u in utts]


def lora_settings(keys: list[str] = (), method: str = "lora") -> dict[str, Any]:
    """The LoRA that ``speechtl-adapt --method lora`` (and ``keys``) trains on Whisper."""
    from speechtl.backbones.whisper import WhisperBackbone
    from speechtl.config import load_config
    from speechtl.recipes.asr import DEFAULTS, backbone_defaults

    cfg = load_config(None, list(keys), method=method).with_defaults(DEFAULTS)
    whisper = backbone_defaults(cfg, WhisperBackbone)  # the class's `task` is all it reads
    a = cfg.with_defaults(whisper).adapt
    return {"r": a.lora_r, "alpha": a.lora_alpha, "dropout": a.lora_dropout,
            "target_modules": list(a.target_modules or WhisperBackbone.default_adapter_targets),
            "defaults": {**DEFAULTS, **whisper}}


class _Snapshots:
    """LoRA weights (CPU copies) at wall-clock marks (seconds after ``start``)."""

    def __init__(self, marks: list[float], trainable) -> None:
        self.marks = sorted(marks)
        self.trainable = trainable  # () -> {name: parameter}
        self.taken: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def maybe(self, step: int) -> None:
        if self.marks and self.elapsed() >= self.marks[0]:
            self.take(step, self.marks.pop(0))

    def take(self, step: int, mark: float | None) -> None:
        t = self.elapsed()
        weights = {n: p.detach().cpu().clone() for n, p in self.trainable().items()}
        self.taken.append({"step": step, "seconds": round(t, 1), "mark": mark, "weights": weights})

    def save(self, folder: Path) -> list[dict[str, Any]]:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i, snap in enumerate(self.taken):
            path = folder / f"snapshot-{i:02d}.safetensors"
            save_file({k: v.contiguous() for k, v in snap["weights"].items()}, str(path))
            out.append({"step": snap["step"], "seconds": snap["seconds"], "mark": snap["mark"], "path": str(path)})
        return out


# -- side A: speechtl ---------------------------------------------------------------------------


class _SnapshotTask:
    """The recipe's task; before each step's loss it notes whether a snapshot is due (weights after the last step)."""

    def __init__(self, task: Any, snaps: _Snapshots) -> None:
        self.task, self.snaps, self.collate, self.steps = task, snaps, task.collate, 0

    def loss(self, model: Any, batch: Any) -> Any:
        self.snaps.maybe(self.steps)
        self.steps += 1
        return self.task.loss(model, batch)


def run_speechtl(spec: dict[str, Any]) -> dict[str, Any]:
    from speechtl.training import train

    keys = [*spec["keys"], f"max_steps={spec['max_steps']}", f"seed={spec['seed']}", "progress=false",
            "log_every=10", "device=cpu"]
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        run = recipe_run(spec["model"], spec["train"], keys, tmp, method=spec.get("method", "lora"))
        model = run.model
        snaps = _Snapshots([60 * m for m in spec["marks"]], model.trainable_parameters)
        task = _SnapshotTask(run.task, snaps)
        result = train(model, task, run.loader, config=run.train_config, out_dir=Path(tmp) / "run")
        snaps.take(result.steps, None)
        wall = snaps.elapsed()
        log = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    return {"side": "speechtl", "seed": spec["seed"], "steps": result.steps, "wall_seconds": round(wall, 1),
            "seconds_per_step": round(wall / max(result.steps, 1), 3), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "trainable_parameters": model.num_trainable(),
            "resolved_config": run.config.to_dict(), "snapshots": snaps.save(Path(spec["snapshot_dir"])),
            "peak_rss_mb": peak_rss_mb()}


# -- side B: the Hugging Face recipe ------------------------------------------------------------


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from adapt_throughput import DataCollatorSpeechSeq2SeqWithPadding
    from peft import LoraConfig, get_peft_model
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback,
                              WhisperForConditionalGeneration, WhisperProcessor)

    from speechtl.audio import load_audio
    from speechtl.backbones.whisper import whisper_case
    from speechtl.convert.packaged import packaged_model_dir

    datasets.disable_progress_bars()
    folder = str(packaged_model_dir(spec["model"]))
    processor = WhisperProcessor.from_pretrained(folder)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token  # the hub tokenizer pads with <|endoftext|>
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    if getattr(model.generation_config, "is_multilingual", False):
        processor.tokenizer.set_prefix_tokens(language="en", task="transcribe")
    lora = spec["lora"]
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=lora["target_modules"], bias="none"))

    def trainable() -> dict[str, Any]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def prepare_dataset(batch: dict[str, Any]) -> dict[str, Any]:
        audio = load_audio(batch["audio"], 16000)  # datasets' Audio column needs torchcodec here
        batch["input_features"] = processor.feature_extractor(audio, sampling_rate=16000).input_features[0]
        batch["labels"] = processor.tokenizer(whisper_case(batch["text"])).input_ids  # the same targets as speechtl
        return batch

    with tempfile.TemporaryDirectory(prefix="bench-quality-hf-") as tmp:
        snaps = _Snapshots([60 * m for m in spec["marks"]], trainable)
        ds = datasets.Dataset.from_list([{"audio": r["audio"], "text": r["text"]} for r in spec["train"]])
        ds = ds.map(prepare_dataset, remove_columns=ds.column_names, cache_file_name=str(Path(tmp) / "feats.arrow"))
        map_seconds = snaps.elapsed()

        class SnapshotCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                snaps.maybe(state.global_step)

        args = Seq2SeqTrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=HF_GUIDE["batch"],
            gradient_accumulation_steps=1, learning_rate=HF_GUIDE["learning_rate"],
            warmup_steps=HF_GUIDE["warmup_steps"], lr_scheduler_type=HF_GUIDE["lr_scheduler_type"],
            weight_decay=HF_GUIDE["weight_decay"], max_grad_norm=HF_GUIDE["max_grad_norm"], max_steps=spec["max_steps"],
            eval_strategy="no", save_strategy="no", logging_steps=10, report_to="none", use_cpu=True, fp16=False,
            bf16=False, remove_unused_columns=False, label_names=["labels"], disable_tqdm=True,
            dataloader_num_workers=0, seed=spec["seed"])
        trainer = Seq2SeqTrainer(
            model=model, args=args, train_dataset=ds,
            data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id),
            processing_class=processor.feature_extractor, callbacks=[SnapshotCallback()])
        out = trainer.train()
        snaps.take(out.global_step, None)
        wall = snaps.elapsed()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        # peft's parameter names, relative to the transformers model (as speechtl's adapters name them).
        for snap in snaps.taken:
            snap["weights"] = {k.removeprefix("base_model.model."): v for k, v in snap["weights"].items()}
        saved = snaps.save(Path(spec["snapshot_dir"]))
    return {"side": "hf", "seed": spec["seed"], "steps": out.global_step, "wall_seconds": round(wall, 1),
            "feature_map_seconds": round(map_seconds, 1),
            "seconds_per_step": round((wall - map_seconds) / max(out.global_step, 1), 3),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "trainable_parameters": sum(p.numel() for p in trainable().values()), "snapshots": saved,
            "peak_rss_mb": peak_rss_mb()}


# -- one evaluator for both ---------------------------------------------------------------------


def _decode(run: Any, recs: list[dict[str, Any]], decoding: str = "greedy") -> list[str]:
    import torch

    if decoding == "transcribe":
        import speechtl

        run.model.eval()
        return speechtl.transcribe(run.model, [r["audio"] for r in recs], short_clips="off", progress=False)

    from speechtl.data.manifest import Utterance
    from speechtl.recipes.base import audio_loader

    utts = [Utterance(id=r["id"], audio=r["audio"], text=r["text"], speaker=r["speaker"], accent=r["accent"],
                      duration=r["duration"]) for r in recs]
    collate = functools.partial(run.task.collate, short_clips=False)  # 30-s padding, as inference does
    hyps: dict[str, str] = {}
    run.model.eval()
    with torch.no_grad():
        for batch in audio_loader(utts, run.model.sample_rate, 60.0, collate):
            hyps.update(zip(batch["ids"], run.task.predict(run.model, batch)))
    return [hyps[r["id"]] for r in recs]


def score(recs: list[dict[str, Any]], hyps: list[str]) -> dict[str, Any]:
    """Micro WER, per-speaker totals and a speaker-bootstrap 95 % interval."""
    import numpy as np

    from speechtl.stats import bootstrap_ci
    from speechtl.wer import score_pairs

    per: dict[str, list[int]] = {}
    for r, s in zip(recs, score_pairs([r["text"] for r in recs], hyps, "whisper")):
        t = per.setdefault(r["speaker"], [0, 0])
        t[0] += s.errors
        t[1] += s.ref_words
    errors, words = np.array([v[0] for v in per.values()]), np.array([v[1] for v in per.values()])
    lo, hi = bootstrap_ci(errors, words)
    return {"wer": round(float(errors.sum() / words.sum()), 4), "ci95": [round(lo, 4), round(hi, 4)],
            "speakers": {k: v for k, v in per.items()}, "utterances": len(recs)}


def _eval_run(model: str, lora: dict[str, Any], method: str, dev: list[dict[str, Any]]) -> Any:
    """A speechtl model with ``lora`` (untrained) and its task, to load snapshots into."""
    keys = [f"lora_r={lora['r']}", f"lora_alpha={lora['alpha']}", f"lora_dropout={lora['dropout']}",
            f"target_modules={','.join(lora['target_modules'])}", "device=cpu", "progress=false"]
    with tempfile.TemporaryDirectory(prefix="bench-quality-eval-") as tmp:
        return recipe_run(model, dev[:2], keys, tmp, method=method)


def run_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """Score each snapshot (weights into a speechtl model with the same LoRA) on dev, and on test where asked."""
    from safetensors.torch import load_file

    from speechtl.checkpoint import load_trainable

    runs: dict[str, Any] = {}
    # speechtl's trainable names are the transformers model's under `backbone.model.`.
    prefix = "backbone.model."
    out = []
    for job in spec["jobs"]:
        lora, method = job.get("lora", spec.get("lora")), job.get("method", "lora")
        key = json.dumps([lora, method], sort_keys=True)
        if key not in runs:
            runs[key] = _eval_run(spec["model"], lora, method, spec["dev"])
        run = runs[key]
        weights = load_file(job["path"]) if job["path"] else None
        if weights is not None:
            load_trainable(run.model, {k if k.startswith(prefix) else prefix + k: v for k, v in weights.items()},
                           source=job["path"])
        t0 = time.perf_counter()
        decoding = spec.get("decoding", "greedy")
        row = {"path": job["path"], "dev": score(spec["dev"], _decode(run, spec["dev"], decoding))}
        if job.get("test"):
            row["test"] = score(spec["test"], _decode(run, spec["test"], decoding))
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        out.append(row)
        print(f"  eval {job['path'] or 'zero-shot'}: dev {row['dev']['wer']:.4f}", file=sys.stderr, flush=True)
    return {"side": "eval", "rows": out}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    return {"speechtl": run_speechtl, "hf": run_hf, "eval": run_eval}[spec["side"]](spec)


# -- parent ---------------------------------------------------------------------------------------


def model_parameters(model: str) -> int:
    """The backbone's parameter count (the denominator of the trainable share)."""
    from speechtl.backbones import create_backbone

    return sum(p.numel() for p in create_backbone(model).parameters())


def calibrate(side: str, base: dict[str, Any], threads: int, work: Path) -> tuple[float, float]:
    """(seconds per step, seconds before the first step) of ``side`` over a short run (seed 0).

    They size each side's ``max_steps`` to the budget; the HF side's time before its first step is
    its ``Dataset.map`` over the train clips, which its clock holds.
    """
    n = CALIBRATION_STEPS[side]
    # A snapshot due at once is taken at the first chance (speechtl: before step 1; HF: after it), so the steps
    # after it give the time per step and everything before it (Dataset.map, the first step's set-up) is "before".
    res = run_child(__file__, {**base, "side": side, "seed": 0, "max_steps": n, "marks": [0.0],
                               "snapshot_dir": str(work / f"calibrate-{side}")}, threads=threads)
    first = res["snapshots"][0]
    per_step = (res["wall_seconds"] - first["seconds"]) / (res["steps"] - first["step"])
    return per_step, max(0.0, first["seconds"] - first["step"] * per_step)


def budget_steps(budget_minutes: float, per_step: float, before: float) -> int:
    return max(1, int((budget_minutes * 60 - before) / per_step))


def reach_time(curve: list[dict[str, Any]], target: float) -> float | None:
    """The first snapshot time (s) with dev WER at or below ``target``."""
    return next((p["seconds"] for p in curve if p["dev_wer"] <= target + 1e-12), None)


def is_main(run: dict[str, Any], side: str, seed: int) -> bool:
    """``run`` is ``side``'s run of the whole budget for ``seed`` (not a ``--budget-runs`` one)."""
    return run["side"] == side and run["seed"] == seed and "budget_run_minutes" not in run


def budget_runs_of(runs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``seed``'s separate speechtl runs of shorter budgets, shortest first: minutes, time, steps, dev and test WER."""
    mine = sorted((r for r in runs if r["seed"] == seed and "budget_run_minutes" in r),
                  key=lambda r: r["budget_run_minutes"])
    return [{"minutes": r["budget_run_minutes"], "seconds": r["curve"][-1]["seconds"], "steps": r["steps"],
             "dev_wer": r["final_dev_wer"], "test_wer": r["final_test"]["wer"]} for r in mine]


def spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "n": len(values)}


def main() -> int:
    if "--child" in sys.argv:
        return child_main(_child)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--budget", type=float, default=8.0, help="minutes of training per run (both sides)")
    ap.add_argument("--marks", default="0.5,1,2,4,6", help="minutes at which speechtl snapshots its weights")
    ap.add_argument("--hf-marks", default="2,4,6", help="minutes at which the HF side snapshots its weights (its "
                                                        "first minute is mostly Dataset.map and warm-up)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-speakers", type=int, default=0, help="use only this many train speakers (0: all)")
    ap.add_argument("--keys", default="", help="speechtl config keys (comma-free list separated by spaces) "
                                               "on top of the recipe's defaults")
    ap.add_argument("--decoding", choices=("greedy", "transcribe"), default="greedy",
                    help="how the evaluator decodes both sides' snapshots: plain greedy (default), or "
                         "speechtl.transcribe's defaults (temperature fallback, loop stop); 30-s padding either way")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N dev and test clips (quick checks)")
    ap.add_argument("--work", default="/tmp/speechtl-quality")
    ap.add_argument("--merge-with", default=None,
                    help="an earlier result of this script with the same settings and other seeds: its runs are kept "
                         "(each with the commit and command that measured it) and the summary covers all seeds")
    ap.add_argument("--budget-runs", default="",
                    help="minutes: per seed, speechtl also trains one separate run per budget (its own schedule, "
                         "max_steps sized to it), scored at its end on dev and test")
    ap.add_argument("--only-budget-runs", action="store_true",
                    help="with --merge-with: train only the --budget-runs, for --seeds of the earlier result, and "
                         "add them to it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    budget_runs = [float(m) for m in args.budget_runs.split(",") if m.strip()]
    if args.only_budget_runs and not (budget_runs and args.merge_with):
        ap.error("--only-budget-runs adds --budget-runs to the result of --merge-with: give both")
    if len({f"{m:g}" for m in budget_runs}) != len(budget_runs) or any(not 0 < m < args.budget for m in budget_runs):
        ap.error(f"--budget-runs {args.budget_runs}: give distinct budgets between 0 and --budget ({args.budget:g}) "
                 "minutes")

    facts = machine_facts()
    splits, data = benchmark_corpus()
    train, dev, test = (records(splits[s]) for s in ("train", "dev", "test"))
    if args.train_speakers:
        keep = sorted({r["speaker"] for r in train})[: args.train_speakers]
        train = [r for r in train if r["speaker"] in keep]
    if args.limit:
        dev, test = dev[: args.limit], test[: args.limit]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    keys = args.keys.split()
    lora = lora_settings(keys)
    marks = {side: [float(m) for m in arg.split(",") if float(m) < args.budget]
             for side, arg in (("speechtl", args.marks), ("hf", args.hf_marks))}
    base = {"model": args.model, "train": train, "lora": lora, "keys": keys, "threads": args.threads}
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds {args.seeds}: each seed once")
    earlier = json.loads(Path(args.merge_with).read_text()) if args.merge_with else None
    if earlier is not None:
        mergeable(earlier, {"model": args.model, "data": data, "budget_minutes": args.budget, "marks_minutes": marks,
                            "threads": args.threads, "decoding": args.decoding, "lora": lora, "speechtl_keys": keys,
                            "hf_guide": HF_GUIDE,
                            "train_utterances": len(train), "train_speakers": len({r["speaker"] for r in train}),
                            "dev_utterances": len(dev), "dev_speakers": len({r["speaker"] for r in dev}),
                            "test_utterances": len(test), "test_speakers": len({r["speaker"] for r in test})},
                   seeds, args.merge_with, budget_runs if args.only_budget_runs else None)

    main_sides = () if args.only_budget_runs else ("speechtl", "hf")
    calibration = {side: calibrate(side, base, args.threads, work)
                   for side in ("speechtl", "hf") if side in main_sides or (side == "speechtl" and budget_runs)}
    per_step = {side: round(c[0], 3) for side, c in calibration.items()}
    max_steps = {side: budget_steps(args.budget, *calibration[side]) for side in main_sides}
    if budget_runs:
        max_steps["speechtl_budget_runs"] = {f"{m:g}": budget_steps(m, *calibration["speechtl"]) for m in budget_runs}
    print(f"calibration: {per_step} s/step -> max_steps {max_steps}", flush=True)

    runs: list[dict[str, Any]] = []
    for seed in seeds:  # per seed: the main runs, then the shorter ones
        todo = [(side, max_steps[side], marks[side], f"{side}-seed{seed}", None) for side in main_sides]
        todo += [("speechtl", max_steps["speechtl_budget_runs"][f"{m:g}"], [], f"speechtl-seed{seed}-{m:g}min", m)
                 for m in budget_runs]
        for side, steps, side_marks, folder, minutes in todo:
            spec = {**base, "side": side, "seed": seed, "max_steps": steps, "marks": side_marks,
                    "snapshot_dir": str(work / folder)}
            res = run_child(__file__, spec, threads=args.threads)
            if minutes is not None:
                res["budget_run_minutes"] = minutes
            res["load_average_after"] = load_average()
            print(f"{folder}: {res['steps']} steps in {res['wall_seconds']} s", flush=True)
            runs.append(res)

    jobs = [{"path": None, "test": True}]
    for res in runs:
        for i, snap in enumerate(res["snapshots"]):
            jobs.append({"path": snap["path"], "test": i == len(res["snapshots"]) - 1})
    scored = run_child(__file__, {"side": "eval", "threads": args.threads, "model": args.model, "lora": lora,
                                  "dev": dev, "test": test, "decoding": args.decoding,
                                  "jobs": jobs}, threads=args.threads)
    by_path = {row["path"]: row for row in scored["rows"]}
    zero = by_path[None]
    for res in runs:
        res["curve"] = [{"seconds": 0.0, "step": 0, "dev_wer": zero["dev"]["wer"]}] + [
            {"seconds": s["seconds"], "step": s["step"], "dev_wer": by_path[s["path"]]["dev"]["wer"]}
            for s in res["snapshots"]]
        res["final_test"] = by_path[res["snapshots"][-1]["path"]]["test"]
        res["final_dev_wer"] = res["curve"][-1]["dev_wer"]

    here = {"commit": facts["git"]["commit"], "dirty": facts["git"]["dirty"], "command": command_line(),
            "calibration_seconds_per_step": per_step, "max_steps": max_steps,
            "zero_shot": {"dev_wer": zero["dev"]["wer"], "test_wer": zero["test"]["wer"]},
            "load_average_before": facts["load_average_before"]}
    for res in runs:
        res["measured_at"] = {"commit": here["commit"], "command": here["command"]}
    sources = [here]
    if earlier is not None:
        sources = [*earlier_sources(earlier), here]
        runs = [*earlier["runs"], *runs]
        seeds = earlier["seeds"] if args.only_budget_runs else [*earlier["seeds"], *seeds]
        if any(s["zero_shot"] != here["zero_shot"] for s in sources):  # the same evaluator must have scored all
            print("warning: the zero-shot WERs differ between the merged commands (see measured_by)", file=sys.stderr)

    # Per seed: the HF recipe's best dev WER, when HF reached it, and when speechtl first did.
    per_seed = []
    for seed in seeds:
        s = next(r for r in runs if is_main(r, "speechtl", seed))
        h = next(r for r in runs if is_main(r, "hf", seed))
        best = min(p["dev_wer"] for p in h["curve"])
        t_hf = reach_time(h["curve"], best)
        t_s = reach_time(s["curve"], best)
        row = {"seed": seed, "hf_best_dev_wer": best, "hf_seconds_to_best": t_hf,
               "speechtl_seconds_to_hf_best": t_s,
               "time_ratio_speechtl_over_hf": round(t_s / t_hf, 3) if t_s is not None and t_hf else None,
               "final_test_wer": {"speechtl": s["final_test"]["wer"], "hf": h["final_test"]["wer"]},
               "final_dev_wer": {"speechtl": s["final_dev_wer"], "hf": h["final_dev_wer"]}}
        shorter = budget_runs_of(runs, seed)
        if any("budget_run_minutes" in r for r in runs):  # every seed, so both ratios cover the same seeds
            reached = [b["seconds"] for b in shorter if b["dev_wer"] <= best + 1e-12]
            t_any = min([t for t in (t_s, *reached) if t is not None], default=None)
            row.update({"budget_runs": shorter, "speechtl_seconds_to_hf_best_any_run": t_any,
                        "time_ratio_any_run": round(t_any / t_hf, 3) if t_any is not None and t_hf else None})
        per_seed.append(row)
    summary = {
        "time_ratio_speechtl_over_hf": spread([p["time_ratio_speechtl_over_hf"] for p in per_seed]),
        "speechtl_reached_hf_best": sum(p["speechtl_seconds_to_hf_best"] is not None for p in per_seed),
        "final_test_wer": {side: spread([p["final_test_wer"][side] for p in per_seed]) for side in ("speechtl", "hf")},
        "final_dev_wer": {side: spread([p["final_dev_wer"][side] for p in per_seed]) for side in ("speechtl", "hf")},
        "zero_shot": {"dev_wer": zero["dev"]["wer"], "test_wer": zero["test"]["wer"],
                      "test_ci95": zero["test"]["ci95"]},
        "zero_shot_same_for_every_command": all(s["zero_shot"] == here["zero_shot"] for s in sources),
    }
    if any("budget_runs" in p for p in per_seed):
        summary["time_ratio_any_run"] = spread([p.get("time_ratio_any_run") for p in per_seed])
        minutes = sorted({b["minutes"] for p in per_seed for b in p.get("budget_runs", [])})
        summary["budget_runs"] = [{"minutes": m, **{k: spread([b[k] for p in per_seed for b in p.get("budget_runs", [])
                                                          if b["minutes"] == m])
                                                    for k in ("seconds", "dev_wer", "test_wer")}} for m in minutes]
    total = model_parameters(args.model)
    trainable = next(r["trainable_parameters"] for r in runs if r["side"] == "speechtl")
    summary["trainable_percent"] = round(100 * trainable / total, 3)
    summary["speechtl_relative_test_wer_cut"] = spread(
        [1 - p["final_test_wer"]["speechtl"] / zero["test"]["wer"] for p in per_seed])
    for res in runs:
        for snap in res["snapshots"]:
            snap.pop("path", None)  # merged runs from an earlier result have none
    suffix = "" if args.model == "whisper-tiny.en" else "_" + args.model.replace("whisper-", "").replace(".", "")
    out = Path(args.out) if args.out else RESULTS / f"adapt_quality{suffix}.json"
    result = {
        "bench": "adapt_quality", "command": command_line(), "model": args.model, "data": data,
        "train_utterances": len(train), "train_speakers": len({r["speaker"] for r in train}),
        "dev_utterances": len(dev), "dev_speakers": len({r["speaker"] for r in dev}),
        "test_utterances": len(test), "test_speakers": len({r["speaker"] for r in test}),
        "budget_minutes": args.budget, "marks_minutes": marks, "seeds": seeds, "threads": args.threads,
        "decoding": args.decoding, "lora": lora, "speechtl_keys": keys, "hf_guide": HF_GUIDE,
        "calibration_seconds_per_step": per_step,
        "calibration_seconds_before_first_step": {side: round(c[1], 1) for side, c in calibration.items()},
        "max_steps": max_steps, "summary": summary, "per_seed": per_seed, "runs": runs, "measured_by": sources,
        "machine": facts,
        "notes": [
            "Dev speakers only score the snapshots along the way; test speakers score the final weights of each "
            "run and choose nothing.",
            f"One evaluator scores both sides: {DECODING_TEXT[args.decoding]}, as inference pads, WER with the "
            "Whisper normaliser; HF snapshots are loaded into a speechtl model with the same LoRA.",
            "A side's time to a WER is the first snapshot time at or below it, so it is an upper bound.",
            *(["budget_runs: separate speechtl runs, each with its own schedule sized to a shorter budget, scored "
               "at their end (dev and test); time_ratio_any_run counts them as well as the main run's snapshots."]
              if "budget_runs" in summary else []),
            *(["Merged commands: command, machine, calibration and max_steps at the top level are the latest "
               "command's (after --only-budget-runs, its shorter runs' only); measured_by holds each command's, and "
               "each run its measured_at."] if earlier else []),
        ],
    }
    out.with_suffix(".md").write_text(_markdown(result))
    png = _plot(result, out.with_suffix(".png"))
    repo = RESULTS.parent.parent
    result["plot"] = str(png.relative_to(repo)) if png.is_relative_to(repo) else str(png)
    ratio = summary["time_ratio_speechtl_over_hf"]
    finish(result, out, f"speechtl reached the HF recipe's best dev WER in {ratio} of its time; final test WER "
                        f"speechtl {summary['final_test_wer']['speechtl']} vs HF {summary['final_test_wer']['hf']}")
    return 0


DECODING_TEXT = {"greedy": "plain greedy decoding at 30 s",
                 "transcribe": "speechtl.transcribe's default decoding at 30 s (temperature fallback, loop stop)"}
SAME_SETTINGS = ("model", "data", "budget_minutes", "marks_minutes", "threads", "decoding", "lora", "speechtl_keys",
                 "hf_guide",
                 "train_utterances", "train_speakers", "dev_utterances", "dev_speakers", "test_utterances",
                 "test_speakers")


def mergeable(earlier: dict[str, Any], now: dict[str, Any], seeds: list[int], path: str,
              budget_runs: list[float] | None = None) -> None:
    """Refuse ``--merge-with`` (before anything runs) when the earlier result measured other settings or seeds.

    With ``budget_runs`` (``--only-budget-runs``) the seeds must be the earlier result's, without those budget runs.
    """
    if earlier.get("bench") != "adapt_quality":
        raise SystemExit(f"--merge-with {path}: not a result of bench/adapt_quality.py")
    # Results from before --decoding decoded greedily.
    differ = [k for k in SAME_SETTINGS
              if json.loads(json.dumps(now[k])) != earlier.get(k, "greedy" if k == "decoding" else None)]
    if differ:
        raise SystemExit(f"--merge-with {path}: measured with other {', '.join(differ)}; run with its settings "
                         f"(its command: {earlier['command']}) or write a new result")
    if budget_runs is not None:
        missing = sorted(set(seeds) - set(earlier["seeds"]))
        if missing:
            raise SystemExit(f"--merge-with {path}: has no seed(s) {missing} to add budget runs to; its seeds are "
                             f"{earlier['seeds']}")
        done = sorted({(r["seed"], r["budget_run_minutes"]) for r in earlier["runs"] if "budget_run_minutes" in r}
                      & {(s, m) for s in seeds for m in budget_runs})
        if done:
            raise SystemExit(f"--merge-with {path}: already has the budget run(s) (seed, minutes) {done}")
        return
    again = sorted(set(seeds) & set(earlier["seeds"]))
    if again:
        raise SystemExit(f"--merge-with {path}: already has seed(s) {again}; choose other --seeds")


def earlier_sources(earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """Who measured the earlier result's runs: its ``measured_by`` list, or (a single run) its own command."""
    if "measured_by" in earlier:
        sources = [dict(s) for s in earlier["measured_by"]]
        sources[-1].setdefault("load_average_after", earlier["machine"]["load_average_after"])
        return sources
    stamp = {"commit": earlier["machine"]["git"]["commit"], "command": earlier["command"]}
    for res in earlier["runs"]:
        res.setdefault("measured_at", stamp)
    return [{**stamp, "dirty": earlier["machine"]["git"]["dirty"],
             "calibration_seconds_per_step": earlier["calibration_seconds_per_step"],
             "max_steps": earlier["max_steps"], "zero_shot": {k: earlier["summary"]["zero_shot"][k]
                                                              for k in ("dev_wer", "test_wer")},
             "load_average_before": earlier["machine"]["load_average_before"],
             "load_average_after": earlier["machine"]["load_average_after"]}]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _markdown(r: dict[str, Any]) -> str:
    """The result as tables: per seed, the HF recipe's best dev WER, each side's time to it, final test WERs; and
    the separate shorter runs, if any."""
    s = r["summary"]
    lines = [f"# Time to quality, {r['model']}: speechtl-adapt --method lora against the HF recipe", "",
             f"{r['train_speakers']} train speakers ({r['train_utterances']} clips); dev {r['dev_speakers']} speakers "
             f"(snapshots), test {r['test_speakers']} speakers (final weights only); {r['budget_minutes']:g}-minute "
             f"budget per run on {r['threads']} threads; zero-shot dev {_pct(s['zero_shot']['dev_wer'])}, test "
             f"{_pct(s['zero_shot']['test_wer'])}; both sides scored by "
             f"{DECODING_TEXT[r.get('decoding', 'greedy')]}.", "",
             "| seed | HF best dev WER | HF time to it | speechtl time to it | ratio | final test WER speechtl | "
             "final test WER HF |", "|---|---|---|---|---|---|---|"]
    for p in r["per_seed"]:
        t_s = p["speechtl_seconds_to_hf_best"]
        lines.append(f"| {p['seed']} | {_pct(p['hf_best_dev_wer'])} | {p['hf_seconds_to_best'] / 60:.1f} min | "
                     f"{'not reached' if t_s is None else f'{t_s / 60:.1f} min'} | "
                     f"{p['time_ratio_speechtl_over_hf'] if p['time_ratio_speechtl_over_hf'] is not None else '—'} | "
                     f"{_pct(p['final_test_wer']['speechtl'])} | {_pct(p['final_test_wer']['hf'])} |")
    ratio, ft = s["time_ratio_speechtl_over_hf"], s["final_test_wer"]
    if ratio:
        lines += ["", f"Median time ratio {ratio['median']} (range {ratio['min']}–{ratio['max']}, "
                  f"{ratio['n']} seeds); final test WER speechtl {_pct(ft['speechtl']['median'])} "
                  f"({_pct(ft['speechtl']['min'])}–"
                  f"{_pct(ft['speechtl']['max'])}) vs HF {_pct(ft['hf']['median'])} ({_pct(ft['hf']['min'])}–"
                  f"{_pct(ft['hf']['max'])})."]
    if "budget_runs" in s:
        lines += ["", "Separate speechtl runs of shorter budgets (each its own schedule; final weights scored):", "",
                  "| seed | budget | time | steps | dev WER | test WER | time to HF best, any run | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in r["per_seed"]:
            t_any = p.get("speechtl_seconds_to_hf_best_any_run")
            for b in p.get("budget_runs", []):
                lines.append(f"| {p['seed']} | {b['minutes']:g} min | {b['seconds'] / 60:.2f} min | {b['steps']} | "
                             f"{_pct(b['dev_wer'])} | {_pct(b['test_wer'])} | "
                             f"{'not reached' if t_any is None else f'{t_any / 60:.2f} min'} | "
                             f"{p['time_ratio_any_run'] if p['time_ratio_any_run'] is not None else '—'} |")
        anyr = s["time_ratio_any_run"]
        if anyr:
            lines += ["", f"Counting these runs too, median time ratio {anyr['median']} (range {anyr['min']}–"
                          f"{anyr['max']}, {anyr['n']} seeds reached the HF recipe's best)."]
    sources = r.get("measured_by", [])
    if len(sources) > 1:
        lines += ["", "Reproduce (each command's runs; the later ones merged with `--merge-with`):"]
        lines += [f"- `{m['command']}` (commit {m['commit'][:7]})" for m in sources]
        lines.append("")
    else:
        lines += ["", f"Reproduce: `{r['command']}`", ""]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"speechtl": "tab:blue", "hf": "tab:orange"}
    labels = {"speechtl": "speechtl-adapt --method lora", "hf": "HF Seq2SeqTrainer + PEFT (guide settings)"}
    for side in ("speechtl", "hf"):
        for i, res in enumerate(r for r in result["runs"] if is_main(r, side, r["seed"])):
            ax.plot([p["seconds"] / 60 for p in res["curve"]], [100 * p["dev_wer"] for p in res["curve"]],
                    marker="o", color=colours[side], alpha=0.8, label=labels[side] if i == 0 else None)
    shorter = [r for r in result["runs"] if "budget_run_minutes" in r]
    if shorter:
        ax.scatter([r["curve"][-1]["seconds"] / 60 for r in shorter], [100 * r["final_dev_wer"] for r in shorter],
                   marker="s", s=60, color="tab:green", zorder=3, label="speechtl, separate shorter runs (final)")
    ax.set_xlabel("wall-clock minutes of training (2 cores)" if result["threads"] == 2 else "wall-clock minutes")
    ax.set_ylabel("dev WER (%)")
    ax.set_title(f"{result['model']} on speechocean762 dev speakers, {len(result['seeds'])} seeds")
    return save_plot(fig, ax, path)


if __name__ == "__main__":
    sys.exit(main())

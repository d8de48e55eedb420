"""speechtl-adapt: adapt a speech model to an accent (features, finetune, LoRA/DoRA/IA3, bottleneck adapters).

Writes into --out: config.yaml (the resolved config), run.json (inputs and what trains),
metrics.jsonl (training log), checkpoints/ (last and best, for --resume), adapter/ (only the
trained weights; LoRA also in peft's format) and result.json; prints the final dev WER.

Config keys (see --help-config) come from --config YAML, then key=value arguments, e.g.
``speechtl-adapt --model whisper-tiny.en --train train.jsonl --dev dev.jsonl --method lora
--out runs/lora lr=1e-3 lora_r=16 max_steps=500``. Multi-GPU: ``torchrun --nproc-per-node 4
-m speechtl.cli.adapt ...`` (batch_seconds is per process).

Accent identification: ``speechtl-adapt --task accent-id --model whisper-tiny.en --train M
[--dev M] --out DIR`` trains a classifier of the manifests' accent field on the frozen encoder
(unless given: method features, weighted_layers=true, head_norm=true, head_pooling=stats; the
label set is saved with the head), then prints accuracy, recall per accent, the confusion matrix
and the speakers not always right on the dev utterances and writes them to DIR/accent_id.json.
Route transcription with it: ``speechtl-transcribe --accent-classifier DIR/adapter --adapters
ACCENT=ADAPTER ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import yaml

from ..config import METHODS, RunConfig, atomic_write_text, describe_keys, load_config
from ..errors import SpeechtlError
from ._common import add_common_args, out_in_use, run_cli

# Files a previous run of this tool leaves; --overwrite removes a folder only when it looks like one.
_RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "checkpoints", "adapter", "result.json")


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_keys())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtl-adapt", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--model", required=True, help="backbone name (speechtl.list_backbones()), model folder or hub id")
    p.add_argument("--train", required=True, help="training manifest (JSONL); utterances with split train or none")
    p.add_argument("--dev", help="dev manifest for WER during training (default: the split=dev lines of --train)")
    p.add_argument("--method", choices=METHODS, help="transfer method (or `method:` in --config; default lora)")
    p.add_argument("--task", choices=("auto", "asr", "classify", "accent-id"), default="auto",
                   help="auto: speech recognition for speech models, classification for image/text models; "
                        "accent-id: a classifier of the manifest's accent field on the frozen speech encoder "
                        "(default method features, weighted_layers=true, head_norm=true, head_pooling=stats)")
    p.add_argument("--target-accent", help="train and evaluate only on utterances of this accent")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--config", help="YAML config (flat keys, or grouped under adapt/train/data)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--help-config", action=_HelpConfig, help="list every config key with its default and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=3e-4 lora_r=16")
    add_common_args(p)
    return p


def _prepare_out(out: Path, *, overwrite: bool, resume: bool, is_main: bool) -> None:
    if overwrite and resume:
        raise SpeechtlError("--overwrite and --resume contradict each other; choose one")
    if resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise SpeechtlError(f"{out}: no checkpoints/last.pt to resume from; start a new run instead")
        return
    if not is_main or not out_in_use(out):
        return
    if not overwrite:
        raise SpeechtlError(f"--out {out} is not empty; pass --overwrite to replace it or --resume to continue it")
    if not any((out / name).exists() for name in _RUN_FILES):
        raise SpeechtlError(f"--out {out} does not look like a speechtl-adapt output; remove it yourself")
    shutil.rmtree(out)


def _select(utts, *, splits: tuple, accent: str | None, where: str):
    chosen = [u for u in utts if u.split in splits]
    if accent is not None:
        accents = sorted({u.accent for u in chosen})
        chosen = [u for u in chosen if u.accent == accent]
        if not chosen and accents:
            raise SpeechtlError(f"{where}: no utterance of accent {accent!r}; accents there: {', '.join(accents)}")
    return chosen


def _check_resume_config(out: Path, cfg: RunConfig) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.to_dict()
    changed = [f"{section}.{k}" for section in ("adapt", "data") for k, v in now[section].items()
               if saved.get(section, {}).get(k, v) != v]
    if changed:
        raise SpeechtlError(f"{saved_path}: resuming with a different {', '.join(changed)}; "
                            "give the same config as the interrupted run")


def _run(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..train import seed_everything, train

    fixed = {"method": args.method} if args.method else {}
    cfg = load_config(args.config, args.overrides, **fixed)
    if args.task == "accent-id":
        cfg = _accent_id_defaults(args, cfg)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.out)
    _prepare_out(out, overwrite=args.overwrite, resume=args.resume, is_main=rank == 0)
    if args.resume:
        _check_resume_config(out, cfg)

    seed_everything(cfg.train.seed)
    backbone = create_backbone(args.model)
    classify = args.task == "classify" or (args.task == "auto" and backbone.modality != "audio")
    setup = _accent_id_setup if args.task == "accent-id" else _classify_setup if classify else _asr_setup
    model, task, loader, dev_fn, train_cfg, info = setup(args, cfg, backbone, world, rank)

    if rank == 0 and not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        run_info = {
            "model": args.model, "train": args.train, "dev": args.dev, "target_accent": args.target_accent,
            **info, "world_size": world, "summary": model.summary(),
            "trainable_parameters": model.num_trainable(), "total_parameters": model.num_parameters(),
        }
        atomic_write_text(out / "run.json", json.dumps(run_info, indent=2) + "\n")

    # -- train ---------------------------------------------------------------------------------------
    result = train(model, task, loader, dev_fn=dev_fn, config=train_cfg, out_dir=out, resume=args.resume)
    if rank != 0:
        return 0
    meta = {"target_accent": args.target_accent, "train_manifest": args.train, "steps": result.steps,
            "dev_" + train_cfg.metric: result.best_metric}
    model.save_adapter(out / "adapter", **meta)
    summary = {"steps": result.steps, "epoch": result.epoch, "stopped_early": result.stopped_early,
               "best_step": result.best_step, "metric": train_cfg.metric, "best_metric": result.best_metric,
               "last_eval": result.last_eval, "adapter": str(out / "adapter")}
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    if args.task == "accent-id":
        _accent_id_report(args, model, out)
    if result.best_metric is None:
        print(f"trained {result.steps} steps; adapter in {out / 'adapter'} (no dev set: nothing evaluated)")
    elif train_cfg.metric in ("wer", "cer", "error"):
        print(f"final dev {train_cfg.metric.upper()}: {100 * result.best_metric:.2f}% "
              f"(best at step {result.best_step} of {result.steps}); adapter in {out / 'adapter'}")
    else:
        print(f"final dev {train_cfg.metric}: {result.best_metric:.4g} (best at step {result.best_step}); "
              f"adapter in {out / 'adapter'}")
    return 0


def _asr_setup(args: argparse.Namespace, cfg: RunConfig, backbone, world: int, rank: int):
    """Speech: manifests of utterances, duration-capped batches, CTC or seq2seq ASR task."""
    from torch.utils.data import DataLoader

    from ..data.loader import AudioDataset, DurationBatchSampler, augmentation, durations_of
    from ..data.manifest import read_manifest
    from ..specaug import SpecAugment
    from ..tasks import ClassificationTask, asr_dev_fn, classification_dev_fn, task_for
    from ..transfer import adapt

    # -- data --------------------------------------------------------------------------------------
    # Speech recognition trains on transcripts: an empty one is a manifest error, with its line.
    asr = cfg.adapt.head != "classifier" and not cfg.adapt.labels
    train_all = read_manifest(args.train, require_text=asr)
    train_utts = _select(train_all, splits=(None, "train"), accent=args.target_accent, where=args.train)
    if args.dev:
        dev_utts = _select(read_manifest(args.dev, require_text=asr), splits=(None, "dev"), accent=args.target_accent,
                           where=args.dev)
    else:
        dev_utts = _select(train_all, splits=("dev",), accent=args.target_accent, where=f"{args.train} (split=dev)")
    if not train_utts:
        raise SpeechtlError(f"{args.train}: no training utterances (split train or none)")
    durations = durations_of(train_utts)
    keep = [i for i, d in enumerate(durations) if d <= cfg.data.max_clip_seconds]
    if len(keep) < len(train_utts):
        warnings.warn(f"{len(train_utts) - len(keep)} training clips are longer than max_clip_seconds="
                      f"{cfg.data.max_clip_seconds:g} and are left out", stacklevel=1)
        train_utts, durations = [train_utts[i] for i in keep], [durations[i] for i in keep]
        if not train_utts:
            raise SpeechtlError("every training clip is longer than max_clip_seconds; raise it")

    # -- model -------------------------------------------------------------------------------------
    if hasattr(backbone, "short_clips"):
        backbone.short_clips = cfg.data.short_clips
    model = adapt(backbone, **dataclasses.asdict(cfg.adapt))
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    d = cfg.data
    specaug = (SpecAugment(d.specaug_freq_masks, d.specaug_freq_width, d.specaug_time_masks, d.specaug_time_width)
               if d.specaug else None)
    task = task_for(model, specaug=specaug)
    train_cfg = cfg.train
    if isinstance(task, ClassificationTask) and train_cfg.metric == "wer":
        train_cfg = dataclasses.replace(train_cfg, metric="error")

    rate = backbone.sample_rate
    replay_train, replay_dev = _replay_utterances(d, isinstance(task, ClassificationTask))
    train_data = AudioDataset(train_utts, rate, seed=cfg.train.seed, **augmentation(d))
    if replay_train:
        from ..replay import ReplayBatchSampler, ReplayDataset, ReplayTask

        # The target share of the batch keeps (1 - fraction) of batch_seconds; replay fills the rest.
        inner = DurationBatchSampler(durations, d.batch_seconds * (1 - d.replay_fraction), shuffle=True,
                                     seed=cfg.train.seed, num_replicas=world, rank=rank)
        sampler = ReplayBatchSampler(inner, len(train_utts), len(replay_train), d.replay_fraction,
                                     seed=cfg.train.seed, rank=rank)
        train_data = ReplayDataset(train_data, AudioDataset(replay_train, rate, seed=cfg.train.seed))
        task = ReplayTask(task, model, distill_weight=d.distill_weight, temperature=d.distill_temperature)
    else:
        sampler = DurationBatchSampler(durations, d.batch_seconds, shuffle=True, seed=cfg.train.seed,
                                       num_replicas=world, rank=rank)
    loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=task.collate, num_workers=d.num_workers)

    dev_collate = task.collate
    if hasattr(backbone, "short_clips") and not d.dev_short_clips:
        dev_collate = functools.partial(task.collate, short_clips=False)

    def dev_loader(utts):
        return DataLoader(AudioDataset(utts, rate),
                          batch_sampler=DurationBatchSampler(durations_of(utts), d.batch_seconds, shuffle=False),
                          collate_fn=dev_collate, num_workers=d.num_workers)

    dev_fn = None
    if dev_utts:
        dev_fn = (classification_dev_fn(task, dev_loader(dev_utts)) if isinstance(task, ClassificationTask)
                  else asr_dev_fn(task, dev_loader(dev_utts), normalizer=d.normalizer, beam_size=d.beam_size))
    elif rank == 0:
        print("no dev utterances: training without evaluation (the last weights are kept)", file=sys.stderr)
    if replay_dev and rank == 0:
        from ..replay import forgetting_dev_fn

        source_fn = asr_dev_fn(task, dev_loader(replay_dev), normalizer=d.normalizer, beam_size=d.beam_size)
        dev_fn = forgetting_dev_fn(dev_fn, source_fn, model)
    info = {"train_utterances": len(train_utts), "train_hours": round(sum(durations) / 3600, 4),
            "dev_utterances": len(dev_utts), "replay_utterances": len(replay_train),
            "replay_dev_utterances": len(replay_dev)}
    return model, task, loader, dev_fn, train_cfg, info


def _replay_utterances(d, classification: bool) -> tuple[list, list]:
    """``replay_manifest``'s (train-or-unsplit, dev) utterances, checked against the replay settings."""
    from ..data.manifest import read_manifest

    if d.replay_manifest is None:
        if d.replay_fraction > 0 or d.distill_weight > 0:
            raise SpeechtlError("replay_fraction and distill_weight need replay_manifest=PATH (native/source speech)")
        return [], []
    if classification:
        raise SpeechtlError("replay_manifest applies to speech recognition, not classification")
    utts = read_manifest(d.replay_manifest)
    train = [u for u in utts if u.split in (None, "train")] if d.replay_fraction > 0 else []
    dev = [u for u in utts if u.split == "dev"]
    if d.replay_fraction > 0 and not train:
        raise SpeechtlError(f"{d.replay_manifest}: no train (or unsplit) lines to replay; "
                            "add some or set replay_fraction=0")
    if d.distill_weight > 0 and not train:
        raise SpeechtlError("distill_weight works on the replay utterances: set replay_fraction > 0 too")
    if not train and not dev:
        raise SpeechtlError(f"{d.replay_manifest}: no train or dev lines; nothing to replay or to measure "
                            "forgetting on")
    return train, dev


def _classify_setup(args: argparse.Namespace, cfg: RunConfig, backbone, world: int, rank: int):
    """Images or texts: ``path,label`` / ``text,label`` manifests, fixed-size batches, classifier head."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from ..data.classify import (ClassifyDataset, ClassifyTask, classify_dev_fn, label_set, read_classify_manifest,
                                 split_examples)
    from ..transfer import adapt

    train_all, kind = read_classify_manifest(args.train)
    train_ex = [e for e in train_all if e.split in (None, "train")]
    dev_ex = (read_classify_manifest(args.dev, kind)[0] if args.dev else split_examples(train_all, "dev"))
    if not train_ex:
        raise SpeechtlError(f"{args.train}: no training examples (split train or none)")
    labels = label_set(train_ex)
    model = adapt(backbone, **{**dataclasses.asdict(cfg.adapt), "labels": labels})
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    task = ClassifyTask(model, labels)
    train_cfg = cfg.train if cfg.train.metric != "wer" else dataclasses.replace(cfg.train, metric="error")
    dataset = ClassifyDataset(train_ex, kind, cache=True)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=cfg.train.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=task.collate, num_workers=cfg.data.num_workers)
    dev_fn = None
    if dev_ex:
        dev_loader = DataLoader(ClassifyDataset(dev_ex, kind, cache=True), batch_size=cfg.data.batch_size,
                                collate_fn=task.collate)
        dev_fn = classify_dev_fn(task, dev_loader)
    info = {"task": "classify", "kind": kind, "labels": labels, "train_examples": len(train_ex),
            "dev_examples": len(dev_ex)}
    return model, task, loader, dev_fn, train_cfg, info


def _accent_id_defaults(args: argparse.Namespace, cfg: RunConfig) -> RunConfig:
    """Accent identification trains a head on the frozen encoder's weighted layers unless the user said otherwise."""
    from ..config import _flatten_yaml, parse_overrides

    given = set(parse_overrides(args.overrides))
    if args.config:
        given |= set(_flatten_yaml(yaml.safe_load(Path(args.config).read_text()), args.config))
    changes = {}
    if args.method is None and "method" not in given:
        changes["method"] = "features"
    if "weighted_layers" not in given:
        changes["weighted_layers"] = True
    if "head" not in given:
        changes["head"] = "classifier"
    if "head_pooling" not in given:
        changes["head_pooling"] = "stats"
    if "head_norm" not in given:
        changes["head_norm"] = True
    return dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, **changes))


def _accent_id_utterances(args: argparse.Namespace):
    from ..data.manifest import read_manifest

    train_all = read_manifest(args.train)
    train_utts = _select(train_all, splits=(None, "train"), accent=None, where=args.train)
    if args.dev:
        dev_utts = _select(read_manifest(args.dev), splits=(None, "dev"), accent=None, where=args.dev)
    else:
        dev_utts = _select(train_all, splits=("dev",), accent=None, where=f"{args.train} (split=dev)")
    return train_utts, dev_utts


def _accent_id_setup(args: argparse.Namespace, cfg: RunConfig, backbone, world: int, rank: int):
    """Speech: a classifier of the manifests' ``accent`` field; the label set is the training accents."""
    from torch.utils.data import DataLoader

    from ..data.loader import AudioDataset, DurationBatchSampler, augmentation, durations_of
    from ..tasks import ClassificationTask, classification_dev_fn
    from ..transfer import adapt

    if backbone.modality != "audio":
        raise SpeechtlError(f"--task accent-id needs a speech model; {args.model} is a {backbone.modality} model")
    if args.target_accent is not None:
        raise SpeechtlError("--target-accent selects one accent, but --task accent-id learns to tell accents apart; "
                            "leave it out")
    if getattr(cfg.data, "replay_manifest", None):
        raise SpeechtlError("replay_manifest applies to speech recognition, not --task accent-id")
    train_utts, dev_utts = _accent_id_utterances(args)
    if not train_utts:
        raise SpeechtlError(f"{args.train}: no training utterances (split train or none)")
    labels = sorted({u.accent for u in train_utts})
    if len(labels) < 2:
        raise SpeechtlError(f"{args.train}: accent identification needs at least two accents in the training "
                            f"utterances, found {labels}")
    unseen = sorted({u.accent for u in dev_utts} - set(labels))
    if unseen:
        raise SpeechtlError(f"{args.dev or args.train}: dev accent(s) {', '.join(unseen)} do not occur in the "
                            f"training utterances ({', '.join(labels)}); a classifier cannot predict them")
    durations = durations_of(train_utts)
    keep = [i for i, d in enumerate(durations) if d <= cfg.data.max_clip_seconds]
    if len(keep) < len(train_utts):
        warnings.warn(f"{len(train_utts) - len(keep)} training clips are longer than max_clip_seconds="
                      f"{cfg.data.max_clip_seconds:g} and are left out", stacklevel=1)
        train_utts, durations = [train_utts[i] for i in keep], [durations[i] for i in keep]
    if hasattr(backbone, "short_clips"):
        # The head mean-pools over valid frames: pad each batch to its longest clip, not to 30 s.
        backbone.short_clips = True
    model = adapt(backbone, **{**dataclasses.asdict(cfg.adapt), "labels": labels})
    if rank == 0:
        print(model.summary(), file=sys.stderr)
    d = cfg.data
    task = ClassificationTask(model, labels, label_key="accent")
    train_cfg = cfg.train if cfg.train.metric != "wer" else dataclasses.replace(cfg.train, metric="error")
    rate = backbone.sample_rate
    sampler = DurationBatchSampler(durations, d.batch_seconds, shuffle=True, seed=cfg.train.seed,
                                   num_replicas=world, rank=rank)
    train_data = AudioDataset(train_utts, rate, seed=cfg.train.seed, **augmentation(d))
    loader = DataLoader(train_data, batch_sampler=sampler,
                        collate_fn=task.collate, num_workers=d.num_workers)
    dev_fn = None
    if dev_utts:
        dev_loader = DataLoader(AudioDataset(dev_utts, rate),
                                batch_sampler=DurationBatchSampler(durations_of(dev_utts), d.batch_seconds,
                                                                   shuffle=False),
                                collate_fn=task.collate, num_workers=d.num_workers)
        dev_fn = classification_dev_fn(task, dev_loader)
    elif rank == 0:
        print("no dev utterances: training without evaluation (the last weights are kept)", file=sys.stderr)
    counts = {a: sum(u.accent == a for u in train_utts) for a in labels}
    info = {"task": "accent-id", "labels": labels, "train_utterances": len(train_utts),
            "train_per_accent": counts, "train_hours": round(sum(durations) / 3600, 4),
            "dev_utterances": len(dev_utts)}
    return model, task, loader, dev_fn, train_cfg, info


def _accent_id_report(args: argparse.Namespace, model, out: Path) -> None:
    """Score the trained classifier on the dev utterances: print and save accuracy, recall and confusions."""
    from ..routing import AccentClassifier, evaluate_accent_id

    _, dev_utts = _accent_id_utterances(args)
    if not dev_utts:
        return
    report = evaluate_accent_id(AccentClassifier.from_model(model), dev_utts)
    report.meta.update({"manifest": args.dev or f"{args.train} (split=dev)", "adapter": str(out / "adapter")})
    report.save(out / "accent_id.json")
    print(report.format_table())
    print(f"accent-id scores: {out / 'accent_id.json'}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

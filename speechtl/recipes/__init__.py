"""Recipes wire speechtl's components into a training run: a resolved config in, a :class:`Run` out.

``speechtl-adapt``, ``speechtl-demo`` and the benchmarks all go through here, so a published
number is the path a user runs::

    from speechtl import recipes
    from speechtl.config import load_config

    cfg = load_config(None, ["max_steps=100"], method="lora")
    result = recipes.run(recipes.RunInputs("whisper-tiny.en", "train.jsonl"), cfg, "runs/lora")
    result.summary["best_metric"]

One recipe per task: :mod:`~speechtl.recipes.asr` (speech recognition),
:mod:`~speechtl.recipes.classify` (images, texts) and :mod:`~speechtl.recipes.accent_id`.
Each has its own ``DEFAULTS`` (the asr recipe also has Whisper's adapter settings,
``asr.backbone_defaults``), applied wherever the user did not set the key; a key the user set that
the run's method, head or task would ignore is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import RunConfig, check_applicable
from ..errors import SpeechtlError
from ..fileio import atomic_write_text
from . import accent_id, asr, classify
from .base import RUN_FILES, Run, RunInputs, RunResult, check_out, check_resume_config, clear_out

RECIPES = {"asr": asr, "classify": classify, "accent-id": accent_id}
TASKS = ("auto", *RECIPES)

__all__ = ["RECIPES", "RUN_FILES", "TASKS", "Run", "RunInputs", "RunResult", "build", "check_resume_config",
           "check_out", "clear_out", "execute", "resolve_task", "run"]


def resolve_task(task: str, backbone) -> str:
    """``auto``: speech recognition for speech models, classification for image and text models."""
    if task not in TASKS:
        raise SpeechtlError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "auto":
        return "asr" if backbone.modality == "audio" else "classify"
    return task


def head_kind(cfg: RunConfig, backbone, recipe: str) -> str:
    """The head a run gets: its own ASR head (``backbone``), a new ``ctc`` head or a ``classifier``."""
    a = cfg.adapt
    if a.head != "auto":
        return a.head
    if a.labels or recipe in ("classify", "accent-id"):
        return "classifier"
    return "ctc" if a.method == "features" or backbone.task == "encoder" else "backbone"


def build(inputs: RunInputs, cfg: RunConfig, *, task: str = "auto", backbone=None, world: int = 1, rank: int = 0,
          resume_dir: str | os.PathLike | None = None) -> Run:
    """Create the backbone (unless given), apply the task's recipe defaults, check the keys, wire the run, and
    check that training can run it here (device, precision, gradient checkpointing).

    With ``resume_dir`` the resolved config must match the interrupted run's saved one, and what that run
    saved for a resumed one (:attr:`Run.save_state`) is read back.
    """
    from ..backbones import create_backbone
    from ..training import check_settings, seed_everything

    seed_everything(cfg.train.seed)
    if backbone is None:
        backbone = create_backbone(inputs.model)
    name = resolve_task(task, backbone)
    recipe = RECIPES[name]
    cfg = cfg.with_defaults(recipe.DEFAULTS, where=f"the {name} recipe's defaults")
    if hasattr(recipe, "backbone_defaults"):
        cfg = cfg.with_defaults(recipe.backbone_defaults(cfg, backbone), where=f"the {name} recipe's model defaults")
    data_task = asr.data_task(cfg) if name == "asr" else name
    check_applicable(cfg, task=data_task, head=head_kind(cfg, backbone, name))
    check_settings(cfg.train)  # the device and precision, before the recipe (a teacher may decode) uses them
    if resume_dir is not None:
        check_resume_config(Path(resume_dir), cfg)
    # Only speech recognition saves state that a resumed run reads back (the teacher's transcripts).
    resumed = {"resume_dir": Path(resume_dir)} if name == "asr" and resume_dir is not None else {}
    run = recipe.build(inputs, cfg, backbone, world=world, rank=rank, **resumed)
    check_settings(run.train_config, run.model)  # what training would refuse, before an earlier run is replaced
    return run


def execute(run: Run, out: str | os.PathLike, *, resume: bool = False, world: int = 1, rank: int = 0) -> RunResult:
    """Train ``run`` into ``out``: config.yaml, run.json, metrics.jsonl, checkpoints/, adapter/, result.json
    (and what ``run.save_state`` writes).

    ``out`` must have been checked and cleared (:func:`check_out`, :func:`clear_out`). Only rank 0 writes;
    other ranks return after training with ``adapter`` None.
    """
    from ..training import train

    out = Path(out)
    model = run.model
    if rank == 0 and not resume:
        out.mkdir(parents=True, exist_ok=True)
        run.config.save(out / "config.yaml")
        info = {"model": run.inputs.model, "train": run.inputs.train, "dev": run.inputs.dev,
                "target_accent": run.inputs.target_accent, "recipe": run.recipe, **run.summary, "world_size": world,
                "summary": model.summary(), "trainable_parameters": model.num_trainable(),
                "total_parameters": model.num_parameters()}
        atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")
    if rank == 0 and run.save_state is not None:
        run.save_state(out)
    result = train(model, run.task, run.loader, dev_fn=run.dev_fn, config=run.train_config, out_dir=out,
                   resume=resume)
    if rank != 0:
        return RunResult(run, result, None, {})
    metric = run.train_config.metric
    model.save_adapter(out / "adapter", target_accent=run.inputs.target_accent, train_manifest=run.inputs.train,
                       steps=result.steps, **{"dev_" + metric: result.best_metric})
    summary = {"steps": result.steps, "epoch": result.epoch, "stopped_early": result.stopped_early,
               "best_step": result.best_step, "metric": metric, "best_metric": result.best_metric,
               "last_eval": result.last_eval, "adapter": str(out / "adapter")}
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    report = run.after_training(out) if run.after_training is not None else None
    return RunResult(run, result, out / "adapter", summary, report)


def run(inputs: RunInputs, cfg: RunConfig, out: str | os.PathLike, *, task: str = "auto", overwrite: bool = False,
        resume: bool = False, backbone: Any = None) -> RunResult:
    """Build and execute a run in one call, the way ``speechtl-adapt`` does (a single process)."""
    out = Path(out)
    replace = check_out(out, overwrite=overwrite, resume=resume, model=inputs.model)
    built = build(inputs, cfg, task=task, backbone=backbone, resume_dir=out if resume else None)
    if replace:
        clear_out(out)
    return execute(built, out, resume=resume)

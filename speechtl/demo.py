"""The demo: the whole accent-adaptation story on the embedded defaults (see ``speechtl-demo``).

:func:`run` builds the corpus (synthetic accents, plus the real speech in ``shared_data`` when
present), evaluates the model zero-shot per accent, LoRA-adapts it to the target accent through
the asr recipe and evaluates again, writing everything under ``out``. ``log`` receives each
line meant for the user.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import SpeechtlError
from .fileio import out_in_use

ACCENTS = ("us", "gb", "scottish", "german", "french", "russian")
HELDOUT = ("russian",)


@dataclass
class DemoResult:
    base: object  # Report, zero-shot
    adapted: object  # Report, with the adapter
    comparison: object  # Comparison of the two
    out: Path
    seconds: float


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


def run(out: str | os.PathLike, *, model: str = "whisper-tiny.en", per_accent: int = 16, max_steps: int = 60,
        shared_data: str | os.PathLike | None = None, synthetic_only: bool = False, seed: int = 0,
        overwrite: bool = False, log: Callable[[str], None] = print) -> DemoResult:
    import torch

    from . import recipes
    from .config import load_config
    from .data import read_manifest, split_by_speaker, write_manifest
    from .data.importers import import_speechocean762
    from .data.synth import build_corpus
    from .evaluation import evaluate

    torch.manual_seed(seed)
    out = Path(out)
    prepare_out(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    log("\n== 1/4 corpus: synthetic accents (TTS), plus real speech when present")
    utts = list(build_corpus(out / "synth", list(ACCENTS), per_accent=per_accent, seed=seed, heldout=list(HELDOUT)))
    shared = Path(shared_data) if shared_data is not None else None
    env = os.environ.get("SPEECHTL_SPEECHOCEAN762")
    so_dir = Path(env) if env else shared / "speechocean762" if shared is not None else None
    target = "german"
    if not synthetic_only and so_dir is not None and (so_dir / "train" / "text").is_file():
        so = import_speechocean762(so_dir)
        # Keep the demo short: 12 training speakers, 4 dev and 6 test speakers, 10 clips each.
        keep = set(sorted({u.speaker for u in so})[:22])
        so = split_by_speaker([u for u in so if u.speaker in keep], dev=4 / 22, test=6 / 22, seed=seed)
        per_spk: dict[str, int] = {}
        trimmed = []
        for u in so:
            per_spk[u.speaker] = per_spk.get(u.speaker, 0) + 1
            if per_spk[u.speaker] <= 10:
                trimmed.append(u)
        utts += trimmed
        target = "Mandarin-L1"
        log(f"real speech: {len(trimmed)} speechocean762 utterances from {so_dir}")
    else:
        log("real speechocean762 not found: the target accent is synthetic German-accented English")
    heldout = list(HELDOUT)
    real = shared / "real" / "manifest.jsonl" if shared is not None else None
    if not synthetic_only and real is not None and real.is_file():
        native = read_manifest(real)
        for u in native:
            u.split = "test_heldout"
        heldout += sorted({u.accent for u in native})
        utts += native
        log(f"real speech: {len(native)} VCTK/LJSpeech utterances (held out, native English)")
    write_manifest(utts, out / "manifest.jsonl")
    test = [u for u in utts if u.split in ("test", "test_heldout")]
    log(f"{len(utts)} utterances, {len({u.accent for u in utts})} accents; target {target}; "
        f"test set {len(test)} utterances; unseen accents: {', '.join(heldout)}")

    log(f"\n== 2/4 zero-shot {model}: WER per accent")
    base = evaluate(model, test, heldout_accents=heldout, target_accent=target, out_dir=out / "zero-shot",
                    progress=True)
    log(base.format_table())

    log(f"\n== 3/4 LoRA adaptation to {target}")
    train_m, dev_m = out / "target_train.jsonl", out / "target_dev.jsonl"
    write_manifest([u for u in utts if u.accent == target and u.split == "train"], train_m)
    write_manifest([u for u in utts if u.accent == target and u.split == "dev"], dev_m)
    cfg = load_config(None, {"max_steps": max_steps, "eval_every": 20, "lr": 3e-4, "warmup_steps": 5,
                             "batch_seconds": 40, "seed": seed}, method="lora")
    recipes.run(recipes.RunInputs(model, str(train_m), str(dev_m)), cfg, out / "adapter-run", overwrite=True)

    log("\n== 4/4 adapted model: WER per accent, compared with zero-shot")
    adapted = evaluate(model, test, adapter=out / "adapter-run" / "adapter", heldout_accents=heldout,
                       target_accent=target, out_dir=out / "adapted", progress=True)
    comparison = adapted.compare(base, target_accent=target)
    comparison.save(out / "comparison", base=base, adapted=adapted)
    log(adapted.format_table(comparison))
    return DemoResult(base, adapted, comparison, out, time.perf_counter() - start)

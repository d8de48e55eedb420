"""Synthetic multi-accent English corpus from the Debian text-to-speech engines.

Each accent is voiced by several engines wherever they exist (US English by flite, RHVoice,
mbrola, espeak, pico and festival; German-accented English by mbrola's German diphones and by
espeak with German phonological transfer rules; ...), so that a model cannot tell the accent
from the engine alone. Every voice is split into pseudo-speakers that differ in pitch,
speaking rate and timbre (vocal-tract length, spectral tilt). Utterances are then augmented
with sox (reverberation, a telephone channel) and with noise mixed at an SNR computed from RMS,
and written as 16 kHz mono FLAC with a ``manifest.jsonl``.

Texts are WordNet 3.0 usage examples (``/usr/share/wordnet/data.*``), split into disjoint
train/dev/test sentence pools; test sentences are the same for every accent so that per-accent
WER compares like with like. Splits are by speaker, and the held-out accents only appear in
split ``test_heldout``.

Everything random derives from ``seed`` and the utterance or speaker id, so a build is
identical for the same arguments whatever the number of workers, and a rerun skips files
already written (file names carry a hash of everything that determines their content).
Install the engines with ``corpora/install_tts.sh``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cache
from pathlib import Path

import soundfile as sf

from ..fileio import atomic_write, atomic_write_text
from .l1_transfer import L1_RULES, L1Rules, apply_l1
from .manifest import Utterance, write_manifest
from .synth_render import SAMPLE_RATE, SYNTH_VERSION, Augment, Job, colored_noise, mix_at_snr, render, synthesise
from .synth_voices import (
    ACCENT_VOICES,
    ENGINE_BINARIES,
    FESTIVAL_DIR,
    INSTALL_HINT,
    MBROLA_DIR,
    PICO_DIR,
    RHVOICE_DIR,
    EngineMissingWarning,
    Speaker,
    SynthError,
    Voice,
    available_voices,
    make_speaker,
    voice_missing,
)

__all__ = [
    "ACCENT_VOICES",
    "ENGINE_BINARIES",
    "FESTIVAL_DIR",
    "INSTALL_HINT",
    "L1_RULES",
    "MBROLA_DIR",
    "PICO_DIR",
    "RHVOICE_DIR",
    "SAMPLE_RATE",
    "SYNTH_VERSION",
    "WORDNET_DIR",
    "Augment",
    "EngineMissingWarning",
    "Job",
    "L1Rules",
    "Speaker",
    "SynthError",
    "Voice",
    "apply_l1",
    "available_voices",
    "build_corpus",
    "check_synth_out",
    "colored_noise",
    "mix_at_snr",
    "plan_corpus",
    "render",
    "sentence_pools",
    "synth_config",
    "synthesise",
    "voice_missing",
    "wordnet_sentences",
]

WORDNET_DIR = Path("/usr/share/wordnet")
# festival starts slowly (~0.35 s); one process synthesises this many utterances.
_FESTIVAL_BATCH = 8


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

_SENTENCE_OK = re.compile(r"[A-Za-z][A-Za-z ,.;:!?'-]*")


@cache
def wordnet_sentences(wordnet_dir: str | os.PathLike = WORDNET_DIR, min_words: int = 5,
                      max_words: int = 20) -> tuple[str, ...]:
    """Distinct WordNet usage examples of ``min_words``-``max_words`` words, sorted.

    The examples are the quoted strings after ``|`` in ``data.*``; ones with digits, brackets
    or other symbols a synthesiser would read out inconsistently are left out.
    """
    files = sorted(Path(wordnet_dir).glob("data.*"))
    if not files:
        raise SynthError(f"no WordNet data files under {wordnet_dir}; install Debian wordnet-base ({INSTALL_HINT})")
    found = set()
    for f in files:
        with open(f, encoding="latin-1") as fh:
            for line in fh:
                if line.startswith(" ") or "|" not in line:
                    continue  # licence header
                for s in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    s = " ".join(s.split()).strip(" ;,")
                    if _SENTENCE_OK.fullmatch(s) and min_words <= len(s.split()) <= max_words:
                        found.add(s)
    return tuple(sorted(found))


def sentence_pools(sentences: Sequence[str], seed: int, dev: float = 0.1, test: float = 0.1) -> dict[str, list[str]]:
    """Shuffle with ``seed`` and cut into disjoint ``train``/``dev``/``test`` pools."""
    s = list(sentences)
    random.Random(f"sentences:{seed}").shuffle(s)
    n_test = max(1, int(len(s) * test))
    n_dev = max(1, int(len(s) * dev))
    return {"test": s[:n_test], "dev": s[n_test:n_test + n_dev], "train": s[n_test + n_dev:]}


# ---------------------------------------------------------------------------------------------
# Plan: utterances, their speakers and augmentation
# ---------------------------------------------------------------------------------------------


def _make_augment(rng: random.Random, p_noise: float, p_reverb: float, p_telephone: float) -> Augment:
    noise = round(rng.uniform(5.0, 25.0), 2) if rng.random() < p_noise else None
    color = rng.choice(("white", "pink", "brown"))
    reverb = None
    if rng.random() < p_reverb:
        reverb = (round(rng.uniform(20, 70)), round(rng.uniform(20, 80)), round(rng.uniform(30, 100)))
    telephone = rng.random() < p_telephone
    return Augment(noise, color if noise is not None else "white", reverb, telephone, round(rng.uniform(-4, 4), 2))


def _interleave_by_engine(speakers: list[Speaker], rng: random.Random) -> list[Speaker]:
    """Shuffle, then alternate engines so that any prefix covers as many engines as possible."""
    by_engine: dict[str, list[Speaker]] = defaultdict(list)
    for s in speakers:
        by_engine[s.voice.engine].append(s)
    engines = sorted(by_engine)
    rng.shuffle(engines)
    for e in engines:
        rng.shuffle(by_engine[e])
    out = []
    while any(by_engine.values()):
        for e in engines:
            if by_engine[e]:
                out.append(by_engine[e].pop())
    return out


def plan_corpus(
    out_dir: str | os.PathLike,
    accents: Sequence[str],
    per_accent: int,
    seed: int = 0,
    heldout: Sequence[str] | None = None,
    speakers_per_voice: int = 2,
    dev: float = 0.1,
    test: float = 0.1,
    augment: bool = True,
    engines: Iterable[str] | None = None,
    sentences: Sequence[str] | None = None,
) -> list[Job]:
    """Decide every utterance of the corpus (no audio yet); see :func:`build_corpus`."""
    accents = list(dict.fromkeys(accents))
    if not accents:
        raise SynthError("no accents given; pass e.g. --accents us,gb,german")
    if per_accent < 1:
        raise SynthError(f"--per-accent must be at least 1, got {per_accent}")
    if speakers_per_voice < 1:
        raise SynthError(f"--speakers-per-voice must be at least 1, got {speakers_per_voice}")
    heldout = [accents[-1]] if heldout is None else list(heldout)
    if bad := [a for a in heldout if a not in accents]:
        raise SynthError(f"held-out accent(s) {bad} are not among --accents {accents}")
    if len(heldout) >= len(accents):
        raise SynthError("every accent is held out; keep at least one accent for training")
    voices = available_voices(accents, engines)
    pools = sentence_pools(sentences if sentences is not None else wordnet_sentences(), seed, dev, test)
    out = Path(out_dir)
    jobs: list[Job] = []
    train_cursor = 0  # training sentences differ across accents; test sentences are shared
    for accent in accents:
        rng = random.Random(f"plan:{seed}:{accent}")
        speakers = [make_speaker(v, k, seed) for v in voices[accent] for k in range(speakers_per_voice)]
        speakers = _interleave_by_engine(speakers, rng)
        if accent in heldout:
            counts = {"test_heldout": per_accent}
            groups = {"test_heldout": speakers}
        else:
            n_test, n_dev = round(per_accent * test), round(per_accent * dev)
            counts = {"train": per_accent - n_test - n_dev, "dev": n_dev, "test": n_test}
            # Speakers per split in proportion to utterances, at least one where a split has utterances.
            n_spk = len(speakers)
            s_test = min(n_test, max(1 if n_test else 0, round(n_spk * test)))
            s_dev = min(n_dev, max(1 if n_dev else 0, round(n_spk * dev)))
            if counts["train"] > 0 and s_test + s_dev >= n_spk:
                if n_spk < 3:
                    s_test = s_dev = 0  # too few speakers to separate: everything trains
                    counts = {"train": per_accent, "dev": 0, "test": 0}
                else:
                    s_test, s_dev = min(s_test, 1), min(s_dev, 1)
            groups = {"test": speakers[:s_test], "dev": speakers[s_test:s_test + s_dev],
                      "train": speakers[s_test + s_dev:]}
        index = 0
        for split, n in counts.items():
            spks = groups[split]
            pool = pools["test" if split == "test_heldout" else split]
            for j in range(n):
                if split == "train":
                    text = pool[train_cursor % len(pool)]
                    train_cursor += 1
                else:
                    text = pool[j % len(pool)]
                uid = f"{accent}-{index:05d}"
                arng = random.Random(f"augment:{seed}:{uid}")
                aug = _make_augment(arng, 0.35, 0.25, 0.15) if augment else Augment()
                job = Job(uid, accent, split, text, spks[j % len(spks)], aug, audio=Path())
                digest = hashlib.sha1(json.dumps(job.spec(), sort_keys=True).encode()).hexdigest()[:10]
                jobs.append(Job(uid, accent, split, text, job.speaker, aug,
                                audio=out / "audio" / accent / f"{uid}_{digest}.flac"))
                index += 1
    return jobs


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def _synthesise_batch(jobs: list[Job]) -> int:
    with tempfile.TemporaryDirectory(prefix="speechtl-synth-") as d:
        tmp = Path(d)
        raws = synthesise(jobs, tmp)
        for job, raw in zip(jobs, raws):
            wav = render(job, raw, tmp)
            # A clip appears whole or not at all: a rerun after an interruption trusts every file it finds.
            atomic_write(job.audio, lambda f, wav=wav: sf.write(f, wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16"),
                         what="the synthetic clip", then="run again to finish the corpus")
    return len(jobs)


def _batches(jobs: list[Job]) -> list[list[Job]]:
    by_voice: dict[tuple, list[Job]] = defaultdict(list)
    singles = []
    for j in jobs:
        if j.speaker.voice.engine == "festival":
            by_voice[(j.speaker.voice.accent, j.speaker.voice.name)].append(j)
        else:
            singles.append([j])
    batches = [v[i:i + _FESTIVAL_BATCH] for v in by_voice.values() for i in range(0, len(v), _FESTIVAL_BATCH)]
    # Slow festival batches first so that they do not finish last on one worker.
    return batches + singles


def build_corpus(
    out_dir: str | os.PathLike,
    accents: Sequence[str],
    per_accent: int,
    seed: int = 0,
    heldout: Sequence[str] | None = None,
    workers: int | None = None,
    speakers_per_voice: int = 2,
    dev: float = 0.1,
    test: float = 0.1,
    augment: bool = True,
    engines: Iterable[str] | None = None,
    progress: bool = True,
    sentences: Sequence[str] | None = None,
) -> list[Utterance]:
    """Synthesise ``per_accent`` utterances for each accent into ``out_dir``; returns the manifest.

    Writes ``out_dir/audio/<accent>/<id>_<hash>.flac`` (16 kHz mono), ``out_dir/manifest.jsonl``
    and ``out_dir/synth_config.json`` (the resolved arguments). ``heldout`` accents (default: the
    last accent; ``[]`` for none) get only split ``test_heldout``; the others are split by
    pseudo-speaker into train/dev/test with ``dev``/``test`` fractions of utterances. Files that
    exist already are kept (rerun after an interruption to finish). ``workers`` defaults to the
    number of CPUs; output does not depend on it.
    """
    if shutil.which("sox") is None:
        raise SynthError(f"program 'sox' not found; {INSTALL_HINT}")
    jobs = plan_corpus(out_dir, accents, per_accent, seed, heldout, speakers_per_voice, dev, test, augment,
                       engines, sentences)
    todo = [j for j in jobs if not j.audio.is_file()]
    workers = max(1, workers or os.cpu_count() or 1)
    from tqdm import tqdm

    # Threads suffice: the work happens in engine and sox subprocesses.
    with (tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="utt", desc="synth", disable=not progress) as bar,
          ThreadPoolExecutor(max_workers=workers) as pool):
        futures = [pool.submit(_synthesise_batch, b) for b in _batches(todo)]
        try:
            for f in as_completed(futures):
                bar.update(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    utts = []
    for j in jobs:
        s = j.speaker
        utts.append(Utterance(
            id=j.id, audio=str(j.audio), text=j.text, speaker=s.id, accent=j.accent,
            duration=round(sf.info(str(j.audio)).duration, 4), split=j.split, lang="en", gender=s.gender,
            corpus="speechtl-synth",
            extra={"engine": s.voice.engine, "voice": s.voice.name + (f"+{s.variant}" if s.variant else ""),
                   **({"l1_rules": s.voice.l1} if s.voice.l1 else {}),
                   "augment": _augment_record(j.augment)},
        ))
    out = Path(out_dir)
    write_manifest(utts, out / "manifest.jsonl")
    config = synth_config(accents, per_accent, seed, heldout, speakers_per_voice, dev, test, augment, engines)
    config["synth_version"] = SYNTH_VERSION
    atomic_write_text(out / "synth_config.json", json.dumps(config, indent=2) + "\n")
    return utts


def _augment_record(a: Augment) -> dict:
    rec: dict = {"gain_db": a.gain_db}
    if a.noise_snr is not None:
        rec.update(noise_snr=a.noise_snr, noise_color=a.noise_color)
    if a.reverb is not None:
        rec["reverb"] = list(a.reverb)
    if a.telephone:
        rec["telephone"] = True
    return rec


def synth_config(accents: Sequence[str], per_accent: int, seed: int = 0, heldout: Sequence[str] | None = None,
                 speakers_per_voice: int = 2, dev: float = 0.1, test: float = 0.1, augment: bool = True,
                 engines: Iterable[str] | None = None) -> dict:
    """The resolved arguments of :func:`build_corpus`, as ``synth_config.json`` records them."""
    accents = list(dict.fromkeys(accents))
    return {"accents": accents, "per_accent": per_accent, "seed": seed,
            "heldout": [accents[-1]] if heldout is None else list(heldout),
            "speakers_per_voice": speakers_per_voice, "dev": dev, "test": test, "augment": augment,
            "engines": None if engines is None else sorted(engines)}


def check_synth_out(out_dir: str | os.PathLike, accents: Sequence[str], per_accent: int, seed: int = 0,
                    heldout: Sequence[str] | None = None, speakers_per_voice: int = 2, dev: float = 0.1,
                    test: float = 0.1, augment: bool = True, engines: Iterable[str] | None = None, *,
                    overwrite: bool = False) -> None:
    """Refuse to build into ``out_dir`` unless it is empty, an interrupted build, or a build with the same settings.

    The settings are :func:`build_corpus`'s. A build with other settings is refused unless
    ``overwrite`` (its clips are then reused by content and its manifest rebuilt).
    """
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise SynthError(f"--out {out} is a file; give a folder")
    if not any(out.iterdir()):
        return
    config_path = out / "synth_config.json"
    if not config_path.is_file():
        if (out / "audio").is_dir():  # an interrupted run: its clips are kept and the rest is made
            return
        raise SynthError(f"--out {out} is not empty and holds no earlier synth output; choose a new folder")
    try:
        before = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        before = {}
    now = synth_config(accents, per_accent, seed, heldout, speakers_per_voice, dev, test, augment, engines)
    changed = [k for k, v in now.items() if before.get(k) != v]
    if changed and not overwrite:
        raise SynthError(f"--out {out} holds a synth corpus made with other {', '.join(changed)}; pass --overwrite "
                         "to rebuild its manifest there, or choose a new folder")

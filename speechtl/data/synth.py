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
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import SpeechtlError
from .manifest import Utterance, write_manifest

SAMPLE_RATE = 16000
# Bump when the synthesis or augmentation chain changes, so old files are not reused.
SYNTH_VERSION = 1
WORDNET_DIR = Path("/usr/share/wordnet")
MBROLA_DIR = Path("/usr/share/mbrola")
RHVOICE_DIR = Path("/usr/share/RHVoice/voices")
FESTIVAL_DIR = Path("/usr/share/festival/voices")
PICO_DIR = Path("/usr/share/pico/lang")
INSTALL_HINT = "run corpora/install_tts.sh as root to install the engines"


class SynthError(SpeechtlError):
    """A synthetic-corpus build that cannot run: no voice for an accent, no sox, an engine failure."""


class EngineMissingWarning(UserWarning):
    """An engine or voice is not installed; its voices are left out of the build."""


@dataclass(frozen=True)
class Voice:
    """One voice of one engine speaking English with ``accent``.

    ``name`` is what the engine calls it (espeak voice, flite voice, RHVoice profile, festival
    voice, pico language). ``l1`` selects phonological transfer rules (espeak only): English
    phonemes are rewritten the way speakers of that first language tend to realise them.
    """

    accent: str
    engine: str
    name: str
    gender: str
    l1: str | None = None

    @property
    def key(self) -> str:
        return f"{self.engine}-{self.name}" + (f"-l1{self.l1}" if self.l1 else "")


def _v(accent: str, engine: str, names: str, gender: str, l1: str | None = None) -> list[Voice]:
    return [Voice(accent, engine, n, gender, l1) for n in names.split()]


# Voices per accent (see RESOURCES.md, "Synthetic accents"). The espeak voices carry no variant:
# each pseudo-speaker picks one (+m3, +f2, ...), which also sets its gender.
ACCENT_VOICES: dict[str, list[Voice]] = {
    "us": _v("us", "flite", "kal16 rms", "m") + _v("us", "flite", "slt", "f")
    + _v("us", "rhvoice", "bdl", "m") + _v("us", "rhvoice", "clb slt", "f")
    + _v("us", "mbrola", "mb-us1", "f") + _v("us", "mbrola", "mb-us2 mb-us3", "m")
    + _v("us", "espeak", "en-us", "m") + _v("us", "pico", "en-US", "f")
    + _v("us", "festival", "kal_diphone ked_diphone", "m") + _v("us", "festival", "cmu_us_slt_arctic_hts", "f"),
    "gb": _v("gb", "mbrola", "mb-en1", "m") + _v("gb", "festival", "rab_diphone don_diphone", "m")
    + _v("gb", "espeak", "en-gb en-gb-x-rp", "m") + _v("gb", "pico", "en-GB", "f"),
    "scottish": _v("scottish", "flite", "awb", "m") + _v("scottish", "rhvoice", "alan", "m")
    + _v("scottish", "espeak", "en-gb-scotland", "m"),
    "german": _v("german", "mbrola", "mb-de1-en", "f") + _v("german", "mbrola", "mb-de2-en", "m")
    + _v("german", "espeak", "en-us en-gb", "m", l1="german"),
    "french": _v("french", "mbrola", "mb-fr1-en", "m") + _v("french", "mbrola", "mb-fr4-en", "f")
    + _v("french", "espeak", "en-us en-gb", "m", l1="french"),
    "russian": _v("russian", "rhvoice", "evgeniy-eng", "m") + _v("russian", "rhvoice", "lyubov", "f")
    + _v("russian", "espeak", "en-us en-gb", "m", l1="russian"),
    # espeak-only dialects: one engine, so a model could learn the engine; use them as extra held-out tests.
    "caribbean": _v("caribbean", "espeak", "en-029", "m"),
    "lancaster": _v("lancaster", "espeak", "en-gb-x-gbclan", "m"),
    "westmidlands": _v("westmidlands", "espeak", "en-gb-x-gbcwmd", "m"),
    "nyc": _v("nyc", "espeak", "en-us-nyc", "m"),
}

ENGINE_BINARIES = {
    "espeak": ("espeak-ng",),
    "mbrola": ("espeak-ng", "mbrola"),
    "flite": ("flite",),
    "festival": ("festival",),
    "rhvoice": ("RHVoice-test",),
    "pico": ("pico2wave",),
}
# Engines whose own speaking-rate control is used (better than time-stretching afterwards).
_NATIVE_RATE = {"espeak", "mbrola", "flite", "festival", "rhvoice"}
_ESPEAK_VARIANTS = {"m": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"), "f": ("f1", "f2", "f3", "f4", "f5")}
# festival starts slowly (~0.35 s); one process synthesises this many utterances.
_FESTIVAL_BATCH = 8


# ---------------------------------------------------------------------------------------------
# Phonological transfer for espeak (L1-accented English from English phonemes)
# ---------------------------------------------------------------------------------------------

# espeak-ng's English phoneme mnemonics with more than one character, longest first.
_EN_MULTI = sorted(
    ["aI@", "aU@", "aI3", "i@3", "eI", "aI", "aU", "OI", "oU", "@U", "I@", "e@", "U@", "A@", "O@", "o@", "3:",
     "A:", "O:", "u:", "i:", "a#", "I#", "I2", "@2", "@5", "@L", "@-", "E2", "tS", "dZ", "n-", "l-", "r-", "t#",
     "d#", "aa"],
    key=len,
    reverse=True,
)
_VOWEL_START = set("aeiouAEIOUV03@")
_STRESS = set("',%=")
_PAUSE = set("_:")


@dataclass(frozen=True)
class L1Rules:
    """How speakers of a first language realise English phonemes (textbook L1-transfer features)."""

    substitute: dict[str, str]
    final_devoicing: bool = False
    final_stress: bool = False  # French: stress moves to the last syllable
    initial_s_voicing: bool = False  # German: "sun" -> [z]un


_DEVOICE = {"b": "p", "d": "t", "g": "k", "z": "s", "v": "f", "dZ": "tS", "Z": "S", "D": "T"}
L1_RULES: dict[str, L1Rules] = {
    # th-stopping/fronting to s/z, w -> v, TRAP -> DRESS, STRUT -> a, final obstruent devoicing.
    "german": L1Rules({"T": "s", "D": "z", "w": "v", "a": "E", "V": "a", "dZ": "tS"}, final_devoicing=True,
                      initial_s_voicing=True),
    # th -> s/z, h-dropping, no lax vowels (KIT -> FLEECE, FOOT -> GOOSE), affricates -> fricatives.
    "french": L1Rules({"T": "s", "D": "z", "h": "", "I": "i:", "I2": "i:", "U": "u:", "tS": "S", "dZ": "Z",
                       "N": "n", "V": "@", "a": "E"}, final_stress=True),
    # th -> s/z, w -> v, h -> velar fricative, KIT -> FLEECE, TRAP -> DRESS, final devoicing.
    "russian": L1Rules({"T": "s", "D": "z", "w": "v", "h": "x", "I": "i:", "I2": "i:", "a": "E", "V": "a", "N": "n",
                        "oU": "O:", "@U": "O:"}, final_devoicing=True),
}


def _tokenize_phonemes(word: str) -> list[str]:
    out, i = [], 0
    while i < len(word):
        for m in _EN_MULTI:
            if word.startswith(m, i):
                out.append(m)
                i += len(m)
                break
        else:
            out.append(word[i])
            i += 1
    return out


def apply_l1(phonemes: str, l1: str) -> str:
    """Rewrite espeak English phoneme mnemonics (words separated by spaces) with ``l1``'s rules."""
    rules = L1_RULES[l1]
    words = []
    for word in phonemes.split():
        toks = _tokenize_phonemes(word)
        if rules.initial_s_voicing and toks and toks[0] == "s":
            following = next((t for t in toks[1:] if t not in _STRESS), "")
            if following[:1] in _VOWEL_START:
                toks[0] = "z"
        toks = [rules.substitute.get(t, t) for t in toks]
        if rules.final_devoicing:
            for j in range(len(toks) - 1, -1, -1):
                if toks[j] and toks[j] not in _STRESS and toks[j] not in _PAUSE:
                    toks[j] = _DEVOICE.get(toks[j], toks[j])
                    break
        if rules.final_stress:
            vowels = [j for j, t in enumerate(toks) if t and t[0] in _VOWEL_START]
            if len(vowels) > 1:
                toks = [t for t in toks if t not in _STRESS]
                vowels = [j for j, t in enumerate(toks) if t and t[0] in _VOWEL_START]
                toks.insert(vowels[-1], "'")
        words.append("".join(toks))
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------


@cache
def _flite_voices() -> frozenset[str]:
    try:
        out = subprocess.run(["flite", "-lv"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(out.split(":", 1)[-1].split())


@cache
def _espeak_voices() -> frozenset[str]:
    try:
        out, mb = (
            subprocess.run(["espeak-ng", arg], check=False, capture_output=True, text=True, timeout=30).stdout
            for arg in ("--voices", "--voices=mb")
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names = set()
    for line in (out + mb).splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.add(cols[1])  # language code, e.g. en-gb-scotland
            names.add(cols[4].rsplit("/", 1)[-1])  # voice file, e.g. mb-de1-en
    return frozenset(names)


def _voice_missing(voice: Voice) -> str | None:
    """Why ``voice`` cannot be used here, or None when it can."""
    for binary in ENGINE_BINARIES[voice.engine]:
        if shutil.which(binary) is None:
            return f"engine {voice.engine!r}: program {binary!r} not found"
    e, n = voice.engine, voice.name
    if e == "mbrola":
        db = re.match(r"mb-([a-z]+\d)", n)
        if db is None or not (MBROLA_DIR / db.group(1) / db.group(1)).is_file():
            return f"mbrola voice {n!r}: no database under {MBROLA_DIR}"
    elif e == "espeak" and n not in _espeak_voices():
        return f"espeak voice {n!r} not found"
    elif e == "flite" and n not in _flite_voices():
        return f"flite voice {n!r} not built in"
    elif e == "rhvoice" and not (RHVOICE_DIR / n).is_dir():
        return f"RHVoice voice {n!r}: no folder {RHVOICE_DIR / n}"
    elif e == "festival" and not any(FESTIVAL_DIR.glob(f"*/{n}")):
        return f"festival voice {n!r}: not under {FESTIVAL_DIR}"
    elif e == "pico" and not (PICO_DIR / f"{n}_ta.bin").is_file():
        return f"pico language {n!r}: no {PICO_DIR / (n + '_ta.bin')}"
    return None


def available_voices(accents: Sequence[str], engines: Iterable[str] | None = None) -> dict[str, list[Voice]]:
    """Installed voices per accent; warns (:class:`EngineMissingWarning`) about each missing one.

    ``engines`` restricts the engines used. Raises :class:`SynthError` for an unknown accent or
    an accent left without any voice.
    """
    allowed = None if engines is None else set(engines)
    if allowed is not None and (unknown := allowed - set(ENGINE_BINARIES)):
        raise SynthError(f"unknown engine(s) {sorted(unknown)}; choose from {', '.join(ENGINE_BINARIES)}")
    out: dict[str, list[Voice]] = {}
    for accent in accents:
        if accent not in ACCENT_VOICES:
            raise SynthError(f"unknown accent {accent!r}; choose from {', '.join(ACCENT_VOICES)}")
        voices = []
        for v in ACCENT_VOICES[accent]:
            if allowed is not None and v.engine not in allowed:
                continue
            why = _voice_missing(v)
            if why:
                warnings.warn(f"{why}; skipping it for accent {accent!r} ({INSTALL_HINT})", EngineMissingWarning,
                              stacklevel=2)
                continue
            voices.append(v)
        if not voices:
            raise SynthError(f"accent {accent!r} has no installed voice; {INSTALL_HINT} or drop the accent")
        out[accent] = voices
    return out


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
# Plan: speakers, utterances, augmentation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    """A pseudo-speaker: a voice with its own pitch, rate and timbre."""

    id: str
    voice: Voice
    gender: str
    variant: str | None  # espeak voice variant (+m3 ...), None for other engines
    pitch: float  # semitones
    rate: float  # speaking-rate factor (>1 faster)
    vtl: float  # vocal-tract length factor applied with sox speed (formants and pitch move together)
    tilt: float  # dB of treble boost (negative: duller voice)


@dataclass(frozen=True)
class Augment:
    noise_snr: float | None = None  # dB, noise mixed at this SNR computed from RMS
    noise_color: str = "white"  # white | pink | brown
    reverb: tuple[float, float, float] | None = None  # sox reverb: reverberance, HF damping, room scale (%)
    telephone: bool = False  # 300-3400 Hz band and 8 kHz sampling
    gain_db: float = 0.0  # level around the -24 dBFS RMS target


@dataclass(frozen=True)
class Job:
    id: str
    accent: str
    split: str
    text: str
    speaker: Speaker
    augment: Augment
    audio: Path = field(compare=False)

    def spec(self) -> dict:
        return {"v": SYNTH_VERSION, "text": self.text, "speaker": asdict(self.speaker), "augment": asdict(self.augment)}


def _make_speaker(voice: Voice, k: int, seed: int) -> Speaker:
    rng = random.Random(f"speaker:{seed}:{voice.accent}:{voice.key}:{k}")
    variant, gender = None, voice.gender
    if voice.engine == "espeak":
        gender = "f" if rng.random() < 0.5 else "m"
        variant = rng.choice(_ESPEAK_VARIANTS[gender])
    return Speaker(
        id=f"{voice.accent}-{voice.key}-{k}",
        voice=voice,
        gender=gender,
        variant=variant,
        pitch=round(rng.uniform(-2.5, 2.5), 3),
        rate=round(rng.uniform(0.88, 1.12), 3),
        vtl=round(rng.uniform(0.94, 1.06), 3),
        tilt=round(rng.uniform(-4.0, 4.0), 2),
    )


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
        speakers = [_make_speaker(v, k, seed) for v in voices[accent] for k in range(speakers_per_voice)]
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
# Synthesis
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, input: str | None = None, timeout: float = 120) -> str:
    try:
        r = subprocess.run(cmd, input=input, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise SynthError(f"{what}: could not run {cmd[0]} ({e})") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise SynthError(f"{what}: {cmd[0]} exited with status {r.returncode}: {' | '.join(tail)}")
    return r.stdout


def _festival_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tts(jobs: list[Job], tmp: Path) -> list[Path]:
    """Synthesise ``jobs`` (all one voice) to raw engine output files; returns their paths."""
    voice = jobs[0].speaker.voice
    outs = [tmp / f"raw{i}.wav" for i in range(len(jobs))]
    if voice.engine == "festival":
        # One festival process for the whole batch: its start-up dominates a single sentence.
        lines = [f"(voice_{voice.name})"]
        for job, o in zip(jobs, outs):
            lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / job.speaker.rate:.4f})")
            lines.append(f"(utt.save.wave (utt.synth (Utterance Text {_festival_string(job.text)})) "
                         f"{_festival_string(str(o))} 'riff)")
        script = tmp / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run(["festival", "-b", str(script)], f"festival voice {voice.name}", timeout=60 + 20 * len(jobs))
    else:
        for job, o in zip(jobs, outs):
            _tts_one(job, o)
    for job, o in zip(jobs, outs):
        if not o.is_file() or o.stat().st_size <= 44:
            raise SynthError(f"{voice.engine} voice {voice.name} produced no audio for {job.id} ({job.text!r})")
    return outs


def _tts_one(job: Job, out: Path) -> None:
    s, v, text = job.speaker, job.speaker.voice, job.text
    what = f"{v.engine} voice {v.name} ({job.id})"
    if v.engine in ("espeak", "mbrola"):
        name = v.name + (f"+{s.variant}" if s.variant else "")
        if v.l1:
            phonemes = _run(["espeak-ng", "-q", "-x", "-v", v.name, "--stdin"], what, input=text)
            # espeak prints one clause per line; a short pause keeps the clause boundary.
            clauses = [apply_l1(line, v.l1) for line in phonemes.splitlines() if line.strip()]
            text = "[[" + " _: ".join(clauses) + "]]"
        _run(["espeak-ng", "-v", name, "-s", str(round(175 * s.rate)), "-w", str(out), "--stdin"], what, input=text)
    elif v.engine == "flite":
        txt = out.with_suffix(".txt")
        txt.write_text(text, encoding="utf-8")
        _run(["flite", "-voice", v.name, "--setf", f"duration_stretch={1.0 / s.rate:.4f}", "-f", str(txt),
              "-o", str(out)], what)
    elif v.engine == "rhvoice":
        _run(["RHVoice-test", "-p", v.name, "-r", str(round(100 * s.rate)), "-o", str(out)], what, input=text)
    elif v.engine == "pico":
        _run(["pico2wave", "-l", v.name, "-w", str(out), "--", text], what)
    else:
        raise SynthError(f"engine {v.engine!r} has no synthesiser")


def _sox(inp: Path, out: Path, effects: list[str], what: str) -> None:
    # -R: repeatable randomness, -D: no dither, so that output is identical run to run.
    _run(["sox", "-R", "-D", str(inp), "-t", "wav", "-e", "floating-point", "-b", "32", str(out), *effects], what)


def _colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise ``(n,)``: white, pink (1/f power) or brown (1/f^2) by shaping a white spectrum."""
    white = rng.standard_normal(n)
    if color != "white":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1] if n > 1 else 1.0
        spec /= f ** (0.5 if color == "pink" else 1.0)
        white = np.fft.irfft(spec, n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` such that RMS(speech) / RMS(g * noise) is ``snr_db`` dB."""
    rms_s = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    rms_n = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    if rms_s == 0.0 or rms_n == 0.0:
        return speech
    g = rms_s / (rms_n * 10 ** (snr_db / 20))
    return (speech + g * noise).astype(np.float32)


def _render(job: Job, raw: Path, tmp: Path) -> np.ndarray:
    """Speaker transform, reverberation, noise, telephone channel and level: 16 kHz mono ``(samples,)``."""
    s, a = job.speaker, job.augment
    what = f"sox for {job.id}"
    tempo = (1.0 if s.voice.engine in _NATIVE_RATE else s.rate) / s.vtl  # speed also shortens by 1/vtl
    cents = 100 * (s.pitch - 12 * math.log2(s.vtl))  # speed also raises pitch by vtl
    effects = ["channels", "1", "highpass", "60"]
    if abs(tempo - 1) > 1e-3:
        effects += ["tempo", "-s", f"{tempo:.4f}"]
    effects += ["pitch", f"{cents:.1f}", "speed", f"{s.vtl:.4f}", "treble", f"{s.tilt:+.2f}"]
    if a.reverb is not None:
        rev, hf, room = a.reverb
        effects += ["pad", "0", "0.3", "reverb", str(rev), str(hf), str(room), "channels", "1"]
    effects += ["rate", "-v", str(SAMPLE_RATE)]
    mid = tmp / f"{job.id}.mid.wav"
    _sox(raw, mid, effects, what)
    wav, _ = sf.read(str(mid), dtype="float32")
    if a.noise_snr is not None:
        nrng = np.random.default_rng(int(hashlib.sha1(job.id.encode()).hexdigest()[:8], 16))
        wav = mix_at_snr(wav, _colored_noise(len(wav), a.noise_color, nrng), a.noise_snr)
    if a.telephone:
        pre, post = tmp / f"{job.id}.tel_in.wav", tmp / f"{job.id}.tel_out.wav"
        sf.write(str(pre), wav, SAMPLE_RATE, subtype="FLOAT")
        _sox(pre, post, ["sinc", "300-3400", "rate", "-v", "8000", "rate", "-v", str(SAMPLE_RATE)], what)
        wav, _ = sf.read(str(post), dtype="float32")
    # Same loudness (with a little spread) for every engine, so that level does not give away the voice.
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    if rms > 0:
        wav = wav * (10 ** ((-24.0 + a.gain_db) / 20) / rms)
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    if peak > 0.98:
        wav = wav * (0.98 / peak)
    return wav.astype(np.float32)


def _write_flac(wav: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".flac", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _synthesise_batch(jobs: list[Job]) -> int:
    with tempfile.TemporaryDirectory(prefix="speechtl-synth-") as d:
        tmp = Path(d)
        raws = _tts(jobs, tmp)
        for job, raw in zip(jobs, raws):
            _write_flac(_render(job, raw, tmp), job.audio)
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
    config = {"accents": list(dict.fromkeys(accents)), "per_accent": per_accent, "seed": seed,
              "heldout": [list(dict.fromkeys(accents))[-1]] if heldout is None else list(heldout),
              "speakers_per_voice": speakers_per_voice, "dev": dev, "test": test, "augment": augment,
              "engines": None if engines is None else sorted(engines), "synth_version": SYNTH_VERSION}
    _write_json(out / "synth_config.json", config)
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


def _write_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)

"""The text-to-speech voices of each synthetic accent, which of them are installed, and pseudo-speakers.

A :class:`Voice` is one engine voice speaking English with an accent; a :class:`Speaker` is a voice
with its own pitch, speaking rate and timbre, so one voice yields several speakers.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import SpeechtlError

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
_ESPEAK_VARIANTS = {"m": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"), "f": ("f1", "f2", "f3", "f4", "f5")}


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


def voice_missing(voice: Voice) -> str | None:
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
            why = voice_missing(v)
            if why:
                warnings.warn(f"{why}; skipping it for accent {accent!r} ({INSTALL_HINT})", EngineMissingWarning,
                              stacklevel=2)
                continue
            voices.append(v)
        if not voices:
            raise SynthError(f"accent {accent!r} has no installed voice; {INSTALL_HINT} or drop the accent")
        out[accent] = voices
    return out


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



def make_speaker(voice: Voice, k: int, seed: int) -> Speaker:
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

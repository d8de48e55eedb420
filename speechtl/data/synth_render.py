"""Rendering one planned utterance: engine synthesis, speaker transform, augmentation, level.

:func:`synthesise` runs the engine of a batch of jobs (one voice) to raw audio; :func:`render`
turns one raw file into the 16 kHz mono clip of the corpus with sox and numpy.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ..augment import colored_noise, mix_at_snr
from .l1_transfer import apply_l1
from .synth_voices import Speaker, SynthError

SAMPLE_RATE = 16000
# Bump when the synthesis or augmentation chain changes, so old files are not reused.
SYNTH_VERSION = 1
# Engines whose own speaking-rate control is used (better than time-stretching afterwards).
_NATIVE_RATE = {"espeak", "mbrola", "flite", "festival", "rhvoice"}


@dataclass(frozen=True)
class Augment:
    """The channel an utterance is heard through: noise, reverberation, a telephone band, a level."""

    noise_snr: float | None = None  # dB, noise mixed at this SNR computed from RMS
    noise_color: str = "white"  # white | pink | brown
    reverb: tuple[float, float, float] | None = None  # sox reverb: reverberance, HF damping, room scale (%)
    telephone: bool = False  # 300-3400 Hz band and 8 kHz sampling
    gain_db: float = 0.0  # level around the -24 dBFS RMS target


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise; everything but ``audio`` (where its clip goes) determines the clip's bytes."""

    id: str
    accent: str
    split: str
    text: str
    speaker: Speaker
    augment: Augment
    audio: Path = field(compare=False)

    def spec(self) -> dict:
        return {"v": SYNTH_VERSION, "text": self.text, "speaker": asdict(self.speaker), "augment": asdict(self.augment)}


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


def synthesise(jobs: list[Job], tmp: Path) -> list[Path]:
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


def render(job: Job, raw: Path, tmp: Path) -> np.ndarray:
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
        wav = mix_at_snr(wav, colored_noise(len(wav), a.noise_color, nrng), a.noise_snr)
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

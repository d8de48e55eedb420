"""Audio input: any file soundfile reads, as mono float32 at the rate a backbone wants."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError

DEFAULT_MAX_SECONDS = 600.0


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read ``path`` as a mono float32 waveform ``(samples,)`` at ``sample_rate``.

    Multi-channel audio is averaged to mono; other rates are resampled (soxr, via librosa).
    ``offset``/``duration`` (seconds) read a segment. Raises :class:`AudioError` naming the
    file when it is missing, not a file, undecodable, empty, holds NaN/inf samples, or is
    longer than ``max_seconds`` (``None`` for no limit).
    """
    p = Path(path)
    info = probe(p)
    native_rate = info.samplerate
    total = info.frames / native_rate if native_rate else 0.0
    if duration is None and max_seconds is not None and total - offset > max_seconds:
        raise AudioError(
            f"{p}: {total:.1f} s long, over the {max_seconds:g} s limit; split it into shorter "
            "segments (or raise max_seconds)"
        )
    start = int(round(offset * native_rate))
    stop = None if duration is None else start + int(round(duration * native_rate))
    try:
        wav, _ = sf.read(str(p), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{p}: cannot decode audio ({describe_error(e)}); the file may be truncated or "
                         "corrupt") from None
    if wav.shape[0] == 0:
        raise AudioError(f"{p}: holds no samples (empty audio); remove it from the input")
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(f"{p}: contains NaN or infinite samples; the file is corrupt, re-export it")
    if native_rate != sample_rate:
        wav = resample(wav, native_rate, sample_rate)
    return np.ascontiguousarray(wav, dtype=np.float32)


def probe(path: str | os.PathLike):
    """The soundfile header of ``path``, after the checks every reader makes; raises :class:`AudioError`."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such audio file; check the path (relative paths in a manifest are read from "
                         "its folder)")
    if not p.is_file():
        raise AudioError(f"{p}: is not a file (a folder?); give the path of a sound file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: is an empty file (0 bytes); re-export it, or remove it from the input")
    try:
        return sf.info(str(p))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with varying text
        raise AudioError(f"{p}: cannot decode audio ({describe_error(e)}); re-export it as wav/flac/ogg") from None


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform ``(samples,)`` with soxr's high-quality filter."""
    if orig_rate == target_rate:
        return wav
    import librosa  # deferred: librosa's import costs ~1 s

    return librosa.resample(wav, orig_sr=orig_rate, target_sr=target_rate, res_type="soxr_hq").astype(np.float32)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header, without decoding; raises :class:`AudioError`."""
    info = probe(path)
    return info.frames / info.samplerate if info.samplerate else 0.0


def describe_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:160] if text else type(e).__name__

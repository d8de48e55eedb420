"""Waveform augmentation, for training batches and for the synthetic corpus alike.

:func:`perturb` draws a speed factor and a white-noise SNR per clip (``speed_perturb`` and
``noise_snr`` of ``speechtl-adapt``, see :func:`augmentation`); :func:`mix_at_snr` and
:func:`colored_noise` are the noise it mixes in, and what the synthetic corpus uses for its
channels. Masks on spectrograms or features are :mod:`speechtl.specaug`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .audio import resample
from .errors import SpeechtlError


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
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


def perturb(wav: np.ndarray, rate: int, rng: np.random.Generator, *, speed_factors: Sequence[float] | None = None,
            noise_snr: tuple[float, float] | None = None) -> np.ndarray:
    """``wav`` ``(samples,)`` at ``rate`` played at one of ``speed_factors`` and mixed with white noise at an
    SNR drawn uniformly from ``noise_snr`` (dB), both drawn from ``rng``."""
    if speed_factors:
        factor = float(speed_factors[rng.integers(len(speed_factors))])
        if factor != 1.0:
            # Read as if recorded at rate*factor, then bring back to rate: 1/factor as long.
            wav = resample(wav, round(rate * factor), rate)
    if noise_snr:
        snr = float(rng.uniform(*noise_snr))
        wav = mix_at_snr(wav, rng.standard_normal(len(wav)).astype(np.float32), snr)
    return wav


def augmentation(data_config: Any) -> dict[str, Any]:
    """:class:`AudioDataset` augmentation arguments from a ``DataConfig``'s ``speed_perturb`` and ``noise_snr``."""
    snr = [float(x) for x in data_config.noise_snr]
    if len(snr) > 2 or (len(snr) == 2 and snr[0] > snr[1]):
        raise SpeechtlError(f"noise_snr={snr}: give one SNR in dB (noise_snr=20) or a low,high range "
                            "(noise_snr=10,30)")
    return {"speed_perturb": list(data_config.speed_perturb) or None,
            "noise_snr": (snr[0], snr[1]) if len(snr) == 2 else snr[0] if snr else None}

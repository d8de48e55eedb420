from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPEECHTL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real accented speech); tests that need it skip on a plain clone."""
    if not (SHARED_DATA / "real" / "manifest.jsonl").is_file():
        pytest.skip(f"real speech not found at {SHARED_DATA} (set SPEECHTL_SHARED_DATA to a copy of shared/data)")
    return SHARED_DATA


@pytest.fixture
def sine_wav(tmp_path):
    """Write a short mono sine wave and return its path (16 kHz, 1 s)."""
    import numpy as np
    import soundfile as sf

    def make(seconds: float = 1.0, rate: int = 16000, channels: int = 1, name: str = "tone.wav") -> Path:
        t = np.arange(int(seconds * rate)) / rate
        wav = 0.3 * np.sin(2 * np.pi * 220 * t).astype("float32")
        if channels > 1:
            wav = np.stack([wav] * channels, axis=1)
        path = tmp_path / name
        sf.write(path, wav, rate)
        return path

    return make

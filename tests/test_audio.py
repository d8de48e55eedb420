import numpy as np
import pytest
import soundfile as sf

from speechtl import load_audio
from speechtl.errors import AudioError


def test_reads_mono_float32_at_target_rate(sine_wav):
    wav = load_audio(sine_wav(1.0, rate=22050), 16000)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) <= 1


def test_stereo_is_averaged(sine_wav):
    mono = load_audio(sine_wav(0.5, name="m.wav"))
    stereo = load_audio(sine_wav(0.5, channels=2, name="s.wav"))
    np.testing.assert_allclose(mono, stereo, atol=1e-4)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_formats(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, np.zeros(8000, dtype="float32") + 0.01, 16000, format=fmt)
    assert len(load_audio(path)) == 8000


def test_segment(sine_wav):
    wav = load_audio(sine_wav(2.0), offset=0.5, duration=1.0)
    assert len(wav) == 16000


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such audio file") as e:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(e.value)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="bad.wav: cannot decode"):
        load_audio(bad)


def test_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioError, match="empty.wav: holds no samples"):
        load_audio(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.flac"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.flac"):
        load_audio(path)


def test_non_finite_samples(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.zeros(1600, dtype="float32")
    data[10] = np.nan
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_too_long(sine_wav):
    with pytest.raises(AudioError, match="over the 1 s limit"):
        load_audio(sine_wav(2.0), max_seconds=1.0)
    assert len(load_audio(sine_wav(2.0, name="b.wav"), max_seconds=None)) == 32000

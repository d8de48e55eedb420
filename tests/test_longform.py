"""Voice-activity detection, long recordings cut into segments, subtitles, and long-form transcription."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

import speechtl
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.segments import Segment, Transcript, open_source, plan_segments
from speechtl.subtitles import timestamp, to_srt, to_vtt
from speechtl.vad import VadOptions, speech_probabilities, speech_spans

RATE = 16000
SENTENCES = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "She sells sea shells by the sea shore every summer morning.",
             "A journey of a thousand miles begins with a single step forward.",
             "Please call Stella and ask her to bring these things with her from the store."]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[np.ndarray]:
    """Four sentences spoken by espeak-ng, at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (corpora/install_apt.sh installs it)")
    from speechtl.audio import load_audio

    folder = tmp_path_factory.mktemp("spoken")
    out = []
    for i, text in enumerate(SENTENCES):
        path = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
        out.append(load_audio(path, RATE))
    return out


def recording(spoken, gaps_s, repeat=1):
    """Sentences separated by silences of known length; returns (audio, [(start, end) of each sentence])."""
    parts, spans, t = [], [], 0
    for k in range(repeat):
        for i, w in enumerate(spoken):
            gap = np.zeros(int(gaps_s[(k * len(spoken) + i) % len(gaps_s)] * RATE), np.float32)
            parts += [gap, w]
            spans.append((t + len(gap), t + len(gap) + len(w)))
            t += len(gap) + len(w)
    parts.append(np.zeros(RATE, np.float32))
    return np.concatenate(parts), spans


def test_streamed_probabilities_equal_faster_whispers_whole_array(spoken):
    from faster_whisper.vad import get_vad_model

    audio, _ = recording(spoken, [0.7, 1.9])
    padded = np.pad(audio, (0, -len(audio) % 512))
    reference = get_vad_model()(padded.copy()).reshape(-1)
    blocks = [audio[i : i + 12_345] for i in range(0, len(audio), 12_345)]  # blocks that split windows
    probs, total = speech_probabilities(blocks)
    assert total == len(audio) and len(probs) == len(reference)
    np.testing.assert_allclose(probs[:-1], reference[:-1], atol=1e-5)  # its last window has zeroed context


def test_speech_spans_match_faster_whisper_and_cover_each_sentence(spoken):
    from faster_whisper.vad import VadOptions as FwOptions
    from faster_whisper.vad import get_speech_timestamps

    audio, truth = recording(spoken, [1.0, 2.5, 0.8, 3.0])
    probs, total = speech_probabilities([audio])
    spans = speech_spans(probs, total, VadOptions())
    ref = get_speech_timestamps(audio, FwOptions(max_speech_duration_s=30, min_silence_duration_ms=160))
    assert spans == [(r["start"], r["end"]) for r in ref]
    for a, b in truth:  # every sentence lies inside the detected speech
        assert any(s <= a + 0.1 * RATE and b - 0.1 * RATE <= e for s, e in spans), (a, b, spans)
    assert speech_spans(*speech_probabilities([np.zeros(5 * RATE, np.float32)])) == []


def test_speechtl_vad_model_names_a_verified_copy(monkeypatch, tmp_path):
    from speechtl import vad
    from speechtl.errors import SpeechtlError

    copy = tmp_path / "silero_vad_v6.onnx"
    shutil.copyfile(vad.model_path(), copy)
    monkeypatch.setenv("SPEECHTL_VAD_MODEL", str(copy))
    assert vad.model_path() == copy
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.onnx"  # a new path: the once-per-process check cannot have seen it
    damaged.write_bytes(bytes(data))
    monkeypatch.setenv("SPEECHTL_VAD_MODEL", str(damaged))
    with pytest.raises(SpeechtlError, match="not the Silero VAD v6 model"):
        vad.model_path()
    monkeypatch.setenv("SPEECHTL_VAD_MODEL", str(tmp_path / "missing.onnx"))
    with pytest.raises(SpeechtlError, match="SPEECHTL_VAD_MODEL=.*no such file"):
        vad.model_path()


def test_a_long_recording_is_cut_at_silences_into_segments_of_at_most_30_s(spoken, tmp_path):
    audio, truth = recording(spoken, [1.0, 2.0, 4.0, 1.5], repeat=4)  # about 75 s
    assert len(audio) > 60 * RATE
    path = tmp_path / "long.flac"
    sf.write(path, audio, RATE)
    segs = plan_segments(open_source(path, RATE, None))
    assert len(segs) >= 2
    for seg in segs:  # at most 30 s of speech each, the silence between its regions left out
        assert seg.speech and 0 < seg.samples <= 30 * RATE and seg.samples < seg.end - seg.start
    pieces = [p for seg in segs for p in seg.pieces]
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(pieces, pieces[1:]))
    for a, b in truth:  # every sentence lies whole inside one piece
        assert sum(1 for s, e in pieces if s <= a and b <= e) == 1, (a, b)
    quiet = (truth[1][1] + RATE // 2, truth[2][0] - RATE // 2)  # inside the 4-s pause before sentence 3
    assert quiet[1] - quiet[0] >= 2.9 * RATE
    assert not any(s < quiet[1] and quiet[0] < e for s, e in pieces)


def test_a_speech_region_longer_than_a_segment_is_split_not_cut(spoken, tmp_path):
    audio, _ = recording(spoken, [0.05], repeat=4)  # about 45 s with no pause the detector would cut at
    src = open_source(audio, RATE, None)
    vad = VadOptions(max_speech_s=120, min_silence_ms=2000)
    (region,) = speech_spans(*speech_probabilities([audio]), vad)
    assert region[1] - region[0] > 35 * RATE
    segs = plan_segments(src, vad=vad)
    assert len(segs) >= 2 and all(seg.samples <= 30 * RATE for seg in segs)
    assert segs[0].start == region[0] and segs[-1].end == region[1]
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))  # nothing between them is dropped


def test_reading_in_blocks_resamples_like_reading_whole(spoken, tmp_path):
    import librosa

    audio, _ = recording(spoken, [1.0])
    wav44 = librosa.resample(audio, orig_sr=RATE, target_sr=44100).astype(np.float32)
    path = tmp_path / "hi.wav"
    sf.write(path, np.stack([wav44, wav44], 1), 44100)
    src = open_source(path, RATE, None)
    streamed = np.concatenate(list(src.blocks(seconds=1.3)))
    whole = speechtl.load_audio(path, RATE)
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    assert np.corrcoef(streamed[:n], whole[:n])[0, 1] > 0.999


def test_long_form_transcription_returns_ordered_segments_with_times(spoken, tmp_path):
    audio, _ = recording(spoken, [1.0, 2.0, 4.0, 1.5], repeat=4)
    path = tmp_path / "long.wav"
    sf.write(path, audio, RATE, subtype="FLOAT")  # the same samples as the waveform below
    (t,) = speechtl.transcribe("whisper-tiny-random", [path], return_segments=True, batch_size=2)
    assert t.duration == pytest.approx(len(audio) / RATE, abs=0.01)
    assert len(t.segments) >= 3
    assert all(0 <= s.start < s.end <= t.duration for s in t.segments)
    assert all(a.end <= b.start for a, b in zip(t.segments, t.segments[1:]))
    assert t.text == " ".join(s.text for s in t.segments if s.text)
    # The same recording given as a waveform is cut and decoded the same way.
    (w,) = speechtl.transcribe("whisper-tiny-random", [audio], return_segments=True, batch_size=3)
    assert [(s.start, s.end, s.text) for s in w.segments] == [(s.start, s.end, s.text) for s in t.segments]


def test_a_silent_recording_has_no_segments_and_no_words(tmp_path):
    path = tmp_path / "quiet.flac"
    sf.write(path, np.zeros(45 * RATE, np.float32), RATE)
    (t,) = speechtl.transcribe("whisper-tiny-random", [path], return_segments=True)
    assert t.text == "" and t.segments == []


def test_over_the_limit_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(5 * RATE, np.float32), RATE)
    with pytest.raises(speechtl.AudioError, match="long.flac.*over the 4 s limit"):
        speechtl.transcribe("whisper-tiny-random", [path], max_seconds=4)


def test_subtitles_render_each_segment_as_a_cue():
    t = Transcript("a b", [Segment(0.0, 2.5, "Hello there."), Segment(3661.5, 3663.25, ""),
                           Segment(3670.0, 3671.0, "Bye --> now")], 3700.0)
    assert timestamp(3661.5, ",") == "01:01:01,500"
    assert to_srt(t) == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                         "2\n01:01:10,000 --> 01:01:11,000\nBye -> now\n")
    assert to_vtt(t) == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
                         "01:01:10.000 --> 01:01:11.000\nBye -> now\n")


def test_cli_srt_json_and_out_dir(spoken, tmp_path, capsys):
    audio, _ = recording(spoken, [1.0, 2.0, 4.0], repeat=3)
    a, b = tmp_path / "a.flac", tmp_path / "b.wav"
    sf.write(a, audio, RATE)
    sf.write(b, audio[: 5 * RATE], RATE)
    assert transcribe_main(["whisper-tiny-random", str(a), "--srt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1\n00:00:") and " --> " in out
    assert transcribe_main(["whisper-tiny-random", str(a), str(b), "--json", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(a), str(b)]
    assert len(rows[0]["segments"]) >= 2 and rows[0]["duration"] > 40
    assert {"start", "end", "text", "avg_logprob", "no_speech_prob", "temperature"} <= set(rows[0]["segments"][0])
    assert transcribe_main(["whisper-tiny-random", str(a), str(b), "--vtt"]) == 2
    assert "--out-dir" in capsys.readouterr().err
    subs = tmp_path / "subs"
    assert transcribe_main(["whisper-tiny-random", str(a), str(b), "--vtt", "--out-dir", str(subs),
                            "--no-progress"]) == 0
    assert sorted(p.name for p in subs.iterdir()) == ["a.vtt", "b.vtt"]
    assert (subs / "a.vtt").read_text().startswith("WEBVTT\n\n00:00:")
    assert transcribe_main(["whisper-tiny-random", str(a), "--vtt", "--out-dir", str(subs)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_whisper_tiny_en_says_nothing_on_silence_and_noise(spoken, monkeypatch):
    """Zero-shot tiny.en turns 5 s of silence into "you"; the detector and the no-speech probability stop it.
    The detector runs on a clip only where the model's no-speech probability asks, never on a spoken one."""
    from speechtl import transcription

    asked, real = [], transcription.speech_bounds
    monkeypatch.setattr(transcription, "speech_bounds", lambda w, opts: asked.append(len(w)) or real(w, opts))
    rng = np.random.default_rng(0)
    quiet = [np.zeros(5 * RATE, np.float32), (0.003 * rng.standard_normal(5 * RATE)).astype(np.float32),
             np.zeros(70 * RATE, np.float32)]
    out = speechtl.transcribe("whisper-tiny.en", [*quiet, spoken[0]], progress=False, return_segments=True)
    assert [t.text for t in out[:3]] == ["", "", ""] and "lazy dog" in out[3].text.lower()
    assert asked == [5 * RATE, 5 * RATE]  # the two quiet clips; the long one went through the detector whole
    assert [t.segments[0].speech for t in out[:2]] == [False, False] and out[2].segments == []
    assert out[3].segments[0].speech is None  # the model heard speech: the detector was not asked


@pytest.mark.slow
def test_whisper_tiny_en_fallback_samples_real_speech(spoken):
    """Sampling from the first temperature on (every clip goes through the fallback's sampling path)."""
    from speechtl.decoding import DecodeOptions

    opts = DecodeOptions(temperatures=(0.4, 0.8), best_of=2)
    out = speechtl.transcribe("whisper-tiny.en", spoken[:2], decode_options=opts, return_segments=True)
    assert all(t.segments[0].temperature > 0 for t in out)
    assert all("<|" not in t.text for t in out)
    assert "fox" in out[0].text.lower() and "sea" in out[1].text.lower()  # words of the speech, not noise

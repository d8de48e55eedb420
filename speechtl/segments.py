"""Long-form audio: read in blocks, cut at silences into segments of at most 30 s, each with its times.

A clip of up to ``max_segment_seconds`` is one segment, decoded whole (as Whisper was trained).
A longer recording is streamed once through the voice-activity detector (:mod:`speechtl.vad`),
block by block, never held whole; its speech regions are merged in order into segments of at
most ``max_segment_seconds``, and each segment's audio is read from the file only when its batch
is decoded. Silence between segments is never decoded, so it yields no words.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from .audio import audio_duration, describe_error, load_audio
from .errors import AudioError
from .vad import VadOptions, speech_probabilities, speech_spans

MAX_SEGMENT_SECONDS = 30.0
LONG_FORM_LIMIT = 4 * 3600.0  # seconds: the documented limit of one input
BLOCK_SECONDS = 60.0


@dataclass
class Segment:
    """A stretch of one input, in seconds from its start, and what was decoded there.

    Attributes:
        start, end: the segment's times (seconds).
        text: its transcript (empty for silence).
        avg_logprob, no_speech_prob, compression_ratio, temperature: the decoder's evidence
            (see :mod:`speechtl.decoding`); the temperature says whether the fallback resampled it.
        speech: whether voice-activity detection found speech in it; None where it was not asked: a
            clip (one segment) whose no-speech probability stayed below its threshold, or a CTC model's.
    """

    start: float
    end: float
    text: str = ""
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    speech: bool | None = True

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        for k in ("start", "end"):
            row[k] = round(row[k], 3)
        for k in ("avg_logprob", "no_speech_prob", "compression_ratio"):
            if row[k] is not None:
                row[k] = round(row[k], 4) if math.isfinite(row[k]) else None  # JSON has no infinity
        return row


@dataclass
class Transcript:
    """One input's transcript: the segments' texts joined, the segments, the route it took, and
    whether Whisper encoded it at its own length (``short_clips``; False: padded to 30 s; None: CTC)."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    route: Any = None
    short_clips: bool | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"text": self.text, "duration": round(self.duration, 3),
                               "segments": [s.to_json() for s in self.segments]}
        if self.route is not None:
            row.update(self.route.to_json())
        if self.short_clips is not None:
            row["short_clips"] = self.short_clips
        return row


@dataclass
class Source:
    """One input: a file (read on demand) or a waveform in memory, at ``sample_rate``."""

    item: str | os.PathLike | np.ndarray
    sample_rate: int
    duration: float

    @property
    def name(self) -> str:
        return "<waveform>" if isinstance(self.item, np.ndarray) else str(self.item)

    def read_pieces(self, pieces: tuple[tuple[int, int], ...]) -> np.ndarray:
        """The samples of each ``(start, end)``, joined."""
        parts = [self.read(a, b) for a, b in pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Samples ``[start, end)`` (at ``sample_rate``) as float32."""
        if isinstance(self.item, np.ndarray):
            return self.item[start:end]
        offset = start / self.sample_rate
        duration = None if end is None else (end - start) / self.sample_rate
        return load_audio(self.item, self.sample_rate, max_seconds=None, offset=offset, duration=duration)

    def blocks(self, seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """Consecutive mono blocks at ``sample_rate`` (streamed and resampled from a file)."""
        if isinstance(self.item, np.ndarray):
            step = int(seconds * self.sample_rate)
            for i in range(0, len(self.item), step):
                yield self.item[i : i + step]
            return
        path = str(self.item)
        try:
            native = sf.info(path).samplerate
            resampler = None
            if native != self.sample_rate:
                import soxr  # librosa's resampler; its stream keeps the filter state across blocks

                resampler = soxr.ResampleStream(native, self.sample_rate, 1, dtype="float32", quality="HQ")
            blocks = sf.blocks(path, blocksize=int(seconds * native), dtype="float32", always_2d=True)
            for block in blocks:
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise AudioError(f"{path}: contains NaN or infinite samples; the file is corrupt, re-export it")
                yield resampler.resample_chunk(mono) if resampler is not None else mono
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        except AudioError:
            raise
        except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with varying text
            raise AudioError(f"{path}: cannot decode audio ({describe_error(e)}); the file may be truncated or "
                             "corrupt") from None


def open_source(item: str | os.PathLike | np.ndarray, sample_rate: int, max_seconds: float | None) -> Source:
    """Check one input (it exists, decodes, is within ``max_seconds``) without reading its samples."""
    if isinstance(item, np.ndarray):
        wave = np.asarray(item, dtype=np.float32)
        if wave.ndim != 1 or len(wave) == 0:
            raise AudioError(f"a waveform input has shape {wave.shape}; give a non-empty mono array (samples,)")
        duration = len(wave) / sample_rate
        src = Source(wave, sample_rate, duration)
    else:
        duration = audio_duration(item)
        src = Source(item, sample_rate, duration)
        if duration == 0:
            load_audio(item, sample_rate)  # raises the empty-audio error naming the file
    if max_seconds is not None and src.duration > max_seconds:
        raise AudioError(f"{src.name}: {src.duration:.1f} s long, over the {max_seconds:g} s limit of one input; "
                         "split it (or raise max_seconds / --max-seconds)")
    return src


@dataclass(frozen=True)
class Planned:
    """One segment to decode: the speech regions ``pieces`` (samples) whose audio, joined, it is.

    ``speech``: whether the detector found speech; long-form segments hold speech by construction,
    and a clip's is None: the detector runs on it only when the model's no-speech probability asks
    (:func:`speechtl.vad.speech_bounds`), which spares it on every clip of ordinary speech.
    """

    pieces: tuple[tuple[int, int], ...]
    speech: bool | None = True

    @property
    def start(self) -> int:
        return self.pieces[0][0]

    @property
    def end(self) -> int:
        return self.pieces[-1][1]

    @property
    def samples(self) -> int:
        return sum(b - a for a, b in self.pieces)


def plan_segments(src: Source, *, max_segment_seconds: float = MAX_SEGMENT_SECONDS,
                  vad: VadOptions | None = None) -> list[Planned]:
    """One segment for a short clip; for a long recording, its speech regions in order, packed into
    segments of at most ``max_segment_seconds`` of speech.

    The silence between the regions of a segment is left out of its audio (as faster-whisper's
    batched mode does), so each 30-s window the encoder runs is filled with speech; a segment's
    times are those of its first and last region. A clip in memory (``src.item`` a waveform) is
    not run through the detector here (its ``speech`` is None; see :class:`Planned`).
    """
    limit = int(max_segment_seconds * src.sample_rate)
    if isinstance(src.item, np.ndarray) and len(src.item) <= limit:
        return [Planned(((0, len(src.item)),), None)]
    probs, total = speech_probabilities(src.blocks())
    spans = speech_spans(probs, total, vad or VadOptions(max_speech_s=max_segment_seconds))
    if total <= limit:
        return [Planned(((0, total),), bool(spans))]
    pieces = []
    for start, end in spans:  # a region longer than a segment (VAD options allowing it) is split, not cut
        pieces += [(a, min(a + limit, end)) for a in range(start, end, limit)]
    segments: list[list[tuple[int, int]]] = []
    for piece in pieces:
        if segments and sum(b - a for a, b in segments[-1]) + piece[1] - piece[0] <= limit:
            if segments[-1][-1][1] == piece[0]:  # touching regions: one piece
                segments[-1][-1] = (segments[-1][-1][0], piece[1])
            else:
                segments[-1].append(piece)
        else:
            segments.append([piece])
    return [Planned(tuple(seg)) for seg in segments]


def join_texts(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)


"""Subtitle files from transcripts: SubRip (``.srt``) and WebVTT (``.vtt``), one cue per segment."""

from __future__ import annotations

from .segments import Transcript


def timestamp(seconds: float, sep: str) -> str:
    """``HH:MM:SS<sep>mmm`` (``,`` for SRT, ``.`` for WebVTT)."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(t: Transcript) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text.replace("-->", "->")) for s in t.segments if s.text.strip()]


def to_srt(t: Transcript) -> str:
    blocks = [f"{i}\n{timestamp(a, ',')} --> {timestamp(b, ',')}\n{text}\n" for i, (a, b, text) in
              enumerate(_cues(t), 1)]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = [f"{timestamp(a, '.')} --> {timestamp(b, '.')}\n{text}\n" for a, b, text in _cues(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


RENDERERS = {"srt": to_srt, "vtt": to_vtt}

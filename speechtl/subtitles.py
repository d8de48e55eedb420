"""Subtitle files from transcripts: SubRip (``.srt``) and WebVTT (``.vtt``), one cue per segment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import SpeechtlError
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


def subtitle_paths(files: Sequence[str], fmt: str, out_dir: str | None = None,
                   overwrite: bool = False) -> dict[str, Path]:
    """Where each input's subtitles go with ``--out-dir``: ``out_dir/<stem>.<fmt>``; empty for standard output.

    Refuses an ``out_dir`` for a format that is not subtitles, several inputs on standard output,
    two inputs that would write one file, and existing files unless ``overwrite``.
    """
    kind = fmt if fmt in RENDERERS else None
    if out_dir and not kind:
        raise SpeechtlError("--out-dir is for --srt or --vtt; without them transcripts print to stdout")
    if not kind:
        return {}
    if not out_dir:
        if len(files) > 1:
            raise SpeechtlError(f"--{kind} with {len(files)} files: give --out-dir DIR to write one file each")
        return {}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpeechtlError(f"--out-dir {out} is a file; give a folder")
    targets = {f: out / f"{Path(f).stem}.{kind}" for f in files}
    seen: dict[Path, str] = {}
    for f, t in targets.items():
        if t in seen:
            raise SpeechtlError(f"{f} and {seen[t]} would both write {t}; transcribe them in separate runs")
        seen[t] = f
        if t.exists() and not overwrite:
            raise SpeechtlError(f"{t} already exists; pass --overwrite to replace it")
    return targets

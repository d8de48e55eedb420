"""CSTR VCTK: read speech of 110 English speakers with a variety of native accents."""

from __future__ import annotations

import os

from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, parse_gender, read_lines, require_dir, require_file


def import_vctk(src: str | os.PathLike, *, mic: str = "mic1", durations: bool = True) -> list[Utterance]:
    """CSTR VCTK: ``speaker-info.txt`` + ``txt/<spk>/<spk>_<nnn>.txt`` + audio.

    Audio from ``wav48_silence_trimmed/<spk>/<spk>_<nnn>_<mic>.flac`` (release 0.92) or
    ``wav48/<spk>/<spk>_<nnn>.wav`` (older releases). Accent is the ACCENTS column; REGION is
    kept as ``region``. Recordings without a transcript (speaker p315, a few others) are skipped.
    """
    root = require_dir(src, "VCTK")
    info = require_file(root / "speaker-info.txt", "VCTK", "speaker-info.txt")
    speakers: dict[str, dict[str, str]] = {}
    for lineno, line in read_lines(info):
        f = line.split()
        if lineno == 1 and f and f[0].upper() == "ID":
            continue
        if len(f) < 4:
            raise CorpusImportError(f"{info}:{lineno}: expected 'ID AGE GENDER ACCENTS [REGION]', got {line.strip()!r}")
        spk = f[0] if not f[0].isdigit() else f"p{f[0]}"  # releases before 0.92 drop the "p"
        speakers[spk] = {"age": f[1], "gender": f[2], "accent": f[3], "region": " ".join(f[4:])}
    if (root / "wav48_silence_trimmed").is_dir():
        audio_dir, pattern = root / "wav48_silence_trimmed", "{spk}/{stem}_" + mic + ".flac"
    elif (root / "wav48").is_dir():
        audio_dir, pattern = root / "wav48", "{spk}/{stem}.wav"
    else:
        raise CorpusImportError(f"{root}: no wav48_silence_trimmed/ or wav48/ folder; give the VCTK corpus folder")
    txt_dir = require_dir(root / "txt", "VCTK")
    utts = []
    for spk in sorted(speakers):
        for txt in sorted((txt_dir / spk).glob("*.txt")):
            audio = audio_dir / pattern.format(spk=spk, stem=txt.stem)
            if not audio.is_file():
                continue
            s = speakers[spk]
            extra = {"region": s["region"]} if s["region"] else {}
            utts.append(Utterance(
                id=f"vctk_{txt.stem}", audio=str(audio), text=txt.read_text(encoding="utf-8").strip(), speaker=spk,
                accent=s["accent"], lang="en", gender=parse_gender(s["gender"]), age=s["age"], corpus="vctk", extra=extra,
            ))
    return fill_durations(utts, durations)

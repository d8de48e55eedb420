"""The ARCTIC read-speech family: L2-ARCTIC (non-native speakers) and CMU ARCTIC, with their speaker tables."""

from __future__ import annotations

import os
import re
import warnings

from ..manifest import Utterance
from .files import CorpusImportError, fill_durations, read_lines, require_dir, require_file

# L2-ARCTIC v5: 24 speakers, four per first language, two women and two men each.
L2ARCTIC_SPEAKERS: dict[str, tuple[str, str]] = {
    "ABA": ("Arabic", "m"), "SKA": ("Arabic", "f"), "YBAA": ("Arabic", "m"), "ZHAA": ("Arabic", "f"),
    "BWC": ("Mandarin", "m"), "LXC": ("Mandarin", "f"), "NCC": ("Mandarin", "f"), "TXHC": ("Mandarin", "m"),
    "ASI": ("Hindi", "m"), "RRBI": ("Hindi", "m"), "SVBI": ("Hindi", "f"), "TNI": ("Hindi", "f"),
    "HJK": ("Korean", "f"), "HKK": ("Korean", "m"), "YDCK": ("Korean", "f"), "YKWK": ("Korean", "m"),
    "EBVS": ("Spanish", "m"), "ERMS": ("Spanish", "m"), "MBMPS": ("Spanish", "f"), "NJS": ("Spanish", "f"),
    "HQTV": ("Vietnamese", "m"), "PNV": ("Vietnamese", "f"), "THV": ("Vietnamese", "f"), "TLV": ("Vietnamese", "m"),
}

# CMU ARCTIC speakers (festvox.org/cmu_arctic): accent and gender. rxr is left out: its accent is
# not documented; pass speaker_accents={"rxr": ...} to import it.
CMU_ARCTIC_SPEAKERS: dict[str, tuple[str, str]] = {
    "aew": ("US", "m"), "ahw": ("German-L1", "m"), "aup": ("Indian", "m"), "awb": ("Scottish", "m"),
    "axb": ("Indian", "f"), "bdl": ("US", "m"), "clb": ("US", "f"), "eey": ("US", "f"), "fem": ("US", "m"),
    "gka": ("Indian", "m"), "jmk": ("Canadian", "m"), "ksp": ("Indian", "m"), "ljm": ("US", "f"),
    "lnh": ("US", "f"), "rms": ("US", "m"), "slp": ("Indian", "f"), "slt": ("US", "f"),
}



def import_l2arctic(src: str | os.PathLike, *, durations: bool = True) -> list[Utterance]:
    """L2-ARCTIC: ``<SPK>/wav/arctic_*.wav`` + ``<SPK>/transcript/arctic_*.txt`` for its 24 speakers.

    Accent is the speaker's first language (``Hindi-L1``...) from :data:`L2ARCTIC_SPEAKERS`;
    folders that are not speakers (``suitcase_corpus``) are skipped.
    """
    root = require_dir(src, "L2-ARCTIC")
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.upper() in L2ARCTIC_SPEAKERS]
    if not found:
        raise CorpusImportError(
            f"{root}: no L2-ARCTIC speaker folders (ABA, BWC, ...); give the folder that holds them"
        )
    utts = []
    for spk_dir in found:
        spk = spk_dir.name.upper()
        l1, gender = L2ARCTIC_SPEAKERS[spk]
        for wav in sorted((spk_dir / "wav").glob("*.wav")):
            txt = spk_dir / "transcript" / f"{wav.stem}.txt"
            if not txt.is_file():
                continue
            utts.append(Utterance(
                id=f"{spk}_{wav.stem}", audio=str(wav), text=" ".join(txt.read_text(encoding="utf-8").split()),
                speaker=spk, accent=f"{l1}-L1", lang="en", gender=gender, corpus="l2arctic",
            ))
    return fill_durations(utts, durations)


_ARCTIC_LINE = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def import_cmu_arctic(src: str | os.PathLike, *, speaker_accents: dict[str, str] | None = None,
                      durations: bool = True) -> list[Utterance]:
    """CMU ARCTIC: ``cmu_us_<spk>_arctic/wav/*.wav`` + ``etc/txt.done.data``.

    ``src`` is a folder of speaker folders or one speaker folder. Accents come from
    :data:`CMU_ARCTIC_SPEAKERS` (override or extend with ``speaker_accents``); a speaker with no
    known accent gets ``unknown`` and a warning.
    """
    root = require_dir(src, "CMU ARCTIC")
    pat = re.compile(r"cmu_us_(\w+?)_arctic")
    dirs = [root] if pat.fullmatch(root.name) else sorted(p for p in root.iterdir() if pat.fullmatch(p.name))
    if not dirs:
        raise CorpusImportError(f"{root}: no cmu_us_<speaker>_arctic folders; give the folder that holds them")
    table = {k: v[0] for k, v in CMU_ARCTIC_SPEAKERS.items()} | (speaker_accents or {})
    utts = []
    for sd in dirs:
        spk = pat.fullmatch(sd.name).group(1)
        done = require_file(sd / "etc" / "txt.done.data", "CMU ARCTIC", "etc/txt.done.data")
        if spk not in table:
            warnings.warn(f"CMU ARCTIC speaker {spk!r} has no known accent; labelled 'unknown' "
                          "(pass speaker_accents to set it)", stacklevel=2)
        for lineno, line in read_lines(done):
            m = _ARCTIC_LINE.match(line.strip())
            if m is None:
                raise CorpusImportError(f'{done}:{lineno}: expected ( <utt> "<text>" ), got {line.strip()!r}')
            uid, text = m.groups()
            wav = sd / "wav" / f"{uid}.wav"
            if not wav.is_file():
                continue
            utts.append(Utterance(
                id=f"{spk}_{uid}", audio=str(wav), text=text.replace('\\"', '"'), speaker=spk,
                accent=table.get(spk, "unknown"), lang="en", gender=CMU_ARCTIC_SPEAKERS.get(spk, (None, None))[1],
                corpus="cmu_arctic",
            ))
    return fill_durations(utts, durations)

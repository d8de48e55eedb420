"""Importers: read a speech corpus in its own on-disk layout and return manifest utterances.

One function per format (``import_kaldi``, ``import_vctk``, ...), each taking the corpus folder
as distributed and returning :class:`Utterance` objects with absolute audio paths; audio is
never copied (except for ``hf``, whose audio lives inside the dataset). :func:`import_corpus`
dispatches by name and optionally writes the manifest. Durations are read from audio headers
when ``durations=True``; a file that cannot be read gets ``duration=None`` and is left for
``speechtl-corpus validate`` to report.

Accent labels: native varieties are named as the corpus names them (VCTK's ``English``,
``Scottish``...; ``US`` for LJSpeech and CMU ARCTIC's American speakers); non-native speakers
are labelled by first language, ``<L1>-L1`` (``Mandarin-L1``, ``Hindi-L1``...), across corpora.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..manifest import Utterance, write_manifest
from .arctic import CMU_ARCTIC_SPEAKERS, L2ARCTIC_SPEAKERS, import_cmu_arctic, import_l2arctic
from .commonvoice import import_commonvoice
from .files import CorpusImportError, read_kaldi_table
from .hf import import_hf
from .kaldi import import_edacc, import_kaldi, import_speechocean762
from .ljspeech import import_ljspeech
from .speech_accent_archive import SPEECH_ACCENT_ARCHIVE_TEXT, import_speech_accent_archive
from .vctk import import_vctk

__all__ = [
    "CMU_ARCTIC_SPEAKERS",
    "IMPORTERS",
    "IMPORT_OPTIONS",
    "L2ARCTIC_SPEAKERS",
    "SPEECH_ACCENT_ARCHIVE_TEXT",
    "CorpusImportError",
    "import_cmu_arctic",
    "import_commonvoice",
    "import_corpus",
    "import_edacc",
    "import_hf",
    "import_kaldi",
    "import_l2arctic",
    "import_ljspeech",
    "import_speech_accent_archive",
    "import_speechocean762",
    "import_vctk",
    "list_importers",
    "parse_speaker_accents",
    "read_kaldi_table",
]

IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "kaldi": import_kaldi,
    "speechocean762": import_speechocean762,
    "vctk": import_vctk,
    "l2arctic": import_l2arctic,
    "commonvoice": import_commonvoice,
    "cmu-arctic": import_cmu_arctic,
    "edacc": import_edacc,
    "ljspeech": import_ljspeech,
    "speech-accent-archive": import_speech_accent_archive,
    "hf": import_hf,
}

# The options of ``speechtl-corpus import`` each format takes; option names are keyword arguments of its importer.
IMPORT_OPTIONS: dict[str, tuple[str, ...]] = {
    "kaldi": ("accent", "corpus", "audio_root"),
    "commonvoice": ("tsv",),
    "vctk": ("mic",),
    "cmu-arctic": ("speaker_accents",),
    "hf": ("audio_column", "text_column", "speaker_column", "accent_column", "id_column", "gender_column", "accent"),
}


def list_importers() -> list[str]:
    return sorted(IMPORTERS)


def parse_speaker_accents(items: Iterable[str]) -> dict[str, str]:
    """``["rxr=US", ...]`` -> ``{"rxr": "US"}`` (``speaker_accents`` of :func:`import_cmu_arctic`)."""
    pairs = {}
    for item in items:
        if "=" not in item:
            raise CorpusImportError(f"--speaker-accent {item!r}: write SPEAKER=ACCENT, e.g. rxr=US")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v.strip()
    return pairs


def import_corpus(fmt: str, src: Any, out: str | os.PathLike | None = None, **kwargs: Any) -> list[Utterance]:
    """Import ``src`` with the ``fmt`` importer; writes the manifest to ``out`` when given.

    For ``hf`` the embedded audio goes to ``<out folder>/<manifest name>_audio`` unless ``audio_dir`` is
    given, so that imports of other data sets into the same folder keep their own files.
    """
    if fmt not in IMPORTERS:
        raise CorpusImportError(f"unknown corpus format {fmt!r}; choose from {', '.join(list_importers())}")
    if fmt == "hf" and out is not None:
        kwargs.setdefault("audio_dir", Path(out).resolve().parent / f"{Path(out).stem}_audio")
    utts = IMPORTERS[fmt](src, **kwargs)
    if not utts:
        raise CorpusImportError(f"{src}: no utterances found for format {fmt!r}; check the folder and format")
    if out is not None:
        write_manifest(utts, out)
    return utts

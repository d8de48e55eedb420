"""Speech data: manifests, corpus importers, synthetic accents and the training data loader."""

from .manifest import (
    ManifestError,
    Utterance,
    filter_manifest,
    read_manifest,
    split_by_speaker,
    write_manifest,
)

__all__ = [
    "ManifestError",
    "Utterance",
    "filter_manifest",
    "read_manifest",
    "split_by_speaker",
    "write_manifest",
]

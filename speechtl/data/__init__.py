"""Speech data: manifests, corpus importers, synthetic accents and the training data loader."""

from .importers import IMPORTERS, CorpusImportError, import_corpus, list_importers
from .loader import AudioDataset, DurationBatchSampler, collate_audio, durations_of
from .manifest import (
    ManifestError,
    Utterance,
    ValidationReport,
    filter_manifest,
    parse_manifest,
    read_manifest,
    split_by_speaker,
    summarize,
    validate_manifest,
    write_manifest,
)

__all__ = [
    "IMPORTERS",
    "AudioDataset",
    "CorpusImportError",
    "DurationBatchSampler",
    "ManifestError",
    "Utterance",
    "ValidationReport",
    "collate_audio",
    "durations_of",
    "filter_manifest",
    "import_corpus",
    "list_importers",
    "parse_manifest",
    "read_manifest",
    "split_by_speaker",
    "summarize",
    "validate_manifest",
    "write_manifest",
]

"""The tiny random Whisper of the conversion and packaged-model tests: its byte-level vocabulary."""

from __future__ import annotations

import pytest

SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
EOT, SOT, EN, TRANSLATE, TRANSCRIBE, NO_TS = 256, 257, 258, 259, 260, 264
VOCAB = 300  # 256 bytes + 9 specials + 35 timestamp tokens


def ctranslate2_or_skip():
    try:
        import ctranslate2
    except Exception as e:  # a wheel without a matching CPU build fails with OSError, not ImportError
        pytest.skip(f"ctranslate2 (the reference implementation) cannot be imported: {e}")
    return ctranslate2

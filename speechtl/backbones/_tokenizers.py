"""Small offline tokenizers for the tiny random backbones (no hub access needed)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

WHISPER_SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


def byte_level_tokenizer(specials: tuple[str, ...] = WHISPER_SPECIALS) -> Tokenizer:
    """A byte-level BPE with the 256 byte symbols and no merges, plus ``specials`` after them.

    Every string round-trips, which is all a random model's loss and decoding need.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {sym: i for i, sym in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return tok


def char_vocab() -> dict[str, int]:
    """A CTC character vocabulary (wav2vec2 style): pad/blank, unk, word delimiter ``|``, a-z, apostrophe."""
    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    return {s: i for i, s in enumerate(symbols)}

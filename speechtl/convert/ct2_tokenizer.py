"""The Whisper tokenizer of a CTranslate2 folder: faster-whisper's ``tokenizer.json`` plus timestamp tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpeechtlError


@dataclass
class WhisperTokens:
    """Token ids the configs need, read from the tokenizer."""

    eot: int
    sot: int
    no_timestamps: int
    transcribe: int | None
    translate: int | None
    prev_sot: int | None
    languages: dict[str, int]  # "<|en|>" -> id


def build_tokenizer(src: Path, vocab_size: int):
    """A ``WhisperTokenizer`` from faster-whisper's ``tokenizer.json`` plus the timestamp tokens.

    faster-whisper's ``tokenizer.json`` stops at ``<|notimestamps|>``; the model's vocabulary goes
    on with 1501 timestamp tokens ``<|0.00|>`` .. ``<|30.00|>``, added here as ordinary (non-special)
    tokens because transformers finds the first timestamp id as "last special id + 1".
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        raise SpeechtlError(
            f"{tok_file} does not exist; the converter needs the model's tokenizer.json "
            "(ct2-transformers-converter writes it with --copy_files tokenizer.json)."
        )
    try:
        spec = json.loads(tok_file.read_text(encoding="utf-8"))
        model = spec["model"]
        if model.get("type") != "BPE":
            raise SpeechtlError(f"{tok_file}: expected a byte-level BPE tokenizer, found {model.get('type')!r}.")
        vocab = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = sorted(spec.get("added_tokens", []), key=lambda a: a["id"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise SpeechtlError(f"{tok_file} is not a valid tokenizers JSON file ({e}).") from e

    specials = [a["content"] for a in added if a.get("special", True)]
    tok = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # as OpenAI's Whisper tokenizers: batched labels pad with end-of-text
        additional_special_tokens=[s for s in specials if s != "<|endoftext|>"],
    )
    for a in added:
        if tok.convert_tokens_to_ids(a["content"]) != a["id"]:
            raise SpeechtlError(
                f"{tok_file}: added token {a['content']!r} should have id {a['id']}; the file is inconsistent."
            )
    for required in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if required not in tok.get_vocab():
            raise SpeechtlError(f"{tok_file} has no {required} token; it is not a Whisper tokenizer.")

    n = len(tok)
    if n > vocab_size:
        raise SpeechtlError(f"{tok_file} has {n} tokens but the model's vocabulary has only {vocab_size}.")
    no_ts = tok.convert_tokens_to_ids("<|notimestamps|>")
    if n != no_ts + 1:
        raise SpeechtlError(
            f"{tok_file}: <|notimestamps|> (id {no_ts}) should be the last token, before the timestamps."
        )
    tok.add_tokens(
        [
            AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False)
            for i in range(vocab_size - n)
        ]
    )
    _check_vocabulary(tok, src)

    ids = tok.get_vocab()
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tokens = WhisperTokens(
        eot=ids["<|endoftext|>"],
        sot=ids["<|startoftranscript|>"],
        no_timestamps=no_ts,
        transcribe=ids.get("<|transcribe|>"),
        translate=ids.get("<|translate|>"),
        prev_sot=ids.get("<|startofprev|>"),
        languages={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in ids},
    )
    return tok, tokens


def _check_vocabulary(tok, src: Path) -> None:
    """Compare against CTranslate2's own id -> token list when the folder has one."""
    txt, js = src / "vocabulary.txt", src / "vocabulary.json"
    if txt.is_file():
        tokens = txt.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        where = txt
    elif js.is_file():
        tokens = json.loads(js.read_text(encoding="utf-8"))
        where = js
    else:
        return
    if len(tokens) != len(tok):
        raise SpeechtlError(f"{where} lists {len(tokens)} tokens but tokenizer.json plus timestamps gives {len(tok)}.")
    ids = tok.convert_tokens_to_ids(tokens)
    bad = [i for i, j in enumerate(ids) if i != j]
    if bad:
        raise SpeechtlError(
            f"{where}: token {tokens[bad[0]]!r} has id {bad[0]} there but {ids[bad[0]]} in tokenizer.json "
            f"({len(bad)} tokens differ); the two files come from different models."
        )

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from speechtl.ctc_decode import (
    CTCBeamDecoder,
    arpa_vocabulary,
    build_arpa,
    greedy_decode,
    ids_to_text,
    text_for_tokens,
)
from speechtl.errors import SpeechtlError

pytest.importorskip("flashlight.lib.text", reason="CTC beam search needs flashlight-text (pip install flashlight-text)")

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat ate the rat",
             "on the mat the cat sat"]


def frames(tokens: list[str], *rows: dict[str, float]) -> torch.Tensor:
    """Log-probabilities ``(1, frames, vocab)`` from per-frame probabilities; unnamed tokens get ~0."""
    out = torch.full((len(rows), len(tokens)), 1e-6)
    for t, row in enumerate(rows):
        for tok, p in row.items():
            out[t, tokens.index(tok)] = p
    return (out / out.sum(-1, keepdim=True)).log()[None]


def test_greedy_and_beam_differ_where_the_prefix_sum_matters():
    # Two frames, P(blank)=0.6, P(A)=0.4 each: the best path is blank-blank (""), but "A" has
    # three paths (A-A, A-blank, blank-A) worth 0.16 + 0.24 + 0.24 = 0.64 > 0.36.
    tokens = ["<pad>", "|", "A"]
    em = frames(tokens, {"<pad>": 0.6, "A": 0.4}, {"<pad>": 0.6, "A": 0.4})
    assert greedy_decode(em) == [[]]
    text, score = CTCBeamDecoder(tokens, beam_size=10).decode(em)[0][0]
    assert text == "A" and score == pytest.approx(math.log(0.64), abs=1e-3)
    # Keeping only the best alignment per prefix (Viterbi) agrees with greedy here.
    assert CTCBeamDecoder(tokens, beam_size=10, log_add=False)(em) == [""]


def test_greedy_collapses_repeats_and_respects_lengths():
    tokens = ["<pad>", "|", "A", "B"]
    em = frames(tokens, {"A": 1}, {"A": 1}, {"<pad>": 1}, {"A": 1}, {"|": 1}, {"B": 1}, {"B": 1})
    em = torch.cat([em, em])
    ids = greedy_decode(em, torch.tensor([7, 3]))
    assert ids == [[2, 2, 1, 3], [2]]
    assert [ids_to_text(i, tokens) for i in ids] == ["AA B", "A"]
    assert CTCBeamDecoder(tokens, beam_size=8)(em, torch.tensor([7, 3])) == ["AA B", "A"]


def test_word_lm_changes_the_answer(tmp_path):
    tokens = ["<pad>", "|", "C", "A", "T", "D"]
    # The acoustics lean to "CAD" (0.55 vs 0.45); the LM has seen "CAT" far more often.
    em = frames(tokens, {"C": 0.9, "<pad>": 0.1}, {"A": 0.9, "<pad>": 0.1}, {"D": 0.55, "T": 0.45}, {"<pad>": 1})
    assert ids_to_text(greedy_decode(em)[0], tokens) == "CAD"
    lm = build_arpa(["CAT"] * 20 + ["CAD", "CAT SAT"], tmp_path / "lm.arpa", order=2)
    with_lm = CTCBeamDecoder(tokens, lm=lm, lm_weight=1.0)
    assert with_lm(em) == ["CAT"]
    # "SAT" cannot be spelled without an S token: left out of the lexicon.
    assert with_lm.lexicon_size == 2 and with_lm.skipped_words == 1
    assert CTCBeamDecoder(tokens, lm=lm, lm_weight=0.0)(em) == ["CAD"]


def test_an_lm_changed_after_it_was_built_is_refused(tmp_path):
    import hashlib

    tokens = ["<pad>", "|", "C", "A", "T", "D"]
    lm = build_arpa(["CAT"] * 3 + ["CAD"], tmp_path / "lm.arpa", order=2)
    record = tmp_path / "lm.arpa.sha256"  # sha256sum's format, so `sha256sum -c lm.arpa.sha256` checks it too
    assert record.read_text() == f"{hashlib.sha256(lm.read_bytes()).hexdigest()}  lm.arpa\n"
    CTCBeamDecoder(tokens, lm=lm)
    lm.write_text(lm.read_text().replace("CAD", "CAT", 1))
    with pytest.raises(SpeechtlError, match=r"lm.arpa: does not match its sha256 record lm.arpa.sha256"):
        CTCBeamDecoder(tokens, lm=lm)
    # Built again at the same path, the record is the new LM's.
    CTCBeamDecoder(tokens, lm=build_arpa(["CAT"] * 5, lm, order=2))
    record.unlink()  # an LM without a record (from elsewhere) is used as it is
    lm.write_text(lm.read_text().replace("CAT", "CAD"))
    CTCBeamDecoder(tokens, lm=lm)


def read_arpa(path: Path) -> tuple[dict[tuple, float], dict[tuple, float], int]:
    probs, backoffs, order, section = {}, {}, 0, 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
            order = max(order, section)
            continue
        if not section or not line.strip() or line.startswith("\\"):
            continue
        parts = line.split("\t")
        gram = tuple(parts[1].split())
        probs[gram] = float(parts[0])
        if len(parts) > 2:
            backoffs[gram] = float(parts[2])
    return probs, backoffs, order


def arpa_logprob(probs, backoffs, order, history: tuple, word: str) -> float:
    """log10 p(word | history) by the ARPA back-off rule."""
    h = history[-(order - 1):] if order > 1 else ()
    if h + (word,) in probs:
        return probs[h + (word,)]
    if not h:
        return probs[("<unk>",)]
    return backoffs.get(h, 0.0) + arpa_logprob(probs, backoffs, order, h[1:], word)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_arpa_is_a_normalised_distribution(tmp_path, order):
    path = build_arpa(SENTENCES, tmp_path / "lm.arpa", order=order)
    probs, backoffs, found_order = read_arpa(path)
    assert found_order == order
    vocab = [w for w in arpa_vocabulary(path) if w != "<s>"]
    assert "<unk>" in vocab and "</s>" in vocab
    for history in [("<s>",), ("<s>", "the"), ("the", "cat"), ("a",), ("zebra",), ("sat", "on")]:
        total = sum(10 ** arpa_logprob(probs, backoffs, order, history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), history


def test_arpa_scores_agree_with_kenlm(tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm query module is optional (pip install kenlm)")
    path = build_arpa(SENTENCES, tmp_path / "lm.arpa", order=3)
    probs, backoffs, order = read_arpa(path)
    model = kenlm.Model(str(path))
    for sentence in ["the cat sat on the log", "a dog ate the mat", "zebra on the mat"]:
        words = ["<s>", *sentence.split(), "</s>"]
        ours = sum(arpa_logprob(probs, backoffs, order, tuple(words[:i]), words[i]) for i in range(1, len(words)))
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(ours, abs=1e-4)


def test_text_for_tokens_and_errors(tmp_path):
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(65, 91)]
    assert text_for_tokens("Don't stop — café au-lait, 42!", tokens) == "DON'T STOP CAFE AU LAIT"
    with pytest.raises(SpeechtlError, match="blank_token"):
        CTCBeamDecoder(["a", "|"], blank_token="<pad>")
    with pytest.raises(SpeechtlError, match="no such language model"):
        CTCBeamDecoder(tokens, lm=tmp_path / "none.arpa")
    with pytest.raises(SpeechtlError, match="no non-empty sentence"):
        build_arpa(["", "  "], tmp_path / "x.arpa")


def test_lm_from_manifest_uses_training_transcripts_only(tmp_path):
    from speechtl.ctc_decode import build_arpa_from_manifest
    from speechtl.data.manifest import Utterance

    tokens = ["<pad>", "|", "'"] + [chr(c) for c in range(65, 91)]
    utts = [Utterance(id=str(i), audio="/x.wav", text=t, speaker="s", accent="A", split=split)
            for i, (t, split) in enumerate([("The cat sat.", "train"), ("A dog!", "train"), ("Secret words", "test")])]
    path = build_arpa_from_manifest(utts, tmp_path / "lm.arpa", tokens, order=2)
    vocab = set(arpa_vocabulary(path))
    assert {"THE", "CAT", "SAT", "A", "DOG"} <= vocab and "SECRET" not in vocab
    with pytest.raises(SpeechtlError, match="no utterance"):
        build_arpa_from_manifest(utts, tmp_path / "x.arpa", tokens, splits=["dev"])

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from speechtl.errors import SpeechtlError
from speechtl.wer import (
    BasicNormalizer,
    NoNormalizer,
    WhisperNormalizer,
    aggregate,
    cer,
    get_normalizer,
    score_pairs,
    top_confusions,
    wer,
)

VOCAB = [
    "the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "blue", "hat", "and", "with", "of", "to", "in",
    "is", "was", "it"
]


def random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """References of 1-15 words and hypotheses made by random substitutions, deletions and insertions."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        ref = [rng.choice(VOCAB) for _ in range(rng.randint(1, 15))]
        hyp = []
        for w in ref:
            r = rng.random()
            if r < 0.12:
                continue  # deletion
            hyp.append(rng.choice(VOCAB) if r < 0.25 else w)
            if rng.random() < 0.1:
                hyp.append(rng.choice(VOCAB))  # insertion
        if rng.random() < 0.03:
            hyp = []
        pairs.append((" ".join(ref), " ".join(hyp)))
    return pairs


def levenshtein(a: list[str], b: list[str]) -> int:
    """Word edit distance with unit costs: the textbook dynamic programme, independent of jiwer."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def sclite_binary() -> str | None:
    for candidate in (shutil.which("sclite"), "/usr/lib/sctk/bin/sclite"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def run_sclite(pairs: list[tuple[str, str]], tmp: Path) -> dict[str, tuple[int, int, int, int]]:
    """Per-utterance (correct, substitutions, deletions, insertions) from NIST sclite on trn files."""
    ref = tmp / "ref.trn"
    hyp = tmp / "hyp.trn"
    ref.write_text("".join(f"{r} (spk_{i:04d})\n" for i, (r, _) in enumerate(pairs)))
    hyp.write_text("".join(f"{h} (spk_{i:04d})\n" for i, (_, h) in enumerate(pairs)))
    out = subprocess.run(
        [sclite_binary(), "-r", str(ref), "trn", "-h", str(hyp), "trn", "-i", "spu_id", "-o", "pra", "stdout"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    scores = {}
    for uid, c, s, d, i in re.findall(r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", out):
        scores[uid] = (int(c), int(s), int(d), int(i))
    return scores


def test_counts_match_independent_levenshtein():
    pairs = random_pairs(300, seed=1)
    scores = score_pairs([r for r, _ in pairs], [h for _, h in pairs], "none")
    for (r, h), s in zip(pairs, scores):
        assert s.errors == levenshtein(r.split(), h.split())
        assert s.hits + s.substitutions + s.deletions == s.ref_words == len(r.split())
        assert s.hits + s.substitutions + s.insertions == s.hyp_words == len(h.split())
    total = aggregate(scores)
    expected = sum(levenshtein(r.split(), h.split()) for r, h in pairs) / sum(len(r.split()) for r, _ in pairs)
    assert total.wer == pytest.approx(expected)
    assert wer([r for r, _ in pairs], [h for _, h in pairs], "none") == pytest.approx(expected)


def test_wer_equals_nist_sclite(tmp_path):
    if sclite_binary() is None:
        pytest.skip("NIST sclite not installed (Debian package sctk: apt-get install sctk)")
    pairs = random_pairs(150, seed=2)
    ref_sc = run_sclite(pairs, tmp_path)
    assert len(ref_sc) == len(pairs)
    scores = score_pairs([r for r, _ in pairs], [h for _, h in pairs], "none")
    for i, s in enumerate(scores):
        c, sub, dele, ins = ref_sc[f"spk_{i:04d}"]
        # sclite weighs substitutions 4 and insertions/deletions 3, so among alignments with the same
        # number of errors it may split them differently; the error count (the WER numerator) is the same.
        assert sub + dele + ins == s.errors, pairs[i]
        assert c + sub + dele == s.ref_words
    sc_wer = sum(sum(v[1:]) for v in ref_sc.values()) / sum(v[0] + v[1] + v[2] for v in ref_sc.values())
    assert aggregate(scores).wer == pytest.approx(sc_wer)


def test_normaliser_applied_to_both_sides():
    calls = []

    class Recording:
        name = "recording"

        def __call__(self, text: str) -> str:
            calls.append(text)
            return text.lower()

    scores = score_pairs(["Hello World"], ["HELLO world"], Recording())
    assert calls == ["Hello World", "HELLO world"]
    assert scores[0].ref_norm == "hello world" and scores[0].hyp_norm == "hello world"
    assert scores[0].errors == 0
    # Swapping the roles gives the same normalised strings: nothing is side-specific.
    for name in ("whisper", "basic", "none"):
        norm = get_normalizer(name)
        text = "Mr. Smith's colour, twenty-five (um) apples!"
        s1 = score_pairs([text], ["x"], name)[0]
        s2 = score_pairs(["x"], [text], name)[0]
        assert s1.ref_norm == s2.hyp_norm == norm(text)


def test_whisper_normaliser_offline_spelling_and_numbers():
    n = WhisperNormalizer()
    assert n("The COLOUR of the Centre, twenty five percent!") == "the color of the center 25%"
    assert n("Um, Mr. Jones [laughs] isn't here") == "mister jones is not here"
    assert n("uh") == ""


def test_basic_and_none_normalisers():
    b = BasicNormalizer()
    assert b("Don't  'quote' me—well-known, OK?") == "don't quote me well known ok"
    assert b("It’s fine.") == "it's fine"
    assert NoNormalizer()("  Hello,\tWorld  ") == "Hello, World"
    assert get_normalizer("basic").name == "basic"
    with pytest.raises(SpeechtlError, match="unknown normalizer"):
        get_normalizer("fancy")


def test_empty_normalised_reference_is_counted_not_scored():
    scores = score_pairs(["um", "the cat"], ["hello there", "the hat"], "whisper")
    assert scores[0].empty_ref and scores[0].wer is None and scores[0].insertions == 2
    total = aggregate(scores)
    assert total.empty_refs == 1 and total.utterances == 1
    assert total.wer == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="1 reference"):
        assert wer(["um", "the cat"], ["hello there", "the hat"]) == pytest.approx(0.5)
    with pytest.raises(SpeechtlError, match="every reference is empty"):
        wer(["uh"], ["something"])


def test_confusions_and_cer():
    scores = score_pairs(["the cat sat", "a cat ran", "the cat"], ["the hat sat", "a hat ran", "the bat"], "none")
    pairs = [p for s in scores for p in s.substitution_pairs]
    assert top_confusions(pairs, 2) == [("cat", "hat", 2), ("cat", "bat", 1)]
    assert cer(["abc"], ["abd"], "none") == pytest.approx(1 / 3)
    s = score_pairs(["the cat"], ["the"], "none")[0]
    assert s.deleted == ["cat"] and s.char_errors == 4 and s.ref_chars == 7


def test_mismatched_lengths_raise():
    with pytest.raises(SpeechtlError, match="2 references but 1 hypotheses"):
        score_pairs(["a", "b"], ["a"])

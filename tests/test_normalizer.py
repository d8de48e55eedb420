"""The Whisper English normaliser speechtl scores with: transformers' EnglishTextNormalizer and OpenAI's spelling map."""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from speechtl._english_spelling import ENGLISH_SPELLING
from speechtl.wer import get_normalizer, wer

# Hand-checked outputs of Whisper's English normaliser: numbers, currencies, contractions, titles,
# fillers and brackets, British spellings.
TRICKY = {
    "It cost $3.50, not £20!": "it cost $3.50 not £20",
    "I'd've gone if they hadn't": "i would have gone if they had not",
    "Mr. Smith's colour-coded catalogue": "mister smith is color coded catalog",
    "Dr. Jones won't go": "doctor jones will not go",
    "St. Paul's (cathedral)": "saint paul is",
    "twenty five people": "25 people",
    "one hundred and two": "102",
    "two thousand and twenty": "2020",
    "nineteen ninety nine": "1999",
    "ZERO THREE FIVE ONE": "0351",
    "three point five million dollars": "$3500000",
    "first, second, third": "1st 2nd 3rd",
    "The 1st and 2nd of May, 1999": "the 1st and 2nd of may 1999",
    "It's 5% off": "it is 5% off",
    "half past ten": "half past 10",
    "Um, I think, uh, it's OK [laughs]": "i think it is ok",
    "I'm gonna travel-ling": "i am going to travel ling",
    "We'll organise the theatre programme": "we will organize the theater program",
    "Let's analyse the neighbour's behaviour": "let us analyze the neighbor is behavior",
}
# sha256 of openai-whisper 20250625's whisper/normalizers/english.json, as canonical JSON
# (json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"))): the map the vendored copy must equal.
UPSTREAM_SPELLING_SHA256 = "f30d0a1b5484c470b094ad57324dd3529ab628ed6541218039870269dfa33abe"


@pytest.fixture(scope="module")
def reference() -> EnglishTextNormalizer:
    return EnglishTextNormalizer(ENGLISH_SPELLING)


def real_sentences(shared_data) -> list[str]:
    """The VCTK/LJSpeech references and the speechocean762 (Mandarin-L1) training prompts: about a thousand."""
    rows = [json.loads(line) for line in (shared_data / "real" / "manifest.jsonl").read_text().splitlines()]
    sentences = [r["text"] for r in rows]
    so = shared_data / "speechocean762" / "train" / "text"
    if so.is_file():
        sentences += [line.split(" ", 1)[1] for line in so.read_text().splitlines() if " " in line]
    return sentences


def test_the_vendored_spelling_map_is_openais():
    canonical = json.dumps(ENGLISH_SPELLING, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(canonical.encode()).hexdigest() == UPSTREAM_SPELLING_SHA256
    assert len(ENGLISH_SPELLING) == 1739 and ENGLISH_SPELLING["colour"] == "color"


@pytest.mark.parametrize("text, expected", TRICKY.items())
def test_tricky_cases_normalise_as_whisper_does(text, expected, reference):
    assert get_normalizer("whisper")(text) == expected
    assert reference(text) == expected


def test_british_spellings_need_the_map():
    """Without the spelling map the British cases would differ: the comparison above is not vacuous."""
    bare = EnglishTextNormalizer({})
    british = [t for t in TRICKY if any(w in t for w in ("colour", "organise", "analyse"))]
    assert british and all(bare(t) != get_normalizer("whisper")(t) for t in british)
    assert wer(["the colour of the theatre"], ["the color of the theater"]) == 0.0


def test_real_sentences_normalise_as_transformers_does(shared_data, reference):
    sentences = real_sentences(shared_data)
    assert len(sentences) >= 300
    norm = get_normalizer("whisper")
    differ = [(s, norm(s), reference(s)) for s in sentences if norm(s) != reference(s)]
    assert not differ, differ[:5]
    # The corpora's references do change under normalisation (case, punctuation, numbers): a real check.
    assert sum(norm(s) != s for s in sentences) > len(sentences) // 2

"""Phonological transfer for espeak: L1-accented English from English phonemes.

espeak-ng prints the English phonemes of a sentence (``espeak-ng -x``); :func:`apply_l1` rewrites
them the way speakers of a first language tend to realise English (textbook L1-transfer features),
and espeak then speaks the rewritten phonemes.
"""

from __future__ import annotations

from dataclasses import dataclass

# espeak-ng's English phoneme mnemonics with more than one character, longest first.
_EN_MULTI = sorted(
    ["aI@", "aU@", "aI3", "i@3", "eI", "aI", "aU", "OI", "oU", "@U", "I@", "e@", "U@", "A@", "O@", "o@", "3:",
     "A:", "O:", "u:", "i:", "a#", "I#", "I2", "@2", "@5", "@L", "@-", "E2", "tS", "dZ", "n-", "l-", "r-", "t#",
     "d#", "aa"],
    key=len,
    reverse=True,
)
_VOWEL_START = set("aeiouAEIOUV03@")
_STRESS = set("',%=")
_PAUSE = set("_:")


@dataclass(frozen=True)
class L1Rules:
    """How speakers of a first language realise English phonemes (textbook L1-transfer features)."""

    substitute: dict[str, str]
    final_devoicing: bool = False
    final_stress: bool = False  # French: stress moves to the last syllable
    initial_s_voicing: bool = False  # German: "sun" -> [z]un


_DEVOICE = {"b": "p", "d": "t", "g": "k", "z": "s", "v": "f", "dZ": "tS", "Z": "S", "D": "T"}
L1_RULES: dict[str, L1Rules] = {
    # th-stopping/fronting to s/z, w -> v, TRAP -> DRESS, STRUT -> a, final obstruent devoicing.
    "german": L1Rules({"T": "s", "D": "z", "w": "v", "a": "E", "V": "a", "dZ": "tS"}, final_devoicing=True,
                      initial_s_voicing=True),
    # th -> s/z, h-dropping, no lax vowels (KIT -> FLEECE, FOOT -> GOOSE), affricates -> fricatives.
    "french": L1Rules({"T": "s", "D": "z", "h": "", "I": "i:", "I2": "i:", "U": "u:", "tS": "S", "dZ": "Z",
                       "N": "n", "V": "@", "a": "E"}, final_stress=True),
    # th -> s/z, w -> v, h -> velar fricative, KIT -> FLEECE, TRAP -> DRESS, final devoicing.
    "russian": L1Rules({"T": "s", "D": "z", "w": "v", "h": "x", "I": "i:", "I2": "i:", "a": "E", "V": "a", "N": "n",
                        "oU": "O:", "@U": "O:"}, final_devoicing=True),
}


def _tokenize_phonemes(word: str) -> list[str]:
    out, i = [], 0
    while i < len(word):
        for m in _EN_MULTI:
            if word.startswith(m, i):
                out.append(m)
                i += len(m)
                break
        else:
            out.append(word[i])
            i += 1
    return out


def apply_l1(phonemes: str, l1: str) -> str:
    """Rewrite espeak English phoneme mnemonics (words separated by spaces) with ``l1``'s rules."""
    rules = L1_RULES[l1]
    words = []
    for word in phonemes.split():
        toks = _tokenize_phonemes(word)
        if rules.initial_s_voicing and toks and toks[0] == "s":
            following = next((t for t in toks[1:] if t not in _STRESS), "")
            if following[:1] in _VOWEL_START:
                toks[0] = "z"
        toks = [rules.substitute.get(t, t) for t in toks]
        if rules.final_devoicing:
            for j in range(len(toks) - 1, -1, -1):
                if toks[j] and toks[j] not in _STRESS and toks[j] not in _PAUSE:
                    toks[j] = _DEVOICE.get(toks[j], toks[j])
                    break
        if rules.final_stress:
            vowels = [j for j, t in enumerate(toks) if t and t[0] in _VOWEL_START]
            if len(vowels) > 1:
                toks = [t for t in toks if t not in _STRESS]
                vowels = [j for j, t in enumerate(toks) if t and t[0] in _VOWEL_START]
                toks.insert(vowels[-1], "'")
        words.append("".join(toks))
    return " ".join(words)

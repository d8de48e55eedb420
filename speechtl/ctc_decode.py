"""CTC decoding for the wav2vec2 family: greedy, beam search, and a word n-gram LM.

- :func:`greedy_decode`: best token per frame, repeats merged, blanks dropped.
- :class:`CTCBeamDecoder`: beam search with flashlight's decoder through
  ``torchaudio.models.decoder.ctc_decoder`` (needs the ``flashlight-text`` package). Without
  an LM it is lexicon-free (any spelling can come out). With a word LM it is lexicon-based:
  only words of the lexicon (by default the LM's vocabulary) can be produced, and the LM
  score weighs each word.
- :func:`build_arpa`: a word n-gram LM in ARPA format from training transcripts, in pure
  Python (interpolated Kneser-Ney), since KenLM's ``lmplz`` is not on PyPI. ``ctc_decoder``
  and ``kenlm`` read the file directly.

Emissions are ``(batch, frames, vocab)`` scores from a CTC head; they are turned into
log-probabilities with ``log_softmax`` first (a no-op for log-probabilities already).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checksums import sha256_file
from .errors import SpeechtlError
from .fileio import atomic_write_text

if TYPE_CHECKING:
    from .data.manifest import Utterance

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_SPECIAL = re.compile(r"^<[^<>]+>$")


def greedy_decode(
    emissions: torch.Tensor, lengths: torch.Tensor | None = None, *, blank: int = 0
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        emissions: ``(batch, frames, vocab)`` or ``(frames, vocab)`` scores (logits or log-probs).
        lengths: ``(batch,)`` valid frames per item; all frames when None.
        blank: the blank token's id.
    Returns: token ids per item.
    """
    if emissions.dim() == 2:
        emissions = emissions[None]
    if emissions.dim() != 3:
        raise ValueError(f"emissions must be (batch, frames, vocab), got shape {tuple(emissions.shape)}")
    best = emissions.argmax(dim=-1).cpu()
    out = []
    for b in range(best.shape[0]):
        n = best.shape[1] if lengths is None else int(lengths[b])
        ids = torch.unique_consecutive(best[b, :n])
        out.append(ids[ids != blank].tolist())
    return out


def ids_to_text(ids: Iterable[int], tokens: Sequence[str], *, word_delimiter: str = "|") -> str:
    """Join token strings; the word delimiter becomes a space and ``<special>`` tokens are dropped."""
    parts = []
    for i in ids:
        t = tokens[i]
        if t == word_delimiter:
            parts.append(" ")
        elif not _SPECIAL.match(t):
            parts.append(t)
    return " ".join("".join(parts).split())


class CTCBeamDecoder:
    """Beam-search CTC decoder, optionally with a word n-gram LM.

    Args:
        tokens: the CTC vocabulary, id -> token string (e.g. a wav2vec2 tokenizer's).
        blank_token: the blank (wav2vec2: ``<pad>``).
        word_delimiter: the token between words (wav2vec2: ``|``).
        lm: an ARPA file (see :func:`build_arpa`) or a KenLM binary; None for no LM. A file with a
            ``<lm>.sha256`` record beside it (as :func:`build_arpa` writes) is checked against it.
        lexicon_words: the words the decoder may output with an LM; by default the ARPA
            file's unigrams (required for a KenLM binary). Words with a character that has no
            token are skipped.
        beam_size, beam_threshold: beam width and score pruning margin.
        lm_weight, word_score: weight of the LM log-probability and a bonus per word.
        log_add: merge hypotheses with the same output by adding probabilities (the CTC
            prefix sum over alignments) instead of keeping the best alignment.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        blank_token: str = "<pad>",
        word_delimiter: str = "|",
        lm: str | os.PathLike | None = None,
        lexicon_words: Iterable[str] | None = None,
        beam_size: int = 50,
        beam_threshold: float = 50.0,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        log_add: bool = True,
        nbest: int = 1,
    ):
        try:
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as e:  # torchaudio imports flashlight lazily and says what is missing
            raise SpeechtlError(f"CTC beam search needs flashlight-text: pip install flashlight-text ({e})") from None
        self.tokens = list(tokens)
        for name, tok in (("blank_token", blank_token), ("word_delimiter", word_delimiter)):
            if tok not in self.tokens:
                raise SpeechtlError(f"{name} {tok!r} is not in the token list; pass the vocabulary's own {name}")
        if beam_size < 1:
            raise SpeechtlError(f"beam_size must be at least 1, got {beam_size}")
        self.word_delimiter = word_delimiter
        self.lexicon_size = 0
        self.skipped_words = 0
        self._tmpdir = None
        lexicon_path = None
        if lm is not None:
            lm = Path(lm)
            if not lm.is_file():
                raise SpeechtlError(f"{lm}: no such language model file; build one with speechtl.ctc_decode.build_arpa")
            verify_lm(lm)
            if lexicon_words is None:
                if _is_kenlm_binary(lm):
                    raise SpeechtlError(f"{lm}: a KenLM binary LM needs lexicon_words (its vocabulary is not readable)")
                lexicon_words = arpa_vocabulary(lm)
            self._tmpdir = tempfile.TemporaryDirectory(prefix="speechtl-lexicon-")
            lexicon_path = Path(self._tmpdir.name) / "lexicon.txt"
            self.lexicon_size, self.skipped_words = write_lexicon(lexicon_words, self.tokens, lexicon_path,
                                                                  word_delimiter=word_delimiter)
            if self.lexicon_size == 0:
                raise SpeechtlError(f"{lm}: no LM word can be spelled with the model's tokens (case? alphabet?)")
        self._decoder = ctc_decoder(
            lexicon=None if lexicon_path is None else str(lexicon_path),
            tokens=self.tokens,
            lm=None if lm is None else str(lm),
            nbest=nbest,
            beam_size=beam_size,
            beam_threshold=beam_threshold,
            lm_weight=lm_weight if lm is not None else 0.0,
            word_score=word_score,
            log_add=log_add,
            blank_token=blank_token,
            sil_token=word_delimiter,
            unk_word=UNK,
        )
        self.uses_lexicon = lexicon_path is not None

    @classmethod
    def for_backbone(cls, backbone, **kwargs) -> CTCBeamDecoder:
        """A decoder over a wav2vec2-family backbone's CTC vocabulary (blank = its pad token)."""
        tok = backbone.tokenizer
        vocab_size = backbone.model.config.vocab_size
        # The head may have more outputs than the tokenizer has tokens: name the extra ones.
        tokens = [tok.convert_ids_to_tokens(i) if i < len(tok) else f"<extra_{i}>" for i in range(vocab_size)]
        kwargs.setdefault("blank_token", tokens[backbone.blank_id])
        kwargs.setdefault("word_delimiter", getattr(tok, "word_delimiter_token", None) or "|")
        return cls(tokens, **kwargs)

    def decode(self, emissions: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[tuple[str, float]]]:
        """``nbest`` (text, score) pairs per item for ``(batch, frames, vocab)`` emissions."""
        if emissions.dim() == 2:
            emissions = emissions[None]
        if emissions.dim() != 3 or emissions.shape[-1] != len(self.tokens):
            raise ValueError(
                f"emissions must be (batch, frames, {len(self.tokens)}), got shape {tuple(emissions.shape)}"
            )
        logp = torch.log_softmax(emissions.detach().float(), dim=-1).cpu().contiguous()
        if lengths is not None:
            lengths = lengths.detach().cpu().to(torch.int32)
        results = self._decoder(logp, lengths)
        out = []
        for hyps in results:
            item = []
            for h in hyps:
                if self.uses_lexicon:
                    text = " ".join(w for w in h.words if w not in (BOS, EOS, UNK))
                else:
                    text = ids_to_text(h.tokens.tolist(), self.tokens, word_delimiter=self.word_delimiter)
                item.append((text, float(h.score)))
            out.append(item)
        return out

    def __call__(self, emissions: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """The best transcript per item."""
        return [hyps[0][0] if hyps else "" for hyps in self.decode(emissions, lengths)]


def text_for_tokens(text: str, tokens: Sequence[str], *, word_delimiter: str = "|") -> str:
    """``text`` spelled with the vocabulary's characters, for LM training and lexicons.

    Letters take the vocabulary's case (wav2vec2 vocabularies are upper-case), accents are
    stripped, hyphens and other separators become spaces and characters without a token are
    dropped.
    """
    chars = {t for t in tokens if len(t) == 1 and t != word_delimiter}
    upper = sum(c.isupper() for c in chars) > sum(c.islower() for c in chars)
    s = unicodedata.normalize("NFKD", text)
    s = "".join(c for c in s if unicodedata.category(c) != "Mn").replace("\u2019", "'")
    s = s.upper() if upper else s.lower()
    words = []
    for w in re.split(r"[\s\-_/]+", s):
        w = "".join(c for c in w if c in chars)
        if w.strip("'"):
            words.append(w)
    return " ".join(words)


def write_lexicon(
    words: Iterable[str], tokens: Sequence[str], path: str | os.PathLike, *, word_delimiter: str = "|"
) -> tuple[int, int]:
    """Write a flashlight lexicon (``WORD<TAB>W O R D |`` per line); returns (written, skipped).

    A word is skipped when one of its characters has no token (in either case).
    """
    vocab = set(tokens)
    written = skipped = 0
    lines = []
    for w in dict.fromkeys(words):
        if w in (BOS, EOS, UNK) or not w:
            continue
        spelling = []
        for c in w:
            tok = c if c in vocab else c.upper() if c.upper() in vocab else c.lower() if c.lower() in vocab else None
            if tok is None:
                break
            spelling.append(tok)
        else:
            lines.append(f"{w}\t{' '.join(spelling)} {word_delimiter}\n")
            written += 1
            continue
        skipped += 1
    atomic_write_text(Path(path), "".join(lines))
    return written, skipped


def arpa_vocabulary(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's unigram section, in file order."""
    words = []
    section = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if line.startswith("\\"):
                section = line
                if section not in ("\\data\\", "\\1-grams:") and words:
                    break
                continue
            if section == "\\1-grams:" and line:
                parts = line.split()
                if len(parts) < 2:
                    raise SpeechtlError(f"{path}:{lineno}: malformed unigram line; expected 'logprob word [backoff]'")
                words.append(parts[1])
    if not words:
        raise SpeechtlError(f"{path}: no \\1-grams: section; not an ARPA language model")
    return words


def build_arpa(
    sentences: Iterable[str],
    path: str | os.PathLike,
    *,
    order: int = 3,
    discount: float = 0.75,
) -> Path:
    """Estimate an interpolated Kneser-Ney word n-gram LM and write it in ARPA format.

    Sentences are split on whitespace and padded with ``<s>``/``</s>``. Counts are the
    Kneser-Ney adjusted ones: raw counts for the highest order and for n-grams starting with
    ``<s>``, otherwise the number of distinct words seen before the n-gram. Every order
    interpolates, with one absolute ``discount``::

        p(w | h) = max(a(h w) - D, 0) / a(h .) + D * N(h .) / a(h .) * p(w | h')

    where ``N(h .)`` counts the distinct words after ``h``; the unigram level interpolates
    with a uniform distribution over the vocabulary and ``<unk>``, so ``<unk>`` gets a small
    probability. The ARPA backoff weight of ``h`` is ``D * N(h .) / a(h .)``, which makes
    back-off give exactly the interpolated probability of unseen n-grams.

    Returns the path written (atomically), with its sha256 beside it in ``<path>.sha256`` (``sha256sum``'s
    format), which :class:`CTCBeamDecoder` checks.
    """
    if order < 1:
        raise SpeechtlError(f"LM order must be at least 1, got {order}")
    if not 0 < discount < 1:
        raise SpeechtlError(f"discount must be in (0, 1), got {discount}")
    padded = []
    for s in sentences:
        words = s.split()
        if words:
            padded.append([BOS, *words, EOS])
    if not padded:
        raise SpeechtlError("no non-empty sentence to build a language model from")

    # counts[k][ngram] for k = 1..order (raw); n-grams never cross sentence boundaries.
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    for sent in padded:
        for k in range(1, order + 1):
            for i in range(len(sent) - k + 1):
                raw[k][tuple(sent[i : i + k])] += 1
    # Adjusted counts: continuation counts below the top order, except n-grams starting with <s>.
    adjusted: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for k in range(1, order):
        left: dict[tuple, set] = defaultdict(set)
        for g in raw[k + 1]:
            left[g[1:]].add(g[0])
        for g, c in raw[k].items():
            adjusted[k][g] = float(c) if g[0] == BOS else float(len(left.get(g, ())))
    # <s> is never predicted; its unigram exists only as a context.
    adjusted[1].pop((BOS,), None)

    vocab = sorted({w for sent in padded for w in sent if w != BOS})
    n_uniform = len(vocab) + 1  # + <unk>
    prob: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    backoff: list[dict[tuple, float]] = [{} for _ in range(order + 1)]

    # Unigrams: discounted continuation counts interpolated with a uniform distribution.
    total1 = sum(adjusted[1].values())
    gamma1 = discount * len(adjusted[1]) / total1
    for g, a in adjusted[1].items():
        prob[1][g] = max(a - discount, 0.0) / total1 + gamma1 / n_uniform
    prob[1][(UNK,)] = gamma1 / n_uniform

    def lower(g: tuple) -> float:
        # Interpolated probability of the suffix n-gram, backing off through unseen contexts.
        k = len(g)
        if k == 1:
            return prob[1].get(g, prob[1][(UNK,)])
        if g in prob[k]:
            return prob[k][g]
        return backoff[k - 1].get(g[:-1], 1.0) * lower(g[1:])

    for k in range(2, order + 1):
        ctx_total: dict[tuple, float] = defaultdict(float)
        ctx_types: Counter = Counter()
        for g, a in adjusted[k].items():
            ctx_total[g[:-1]] += a
            ctx_types[g[:-1]] += 1
        for h, total in ctx_total.items():
            backoff[k - 1][h] = discount * ctx_types[h] / total
        for g, a in adjusted[k].items():
            h = g[:-1]
            prob[k][g] = max(a - discount, 0.0) / ctx_total[h] + backoff[k - 1][h] * lower(g[1:])

    out = Path(path)
    lines = ["", "\\data\\"]
    entries: list[list[tuple[tuple, float]]] = [[] for _ in range(order + 1)]
    entries[1] = sorted(prob[1].items()) + [((BOS,), -math.inf)]
    for k in range(2, order + 1):
        entries[k] = sorted(prob[k].items())
    for k in range(1, order + 1):
        lines.append(f"ngram {k}={len(entries[k])}")
    for k in range(1, order + 1):
        lines += ["", f"\\{k}-grams:"]
        for g, p in entries[k]:
            lp = -99.0 if p == -math.inf else math.log10(p)
            line = f"{lp:.6f}\t{' '.join(g)}"
            if k < order and g in backoff[k]:
                line += f"\t{math.log10(backoff[k][g]):.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    record, text = lm_checksum_path(out), "\n".join(lines)
    record.unlink(missing_ok=True)  # a record of an earlier LM must not outlive it
    atomic_write_text(out, text)
    atomic_write_text(record, f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}  {out.name}\n")
    return out


def lm_checksum_path(lm: str | os.PathLike) -> Path:
    """Where :func:`build_arpa` records an LM file's sha256: ``<lm>.sha256`` beside it."""
    lm = Path(lm)
    return lm.with_name(lm.name + ".sha256")


def verify_lm(lm: str | os.PathLike) -> None:
    """Check an LM file against its ``<lm>.sha256`` record, if it has one (an LM from elsewhere has none)."""
    lm, record = Path(lm), lm_checksum_path(lm)
    if not record.is_file():
        return
    try:
        expected = record.read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise SpeechtlError(f"{record}: unreadable sha256 record ({e or 'empty'}); build the LM again") from None
    if sha256_file(lm) != expected:
        raise SpeechtlError(f"{lm}: does not match its sha256 record {record.name} (modified or truncated); build "
                            "the LM again (speechtl.ctc_decode.build_arpa), or delete the record to use it as it is")


def build_arpa_from_manifest(
    manifest: str | os.PathLike | Iterable[Utterance],
    path: str | os.PathLike,
    tokens: Sequence[str],
    *,
    splits: Iterable[str] | None = ("train",),
    word_delimiter: str = "|",
    order: int = 3,
    discount: float = 0.75,
) -> Path:
    """A word LM from a manifest's transcripts (by default its ``train`` split), spelled with ``tokens``.

    Only training transcripts should go in: an LM that has seen the test sentences makes the
    test WER meaningless.
    """
    from .data.manifest import read_manifest

    utts = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else list(manifest)
    if splits is not None:
        wanted = set(splits)
        utts = [u for u in utts if u.split in wanted]
    if not utts:
        raise SpeechtlError(f"{manifest if isinstance(manifest, str | os.PathLike) else 'manifest'}: no utterance "
                            f"in split(s) {sorted(wanted) if splits is not None else 'any'} to build a language model")
    texts = [text_for_tokens(u.text, tokens, word_delimiter=word_delimiter) for u in utts]
    return build_arpa(texts, path, order=order, discount=discount)


def _is_kenlm_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(32).startswith(b"mmap lm http://kheafield.com")

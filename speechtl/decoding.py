"""Decoding settings and the temperature fallback that catches Whisper's repetition loops.

Whisper sometimes falls into a loop on hard audio ("the boy, the boy, the boy, ..." up to the
token limit) or invents words on silence. OpenAI's decoder and faster-whisper catch both with the
same rule, used here for every engine:

- decode greedily (or with beam search) at temperature 0;
- if the text compresses too well (gzip ratio above ``compression_ratio_threshold``: a loop) or
  its mean token log-probability is below ``logprob_threshold`` (the model is unsure), decode again
  by sampling ``best_of`` candidates at the next temperature and keep the likeliest;
- if the model's no-speech probability is above ``no_speech_threshold`` and the text is unlikely
  (below ``logprob_threshold``), the segment is silence: its transcript is empty.

Engines give :func:`decode_with_fallback` one function, ``decode(indices, temperature)``, that
returns a :class:`Hypothesis` per index (the best of ``best_of`` samples when sampling).
Resampling runs one utterance at a time with its own seed, so a transcript never depends on
which other utterances shared its batch.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .errors import SpeechtlError

OPENAI_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodeOptions:
    """How Whisper decodes (the defaults are OpenAI's and faster-whisper's).

    Attributes:
        beam_size: beams at temperature 0 (1 = greedy).
        temperatures: the first is used first; each later one is tried when the previous result
            failed a threshold. ``(0.0,)`` turns the fallback off.
        best_of: candidates sampled at each temperature above 0; the likeliest is kept.
        compression_ratio_threshold: a gzip compression ratio above this is a repetition loop.
        logprob_threshold: a mean token log-probability below this is a failed decode.
        no_speech_threshold: with a failed log-probability, a no-speech probability above this
            means silence (empty transcript).
        max_new_tokens: tokens decoded per segment at most.
        seed: sampling seed of the fallback (one utterance at a time, so batching never changes it).
    """

    beam_size: int = 1
    temperatures: tuple[float, ...] = OPENAI_TEMPERATURES
    best_of: int = 5
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.beam_size < 1 or self.best_of < 1 or self.max_new_tokens < 1:
            raise SpeechtlError(f"beam_size, best_of and max_new_tokens must be at least 1 (got {self.beam_size}, "
                                f"{self.best_of}, {self.max_new_tokens})")
        temps = tuple(float(t) for t in self.temperatures)
        if not temps or any(t < 0 for t in temps):
            raise SpeechtlError(f"temperatures {self.temperatures!r}: give one or more values >= 0, e.g. 0,0.2,0.4")
        object.__setattr__(self, "temperatures", temps)

    @classmethod
    def plain(cls, beam_size: int = 1, max_new_tokens: int = 128) -> DecodeOptions:
        """One decode at temperature 0 with no thresholds (what training-time dev evaluation uses)."""
        return cls(beam_size=beam_size, temperatures=(0.0,), compression_ratio_threshold=None,
                   logprob_threshold=None, no_speech_threshold=None, max_new_tokens=max_new_tokens)

    def fallback_settings_set(self) -> list[str]:
        """The fallback fields set to something other than both the defaults and :meth:`plain`'s.

        A model with no fallback (CTC) can run either; any other value would be ignored.
        """
        default, plain = DecodeOptions(), DecodeOptions.plain()
        return [f for f in ("temperatures", "best_of", "compression_ratio_threshold", "logprob_threshold",
                            "no_speech_threshold", "seed")
                if getattr(self, f) not in (getattr(default, f), getattr(plain, f))]

    @property
    def fallback(self) -> bool:
        return len(self.temperatures) > 1

    def with_(self, **changes) -> DecodeOptions:
        return replace(self, **changes)


@dataclass
class Hypothesis:
    """One decoded segment and the evidence the thresholds read.

    Attributes:
        text: the transcript (stripped; empty for silence).
        avg_logprob: sum of the token log-probabilities (end-of-text included) / (tokens + 1).
        no_speech_prob: the model's probability of its no-speech token at the start of the transcript.
        temperature: the temperature that produced the text.
        tokens: how many text tokens were decoded.
    """

    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    tokens: int = 0
    compression_ratio: float = field(init=False)

    def __post_init__(self):
        self.compression_ratio = compression_ratio(self.text)
        if not math.isfinite(self.avg_logprob):  # a NaN score must fail the threshold, never pass it
            self.avg_logprob = float("-inf")


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` / bytes of it zlib-compressed: about 1-2 for speech, higher for loops."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def too_repetitive(h: Hypothesis, opts: DecodeOptions) -> bool:
    return opts.compression_ratio_threshold is not None and h.compression_ratio > opts.compression_ratio_threshold


def likeliest(candidates: Sequence[Hypothesis], compression_ratio_threshold: float | None = None) -> Hypothesis:
    """The hypothesis to keep of several for one clip (its ``best_of`` samples, or every temperature's
    result when all failed): the likeliest whose text compresses no more than the threshold (a loop is
    confident, so would win on likelihood alone), else the likeliest of all."""
    ok = [h for h in candidates if compression_ratio_threshold is None
          or h.compression_ratio <= compression_ratio_threshold]
    return max(ok or candidates, key=lambda h: h.avg_logprob)


def too_unlikely(h: Hypothesis, opts: DecodeOptions) -> bool:
    return opts.logprob_threshold is not None and h.avg_logprob < opts.logprob_threshold


def is_silence(h: Hypothesis, opts: DecodeOptions) -> bool:
    """No-speech probability above its threshold and a failed log-probability (OpenAI's rule)."""
    quiet = opts.no_speech_threshold is not None and h.no_speech_prob > opts.no_speech_threshold
    return quiet and too_unlikely(h, opts)


def needs_fallback(h: Hypothesis, opts: DecodeOptions) -> bool:
    return (too_repetitive(h, opts) or too_unlikely(h, opts)) and not is_silence(h, opts)


def decode_with_fallback(
    decode: Callable[[Sequence[int], float], list[Hypothesis]], n: int, opts: DecodeOptions
) -> list[Hypothesis]:
    """Decode ``n`` segments with the temperature fallback; silence comes back with empty text.

    ``decode(indices, temperature)`` returns one hypothesis per index. At temperature 0 all
    ``n`` are decoded together; later temperatures revisit only the failures, one at a time.
    When every temperature fails, the likeliest result that was not a loop is kept (else the
    likeliest of all), as faster-whisper does.
    """
    if opts.temperatures[0] > 0:  # sampling from the start: one at a time, so the batch never matters
        first = [decode([i], opts.temperatures[0])[0] for i in range(n)]
    else:
        first = decode(list(range(n)), opts.temperatures[0])
    best = list(first)
    for i, h in enumerate(first):
        if not needs_fallback(h, opts) or not opts.fallback:
            continue
        tried = [h]
        for t in opts.temperatures[1:]:
            h = decode([i], t)[0]
            tried.append(h)
            if not needs_fallback(h, opts):
                break
        else:
            h = likeliest(tried, opts.compression_ratio_threshold)
        best[i] = h
    for h in best:
        if is_silence(h, opts):
            h.text = ""
    return best


SHORT_CLIPS = ("auto", "on", "off")


def short_clips_mode(value: str | bool) -> bool | None:
    """``short_clips`` as :func:`speechtl.transcribe` takes it: True (``"on"``), False (``"off"``), None (``"auto"``)."""
    if isinstance(value, bool):
        return value
    if value not in SHORT_CLIPS:
        raise SpeechtlError(f"short_clips {value!r}: choose one of {', '.join(SHORT_CLIPS)} (or True, False)")
    return {"auto": None, "on": True, "off": False}[value]

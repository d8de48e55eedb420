"""Whisper beam search on a tiny random model: never worse than greedy, and a padded batch decodes as one clip at a time."""

from __future__ import annotations

import numpy as np
import pytest

import speechtl
from speechtl.backbones import create_backbone
from speechtl.decoding import DecodeOptions

MAX_NEW = 12  # a random model rarely ends a transcript: keep decoding short


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def whisper():
    return create_backbone("whisper-tiny-random")


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    return [(0.2 * np.sin(2 * np.pi * f * t[:n]) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            for f, n in ((220, 16000), (330, 6000), (150, 11000), (440, 3000))]


def decode(backbone, waves, beam_size: int):
    inputs, lengths = backbone.prepare(waves)
    return backbone.decode(inputs, lengths, beam_size=beam_size, max_new_tokens=MAX_NEW)


def test_beam_search_scores_at_least_as_well_as_greedy(whisper, waves):
    greedy = decode(whisper, waves, 1)
    beam = decode(whisper, waves, 4)
    # Beam search ranks finished hypotheses by their mean log-probability (length penalty 1), the score
    # each Hypothesis carries: it may find a better sequence than greedy's, never a worse one.
    for g, b in zip(greedy, beam):
        assert b.avg_logprob >= g.avg_logprob - 1e-4, (g, b)
    assert any(b.avg_logprob > g.avg_logprob + 1e-3 for g, b in zip(greedy, beam))  # and here it does
    assert all(h.avg_logprob <= 0 and h.tokens <= MAX_NEW for h in greedy + beam)


def test_beam_search_padded_batch_equals_one_clip_at_a_time(whisper, waves):
    batched = decode(whisper, waves, 3)
    alone = [decode(whisper, [w], 3)[0] for w in waves]
    assert [h.text for h in batched] == [h.text for h in alone]
    assert [h.avg_logprob for h in batched] == pytest.approx([h.avg_logprob for h in alone], abs=1e-4)
    # The user's call: transcribe(beam_size=...) sorts and batches clips, and keeps their order.
    opts = DecodeOptions.plain(beam_size=3, max_new_tokens=MAX_NEW)
    texts = speechtl.transcribe(whisper, waves, batch_size=3, decode_options=opts, progress=False)
    assert texts == [h.text for h in alone]

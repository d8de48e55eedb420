"""The temperature fallback (loops, unlikely text, silence) and Whisper's scored decoding."""

import numpy as np
import pytest
import torch

import speechtl
from speechtl.decoding import DecodeOptions, Hypothesis, compression_ratio, decode_with_fallback, likeliest
from speechtl.errors import SpeechtlError

LOOP = "the boy, " * 40


def test_compression_ratio_flags_loops_not_sentences():
    assert compression_ratio(LOOP) > 2.4
    assert compression_ratio("Mark lived in New York before he moved to Boston with his sister.") < 2.4
    assert compression_ratio("") == 0.0


class Scripted:
    """decode(indices, temperature) answering from a table; records every call."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, idx, t):
        self.calls.append((list(idx), t))
        return [Hypothesis(**self.table[(i, t)]) if (i, t) in self.table else Hypothesis(**self.table[(i, None)])
                for i in idx]


def test_only_failures_are_resampled_in_temperature_order_until_one_passes():
    table = {
        (0, None): dict(text="fine", avg_logprob=-0.2),
        (1, 0.0): dict(text=LOOP, avg_logprob=-0.1),  # a loop at temperature 0
        (1, 0.2): dict(text="still unsure", avg_logprob=-1.5),  # unlikely
        (1, 0.4): dict(text="the boy ran", avg_logprob=-0.6, temperature=0.4),
        (1, None): dict(text="never reached", avg_logprob=-0.1),
    }
    dec = Scripted(table)
    out = decode_with_fallback(dec, 2, DecodeOptions())
    assert [h.text for h in out] == ["fine", "the boy ran"]
    assert dec.calls == [([0, 1], 0.0), ([1], 0.2), ([1], 0.4)]


def test_when_every_temperature_fails_the_likeliest_non_loop_is_kept():
    opts = DecodeOptions(temperatures=(0.0, 0.5, 1.0))
    table = {(0, 0.0): dict(text=LOOP, avg_logprob=-0.05), (0, 0.5): dict(text="a", avg_logprob=-1.8),
             (0, 1.0): dict(text="b", avg_logprob=-1.3)}
    out = decode_with_fallback(Scripted(table), 1, opts)
    assert out[0].text == "b"  # the loop had the best log-probability but is not kept


def test_the_likeliest_sample_that_is_not_a_loop_is_kept():
    loop, unsure, sure = (Hypothesis(LOOP, -0.1), Hypothesis("the boy", -1.2), Hypothesis("the boy ran", -0.8))
    assert likeliest([loop, unsure, sure], 2.4) is sure  # the loop is likelier, but would fail the fallback's test
    assert likeliest([loop, unsure, sure]) is loop  # without a threshold: likelihood alone
    assert likeliest([loop, Hypothesis(LOOP[:-9], -0.3)], 2.4) is loop  # only loops: the likeliest of them


def test_silence_is_empty_and_not_resampled():
    dec = Scripted({(0, None): dict(text="you", avg_logprob=-1.4, no_speech_prob=0.9)})
    out = decode_with_fallback(dec, 1, DecodeOptions())
    assert out[0].text == "" and dec.calls == [([0], 0.0)]
    # Confident text is kept even when the no-speech probability is high (OpenAI's rule needs both).
    kept = decode_with_fallback(Scripted({(0, None): dict(text="yes", avg_logprob=-0.3, no_speech_prob=0.9)}),
                                1, DecodeOptions())
    assert kept[0].text == "yes"


def test_plain_options_decode_once():
    dec = Scripted({(0, None): dict(text=LOOP, avg_logprob=-3.0, no_speech_prob=0.99)})
    out = decode_with_fallback(dec, 1, DecodeOptions.plain())
    assert out[0].text == LOOP and len(dec.calls) == 1


@pytest.mark.parametrize("kw", [dict(beam_size=0), dict(best_of=0), dict(temperatures=()), dict(temperatures=(-1,))])
def test_bad_options_are_refused(kw):
    with pytest.raises(SpeechtlError):
        DecodeOptions(**kw)


@pytest.fixture(scope="module")
def whisper():
    return speechtl.create_backbone("whisper-tiny-random")


def _waves(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.6, 1.3, 0.9, 2.0)[:n]]


def test_scored_decode_is_the_same_in_a_batch_and_alone(whisper):
    feats, lens = whisper.prepare(_waves())
    batched = whisper.decode(feats, lens)
    alone = [whisper.decode(feats[i : i + 1], lens[i : i + 1])[0] for i in range(len(lens))]
    assert [h.text for h in batched] == [h.text for h in alone]
    np.testing.assert_allclose([h.avg_logprob for h in batched], [h.avg_logprob for h in alone], atol=1e-4)
    np.testing.assert_allclose([h.no_speech_prob for h in batched], [h.no_speech_prob for h in alone], atol=1e-5)
    assert all(h.avg_logprob < 0 and 0 <= h.no_speech_prob <= 1 for h in batched)
    assert [h.text for h in batched] == whisper.generate(feats, lens)


def test_avg_logprob_is_the_mean_of_the_decoded_tokens_log_probabilities(whisper):
    """Recomputed from the model's own per-step scores (transformers' generate), not from our pass."""
    feats, lens = whisper.prepare(_waves(1))
    h = whisper.decode(feats, lens, max_new_tokens=20)[0]
    enc = whisper.encode(feats, lens).last_hidden_state
    from transformers.modeling_outputs import BaseModelOutput

    out = whisper.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc), max_new_tokens=20,
                                 return_timestamps=False, output_scores=True, return_dict_in_generate=True)
    steps = torch.stack(out.scores, 1)[0].float().log_softmax(-1)  # each step after the suppressions
    ids = out.sequences[0, -steps.shape[0]:]
    eot = whisper.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    keep = (ids != eot).cumsum(0) == torch.arange(1, len(ids) + 1)  # tokens up to (and with) the first end
    n = int(keep.sum()) + (1 if (ids == eot).any() else 0)
    total = steps[torch.arange(n), ids[:n]].sum().item()
    assert h.avg_logprob == pytest.approx(total / (int(keep.sum()) + 1), abs=1e-4)


@pytest.mark.parametrize("short,masks", [(True, False), (False, False), (True, True)])
def test_cached_greedy_decoding_is_transformers_greedy_with_teacher_forced_scores(whisper, short, masks):
    """The decoding loop (key/value cache, scores taken as it decodes) against transformers' generate and
    one teacher-forced pass over its tokens, on a padded batch of short clips and at 30 s; with ``masks``
    a model with timestamp tokens (suppressed) and begin-suppressed tokens."""
    from transformers.modeling_outputs import BaseModelOutput

    if masks:
        whisper = speechtl.create_backbone("whisper-tiny-random", timestamps=True)
        eot = whisper.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        whisper.model.generation_config.begin_suppress_tokens = [eot, 32]
        whisper.model.generation_config.suppress_tokens = [33, 101]
    feats, lens = whisper.prepare(_waves(), short_clips=short)
    hyps = whisper.decode(feats, lens, max_new_tokens=24)
    states = whisper.decoder_memory(feats, lens)
    prompt, eot = whisper.prompt_ids(), whisper.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with whisper._cross_attention_mask(states, lens):
        ids = whisper.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), max_new_tokens=24,
                                     return_timestamps=False, suppress_tokens=whisper._suppressed() or None)
        rows = [row.tolist() for row in ids]
        seqs = [r[len(prompt):] if r[: len(prompt)] == prompt else r for r in rows]  # with the prompt or without
        seqs = [s[: s.index(eot) + 1] if eot in s else s for s in seqs]
        avg, no_speech = whisper._scores(states, prompt, seqs, eot)
    assert [h.tokens for h in hyps] == [len([t for t in s if t != eot]) for s in seqs]
    assert [h.text for h in hyps] == [t.strip() for t in whisper.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
    np.testing.assert_allclose([h.avg_logprob for h in hyps], avg, atol=1e-4)
    np.testing.assert_allclose([h.no_speech_prob for h in hyps], no_speech, atol=1e-5)


def test_sampling_is_seeded_and_keeps_the_likeliest_of_best_of(whisper):
    feats, lens = whisper.prepare(_waves(2))
    a = whisper.decode(feats, lens, temperature=1.0, best_of=3, seed=7)
    b = whisper.decode(feats, lens, temperature=1.0, best_of=3, seed=7)
    assert [h.text for h in a] == [h.text for h in b]
    assert all(h.temperature == 1.0 for h in a)
    singles = [whisper.decode(feats[:1], lens[:1], temperature=1.0, best_of=1, seed=s)[0] for s in range(3)]
    assert len({h.text for h in singles}) > 1  # temperature 1 really samples


def test_a_looping_row_stops_once_its_text_fails_the_compression_test(whisper):
    """The random model repeats one token under greedy decoding: with the threshold each row stops at the
    first check, as the prefix of its full decoding, scored over the tokens it has; sampled rows (no loop)
    are unchanged, and a row decodes the same in a batch and alone."""
    from speechtl.backbones.whisper import LOOP_CHECK_FROM

    feats, lens = whisper.prepare(_waves())
    full = whisper.decode(feats, lens, max_new_tokens=64)
    cut = whisper.decode(feats, lens, max_new_tokens=64, compression_ratio_threshold=2.4)
    alone = [whisper.decode(feats[i : i + 1], lens[i : i + 1], max_new_tokens=64,
                            compression_ratio_threshold=2.4)[0] for i in range(len(lens))]
    assert all(h.tokens == 64 and h.compression_ratio > 2.4 for h in full)  # loops to the cap without it
    assert [h.tokens for h in cut] == [LOOP_CHECK_FROM] * len(lens)
    assert all(h.compression_ratio > 2.4 and f.text.startswith(h.text) for h, f in zip(cut, full))
    states, prompt = whisper.decoder_memory(feats, lens), whisper.prompt_ids()
    eot = whisper.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with whisper._cross_attention_mask(states, lens):
        rows, *_ = whisper._decode_loop(states, prompt, 64, 0.0, eot)
        prefixes = [r[:LOOP_CHECK_FROM] for r in rows]
        avg, _ = whisper._scores(states, prompt, prefixes, eot)  # teacher-forced over the kept tokens
    assert [h.text for h in cut] == [t.strip() for t in whisper.tokenizer.batch_decode(prefixes, skip_special_tokens=True)]
    np.testing.assert_allclose([h.avg_logprob for h in cut], avg, atol=1e-4)
    assert [(h.text, round(h.avg_logprob, 4)) for h in cut] == [(h.text, round(h.avg_logprob, 4)) for h in alone]
    sampled = [whisper.decode(feats, lens, temperature=1.0, best_of=2, max_new_tokens=40, seed=3,
                              compression_ratio_threshold=r) for r in (None, 2.4)]
    assert all(h.compression_ratio < 2.4 for h in sampled[0])
    assert [h.text for h in sampled[0]] == [h.text for h in sampled[1]]


def test_the_sampler_draws_each_token_at_its_probability_and_never_a_suppressed_one():
    from speechtl.backbones.whisper import sample

    torch.manual_seed(0)
    logits = torch.tensor([[1.0, float("-inf"), 0.0, 2.0, float("-inf"), -1.0]]).repeat(40000, 1)
    drawn = sample(logits, 0.7)
    freq = torch.bincount(drawn, minlength=6).float() / len(drawn)
    expected = (logits[0] / 0.7).softmax(-1)
    assert freq[1] == 0 and freq[4] == 0
    np.testing.assert_allclose(freq, expected, atol=0.01)
    edge = torch.full((1, 6), float("-inf"))
    edge[0, 5] = 0.0  # only the last token is possible
    assert sample(edge, 1.0).tolist() == [5]


def test_the_vocabulary_projection_is_the_linear_layer(whisper):
    from speechtl.backbones.whisper import vocab_logits

    hidden = torch.randn(3, whisper.model.config.d_model)
    with torch.no_grad():
        torch.testing.assert_close(vocab_logits(whisper.model.proj_out, hidden), whisper.model.proj_out(hidden),
                                   atol=1e-5, rtol=1e-5)


def test_a_wrapped_vocabulary_projection_runs_its_own_forward():
    """An adapter on the output layer (a module wrapping it) must take part in decoding."""
    whisper = speechtl.create_backbone("whisper-tiny-random")
    token = 42  # a plain byte token, neither suppressed nor special

    class Boost(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            out[..., token] += 100.0
            return out

    whisper.model.proj_out = Boost(whisper.model.proj_out)
    feats, lens = whisper.prepare(_waves(2))
    hyps = whisper.decode(feats, lens, max_new_tokens=6)
    assert hyps[0].text == whisper.tokenizer.decode([token] * 6)


def test_fallback_results_do_not_depend_on_the_batch(whisper):
    """The random model fails the log-probability threshold, so every clip goes through the fallback."""
    waves = _waves()
    batched = speechtl.transcribe(whisper, waves, batch_size=4, return_segments=True)
    alone = [speechtl.transcribe(whisper, w, return_segments=True)[0] for w in waves]
    assert any(t.segments[0].temperature > 0 for t in batched)
    assert [t.text for t in batched] == [t.text for t in alone]


def test_a_multilingual_model_without_a_language_is_refused(whisper):
    whisper.multilingual, whisper.language = True, None
    try:
        with pytest.raises(SpeechtlError, match="language='en'"):
            whisper.prompt_ids()
    finally:
        whisper.multilingual, whisper.language = False, None

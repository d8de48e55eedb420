"""Whisper (sequence-to-sequence ASR) behind the :class:`~speechtl.backbones.base.Backbone` interface.

The encoder runs here rather than through ``WhisperEncoder.forward`` for two reasons:
every layer's output is returned (for layer-weighted heads), and clips can be padded only
to the batch's longest clip instead of 30 s (``short_clips``) by slicing the positional
embeddings. In that mode padded frames are masked out of the encoder's self-attention, so a
padded batch gives each clip the same encoder states as encoding it alone; decoding masks them
out of the decoder's cross-attention too, so each clip gets the transcript it gets alone.
(Teacher-forced training does not: gradient checkpointing recomputes the decoder layers outside
any mask hook, and the few padded states of a length-sorted batch are what the adapters train with.)
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import logging as hf_logging

from ..decoding import Hypothesis, compression_ratio, likeliest
from ..errors import AudioError, ModelNotFoundError, SpeechtlError
from ._tokenizers import WHISPER_SPECIALS, byte_level_tokenizer
from .base import EncoderOutput, layer_groups_by_prefix
from .registry import offline_hint, register_backbone, register_family

HOP = 160  # mel hop length (samples at 16 kHz): 100 frames per second
TIMESTAMP_STEP = 0.02  # seconds between Whisper's timestamp tokens
# A decoding row is tested for a loop (its text's compression ratio) every LOOP_CHECK_EVERY tokens from
# LOOP_CHECK_FROM on: below that a text is too short for zlib to find a repeat.
LOOP_CHECK_FROM = 24
LOOP_CHECK_EVERY = 8


class WhisperBackbone(nn.Module):
    """A Whisper model and its processor.

    Args:
        model: the transformers model (owned by this backbone).
        processor: its ``WhisperProcessor`` (feature extractor + tokenizer).
        name: the name it was created from.
        short_clips: pad each batch only to its longest clip (faster, for training) rather than
            to 30 s (what the pretrained model saw; the default for zero-shot decoding).
        language: decoding/training language for multilingual models (``"en"`` by default).
    """

    modality = "audio"
    task = "seq2seq"
    default_adapter_targets = ("q_proj", "v_proj")

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        processor: WhisperProcessor,
        name: str,
        *,
        short_clips: bool = False,
        language: str | None = "en",
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        self.name = name
        self.short_clips = short_clips
        cfg = model.config
        self.sample_rate = processor.feature_extractor.sampling_rate
        self.hidden_size = cfg.d_model
        self.num_layers = cfg.encoder_layers
        self.max_frames = cfg.max_source_positions * 2  # mel frames the encoder was trained on (30 s)
        self.multilingual = bool(getattr(model.generation_config, "is_multilingual", cfg.vocab_size >= 51865))
        self.language = language if self.multilingual else None

    # -- inputs ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prepare(self, waveforms: list[np.ndarray], short_clips: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(samples,)`` at 16 kHz to log-mel ``(batch, n_mels, frames)`` and valid frame counts ``(batch,)``.

        Each clip's features are those of the clip padded to 30 s, so they do not depend on the
        other clips in the batch; with ``short_clips`` the batch stops at its longest clip
        (rounded up to an even frame count, the encoder's stride) and is zero beyond each clip.
        """
        short = self.short_clips if short_clips is None else short_clips
        max_samples = self.max_frames * HOP
        for i, w in enumerate(waveforms):
            if len(w) == 0:
                raise AudioError(f"clip {i} of the batch is empty")
            if len(w) > max_samples:
                raise AudioError(
                    f"clip {i} of the batch is {len(w) / self.sample_rate:.1f} s; Whisper takes at most "
                    f"{max_samples / self.sample_rate:.0f} s per clip: split longer audio into segments"
                )
        feats, lengths = log_mel(self.processor.feature_extractor, waveforms, short=short, max_frames=self.max_frames)
        return (self.shorten(feats, lengths) if short else feats), lengths

    @staticmethod
    def shorten(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """30-s log-mel ``(batch, n_mels, 3000)`` cut to the batch's longest clip (an even frame count),
        zero beyond each clip: what :meth:`prepare` gives with ``short_clips``."""
        frames = int(lengths.max())
        frames += frames % 2
        feats = feats[..., :frames].clone()
        # Zero beyond each clip, as the first convolution's own padding does for a clip alone.
        beyond = torch.arange(frames, device=feats.device)[None, None, :] >= lengths.to(feats.device)[:, None, None]
        feats.masked_fill_(beyond, 0.0)
        return feats

    # -- encoder ----------------------------------------------------------------------------
    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Log-mel ``(batch, n_mels, frames)`` to per-layer states ``(batch, frames // 2, d_model)``."""
        enc = self.model.model.encoder
        frames = inputs.shape[-1]
        if frames > self.max_frames or frames % 2:
            raise ValueError(f"Whisper encoder takes an even number of frames up to {self.max_frames}, got {frames}")
        x = F.gelu(enc.conv1(inputs.to(enc.conv1.weight.dtype)))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        steps = x.shape[1]
        x = x + enc.embed_positions.weight[:steps].to(x.dtype)
        x = F.dropout(x, p=enc.dropout, training=self.training)
        enc_lengths = torch.div(lengths.to(x.device) + 1, 2, rounding_mode="floor").clamp(max=steps)
        mask = None
        if steps < enc.config.max_source_positions:
            # Short-clip mode: keep padding out of the keys so batching never changes a clip's states.
            valid = torch.arange(steps, device=x.device)[None, :] < enc_lengths[:, None]
            mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        states = [x]
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop:
                states.append(x)
                continue
            x = layer(x, mask)
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return EncoderOutput(tuple(states), enc_lengths)

    # -- ASR ----------------------------------------------------------------------------------
    def prompt_ids(self, timestamps: bool = False) -> list[int]:
        """Decoder prompt: start-of-transcript, language and task (multilingual), and ``<|notimestamps|>``
        unless the transcript is to carry timestamps."""
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids("<|startoftranscript|>")]
        if self.multilingual:
            if not self.language:
                raise SpeechtlError(f"{self.name} is multilingual and was given no language; create it with "
                                    "language='en' (or another language code)")
            ids += [tok.convert_tokens_to_ids(f"<|{self.language}|>"), tok.convert_tokens_to_ids("<|transcribe|>")]
        if not timestamps:
            ids.append(tok.convert_tokens_to_ids("<|notimestamps|>"))
        return ids

    def timestamp_id(self, seconds: float) -> int:
        """The token of the timestamp nearest ``seconds`` (Whisper's 20-ms steps after ``<|notimestamps|>``)."""
        first = self.tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
        steps = round(min(max(seconds, 0.0), self.max_frames * HOP / self.sample_rate) / TIMESTAMP_STEP)
        if first + steps >= self.model.config.vocab_size:
            raise SpeechtlError(f"{self.name} has no timestamp tokens (its vocabulary ends at "
                                f"<|notimestamps|>): train it with timestamp_share=0")
        return first + steps

    def _sequence(self, text: str, span: tuple[float, float] | None) -> tuple[list[int], int]:
        """``text``'s training sequence (prompt, words, end of text; timestamped around them with a
        ``span``) and the prompt's length."""
        words = self.tokenizer.encode(" " + whisper_case(text), add_special_tokens=False)
        prompt = self.prompt_ids(timestamps=span is not None)
        if span is not None:
            words = [self.timestamp_id(span[0]), *words, self.timestamp_id(span[1])]
        return prompt + words + [self.tokenizer.convert_tokens_to_ids("<|endoftext|>")], len(prompt)

    def label_length(self, text: str, *, timestamps: bool = False) -> int:
        """Tokens of ``text``'s training sequence in :meth:`label_ids` (with ``timestamps`` the longer,
        timestamped form), which may not exceed :attr:`max_label_tokens`."""
        return len(self._sequence(text, (0.0, 0.0) if timestamps else None)[0])

    @property
    def max_label_tokens(self) -> int:
        """The decoder's length limit (``max_target_positions``)."""
        return int(self.model.config.max_target_positions)

    def label_ids(self, texts: list[str], spans: list[tuple[float, float] | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forcing inputs and targets ``(batch, tokens)``; targets are -100 on the prompt and padding.

        ``spans`` (one per text, or ``None``): where a text has a speech span ``(start, end)`` in
        seconds, its sequence is Whisper's timestamped form, ``<|sot|> <|start|> text <|end|> <|eot|>``
        (no ``<|notimestamps|>`` in the prompt), so training keeps the model's timestamp mode.
        """
        eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        spans = spans if spans is not None else [None] * len(texts)
        if len(spans) != len(texts):
            raise ValueError(f"{len(spans)} spans for {len(texts)} transcripts")
        pairs = [self._sequence(t, span) for t, span in zip(texts, spans)]
        seqs, prompts = [seq for seq, _ in pairs], [n for _, n in pairs]
        limit = self.max_label_tokens
        longest = max(len(s) for s in seqs)
        if longest > limit:
            raise ValueError(f"a transcript is {longest} tokens, over Whisper's {limit}-token decoder limit")
        inp = torch.full((len(seqs), longest - 1), eot, dtype=torch.long)
        tgt = torch.full((len(seqs), longest - 1), -100, dtype=torch.long)
        for i, (s, n) in enumerate(zip(seqs, prompts)):
            inp[i, : len(s) - 1] = torch.tensor(s[:-1])
            tgt[i, n - 1 : len(s) - 1] = torch.tensor(s[n:])
        return inp, tgt

    def loss(self, inputs: torch.Tensor, lengths: torch.Tensor, texts: list[str],
             spans: list[tuple[float, float] | None] | None = None) -> torch.Tensor:
        """Mean token cross-entropy of the transcripts given the audio (teacher forcing).

        ``spans``: as :meth:`label_ids`."""
        logits, tgt = self.logits(inputs, lengths, texts, spans)
        return self.loss_from_logits(logits, tgt)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` from :meth:`logits`' output (so one forward pass can serve other terms too)."""
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def logits(self, inputs: torch.Tensor, lengths: torch.Tensor, texts: list[str],
               spans: list[tuple[float, float] | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder logits ``(batch, tokens, vocab)`` under teacher forcing, and their targets."""
        dec_in, tgt = self.label_ids(texts, spans)
        device = inputs.device
        enc = self.encode(inputs, lengths)
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
            decoder_input_ids=dec_in.to(device),
            use_cache=False,
        )
        return out.logits, tgt.to(device)

    @contextlib.contextmanager
    def _cross_attention_mask(self, states: torch.Tensor, lengths: torch.Tensor | None):
        """Inside this block the decoder attends only to each clip's own encoder states.

        Used by decoding, for short-clip batches (fewer than 1500 encoder states): at 30 s the model
        attends to the encoded silence, as it was trained. transformers' Whisper decoder takes no
        encoder mask, so it is handed to every decoder layer by a hook; rows repeated for beams or samples
        (``repeat_interleave``, as generation expands the encoder's output) get their clip's mask.
        """
        steps = states.shape[1]
        if lengths is None or steps >= self.model.config.max_source_positions:
            yield
            return
        enc_lengths = torch.div(lengths.to(states.device) + 1, 2, rounding_mode="floor").clamp(max=steps)
        if bool((enc_lengths >= steps).all()):
            yield
            return
        valid = torch.arange(steps, device=states.device)[None, :] < enc_lengths[:, None]
        mask = torch.zeros(valid.shape, dtype=states.dtype, device=states.device)
        mask = mask.masked_fill(~valid, torch.finfo(states.dtype).min)[:, None, None, :]

        def hook(_module, args, kwargs):
            rows = args[0].shape[0]
            kwargs["encoder_attention_mask"] = mask if rows == len(mask) else mask.repeat_interleave(
                rows // len(mask), 0)
            return args, kwargs

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in self.model.model.decoder.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def generate(
        self, inputs: torch.Tensor, lengths: torch.Tensor, *, beam_size: int = 1, max_new_tokens: int = 128
    ) -> list[str]:
        """Decode transcripts (greedy, or beam search with ``beam_size > 1``) without timestamps."""
        return [h.text for h in self.decode(inputs, lengths, beam_size=beam_size, max_new_tokens=max_new_tokens,
                                            score=False)]

    @torch.no_grad()
    def decode(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        *,
        temperature: float = 0.0,
        beam_size: int = 1,
        best_of: int = 1,
        max_new_tokens: int = 128,
        seed: int = 0,
        score: bool = True,
        encoder_states: torch.Tensor | None = None,
        compression_ratio_threshold: float | None = None,
    ) -> list[Hypothesis]:
        """One :class:`~speechtl.decoding.Hypothesis` per clip of log-mel ``(batch, n_mels, frames)``.

        At ``temperature`` 0: greedy or beam search. Above 0: ``best_of`` samples per clip (seeded
        with ``seed``), the one with the highest mean log-probability kept. With ``score`` each
        hypothesis carries its mean token log-probability and the no-speech probability, which the
        temperature fallback reads (greedy and sampled decoding score as they decode; beam search
        with one teacher-forced pass over the decoded tokens).
        ``encoder_states`` (from :meth:`decoder_memory`) skips the encoder: the fallback decodes a
        clip again without encoding it again.
        ``compression_ratio_threshold`` (the fallback's): greedy and sampled rows whose text already
        compresses above it stop there, as loops that would fail the fallback's test at any length, rather
        than running to ``max_new_tokens``; of the samples, the likeliest below it is kept
        (:func:`~speechtl.decoding.likeliest`).
        """
        states = encoder_states if encoder_states is not None else self.decoder_memory(inputs, lengths)
        n = states.shape[0]
        sample = temperature > 0
        if sample:
            states = states.repeat_interleave(best_of, 0)
        prompt = self.prompt_ids()
        # new tokens after the prompt; the prompt and they must fit the decoder's positions
        new = min(max_new_tokens, self.model.config.max_target_positions - len(prompt))
        if new < 1:
            raise SpeechtlError(f"{self.name}: the decoder takes {self.model.config.max_target_positions} positions, "
                                f"no more than its {len(prompt)}-token prompt; it cannot decode")
        eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        rng = torch.random.fork_rng(devices=[states.device] if states.device.type == "cuda" else [])
        with _quiet_transformers(), rng, self._cross_attention_mask(states, lengths):
            if sample or (beam_size == 1 and self._plain_generation()):
                torch.manual_seed(seed)
                seqs, avg, no_speech = self._decode_loop(states, prompt, new, temperature, eot,
                                                         compression_ratio_threshold)
            else:  # beam search, or greedy under generation settings the loop does not apply
                seqs = self._beam_search(states, prompt, new, beam_size, eot)
                avg, no_speech = self._scores(states, prompt, seqs, eot) if score else (None, None)
        if not score:  # text only (generate())
            avg = no_speech = [0.0] * len(seqs)
        texts = [t.strip() for t in self.tokenizer.batch_decode([[t for t in s if t != eot] for s in seqs],
                                                                skip_special_tokens=True)]
        hyps = [Hypothesis(t, a, p, temperature, len([x for x in s if x != eot]))
                for t, a, p, s in zip(texts, avg, no_speech, seqs)]
        if not sample:
            return hyps
        return [likeliest(hyps[i * best_of : (i + 1) * best_of], compression_ratio_threshold) for i in range(n)]

    def _decode_loop(self, states: torch.Tensor, prompt: list[int], new: int, temperature: float, eot: int,
                     loop_ratio: float | None = None) -> tuple[list[list[int]], list[float], list[float]]:
        """Greedy (``temperature`` 0) or sampled decoding of encoder states ``(batch, steps, d_model)``, one
        token a step with the key/value cache, scored as it goes.

        Returns each row's tokens (end-of-text included when reached), their mean log-probability (the sum over
        the tokens, end-of-text included, / (text tokens + 1), as faster-whisper computes it; at temperature 1
        after the token suppression, the scale the thresholds are set on) and the no-speech probability after
        start-of-transcript. The scores come from the decoding pass itself: no second pass over the tokens.
        With ``loop_ratio``, every ``LOOP_CHECK_EVERY`` tokens from ``LOOP_CHECK_FROM`` on, a row whose text
        compresses above it stops (no end-of-text; its score is over the tokens it has).
        """
        n, device = states.shape[0], states.device
        decoder, proj = self.model.model.decoder, self.model.proj_out
        vocab = self.model.config.vocab_size
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[self._suppressed()] = True
        first = banned.clone()  # the first token is never blank or end-of-text (begin-suppressed)
        first[list(self.model.generation_config.begin_suppress_tokens or [])] = True
        no_speech_id = self._no_speech_id()
        ids = torch.tensor([prompt] * n, device=device)
        tokens, cache = [], None
        total = torch.zeros(n, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        no_speech = torch.zeros(n)
        for step in range(new):
            out = decoder(input_ids=ids, encoder_hidden_states=states, past_key_values=cache, use_cache=True)
            cache, hidden = out.past_key_values, out.last_hidden_state
            live = (~done).nonzero().flatten()  # finished rows are not projected (all rows at step 0)
            if step == 0 and no_speech_id is not None:
                # After start-of-transcript and at the prompt's end in one product: the vocabulary
                # projection costs its weights' reading, whatever the rows.
                both = vocab_logits(proj, hidden[:, [0, -1]].reshape(2 * n, -1)).view(n, 2, -1)
                no_speech, logits = both[:, 0].softmax(-1)[:, no_speech_id], both[:, 1]
            else:
                logits = vocab_logits(proj, hidden[live, -1])
            logits = logits.masked_fill(first if step == 0 else banned, float("-inf"))
            pick = sample(logits, temperature) if temperature > 0 else logits.argmax(-1)
            nxt = torch.full((n,), eot, dtype=torch.long, device=device)
            nxt[live] = pick
            total[live] += logits.log_softmax(-1).gather(1, pick[:, None]).squeeze(1)
            tokens.append(nxt)
            done |= nxt == eot
            if loop_ratio is not None and step + 1 >= LOOP_CHECK_FROM and (step + 1) % LOOP_CHECK_EVERY == 0:
                done |= self._looping(torch.stack(tokens, 1), done, loop_ratio)
            if bool(done.all()):
                break
            ids = nxt[:, None]
        rows = torch.stack(tokens, 1).tolist()
        seqs = [r[: r.index(eot) + 1] if eot in r else r for r in rows]
        avg = [t / (len(s) - (s[-1] == eot) + 1) for t, s in zip(total.tolist(), seqs)]
        return seqs, avg, no_speech.tolist()

    def _looping(self, rows: torch.Tensor, done: torch.Tensor, ratio: float) -> torch.Tensor:
        """Which of the rows still decoding ``(batch, tokens)`` hold a text compressing above ``ratio``."""
        live = (~done).nonzero().flatten().tolist()
        texts = self.tokenizer.batch_decode(rows[live].tolist(), skip_special_tokens=True)
        out = torch.zeros_like(done)
        for i, t in zip(live, texts):
            out[i] = compression_ratio(t.strip()) > ratio
        return out

    def _beam_search(self, states: torch.Tensor, prompt: list[int], new: int, beam_size: int, eot: int
                     ) -> list[list[int]]:
        """Beam search (or greedy search under a generation config with more than token suppression) with
        transformers' generation: tokens after the prompt, end-of-text included when reached. The same tokens
        are suppressed as in :meth:`_decode_loop`, timestamps included."""
        kwargs: dict[str, Any] = {"language": self.language, "task": "transcribe"} if self.multilingual else {}
        ids = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), max_new_tokens=new,
                                  return_timestamps=False, do_sample=False, num_beams=beam_size,
                                  suppress_tokens=self._suppressed() or None, **kwargs)
        if not torch.is_tensor(ids):  # some generate paths return a dict-like output
            ids = ids["sequences"]
        seqs = [_strip_prompt(row.tolist(), prompt) for row in ids]
        return [s[: s.index(eot) + 1] if eot in s else s for s in seqs]

    @torch.no_grad()
    def decoder_memory(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What the decoder attends to: the encoder's last states ``(batch, frames // 2, d_model)``."""
        return self.encode(inputs, lengths).last_hidden_state

    def _scores(self, states: torch.Tensor, prompt: list[int], seqs: list[list[int]], eot: int
                ) -> tuple[list[float], list[float]]:
        """Mean log-probability of each decoded sequence (end-of-text included, over tokens + 1, as
        faster-whisper computes it) and the no-speech probability after start-of-transcript."""
        width = len(prompt) + max(len(s) for s in seqs)
        dec_in = torch.full((len(seqs), width), eot, dtype=torch.long)
        for i, s in enumerate(seqs):
            dec_in[i, : len(prompt) + len(s)] = torch.tensor(prompt + s)
        dec_in = dec_in.to(states.device)
        logits = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=states), decoder_input_ids=dec_in,
                            use_cache=False).logits.float()
        # Log-probabilities after the generation config's token suppression, as OpenAI's decoder and
        # CTranslate2 score them (the thresholds are set on that scale).
        masked = logits.clone()
        gen = self.model.generation_config
        suppressed = self._suppressed()
        if suppressed:
            masked[:, :, suppressed] = float("-inf")
        if gen.begin_suppress_tokens:
            masked[:, len(prompt) - 1, list(gen.begin_suppress_tokens)] = float("-inf")
        logp = masked.log_softmax(-1)
        avg = []
        for i, s in enumerate(seqs):
            pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(s), device=logp.device)
            total = logp[i, pos, torch.tensor(s, device=logp.device)].sum().item() if s else 0.0
            text_tokens = len(s) - (1 if s and s[-1] == eot else 0)
            avg.append(total / (text_tokens + 1))
        no_speech_id = self._no_speech_id()
        if no_speech_id is None:
            return avg, [0.0] * len(seqs)
        return avg, logits[:, 0].softmax(-1)[:, no_speech_id].tolist()

    def _plain_generation(self) -> bool:
        """Whether the generation config asks only for token suppression, all :meth:`_decode_loop` applies
        (a repetition penalty, n-gram blocking or banned word sequences send greedy search to transformers)."""
        gen = self.model.generation_config
        return (getattr(gen, "repetition_penalty", None) in (None, 1.0)
                and not getattr(gen, "no_repeat_ngram_size", None) and not getattr(gen, "bad_words_ids", None))

    def _suppressed(self) -> list[int]:
        """The generation config's suppressed tokens and every timestamp token (the prompt has <|notimestamps|>)."""
        gen = self.model.generation_config
        ids = list(gen.suppress_tokens or [])
        no_ts = getattr(gen, "no_timestamps_token_id", None)
        if no_ts is not None:
            ids += list(range(no_ts + 1, self.model.config.vocab_size))
        return ids

    def _no_speech_id(self) -> int | None:
        tok = self.tokenizer
        for name in ("<|nospeech|>", "<|nocaptions|>"):
            i = tok.convert_tokens_to_ids(name)
            if i is not None and i != tok.unk_token_id:
                return i
        return None

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """frontend (convs, positions), encoder layers, head (encoder norm and the whole decoder)."""
        return layer_groups_by_prefix(
            self,
            frontend=("model.model.encoder.conv1", "model.model.encoder.conv2", "model.model.encoder.embed_positions"),
            layers="model.model.encoder.layers",
            num_layers=self.num_layers,
        )


def log_mel(feature_extractor: WhisperFeatureExtractor, waveforms: list[np.ndarray], *, short: bool = False,
            max_frames: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's log-mel ``(batch, n_mels, frames)`` of clips padded to 30 s, and each clip's frame count ``(batch,)``.

    With ``short`` the frames stop at the batch's longest clip (an even count) and only the audio up
    to there is transformed: the same values as the 30-s features' first frames, several times
    cheaper on short clips. (Beyond a shorter clip of the batch the frames are those of silence.)
    """
    hop, n_fft = feature_extractor.hop_length, feature_extractor.n_fft
    lengths = torch.tensor([min(math.ceil(len(w) / hop), max_frames) for w in waveforms])
    samples = max_frames * hop
    if short:
        # Zeros past the longest clip, so that every frame touching a clip (n_fft / 2 samples either
        # side, and the reflection at the STFT's end) reads what it reads at 30 s: the values, and each
        # clip's maximum that the log-mel is clamped against, are the 30-s features'.
        need = max(len(w) for w in waveforms) + n_fft + 2 * hop
        samples = min(samples, -(-need // hop) * hop)
    feats = feature_extractor([np.asarray(w, dtype=np.float32) for w in waveforms],
                              sampling_rate=feature_extractor.sampling_rate, padding="max_length", max_length=samples,
                              return_tensors="pt").input_features
    if short:
        frames = int(lengths.max())
        feats = feats[..., : frames + frames % 2]
    return feats, lengths


def vocab_logits(proj: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``proj(hidden)`` for a few rows ``(rows, d_model)``, in float32.

    Computed as ``weight @ hidden.T``, which streams the vocabulary matrix row by row: on CPU, several
    times faster than ``linear`` for the 1-10 rows a decoding step projects (the same values, to float
    rounding). A layer that is not a plain ``nn.Linear`` (one wrapped by an adapter) runs its own forward.
    """
    if type(proj) is not nn.Linear:
        return proj(hidden).float()
    out = (proj.weight @ hidden.T).T
    if proj.bias is not None:
        out = out + proj.bias
    return out.float()


def sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of ``logits`` ``(rows, vocab)`` drawn from ``softmax(logits / temperature)``.

    By the inverse of the cumulative distribution: one uniform number a row, where ``torch.multinomial``
    costs about a millisecond a row over Whisper's vocabulary on CPU. A token of probability 0 (a
    suppressed one) is never drawn.
    """
    cdf = (logits.float() / temperature).softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def whisper_case(text: str) -> str:
    """All-caps transcripts (speechocean762 prompts, LibriSpeech) in sentence case.

    Whisper's vocabulary and training text are cased: upper-case targets split into several
    times more tokens and teach the model to shout, which costs WER on every other accent.
    Mixed-case text is kept as it is.
    """
    text = " ".join(text.split())
    letters = [c for c in text if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
        text = text.lower()
        text = text[:1].upper() + text[1:]
        text = re.sub(r"\bi\b", "I", text)
    return text


def _strip_prompt(ids: list[int], prompt: list[int]) -> list[int]:
    """Generated ids without the decoder prompt (transformers returns it on some paths)."""
    return ids[len(prompt):] if ids[: len(prompt)] == prompt else ids


@contextlib.contextmanager
def _quiet_transformers():
    # generate() warns about pad == eos and missing attention masks, which do not apply to
    # encoder_outputs given directly; keep real errors, drop that noise.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# -- builders ----------------------------------------------------------------------------------


def from_pretrained(
    name_or_path: str, *, dtype: torch.dtype = torch.float32, short_clips: bool = False, language: str | None = "en",
    display_name: str | None = None,
) -> WhisperBackbone:
    """Load a Whisper model and processor from a local folder or a hub id."""
    try:
        model = WhisperForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)
        processor = WhisperProcessor.from_pretrained(name_or_path)
    except OSError as e:
        hint = offline_hint()
        raise ModelNotFoundError(f"cannot load Whisper model {name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    model.eval()
    return WhisperBackbone(model, processor, display_name or str(name_or_path), short_clips=short_clips, language=language)


def _packaged(name: str):
    def build(**kw) -> WhisperBackbone:
        from ..convert.packaged import packaged_model_dir

        return from_pretrained(str(packaged_model_dir(name)), display_name=name, **kw)

    build.__name__ = f"whisper_{name}"
    return build


register_backbone("whisper-tiny.en")(_packaged("whisper-tiny.en"))
register_backbone("whisper-base")(_packaged("whisper-base"))
register_family(from_pretrained, hub_prefixes=("openai/whisper-", "distil-whisper/"), model_types=("whisper",))


@register_backbone("whisper-tiny-random")
def whisper_tiny_random(*, seed: int = 0, short_clips: bool = False, d_model: int = 64, layers: int = 2,
                        timestamps: bool = False) -> WhisperBackbone:
    """A 2-layer, 64-wide random English-only Whisper with a byte-level tokenizer, for tests.

    With ``timestamps`` the vocabulary goes on after ``<|notimestamps|>`` with Whisper's 1501
    timestamp tokens ``<|0.00|>`` ... ``<|30.00|>``, as the real models' does.
    """
    specials = WHISPER_SPECIALS
    if timestamps:
        specials += tuple(f"<|{i * TIMESTAMP_STEP:.2f}|>" for i in range(1501))
    tok = WhisperTokenizerFast(tokenizer_object=byte_level_tokenizer(specials), unk_token="<|endoftext|>",
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(specials[1:])})
    ids = {t: tok.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=1500,
        max_target_positions=128,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
        max_length=config.max_target_positions,
    )
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    return WhisperBackbone(model, processor, "whisper-tiny-random", short_clips=short_clips)

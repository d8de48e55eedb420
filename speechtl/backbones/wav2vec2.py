"""The wav2vec2 family (wav2vec2, HuBERT, WavLM, data2vec-audio): CTC ASR on raw waveforms.

All four share one shape — a convolutional frontend, a feature projection, a transformer
encoder and a CTC head — so one class serves them through the transformers Auto classes.

Padding: models whose frontend uses group norm (wav2vec2-base, HuBERT-base) normalise
each channel over the whole padded input, so the usual batched forward gives a clip
different features when it shares a batch with a longer one. Here such frontends run clip
by clip and the encoder masks padding, so a padded batch equals one-at-a-time.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoTokenizer,
    Data2VecAudioConfig,
    HubertConfig,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    WavLMConfig,
)

from ..errors import AudioError, ModelNotFoundError
from ._tokenizers import char_vocab
from .base import EncoderOutput, layer_groups_by_prefix
from .registry import offline_hint, register_backbone, register_family

FAMILY_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")


class Wav2Vec2Backbone(nn.Module):
    """A wav2vec2-family CTC model and its processor (feature extractor + character tokenizer)."""

    modality = "audio"
    task = "ctc"
    default_adapter_targets = ("q_proj", "v_proj")

    def __init__(self, model: nn.Module, processor: Wav2Vec2Processor, name: str):
        super().__init__()
        self.model = model
        self.processor = processor
        self.name = name
        cfg = model.config
        self.sample_rate = processor.feature_extractor.sampling_rate
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.base = getattr(model, model.base_model_prefix)
        self.blank_id = cfg.pad_token_id
        vocab = processor.tokenizer.get_vocab()
        self._upper = any(c in vocab for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ") and not any(
            c in vocab for c in "abcdefghijklmnopqrstuvwxyz"
        )
        self._vocab_chars = {k for k in vocab if len(k) == 1}

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prepare(self, waveforms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(samples,)`` to a zero-padded batch ``(batch, samples)`` and sample counts ``(batch,)``.

        Each clip is normalised to zero mean and unit variance over its own samples when the
        feature extractor asks for it (as the pretrained models were trained).
        """
        lengths = torch.tensor([len(w) for w in waveforms])
        if (lengths == 0).any():
            raise AudioError(f"clip {int((lengths == 0).nonzero()[0])} of the batch is empty")
        batch = torch.zeros(len(waveforms), int(lengths.max()))
        for i, w in enumerate(waveforms):
            w = torch.as_tensor(np.asarray(w, dtype=np.float32))
            if self.processor.feature_extractor.do_normalize:
                w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)
            batch[i, : len(w)] = w
        return batch, lengths

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.base._get_feat_extract_output_lengths(lengths).long()

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Waveforms ``(batch, samples)`` to per-layer states ``(batch, frames, hidden)`` (~50 frames/s)."""
        base = self.base
        lengths = lengths.to(inputs.device)
        dtype = next(base.feature_extractor.parameters()).dtype
        inputs = inputs.to(dtype)
        if getattr(self.model.config, "feat_extract_norm", "layer") == "group" and inputs.shape[0] > 1:
            feats = [base.feature_extractor(inputs[i : i + 1, : int(n)]) for i, n in enumerate(lengths)]
            frames = max(f.shape[-1] for f in feats)
            feats = torch.cat([F.pad(f, (0, frames - f.shape[-1])) for f in feats])
        else:
            feats = base.feature_extractor(inputs)
        feats = feats.transpose(1, 2)
        frame_lengths = self.frame_lengths(lengths).clamp(max=feats.shape[1])
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        hidden = base.feature_projection(feats)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        # Model-internal SpecAugment (mask_time_prob etc.) applies only in training, as in HF.
        hidden = base._mask_hidden_states(hidden, attention_mask=mask)
        states: list[torch.Tensor] = []
        layers = base.encoder.layers
        hooks = [layers[0].register_forward_pre_hook(lambda m, args, kw: states.append(args[0] if args else kw["hidden_states"]),
                                                     with_kwargs=True)]
        hooks += [layer.register_forward_hook(lambda m, args, out: states.append(out[0] if isinstance(out, tuple) else out))
                  for layer in layers]
        # data2vec-audio stacks several positional convolutions: re-zero padding between them, as a
        # clip alone would see zeros there (the first one already gets zeroed input from the encoder).
        keep = mask[:, None, :].to(hidden.dtype)
        for conv in getattr(base.encoder.pos_conv_embed, "layers", [])[:-1]:
            hooks.append(conv.register_forward_hook(lambda m, args, out: out * keep[..., : out.shape[-1]]))
        try:
            out = base.encoder(hidden, attention_mask=mask)
        finally:
            for h in hooks:
                h.remove()
        last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        while len(states) < self.num_layers + 1:  # layers skipped by LayerDrop repeat their input
            states.append(states[-1])
        states[-1] = last
        return EncoderOutput(tuple(states[: self.num_layers + 1]), frame_lengths)

    # -- CTC --------------------------------------------------------------------------------
    def logits(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC logits ``(batch, frames, vocab)`` and frame counts."""
        enc = self.encode(inputs, lengths)
        hidden = self.model.dropout(enc.last_hidden_state)
        return self.model.lm_head(hidden), enc.lengths

    def text_to_ids(self, text: str) -> list[int]:
        """Transcript to CTC target ids, dropping characters the vocabulary lacks (punctuation)."""
        text = text.upper() if self._upper else text.lower()
        text = re.sub(r"\s+", " ", text).strip()
        text = "".join(c for c in text if c == " " or c in self._vocab_chars)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def loss(self, inputs: torch.Tensor, lengths: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """CTC loss, averaged over target lengths then batch (``reduction="mean"``)."""
        logits, frames = self.logits(inputs, lengths)
        return self.loss_from_logits(logits, frames, texts)

    def loss_from_logits(self, logits: torch.Tensor, frames: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """:meth:`loss` from :meth:`logits`' output (so one forward pass can serve other terms too)."""
        targets = [torch.tensor(self.text_to_ids(t), dtype=torch.long) for t in texts]
        target_lengths = torch.tensor([len(t) for t in targets])
        if (target_lengths == 0).any():
            raise ValueError("a transcript has no characters in the model's vocabulary")
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(
            log_probs,
            torch.cat(targets).to(logits.device),
            frames,
            target_lengths.to(logits.device),
            blank=self.blank_id,
            reduction="mean",
            zero_infinity=True,
        )

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor, lengths: torch.Tensor, *, beam_size: int = 1, **_) -> list[str]:
        """Greedy CTC decoding: best class per frame, repeats collapsed, blanks dropped."""
        logits, frames = self.logits(inputs, lengths)
        best = logits.argmax(-1).cpu()
        texts = []
        for ids, n in zip(best, frames.cpu()):
            ids = torch.unique_consecutive(ids[: int(n)])
            ids = ids[ids != self.blank_id].tolist()
            texts.append(self.tokenizer.decode(ids, group_tokens=False, skip_special_tokens=True).strip())
        return texts

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        p = f"model.{self.model.base_model_prefix}"
        frontend = (f"{p}.feature_extractor", f"{p}.feature_projection", f"{p}.masked_spec_embed", f"{p}.encoder.pos_conv_embed")
        if not getattr(self.model.config, "do_stable_layer_norm", False):
            frontend += (f"{p}.encoder.layer_norm",)  # post-norm models normalise before the first layer
        return layer_groups_by_prefix(self, frontend=frontend, layers=f"{p}.encoder.layers", num_layers=self.num_layers)


# -- builders ----------------------------------------------------------------------------------


def _char_tokenizer(vocab: dict[str, int] | None = None) -> Wav2Vec2CTCTokenizer:
    vocab = vocab or char_vocab()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vocab.json")
        with open(path, "w") as f:
            json.dump(vocab, f)
        return Wav2Vec2CTCTokenizer(path, unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")


def from_pretrained(name_or_path: str, *, dtype: torch.dtype = torch.float32, display_name: str | None = None,
                    **config_overrides) -> Wav2Vec2Backbone:
    """Load any wav2vec2-family model by hub id or local folder.

    A checkpoint without a CTC vocabulary (self-supervised only, e.g. ``microsoft/wavlm-base-plus``)
    gets the default character vocabulary and a new, randomly initialised CTC head, as in the
    usual fine-tuning recipe.
    """
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in FAMILY_TYPES:
            raise ModelNotFoundError(f"{name_or_path!r} is a {config.model_type} model, not one of {FAMILY_TYPES}")
        feature_extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        if tokenizer is None or not hasattr(tokenizer, "word_delimiter_token"):
            tokenizer = _char_tokenizer()
            config_overrides.setdefault("vocab_size", len(tokenizer))
            config_overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
        config_overrides.setdefault("ctc_loss_reduction", "mean")
        model = AutoModelForCTC.from_pretrained(name_or_path, dtype=dtype, **config_overrides)
    except OSError as e:
        hint = offline_hint()
        raise ModelNotFoundError(f"cannot load {name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    model.eval()
    processor = Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    return Wav2Vec2Backbone(model, processor, display_name or str(name_or_path))


register_family(
    from_pretrained,
    hub_prefixes=("facebook/wav2vec2", "facebook/hubert", "microsoft/wavlm", "facebook/data2vec-audio",
                  "jonatasgrosman/wav2vec2", "patrickvonplaten/wavlm"),
    model_types=FAMILY_TYPES,
)

_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,  # real kernels and strides: 320 samples per frame, 49 frames/s at 16 kHz
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
    ctc_loss_reduction="mean",
)


def _tiny(config_cls, name: str, seed: int, **extra) -> Wav2Vec2Backbone:
    tokenizer = _char_tokenizer()
    config = config_cls(**{**_TINY, **extra}, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCTC.from_config(config).eval()
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    return Wav2Vec2Backbone(model, Wav2Vec2Processor(feature_extractor=fe, tokenizer=tokenizer), name)


@register_backbone("wav2vec2-tiny-random")
def wav2vec2_tiny_random(*, seed: int = 0) -> Wav2Vec2Backbone:
    """Random 2-layer wav2vec2 with a group-norm frontend (like wav2vec2-base), for tests."""
    return _tiny(Wav2Vec2Config, "wav2vec2-tiny-random", seed, feat_extract_norm="group")


@register_backbone("hubert-tiny-random")
def hubert_tiny_random(*, seed: int = 0) -> Wav2Vec2Backbone:
    """Random 2-layer HuBERT (group-norm frontend, like hubert-base), for tests."""
    return _tiny(HubertConfig, "hubert-tiny-random", seed, feat_extract_norm="group")


@register_backbone("wavlm-tiny-random")
def wavlm_tiny_random(*, seed: int = 0) -> Wav2Vec2Backbone:
    """Random 2-layer WavLM with layer-norm frontend and pre-norm encoder (like wavlm-large), for tests."""
    return _tiny(WavLMConfig, "wavlm-tiny-random", seed, feat_extract_norm="layer", do_stable_layer_norm=True,
                 num_buckets=32, max_bucket_distance=100)


@register_backbone("data2vec-audio-tiny-random")
def data2vec_audio_tiny_random(*, seed: int = 0) -> Wav2Vec2Backbone:
    """Random 2-layer data2vec-audio, for tests."""
    return _tiny(Data2VecAudioConfig, "data2vec-audio-tiny-random", seed, num_conv_pos_embeddings=5,
                 num_conv_pos_embedding_groups=2, conv_pos_kernel_size=5, num_conv_pos_embedding_layers=2)

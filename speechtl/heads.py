"""New heads on a backbone's encoder states: a CTC head for speech recognition, an utterance
classifier, and the softmax-weighted layer mix (SUPERB's featurizer) either may read.

:func:`build_head` chooses and builds the head an :class:`~speechtl.config.AdaptConfig` asks for
(``head="auto"``: a classifier given labels, a CTC head for ``features`` or an encoder-only
backbone, else the backbone's own head, i.e. none).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .backbones.base import EncoderOutput
from .config import AdaptConfig
from .errors import SpeechtlError

POOLINGS = ("mean", "stats")


class CharVocab:
    """Characters for a new CTC head: blank (id 0), space, apostrophe, a-z.

    ``encode`` lower-cases and drops characters outside the vocabulary (punctuation, digits).
    """

    BLANK = "<blank>"

    def __init__(self, symbols: Sequence[str] | None = None):
        self.symbols = list(symbols) if symbols is not None else [self.BLANK, " ", "'", *string.ascii_lowercase]
        if self.symbols[0] != self.BLANK:
            raise SpeechtlError(f"a CTC vocabulary must start with {self.BLANK!r}")
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", text.lower()).strip()
        return [self.index[c] for c in text if c in self.index and c != self.BLANK]

    def decode(self, ids: Sequence[int]) -> str:
        return re.sub(r"\s+", " ", "".join(self.symbols[i] for i in ids if i != 0)).strip()


class LayerMix(nn.Module):
    """Softmax-weighted sum of a backbone's hidden states (SUPERB's featurizer).

    ``forward(states)``: ``num_states`` tensors ``(batch, frames, hidden)`` -> ``(batch, frames, hidden)``.
    The weights start equal. With ``normalize`` each state is layer-normalised (no learned scale)
    before the sum, so that no layer dominates by its magnitude (s3prl's ``normalize``).
    """

    def __init__(self, num_states: int, *, normalize: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))
        self.normalize = normalize

    def forward(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(states) != self.weights.numel():
            raise ValueError(f"expected {self.weights.numel()} hidden states, got {len(states)}")
        w = torch.softmax(self.weights.float(), dim=0)
        if self.normalize:
            states = [F.layer_norm(s.float(), s.shape[-1:]) for s in states]
        return sum(wi * s.float() for wi, s in zip(w, states))

    def layer_weights(self) -> list[float]:
        return torch.softmax(self.weights.detach().float(), 0).tolist()


class CTCHead(nn.Module):
    """A new CTC head on encoder states: optional layer mix, dropout, optional BiLSTM, linear to characters.

    ``forward(enc)`` -> logits ``(batch, frames, len(vocab))`` and frame counts ``(batch,)``.
    """

    def __init__(self, hidden_size: int, num_states: int, *, weighted_layers: bool = False, lstm_layers: int = 0,
                 lstm_hidden: int = 256, dropout: float = 0.1, vocab: CharVocab | None = None):
        super().__init__()
        self.vocab = vocab or CharVocab()
        self.mix = LayerMix(num_states) if weighted_layers else None
        self.dropout = nn.Dropout(dropout)
        self.lstm = (nn.LSTM(hidden_size, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=True)
                     if lstm_layers > 0 else None)
        self.out = nn.Linear(2 * lstm_hidden if self.lstm is not None else hidden_size, len(self.vocab))

    def forward(self, enc: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mix(enc.hidden_states) if self.mix is not None else enc.last_hidden_state
        x = self.dropout(x.to(self.out.weight.dtype))
        if self.lstm is not None:
            frames = x.shape[1]
            packed = pack_padded_sequence(x, enc.lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=frames)
        return self.out(x), enc.lengths

    def loss(self, enc: EncoderOutput, texts: Sequence[str]) -> torch.Tensor:
        """CTC loss, averaged over target lengths then batch."""
        logits, frames = self(enc)
        targets = [torch.tensor(self.vocab.encode(t), dtype=torch.long) for t in texts]
        target_lengths = torch.tensor([len(t) for t in targets])
        if (target_lengths == 0).any():
            raise ValueError("a transcript has no characters in the CTC head's vocabulary")
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(log_probs, torch.cat(targets).to(logits.device), frames, target_lengths.to(logits.device),
                          blank=0, reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def decode(self, enc: EncoderOutput) -> list[str]:
        """Greedy CTC: best symbol per frame, repeats collapsed, blanks dropped."""
        logits, frames = self(enc)
        out = []
        for ids, n in zip(logits.argmax(-1).cpu(), frames.cpu()):
            out.append(self.vocab.decode(torch.unique_consecutive(ids[: int(n)]).tolist()))
        return out


class ClassifierHead(nn.Module):
    """Utterance classifier: optional layer mix, projection, pooling over valid frames, linear to classes.

    ``pooling="mean"`` averages the projected frames; ``"stats"`` joins their mean and standard
    deviation (x-vector statistics pooling), which keeps how the voice varies over the utterance.
    ``normalize`` layer-normalises each hidden state (no learned scale) before the mix.

    ``forward(enc)`` -> logits ``(batch, len(labels))``.
    """

    def __init__(self, hidden_size: int, num_states: int, labels: Sequence[str], *, weighted_layers: bool = False,
                 hidden: int = 256, dropout: float = 0.1, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise SpeechtlError(f"a classifier needs at least two distinct labels, got {list(labels)}")
        if pooling not in POOLINGS:
            raise SpeechtlError(f"head_pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.labels = list(labels)
        self.pooling = pooling
        self.normalize = normalize
        self.mix = LayerMix(num_states, normalize=normalize) if weighted_layers else None
        self.proj = nn.Linear(hidden_size, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden if pooling == "stats" else hidden, len(self.labels))

    def forward(self, enc: EncoderOutput) -> torch.Tensor:
        if self.mix is not None:
            x = self.mix(enc.hidden_states)
        else:
            x = enc.last_hidden_state
            if self.normalize:
                x = F.layer_norm(x.float(), x.shape[-1:])
        x = self.proj(x.to(self.proj.weight.dtype))
        valid = enc.padding_mask().to(x.dtype)[..., None]
        count = valid.sum(1).clamp(min=1)
        pooled = (x * valid).sum(1) / count
        if self.pooling == "stats":
            var = (((x - pooled[:, None]) ** 2) * valid).sum(1) / count
            pooled = torch.cat([pooled, var.clamp(min=1e-6).sqrt()], dim=-1)
        return self.out(self.dropout(pooled))


def build_head(backbone: nn.Module, cfg: AdaptConfig) -> nn.Module | None:
    """The new head ``cfg`` asks for on ``backbone`` (None: the backbone keeps its own head)."""
    kind = cfg.head
    if kind == "auto":
        if cfg.labels:
            kind = "classifier"
        elif cfg.method == "features" or backbone.task == "encoder":
            kind = "ctc"
        else:
            kind = "backbone"
    if kind == "backbone":
        if cfg.method == "features":
            raise SpeechtlError("method 'features' trains a new head on a frozen backbone: use head=ctc or "
                                "head=classifier (with labels)")
        if backbone.task == "encoder":
            raise SpeechtlError(f"{backbone.name} has no head of its own: use head=ctc or head=classifier")
        return None
    num_states = backbone.num_layers + 1
    if kind == "ctc":
        if cfg.head_layers < 0:
            raise SpeechtlError(f"head_layers must be >= 0, got {cfg.head_layers}")
        return CTCHead(backbone.hidden_size, num_states, weighted_layers=cfg.weighted_layers,
                       lstm_layers=cfg.head_layers, lstm_hidden=cfg.head_hidden, dropout=cfg.head_dropout)
    if kind == "classifier":
        if not cfg.labels:
            raise SpeechtlError("head=classifier needs labels=[...] (the class names, in output order)")
        return ClassifierHead(backbone.hidden_size, num_states, cfg.labels, weighted_layers=cfg.weighted_layers,
                              hidden=cfg.head_hidden, dropout=cfg.head_dropout, pooling=cfg.head_pooling,
                              normalize=cfg.head_norm)
    raise AssertionError(kind)

"""Decoding engines for :func:`speechtl.transcribe`: PyTorch (any backbone) or CTranslate2 (Whisper).

Both answer the surface transcription needs: ``sample_rate``, ``prepare(waves) -> (features,
lengths)`` and ``decode(features, lengths, temperature=, beam_size=, best_of=, max_new_tokens=,
seed=, compression_ratio_threshold=) -> [Hypothesis]``. The PyTorch engine is the backbone itself
(adapters and routing work there). :class:`Ct2Whisper` runs a CTranslate2 Whisper folder — one written by
``speechtl-export --format ct2``, any faster-whisper model folder, or a packaged checkpoint — with
faster-whisper's loader and the same features, prompt, thresholds and fallback as PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .audio import describe_error
from .decoding import Hypothesis, likeliest
from .errors import ModelNotFoundError, SpeechtlError

ENGINES = ("torch", "ct2")


def resolve_ct2_folder(model: str | os.PathLike) -> Path:
    """The CTranslate2 folder of ``model``: a packaged name or a folder (an export is verified first)."""
    from .convert.packaged import PACKAGED, packaged_ct2_dir

    if isinstance(model, str) and model in PACKAGED:
        return packaged_ct2_dir(model)
    folder = Path(model)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{model}: not a folder nor a packaged model ({', '.join(sorted(PACKAGED))}); "
                                 "--engine ct2 takes a CTranslate2 Whisper folder (speechtl-export --format ct2)")
    from .exporting import verify_model_folder

    verify_model_folder(folder)
    if not (folder / "model.bin").is_file():
        hint = ""
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            hint = " (it is a transformers folder: use --engine torch, or speechtl-export --format ct2 to convert it)"
        raise SpeechtlError(f"{folder}: not a CTranslate2 model folder, model.bin is missing{hint}")
    if not (folder / "tokenizer.json").is_file():
        raise SpeechtlError(f"{folder}: tokenizer.json is missing; a CTranslate2 Whisper folder needs it "
                            "(speechtl-export --format ct2 copies it)")
    return folder


class Ct2Whisper:
    """A CTranslate2 Whisper model behind the engine surface.

    Args:
        model: a CTranslate2 folder or a packaged name (``whisper-tiny.en``, ``whisper-base``).
        device: ``cpu`` or ``cuda``.
        compute_type: CTranslate2's (``default`` keeps the folder's quantization where the device
            supports it; ``int8``, ``int8_float32``, ``float16``, ``float32``).
        threads: CPU threads (default: torch's).
        language: the language of multilingual models.
    """

    modality = "audio"
    task = "seq2seq"
    sample_rate = 16000

    def __init__(self, model: str | os.PathLike, *, device: str = "cpu", compute_type: str = "default",
                 threads: int | None = None, language: str = "en"):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError:
            raise SpeechtlError("--engine ct2 needs faster-whisper: pip install faster-whisper==1.2.1") from None
        import torch
        from transformers import WhisperFeatureExtractor

        import ctranslate2

        self.folder = resolve_ct2_folder(model)
        self.name = str(model)
        threads = threads or torch.get_num_threads()
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
            raise SpeechtlError(f"device {device!r}: give cpu, cuda or cuda:N")
        if kind == "cuda" and ctranslate2.get_cuda_device_count() <= int(index or 0):
            raise SpeechtlError(f"device {device!r}: CTranslate2 sees {ctranslate2.get_cuda_device_count()} CUDA "
                                "device(s); give --device cpu or another device")
        supported = sorted(ctranslate2.get_supported_compute_types(kind))
        if compute_type not in ("default", "auto", *supported):
            raise SpeechtlError(f"compute type {compute_type!r} on {kind}: choose default or one of "
                                f"{', '.join(supported)}")
        try:
            self._fw = WhisperModel(str(self.folder), device=kind, device_index=int(index or 0),
                                    compute_type=compute_type, cpu_threads=threads)
        except Exception as e:  # CTranslate2 and tokenizers raise RuntimeError, ValueError or bare Exception
            raise SpeechtlError(f"{self.folder}: CTranslate2 cannot load this model ({describe_error(e)}); the "
                                "folder is damaged or not a Whisper model: export it again") from None
        self.model = self._fw.model
        self.multilingual = self.model.is_multilingual
        self.language = language if self.multilingual else None
        self.tokenizer = Tokenizer(self._fw.hf_tokenizer, self.multilingual, task="transcribe",
                                   language=self.language)
        pre = self.folder / "preprocessor_config.json"
        mels = self.model.n_mels
        try:
            self.feature_extractor = (WhisperFeatureExtractor.from_pretrained(str(self.folder)) if pre.is_file()
                                      else WhisperFeatureExtractor(feature_size=mels))
        except (OSError, ValueError) as e:
            raise SpeechtlError(f"{pre}: unreadable ({describe_error(e)}); export the model again") from None
        if self.feature_extractor.feature_size != mels:
            raise SpeechtlError(f"{pre}: feature_size {self.feature_extractor.feature_size} but the model takes "
                                f"{mels} mel bins; the folder is inconsistent, export it again")
        # -1: the tokens the model's own config suppresses (config.json's suppress_ids, written from the
        # transformers generation config), so both engines suppress the same tokens.
        self.suppress_tokens = [-1]
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        # Decoder positions: Whisper's 448 unless an export recorded another (small test models).
        info = self.info()
        self.max_positions = int(info.get("max_target_positions") or 448)
        # Whether the export may decode unpadded clips (its adapter trained on them; None: not recorded).
        from .exporting import export_short_clips

        self.trained_short_clips = export_short_clips(info)

    def info(self) -> dict[str, Any]:
        meta = self.folder / "speechtl_export.json"
        return json.loads(meta.read_text()) if meta.is_file() else {"folder": str(self.folder)}

    def prepare(self, waves: list[np.ndarray], short_clips: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel ``(batch, n_mels, 3000)`` of clips padded to 30 s (as the PyTorch engine computes them).

        With ``short_clips`` the batch is cut to its longest clip (an even frame count); CTranslate2's
        encoder takes shorter inputs but has no padding mask, so a shorter clip of the batch keeps the
        log-mel of silence up to that length (batches hold clips of similar length).
        """
        from .backbones.whisper import log_mel

        feats, lengths = log_mel(self.feature_extractor, waves, short=short_clips)
        return np.ascontiguousarray(feats.numpy(), dtype=np.float32), lengths.numpy()

    def decoder_memory(self, inputs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The encoder's output ``(batch, frames // 2, d_model)``, kept for the fallback to decode again."""
        import ctranslate2

        return np.array(self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(inputs)),
                                          to_cpu=True))

    def decode(self, inputs: np.ndarray, lengths: np.ndarray, *, temperature: float = 0.0, beam_size: int = 1,
               best_of: int = 1, max_new_tokens: int = 128, seed: int = 0, score: bool = True,
               encoder_states: np.ndarray | None = None,
               compression_ratio_threshold: float | None = None) -> list[Hypothesis]:
        """Like :meth:`speechtl.backbones.whisper.WhisperBackbone.decode`; CTranslate2 scores the tokens.

        CTranslate2 decodes every row to its end, so ``compression_ratio_threshold`` only chooses among
        the samples (:func:`~speechtl.decoding.likeliest`); no loop stops early.
        """
        import ctranslate2

        # generate() takes log-mel features or the encoder's output (it tells them apart by shape).
        inputs = np.ascontiguousarray(inputs if encoder_states is None else encoder_states)
        kwargs: dict[str, Any]
        if temperature > 0:
            ctranslate2.set_random_seed(seed)
            kwargs = {"beam_size": 1, "num_hypotheses": best_of, "sampling_topk": 0,
                      "sampling_temperature": temperature}
        else:
            kwargs = {"beam_size": beam_size}
        # CTranslate2's Whisper decodes at most max_length / 2 new tokens (measured for 6 to 256 here;
        # faster-whisper's 448 gives OpenAI's 224), so twice the new tokens asked for; prompt and new
        # tokens must fit the decoder's positions.
        new = min(max_new_tokens, self.max_positions - len(self.prompt))
        results = self.model.generate(
            ctranslate2.StorageView.from_array(inputs), [self.prompt] * len(inputs),
            max_length=2 * new, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self.suppress_tokens, **kwargs)
        hyps = []
        for r in results:
            options = []
            for tokens, s in zip(r.sequences_ids, r.scores):
                # CTranslate2 returns the log-probability normalised by length; faster-whisper's mean:
                avg = s * len(tokens) / (len(tokens) + 1)
                options.append(Hypothesis(self.tokenizer.decode(tokens).strip(), avg, r.no_speech_prob,
                                          temperature, len(tokens)))
            hyps.append(likeliest(options, compression_ratio_threshold))
        return hyps

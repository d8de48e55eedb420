"""Voice-activity detection with Silero VAD (the ONNX model that ships inside the faster-whisper wheel).

:class:`SileroVad` scores 32-ms windows (512 samples at 16 kHz) with a speech probability. It
keeps the model's recurrent state between calls, so a long recording can be fed block by block
and never held whole; :func:`speech_spans` turns the probabilities into speech regions with the
hysteresis of Silero's ``get_speech_timestamps`` (as faster-whisper runs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checksums import sha256_file
from .errors import SpeechtlError

SAMPLE_RATE = 16000
WINDOW = 512  # samples per probability
CONTEXT = 64  # samples of the previous window the v6 model sees with each window


@dataclass(frozen=True)
class VadOptions:
    """Speech-region settings (Silero's; ``min_silence_ms`` and ``max_speech_s`` as faster-whisper's batched mode).

    Attributes:
        threshold: a window with speech probability at or above this starts or continues speech.
        neg_threshold: below this a window is silence (default ``threshold - 0.15``).
        min_speech_ms: speech regions shorter than this are dropped.
        min_silence_ms: silence shorter than this does not end a speech region.
        speech_pad_ms: each region is widened by this on both sides.
        max_speech_s: a longer region is split at its last silence of 98 ms or more (else hard).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: int = 0
    min_silence_ms: int = 160
    speech_pad_ms: int = 400
    max_speech_s: float = 30.0


SILERO_V6_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"  # faster-whisper 1.2.1's copy
_CHECKED: set[tuple[str, int, int]] = set()


def model_path() -> Path:
    """The Silero VAD v6 ONNX file, its sha256 checked once per process.

    ``$SPEECHTL_VAD_MODEL`` names a copy of the file (for machines without faster-whisper);
    otherwise it is the one inside the installed faster-whisper wheel.
    """
    override = os.environ.get("SPEECHTL_VAD_MODEL")
    if override:
        path, where = Path(override).expanduser(), "SPEECHTL_VAD_MODEL"
        if not path.is_file():
            raise SpeechtlError(f"SPEECHTL_VAD_MODEL={override}: no such file; point it at silero_vad_v6.onnx "
                                "(faster-whisper==1.2.1 ships it in faster_whisper/assets/) or unset it")
    else:
        try:
            from faster_whisper.utils import get_assets_path
        except ImportError:
            raise SpeechtlError("voice-activity detection needs faster-whisper (its wheel ships the Silero VAD "
                                "model): pip install faster-whisper==1.2.1, or set SPEECHTL_VAD_MODEL to a copy "
                                "of silero_vad_v6.onnx") from None
        path, where = Path(get_assets_path()) / "silero_vad_v6.onnx", "faster-whisper"
        if not path.is_file():
            raise SpeechtlError(f"{path}: the Silero VAD model is missing; reinstall faster-whisper==1.2.1")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        digest = sha256_file(path)
        if digest != SILERO_V6_SHA256:
            raise SpeechtlError(f"{path} (from {where}) is not the Silero VAD v6 model speechtl expects "
                                f"(sha256 {digest[:12]}…, expected {SILERO_V6_SHA256[:12]}…): the file is damaged "
                                "or another version; reinstall faster-whisper==1.2.1 or point SPEECHTL_VAD_MODEL "
                                "at its copy")
        _CHECKED.add(key)
    return path


class SileroVad:
    """Streaming speech probabilities: :meth:`__call__` takes consecutive blocks of 16-kHz audio.

    Each call returns one probability per complete 512-sample window; a partial window waits for
    the next block (:meth:`flush` pads and scores it at the end).
    """

    _session = None

    def __init__(self):
        if SileroVad._session is None:
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.inter_op_num_threads = 1
            opts.intra_op_num_threads = min(4, os.cpu_count() or 1)
            opts.log_severity_level = 4
            SileroVad._session = onnxruntime.InferenceSession(str(model_path()), providers=["CPUExecutionProvider"],
                                                              sess_options=opts)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._rest, np.asarray(block, dtype=np.float32)])
        n = len(audio) // WINDOW
        self._rest = audio[n * WINDOW:]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        # The v6 model reads each window with the last 64 samples before it, and runs along the
        # batch axis as time: the state (h, c) carries from one window to the next.
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]], axis=0)
        self._context = windows[-1, -CONTEXT:].copy()
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": self._h, "c": self._c})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def flush(self) -> np.ndarray:
        """Score the last partial window (zero-padded), if any."""
        if len(self._rest) == 0:
            return np.zeros(0, dtype=np.float32)
        return self(np.zeros(WINDOW - len(self._rest), dtype=np.float32))


def speech_probabilities(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """Probabilities of every window of consecutive 16-kHz blocks, and the number of samples read."""
    vad = SileroVad()
    probs, total = [], 0
    for block in blocks:
        total += len(block)
        probs.append(vad(block))
    probs.append(vad.flush())
    return np.concatenate(probs), total


def speech_spans(probs: np.ndarray, num_samples: int, opts: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Speech regions ``[(start, end), ...]`` in samples, from per-window probabilities."""
    sr = SAMPLE_RATE
    neg = opts.neg_threshold if opts.neg_threshold is not None else max(opts.threshold - 0.15, 0.01)
    pad = sr * opts.speech_pad_ms // 1000
    min_speech = sr * opts.min_speech_ms / 1000
    min_silence = sr * opts.min_silence_ms / 1000
    max_speech = sr * opts.max_speech_s - WINDOW - 2 * pad
    min_silence_at_max = sr * 98 / 1000
    spans: list[list[int]] = []
    triggered = False
    start = temp_end = prev_end = next_start = 0
    for i, p in enumerate(probs):
        pos = WINDOW * i
        if p >= opts.threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = pos
        if p >= opts.threshold and not triggered:
            triggered, start = True, pos
            continue
        if triggered and pos - start > max_speech:
            if prev_end:
                spans.append([start, prev_end])
                if next_start < prev_end:
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = temp_end = 0
            else:
                spans.append([start, pos])
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if p < neg and triggered:
            if not temp_end:
                temp_end = pos
            if pos - temp_end > min_silence_at_max:
                prev_end = temp_end
            if pos - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                spans.append([start, temp_end])
            prev_end = next_start = temp_end = 0
            triggered = False
    if triggered and num_samples - start > min_speech:
        spans.append([start, num_samples])
    # Pad each region, splitting a gap shorter than two pads between its neighbours.
    for i, span in enumerate(spans):
        if i == 0:
            span[0] = max(0, span[0] - pad)
        if i + 1 < len(spans):
            gap = spans[i + 1][0] - span[1]
            if gap < 2 * pad:
                span[1] += gap // 2
                spans[i + 1][0] = max(0, spans[i + 1][0] - gap // 2)
            else:
                span[1] = min(num_samples, span[1] + pad)
                spans[i + 1][0] = max(0, spans[i + 1][0] - pad)
        else:
            span[1] = min(num_samples, span[1] + pad)
    return [(int(a), int(b)) for a, b in spans if b > a]


def speech_bounds(wav: np.ndarray, opts: VadOptions = VadOptions(speech_pad_ms=100)) -> tuple[float, float] | None:
    """Where speech starts and ends in a 16-kHz clip (seconds): the first region's start and the last one's end.

    ``None`` when no window reaches the speech threshold. The regions are widened by 100 ms (not
    Silero's 400), so the bounds sit close to the first and last words.
    """
    wav = np.asarray(wav, dtype=np.float32)
    probs, total = speech_probabilities([wav])
    spans = speech_spans(probs, total, opts)
    if not spans:
        return None
    return spans[0][0] / SAMPLE_RATE, spans[-1][1] / SAMPLE_RATE

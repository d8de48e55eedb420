"""Training with timestamp tokens (``timestamp_share``): the labels, the speech bounds, the recipe, and a model
that keeps both decoding modes."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

import speechtl
from speechtl import recipes
from speechtl.config import load_config
from speechtl.errors import SpeechtlError
from speechtl.tasks import Seq2SeqASRTask, task_for
from speechtl.transfer import adapt

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 16000


def _tiny(**kw):
    return speechtl.create_backbone("whisper-tiny-random", timestamps=True, **kw)


def test_a_span_gives_the_timestamped_sequence_and_none_keeps_the_plain_one():
    b = _tiny()
    tok = b.tokenizer
    sot, no_ts, eot = (tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>",
                                                               "<|endoftext|>"))
    words = tok.encode(" Hi there", add_special_tokens=False)
    inp, tgt = b.label_ids(["Hi there", "Hi there"], [(0.5, 1.22), None])
    start, end = tok.convert_tokens_to_ids("<|0.50|>"), tok.convert_tokens_to_ids("<|1.22|>")
    assert (start, end) == (b.timestamp_id(0.5), b.timestamp_id(1.22)) == (no_ts + 26, no_ts + 62)
    timed = [sot, start, *words, end, eot]
    assert inp[0, : len(timed) - 1].tolist() == timed[:-1]
    assert tgt[0, : len(timed) - 1].tolist() == timed[1:]  # the start timestamp is the first target
    assert (tgt[0, len(timed) - 1:] == -100).all()
    # The row without a span is exactly what training without the option builds.
    plain_inp, plain_tgt = b.label_ids(["Hi there"])
    n = plain_inp.shape[1]
    assert inp[1, :n].tolist() == plain_inp[0].tolist() and tgt[1, :n].tolist() == plain_tgt[0].tolist()
    assert plain_inp[0, :2].tolist() == [sot, no_ts] and (tgt[1, n:] == -100).all()


def test_timestamps_round_to_20_ms_and_clamp_to_30_s():
    b = _tiny()
    first = b.tokenizer.convert_tokens_to_ids("<|0.00|>")
    assert b.timestamp_id(0.0) == first and b.timestamp_id(0.011) == first + 1 and b.timestamp_id(-1) == first
    assert b.timestamp_id(45.0) == b.tokenizer.convert_tokens_to_ids("<|30.00|>") == b.model.config.vocab_size - 1


def test_a_vocabulary_without_timestamp_tokens_is_refused():
    b = speechtl.create_backbone("whisper-tiny-random")
    with pytest.raises(SpeechtlError, match="no timestamp tokens.*timestamp_share=0"):
        b.label_ids(["hi"], [(0.0, 0.5)])
    assert b.label_ids(["hi"], [None])[0].tolist() == b.label_ids(["hi"])[0].tolist()


@pytest.mark.slow
def test_the_packaged_whisper_names_its_timestamp_tokens_as_openai_does():
    b = speechtl.create_backbone("whisper-tiny.en")
    tok = b.tokenizer
    assert tok.convert_ids_to_tokens([b.timestamp_id(0), b.timestamp_id(1.5), b.timestamp_id(30)]) == [
        "<|0.00|>", "<|1.50|>", "<|30.00|>"]
    assert b.prompt_ids(timestamps=True) == [tok.convert_tokens_to_ids("<|startoftranscript|>")]


# -- speech bounds --------------------------------------------------------------------------------


def _espeak(text: str, tmp_path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (bash corpora/install_apt.sh installs it)")
    from speechtl.audio import load_audio

    path = tmp_path / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path, RATE)


def _speech_at(wav: np.ndarray, lead: float, tail: float = 0.4) -> tuple[np.ndarray, tuple[float, float]]:
    """``wav`` trimmed of its edges, after ``lead`` s of silence; and its true speech span."""
    import librosa

    core, _ = librosa.effects.trim(wav, top_db=35)
    out = np.concatenate([np.zeros(int(lead * RATE), np.float32), core, np.zeros(int(tail * RATE), np.float32)])
    return out, (lead, lead + len(core) / RATE)


def test_speech_bounds_find_the_words_after_a_silence(tmp_path):
    from speechtl.vad import speech_bounds

    wav, (start, end) = _speech_at(_espeak("one two three four five", tmp_path), lead=1.0)
    found = speech_bounds(wav)
    assert found is not None
    assert abs(found[0] - start) <= 0.15 and abs(found[1] - end) <= 0.15
    assert speech_bounds(np.zeros(RATE, np.float32)) is None


def test_the_task_draws_its_share_of_clips_deterministically_and_dev_gets_none(tmp_path):
    wav, span = _speech_at(_espeak("hello there", tmp_path), lead=0.7)
    model = adapt(_tiny(), "lora", lora_r=2)
    items = [{"id": f"u{i}", "audio": wav, "text": "hello there"} for i in range(40)]
    task = task_for(model, timestamp_share=0.5, seed=3)
    assert isinstance(task, Seq2SeqASRTask)
    spans = task.collate(items)["spans"]
    timed = [s for s in spans if s is not None]
    assert 10 <= len(timed) <= 30  # about half of 40 clips
    assert all(abs(s[0] - span[0]) <= 0.15 and abs(s[1] - span[1]) <= 0.15 for s in timed)
    assert task.collate(items)["spans"] == spans  # the same batch draws the same clips
    assert "spans" not in task.collate(items, timestamps=False)
    assert "spans" not in task_for(model).collate(items)
    assert all(s is not None for s in task_for(model, timestamp_share=1.0).collate(items)["spans"])


def test_silence_only_clip_trains_on_its_whole_length():
    model = adapt(_tiny(), "lora", lora_r=2)
    batch = task_for(model, timestamp_share=1.0).collate([{"id": "a", "audio": np.zeros(RATE, np.float32),
                                                          "text": "x"}])
    assert batch["spans"] == [(0.0, 1.0)]


def test_timestamp_share_is_for_whisper_only_and_a_share():
    w2v = adapt(speechtl.create_backbone("wav2vec2-tiny-random"), "lora", lora_r=2)
    with pytest.raises(SpeechtlError, match="timestamp_share.*leave timestamp_share at 0"):
        task_for(w2v, timestamp_share=0.5)
    with pytest.raises(SpeechtlError, match="between 0 and 1"):
        task_for(adapt(_tiny(), "lora", lora_r=2), timestamp_share=1.5)


def test_the_recipe_trains_the_share_and_dev_decodes_without(tone_manifest):
    manifest = tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("go home", "A", "train"),
                              ("no way", "A", "train"), ("see you", "A", "dev")])
    cfg = load_config(None, ["timestamp_share=1.0", "batch_seconds=1.5", "progress=false"], method="lora")
    run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)), cfg, backbone=_tiny())
    assert run.config.data.timestamp_share == 1.0
    train_spans = [s for batch in run.loader for s in batch["spans"]]
    assert len(train_spans) == 4 and all(s is not None for s in train_spans)
    # Each span lies inside its clip (the tone clips last 0.5-0.8 s).
    assert all(0 <= s[0] < s[1] <= 0.8 + 1e-6 for s in train_spans)
    assert run.dev_fn is not None
    cfg = load_config(None, ["timestamp_share=0.5", "progress=false"], method="lora")
    with pytest.raises(SpeechtlError, match="timestamp_share"):
        recipes.build(recipes.RunInputs("wav2vec2-tiny-random", str(manifest)), cfg)


# -- a model trained with the option keeps both modes --------------------------------------------


def _greedy(backbone, wav: np.ndarray, prompt: list[int], steps: int = 24) -> list[int]:
    """Plain greedy decoding from ``prompt`` (timestamp tokens allowed), up to end-of-text."""
    feats, lens = backbone.prepare([wav])
    states = backbone.decoder_memory(feats, lens)
    eot = backbone.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    from transformers.modeling_outputs import BaseModelOutput

    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = backbone.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                    decoder_input_ids=torch.tensor([seq])).logits[0, -1]
            seq.append(int(logits.argmax()))
            if seq[-1] == eot:
                break
    return seq[len(prompt):]


def _train(backbone, items, share: float, steps: int) -> list[float]:
    model = adapt(backbone, "finetune")
    model.train()
    task = task_for(model, timestamp_share=share, seed=0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(steps):
        batch = task.collate([{**it, "id": f"{it['id']}-{step}"} for it in items])
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.slow
def test_a_model_trained_with_the_option_decodes_both_with_and_without_timestamps(tmp_path):
    texts = ["one two three", "four five", "six seven eight"]
    leads = [0.3, 1.1, 0.6]
    items, spans = [], []
    for i, (text, lead) in enumerate(zip(texts, leads)):
        wav, _ = _speech_at(_espeak(text, tmp_path), lead=lead)
        items.append({"id": f"u{i}", "audio": wav, "text": text})
        spans.append(task_for(adapt(_tiny(), "lora", lora_r=2), timestamp_share=1.0).collate([items[-1]])["spans"][0])

    torch.manual_seed(0)
    backbone = _tiny(short_clips=True)
    losses = _train(backbone, items, share=0.5, steps=150)
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])

    tok = backbone.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    first = backbone.timestamp_id(0.0)
    for it, (start, end) in zip(items, spans):
        words = tok.encode(" " + it["text"], add_special_tokens=False)
        got = _greedy(backbone, it["audio"], backbone.prompt_ids(timestamps=True))
        # Timestamped mode: <|start|> words <|end|> <|endoftext|>, the end within 40 ms of the clip's speech end.
        assert got[1:-2] == words and got[-1] == eot, tok.decode(got)
        assert first <= got[0] < got[-2], tok.convert_ids_to_tokens([got[0], got[-2]])
        assert abs(got[-2] - backbone.timestamp_id(end)) <= 2, (tok.convert_ids_to_tokens(got[-2]), end)
        # Plain mode (<|notimestamps|>) still transcribes, with no timestamp tokens.
        plain = _greedy(backbone, it["audio"], backbone.prompt_ids())
        assert plain == [*words, eot], tok.decode(plain)

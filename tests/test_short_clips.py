"""Short-clip decoding: an adapter records how its training padded clips, and transcription decodes the same way."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechtl
from speechtl import recipes
from speechtl.adapters import load_adapter
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.config import load_config
from speechtl.decoding import DecodeOptions, Hypothesis, compression_ratio
from speechtl.engines import Ct2Whisper
from speechtl.errors import SpeechtlError
from speechtl.exporting import export, verify_export
from speechtl.routing import AccentClassifier
from speechtl.transfer import adapt

sys.path.insert(0, str(Path(__file__).parent))
from test_export import _randomize  # noqa: E402

PLAIN = DecodeOptions.plain(max_new_tokens=12)
FULL = 3000  # log-mel frames of 30 s

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random Whisper whose greedy output depends on the audio, saved as a folder."""
    b = speechtl.create_backbone("whisper-tiny-random")
    _randomize(b.model, 0)
    tok = b.tokenizer
    single = [tok.decode([i]) for i in range(256)]
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    b.model.generation_config.suppress_tokens = (
        [i for i, t in enumerate(single) if not (t.isascii() and t.isprintable())]
        + [i for i in range(256, len(tok)) if i != eot])
    folder = tmp_path_factory.mktemp("base") / "whisper"
    b.model.save_pretrained(folder)
    b.processor.save_pretrained(folder)
    b.processor.feature_extractor.save_pretrained(folder)
    return folder


def _saved_lora(base_dir: Path, out: Path, *, short: bool) -> Path:
    """A LoRA adapter with trained-looking weights, adapted on a backbone in the given padding mode."""
    backbone = speechtl.create_backbone(base_dir)
    backbone.short_clips = short  # what the recipe sets before adapting: how the batches will be padded
    m = adapt(backbone, "lora", lora_r=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.backbone.named_parameters():
            if p.requires_grad and "lora_" in n:
                p.add_(0.3 * torch.randn_like(p))
    return m.save_adapter(out)


@pytest.fixture(scope="module")
def adapters(base_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    short = _saved_lora(base_dir, folder / "short", short=True)
    padded = _saved_lora(base_dir, folder / "padded", short=False)
    older = folder / "older"  # a folder saved before the record existed: same weights, no short_clips key
    shutil.copytree(short, older)
    meta = json.loads((older / "adapter.json").read_text())
    del meta["short_clips"], meta["meta_sha256"]
    (older / "adapter.json").write_text(json.dumps(meta))
    return {"short": short, "padded": padded, "older": older}


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    # Lengths a multiple of 320 samples (an even number of log-mel frames), so that a clip cut to its
    # own length holds exactly its features on both engines.
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.6, 1.3, 0.9, 2.0)]


def _one_by_one(model, waves, short: bool) -> list[str]:
    out = []
    for w in waves:
        feats, lens = model.prepare([w], short_clips=short)
        out.append(model.decode(feats, lens, max_new_tokens=PLAIN.max_new_tokens)[0].text)
    return out


@pytest.mark.parametrize("beam_size", [1, 2])
def test_a_padded_short_batch_decodes_as_each_clip_alone(base_dir, waves, beam_size):
    model = speechtl.create_backbone(base_dir)
    feats, lens = model.prepare(waves, short_clips=True)
    batch = model.decode(feats, lens, beam_size=beam_size, max_new_tokens=12)
    alone = [model.decode(*model.prepare([w], short_clips=True), beam_size=beam_size, max_new_tokens=12)[0]
             for w in waves]
    assert [h.text for h in batch] == [h.text for h in alone]
    np.testing.assert_allclose([h.avg_logprob for h in batch], [h.avg_logprob for h in alone], atol=1e-4)
    np.testing.assert_allclose([h.no_speech_prob for h in batch], [h.no_speech_prob for h in alone], atol=1e-4)


def test_a_30s_clip_leaves_the_shorter_clips_of_its_short_batch_as_they_are_alone(base_dir):
    """A 30-s clip takes all the encoder's positions, where no padding mask applies; the shorter clips sorted
    into its batch must still decode as they do alone (and at their own length)."""
    rng = np.random.default_rng(3)
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (30.0, 1.2, 2.5)]
    model = speechtl.create_backbone(base_dir)
    batch = speechtl.transcribe(model, waves, decode_options=PLAIN, short_clips="on", batch_size=3,
                                return_segments=True)
    alone = [speechtl.transcribe(model, w, decode_options=PLAIN, short_clips="on", return_segments=True)[0]
             for w in waves]
    assert [t.text for t in batch] == [t.text for t in alone]
    np.testing.assert_allclose([t.segments[0].avg_logprob for t in batch],
                               [t.segments[0].avg_logprob for t in alone], atol=1e-4)


def test_the_adapter_records_how_it_trained(adapters):
    assert json.loads((adapters["short"] / "adapter.json").read_text())["short_clips"] is True
    assert json.loads((adapters["padded"] / "adapter.json").read_text())["short_clips"] is False
    assert load_adapter(None, adapters["short"]).trained_short_clips is True
    assert load_adapter(None, adapters["older"]).trained_short_clips is None


def test_the_recipe_records_its_padding(tone_manifest, tmp_path):
    manifest = tone_manifest([("hello there", "A", "train"), ("yes sir", "A", "train"), ("no way", "A", "dev")])
    for keys, expected in (([], True), (["short_clips=false"], False)):  # short clips are the recipe's default
        run = recipes.build(recipes.RunInputs("whisper-tiny-random", str(manifest)),
                            load_config(None, ["progress=false", *keys], method="lora"))
        assert run.model.trained_short_clips is expected
        meta = json.loads((run.model.save_adapter(tmp_path / f"a{expected}") / "adapter.json").read_text())
        assert meta["short_clips"] is expected


def test_auto_decodes_a_short_trained_adapter_unpadded(base_dir, adapters, waves, frames):
    texts = speechtl.transcribe(base_dir, waves, adapter=adapters["short"], decode_options=PLAIN,
                                return_segments=True)
    assert [t.short_clips for t in texts] == [True] * 4
    assert frames and max(frames) == 200  # one batch, cut at its longest clip (2 s), not 30 s
    # The batch decodes as each clip alone at its own length (the padding is masked).
    model = load_adapter(speechtl.create_backbone(base_dir), adapters["short"])
    assert [t.text for t in texts] == _one_by_one(model, waves, short=True)
    assert [t.text for t in texts] != _one_by_one(model, waves, short=False)  # the mode changes the output


def test_auto_decodes_a_clip_again_at_30s_when_its_short_transcript_loops(base_dir, adapters, waves, frames):
    model = load_adapter(speechtl.create_backbone(base_dir), adapters["short"])
    short, padded = _one_by_one(model, waves, short=True), _one_by_one(model, waves, short=False)
    r_short, r_padded = [compression_ratio(t) for t in short], [compression_ratio(t) for t in padded]
    # A threshold that one clip's short transcript exceeds (a "loop") and its 30-s transcript does not.
    swap = next(i for i in range(len(waves)) if r_short[i] > r_padded[i])
    threshold = (r_short[swap] + r_padded[swap]) / 2
    opts = PLAIN.with_(compression_ratio_threshold=threshold)
    frames.clear()
    got = speechtl.transcribe(base_dir, waves, adapter=adapters["short"], decode_options=opts, return_segments=True)
    looped = [r > threshold for r in r_short]
    kept = [r_padded[i] <= threshold and looped[i] for i in range(len(waves))]  # 30 s wins unless it loops too
    assert kept[swap] and not all(looped)
    assert [t.text for t in got] == [p if k else s for s, p, k in zip(short, padded, kept)]
    assert [t.short_clips for t in got] == [not k for k in kept]
    assert frames[0] == 200 and frames[1:] == [FULL]  # the batch short, then only the loops at 30 s
    # Forced short decoding and options without the threshold never retry.
    on = speechtl.transcribe(base_dir, waves, adapter=adapters["short"], decode_options=opts, short_clips="on")
    assert on == short
    assert speechtl.transcribe(base_dir, waves, adapter=adapters["short"], decode_options=PLAIN) == short


def test_the_30s_retry_keeps_the_padded_result_only_where_it_does_not_loop(monkeypatch):
    from speechtl import transcription

    loop, fine = "la la la la la la la la la la la la la la la la", "a plain short sentence"
    opts = PLAIN.with_(compression_ratio_threshold=2.4)
    assert compression_ratio(loop) > 2.4 > compression_ratio(fine)
    at_30s = {0: fine, 1: loop, 2: fine, 3: fine}  # what each clip decodes to at 30 s
    calls = []

    def decode_batch(runner, waves, opts_, short):
        calls.append(([int(w[0]) for w in waves], short))
        return [Hypothesis(at_30s[int(w[0])]) for w in waves]

    monkeypatch.setattr(transcription, "_decode_batch", decode_batch)
    waves = [np.full(4, i, dtype=np.float32) for i in range(4)]
    silence = Hypothesis(loop)
    silence.text = ""  # blanked as silence by the fallback: its compression ratio is the looping text's
    hyps = [Hypothesis(loop), Hypothesis(loop), silence, Hypothesis(fine)]
    short = transcription._retry_loops_padded(None, waves, hyps, opts)
    assert calls == [([0, 1], False)]  # only the loops, at 30 s; silence and clean clips are not decoded again
    assert short == [False, True, True, True]  # clip 1 loops at 30 s too: its short result stays
    assert [h.text for h in hyps] == [fine, loop, "", fine]
    calls.clear()
    assert transcription._retry_loops_padded(None, waves, [Hypothesis(loop) for _ in waves], PLAIN) == [True] * 4
    assert calls == []  # no threshold, no retry


def test_auto_decodes_a_long_inputs_segments_at_30s_and_only_whole_clips_short(base_dir, adapters, monkeypatch):
    from speechtl import transcription
    from speechtl.segments import Planned

    rate, loop, fine = 16000, "la la la la la la la la la la la la la la la la", "a plain short sentence"
    # Input 0: three segments of a 70-s recording; input 1: two of a 40-s one; inputs 2 and 3: clips, the 18-s
    # one looping when decoded short. Segments are told apart by their lengths.
    layout = {70: [(0, 22), (25, 43), (50, 60)], 40: [(0, 12), (20, 28)]}

    def plan_segments(src, vad=None):
        seconds = round(src.duration)
        if seconds not in layout:
            return [Planned(((0, int(src.duration * rate)),))]
        return [Planned(((a * rate, b * rate),)) for a, b in layout[seconds]]

    calls = []

    def decode_batch(runner, waves, opts, short):
        calls.append(([round(len(w) / rate, 1) for w in waves], short))
        return [Hypothesis(loop if short and len(w) == 18 * rate else fine) for w in waves]

    monkeypatch.setattr(transcription, "plan_segments", plan_segments)
    monkeypatch.setattr(transcription, "_decode_batch", decode_batch)
    inputs = [np.zeros(70 * rate, np.float32), np.zeros(40 * rate, np.float32), np.zeros(18 * rate, np.float32),
              np.zeros(rate // 2, np.float32)]
    got = speechtl.transcribe(base_dir, inputs, adapter=adapters["short"], return_segments=True, batch_size=8,
                              decode_options=PLAIN.with_(compression_ratio_threshold=2.4))
    # The recordings' segments in one batch at 30 s; the clips in one short batch, then the loop again at 30 s.
    assert calls == [([22, 18, 12, 10, 8], False), ([18, 0.5], True), ([18], False)]
    assert [len(t.segments) for t in got] == [3, 2, 1, 1]
    assert [t.text for t in got[2:]] == [fine, fine]  # the 30-s result replaced the loop
    assert [t.short_clips for t in got] == [False, False, False, True]
    calls.clear()
    speechtl.transcribe(base_dir, inputs[:2], adapter=adapters["short"], short_clips="on", batch_size=8,
                        decode_options=PLAIN)
    assert calls == [([22, 18, 12, 10, 8], True)]  # "on" decides for every segment


@pytest.mark.parametrize("which", ["padded", "older"])
def test_auto_keeps_30s_for_an_adapter_trained_padded_or_saved_without_the_record(base_dir, adapters, waves,
                                                                                   frames, which):
    texts = speechtl.transcribe(base_dir, waves, adapter=adapters[which], decode_options=PLAIN,
                                return_segments=True)
    assert [t.short_clips for t in texts] == [False] * 4 and set(frames) == {FULL}
    model = load_adapter(speechtl.create_backbone(base_dir), adapters[which])
    assert [t.text for t in texts] == _one_by_one(model, waves, short=False)


def test_on_and_off_decide_for_every_route(base_dir, adapters, waves, frames):
    base = speechtl.create_backbone(base_dir)
    assert [t.short_clips for t in speechtl.transcribe(base, waves, decode_options=PLAIN, return_segments=True)] \
        == [False] * 4  # the base model pads by default
    assert set(frames) == {FULL}
    frames.clear()
    on = speechtl.transcribe(base, waves, decode_options=PLAIN, short_clips="on", return_segments=True)
    assert [t.short_clips for t in on] == [True] * 4 and max(frames) == 200
    frames.clear()
    off = speechtl.transcribe(base_dir, waves, adapter=adapters["short"], decode_options=PLAIN, short_clips=False,
                              return_segments=True)
    assert [t.short_clips for t in off] == [False] * 4 and set(frames) == {FULL}
    with pytest.raises(SpeechtlError, match="short_clips 'yes': choose one of auto, on, off"):
        speechtl.transcribe(base, waves, short_clips="yes")


class FixedClassifier(AccentClassifier):
    def __init__(self, labels, probs):
        self.labels, self.probs, self.shared = labels, np.asarray(probs, dtype=np.float64), False

    def probabilities(self, waves, **_):
        return self.probs[: len(waves)]


def test_a_routed_batch_decodes_each_route_its_own_way(base_dir, adapters, waves, frames):
    clf = FixedClassifier(["short", "padded"], [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.95, 0.05]])
    backbone = speechtl.create_backbone(base_dir)
    out = speechtl.transcribe(backbone, waves, adapters={"short": adapters["short"], "padded": adapters["padded"]},
                              accent_classifier=clf, min_prob=0.6, decode_options=PLAIN, return_segments=True)
    assert [t.route.name for t in out] == ["short", "padded", "base", "short"]
    assert [t.short_clips for t in out] == [True, False, False, True]
    assert sorted(frames) == sorted([FULL, FULL, 200])  # the short route's batch is cut at its longest clip (2 s)
    short = load_adapter(speechtl.create_backbone(base_dir), adapters["short"])
    assert [out[0].text, out[3].text] == _one_by_one(short, [waves[0], waves[3]], short=True)


def test_the_export_says_whether_it_may_decode_short_and_ct2_does(base_dir, adapters, waves, tmp_path):
    short = export(None, tmp_path / "short", adapter=adapters["short"], format="ct2", quantization="float32")
    assert verify_export(short)["short_clips"] is True and Ct2Whisper(short).trained_short_clips is True
    base = export(base_dir, tmp_path / "base", format="ct2", quantization="float32")
    assert verify_export(base)["short_clips"] is False and Ct2Whisper(base).trained_short_clips is False
    hf = export(None, tmp_path / "hf", adapter=adapters["padded"])
    assert verify_export(hf)["short_clips"] is False

    engine = Ct2Whisper(short)
    memory_frames = []
    decoder_memory = engine.decoder_memory
    engine.decoder_memory = lambda inputs, lengths: memory_frames.append(inputs.shape[-1]) or decoder_memory(inputs,
                                                                                                             lengths)
    texts = speechtl.transcribe(engine, waves, engine="ct2", decode_options=PLAIN, batch_size=1, return_segments=True)
    assert [t.short_clips for t in texts] == [True] * 4
    assert sorted(memory_frames) == [60, 90, 130, 200]  # each clip at its own length
    torch_model = load_adapter(speechtl.create_backbone(base_dir), adapters["short"])
    assert [t.text for t in texts] == _one_by_one(torch_model, waves, short=True)
    padded = speechtl.transcribe(Ct2Whisper(base), waves, engine="ct2", decode_options=PLAIN, return_segments=True)
    assert [t.short_clips for t in padded] == [False] * 4


def test_a_transformers_export_decodes_on_pytorch_as_its_adapter_trained(base_dir, adapters, waves, tmp_path,
                                                                        frames):
    short = export(None, tmp_path / "short", adapter=adapters["short"])
    assert speechtl.create_backbone(short).trained_short_clips is True
    texts = speechtl.transcribe(short, waves, decode_options=PLAIN, return_segments=True)
    assert [t.short_clips for t in texts] == [True] * 4 and max(frames) == 200  # cut at the longest clip, not 30 s
    merged = load_adapter(speechtl.create_backbone(base_dir), adapters["short"])
    merged.merge_adapter()
    assert [t.text for t in texts] == _one_by_one(merged, waves, short=True)
    # Exported again with no adapter, the export keeps its record.
    again = export(short, tmp_path / "again")
    assert verify_export(again)["short_clips"] is True
    # Routed, its base route is the export itself: short too, while an accent adapter trained at 30 s is not.
    frames.clear()
    accent = _saved_lora(short, tmp_path / "accent", short=False)
    routed = speechtl.transcribe(short, waves, adapters={"x": accent}, route="none", decode_options=PLAIN,
                                 return_segments=True)
    assert [t.short_clips for t in routed] == [True] * 4 and max(frames) == 200
    assert [t.short_clips for t in speechtl.transcribe(short, waves, adapters={"x": accent}, route="x",
                                                        decode_options=PLAIN, return_segments=True)] == [False] * 4

    frames.clear()
    padded = export(None, tmp_path / "padded", adapter=adapters["padded"])
    assert speechtl.create_backbone(padded).trained_short_clips is False
    texts = speechtl.transcribe(padded, waves, decode_options=PLAIN, return_segments=True)
    assert [t.short_clips for t in texts] == [False] * 4 and set(frames) == {FULL}


def test_no_progress_also_silences_the_model_loading_bar(base_dir, waves, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, waves[1], 16000)
    common = [str(base_dir), str(clip), "--no-fallback"]
    assert transcribe_main(common) == 0
    assert "Loading weights" in capsys.readouterr().err  # transformers' own bar, as it loads the folder
    assert transcribe_main([*common, "--no-progress"]) == 0
    assert "Loading weights" not in capsys.readouterr().err
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # put back after the call


def test_cli_decodes_short_by_default_when_the_adapter_allows_and_says_so(base_dir, adapters, waves, tmp_path,
                                                                           capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, waves[1], 16000)
    common = [str(base_dir), str(clip), "--json", "--no-fallback", "--no-progress"]
    rows = {}
    for name, extra in (("auto", ["--adapter", str(adapters["short"])]),
                        ("off", ["--adapter", str(adapters["short"]), "--short-clips", "off"]),
                        ("base", [])):
        assert transcribe_main([*common, *extra]) == 0
        rows[name] = json.loads(capsys.readouterr().out)
    assert rows["auto"]["short_clips"] is True
    assert rows["off"]["short_clips"] is False and rows["base"]["short_clips"] is False
    with pytest.raises(SystemExit) as exit_:
        transcribe_main([*common, "--short-clips", "maybe"])
    assert exit_.value.code == 2
    assert "--short-clips" in capsys.readouterr().err

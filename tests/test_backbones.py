import numpy as np
import pytest
import torch

import speechtl
from speechtl.backbones import Backbone
from speechtl.backbones.base import group_parameters
from speechtl.errors import ModelNotFoundError

TINY = ["whisper-tiny-random", "wav2vec2-tiny-random", "hubert-tiny-random", "wavlm-tiny-random",
        "data2vec-audio-tiny-random"]


def clips(seed=0, lengths=(16000, 9000, 12345)):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype("float32") for n in lengths]


def test_registry_lists_every_family():
    names = speechtl.list_backbones()
    for n in TINY + ["whisper-tiny.en", "whisper-base"]:
        assert n in names
    assert speechtl.list_backbones("whisper-*") == [n for n in names if n.startswith("whisper-")]


def test_unknown_name_lists_close_matches():
    with pytest.raises(ModelNotFoundError, match="did you mean.*whisper-tiny.en"):
        speechtl.create_backbone("whisper-tiny.em")


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        speechtl.create_backbone(tmp_path)


def test_any_hub_id_loads_by_the_model_type_in_its_config(tmp_path, monkeypatch):
    import json

    import huggingface_hub.constants

    # A fine-tuned checkpoint under its author's name, as the hub cache holds it (HF_HUB_OFFLINE=1 reads it).
    base = speechtl.create_backbone("wavlm-tiny-random")
    repo = tmp_path / "hub" / "models--someone--wavlm-accented"
    snapshot = repo / "snapshots" / ("0" * 40)
    base.model.save_pretrained(snapshot)
    base.processor.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    loaded = speechtl.create_backbone("someone/wavlm-accented")
    assert type(loaded) is type(base) and loaded.name == "someone/wavlm-accented"
    x, lengths = base.prepare(clips())
    with torch.no_grad():
        expected = base.encode(x, lengths).last_hidden_state
        torch.testing.assert_close(loaded.encode(x, lengths).last_hidden_state, expected)
    with pytest.raises(ModelNotFoundError, match=r"'someone/elsewhere': not a registered name or a local "
                                                 r"folder, and its config.json could not be read from the hub "
                                                 r"\(HF_HUB_OFFLINE"):
        speechtl.create_backbone("someone/elsewhere")
    # A path whose folder is missing is not sent to the hub when its first part is a local folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"hub/wavlm: no such model folder \(and hub/ here makes it a path"):
        speechtl.create_backbone("hub/wavlm")
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ModelNotFoundError, match="someone/wavlm-accented: model_type 'gpt2' is not supported"):
        speechtl.create_backbone("someone/wavlm-accented")


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes_and_protocol(name):
    b = speechtl.create_backbone(name)
    assert isinstance(b, Backbone)
    assert b.modality == "audio" and b.sample_rate == 16000
    x, lengths = b.prepare(clips())
    with torch.no_grad():
        out = b.encode(x, lengths)
    assert len(out.hidden_states) == b.num_layers + 1
    for h in out.hidden_states:
        assert h.shape[0] == 3 and h.shape[-1] == b.hidden_size and torch.isfinite(h).all()
    assert out.lengths[0] > out.lengths[2] > out.lengths[1]  # clips of 16000, 9000, 12345 samples
    assert int(out.lengths.max()) <= out.last_hidden_state.shape[1]
    loss = b.loss(x, lengths, ["hello world", "a test", "more words here"])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    texts = b.generate(x, lengths, max_new_tokens=4)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("name", TINY)
def test_padded_batch_equals_one_at_a_time(name):
    b = speechtl.create_backbone(name)
    if name.startswith("whisper"):
        b.short_clips = True  # 30-s padding is trivially batch-invariant; the short mode is the one to check
    waves = clips()
    with torch.no_grad():
        batch = b.encode(*b.prepare(waves))
        for i, w in enumerate(waves):
            single = b.encode(*b.prepare([w]))
            n = int(single.lengths[0])
            assert int(batch.lengths[i]) == n
            for hb, hs in zip(batch.hidden_states, single.hidden_states):
                torch.testing.assert_close(hb[i, :n], hs[0, :n], atol=1e-4, rtol=1e-4)


def test_whisper_short_clips_match_30s_on_valid_frames_length():
    b = speechtl.create_backbone("whisper-tiny-random")
    waves = clips(lengths=(16000, 8000))
    long_x, long_len = b.prepare(waves, short_clips=False)
    short_x, short_len = b.prepare(waves, short_clips=True)
    assert long_x.shape[-1] == 3000 and short_x.shape[-1] == 100
    assert long_len.tolist() == short_len.tolist() == [100, 50]
    torch.testing.assert_close(short_x[0], long_x[0, :, :100])
    torch.testing.assert_close(short_x[1, :, :50], long_x[1, :, :50])
    assert not short_x[1, :, 50:].any()


def test_whisper_short_features_are_the_30s_features_of_each_clip():
    # Short features transform only the audio up to the longest clip; every frame a clip touches, and the
    # per-clip maximum the log-mel is clamped against, must still be the 30-s ones. A loud end makes the
    # frames straddling the clip's end the loudest, so too small a margin would change the whole clip.
    b = speechtl.create_backbone("whisper-tiny-random")
    rng = np.random.default_rng(3)
    quiet = [(1e-5 * rng.standard_normal(n)).astype("float32") for n in (7999, 11990, 4321, 160 * 37)]
    for w in quiet[:2]:
        w[-40:] = 1.0
    short_x, lengths = b.prepare(quiet, short_clips=True)
    assert short_x.shape[-1] == 76  # ceil(11990 / 160) = 75 frames, rounded up to an even count
    for i, w in enumerate(quiet):
        alone, n = b.prepare([w], short_clips=False)
        n = int(n[0])
        assert n == int(lengths[i])
        torch.testing.assert_close(short_x[i, :, :n], alone[0, :, :n], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_layer_groups_cover_every_parameter_once(name):
    b = speechtl.create_backbone(name)
    groups = b.layer_groups()
    assert [g for g, _ in groups] == ["frontend"] + [f"layer.{i}" for i in range(b.num_layers)] + ["head"]
    resolved = group_parameters(b, groups)
    assert sum(len(v) for v in resolved.values()) == len(list(b.parameters()))
    assert all(resolved[f"layer.{i}"] for i in range(b.num_layers))


@pytest.mark.parametrize("name", TINY)
def test_tiny_random_is_deterministic(name):
    a, b = speechtl.create_backbone(name), speechtl.create_backbone(name)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_ctc_targets_drop_unknown_characters():
    b = speechtl.create_backbone("wav2vec2-tiny-random")
    ids = b.text_to_ids("Hello, world!")
    assert b.tokenizer.decode(ids, group_tokens=False) == "HELLO WORLD"


def test_whisper_labels_mask_the_prompt():
    b = speechtl.create_backbone("whisper-tiny-random")
    inp, tgt = b.label_ids(["hi", "hello there"])
    prompt = b.prompt_ids()
    assert inp[0, : len(prompt)].tolist() == prompt
    assert (tgt[:, : len(prompt) - 1] == -100).all()
    eot = b.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tgt[1][tgt[1] != -100].tolist()[-1] == eot
    assert b.tokenizer.decode(tgt[1][tgt[1] != -100].tolist()[:-1]) == " hello there"


def test_whisper_trains_on_sentence_case_for_all_caps_transcripts():
    from speechtl.backbones.whisper import whisper_case

    assert whisper_case("I COULD TAKE  NO MORE") == "I could take no more"
    assert whisper_case("Please call Stella.") == "Please call Stella."
    b = speechtl.create_backbone("whisper-tiny-random")
    assert b.label_ids(["TOM GIVES UP"])[0].tolist() == b.label_ids(["Tom gives up"])[0].tolist()

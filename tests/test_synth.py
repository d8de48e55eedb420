from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtl.cli.corpus import main as corpus_main
from speechtl.data import read_manifest, synth, synth_voices, validate_manifest
from speechtl.data.synth import (
    EngineMissingWarning,
    SynthError,
    apply_l1,
    build_corpus,
    mix_at_snr,
    plan_corpus,
    sentence_pools,
    wordnet_sentences,
)

HAVE_WORDNET = any(Path("/usr/share/wordnet").glob("data.*"))
HAVE_FAST_ENGINES = all(shutil.which(b) for b in ("sox", "espeak-ng", "mbrola", "pico2wave")) and HAVE_WORDNET
_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen twenty").split()
SENTENCES = [f"sentence number {w} is spoken here" for w in _WORDS] * 3
SENTENCES = [f"{s} {i}" for i, s in enumerate(SENTENCES)]


@pytest.fixture
def all_voices_installed(monkeypatch):
    """Plan as if every engine and voice were installed (planning runs no engine)."""
    monkeypatch.setattr(synth_voices, "voice_missing", lambda voice: None)


def test_l1_transfer_rules():
    # espeak-ng -x for "the thick weather, heavy winds" (with a clause pause marker)
    en = "D@2 T'Ik w'ED3_:_: h'Evi w'Indz"
    assert apply_l1(en, "german") == "z@2 s'Ik v'Ez3_:_: h'Evi v'Inds"  # th->s/z, w->v, final devoicing
    assert apply_l1("s'Vn", "german") == "z'an"  # initial s before a vowel is voiced, STRUT -> a
    french = apply_l1(en, "french")
    assert french.split()[3] == "Ev'i"  # h dropped, stress moved to the last syllable
    assert "I" not in french.replace("i:", "")  # lax KIT vowel replaced by FLEECE
    assert apply_l1("h'aUs", "russian") == "x'aUs"


@pytest.mark.skipif(not HAVE_WORDNET, reason="Debian wordnet-base not installed (corpora/install_tts.sh)")
def test_wordnet_sentences():
    s = wordnet_sentences()
    assert len(s) > 20000 and len(set(s)) == len(s)
    assert all(5 <= len(x.split()) <= 20 and not any(c.isdigit() for c in x) for x in s[:2000])


def test_sentence_pools_are_disjoint_and_seeded():
    pools = sentence_pools(SENTENCES, seed=1)
    sets = {k: set(v) for k, v in pools.items()}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["dev"] and not sets["dev"] & sets["test"]
    assert sum(len(v) for v in pools.values()) == len(SENTENCES)
    assert sentence_pools(SENTENCES, seed=1) == pools and sentence_pools(SENTENCES, seed=2) != pools


def test_plan_splits_speakers_sentences_and_heldout(all_voices_installed, tmp_path):
    accents = ["us", "gb", "german", "russian"]
    jobs = plan_corpus(tmp_path, accents, per_accent=20, seed=1, sentences=SENTENCES)
    assert len(jobs) == 80 and len({j.id for j in jobs}) == 80
    counts = Counter((j.accent, j.split) for j in jobs)
    for a in ("us", "gb", "german"):
        assert (counts[(a, "train")], counts[(a, "dev")], counts[(a, "test")]) == (16, 2, 2)
    assert counts[("russian", "test_heldout")] == 20  # default held-out accent: the last one
    assert {j.split for j in jobs if j.accent == "russian"} == {"test_heldout"}

    spk_splits = defaultdict(set)
    for j in jobs:
        spk_splits[j.speaker.id].add(j.split)
    assert all(len(s) == 1 for s in spk_splits.values())  # a pseudo-speaker is in one split only

    text = defaultdict(set)
    for j in jobs:
        text[j.split].add(j.text)
    assert not text["train"] & (text["test"] | text["test_heldout"] | text["dev"])
    # Test sentences are the same for every accent, so per-accent WER compares like with like.
    assert {j.text for j in jobs if j.accent == "us" and j.split == "test"} <= text["test_heldout"]

    engines = defaultdict(set)
    for j in jobs:
        engines[j.accent].add(j.speaker.voice.engine)
    assert len(engines["us"]) >= 5 and all(len(engines[a]) >= 2 for a in accents)
    assert all(j.audio.parent == tmp_path / "audio" / j.accent for j in jobs)

    again = plan_corpus(tmp_path, accents, per_accent=20, seed=1, sentences=SENTENCES)
    assert [(j.id, j.text, j.speaker, j.augment, j.audio) for j in again] == \
        [(j.id, j.text, j.speaker, j.augment, j.audio) for j in jobs]
    other = plan_corpus(tmp_path, accents, per_accent=20, seed=2, sentences=SENTENCES)
    assert [j.audio for j in other] != [j.audio for j in jobs]

    none_held = plan_corpus(tmp_path, ["us", "gb"], per_accent=10, heldout=[], sentences=SENTENCES)
    assert "test_heldout" not in {j.split for j in none_held}


def test_plan_rejects_bad_arguments(all_voices_installed, tmp_path):
    with pytest.raises(SynthError, match="unknown accent 'klingon'"):
        plan_corpus(tmp_path, ["us", "klingon"], 5, sentences=SENTENCES)
    with pytest.raises(SynthError, match="not among"):
        plan_corpus(tmp_path, ["us", "gb"], 5, heldout=["french"], sentences=SENTENCES)
    with pytest.raises(SynthError, match="every accent is held out"):
        plan_corpus(tmp_path, ["us"], 5, sentences=SENTENCES)
    with pytest.raises(SynthError, match="unknown engine"):
        plan_corpus(tmp_path, ["us", "gb"], 5, engines=["sam"], sentences=SENTENCES)


def test_missing_engine_is_skipped_with_a_warning_and_empty_accent_is_an_error(monkeypatch, tmp_path):
    real_missing = synth_voices.voice_missing

    def fake_missing(voice):
        if voice.engine in ("flite", "rhvoice"):
            return f"engine {voice.engine!r}: program not found"
        return None

    monkeypatch.setattr(synth_voices, "voice_missing", fake_missing)
    with pytest.warns(EngineMissingWarning) as caught:
        jobs = plan_corpus(tmp_path, ["us", "scottish", "gb"], 10, sentences=SENTENCES)
    assert any("'flite'" in str(w.message) and "'scottish'" in str(w.message) for w in caught)
    assert not {j.speaker.voice.engine for j in jobs} & {"flite", "rhvoice"}
    assert {j.speaker.voice.engine for j in jobs if j.accent == "scottish"} == {"espeak"}

    monkeypatch.setattr(synth_voices, "voice_missing", lambda v: "gone" if v.engine == "rhvoice" or v.l1 else None)
    with pytest.warns(EngineMissingWarning), pytest.raises(SynthError, match="'russian' has no installed voice"):
        plan_corpus(tmp_path, ["us", "russian"], 10, sentences=SENTENCES)

    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    monkeypatch.setattr(synth_voices, "voice_missing", real_missing)
    with pytest.raises(SynthError, match="sox"):
        build_corpus(tmp_path, ["us", "gb"], 2, sentences=SENTENCES)


def test_mix_at_snr_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.3
    noise = rng.standard_normal(16000).astype(np.float32) * 5
    mixed = mix_at_snr(speech, noise, 12.5)
    added = mixed.astype(np.float64) - speech
    snr = 10 * math.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added**2))
    assert abs(snr - 12.5) < 1e-3
    assert np.array_equal(mix_at_snr(np.zeros(10, np.float32), noise[:10], 5), np.zeros(10))


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.flac"))}


@pytest.mark.skipif(not HAVE_FAST_ENGINES, reason="sox/espeak-ng/mbrola/pico/wordnet not installed "
                    "(corpora/install_tts.sh)")
def test_build_is_valid_deterministic_and_resumable(tmp_path, monkeypatch):
    kw = {"accents": ["us", "gb", "german"], "per_accent": 4, "seed": 3, "engines": ["espeak", "mbrola", "pico"],
              "speakers_per_voice": 1, "progress": False}
    utts = build_corpus(tmp_path / "a", workers=2, **kw)
    assert len(utts) == 12
    report = validate_manifest(tmp_path / "a" / "manifest.jsonl")
    assert report.ok, report.problems
    assert report.summary["accents"] == 3
    for u in utts:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert u.duration > 0.5 and u.extra["engine"] in ("espeak", "mbrola", "pico")
    assert {u.split for u in utts if u.accent == "german"} == {"test_heldout"}
    assert read_manifest(tmp_path / "a" / "manifest.jsonl") == utts
    config = json.loads((tmp_path / "a" / "synth_config.json").read_text())
    assert config["seed"] == 3 and config["heldout"] == ["german"]

    build_corpus(tmp_path / "b", workers=1, **kw)
    assert _md5s(tmp_path / "a") == _md5s(tmp_path / "b")  # same seed, any number of workers: same bytes

    def fail(batch):
        raise AssertionError("a finished file was synthesised again")

    monkeypatch.setattr(synth, "_synthesise_batch", fail)
    again = build_corpus(tmp_path / "a", workers=2, **kw)  # everything exists: nothing is synthesised
    assert again == utts


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_FAST_ENGINES and shutil.which("RHVoice-test") and shutil.which("festival")
                         and shutil.which("flite")), reason="TTS engines not installed (corpora/install_tts.sh)")
def test_cli_synth_every_engine(tmp_path, capsys):
    out = tmp_path / "c"
    accents = "us,gb,scottish,german,french,russian"
    rc = corpus_main(["synth", "--out", str(out), "--accents", accents, "--per-accent", "10", "--seed", "1",
                      "--speakers-per-voice", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "60 utterances" in printed
    utts = read_manifest(out / "manifest.jsonl")
    engines = defaultdict(set)
    for u in utts:
        engines[u.accent].add(u.extra["engine"])
    assert set(engines) == set(accents.split(","))
    assert sum(len(e) >= 2 for e in engines.values()) >= 4
    assert {"flite", "festival", "rhvoice", "mbrola", "espeak", "pico"} <= set().union(*engines.values())
    assert corpus_main(["validate", str(out / "manifest.jsonl")]) == 0

from __future__ import annotations

import json
from collections import Counter

import pytest

from speechtl.data import ManifestError, Utterance, filter_manifest, read_manifest, split_by_speaker, write_manifest
from speechtl.errors import SpeechtlError


def _utt(i: int, speaker: str, accent: str, **kw) -> Utterance:
    return Utterance(id=f"u{i}", audio=f"/abs/{i}.flac", text=f"text {i}", speaker=speaker, accent=accent, **kw)


def test_round_trip_keeps_fields_and_unknown_keys(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        {"id": "a", "audio": "wav/a.flac", "text": "héllo wörld", "speaker": "s1", "accent": "gb", "duration": 1.5,
         "split": "train", "gender": "f", "age": "adult", "corpus": "x", "offset": 0.25, "licence": "CC BY"},
        {"id": "b", "audio": "/elsewhere/b.flac", "text": "bye", "speaker": "s2", "accent": "us", "age": 31},
    ]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    utts = read_manifest(path)
    assert [u.id for u in utts] == ["a", "b"]
    a, b = utts
    assert a.audio == str(tmp_path / "wav" / "a.flac")  # relative -> absolute against the manifest folder
    assert a.extra == {"licence": "CC BY"} and a.offset == 0.25 and a.duration == 1.5 and a.text == "héllo wörld"
    assert b.audio == "/elsewhere/b.flac" and b.age == "31" and b.split is None

    out = tmp_path / "sub" / ".." / "out.jsonl"
    write_manifest(utts, out)
    written = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written[0]["audio"] == "wav/a.flac"  # under the folder -> relative
    assert written[0]["licence"] == "CC BY"
    assert written[1]["audio"] == "/elsewhere/b.flac"
    assert "split" not in written[1]  # None fields are omitted
    assert read_manifest(tmp_path / "out.jsonl") == utts
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s", "accent": "gb"}\n'
        "not json\n"
        '{"id": "b", "audio": "b.wav", "text": "t", "speaker": "s"}\n'
        '{"id": "a", "audio": "c.wav", "text": "t", "speaker": "s", "accent": "gb"}\n'
        '{"id": "d", "audio": "d.wav", "text": "t", "speaker": "s", "accent": "gb", "duration": -1}\n'
        '{"id": "e", "audio": "e.wav", "text": "t", "speaker": "s", "accent": "gb", "split": "valid"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ManifestError, match=r"bad\.jsonl:2: not valid JSON.*and 4 more") as info:
        read_manifest(path)
    assert isinstance(info.value, SpeechtlError)
    from speechtl.data.manifest import parse_manifest

    utts, problems = parse_manifest(path)
    assert [u.id for u in utts] == ["a"]
    joined = "\n".join(problems)
    assert "bad.jsonl:3: missing required key 'accent'" in joined
    assert "bad.jsonl:4: id 'a' repeats line 1" in joined
    assert "bad.jsonl:5: 'duration'" in joined
    assert "bad.jsonl:6: 'split' is 'valid'" in joined


def test_bad_utf8_and_missing_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a", "audio": "a.wav", "text": "\xff", "speaker": "s", "accent": "gb"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: not valid UTF-8"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "missing.jsonl")


def test_write_rejects_duplicate_ids_and_leaves_nothing(tmp_path):
    utts = [_utt(1, "s", "gb"), _utt(1, "s", "gb")]
    with pytest.raises(ManifestError, match="appears twice"):
        write_manifest(utts, tmp_path / "m.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_filter_manifest(sine_wav):
    wav = sine_wav(2.0)
    utts = [
        _utt(1, "s1", "gb", duration=1.0, split="train"),
        _utt(2, "s2", "us", duration=5.0, split="dev"),
        Utterance(id="u3", audio=str(wav), text="t", speaker="s3", accent="gb", split="train"),  # 2 s from header
    ]
    assert [u.id for u in filter_manifest(utts, accents=["gb"])] == ["u1", "u3"]
    assert [u.id for u in filter_manifest(utts, speakers={"s2"})] == ["u2"]
    assert [u.id for u in filter_manifest(utts, splits=["train"], min_duration=1.5)] == ["u3"]
    assert [u.id for u in filter_manifest(utts, max_duration=2.0)] == ["u1", "u3"]


def test_split_by_speaker_is_disjoint_stratified_and_seeded():
    utts = []
    i = 0
    for accent in ("gb", "us", "fr"):
        for s in range(10):
            for _ in range(4):
                utts.append(_utt(i, f"{accent}{s}", accent))
                i += 1
    out = split_by_speaker(utts, dev=0.1, test=0.2, seed=3, heldout_accents=["fr"])
    assert [u.id for u in out] == [u.id for u in utts]  # order kept
    assert all(u.split is None for u in utts)  # input untouched
    spk_split: dict[str, set] = {}
    for u in out:
        spk_split.setdefault(u.speaker, set()).add(u.split)
    assert all(len(s) == 1 for s in spk_split.values())
    counts = Counter((u.accent, u.split) for u in out)
    for accent in ("gb", "us"):
        assert counts[(accent, "test")] == 8 and counts[(accent, "dev")] == 4 and counts[(accent, "train")] == 28
    assert counts[("fr", "test_heldout")] == 40 and not any(u.split != "test_heldout" for u in out if u.accent == "fr")
    again = split_by_speaker(list(reversed(utts)), dev=0.1, test=0.2, seed=3, heldout_accents=["fr"])
    assert {u.id: u.split for u in again} == {u.id: u.split for u in out}
    other = split_by_speaker(utts, dev=0.1, test=0.2, seed=4, heldout_accents=["fr"])
    assert {u.id: u.split for u in other} != {u.id: u.split for u in out}
    # A misspelt held-out accent would hold nothing out and train on the accent meant to be unseen.
    with pytest.raises(ManifestError, match=r"held-out accent\(s\) 'Fr' not in the manifest; "
                                            r"accents there: fr, gb, us"):
        split_by_speaker(utts, heldout_accents=["Fr"])


def test_split_keeps_a_training_speaker():
    utts = [_utt(0, "a", "gb"), _utt(1, "b", "gb"), _utt(2, "c", "gb")]
    out = split_by_speaker(utts, dev=0.3, test=0.3)
    assert sorted(u.split for u in out) == ["dev", "test", "train"]
    single = split_by_speaker([_utt(0, "a", "gb")], dev=0.3, test=0.3)
    assert single[0].split == "train"
    with pytest.raises(ManifestError):
        split_by_speaker(utts, dev=0.6, test=0.5)

"""Each importer on a tiny corpus built here in that corpus's own on-disk layout."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtl.cli.corpus import main as corpus_main
from speechtl.data import CorpusImportError, import_corpus, read_manifest, validate_manifest
from speechtl.data.importers import (
    SPEECH_ACCENT_ARCHIVE_TEXT,
    import_cmu_arctic,
    import_commonvoice,
    import_edacc,
    import_hf,
    import_kaldi,
    import_l2arctic,
    import_ljspeech,
    import_speech_accent_archive,
    import_speechocean762,
    import_vctk,
)


def tone(path: Path, seconds: float = 0.5, rate: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- Kaldi family ---------------------------------------------------------------------------


def _speechocean_layout(root: Path) -> Path:
    """speechocean762: WAVE/SPEAKERxxxx audio at the root, Kaldi files in train/ with paths from the root."""
    tr = root / "train"
    rows = [("000010011", "0001", "WE CALL IT BEAR"), ("000010035", "0001", "ZERO THREE"),
            ("000360012", "0036", "MARK IS GOING TO SEE ELEPHANT")]
    for utt, spk, _ in rows:
        tone(root / "WAVE" / spk / f"{utt}.flac", 0.6)
    write(tr / "wav.scp", "".join(f"{u} WAVE/{s}/{u}.flac\n" for u, s, _ in rows))
    write(tr / "text", "".join(f"{u} {t}\n" for u, _, t in rows))
    write(tr / "utt2spk", "".join(f"{u} {s}\n" for u, s, _ in rows))
    write(tr / "spk2age", "0001 6\n0036 21\n")
    write(tr / "spk2gender", "0001 m\n0036 f\n")
    return root


def test_kaldi_resolves_paths_and_reads_speaker_tables(tmp_path):
    root = _speechocean_layout(tmp_path / "so")
    utts = import_kaldi(root / "train", accent="Mandarin-L1", corpus="x")
    assert [u.id for u in utts] == ["000010011", "000010035", "000360012"]
    u = utts[0]
    assert u.audio == str(root / "WAVE" / "0001" / "000010011.flac")  # relative to the corpus root
    assert (u.speaker, u.gender, u.age, u.accent, u.corpus) == ("0001", "m", "6", "Mandarin-L1", "x")
    assert u.duration == pytest.approx(0.6)


def test_kaldi_segments_and_accent_tables(tmp_path):
    d = tmp_path / "data"
    tone(d / "rec1.wav", 3.0)
    write(d / "wav.scp", f"rec1 {d / 'rec1.wav'}\n")
    write(d / "segments", "a rec1 0.5 1.5\nb rec1 2.0 -1\n")
    write(d / "text", "a HELLO THERE\nb BYE\n")
    write(d / "utt2spk", "a s1\nb s2\n")
    write(d / "spk2accent", "s1 Scottish\n")
    utts = {u.id: u for u in import_kaldi(d)}
    assert (utts["a"].offset, utts["a"].duration, utts["a"].accent) == (0.5, 1.0, "Scottish")
    assert utts["b"].offset == 2.0 and utts["b"].duration == pytest.approx(1.0) and utts["b"].accent == "unknown"


def test_kaldi_errors_name_the_line(tmp_path):
    d = tmp_path / "data"
    write(d / "wav.scp", "a /x/a.wav\nb sox /x/b.sph -t wav - |\n")
    write(d / "text", "a HI\nb HO\n")
    write(d / "utt2spk", "a s\nb s\n")
    with pytest.raises(CorpusImportError, match=r"wav\.scp:2: 'b' is a piped command"):
        import_kaldi(d)
    write(d / "wav.scp", "a /x/a.wav\n")
    with pytest.raises(CorpusImportError, match=r"text:2: utterance 'b' has no audio"):
        import_kaldi(d)
    (d / "utt2spk").unlink()
    with pytest.raises(CorpusImportError, match="utt2spk: missing"):
        import_kaldi(d)


def test_speechocean762_age_groups_and_splits(tmp_path):
    root = _speechocean_layout(tmp_path / "so")
    utts = import_speechocean762(root)  # the corpus root: train/ found
    assert {u.accent for u in utts} == {"Mandarin-L1"} and {u.split for u in utts} == {"train"}
    ages = {u.speaker: (u.age, u.extra["age_years"]) for u in utts}
    assert ages == {"0001": ("child", 6), "0036": ("adult", 21)}


def test_real_speechocean762(shared_data, tmp_path):
    utts = import_speechocean762(shared_data / "speechocean762" / "train")
    assert len(utts) == 1000
    assert len({u.speaker for u in utts}) == 50
    assert Counter(u.age for u in {u.speaker: u for u in utts}.values()) == {"adult": 40, "child": 10}
    assert all(Path(u.audio).is_file() for u in utts[:20])


def test_edacc(tmp_path):
    root = tmp_path / "edacc_v1.0"
    tone(root / "data" / "EDACC-C06.wav", 6.0)
    tone(root / "data" / "EDACC-C30.wav", 4.0)
    write(root / "dev" / "text", "EDACC-C06-A-000000000-000000527 <laugh> SO WHERE ARE YOU FROM\n"
                                  "EDACC-C06-B-000000600-000000800 <overlap>\n"
                                  "EDACC-C06-B-000000800-000000950 I AM FROM LAGOS\n")
    write(root / "dev" / "segments", "EDACC-C06-A-000000000-000000527 EDACC-C06 0.00 5.27\n"
                                      "EDACC-C06-B-000000600-000000800 EDACC-C06 5.00 5.50\n"
                                      "EDACC-C06-B-000000800-000000950 EDACC-C06 5.50 5.95\n")
    write(root / "dev" / "utt2spk", "EDACC-C06-A-000000000-000000527 EDACC-C06-A\n"
                                     "EDACC-C06-B-000000600-000000800 EDACC-C06-B\n"
                                     "EDACC-C06-B-000000800-000000950 EDACC-C06-B\n")
    write(root / "dev" / "stm", "EDACC-C06 1 EDACC-C06-A 0.00 5.27 <male,l1> SO WHERE ARE YOU FROM\n"
                                "EDACC-C06 1 EDACC-C06-B 5.50 5.95 <female,l2> I AM FROM LAGOS\n")
    write(root / "test" / "text", "EDACC-C30-A-000000100-000000300 GOOD MORNING\n")
    write(root / "test" / "segments", "EDACC-C30-A-000000100-000000300 EDACC-C30 1.00 3.00\n")
    write(root / "test" / "utt2spk", "EDACC-C30-A-000000100-000000300 EDACC-C30-A\n")
    header = ["", "PARTICIPANT_ID"] + [f"Q{i}" for i in range(2, 12)] + [
        "What is your first language?", "How would you describe your accent in English? (e.g. Italian, Glaswegian)"]
    with open(root / "linguistic_background.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (pid, l1, acc) in enumerate([("EDACC-C06-A", "English", "Scottish"),
                                            ("EDACC-C06-B", "Yoruba", "Nigerian"),
                                            ("EDACC-C30-A", "Spanish", "Spanish")]):
            w.writerow([i, pid] + [""] * 10 + [l1, acc])
    utts = {u.id: u for u in import_edacc(root)}
    assert len(utts) == 3  # the <overlap>-only turn is dropped
    a = utts["EDACC-C06-A-000000000-000000527"]
    assert a.text == "SO WHERE ARE YOU FROM" and a.accent == "English-L1" and a.gender == "m"
    assert (a.offset, a.duration, a.split) == (0.0, 5.27, "dev")
    assert a.audio == str(root / "data" / "EDACC-C06.wav") and a.extra["accent_described"] == "Scottish"
    b = utts["EDACC-C06-B-000000800-000000950"]
    assert (b.accent, b.gender, b.offset) == ("Yoruba-L1", "f", 5.5)
    assert utts["EDACC-C30-A-000000100-000000300"].split == "test"
    kept = import_edacc(root, subsets=["dev"], keep_tags=True)
    assert any(u.text == "<overlap>" for u in kept)
    out = tmp_path / "m.jsonl"
    import_corpus("edacc", root, out=out)
    assert validate_manifest(out).ok


# --- read-speech corpora --------------------------------------------------------------------


def test_vctk_092_layout(tmp_path):
    root = tmp_path / "VCTK-Corpus-0.92"
    write(root / "speaker-info.txt", "ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"
                                     "p225  23  F    English    Southern  England\n"
                                     "p234  22  F    Scottish    West  Dumfries\n"
                                     "p315  18  M    American    Connecticut\n")
    for spk, n in (("p225", "001"), ("p225", "002"), ("p234", "001")):
        write(root / "txt" / spk / f"{spk}_{n}.txt", f"Text {spk} {n}.\n")
        tone(root / "wav48_silence_trimmed" / spk / f"{spk}_{n}_mic1.flac", 0.4, 48000)
        tone(root / "wav48_silence_trimmed" / spk / f"{spk}_{n}_mic2.flac", 0.4, 48000)
    tone(root / "wav48_silence_trimmed" / "p315" / "p315_001_mic1.flac", 0.4, 48000)  # no transcript
    utts = import_vctk(root)
    assert [u.id for u in utts] == ["vctk_p225_001", "vctk_p225_002", "vctk_p234_001"]
    u = utts[2]
    assert (u.accent, u.gender, u.age, u.extra["region"], u.text) == ("Scottish", "f", "22", "West Dumfries",
                                                                     "Text p234 001.")
    assert u.audio.endswith("p234_001_mic1.flac")
    assert import_vctk(root, mic="mic2")[0].audio.endswith("_mic2.flac")


def test_vctk_old_layout(tmp_path):
    root = tmp_path / "VCTK-Corpus"
    write(root / "speaker-info.txt", "ID  AGE  GENDER  ACCENTS  REGION\n225  23  F    English    Southern  England\n")
    write(root / "txt" / "p225" / "p225_001.txt", "Please call Stella.\n")
    tone(root / "wav48" / "p225" / "p225_001.wav", 0.4, 48000)
    (u,) = import_vctk(root)
    assert u.speaker == "p225" and u.audio.endswith("wav48/p225/p225_001.wav") and u.duration == pytest.approx(0.4)


def test_l2arctic(tmp_path):
    root = tmp_path / "l2arctic_release_v5.0"
    for spk in ("ABA", "TNI"):
        for n in ("a0001", "a0002"):
            tone(root / spk / "wav" / f"arctic_{n}.wav", 0.3, 44100)
            write(root / spk / "transcript" / f"arctic_{n}.txt", f"Author of the danger trail {n}")
        (root / spk / "annotation").mkdir()
    tone(root / "suitcase_corpus" / "wav" / "aba.wav", 0.3)
    utts = import_l2arctic(root)
    assert len(utts) == 4
    by = {u.speaker: u for u in utts}
    assert (by["ABA"].accent, by["ABA"].gender) == ("Arabic-L1", "m")
    assert (by["TNI"].accent, by["TNI"].gender) == ("Hindi-L1", "f")
    assert by["ABA"].id == "ABA_arctic_a0002" and by["ABA"].text == "Author of the danger trail a0002"


def test_cmu_arctic(tmp_path):
    root = tmp_path / "ARCTIC"
    for spk in ("awb", "zzz"):
        sd = root / f"cmu_us_{spk}_arctic"
        write(sd / "etc" / "txt.done.data",
              '( arctic_a0001 "Author of the danger trail, Philip Steels, etc." )\n'
              '( arctic_a0002 "Not at this particular case, Tom, apologized Whittemore." )\n')
        tone(sd / "wav" / "arctic_a0001.wav", 0.3)
        tone(sd / "wav" / "arctic_a0002.wav", 0.3)
    with pytest.warns(UserWarning, match="'zzz' has no known accent"):
        utts = import_cmu_arctic(root)
    by = {u.id: u for u in utts}
    assert by["awb_arctic_a0001"].accent == "Scottish" and by["awb_arctic_a0001"].gender == "m"
    assert by["awb_arctic_a0001"].text == "Author of the danger trail, Philip Steels, etc."
    assert by["zzz_arctic_a0002"].accent == "unknown"
    one = import_cmu_arctic(root / "cmu_us_zzz_arctic", speaker_accents={"zzz": "Dutch-L1"})
    assert {u.accent for u in one} == {"Dutch-L1"}
    write(root / "cmu_us_awb_arctic" / "etc" / "txt.done.data", "arctic_a0001 no brackets\n")
    with pytest.raises(CorpusImportError, match=r"txt\.done\.data:1"):
        import_cmu_arctic(root / "cmu_us_awb_arctic")


def test_ljspeech(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    write(root / "metadata.csv", "LJ001-0001|Printing, in 1 sense|Printing, in one sense\n"
                                 "LJ001-0002|in being comparatively modern.|in being comparatively modern.\n")
    tone(root / "wavs" / "LJ001-0001.wav", 0.3, 22050)
    tone(root / "wavs" / "LJ001-0002.wav", 0.3, 22050)
    utts = import_ljspeech(root)
    assert [u.text for u in utts] == ["Printing, in one sense", "in being comparatively modern."]
    assert {(u.accent, u.speaker, u.gender) for u in utts} == {("US", "LJ", "f")}
    assert import_ljspeech(root, normalized=False)[0].text == "Printing, in 1 sense"


def test_commonvoice_records_mp3_even_when_undecodable(tmp_path):
    root = tmp_path / "cv-corpus-17.0" / "en"
    cols = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
            "gender", "accents", "variant", "locale", "segment"]
    rows = [["c1", "common_voice_en_1.mp3", "s1", "Hello there.", "", "2", "0", "twenties", "male_masculine",
             "England English|Southern English", "", "en", ""],
            ["c2", "common_voice_en_2.mp3", "s2", "Good morning.", "", "2", "0", "", "", "", "", "en", ""]]
    write(root / "validated.tsv", "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    write(root / "train.tsv", "\t".join(cols) + "\n" + "\t".join(rows[0]) + "\n")
    write(root / "dev.tsv", "\t".join(cols) + "\n" + "\t".join(rows[1]) + "\n")
    write(root / "test.tsv", "\t".join(cols) + "\n")
    tone(root / "clips" / "common_voice_en_1.mp3", 1.0, fmt="MP3")
    (root / "clips" / "common_voice_en_2.mp3").write_bytes(b"ID3\x03\x00 not really an mp3")
    utts = import_commonvoice(root)
    a, b = utts
    assert (a.accent, a.gender, a.age, a.extra["accents"]) == ("England English", "m", "twenties",
                                                                ["England English", "Southern English"])
    assert b.accent == "unknown" and b.duration is None and b.audio.endswith("clips/common_voice_en_2.mp3")
    assert {u.id: u.split for u in import_commonvoice(root, tsv="splits")} == {"common_voice_en_1": "train",
                                                                               "common_voice_en_2": "dev"}
    out = tmp_path / "cv.jsonl"
    import_corpus("commonvoice", root, out=out)
    report = validate_manifest(out)
    assert len(report.problems) == 1 and "cv.jsonl:2: common_voice_en_2" in report.problems[0]
    # Older releases name the column "accent".
    old = tmp_path / "old"
    write(old / "validated.tsv", "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\n"
                                 "c9\tx.mp3\tHi.\t1\t0\t\tfemale\tus\n")
    assert import_commonvoice(old)[0].accent == "us"


def test_speech_accent_archive(tmp_path):
    root = tmp_path / "speech-accent-archive"
    with open(write(root / "speakers_all.csv", ""), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["age", "age_onset", "birthplace", "filename", "native_language", "sex", "speakerid", "country",
                    "file_missing?", "", "", ""])
        w.writerow(["24", "12", "koussi, senegal", "balanta", "balanta", "male", "788", "senegal", "TRUE"])
        w.writerow(["27", "0", "virginia, south africa", "afrikaans1", "afrikaans", "female", "1", "south africa",
                    "FALSE"])
        w.writerow(["40", "0", "pittsburgh, pennsylvania, usa", "english1", "english", "male", "60", "usa", "FALSE"])
    for name in ("afrikaans1", "english1"):
        tone(root / "recordings" / "recordings" / f"{name}.mp3", 1.0, fmt="MP3")
    utts = import_speech_accent_archive(root)
    assert [(u.id, u.accent, u.gender, u.speaker) for u in utts] == [
        ("saa_afrikaans1", "Afrikaans-L1", "f", "1"), ("saa_english1", "English-usa", "m", "60")]
    assert utts[0].text == SPEECH_ACCENT_ARCHIVE_TEXT and utts[0].text.startswith("Please call Stella.")
    assert utts[0].audio.endswith("recordings/recordings/afrikaans1.mp3")
    assert utts[0].duration == pytest.approx(1.0, abs=0.1)


# --- Hugging Face ---------------------------------------------------------------------------


def test_hf_saved_dataset_with_bytes_and_paths(tmp_path):
    import datasets

    flac = tone(tmp_path / "src" / "a.flac", 0.5, 22050)
    wav = tone(tmp_path / "src" / "b.wav", 0.25)
    # Built as a plain struct column then cast to Audio(decode=False): datasets 5 needs torchcodec to
    # *encode* Audio values, and a hub dataset read from parquet has exactly this storage.
    features = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                  "sentence": datasets.Value("string"), "client": datasets.Value("string"),
                                  "accent": datasets.Value("string"), "key": datasets.Value("string")})
    train = datasets.Dataset.from_dict(
        {"audio": [{"bytes": flac.read_bytes(), "path": "a.flac"}], "sentence": ["hello world"],
         "client": ["spk1"], "accent": ["Irish"], "key": ["k1"]}, features=features)
    val = datasets.Dataset.from_dict(
        {"audio": [{"bytes": None, "path": str(wav)}], "sentence": ["bye"], "client": ["spk2"],
         "accent": ["Welsh"], "key": ["k2"]}, features=features)
    train = train.cast_column("audio", datasets.Audio(decode=False))
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(saved))

    out = tmp_path / "out" / "manifest.jsonl"
    utts = import_corpus("hf", saved, out=out, text_column="sentence", speaker_column="client", id_column="key")
    by = {u.id: u for u in utts}
    assert by["k1"].split == "train" and by["k2"].split == "dev"
    assert by["k1"].audio == str((tmp_path / "out" / "manifest_audio" / "k1.flac").resolve())
    data, rate = sf.read(by["k1"].audio)
    assert rate == 22050 and len(data) == 11025
    assert by["k2"].audio == str(wav.resolve()) and by["k2"].accent == "Welsh"
    assert json.loads(out.read_text().splitlines()[0])["audio"] == "manifest_audio/k1.flac"
    assert validate_manifest(out, min_sample_rate=16000).ok

    # A Dataset object, fixed accent, no speaker column.
    utts = import_hf(val, accent_column=None, accent="Welsh", speaker_column=None, text_column="sentence")
    assert utts[0].speaker == "unknown" and utts[0].id == "row-000000"
    with pytest.raises(CorpusImportError, match="no column 'text'"):
        import_hf(val)
    with pytest.raises(CorpusImportError, match="give an output folder"):
        import_hf(train, text_column="sentence", speaker_column="client")


def test_hf_imports_never_share_an_audio_file(tmp_path):
    import datasets

    def embedded(ids, seconds):
        rows = [{"bytes": tone(tmp_path / "src" / f"{n}.flac", s, 16000).read_bytes(), "path": None}
                for n, s in enumerate(seconds)]
        features = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                      "text": datasets.Value("string"), "id": datasets.Value("string")})
        ds = datasets.Dataset.from_dict({"audio": rows, "text": ["a b"] * len(ids), "id": ids}, features=features)
        return ds.cast_column("audio", datasets.Audio(decode=False))

    keys = dict(id_column="id", speaker_column=None, accent_column=None, accent="Irish", gender_column=None)
    # Ids that differ only in characters a file name cannot hold, in one import...
    a = import_corpus("hf", embedded(["x/1", "x_1"], [0.5, 0.25]), out=tmp_path / "out" / "a.jsonl", **keys)
    assert len({u.audio for u in a}) == 2 and [u.duration for u in a] == [0.5, 0.25]
    # ...and in a second data set with the same ids, imported into the same folder.
    b = import_corpus("hf", embedded(["x/1", "x_1"], [1.0, 1.0]), out=tmp_path / "out" / "b.jsonl", **keys)
    assert [u.duration for u in b] == [1.0, 1.0]
    assert [round(len(sf.read(u.audio)[0]) / 16000, 2) for u in a] == [0.5, 0.25]
    assert validate_manifest(tmp_path / "out" / "a.jsonl", min_sample_rate=16000).ok


# --- CLI ------------------------------------------------------------------------------------


def test_cli_import_and_validate(tmp_path, capsys):
    root = _speechocean_layout(tmp_path / "so")
    out = tmp_path / "m.jsonl"
    assert corpus_main(["import", "speechocean762", str(root / "train"), "--out", str(out)]) == 0
    assert "3 utterances, 2 speakers" in capsys.readouterr().out
    assert len(read_manifest(out)) == 3
    assert corpus_main(["validate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ok: 3 utterances, 2 speakers, 1 accents" in text and "Mandarin-L1" in text

    lines = out.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["audio"] = "missing.flac"
    bad["text"] = " "
    lines[1] = json.dumps(bad)
    lines.append("{broken")
    out.write_text("\n".join(lines) + "\n")
    assert corpus_main(["validate", str(out)]) == 1
    text = capsys.readouterr().out
    assert "m.jsonl:2: 000010035: empty text" in text
    assert "m.jsonl:2: 000010035: audio" in text and "does not exist" in text
    assert "m.jsonl:4: not valid JSON" in text

    # A manifest is replaced only with --overwrite.
    assert corpus_main(["import", "speechocean762", str(root / "train"), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text().endswith("{broken\n")
    assert corpus_main(["import", "speechocean762", str(root / "train"), "--out", str(out), "--overwrite"]) == 0
    assert len(read_manifest(out)) == 3

    assert corpus_main(["import", "vctk", str(tmp_path / "nowhere"), "--out", str(tmp_path / "v.jsonl")]) == 2
    assert "error: " in capsys.readouterr().err
    # An option of another importer would be silently ignored: refused, naming the importer's own.
    assert corpus_main(["import", "speechocean762", str(root / "train"), "--out", str(tmp_path / "w.jsonl"),
                        "--accent", "Irish", "--mic", "mic2"]) == 2
    err = capsys.readouterr().err
    assert "--accent, --mic do not apply to the speechocean762 importer (its options: none)" in err
    assert not (tmp_path / "w.jsonl").exists()

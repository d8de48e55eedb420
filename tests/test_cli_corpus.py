"""speechtl-corpus split: speaker-disjoint splits in the requested fractions, reproducible with --seed."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from speechtl.cli.corpus import main as corpus_main

ACCENTS = ("gb", "us", "in", "fr")


def write_corpus(path, speakers: int = 10, per_speaker: int = 3):
    rows = [{"id": f"{a}{s}-{k}", "audio": f"/abs/{a}{s}-{k}.flac", "text": f"words {a} {s} {k}", "speaker": f"{a}{s}",
             "accent": a} for a in ACCENTS for s in range(speakers) for k in range(per_speaker)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def split(tmp_path, capsys, name: str, *argv) -> tuple[list[dict], str]:
    out = tmp_path / name
    code = corpus_main(["split", str(tmp_path / "all.jsonl"), "--out", str(out), *map(str, argv)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()], stdout


def test_split_is_by_speaker_in_the_requested_fractions(tmp_path, capsys):
    rows = write_corpus(tmp_path / "all.jsonl")
    out, stdout = split(tmp_path, capsys, "a.jsonl", "--dev", "0.2", "--test", "0.3", "--seed", "5", "--heldout", "fr")
    assert [{k: v for k, v in r.items() if k != "split"} for r in out] == rows  # every line kept, in order
    assert "wrote" in stdout and "test_heldout" in stdout
    splits_of = defaultdict(set)
    for r in out:
        splits_of[r["speaker"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # no speaker in two splits
    speakers = Counter((r["accent"], r["split"]) for r in out if r["id"].endswith("-0"))  # one line per speaker
    for accent in ("gb", "us", "in"):  # 10 speakers each: 3 test, 2 dev, 5 train
        assert (speakers[(accent, "test")], speakers[(accent, "dev")], speakers[(accent, "train")]) == (3, 2, 5)
    assert speakers[("fr", "test_heldout")] == 10 and sum(n for (a, _), n in speakers.items() if a == "fr") == 10


def test_split_is_deterministic_with_its_seed(tmp_path, capsys):
    write_corpus(tmp_path / "all.jsonl")
    a, _ = split(tmp_path, capsys, "a.jsonl", "--dev", "0.2", "--test", "0.2", "--seed", "1")
    b, _ = split(tmp_path, capsys, "b.jsonl", "--dev", "0.2", "--test", "0.2", "--seed", "1")
    c, _ = split(tmp_path, capsys, "c.jsonl", "--dev", "0.2", "--test", "0.2", "--seed", "2")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert [r["split"] for r in a] != [r["split"] for r in c]  # another seed draws other speakers
    assert Counter(r["split"] for r in a) == Counter(r["split"] for r in c)  # in the same proportions
    # Input order does not matter either: the same speakers land in the same splits.
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    (tmp_path / "all.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    d, _ = split(tmp_path, capsys, "d.jsonl", "--dev", "0.2", "--test", "0.2", "--seed", "1")
    assert {r["id"]: r["split"] for r in d} == {r["id"]: r["split"] for r in a}
    # An existing manifest is replaced only with --overwrite, which may also split a manifest in place.
    code = corpus_main(["split", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "a.jsonl"), "--seed", "2"])
    assert code == 2 and "a.jsonl exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    e, _ = split(tmp_path, capsys, "all.jsonl", "--dev", "0.2", "--test", "0.2", "--seed", "1", "--overwrite")
    assert {r["id"]: r["split"] for r in e} == {r["id"]: r["split"] for r in a}


def test_split_refuses_impossible_fractions(tmp_path, capsys):
    write_corpus(tmp_path / "all.jsonl", speakers=3)
    code = corpus_main(["split", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "x.jsonl"), "--dev", "0.6",
                        "--test", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "sum below 1" in err and not (tmp_path / "x.jsonl").exists()

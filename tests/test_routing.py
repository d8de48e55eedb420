"""Routing utterances to accent adapters: fixed routes, classifier routes, gating, soft LoRA mixtures, reports, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtl.adapters import load_adapter
from speechtl.backbones import create_backbone
from speechtl.cli.eval import main as eval_main
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.errors import SpeechtlError
from speechtl.evaluation import Report, UtteranceRecord, evaluate
from speechtl.routing import AccentClassifier, Route, Router, parse_adapter_specs, pool_by_group
from speechtl.tasks import ClassificationTask
from speechtl.transcription import transcribe
from speechtl.transfer import adapt

sys.path.insert(0, str(Path(__file__).parent))
from test_accent_id import accent_clip  # noqa: E402

MODEL = "wav2vec2-tiny-random"  # CTC decoding: fast and deterministic


pytestmark = pytest.mark.usefixtures("one_thread")


def random_lora(folder: Path, seed: int, method: str = "lora") -> Path:
    """A saved adapter whose B matrices are random (a zero-initialised LoRA would change nothing)."""
    model = adapt(create_backbone(MODEL), method, lora_r=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.save_adapter(folder / f"{method}{seed}")


def train_classifier(backbone, waves: list[np.ndarray], accents: list[str], steps: int = 40) -> AccentClassifier:
    """A features-mode accent classifier fitted on the given clips (full batch, Adam)."""
    torch.manual_seed(0)
    labels = sorted(set(accents))
    model = adapt(backbone, "features", labels=labels, weighted_layers=True)
    task = ClassificationTask(model, labels)
    batch = task.collate([{"audio": w, "accent": a} for w, a in zip(waves, accents)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return AccentClassifier.from_model(model)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("routing")
    rng = np.random.default_rng(0)
    train = [(accent_clip(a, rng.uniform(0.4, 0.8), rng), a) for a in ("hiss", "hum") for _ in range(8)]
    test = [accent_clip(a, 0.6, rng) for a in ("hiss", "hum", "hum", "hiss")]
    # The classifier lives on its own backbone object; a saved copy shares the router's encoder.
    classifier = train_classifier(create_backbone(MODEL), [w for w, _ in train], [a for _, a in train])
    clf_dir = classifier.model.save_adapter(folder / "classifier")
    adapters = {"hiss": random_lora(folder, 1), "hum": random_lora(folder, 2)}
    return {"folder": folder, "test": test, "classifier": classifier, "clf_dir": clf_dir, "adapters": adapters}


def test_fixed_route_equals_that_adapter_and_none_equals_base(setup):
    test, adapters = setup["test"], setup["adapters"]
    base = transcribe(create_backbone(MODEL), test)
    alone = {a: transcribe(create_backbone(MODEL), test, adapter=d) for a, d in adapters.items()}
    assert alone["hiss"] != base and alone["hum"] != alone["hiss"]  # the adapters do something, and differ
    backbone = create_backbone(MODEL)
    for accent in adapters:
        texts, routes = transcribe(backbone, test, adapters=adapters, route=accent, return_routes=True)
        assert texts == alone[accent] and [r.name for r in routes] == [accent] * 4
    assert transcribe(backbone, test, adapters=adapters, route="none") == base  # same backbone: loaded once


def test_auto_route_picks_each_utterances_adapter(setup):
    test, adapters = setup["test"], setup["adapters"]
    alone = {a: transcribe(create_backbone(MODEL), test, adapter=d) for a, d in adapters.items()}
    expected_routes = ["hiss", "hum", "hum", "hiss"]
    for clf in (setup["classifier"], setup["clf_dir"]):  # a separate model, then shared with the router
        backbone = create_backbone(MODEL)
        texts, routes = transcribe(backbone, test, adapters=adapters, accent_classifier=clf, return_routes=True,
                                   batch_size=3)
        assert [r.name for r in routes] == expected_routes
        assert all(r.prob > 0.5 for r in routes)
        assert texts == [alone[a][i] for i, a in enumerate(expected_routes)]
    router = backbone._speechtl_router[1]
    assert router.classifier.shared


class FixedClassifier(AccentClassifier):
    """Returns given probabilities, to test soft routing exactly."""

    def __init__(self, labels, probs):
        self.labels, self.probs, self.shared = labels, np.asarray(probs, dtype=np.float64), False

    def probabilities(self, waves, **_):
        return self.probs[: len(waves)]


def test_min_prob_falls_back_to_the_base_model(setup):
    test, adapters = setup["test"], setup["adapters"]
    base = transcribe(create_backbone(MODEL), test)
    alone = {a: transcribe(create_backbone(MODEL), test, adapter=d) for a, d in adapters.items()}
    unsure = FixedClassifier(["hiss", "hum"], [[0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.9, 0.1]])
    texts, routes = transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=unsure,
                               min_prob=0.65, return_routes=True)
    assert [(r.name, r.prob) for r in routes] == [("base", 0.6), ("hum", 0.7), ("base", 0.55), ("hiss", 0.9)]
    assert texts == [base[0], alone["hum"][1], base[2], alone["hiss"][3]]
    # Only one adapter loaded: utterances of the other accent go to the base model at the default min_prob.
    texts, routes = transcribe(create_backbone(MODEL), test, adapters={"hum": adapters["hum"]},
                               accent_classifier=setup["clf_dir"], return_routes=True)
    hum = transcribe(create_backbone(MODEL), test, adapter=adapters["hum"])
    assert [r.name for r in routes] == ["base", "hum", "hum", "base"]
    assert texts == [base[0], hum[1], hum[2], base[3]]


def test_pool_by_group_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    pooled = pool_by_group(probs, ["a", "a", None, "b"])
    g = np.sqrt([0.9 * 0.2, 0.1 * 0.8])  # geometric mean of speaker a's two utterances, renormalised
    np.testing.assert_allclose(pooled[0], g / g.sum())
    np.testing.assert_allclose(pooled[1], pooled[0])
    np.testing.assert_allclose(pooled[2:], probs[2:])  # alone: unchanged
    np.testing.assert_allclose(pool_by_group(np.array([[1.0, 0.0], [0.5, 0.5]]), ["s", "s"]).sum(1), 1.0)


def test_speaker_routing_pools_the_evidence_of_a_speakers_utterances(setup):
    """One unsure utterance follows its speaker's other, confident ones; speakers stay apart."""
    test, adapters = setup["test"], setup["adapters"]
    alone = {a: transcribe(create_backbone(MODEL), test, adapter=d) for a, d in adapters.items()}
    probs = [[0.95, 0.05], [0.45, 0.55], [0.2, 0.8], [0.9, 0.1]]
    clf = FixedClassifier(["hiss", "hum"], probs)
    _, per_utt = transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=clf,
                            return_routes=True)
    assert [r.name for r in per_utt] == ["hiss", "hum", "hum", "hiss"]
    speakers = ["s1", "s1", "s2", "s3"]
    texts, routes = transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=clf,
                               speakers=speakers, return_routes=True)
    pooled = pool_by_group(np.array(probs), speakers)
    assert [r.name for r in routes] == ["hiss", "hiss", "hum", "hiss"]
    assert [r.prob for r in routes] == pytest.approx([pooled[0, 0], pooled[0, 0], 0.8, 0.9])
    assert texts == [alone["hiss"][0], alone["hiss"][1], alone["hum"][2], alone["hiss"][3]]
    with pytest.raises(SpeechtlError, match="2 speakers for 4 inputs"):
        transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=clf, speakers=["a", "b"])
    with pytest.raises(SpeechtlError, match="routing"):
        transcribe(create_backbone(MODEL), test, speakers=speakers)


def merged_mixture(adapters: dict[str, Path], weights: dict[str, float]):
    """A plain backbone whose weights are W + sum_k weights[k] * (merged_k - W), each adapter merged on its own."""
    backbone = create_backbone(MODEL)
    base = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    merged = {}
    for accent, folder in adapters.items():
        model = load_adapter(create_backbone(MODEL), folder)
        model.merge_adapter()
        merged[accent] = model.backbone.model.state_dict()
    backbone.model.load_state_dict({k: v + sum(w * (merged[a][k] - v) for a, w in weights.items())
                                    for k, v in base.items()})
    return backbone


def test_soft_route_with_one_hot_probabilities_equals_hard_route(setup):
    test, adapters = setup["test"], setup["adapters"]
    alone = {a: transcribe(create_backbone(MODEL), test, adapter=d) for a, d in adapters.items()}
    assert all(alone["hiss"][i] != alone["hum"][i] for i in range(4))  # each clip tells the adapters apart
    one_hot = FixedClassifier(["hiss", "hum"], [[1, 0], [0, 1], [1, 0], [0, 1]])
    hard = transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=one_hot)
    soft, routes = transcribe(create_backbone(MODEL), test, adapters=adapters, accent_classifier=one_hot, soft=True,
                              return_routes=True)
    assert soft == hard == [alone["hiss"][0], alone["hum"][1], alone["hiss"][2], alone["hum"][3]]
    assert routes[0] == Route("hiss", 1.0, {"hiss": 1.0, "hum": 0.0})
    # A real mixture is the probability-weighted sum of the adapters' weight updates: it equals a model whose
    # weights were averaged by hand, and differs on each clip from either adapter alone.
    for w in (0.5, 0.3):
        backbone = create_backbone(MODEL)
        mixed = FixedClassifier(["hiss", "hum"], [[w, 1 - w]] * 4)
        texts = transcribe(backbone, test, adapters=adapters, accent_classifier=mixed, soft=True)
        assert texts == transcribe(merged_mixture(adapters, {"hiss": w, "hum": 1 - w}), test)
        assert all(texts[i] not in (alone["hiss"][i], alone["hum"][i]) for i in range(4))
    # ... and the model is back to normal afterwards.
    router = backbone._speechtl_router[1]
    assert transcribe(backbone, test, adapters=adapters, accent_classifier=mixed, route="hiss") == alone["hiss"]
    assert router.model.active_adapter == router.internal["hiss"]


def test_soft_route_mixes_lora_only(setup):
    folder = setup["folder"]
    ia3 = {"hiss": random_lora(folder, 3, "ia3"), "hum": random_lora(folder, 4, "ia3")}
    clf = FixedClassifier(["hiss", "hum"], [[1, 0]] * 4)
    with pytest.raises(Exception, match="soft routing mixes LoRA adapters only"):
        transcribe(create_backbone(MODEL), setup["test"], adapters=ia3, accent_classifier=clf, soft=True)


def test_router_refuses_mismatched_inputs(setup, tmp_path):
    adapters = setup["adapters"]
    with pytest.raises(Exception, match="route 'auto' needs an accent classifier"):
        transcribe(create_backbone(MODEL), setup["test"], adapters=adapters)
    with pytest.raises(Exception, match="no adapter for that accent"):
        transcribe(create_backbone(MODEL), setup["test"], adapters=adapters, route="scottish")
    with pytest.raises(Exception, match="other weights"):
        Router(create_backbone(MODEL, seed=1), adapters)
    other = adapt(create_backbone(MODEL), "lora", lora_r=2).save_adapter(tmp_path / "r2")
    with pytest.raises(Exception, match="lora_r"):
        Router(create_backbone(MODEL), {"hiss": adapters["hiss"], "hum": other})


def write_manifest(folder: Path, test: list[np.ndarray]) -> Path:
    rows = []
    for i, (wav, accent) in enumerate(zip(test, ["hiss", "hum", "hum", "hiss"])):
        sf.write(folder / f"t{i}.wav", wav, 16000)
        rows.append({"id": f"t{i}", "audio": f"t{i}.wav", "text": "a b", "speaker": f"s{i}", "accent": accent})
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_records_routes_and_round_trips(setup, tmp_path):
    manifest = write_manifest(tmp_path, setup["test"])
    report = evaluate(create_backbone(MODEL), manifest, adapters=setup["adapters"], accent_classifier=setup["clf_dir"],
                      progress=False, n_bootstrap=10)
    report.save(tmp_path / "rep", plots=False)
    assert [r.route for r in report.utterances] == ["hiss", "hum", "hum", "hiss"]
    assert report.route_counts() == {"hiss": 2, "hum": 2}
    assert report.meta["route"] == "auto" and set(report.meta["adapters"]) == {"hiss", "hum"}
    loaded = Report.load(tmp_path / "rep")
    assert [(r.route, r.route_prob) for r in loaded.utterances] == [(r.route, r.route_prob) for r in report.utterances]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Routes" in md and "| hum | 2 | 50.0 |" in md
    plain = UtteranceRecord.from_json(report.utterances[0].to_json() | {"route": None})
    assert plain.route is None and "route" not in plain.to_json()


def test_evaluate_routes_by_speaker_and_says_so(setup, tmp_path):
    manifest = write_manifest(tmp_path, setup["test"])
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["speaker"] = "one"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate(create_backbone(MODEL), manifest, adapters=setup["adapters"], accent_classifier=setup["clf_dir"],
                      route_by="speaker", progress=False, n_bootstrap=10)
    assert len({r.route for r in report.utterances}) == 1 and len({r.route_prob for r in report.utterances}) == 1
    assert report.meta["route_by"] == "speaker"
    report.save(tmp_path / "rep", plots=False)
    assert "one route per speaker" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(SpeechtlError, match="route_by='speaker'"):
        evaluate(create_backbone(MODEL), manifest, route_by="speaker", progress=False)
    with pytest.raises(SpeechtlError, match="route_by='file'"):
        evaluate(create_backbone(MODEL), manifest, adapters=setup["adapters"], accent_classifier=setup["clf_dir"],
                 route_by="file", progress=False)


def test_cli_routes_and_prints_the_route(setup, tmp_path, capsys):
    manifest = write_manifest(tmp_path, setup["test"])
    specs = [f"{a}={d}" for a, d in setup["adapters"].items()]
    files = [str(tmp_path / f"t{i}.wav") for i in range(4)]
    code = transcribe_main([MODEL, *files, "--adapters", *specs, "--accent-classifier", str(setup["clf_dir"]),
                            "--json", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert [json.loads(line)["route"] for line in out.splitlines()] == ["hiss", "hum", "hum", "hiss"]
    code = transcribe_main([MODEL, *files, "--adapters", *specs, "--accent-classifier", str(setup["clf_dir"]),
                            "--route-by", "all", "--json", "--no-progress"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len({(r["route"], r["route_prob"]) for r in rows}) == 1
    code = eval_main(["--model", MODEL, "--manifest", str(manifest), "--out", str(tmp_path / "ev"), "--adapters",
                      *specs, "--route", "hum", "--no-progress", "--n-bootstrap", "10"])
    assert code == 0 and "routes: hum 4" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--adapters", "hiss"], "write ACCENT=DIR"),
    (["--adapters", "=x"], "write ACCENT=DIR"),
    (["--adapters", "hiss=/no/such/folder"], "does not exist"),
    (["--adapters", "auto={a}"], "route keyword"),
    (["--adapters", "hiss={a}", "hiss={a}"], "given twice"),
    (["--adapters", "hiss={a}"], "--route auto needs --accent-classifier"),
    (["--adapters", "hiss={a}", "--route", "hum"], "not auto, none or an accent"),
    (["--adapters", "hiss={a}", "--route", "none", "--min-prob", "2"], "between 0 and 1"),
    (["--route", "hiss"], "give --adapters"),
    (["--adapters", "hiss={a}", "--route", "none", "--route-by", "all"], "needs --route auto"),
])
def test_cli_adapter_errors_are_one_line(setup, tmp_path, capsys, argv, message):
    wav = tmp_path / "x.wav"
    sf.write(wav, setup["test"][0], 16000)
    argv = [a.format(a=setup["adapters"]["hiss"]) for a in argv]
    code = transcribe_main([MODEL, str(wav), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_parse_adapter_specs(tmp_path):
    assert parse_adapter_specs([f"us={tmp_path}", f" gb = {tmp_path} "]) == {"us": str(tmp_path), "gb": str(tmp_path)}
    assert parse_adapter_specs(None) == {}


@pytest.mark.parametrize("which", ["adapter", "shared classifier", "own classifier"])
def test_a_damaged_routed_adapter_or_classifier_is_one_error_naming_its_file(setup, tmp_path, which):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(setup["clf_dir"] if "classifier" in which else setup["adapters"]["hiss"], folder)
    weights = folder / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x01
    weights.write_bytes(bytes(data))
    backbone = create_backbone(MODEL) if which != "own classifier" else create_backbone(MODEL, seed=1)
    with pytest.raises(SpeechtlError) as caught:
        if which == "adapter":
            Router(backbone, {"hiss": folder, "hum": setup["adapters"]["hum"]})
        else:  # the shared head reads this base; another base makes the classifier load its own
            Router(backbone, {}, accent_classifier=folder)
    assert f"{weights}: its sha256 differs" in str(caught.value) and "copy it again" in str(caught.value)

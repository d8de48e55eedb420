import json

import numpy as np
import pytest
from PIL import Image

from speechtl.cli.adapt import main as adapt_main


def _text_manifest(path, n=24):
    rows = []
    for i in range(n):
        label = "food" if i % 2 else "sport"
        text = "we ate bread and soup" if label == "food" else "they played football all day"
        rows.append({"id": f"t{i}", "text": f"{text} {i}", "label": label, "split": "dev" if i >= n - 6 else "train"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _image_manifest(folder, n=16):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        label = "bright" if i % 2 else "dark"
        pixels = (rng.random((32, 32, 3)) * 60 + (180 if label == "bright" else 0)).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"id": f"i{i}", "path": f"{i}.png", "label": label, "split": "dev" if i >= n - 4 else "train"})
    (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "images.jsonl"


def _reloaded_predictions(model_name: str, adapter, manifest) -> tuple[list[str], list[str]]:
    """Gold and predicted dev labels of the saved adapter, loaded on a fresh base model."""
    import torch

    from speechtl.adapters import load_adapter
    from speechtl.backbones import create_backbone
    from speechtl.data.classify import ClassifyDataset, ClassifyTask, read_classify_manifest

    examples, kind = read_classify_manifest(manifest)
    dev = [e for e in examples if e.split == "dev"]
    model = load_adapter(create_backbone(model_name), adapter)
    model.eval()
    labels = model.head.labels
    task = ClassifyTask(model, labels)
    data = ClassifyDataset(dev, kind)
    batch = task.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = model.classify(batch["inputs"], batch["lengths"])
    return [e.label for e in dev], [labels[i] for i in logits.argmax(-1).tolist()]


@pytest.mark.parametrize("model,kind", [("bert-tiny-random", "text"), ("vit-tiny-random", "image")])
@pytest.mark.parametrize("method", ["lora", "features"])
def test_adapt_cli_classifies_images_and_texts(tmp_path, capsys, model, kind, method):
    manifest = _text_manifest(tmp_path / "t.jsonl") if kind == "text" else _image_manifest(tmp_path)
    n_train, n_dev = (18, 6) if kind == "text" else (12, 4)
    out = tmp_path / "run"
    rc = adapt_main(["--model", model, "--train", str(manifest), "--method", method, "--task", "classify",
                     "--out", str(out), "max_steps=6", "eval_every=3", "batch_size=4", "lr=1e-3", "seed=0"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "final dev ERROR" in stdout
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "classify" and run["labels"] == sorted(run["labels"]) and len(run["labels"]) == 2
    assert run["labels"] == (["food", "sport"] if kind == "text" else ["bright", "dark"]) and run["kind"] == kind
    assert run["train_examples"] == n_train and run["dev_examples"] == n_dev  # the manifest's splits, kept apart
    assert (out / "adapter").is_dir() and (out / "metrics.jsonl").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses))
    evals = {r["step"]: r["eval"] for r in records if "eval" in r}
    assert sorted(evals) == [3, 6] and all(e["examples"] == n_dev for e in evals.values())
    result = json.loads((out / "result.json").read_text())
    best = evals[result["best_step"]]
    # The two classes are easy to tell apart: six steps reach at most one dev error (measured: none).
    assert best["accuracy"] >= 1 - 1 / n_dev and result["best_metric"] == pytest.approx(1 - best["accuracy"])
    assert f"final dev ERROR: {100 * result['best_metric']:.2f}%" in stdout
    # The saved adapter is the best evaluation's model: reloaded, it predicts the dev labels that accurately.
    gold, pred = _reloaded_predictions(model, out / "adapter", manifest)
    assert sum(g == p for g, p in zip(gold, pred)) / len(gold) == pytest.approx(best["accuracy"])

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


@pytest.mark.parametrize("model,kind", [("bert-tiny-random", "text"), ("vit-tiny-random", "image")])
@pytest.mark.parametrize("method", ["lora", "features"])
def test_adapt_cli_classifies_images_and_texts(tmp_path, capsys, model, kind, method):
    manifest = _text_manifest(tmp_path / "t.jsonl") if kind == "text" else _image_manifest(tmp_path)
    out = tmp_path / "run"
    rc = adapt_main(["--model", model, "--train", str(manifest), "--method", method, "--task", "classify",
                     "--out", str(out), "max_steps=6", "eval_every=3", "batch_size=4", "lr=1e-3", "seed=0"])
    assert rc == 0
    assert "final dev ERROR" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "classify" and run["labels"] == sorted(run["labels"]) and len(run["labels"]) == 2
    assert (out / "adapter").is_dir() and (out / "metrics.jsonl").is_file()
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses and all(np.isfinite(losses))

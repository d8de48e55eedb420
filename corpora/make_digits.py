#!/usr/bin/env python3
"""Write scikit-learn's handwritten digits (UCI optdigits test set, 1,797 8x8 images, 10 classes;
bundled inside scikit-learn, so offline) as PNG files plus an image classification manifest.

    python corpora/make_digits.py OUT_DIR [--test-fraction 0.3] [--seed 0]

OUT_DIR/images/NNNN.png (8x8 grey, ink bright: 0..16 scaled to 0..255) and OUT_DIR/manifest.jsonl
with ``{"id", "path", "label", "split"}`` lines; the train/test split is stratified by digit.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from speechtl.data.classify import ClassifyExample, write_classify_manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    (args.out_dir / "images").mkdir(parents=True, exist_ok=True)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(digits.target):
        by_label[int(y)].append(i)
    rng = random.Random(args.seed)
    test: set[int] = set()
    for y in sorted(by_label):
        idx = by_label[y][:]
        rng.shuffle(idx)
        test.update(idx[: round(args.test_fraction * len(idx))])
    examples = []
    for i, (img, y) in enumerate(zip(images, digits.target)):
        path = args.out_dir / "images" / f"{i:04d}.png"
        Image.fromarray(img, mode="L").save(path)
        examples.append(ClassifyExample(f"digits-{i:04d}", str(path), str(int(y)), "test" if i in test else "train"))
    write_classify_manifest(examples, args.out_dir / "manifest.jsonl", "image")
    n_train = len(examples) - len(test)
    print(f"{len(examples)} images ({n_train} train, {len(test)} test) -> {args.out_dir / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

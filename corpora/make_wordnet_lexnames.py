#!/usr/bin/env python3
"""Build a text classification set from WordNet 3.0 usage examples labelled by lexicographer file.

    python corpora/make_wordnet_lexnames.py OUT_DIR [--classes 10] [--test-fraction 0.3] [--seed 0]
        [--wordnet /usr/share/wordnet]

Each synset line of ``data.{noun,verb,adj,adv}`` (Debian ``wordnet-base``) carries its
lexicographer file number (second field, e.g. 29 = ``verb.body``) and, after ``|``, a gloss whose
quoted strings are usage examples. Every example becomes ``{"id", "text", "label", "split"}`` with
the lexicographer file's name as label; examples found under two different labels are dropped,
then the ``--classes`` most frequent labels are kept. The train/test split is stratified by label.
WordNet licence: https://wordnet.princeton.edu/license-and-commercial-use (permissive).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from speechtl.data.classify import ClassifyExample, write_classify_manifest

# WordNet 3.0 lexicographer files by number (lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_QUOTED = re.compile(r'"([^"]+)"')


def usage_examples(wordnet: Path) -> dict[str, set[str]]:
    """Sentence -> the lexicographer files it is an example in."""
    labels: dict[str, set[str]] = defaultdict(set)
    for pos in ("noun", "verb", "adj", "adv"):
        path = wordnet / f"data.{pos}"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; install Debian wordnet-base or pass --wordnet")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                fields = line.split(" ", 2)
                lexname = LEXNAMES[int(fields[1])]
                for sentence in _QUOTED.findall(line.split("|", 1)[1]):
                    sentence = " ".join(sentence.split())
                    if len(sentence.split()) >= 3:
                        labels[sentence].add(lexname)
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    args = ap.parse_args(argv)
    labelled = {s: next(iter(ls)) for s, ls in usage_examples(args.wordnet).items() if len(ls) == 1}
    counts = Counter(labelled.values())
    keep = {label for label, _ in counts.most_common(args.classes)}
    by_label: dict[str, list[str]] = defaultdict(list)
    for sentence in sorted(labelled):
        if labelled[sentence] in keep:
            by_label[labelled[sentence]].append(sentence)
    rng = random.Random(args.seed)
    examples = []
    for label in sorted(by_label):
        sentences = by_label[label][:]
        rng.shuffle(sentences)
        n_test = round(args.test_fraction * len(sentences))
        for k, s in enumerate(sentences):
            examples.append(ClassifyExample("", s, label, "test" if k < n_test else "train"))
    rng.shuffle(examples)
    for i, ex in enumerate(examples):
        ex.id = f"wn-{i:05d}"
    write_classify_manifest(examples, args.out_dir / "manifest.jsonl", "text")
    ranked = sorted(by_label, key=lambda k: -len(by_label[k]))
    summary = ", ".join(f"{label} {len(by_label[label])}" for label in ranked)
    print(f"{len(examples)} sentences in {len(by_label)} classes ({summary}) -> {args.out_dir / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

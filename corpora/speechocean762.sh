#!/usr/bin/env bash
# Recipe: speechocean762 (Mandarin-L1 English, Kaldi layout) -> manifest with a by-speaker dev/test split.
# Usage: corpora/speechocean762.sh CORPUS_DIR OUT_DIR [SEED]
#   CORPUS_DIR: the corpus root (WAVE/, train/, test/) or one data folder, e.g. ../shared/data/speechocean762/train
set -euo pipefail
src=${1:?usage: $0 CORPUS_DIR OUT_DIR [SEED]}
out=${2:?usage: $0 CORPUS_DIR OUT_DIR [SEED]}
seed=${3:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$out"
"$py" -m speechtl.cli.corpus import speechocean762 "$src" --out "$out/imported.jsonl" --overwrite
"$py" -m speechtl.cli.corpus split "$out/imported.jsonl" --out "$out/manifest.jsonl" --dev 0.1 --test 0.1 \
    --seed "$seed" --overwrite
"$py" -m speechtl.cli.corpus validate "$out/manifest.jsonl"

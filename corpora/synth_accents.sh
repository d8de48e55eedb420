#!/usr/bin/env bash
# Recipe: the standard synthetic six-accent corpus (Russian-accented English held out), validated.
# Usage: corpora/synth_accents.sh OUT_DIR [PER_ACCENT] [SEED]
# Needs the TTS engines: sudo corpora/install_tts.sh
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [PER_ACCENT] [SEED]}
per_accent=${2:-200}
seed=${3:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
"$here/corpora/install_tts.sh" >/dev/null || { echo "run: sudo $here/corpora/install_tts.sh" >&2; exit 1; }
"$py" -m speechtl.cli.corpus synth --out "$out" --accents us,gb,scottish,german,french,russian \
    --heldout russian --per-accent "$per_accent" --seed "$seed"
"$py" -m speechtl.cli.corpus validate "$out/manifest.jsonl"

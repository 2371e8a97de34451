#!/bin/bash
# GT-reference training of the nano student on a GPU box, end to end with fair commands:
# generate varied segments (domain-randomised train, plain held-out val over all scenarios and both cameras)
# -> fair cache -> fair train (nano_gt recipe, --device cuda) -> fair export -> fair val on the held-out segments.
#   OUT=$OUT bash bench/heads_gpu.sh                      # H200: ~8 min (training capped at TRAIN_S=240 s)
#   DEV=cpu TRAIN=2 VAL=1 SECONDS_=0.3 STEPS=3 OUT=/tmp/hg bash bench/heads_gpu.sh   # dry run here
# Results in $OUT: val.json / val.md (per head, per segment), train.csv, student.onnx + student.json, timings.txt.
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-$(command -v python3 || command -v python)}
OUT=${OUT:-/tmp/heads_gpu}; mkdir -p "$OUT"
DEV=${DEV:-cuda}; TRAIN=${TRAIN:-32}; VAL=${VAL:-22}; SECONDS_=${SECONDS_:-2}; STEPS=${STEPS:-4000}; TRAIN_S=${TRAIN_S:-240}
BATCH=${BATCH:-32}; WORKERS=${WORKERS:-$(nproc)}
W=${WORK:-$(mktemp -d)}
t0=$(date +%s); stamp() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timings.txt"; }
$PY - "$W" "$TRAIN" "$VAL" "$SECONDS_" "$WORKERS" <<'PYEOF'
import sys
from tools.fair.experiments.generate import generate_segments
w, ntr, nva, sec, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
generate_segments(f"{w}/seg/train", ntr, sec, seed0=1000, workers=workers, progress=False, randomise=True)
generate_segments(f"{w}/seg/val", nva, sec, seed0=5000, workers=workers, progress=False)
PYEOF
stamp generated
$PY -m tools.fair.cli cache -q "$W"/seg/train/* --out "$W/cache/train" --workers "$WORKERS"
$PY -m tools.fair.cli cache -q "$W"/seg/val/* --out "$W/cache/val" --workers "$WORKERS"
stamp cached
sed -e "s#^train = .*#train = [\"$W/cache/train\"]#" -e "s#^val = .*#val = [\"$W/cache/val\"]#" \
    -e "s#^workers = .*#workers = 8#" -e "s#^out = .*#out = \"$W/run\"#" -e "s#^warmup_steps = .*#warmup_steps = 200#" \
    -e "s#^save_every = .*#save_every = 250#" tools/fair/distill/recipes/nano_gt.toml > "$W/recipe.toml"
# at most TRAIN_S seconds of training: a stopped run is exported from its newest checkpoint
timeout "$TRAIN_S" $PY -m tools.fair.cli train -q "$W/recipe.toml" --steps "$STEPS" --batch-size "$BATCH" --device "$DEV" || [ $? -eq 124 ]
stamp trained
cp "$W"/run/*.csv "$OUT/" 2>/dev/null || true
$PY -m tools.fair.cli export -q "$W/run" --format onnx --out "$W/export" --device cpu --checkpoint latest \
  --segments $(ls -d "$W"/seg/val/* | head -2)
cp "$W"/export/student.onnx "$W"/export/student.json "$OUT/"
stamp exported
$PY -m tools.fair.cli val -q "$W/export" "$W"/seg/val/* --out "$W/val"
cp "$W"/val/val.json "$W"/val/val.md "$OUT/"
stamp validated

#!/bin/bash
# Device run: train the flow network from a saved pair file (`fair flow-train ... --save-pairs FILE`) on the GPU,
# several settings side by side, each evaluated on the held-out pairs. Arguments: one "NAME:FLAGS" per run, e.g.
#   MIN=3 OUT=$OUT bash bench/flow_gpu.sh "a:--blur-sigmas 2,4" "b:--blur-sigmas 2,4 --w-smooth 0.05"
# (blur sigmas are pixels of the training frame: the 128x64 default 1,2 is 2,4 for the 256x128 default PAIRS)
# Results under $OUT/run_NAME/ (flow/, eval.json) and $OUT/log_NAME.txt; env.txt records the machine.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
PAIRS=${PAIRS:-.flowdata/pairs_s05_gt.npz}
PY=${PY:-$(command -v python || command -v python3)}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
MIN=${MIN:-4}; DEV=${DEV:-cuda}; STEPS=${STEPS:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/env.txt" 2>&1
$PY - >> "$OUT/env.txt" 2>&1 <<'PYEOF'
import sys, importlib
print(sys.version)
for m in ("torch", "numpy", "safetensors", "tqdm", "scipy", "cv2", "av", "capnp"):
  try:
    mod = importlib.import_module(m); print(m, getattr(mod, "__version__", "?"))
  except Exception as e:
    print(m, "MISSING", type(e).__name__)
import torch; print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF
if ! $PY -c "import tqdm" 2>/dev/null; then   # minimal stand-in: only the calls train.py makes
  mkdir -p /tmp/shim && cat > /tmp/shim/tqdm.py <<'SHIM'
class tqdm:
  def __init__(self, iterable=None, *a, **k): self.it = iterable
  def __iter__(self): return iter(self.it)
  def update(self, n=1): pass
  def set_postfix(self, **k): pass
  def close(self): pass
SHIM
  export PYTHONPATH=$PYTHONPATH:/tmp/shim
fi
cat "$OUT/env.txt"
run() {  # name, extra flags
  local name=$1; shift
  local lim="--minutes $MIN"; [ -n "$STEPS" ] && lim="--steps $STEPS"
  OMP_NUM_THREADS=4 $PY -m tools.fair.flow.train --pairs "$PAIRS" --device $DEV $lim \
    --batch 8 --save-every 1000 --out "$OUT/run_$name" "$@" > "$OUT/log_$name.txt" 2>&1
  echo "$name rc=$?" >> "$OUT/rc.txt"
  rm -rf "$OUT/run_$name/train"   # the optimiser checkpoint is not needed back (flow/ holds the weights)
}
for spec in "$@"; do
  name=${spec%%:*}; flags=${spec#*:}
  # shellcheck disable=SC2086  # flags are meant to split
  run "$name" $flags &
done
wait
cat "$OUT/rc.txt"
for spec in "$@"; do n=${spec%%:*}; echo "== $n"; tr '\r' '\n' < "$OUT/log_$n.txt" | grep -v "^$" | tail -28; done

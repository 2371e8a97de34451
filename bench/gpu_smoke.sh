#!/bin/bash
# GPU smoke of `fair train` (bench/gpu_smoke.py): nano_gt's student and losses, bf16 autocast, on generated samples.
#   OUT=$OUT bash bench/gpu_smoke.sh                 # on the GPU machine (~2-3 min)
#   DEV=cpu STEPS=3 WARMUP=1 BATCH=8 CPU_STEPS=3 OUT=/tmp/smoke bash bench/gpu_smoke.sh   # dry run here
# 1) one process, STEPS steps; 2) torchrun --nproc-per-node 2 (NCCL wants one GPU per rank: with a single GPU the
# 2-rank attempt is recorded as failed and a 1-rank torchrun runs instead); 3) the same steps on the CPU of that
# machine (CPU_STEPS) for the GPU/CPU ratio. Results: $OUT/{one,ddp,cpu}.json, logs $OUT/*.log, summary.txt.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-$(command -v python3 || command -v python)}
OUT=${OUT:-/tmp/gpu_smoke}; mkdir -p "$OUT"; rm -f "$OUT"/*.log "$OUT"/*.json
DEV=${DEV:-cuda}; STEPS=${STEPS:-300}; WARMUP=${WARMUP:-20}; BATCH=${BATCH:-32}; CPU_STEPS=${CPU_STEPS:-12}
RUNS=$(mktemp -d)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; nproc; date -u
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.is_available(), torch.cuda.device_count())"; } > "$OUT/env.txt"
cat "$OUT/env.txt"

smoke() {  # name, device, steps, warmup, launcher...
  local name=$1 dev=$2 steps=$3 warm=$4; shift 4
  "$@" -m bench.gpu_smoke --device "$dev" --steps "$steps" --warmup "$warm" --batch-size "$BATCH" \
    --out "$RUNS/$name" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] && cp "$RUNS/$name/result.json" "$OUT/$name.json"
  echo "$name: exit $rc"; tail -n 1 "$OUT/$name.log"
  return $rc
}

smoke one "$DEV" "$STEPS" "$WARMUP" $PY
TORCHRUN=($PY -m torch.distributed.run --standalone)
if ! smoke ddp "$DEV" "$STEPS" "$WARMUP" timeout 90 "${TORCHRUN[@]}" --nproc-per-node 2; then
  echo "2 ranks failed (see ddp.log); 1 rank under torchrun:"; mv "$OUT/ddp.log" "$OUT/ddp2_failed.log"
  smoke ddp "$DEV" "$STEPS" "$WARMUP" "${TORCHRUN[@]}" --nproc-per-node 1
fi
[ "$DEV" = cpu ] || smoke cpu cpu "$CPU_STEPS" 2 $PY
$PY - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = {n: json.loads((out / f"{n}.json").read_text()) for n in ("one", "ddp", "cpu") if (out / f"{n}.json").is_file()}
for n, v in r.items():
  mem = f", peak {v['peak_memory_gib_rank0']:.2f} GiB" if v["peak_memory_gib_rank0"] is not None else ""
  print(f"{n}: {v['device']} x{v['world_size']}, batch {v['global_batch']}, amp {v['amp']}: "
        f"{v['steps_per_s']:.2f} steps/s = {v['samples_per_s']:.0f} samples/s over {v['timed_steps']} steps{mem}")
if "one" in r and "cpu" in r:
  print(f"GPU / CPU ({r['cpu']['threads']} threads) samples/s: {r['one']['samples_per_s'] / r['cpu']['samples_per_s']:.1f}x")
PYEOF
rm -rf "$RUNS"

#!/usr/bin/env python3
"""Does each head of a student respond to its ground truth at all? Raw outputs on the bundled samples' frames.

Per frame of both samples (the daemon-warped input of the frame cache, run through onnxruntime): the object
heatmap at ground-truth centres vs the frame's maximum (decoding keeps cells >= 0.3), the four lane-existence
probabilities against which lines exist, and the ego speed against the true speed. A head that was never given
its labels shows it here as a constant answer, before any threshold or metric hides why. Writes
docs/benchmarks/head_signal.md.

  .venv/bin/python bench/head_signal_bench.py [--model selfdrive/modeld_fair/models/student.onnx] [--every 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from selfdrive.modeld_fair.runner import OnnxRuntimeRunner  # noqa: E402
from tools.fair.data.cache import build_frame_cache  # noqa: E402
from tools.fair.data.dataset import StudentDataset  # noqa: E402
from tools.fair.samples import sample_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "selfdrive/modeld_fair/models/student.onnx"


def measure(model: Path, every: int) -> dict[str, np.ndarray]:
  """Per frame: heatmap max, mean heatmap at GT centres, lane probs (4), lane exists (4), ego speed, true speed."""
  runner = OnnxRuntimeRunner(model)
  rows: dict[str, list] = {k: [] for k in ("heat_max", "heat_gt", "lane_prob", "lane_exists", "speed", "speed_gt")}
  with tempfile.TemporaryDirectory() as tmp:
    build_frame_cache(sample_paths(), Path(tmp), scale=0.5, every=every, progress=False)
    ds = StudentDataset(tmp, use_gt=True, seed=0)
    for i in range(len(ds)):
      s = ds[i]
      o = runner.run(np.asarray(s["img"], np.uint8)[None])
      centres = np.asarray(s["obj_heatmap"]) >= 1.0 - 1e-4
      rows["heat_max"].append(o["obj_heatmap"][0].max())
      rows["heat_gt"].append(o["obj_heatmap"][0][centres].mean() if centres.any() else np.nan)
      rows["lane_prob"].append(o["lane_prob"][0])
      rows["lane_exists"].append(np.asarray(s["lane_exists"]))
      rows["speed"].append(o["ego"][0, 0])
      rows["speed_gt"].append(np.asarray(s["ego"])[0])
  return {k: np.array(v, np.float64) for k, v in rows.items()}


def report(r: dict[str, np.ndarray], model: Path, every: int) -> str:
  rel = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
  q = lambda x: " / ".join(f"{v:.3f}" for v in np.nanpercentile(x, [5, 50, 95]))
  exists, prob = r["lane_exists"] > 0.5, r["lane_prob"]
  lines = [header("Head signal: raw outputs against ground truth",
                  f"python bench/head_signal_bench.py --model {rel} --every {every}"),
           f"- {len(r['speed'])} frames of the bundled samples (every {every}th), model `{rel}`; "
           "values are p5 / p50 / p95 over frames\n",
           "| head | output | p5 / p50 / p95 |", "| --- | --- | ---: |",
           f"| objects | heatmap maximum of the frame (decoding keeps >= 0.3) | {q(r['heat_max'])} |",
           f"| objects | heatmap at ground-truth centres | {q(r['heat_gt'])} |",
           f"| lanes | existence prob. of lines that exist | {q(prob[exists])} |",
           f"| lanes | existence prob. of lines that do not | {q(prob[~exists]) if (~exists).any() else '–'} |",
           f"| ego | speed (m/s) | {q(r['speed'])} |", f"| ego | true speed (m/s) | {q(r['speed_gt'])} |", ""]
  return "\n".join(lines)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", type=Path, default=MODEL, help="student ONNX (default: the bundled one)")
  ap.add_argument("--every", type=int, default=5, help="use every Nth video frame of the samples (default 5)")
  args = ap.parse_args()
  write_report(ROOT / "docs/benchmarks/head_signal.md", report(measure(args.model, args.every), args.model, args.every))
  return 0


if __name__ == "__main__":
  sys.exit(main())

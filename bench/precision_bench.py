#!/usr/bin/env python3
"""The bundled student in FP32 / FP16 / INT8-PTQ: head metrics on held-out generated segments, size, onnxruntime
1-thread latency (side by side, as ratios to FP32) and the Adreno 630 estimate: docs/benchmarks/precision.md.

  .venv/bin/python bench/precision_bench.py --cache CACHE [--onnx ONNX] [--rounds 5 --iters 40]

CACHE is a frame cache of held-out generated segments with ground truth, e.g. the transfer experiment's held-out
split (4 segments of 5 s, seeds 5000-5003):
  generate_segments(OUT, 4, 5.0, 5000) then build_frame_cache(segments, CACHE, scale=0.5)
FP16 and INT8 are built from the ONNX as `fair export` builds them (INT8: calibrated on the bundled samples,
method chosen by measurement against FP32).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from selfdrive.modeld_fair.model_io import INPUT_NAME, INPUT_SHAPE  # noqa: E402
from tools.fair.export.cli import CALIB_PER_SEGMENT, CALIB_STRIDE, GENERATED_PER_SEGMENT, VERIFY_PHASE, VERIFY_STRIDE, compare, GATES, runner_outputs  # noqa: E402,E501
from tools.fair.export.frames import segment_inputs  # noqa: E402
from tools.fair.export.precision import CALIBRATION_METHODS, to_fp16, to_int8  # noqa: E402

HEADS = [("depth AbsRel", "depth_abs_rel", False), ("depth δ1", "depth_delta1", True), ("mIoU", "miou", True),
         ("vehicle IoU", ("iou", "vehicle"), True), ("AP50", "det_ap50", True),
         ("lane err 20 m (m)", "lane_lat_err_20m", False)]


def metric(m: dict, key):
  return m[key[0]][key[1]] if isinstance(key, tuple) else m[key]


def latency(paths: dict[str, Path], rounds: int, iters: int) -> dict[str, float]:
  """Median ms per variant, 1 intra-op thread, variants interleaved round by round on one pinned core."""
  from tools.fair.students.export import ort_session
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  sess = {k: ort_session(p, 1) for k, p in paths.items()}
  feed = {INPUT_NAME: np.random.default_rng(0).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)}
  ts: dict[str, list[float]] = {k: [] for k in paths}
  for s in sess.values():
    for _ in range(10):
      s.run(None, feed)
  for _ in range(rounds):
    for k, s in sess.items():
      for _ in range(iters):
        t = time.perf_counter()
        s.run(None, feed)
        ts[k].append(time.perf_counter() - t)
  return {k: float(np.median(v) * 1e3) for k, v in ts.items()}


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--cache", type=Path, required=True, help="frame cache of held-out generated segments")
  ap.add_argument("--onnx", type=Path, default=Path("selfdrive/modeld_fair/models/student.onnx"))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--iters", type=int, default=40)
  ap.add_argument("--report", type=Path, default=Path("docs/benchmarks/precision.md"))
  a = ap.parse_args()
  from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
  from tools.fair.data.dataset import StudentDataset
  from tools.fair.experiments.evaluate import evaluate_student
  from tools.fair.profile import SCENARIOS, estimate, onnx_graph
  from tools.fair.samples import sample_paths
  samples = sample_paths()
  calib = segment_inputs(samples, CALIB_PER_SEGMENT, CALIB_STRIDE, 0)
  check = segment_inputs(samples, GENERATED_PER_SEGMENT, VERIFY_STRIDE, VERIFY_PHASE)
  with tempfile.TemporaryDirectory() as d:
    fp32 = OnnxRuntimeRunner(a.onnx)
    ref = runner_outputs(fp32, check)
    paths = {"FP32": a.onnx, "FP16": to_fp16(a.onnx, Path(d) / "fp16.onnx")}
    agreement = {}
    for m in CALIBRATION_METHODS:
      p = to_int8(a.onnx, Path(d) / f"int8-{m}.onnx", calib, m)
      agreement[m] = compare(runner_outputs(OnnxRuntimeRunner(p), check), ref, GATES["int8"])
    best = max(agreement, key=lambda m: min(c.cosine for c in agreement[m].values()))
    paths["INT8-PTQ"] = Path(d) / f"int8-{best}.onnx"
    fp16_check = compare(runner_outputs(OnnxRuntimeRunner(paths["FP16"]), check), ref, GATES["fp16"])
    val = StudentDataset(a.cache, use_gt=True)
    metrics = {k: evaluate_student(p, val) for k, p in paths.items()}
    lat = latency(paths, a.rounds, a.iters)
    sizes = {k: p.stat().st_size for k, p in paths.items()}
  g = onnx_graph(a.onnx)
  adreno = {s.name: estimate(g, s).ms for s in SCENARIOS}
  command = f"python bench/precision_bench.py --cache {a.cache} --onnx {a.onnx} --rounds {a.rounds} --iters {a.iters}"
  text = [header("Precision: FP32 / FP16 / INT8-PTQ of the bundled student", command), ""]
  text += [f"Model `{a.onnx}`; metrics on {metrics['FP32']['frames']} held-out generated frames ({a.cache}) with "
           "tools/fair/experiments/evaluate.py; Δ is relative to FP32. Latency: onnxruntime CPU, 1 intra-op thread, "
           f"the three variants interleaved in {a.rounds} rounds of {a.iters} runs on one pinned core (median).", ""]
  cols = [h for h, _, _ in HEADS]
  text += ["| variant | " + " | ".join(cols) + " | size (MB) | size ratio | latency (ms) | speed-up |",
           "|---" * (len(cols) + 5) + "|"]
  for k in paths:
    cells = []
    for _, key, _ in HEADS:
      v, v0 = metric(metrics[k], key), metric(metrics["FP32"], key)
      cells.append(f"{v:.4f}" if k == "FP32" else f"{v:.4f} ({100 * (v - v0) / max(abs(v0), 1e-12):+.2f} %)")
    text.append(f"| {k} | " + " | ".join(cells) + f" | {sizes[k] / 1e6:.2f} | {sizes['FP32'] / sizes[k]:.2f}x | "
                f"{lat[k]:.2f} | {lat['FP32'] / lat[k]:.2f}x |")
  text += ["", f"Adreno 630 estimate (`fair profile`, FP16 as tinygrad QCOM runs it, roofline, assumptions in "
           f"docs/benchmarks/profile.md): {adreno['optimistic']:.1f} / {adreno['nominal']:.1f} / "
           f"{adreno['pessimistic']:.1f} ms optimistic / nominal / pessimistic, for FP32 and FP16 alike (the GPU "
           "path computes in FP16 either way). INT8 has no Adreno estimate: the Adreno 630 has no fast INT8 path; "
           "INT8 is for the Hexagon DSP (docs/runtime.md).", ""]
  text += ["### Agreement with FP32 on the bundled samples' frames (apart from the calibration frames)", "",
           f"{len(check)} frame pairs; worst output cosine per INT8 calibration method (calibrated on {len(calib)} "
           f"frame pairs): " + ", ".join(f"{m} {min(c.cosine for c in v.values()):.4f}" for m, v in agreement.items())
           + f" → **{best}**.", "",
           "| output | FP16 max rel | FP16 cosine | INT8 max rel | INT8 cosine |", "|---|---|---|---|---|"]
  for name, c in fp16_check.items():
    q = agreement[best][name]
    text.append(f"| {name} | {c.max_rel:.2e} | {c.cosine:.6f} | {q.max_rel:.2e} | {q.cosine:.4f} |")
  text.append("")
  write_report(a.report, "\n".join(text) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

#!/usr/bin/env python3
"""Speed of the calibrated medmodel warp (selfdrive.modeld_fair.medmodel_warp) on ONE core.

Times, per device camera, building the tables for a calibration and warping one padded NV12
frame into the student's 6x128x256 YUV input and into 512x256 RGB. Target: <= 3 ms for a
1928x1208 frame. Writes docs/benchmarks/warp.md.

  .venv/bin/python bench/warp_bench.py [--iters 300]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, pin_one_core, write_report  # noqa: E402
from selfdrive.modeld_fair.camera import MICI_ROAD, TICI_ROAD  # noqa: E402
from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_rgb, warp_tables  # noqa: E402
from selfdrive.modeld_fair.nv12 import rgb_to_nv12  # noqa: E402

RPY = (0.01, 0.03, -0.02)


def timed(fn, iters: int) -> tuple[float, float]:
  for _ in range(5):
    fn()
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 99) * 1e3)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--iters", type=int, default=300)
  ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/warp.md"))
  args = ap.parse_args()
  pin_one_core()
  rows = []
  for cam in (TICI_ROAD, MICI_ROAD):
    buf, _ = rgb_to_nv12(np.random.default_rng(0).integers(0, 256, (cam.height, cam.width, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    student = warp_tables(cam, RPY)
    build = (time.perf_counter() - t0) * 1e3
    rgb = warp_tables(cam, RPY, full_chroma=True)
    yuv50, yuv99 = timed(lambda: warp_model_input(buf, student), args.iters)
    rgb50, rgb99 = timed(lambda: warp_rgb(buf, rgb), args.iters)
    rows.append(f"| {cam.name} {cam.width}x{cam.height} | {build:.0f} | {yuv50:.2f} | {yuv99:.2f} | {rgb50:.2f} | {rgb99:.2f} |")
  text = header("Calibrated medmodel warp, one core", f"python bench/warp_bench.py --iters {args.iters}") + (
    "- per calibration the fixed-point remap tables are built once; a frame is then one `cv2.remap` per plane (the numpy back end, used where OpenCV is absent, gives identical bytes)\n\n"
    "| camera | build tables (ms) | NV12 -> 6x128x256 YUV p50 (ms) | p99 (ms) | NV12 -> 512x256 RGB p50 (ms) | p99 (ms) |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n\nTarget: <= 3 ms per 1928x1208 frame (student input).\n")
  write_report(args.out, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

#!/usr/bin/env python3
"""Lane pseudo-labels by point tracking (tools/fair/lanes) against the simulator's exact lanes.

For each bundled sample and each init source (ground-truth lanes; the simulator's own semantic map, standing in
for a segmentation teacher) the LK tracker follows lane points through the whole segment; lifted lanes are compared
with ground truth (lateral error at 10/20/40 m, over all visible points, coverage) and the run's frames/s is
timed. CoTracker's accuracy needs its official weights (not obtainable here). Writes docs/benchmarks/lanes.md.

  .venv/bin/python bench/lanes_bench.py [--max-frames 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from tools.fair.lanes.cli import load_tracker, make_init  # noqa: E402
from tools.fair.lanes.pipeline import LaneConfig, label_lanes, lane_errors, model_frames, segment_height  # noqa: E402
from tools.fair.routes import Segment  # noqa: E402
from tools.fair.samples import sample_paths  # noqa: E402
from tools.fair.sim.gt import load_segment_scene  # noqa: E402


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--max-frames", type=int, default=200)
  ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/lanes.md"))
  a = ap.parse_args()
  config = LaneConfig(camera=MEDMODEL)
  rows = []
  for path in sample_paths():
    seg = Segment(path)
    height, scene = segment_height(seg), load_segment_scene(seg.path)
    for source, seg_teacher in (("gt", None), ("seg", "gt")):
      tracker = load_tracker("lk", MEDMODEL)
      init = make_init(source, seg, config, height, seg_teacher)
      t0 = time.perf_counter()
      labels = label_lanes(model_frames(seg, MEDMODEL, a.max_frames), init, tracker, height, config, source)
      dt = time.perf_counter() - t0
      e = lane_errors(labels, scene, config)
      n = len(labels.frame_index)
      rows.append(f"| {seg.path.name} | {source if source == 'gt' else 'semantic map'} | {n} | "
                  f"{len(set(labels.init_frame.tolist()))} | " + " | ".join(f"{e.at[d]:.3f}" for d in sorted(e.at))
                  + f" | {e.median:.3f} | {e.p95:.3f} | {e.visible_fraction:.0%} | {n / dt:.1f} |")
  dists = " | ".join(f"lat. err {d:g} m (m)" for d in sorted(e.at))
  text = header("Lane pseudo-labels: LK tracking vs the simulator's lanes",
                f"python bench/lanes_bench.py --max-frames {a.max_frames}") + (
    "- model frame 512x256; points tracked frame to frame with OpenCV pyramidal LK (forward-backward check), lifted to "
    "the flat road with the calibration and camera height, resampled at model_io.LANE_X; re-initialised when a line "
    "loses half its points or after 60 frames. 'semantic map' initialises from the simulator's lane-marking class "
    "(what a segmentation teacher gives).\n"
    "- frames/s includes decode, warp, initialisation (ground-truth rendering for the semantic init) and tracking\n\n"
    f"| segment | init | frames | inits | {dists} | median (m) | p95 (m) | gt points covered | frames/s |\n"
    "| --- | --- | ---: | ---: | " + "---: | " * (len(e.at) + 4) + "\n" + "\n".join(rows) + "\n")
  write_report(a.out, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

#!/usr/bin/env python3
"""How far off are detector-box distances, by the two ways the dataset gives a box one (data/box_distance.py)?

The generator's own boxes of the bundled samples stand in for a detector's, so only the distance method is
measured: "depth map" = the median of the generator's depth map over the box's central half (a perfect depth
teacher; a real teacher's error adds to it), "ground contact" = the box's bottom edge on the flat road at the
scene's device height. Truth: the object's road-frame x (its centre, the student's object depth target).
Writes docs/benchmarks/box_distance.md.

  .venv/bin/python bench/box_distance_bench.py [--every 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from selfdrive.modeld_fair.model_io import OBJECT_CLASSES  # noqa: E402
from tools.fair.data.box_distance import depth_in_box, ground_contact_depth  # noqa: E402
from tools.fair.data.cache import build_frame_cache  # noqa: E402
from tools.fair.samples import sample_paths  # noqa: E402
from tools.fair.sim.gt import load_segment_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BINS = ((0, 20), (20, 40), (40, 80), (80, 1e9))


def measure(every: int) -> list[dict]:
  """One row per visible generator box: segment, class, truth, both estimates, whether the frame cuts its bottom."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = build_frame_cache(sample_paths(), Path(tmp), scale=0.5, every=every, progress=False)
    heights = {p.name: load_segment_scene(p).calib.height for p in sample_paths()}
    for rec in cache.records:
      g = cache.read(rec.index, ["depth", "box_xyxy", "box_cls", "box_count", "box_pos", "box_visible"])
      n = int(g["box_count"])
      boxes, keep = g["box_xyxy"][:n].astype(np.float64), g["box_visible"][:n] > 0
      k = g["depth"].shape[1] / MEDMODEL.width
      by_map = depth_in_box((boxes + 0.5) * k - 0.5, g["depth"].astype(np.float32))
      by_ground = ground_contact_depth(boxes, MEDMODEL, heights[rec.segment])
      for j in np.flatnonzero(keep):
        rows.append({"segment": rec.segment, "cls": OBJECT_CLASSES[int(g["box_cls"][j])],
                     "truth": float(g["box_pos"][j, 0]), "map": float(by_map[j]), "ground": float(by_ground[j]),
                     "cut": bool(boxes[j, 3] >= MEDMODEL.height - 1.5)})
  return rows


def stats(rows: list[dict], method: str) -> str:
  """'median |rel err| / p90 / within 10 % / no estimate' over rows."""
  est = np.array([r[method] for r in rows])
  truth = np.array([r["truth"] for r in rows])
  ok = np.isfinite(est)
  if not ok.any():
    return "- | - | - | " + f"{len(rows)}"
  rel = np.abs(est[ok] - truth[ok]) / truth[ok]
  signed = np.median((est[ok] - truth[ok]) / truth[ok])
  return (f"{np.median(rel):.3f} | {np.percentile(rel, 90):.3f} | {signed:+.3f} | {np.mean(rel <= 0.1):.0%} | "
          f"{int((~ok).sum())}")


def report(rows: list[dict], every: int) -> str:
  groups = [("all", rows)]
  groups += [(f"segment {s}", [r for r in rows if r["segment"] == s]) for s in sorted({r["segment"] for r in rows})]
  groups += [(f"class {c}", [r for r in rows if r["cls"] == c]) for c in OBJECT_CLASSES]
  groups += [(f"truth {lo:g}-{hi:g} m" if hi < 1e9 else f"truth >= {lo:g} m", [r for r in rows if lo <= r["truth"] < hi])
             for lo, hi in BINS]
  groups += [("bottom cut by the frame", [r for r in rows if r["cut"]])]
  lines = [header("Detector-box distances: depth map vs ground contact",
                  f".venv/bin/python bench/box_distance_bench.py --every {every}"),
           __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
           "Relative error |estimate - truth| / truth; signed: median (estimate - truth) / truth; "
           "no estimate: boxes the method leaves without a distance (no depth in the box / bottom at or above the "
           "horizon).\n",
           "| boxes | n | depth map: median | p90 | signed | within 10 % | no estimate "
           "| ground contact: median | p90 | signed | within 10 % | no estimate |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, rs in groups:
    if rs:
      lines.append(f"| {name} | {len(rs)} | {stats(rs, 'map')} | {stats(rs, 'ground')} |")
  return "\n".join(lines) + "\n"


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--every", type=int, default=2, help="use every Nth video frame of the samples (default 2)")
  args = ap.parse_args()
  write_report(ROOT / "docs/benchmarks/box_distance.md", report(measure(args.every), args.every))
  return 0


if __name__ == "__main__":
  sys.exit(main())

#!/usr/bin/env python3
"""The scenario suite: the bundled student scored by `fair val` on every scenario x both cameras.

A seeded held-out suite (seed 9000 + scenario index, never a training seed of the bundled samples) is generated
once into --cache (a segment whose scene.json exists is reused; the same seed gives the same pixels) and each
segment is scored with tools.fair.val.validate (the daemon's code path, ground truth in the model frame).
Writes docs/benchmarks/scenarios.md and the raw metrics next to the cache (scenarios.json).

  .venv/bin/python bench/scenarios_bench.py [--seconds 1.5] [--stride 5] [--scenarios night shadows] [--cameras mici]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from tools.fair.sim.cli import segment_name, write_segment  # noqa: E402
from tools.fair.sim.scenarios import SCENARIOS  # noqa: E402
from tools.fair.sim.world import make_scene  # noqa: E402
from tools.fair.val import validate  # noqa: E402

SEED0 = 9000
BUNDLED = Path(__file__).resolve().parents[1] / "selfdrive/modeld_fair/models"
COLUMNS = (("depth AbsRel", "depth_abs_rel", "{:.3f}"), ("δ1", "depth_delta1", "{:.3f}"), ("mIoU", "miou", "{:.3f}"),
           ("AP50", "det_ap50", "{:.3f}"), ("lead rate", "lead_detection_rate", "{:.2f}"),
           ("lane F1", "lane_f1", "{:.3f}"), ("lat. err 20 m", "lane_lat_err_20m", "{:.2f}"),
           ("speed MAE (m/s)", "ego_speed_mae", "{:.2f}"), ("yaw-rate MAE (rad/s)", "ego_yaw_rate_mae", "{:.4f}"),
           ("const.-vel. speed MAE", "cv_speed_mae", "{:.3f}"), ("const.-vel. yaw-rate MAE", "cv_yaw_rate_mae", "{:.4f}"))


def suite_segment(scenario: str, camera: str, seconds: float, cache: Path) -> Path:
  """The cached suite segment of one scenario and camera, generated on first use."""
  scene = make_scene(SEED0 + sorted(SCENARIOS).index(scenario), seconds, camera, scenario)
  path = cache / segment_name(scene)
  if not (path / "scene.json").is_file():  # scene.json is written last: a folder without it is a partial run
    write_segment(scene, cache, progress=False, overwrite=True)
  return path


def constant_velocity_ego(segment: Path, stride: int) -> dict:
  """The non-learned ego baseline on the frames `fair val` scores: each frame's device-frame motion predicted as
  the previous frame's true motion (speed = trans[0], yaw rate = rot[2], as Scores.ego reads them)."""
  from tools.fair.sim.gt import ego_state, load_segment_scene
  scene = load_segment_scene(segment)
  vec = lambda f: (lambda e: np.concatenate([e.trans, e.rot]))(ego_state(scene, f))
  err = np.array([np.abs(vec(f) - vec(f - 1))[[0, 5]] for f in range(max(stride, 1), scene.n_frames, stride)])
  return {"cv_speed_mae": float(err[:, 0].mean()), "cv_yaw_rate_mae": float(err[:, 1].mean())} if len(err) else {}


def cell(r: dict, key: str, fmt: str) -> str:
  v = r.get(key)
  return "–" if v is None or v != v else fmt.format(v)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", type=Path, default=BUNDLED, help="model folder or .onnx (default: the bundled student)")
  ap.add_argument("--seconds", type=float, default=1.5, help="length of each suite segment")
  ap.add_argument("--stride", type=int, default=5, help="score every N-th frame")
  ap.add_argument("--scenarios", nargs="*", choices=sorted(SCENARIOS), default=sorted(SCENARIOS))
  ap.add_argument("--cameras", nargs="*", choices=("tici", "mici"), default=["tici", "mici"])
  ap.add_argument("--cache", type=Path, default=Path("runs/scenario_suite"), help="where the suite segments live")
  ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/scenarios.md"))
  a = ap.parse_args(argv)
  a.cache.mkdir(parents=True, exist_ok=True)
  rows, raw, model_id = [], {}, None
  for scenario in a.scenarios:
    for camera in a.cameras:
      seg = suite_segment(scenario, camera, a.seconds, a.cache)
      res = validate(a.model, [seg], stride=a.stride)
      model_id, r = res["model_id"], res["all"] | constant_velocity_ego(seg, a.stride)
      raw[seg.name] = r
      rows.append(f"| {scenario} | {camera} | {r['frames']} | " + " | ".join(cell(r, k, f) for _, k, f in COLUMNS)
                  + " |")
  (a.cache / "scenarios.json").write_text(json.dumps({"model_id": model_id, "segments": raw}, indent=2, default=float))
  cmd = "python bench/scenarios_bench.py" + (f" --seconds {a.seconds:g} --stride {a.stride}")
  text = header("Scenario suite: the student per scenario and camera", cmd) + (
    f"- model: `{model_id}` ({os.path.relpath(a.model)}); segments: seed {SEED0} + the scenario's index in sorted order, "
    f"{a.seconds:g} s at 20 fps, every frame of stride {a.stride} scored by `fair val`'s Scores (tools/fair/val.py)\n"
    "- const.-vel.: the non-learned ego baseline, each scored frame's motion predicted as the previous frame's "
    "true motion (frame 0 is skipped, so it averages over one frame fewer)\n"
    "- only the student's and the constant-velocity rows are measured here: the GT-trained reference, LK lanes, "
    "the teachers and the tracking metrics (ID switches, IDF1, J&F) are not in this suite yet\n\n"
    "| scenario | camera | frames | " + " | ".join(n for n, _, _ in COLUMNS) + " |\n"
    "| --- | --- | ---: | " + "---: | " * len(COLUMNS) + "\n" + "\n".join(rows) + "\n")
  write_report(a.out, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())

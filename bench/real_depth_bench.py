#!/usr/bin/env python3
"""The student's depth on real road frames against the road plane: a rough, label-free reference.

Real frames have no depth ground truth here. On a flat road seen by a camera at height h, with a residual
pitch d between the true mounting and the one the warp assumed, the road pixels of the calibrated model
frame have depth h / (sin d + cos d (v - cy) / f). This script runs the bundled student on the real frames
(fair predict's path: NV12, medmodel warp, runner, decoding) and reports its depth AbsRel against that plane
on two pixel sets:
  road     cells the student itself labels road or lane_marking, 6-60 m by the plane;
  window   a fixed patch in front of the car (|u - cx| < 12 % of the width, 6-30 m by the plane), no student
           output involved (a car there counts as an error);
for heights 1.1 / 1.22 / 1.4 m and residual pitches -2 / 0 / +2 degrees, so the spread shows how much of the
number is the reference's own uncertainty. pred/plane is the median ratio (depth scale bias).

A student can match the plane without reading the image: the plane of a level camera at 1.22 m is the prior
that every generated training frame teaches. The warp test tells the two apart: the frames are warped as if the
device were pitched by WARP_DEG (it is not), which tilts the road in the model frame by -WARP_DEG (the model
frame's horizon moves by f tan(WARP_DEG)). A student that reads the image follows the tilted ("image") plane; one
that outputs its prior stays on the level ("prior") plane. Both are scored on the same window cells.

Writes docs/benchmarks/real_depth.md.

  .venv/bin/python bench/real_depth_bench.py [--shared DIR] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, write_report  # noqa: E402
from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel  # noqa: E402
from selfdrive.modeld_fair.classes import CLASS_ID  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

HEIGHTS = (1.1, 1.22, 1.4)
PITCHES_DEG = (-2.0, 0.0, 2.0)
WARP_DEG = (-3.0, 3.0)
ROAD = (CLASS_ID["road"], CLASS_ID["lane_marking"])


@dataclass(frozen=True)
class RealFrames:
  """A set of real frames and what is known (or guessed) about their camera."""
  name: str
  files: tuple[str, ...]      # relative to the shared data folder
  intrinsics: str             # fx,fy,cx,cy
  note: str


FRAME_SETS = (
  RealFrames("comma2k19", ("data/real/comma2k19_preview.png",), "910,910,582,437", "EON road camera, f = 910 (known)"),
  RealFrames("dashcam", ("data/real/dashcam/source.jpg", "data/real/dashcam/target.jpg"), "700,700,446,153",
             "dashcam pair, ~65 deg FOV (intrinsics guessed)"),
)


def grid_camera(shape: tuple[int, int]) -> CameraModel:
  """The model-frame camera of a (rows, cols) output grid over the 512x256 medmodel frame."""
  return MEDMODEL.scaled(shape[1] / MEDMODEL.width)


def plane_depth(cam: CameraModel, height: float, pitch: float) -> np.ndarray:
  """(H, W) depth of a flat road below a camera at `height` tilted down by `pitch` (inf above the horizon)."""
  v = np.arange(cam.height, dtype=np.float64)[:, None] * np.ones((1, cam.width))
  den = np.sin(pitch) + np.cos(pitch) * (v - cam.cy) / cam.focal
  with np.errstate(divide="ignore"):
    return np.where(den > 1e-6, height / den, np.inf)


def pixel_sets(cam: CameraModel, ref: np.ndarray, seg: np.ndarray | None) -> dict[str, np.ndarray]:
  """The road and window masks (module doc) for a plane reference `ref`."""
  u = np.arange(cam.width)[None, :] * np.ones((cam.height, 1))
  window = (np.abs(u - cam.cx) < 0.12 * cam.width) & (ref >= 6) & (ref <= 30)
  sets = {"window": window}
  if seg is not None:
    sets["road"] = np.isin(seg, ROAD) & (ref >= 6) & (ref <= 60)
  return sets


def scores(depth: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
  """(AbsRel, median pred/ref, pixels) of `depth` against `ref` on `mask` (finite predictions only)."""
  m = mask & np.isfinite(depth)
  if not m.any():
    return float("nan"), float("nan"), 0
  d, r = depth[m], ref[m]
  return float(np.mean(np.abs(d - r) / r)), float(np.median(d / r)), int(m.sum())


def _outputs(shared: Path, runner, fs: RealFrames, warp_pitch: float = 0.0):
  from tools.fair.predict import Pinhole, student_outputs
  for name, _, _, out in student_outputs([shared / f for f in fs.files], Pinhole.parse(fs.intrinsics), runner,
                                         warp_pitch):
    if not out.valid:
      raise ValueError(f"{fs.name}/{name}: the student gave no output ({out.invalid_reason})")
    yield name, out


def warp_test(shared: Path, runner) -> list[dict]:
  """One row per frame and warp pitch: AbsRel against the image's tilted plane and against the level prior."""
  rows = []
  for fs in FRAME_SETS:
    for w in WARP_DEG:
      for name, out in _outputs(shared, runner, fs, np.deg2rad(w)):
        depth = np.asarray(out.depth, np.float64)
        cam = grid_camera(depth.shape)
        image, prior = plane_depth(cam, 1.22, -np.deg2rad(w)), plane_depth(cam, 1.22, 0.0)
        mask = pixel_sets(cam, image, None)["window"] & pixel_sets(cam, prior, None)["window"]
        rows.append(dict(set=fs.name, frame=name, warp=w, image=scores(depth, image, mask)[0],
                         prior=scores(depth, prior, mask)[0], n=int(mask.sum())))
  return rows


def measure(shared: Path, runner) -> list[dict]:
  """One row per frame, pixel set, height and pitch."""
  rows = []
  for fs in FRAME_SETS:
    for name, out in _outputs(shared, runner, fs):
      depth = np.asarray(out.depth, np.float64)
      seg = np.asarray(out.segmentation)
      dcam = grid_camera(depth.shape)
      if seg.shape != depth.shape:   # the road mask is taken on the depth grid
        seg = seg[::seg.shape[0] // depth.shape[0], ::seg.shape[1] // depth.shape[1]]
      for h in HEIGHTS:
        for p in PITCHES_DEG:
          ref = plane_depth(dcam, h, np.deg2rad(p))
          for which, mask in pixel_sets(dcam, ref, seg).items():
            absrel, ratio, n = scores(depth, ref, mask)
            rows.append(dict(set=fs.name, frame=name, pixels=which, height=h, pitch=p, absrel=absrel, ratio=ratio, n=n))
  return rows


def report(rows: list[dict], warps: list[dict], model_id: str, command: str) -> str:
  """Markdown: the headline (h 1.22 m, pitch 0) per frame and pixel set, then the spread over h and pitch."""
  lines = [header("Student depth on real frames vs the road plane", command), f"- model: `{model_id}`",
           "- reference: the flat road plane below the camera (bench/real_depth_bench.py docstring); a rough, "
           "label-free check, not ground truth. road: cells the student labels road/lane_marking, 6-60 m; window: "
           "a fixed patch ahead, 6-30 m",
           "", "| frames | frame | pixels | cells | AbsRel (1.22 m, 0 deg) | pred/plane | AbsRel min-max over h, pitch |",
           "| --- | --- | --- | ---: | ---: | ---: | --- |"]
  keys = sorted({(r["set"], r["frame"], r["pixels"]) for r in rows}, key=str)
  for k in keys:
    rs = [r for r in rows if (r["set"], r["frame"], r["pixels"]) == k]
    mid = next(r for r in rs if r["height"] == 1.22 and r["pitch"] == 0.0)
    vals = [r["absrel"] for r in rs if np.isfinite(r["absrel"])]
    lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {mid['n']} | {mid['absrel']:.3f} | {mid['ratio']:.2f} | "
                 f"{min(vals):.3f}-{max(vals):.3f} |")
  for which in ("road", "window"):
    mids = [r["absrel"] for r in rows if r["pixels"] == which and r["height"] == 1.22 and r["pitch"] == 0.0]
    if mids:
      lines.append(f"\nmean over frames, {which} pixels, 1.22 m / 0 deg: AbsRel {np.nanmean(mids):.3f}")
  lines.append("\nper height x pitch (mean AbsRel over frames, road pixels):\n")
  lines.append("| height (m) | " + " | ".join(f"pitch {p:+g} deg" for p in PITCHES_DEG) + " |")
  lines.append("| --- |" + " ---: |" * len(PITCHES_DEG))
  for h in HEIGHTS:
    cells = [np.nanmean([r["absrel"] for r in rows if r["pixels"] == "road" and r["height"] == h and r["pitch"] == p])
             for p in PITCHES_DEG]
    lines.append(f"| {h} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
  lines += ["\nwarp test (frames warped as if pitched; AbsRel on the same window cells, 1.22 m):\n",
            "| frames | frame | warp pitch (deg) | cells | vs image plane | vs level prior |", "| --- | --- | ---: | ---: | ---: | ---: |"]
  for r in warps:
    lines.append(f"| {r['set']} | {r['frame']} | {r['warp']:+g} | {r['n']} | {r['image']:.3f} | {r['prior']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
  default = Path(os.environ.get("FAIRPILOT_SHARED", ROOT.parent / "shared"))
  p.add_argument("--shared", type=Path, default=default, help="shared data folder holding data/real/ ($FAIRPILOT_SHARED)")
  p.add_argument("--model-dir", type=Path, default=None, help="student bundle (default: the bundled student)")
  args = p.parse_args(argv)
  from selfdrive.modeld_fair.runner import make_runner
  if not (args.shared / "data" / "real").is_dir():
    print(f"real_depth_bench: no real frames under {args.shared / 'data' / 'real'} (set --shared or FAIRPILOT_SHARED)",
          file=sys.stderr)
    return 2
  runner = make_runner("onnxruntime", args.model_dir)
  cmd = "FAIRPILOT_SHARED=/work/shared .venv/bin/python bench/real_depth_bench.py" + \
    (f" --model-dir {args.model_dir}" if args.model_dir else "")
  write_report(ROOT / "docs/benchmarks/real_depth.md", report(measure(args.shared, runner), warp_test(args.shared, runner),
                                                             runner.model_id, cmd))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

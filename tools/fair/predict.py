"""`fair predict`: the student on frames of any pinhole camera (photos, dashcam video).

Each frame is taken as the camera would deliver it to the daemon: RGB -> openpilot's NV12 (an odd
last row or column is cropped, which keeps the principal point), non-square pixels (fx != fy)
resampled to square ones, then the daemon's own medmodel warp with calibration (0, pitch, 0), the
student's two-frame history (frames in the order given form one sequence, the first is its own
predecessor), the runner and the daemon's output decoding. Writes OUT/NNNN_<name>.png (lanes +
objects, depth, segmentation in the model frame) and OUT/report.md / report.json.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from cereal_ext.fair import FairOutput
from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, CameraModel
from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_rgb, warp_tables
from selfdrive.modeld_fair.modeld_fair import FrameHistory
from selfdrive.modeld_fair.nv12 import rgb_to_nv12
from selfdrive.modeld_fair.outputs import check_finite, check_shapes, decode_outputs
from selfdrive.modeld_fair.runner import Runner, make_runner
from tools.fair.files import atomic_write
from tools.fair.overlay import mosaic, with_key

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".hevc", ".h264", ".ts", ".webm")


@dataclass(frozen=True)
class Pinhole:
  """Intrinsics of the camera that took the frames (pixels)."""
  fx: float
  fy: float
  cx: float
  cy: float

  @classmethod
  def parse(cls, text: str) -> Pinhole:
    try:
      fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
      raise ValueError(f"--intrinsics expects fx,fy,cx,cy (four numbers), got {text!r}") from None
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
      raise ValueError(f"--intrinsics: focal lengths must be > 0 and all values finite, got {text!r}")
    return cls(fx, fy, cx, cy)


@dataclass(frozen=True)
class FrameReport:
  """What the student said about one frame."""
  name: str
  size: tuple[int, int]                 # width, height as read
  valid: bool
  reason: str                           # "none" or why there are no outputs
  objects: list[dict]                   # class, score, forward distance (m)
  lane_probs: list[float]
  median_depth_m: float                 # over the model frame's finite depths
  ego_speed_mps: float


def read_frames(paths: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
  """(name, uint8 RGB) of each image, or of each frame of one video file."""
  for p in paths:
    if not p.is_file():
      raise FileNotFoundError(f"{p}: no such file")
    if p.suffix.lower() in VIDEO_SUFFIXES:
      import av
      try:
        with av.open(str(p)) as c:
          for i, f in enumerate(c.decode(video=0)):
            yield f"{p.stem}-{i:05d}", f.to_ndarray(format="rgb24")
      except av.FFmpegError as e:
        raise ValueError(f"{p}: not a readable video ({e})") from None
      continue
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
      raise ValueError(f"{p}: not a readable image")
    yield p.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def camera_view(rgb: np.ndarray, k: Pinhole) -> tuple[np.ndarray, CameraModel]:
  """The frame as an NV12-able square-pixel pinhole image, and its camera (focal fx)."""
  h, w = rgb.shape[:2]
  cy = k.cy
  if not np.isclose(k.fx, k.fy, rtol=1e-6):  # rows scaled by fx / fy: pixel centres kept consistent
    h = max(2, round(h * k.fx / k.fy))
    cy = (k.cy + 0.5) * h / rgb.shape[0] - 0.5
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if k.fx < k.fy else cv2.INTER_LINEAR)
  rgb = rgb[:h - h % 2, :w - w % 2]  # NV12 needs even sizes; cropping the last row/column keeps (cx, cy)
  return np.ascontiguousarray(rgb), CameraModel("pinhole", rgb.shape[1], rgb.shape[0], k.fx, k.cx, cy)


def _frame_report(name: str, size: tuple[int, int], out: FairOutput) -> FrameReport:
  from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
  if not out.valid:
    return FrameReport(name, size, False, out.invalid_reason, [], [], float("nan"), float("nan"))
  d = out.depth[np.isfinite(out.depth)]
  objs = [{"class": SEMANTIC_CLASSES[o.class_id], "score": round(o.score, 3), "distance_m": round(o.position[0], 1)}
          for o in out.objects]
  return FrameReport(name, size, True, "none", objs, [round(ln.prob, 3) for ln in out.lanes.lines],
                     round(float(np.median(d)), 2) if d.size else float("inf"), round(out.ego_motion.trans[0], 2))


def student_outputs(paths: list[Path], k: Pinhole, runner: Runner, pitch: float = 0.0) \
    -> Iterator[tuple[str, np.ndarray, np.ndarray, FairOutput]]:
  """(name, frame as read, model-frame RGB 512x256, decoded FairOutput) of each frame (module doc)."""
  rpy, history, tables = (0.0, pitch, 0.0), FrameHistory(), {}
  for i, (name, rgb) in enumerate(read_frames(paths)):
    view, cam = camera_view(rgb, k)
    if cam not in tables:
      tables[cam] = warp_tables(cam, rpy), warp_tables(cam, rpy, full_chroma=True)
    buf, _ = rgb_to_nv12(view)
    raw = runner.run(history.push(warp_model_input(buf, tables[cam][0])))
    check_shapes(raw)
    bad = check_finite(raw)
    out = FairOutput(frame_id=i, invalid_reason="nonFiniteOutput", invalid_detail=f"output {bad!r}") if bad else \
      decode_outputs(raw)
    out.frame_id = i
    yield name, rgb, warp_rgb(buf, tables[cam][1]), out


def predict(paths: list[Path], k: Pinhole, runner: Runner, out_dir: Path, *, height: float = DEFAULT_CAMERA_HEIGHT,
            pitch: float = 0.0) -> list[FrameReport]:
  """Run the student over the frames (module doc); writes the overlays and the report, returns it."""
  from tools.fair.replay import prediction_panels
  out_dir.mkdir(parents=True, exist_ok=True)
  reports = []
  for i, (name, rgb, model_rgb, out) in enumerate(student_outputs(paths, k, runner, pitch)):
    panels = prediction_panels(model_rgb, out, height)
    ok, png = cv2.imencode(".png", cv2.cvtColor(with_key(mosaic(panels, columns=1), ["MODEL"]), cv2.COLOR_RGB2BGR))
    atomic_write(out_dir / f"{i:04d}_{name}.png", png.tobytes())
    reports.append(_frame_report(name, (rgb.shape[1], rgb.shape[0]), out))
  if not reports:
    raise ValueError("no frames read from " + ", ".join(map(str, paths)))
  write_report(out_dir, reports, runner.model_id, k, height, pitch)
  return reports


def write_report(out_dir: Path, reports: list[FrameReport], model_id: str, k: Pinhole, height: float,
                 pitch: float) -> None:
  """report.json (every field) and report.md (one row per frame)."""
  atomic_write(out_dir / "report.json", json.dumps({"model_id": model_id, "intrinsics": asdict(k), "height_m": height,
                                                    "pitch_rad": pitch, "frames": [asdict(r) for r in reports]},
                                                   indent=2) + "\n")
  rows = []
  for r in reports:
    objs = ", ".join(f"{o['class']} {o['score']:.2f} @ {o['distance_m']:.0f} m" for o in r.objects) or "-"
    lanes = sum(p >= 0.5 for p in r.lane_probs)
    rows.append(f"| {r.name} | {r.size[0]}x{r.size[1]} | {r.reason} | {objs} | {lanes}/{len(r.lane_probs)} | "
                f"{r.median_depth_m:.1f} | {r.ego_speed_mps:.1f} |")
  atomic_write(out_dir / "report.md",
               f"# fair predict\n\n- model: `{model_id}`\n- intrinsics fx, fy, cx, cy: {k.fx:g}, {k.fy:g}, {k.cx:g}, "
               f"{k.cy:g}; camera height {height:g} m, pitch {pitch:g} rad\n\n"
               "| frame | size | invalid | objects (class score @ distance) | lanes p>=0.5 | median depth (m) | "
               "ego speed (m/s) |\n| --- | --- | --- | --- | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("inputs", type=Path, nargs="+", help="images (one sequence, in this order) or a video file")
  p.add_argument("--intrinsics", required=True, help="fx,fy,cx,cy of the camera, in pixels of the given frames")
  p.add_argument("--height", type=float, default=DEFAULT_CAMERA_HEIGHT, help="camera height above the road (m)")
  p.add_argument("--pitch", type=float, default=0.0, help="camera pitch (rad), as liveCalibration.rpyCalib[1]")
  p.add_argument("--out", type=Path, required=True, help="folder for the overlays and report.md/json")
  p.add_argument("--runtime", choices=("tinygrad", "onnxruntime"), default="onnxruntime", help="model back end")
  p.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled student)")


def run(args: argparse.Namespace) -> int:
  k = Pinhole.parse(args.intrinsics)
  if not (np.isfinite(args.height) and args.height > 0 and np.isfinite(args.pitch)):
    raise ValueError(f"--height must be > 0 and --pitch finite, got {args.height}, {args.pitch}")
  predict(args.inputs, k, make_runner(args.runtime, args.model), args.out, height=args.height, pitch=args.pitch)
  print((args.out / "report.md").read_text())
  return 0

"""`fair inspect`: draw depth, segmentation, lane lines and boxes over a segment's frames.

The drawing helpers are pure functions on uint8 RGB arrays so that later model outputs reuse
them (ground truth and predictions are drawn the same way, side by side).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel, project_calib_points
from selfdrive.modeld_fair.classes import CLASS_COLORS, SEMANTIC_CLASSES

_TURBO = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def colorize_depth(depth: np.ndarray, min_depth: float = 2.0, max_depth: float = 100.0) -> np.ndarray:
  """Depth (metres) to RGB on a log scale: near is red, far is blue; non-finite (sky) is black."""
  d = np.clip(np.nan_to_num(depth, nan=np.inf, posinf=np.inf), min_depth, max_depth)
  t = 1.0 - (np.log(d) - np.log(min_depth)) / (np.log(max_depth) - np.log(min_depth))
  out = _TURBO[np.clip((t * 255).astype(np.int32), 0, 255)]
  out[~np.isfinite(depth)] = 0
  return out


def blend_semantic(rgb: np.ndarray, semantic: np.ndarray, alpha: float = 0.55) -> np.ndarray:
  """Class colours blended over the image; unlabelled pixels (>= number of classes) keep the image."""
  known = semantic < len(SEMANTIC_CLASSES)
  colors = CLASS_COLORS[np.where(known, semantic, 0)].astype(np.float32)
  out = np.where(known[..., None], (1 - alpha) * rgb + alpha * colors, rgb)
  return out.astype(np.uint8)


@dataclass(frozen=True)
class Box:
  """A 2D box to draw: xyxy in image pixels, a label (e.g. 'car 12 · 23 m') and a colour."""
  xyxy: tuple[float, float, float, float]
  label: str
  color: tuple[int, int, int] = (255, 210, 0)


def draw_boxes(rgb: np.ndarray, boxes: list[Box]) -> np.ndarray:
  out = np.ascontiguousarray(rgb).copy()
  scale = max(out.shape[0] / 256, 0.7)
  for b in boxes:
    x0, y0, x1, y1 = (int(round(v)) for v in b.xyxy)
    cv2.rectangle(out, (x0, y0), (x1, y1), b.color, max(1, int(scale)))
    cv2.putText(out, b.label, (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, b.color,
                max(1, int(scale)), cv2.LINE_AA)
  return out


def draw_polylines(rgb: np.ndarray, lines: list[np.ndarray], color=(0, 255, 120), thickness: int = 2) -> np.ndarray:
  """Draw pixel polylines (each N x 2); points with non-finite coordinates break the line."""
  out = np.ascontiguousarray(rgb).copy()
  for line in lines:
    ok = np.all(np.isfinite(line), axis=1)
    for run in np.split(np.arange(len(line)), np.flatnonzero(np.diff(ok.astype(np.int8)) != 0) + 1):
      if ok[run[0]] and len(run) > 1:
        cv2.polylines(out, [np.rint(line[run]).astype(np.int32)], False, color, thickness, cv2.LINE_AA)
  return out


def project_road_polyline(points: np.ndarray, camera: CameraModel = MEDMODEL, rpy=(0.0, 0.0, 0.0),
                          height: float = 1.22) -> np.ndarray:
  """Road-frame points (x forward, y right, z down, origin on the road below the camera) to pixels;
  points behind the camera become NaN."""
  pts = np.asarray(points, np.float64) + np.array([0.0, 0.0, height])  # to the camera-centred calib frame
  uv, depth = project_calib_points(pts, camera, rpy)
  uv[depth <= 0.5] = np.nan
  return uv


def label(rgb: np.ndarray, text: str) -> np.ndarray:
  out = np.ascontiguousarray(rgb).copy()
  cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
  return out


def mosaic(panels: list[np.ndarray], columns: int = 2) -> np.ndarray:
  """Tile equally sized panels row-major; missing cells are black."""
  h, w, _ = panels[0].shape
  rows = -(-len(panels) // columns)
  out = np.zeros((rows * h, columns * w, 3), np.uint8)
  for i, p in enumerate(panels):
    r, c = divmod(i, columns)
    out[r * h:(r + 1) * h, c * w:(c + 1) * w] = p
  return out


KEY_H = 28  # pixels of each header / legend / colour-bar strip (even: H.264 needs even frame sizes)
DEPTH_TICKS_M = (2, 5, 10, 20, 50, 100)


def _strip(width: int) -> np.ndarray:
  return np.full((KEY_H, width, 3), 32, np.uint8)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45) -> None:
  cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def header_strip(titles: list[str], width: int) -> np.ndarray:
  """Titles centred over equal-width columns (e.g. MODEL | GROUND TRUTH)."""
  out, w = _strip(width), width // len(titles)
  for i, t in enumerate(titles):
    (tw, _), _ = cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
    cv2.putText(out, t, (i * w + (w - tw) // 2, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
  return out


def class_legend(width: int) -> np.ndarray:
  """A colour swatch and the name of every semantic class, in class-id order."""
  out, w = _strip(width), width // len(SEMANTIC_CLASSES)
  for i, (name, color) in enumerate(zip(SEMANTIC_CLASSES, CLASS_COLORS)):
    cv2.rectangle(out, (i * w + 3, 7), (i * w + 15, 19), tuple(int(c) for c in color), -1)
    _text(out, name.replace("_", " "), i * w + 18, 18, 0.33)
  return out


def depth_colorbar(width: int, min_depth: float = 2.0, max_depth: float = 100.0) -> np.ndarray:
  """colorize_depth's log scale as a bar with metre ticks (drawn by colorize_depth itself)."""
  out = _strip(width)
  x0, x1 = 40, width - 24
  d = np.exp(np.linspace(np.log(min_depth), np.log(max_depth), x1 - x0))
  out[3:13, x0:x1] = colorize_depth(d[None, :])
  _text(out, "depth", 2, 12, 0.33)
  for t in DEPTH_TICKS_M:
    x = x0 + int(round((np.log(t) - np.log(min_depth)) / (np.log(max_depth) - np.log(min_depth)) * (x1 - x0 - 1)))
    _text(out, f"{t} m", min(max(x - 8, 0), width - 36), 25, 0.33)
  return out


def with_key(image: np.ndarray, titles: list[str]) -> np.ndarray:
  """A mosaic with column headers above and the class legend and depth colour bar below."""
  w = image.shape[1]
  return np.concatenate([header_strip(titles, w), image, class_legend(w), depth_colorbar(w)])


def flow_to_rgb(flow: np.ndarray, valid: np.ndarray | None = None, max_mag: float | None = None) -> np.ndarray:
  """Optical flow (H, W, 2) to RGB: hue is direction, brightness magnitude; invalid pixels black."""
  mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
  max_mag = max_mag or max(float(np.percentile(mag, 99)), 1e-3)
  hsv = np.stack([ang * (90 / np.pi), np.full_like(mag, 255), np.clip(mag / max_mag, 0, 1) * 255], -1)
  out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
  if valid is not None:
    out[~valid] = 0
  return out


def gt_panels(image: np.ndarray, gt, camera_height: float) -> list[np.ndarray]:
  """Overlay panels of one frame's ground truth (a tools.fair.sim GroundTruth) over `image`, the
  same frame at the ground truth's resolution: lanes + boxes, depth, semantics, flow."""
  dist = {b.id: b.centre[0] for b in gt.boxes3d}
  min_px = 6 * gt.camera.width / 512  # tiny far-away boxes only clutter the picture
  boxes = [Box(b.xyxy, f"{b.cls} {b.id} {dist[b.id]:.0f}m") for b in gt.boxes2d
           if b.xyxy[2] - b.xyxy[0] >= min_px and b.xyxy[3] - b.xyxy[1] >= min_px]
  # lane lines are the lane boundaries (painted or not, as openpilot's laneLines), drawn where visible
  lanes = [project_road_polyline(np.where(ln.visible[:, None], ln.points, np.nan), gt.camera, gt.rpy, camera_height)
           for ln in gt.lanes]
  return [label(draw_boxes(draw_polylines(image, lanes), boxes), f"frame {gt.frame_id}: lanes + boxes"),
          label(colorize_depth(gt.depth), "depth (log, 2-100 m)"),
          label(blend_semantic(image, gt.semantic), "semantic"),
          label(flow_to_rgb(gt.flow, gt.flow_valid), "flow to next frame")]


class VideoSink:
  """Frames to an H.264 MP4 (PyAV) or to numbered PNGs in a folder, chosen by the path's suffix."""

  def __init__(self, path: Path, fps: int = 20):
    self.path, self.fps, self.count = Path(path), fps, 0
    self._container = self._stream = None
    if self.path.suffix.lower() != ".mp4":
      self.path.mkdir(parents=True, exist_ok=True)

  def write(self, rgb: np.ndarray) -> None:
    if self.path.suffix.lower() != ".mp4":
      cv2.imwrite(str(self.path / f"{self.count:05d}.png"), rgb[..., ::-1])
    else:
      if self._container is None:
        import av
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.width, self._stream.height = rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2
        self._stream.pix_fmt, self._stream.options = "yuv420p", {"crf": "23", "preset": "veryfast"}
      import av
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:self._stream.height, :self._stream.width]), "rgb24")
      self._container.mux(self._stream.encode(frame))
    self.count += 1

  def close(self) -> None:
    if self._container is not None:
      self._container.mux(self._stream.encode())
      self._container.close()


def inspect_segment(segment_dir, out, with_gt: bool = False, frame: str = "model", scale: float = 1.0,
                    max_frames: int | None = None, progress: bool = True) -> Path:
  """Render overlays of a segment's road-camera frames to `out` (.mp4 or a folder of PNGs).

  frame="model": the calibrated model frame (what the daemon sees; the warp uses the calibration
  logged with each frame, Segment.warp_calibration's policy) at `scale` x 512x256;
  frame="camera": the device image scaled by `scale`. with_gt draws the simulator's ground truth
  (segments written by `fair sim`) beside the image.
  """
  from tools.fair.progress import progress_bar
  from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
  from tools.fair.routes import Segment

  seg = Segment(segment_dir)
  if with_gt:
    from tools.fair.sim.gt import load_segment_scene, render_gt
    if seg.scene_path is None:
      raise FileNotFoundError(f"{seg.path} has no scene.json: --gt needs a segment written by `fair sim`")
    height = load_segment_scene(seg.path).calib.height
  if frame == "model":
    seg.check_calibration()
  base = MEDMODEL if frame == "model" else seg.camera
  view = base.scaled(scale) if scale != 1.0 else base
  sink, tables = VideoSink(out), {}
  frames = seg.frames()
  total = len(seg.of_type("roadEncodeIdx")) if max_frames is None else max_frames
  try:
    for f in progress_bar(frames, total=total, desc=f"inspect {seg.path.name}", unit="frame", disable=not progress):
      if max_frames is not None and f.index >= max_frames:
        break
      if frame == "model":
        rpy = seg.warp_calibration(f)
        key = tuple(rpy)
        if key not in tables:  # calibration changes rarely: tables are built once per value
          tables = {key: warp_tables(seg.camera, rpy, model=view, full_chroma=True)}
        image = warp_rgb(f.nv12, tables[key])
      else:
        image = cv2.resize(f.rgb(), (view.width, view.height), interpolation=cv2.INTER_AREA)
      if with_gt:
        gt = render_gt(seg.path, f.index, frame=frame, size=(view.width, view.height))
        sink.write(with_key(mosaic(gt_panels(image, gt, height)), ["GROUND TRUTH"]))
      else:
        sink.write(label(image, f"frame {f.frame_id}"))
  finally:
    frames.close()
    sink.close()
  return sink.path


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segment", type=Path, help="segment folder (rlog + fcamera.hevc)")
  p.add_argument("--gt", action="store_true", help="draw the simulator's ground truth (needs scene.json)")
  p.add_argument("--out", type=Path, default=None, help="FILE.mp4 or a folder for PNGs (default: <segment>.mp4 here)")
  p.add_argument("--frame", choices=("model", "camera"), default="model", help="calibrated model frame or device image")
  p.add_argument("--scale", type=float, default=1.0, help="resolution multiple of the chosen frame")
  p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")


def run(args: argparse.Namespace) -> int:
  out = args.out or Path(f"{args.segment.resolve().name}.mp4")
  print(inspect_segment(args.segment, out, args.gt, args.frame, args.scale, args.max_frames))
  return 0

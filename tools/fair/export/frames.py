"""Model inputs for calibrating and verifying exports: generated frames from segments, real frames from images.

Both give (N, 12, 128, 256) uint8 frame pairs (previous, current) exactly as the daemon builds them: NV12 through
the calibrated medmodel warp and openpilot's YUV packing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import CameraModel
from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_tables
from selfdrive.modeld_fair.nv12 import rgb_to_nv12

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EON_WIDTH, EON_FOCAL = 1164, 910.0   # a real road camera: real images are treated as its field of view


def segment_inputs(segments, n: int, stride: int = 1, phase: int = 0) -> np.ndarray:
  """Up to `n` frame pairs per segment folder: frames i with i % stride == phase, each with its predecessor
  (two phases of one stride never share a frame: calibration and verification sets stay apart)."""
  from tools.fair.routes.reader import Segment
  out = []
  for path in segments:
    seg = Segment(path)
    tables = {}
    prev, kept = None, 0
    for i, frame in enumerate(seg.frames("road")):
      rpy = seg.warp_calibration(frame)
      if rpy not in tables:
        tables[rpy] = warp_tables(seg.camera, rpy)
      yuv = warp_model_input(frame.nv12, tables[rpy])
      if prev is not None and i % stride == phase:
        out.append(np.concatenate([prev, yuv]))
        kept += 1
        if kept >= n:
          break
      prev = yuv
  if not out:
    raise ValueError(f"no frame pairs decoded from {list(map(str, segments))}")
  return np.stack(out)


def _image_input(path: Path) -> np.ndarray:
  from PIL import Image
  rgb = np.asarray(Image.open(path).convert("RGB"))
  h, w = rgb.shape[:2]
  rgb = rgb[:h - h % 2, :w - w % 2]  # NV12 needs even sizes
  h, w = rgb.shape[:2]
  # approximate geometry: enough to put real pixels into the model frame, not for metric use
  cam = CameraModel(path.stem, w, h, EON_FOCAL * w / EON_WIDTH, w / 2, h / 2)
  buf, _ = rgb_to_nv12(rgb)
  return warp_model_input(buf, warp_tables(cam, (0.0, 0.0, 0.0)))


def image_inputs(root) -> np.ndarray:
  """Frame pairs from every image under `root`: each image with itself, and consecutive images of one folder
  (sorted by name) as (previous, current)."""
  paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise ValueError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images")
  frames = {p: _image_input(p) for p in paths}
  pairs = [np.concatenate([f, f]) for f in frames.values()]
  pairs += [np.concatenate([frames[a], frames[b]]) for a, b in zip(paths, paths[1:]) if a.parent == b.parent]
  return np.stack(pairs)

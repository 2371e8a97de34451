"""Ground truth or pseudo labels -> the student's training targets (the batch contract, docs/data.md).

Pure numpy functions. Dense inputs are model-frame maps at any scaling of MEDMODEL (the cache's 256x128,
a teacher's 512x256, ...); boxes are always in MEDMODEL pixels (512x256 frame, box edges at pixel edges).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import IGNORE_ID, SEMANTIC_CLASSES
from selfdrive.modeld_fair.model_io import LANE_X, OBJECT_CLASSES, OBJECT_SEMANTIC_IDS, OBJECT_STRIDE

DEPTH_GRID = (32, 64)
SEG_GRID = (64, 128)
OBJ_GRID = (MEDMODEL.height // OBJECT_STRIDE, MEDMODEL.width // OBJECT_STRIDE)
MIN_DEPTH_VALID = 0.5   # a depth cell needs this fraction of pixels with known depth


def _cells(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """(gh, gw, n) pixels of each grid cell; maps not a multiple of the grid are resized (nearest) first."""
  gh, gw = grid
  h, w = x.shape[:2]
  if h % gh or w % gw:
    h, w = -(-h // gh) * gh, -(-w // gw) * gw
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_NEAREST)
  ch, cw = h // gh, w // gw
  return x.reshape(gh, ch, gw, cw).transpose(0, 2, 1, 3).reshape(gh, gw, ch * cw)


def depth_grid(depth: np.ndarray, grid: tuple[int, int] = DEPTH_GRID, min_valid: float = MIN_DEPTH_VALID) -> np.ndarray:
  """(1, gh, gw) float32: per cell, the LOWER MEDIAN of the pixels with known depth (> 0 and finite).

  The (lower) median is always one pixel's depth, so a cell split between a car and the road behind it
  keeps one surface (the nearer on an even split) where a mean or midpoint median would invent a depth
  between them. Cells with fewer than `min_valid` known pixels (sky, unknown) are 0 = unsupervised."""
  d = np.asarray(depth, np.float32)
  cells = np.sort(_cells(np.where(np.isfinite(d) & (d > 0), d, np.nan), grid), axis=-1)  # NaN sorts last
  count = np.isfinite(cells).sum(-1)
  med = np.take_along_axis(cells, np.maximum(count - 1, 0)[..., None] // 2, -1)[..., 0]
  return np.where(count >= min_valid * cells.shape[-1], med, 0).astype(np.float32)[None]


def seg_grid(semantic: np.ndarray, grid: tuple[int, int] = SEG_GRID) -> np.ndarray:
  """(gh, gw) int64 class ids: the majority class of each cell's labelled pixels (ties: lowest class id),
  IGNORE_ID where no pixel has a class."""
  n = len(SEMANTIC_CLASSES)
  cells = _cells(np.asarray(semantic, np.uint8), grid).astype(np.int64)
  gh, gw, _ = cells.shape
  cells = np.where(cells < n, cells, n)  # ignore and unknown ids -> one extra bin
  idx = cells + (n + 1) * np.arange(gh * gw).reshape(gh, gw, 1)
  counts = np.bincount(idx.ravel(), minlength=gh * gw * (n + 1)).reshape(gh, gw, n + 1)[..., :n]
  return np.where(counts.sum(-1) > 0, counts.argmax(-1), IGNORE_ID).astype(np.int64)


def probs_grid(probs: np.ndarray, grid: tuple[int, int] = SEG_GRID) -> np.ndarray:
  """(C, gh, gw) float32 mean of (C, H, W) class probabilities over each cell (soft labels)."""
  p = np.asarray(probs, np.float32)
  return np.stack([_cells(c, grid).mean(-1) for c in p]).astype(np.float32)


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
  """CenterNet's radius (in the units of h, w): the largest centre shift that keeps IoU >= min_overlap."""
  a1, b1, c1 = 1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
  a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
  r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
  a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
  r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
  return float(min(r1, r2, r3))


def centernet_targets(boxes: np.ndarray, classes: np.ndarray, depths: np.ndarray) -> dict[str, np.ndarray]:
  """obj_heatmap (2, 32, 64), obj_box (4, 32, 64), obj_depth (1, 32, 64), obj_mask (1, 32, 64) float32.

  boxes: (K, 4) x0, y0, x1, y1 in MEDMODEL pixels (pixel edges; clipped to the frame); classes: (K,) index
  into model_io.OBJECT_CLASSES (< 0: skip); depths: (K,) metres along the optical axis (skip if not > 0).
  The centre cell holds l, t, r, b from the cell centre (as outputs.decode_objects reads them, clamped at 0);
  a Gaussian of CenterNet's radius (IoU 0.7) marks it in the heatmap. Two objects on one cell: the nearer wins.
  """
  gh, gw = OBJ_GRID
  heat = np.zeros((len(OBJECT_CLASSES), gh, gw), np.float32)
  box = np.zeros((4, gh, gw), np.float32)
  dep = np.zeros((1, gh, gw), np.float32)
  mask = np.zeros((1, gh, gw), np.float32)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  classes = np.asarray(classes).reshape(-1)
  depths = np.asarray(depths, np.float64).reshape(-1)
  lo, hi = np.array([-0.5, -0.5] * 2), np.array([MEDMODEL.width - 0.5, MEDMODEL.height - 0.5] * 2)
  yy, xx = np.mgrid[0:gh, 0:gw]
  for k in np.argsort(-np.nan_to_num(depths, nan=-1.0), kind="stable"):  # far first: the nearer overwrites
    if classes[k] < 0 or not np.isfinite(depths[k]) or depths[k] <= 0 or not np.isfinite(boxes[k]).all():
      continue
    x0, y0, x1, y1 = np.clip(boxes[k], lo, hi)
    if x1 - x0 < 1 or y1 - y0 < 1:
      continue
    col = int(np.clip((x0 + x1 + 1) / 2 // OBJECT_STRIDE, 0, gw - 1))
    row = int(np.clip((y0 + y1 + 1) / 2 // OBJECT_STRIDE, 0, gh - 1))
    cu, cv = (col + 0.5) * OBJECT_STRIDE - 0.5, (row + 0.5) * OBJECT_STRIDE - 0.5
    r = max(0, int(gaussian_radius((y1 - y0) / OBJECT_STRIDE, (x1 - x0) / OBJECT_STRIDE)))
    sigma = (2 * r + 1) / 6
    g = np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    g[g < np.finfo(np.float32).eps * g.max()] = 0
    c = int(classes[k])
    np.maximum(heat[c], g, out=heat[c])
    heat[c, row, col] = 1.0
    box[:, row, col] = np.maximum([cu - x0, cv - y0, x1 - cu, y1 - cv], 0)
    dep[0, row, col] = depths[k]
    mask[0, row, col] = 1.0
  return {"obj_heatmap": heat, "obj_box": box, "obj_depth": dep, "obj_mask": mask}


def boxes_from_masks(semantic: np.ndarray, depth: np.ndarray, instance: np.ndarray | None = None,
                     min_pixels: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pseudo boxes when no detector labels exist: (boxes (K, 4) MEDMODEL px, classes (K,), depths (K,)).

  Objects are the instances of a panoptic teacher (instance > 0) or else the 8-connected components of
  its vehicle / pedestrian classes; an object's depth is the median teacher depth over its pixels (NaN
  when none is known: such an object gets no target). semantic/depth may differ in size (depth is resized)."""
  sem = np.asarray(semantic)
  h, w = sem.shape
  scale = w / MEDMODEL.width
  d = np.asarray(depth, np.float32)
  if d.shape != sem.shape:
    d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
  out_b, out_c, out_d = [], [], []
  for c, sid in enumerate(OBJECT_SEMANTIC_IDS):
    m = sem == sid
    if instance is not None:
      labels = np.where(m, np.asarray(instance), 0)
    else:
      labels, _ = ndimage.label(m, structure=np.ones((3, 3), bool))
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
      if sl is None:
        continue
      px = labels[sl] == lab
      if px.sum() < min_pixels:
        continue
      dv = d[sl][px]
      dv = dv[np.isfinite(dv) & (dv > 0)]
      edges = np.array([sl[1].start - 0.5, sl[0].start - 0.5, sl[1].stop - 0.5, sl[0].stop - 0.5])
      out_b.append((edges + 0.5) / scale - 0.5)  # to MEDMODEL pixels
      out_c.append(c)
      out_d.append(np.median(dv) if len(dv) else np.nan)
  if not out_b:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
  return np.array(out_b, np.float32), np.array(out_c, np.int64), np.array(out_d, np.float32)


def lane_targets(lanes: np.ndarray, visible: np.ndarray, exists: np.ndarray) -> dict[str, np.ndarray]:
  """lanes (4, 33, 2) y, z road frame; lane_valid (4, 33) = visible and existing; lane_exists (4,)."""
  lanes = np.asarray(lanes, np.float32)
  ex = np.asarray(exists, np.float32)
  valid = (np.asarray(visible) > 0) & (ex[:, None] > 0) & np.isfinite(lanes).all(-1)
  return {"lanes": np.nan_to_num(lanes), "lane_valid": valid.astype(np.float32), "lane_exists": ex}


def lane_span(visible: np.ndarray, exists: np.ndarray) -> np.ndarray:
  """(4, 33) uint8: the LANE_X points a line is trained on, every point up to its farthest visible one (lines
  with >= 2 visible points). Visible points are dashes with gaps and never the metres below the image; the
  daemon publishes every point, and an unsupervised one is whatever the lane head outputs there."""
  seen = (np.asarray(visible) > 0) & (np.asarray(exists)[:, None] > 0)
  span = np.zeros(seen.shape, np.uint8)
  for k in np.flatnonzero(seen.sum(1) >= 2):
    span[k, :np.flatnonzero(seen[k])[-1] + 1] = 1
  return span


def fill_lanes(lanes: np.ndarray, visible: np.ndarray, exists: np.ndarray) -> np.ndarray:
  """Pseudo-label lanes (values only at visible points) completed over lane_span: unlabelled points interpolated
  along x between labelled neighbours, held at the nearest label below the first one (straight over those metres)."""
  out = np.nan_to_num(np.asarray(lanes, np.float32)).copy()
  seen = (np.asarray(visible) > 0) & (np.asarray(exists)[:, None] > 0)
  for k in np.flatnonzero(lane_span(visible, exists).any(1)):
    last = np.flatnonzero(seen[k])[-1]
    for c in range(out.shape[-1]):
      out[k, :last + 1, c] = np.interp(LANE_X[:last + 1], LANE_X[seen[k]], out[k, seen[k], c])
  return out


def ego_target(ego: np.ndarray) -> dict[str, np.ndarray]:
  """ego (6,) device-frame trans (m/s), rot (rad/s)."""
  e = np.asarray(ego, np.float32).reshape(6)
  if not np.isfinite(e).all():
    raise ValueError(f"ego must be finite, got {e}")
  return {"ego": e}


def sample_targets(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """All targets that a raw sample supports: depth map -> "depth"; semantic -> "seg"; probs -> "seg_probs";
  boxes (box_xyxy, box_cls, box_depth) -> obj_*; lanes / lane_visible / lane_exists -> lane targets; ego."""
  out: dict[str, np.ndarray] = {}
  if "depth" in s:
    out["depth"] = depth_grid(s["depth"])
  if "semantic" in s:
    out["seg"] = seg_grid(s["semantic"])
  if "probs" in s:
    out["seg_probs"] = probs_grid(s["probs"])
  if "box_xyxy" in s:
    out.update(centernet_targets(s["box_xyxy"], s["box_cls"], s["box_depth"]))
  if "lanes" in s:
    out.update(lane_targets(s["lanes"], s["lane_visible"], s["lane_exists"]))
  if "ego" in s:
    out.update(ego_target(s["ego"]))
  return out

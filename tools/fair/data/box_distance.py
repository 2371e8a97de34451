"""The distance of an object seen only as a 2-D box: from a depth map, or from where the box meets the road.

Both give metres along the optical axis of the calibrated model frame (rpy 0), the unit of the student's
object depth target. Boxes are x0, y0, x1, y1 with pixel centres at integers (edges at -0.5 .. size - 0.5).
"""
from __future__ import annotations

import math

import numpy as np

from selfdrive.modeld_fair.camera import CameraModel

MIN_BELOW_HORIZON = 1.0   # px: a box bottom closer to the horizon row has no usable ground contact


def depth_in_box(boxes: np.ndarray, depth: np.ndarray) -> np.ndarray:
  """(K,) float32: the median known depth (finite, > 0) over each box's central half (its corners mostly see
  what is behind or beside the object); NaN where that holds no known depth. boxes (K, 4) are in the
  pixels of `depth` (H, W)."""
  h, w = depth.shape
  out = np.full(len(boxes), np.nan, np.float32)
  for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
    if not np.isfinite([x0, y0, x1, y1]).all():
      continue
    # pixel centres inside the central half (at least one pixel for tiny boxes)
    u0 = min(max(math.ceil((3 * x0 + x1) / 4), 0), w - 1)
    v0 = min(max(math.ceil((3 * y0 + y1) / 4), 0), h - 1)
    u1 = max(min(math.floor((x0 + 3 * x1) / 4), w - 1), u0)
    v1 = max(min(math.floor((y0 + 3 * y1) / 4), h - 1), v0)
    d = depth[v0:v1 + 1, u0:u1 + 1]
    d = d[np.isfinite(d) & (d > 0)]
    if d.size:
      out[k] = np.median(d)
  return out


def ground_contact_depth(boxes: np.ndarray, camera: CameraModel, height: float) -> np.ndarray:
  """(K,) float32: the depth of each box's bottom edge as a point of the flat road `height` m below the camera,
  d = height * f / (y1 - cy); NaN where the bottom is not MIN_BELOW_HORIZON px below the horizon row cy.
  boxes (K, 4) are in `camera` pixels. Flat-road assumption: grades, crests and boxes cut by the frame's
  bottom edge (whose contact is hidden) put the distance off."""
  y1 = np.asarray(boxes, np.float64).reshape(-1, 4)[:, 3]
  below = y1 - camera.cy
  with np.errstate(invalid="ignore", divide="ignore"):
    d = np.where(below >= MIN_BELOW_HORIZON, height * camera.focal / below, np.nan)
  return d.astype(np.float32)

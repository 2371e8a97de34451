"""Lane line metrics: image-space lane F1 (TuSimple / CULane-like) and road-frame lateral error."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class LaneCounts:
  """Lane detection counts; add the counts of several frames with `+` and read precision/recall/F1."""
  tp: int
  n_pred: int
  n_gt: int

  def __add__(self, other: LaneCounts) -> LaneCounts:
    return LaneCounts(self.tp + other.tp, self.n_pred + other.n_pred, self.n_gt + other.n_gt)

  @property
  def precision(self) -> float:
    return self.tp / self.n_pred if self.n_pred else float("nan")

  @property
  def recall(self) -> float:
    return self.tp / self.n_gt if self.n_gt else float("nan")

  @property
  def f1(self) -> float:
    """2 TP / (n_pred + n_gt); NaN when there are no lanes at all."""
    return 2 * self.tp / (self.n_pred + self.n_gt) if self.n_pred + self.n_gt else float("nan")


def _interp_or_nan(q, x, y) -> np.ndarray:
  """y(q) by linear interpolation of the polyline (x, y) sorted by x; NaN where q is outside its x range."""
  order = np.argsort(x, kind="stable")
  x, y = x[order], y[order]
  q = np.asarray(q, np.float64)
  return np.where((q >= x[0]) & (q <= x[-1]), np.interp(q, x, y), np.nan)


def _lane(points, name: str) -> np.ndarray:
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2 or not len(points):
    raise ValueError(f"{name} must be a non-empty (K, 2) array of (x, y) points, got shape {points.shape}")
  return points


def lane_point_accuracy(pred_lane, gt_lane, tol_px: float = 20.0) -> float:
  """Fraction of gt lane points hit by the predicted lane (lanes are (K, 2) arrays of (x, y) pixels).

  For each gt point (x*, y*) the predicted lane's x at row y* is linearly interpolated between its
  points (sorted by row); the gt point is hit if |x - x*| <= tol_px, missed if the predicted lane does
  not span row y*. Lanes are assumed to cross each image row at most once, as in TuSimple and CULane.
  """
  pred, gt = _lane(pred_lane, "pred lane"), _lane(gt_lane, "gt lane")
  x = _interp_or_nan(gt[:, 1], pred[:, 1], pred[:, 0])
  return float(np.mean(np.abs(x - gt[:, 0]) <= tol_px))


def lane_counts(pred_lanes: Sequence, gt_lanes: Sequence, tol_px: float = 20.0, min_frac: float = 0.85) -> LaneCounts:
  """True positives and lane counts of one frame, for lane F1.

  A predicted and a gt lane can match when lane_point_accuracy(pred, gt, tol_px) >= min_frac (TuSimple's
  lane-level 85 % at a 20 px tolerance on a 1280x720 image by default). Lanes are paired one-to-one by a
  maximum bipartite matching over those admissible pairs; matched pairs are true positives, unmatched
  predictions false positives and unmatched gt lanes false negatives.
  """
  ok = np.array([[lane_point_accuracy(p, g, tol_px) >= min_frac for g in gt_lanes] for p in pred_lanes], bool)
  tp = int(ok[linear_sum_assignment(ok.astype(float), maximize=True)].sum()) if ok.size else 0
  return LaneCounts(tp=tp, n_pred=len(pred_lanes), n_gt=len(gt_lanes))


def lateral_error(pred, gt, distances: Sequence[float] = (10.0, 20.0, 40.0)) -> np.ndarray:
  """|y_pred(x) - y_gt(x)| (metres) at each forward distance x in `distances` (metres).

  `pred` and `gt` are road-frame polylines, (N, 3) points (x forward, y right, z down; z unused); y at
  distance x is linearly interpolated between the points sorted by x. NaN where either polyline does
  not reach that distance (x outside its range).
  """
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  for name, p in (("pred", pred), ("gt", gt)):
    if p.ndim != 2 or p.shape[1] != 3 or not len(p):
      raise ValueError(f"{name} must be a non-empty (N, 3) road-frame polyline, got shape {p.shape}")
  return np.abs(_interp_or_nan(distances, pred[:, 0], pred[:, 1]) - _interp_or_nan(distances, gt[:, 0], gt[:, 1]))

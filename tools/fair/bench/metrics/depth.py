"""Monocular depth metrics of Eigen et al. (2014), evaluated the way the KITTI depth benchmarks do."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics._common import same_shape, valid_mask


@dataclass(frozen=True)
class DepthMetrics:
  """Errors of predicted depth d against ground truth d* over the n_valid evaluated pixels."""
  abs_rel: float   # mean |d - d*| / d*                        (unitless)
  sq_rel: float    # mean (d - d*)^2 / d*                      (metres)
  rmse: float      # sqrt(mean (d - d*)^2)                     (metres)
  rmse_log: float  # sqrt(mean (ln d - ln d*)^2)               (unitless)
  delta1: float    # fraction with max(d / d*, d* / d) < 1.25
  delta2: float    # ... < 1.25^2
  delta3: float    # ... < 1.25^3
  n_valid: int


def depth_metrics(pred, gt, valid=None, max_depth: float = 80.0, min_depth: float = 1e-3,
                  align: str | None = None) -> DepthMetrics:
  """Eigen depth metrics of `pred` against `gt` (same-shape depth maps, metres).

  Evaluated pixels: gt finite and in (min_depth, max_depth], pred finite, and `valid` (optional
  boolean mask) true. Over those pixels the prediction is first aligned to gt:
    align=None:     used as is (metric depth);
    align="median": scaled by median(gt) / median(pred) (scale-ambiguous monocular depth);
    align="lstsq":  replaced by s * pred + t, with (s, t) the least-squares fit to gt (affine-invariant
                    depth);
  and then clipped to [min_depth, max_depth], the standard KITTI evaluation practice (Eigen split,
  monodepth2). With no evaluated pixel every metric is NaN and n_valid is 0.
  """
  if align not in (None, "median", "lstsq"):
    raise ValueError(f"align must be None, 'median' or 'lstsq', got {align!r}")
  pred, gt = same_shape(pred, gt)
  m = valid_mask(valid, gt.shape) & np.isfinite(gt) & np.isfinite(pred) & (gt > min_depth) & (gt <= max_depth)
  d, g = pred[m].astype(np.float64), gt[m].astype(np.float64)
  if not g.size:
    return DepthMetrics(*[float("nan")] * 7, n_valid=0)
  if align == "median":
    d = d * (np.median(g) / np.median(d))
  elif align == "lstsq":
    s, t = np.linalg.lstsq(np.stack([d, np.ones_like(d)], axis=1), g, rcond=None)[0]
    d = s * d + t
  d = np.clip(d, min_depth, max_depth)
  ratio = np.maximum(d / g, g / d)
  sq = (d - g) ** 2
  return DepthMetrics(
    abs_rel=float(np.mean(np.abs(d - g) / g)),
    sq_rel=float(np.mean(sq / g)),
    rmse=float(np.sqrt(np.mean(sq))),
    rmse_log=float(np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2))),
    delta1=float(np.mean(ratio < 1.25)),
    delta2=float(np.mean(ratio < 1.25 ** 2)),
    delta3=float(np.mean(ratio < 1.25 ** 3)),
    n_valid=int(g.size),
  )

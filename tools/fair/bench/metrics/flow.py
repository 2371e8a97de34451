"""Optical flow metrics: end-point error and the KITTI 2015 Fl outlier rate."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics._common import mean_or_nan, same_shape, valid_mask


@dataclass(frozen=True)
class FlowMetrics:
  epe: float     # mean end-point error ||f - f*|| over valid pixels (pixels)
  fl_all: float  # fraction of valid pixels that are outliers (KITTI reports it x 100, as %)
  n_valid: int


def flow_metrics(pred, gt, valid=None) -> FlowMetrics:
  """EPE and Fl-all of a predicted flow field `pred` against `gt`, both (H, W, 2) (u, v) in pixels.

  Valid pixels: `valid` (optional (H, W) boolean mask, e.g. KITTI's sparse gt) and both flows finite.
  A pixel is an outlier (KITTI 2015) if its EPE > 3 px and > 5 % of the gt flow magnitude. With no
  valid pixel both metrics are NaN and n_valid is 0.
  """
  pred, gt = same_shape(pred, gt)
  if gt.ndim != 3 or gt.shape[-1] != 2:
    raise ValueError(f"flow must be (H, W, 2), got shape {gt.shape}")
  m = valid_mask(valid, gt.shape[:2]) & np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)
  epe = np.linalg.norm(pred[m] - gt[m], axis=-1)
  outlier = (epe > 3.0) & (epe > 0.05 * np.linalg.norm(gt[m], axis=-1))
  return FlowMetrics(epe=mean_or_nan(epe), fl_all=mean_or_nan(outlier), n_valid=int(m.sum()))

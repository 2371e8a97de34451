"""Semantic segmentation metrics from a confusion matrix (accumulate frames by adding matrices)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics._common import same_shape


@dataclass(frozen=True)
class SegmentationMetrics:
  iou: np.ndarray        # (K,) per-class IoU; NaN for a class absent from both gt and prediction
  miou: float            # NaN-mean of iou
  pixel_accuracy: float  # fraction of counted pixels whose predicted class is the gt class


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int = 255) -> np.ndarray:
  """(num_classes, num_classes) int64 pixel counts: entry [i, j] = pixels of gt class i predicted j.

  `pred` and `gt` are same-shape integer label maps. Pixels whose gt is `ignore_index` are skipped; any
  other label outside [0, num_classes) raises ValueError. Row = gt, column = prediction, as in
  sklearn.metrics.confusion_matrix; matrices of several frames add up to the matrix of all of them.
  """
  pred, gt = same_shape(pred, gt)
  keep = gt != ignore_index
  p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
  for name, x in (("pred", p), ("gt", g)):
    if x.size and (x.min() < 0 or x.max() >= num_classes):
      raise ValueError(f"{name} labels must lie in [0, {num_classes}) where gt != {ignore_index}, "
                       f"got values in [{x.min()}, {x.max()}]")
  return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(conf) -> SegmentationMetrics:
  """Per-class IoU = TP / (TP + FP + FN), its NaN-mean (mIoU) and pixel accuracy, from a confusion matrix.

  A class that appears in neither gt nor prediction has IoU NaN and does not count in mIoU; one that
  appears in only one of them has IoU 0. Pixel accuracy is trace / total (NaN for an empty matrix).
  """
  conf = np.asarray(conf, np.float64)
  if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
    raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = tp.sum() / conf.sum()
  miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
  return SegmentationMetrics(iou=iou, miou=miou, pixel_accuracy=float(acc))

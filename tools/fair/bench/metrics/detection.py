"""Object detection metrics: COCO-style average precision, and the error of the lead car's distance."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics._common import mean_or_nan, same_shape

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)    # COCOeval iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval recThrs


@dataclass(frozen=True)
class DetectionAP:
  ap: float                        # AP@[.5:.95] averaged over the classes that have gt boxes
  ap50: float                      # AP at IoU 0.5, same average
  per_class_ap: dict[int, float]   # every class in gt or predictions; NaN for a class without gt boxes
  per_class_ap50: dict[int, float]
  per_class_pr50: dict[int, np.ndarray]  # interpolated precision at RECALL_THRESHOLDS, IoU 0.5 (classes with gt)


@dataclass(frozen=True)
class LeadDistanceError:
  mean_abs: float    # mean |pred - gt| (metres)
  median_abs: float  # median |pred - gt| (metres)
  rmse: float        # sqrt(mean (pred - gt)^2) (metres)
  mean_rel: float    # mean |pred - gt| / gt (fraction)
  median_rel: float  # median |pred - gt| / gt (fraction)
  n: int             # pairs evaluated


def box_iou(a, b) -> np.ndarray:
  """(len(a), len(b)) IoU of xyxy boxes (pixels), areas (x2 - x1) * (y2 - y1) without COCO's old +1."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
  h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
  inter = np.clip(w, 0, None) * np.clip(h, 0, None)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _greedy_matches(iou: np.ndarray) -> np.ndarray:
  """(T, D) whether each detection (rows of iou, best score first) matches a gt box at each threshold.

  As COCOeval: a detection takes the still-unmatched gt box of highest IoU >= threshold (the last such
  box on ties).
  """
  matched = np.zeros((len(IOU_THRESHOLDS), iou.shape[0]), bool)
  for ti, thr in enumerate(IOU_THRESHOLDS):
    free = np.ones(iou.shape[1], bool)
    for d, row in enumerate(iou):
      cand = np.where(free & (row >= min(thr, 1 - 1e-10)), row, -1.0)[::-1]
      if cand.size and cand.max() >= 0:
        free[cand.size - 1 - np.argmax(cand)] = False
        matched[ti, d] = True
  return matched


def _precision_at_recalls(scores: np.ndarray, matched: np.ndarray, n_gt: int) -> np.ndarray:
  """(T, 101) interpolated precision at RECALL_THRESHOLDS, computed as COCOeval.accumulate does."""
  order = np.argsort(-scores, kind="mergesort")
  tp = np.cumsum(matched[:, order], axis=1).astype(float)
  fp = np.cumsum(~matched[:, order], axis=1).astype(float)
  recall = tp / n_gt
  precision = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
  return np.stack([np.append(p, 0.0)[np.searchsorted(r, RECALL_THRESHOLDS, side="left")]
                   for p, r in zip(precision, recall)])


def detection_ap(gts: Sequence, preds: Sequence, max_dets: int = 100) -> DetectionAP:
  """COCO bbox AP@[.5:.95] and AP50, per class and averaged, matching pycocotools' COCOeval.

  gts[i] = (boxes (N, 4) xyxy pixels, classes (N,)) and preds[i] = (boxes (M, 4), classes (M,),
  scores (M,)) for image i. Per image and class the detections are sorted by score (stable) and the
  first `max_dets` kept; each then greedily takes the unmatched gt box of highest IoU >= t (IoU without
  +1, see box_iou). Over all images, precision is made monotone and read at recall 0, 0.01, ..., 1
  (101-point interpolation, 0 beyond the reached recall) and averaged: over the 10 IoU thresholds
  0.5:0.05:0.95 for AP, at t = 0.5 for AP50. This equals COCOeval with areaRng "all", maxDets=100 and no
  crowd boxes. The means run over the classes with at least one gt box (COCO skips the others).
  """
  if len(gts) != len(preds):
    raise ValueError(f"gts has {len(gts)} images but preds has {len(preds)}")
  gts = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(c).reshape(-1)) for b, c in gts]
  preds = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(c).reshape(-1),
            np.asarray(s, np.float64).reshape(-1)) for b, c, s in preds]
  for i, ((gb, gc), (pb, pc, ps)) in enumerate(zip(gts, preds)):
    if len(gb) != len(gc) or not len(pb) == len(pc) == len(ps):
      raise ValueError(f"image {i}: {len(gb)} gt boxes / {len(gc)} classes, "
                       f"{len(pb)} predicted boxes / {len(pc)} classes / {len(ps)} scores")
  classes = sorted({int(c) for _, gc in gts for c in gc} | {int(c) for _, pc, _ in preds for c in pc})
  ap, ap50, pr50 = {}, {}, {}
  for c in classes:
    scores, matched, n_gt = [], [], 0
    for (gb, gc), (pb, pc, ps) in zip(gts, preds):
      sel = np.flatnonzero(pc == c)
      sel = sel[np.argsort(-ps[sel], kind="mergesort")][:max_dets]
      g = gb[gc == c]
      n_gt += len(g)
      scores.append(ps[sel])
      matched.append(_greedy_matches(box_iou(pb[sel], g)))
    if n_gt:
      prec = _precision_at_recalls(np.concatenate(scores), np.concatenate(matched, axis=1), n_gt)
      ap[c], ap50[c], pr50[c] = float(prec.mean()), float(prec[0].mean()), prec[0]
    else:
      ap[c] = ap50[c] = float("nan")
  finite = lambda d: [v for v in d.values() if not np.isnan(v)]
  return DetectionAP(ap=mean_or_nan(finite(ap)), ap50=mean_or_nan(finite(ap50)), per_class_ap=ap, per_class_ap50=ap50,
                     per_class_pr50=pr50)


def lead_distance_error(pred_dist, gt_dist) -> LeadDistanceError:
  """Error statistics of predicted lead-vehicle distances (metres) against gt, pair by pair.

  Pairs where either distance is non-finite (NaN = no lead) or gt <= 0 are skipped; relative error is
  |pred - gt| / gt. With no pair left every statistic is NaN and n is 0.
  """
  pred, gt = same_shape(np.asarray(pred_dist, np.float64), np.asarray(gt_dist, np.float64))
  keep = np.isfinite(pred) & np.isfinite(gt) & (gt > 0)
  err = np.abs(pred[keep] - gt[keep])
  rel = err / gt[keep]
  median = lambda x: float(np.median(x)) if x.size else float("nan")
  return LeadDistanceError(mean_abs=mean_or_nan(err), median_abs=median(err),
                           rmse=float(np.sqrt(mean_or_nan(err ** 2))), mean_rel=mean_or_nan(rel),
                           median_rel=median(rel), n=int(err.size))

"""Tracking metrics: TAP-Vid point tracking (Doersch et al. 2022) and DAVIS mask tracking J&F."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.fair.bench.metrics._common import mean_or_nan, same_shape

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels, in the 256x256 evaluation raster


@dataclass(frozen=True)
class TapVidMetrics:
  occlusion_accuracy: float           # fraction of evaluated points whose predicted occlusion flag is right
  pts_within: dict[int, float]        # threshold (px) -> fraction of gt-visible points predicted within it
  delta_avg: float                    # mean of pts_within over TAPVID_THRESHOLDS (TAP-Vid's < delta^x_avg)
  jaccard: dict[int, float]           # threshold (px) -> TP / (TP + FP + FN)
  average_jaccard: float              # mean of jaccard over TAPVID_THRESHOLDS (AJ)


@dataclass(frozen=True)
class JFMetrics:
  j: float                # mean region IoU over frames
  f: float                # mean boundary F-measure over frames
  jf: float               # (j + f) / 2
  j_per_frame: np.ndarray
  f_per_frame: np.ndarray


def tapvid_metrics(pred_tracks, pred_occluded, gt_tracks, gt_occluded, query_frames=None,
                   query_mode: str = "first", scale=1.0) -> TapVidMetrics:
  """TAP-Vid metrics of one video, with the semantics of tapnet's `compute_tapvid_metrics`.

  Tracks are (N, T, 2) (x, y) pixel positions of N points over T frames, occlusion flags (N, T) bools.
  Positions are multiplied by `scale` (a float or (sx, sy)) first: TAP-Vid evaluates in a 256x256
  raster, so pass scale=(256 / W, 256 / H) for tracks in a W x H image. Evaluated (point, frame)
  pairs: all when `query_frames` (N,) is None; otherwise, for query_mode "first", the frames after each
  point's query frame, and for "strided", all frames but the query frame. Over evaluated pairs, with
  "within" meaning a Euclidean distance strictly below the threshold:
    occlusion accuracy = fraction with pred_occluded == gt_occluded;
    pts_within[d]      = fraction of gt-visible pairs predicted within d (predicted occlusion ignored);
    jaccard[d]         = TP / (#gt-visible + FP), TP = gt-visible, predicted visible and within d,
                         FP = predicted visible and (gt occluded or not within d) (= TP / (TP + FN + FP)).
  Ratios with an empty denominator are NaN. Average over videos as TAP-Vid does (per video, then mean).
  """
  pred_tracks, gt_tracks = same_shape(pred_tracks, gt_tracks, ("pred_tracks", "gt_tracks"))
  pred_occ, gt_occ = same_shape(np.asarray(pred_occluded, bool), np.asarray(gt_occluded, bool),
                                ("pred_occluded", "gt_occluded"))
  if gt_tracks.shape != gt_occ.shape + (2,):
    raise ValueError(f"tracks shape {gt_tracks.shape} must be occlusion shape {gt_occ.shape} + (2,)")
  if query_mode not in ("first", "strided"):
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
  evaluated = np.ones(gt_occ.shape, bool)
  if query_frames is not None:
    q = np.round(np.asarray(query_frames)).astype(int).reshape(-1, 1)
    if len(q) != gt_occ.shape[0]:
      raise ValueError(f"query_frames has {len(q)} entries for {gt_occ.shape[0]} points")
    t = np.arange(gt_occ.shape[1])
    evaluated = t > q if query_mode == "first" else t != q
  count = lambda x: int(np.sum(x & evaluated))
  div = lambda a, b: a / b if b else float("nan")
  dist2 = np.sum(((pred_tracks - gt_tracks) * np.asarray(scale, np.float64)) ** 2, axis=-1)
  visible, pred_visible = ~gt_occ, ~pred_occ
  within = {d: dist2 < d ** 2 for d in TAPVID_THRESHOLDS}
  pts_within = {d: div(count(w & visible), count(visible)) for d, w in within.items()}
  # a visible point predicted visible but too far is both a false negative and a false positive
  jaccard = {d: div(count(w & visible & pred_visible), count(visible) + count(pred_visible & (gt_occ | ~w)))
             for d, w in within.items()}
  return TapVidMetrics(occlusion_accuracy=div(count(pred_occ == gt_occ), count(True)), pts_within=pts_within,
                       delta_avg=float(np.mean(list(pts_within.values()))), jaccard=jaccard,
                       average_jaccard=float(np.mean(list(jaccard.values()))))


def region_iou(pred, gt) -> float:
  """DAVIS region similarity J = |pred & gt| / |pred | gt| of two boolean masks; 1 when both are empty."""
  pred, gt = same_shape(np.asarray(pred, bool), np.asarray(gt, bool))
  union = np.sum(pred | gt)
  return float(np.sum(pred & gt) / union) if union else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
  """Inner boundary: mask pixels with a 4-neighbour outside the mask (the image border is not a boundary)."""
  return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f(pred, gt, bound_th: float = 0.008) -> float:
  """DAVIS contour accuracy F of two boolean (H, W) masks.

  Boundaries are the masks' inner boundaries (mask minus its erosion by the 3x3 cross). A boundary
  pixel of one mask matches if a boundary pixel of the other lies within r pixels (dilation by a disk
  x^2 + y^2 <= r^2), r = ceil(bound_th * sqrt(H^2 + W^2)) for bound_th < 1, else r = bound_th pixels.
  Precision = matched pred boundary / pred boundary, recall = matched gt boundary / gt boundary,
  F = 2PR / (P + R); with DAVIS's conventions for empty boundaries (both empty: F = 1; one empty: F = 0).
  """
  pred, gt = same_shape(np.asarray(pred, bool), np.asarray(gt, bool))
  if pred.ndim != 2:
    raise ValueError(f"masks must be (H, W), got shape {pred.shape}")
  r = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(*pred.shape)))
  y, x = np.ogrid[-r:r + 1, -r:r + 1]
  disk = x * x + y * y <= r * r
  bp, bg = _boundary(pred), _boundary(gt)
  n_p, n_g = bp.sum(), bg.sum()
  if not n_p or not n_g:
    return float(n_p == n_g)
  precision = np.sum(bp & ndimage.binary_dilation(bg, disk)) / n_p
  recall = np.sum(bg & ndimage.binary_dilation(bp, disk)) / n_g
  return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def j_and_f(pred_masks, gt_masks, bound_th: float = 0.008) -> JFMetrics:
  """DAVIS J&F of a (T, H, W) boolean mask sequence for one object: per-frame region_iou and boundary_f,
  averaged over frames (DAVIS semi-supervised evaluation leaves out the first and last frames: slice
  them off before calling)."""
  pred_masks, gt_masks = same_shape(pred_masks, gt_masks)
  j = np.array([region_iou(p, g) for p, g in zip(pred_masks, gt_masks)])
  f = np.array([boundary_f(p, g, bound_th) for p, g in zip(pred_masks, gt_masks)])
  return JFMetrics(j=mean_or_nan(j), f=mean_or_nan(f), jf=(mean_or_nan(j) + mean_or_nan(f)) / 2,
                   j_per_frame=j, f_per_frame=f)

"""Multi-object tracking identity metrics (ID switches, IDF1, MOTA) through py-motmetrics, boxes matched by IoU."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.fair.bench.metrics.detection import box_iou


@dataclass(frozen=True)
class MOTMetrics:
  idf1: float          # identity F1 (Ristani et al. 2016)
  id_switches: int     # CLEAR-MOT identity switches
  mota: float
  frames: int


def mot_metrics(frames, iou_threshold: float = 0.5) -> MOTMetrics:
  """Identity metrics of one sequence. frames: per frame (gt_ids, gt_boxes, pred_ids, pred_boxes), boxes xyxy px;
  a pair can match when its IoU >= iou_threshold (distance 1 - IoU; py-motmetrics's own iou_matrix needs numpy < 2)."""
  import motmetrics as mm
  acc = mm.MOTAccumulator(auto_id=True)
  for gt_ids, gt_boxes, pred_ids, pred_boxes in frames:
    d = 1.0 - box_iou(gt_boxes, pred_boxes)
    d[d > 1.0 - iou_threshold] = np.nan
    acc.update(list(gt_ids), list(pred_ids), d)
  s = mm.metrics.create().compute(acc, metrics=["idf1", "num_switches", "mota", "num_frames"], name="seq")
  return MOTMetrics(idf1=float(s["idf1"].iloc[0]), id_switches=int(s["num_switches"].iloc[0]),
                    mota=float(s["mota"].iloc[0]), frames=int(s["num_frames"].iloc[0]))

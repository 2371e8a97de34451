"""`fair val`: every head of a student scored against the simulator's ground truth, per head and per distance.

One scoring module for every report: `Scores` accumulates frames (depth, classes, detections, lead, lanes,
ego-motion) and `Scores.result()` gives the flat metrics dict that `fair val`, the transfer experiment
(tools/fair/experiments/evaluate.py) and its tables read. Metrics come from tools.fair.bench.metrics.

`fair val MODEL SEGMENTS...` replays each simulated segment through the daemon's own code path (as
`fair replay`), reads the published FairModelOutput messages back from the rlog, and scores every
`--stride`-th frame against ground truth rendered in the model frame and reduced to the student's grids
as the training targets are (tools.fair.data): depth AbsRel / δ1 / RMSE overall and by ground-truth
distance band; IoU per class and mIoU; COCO AP / AP50 per class and by distance band (of the objects the
daemon publishes, score >= 0.3, so the PR curve is cut there); the lead (nearest vehicle within 1.8 m of
the ego's path) detection rate and distance error; lane F1 and lateral error at 10 / 20 / 40 m; ego speed
and yaw-rate error. Writes OUT/val.md, OUT/val.json, OUT/confusion.png, OUT/error_vs_distance.png and, with detections,
OUT/pr_curves.png (per class, IoU 0.5).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from selfdrive.modeld_fair.model_io import LANE_X, OBJECT_SEMANTIC_IDS
from tools.fair.bench.metrics import (confusion_matrix, depth_metrics, detection_ap, lane_counts, lateral_error,
                                      lead_distance_error, segmentation_metrics)
from tools.fair.bench.metrics.detection import RECALL_THRESHOLDS
from tools.fair.bench.metrics.lanes import LaneCounts
from tools.fair.files import atomic_write

LATERAL_AT = (10.0, 20.0, 40.0)                          # m ahead where lateral lane error is read
BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))  # distance bands (m) of depth and detection
LEAD_HALF_WIDTH_M = 1.8                                  # |lateral| of a lead: inside the ego's lane
VEHICLE_ID = OBJECT_SEMANTIC_IDS[0]
EGO_LANE_AT_M = 20.0                                     # both ego-lane lines are checked this far ahead
GOAL_RANGE_M = 80.0                                      # vehicle AP50 of the goals: objects nearer than this


def band_name(band: tuple[float, float]) -> str:
  return f"{band[0]:g}-{band[1]:g} m"


class Scores:
  """Running sums of every metric family over evaluated frames."""

  def __init__(self):
    self.depth_pred, self.depth_gt = [], []
    self.conf = np.zeros((len(SEMANTIC_CLASSES),) * 2, np.int64)
    self.det_gt, self.det_pred = [], []              # per frame: (boxes, semantic ids[, dist]) / (boxes, ids, scores[, dist])
    self.lanes = LaneCounts(0, 0, 0)
    self.lateral: list[np.ndarray] = []
    self.lead_gt: list[float] = []                   # per frame with a true lead: its distance
    self.lead_pred: list[float] = []                 # the predicted lead distance there (NaN: none found)
    self.false_leads = 0                             # frames with a predicted lead and no true one
    self.ego_err: list[np.ndarray] = []              # |pred - gt| of (speed m/s, yaw rate rad/s)
    self.ego_speed: list[float] = []                 # |true speed| (m/s), for the relative speed error
    self.ego_lane: list[bool] = []                   # per frame with both true ego-lane lines: both found at 20 m
    self.n = 0

  def depth(self, pred: np.ndarray, gt: np.ndarray) -> None:
    keep = gt > 0
    self.depth_pred.append(pred[keep])
    self.depth_gt.append(gt[keep])

  def seg(self, pred: np.ndarray, gt: np.ndarray) -> None:
    self.conf += confusion_matrix(pred, gt, len(SEMANTIC_CLASSES))

  def detections(self, gt_boxes: np.ndarray, gt_ids: np.ndarray, boxes: np.ndarray, ids: np.ndarray,
                 scores: np.ndarray, gt_dist: np.ndarray | None = None, dist: np.ndarray | None = None) -> None:
    """One frame's boxes (xyxy model px, semantic ids); distances (m ahead) enable the per-band AP."""
    self.det_gt.append((np.asarray(gt_boxes, np.float64).reshape(-1, 4), np.asarray(gt_ids), gt_dist))
    self.det_pred.append((np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(ids), np.asarray(scores), dist))

  def lead(self, gt_dist: float | None, pred_dist: float | None) -> None:
    if gt_dist is not None:
      self.lead_gt.append(gt_dist)
      self.lead_pred.append(np.nan if pred_dist is None else pred_dist)
    elif pred_dist is not None:
      self.false_leads += 1

  def ego(self, pred: np.ndarray, gt: np.ndarray) -> None:
    """Device-frame (trans, rot) 6-vectors: speed = trans[0], yaw rate = rot[2]."""
    self.ego_err.append(np.abs(np.array([pred[0] - gt[0], pred[5] - gt[5]], np.float64)))
    self.ego_speed.append(abs(float(gt[0])))

  def lane_frame(self, pred: np.ndarray, prob: np.ndarray, gt: np.ndarray, valid: np.ndarray, exists: np.ndarray,
                 tol_m: float) -> None:
    """One frame's lanes: pred (4, 33, >=2) y, z at LANE_X with prob (4,); gt (4, 33, 2), valid (4, 33), exists (4,).
    Top view (lateral, forward) points, so that a line is found when >= 85 % of its visible points lie within
    tol_m laterally."""
    x = LANE_X.astype(np.float64)
    has_pred = prob > 0.5
    has_gt = (exists > 0.5) & ((valid > 0.5).sum(1) >= 2)
    preds = [np.stack([pred[k, :, 0], x], 1) for k in np.flatnonzero(has_pred)]
    gts = [np.stack([gt[k, valid[k] > 0.5, 0], x[valid[k] > 0.5]], 1) for k in np.flatnonzero(has_gt)]
    self.lanes = self.lanes + lane_counts(preds, gts, tol_px=tol_m)
    road = lambda xs, ys: np.stack([xs, ys, np.zeros_like(xs)], 1)
    err = {}
    for k in np.flatnonzero(has_pred & has_gt):
      v = valid[k] > 0.5
      err[k] = lateral_error(road(x, pred[k, :, 0]), road(x[v], gt[k, v, 0]), LATERAL_AT)
      self.lateral.append(err[k])
    # the ego lane's goal: both its lines (slots 1, 2) within tol_m at EGO_LANE_AT_M where both truly reach it
    ego = (1, 2)
    if all(has_gt[k] and x[valid[k] > 0.5].min() <= EGO_LANE_AT_M <= x[valid[k] > 0.5].max() for k in ego):
      at = LATERAL_AT.index(EGO_LANE_AT_M)
      self.ego_lane.append(all(k in err and err[k][at] <= tol_m for k in ego))

  def _ap(self, band: tuple[float, float] | None = None) -> dict:
    gts, preds = [], []
    for (gb, gi, gd), (pb, pi, ps, pd) in zip(self.det_gt, self.det_pred):
      if band is not None:
        if gd is None or pd is None:
          return {}
        g, p = (gd >= band[0]) & (gd < band[1]), (pd >= band[0]) & (pd < band[1])
        gb, gi, pb, pi, ps = gb[g], gi[g], pb[p], pi[p], ps[p]
      gts.append((gb, gi))
      preds.append((pb, pi, ps))
    if not any(len(g[1]) for g in gts):
      return {}
    a = detection_ap(gts, preds)
    return {"ap": a.ap, "ap50": a.ap50,
            "per_class": {SEMANTIC_CLASSES[c]: float(v) for c, v in a.per_class_ap.items() if np.isfinite(v)},
            "pr50": {SEMANTIC_CLASSES[c]: p.tolist() for c, p in a.per_class_pr50.items()},
            "per_class_ap50": {SEMANTIC_CLASSES[c]: float(v) for c, v in a.per_class_ap50.items() if np.isfinite(v)}}

  def result(self, max_depth: float = 80.0) -> dict:
    """The flat metrics dict: depth_*, miou / iou, det_ap / det_ap50 (+ det_per_class, det_by_distance), lane_*,
    lead_*, ego_*; a family without data is left out."""
    out: dict = {"frames": self.n}
    if self.depth_gt:
      pred, gt = np.concatenate(self.depth_pred), np.concatenate(self.depth_gt)
      d = depth_metrics(pred, gt, max_depth=max_depth)
      out |= {"depth_abs_rel": d.abs_rel, "depth_delta1": d.delta1, "depth_rmse": d.rmse, "depth_cells": d.n_valid}
      bands = {}
      for b in BANDS:
        m = (gt >= b[0]) & (gt < b[1])
        if m.any():
          db = depth_metrics(pred[m], gt[m], max_depth=b[1])
          bands[band_name(b)] = {"abs_rel": db.abs_rel, "delta1": db.delta1, "rmse": db.rmse, "cells": db.n_valid}
      out["depth_by_distance"] = bands
    if self.conf.any():
      s = segmentation_metrics(self.conf)
      out |= {"miou": s.miou, "pixel_accuracy": s.pixel_accuracy,
              "iou": {c: float(v) for c, v in zip(SEMANTIC_CLASSES, s.iou)}}
    if self.det_gt and (ap := self._ap()):
      out |= {"det_ap": ap["ap"], "det_ap50": ap["ap50"], "det_per_class": ap["per_class"], "det_pr50": ap["pr50"],
              "det_per_class_ap50": ap["per_class_ap50"],
              "det_by_distance": {band_name(b): r for b in BANDS if (r := self._ap(b))}}
      if near := self._ap((0.0, GOAL_RANGE_M)):
        out["det_vehicle_ap50_80m"] = near["per_class_ap50"].get(SEMANTIC_CLASSES[VEHICLE_ID], float("nan"))
    if self.lanes.n_gt + self.lanes.n_pred:
      lat = np.array(self.lateral).reshape(-1, len(LATERAL_AT))
      with np.errstate(all="ignore"):
        per = np.nanmean(lat, 0) if lat.size else np.full(len(LATERAL_AT), np.nan)
      out |= {"lane_f1": self.lanes.f1, "lane_precision": self.lanes.precision, "lane_recall": self.lanes.recall,
              **{f"lane_lat_err_{int(x)}m": float(v) for x, v in zip(LATERAL_AT, per)}}
    if self.ego_lane:
      out |= {"ego_lane_frames": len(self.ego_lane), "ego_lane_20m_rate": float(np.mean(self.ego_lane))}
    if self.lead_gt:
      gt, pred = np.array(self.lead_gt), np.array(self.lead_pred)
      found = np.isfinite(pred)
      out |= {"lead_frames": int(len(gt)), "lead_detection_rate": float(found.mean()), "lead_false": self.false_leads}
      if found.any():
        e = lead_distance_error(pred[found], gt[found])
        out |= {"lead_dist_mae_m": e.mean_abs, "lead_dist_rel": e.mean_rel, "lead_dist_median_rel": e.median_rel}
    if self.ego_err:
      e = np.array(self.ego_err)
      out |= {"ego_speed_mae": float(e[:, 0].mean()), "ego_yaw_rate_mae": float(e[:, 1].mean()),
              "ego_speed_rel": float(e[:, 0].sum() / max(sum(self.ego_speed), 1e-6))}
    return out


def lead_of(dist: np.ndarray, lateral: np.ndarray, ids: np.ndarray) -> float | None:
  """Forward distance of the nearest vehicle ahead inside the ego's lane, None when there is none."""
  m = (ids == VEHICLE_ID) & (dist > 0) & (np.abs(lateral) < LEAD_HALF_WIDTH_M) & np.isfinite(dist)
  return float(dist[m].min()) if m.any() else None


# ---------------------------------------------------------------- segments

def score_segment(scores: Scores, segment, outputs, stride: int = 10, lane_tol_m: float = 0.5) -> None:
  """Add every stride-th of a simulated segment's published outputs (FairOutput, frame_id = scene frame)."""
  from selfdrive.modeld_fair.camera import MEDMODEL
  from tools.fair.data.cache import frame_ground_truth
  from tools.fair.data.targets import sample_targets
  from tools.fair.sim.gt import load_segment_scene
  scene = load_segment_scene(segment)
  for out in outputs[::stride]:
    if not out.valid:
      continue
    g = frame_ground_truth(scene, out.frame_id, MEDMODEL, 1.0, instance=False)
    t = sample_targets({k: v for k, v in g.items() if k in ("depth", "semantic", "lanes", "lane_visible",
                                                              "lane_exists", "ego")})
    scores.n += 1
    scores.depth(np.where(np.isfinite(out.depth), out.depth, 0), t["depth"][0])
    scores.seg(out.segmentation, t["seg"])
    n = int(g["box_count"])
    gt_ids = np.asarray(OBJECT_SEMANTIC_IDS)[g["box_cls"][:n].astype(np.int64)]
    gt_pos = g["box_pos"][:n].astype(np.float64)
    objs = out.objects
    pos = np.array([o.position for o in objs], np.float64).reshape(-1, 3)
    ids = np.array([o.class_id for o in objs], np.int64)
    scores.detections(g["box_xyxy"][:n], gt_ids, [o.box for o in objs], ids, [o.score for o in objs],
                      gt_dist=gt_pos[:, 0], dist=pos[:, 0])
    scores.lead(lead_of(gt_pos[:, 0], gt_pos[:, 1], gt_ids), lead_of(pos[:, 0], pos[:, 1], ids))
    lanes = np.stack([np.stack([ln.y, ln.z], 1) for ln in out.lanes.lines])
    scores.lane_frame(lanes, np.array([ln.prob for ln in out.lanes.lines]), t["lanes"], t["lane_valid"],
                      t["lane_exists"], lane_tol_m)
    e = out.ego_motion
    scores.ego(np.concatenate([e.trans, e.rot]), t["ego"])


def resolve_model(path: Path) -> Path:
  """The ONNX of MODEL_OR_RUN: a .onnx file, a model folder with student.onnx, or a run folder holding one ONNX."""
  if path.is_file() and path.suffix == ".onnx":
    return path
  if (path / "student.onnx").is_file():
    return path / "student.onnx"
  found = sorted(path.rglob("*.onnx")) if path.is_dir() else []
  if len(found) == 1:
    return found[0]
  raise FileNotFoundError(f"{path}: expected a .onnx, a model folder with student.onnx or a run folder with one "
                          f"exported ONNX (found {len(found)}); export a training run with `fair export`")


def validate(model: Path, segments: list[Path], *, stride: int = 10, max_frames: int | None = None) -> dict:
  """Metrics of the model on the segments: {"all": ..., "<segment name>": ...} (module doc)."""
  from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
  from tools.fair.replay import replay_segment
  from tools.fair.replay_ref import rlog_outputs
  runner = OnnxRuntimeRunner(resolve_model(model))
  total, per = Scores(), {}
  for seg in segments:
    if not (Path(seg) / "scene.json").is_file():
      raise FileNotFoundError(f"{seg}: no scene.json: fair val needs simulated segments (ground truth)")
    with tempfile.TemporaryDirectory(prefix="fair-val-") as tmp:
      replay_segment(seg, tmp, runner, max_frames=max_frames, video=False, progress=False)
      outputs = rlog_outputs(Path(tmp) / "rlog.zst")
    one = Scores()
    for s in (total, one):
      score_segment(s, seg, outputs, stride)
    per[Path(seg).name] = one.result()
  return {"model_id": runner.model_id, "all": total.result(), **per, "_confusion": total.conf.tolist()}


# ---------------------------------------------------------------- tables and plots

def _f(v, fmt="{:.3f}") -> str:
  return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def tables(r: dict) -> str:
  """Markdown tables of one result dict (Scores.result)."""
  out = [f"frames scored: {r['frames']}", ""]
  if "depth_abs_rel" in r:
    out += ["| depth | AbsRel | δ1 | RMSE (m) | cells |", "| --- | ---: | ---: | ---: | ---: |",
            f"| all (<= 80 m) | {_f(r['depth_abs_rel'])} | {_f(r['depth_delta1'])} | {_f(r['depth_rmse'], '{:.2f}')} | "
            f"{r['depth_cells']} |"]
    out += [f"| {b} | {_f(m['abs_rel'])} | {_f(m['delta1'])} | {_f(m['rmse'], '{:.2f}')} | {m['cells']} |"
            for b, m in r["depth_by_distance"].items()] + [""]
  if "miou" in r:
    out += ["| class | IoU |", "| --- | ---: |"] + [f"| {c} | {_f(v)} |" for c, v in r["iou"].items()]
    out += [f"| **mIoU** | {_f(r['miou'])} |", ""]
  if "det_ap" in r:
    out += ["| detection | AP | AP50 | " + " | ".join(f"AP {c}" for c in r["det_per_class"]) + " |",
            "| --- | ---: | ---: |" + " ---: |" * len(r["det_per_class"])]
    for name, a in [("all", {"ap": r["det_ap"], "ap50": r["det_ap50"], "per_class": r["det_per_class"]}),
                    *r["det_by_distance"].items()]:
      out.append(f"| {name} | {_f(a['ap'])} | {_f(a['ap50'])} | " +
                 " | ".join(_f(a["per_class"].get(c)) for c in r["det_per_class"]) + " |")
    if "det_vehicle_ap50_80m" in r:
      out.append(f"vehicle AP50 within {GOAL_RANGE_M:g} m: {_f(r['det_vehicle_ap50_80m'])}")
    out.append("")
  if "lead_frames" in r:
    out += ["| lead | frames with a lead | detection rate | distance MAE (m) | rel. error | median rel. error | "
            "false leads |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| | {r['lead_frames']} | {_f(r['lead_detection_rate'])} | {_f(r.get('lead_dist_mae_m'), '{:.2f}')} | "
            f"{_f(r.get('lead_dist_rel'))} | {_f(r.get('lead_dist_median_rel'))} | {r['lead_false']} |", ""]
  if "lane_f1" in r:
    out += ["| lanes | F1 | precision | recall | lat. err 10 m | 20 m | 40 m |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| | {_f(r['lane_f1'])} | {_f(r['lane_precision'])} | {_f(r['lane_recall'])} | " +
            " | ".join(_f(r[f"lane_lat_err_{int(x)}m"], "{:.2f}") for x in LATERAL_AT) + " |", ""]
    if "ego_lane_20m_rate" in r:
      out += [f"both ego-lane lines within 0.5 m at {EGO_LANE_AT_M:g} m: {_f(r['ego_lane_20m_rate'])} of "
              f"{r['ego_lane_frames']} frames", ""]
  if "ego_speed_mae" in r:
    out += ["| ego | speed MAE (m/s) | speed rel. error | yaw-rate MAE (rad/s) |", "| --- | ---: | ---: | ---: |",
            f"| | {_f(r['ego_speed_mae'], '{:.2f}')} | {_f(r['ego_speed_rel'])} | {_f(r['ego_yaw_rate_mae'], '{:.4f}')} |",
            ""]
  return "\n".join(out)


def plots(result: dict, out_dir: Path) -> None:
  """confusion.png (row-normalised, log colour scale) and error_vs_distance.png (depth AbsRel, detection AP50)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import LogNorm
  conf = np.array(result["_confusion"], np.float64)
  norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(6, 5))
  im = ax.imshow(np.maximum(norm, 1e-4), norm=LogNorm(1e-4, 1), cmap="viridis")
  ax.set_xticks(range(len(SEMANTIC_CLASSES)), SEMANTIC_CLASSES, rotation=45, ha="right")
  ax.set_yticks(range(len(SEMANTIC_CLASSES)), SEMANTIC_CLASSES)
  ax.set_xlabel("predicted")
  ax.set_ylabel("ground truth")
  fig.colorbar(im, label="fraction of the true class")
  fig.tight_layout()
  fig.savefig(out_dir / "confusion.png", dpi=100)
  plt.close(fig)
  r = result["all"]
  fig, ax = plt.subplots(figsize=(6, 4))
  centres = [np.mean(b) for b in BANDS]
  for name, key, sub in (("depth AbsRel", "depth_by_distance", "abs_rel"), ("detection AP50", "det_by_distance",
                                                                            "ap50")):
    vals = [r.get(key, {}).get(band_name(b), {}).get(sub, np.nan) for b in BANDS]
    ax.plot(centres, vals, "o-", label=name)
  ax.set_xlabel("ground-truth distance (m, band centre)")
  ax.set_xticks(centres, [band_name(b) for b in BANDS])
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_dir / "error_vs_distance.png", dpi=100)
  plt.close(fig)
  if r.get("det_pr50"):
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, prec in r["det_pr50"].items():
      ax.plot(RECALL_THRESHOLDS, prec, label=name)
    ax.set(xlabel="recall", ylabel="precision (interpolated)", xlim=(0, 1), ylim=(0, 1.02), title="PR at IoU 0.5")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "pr_curves.png", dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("model", type=Path, help="a .onnx, a model folder (student.onnx) or a run folder with one ONNX")
  p.add_argument("segments", type=Path, nargs="+", help="simulated segment folders (with scene.json)")
  p.add_argument("--out", type=Path, required=True, help="folder for val.md, val.json and the plots")
  p.add_argument("--stride", type=int, default=10, help="score every N-th frame (ground truth is rendered)")
  p.add_argument("--max-frames", type=int, default=None, help="replay at most this many frames per segment")


def run(args: argparse.Namespace) -> int:
  if args.stride < 1:
    raise ValueError(f"--stride must be >= 1, got {args.stride}")
  result = validate(args.model, args.segments, stride=args.stride, max_frames=args.max_frames)
  args.out.mkdir(parents=True, exist_ok=True)
  text = f"# fair val: `{result['model_id']}`\n\n" + "\n".join(
    f"## {name}\n\n{tables(r)}" for name, r in result.items() if isinstance(r, dict))
  atomic_write(args.out / "val.md", text)
  atomic_write(args.out / "val.json", json.dumps(result, indent=2, default=float) + "\n")
  plots(result, args.out)
  print(text)
  return 0

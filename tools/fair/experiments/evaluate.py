"""Held-out evaluation of teachers and students at the student's output grids, and the comparison table.

All maps are compared where the student predicts them, with the targets built as the data side builds them
(tools.fair.data.targets): depth at the 32x64 grid (per-cell lower median of known depth; cells without
enough known depth are skipped), classes at 64x128 (per-cell majority). A teacher's full-resolution map is
reduced by the same function as the ground truth, so teacher and student face the same targets.

Scoring is tools.fair.val.Scores (the one scoring module, also behind `fair val`): depth AbsRel / δ1 pooled
over all valid cells of all frames (ground truth up to max_depth, KITTI's 80 m by default); mIoU from the summed confusion matrix; detection COCO AP of
the student's decoded objects (selfdrive/modeld_fair/outputs.decode_objects, MEDMODEL pixels) against the
ground-truth 2D boxes; lanes in the road frame (top view): a lane line is found when >= 85 % of its visible
ground-truth points lie within lane_tol_m laterally of the predicted line (metrics.lane_counts with forward
distance as the "row"), F1 over the 4 line slots, and the lateral error at 10 / 20 / 40 m of each slot whose
line exists in both.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from selfdrive.modeld_fair.model_io import OBJECT_SEMANTIC_IDS
from selfdrive.modeld_fair.outputs import decode_objects
from tools.fair.data.targets import depth_grid, seg_grid
from tools.fair.val import Scores, lead_of

DAEMON_SCORE = inspect.signature(decode_objects).parameters["score_threshold"].default

# sample i -> (N, 4) xyxy MEDMODEL px, (N,) semantic ids, (N, 3) road-frame centres (NaN: unknown)
BoxesFn = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def dataset_boxes(dataset) -> BoxesFn | None:
  """Ground-truth boxes of a tools.fair.data StudentDataset's items from its frame cache (None without them)."""
  cache = getattr(dataset, "cache", None)
  if cache is None or not hasattr(dataset, "indices"):
    return None

  def boxes(i: int):
    rec = int(dataset.indices[i])
    if "box_xyxy" not in cache.fields(rec):
      return None
    r = cache.read(rec, ["box_xyxy", "box_cls", "box_count", "box_pos"])
    n = int(r["box_count"])
    cls = np.asarray(r["box_cls"][:n], np.int64)
    return (np.asarray(r["box_xyxy"][:n], np.float64), np.asarray(OBJECT_SEMANTIC_IDS)[cls],
            np.asarray(r["box_pos"][:n], np.float64))

  return boxes


def _runner(model_or_onnx) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """(B, 12, 128, 256) uint8 -> dict of (B, ...) float32 outputs, for a torch Student or an ONNX path."""
  if isinstance(model_or_onnx, torch.nn.Module):
    model = model_or_onnx.eval()

    def run(img):
      with torch.inference_mode():
        return {k: v.float().numpy() for k, v in model(torch.from_numpy(img)).items()}
    return run
  from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
  runner = OnnxRuntimeRunner(Path(model_or_onnx), threads=os.cpu_count() or 1)

  def run_onnx(img):   # the exported graph has batch 1
    outs = [runner.run(x[None]) for x in img]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  return run_onnx


def evaluate_student(model_or_onnx, dataset, boxes: BoxesFn | None = None, batch: int = 16,
                     score_threshold: float = 0.05, max_depth: float = 80.0, lane_tol_m: float = 0.5) -> dict:
  """Metrics of a student (torch Student or .onnx path) on a dataset of batch-contract items (held out, no
  augmentation). Each task is scored on the items that have its targets; boxes(i) gives item i's ground-truth
  boxes (default: dataset_boxes(dataset)); detection is skipped without them. Returns a flat dict (see
  tools.fair.val.Scores.result): depth_abs_rel, depth_delta1, miou, iou, det_ap, det_ap50, lane_f1, lane_lat_err_*m."""
  run = _runner(model_or_onnx)
  boxes = boxes or dataset_boxes(dataset)
  acc = Scores()
  for start in range(0, len(dataset), batch):
    items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
    out = run(np.stack([np.asarray(it["img"], np.uint8) for it in items]))
    for j, it in enumerate(items):
      it = {k: np.asarray(v) for k, v in it.items()}
      acc.n += 1
      if "depth" in it:
        acc.depth(out["depth"][j, 0], it["depth"][0])
      if "seg" in it:
        acc.seg(out["seg_logits"][j].argmax(0), it["seg"])
      gt_boxes = boxes(start + j) if boxes is not None else None
      if gt_boxes is not None:
        gb, gi, gp = gt_boxes
        objs = decode_objects(out["obj_heatmap"][j], out["obj_box"][j], out["obj_depth"][j, 0],
                              score_threshold=score_threshold, max_objects=100)
        pos = np.array([o.position for o in objs], np.float64).reshape(-1, 3)
        ids = np.array([o.class_id for o in objs], np.int64)
        acc.detections(gb, gi, [o.box for o in objs], ids, [o.score for o in objs], gt_dist=gp[:, 0], dist=pos[:, 0])
        # the lead as the daemon publishes it: objects at the decode threshold of the daemon (outputs.py)
        shown = np.array([o.score >= DAEMON_SCORE for o in objs], bool)
        acc.lead(lead_of(gp[:, 0], gp[:, 1], gi), lead_of(pos[shown, 0], pos[shown, 1], ids[shown]))
      if "ego" in it:
        acc.ego(out["ego"][j, :6], it["ego"])
      if "lanes" in it:
        acc.lane_frame(out["lanes"][j], out["lane_prob"][j], it["lanes"], it["lane_valid"], it["lane_exists"],
                       lane_tol_m)
  return acc.result(max_depth)


def evaluate_teachers(frames: np.ndarray, depth: np.ndarray | None = None, semantic: np.ndarray | None = None,
                      depth_teacher=None, seg_teacher=None, batch: int = 16, max_depth: float = 80.0) -> dict:
  """Metrics of a depth teacher (DepthMaps) and/or a segmentation teacher (SemanticMaps) on
  held-out uint8 RGB model frames (N, H, W, 3) with ground truth depth (N, H, W) metres (0 / inf = unknown)
  and semantic (N, H, W), both teacher maps and ground truth reduced to the student's grids."""
  results = {}
  for name, teacher, gt in (("depth", depth_teacher, depth), ("seg", seg_teacher, semantic)):
    if teacher is None:
      continue
    if gt is None or len(gt) != len(frames):
      raise ValueError(f"{name} teacher given without {len(frames)} ground-truth maps")
    acc = Scores()
    for start in range(0, len(frames), batch):
      out = teacher(frames[start:start + batch])
      for j in range(len(out.depth if name == "depth" else out.semantic)):
        g = gt[start + j]
        acc.n += 1
        if name == "depth":
          acc.depth(depth_grid(out.depth[j])[0], depth_grid(np.where(np.isfinite(g), g, 0))[0])
        else:
          acc.seg(seg_grid(out.semantic[j]), seg_grid(g))
    results[name] = acc.result(max_depth)
  return results


def teacher_size(teacher, frame: np.ndarray) -> dict:
  """Parameters and GFLOPs (torch's FlopCounterMode, 2 per multiply-accumulate, as students/stats.py) of one
  teacher call on one uint8 (H, W, 3) frame of its input."""
  net = getattr(teacher, "model", None) or teacher.net
  with FlopCounterMode(display=False) as fc:
    teacher(frame[None])
  return {"params": sum(p.numel() for p in net.parameters()), "gflops": fc.get_total_flops() / 1e9}


def student_size(model: torch.nn.Module) -> dict:
  """Parameters and GFLOPs of a Student at the model_io input (tools/fair/students/stats.py)."""
  from tools.fair.students.stats import model_stats
  s = model_stats(model)
  return {"params": s.params, "gflops": s.gflops}


_COLUMNS = (("depth_abs_rel", "AbsRel", "{:.3f}"), ("depth_delta1", "δ1", "{:.3f}"), ("miou", "mIoU", "{:.3f}"),
            ("det_ap", "AP", "{:.3f}"), ("det_ap50", "AP50", "{:.3f}"), ("lane_f1", "Lane F1", "{:.3f}"),
            ("lane_lat_err_20m", "Lat. err 20 m (m)", "{:.2f}"))


def comparison_table(rows: dict[str, dict], reference: Sequence[str] | None = None) -> str:
  """A markdown table: one row per model (name -> its metrics dict plus "params" and "gflops"), with the
  compression against the summed params / GFLOPs of the `reference` rows (default: names starting with
  "teacher"). Missing metrics show as "–"."""
  reference = [n for n in rows if n.startswith("teacher")] if reference is None else list(reference)
  ref_p = sum(rows[n].get("params", 0) for n in reference)
  ref_f = sum(rows[n].get("gflops", 0.0) for n in reference)
  head = ["Model", "Params (M)", "GFLOPs", "Compression (params / FLOPs)"] + [c[1] for c in _COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  fmt = lambda v, f: "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f.format(v)
  for name, r in rows.items():
    p, g = r.get("params"), r.get("gflops")
    comp = (f"{ref_p / p:.1f}x / {ref_f / g:.1f}x" if p and g and ref_p and ref_f and name not in reference else "–")
    cells = [name, fmt(p / 1e6 if p else None, "{:.2f}"), fmt(g, "{:.2f}"), comp]
    lines.append("| " + " | ".join(cells + [fmt(r.get(k), f) for k, _, f in _COLUMNS]) + " |")
  return "\n".join(lines) + "\n"


def write_table(path, rows: dict[str, dict], title: str = "", reference: Sequence[str] | None = None) -> Path:
  """Write comparison_table (under an optional markdown title) to `path` atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.partial")
  tmp.write_text((f"# {title}\n\n" if title else "") + comparison_table(rows, reference))
  tmp.replace(path)
  return path

"""Decode the student's raw output tensors (model_io.OUTPUTS) into the FairOutput the daemon publishes.

numpy only and cheap (~0.15 ms per frame on a PC core): the heavy activations already run inside the model.
Call `check_finite` first: decode_outputs assumes finite tensors.
"""
from __future__ import annotations

import numpy as np

from cereal_ext.fair import EgoMotion, FairObject, FairOutput, LaneLine, Lanes
from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.model_io import LANE_X, OBJECT_SEMANTIC_IDS, OBJECT_STRIDE, OUTPUT_NAMES, OUTPUTS

# exp() of a log std is clipped to this exponent range so that the stds stay finite and > 0 (encodable)
LOG_STD_RANGE = (-20.0, 20.0)
_BOX_MAX = np.array([[MEDMODEL.width - 0.5], [MEDMODEL.height - 0.5]] * 2)  # x0, y0, x1, y1 upper bounds


def check_shapes(raw: dict[str, np.ndarray]) -> None:
  """ValueError naming the first model_io output that is missing or not of its contract shape."""
  for name in OUTPUT_NAMES:
    if name not in raw:
      raise ValueError(f"model output {name!r} missing")
    if np.shape(raw[name]) != OUTPUTS[name][0]:
      raise ValueError(f"model output {name!r}: shape {np.shape(raw[name])}, expected {OUTPUTS[name][0]}")


def check_finite(raw: dict[str, np.ndarray]) -> str | None:
  """Name of the first output (model_io order) holding NaN or inf, or None if all are finite.

  The daemon then publishes invalid_reason "nonFiniteOutput" with this name as invalid_detail.
  """
  for name in OUTPUT_NAMES:
    if not np.isfinite(raw[name]).all():
      return name
  return None


def _std(log_std: np.ndarray) -> np.ndarray:
  return np.exp(np.clip(log_std, *LOG_STD_RANGE)).astype(np.float32)


def _argmax0(x: np.ndarray) -> np.ndarray:
  """np.argmax(x, axis=0).astype(np.uint8) for finite x (first maximum wins), ~10x faster: numpy's argmax
  over a leading axis runs cell by cell, this makes a few whole-plane passes instead."""
  below = (x != x.max(axis=0)).view(np.uint8)  # 1 where a channel is not its cell's maximum
  run = below[0]  # 1 while every channel so far is below the maximum
  idx = run.copy()  # so idx counts the leading channels below the maximum: the first maximum's index
  for k in range(1, len(x) - 1):
    run &= below[k]
    idx += run
  return idx


def decode_objects(heatmap: np.ndarray, box: np.ndarray, depth: np.ndarray, *, score_threshold: float = 0.3,
                   max_objects: int = 16) -> list[FairObject]:
  """Objects from the (C, H, W) heatmap, (4, H, W) box and (H, W) depth grids (batch dropped).

  A detection is a cell that is the maximum of its 3x3 neighbourhood in its class channel with a score
  >= score_threshold; the best max_objects across classes are kept, highest score first (ties: class,
  row, column order). Its 2D box extends obj_box's left, top, right, bottom distances from the cell
  centre (clipped to the frame); its position is the road point below the 3D centre, which lies on the
  cell centre's ray at obj_depth. The road is taken as flat, so the camera height does not enter.
  """
  # 3x3 neighbourhood maximum, separable (rows, then columns); border cells see their in-frame neighbours only
  rows = heatmap.copy()
  np.maximum(rows[:, :, 1:], heatmap[:, :, :-1], out=rows[:, :, 1:])
  np.maximum(rows[:, :, :-1], heatmap[:, :, 1:], out=rows[:, :, :-1])
  nbr = rows.copy()
  np.maximum(nbr[:, 1:], rows[:, :-1], out=nbr[:, 1:])
  np.maximum(nbr[:, :-1], rows[:, 1:], out=nbr[:, :-1])
  flat = heatmap.ravel()
  idx = np.flatnonzero((heatmap >= nbr) & (heatmap >= score_threshold))  # plateaus: every tied cell is a peak
  idx = idx[np.argsort(-flat[idx], kind="stable")[:max_objects]]
  if len(idx) == 0:
    return []
  cls, row, col = np.unravel_index(idx, heatmap.shape)
  # cell centres in model-frame pixels (pixel centres are integers, a cell spans OBJECT_STRIDE pixels)
  centre = (np.stack([col, row]) + 0.5) * OBJECT_STRIDE - 0.5  # (u, v)
  edges = np.concatenate([centre - box[:2, row, col], centre + box[2:, row, col]])  # x0, y0, x1, y1
  x0, y0, x1, y1 = np.minimum(np.maximum(edges, -0.5), _BOX_MAX).tolist()  # clipped to the frame
  # depth is along the optical axis (calib x), so the centre in the calib frame is d * (1, (u - cx) / f, ...);
  # the road frame is the calib frame moved down to the road (x, y kept; z_road = z_calib - height), in which
  # the flat road's ground point below the centre is (x, y, 0)
  d = depth[row, col]
  y = d * (centre[0] - MEDMODEL.cx) / MEDMODEL.focal
  return [FairObject(class_id=OBJECT_SEMANTIC_IDS[k], score=s, box=b, position=(px, py, 0.0),
                     velocity=(0.0, 0.0, 0.0))  # no tracker yet
          for k, s, b, px, py in zip(cls.tolist(), flat[idx].tolist(), zip(x0, y0, x1, y1), d.tolist(), y.tolist())]


def decode_outputs(raw: dict[str, np.ndarray], *, score_threshold: float = 0.3, max_objects: int = 16) -> FairOutput:
  """The FairOutput outputs (depth, segmentation, objects, lanes, ego_motion) of one frame's raw tensors.

  raw: model_io output name -> array of its contract shape (ValueError naming the tensor otherwise).
  score_threshold, max_objects: see decode_objects. Metadata fields (frame ids, timing, model id / hash,
  invalid_reason) are left at their defaults: set them with dataclasses.replace.
  """
  check_shapes(raw)
  ego = np.asarray(raw["ego"][0], np.float64)
  ego_std = _std(ego[6:12]).tolist()
  lanes = raw["lanes"][0]
  # (lane, y/z, point) copies, so that each line's arrays are contiguous rows; one exp for all stds
  yz = np.array(lanes[:, :, :2].transpose(0, 2, 1), np.float32, order="C")
  yz_std = np.array(_std(lanes[:, :, 2:]).transpose(0, 2, 1), order="C")
  return FairOutput(
    depth=np.array(raw["depth"][0, 0], np.float32),  # a copy: runners may reuse their output buffers
    segmentation=_argmax0(raw["seg_logits"][0]),
    objects=decode_objects(raw["obj_heatmap"][0], raw["obj_box"][0], raw["obj_depth"][0, 0],
                           score_threshold=score_threshold, max_objects=max_objects),
    lanes=Lanes(lines=[LaneLine(prob=float(p), y=a[0], z=a[1], y_std=sd[0], z_std=sd[1])
                       for p, a, sd in zip(raw["lane_prob"][0].tolist(), yz, yz_std)], x=LANE_X.copy()),
    ego_motion=EgoMotion(trans=tuple(ego[0:3].tolist()), rot=tuple(ego[3:6].tolist()),
                         trans_std=tuple(ego_std[:3]), rot_std=tuple(ego_std[3:])),
  )

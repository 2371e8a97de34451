"""Decode the student's raw output tensors (model_io.OUTPUTS) into the FairOutput the daemon publishes.

numpy only and cheap (~0.4 ms per frame on a PC core): the heavy activations already run inside the model.
Call `check_finite` first: decode_outputs assumes finite tensors.
"""
from __future__ import annotations

import numpy as np

from cereal_ext.fair import EgoMotion, FairObject, FairOutput, LaneLine, Lanes
from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.model_io import LANE_X, OBJECT_SEMANTIC_IDS, OBJECT_STRIDE, OUTPUT_NAMES, OUTPUTS

# exp() of a log std is clipped to this exponent range so that the stds stay finite and > 0 (encodable)
LOG_STD_RANGE = (-20.0, 20.0)


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


def decode_objects(heatmap: np.ndarray, box: np.ndarray, depth: np.ndarray, *, score_threshold: float = 0.3,
                   max_objects: int = 16) -> list[FairObject]:
  """Objects from the (C, H, W) heatmap, (4, H, W) box and (H, W) depth grids (batch dropped).

  A detection is a cell that is the maximum of its 3x3 neighbourhood in its class channel with a score
  >= score_threshold; the best max_objects across classes are kept, highest score first (ties: class,
  row, column order). Its 2D box extends obj_box's left, top, right, bottom distances from the cell
  centre (clipped to the frame); its position is the road point below the 3D centre, which lies on the
  cell centre's ray at obj_depth. The road is taken as flat, so the camera height does not enter.
  """
  _, h, w = heatmap.shape
  pad = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  nbr = pad[:, :h, :w]
  for dy, dx in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)):
    nbr = np.maximum(nbr, pad[:, dy:dy + h, dx:dx + w])
  flat = heatmap.ravel()
  idx = np.flatnonzero((heatmap >= nbr) & (heatmap >= score_threshold))  # plateaus: every tied cell is a peak
  idx = idx[np.argsort(-flat[idx], kind="stable")[:max_objects]]
  if len(idx) == 0:
    return []
  cls, row, col = np.unravel_index(idx, heatmap.shape)
  # cell centres in model-frame pixels (pixel centres are integers, a cell spans OBJECT_STRIDE pixels)
  u = (col + 0.5) * OBJECT_STRIDE - 0.5
  v = (row + 0.5) * OBJECT_STRIDE - 0.5
  l, t, r, b = box[:, row, col]
  x0, x1 = np.clip(u - l, -0.5, MEDMODEL.width - 0.5), np.clip(u + r, -0.5, MEDMODEL.width - 0.5)
  y0, y1 = np.clip(v - t, -0.5, MEDMODEL.height - 0.5), np.clip(v + b, -0.5, MEDMODEL.height - 0.5)
  # depth is along the optical axis (calib x), so the centre in the calib frame is d * (1, (u - cx) / f, ...);
  # the road frame is the calib frame moved down to the road (x, y kept; z_road = z_calib - height), in which
  # the flat road's ground point below the centre is (x, y, 0)
  d = depth[row, col]
  x, y = d, d * (u - MEDMODEL.cx) / MEDMODEL.focal
  s = flat[idx]
  return [FairObject(class_id=OBJECT_SEMANTIC_IDS[k], score=float(s[i]),
                     box=(float(x0[i]), float(y0[i]), float(x1[i]), float(y1[i])),
                     position=(float(x[i]), float(y[i]), 0.0), velocity=(0.0, 0.0, 0.0))  # no tracker yet
          for i, k in enumerate(cls.tolist())]


def decode_outputs(raw: dict[str, np.ndarray], *, score_threshold: float = 0.3, max_objects: int = 16) -> FairOutput:
  """The FairOutput outputs (depth, segmentation, objects, lanes, ego_motion) of one frame's raw tensors.

  raw: model_io output name -> array of its contract shape (ValueError naming the tensor otherwise).
  score_threshold, max_objects: see decode_objects. Metadata fields (frame ids, timing, model id / hash,
  invalid_reason) are left at their defaults: set them with dataclasses.replace.
  """
  check_shapes(raw)
  lanes, ego = raw["lanes"][0], np.asarray(raw["ego"][0], np.float64)
  trans_std, rot_std = _std(ego[6:9]), _std(ego[9:12])
  return FairOutput(
    depth=np.array(raw["depth"][0, 0], np.float32),  # a copy: runners may reuse their output buffers
    segmentation=np.argmax(raw["seg_logits"][0], axis=0).astype(np.uint8),
    objects=decode_objects(raw["obj_heatmap"][0], raw["obj_box"][0], raw["obj_depth"][0, 0],
                           score_threshold=score_threshold, max_objects=max_objects),
    lanes=Lanes(lines=[LaneLine(prob=float(p), y=ln[:, 0].astype(np.float32), z=ln[:, 1].astype(np.float32),
                                y_std=_std(ln[:, 2]), z_std=_std(ln[:, 3]))
                       for p, ln in zip(raw["lane_prob"][0].tolist(), lanes)], x=LANE_X.copy()),
    ego_motion=EgoMotion(trans=tuple(ego[0:3].tolist()), rot=tuple(ego[3:6].tolist()),
                         trans_std=tuple(trans_std.tolist()), rot_std=tuple(rot_std.tolist())),
  )

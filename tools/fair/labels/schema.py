"""The label schema: per kind of label, the arrays a store shard holds, with dtype, per-frame shape, unit and frame.

LabelStore.write checks every shard against the kind its arrays name (`check`); StudentDataset checks, when it
is built, that each recipe teacher's shards in the store are of the kind its task reads (`check_entry`). A
mismatch is one ValueError line naming the teacher, the key and the expected dtype and shape.

Shapes are per frame (the shard's first axis, N frames, comes before them). Symbols: H, W the label camera's
height and width (ShardEntry.camera); any other letter is free (K objects, C channels or classes, h, w a
feature grid, Q track points).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from selfdrive.modeld_fair.model_io import N_LANE_POINTS, N_LANES


@dataclass(frozen=True)
class Field:
  """One array of a shard."""
  dtype: str
  shape: tuple[int | str, ...]    # per frame
  unit: str                       # what one value means
  required: bool = True


MODEL = "model frame pixels (the shard's camera)"
ROAD = "road frame: x forward, y right, z down, m, origin on the road below the camera"

SCHEMAS: dict[str, dict[str, Field]] = {
  "depth": {"depth": Field("float16", ("H", "W"), "m along the optical axis (0, inf: unknown)")},
  "features": {"features": Field("float16", ("C", "h", "w"), "teacher patch features"),
               "cls": Field("float16", ("C",), "teacher class token")},
  "semantic": {"semantic": Field("uint8", ("H", "W"), "semantic class id (255: ignore)"),
               "probs": Field("float16", ("C", "H", "W"), "class probabilities (soft labels)", required=False)},
  "panoptic": {"semantic": Field("uint8", ("H", "W"), "semantic class id (255: ignore)"),
               "instance": Field("int32", ("H", "W"), "instance id per frame (0: none)")},
  "detection": {"boxes": Field("float32", ("K", 4), f"x0, y0, x1, y1 in {MODEL} (NaN: padding)"),
                "scores": Field("float32", ("K",), "confidence 0..1"),
                "class_ids": Field("int16", ("K",), "index into metadata `classes` (-1: padding)"),
                "count": Field("int32", (), "boxes on the frame"),
                "positions": Field("float32", ("K", 3), f"box bottom centre, {ROAD} (NaN: no depth)")},
  "lanes": {"lanes": Field("float32", (N_LANES, N_LANE_POINTS, 2), f"y, z at model_io.LANE_X, {ROAD}"),
            "visible": Field("uint8", (N_LANES, N_LANE_POINTS), "0/1 the point is seen"),
            "exists": Field("uint8", (N_LANES,), "0/1 the slot has a line"),
            "init_frame": Field("int64", (), "frame the tracks started from", required=False)},
  "flow": {"flow": Field("float16", ("H", "W", 2), f"forward flow to the next frame, {MODEL}"),
           "occlusion": Field("uint8", ("H", "W"), "0/1 occluded in the next frame")},
  "tracks": {"points": Field("float32", ("Q", 2), f"x, y in {MODEL}"),
             "visible": Field("uint8", ("Q",), "0/1 visible")},
  "video": {"instance": Field("int32", ("H", "W"), "object id (0: none)"),
            "presence": Field("uint8", ("K",), "0/1 object present"),
            "scores": Field("float32", ("K",), "object score")},
  "ego": {"ego": Field("float32", (6,), "device-frame translation m/s (3), rotation rad/s (3)")},
}

# what each StudentDataset task reads
TASK_KINDS = {"depth": ("depth",), "seg": ("semantic", "panoptic"), "panoptic": ("panoptic",),
              "detection": ("detection",), "features": ("features",), "lanes": ("lanes",), "ego": ("ego",)}


def kind_of(names, where: str) -> str:
  """The schema kind whose required keys are all in `names` and whose fields hold every name; ValueError
  naming `where` otherwise."""
  names = set(names) - {"frame_id"}
  for kind, fields in SCHEMAS.items():
    if {k for k, f in fields.items() if f.required} <= names <= set(fields):
      return kind
  raise ValueError(f"{where}: arrays {sorted(names)} match no label schema (kinds: {', '.join(SCHEMAS)})")


def _expected(field: Field, height: int, width: int) -> tuple:
  return tuple(height if d == "H" else width if d == "W" else d for d in field.shape)


def _mismatch(kind: str, key: str, field: Field, dtype: str, shape: tuple, height: int, width: int) -> str | None:
  want = _expected(field, height, width)
  fits = len(shape) == len(want) and all(isinstance(w, str) or w == s for w, s in zip(want, shape))
  if dtype == field.dtype and fits:
    return None
  return (f"{kind} key {key!r} is {dtype} (N, {', '.join(map(str, shape))}), expected {field.dtype} "
          f"(N, {', '.join(map(str, want))})")


def check(arrays: Mapping[str, np.ndarray], height: int, width: int, where: str) -> str:
  """The kind of a shard's arrays (N frames first, "frame_id" allowed) in an H x W label camera; ValueError
  '{where}: ...' naming the key and the expected dtype and shape on the first mismatch."""
  kind = kind_of(arrays, where)
  for key, a in arrays.items():
    if key != "frame_id":
      msg = _mismatch(kind, key, SCHEMAS[kind][key], str(a.dtype), tuple(a.shape[1:]), height, width)
      if msg:
        raise ValueError(f"{where}: {msg}")
  return kind


def check_entry(entry, task: str) -> None:
  """ValueError when a store ShardEntry (its manifest `fields`) is not of a kind the dataset task reads."""
  where = f"label store teacher {entry.teacher!r} ({task}), {entry.file}"
  fields = {k: v for k, v in entry.fields.items() if k != "frame_id"}
  kind = kind_of(fields, where)
  if kind not in TASK_KINDS[task]:
    raise ValueError(f"{where}: holds {kind} labels, task {task!r} reads {' or '.join(TASK_KINDS[task])}")
  for key, (dtype, shape) in fields.items():
    msg = _mismatch(kind, key, SCHEMAS[kind][key], dtype, tuple(shape[1:]), entry.camera.height, entry.camera.width)
    if msg:
      raise ValueError(f"{where}: {msg}")

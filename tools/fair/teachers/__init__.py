"""Meta FAIR foundation models as teachers that pseudo-label openpilot routes (docs/teachers.md).

  load_teacher(name, weights_dir=None, device="cpu", dtype=None) -> a Teacher (see base.Teacher)
  teacher(frames)  uint8 RGB (B, H, W, 3) calibrated model frames -> typed outputs in that frame

Teachers: dinov2 / dinov3 (patch features), dpt-depth (metric depth), detr (driving-class detections),
detr-panoptic (our semantic classes + instances); depth_probe trains a linear depth head on features.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import torch

from tools.fair.teachers.base import (DepthMaps, Detections, FeatureMaps, FlowMaps, PanopticMaps, Segment,
                                      SemanticMaps, Teacher, TeacherInput, Tracks, VideoMasks, default_dtype)
from tools.fair.teachers.detr import DetrPanopticTeacher, DetrTeacher, DetrTeacherConfig
from tools.fair.teachers.dinov2 import DinoConfig, Dinov2Teacher, Dinov3Teacher
from tools.fair.teachers.dpt_depth import DptDepthConfig, DptDepthTeacher
from tools.fair.teachers.weights import HF_CACHE, WEIGHTS_ENV, MissingWeightsError, WeightsInfo, resolve_weights

# name -> "module:Class"; imported on first use so labelling with one family never pays for the others' imports
_REGISTRY = {
  "dinov2": "tools.fair.teachers.dinov2:Dinov2Teacher",
  "dinov3": "tools.fair.teachers.dinov2:Dinov3Teacher",
  "dpt-depth": "tools.fair.teachers.dpt_depth:DptDepthTeacher",
  "detr": "tools.fair.teachers.detr:DetrTeacher",
  "detr-panoptic": "tools.fair.teachers.detr:DetrPanopticTeacher",
  "sam2": "tools.fair.teachers.sam2:Sam2Teacher",
  "sam3": "tools.fair.teachers.sam3:Sam3Teacher",
  "flow": "tools.fair.teachers.flow:FlowTeacher",
  "dinov2-seg": "tools.fair.teachers.dinov2_seg:Dinov2SegTeacher",
  "cotracker": "tools.fair.teachers.cotracker:CoTrackerTeacher",
  "lk": "tools.fair.teachers.lk_tracker:LKTracker",
}


def teacher_class(name: str) -> type[Teacher]:
  """The teacher class registered as `name`; ValueError for unknown names."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown teacher {name!r} (known: {', '.join(_REGISTRY)})")
  module, cls = _REGISTRY[name].split(":")
  return getattr(importlib.import_module(module), cls)


class _Teachers(Mapping):
  """TEACHERS[name] -> class, importing lazily."""
  def __getitem__(self, name: str) -> type[Teacher]:
    if name not in _REGISTRY:
      raise KeyError(name)
    return teacher_class(name)

  def __iter__(self):
    return iter(_REGISTRY)

  def __len__(self) -> int:
    return len(_REGISTRY)


TEACHERS: Mapping[str, type[Teacher]] = _Teachers()


def load_teacher(name: str, weights_dir: str | Path | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None, config=None, model_id: str | None = None) -> Teacher:
  """Resolve teacher `name`'s weights (weights_dir/<name>, else $FAIR_WEIGHTS_DIR/<name>, else the offline
  Hugging Face cache under `model_id`, default the teacher's first official id) and load it on `device`.

  dtype None: bf16 (fp16 on GPUs without bf16) on GPU, fp32 on CPU. config: the teacher's config
  dataclass (DinoConfig, DptDepthConfig, DetrTeacherConfig), None for defaults. Raises
  MissingWeightsError naming the official ids and the exact path expected, ValueError for unknown names.
  """
  cls = teacher_class(name)
  # teachers whose official weights are not Hugging Face folders (e.g. a CoTracker .pth) resolve their own
  resolve = getattr(cls, "resolve_weights", None)
  weights = (resolve(weights_dir, model_id) if resolve else
             resolve_weights(name, cls.hf_ids, weights_dir, model_id, cls.hf_revision))
  return cls.load(weights, device, dtype, config)


__all__ = ["TEACHERS", "HF_CACHE", "WEIGHTS_ENV", "DepthMaps", "Detections", "FlowMaps", "SemanticMaps", "Tracks", "VideoMasks",
           "teacher_class", "DetrPanopticTeacher", "DetrTeacher",
           "DetrTeacherConfig", "DinoConfig", "Dinov2Teacher", "Dinov3Teacher", "DptDepthConfig", "DptDepthTeacher",
           "FeatureMaps", "MissingWeightsError", "PanopticMaps", "Segment", "Teacher", "TeacherInput", "WeightsInfo",
           "default_dtype", "load_teacher", "resolve_weights"]

"""Meta FAIR foundation models as teachers that pseudo-label openpilot routes (docs/teachers.md).

  load_teacher(name, weights_dir=None, device="cpu", dtype=None) -> a Teacher (see base.Teacher)
  teacher(frames)  uint8 RGB (B, H, W, 3) calibrated model frames -> typed outputs in that frame

Teachers: dinov2 / dinov3 (patch features), dpt-depth (metric depth), detr (driving-class detections),
detr-panoptic (our semantic classes + instances); depth_probe trains a linear depth head on features.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tools.fair.teachers.base import (DepthMaps, Detections, FeatureMaps, PanopticMaps, Segment, Teacher,
                                      TeacherInput, default_dtype)
from tools.fair.teachers.detr import DetrPanopticTeacher, DetrTeacher, DetrTeacherConfig
from tools.fair.teachers.dinov2 import DinoConfig, Dinov2Teacher, Dinov3Teacher
from tools.fair.teachers.dpt_depth import DptDepthConfig, DptDepthTeacher
from tools.fair.teachers.weights import HF_CACHE, WEIGHTS_ENV, MissingWeightsError, WeightsInfo, resolve_weights

TEACHERS: dict[str, type[Teacher]] = {
  t.name: t for t in (Dinov2Teacher, Dinov3Teacher, DptDepthTeacher, DetrTeacher, DetrPanopticTeacher)}


def load_teacher(name: str, weights_dir: str | Path | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None, config=None, model_id: str | None = None) -> Teacher:
  """Resolve teacher `name`'s weights (weights_dir/<name>, else $FAIR_WEIGHTS_DIR/<name>, else the offline
  Hugging Face cache under `model_id`, default the teacher's first official id) and load it on `device`.

  dtype None: bf16 (fp16 on GPUs without bf16) on GPU, fp32 on CPU. config: the teacher's config
  dataclass (DinoConfig, DptDepthConfig, DetrTeacherConfig), None for defaults. Raises
  MissingWeightsError naming the official ids and the exact path expected, ValueError for unknown names.
  """
  if name not in TEACHERS:
    raise ValueError(f"unknown teacher {name!r} (known: {', '.join(TEACHERS)})")
  cls = TEACHERS[name]
  weights = resolve_weights(name, cls.hf_ids, weights_dir, model_id, cls.hf_revision)
  return cls.load(weights, device, dtype, config)


__all__ = ["TEACHERS", "HF_CACHE", "WEIGHTS_ENV", "DepthMaps", "Detections", "DetrPanopticTeacher", "DetrTeacher",
           "DetrTeacherConfig", "DinoConfig", "Dinov2Teacher", "Dinov3Teacher", "DptDepthConfig", "DptDepthTeacher",
           "FeatureMaps", "MissingWeightsError", "PanopticMaps", "Segment", "Teacher", "TeacherInput", "WeightsInfo",
           "default_dtype", "load_teacher", "resolve_weights"]

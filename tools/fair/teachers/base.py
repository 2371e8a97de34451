"""The interface every teacher shares, and the typed outputs teachers return.

A teacher is a frozen foundation model wrapped so that labelling code never sees its preprocessing:
it eats uint8 RGB frames in the calibrated model frame (warp_rgb of a segment's frames, or the
simulator's render_frame with rpy 0) and returns numpy outputs in that same frame: maps at the
frame's resolution, boxes in its pixels (centres at integer coordinates, boxes spanning pixel edges
as in tools.fair.sim.gt), 3D points in the road frame (x forward, y right, z down, origin on the road
below the camera).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.teachers.weights import WeightsInfo


@dataclass(frozen=True)
class TeacherInput:
  """What a teacher's __call__ expects: uint8 RGB (B, H, W, 3) frames of `camera` (a calibrated model
  frame such as MEDMODEL or MEDMODEL.scaled(k)); clip > 1 means each sample is `clip` consecutive frames."""
  camera: CameraModel
  clip: int = 1


class Teacher(Protocol):
  """A loaded teacher. `load_teacher(name, ...)` resolves its weights and calls `load`."""
  name: ClassVar[str]                # registry key and weights sub-folder name
  tasks: ClassVar[tuple[str, ...]]   # what it labels: "features", "depth", "detection", "panoptic"
  hf_ids: ClassVar[tuple[str, ...]]  # official Hugging Face ids, the default first
  hf_revision: ClassVar[str]         # the revision of those repositories to use
  weights: WeightsInfo               # where the weights came from and their hash (record it with labels)

  @property
  def input(self) -> TeacherInput: ...

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config=None) -> Teacher: ...

  def __call__(self, frames: np.ndarray): ...


def default_dtype(device: str | torch.device) -> torch.dtype:
  """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (where half precision is slow, not fast)."""
  device = torch.device(device)
  if device.type != "cuda":
    return torch.float32
  return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True, eq=False)
class FeatureMaps:
  """Patch features of a ViT: grid cell (i, j) covers model-frame pixels whose centres lie in
  [j, j + 1) * camera.width / w - 0.5 horizontally (likewise vertically)."""
  features: np.ndarray   # (B, C, h, w) float32 patch tokens, after the backbone's final LayerNorm
  cls: np.ndarray        # (B, C) float32 class token, same normalisation
  layer: int             # transformer block the tokens come from (1..N)
  camera: CameraModel    # the model frame the grid spans


@dataclass(frozen=True, eq=False)
class DepthMaps:
  """Depth in metres along the model frame's optical axis (the road frame's x), > 0 and finite."""
  depth: np.ndarray      # (B, H, W) float32 at camera's resolution
  camera: CameraModel


@dataclass(frozen=True, eq=False)
class Detections:
  """One frame's detections, highest score first."""
  boxes: np.ndarray                  # (N, 4) float32 x0, y0, x1, y1 in model-frame pixels (pixel edges)
  scores: np.ndarray                 # (N,) float32 in (threshold, 1]
  classes: tuple[str, ...]           # driving class names (detr.DRIVING_CLASSES)
  coco_ids: np.ndarray               # (N,) int64 the checkpoint's label ids
  positions: np.ndarray | None       # (N, 3) float32 road-frame point below the box's bottom centre (m), or
                                     # None when no depth map was given; NaN rows where the box has no depth


@dataclass(frozen=True)
class Segment:
  """One panoptic segment: instance > 0 for vehicles and pedestrians (their id in the instance map)."""
  instance: int
  label: str     # the checkpoint's label name (COCO panoptic)
  cls: int       # classes.SEMANTIC_CLASSES index, or IGNORE_ID when the label has no class of ours
  score: float
  area: int      # model-frame pixels


@dataclass(frozen=True, eq=False)
class PanopticMaps:
  """Panoptic segmentation in the model frame."""
  semantic: np.ndarray               # (B, H, W) uint8 classes.SEMANTIC_CLASSES, IGNORE_ID = no class of ours
  instance: np.ndarray               # (B, H, W) int32 1..n per frame on vehicles / pedestrians, 0 elsewhere
  segments: list[tuple[Segment, ...]]
  camera: CameraModel


# Pair and video teachers. input.clip == 2: __call__ takes (B, 2, H, W, 3) frame pairs (t-1, t) and returns
# one result per pair; input.clip == 0: a video teacher, __call__ takes one clip (1, T, H, W, 3) of consecutive
# frames (streamed, in order) and returns per-frame results for its T frames.

@dataclass(frozen=True, eq=False)
class FlowMaps:
  """Forward optical flow from the first frame of each pair to the second, as tools.fair.sim.gt's flow."""
  flow: np.ndarray       # (B, H, W, 2) float32 model-frame pixels (dx, dy) a first-frame pixel moves by
  occlusion: np.ndarray  # (B, H, W) bool: the first-frame pixel is hidden or leaves the image in the second
  camera: CameraModel


@dataclass(frozen=True, eq=False)
class Tracks:
  """Point tracks through one clip: query point n is tracked over the clip's T frames."""
  points: np.ndarray     # (T, N, 2) float32 model-frame pixel x, y (pixel centres at integers)
  visible: np.ndarray    # (T, N) bool
  camera: CameraModel


@dataclass(frozen=True, eq=False)
class VideoMasks:
  """Objects segmented and tracked through one clip: object k keeps its id on every frame."""
  instance: np.ndarray          # (T, H, W) int32 object id (ids[k]) per pixel, 0 = none (overlaps: higher score wins)
  ids: np.ndarray               # (K,) int32 object ids, > 0, stable through the clip
  presence: np.ndarray          # (T, K) bool: object k is visible on frame t
  scores: np.ndarray            # (T, K) float32 per-frame mask confidence in [0, 1]
  labels: tuple[str, ...]       # (K,) what prompted each object ("car", DETR class, "box", ...)
  camera: CameraModel


@dataclass(frozen=True, eq=False)
class SemanticMaps:
  """Semantic segmentation in the model frame with the teacher's class probabilities (soft labels for KD)."""
  semantic: np.ndarray   # (B, H, W) uint8 classes.SEMANTIC_CLASSES, IGNORE_ID = no class of ours
  probs: np.ndarray      # (B, C, H, W) float32 probabilities over classes.SEMANTIC_CLASSES (sum 1 per pixel)
  camera: CameraModel

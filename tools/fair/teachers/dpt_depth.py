"""Metric depth from DINOv2's official DPT heads (transformers DPTForDepthEstimation, Dinov2 backbone).

facebook/dpt-dinov2-{small,base,large,giant}-kitti are DINOv2's KITTI depth heads (Oquab et al., 2023,
§7.3): the predicted map is metric depth in metres (KITTI ground truth is LiDAR depth along the optical
axis, capped at 80 m), so no scale has to be fitted.

A metric monocular head judges distance by the apparent size of things, so it assumes the focal length
of its training images (KITTI: 721.5 px). By default the model frame is resized so that its focal
length matches (MEDMODEL f = 910 px → 196x392 input), and the small remainder after snapping to the
patch grid is corrected exactly: depth = predicted depth x f_input / f_train.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import DPTForDepthEstimation

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.teachers.base import DepthMaps, TeacherInput, default_dtype
from tools.fair.teachers.preprocess import network_size, to_model_frame, to_network
from tools.fair.teachers.weights import WeightsInfo, load_pretrained

KITTI_FOCAL = 721.5377   # px, KITTI raw camera 2, the images DINOv2's KITTI heads were trained on


@dataclass(frozen=True)
class DptDepthConfig:
  """Input geometry and output range of the depth teacher."""
  camera: CameraModel = MEDMODEL   # input frames: uint8 RGB in this model frame
  train_focal: float | None = None # focal length (px) of the head's training images; None: the checkpoint's
                                   # config.fair_train_focal (heads trained by fairpilot), else KITTI's
                                   # (official heads; NYU heads: 518.8)
  scale: float | None = None       # network input = model frame x scale; None: train_focal / camera.focal
  min_depth: float = 1e-3          # m; the head ends in a ReLU and DINOv2 adds this floor after it


class DptDepthTeacher:
  """Metric depth maps in the model frame (tasks: "depth")."""
  name = "dpt-depth"
  tasks = ("depth",)
  hf_ids = ("facebook/dpt-dinov2-small-kitti", "facebook/dpt-dinov2-base-kitti", "facebook/dpt-dinov2-large-kitti",
            "facebook/dpt-dinov2-giant-kitti")
  hf_revision = "main"
  model_type = "dpt"

  def __init__(self, model: DPTForDepthEstimation, weights: WeightsInfo, config: DptDepthConfig, device: str,
               dtype: torch.dtype):
    if config.train_focal is None:
      config = replace(config, train_focal=float(getattr(model.config, "fair_train_focal", KITTI_FOCAL)))
    self.model, self.weights, self.config, self.device, self.dtype = model, weights, config, device, dtype
    cam = config.camera
    scale = config.train_focal / cam.focal if config.scale is None else config.scale
    # an even patch grid: DPT's 1/2-resolution reassemble stage rounds odd grids up, and the map it
    # returns would then no longer span the input image
    self.size = network_size(cam, scale, 2 * int(model.config.backbone_config.patch_size))
    # focal length at the network input (geometric mean: the snapped sides scale almost equally)
    self.input_focal = cam.focal * float(np.sqrt(self.size[0] / cam.height * self.size[1] / cam.width))

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: DptDepthConfig | None = None):
    """The teacher from resolved weights; dtype None picks bf16/fp16 on GPU, fp32 on CPU."""
    dtype = dtype or default_dtype(device)
    model = load_pretrained(DPTForDepthEstimation, weights, cls.model_type, device, dtype)
    backbone = model.config.backbone_config
    if backbone is None or backbone.model_type != "dinov2":
      raise ValueError(f"{weights.path}: a DPT without a DINOv2 backbone; this teacher runs DINOv2's depth heads "
                       f"({', '.join(cls.hf_ids)})")
    return cls(model, weights, config or DptDepthConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera)

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray) -> DepthMaps:
    """Depth (m along the optical axis) of uint8 RGB (B, H, W, 3) model frames, at model-frame resolution."""
    x = to_network(frames, self.config.camera, self.size, self.device, self.dtype)
    pred = self.model(pixel_values=x).predicted_depth[:, None]      # (B, 1, h', w') spanning the input
    depth = to_model_frame(pred, self.config.camera)[:, 0] * (self.input_focal / self.config.train_focal)
    return DepthMaps(depth.clamp_min(self.config.min_depth).cpu().numpy(), self.config.camera)

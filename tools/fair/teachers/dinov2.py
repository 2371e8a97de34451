"""DINOv2 / DINOv3 ViT teachers: patch features at a chosen layer, and their PCA visualisation.

DINOv2 (Oquab et al., 2023; transformers Dinov2Model, patch 14) and DINOv3 (Siméoni et al., 2025;
DINOv3ViTModel, patch 16, register tokens, RoPE) are self-supervised backbones whose patch tokens are
the dense features the student distils and the depth probe (depth_probe.py) reads. Tokens of block
`layer` go through the backbone's final LayerNorm, as DINOv2's get_intermediate_layers(norm=True) does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers import Dinov2Model, DINOv3ViTModel

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.teachers.base import FeatureMaps, TeacherInput, default_dtype
from tools.fair.teachers.preprocess import network_size, to_model_frame, to_network
from tools.fair.teachers.weights import WeightsInfo, load_pretrained


@dataclass(frozen=True)
class DinoConfig:
  """How frames are fed to the backbone and which tokens come out."""
  camera: CameraModel = MEDMODEL   # input frames: uint8 RGB in this model frame
  scale: float = 1.0               # network input = model frame x scale, sides snapped to the patch size
                                   # (MEDMODEL: 252x504 for patch 14, 256x512 for patch 16)
  layer: int = -1                  # transformer block whose tokens are returned: 1..N, or -N..-1 from the end


class Dinov2Teacher:
  """Frozen DINOv2 patch features (tasks: "features")."""
  name = "dinov2"
  tasks = ("features",)
  hf_ids = ("facebook/dinov2-small", "facebook/dinov2-base", "facebook/dinov2-large", "facebook/dinov2-giant")
  hf_revision = "main"
  model_class = Dinov2Model
  model_type = "dinov2"

  def __init__(self, model: torch.nn.Module, weights: WeightsInfo, config: DinoConfig, device: str, dtype: torch.dtype):
    self.model, self.weights, self.config, self.device, self.dtype = model, weights, config, device, dtype
    c = model.config
    self.patch = int(c.patch_size)
    self.size = network_size(config.camera, config.scale, self.patch)
    # hidden_states[0] is the embedding output, hidden_states[k] block k's output
    if not (1 <= config.layer <= c.num_hidden_layers or -c.num_hidden_layers <= config.layer <= -1):
      raise ValueError(f"layer {config.layer} out of range for {c.num_hidden_layers} blocks")
    self.layer = config.layer % (c.num_hidden_layers + 1) if config.layer < 0 else config.layer
    self.prefix = 1 + getattr(c, "num_register_tokens", 0)   # class token, then registers, then patches

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: DinoConfig | None = None):
    """The teacher from resolved weights; dtype None picks bf16/fp16 on GPU, fp32 on CPU."""
    dtype = dtype or default_dtype(device)
    return cls(load_pretrained(cls.model_class, weights, cls.model_type, device, dtype), weights,
               config or DinoConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera)

  def final_norm(self) -> torch.nn.Module:
    return self.model.layernorm

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray) -> FeatureMaps:
    """Patch features of uint8 RGB (B, H, W, 3) model frames."""
    x = to_network(frames, self.config.camera, self.size, self.device, self.dtype)
    out = self.model(pixel_values=x, output_hidden_states=True)
    tokens = self.final_norm()(out.hidden_states[self.layer]).float()
    h, w = self.size[0] // self.patch, self.size[1] // self.patch
    patches = tokens[:, self.prefix:].reshape(len(x), h, w, -1).permute(0, 3, 1, 2)
    return FeatureMaps(patches.cpu().numpy(), tokens[:, 0].cpu().numpy(), self.layer, self.config.camera)


class Dinov3Teacher(Dinov2Teacher):
  """Frozen DINOv3 ViT patch features (tasks: "features"); the web (LVD-1689M) models use ImageNet statistics."""
  name = "dinov3"
  hf_ids = ("facebook/dinov3-vits16-pretrain-lvd1689m", "facebook/dinov3-vits16plus-pretrain-lvd1689m",
            "facebook/dinov3-vitb16-pretrain-lvd1689m", "facebook/dinov3-vitl16-pretrain-lvd1689m",
            "facebook/dinov3-vith16plus-pretrain-lvd1689m", "facebook/dinov3-vit7b16-pretrain-lvd1689m")
  model_class = DINOv3ViTModel
  model_type = "dinov3_vit"

  def final_norm(self) -> torch.nn.Module:
    return self.model.norm


def pca_rgb(maps: FeatureMaps) -> np.ndarray:
  """uint8 (B, H, W, 3) model-frame images of the first three principal components of the features.

  One PCA over all frames' tokens, so a colour means the same feature in every frame of the batch;
  each component is stretched between its 1st and 99th percentile (outlier tokens would wash it out).
  """
  f = torch.from_numpy(maps.features).double()
  b, c, h, w = f.shape
  tokens = f.permute(0, 2, 3, 1).reshape(-1, c)
  tokens = tokens - tokens.mean(0)
  _, _, vh = torch.linalg.svd(tokens, full_matrices=False)
  proj = tokens @ vh[:3].T
  lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
  proj = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
  img = to_model_frame(proj.reshape(b, h, w, 3).permute(0, 3, 1, 2), maps.camera)
  return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
  """Write one uint8 RGB (H, W, 3) image as PNG; returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
    raise OSError(f"could not write {path}")
  return path

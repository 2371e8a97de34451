"""Teacher preprocessing in torch (the Hugging Face processors of DINOv3/SAM need torchvision, which we avoid).

Model frames are resized as a whole, never cropped or padded, so every network-resolution map spans
exactly the model frame and comes back with one resize. Both resizes use align_corners=False: pixel
centres map as in CameraModel.scaled ((u + 0.5) * s - 0.5), so maps stay aligned to the frame.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfdrive.modeld_fair.camera import CameraModel

# the statistics every Meta teacher here was trained with (DINOv2, DINOv3 web models, DPT heads, DETR)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_size(camera: CameraModel, scale: float, multiple: int) -> tuple[int, int]:
  """(height, width) of the network input: the model frame times `scale`, snapped to multiples of `multiple`
  (a ViT's patch size). The height is snapped first and the width follows the snapped height's scale, so
  frames whose width is a whole multiple of their height (MEDMODEL is 2:1) keep their aspect ratio exactly."""
  if not scale > 0:
    raise ValueError(f"scale must be positive, got {scale}")
  h = max(1, int(camera.height * scale / multiple + 0.5)) * multiple
  w = max(1, int(camera.width * h / camera.height / multiple + 0.5)) * multiple
  return h, w


def check_frames(frames: np.ndarray, camera: CameraModel) -> np.ndarray:
  """`frames` as uint8 (B, H, W, 3) of `camera`; ValueError naming the expected shape otherwise."""
  frames = np.ascontiguousarray(frames)   # torch.from_numpy refuses negative strides (e.g. BGR[..., ::-1] views)
  if frames.dtype != np.uint8 or frames.shape[1:] != (camera.height, camera.width, 3) or frames.ndim != 4:
    raise ValueError(f"expected uint8 RGB frames (B, {camera.height}, {camera.width}, 3) in the {camera.name} "
                     f"model frame, got {frames.dtype} {frames.shape}")
  return frames


def check_clip(clip: np.ndarray, camera: CameraModel) -> np.ndarray:
  """One clip (1, T, H, W, 3) uint8 RGB of `camera` -> its (T, H, W, 3) frames; ValueError otherwise."""
  clip = np.asarray(clip)
  if clip.ndim != 5 or clip.shape[0] != 1 or clip.shape[1] < 1:
    raise ValueError(f"expected one clip (1, T, {camera.height}, {camera.width}, 3) of uint8 RGB frames in the "
                     f"{camera.name} model frame, got {clip.dtype} {clip.shape}")
  return check_frames(clip[0], camera)


def to_network(frames: np.ndarray, camera: CameraModel, size: tuple[int, int], device: str | torch.device,
               dtype: torch.dtype) -> torch.Tensor:
  """uint8 RGB (B, H, W, 3) model frames → ImageNet-normalised (B, 3, size[0], size[1]) `dtype` on `device`."""
  frames = check_frames(frames, camera)
  x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255
  if tuple(size) != (camera.height, camera.width):
    # antialias: area-like filtering when shrinking, plain bilinear when enlarging
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
  mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
  return ((x - mean) / std).to(dtype)


def to_model_frame(x: torch.Tensor, camera: CameraModel) -> torch.Tensor:
  """Bilinearly resize float maps (B, C, h, w) spanning the network input to the model frame: (B, C, H, W) float32."""
  x = x.float()
  if x.shape[-2:] == (camera.height, camera.width):
    return x
  return F.interpolate(x, size=(camera.height, camera.width), mode="bilinear", align_corners=False)

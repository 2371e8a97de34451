"""A linear depth probe on frozen DINOv2/DINOv3 patch tokens, trainable on simulator or pseudo depth.

The probe is DINOv2's "lin. 1" (Oquab et al., 2023, §7.3): each patch token concatenated with the class
token, bilinearly upsampled 4x, one linear layer to depth-bin scores, and "linear normalisation" of the
scores (AdaBins: relu + 0.1, divided by the sum) weighting the bin centres. Two choices differ from the
paper, because driving depth spans 0.5 m to hundreds of metres:
- the bins are uniform in log depth over [min_depth, max_depth] (the student's 0.5-300 m), and the
  weighted mean is taken in log depth: relative error is what matters, and uniform bins over 300 m
  would be wider than the whole near range;
- the loss is the scale-invariant log loss alone (Eigen et al.; DINOv2's SigLoss with 0.85 variance
  focus, whose remaining 0.15 of the squared mean log error still ties the metric scale), without
  DINOv2's extra gradient loss, which matters little for a linear probe.
Binned classification rather than plain regression keeps the output inside the bins' range and lets
the probe be uncertain between two depths instead of averaging them.

The linear layer runs before the 4x upsampling (equivalent: a linear map commutes with bilinear
interpolation) so the probe never holds upsampled 1000-channel tokens.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from tools.fair.teachers.base import DepthMaps, FeatureMaps
from tools.fair.teachers.preprocess import to_model_frame

_EPS = 0.1      # AdaBins' linear-normalisation floor
_UPSAMPLE = 4   # DINOv2 upsamples tokens 4x before the linear layer
_FOCUS = 0.85   # variance focus of the scale-invariant log loss (DINOv2, BTS)


@dataclass(frozen=True)
class ProbeConfig:
  """Probe shape: `dim` is the backbone width (384 for ViT-S)."""
  dim: int
  bins: int = 256
  min_depth: float = 0.5      # m
  max_depth: float = 300.0    # m


class DepthProbe(nn.Module):
  """Linear depth-bin classifier on [patch token, class token]."""

  def __init__(self, config: ProbeConfig):
    super().__init__()
    self.config = config
    self.linear = nn.Conv2d(2 * config.dim, config.bins, 1)
    edges = torch.linspace(np.log(config.min_depth), np.log(config.max_depth), config.bins + 1)
    self.register_buffer("log_centres", (edges[:-1] + edges[1:]) / 2, persistent=False)

  def forward(self, features: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Log depth (B, 4h, 4w) from patch features (B, C, h, w) and class tokens (B, C)."""
    x = torch.cat([features, cls[:, :, None, None].expand_as(features)], 1)
    scores = F.interpolate(self.linear(x), scale_factor=_UPSAMPLE, mode="bilinear", align_corners=False)
    weights = torch.relu(scores) + _EPS
    weights = weights / weights.sum(1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", weights, self.log_centres)

  @torch.inference_mode()
  def predict(self, maps: FeatureMaps) -> DepthMaps:
    """Depth in metres at the feature maps' model-frame resolution."""
    p = next(self.parameters())
    log_depth = self(torch.from_numpy(maps.features).to(p), torch.from_numpy(maps.cls).to(p))
    return DepthMaps(to_model_frame(log_depth[:, None], maps.camera)[:, 0].exp().cpu().numpy(), maps.camera)

  def save(self, path: str | Path) -> Path:
    """Weights and config in one safetensors file."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(asdict(self.config))})
    return path

  @classmethod
  def load(cls, path: str | Path) -> DepthProbe:
    """A probe written by `save`."""
    with safe_open(str(path), "pt") as f:
      config = ProbeConfig(**json.loads(f.metadata()["config"]))
    probe = cls(config)
    probe.load_state_dict(load_file(str(path)))
    return probe.eval()


def silog_loss(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """Scale-invariant log loss sqrt(mean(g^2) - 0.85 mean(g)^2), g = log pred - log depth on valid pixels."""
  g = log_pred[valid] - torch.log(depth[valid])
  return torch.sqrt((g ** 2).mean() - _FOCUS * g.mean() ** 2 + 1e-12)


def train_depth_probe(maps: FeatureMaps, depth: np.ndarray, steps: int = 200, lr: float = 1e-3,
                      config: ProbeConfig | None = None, seed: int = 0,
                      device: str = "cpu") -> tuple[DepthProbe, list[float]]:
  """Fit a probe on precomputed frozen features and (B, H, W) model-frame depth in metres (simulator ground
  truth or a teacher's pseudo depth; inf/nan and depth outside the bins' range are ignored). Full-batch
  AdamW for `steps` steps; returns the probe in eval mode and the loss of every step."""
  config = config or ProbeConfig(maps.features.shape[1])
  torch.manual_seed(seed)   # the initial weights: the same inputs give the same probe
  probe = DepthProbe(config).to(device)
  features = torch.from_numpy(maps.features).to(device)
  cls = torch.from_numpy(maps.cls).to(device)
  target = torch.from_numpy(np.asarray(depth, dtype=np.float32)).to(device)
  valid = torch.isfinite(target) & (target >= config.min_depth) & (target <= config.max_depth)
  if target.shape != (len(features), maps.camera.height, maps.camera.width) or not valid.any():
    raise ValueError(f"need (B, {maps.camera.height}, {maps.camera.width}) depth with valid pixels for "
                     f"{len(features)} frames, got {tuple(target.shape)}")
  opt = torch.optim.AdamW(probe.parameters(), lr=lr)
  losses = []
  for _ in range(steps):
    log_pred = to_model_frame(probe(features, cls)[:, None], maps.camera)[:, 0]
    loss = silog_loss(log_pred, target, valid)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
  return probe.eval(), losses

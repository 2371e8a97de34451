"""A PWC-style optical flow network in the ARFlow lineage (PWC-Net -> ARFlow's PWC-Lite -> UnSAMFlow).

Both frames go through one feature pyramid (stride-2 conv pairs). Decoding runs coarse to fine: at each level
the second frame's features are warped by the upsampled flow, a cost volume (correlation over a (2r+1)^2
window of both frames' features, normalised together as in UFlow) is built, and one estimator shared by all
levels (first-frame features are reduced to a common width by a per-level 1x1 conv, as in PWC-Lite) predicts a
flow residual, refined by a dilated context network.
The flow of the finest decoded level is upsampled bilinearly to the input. Everything is plain torch (the
correlation is unfold over a padded map), so it runs on CPU, GPU and exports without custom kernels.

Flow convention: (B, 2, H, W) pixels (dx, dy) that a first-frame pixel moves by, pixel centres at integers
(as tools.fair.sim.gt): the first frame at p matches the second at p + flow(p).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

_SLOPE = 0.1   # LeakyReLU slope of PWC-Net / ARFlow
FB_ALPHA1, FB_ALPHA2 = 0.01, 0.5   # UnFlow's forward-backward consistency bounds
MODEL_TYPE = "fairpilot-flow"


@dataclass(frozen=True)
class FlowNetConfig:
  """Network shape. Level l has 1/2^l of the input resolution; the input sides must be multiples of
  2^len(channels) (forward pads otherwise)."""
  channels: tuple[int, ...] = (16, 32, 48, 64, 96)   # pyramid widths of levels 1 (1/2) .. coarsest
  output_level: int = 1                              # finest decoded level (ARFlow: 2, for 4x larger inputs)
  radius: int = 4                                    # correlation window: displacements -r..r per level
  reduce: int = 32                                   # width of the 1x1-reduced first-frame features
  estimator: tuple[int, ...] = (96, 64, 32)          # shared flow estimator conv widths
  context: tuple[int, ...] = (64, 64, 64, 48, 32)    # context network widths ...
  dilations: tuple[int, ...] = (1, 2, 4, 8, 1)       # ... and their dilations
  coords: bool = False                               # give the estimator the pixel position (x, y in [-1, 1])

  def __post_init__(self):
    if not 1 <= self.output_level <= len(self.channels):
      raise ValueError(f"output_level must be in 1..{len(self.channels)}, got {self.output_level}")
    if len(self.context) != len(self.dilations):
      raise ValueError(f"context {self.context} and dilations {self.dilations} differ in length")
    if self.radius < 1:
      raise ValueError(f"radius must be >= 1, got {self.radius}")

  @classmethod
  def from_dict(cls, d: dict) -> FlowNetConfig:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation),
                       nn.LeakyReLU(_SLOPE))


def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
  """(1, 2, h, w) pixel coordinates (x, y) of every pixel centre."""
  ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                          indexing="ij")
  return torch.stack([xs, ys])[None]


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
  """Backward warp: out(p) = x(p + flow(p)), bilinear, zeros outside the image. x (B, C, H, W), flow (B, 2, H, W)."""
  _, _, h, w = flow.shape
  pos = pixel_grid(h, w, flow.device, flow.dtype) + flow
  # align_corners=True: -1 and 1 are the centres of the border pixels, so integer positions are pixel centres
  gx = pos[:, 0] * (2 / max(w - 1, 1)) - 1
  gy = pos[:, 1] * (2 / max(h - 1, 1)) - 1
  return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=True)


def photometric_residual(img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
  """(B, H, W) channel-mean |img1 - img2 warped back by flow|: how well the flow explains each pixel (0 outside
  the image is compared with img1, so pixels that leave the frame get a large residual)."""
  return (img1 - warp(img2, flow)).abs().mean(1)


def leaves_image(flow: torch.Tensor) -> torch.Tensor:
  """(B, 1, H, W) bool: p + flow(p) falls outside the image (such pixels have no match in the second frame)."""
  _, _, h, w = flow.shape
  pos = pixel_grid(h, w, flow.device, flow.dtype) + flow
  return ((pos[:, 0] < -0.5) | (pos[:, 0] > w - 0.5) | (pos[:, 1] < -0.5) | (pos[:, 1] > h - 0.5))[:, None]


@torch.no_grad()
def fb_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
  """(B, 1, H, W) bool occlusion of the first frame's pixels (UnFlow's forward-backward check): the forward flow
  and the backward flow at its end point do not cancel, |fw + bw(p + fw)|^2 >= 0.01 (|fw|^2 + |bw(p + fw)|^2)
  + 0.5, or p + fw leaves the image."""
  bw = warp(flow_bw, flow_fw)
  lhs = (flow_fw + bw).square().sum(1, keepdim=True)
  rhs = FB_ALPHA1 * (flow_fw.square().sum(1, keepdim=True) + bw.square().sum(1, keepdim=True)) + FB_ALPHA2
  return (lhs >= rhs) | leaves_image(flow_fw)


def correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
  """Cost volume (B, (2r+1)^2, H, W): channel (dy + r) * (2r+1) + (dx + r) holds the channel-mean of
  f1(y, x) * f2(y + dy, x + dx), zero where the displaced position is outside f2."""
  b, c, h, w = f1.shape
  k = 2 * radius + 1
  patches = F.unfold(F.pad(f2, (radius,) * 4), kernel_size=k).view(b, c, k * k, h, w)
  return (f1[:, :, None] * patches).mean(1)


def normalize_features(f1: torch.Tensor, f2: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
  """Both feature maps (B, C, H, W) centred and scaled by the mean and standard deviation of the pair (over
  channels, pixels and both maps, per sample), as UFlow / SMURF do before the cost volume. Without it the
  correlation of freshly initialised features is ~1e-4 against ~0.1 for the other estimator inputs: the estimator
  learns a flow from appearance alone (the same for both directions) and never uses the cost volume."""
  both = torch.cat([f1, f2], 1)
  mu = both.mean((1, 2, 3), keepdim=True)
  sd = both.var((1, 2, 3), keepdim=True, correction=0).add(eps).sqrt()
  return (f1 - mu) / sd, (f2 - mu) / sd


def upsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  """Bilinear resize of a flow field to `size` (h, w), its vectors scaled to the new pixel units."""
  h, w = flow.shape[-2:]
  up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
  return up * torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)


class FlowNet(nn.Module):
  """PWC-style flow network (see module docstring)."""

  def __init__(self, config: FlowNetConfig | None = None):
    super().__init__()
    self.config = c = config or FlowNetConfig()
    widths = (3,) + tuple(c.channels)
    self.pyramid = nn.ModuleList(nn.Sequential(_conv(widths[i], widths[i + 1], 2), _conv(widths[i + 1], widths[i + 1]))
                                 for i in range(len(c.channels)))
    decoded = range(c.output_level, len(c.channels) + 1)
    self.reduce = nn.ModuleDict({str(lv): nn.Conv2d(c.channels[lv - 1], c.reduce, 1) for lv in decoded})
    w_in = (2 * c.radius + 1) ** 2 + c.reduce + 2 + 2 * c.coords
    est = (w_in,) + tuple(c.estimator)
    self.estimator = nn.Sequential(*(_conv(est[i], est[i + 1]) for i in range(len(c.estimator))))
    self.predict_flow = nn.Conv2d(est[-1], 2, 3, padding=1)
    ctx = (est[-1] + 2,) + tuple(c.context)
    self.context = nn.Sequential(*(_conv(ctx[i], ctx[i + 1], dilation=d) for i, d in enumerate(c.dilations)),
                                 nn.Conv2d(ctx[-1], 2, 3, padding=1))
    with torch.no_grad():  # start near zero flow: fw and bw flows then agree and training starts from "no motion"
      for head in (self.predict_flow, self.context[-1]):
        head.weight.mul_(0.1)
        head.bias.zero_()

  @property
  def multiple(self) -> int:
    """Input sides must be multiples of this (forward pads to it)."""
    return 2 ** len(self.config.channels)

  def features(self, img: torch.Tensor) -> list[torch.Tensor]:
    """Pyramid features of levels 1..L of images (B, 3, H, W) in [0, 1]."""
    x, out = img - 0.5, []
    for stage in self.pyramid:
      x = stage(x)
      out.append(x)
    return out

  def decode(self, f1: list[torch.Tensor], f2: list[torch.Tensor]) -> list[torch.Tensor]:
    """Flows of the decoded levels, coarsest first, each in its own level's pixels."""
    c, flow, flows = self.config, None, []
    for lv in range(len(c.channels), c.output_level - 1, -1):
      x1, x2 = f1[lv - 1], f2[lv - 1]
      if flow is None:
        flow = x1.new_zeros(x1.shape[0], 2, *x1.shape[-2:])
      else:
        flow = upsample_flow(flow, x1.shape[-2:])
        x2 = warp(x2, flow)
      corr = F.leaky_relu(correlation(*normalize_features(x1, x2), c.radius), _SLOPE)
      parts = [corr, self.reduce[str(lv)](x1), flow]
      if c.coords:
        h, w = x1.shape[-2:]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, device=x1.device, dtype=x1.dtype),
                                torch.linspace(-1, 1, w, device=x1.device, dtype=x1.dtype), indexing="ij")
        parts.append(torch.stack([xx, yy]).expand(x1.shape[0], 2, h, w))
      x = self.estimator(torch.cat(parts, 1))
      flow = flow + self.predict_flow(x)
      flow = flow + self.context(torch.cat([x, flow], 1))
      flows.append(flow)
    return flows

  def forward(self, img1: torch.Tensor, img2: torch.Tensor, backward: bool = False) -> list[torch.Tensor]:
    """Flow pyramid of images (B, 3, H, W) in [0, 1], finest first: [flow at (H, W), then the decoded levels
    coarser than the output level], each (B', 2, h, w) in its own pixels. backward=True also decodes 2 -> 1:
    B' = 2B, forward flows in [:B] and backward flows in [B:] (the features are computed once)."""
    h, w = img1.shape[-2:]
    m = self.multiple
    ph, pw = -h % m, -w % m
    if ph or pw:  # replicate-pad to the pyramid's multiple; the full-resolution flow is cropped back
      img1, img2 = (F.pad(x, (0, pw, 0, ph), mode="replicate") for x in (img1, img2))
    f1, f2 = self.features(img1), self.features(img2)
    if backward:
      f1, f2 = [torch.cat([a, b]) for a, b in zip(f1, f2)], [torch.cat([b, a]) for a, b in zip(f1, f2)]
    flows = self.decode(f1, f2)
    full = upsample_flow(flows[-1], (h + ph, w + pw))[..., :h, :w]
    return [full] + flows[-2::-1]

  @torch.no_grad()
  def predict(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward flow (B, 2, H, W) of images (B, 3, H, W) in [0, 1] and its occlusion (B, 1, H, W) bool from the
    forward-backward check."""
    full = self(img1, img2, backward=True)[0]
    b = img1.shape[0]
    return full[:b], fb_occlusion(full[:b], full[b:])

  def save(self, folder: str | Path, meta: dict | None = None) -> Path:
    """Write `folder`/config.json (the network shape + `meta`) and model.safetensors, each atomically: the
    folder a FlowTeacher loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps({"model_type": MODEL_TYPE, "net": asdict(self.config)} | (meta or {}), indent=2))
    os.replace(tmp, folder / "config.json")
    return folder


def load_flownet(folder: str | Path) -> tuple[FlowNet, dict]:
  """A FlowNet written by FlowNet.save (eval mode) and its config.json. ValueError for a folder of another model."""
  folder = Path(folder)
  meta = json.loads((folder / "config.json").read_text())
  if meta.get("model_type") != MODEL_TYPE:
    raise ValueError(f"{folder} holds a {meta.get('model_type')!r} checkpoint, not a {MODEL_TYPE} network")
  net = FlowNet(FlowNetConfig.from_dict(meta["net"]))
  net.load_state_dict(load_file(str(folder / "model.safetensors")))
  return net.eval(), meta

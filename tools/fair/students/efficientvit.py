"""EfficientViT-style student (Cai et al., "EfficientViT: Multi-Scale Linear Attention for High-Resolution
Dense Prediction", ICCV 2023): fused-MBConv / MBConv stages, ReLU linear attention in the two coarsest
stages, an FPN neck back to the 1/8 and 1/4 model-frame grids and one head per model_io output.

Every op is picked to export as static ONNX whose BatchNorms fold into convs and that INT8 / FP16
back ends (tinygrad QCOM) run well: conv, ReLU, add, nearest 2x resize, the few reshapes + matmuls
of linear attention, sigmoid / softplus / exp on the outputs. docs/student.md lists what is avoided.
Resolutions below are of the 128x256 input tensor (one input px = 2x2 model-frame px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from selfdrive.modeld_fair.model_io import N_LANE_POINTS, N_LANES, OBJECT_CLASSES, OBJECT_STRIDE


@dataclass(frozen=True)
class StudentConfig:
  """One student size (see CONFIGS)."""
  name: str
  widths: tuple[int, int, int, int, int]   # stem (64x128), stages at 32x64, 16x32, 8x16, 4x8
  depths: tuple[int, int, int, int, int]   # blocks after each stage's first (downsampling) block
  expand: int = 4                          # MBConv hidden = expand * in channels
  fused_stages: int = 1                    # leading stages built of fused MBConv (dense 3x3: fast at high res)
  fused_expand: int = 2                    # fused MBConv hidden = fused_expand * in channels (dense 3x3 is costly)
  attn_stages: int = 2                     # trailing stages whose extra blocks are EfficientViT (attention) blocks
  head_dim: int = 16                       # linear attention channels per head
  neck: tuple[int, int] = (64, 32)         # FPN channels at 32x64 (1/8 frame: depth, objects) and 64x128 (1/4: seg)
  global_hidden: int = 256                 # lane / ego MLP width
  depth_range: tuple[float, float] = (0.5, 300.0)  # metres; depth and obj_depth are log-uniform in this range
  heatmap_prior: float = 0.1               # initial object-centre probability (CenterNet's focal-loss init)

  def __post_init__(self):
    if any(c % self.head_dim for c in self.widths[5 - self.attn_stages:]):
      raise ValueError(f"{self.name}: attention stage widths must be multiples of head_dim {self.head_dim}")


CONFIGS = {
  "nano": StudentConfig("nano", widths=(16, 32, 64, 128, 160), depths=(1, 1, 1, 1, 1), neck=(48, 24)),
  "small": StudentConfig("small", widths=(24, 48, 96, 192, 256), depths=(1, 2, 2, 3, 3), neck=(96, 48),
                         global_hidden=384),
}


def student_config(name: str) -> StudentConfig:
  """The named config ("nano" or "small"); ValueError for others."""
  if name not in CONFIGS:
    raise ValueError(f"unknown student config {name!r} (known: {', '.join(CONFIGS)})")
  return CONFIGS[name]


# ---- blocks

class ConvBN(nn.Module):
  """Conv2d + BatchNorm (+ ReLU). `fold()` merges the BN into the conv (eval statistics) for export."""

  def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    self.bn: nn.Module = nn.BatchNorm2d(cout)
    self.act = nn.ReLU() if act else nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.act(self.bn(self.conv(x)))

  @torch.no_grad()
  def fold(self) -> None:
    if not isinstance(self.bn, nn.BatchNorm2d):
      return
    c, bn = self.conv, self.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups, bias=True)
    conv.weight.copy_(c.weight * scale[:, None, None, None])
    conv.bias.copy_(bn.bias - bn.running_mean * scale)
    self.conv, self.bn = conv, nn.Identity()


def fold_bn(model: nn.Module) -> nn.Module:
  """Fold every ConvBN's BatchNorm into its conv, in place (call on an eval-mode copy); returns model."""
  for m in model.modules():
    if isinstance(m, ConvBN):
      m.fold()
  return model


class Residual(nn.Module):
  def __init__(self, body: nn.Module, use: bool):
    super().__init__()
    self.body, self.use = body, use

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.body(x) if self.use else self.body(x)


def ds_conv(c: int) -> nn.Module:
  """Depthwise-separable residual block (EfficientViT's stem and neck block)."""
  return Residual(nn.Sequential(ConvBN(c, c, 3, groups=c), ConvBN(c, c, act=False)), True)


def mb_conv(cin: int, cout: int, stride: int, expand: int) -> nn.Module:
  """Inverted bottleneck: 1x1 expand, 3x3 depthwise (stride), 1x1 project (no activation)."""
  h = cin * expand
  body = nn.Sequential(ConvBN(cin, h), ConvBN(h, h, 3, stride, groups=h), ConvBN(h, cout, act=False))
  return Residual(body, stride == 1 and cin == cout)


def fused_mb_conv(cin: int, cout: int, stride: int, expand: int) -> nn.Module:
  """Fused inverted bottleneck: dense 3x3 expand (stride), 1x1 project; better on GPUs at high resolution."""
  h = cin * expand
  body = nn.Sequential(ConvBN(cin, h, 3, stride), ConvBN(h, cout, act=False))
  return Residual(body, stride == 1 and cin == cout)


class LiteMLA(nn.Module):
  """EfficientViT's lightweight multi-scale attention: ReLU linear attention over q, k, v from a 1x1 conv
  plus a copy aggregated by 5x5 depthwise + grouped 1x1 convs (multi-scale tokens).

  out_n = sum_m v_m (relu(k_m) . relu(q_n)) / sum_m relu(k_m) . relu(q_n): O(N d^2), no softmax. Tensors stay
  (B, heads, d, N) so that only the (d, N) key matrix is transposed.
  """
  eps = 1e-4  # representable in fp16 (EfficientViT's 1e-15 is not): a zero denominator gives 0, not NaN

  def __init__(self, c: int, head_dim: int, scale: int = 5):
    super().__init__()
    self.d = head_dim
    heads = c // head_dim
    self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
    self.aggreg = nn.Sequential(nn.Conv2d(3 * c, 3 * c, scale, padding=scale // 2, groups=3 * c, bias=False),
                                nn.Conv2d(3 * c, 3 * c, 1, groups=3 * heads, bias=False))
    self.proj = ConvBN(2 * c, c, act=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    qkv = self.qkv(x)
    qkv = torch.cat([qkv, self.aggreg(qkv)], 1).reshape(b, -1, 3 * self.d, h * w)  # per head: q, k, v channels
    # k / N: numerator and denominator are means over tokens rather than sums, so fp16 does not overflow
    q, k, v = F.relu(qkv[:, :, :self.d]), F.relu(qkv[:, :, self.d:2 * self.d]) * (1.0 / (h * w)), qkv[:, :, 2 * self.d:]
    num = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)      # (B, H, d, N)
    den = (k.sum(-1, keepdim=True) * q).sum(2, keepdim=True)          # (B, H, 1, N)
    return self.proj((num / (den + self.eps)).reshape(b, -1, h, w))


class EfficientViTBlock(nn.Module):
  """Context (linear attention) then local (MBConv) mixing, both residual."""

  def __init__(self, c: int, head_dim: int, expand: int):
    super().__init__()
    self.attn = LiteMLA(c, head_dim)
    self.local = mb_conv(c, c, 1, expand)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.local(x + self.attn(x))


def trunk(c: int) -> nn.Module:
  """A head's shared features: 3x3 depthwise + 1x1, ReLU."""
  return nn.Sequential(ConvBN(c, c, 3, groups=c), ConvBN(c, c))


def out_conv(cin: int, cout: int, bias: float = 0.0) -> nn.Conv2d:
  conv = nn.Conv2d(cin, cout, 1)
  nn.init.constant_(conv.bias, bias)
  return conv


# ---- the student

class Student(nn.Module):
  """uint8 img (B, 12, 128, 256) -> dict of model_io.OUTPUTS (activations applied)."""

  def __init__(self, cfg: StudentConfig):
    super().__init__()
    self.cfg = cfg
    w, n8, n4 = cfg.widths, *cfg.neck
    self.stem = nn.Sequential(ConvBN(12, w[0], 3, 2), *[ds_conv(w[0]) for _ in range(cfg.depths[0])])
    stages = []
    for i in range(1, 5):
      cin, c, n, fe = w[i - 1], w[i], cfg.depths[i], cfg.fused_expand
      if i <= cfg.fused_stages:
        blocks = [fused_mb_conv(cin, c, 2, fe), *(fused_mb_conv(c, c, 1, fe) for _ in range(n))]
      elif i > 4 - cfg.attn_stages:
        blocks = [mb_conv(cin, c, 2, cfg.expand), *(EfficientViTBlock(c, cfg.head_dim, cfg.expand) for _ in range(n))]
      else:
        blocks = [mb_conv(cin, c, 2, cfg.expand), *(mb_conv(c, c, 1, cfg.expand) for _ in range(n))]
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.ModuleList(stages)
    # FPN: 1x1 laterals, nearest 2x upsampling + add, a depthwise-separable block per level
    self.lateral = nn.ModuleList([ConvBN(c, n8, act=False) for c in w[1:]])
    self.smooth = nn.ModuleList([ds_conv(n8) for _ in range(3)])
    self.reduce4 = ConvBN(n8, n4, act=False)
    self.lateral4 = ConvBN(w[0], n4, act=False)
    self.smooth4 = ds_conv(n4)
    # dense heads
    self.depth = nn.Sequential(trunk(n8), out_conv(n8, 1))
    self.seg = nn.Sequential(trunk(n4), out_conv(n4, len(SEMANTIC_CLASSES)))
    self.det = trunk(n8)  # the object outputs share one trunk (CenterNet-style)
    self.obj_heatmap = out_conv(n8, len(OBJECT_CLASSES), -math.log((1 - cfg.heatmap_prior) / cfg.heatmap_prior))
    self.obj_box = out_conv(n8, 4)
    self.obj_depth = out_conv(n8, 1)
    # lanes and ego from the whole coarsest grid (4x8): position matters, so flatten rather than pool
    g = 16
    self.global_in = ConvBN(w[4], g)
    self.global_mlp = nn.Sequential(nn.Linear(g * 4 * 8, cfg.global_hidden), nn.ReLU())
    self.lanes = nn.Linear(cfg.global_hidden, N_LANES * N_LANE_POINTS * 4)
    self.lane_prob = nn.Linear(cfg.global_hidden, N_LANES)
    self.ego = nn.Linear(cfg.global_hidden, 12)

  def _depth(self, x: torch.Tensor) -> torch.Tensor:
    lo, hi = (math.log(d) for d in self.cfg.depth_range)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(x))  # bounded exponent: never 0, inf or NaN

  def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
    x = (img.float() - 128.0) / 64.0
    feats = [self.stem(x)]
    for s in self.stages:
      feats.append(s(feats[-1]))
    p = self.lateral[3](feats[4])
    for i in (2, 1, 0):  # 8x16, 16x32, 32x64
      p = self.smooth[i](F.interpolate(p, scale_factor=2.0, mode="nearest") + self.lateral[i](feats[i + 1]))
    p4 = self.smooth4(F.interpolate(self.reduce4(p), scale_factor=2.0, mode="nearest") + self.lateral4(feats[0]))
    d = self.det(p)
    g = self.global_mlp(torch.flatten(self.global_in(feats[4]), 1))
    return {
      "depth": self._depth(self.depth(p)),
      "seg_logits": self.seg(p4),
      "obj_heatmap": torch.sigmoid(self.obj_heatmap(d)),
      "obj_box": F.relu(self.obj_box(d)) * float(OBJECT_STRIDE),  # FCOS-style; softplus overflows fp16 at x > 11
      "obj_depth": self._depth(self.obj_depth(d)),
      "lanes": self.lanes(g).reshape(-1, N_LANES, N_LANE_POINTS, 4),
      "lane_prob": torch.sigmoid(self.lane_prob(g)),
      "ego": self.ego(g),
    }


def build_student(cfg: StudentConfig) -> Student:
  """A randomly initialised student (seed torch first for reproducible weights)."""
  return Student(cfg)

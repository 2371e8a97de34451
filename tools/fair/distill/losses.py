"""Distillation and task losses of the student (per-sample, so that hard-example mining can rank samples).

Every term is a pure function returning a (B,) tensor: the term's value for each sample, 0 for a sample
without any supervised element (never NaN). `DistillLoss` sums the configured terms, skipping in a batch each
term whose keys are absent (the batch contract: a missing key = that task is not supervised there); the trainer
stops before step 1 when a weighted term's keys come with no sample (`missing_terms`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selfdrive.modeld_fair.model_io import OBJECT_STRIDE

IGNORE_INDEX = 255
PRESENT = "present/"   # collate's per-sample presence mask of a key that only some samples carry (see trainer.collate)
LOG_STD_RANGE = (-7.0, 7.0)  # clamp of predicted log std: keeps the Laplace NLL finite at initialisation


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Per-sample mean of x over mask (both (B, ...)), 0 where the sample has no masked element."""
  m = mask.to(x.dtype).expand_as(x).flatten(1)
  return (x.flatten(1) * m).sum(1) / m.sum(1).clamp(min=1.0)


# ---- knowledge distillation

def kd_seg(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
  """Hinton soft-label KD: T^2 * mean over pixels of KL(teacher_T || student_T), with both distributions softened
  by T (the teacher's probabilities raised to 1/T and renormalised, which equals softmax(teacher logits / T))."""
  if temperature <= 0:
    raise ValueError(f"KD temperature must be > 0, got {temperature}")
  log_t = torch.log(teacher_probs.float().clamp(min=1e-8)) / temperature
  log_t = log_t - torch.logsumexp(log_t, 1, keepdim=True)
  log_s = F.log_softmax(logits.float() / temperature, 1)
  kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (B, H, W)
  return kl.flatten(1).mean(1) * temperature ** 2


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  """x (B, C, h, w) bilinearly resized to size (no-op when it already has it)."""
  return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
  """Distance of projected student features to teacher features (same channels), the student resized to the
  teacher's grid: "mse" = mean squared error, "cosine" = mean over cells of 1 - cosine similarity."""
  s, t = resize_to(student.float(), teacher.shape[-2:]), teacher.float()
  if s.shape != t.shape:
    raise ValueError(f"projected student features {tuple(s.shape)} do not match teacher features {tuple(t.shape)}")
  if kind == "mse":
    return (s - t).pow(2).flatten(1).mean(1)
  if kind == "cosine":
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-6)).flatten(1).mean(1)
  raise ValueError(f"feature loss must be 'mse' or 'cosine', got {kind!r}")


def attention_map(f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
  """Zagoruyko & Komodakis' activation-based attention: channel mean of squared activations (B, h, w),
  optionally resized, flattened and L2-normalised per sample -> (B, h * w)."""
  a = f.float().pow(2).mean(1, keepdim=True)
  if size is not None:
    a = resize_to(a, size)
  return F.normalize(a.flatten(1), dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
  """Attention transfer between one student stage and one teacher feature map (any channel counts): mean squared
  difference of their normalised attention maps on the teacher's grid (the paper's reference code)."""
  size = tuple(teacher.shape[-2:])
  return (attention_map(student, size) - attention_map(teacher)).pow(2).mean(1)


# ---- task losses

def silog(pred: torch.Tensor, target: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
  """Scale-invariant log depth error (Eigen et al. 2014) over target > 0: sqrt(mean g^2 - lam mean(g)^2) with
  g = ln pred - ln target; lam = 1 is fully scale invariant, 0 is the log RMSE."""
  valid = target > 0
  g = torch.where(valid, torch.log(pred.float().clamp(min=1e-6)) - torch.log(target.float().clamp(min=1e-6)), 0.0)
  m1 = _masked_mean(g, valid)
  # mean g^2 - lam mean(g)^2 written as variance + (1 - lam) mean^2: no float32 cancellation
  var = _masked_mean((g - m1.view(-1, *[1] * (g.ndim - 1))) ** 2, valid)
  return torch.sqrt((var + (1.0 - lam) * m1 * m1).clamp(min=1e-12))  # clamp: finite gradient at a perfect fit


def gradient_matching(pred: torch.Tensor, target: torch.Tensor, scales: int = 4) -> torch.Tensor:
  """Multi-scale gradient matching of the log-depth residual (Li & Snavely, MegaDepth): mean |dx R| + |dy R|
  over neighbour pairs where both targets are > 0, at strides 1, 2, 4, ... (`scales` of them), summed."""
  valid = target > 0
  r = torch.where(valid, torch.log(pred.float().clamp(min=1e-6)) - torch.log(target.float().clamp(min=1e-6)), 0.0)
  total = torch.zeros(pred.shape[0], device=pred.device)
  for k in range(scales):
    s = 2 ** k
    rk, vk = r[..., ::s, ::s], valid[..., ::s, ::s]
    if rk.shape[-1] < 2 or rk.shape[-2] < 2:
      break
    gx, mx = (rk[..., 1:] - rk[..., :-1]).abs(), vk[..., 1:] & vk[..., :-1]
    gy, my = (rk[..., 1:, :] - rk[..., :-1, :]).abs(), vk[..., 1:, :] & vk[..., :-1, :]
    n = (mx.flatten(1).sum(1) + my.flatten(1).sum(1)).clamp(min=1)
    total = total + ((gx * mx).flatten(1).sum(1) + (gy * my).flatten(1).sum(1)) / n
  return total


def seg_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
  """Per-pixel cross entropy averaged over each sample's pixels whose target != ignore_index."""
  ce = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="none")
  return _masked_mean(ce, target != ignore_index)


def focal_heatmap(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
  """CenterNet's penalty-reduced focal loss on sigmoid heatmaps `pred` against gaussian targets in [0, 1]
  (1 at centres), normalised by the sample's number of centres (at least 1)."""
  p = pred.float().clamp(1e-4, 1 - 1e-4)
  t = target.float()
  pos = t >= 1.0 - 1e-4
  pos_loss = torch.log(p) * (1 - p) ** alpha
  neg_loss = torch.log(1 - p) * p ** alpha * (1 - t) ** beta
  loss = -torch.where(pos, pos_loss, neg_loss).flatten(1).sum(1)
  return loss / pos.flatten(1).sum(1).clamp(min=1)


def box_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """L1 of l, t, r, b box distances at centre cells (mask > 0), in detection cells (px / OBJECT_STRIDE)."""
  return _masked_mean((pred.float() - target.float()).abs() / OBJECT_STRIDE, mask > 0)


def log_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """L1 of log depth at mask > 0 where the target is > 0."""
  m = (mask > 0) & (target > 0)
  d = torch.log(pred.float().clamp(min=1e-6)) - torch.log(target.float().clamp(min=1e-6))
  return _masked_mean(torch.where(m, d.abs(), 0.0), m)


def laplace_nll(mean: torch.Tensor, log_std: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
                ) -> torch.Tensor:
  """Laplace negative log likelihood |x - mu| / b + log(2 b), b = exp(log_std) (clamped to LOG_STD_RANGE),
  averaged over each sample's valid elements (all when valid is None)."""
  ls = log_std.float().clamp(*LOG_STD_RANGE)
  nll = (target.float() - mean.float()).abs() * torch.exp(-ls) + ls + math.log(2.0)
  return _masked_mean(nll, torch.ones_like(nll, dtype=torch.bool) if valid is None else valid > 0)


def lanes_nll(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """Lane points: pred (B, L, P, 4) = y, z, log std y, log std z; target (B, L, P, 2); valid (B, L, P)."""
  return laplace_nll(pred[..., :2], pred[..., 2:], target, valid[..., None].expand_as(target))


def lane_prob_bce(prob: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
  """Binary cross entropy of the lane-existence probabilities (B, L)."""
  return F.binary_cross_entropy(prob.float().clamp(1e-6, 1 - 1e-6), exists.float(), reduction="none").mean(1)


def ego_nll(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """Ego motion: pred (B, 12) = 6 means then 6 log stds; target (B, 6)."""
  return laplace_nll(pred[:, :6], pred[:, 6:], target)


# ---- the combined loss

@dataclass(frozen=True)
class LossConfig:
  """Weights per term (0 = off) and the terms' settings; see TERMS for each term's batch keys."""
  weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
  temperature: float = 2.0           # KD temperature
  feature_loss: str = "mse"          # "mse" | "cosine" for the projected feature distillation
  features: Mapping[str, str] = field(default_factory=dict)  # student module name -> batch key of teacher features
  silog_lambda: float = 0.85
  grad_scales: int = 4


# term -> batch keys it needs (all of them; the term is skipped when one is absent)
TERMS = {
  "depth": ("depth",), "depth_grad": ("depth",), "seg": ("seg",), "kd_seg": ("seg_probs",),
  "obj_heatmap": ("obj_heatmap",), "obj_box": ("obj_box", "obj_mask"), "obj_depth": ("obj_depth", "obj_mask"),
  "lanes": ("lanes", "lane_valid"), "lane_prob": ("lane_exists",), "ego": ("ego",),
  "feat": (), "at": (),  # keys come from LossConfig.features
}
DEFAULT_WEIGHTS = {"depth": 1.0, "depth_grad": 0.5, "seg": 1.0, "kd_seg": 0.0, "obj_heatmap": 1.0, "obj_box": 0.1,
                   "obj_depth": 0.5, "lanes": 0.2, "lane_prob": 0.5, "ego": 0.2, "feat": 0.0, "at": 0.0}


def missing_terms(cfg: LossConfig, keys: set[str]) -> dict[str, list[str]]:
  """Terms with weight > 0 -> the batch keys they need that are not in `keys` (those terms would never train)."""
  out = {}
  for term, need in TERMS.items():
    if float(cfg.weights.get(term, 0.0)) > 0:
      need = tuple(cfg.features.values()) if term in ("feat", "at") else need
      if gone := sorted(set(need) - keys):
        out[term] = gone
  return out


@dataclass(frozen=True)
class LossOutput:
  """total: scalar to backpropagate; terms: each computed term's batch value (detached); per_sample: (B,) detached
  weighted sum of terms per sample (what the hard-example sampler ranks)."""
  total: torch.Tensor
  terms: dict[str, float]
  per_sample: torch.Tensor


class DistillLoss(nn.Module):
  """sum_k w_k * term_k over the terms with weight > 0 whose batch keys are present. Holds the learned 1x1
  projectors (student stage channels -> teacher channels) of the feature-distillation pairs."""

  def __init__(self, cfg: LossConfig, student_channels: Mapping[str, int] | None = None,
               teacher_channels: Mapping[str, int] | None = None):
    super().__init__()
    unknown = set(cfg.weights) - set(TERMS)
    if unknown:
      raise ValueError(f"unknown loss terms {sorted(unknown)} (known: {', '.join(TERMS)})")
    self.cfg = cfg
    self.weights = {k: float(cfg.weights.get(k, 0.0)) for k in TERMS}
    self.projectors = nn.ModuleDict()
    if self.weights["feat"] > 0:
      for stage, key in cfg.features.items():
        if student_channels is None or teacher_channels is None or stage not in student_channels \
           or key not in teacher_channels:
          raise ValueError(f"feature pair {stage} -> {key}: channel counts unknown (is the stage name right?)")
        self.projectors[_safe(stage)] = nn.Conv2d(student_channels[stage], teacher_channels[key], 1)

  def term_names(self) -> list[str]:
    """Names of the terms this loss can report (CSV columns)."""
    names = [k for k in TERMS if k not in ("feat", "at") and self.weights[k] > 0]
    for k in ("feat", "at"):
      if self.weights[k] > 0:
        names += [f"{k}/{s}" for s in self.cfg.features]
    return names

  def forward(self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
              stage_features: Mapping[str, torch.Tensor] | None = None) -> LossOutput:
    """Loss of student outputs `out` (model_io names) against a batch; stage_features: student module name ->
    activation, for the feature / attention terms."""
    c, w = self.cfg, self.weights
    b = batch["img"].shape[0]
    values: dict[str, tuple[float, torch.Tensor]] = {}  # name -> (weight, per-sample loss)

    def add(name: str, weight: float, keys: tuple[str, ...], fn):
      if weight > 0 and all(k in batch for k in keys):
        values[name] = (weight, fn())

    add("depth", w["depth"], TERMS["depth"], lambda: silog(out["depth"], batch["depth"], c.silog_lambda))
    add("depth_grad", w["depth_grad"], TERMS["depth_grad"],
        lambda: gradient_matching(out["depth"], batch["depth"], c.grad_scales))
    add("seg", w["seg"], TERMS["seg"], lambda: seg_ce(out["seg_logits"], batch["seg"]))
    add("kd_seg", w["kd_seg"], TERMS["kd_seg"], lambda: kd_seg(out["seg_logits"], batch["seg_probs"], c.temperature))
    add("obj_heatmap", w["obj_heatmap"], TERMS["obj_heatmap"],
        lambda: focal_heatmap(out["obj_heatmap"], batch["obj_heatmap"]))
    add("obj_box", w["obj_box"], TERMS["obj_box"], lambda: box_l1(out["obj_box"], batch["obj_box"], batch["obj_mask"]))
    add("obj_depth", w["obj_depth"], TERMS["obj_depth"],
        lambda: log_l1(out["obj_depth"], batch["obj_depth"], batch["obj_mask"]))
    add("lanes", w["lanes"], TERMS["lanes"], lambda: lanes_nll(out["lanes"], batch["lanes"], batch["lane_valid"]))
    add("lane_prob", w["lane_prob"], TERMS["lane_prob"], lambda: lane_prob_bce(out["lane_prob"], batch["lane_exists"]))
    add("ego", w["ego"], TERMS["ego"], lambda: ego_nll(out["ego"], batch["ego"]))
    if stage_features is not None:
      for stage, key in c.features.items():
        if stage not in stage_features:
          raise ValueError(f"no student features captured at {stage!r}")
        f = stage_features[stage]
        add(f"feat/{stage}", w["feat"], (key,),
            lambda: feature_loss(self.projectors[_safe(stage)](f.float()), batch[key], c.feature_loss))
        add(f"at/{stage}", w["at"], (key,), lambda: attention_transfer(f, batch[key]))

    per_sample = torch.zeros(b, device=batch["img"].device)
    total = per_sample.sum()
    terms = {}
    for name, (weight, v) in values.items():
      present = _presence(batch, TERMS.get(name) or (c.features[name.split("/", 1)[1]],), b, v.device)
      v = v * present
      term = v.sum() / present.sum().clamp(min=1.0)
      total = total + weight * term
      per_sample = per_sample + weight * v.detach()
      terms[name] = float(term.detach())
    return LossOutput(total, terms, per_sample)


def _presence(batch: Mapping[str, torch.Tensor], keys: tuple[str, ...], b: int, device) -> torch.Tensor:
  """(B,) float: 1 for samples that carry all `keys` (collate marks partially present keys)."""
  p = torch.ones(b, device=device)
  for k in keys:
    if PRESENT + k in batch:
      p = p * batch[PRESENT + k].to(device, torch.float32)
  return p


def _safe(name: str) -> str:
  """ModuleDict keys may not contain dots."""
  return name.replace(".", "__")

"""Train small FAIR-architecture teachers on simulator ground truth, saved exactly as official weights are.

No pretrained FAIR weights can be fetched on the machines this experiment runs on, so its teachers are the
real architectures at CPU size, trained from scratch on generated frames with exact depth and classes:
- dpt-depth: DPTForDepthEstimation on a Dinov2 backbone (the layout of facebook/dpt-dinov2-*-kitti), trained
  with the scale-invariant log loss (DINOv2's SigLoss, depth_probe.silog_loss);
- dinov2-seg: a Dinov2 backbone + DINOv2's linear segmentation head (teachers/dinov2_seg.py), cross-entropy.
Both read frames exactly as their teacher classes do at labelling time (preprocess.to_network at the network
size, outputs resized to the model frame by preprocess.to_model_frame), so the losses are computed on the very
maps the teachers will return. Each folder gets a training.json (config, focal length, losses, time).

A metric depth network learns the apparent size of things at its input's focal length; DptDepthTeacher
multiplies its output by input focal / train_focal. depth_teacher_config() sets train_focal to the focal
length this network was trained at (from training.json), so no KITTI correction is applied.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model, DPTConfig, DPTForDepthEstimation

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from selfdrive.modeld_fair.classes import IGNORE_ID, SEMANTIC_CLASSES
from tools.fair.progress import progress_bar
from tools.fair.teachers.depth_probe import silog_loss
from tools.fair.teachers.dinov2_seg import DinoSegNet, HeadConfig, LinearSegHead, save_head
from tools.fair.teachers.dpt_depth import DptDepthConfig
from tools.fair.teachers.preprocess import network_size, to_model_frame, to_network

TRAINING_JSON = "training.json"


@dataclass(frozen=True)
class TeacherTrainConfig:
  """Teacher size and optimisation (the defaults: ~2.8 M backbone parameters, sized for a 2-core CPU)."""
  hidden: int = 192              # Dinov2 width (ViT-S is 384)
  layers: int = 6                # transformer blocks
  heads: int = 3                 # attention heads (64 channels each, as DINOv2)
  patch: int = 14
  input_height: int = 112        # network input height (px), width = 2x; snapped to the patch grid (2 patches: DPT)
  dpt_fusion: int = 32           # DPT fusion channels (official heads: 256 + projection; the neck dominates on CPU)
  ms: bool = True                # segmentation head over the last 4 blocks ("+ms"), else the last block ("lin.")
  steps: int = 600
  batch: int = 8
  lr: float = 5e-4
  weight_decay: float = 0.05
  warmup: int = 50               # linear warm-up steps before the cosine decay
  hflip: bool = True             # mirror half the samples (frames and targets)
  min_depth: float = 0.5         # m: depth supervised inside [min_depth, max_depth] (the student's range)
  max_depth: float = 300.0
  seed: int = 0


@dataclass(frozen=True, eq=False)
class TrainResult:
  """A trained teacher's weights folder and how training went."""
  path: Path               # out_dir/<teacher name>
  losses: np.ndarray       # (steps,) training loss per step
  seconds: float           # wall-clock training time
  train_focal: float       # focal length (px) of the network input


def model_camera(frames: np.ndarray) -> CameraModel:
  """The model frame (MEDMODEL scaled) of uint8 RGB (N, H, W, 3) frames; ValueError otherwise."""
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[2] != 2 * frames.shape[1]:
    raise ValueError(f"expected uint8 RGB model frames (N, H, 2H, 3), got {frames.dtype} {frames.shape}")
  w = frames.shape[2]
  return MEDMODEL if w == MEDMODEL.width else MEDMODEL.scaled(w / MEDMODEL.width)


def _backbone(cfg: TeacherTrainConfig, **kw) -> Dinov2Config:
  return Dinov2Config(hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                      intermediate_size=4 * cfg.hidden, patch_size=cfg.patch, image_size=cfg.input_height, **kw)


def build_dpt(cfg: TeacherTrainConfig, init_depth: float = 10.0) -> DPTForDepthEstimation:
  """A DPT depth model on a Dinov2 backbone, laid out as DINOv2's KITTI heads (4 evenly spaced blocks, neck
  widths hidden/8..hidden); the last conv's bias starts at `init_depth` metres so its ReLU starts open."""
  n = cfg.layers
  blocks = sorted({max(1, n * k // 4) for k in (1, 2, 3, 4)})
  if len(blocks) != 4:
    raise ValueError(f"DPT needs 4 distinct backbone blocks, {n} layers give {blocks}")
  backbone = _backbone(cfg, out_indices=blocks, apply_layernorm=True, reshape_hidden_states=False)
  h = cfg.hidden
  model = DPTForDepthEstimation(DPTConfig(backbone_config=backbone, neck_hidden_sizes=[h // 8, h // 4, h // 2, h],
                                          fusion_hidden_size=cfg.dpt_fusion, use_bias_in_fusion_residual=False,
                                          add_projection=False))
  torch.nn.init.constant_(model.head.head[-2].bias, init_depth)
  return model


def build_seg(cfg: TeacherTrainConfig, train_focal: float) -> DinoSegNet:
  """A Dinov2 backbone with DINOv2's linear segmentation head over classes.SEMANTIC_CLASSES."""
  blocks = tuple(range(max(1, cfg.layers - 3), cfg.layers + 1)) if cfg.ms else (cfg.layers,)
  return DinoSegNet(Dinov2Model(_backbone(cfg)), LinearSegHead(HeadConfig(cfg.hidden, blocks, train_focal)))


def _schedule(cfg: TeacherTrainConfig, step: int) -> float:
  if step < cfg.warmup:
    return (step + 1) / cfg.warmup
  t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
  return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _train(model: torch.nn.Module, loss_fn, n: int, cfg: TeacherTrainConfig, desc: str) -> np.ndarray:
  """AdamW + warm-up/cosine for cfg.steps steps on random batches of the n samples; loss_fn(idx, flip)."""
  rng = np.random.default_rng(cfg.seed)
  opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(cfg, s))
  model.train()
  losses = []
  bar = progress_bar(range(cfg.steps), desc=desc, unit="step")
  for _ in bar:
    idx = np.sort(rng.choice(n, size=min(cfg.batch, n), replace=False))
    flip = cfg.hflip and bool(rng.integers(2))
    loss = loss_fn(idx, flip)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # from-scratch ViTs spike early without it
    opt.step()
    sched.step()
    losses.append(loss.item())
    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
  model.eval()
  return np.asarray(losses, np.float32)


def _batch(frames: np.ndarray, cam: CameraModel, size, idx, flip: bool, *targets: np.ndarray):
  x = to_network(frames[idx], cam, size, "cpu", torch.float32)
  ys = [torch.from_numpy(np.ascontiguousarray(t[idx])) for t in targets]
  if flip:
    x, ys = x.flip(-1), [y.flip(-1) for y in ys]
  return x, ys


def _write_folder(out_dir, name: str, write) -> Path:
  """Write a weights folder under a temporary name, then move it into place (replacing an old one)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tmp, final = out / f".{name}.partial", out / name
  shutil.rmtree(tmp, ignore_errors=True)
  write(tmp)
  shutil.rmtree(final, ignore_errors=True)
  tmp.replace(final)
  return final


def _record(folder: Path, cfg: TeacherTrainConfig, n: int, size, train_focal: float, losses: np.ndarray,
            seconds: float) -> None:
  (folder / TRAINING_JSON).write_text(json.dumps({
    "config": asdict(cfg), "frames": n, "network_size": list(size), "train_focal": train_focal,
    "seconds": round(seconds, 1), "loss_first20": float(losses[:20].mean()), "loss_last20": float(losses[-20:].mean()),
  }, indent=1))


def train_depth_teacher(frames_rgb: np.ndarray, depth: np.ndarray, out_dir, cfg: TeacherTrainConfig | None = None,
                        progress_desc: str = "dpt-depth") -> TrainResult:
  """Train a DPT (Dinov2 backbone) on uint8 RGB model frames (N, H, 2H, 3) and depth (N, H, 2H) in metres
  (0, inf or nan = unknown); saves out_dir/dpt-depth (save_pretrained + training.json)."""
  cfg = cfg or TeacherTrainConfig()
  cam = model_camera(frames_rgb)
  depth = np.asarray(depth, np.float32)
  if depth.shape != frames_rgb.shape[:3]:
    raise ValueError(f"depth shape {depth.shape} != frames {frames_rgb.shape[:3]}")
  valid_all = np.isfinite(depth) & (depth >= cfg.min_depth) & (depth <= cfg.max_depth)
  if not valid_all.any():
    raise ValueError(f"no depth in [{cfg.min_depth}, {cfg.max_depth}] m to train on")
  size = network_size(cam, cfg.input_height / cam.height, 2 * cfg.patch)
  train_focal = cam.focal * size[0] / cam.height
  torch.manual_seed(cfg.seed)
  model = build_dpt(cfg, float(np.median(depth[valid_all])))
  target_all = np.where(valid_all, depth, 1.0)

  def loss_fn(idx, flip):
    x, (target, valid) = _batch(frames_rgb, cam, size, idx, flip, target_all, valid_all)
    pred = to_model_frame(model(pixel_values=x).predicted_depth[:, None], cam)[:, 0]
    return silog_loss(torch.log(pred.clamp_min(cfg.min_depth)), target, valid)

  t0 = time.monotonic()
  losses = _train(model, loss_fn, len(frames_rgb), cfg, progress_desc)
  seconds = time.monotonic() - t0

  def write(folder: Path):
    # the focal length it learnt metric depth at: DptDepthTeacher reads it back, so load_teacher("dpt-depth") needs
    # no special config for a head trained here (official heads fall back to KITTI's)
    model.config.fair_train_focal = train_focal
    model.save_pretrained(folder)
    _record(folder, cfg, len(frames_rgb), size, train_focal, losses, seconds)

  return TrainResult(_write_folder(out_dir, "dpt-depth", write), losses, seconds, train_focal)


def train_seg_teacher(frames_rgb: np.ndarray, semantic: np.ndarray, out_dir, cfg: TeacherTrainConfig | None = None,
                      progress_desc: str = "dinov2-seg") -> TrainResult:
  """Train a Dinov2 backbone + linear head on uint8 RGB model frames (N, H, 2H, 3) and class maps (N, H, 2H)
  uint8 (classes.SEMANTIC_CLASSES, 255 ignore); saves out_dir/dinov2-seg (backbone + head files)."""
  cfg = cfg or TeacherTrainConfig()
  cam = model_camera(frames_rgb)
  semantic = np.asarray(semantic)
  if semantic.shape != frames_rgb.shape[:3]:
    raise ValueError(f"semantic shape {semantic.shape} != frames {frames_rgb.shape[:3]}")
  labels = semantic.astype(np.int64)
  bad = (labels != IGNORE_ID) & ((labels < 0) | (labels >= len(SEMANTIC_CLASSES)))
  if bad.any() or (labels == IGNORE_ID).all():
    raise ValueError(f"semantic labels must be class ids 0..{len(SEMANTIC_CLASSES) - 1} or {IGNORE_ID}, "
                     f"with some labelled pixels")
  size = network_size(cam, cfg.input_height / cam.height, cfg.patch)
  train_focal = cam.focal * size[0] / cam.height
  torch.manual_seed(cfg.seed)
  net = build_seg(cfg, train_focal)

  def loss_fn(idx, flip):
    x, (target,) = _batch(frames_rgb, cam, size, idx, flip, labels)
    return F.cross_entropy(to_model_frame(net(x), cam), target, ignore_index=IGNORE_ID)

  t0 = time.monotonic()
  losses = _train(net, loss_fn, len(frames_rgb), cfg, progress_desc)
  seconds = time.monotonic() - t0

  def write(folder: Path):
    net.backbone.save_pretrained(folder)
    save_head(net.head, folder)
    _record(folder, cfg, len(frames_rgb), size, train_focal, losses, seconds)

  return TrainResult(_write_folder(out_dir, "dinov2-seg", write), losses, seconds, train_focal)


def depth_teacher_config(weights_dir, camera: CameraModel = MEDMODEL) -> DptDepthConfig:
  """The DptDepthConfig of a DPT trained here: train_focal = its training input's focal length (training.json),
  so frames of `camera` are fed at the scale it was trained at and no focal correction is applied.
  (The segmentation teacher needs no such config: head.json holds its focal length.)"""
  path = Path(weights_dir) / "dpt-depth" / TRAINING_JSON
  if not path.is_file():
    raise FileNotFoundError(f"no {TRAINING_JSON} in {path.parent}: not a teacher trained by train_depth_teacher")
  return DptDepthConfig(camera=camera, train_focal=float(json.loads(path.read_text())["train_focal"]))

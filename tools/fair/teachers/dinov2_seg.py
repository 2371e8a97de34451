"""Semantic segmentation with DINOv2's linear head (Oquab et al., 2023, §7.4, "lin." and "+ms" settings).

The head is DINOv2's BNHead: the patch tokens of the backbone's last block ("lin.") or of its last four
blocks concatenated ("+ms"; the paper's +ms also averages test-time scales, which is not done here), each
through the backbone's final LayerNorm, then BatchNorm and a 1x1 convolution to class scores on the
patch grid, upsampled bilinearly to the image. Probabilities are the softmax of the upsampled scores, so
the class map is exactly their argmax.

The official counterparts are DINOv2's released linear heads (dinov2_vit{s,b,l,g}14_{ade20k,voc2012}_
{linear,ms}_head.pth on dl.fbaipublicfiles.com): mmsegmentation checkpoints over ADE20K's 150 / VOC's 21
classes, not our driving classes (selfdrive/modeld_fair/classes.py). So the head is trained here
(tools/fair/experiments/teacher_training.py); the backbone is the FAIR part, an official DINOv2 checkpoint
(facebook/dinov2-*) or one trained the same way.

Weights folder DIR/dinov2-seg/: the backbone's save_pretrained files (config.json, model.safetensors),
head.safetensors (BatchNorm + conv state) and head.json (classes, blocks, training focal length).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Dinov2Model

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from tools.fair.teachers.base import SemanticMaps, TeacherInput, default_dtype
from tools.fair.teachers.preprocess import network_size, to_model_frame, to_network
from tools.fair.teachers.weights import (HF_CACHE, WEIGHTS_ENV, MissingWeightsError, WeightsInfo, _from_dir,
                                         load_pretrained)

HEAD_WEIGHTS, HEAD_CONFIG = "head.safetensors", "head.json"
OFFICIAL_HEADS = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_ade20k_linear_head.pth"


@dataclass(frozen=True)
class HeadConfig:
  """The linear head's shape and what it was trained on (head.json)."""
  dim: int                          # backbone width
  blocks: tuple[int, ...]           # transformer blocks whose tokens are concatenated (1..N): (N,) lin., 4 = +ms
  train_focal: float                # focal length (px) of the network input in training
  classes: tuple[str, ...] = SEMANTIC_CLASSES

  def to_json(self) -> str:
    return json.dumps({"dim": self.dim, "blocks": list(self.blocks), "classes": list(self.classes),
                       "train_focal": self.train_focal}, indent=1)

  @classmethod
  def from_json(cls, text: str) -> HeadConfig:
    d = json.loads(text)
    return cls(int(d["dim"]), tuple(int(b) for b in d["blocks"]), float(d["train_focal"]), tuple(d["classes"]))


class LinearSegHead(nn.Module):
  """BatchNorm + 1x1 conv over the concatenated tokens of `blocks` (DINOv2's BNHead)."""

  def __init__(self, config: HeadConfig):
    super().__init__()
    self.config = config
    c = config.dim * len(config.blocks)
    self.bn = nn.BatchNorm2d(c)
    self.conv = nn.Conv2d(c, len(config.classes), 1)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    """Class scores (B, K, h, w) from concatenated patch tokens (B, C, h, w)."""
    return self.conv(self.bn(tokens))


class DinoSegNet(nn.Module):
  """Backbone + head: class scores on the patch grid of normalised images (used for training and labelling)."""

  def __init__(self, backbone: Dinov2Model, head: LinearSegHead):
    super().__init__()
    self.backbone, self.head = backbone, head
    n = backbone.config.num_hidden_layers
    if not all(1 <= b <= n for b in head.config.blocks) or head.config.dim != backbone.config.hidden_size:
      raise ValueError(f"head over blocks {head.config.blocks} of width {head.config.dim} does not fit a backbone "
                       f"of {n} blocks and width {backbone.config.hidden_size}")

  def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
    """Scores (B, K, H/p, W/p) of ImageNet-normalised (B, 3, H, W) images (H, W multiples of the patch p)."""
    b, _, height, width = pixel_values.shape
    p = self.backbone.config.patch_size
    hidden = self.backbone(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    # hidden_states[k] is block k's output; tokens pass the final LayerNorm (get_intermediate_layers(norm=True))
    tokens = [self.backbone.layernorm(hidden[k])[:, 1:] for k in self.head.config.blocks]
    x = torch.cat(tokens, -1).reshape(b, height // p, width // p, -1).permute(0, 3, 1, 2)
    return self.head(x)


def save_head(head: LinearSegHead, folder: str | Path) -> None:
  """Write head.safetensors and head.json into a backbone's save_pretrained folder (atomically)."""
  folder = Path(folder)
  state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
  for name, write in ((HEAD_WEIGHTS, lambda p: save_file(state, str(p))),
                      (HEAD_CONFIG, lambda p: p.write_text(head.config.to_json()))):
    tmp = folder / f".{name}.partial"
    write(tmp)
    tmp.replace(folder / name)


def load_head(folder: str | Path) -> LinearSegHead:
  """The head saved by save_head; ValueError for a head over other classes (e.g. an ADE20K head)."""
  folder = Path(folder)
  config = HeadConfig.from_json((folder / HEAD_CONFIG).read_text())
  if config.classes != SEMANTIC_CLASSES:
    raise ValueError(f"{folder}: head over classes {config.classes[:4]}...; this teacher needs "
                     f"classes.SEMANTIC_CLASSES {SEMANTIC_CLASSES}")
  head = LinearSegHead(config)
  head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
  return head.eval()


@dataclass(frozen=True)
class DinoSegConfig:
  """Input geometry of the segmentation teacher."""
  camera: CameraModel = MEDMODEL   # input frames: uint8 RGB in this model frame
  scale: float | None = None       # network input = model frame x scale; None: head.json's train_focal / focal


class Dinov2SegTeacher:
  """DINOv2 backbone + linear segmentation head over classes.SEMANTIC_CLASSES (tasks: "semantic")."""
  name = "dinov2-seg"
  tasks = ("semantic",)
  hf_ids = ("facebook/dinov2-small", "facebook/dinov2-base", "facebook/dinov2-large", "facebook/dinov2-giant")
  hf_revision = "main"
  model_type = "dinov2"

  def __init__(self, net: DinoSegNet, weights: WeightsInfo, config: DinoSegConfig, device: str, dtype: torch.dtype):
    self.net, self.weights, self.config, self.device, self.dtype = net, weights, config, device, dtype
    cam, head = config.camera, net.head.config
    scale = head.train_focal / cam.focal if config.scale is None else config.scale
    self.size = network_size(cam, scale, int(net.backbone.config.patch_size))

  @classmethod
  def resolve_weights(cls, weights_dir: str | Path | None = None, model_id: str | None = None) -> WeightsInfo:
    """DIR/dinov2-seg (weights_dir, else $FAIR_WEIGHTS_DIR): a Hugging Face cache holds backbones only, and
    the head is ours to train, so there is no cache fallback."""
    weights_dir = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV)
    if weights_dir is None or str(weights_dir) == HF_CACHE:
      raise MissingWeightsError(
        f"no weights for teacher {cls.name!r}: pass --weights DIR (or set {WEIGHTS_ENV}) holding DIR/{cls.name}/ "
        f"(a DINOv2 backbone's save_pretrained folder, e.g. {cls.hf_ids[0]} (https://huggingface.co/"
        f"{cls.hf_ids[0]}), plus {HEAD_WEIGHTS} and {HEAD_CONFIG} from tools.fair.experiments.teacher_training); "
        f"the official linear heads ({OFFICIAL_HEADS}) are mmseg checkpoints over ADE20K/VOC classes")
    info = _from_dir(cls.name, Path(weights_dir) / cls.name, cls.hf_ids, cls.hf_revision)
    missing = [n for n in (HEAD_WEIGHTS, HEAD_CONFIG) if not (info.path / n).is_file()]
    if missing:
      raise MissingWeightsError(
        f"no segmentation head for teacher {cls.name!r}: {info.path} lacks {', '.join(missing)}; train one with "
        f"tools.fair.experiments.teacher_training.train_seg_teacher (the official DINOv2 linear heads, "
        f"{OFFICIAL_HEADS}, are mmseg checkpoints over ADE20K/VOC classes, not ours)")
    return info

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: DinoSegConfig | None = None):
    """The teacher from resolved weights; dtype None picks bf16/fp16 on GPU, fp32 on CPU."""
    dtype = dtype or default_dtype(device)
    backbone = load_pretrained(Dinov2Model, weights, cls.model_type, device, dtype)
    net = DinoSegNet(backbone, load_head(weights.path).to(device, dtype)).eval()
    return cls(net, weights, config or DinoSegConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera)

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray) -> SemanticMaps:
    """Class map and probabilities of uint8 RGB (B, H, W, 3) model frames, at model-frame resolution."""
    x = to_network(frames, self.config.camera, self.size, self.device, self.dtype)
    probs = to_model_frame(self.net(x), self.config.camera).softmax(1)
    return SemanticMaps(probs.argmax(1).to(torch.uint8).cpu().numpy(), probs.cpu().numpy(), self.config.camera)

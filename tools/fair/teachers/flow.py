"""FlowTeacher: this project's unsupervised (UnSAMFlow-style) flow network as a pair teacher.

No official weights exist: UnSAMFlow publishes a recipe, not a model for openpilot's model frame, so the weights
are trained here with `fair flow-train SEGMENTS... --out DIR` (tools/fair/flow, docs/flow.md), which writes the
folder DIR/flow/ (config.json + model.safetensors) that this teacher loads through --weights DIR or
$FAIR_WEIGHTS_DIR=DIR. Frames may be any scaling of the model frame the network was trained at: they are resized
to it, and the flow is resized back (vectors scaled) before the forward-backward occlusion check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.flow.model import fb_occlusion, load_flownet, upsample_flow
from tools.fair.teachers.base import FlowMaps, TeacherInput
from tools.fair.teachers.preprocess import check_frames
from tools.fair.teachers.weights import HF_CACHE, WEIGHTS_ENV, MissingWeightsError, WeightsInfo, weights_hash

TRAIN_HINT = "train them with `fair flow-train SEGMENTS... --out DIR`"


@dataclass(frozen=True)
class FlowTeacherConfig:
  """camera: the model frame of the input frames; None = the frame the network was trained at."""
  camera: CameraModel | None = None


def camera_from_meta(meta: dict) -> CameraModel:
  """The model frame recorded in a flow weights folder's config.json."""
  return CameraModel(**meta["camera"])


class FlowTeacher:
  """Forward optical flow + occlusion of frame pairs (t, t + 1) (tasks: "flow"); input.clip == 2."""
  name = "flow"
  tasks = ("flow",)
  hf_ids: tuple[str, ...] = ()   # none: trained by this project
  hf_revision = "main"

  def __init__(self, net, weights: WeightsInfo, net_camera: CameraModel, config: FlowTeacherConfig,
               device: torch.device, dtype: torch.dtype):
    self.net, self.weights, self.net_camera, self.config = net, weights, net_camera, config
    self.device, self.dtype = device, dtype
    self.camera = config.camera or net_camera
    if abs(self.camera.width / self.camera.height - net_camera.width / net_camera.height) > 1e-6 or \
       abs(self.camera.focal / self.camera.width - net_camera.focal / net_camera.width) > 1e-6:
      raise ValueError(f"input frame {self.camera} is not a scaling of the network's frame {net_camera}")

  @classmethod
  def resolve_weights(cls, weights_dir=None, model_id: str | None = None) -> WeightsInfo:
    """DIR/flow/ of `weights_dir`, else of $FAIR_WEIGHTS_DIR. MissingWeightsError (no official weights exist;
    how to train them; the exact path expected) when absent; ValueError for a model id (there is none)."""
    if model_id is not None:
      raise ValueError(f"teacher 'flow' has no official model ids (got {model_id!r}); {TRAIN_HINT}")
    if weights_dir is None:
      weights_dir = os.environ.get(WEIGHTS_ENV) or HF_CACHE
    if str(weights_dir) == HF_CACHE:
      raise MissingWeightsError(
        "no weights for teacher 'flow': no official weights exist (UnSAMFlow publishes no model for this frame); "
        f"{TRAIN_HINT} and pass --weights DIR (or set {WEIGHTS_ENV}=DIR): the teacher loads DIR/flow/ "
        "(config.json + model.safetensors)")
    path = Path(weights_dir) / cls.name
    if not ((path / "config.json").is_file() and (path / "model.safetensors").is_file()):
      raise MissingWeightsError(
        f"no weights for teacher 'flow': expected config.json + model.safetensors at {path}\n  no official weights "
        f"exist; {TRAIN_HINT.replace('DIR', str(Path(weights_dir)))}")
    return WeightsInfo(cls.name, path, None, weights_hash(path))

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: FlowTeacherConfig | None = None) -> FlowTeacher:
    """The teacher from a resolved DIR/flow/ folder. dtype None: float32 (the network is small; grid sampling and
    the occlusion check want full precision)."""
    net, meta = load_flownet(weights.path)
    dtype = dtype or torch.float32
    device = torch.device(device)
    return cls(net.to(device, dtype), weights, camera_from_meta(meta), config or FlowTeacherConfig(), device, dtype)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.camera, clip=2)

  @torch.inference_mode()
  def __call__(self, frames: np.ndarray) -> FlowMaps:
    """Flow and occlusion of uint8 RGB frame pairs (B, 2, H, W, 3) from the first frame to the second."""
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[1] != 2:
      raise ValueError(f"expected frame pairs (B, 2, H, W, 3), got shape {frames.shape}")
    b = frames.shape[0]
    flat = check_frames(frames.reshape(-1, *frames.shape[2:]), self.camera)
    x = torch.from_numpy(flat).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 255
    net_size = (self.net_camera.height, self.net_camera.width)
    if x.shape[-2:] != net_size:
      x = F.interpolate(x, size=net_size, mode="bilinear", align_corners=False, antialias=True)
    x = x.view(b, 2, *x.shape[1:])
    flows = self.net(x[:, 0], x[:, 1], backward=True)[0]
    size = (self.camera.height, self.camera.width)
    if flows.shape[-2:] != size:
      flows = upsample_flow(flows, size)
    occ = fb_occlusion(flows[:b], flows[b:])
    return FlowMaps(flows[:b].permute(0, 2, 3, 1).float().cpu().numpy(), occ[:, 0].cpu().numpy(), self.camera)

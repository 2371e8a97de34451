"""CoTracker3 point tracks (Karaev et al., 2024), online mode, through Meta's own `cotracker` package ("cotracker").

The official package is not on PyPI. Install it from github.com/facebookresearch/co-tracker
(`pip install git+https://github.com/facebookresearch/co-tracker.git`, or put a clone / torch.hub checkout on
PYTHONPATH); `python -m tools.fair.teachers.fetch_cotracker` puts a copy of the package folder in
.venv/extern/ (see docs/lanes.md). Only `cotracker.predictor.CoTrackerOnlinePredictor` is used: the
official streaming loop (online_demo.py) runs windows of `window_len` frames that advance by half a window.

Weights: the official checkpoint scaled_online.pth (facebook/cotracker3 on Hugging Face, the URL in the
package's hubconf.py), at DIR/cotracker/scaled_online.pth or in the offline Hugging Face cache. Loaded with
torch.load(weights_only=True) (the package's own loader unpickles without that guard).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.files import sha256_file
from tools.fair.teachers.base import TeacherInput, Tracks
from tools.fair.teachers.lk_tracker import finish_tracks, tracker_queries
from tools.fair.teachers.preprocess import check_clip
from tools.fair.teachers.weights import HF_CACHE, WEIGHTS_ENV, MissingWeightsError, WeightsInfo

HF_ID = "facebook/cotracker3"
CHECKPOINT = "scaled_online.pth"
CHECKPOINT_URL = f"https://huggingface.co/{HF_ID}/resolve/main/{CHECKPOINT}"
INSTALL_HELP = ("CoTracker needs Meta's `cotracker` package (not on PyPI): "
                "pip install git+https://github.com/facebookresearch/co-tracker.git, or put a clone of that repository "
                "(or its torch.hub checkout ~/.cache/torch/hub/facebookresearch_co-tracker_main) on PYTHONPATH, or run "
                "`python -m tools.fair.teachers.fetch_cotracker` and add .venv/extern to PYTHONPATH")


class CoTrackerNotInstalledError(ModuleNotFoundError):
  """The `cotracker` package cannot be imported; the message says how to install it."""


def online_predictor_class():
  """cotracker.predictor.CoTrackerOnlinePredictor; CoTrackerNotInstalledError saying how to install it."""
  # the package seeds torch's global RNG when its model module is imported: keep the caller's RNG as it was
  with torch.random.fork_rng(devices=[]):
    try:
      from cotracker.predictor import CoTrackerOnlinePredictor
    except ImportError as e:
      raise CoTrackerNotInstalledError(f"{INSTALL_HELP} ({e})") from None
  return CoTrackerOnlinePredictor


@dataclass(frozen=True)
class CoTrackerConfig:
  """Input geometry and streaming of the online tracker."""
  camera: CameraModel = MEDMODEL          # input frames: uint8 RGB in this model frame
  window_len: int = 16                    # frames per window; the official checkpoint's time embedding has 16
  resolution: tuple[int, int] | None = None  # network input (H, W), multiples of 32; None: the model's (384, 512)
  support_grid: bool = True               # track a 6x6 grid along (the offline predictor does for few queries)
  grid: tuple[int, int] = (8, 16)         # (rows, cols) of first-frame queries when called without queries


class CoTrackerTeacher:
  """CoTracker3 online point tracks through a clip (tasks: "tracks"); a video teacher (input.clip == 0)."""
  name = "cotracker"
  tasks = ("tracks",)
  hf_ids = (HF_ID,)
  hf_revision = "main"

  def __init__(self, predictor, weights: WeightsInfo, config: CoTrackerConfig, device: str, dtype: torch.dtype):
    self.predictor, self.weights, self.config, self.device, self.dtype = predictor, weights, config, device, dtype

  @classmethod
  def resolve_weights(cls, weights_dir: str | Path | None = None, model_id: str | None = None) -> WeightsInfo:
    """weights_dir/cotracker/scaled_online.pth, else $FAIR_WEIGHTS_DIR/cotracker/scaled_online.pth, else the file in
    the offline Hugging Face cache of `model_id` (default facebook/cotracker3). MissingWeightsError naming the URL
    and the exact path otherwise; the WeightsInfo's sha256 is the file's own."""
    if weights_dir is None:
      weights_dir = os.environ.get(WEIGHTS_ENV) or HF_CACHE
    repo = model_id or HF_ID
    if str(weights_dir) != HF_CACHE:
      path = Path(weights_dir) / cls.name / CHECKPOINT
      if not path.is_file():
        raise MissingWeightsError(
          f"no weights for teacher {cls.name!r}: expected the official CoTracker3 online checkpoint at {path}\n"
          f"  official weights: {CHECKPOINT_URL}\n"
          f"  fetch with: hf download {HF_ID} {CHECKPOINT} --local-dir {path.parent}")
      return WeightsInfo(cls.name, path, None, sha256_file(path))
    try:
      path = Path(hf_hub_download(repo, CHECKPOINT, revision=cls.hf_revision, local_files_only=True))
    except LocalEntryNotFoundError:
      expected = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
      raise MissingWeightsError(
        f"no weights for teacher {cls.name!r}: {repo}/{CHECKPOINT} is not in the offline Hugging Face cache; expected "
        f"a snapshot under {expected}\n  official weights: {CHECKPOINT_URL}\n  fetch with: hf download {repo} "
        f"{CHECKPOINT}, or pass --weights DIR (or set {WEIGHTS_ENV}) with the file at DIR/{cls.name}/{CHECKPOINT}"
      ) from None
    return WeightsInfo(cls.name, path, repo, sha256_file(path))

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: CoTrackerConfig | None = None) -> CoTrackerTeacher:
    """The tracker from a resolved checkpoint. dtype None: float32 everywhere (coordinates are regressed, and the
    official demos run in float32); bf16/fp16 run the network under autocast."""
    config = config or CoTrackerConfig()
    predictor_class = online_predictor_class()
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:   # training checkpoints nest the weights (build_cotracker allows)
      state = state["model"]
    with torch.random.fork_rng(devices=[]):   # its random initialisation is overwritten: leave the caller's RNG alone
      predictor = predictor_class(checkpoint=None, window_len=config.window_len)
    try:
      predictor.model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
      raise ValueError(f"{weights.path} is not a CoTracker3 online checkpoint for window_len={config.window_len} "
                       f"(official: {CHECKPOINT_URL}): {str(e).splitlines()[0]}") from None
    if config.resolution is not None:
      h, w = config.resolution
      if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"resolution {config.resolution} must be positive multiples of 32 (stride 4, 4 levels)")
      predictor.interp_shape = (h, w)
    return cls(predictor.to(device).eval(), weights, config, device, dtype or torch.float32)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera, clip=0)

  @torch.inference_mode()
  def __call__(self, clip: np.ndarray, queries=None) -> Tracks:
    """Tracks of query points (N, 3) = (t, x, y) through one clip (1, T, H, W, 3) of uint8 RGB model frames;
    queries None: the config's grid of points on the first frame (lk_tracker.grid_queries)."""
    cam = self.config.camera
    frames = check_clip(clip, cam)
    q = tracker_queries(queries, len(frames), cam, self.config.grid)
    if not len(q):
      return finish_tracks(np.zeros((len(frames), 0, 2)), np.zeros((len(frames), 0), bool), q, cam)
    p = self.predictor
    video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()[None]   # (1, T, 3, H, W), 0..255
    window, grid = p.model.window_len, self.config.support_grid
    autocast = torch.autocast(torch.device(self.device).type, self.dtype, enabled=self.dtype != torch.float32)
    with autocast:
      p(video[:, :window], is_first_step=True, queries=torch.from_numpy(q)[None].to(self.device), add_support_grid=grid)
      # online_demo.py's loop: window [ind, ind + window_len), then advance by half a window; the last one may be short
      ind = 0
      while True:
        tracks, visible = p(video[:, ind:ind + window], add_support_grid=grid)
        if ind + window >= len(frames):
          break
        ind += p.step
    if tracks.shape[1] != len(frames):
      raise RuntimeError(f"cotracker returned {tracks.shape[1]} frames for a clip of {len(frames)}")
    return finish_tracks(tracks[0].float().cpu().numpy(), visible[0].cpu().numpy(), q, cam)

"""Point tracking with OpenCV's pyramidal Lucas-Kanade (Bouguet 2000), a weight-free video teacher ("lk").

Each query point is tracked forward from its query frame, frame to frame, with calcOpticalFlowPyrLK;
a step is kept only if tracking the new position back lands within `fb_max_px` of where it started
(forward-backward consistency, Kalal et al. 2010) and inside the frame. A point that fails a step is
lost for the rest of the clip: LK has no re-detection, so it never comes back.

Also home of what every point tracker shares (trackers: lk, cotracker): the clip and query checks, the
default query grid and the Tracks conventions below. Called without queries (as `fair label` calls video
teachers), a tracker tracks a regular grid of its config's `grid` = (rows, cols) points from the clip's
first frame (`grid_queries`; CoTracker's own "grid_size" mode is the precedent).

Tracks conventions (both trackers): points before a point's query frame, and after LK loses it, are NaN
and not visible; at its query frame a point is exactly its query and visible; a point outside the frame
(centres at integers, so outside [-0.5, W - 0.5) x [-0.5, H - 0.5)) is never visible.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from tools.fair.teachers.base import TeacherInput, Tracks
from tools.fair.teachers.preprocess import check_clip
from tools.fair.teachers.weights import WeightsInfo


def check_queries(queries, n_frames: int, camera: CameraModel) -> np.ndarray:
  """Query points (N, 3) = (t, x, y) as float32: t an integer frame index of the clip, (x, y) a finite
  pixel inside the frame; ValueError naming the first bad row otherwise."""
  q = np.asarray(queries, np.float64)
  if q.ndim != 2 or q.shape[1] != 3:
    raise ValueError(f"queries must be (N, 3) rows (t, x, y), got shape {q.shape}")
  bad_t = ~np.isfinite(q[:, 0]) | (q[:, 0] != np.round(q[:, 0])) | (q[:, 0] < 0) | (q[:, 0] >= n_frames)
  bad_xy = ~(np.isfinite(q[:, 1:]).all(1) & (q[:, 1] >= -0.5) & (q[:, 1] < camera.width - 0.5) &
             (q[:, 2] >= -0.5) & (q[:, 2] < camera.height - 0.5))
  if bad_t.any():
    i = int(np.flatnonzero(bad_t)[0])
    raise ValueError(f"query {i} {q[i].tolist()}: frame must be an integer in [0, {n_frames - 1}]")
  if bad_xy.any():
    i = int(np.flatnonzero(bad_xy)[0])
    raise ValueError(f"query {i} {q[i].tolist()}: (x, y) must lie inside the {camera.width}x{camera.height} frame")
  return q.astype(np.float32)


def grid_queries(grid: tuple[int, int], camera: CameraModel, t: int = 0) -> np.ndarray:
  """Queries (rows * cols, 3) = (t, x, y) float32 at the centres of a rows x cols grid of equal cells over the
  frame (row-major, pixel centres at integers); ValueError unless rows, cols >= 1."""
  rows, cols = (int(n) for n in grid)
  if rows < 1 or cols < 1:
    raise ValueError(f"query grid must be (rows, cols) >= 1, got {grid}")
  x = (np.arange(cols) + 0.5) * camera.width / cols - 0.5
  y = (np.arange(rows) + 0.5) * camera.height / rows - 0.5
  yy, xx = np.meshgrid(y, x, indexing="ij")
  return np.stack([np.full(xx.size, t), xx.ravel(), yy.ravel()], 1).astype(np.float32)


def tracker_queries(queries, n_frames: int, camera: CameraModel, grid: tuple[int, int]) -> np.ndarray:
  """check_queries of `queries`, or the first frame's grid_queries(grid) when queries is None."""
  return check_queries(grid_queries(grid, camera) if queries is None else queries, n_frames, camera)


def inside(points: np.ndarray, camera: CameraModel) -> np.ndarray:
  """(..., 2) pixel positions inside the frame (pixel centres at integers); False for NaN."""
  x, y = points[..., 0], points[..., 1]
  with np.errstate(invalid="ignore"):
    return (x >= -0.5) & (x < camera.width - 0.5) & (y >= -0.5) & (y < camera.height - 0.5)


def finish_tracks(points: np.ndarray, visible: np.ndarray, queries: np.ndarray, camera: CameraModel) -> Tracks:
  """Apply the shared conventions (module docstring) to raw (T, N, 2) points and (T, N) visibility."""
  points = np.array(points, np.float32)
  visible = np.array(visible, bool)
  t0 = queries[:, 0].astype(np.intp)
  before = np.arange(len(points))[:, None] < t0[None, :]
  points[before] = np.nan
  n = np.arange(len(queries))
  points[t0, n] = queries[:, 1:]
  visible = (visible & ~before & inside(points, camera)) | (np.arange(len(points))[:, None] == t0[None, :])
  return Tracks(points, visible, camera)


@dataclass(frozen=True)
class LKConfig:
  """Lucas-Kanade parameters (OpenCV's names) and the consistency check."""
  camera: CameraModel = MEDMODEL   # input frames: uint8 RGB in this model frame
  win_size: int = 21               # square search window (px) at each pyramid level
  max_level: int = 3               # pyramid levels above the full image
  iterations: int = 30             # per level, or until the update is below epsilon
  epsilon: float = 0.01            # px
  min_eig: float = 1e-4            # OpenCV's minEigThreshold: textureless windows fail
  fb_max_px: float = 1.0           # forward-backward error (px) above which a point is lost
  grid: tuple[int, int] = (8, 16)  # (rows, cols) of first-frame queries when called without queries

  def params(self) -> dict:
    """The tracking parameters (everything but the camera), for hashing and provenance."""
    d = asdict(self)
    d.pop("camera")
    return d


def params_hash(config: LKConfig) -> str:
  """sha256 of the algorithm name and its parameters: the "weights" of a weight-free tracker."""
  text = json.dumps({"algorithm": "cv2.calcOpticalFlowPyrLK+forward-backward", **config.params()}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


class LKTracker:
  """Pyramidal Lucas-Kanade point tracks through a clip (tasks: "tracks"); a video teacher (input.clip == 0)."""
  name = "lk"
  tasks = ("tracks",)
  hf_ids: tuple[str, ...] = ()   # no weights: OpenCV's implementation and LKConfig are the whole model
  hf_revision = "main"

  def __init__(self, weights: WeightsInfo, config: LKConfig):
    self.weights, self.config = weights, config
    c = config
    self._lk = dict(winSize=(c.win_size, c.win_size), maxLevel=c.max_level, minEigThreshold=c.min_eig,
                    criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.iterations, c.epsilon))

  @classmethod
  def resolve_weights(cls, weights_dir=None, model_id=None) -> WeightsInfo:
    """No files to find: a WeightsInfo whose sha256 is params_hash of the default LKConfig (weights_dir and
    model_id are ignored); `load` records the hash of the config it is given."""
    return WeightsInfo(cls.name, Path(cv2.__file__).parent, None, params_hash(LKConfig()))

  @classmethod
  def load(cls, weights: WeightsInfo, device: str = "cpu", dtype: torch.dtype | None = None,
           config: LKConfig | None = None) -> LKTracker:
    """The tracker (CPU only: device and dtype are accepted for the Teacher protocol and ignored)."""
    config = config or LKConfig()
    return cls(WeightsInfo(cls.name, weights.path, None, params_hash(config)), config)

  @property
  def input(self) -> TeacherInput:
    return TeacherInput(self.config.camera, clip=0)

  def __call__(self, clip: np.ndarray, queries=None) -> Tracks:
    """Tracks of query points (N, 3) = (t, x, y) through one clip (1, T, H, W, 3) of uint8 RGB model frames;
    queries None: the config's grid of points on the first frame."""
    cam = self.config.camera
    frames = check_clip(clip, cam)
    q = tracker_queries(queries, len(frames), cam, self.config.grid)
    n_t, n = len(frames), len(q)
    points = np.full((n_t, n, 2), np.nan, np.float32)
    visible = np.zeros((n_t, n), bool)
    t0 = q[:, 0].astype(np.intp)
    alive = np.zeros(n, bool)
    cur = np.full((n, 2), np.nan, np.float32)
    grey = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    for t in range(n_t):
      new = t0 == t
      cur[new], alive[new] = q[new, 1:], True
      points[t, alive], visible[t, alive] = cur[alive], True
      if t + 1 == n_t:
        break
      nxt = cv2.cvtColor(frames[t + 1], cv2.COLOR_RGB2GRAY)
      idx = np.flatnonzero(alive)
      if len(idx):
        p0 = np.ascontiguousarray(cur[idx].reshape(-1, 1, 2))
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(grey, nxt, p0, None, **self._lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(nxt, grey, p1, None, **self._lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        p1 = p1.reshape(-1, 2)
        ok = st1.ravel().astype(bool) & st2.ravel().astype(bool) & (fb <= self.config.fb_max_px) & inside(p1, cam)
        cur[idx] = np.where(ok[:, None], p1, np.nan)
        alive[idx[~ok]] = False
      grey = nxt
    return finish_tracks(points, visible, q, cam)

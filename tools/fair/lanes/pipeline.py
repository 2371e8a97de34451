"""Lane pseudo-labels by point tracking: initialise lane points, track them through the video, lift them to the road.

1. Initialise on one frame: lane lines as road-frame polylines in the student's 4 slots (left-left, left, right,
   right-right of the ego), from the simulator's ground truth ("gt"), from openpilot's own modelV2.laneLines logged
   in a real route ("modelv2"), or from a semantic map's lane_marking pixels clustered into lines in the road plane
   ("seg"). Each line is sampled at `init_x` distances and projected into the calibrated model frame.
2. Track those pixels through the following frames with a point tracker (lk or cotracker; tools.fair.teachers).
3. Lift each visible tracked pixel back to the road by intersecting its ray with the flat ground plane z = 0
   of the road frame, using the calibrated model frame (rpy 0) and the device height (scene.json for simulated
   segments, liveCalibration.height, else openpilot's default 1.22 m). This assumes flat ground: on grades and
   crests the lifted distance is off (z is always 0).
4. Re-sample each slot's lifted points to y at model_io.LANE_X (linear, no extrapolation: a LANE_X point is visible
   when it lies within the x range of at least `min_points` visible tracked points).
5. Re-initialise when, for some slot that started with >= min_points points, fewer than
   max(min_points, min_visible x its starting count) stay visible, or after `max_clip` frames.

Output per frame: lanes (4, 33, 2) road-frame y, z (0 where not visible), visible (4, 33), exists (4,).
Road frame: x forward, y right, z down, origin on the road below the camera (tools.fair.sim.gt).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL, CameraModel, project_calib_points
from selfdrive.modeld_fair.classes import CLASS_ID
from selfdrive.modeld_fair.model_io import LANE_X, N_LANE_POINTS, N_LANES
from tools.fair.bench.metrics.lanes import lateral_error

INIT_SOURCES = ("gt", "modelv2", "seg")
ERROR_DISTANCES = (10.0, 20.0, 40.0)   # m, where lateral errors are reported


@dataclass(frozen=True)
class LaneConfig:
  """Where lane points start, when to re-initialise, and how lane-marking pixels are grouped into lines."""
  camera: CameraModel = MEDMODEL      # the model frame the tracker sees
  init_x: tuple[float, ...] = tuple(np.geomspace(6.0, 80.0, 24).round(2).tolist())  # m: start points per line
  horizon_margin: float = 0.02        # start points at least this fraction of the frame height below the horizon
  max_clip: int = 60                  # frames tracked from one initialisation (3 s at 20 Hz)
  min_visible: float = 0.5            # re-init when a slot keeps fewer than this fraction of its start points
  min_points: int = 3                 # visible tracked points a slot needs on a frame to be labelled
  slot_x: float = 10.0                # m: lines are put in slots by their lateral offset at this distance
  seg_voxel: float = 0.1              # m: lane-marking pixels are thinned to one per voxel of the road plane
  seg_link: float = 0.5               # m: marking points this close belong to the same piece of paint
  seg_join: float = 0.3               # m: a piece joins a line whose fit predicts its offsets this closely (dashes)
  seg_min_span: float = 4.0           # m: shorter lines (along x) are dropped


@dataclass(frozen=True, eq=False)
class LaneInit:
  """Lane lines to start tracking from: road-frame points per slot, NaN rows where a line has no point."""
  points: np.ndarray   # (4, K, 3) float64 x, y, z
  exists: np.ndarray   # (4,) bool


@dataclass(frozen=True)
class ModelFrame:
  """One frame of a segment in the calibrated model frame."""
  index: int               # position in the video file
  frame_id: int | None     # camera frame id (links to modelV2.frameId), None when the log has no match
  rgb: np.ndarray          # (H, W, 3) uint8


@dataclass(frozen=True, eq=False)
class LaneLabels:
  """Tracked lane labels of consecutive frames."""
  frame_index: np.ndarray  # (F,) int64 video frame index
  lanes: np.ndarray        # (F, 4, 33, 2) float32 road-frame y, z at LANE_X (0 where not visible)
  visible: np.ndarray      # (F, 4, 33) bool
  exists: np.ndarray       # (F, 4) bool: the slot had a line at the last initialisation
  init_frame: np.ndarray   # (F,) int64 frame index of the initialisation the frame's tracks started from
  source: str              # "gt" | "modelv2" | "seg"
  tracker: str             # "lk" | "cotracker"
  weights_sha256: str      # the tracker's WeightsInfo.sha256
  height: float            # m, device height used to lift pixels to the road


# ---------------------------------------------------------------- geometry

def road_to_model(points: np.ndarray, height: float, camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
  """Road-frame points (K, 3) -> model-frame pixels (K, 2) and whether each is in front of the camera and finite."""
  pts = np.asarray(points, np.float64).reshape(-1, 3)
  uv, depth = project_calib_points(pts + np.array([0.0, 0.0, height]), camera)
  return uv, np.isfinite(uv).all(1) & (depth > 0.1)


def model_to_road(uv: np.ndarray, height: float, camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
  """Model-frame pixels (K, 2) -> road-frame points (K, 3) on the flat ground z = 0, and whether the pixel is below
  the horizon (only those rays meet the ground ahead). The model frame is the calib frame (rpy 0), so a pixel's ray
  is (1, (u - cx) / f, (v - cy) / f) from the camera at (0, 0, -height)."""
  uv = np.asarray(uv, np.float64).reshape(-1, 2)
  dv = uv[:, 1] - camera.cy
  ok = np.isfinite(uv).all(1) & (dv > 1e-6)
  with np.errstate(divide="ignore", invalid="ignore"):
    x = np.where(ok, height * camera.focal / dv, np.nan)
    y = x * (uv[:, 0] - camera.cx) / camera.focal
  return np.stack([x, y, np.zeros_like(x)], 1), ok


def _sample(points: np.ndarray, xs) -> np.ndarray:
  """A road polyline (K, 3) (any order, NaN rows ignored) at distances xs: (len(xs), 3), NaN outside its x range."""
  p = points[np.isfinite(points).all(1)]
  xs = np.asarray(xs, np.float64)
  out = np.full((len(xs), 3), np.nan)
  if len(p) < 2:
    return out
  p = p[np.argsort(p[:, 0], kind="stable")]
  inside = (xs >= p[0, 0]) & (xs <= p[-1, 0])
  out[inside, 0] = xs[inside]
  out[inside, 1] = np.interp(xs[inside], p[:, 0], p[:, 1])
  out[inside, 2] = np.interp(xs[inside], p[:, 0], p[:, 2])
  return out


def assign_slots(lines: list[np.ndarray], config: LaneConfig) -> LaneInit:
  """Road polylines (K_i, 3) -> the 4 slots: by lateral offset at slot_x (the nearest point's when a line does not
  reach it), the nearest line left of the ego is slot 1, the next left slot 0; right of it slots 2 and 3."""
  xs = np.asarray(config.init_x, np.float64)
  pts = np.full((N_LANES, len(xs), 3), np.nan)
  exists = np.zeros(N_LANES, bool)
  offsets = []
  for line in lines:
    p = line[np.isfinite(line).all(1)]
    if len(p) >= 2:
      p = p[np.argsort(p[:, 0], kind="stable")]
      offsets.append((float(np.interp(config.slot_x, p[:, 0], p[:, 1])), p))
  left = sorted((o for o in offsets if o[0] < 0), key=lambda o: -o[0])[:2]
  right = sorted((o for o in offsets if o[0] >= 0), key=lambda o: o[0])[:2]
  for slot, (_, p) in list(zip((1, 0), left)) + list(zip((2, 3), right)):
    pts[slot], exists[slot] = _sample(p, xs), True
  return LaneInit(pts, exists)


# ---------------------------------------------------------------- initialisation sources

def gt_init(scene, f: int, config: LaneConfig) -> LaneInit:
  """The simulator's painted lane lines (kind != "none") of frame f, in slots."""
  from tools.fair.sim.gt import lane_lines
  return assign_slots([line.points for line in lane_lines(scene, f) if line.kind != "none"], config)


def gt_lanes(scene, f: int, config: LaneConfig) -> tuple[np.ndarray, np.ndarray]:
  """Ground-truth lanes of frame f in the label layout: (4, 33, 3) road points at LANE_X (NaN: no line), exists (4,)."""
  init = gt_init(scene, f, replace(config, init_x=tuple(LANE_X.tolist())))
  return init.points, init.exists


def modelv2_init(model_v2, height: float, config: LaneConfig, min_prob: float = 0.5) -> LaneInit:
  """openpilot's modelV2 lane lines (laneLines: x, y, z in the calibrated frame with the camera at the origin, z down,
  at openpilot's 33 fixed distances; already in our slot order). Lines with laneLineProbs < min_prob do not exist."""
  lines = list(model_v2.laneLines)
  probs = list(model_v2.laneLineProbs)
  if len(lines) != N_LANES or len(probs) != N_LANES:
    raise ValueError(f"modelV2 has {len(lines)} laneLines and {len(probs)} laneLineProbs, expected {N_LANES}")
  xs = np.asarray(config.init_x, np.float64)
  pts = np.full((N_LANES, len(xs), 3), np.nan)
  exists = np.array([p >= min_prob for p in probs], bool)
  for i, line in enumerate(lines):
    p = np.stack([np.asarray(line.x, np.float64), np.asarray(line.y, np.float64), np.asarray(line.z, np.float64)], 1)
    if exists[i] and len(p) >= 2:
      pts[i] = _sample(p - np.array([0.0, 0.0, height]), xs)   # calib frame -> road frame
  return LaneInit(pts, exists & np.isfinite(pts).all(2).any(1))


def seg_init(semantic: np.ndarray, height: float, config: LaneConfig) -> LaneInit:
  """Lane lines from a semantic map's lane_marking pixels: lifted to the road plane, thinned to one point per
  seg_voxel, linked into pieces of paint (points within seg_link), pieces joined into lines when the larger line's
  fit (y as a polynomial in x) predicts the piece within seg_join (dashes), short or crosswise lines dropped."""
  cam = config.camera
  if semantic.shape != (cam.height, cam.width):
    raise ValueError(f"semantic map {semantic.shape} does not match the {cam.width}x{cam.height} model frame")
  v, u = np.nonzero(semantic == CLASS_ID["lane_marking"])
  pts, ok = model_to_road(np.stack([u, v], 1), height, cam)
  pts = pts[ok & (pts[:, 0] >= config.init_x[0]) & (pts[:, 0] <= config.init_x[-1])]
  if len(pts):
    pts = np.unique(np.round(pts / config.seg_voxel), axis=0) * config.seg_voxel
  if len(pts) < 2:
    return assign_slots([], config)
  pairs = cKDTree(pts[:, :2]).query_pairs(config.seg_link, output_type="ndarray")
  graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts), len(pts)))
  n, comp = connected_components(graph, directed=False)
  pieces = sorted((pts[comp == c] for c in range(n)), key=len, reverse=True)
  lines: list[np.ndarray] = []
  for piece in pieces:
    for i, line in enumerate(lines):
      if np.median(np.abs(piece[:, 1] - _fit(line)(piece[:, 0]))) < config.seg_join:
        lines[i] = np.concatenate([line, piece])
        break
    else:
      lines.append(piece)
  kept = []
  for line in lines:
    span_x, span_y = np.ptp(line[:, 0]), np.ptp(line[:, 1])
    if span_x >= config.seg_min_span and span_x > span_y:
      xs = np.asarray(config.init_x, np.float64)
      xs = xs[(xs >= line[:, 0].min()) & (xs <= line[:, 0].max())]
      kept.append(np.stack([xs, _fit(line)(xs), np.zeros_like(xs)], 1))
  return assign_slots(kept, config)


def _fit(line: np.ndarray):
  """y(x) of a line's points: quadratic when it spans > 15 m along x, linear when > 2 m, else its median offset."""
  span = np.ptp(line[:, 0])
  deg = 2 if span > 15 else 1 if span > 2 else 0
  return np.poly1d(np.polyfit(line[:, 0], line[:, 1], deg))


# ---------------------------------------------------------------- tracking

def start_points(init: LaneInit, height: float, config: LaneConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pixels (N, 2) of an initialisation's points that are inside the frame and below the horizon margin, the slot
  (N,) and the road-frame point (N, 3) of each."""
  cam = config.camera
  uv, ok = road_to_model(init.points.reshape(-1, 3), height, cam)
  slot = np.repeat(np.arange(N_LANES), init.points.shape[1])
  with np.errstate(invalid="ignore"):
    ok &= (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width - 1) & (uv[:, 1] <= cam.height - 1) & \
          (uv[:, 1] >= cam.cy + config.horizon_margin * cam.height) & init.exists[slot]
  return uv[ok].astype(np.float32), slot[ok], init.points.reshape(-1, 3)[ok]


def frames_kept(visible: np.ndarray, slot: np.ndarray, config: LaneConfig) -> int:
  """How many frames of a tracked clip (T, N) to keep: up to the first frame where a slot that started with
  >= min_points points keeps fewer than max(min_points, min_visible x start) visible (at least 1)."""
  start = np.bincount(slot, minlength=N_LANES)
  for t in range(1, len(visible)):
    now = np.bincount(slot[visible[t]], minlength=N_LANES)
    if np.any((start >= config.min_points) & (now < np.maximum(config.min_points, config.min_visible * start))):
      return t
  return len(visible)


def frame_lanes(points: np.ndarray, visible: np.ndarray, slot: np.ndarray, height: float,
                config: LaneConfig) -> tuple[np.ndarray, np.ndarray]:
  """One frame's tracked pixels (N, 2) -> lanes (4, 33, 2) y, z at LANE_X and visible (4, 33)."""
  road, ok = model_to_road(points, height, config.camera)
  ok &= visible
  lanes = np.zeros((N_LANES, N_LANE_POINTS, 2), np.float32)
  vis = np.zeros((N_LANES, N_LANE_POINTS), bool)
  for s in range(N_LANES):
    p = road[ok & (slot == s)]
    if len(p) < config.min_points:
      continue
    sampled = _sample(p, LANE_X)
    vis[s] = np.isfinite(sampled[:, 1])
    lanes[s, vis[s]] = sampled[vis[s], 1:]
  return lanes, vis


def label_lanes(frames: Iterable[ModelFrame], init: Callable[[ModelFrame], LaneInit | None], tracker, height: float,
                config: LaneConfig, source: str) -> LaneLabels:
  """Track lane points through `frames` (in order) with `tracker` (a video teacher on config.camera) and return
  per-frame lanes. `init(frame)` gives the lines to start from (None: nothing to start from on that frame, which
  is then labelled without lanes and the next frame is tried)."""
  if tracker.input.camera != config.camera:
    raise ValueError(f"tracker sees {tracker.input.camera.name} frames, the pipeline {config.camera.name}")
  it: Iterator[ModelFrame] = iter(frames)
  buf: list[ModelFrame] = []
  rows: list[tuple] = []
  empty = (np.zeros((N_LANES, N_LANE_POINTS, 2), np.float32), np.zeros((N_LANES, N_LANE_POINTS), bool),
           np.zeros(N_LANES, bool))
  while True:
    while len(buf) < config.max_clip and (f := next(it, None)) is not None:
      buf.append(f)
    if not buf:
      break
    start = init(buf[0])
    uv, slot, _ = start_points(start, height, config) if start is not None else (np.zeros((0, 2)), None, None)
    if not len(uv):
      first = buf.pop(0)
      rows.append((first.index, first.index, *empty))
      continue
    queries = np.concatenate([np.zeros((len(uv), 1), np.float32), uv], 1)
    tracks = tracker(np.stack([b.rgb for b in buf])[None], queries)
    n = frames_kept(tracks.visible, slot, config)
    for t in range(n):
      lanes, vis = frame_lanes(tracks.points[t], tracks.visible[t], slot, height, config)
      rows.append((buf[t].index, buf[0].index, lanes, vis, start.exists.copy()))
    del buf[:n]
  if not rows:
    raise ValueError("no frames to label")
  idx, init_idx, lanes, vis, exists = (np.stack(c) for c in zip(*rows))
  return LaneLabels(idx.astype(np.int64), lanes, vis, exists, init_idx.astype(np.int64), source, tracker.name,
                    tracker.weights.sha256, float(height))


# ---------------------------------------------------------------- segments

def model_frames(segment, camera: CameraModel, max_frames: int | None = None) -> Iterator[ModelFrame]:
  """A Segment's road-camera frames warped into `camera` (a model frame) with the calibration logged at each
  frame (Segment.warp_calibration: the first one before it; a segment without any is refused), as the
  teachers see them."""
  from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
  tables, key = None, None
  frames = segment.frames()
  try:
    for f in frames:
      if max_frames is not None and f.index >= max_frames:
        break
      rpy = segment.warp_calibration(f)
      if rpy != key:   # calibration changes rarely: tables are rebuilt only then
        tables, key = warp_tables(segment.camera, rpy, model=camera, full_chroma=True), rpy
      yield ModelFrame(f.index, f.frame_id, warp_rgb(f.nv12, tables))
  finally:
    frames.close()


def segment_height(segment) -> float:
  """Device height above the road (m): the simulator's scene, else the latest liveCalibration.height, else 1.22."""
  if segment.scene_path is not None:
    from tools.fair.sim.gt import load_segment_scene
    return float(load_segment_scene(segment.path).calib.height)
  for ev in reversed(segment.of_type("liveCalibration")):
    h = list(ev.liveCalibration.height)
    if h and np.isfinite(h[0]) and h[0] > 0:
      return float(h[0])
  return DEFAULT_CAMERA_HEIGHT


def modelv2_by_frame(segment) -> dict[int, object]:
  """The segment's modelV2 messages by the camera frameId they were computed on."""
  return {ev.modelV2.frameId: ev.modelV2 for ev in segment.of_type("modelV2")}


# ---------------------------------------------------------------- evaluation and storage

@dataclass(frozen=True)
class LaneErrors:
  """Lateral error (m) of labels against ground truth, over visible label points of lines that exist in both."""
  at: dict[float, float]   # distance (m) -> mean |y error| there (bench.metrics.lanes.lateral_error)
  median: float            # over every visible LANE_X point
  p95: float
  n_points: int
  visible_fraction: float  # visible label points / LANE_X points of gt lines within the labelled x range


def lane_errors(labels: LaneLabels, scene, config: LaneConfig, max_x: float | None = None) -> LaneErrors:
  """Compare labels with the simulator's lanes of the same frames (slot by slot)."""
  max_x = max(config.init_x) if max_x is None else max_x
  per_d: dict[float, list] = {d: [] for d in ERROR_DISTANCES}
  errs, n_gt = [], 0
  for k, f in enumerate(labels.frame_index):
    gt, gt_exists = gt_lanes(scene, int(f), config)
    for s in np.flatnonzero(gt_exists & labels.exists[k]):
      vis = labels.visible[k, s]
      n_gt += int(np.sum(np.isfinite(gt[s, :, 1]) & (LANE_X >= config.init_x[0]) & (LANE_X <= max_x)))
      if vis.sum() < 2:
        continue
      pred = np.concatenate([LANE_X[vis, None], labels.lanes[k, s, vis]], 1)
      for d, e in zip(ERROR_DISTANCES, lateral_error(pred, gt[s][np.isfinite(gt[s, :, 0])], ERROR_DISTANCES)):
        if np.isfinite(e):
          per_d[d].append(e)
      e = np.abs(labels.lanes[k, s, vis, 0] - gt[s, vis, 1])
      errs.extend(e[np.isfinite(e)].tolist())
  errs = np.asarray(errs)
  mean = lambda x: float(np.mean(x)) if len(x) else float("nan")
  return LaneErrors({d: mean(v) for d, v in per_d.items()}, float(np.median(errs)) if len(errs) else float("nan"),
                    float(np.percentile(errs, 95)) if len(errs) else float("nan"), len(errs),
                    len(errs) / n_gt if n_gt else float("nan"))


def write_labels(store, segment, labels: LaneLabels, tracker, camera: CameraModel, name: str = "lanes",
                 final: bool = True, shard_frames: int = 100) -> list:
  """Write labels of `segment` (a routes.Segment) into a LabelStore as teacher `name` (what StudentDataset's
  "lanes" teacher reads), in shards of `shard_frames` frame indices; returns the ShardEntries. Arrays: lanes
  (N, 4, 33, 2) float32, visible (N, 4, 33) uint8, exists (N, 4) uint8, init_frame (N,) int64; metadata:
  source, tracker, height, lane_x. final: the labels reach the end of the video."""
  from tools.fair.labels.pipeline import teacher_info
  from tools.fair.labels.store import Labels
  info = teacher_info(name, tracker, segment, {"init": labels.source, "height": f"{labels.height:.4f}"})
  meta = {"source": labels.source, "tracker": labels.tracker, "height": labels.height, "lane_x": LANE_X.tolist()}
  shard = labels.frame_index // shard_frames
  entries = []
  for k in np.unique(shard):
    r = shard == k
    arrays = {"lanes": labels.lanes[r].astype(np.float32), "visible": labels.visible[r].astype(np.uint8),
              "exists": labels.exists[r].astype(np.uint8), "init_frame": labels.init_frame[r].astype(np.int64)}
    entries.append(store.write(replace(info, final=bool(final and k == shard[-1])), labels.frame_index[r],
                               Labels(arrays, meta, camera)))
  return entries


def read_labels(store, segment: str, name: str = "lanes") -> LaneLabels:
  """The lane labels of a segment (its folder name) that write_labels put into `store` as teacher `name`."""
  meta = store.meta(name, segment)[0]
  if not np.allclose(meta.get("lane_x", []), LANE_X):
    raise ValueError(f"{store.root}: {name!r} labels of {segment} are not lane labels at model_io.LANE_X")
  a = store.read(name, segment, ["lanes", "visible", "exists", "init_frame"])
  e = store.shards(name, segment)[0]
  return LaneLabels(a["frame_id"], a["lanes"], a["visible"].astype(bool), a["exists"].astype(bool), a["init_frame"],
                    meta["source"], meta["tracker"], e.weights_hash, float(meta["height"]))

"""Ground truth of simulated segments, re-rendered on demand from the segment's scene.json.

Frames: "camera" is the device camera image (the scene's calibration rpy); "model" is the
calibrated medmodel frame (MEDMODEL, rotation identity relative to the calib frame). The road
frame of boxes3d/lanes/ego is the calib frame moved down to the road: x forward, y right,
z down, origin on the road below the camera (the camera sits at (0, 0, -height)). Pixel centres
are at integer coordinates; 2D boxes span pixel edges (u_min - 0.5 .. u_max + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel, project_calib_points, view_from_calib
from selfdrive.modeld_fair.model_io import LANE_X as MODEL_LANE_X
from tools.fair.sim.render import NEAR, Render, camera_rays, render_frame
from tools.fair.sim.scene import Scene

FRAMES = ("camera", "model")
LANE_X = MODEL_LANE_X.astype(np.float64)   # forward sample distances of lane lines (m), as the student's
OCCLUSION_REL, OCCLUSION_ABS = 0.01, 0.05   # a point is hidden when something is >1% (+5 cm) closer


@dataclass(frozen=True)
class Box2D:
  """A visible actor in the image: xyxy spans its visible pixels' edges."""
  id: int
  cls: str
  xyxy: tuple[float, float, float, float]
  visible_fraction: float   # visible pixels / pixels it would cover without occluders


@dataclass(frozen=True)
class Box3D:
  """An actor's bounding box in the road frame: centre, size (l, w, h), yaw relative to the ego
  heading, velocity over ground and relative to the ego (road-frame axes, m/s)."""
  id: int
  cls: str
  kind: str
  role: str
  centre: tuple[float, float, float]
  size: tuple[float, float, float]
  yaw: float
  velocity: tuple[float, float, float]
  rel_velocity: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class LaneLine:
  """A painted lane line (index 0 = leftmost) sampled at x = LANE_X in the road frame.
  visible: the point is in front of the camera, inside the image and not hidden;
  painted: paint is there (dash on, not worn; always False for kind "none")."""
  index: int
  offset: float       # lateral offset from the road centreline (m)
  kind: str           # "solid" | "dashed" | "none"
  color: str
  points: np.ndarray  # (33, 3)
  visible: np.ndarray
  painted: np.ndarray


@dataclass(frozen=True, eq=False)
class EgoState:
  """The ego at this frame: world pose of the road-frame origin and its motion."""
  position: np.ndarray      # world (x, y, z) of the road point below the camera
  yaw: float
  pitch: float
  v: float                  # speed (m/s)
  a: float                  # longitudinal acceleration (m/s^2)
  yaw_rate: float           # rad/s about the down axis (positive turning right)
  velocity: np.ndarray      # road-frame velocity of the road-frame origin (m/s)
  trans: np.ndarray         # cameraOdometry-like device-frame velocity (m/s)
  rot: np.ndarray           # cameraOdometry-like device-frame angular velocity (rad/s)


@dataclass(frozen=True, eq=False)
class GroundTruth:
  """Everything known about one frame, in one image frame (camera or model) and size."""
  frame_id: int
  frame: str
  camera: CameraModel
  rpy: tuple[float, float, float]
  rgb: np.ndarray           # (H, W, 3) uint8
  depth: np.ndarray         # (H, W) float32 metres along the optical axis, inf = sky
  semantic: np.ndarray      # (H, W) uint8 (classes.SEMANTIC_CLASSES)
  instance: np.ndarray      # (H, W) int32 actor id, 0 = none
  flow: np.ndarray          # (H, W, 2) float32 pixels to frame_id + 1 (zeros on the last frame)
  depth_next: np.ndarray    # (H, W) float32 depth of each pixel's point in the next frame (inf: sky;
                            # nan: unknown, on the last frame or when its actor leaves the scene)
  flow_valid: np.ndarray    # (H, W) bool: the point is visible in the next frame
  occlusion: np.ndarray     # (H, W) bool: ~flow_valid (hidden or out of the image next frame)
  boxes2d: list[Box2D]
  boxes3d: list[Box3D]
  lanes: list[LaneLine]
  ego: EgoState


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> Scene:
  return Scene.load(path)


def load_segment_scene(segment_dir) -> Scene:
  """The scene of a simulated segment (cached while scene.json is unchanged)."""
  path = Path(segment_dir) / "scene.json"
  if not path.is_file():
    raise FileNotFoundError(f"no scene.json in {segment_dir}: not a simulated segment")
  st = path.stat()
  return _load(str(path), st.st_mtime_ns, st.st_size)


def gt_camera(scene: Scene, frame: str = "camera", size=None) -> tuple[CameraModel, tuple[float, float, float]]:
  """The camera model and rotation rpy of a GT image frame, optionally at size (W, H)."""
  if frame not in FRAMES:
    raise ValueError(f"unknown frame {frame!r} (valid: {', '.join(FRAMES)})")
  base = scene.device_camera if frame == "camera" else MEDMODEL
  rpy = tuple(scene.calib.rpy) if frame == "camera" else (0.0, 0.0, 0.0)
  if size is None:
    return base, rpy
  w, h = (int(v) for v in size)
  k = w / base.width
  if w <= 0 or round(base.height * k) != h:
    raise ValueError(f"size {size} is not a scaling of the {frame} frame {base.width}x{base.height}")
  return (base if k == 1 else base.scaled(k)), rpy


def render_gt(segment_dir, frame_id: int, frame: str = "camera", size=None) -> GroundTruth:
  """Ground truth of frame `frame_id` of the simulated segment in `segment_dir`.

  frame: "camera" (device image, scene calibration) or "model" (medmodel frame); size=(W, H)
  renders at a scaled resolution (same field of view). Raises FileNotFoundError without a
  scene.json, ValueError for a bad frame/size or scene file, IndexError for frame ids out of range.
  """
  scene = load_segment_scene(segment_dir)
  return scene_gt(scene, frame_id, *gt_camera(scene, frame, size), frame=frame)


def scene_gt(scene: Scene, frame_id: int, camera: CameraModel, rpy, frame: str = "camera") -> GroundTruth:
  """Ground truth of a scene's frame for any camera and rotation (see render_gt)."""
  f = scene.check_frame(frame_id)
  rpy = tuple(float(v) for v in rpy)
  r = _render(scene, f, camera, rpy)
  nxt = _render(scene, f + 1, camera, rpy) if f + 1 < scene.n_frames else None
  flow, depth_next, valid = optical_flow(scene, r, nxt)
  return GroundTruth(f, frame, camera, r.rpy, r.rgb.copy(), r.depth.copy(), r.semantic.copy(), r.instance.copy(),
                     flow, depth_next, valid, ~valid, boxes_2d(scene, r), boxes_3d(scene, f), lane_lines(scene, f, r),
                     ego_state(scene, f))


@lru_cache(maxsize=2)
def _render(scene: Scene, f: int, camera: CameraModel, rpy) -> Render:
  """Renders kept for the next call: walking a segment frame by frame renders each frame once."""
  return render_frame(scene, f, camera, rpy)


def _pixel_points(r: Render) -> np.ndarray:
  """Calib-frame points (3, H, W) of every pixel relative to the camera (float64; sky: rays)."""
  rays, _ = camera_rays(r.camera, r.rpy)
  depth = np.where(np.isfinite(r.depth), r.depth, 1.0).astype(np.float64)
  return rays.astype(np.float64) * depth


def optical_flow(scene: Scene, r: Render, nxt: Render | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flow (H, W, 2) from render r to the next frame of the same camera, each pixel's depth in
  that frame, and where the flow is valid.

  Each pixel's surface point moves with what it belongs to (the static world, or its actor's
  rigid body) and is projected into the next frame; sky points are directions (pure rotation).
  Invalid: out of the image, behind the camera, or hidden (the next frame's depth there is
  more than 1% + 5 cm closer; for sky: anything there).
  """
  cam = r.camera
  shape = (cam.height, cam.width)
  if nxt is None:
    return np.zeros(shape + (2,), np.float32), np.full(shape, np.nan, np.float32), np.zeros(shape, bool)
  f = r.frame
  rot0, org0 = scene.ego_pose(f)
  rot1, org1 = scene.ego_pose(f + 1)
  h = np.array([0.0, 0.0, -scene.calib.height])
  sky = ~np.isfinite(r.depth)
  p = _pixel_points(r).reshape(3, -1)
  # world points relative to the ego road point at frame f (small numbers: float64 keeps precision)
  w = rot0 @ p + (rot0 @ h)[:, None]
  w[:, sky.ravel()] -= (rot0 @ h)[:, None]   # sky: directions only
  inst = r.instance.ravel()
  alive = np.ones(inst.shape, bool)
  for a in scene.actors:
    m = inst == a.id
    if not m.any():
      continue
    if not a.alive(f + 1):
      alive[m] = False
      continue
    ra0, pa0 = scene.actor_pose(a, f)
    ra1, pa1 = scene.actor_pose(a, f + 1)
    # body coordinates are fixed: world' = Ra1 Ra0^T (world - pa0) + pa1
    w[:, m] = ra1 @ (ra0.T @ (w[:, m] - (pa0 - org0)[:, None])) + (pa1 - org0)[:, None]
  # into the camera at f + 1
  cam1 = (org1 - org0) + rot1 @ h
  q = rot1.T @ (w - cam1[:, None])
  q[:, sky.ravel()] = rot1.T @ w[:, sky.ravel()]
  v = view_from_calib(r.rpy) @ q
  z = v[2]
  with np.errstate(divide="ignore", invalid="ignore"):
    u1 = v[0] / z * cam.focal + cam.cx
    v1 = v[1] / z * cam.focal + cam.cy
  vv, uu = np.mgrid[0:cam.height, 0:cam.width]
  flow = np.stack([u1.reshape(shape) - uu, v1.reshape(shape) - vv], axis=-1).astype(np.float32)
  inside = (z > NEAR) & (u1 >= -0.5) & (u1 < cam.width - 0.5) & (v1 >= -0.5) & (v1 < cam.height - 0.5) & alive
  iu = np.clip(np.rint(np.nan_to_num(u1)), 0, cam.width - 1).astype(np.intp)
  iv = np.clip(np.rint(np.nan_to_num(v1)), 0, cam.height - 1).astype(np.intp)
  d1 = nxt.depth[iv, iu].astype(np.float64)
  hidden = np.where(sky.ravel(), np.isfinite(d1), d1 < z * (1 - OCCLUSION_REL) - OCCLUSION_ABS)
  valid = (inside & ~hidden).reshape(shape)
  flow[~valid] = 0.0
  depth_next = np.where(sky.ravel(), np.inf, np.where(alive, z, np.nan)).astype(np.float32).reshape(shape)
  return flow, depth_next, valid


def boxes_2d(scene: Scene, r: Render) -> list[Box2D]:
  """Boxes of the visible actors (edges of their visible pixels) with visible fractions."""
  iv, iu = np.nonzero(r.instance)
  if not len(iv):
    return []
  ids = r.instance[iv, iu]
  uniq, inv = np.unique(ids, return_inverse=True)
  lo_u = np.full(len(uniq), np.iinfo(np.int64).max)
  lo_v, hi_u, hi_v = lo_u.copy(), np.full(len(uniq), -1), np.full(len(uniq), -1)
  np.minimum.at(lo_u, inv, iu)
  np.minimum.at(lo_v, inv, iv)
  np.maximum.at(hi_u, inv, iu)
  np.maximum.at(hi_v, inv, iv)
  count = np.bincount(inv)
  kinds = {a.id: a for a in scene.actors}
  return [Box2D(int(i), "vehicle" if kinds[int(i)].is_vehicle else "pedestrian",
                (float(lo_u[k]) - 0.5, float(lo_v[k]) - 0.5, float(hi_u[k]) + 0.5, float(hi_v[k]) + 0.5),
                float(min(1.0, count[k] / max(r.amodal.get(int(i), count[k]), 1))))
          for k, i in enumerate(uniq)]


def _velocity(x: np.ndarray, i: int, dt: float) -> float:
  """Central difference of a per-frame series (one-sided at the ends)."""
  if len(x) < 2:
    return 0.0
  a, b = max(i - 1, 0), min(i + 1, len(x) - 1)
  return float((x[b] - x[a]) / ((b - a) * dt))


def _wrap(a: float) -> float:
  return float((a + np.pi) % (2 * np.pi) - np.pi)


def boxes_3d(scene: Scene, f: int) -> list[Box3D]:
  """Every actor alive at frame f, in the road frame."""
  rot, org = scene.ego_pose(f)
  geo = scene.road.geometry
  dt = 1.0 / scene.fps
  ego_v = rot.T @ _ego_velocity(scene, f)
  out = []
  for a in scene.actors:
    if not a.alive(f):
      continue
    i = f - a.first_frame
    ra, pa = scene.actor_pose(a, f)
    centre = rot.T @ (pa + ra @ np.array([0.0, 0.0, -a.size[2] / 2]) - org)
    vx, vy = _velocity(a.x, i, dt), _velocity(a.y, i, dt)
    vel = rot.T @ np.array([vx, vy, vx * float(geo.elevation(a.x[i], 1))])
    out.append(Box3D(a.id, "vehicle" if a.is_vehicle else "pedestrian", a.kind, a.role, tuple(centre.tolist()),
                     tuple(a.size), _wrap(a.yaw[i] - scene.ego.yaw[f]), tuple(vel.tolist()),
                     tuple((vel - ego_v).tolist())))
  return out


def _ego_velocity(scene: Scene, f: int) -> np.ndarray:
  e, dt = scene.ego, 1.0 / scene.fps
  return np.array([_velocity(e.x, f, dt), _velocity(e.y, f, dt), _velocity(e.z, f, dt)])


def lane_lines(scene: Scene, f: int, r: Render | None = None) -> list[LaneLine]:
  """All lane lines of the road at LANE_X ahead in the road frame; visibility for render r."""
  rot, org = scene.ego_pose(f)
  geo = scene.road.geometry
  out = []
  for j, line in enumerate(scene.road.lines):
    off = float(geo.offsets[j])
    s = org[0] + LANE_X * np.cos(scene.ego.yaw[f])
    for _ in range(6):  # Newton: the line point whose road-frame x is LANE_X
      world = np.stack([s, geo.centre(s) + off, geo.elevation(s)])
      qx = rot[:, 0] @ (world - org[:, None])
      dqx = rot[:, 0] @ np.stack([np.ones_like(s), geo.centre(s, 1), geo.elevation(s, 1)])
      s = s - (qx - LANE_X) / dqx
    world = np.stack([s, geo.centre(s) + off, geo.elevation(s)])
    pts = (rot.T @ (world - org[:, None])).T
    painted, _ = geo.paint(s, np.full_like(s, off))
    visible = _visible(pts, scene.calib.height, r) if r is not None else np.zeros(len(s), bool)
    out.append(LaneLine(j, off, line.kind, line.color, pts, visible, painted))
  return out


def _visible(pts_road: np.ndarray, height: float, r: Render) -> np.ndarray:
  """Road-frame points that are in front of the camera, in the image and not hidden."""
  cam = r.camera
  uv, z = project_calib_points(pts_road + np.array([0.0, 0.0, height]), cam, r.rpy)
  inside = (z > NEAR) & (uv[:, 0] >= -0.5) & (uv[:, 0] < cam.width - 0.5) & \
           (uv[:, 1] >= -0.5) & (uv[:, 1] < cam.height - 0.5)
  iu = np.clip(np.rint(np.nan_to_num(uv[:, 0])), 0, cam.width - 1).astype(np.intp)
  iv = np.clip(np.rint(np.nan_to_num(uv[:, 1])), 0, cam.height - 1).astype(np.intp)
  return inside & (r.depth[iv, iu] >= z * (1 - OCCLUSION_REL) - OCCLUSION_ABS)


def ego_state(scene: Scene, f: int) -> EgoState:
  e = scene.ego
  rot, org = scene.ego_pose(f)
  return EgoState(org, float(e.yaw[f]), float(e.pitch[f]), float(e.v[f]), float(e.a[f]), float(e.yaw_rate[f]),
                  rot.T @ _ego_velocity(scene, f), e.trans[f].copy(), e.rot[f].copy())

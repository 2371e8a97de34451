"""Ego-motion and object velocities from optical flow + depth in the calibrated model frame.

The model frame is a pinhole camera aligned with the calib frame (x forward, y right, z down; the road frame's
axes), so a pixel (u, v) with depth Z (along x) is the point (Z, Z (u - cx) / f, Z (v - cy) / f).

- ego_motion: a static point X at frame t is at R' X + t' in the camera of frame t + 1 and is seen at p + flow(p)
  (the rigid-motion flow equation). (R', t') is the least-squares fit of the exact projection to the flow over
  static pixels (Gauss-Newton, Huber-weighted so that residual movers count little), reported as the pose of
  camera t + 1 in camera t (R = R'^T, t = -R'^T t'), the convention of bench.metrics.egomotion, and as velocities
  like tools.fair.sim.gt.ego_state (m/s, rad/s, yaw rate positive turning right).
- object_velocities: each object's pixels are lifted to 3D at t (depth) and t + 1 (depth of the next frame at
  p + flow), the t + 1 points are moved into camera t by the ego motion, and the median displacement / dt is the
  object's velocity over ground (road-frame axes, as Box3D.velocity); minus the ego velocity, as rel_velocity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from selfdrive.modeld_fair.camera import CameraModel


@dataclass(frozen=True, eq=False)
class EgoMotion:
  """Camera motion from frame t to t + 1, in the calib frame of t (x forward, y right, z down)."""
  rotation: np.ndarray     # (3, 3) orientation of camera t + 1 in camera t
  translation: np.ndarray  # (3,) position of camera t + 1 in camera t (m)
  dt: float                # s
  velocity: np.ndarray     # (3,) translation / dt (m/s)
  rot: np.ndarray          # (3,) rotation vector / dt (rad/s); rot[2] is the yaw rate (positive turning right)
  n_used: int              # static pixels used
  rms_px: float            # root mean square reprojection residual of the inliers (pixels)

  @property
  def yaw_rate(self) -> float:
    return float(self.rot[2])


@dataclass(frozen=True)
class ObjectMotion:
  """One object's motion from t to t + 1 (road-frame axes, m/s)."""
  id: int
  velocity: tuple[float, float, float]      # over ground (ego motion removed), as Box3D.velocity
  rel_velocity: tuple[float, float, float]  # velocity - ego velocity, as Box3D.rel_velocity
  position: tuple[float, float, float]      # median 3D point at t relative to the camera (m)
  n_pixels: int


def backproject(uv: np.ndarray, depth: np.ndarray, camera: CameraModel) -> np.ndarray:
  """(N, 3) calib-frame points of (N, 2) pixels with depth (N,) along the optical axis."""
  uv = np.asarray(uv, np.float64)
  z = np.asarray(depth, np.float64)
  return np.stack([z, z * (uv[:, 0] - camera.cx) / camera.focal, z * (uv[:, 1] - camera.cy) / camera.focal], 1)


def project(points: np.ndarray, camera: CameraModel) -> np.ndarray:
  """(N, 2) pixels of (N, 3) calib-frame points (in front of the camera)."""
  x = points[:, 0]
  return np.stack([camera.focal * points[:, 1] / x + camera.cx, camera.focal * points[:, 2] / x + camera.cy], 1)


def _check(flow: np.ndarray, depth: np.ndarray, camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
  flow, depth = np.asarray(flow, np.float64), np.asarray(depth, np.float64)
  shape = (camera.height, camera.width)
  if flow.shape != shape + (2,) or depth.shape != shape:
    raise ValueError(f"need flow {shape + (2,)} and depth {shape} in the {camera.name} frame, got {flow.shape} "
                     f"and {depth.shape}")
  return flow, depth


def ego_motion(flow, depth, camera: CameraModel, static=None, dt: float = 0.05, max_depth: float = 150.0,
               huber_px: float = 1.0, iters: int = 15) -> EgoMotion:
  """Camera motion from forward flow (H, W, 2) and depth (H, W) (m; inf/nan = unknown) of frame t.

  static: (H, W) bool of pixels to use (e.g. not on movers and not occluded); None = all. Pixels with depth
  beyond max_depth (they constrain translation little and carry depth error) are left out. ValueError when
  fewer than 6 usable pixels remain.
  """
  flow, depth = _check(flow, depth, camera)
  use = np.isfinite(depth) & (depth > 0) & (depth <= max_depth) & np.isfinite(flow).all(-1)
  if static is not None:
    use &= np.asarray(static, bool)
  vv, uu = np.nonzero(use)
  if len(vv) < 6:
    raise ValueError(f"only {len(vv)} usable pixels for ego motion (need >= 6)")
  uv0 = np.stack([uu, vv], 1).astype(np.float64)
  target = uv0 + flow[vv, uu]
  x0 = backproject(uv0, depth[vv, uu], camera)
  rot, trans = np.eye(3), np.zeros(3)
  w = np.ones(len(x0))
  f = camera.focal
  for _ in range(iters):
    x1 = x0 @ rot.T + trans
    r = (project(x1, camera) - target).ravel()
    a = np.abs(r.reshape(-1, 2)).max(1)
    w = np.where(a <= huber_px, 1.0, huber_px / np.maximum(a, 1e-12))   # Huber IRLS weights per pixel
    x, y, z = x1[:, 0], x1[:, 1], x1[:, 2]
    dp = np.zeros((len(x1), 2, 3))   # d(u, v) / d(x, y, z)
    dp[:, 0, 0], dp[:, 0, 1] = -f * y / x ** 2, f / x
    dp[:, 1, 0], dp[:, 1, 2] = -f * z / x ** 2, f / x
    skew = np.zeros((len(x1), 3, 3))   # d(x1) / d(omega) for x1 <- exp(omega) x1: -[x1]_x
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 0] = z, -y, -z
    skew[:, 1, 2], skew[:, 2, 0], skew[:, 2, 1] = x, y, -x
    jac = np.concatenate([dp @ skew, dp], axis=2).reshape(-1, 6)
    ww = np.repeat(w, 2)
    step = np.linalg.lstsq(jac * ww[:, None] ** 0.5, -r * ww ** 0.5, rcond=None)[0]
    d_rot = Rotation.from_rotvec(step[:3]).as_matrix()
    rot, trans = d_rot @ rot, d_rot @ trans + step[3:]
    if np.abs(step).max() < 1e-10:
      break
  res = (project(x0 @ rot.T + trans, camera) - target)
  inl = w >= 1.0
  rel_r, rel_t = rot.T, -rot.T @ trans
  return EgoMotion(rel_r, rel_t, dt, rel_t / dt, Rotation.from_matrix(rel_r).as_rotvec() / dt, int(len(x0)),
                   float(np.sqrt(np.mean(np.sum(res[inl] ** 2, 1)))) if inl.any() else float("nan"))


def object_velocities(flow, depth, depth_next, instance, camera: CameraModel, ego: EgoMotion, valid=None,
                      min_pixels: int = 20) -> list[ObjectMotion]:
  """Velocity of every object id > 0 of `instance` (H, W) at frame t from forward flow, the depth maps of t and
  t + 1 (the latter sampled at each pixel's end point p + flow, nearest pixel) and the ego motion of the pair.
  valid: (H, W) bool pixels whose flow to trust (e.g. not occluded). Objects with fewer than `min_pixels`
  usable pixels are skipped. Sorted by id."""
  flow, depth = _check(flow, depth, camera)
  depth_next = np.asarray(depth_next, np.float64)
  instance = np.asarray(instance)
  if depth_next.shape != depth.shape or instance.shape != depth.shape:
    raise ValueError(f"depth_next {depth_next.shape} and instance {instance.shape} must be {depth.shape}")
  vv, uu = np.mgrid[0:camera.height, 0:camera.width]
  end = np.stack([uu + flow[..., 0], vv + flow[..., 1]], -1)
  iu = np.clip(np.rint(np.nan_to_num(end[..., 0])), 0, camera.width - 1).astype(np.intp)
  iv = np.clip(np.rint(np.nan_to_num(end[..., 1])), 0, camera.height - 1).astype(np.intp)
  z1 = depth_next[iv, iu]
  inside = (end[..., 0] >= -0.5) & (end[..., 0] < camera.width - 0.5) & \
           (end[..., 1] >= -0.5) & (end[..., 1] < camera.height - 0.5)
  ok = inside & np.isfinite(depth) & (depth > 0) & np.isfinite(z1) & (z1 > 0) & np.isfinite(flow).all(-1)
  if valid is not None:
    ok &= np.asarray(valid, bool)
  out = []
  for oid in np.unique(instance[instance > 0]):
    m = ok & (instance == oid)
    n = int(m.sum())
    if n < min_pixels:
      continue
    x0 = backproject(np.stack([uu[m], vv[m]], 1), depth[m], camera)
    x1 = backproject(end[m], z1[m], camera) @ ego.rotation.T + ego.translation   # camera t+1 -> camera t
    vel = np.median(x1 - x0, axis=0) / ego.dt
    out.append(ObjectMotion(int(oid), tuple(vel.tolist()), tuple((vel - ego.velocity).tolist()),
                            tuple(np.median(x0, axis=0).tolist()), n))
  return out


def scene_relative_pose(scene, f: int) -> tuple[np.ndarray, np.ndarray]:
  """Ground-truth (R, t) of the model-frame camera at frame f + 1 in the one at f, from a sim Scene's ego poses."""
  rot0, org0 = scene.ego_pose(f)
  rot1, org1 = scene.ego_pose(f + 1)
  h = np.array([0.0, 0.0, -scene.calib.height])
  return rot0.T @ rot1, rot0.T @ ((org1 + rot1 @ h) - (org0 + rot0 @ h))

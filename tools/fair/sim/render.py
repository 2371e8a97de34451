"""Vectorised ray casting of a scene: the camera image and exact per-pixel ground truth.

Pixel (u, v) → view ray K^-1 (u, v, 1) → calib frame (view_from_calib(rpy)^T) → world axes
(the ego's world_from_calib). Rays keep view z = 1, so a hit's ray parameter is its depth along
the optical axis. All per-pixel work happens in float32 in an ego-centred frame (world axes,
origin on the road below the camera) so metre-scale world coordinates keep sub-millimetre
precision. The road surface is intersected in closed form piece by piece (its elevation is
piecewise quadratic); objects are tested only inside their projected 2D bounding boxes; road
shadows are exact shadow rays against each caster inside the box of its ground shadow.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from selfdrive.modeld_fair.camera import CameraModel, view_from_calib
from selfdrive.modeld_fair.classes import CLASS_ID
from tools.fair.sim.scene import Scene
from tools.fair.sim.shapes import BOX, CYLINDER, Prim, actor_prims, prop_prims
from tools.fair.sim.textures import ground_albedo, material_albedo

F32 = np.float32
NEAR = 0.05          # metres: geometry closer to the camera is clipped
ROAD_MAX = 1000.0    # metres: the ground is ray cast this far (beyond it rays see the sky)
PROP_MAX = 600.0     # metres: props and actors further away are not drawn
SUN_DIAMETER = 0.0093  # rad
SKY = CLASS_ID["sky"]
_GROUND_CLASS = np.array([CLASS_ID["road"], CLASS_ID["road_edge"], CLASS_ID["terrain"], CLASS_ID["terrain"]], np.uint8)
_PAIRS = np.array([(i, j) for i in range(16) for j in range(i + 1, 16)])


@dataclass(frozen=True, eq=False)
class Render:
  """One rendered frame. depth: metres along the optical axis (inf = sky); instance: actor id or
  0; amodal: pixels each actor would cover without occluders (for visible fractions)."""
  rgb: np.ndarray          # (H, W, 3) uint8, with lighting and sensor effects
  depth: np.ndarray        # (H, W) float32
  semantic: np.ndarray     # (H, W) uint8, classes.SEMANTIC_CLASSES
  instance: np.ndarray     # (H, W) int32
  camera: CameraModel
  rpy: tuple[float, float, float]
  frame: int
  amodal: dict[int, int]


@lru_cache(maxsize=6)
def camera_rays(camera: CameraModel, rpy: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
  """Calib-frame directions (3, H, W) through every pixel centre, scaled to view z = 1, and
  their inverse lengths (H, W); float32."""
  v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
  view = np.stack([(u - camera.cx) / camera.focal, (v - camera.cy) / camera.focal, np.ones_like(u)])
  calib = np.tensordot(view_from_calib(rpy).T, view, axes=1)
  return calib.astype(F32), (1.0 / np.linalg.norm(calib, axis=0)).astype(F32)


@dataclass(frozen=True, eq=False)
class _Frame:
  """Per-frame camera state in the ego-centred frame (world axes, origin = ego road point)."""
  frame: int
  camera: CameraModel
  rpy: tuple[float, float, float]
  rot: np.ndarray        # world_from_calib
  origin: np.ndarray     # world position of the ego road point
  cam: np.ndarray        # camera position, ego-centred
  view: np.ndarray       # view_from_world rotation
  rays: np.ndarray       # calib-frame rays (3, H, W)
  dirs: np.ndarray       # world-axis rays (3, H, W)
  inv_norm: np.ndarray
  sun: np.ndarray        # world direction towards the sun

  def to_view(self, p_local: np.ndarray) -> np.ndarray:
    return (np.asarray(p_local) - self.cam) @ self.view.T


def frame_state(scene: Scene, frame: int, camera: CameraModel, rpy) -> _Frame:
  rot, origin = scene.ego_pose(frame)
  rays, inv_norm = camera_rays(camera, rpy)
  dirs = np.tensordot(rot.astype(F32), rays, axes=1)
  return _Frame(frame, camera, rpy, rot, origin, rot @ np.array([0.0, 0.0, -scene.calib.height]),
                view_from_calib(rpy) @ rot.T, rays, dirs, inv_norm, scene.lighting.sun_dir)


_STATIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _static_prims(scene: Scene) -> tuple[list[Prim], np.ndarray]:
  """All prop primitives of the scene and their world centres (built once per scene)."""
  if scene not in _STATIC:
    prims = [q for p in scene.props for q in prop_prims(p)]
    _STATIC[scene] = (prims, np.array([q.centre for q in prims]).reshape(-1, 3))
  return _STATIC[scene]


def scene_prims(scene: Scene, frame: int, origin: np.ndarray, max_dist: float = PROP_MAX) -> list[Prim]:
  """Props and alive actors within max_dist of the ego at `frame`."""
  prims, centres = _static_prims(scene)
  near = np.flatnonzero(np.abs(centres[:, 0] - origin[0]) < max_dist) if len(prims) else []
  out = [prims[i] for i in near]
  for a in scene.actors:
    if a.alive(frame) and abs(a.x[frame - a.first_frame] - origin[0]) < max_dist:
      out.extend(actor_prims(scene, a, frame))
  return out


def _clip_rect(view_pts: np.ndarray, cam: CameraModel, pad: int = 1):
  """Pixel rect (v0, v1, u0, u1) bounding the projection of the convex hull of view-frame
  points, clipped at the near plane; None when nothing is in front or in the image."""
  z = view_pts[:, 2]
  front = z >= NEAR
  if not front.any():
    return None
  pts = view_pts[front]
  if not front.all():  # add where segments between points cross the near plane
    n = len(view_pts)
    pairs = _PAIRS[(_PAIRS[:, 1] < n)]
    a, b = view_pts[pairs[:, 0]], view_pts[pairs[:, 1]]
    cross = (a[:, 2] >= NEAR) != (b[:, 2] >= NEAR)
    a, b = a[cross], b[cross]
    s = (NEAR - a[:, 2]) / (b[:, 2] - a[:, 2])
    pts = np.concatenate([pts, a + s[:, None] * (b - a)])
  return _pixel_rect(pts[:, 0] / pts[:, 2] * cam.focal + cam.cx, pts[:, 1] / pts[:, 2] * cam.focal + cam.cy, cam, pad)


def _pixel_rect(u: np.ndarray, v: np.ndarray, cam: CameraModel, pad: int):
  """Pixel rect (v0, v1, u0, u1) covering image points (u, v) plus pad, or None if off-image."""
  u0, u1 = max(int(np.floor(u.min())) - pad, 0), min(int(np.ceil(u.max())) + pad + 1, cam.width)
  v0, v1 = max(int(np.floor(v.min())) - pad, 0), min(int(np.ceil(v.max())) + pad + 1, cam.height)
  return (v0, v1, u0, u1) if u0 < u1 and v0 < v1 else None


def intersect(prim: Prim, o, d, near: float = NEAR):
  """Ray parameter of the first hit of rays o + t d (local coordinates; o and d are 3-sequences
  of scalars or arrays that broadcast) with the primitive, inf where missed or t < near."""
  h = prim.half
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    if prim.shape == BOX:
      tn, tf = None, None
      for i in range(3):
        inv = F32(1) / d[i]
        t1 = (F32(-h[i]) - o[i]) * inv
        t2 = (F32(h[i]) - o[i]) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        tn = lo if tn is None else np.maximum(tn, lo)
        tf = hi if tf is None else np.minimum(tf, hi)
      t = np.where((tn <= tf) & (tn >= near), tn, np.inf)
    elif prim.shape == CYLINDER:
      r2 = F32(h[0] ** 2)
      a = d[0] * d[0] + d[1] * d[1]
      b = o[0] * d[0] + o[1] * d[1]
      c = o[0] * o[0] + o[1] * o[1] - r2
      disc = b * b - a * c
      ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
      zs = o[2] + ts * d[2]
      t = np.where((disc >= 0) & (np.abs(zs) <= F32(h[2])) & (ts >= near), ts, np.inf)
      for zc in (-h[2], h[2]):  # end caps
        tc = (F32(zc) - o[2]) / d[2]
        xc, yc = o[0] + tc * d[0], o[1] + tc * d[1]
        t = np.where((xc * xc + yc * yc <= r2) & (tc >= near) & (tc < t), tc, t)
    else:
      a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
      b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
      c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - F32(h[0] ** 2)
      disc = b * b - a * c
      ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
      t = np.where((disc >= 0) & (ts >= near), ts, np.inf)
  return t


def _occludes(prim: Prim, o, d, max_t: float) -> np.ndarray:
  """Whether rays from points o (local, arrays) along the constant unit direction d hit the
  primitive at a distance in [0, max_t) (shadow rays)."""
  h = prim.half
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    if prim.shape == BOX:
      tn, tf = F32(0), F32(np.inf)
      for i in range(3):
        if d[i] == 0:
          inside = np.abs(o[i]) <= F32(h[i])
          tf = np.where(inside, tf, F32(-1))
          continue
        inv = F32(1 / d[i])
        t1, t2 = (F32(-h[i]) - o[i]) * inv, (F32(h[i]) - o[i]) * inv
        tn, tf = np.maximum(tn, np.minimum(t1, t2)), np.minimum(tf, np.maximum(t1, t2))
      return (tn <= tf) & (tn < F32(max_t))
    return intersect(prim, o, d, near=0.0) < F32(max_t)


_FACE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.float64)


def _face(prim: Prim, p) -> np.ndarray:
  """Face codes of hit points: box axis*2 + (normal sign > 0), cylinder caps 4/5 and side 6, sphere 7."""
  h = prim.half
  x, y, z = p
  if prim.shape == BOX:
    ax, ay, az = np.abs(x) * F32(1 / h[0]), np.abs(y) * F32(1 / h[1]), np.abs(z) * F32(1 / h[2])
    on_x = (ax >= ay) & (ax >= az)
    on_y = ~on_x & (ay >= az)
    on_z = ~on_x & ~on_y
    pos = (on_x & (x > 0)) | (on_y & (y > 0)) | (on_z & (z > 0))
    return (on_y * np.int8(2) + on_z * np.int8(4) + pos).astype(np.int8)
  if prim.shape == CYLINDER:
    cap = np.abs(z) >= F32(h[2] * 0.999)
    return np.where(cap, np.where(z > 0, 5, 4), 6).astype(np.int8)
  return np.full(x.shape, 7, np.int8)


def _irradiance(prim: Prim, p, face, sun_dir, sun, ambient) -> list[np.ndarray]:
  """Light arriving at hit points per colour channel: hemisphere ambient (up-facing surfaces see
  more sky) plus the sun by the cosine law (no cast shadows on objects)."""
  if prim.shape == BOX:  # six normals: light per face, looked up
    n = _FACE_NORMALS @ prim.rot.T
    per_face = ambient[:, None] * (0.75 - 0.25 * n[:, 2]) + sun[:, None] * np.maximum(n @ sun_dir, 0)
    return [np.take(per_face[c].astype(F32), face) for c in range(3)]
  x, y, z = p
  inv = F32(1 / prim.half[0])
  if prim.shape == CYLINDER:
    side = face == 6
    n_local = [x * inv * side, y * inv * side, np.where(side, F32(0), np.where(z > 0, F32(1), F32(-1)))]
  else:
    n_local = [x * inv, y * inv, z * inv]
  rot = prim.rot.astype(F32)
  n = [rot[i, 0] * n_local[0] + rot[i, 1] * n_local[1] + rot[i, 2] * n_local[2] for i in range(3)]
  ndotl = np.maximum(n[0] * F32(sun_dir[0]) + n[1] * F32(sun_dir[1]) + n[2] * F32(sun_dir[2]), F32(0))
  sky_vis = F32(0.75) - F32(0.25) * n[2]
  return [F32(ambient[c]) * sky_vis + F32(sun[c]) * ndotl for c in range(3)]


class _Canvas:
  """The frame being rendered: colour planes and ground truth buffers."""

  def __init__(self, cam: CameraModel):
    shape = (cam.height, cam.width)
    self.rgb = np.zeros((3,) + shape, F32)
    self.depth = np.full(shape, np.inf, F32)
    self.semantic = np.full(shape, SKY, np.uint8)
    self.instance = np.zeros(shape, np.int32)


def _lighting_terms(scene: Scene):
  lt = scene.lighting
  sun = np.array(lt.sun, F32) * F32(max(np.sin(lt.sun_elevation), 0.0) > 0)
  return lt.sun_dir, sun, np.array(lt.ambient, F32), np.array(lt.horizon, F32)


@lru_cache(maxsize=6)
def _beam(camera: CameraModel, rpy: tuple[float, float, float]) -> np.ndarray:
  """Low-beam pattern per pixel: wide horizontally, cut off just below the horizon."""
  rays, _ = camera_rays(camera, rpy)
  a, b = rays[1] / rays[0], rays[2] / rays[0]   # tangents: right, down (calib frame)
  return (np.clip(1 - (a / 0.5) ** 2, 0, 1) * np.clip((b - 0.005) / 0.03, 0, 1)).astype(F32)


def _headlight(fs: _Frame, sl, t) -> np.ndarray:
  """Ego headlight irradiance: the beam pattern, brightest where it meets the road ~25 m ahead
  (rising as t^2 before, falling as 1/t^2 beyond)."""
  r = t * F32(1 / 25)
  r *= r
  return F32(2.4) * _beam(fs.camera, fs.rpy)[sl] * r / (F32(1) + r * r)


def _road_pass(scene: Scene, fs: _Frame, canvas: _Canvas):
  """Intersect every ray that can reach the ground and draw the ground (depth, class, colour)."""
  cam = fs.camera
  geo = scene.road.geometry
  x_e, y_e, z_e = fs.origin
  cx, cy, cz = fs.cam
  # steepest elevation (tangent) under which the camera sees the ground beyond distance x
  xs = np.concatenate([np.linspace(0.5, 60, 120), np.geomspace(60, ROAD_MAX + 100, 200)])
  tan = (cz - (geo.elevation(x_e + xs) - z_e)) / (xs - cx)
  tan_beyond = np.maximum.accumulate(tan[::-1])[::-1] + 0.004
  # per-row highest ray elevation (tangent) from a column subsample
  dx, dy, dz = (c[:, ::8] for c in fs.dirs)
  row_tan = (-dz / np.sqrt(dx * dx + dy * dy)).min(axis=1)
  reach = np.flatnonzero(row_tan < tan_beyond[0])
  if not len(reach):
    return
  r0 = int(reach[0])
  Dx, Dy, Dz = (c[r0:] for c in fs.dirs)
  t = np.full(Dx.shape, np.inf, F32)
  rows_hi = t.shape[0]
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    for lo, hi, a, q0, q1, q2 in geo.local_elevation(x_e, z_e, ROAD_MAX):
      ahead = tan_beyond[min(np.searchsorted(xs, max(lo, 0.5)), len(xs) - 1)]
      rows_lo = int(np.searchsorted(-row_tan[r0:], -ahead))  # rows that can still reach x >= lo
      if rows_hi <= rows_lo:
        break
      b = slice(rows_lo, rows_hi)
      dx, dz, tb = Dx[b], Dz[b], t[b]
      uc = cx - a
      C = F32(cz - (q0 + uc * (q1 + uc * q2)))  # < 0: the camera is above the surface
      B = dz - F32(q1 + 2 * q2 * uc) * dx
      if q2 == 0:
        root = -C / B
        root[B <= 0] = np.inf
      else:
        A = F32(-q2) * dx * dx
        disc = B * B - F32(4) * A * C
        qq = F32(-0.5) * (B + np.copysign(np.sqrt(np.maximum(disc, 0)), B))
        r1, r2 = qq / A, C / qq
        lo_t = np.maximum((F32(lo - cx)) / dx, F32(0)) if np.isfinite(lo) else F32(0)
        r1[~(r1 >= lo_t)] = np.inf
        r2[~(r2 >= lo_t)] = np.inf
        root = np.minimum(r1, r2)
        root[disc < 0] = np.inf
      if np.isfinite(lo):
        root[root * dx + F32(cx) < F32(lo)] = np.inf
      if np.isfinite(hi):
        root[root * dx + F32(cx) >= F32(hi)] = np.inf
      np.copyto(tb, root, where=np.isinf(tb) & (root > 0))
      miss_rows = np.flatnonzero(np.isinf(tb).any(axis=1))
      rows_hi = rows_lo + (int(miss_rows[-1]) + 1 if len(miss_rows) else 0)
  hit = np.isfinite(t)
  t0 = t.copy()
  t0[~hit] = 0
  X, Y = F32(cx) + t0 * Dx, F32(cy) + t0 * Dy
  x0c, ds, coef = geo.local_centre(x_e, y_e, -50.0, ROAD_MAX + 200.0)
  k = np.clip(np.floor((X - F32(x0c)) * F32(1 / ds)), 0, len(coef) - 1).astype(np.intp)
  u = X - (F32(x0c) + k.astype(F32) * F32(ds))
  c0, c1, c2, c3 = (np.ascontiguousarray(coef[:, i]) for i in range(4))
  d = Y - (c0[k] + u * (c1[k] + u * (c2[k] + u * c3[k])))
  ad = np.abs(d)
  spec = geo.spec
  region = (ad >= F32(geo.half_width)).astype(np.uint8)
  region += ad >= F32(geo.kerb_out)
  region += ad >= F32(geo.kerb_out + spec.sidewalk)
  paint, line = geo.paint(X, d, x_shift=x_e)
  paint &= region == 0
  sem = _GROUND_CLASS[region]
  sem[paint] = CLASS_ID["lane_marking"]
  # ground footprint of a pixel: t / f across, stretched by t / h along the road at grazing angles
  row_footprint = t.min(axis=1) ** 2 / (cam.focal * scene.calib.height)
  lk = scene.look
  albedo = ground_albedo(geo, X, d, x_e, region, paint, line, row_footprint, (lk.asphalt, lk.kerb, lk.paving, lk.grass),
                         lk.texture)
  L, sun, ambient, horizon = _lighting_terms(scene)
  lit = ~_shadows(scene, fs, r0, hit, (X, Y, t0, Dz)) if sun.any() else None
  head = _headlight(fs, np.s_[r0:], t0) if scene.lighting.headlights else None
  fog = np.exp(-F32(scene.lighting.fog) * t0)
  for c in range(3):
    light = lit * F32(sun[c] * -L[2]) + F32(ambient[c]) if lit is not None else F32(ambient[c])
    if head is not None:
      light = light + head
    col = albedo[c] * fog
    col *= light
    col += F32(horizon[c]) * (F32(1) - fog)
    np.copyto(canvas.rgb[c, r0:], col, where=hit)
  np.copyto(canvas.depth[r0:], t, where=hit)
  np.copyto(canvas.semantic[r0:], sem, where=hit)


@dataclass(frozen=True, eq=False)
class _Caster:
  """A shadow caster in the ego-centred frame with the pixel boxes its shadow can fall in."""
  prim: Prim
  centre: np.ndarray
  umbra: float
  rects: list


def _casters(scene: Scene, fs: _Frame, r0: int, L) -> list[_Caster]:
  cam = fs.camera
  unit = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (0, 1)], np.float64)
  out = []
  for prim in scene_prims(scene, fs.frame, fs.origin, max_dist=250.0):
    centre = prim.centre - fs.origin
    zg = prim.ground - fs.origin[2]
    # the sun is a disk of 0.53 deg: behind a caster of width w the umbra ends after w / 0.0093;
    # only the part of the caster that low above the ground shades it
    umbra = 2 * min(prim.half[0], prim.half[1]) / SUN_DIAMETER
    bottom = centre[2] + prim.half[2]
    height = min(2 * prim.half[2], zg - (centre[2] - prim.half[2]), umbra * -L[2] - (zg - bottom))
    if height <= 0:
      continue
    # cut tall casters into horizontal slabs: a low sun stretches the shadow of each slab into
    # its own short stretch of ground, and tight boxes keep the shadow-ray tests few
    n = int(np.clip(np.ceil(height / -L[2] * np.sqrt(1 - L[2] ** 2) / 10.0), 1, 12))
    rects = []
    for k in range(n):
      lo = prim.half[2] - height * (k + 1) / n
      local = unit * np.array([prim.half[0], prim.half[1], height / n]) + np.array([0.0, 0.0, lo])
      corners = centre + local @ prim.rot.T
      # the slab's corners slid along the sun rays onto planes just above and below the ground
      ground = np.concatenate([corners + ((zg + dz - corners[:, 2]) / -L[2])[:, None] * -L for dz in (-0.3, 0.3)])
      rect = _clip_rect(fs.to_view(ground), cam, pad=2)
      if rect is not None and rect[1] > r0:
        rects.append((max(rect[0], r0) - r0, rect[1] - r0, rect[2], rect[3]))
    if rects:
      out.append(_Caster(prim, centre, umbra, rects))
  return out


def _cast(c: _Caster, fs: _Frame, P, hit, shadow, allow=None):
  """Shadow-ray test of the caster for the ground pixels in its boxes that are not yet in
  shadow (and allowed); marks the occluded ones in `shadow`."""
  v0, v1 = min(r[0] for r in c.rects), max(r[1] for r in c.rects)
  u0, u1 = min(r[2] for r in c.rects), max(r[3] for r in c.rects)
  cand = np.zeros((v1 - v0, u1 - u0), bool)
  for a0, a1, b0, b1 in c.rects:
    cand[a0 - v0:a1 - v0, b0 - u0:b1 - u0] = True
  sl = np.s_[v0:v1, u0:u1]
  cand &= hit[sl] & ~shadow[sl]
  if allow is not None:
    cand &= allow[sl]
  iv, iu = np.nonzero(cand)
  if not len(iv):
    return
  flat = (iv + v0) * fs.camera.width + (iu + u0)
  X, Y, t, Dz = (np.take(a, flat) for a in P)
  rel = [X - F32(c.centre[0]), Y - F32(c.centre[1]), F32(fs.cam[2]) + t * Dz - F32(c.centre[2])]
  rt = c.prim.rot.T.astype(F32)
  o = [rt[i, 0] * rel[0] + rt[i, 1] * rel[1] + rt[i, 2] * rel[2] for i in range(3)]
  shadow.reshape(-1)[flat] = _occludes(c.prim, o, [F32(v) for v in c.prim.rot.T @ fs.sun], c.umbra)


def _shadows(scene: Scene, fs: _Frame, r0: int, hit, P) -> np.ndarray:
  """Which ground pixels (rows r0..) lie in the shadow of a prop or actor.
  P: ground hit x, y (ego-centred), ray parameter and world z direction of the rays.

  Wide casters (buildings, vehicles, crowns) are first ray-traced on every other pixel of
  every other row, then exactly around the edges of what that found; thin ones (poles, signs)
  at every pixel so that their thin shadows never slip between samples.
  """
  shadow = np.zeros(hit.shape, bool)
  if fs.sun[2] >= -0.02:
    return shadow
  casters = _casters(scene, fs, r0, fs.sun)
  coarse = fs.camera.width >= 1000
  wide = [c for c in casters if coarse and min(c.prim.half[0], c.prim.half[1]) >= 0.3]
  if wide:
    grid = np.zeros(hit.shape, bool)
    grid[::2, ::2] = True
    for c in wide:
      _cast(c, fs, P, hit, shadow, grid)
    h, w = hit.shape
    s = shadow[::2, ::2]
    edge = ~hit[::2, ::2]   # samples off the ground say nothing about their neighbours
    for ax in (0, 1):
      diff = np.diff(s, axis=ax) | np.diff(edge, axis=ax)
      lo = [slice(None), slice(None)]
      hi = [slice(None), slice(None)]
      lo[ax], hi[ax] = slice(None, -1), slice(1, None)
      edge[tuple(lo)] |= diff
      edge[tuple(hi)] |= diff
    shadow = s.repeat(2, 0).repeat(2, 1)[:h, :w] & hit
    unsure = edge.repeat(2, 0).repeat(2, 1)[:h, :w] & hit
    shadow &= ~unsure
    for c in wide:
      _cast(c, fs, P, hit, shadow, unsure)
  for c in casters:
    if not (coarse and min(c.prim.half[0], c.prim.half[1]) >= 0.3):
      _cast(c, fs, P, hit, shadow)
  return shadow


def _object_pass(scene: Scene, fs: _Frame, canvas: _Canvas) -> dict[int, int]:
  """Draw props and actors into the canvas (z-buffered); return amodal pixel counts per actor."""
  cam = fs.camera
  L, sun, ambient, horizon = _lighting_terms(scene)
  night = scene.lighting.kind == "night"
  tile = scene.road.geometry.tile
  amodal: dict[int, list] = {}
  prims = scene_prims(scene, fs.frame, fs.origin)
  if not prims:
    return {}
  # all corners at once in the view frame; near first: fewer overwritten pixels
  views = fs.to_view(np.stack([q.corners for q in prims]) - fs.origin)
  zmin = views[:, :, 2].min(axis=1)
  order = np.argsort(np.linalg.norm(np.stack([q.centre for q in prims]) - fs.origin, axis=1), kind="stable")
  with np.errstate(divide="ignore", invalid="ignore"):
    u = views[:, :, 0] / views[:, :, 2] * cam.focal + cam.cx
    v = views[:, :, 1] / views[:, :, 2] * cam.focal + cam.cy
  for j in order:
    prim = prims[j]
    rect = _pixel_rect(u[j], v[j], cam, 1) if zmin[j] >= NEAR else _clip_rect(views[j], cam)
    if rect is None:
      continue
    v0, v1, u0, u1 = rect
    sl = np.s_[v0:v1, u0:u1]
    if not prim.inst and canvas.depth[sl].max() < zmin[j]:
      continue  # hidden behind what is already drawn (actors still count for amodal sizes)
    m = (prim.rot.T @ fs.rot).astype(F32)     # local_from_calib
    o = prim.rot.T @ (fs.cam - (prim.centre - fs.origin))
    r = [fs.rays[i][sl] for i in range(3)]
    d = [m[i, 0] * r[0] + m[i, 1] * r[1] + m[i, 2] * r[2] for i in range(3)]
    t = intersect(prim, [F32(v) for v in o], d)
    if prim.inst:
      a = amodal.setdefault(prim.inst, [])
      a.append((rect, np.isfinite(t)))
    win = t < canvas.depth[sl]
    if not win.any():
      continue
    li = np.flatnonzero(win)
    th = np.take(t, li)
    p = [F32(o[k]) + th * np.take(d[k], li) for k in range(3)]
    face = _face(prim, p)
    albedo, emit = material_albedo(prim.material, p, face, prim.half, prim.color, prim.color2, tile, night)
    light = _irradiance(prim, p, face, L, sun, ambient)
    fog = np.exp(-F32(scene.lighting.fog) * th)
    flat = (li // (u1 - u0) + v0) * cam.width + (li % (u1 - u0) + u0)
    head = _headlight(fs, np.unravel_index(flat, canvas.depth.shape), th) if scene.lighting.headlights else None
    for c in range(3):
      col = albedo[c] * (light[c] + head if head is not None else light[c])
      if emit is not None:
        col += emit[c]
      col -= F32(horizon[c])
      col *= fog
      col += F32(horizon[c])
      canvas.rgb[c].reshape(-1)[flat] = col
    canvas.depth.reshape(-1)[flat] = th
    canvas.semantic.reshape(-1)[flat] = prim.cls
    canvas.instance.reshape(-1)[flat] = prim.inst
  return {i: _union_count(parts) for i, parts in amodal.items()}


def _union_count(parts) -> int:
  v0 = min(r[0] for r, _ in parts)
  v1 = max(r[1] for r, _ in parts)
  u0 = min(r[2] for r, _ in parts)
  u1 = max(r[3] for r, _ in parts)
  acc = np.zeros((v1 - v0, u1 - u0), bool)
  for (a0, a1, b0, b1), m in parts:
    acc[a0 - v0:a1 - v0, b0 - u0:b1 - u0] |= m
  return int(acc.sum())


def _sky(scene: Scene, fs: _Frame, canvas: _Canvas):
  """Sky gradient (with the sun disk) wherever nothing was hit."""
  sky_rows = np.flatnonzero(np.isinf(canvas.depth).any(axis=1))
  if not len(sky_rows):
    return
  rows = np.s_[:int(sky_rows[-1]) + 1]
  lt = scene.lighting
  Dx, Dy, Dz = (c[rows] for c in fs.dirs)
  inv = fs.inv_norm[rows]
  g = np.sqrt(np.clip(-Dz * inv, 0, 1))
  L = lt.sun_dir.astype(F32)
  cos_sun = (Dx * L[0] + Dy * L[1] + Dz * L[2]) * inv
  disk = (cos_sun > F32(np.cos(np.deg2rad(0.7)))) * F32(6.0) if lt.sun_elevation > -0.02 else F32(0)
  sky_mask = np.isinf(canvas.depth[rows])
  for c in range(3):
    col = F32(lt.horizon[c]) + (F32(lt.zenith[c]) - F32(lt.horizon[c])) * g
    col += disk * F32(lt.sun[c])
    np.copyto(canvas.rgb[c][rows], col, where=sky_mask)


def _post(scene: Scene, fs: _Frame, rgb: np.ndarray) -> np.ndarray:
  """Glare, vignetting, blur, sensor noise, 8-bit conversion, JPEG compression."""
  cam = fs.camera
  lt, sensor = scene.lighting, scene.sensor
  if lt.glare > 0 and lt.sun_elevation > -0.05:
    # bloom around the sun direction; smooth, so evaluated on a 2x coarser grid
    L = lt.sun_dir.astype(F32)
    sub = np.s_[::2, ::2]
    cos_sun = (fs.dirs[0][sub] * L[0] + fs.dirs[1][sub] * L[1] + fs.dirs[2][sub] * L[2]) * fs.inv_norm[sub]
    if cos_sun.max() > 0.5:
      x = F32(1) - cos_sun
      bloom = F32(lt.glare) * (F32(0.9) * np.exp(-x * F32(900)) + F32(0.35) * np.exp(-x * F32(40)))
      bloom = bloom.repeat(2, 0).repeat(2, 1)[:cam.height, :cam.width]
      for c in range(3):
        rgb[c] += bloom * F32(lt.sun[c])
  sigma = sensor.blur * cam.width / 1928
  if sigma > 0.2:
    rgb = _blur(rgb, sigma)
  gain = _gain(cam, 255 * sensor.exposure, sensor.vignette)
  out = np.empty((cam.height, cam.width, 3), np.uint8)
  noise = None
  if sensor.noise > 0:  # uniform read noise (4x faster to draw than gaussian), std = sensor.noise
    noise = np.random.default_rng([scene.seed, fs.frame]).random((cam.height, cam.width), dtype=F32)
    noise -= F32(0.5)
    noise *= F32(sensor.noise * np.sqrt(12))
  for c in range(3):
    v = rgb[c] * gain
    if noise is not None:
      v += noise
    np.clip(v, 0, 255, out=v)
    out[..., c] = v
  if sensor.jpeg:
    buf = cv2.imencode(".jpg", np.ascontiguousarray(out[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, sensor.jpeg])[1]
    out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
  return out


@lru_cache(maxsize=6)
def _gain(cam: CameraModel, gain: float, vignette: float) -> np.ndarray:
  """Per-pixel gain: exposure times vignetting (darker towards the corners)."""
  v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
  r2 = ((u - cam.cx) ** 2 + (v - cam.cy) ** 2) / (cam.cx ** 2 + cam.cy ** 2)
  return (gain * (1 - vignette * r2)).astype(F32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
  """Separable gaussian blur of (C, H, W) planes, weights renormalised at the borders."""
  r = max(1, int(np.ceil(2.5 * sigma)))
  k = np.exp(-0.5 * (np.arange(1, r + 1) / sigma) ** 2).astype(F32)
  for ax in (1, 2):
    n = img.shape[ax]
    out = img.copy()
    norm = np.ones(n, F32)
    for i, w in enumerate(k, start=1):
      a, b = [slice(None)] * 3, [slice(None)] * 3
      a[ax], b[ax] = slice(i, None), slice(None, -i)
      out[tuple(a)] += w * img[tuple(b)]
      out[tuple(b)] += w * img[tuple(a)]
      norm[i:] += w
      norm[:-i] += w
    shape = [1, 1, 1]
    shape[ax] = n
    out *= (1 / norm).reshape(shape)
    img = out
  return img


def render_frame(scene: Scene, frame_idx: int, camera: CameraModel, rpy=None) -> Render:
  """Render frame `frame_idx` of `scene` through `camera` rotated by calibration `rpy`.

  rpy=None uses the scene's device calibration (the image the device camera records); pass
  (0, 0, 0) with MEDMODEL (or MEDMODEL.scaled(k)) for the calibrated model frame.
  """
  f = scene.check_frame(frame_idx)
  rpy = tuple(float(a) for a in (scene.calib.rpy if rpy is None else rpy))
  fs = frame_state(scene, f, camera, rpy)
  canvas = _Canvas(camera)
  _road_pass(scene, fs, canvas)
  amodal = _object_pass(scene, fs, canvas)
  _sky(scene, fs, canvas)
  rgb = _post(scene, fs, canvas.rgb)
  return Render(rgb, canvas.depth, canvas.semantic, canvas.instance, camera, rpy, f, amodal)

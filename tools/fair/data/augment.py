"""Label-consistent augmentation of raw samples in the cached model frame (docs/data.md).

A raw sample (dataset.StudentDataset.raw) holds "yuv" and "yuv_prev" (6, 128, 256) uint8 in openpilot's
packing, dense maps at any scaling of MEDMODEL ("depth" (H, W) float32 metres, 0 = unknown; "semantic"
(H, W) uint8; "instance" (H, W) int32; "probs" (C, H, W); "features" (C, h, w)), boxes in MEDMODEL pixels
("box_xyxy" (K, 4), "box_cls", "box_depth", optional "box_pos" road frame), lanes ("lanes" (4, 33, 2),
"lane_visible", "lane_exists") and "ego" (6,). Every geometric op moves image and labels together:

  flip_sample        horizontal mirror: lanes swap slots (0<->3, 1<->2) and y -> -y, boxes mirror, ego mirrors
  rotate_sample      calibration jitter: the image a camera rotated by rpy would see. A pure rotation maps
                     model-frame pixels by a homography; depth is rescaled to the new optical axis, classes are
                     resampled nearest, box corners move by the homography, lanes / positions rotate about the
                     camera and are resampled at LANE_X
  zoom_sample        focal-length change about the principal point (boxes scale; metric labels unchanged)
  photometric        brightness, contrast, gamma, saturation, noise, blur, glare, shadows on YUV only
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from selfdrive.modeld_fair.camera import (DEFAULT_CAMERA_HEIGHT, MEDMODEL, VIEW_FROM_DEVICE, camera_from_model,
                                          project_calib_points, rot_from_euler)
from selfdrive.modeld_fair.classes import IGNORE_ID
from selfdrive.modeld_fair.medmodel_warp import pack_model_input, unpack_model_input
from selfdrive.modeld_fair.model_io import LANE_X

_YUV = ("yuv", "yuv_prev")
# nearest-neighbour maps and what lies outside the frame
_NEAREST = {"semantic": IGNORE_ID, "instance": 0, "depth": 0.0}


@dataclass(frozen=True)
class AugmentConfig:
  """Probabilities and ranges. Angles in degrees; photometric amounts relative (0.2 = +-20%)."""
  flip: float = 0.5                                  # probability of a horizontal flip
  jitter: float = 0.5                                # probability of a calibration jitter
  jitter_deg: tuple[float, float, float] = (1.0, 1.0, 1.5)  # max |roll|, |pitch|, |yaw|
  zoom: float = 0.0                                  # probability of a zoom (off: it changes the intrinsics)
  zoom_range: float = 0.1                            # factor in [1 - r, 1 + r]
  photometric: float = 0.8                           # probability of the photometric chain
  brightness: float = 0.15
  contrast: float = 0.2
  gamma: float = 0.2
  saturation: float = 0.3
  noise: float = 4.0                                 # max std of the added noise (8-bit levels)
  blur: float = 1.2                                  # max Gaussian sigma (full-resolution pixels)
  glare: float = 0.2                                 # probability of a glare blob
  shadow: float = 0.3                                # probability of a shadow band

  @classmethod
  def named(cls, name, **overrides) -> AugmentConfig | None:
    """"none"/None -> None, "default" -> defaults, "photometric" -> no geometry, "geometric" -> no photometric."""
    presets = {"default": {}, "photometric": {"flip": 0.0, "jitter": 0.0},
               "geometric": {"photometric": 0.0}}
    if name in (None, "none"):
      return None
    if name not in presets:
      raise ValueError(f"unknown augmentation {name!r} (valid: none, {', '.join(presets)})")
    return cls(**{**presets[name], **overrides})


# ---------------------------------------------------------------- geometry helpers

def _scale_of(width: int) -> float:
  return width / MEDMODEL.width


def _to_scale(h_full: np.ndarray, k: float) -> np.ndarray:
  """The homography h_full (MEDMODEL pixels) for a map at MEDMODEL.scaled(k) (pixel centres consistent)."""
  s = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1.0]])
  return s @ h_full @ np.linalg.inv(s)


def _apply(h: np.ndarray, uv: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):  # points behind the camera project to inf / NaN
    p = uv @ h[:, :2].T + h[:, 2]
    return p[..., :2] / p[..., 2:3]


def _source_coords(h_full: np.ndarray, height: int, width: int) -> np.ndarray:
  """For every output pixel of a (height, width) map, its source coordinates (float32 (H, W, 2))."""
  inv = np.linalg.inv(_to_scale(h_full, _scale_of(width)))
  vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
  return _apply(inv, np.stack([uu, vv], -1)).astype(np.float32)


def warp_map(x: np.ndarray, h_full: np.ndarray, nearest: bool, fill=0) -> np.ndarray:
  """Resample a (H, W) or (C, H, W) map so that out(q) = x(h^-1 q); outside: fill (nearest) or the border."""
  chw = x.ndim == 3
  h, w = x.shape[-2:]
  src = _source_coords(h_full, h, w)
  if nearest:
    iu, iv = np.rint(src[..., 0]).astype(np.intp), np.rint(src[..., 1]).astype(np.intp)
    inside = (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
    out = x[..., np.clip(iv, 0, h - 1), np.clip(iu, 0, w - 1)]
    return np.where(inside, out, np.asarray(fill, x.dtype)).astype(x.dtype)
  planes = x if chw else x[None]
  out = np.stack([cv2.remap(np.ascontiguousarray(p, np.float32), src[..., 0], src[..., 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE) for p in planes])
  if x.dtype == np.uint8:
    out = np.clip(np.rint(out), 0, 255)
  out = out.astype(x.dtype)
  return out if chw else out[0]


def _warp_yuv(packed: np.ndarray, h_full: np.ndarray) -> np.ndarray:
  y, u, v = unpack_model_input(packed)
  return pack_model_input(warp_map(y, h_full, False), warp_map(u, h_full, False), warp_map(v, h_full, False))


def _warp_boxes(boxes: np.ndarray, h_full: np.ndarray) -> np.ndarray:
  """Bounding boxes of the homography images of each box's corners, clipped to the frame."""
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not len(b):
    return b.astype(np.float32)
  corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], 1)
  c = _apply(h_full, corners)
  out = np.concatenate([c.min(1), c.max(1)], 1)
  out = np.clip(out, [-0.5, -0.5] * 2, [MEDMODEL.width - 0.5, MEDMODEL.height - 0.5] * 2)
  return out.astype(np.float32)


def _geometric(s: dict, h_full: np.ndarray, rot: np.ndarray | None, height: float) -> dict:
  """Apply model-frame homography h_full (old -> new pixels) to every image and label of s. rot: the
  rotation c' = rot @ c of camera-centred calib-frame vectors (None for a zoom: metric labels stay)."""
  out = dict(s)
  for key in _YUV:
    if key in s:
      out[key] = _warp_yuv(s[key], h_full)
  depth_factor = None
  if rot is not None:
    # optical-axis depth of a point seen at old pixel p: z' = z * (M K^-1 p)_z with M = V R V^T
    m3 = (VIEW_FROM_DEVICE @ rot @ VIEW_FROM_DEVICE.T)[2]

    def depth_factor(uv_full: np.ndarray) -> np.ndarray:
      ray = np.stack([(uv_full[..., 0] - MEDMODEL.cx) / MEDMODEL.focal,
                      (uv_full[..., 1] - MEDMODEL.cy) / MEDMODEL.focal,
                      np.ones(uv_full.shape[:-1])], -1)
      return ray @ m3
  for key, fill in _NEAREST.items():
    if key not in s:
      continue
    x = s[key]
    if key == "depth" and depth_factor is not None:
      hh, ww = x.shape
      k = _scale_of(ww)
      vv, uu = np.mgrid[0:hh, 0:ww].astype(np.float64)
      full = (np.stack([uu, vv], -1) + 0.5) / k - 0.5
      x = (x * depth_factor(full)).astype(x.dtype)
    out[key] = warp_map(x, h_full, True, fill)
  for key in ("probs", "features"):
    if key in s:
      out[key] = warp_map(s[key], h_full, False)
  if "box_xyxy" in s:
    b = np.asarray(s["box_xyxy"], np.float64)
    out["box_xyxy"] = _warp_boxes(b, h_full)
    if depth_factor is not None and "box_depth" in s:
      centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], -1)
      out["box_depth"] = (np.asarray(s["box_depth"]) * depth_factor(centre)).astype(np.float32)
  if rot is not None and "box_pos" in s:
    cam = np.array([0.0, 0.0, height])
    out["box_pos"] = ((np.asarray(s["box_pos"], np.float64) + cam) @ rot.T - cam).astype(np.float32)
  if "lanes" in s:
    out.update(_move_lanes(s, h_full, rot, height))
  return out


def _move_lanes(s: dict, h_full: np.ndarray, rot: np.ndarray | None, height: float) -> dict:
  lanes = np.asarray(s["lanes"], np.float64)
  vis = np.asarray(s["lane_visible"]) > 0
  pts = np.concatenate([np.broadcast_to(LANE_X[None, :, None], lanes.shape[:2] + (1,)), lanes], -1)
  if rot is not None:
    cam = np.array([0.0, 0.0, height])
    pts = (pts + cam) @ rot.T - cam
  new_l, new_v = lanes, vis.copy()   # a zoom: the same road, seen through another focal length
  if rot is not None:
    new_l = np.zeros_like(lanes)
    for i in range(len(lanes)):
      order = np.argsort(pts[i, :, 0])
      xs = pts[i, order, 0]
      new_l[i, :, 0] = np.interp(LANE_X, xs, pts[i, order, 1])
      new_l[i, :, 1] = np.interp(LANE_X, xs, pts[i, order, 2])
      # a new point keeps the visibility (occlusion) of the nearest old point, within the old sampled range
      near = order[np.clip(np.searchsorted(xs, LANE_X), 0, len(xs) - 1)]
      new_v[i] = vis[i, near] & (LANE_X >= xs[0]) & (LANE_X <= xs[-1])
  pts_new = np.concatenate([np.broadcast_to(LANE_X[None, :, None], new_l.shape[:2] + (1,)), new_l], -1)
  # in view after the move: project with the new frame's geometry (zoom: through h_full)
  uv, z = project_calib_points(pts_new.reshape(-1, 3) + np.array([0.0, 0.0, height]), MEDMODEL)
  uv = _apply(h_full, uv) if rot is None else uv
  inside = ((z > 0.1) & (uv[:, 0] >= -0.5) & (uv[:, 0] < MEDMODEL.width - 0.5) & (uv[:, 1] >= -0.5) &
            (uv[:, 1] < MEDMODEL.height - 0.5)).reshape(new_v.shape)
  return {"lanes": new_l.astype(np.float32), "lane_visible": (new_v & inside).astype(np.uint8)}


# ---------------------------------------------------------------- ops

def rotate_sample(s: dict, rpy, height: float = DEFAULT_CAMERA_HEIGHT) -> dict:
  """The sample as a camera rotated by rpy (radians, relative to the calib frame) would see it.

  height: camera height above the road (lanes and positions rotate about the camera). The ego vector is
  kept: it is in the device frame, which a calibration error does not move."""
  h_full = camera_from_model(MEDMODEL, rpy, MEDMODEL)
  return _geometric(s, h_full, rot_from_euler(rpy), height)


def zoom_sample(s: dict, factor: float) -> dict:
  """Scale the image about the principal point by `factor` (> 1 zooms in): a focal-length change."""
  if not factor > 0:
    raise ValueError(f"zoom factor must be > 0, got {factor}")
  c = np.array([MEDMODEL.cx, MEDMODEL.cy])
  h_full = np.array([[factor, 0, c[0] * (1 - factor)], [0, factor, c[1] * (1 - factor)], [0, 0, 1.0]])
  return _geometric(s, h_full, None, DEFAULT_CAMERA_HEIGHT)


def flip_sample(s: dict) -> dict:
  """Mirror left-right (about the frame's centre column; MEDMODEL's principal point is 0.5 px off it)."""
  out = dict(s)
  for key in _YUV:
    if key in s:
      y, u, v = unpack_model_input(s[key])
      out[key] = pack_model_input(y[:, ::-1], u[:, ::-1], v[:, ::-1])
  for key in ("depth", "semantic", "instance", "probs", "features"):
    if key in s:
      out[key] = np.ascontiguousarray(s[key][..., ::-1])
  if "box_xyxy" in s:
    b = np.asarray(s["box_xyxy"], np.float32)
    w1 = MEDMODEL.width - 1
    out["box_xyxy"] = np.stack([w1 - b[:, 2], b[:, 1], w1 - b[:, 0], b[:, 3]], -1).astype(np.float32)
  if "box_pos" in s:
    out["box_pos"] = np.asarray(s["box_pos"]) * np.array([1, -1, 1], np.float32)
  if "lanes" in s:
    out["lanes"] = (np.asarray(s["lanes"])[::-1] * np.array([-1, 1], np.float32)).astype(np.float32)
    out["lane_visible"] = np.ascontiguousarray(np.asarray(s["lane_visible"])[::-1])
    out["lane_exists"] = np.ascontiguousarray(np.asarray(s["lane_exists"])[::-1])
  if "ego" in s:
    # a mirror flips y of velocities; angular velocity is a pseudo-vector: roll and yaw rates change sign
    out["ego"] = (np.asarray(s["ego"]) * np.array([1, -1, 1, -1, 1, -1], np.float32)).astype(np.float32)
  return out


def photometric(s: dict, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> dict:
  """Brightness, contrast, gamma, saturation, blur, glare, shadow and noise on both frames' YUV (the same
  draw for both frames, noise drawn per frame). Labels are untouched."""
  p = {"b": rng.uniform(-cfg.brightness, cfg.brightness) * 255, "c": 1 + rng.uniform(-cfg.contrast, cfg.contrast),
       "g": np.exp(rng.uniform(-cfg.gamma, cfg.gamma)), "s": 1 + rng.uniform(-cfg.saturation, cfg.saturation),
       "blur": rng.uniform(0, cfg.blur), "noise": rng.uniform(0, cfg.noise)}
  h, w = 2 * s["yuv"].shape[1], 2 * s["yuv"].shape[2]
  vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)
  light = np.zeros((h, w), np.float32)
  if rng.random() < cfg.glare:  # a bright blob near the horizon, washing out colour
    cu, cv, r = rng.uniform(0, w), rng.uniform(0, h * 0.5), rng.uniform(0.05, 0.25) * w
    light = rng.uniform(0.4, 1.0) * np.exp(-((uu - cu) ** 2 + (vv - cv) ** 2) / (2 * r ** 2))
  shade = np.ones((h, w), np.float32)
  if rng.random() < cfg.shadow:  # a slanted band across the lower image, darker inside
    a, c0, width = rng.uniform(-1, 1), rng.uniform(0, w), rng.uniform(0.05, 0.3) * w
    band = np.abs(uu - (c0 + a * (vv - h))) < width
    shade[band & (vv > h * 0.3)] = rng.uniform(0.35, 0.7)
  out = dict(s)
  for key in _YUV:
    if key not in s:
      continue
    y, u, v = (x.astype(np.float32) for x in unpack_model_input(s[key]))
    y = ((y - y.mean()) * p["c"] + y.mean() + p["b"]) * shade
    y = 255 * (np.clip(y, 0, 255) / 255) ** p["g"]
    if p["blur"] > 0.3:
      y = cv2.GaussianBlur(y, (0, 0), p["blur"])
    y = y + light * (255 - y)
    wash = 1 - light[::2, ::2] if light.any() else 1.0
    u, v = ((c - 128) * p["s"] * wash * shade[::2, ::2] + 128 for c in (u, v))
    y = y + rng.normal(0, p["noise"], y.shape)
    u, v = (c + rng.normal(0, p["noise"] / 2, c.shape) for c in (u, v))
    out[key] = pack_model_input(*(np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v)))
  return out


class Augment:
  """Random label-consistent augmentation: flip, calibration jitter, zoom, then photometric ops.

  aug(sample, rng) -> new sample; the draw depends only on rng (seed it per sample for determinism)."""

  def __init__(self, config: AugmentConfig = AugmentConfig()):
    self.config = config

  def __call__(self, s: dict, rng: np.random.Generator) -> dict:
    cfg = self.config
    if rng.random() < cfg.flip:
      s = flip_sample(s)
    if rng.random() < cfg.jitter:
      rpy = np.radians(rng.uniform(-1, 1, 3) * np.asarray(cfg.jitter_deg))
      s = rotate_sample(s, rpy)
    if rng.random() < cfg.zoom:
      s = zoom_sample(s, 1 + rng.uniform(-cfg.zoom_range, cfg.zoom_range))
    if rng.random() < cfg.photometric:
      s = photometric(s, rng, cfg)
    return s

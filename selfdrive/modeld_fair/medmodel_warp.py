"""Warp device camera frames into openpilot's calibrated medmodel frame.

One implementation for the daemon and the offline tools (labels and inference see the same
pixels). Pure numpy: per calibration we precompute, for every output pixel, the four source
byte offsets in the padded NV12 buffer and 8-bit bilinear weights; a warp is then one
gather and integer arithmetic (~1.3 ms for 1928x1208 → 512x256 on one core).
Pixel centres sit at integer coordinates; output pixels whose source falls outside the camera
image are clamped to the border and reported in `WarpTables.valid`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel, camera_from_model
from selfdrive.modeld_fair.nv12 import NV12Layout, nv12_layout, yuv_to_rgb

_ONE = 256  # fixed-point scale of the bilinear weights; 255 * 256 still fits uint16


@dataclass(frozen=True)
class _Sampler:
  """Bilinear gather inside a flat buffer: 4 byte offsets and weights per output sample."""
  offsets: np.ndarray  # (4, N) intp byte offsets: top-left, top-right, bottom-left, bottom-right
  weights: np.ndarray  # (4, N) uint16, summing to _ONE

  def __call__(self, buf: np.ndarray) -> np.ndarray:
    g = buf[self.offsets].astype(np.uint16)  # one gather for all taps (random access dominates the cost)
    g *= self.weights
    acc = g[0] + g[1]
    acc += g[2]
    acc += g[3]
    acc += _ONE // 2
    acc >>= 8
    return acc.astype(np.uint8)

  @staticmethod
  def concat(*samplers: _Sampler) -> _Sampler:
    return _Sampler(np.concatenate([s.offsets for s in samplers], axis=1),
                    np.concatenate([s.weights for s in samplers], axis=1))


def _sampler(x: np.ndarray, y: np.ndarray, width: int, height: int, base: int, row: int, step: int) -> _Sampler:
  """Sampler of source coordinates (x, y) in a width x height plane laid out at base + y*row + x*step."""
  x = np.clip(x, 0, width - 1)
  y = np.clip(y, 0, height - 1)
  x0 = np.minimum(np.floor(x).astype(np.int64), width - 2)
  y0 = np.minimum(np.floor(y).astype(np.int64), height - 2)
  wx = np.rint((x - x0) * _ONE).astype(np.int32)
  wy = np.rint((y - y0) * _ONE).astype(np.int32)
  # products of weights rounded to the 8-bit grid; the last one absorbs the rounding so they sum to _ONE
  w00 = ((_ONE - wx) * (_ONE - wy) + _ONE // 2) >> 8
  w01 = (wx * (_ONE - wy) + _ONE // 2) >> 8
  w10 = ((_ONE - wx) * wy + _ONE // 2) >> 8
  w11 = _ONE - w00 - w01 - w10
  o00 = base + y0 * row + x0 * step
  offsets = np.stack([o00, o00 + step, o00 + row, o00 + row + step]).reshape(4, -1).astype(np.intp)
  weights = np.stack([w00, w01, w10, w11]).astype(np.uint16).reshape(4, -1)
  return _Sampler(offsets, weights)


def model_to_camera(uv: np.ndarray, camera: CameraModel, rpy, model: CameraModel = MEDMODEL) -> np.ndarray:
  """Map model-frame pixel coordinates (..., 2) to device camera pixel coordinates."""
  return _apply_homography(camera_from_model(camera, rpy, model), uv)


def camera_to_model(uv: np.ndarray, camera: CameraModel, rpy, model: CameraModel = MEDMODEL) -> np.ndarray:
  """Map device camera pixel coordinates (..., 2) to model-frame pixel coordinates."""
  return _apply_homography(np.linalg.inv(camera_from_model(camera, rpy, model)), uv)


def _apply_homography(h: np.ndarray, uv: np.ndarray) -> np.ndarray:
  uv = np.asarray(uv, dtype=np.float64)
  p = uv @ h[:, :2].T + h[:, 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    return p[..., :2] / p[..., 2:3]


@dataclass(frozen=True)
class WarpTables:
  """Precomputed sampling for one (camera, calibration, output frame): build once per calibration."""
  layout: NV12Layout
  model: CameraModel
  sampler: _Sampler      # Y at every output pixel, then U, then V at the output's chroma grid
  chroma_shape: tuple[int, int]  # half the model resolution, or all of it for RGB (full_chroma)
  valid: np.ndarray      # (H, W) bool: the output pixel sees the camera image
  full_chroma: bool


def warp_tables(camera: CameraModel, rpy, model: CameraModel = MEDMODEL, full_chroma: bool = False) -> WarpTables:
  """Sampling tables from a `camera` NV12 frame to the `model` frame for calibration `rpy`.

  full_chroma=False gives NV12-like output (chroma at half resolution, for the student's YUV
  packing); True samples chroma at every output pixel (for RGB output to teachers).
  """
  if not np.all(np.isfinite(np.asarray(rpy, dtype=np.float64))):
    raise ValueError(f"calibration must be finite, got {rpy}")
  layout = nv12_layout(camera.width, camera.height)
  h = camera_from_model(camera, rpy, model)
  vv, uu = np.mgrid[0:model.height, 0:model.width].astype(np.float64)
  xy = _apply_homography(h, np.stack([uu, vv], axis=-1))
  valid = (xy[..., 0] >= -0.5) & (xy[..., 0] <= camera.width - 0.5) & \
          (xy[..., 1] >= -0.5) & (xy[..., 1] <= camera.height - 0.5)
  ysamp = _sampler(xy[..., 0], xy[..., 1], camera.width, camera.height, 0, layout.stride, 1)
  if full_chroma:
    cxy = xy
  else:  # a chroma sample covers a 2x2 block of luma pixels: map the block's centre
    cv, cu = np.mgrid[0:model.height // 2, 0:model.width // 2].astype(np.float64)
    cxy = _apply_homography(h, np.stack([2 * cu + 0.5, 2 * cv + 0.5], axis=-1))
  # luma coordinate x lies at chroma coordinate (x - 0.5) / 2; U and V interleave (step 2)
  usamp = _sampler((cxy[..., 0] - 0.5) / 2, (cxy[..., 1] - 0.5) / 2, camera.width // 2, camera.height // 2,
                   layout.uv_offset, layout.stride, 2)
  vsamp = _Sampler(usamp.offsets + 1, usamp.weights)
  return WarpTables(layout, model, _Sampler.concat(ysamp, usamp, vsamp), cxy.shape[:2], valid, full_chroma)


def _check_buffer(buf: np.ndarray, tables: WarpTables) -> np.ndarray:
  buf = np.asarray(buf)
  if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size < tables.layout.size:
    raise ValueError(f"expected a flat uint8 NV12 buffer of >= {tables.layout.size} bytes "
                     f"({tables.layout.width}x{tables.layout.height}, stride {tables.layout.stride}), "
                     f"got {buf.dtype} {buf.shape}")
  return buf


def warp_nv12(buf: np.ndarray, tables: WarpTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Warp a padded NV12 camera buffer: Y (H, W) and U, V planes (half size unless full_chroma)."""
  flat = tables.sampler(_check_buffer(buf, tables))
  ny, nc = tables.model.width * tables.model.height, tables.chroma_shape[0] * tables.chroma_shape[1]
  return (flat[:ny].reshape(tables.model.height, tables.model.width), flat[ny:ny + nc].reshape(tables.chroma_shape),
          flat[ny + nc:].reshape(tables.chroma_shape))


def pack_model_input(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """openpilot's 6 x H/2 x W/2 packing of a YUV420 frame: four Y sub-planes (even/odd rows x
  even/odd columns, rows varying fastest), then U, then V."""
  return np.stack([y[0::2, 0::2], y[1::2, 0::2], y[0::2, 1::2], y[1::2, 1::2], u, v])


def unpack_model_input(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Inverse of pack_model_input."""
  c, h, w = packed.shape
  y = np.empty((2 * h, 2 * w), dtype=packed.dtype)
  y[0::2, 0::2], y[1::2, 0::2], y[0::2, 1::2], y[1::2, 1::2] = packed[:4]
  return y, packed[4], packed[5]


def warp_model_input(buf: np.ndarray, tables: WarpTables) -> np.ndarray:
  """The student's input: the calibrated frame as a (6, 128, 256) uint8 YUV packing."""
  if tables.full_chroma:
    raise ValueError("the model input needs half-resolution chroma tables (full_chroma=False)")
  return pack_model_input(*warp_nv12(buf, tables))


def warp_rgb(buf: np.ndarray, tables: WarpTables) -> np.ndarray:
  """The calibrated frame as uint8 RGB (H, W, 3) at the tables' model resolution (for teachers)."""
  y, u, v = warp_nv12(buf, tables)
  if not tables.full_chroma:
    u, v = (p.repeat(2, 0).repeat(2, 1) for p in (u, v))
  return yuv_to_rgb(y, u, v)

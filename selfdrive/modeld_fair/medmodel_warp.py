"""Warp device camera frames into openpilot's calibrated medmodel frame.

One implementation for the daemon and the offline tools (labels and inference see the same
pixels). Per calibration we precompute OpenCV's fixed-point remap tables (source pixel + a
1/32-px bilinear phase per output pixel); a frame is then one `cv2.remap` per plane (Y, and U/V
together as one 2-channel image), ~0.5 ms for 1928x1208 -> 6x128x256 on one core. Where OpenCV
is not installed (openpilot's own environment does not ship it) a numpy back end computes the
very same integers — same quantised phases, same 15-bit weights, same rounding — so both back
ends give identical bytes (tested), just the numpy one ~3x slower.
Pixel centres sit at integer coordinates; output pixels whose source falls outside the camera
image are clamped to the border (OpenCV's BORDER_REPLICATE) and reported in `WarpTables.valid`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel, camera_from_model
from selfdrive.modeld_fair.nv12 import NV12Layout, nv12_layout, yuv_to_rgb

try:
  import cv2
except ImportError:  # the daemon inside openpilot: numpy back end, same bytes
  cv2 = None

_BITS = 5           # OpenCV's INTER_BITS: bilinear phases in 1/32 px
_TAB = 1 << _BITS


@dataclass(frozen=True)
class RemapTable:
  """Fixed-point sampling of one plane in OpenCV's CV_16SC2 + phase format (cv2.convertMaps)."""
  xy: np.ndarray      # (H, W, 2) int16 top-left source pixel (x, y), may lie outside the plane
  phase: np.ndarray   # (H, W) uint16 (y phase) * 32 + (x phase), phases in 1/32 px
  _numpy: list = field(default_factory=list, compare=False, repr=False)  # lazily built numpy taps

  @staticmethod
  def from_coords(x: np.ndarray, y: np.ndarray) -> RemapTable:
    """Quantise float source coordinates exactly as cv2.convertMaps(CV_16SC2) does (float32, round half even)."""
    lim = np.float32(30000)  # px; int16 holds the pixel index, and that far out every tap is a border pixel
    qx = np.rint(np.clip(x.astype(np.float32), -lim, lim) * np.float32(_TAB)).astype(np.int32)
    qy = np.rint(np.clip(y.astype(np.float32), -lim, lim) * np.float32(_TAB)).astype(np.int32)
    xy = np.stack([qx >> _BITS, qy >> _BITS], axis=-1).astype(np.int16)
    return RemapTable(xy, ((qy & (_TAB - 1)) * _TAB + (qx & (_TAB - 1))).astype(np.uint16))

  def __call__(self, plane: np.ndarray) -> np.ndarray:
    """Bilinear sample of a uint8 (h, w) or (h, w, c) plane (rows may be strided)."""
    if cv2 is not None:
      return cv2.remap(plane, self.xy, self.phase, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return self._remap_numpy(plane)

  def _remap_numpy(self, plane: np.ndarray) -> np.ndarray:
    h, w, channels = *plane.shape[:2], plane.shape[2:]
    if not self._numpy or self._numpy[0] != plane.strides:
      self._numpy[:] = [plane.strides, *self._taps(h, w, plane.strides)]
    _, offsets, weights = self._numpy
    # the plane as a flat byte run from its first pixel (rows may be padded), channels kept as the last axis
    span = plane.strides[0] * (h - 1) + plane.strides[1] * (w - 1) + 1
    flat = np.lib.stride_tricks.as_strided(plane, (span,) + channels, (1,) + plane.strides[2:], writeable=False)
    g = flat[offsets].astype(np.uint32)                            # (4, N, *channels): one gather for all taps
    acc = (g * weights.reshape(weights.shape + (1,) * len(channels))).sum(0, dtype=np.uint32)
    # OpenCV: weights (32 - fx)(32 - fy) * 32 in 15 bits, (sum + 2^14) >> 15 == (sum / 32 + 2^9) >> 10
    return ((acc + 512) >> 10).astype(np.uint8).reshape(self.phase.shape + channels)

  def _taps(self, h: int, w: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = self.xy[..., 0].astype(np.int64).ravel(), self.xy[..., 1].astype(np.int64).ravel()
    fx, fy = (self.phase.ravel() & (_TAB - 1)).astype(np.uint32), (self.phase.ravel() >> _BITS).astype(np.uint32)
    xs = [np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)]   # BORDER_REPLICATE, per tap and axis
    ys = [np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)]
    offsets = np.stack([ys[j] * strides[0] + xs[i] * strides[1] for j in (0, 1) for i in (0, 1)]).astype(np.intp)
    weights = np.stack([(_TAB - fx) * (_TAB - fy), fx * (_TAB - fy), (_TAB - fx) * fy, fx * fy]).astype(np.uint32)
    return offsets, weights


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
  luma: RemapTable       # Y at every output pixel
  chroma: RemapTable     # U and V (one 2-channel sample of the interleaved plane) at the output's chroma grid
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
  if full_chroma:
    cxy = xy
  else:  # a chroma sample covers a 2x2 block of luma pixels: map the block's centre
    cv, cu = np.mgrid[0:model.height // 2, 0:model.width // 2].astype(np.float64)
    cxy = _apply_homography(h, np.stack([2 * cu + 0.5, 2 * cv + 0.5], axis=-1))
  # luma coordinate x lies at chroma coordinate (x - 0.5) / 2
  chroma = RemapTable.from_coords((cxy[..., 0] - 0.5) / 2, (cxy[..., 1] - 0.5) / 2)
  return WarpTables(layout, model, RemapTable.from_coords(xy[..., 0], xy[..., 1]), chroma, valid, full_chroma)


def _check_buffer(buf: np.ndarray, tables: WarpTables) -> np.ndarray:
  buf = np.asarray(buf)
  if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size < tables.layout.size:
    raise ValueError(f"expected a flat uint8 NV12 buffer of >= {tables.layout.size} bytes "
                     f"({tables.layout.width}x{tables.layout.height}, stride {tables.layout.stride}), "
                     f"got {buf.dtype} {buf.shape}")
  return buf


def warp_nv12(buf: np.ndarray, tables: WarpTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Warp a padded NV12 camera buffer: Y (H, W) and U, V planes (half size unless full_chroma)."""
  buf, lay = _check_buffer(buf, tables), tables.layout
  y = buf[:lay.stride * lay.height].reshape(lay.height, lay.stride)[:, :lay.width]
  uv = buf[lay.uv_offset:lay.uv_offset + lay.stride * (lay.height // 2)].reshape(lay.height // 2, lay.stride // 2, 2)
  uv = tables.chroma(uv[:, :lay.width // 2])
  return tables.luma(y), uv[..., 0], uv[..., 1]


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

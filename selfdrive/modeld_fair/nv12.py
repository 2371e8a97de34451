"""NV12 frames in the padded layout camerad publishes over VisionIPC, and YUV <-> RGB.

Layout of one buffer (openpilot's VisionBuf): a Y plane of `y_height = align(h, 32)` rows of
`stride = align(w, 128)` bytes, then, at `uv_offset = stride * y_height`, h/2 rows of
interleaved U,V pairs with the same stride. Colours are BT.601 limited range, which is what
the HEVC/H.264 encoders and decoders on both sides assume.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def align(x: int, a: int) -> int:
  return (x + a - 1) // a * a


FRAME_FIELDS = ("frame_id", "timestamp_sof", "timestamp_eof", "width", "height", "stride", "uv_offset")
# VisionIPC's types: frame ids are UInt32, stamps UInt64 ns; sizes and offsets fit a UInt32
FRAME_FIELD_BITS = {"frame_id": 32, "timestamp_sof": 64, "timestamp_eof": 64, "width": 32, "height": 32,
                    "stride": 32, "uv_offset": 32}


def frame_meta_problem(meta) -> str | None:
  """Why frame metadata (a mapping of FRAME_FIELDS) is not VisionIPC's: a field missing, not an
  integer or outside its unsigned range; None when every field fits."""
  for k, bits in FRAME_FIELD_BITS.items():
    v = meta.get(k)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      return f"{k} = {repr(v)[:40]} is not an integer"
    if not 0 <= v < 1 << bits:
      shown = v if abs(v).bit_length() < 128 else f"a {abs(v).bit_length()}-bit integer"
      return f"{k} = {shown} is not a UInt{bits}"
  return None


@dataclass(frozen=True, eq=False)
class CameraFrame:
  """One road-camera frame as VisionIPC hands it over: padded NV12 bytes and their metadata."""
  frame_id: int
  timestamp_sof: int   # ns
  timestamp_eof: int   # ns
  width: int
  height: int
  stride: int
  uv_offset: int
  data: np.ndarray     # flat uint8 buffer (may be read-only: a view into the received message)

  def meta(self) -> dict[str, int]:
    return {k: int(getattr(self, k)) for k in FRAME_FIELDS}


@dataclass(frozen=True)
class NV12Layout:
  width: int
  height: int
  stride: int
  uv_offset: int

  @property
  def size(self) -> int:
    return self.uv_offset + self.stride * (self.height // 2)


def nv12_layout(width: int, height: int) -> NV12Layout:
  """openpilot's padded NV12 layout for a width x height frame (both must be even)."""
  if width <= 0 or height <= 0 or width % 2 or height % 2:
    raise ValueError(f"NV12 needs positive even dimensions, got {width}x{height}")
  stride = align(width, 128)
  return NV12Layout(width, height, stride, stride * align(height, 32))


def nv12_planes(buf: np.ndarray, layout: NV12Layout) -> tuple[np.ndarray, np.ndarray]:
  """Views (no copy) of the Y plane (h x w) and the interleaved UV plane (h/2 x w/2 x 2)."""
  buf = np.asarray(buf)
  if buf.dtype != np.uint8 or buf.ndim != 1 or buf.size < layout.size:
    raise ValueError(f"NV12 buffer must be flat uint8 of >= {layout.size} bytes for {layout.width}x{layout.height}, "
                     f"got {buf.dtype} {buf.shape}")
  w, h, s = layout.width, layout.height, layout.stride
  y = buf[:s * h].reshape(h, s)[:, :w]
  uv = buf[layout.uv_offset:layout.uv_offset + s * (h // 2)].reshape(h // 2, s)[:, :w].reshape(h // 2, w // 2, 2)
  return y, uv


def pack_nv12(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, NV12Layout]:
  """Pack full-size Y and half-size U, V planes into a padded NV12 buffer (padding is zero)."""
  h, w = y.shape
  layout = nv12_layout(w, h)
  if u.shape != (h // 2, w // 2) or v.shape != u.shape:
    raise ValueError(f"chroma planes must be {(h // 2, w // 2)}, got {u.shape} and {v.shape}")
  buf = np.zeros(layout.size, dtype=np.uint8)
  yv, uvv = nv12_planes(buf, layout)
  yv[:] = y
  uvv[..., 0] = u
  uvv[..., 1] = v
  return buf, layout


# BT.601 limited range
_RGB_FROM_YUV = np.array([[1.164383, 0.0, 1.596027],
                          [1.164383, -0.391762, -0.812968],
                          [1.164383, 2.017232, 0.0]], dtype=np.float32)


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Y, U, V planes of equal shape (any numeric dtype) to uint8 RGB (..., 3)."""
  yuv = np.stack([np.asarray(y, np.float32) - 16.0, np.asarray(u, np.float32) - 128.0,
                  np.asarray(v, np.float32) - 128.0], axis=-1)
  return np.clip(yuv @ _RGB_FROM_YUV.T + 0.5, 0, 255).astype(np.uint8)


def rgb_to_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 RGB (h, w, 3) to full-resolution float32 Y, U, V planes (BT.601 limited range)."""
  yuv = (np.asarray(rgb, np.float32) @ np.linalg.inv(_RGB_FROM_YUV).T.astype(np.float32)) + \
      np.array([16.0, 128.0, 128.0], np.float32)
  return yuv[..., 0], yuv[..., 1], yuv[..., 2]


def rgb_to_nv12(rgb: np.ndarray) -> tuple[np.ndarray, NV12Layout]:
  """uint8 RGB (h, w, 3), h and w even, to a padded NV12 buffer (chroma averaged over 2x2)."""
  h, w, _ = rgb.shape
  if h % 2 or w % 2:
    raise ValueError(f"NV12 needs an even width and height, got {w}x{h} (crop the last column/row first)")
  y, u, v = rgb_to_yuv(rgb)
  sub = lambda p: p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
  q = lambda p: np.clip(np.rint(p), 0, 255).astype(np.uint8)
  return pack_nv12(q(y), q(sub(u)), q(sub(v)))


def nv12_to_rgb(buf: np.ndarray, layout: NV12Layout) -> np.ndarray:
  """Padded NV12 buffer to uint8 RGB (h, w, 3), chroma upsampled by repetition."""
  y, uv = nv12_planes(buf, layout)
  u = uv[..., 0].repeat(2, 0).repeat(2, 1)
  v = uv[..., 1].repeat(2, 0).repeat(2, 1)
  return yuv_to_rgb(y, u, v)

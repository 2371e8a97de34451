"""Camera models, coordinate frames and the calibrated model frame.

Frames (openpilot conventions):
  device / calib / road frame: x forward, y right, z down (metres).
  view (camera) frame:          x right,   y down,  z forward.
The calib frame is the device frame rotated so that its x axis points along the car's
direction of travel and its z axis along gravity; `liveCalibration.rpyCalib` gives the
rotation device_from_calib as roll/pitch/yaw (radians).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# rows of view_from_device: view x = device y, view y = device z, view z = device x
VIEW_FROM_DEVICE = np.array([[0.0, 1.0, 0.0],
                             [0.0, 0.0, 1.0],
                             [1.0, 0.0, 0.0]])
DEVICE_FROM_VIEW = VIEW_FROM_DEVICE.T

# mounting height of the road camera above the road used when a log does not say (metres)
DEFAULT_CAMERA_HEIGHT = 1.22


@dataclass(frozen=True)
class CameraModel:
  """A pinhole camera: image size and focal length, principal point at (cx, cy)."""
  name: str
  width: int
  height: int
  focal: float
  cx: float
  cy: float

  @property
  def intrinsics(self) -> np.ndarray:
    return np.array([[self.focal, 0.0, self.cx],
                     [0.0, self.focal, self.cy],
                     [0.0, 0.0, 1.0]])

  def scaled(self, factor: float) -> CameraModel:
    """The same field of view at `factor` times the resolution (pixel centres kept consistent); ValueError
    when that leaves no pixel."""
    if not 0 < factor < float("inf"):   # NaN fails this too
      raise ValueError(f"scale must be a positive finite number, got {factor!r}")
    w, h = round(self.width * factor), round(self.height * factor)
    if w < 1 or h < 1:
      raise ValueError(f"scale {factor:g} gives a {w}x{h} {self.name} frame: no pixels")
    return CameraModel(f"{self.name}x{factor:g}", w, h,
                       self.focal * factor, (self.cx + 0.5) * factor - 0.5, (self.cy + 0.5) * factor - 0.5)


def _centred(name: str, width: int, height: int, focal: float) -> CameraModel:
  return CameraModel(name, width, height, focal, width / 2, height / 2)


# device road cameras (principal point at the image centre)
TICI_ROAD = _centred("tici", 1928, 1208, 2648.0)     # comma 3 / 3X, AR0231 / OX03C10
MICI_ROAD = _centred("mici", 1344, 760, 1141.5)      # comma four, OS04C10
DEVICE_CAMERAS = {c.name: c for c in (TICI_ROAD, MICI_ROAD)}

# openpilot's "medmodel" frame: what the driving model (and our student) sees
MEDMODEL = CameraModel("medmodel", 512, 256, 910.0, 256.0, 47.6)


def camera_for_size(width: int, height: int) -> CameraModel:
  """The device road camera that records frames of this size; ValueError for unknown sizes."""
  for cam in DEVICE_CAMERAS.values():
    if (cam.width, cam.height) == (width, height):
      return cam
  known = ", ".join(f"{c.name} {c.width}x{c.height}" for c in DEVICE_CAMERAS.values())
  raise ValueError(f"unknown road camera resolution {width}x{height} (known: {known})")


def rot_from_euler(rpy) -> np.ndarray:
  """Rotation matrix Rz(yaw) @ Ry(pitch) @ Rx(roll) for roll, pitch, yaw in radians."""
  r, p, y = (float(a) for a in rpy)
  cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
  rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
  ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
  rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
  return rz @ ry @ rx


def view_from_calib(rpy) -> np.ndarray:
  """Rotation taking calib-frame vectors to the device camera's view frame."""
  return VIEW_FROM_DEVICE @ rot_from_euler(rpy)


def camera_from_model(camera: CameraModel, rpy, model: CameraModel = MEDMODEL) -> np.ndarray:
  """3x3 homography mapping model-frame pixels (u, v, 1) to device camera pixels.

  The model frame is a virtual camera at the device's position looking along the calib frame's
  x axis, so the mapping is a pure rotation between two pinhole cameras (no height needed).
  """
  model_from_calib = model.intrinsics @ VIEW_FROM_DEVICE
  return camera.intrinsics @ view_from_calib(rpy) @ np.linalg.inv(model_from_calib)


def project_calib_points(points: np.ndarray, camera: CameraModel = MEDMODEL, rpy=(0.0, 0.0, 0.0)):
  """Project N×3 points given in the calib frame (camera at the origin) to pixels.

  Returns (uv N×2, depth N) where depth is the distance along the camera's optical axis.
  For the model frame pass rpy=0: the model frame is aligned with the calib frame.
  """
  pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
  view = pts @ view_from_calib(rpy).T
  depth = view[:, 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    uv = (view[:, :2] / depth[:, None]) * camera.focal + np.array([camera.cx, camera.cy])
  return uv, depth

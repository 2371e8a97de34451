"""The scene: everything needed to render a simulated segment, and its JSON file ("scene file").

A scene is fully resolved: road, props, lighting, sensor effects and per-frame poses of the ego
and of every actor. Rendering reads only the scene (plus the procedural texture tile drawn from
`road.texture_seed`), so a scene file reproduces a segment pixel for pixel. Stored values are
rounded when the scene is built (see `_q`), so a scene and its JSON round trip are identical.
Format: docs/scene_format.md.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import DEVICE_CAMERAS, CameraModel, rot_from_euler
from tools.fair.sim.domain import Look
from tools.fair.sim.road import LineSpec, RoadSpec
from tools.fair.sim.scenarios import Knobs

FORMAT, VERSION = "fairpilot-scene", 2
READS = (1, 2)   # version 1: no look, focal or jpeg (their defaults)
CAMERAS = ("tici", "mici")
VEHICLE_KINDS = ("car", "suv", "van", "truck")
ACTOR_KINDS = VEHICLE_KINDS + ("pedestrian",)
PROP_KINDS = ("pole", "lamp", "sign", "tree", "gantry", "building")


# decimals kept per per-frame column (the stored, quantised value is the truth)
EGO_DECIMALS = dict(x=4, y=4, z=4, yaw=6, pitch=6, v=4, a=4, yaw_rate=6, trans=4, rot=6)
ACTOR_DECIMALS = dict(x=3, y=3, yaw=5)


def _q(a, decimals: int) -> np.ndarray:
  """Quantise to `decimals` decimal places exactly as the scene file stores values."""
  return np.rint(np.asarray(a, np.float64) * 10.0 ** decimals) / 10.0 ** decimals + 0.0  # + 0.0: no -0.0


def _pack(a: np.ndarray, decimals: int) -> dict:
  """A per-frame column as second differences of integers: smooth motion gives tiny numbers,
  so 20 Hz poses stay small on disk, and decoding is exact integer arithmetic."""
  ints = np.rint(np.asarray(a, np.float64) * 10.0 ** decimals).astype(np.int64)
  return {"decimals": decimals, "diff2": np.diff(ints, n=2, prepend=[0, 0]).tolist()}


def _unpack(d: dict) -> np.ndarray:
  return np.cumsum(np.cumsum(np.array(d["diff2"], np.int64))) / 10.0 ** d["decimals"] + 0.0


@dataclass(frozen=True)
class Calibration:
  """Device mounting: device_from_calib = rot_from_euler(rpy); camera height above the road (m)."""
  rpy: tuple[float, float, float]
  height: float


@dataclass(frozen=True)
class Prop:
  """A static roadside object standing on the ground at world (x, y, z), rotated by yaw.

  size by kind: pole/lamp (radius, height), sign (radius, height, plate width, plate height),
  tree (trunk radius, trunk height, crown radius), gantry (post radius, height, span, beam depth),
  building (length, width, height).
  """
  kind: str
  x: float
  y: float
  z: float
  yaw: float
  size: tuple[float, ...]
  color: tuple[float, float, float]


@dataclass(frozen=True)
class Lighting:
  """Sun and sky. Sun direction: azimuth from world +x towards +y, elevation above the horizon."""
  kind: str
  sun_azimuth: float
  sun_elevation: float
  sun: tuple[float, float, float]        # direct light colour x intensity
  ambient: tuple[float, float, float]    # sky light colour x intensity
  zenith: tuple[float, float, float]     # sky colour overhead
  horizon: tuple[float, float, float]    # sky colour at the horizon
  fog: float                             # extinction (1/m) towards the horizon colour
  glare: float                           # sun bloom strength
  headlights: bool                       # ego headlights light the scene

  @property
  def sun_dir(self) -> np.ndarray:
    """Unit vector towards the sun in the world frame (z down)."""
    ce = np.cos(self.sun_elevation)
    return np.array([ce * np.cos(self.sun_azimuth), ce * np.sin(self.sun_azimuth), -np.sin(self.sun_elevation)])


@dataclass(frozen=True)
class Sensor:
  """Sensor effects applied to the rgb image (never to ground truth)."""
  noise: float      # read noise std (8-bit units), drawn from rng([seed, frame])
  blur: float       # gaussian blur std in pixels at 1928 px width (scales with the image)
  vignette: float   # relative darkening at the image corners
  exposure: float   # gain
  jpeg: int = 0     # JPEG quality of a compression pass (0: none)


@dataclass(frozen=True, eq=False)
class EgoTrack:
  """Per-frame ego state. (x, y, z) is the road point below the camera (world), yaw and pitch
  the heading of the calib frame (world_from_calib = rot_from_euler((0, pitch, yaw))).
  v, a: speed (m/s) and longitudinal acceleration; yaw_rate (rad/s, positive turning right);
  trans, rot: cameraOdometry-like velocity (m/s) and angular velocity (rad/s) of the device,
  in the device frame, shape (n, 3)."""
  x: np.ndarray
  y: np.ndarray
  z: np.ndarray
  yaw: np.ndarray
  pitch: np.ndarray
  v: np.ndarray
  a: np.ndarray
  yaw_rate: np.ndarray
  trans: np.ndarray
  rot: np.ndarray


@dataclass(frozen=True, eq=False)
class Actor:
  """A vehicle or pedestrian: box size (length, width, height) around its body frame (origin at
  the ground below the box centre, x forward, y right, z down), poses from `first_frame` on:
  world (x, y) and yaw per frame. z and pitch follow the road (pedestrians stay upright)."""
  id: int
  kind: str
  role: str
  size: tuple[float, float, float]
  color: tuple[float, float, float]
  color2: tuple[float, float, float]
  first_frame: int
  x: np.ndarray
  y: np.ndarray
  yaw: np.ndarray

  @property
  def last_frame(self) -> int:
    return self.first_frame + len(self.x) - 1

  def alive(self, frame: int) -> bool:
    return self.first_frame <= frame <= self.last_frame

  @property
  def is_vehicle(self) -> bool:
    return self.kind in VEHICLE_KINDS


@dataclass(frozen=True, eq=False)
class Scene:
  """A resolved simulated segment (see module docstring). Build with world.make_scene."""
  seed: int
  scenario: str
  camera: str
  fps: float
  n_frames: int
  calib: Calibration
  knobs: Knobs
  road: RoadSpec
  props: tuple[Prop, ...]
  lighting: Lighting
  sensor: Sensor
  ego: EgoTrack
  actors: tuple[Actor, ...] = field(default_factory=tuple)
  look: Look = Look()
  focal: float | None = None   # device camera focal length (px); None: the device's own

  @property
  def device_camera(self) -> CameraModel:
    """The camera that records the segment: the device camera, with the scene's focal length when it has one."""
    base = DEVICE_CAMERAS[self.camera]
    return base if self.focal is None else replace(base, focal=self.focal)

  # --- poses ---
  def check_frame(self, frame: int) -> int:
    if not isinstance(frame, (int, np.integer)) or not 0 <= frame < self.n_frames:
      raise IndexError(f"frame {frame!r} out of range: this scene has frames 0..{self.n_frames - 1}")
    return int(frame)

  def ego_pose(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(world_from_calib rotation, world position of the road-frame origin) at `frame`.
    The camera sits at origin + R @ (0, 0, -height)."""
    e = self.ego
    return rot_from_euler((0.0, e.pitch[frame], e.yaw[frame])), np.array([e.x[frame], e.y[frame], e.z[frame]])

  def actor_pose(self, actor: Actor, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(world_from_body rotation, world position of the body origin) of `actor` at `frame`."""
    i = frame - actor.first_frame
    x, y, yaw = actor.x[i], actor.y[i], actor.yaw[i]
    geo = self.road.geometry
    pitch = float(np.arctan(-geo.elevation(x, 1))) if actor.is_vehicle else 0.0
    return rot_from_euler((0.0, pitch, yaw)), np.array([x, y, float(geo.elevation(x))])

  # --- the scene file ---
  def to_dict(self) -> dict:
    r = self.road
    e = self.ego
    return {
      "format": FORMAT, "version": VERSION,
      "seed": self.seed, "scenario": self.scenario, "camera": self.camera, "fps": self.fps, "n_frames": self.n_frames,
      "calibration": {"rpy": list(self.calib.rpy), "height": self.calib.height},
      "knobs": self.knobs.to_dict(),
      "road": {"x0": r.x0, "curv_ds": r.curv_ds, "curvature": r.curvature.tolist(), "grade_ds": r.grade_ds,
               "grade": r.grade.tolist(), "lanes": r.lanes, "lane_width": r.lane_width, "shoulder": r.shoulder,
               "curb": r.curb, "sidewalk": r.sidewalk, "wear": r.wear, "texture_seed": r.texture_seed,
               "lines": [{f.name: getattr(ln, f.name) for f in fields(LineSpec)} for ln in r.lines]},
      "props": [{"kind": p.kind, "x": p.x, "y": p.y, "z": p.z, "yaw": p.yaw, "size": list(p.size),
                 "color": list(p.color)} for p in self.props],
      "lighting": {f.name: list(v) if isinstance(v := getattr(self.lighting, f.name), tuple) else v
                   for f in fields(Lighting)},
      "sensor": {f.name: getattr(self.sensor, f.name) for f in fields(Sensor)},
      "ego": {k: _pack(getattr(e, k), n) if getattr(e, k).ndim == 1 else [_pack(c, n) for c in getattr(e, k).T]
              for k, n in EGO_DECIMALS.items()},
      "actors": [{"id": a.id, "kind": a.kind, "role": a.role, "size": list(a.size), "color": list(a.color),
                  "color2": list(a.color2), "first_frame": a.first_frame,
                  **{k: _pack(getattr(a, k), n) for k, n in ACTOR_DECIMALS.items()}} for a in self.actors],
      "look": self.look.to_dict(), "focal": self.focal,
    }

  def to_json(self) -> str:
    """The scene file text (compact JSON, stable key order)."""
    return json.dumps(self.to_dict(), separators=(",", ":"))

  def save(self, path) -> Path:
    """Write the scene file atomically (temp file + rename): a crash never leaves half a scene."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(self.to_json())
    os.replace(tmp, path)
    return path

  @classmethod
  def from_json(cls, text: str) -> Scene:
    """Parse a scene file; ValueError for another format or an unsupported version."""
    try:
      d = json.loads(text)
    except json.JSONDecodeError as err:
      raise ValueError(f"not a scene file (invalid JSON: {err})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
      raise ValueError(f"not a scene file: expected \"format\": \"{FORMAT}\"")
    if d.get("version") not in READS:
      raise ValueError(f"unsupported scene file version {d.get('version')!r} (this reader supports {', '.join(map(str, READS))})")
    return cls._from_dict(d)

  @classmethod
  def load(cls, path) -> Scene:
    return cls.from_json(Path(path).read_text())

  @classmethod
  def _from_dict(cls, d: dict) -> Scene:
    r = d["road"]
    road = RoadSpec(r["x0"], r["curv_ds"], np.array(r["curvature"], np.float64), r["grade_ds"],
                    np.array(r["grade"], np.float64), r["lanes"], r["lane_width"], r["shoulder"], r["curb"],
                    r["sidewalk"], tuple(LineSpec(**ln) for ln in r["lines"]), r["wear"], r["texture_seed"])
    props = tuple(Prop(p["kind"], p["x"], p["y"], p["z"], p["yaw"], tuple(p["size"]), tuple(p["color"]))
                  for p in d["props"])
    lighting = Lighting(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["lighting"].items()})
    ego = EgoTrack(**{k: _unpack(v) if isinstance(v, dict) else np.stack([_unpack(c) for c in v], axis=1)
                      for k, v in d["ego"].items()})
    actors = tuple(Actor(a["id"], a["kind"], a["role"], tuple(a["size"]), tuple(a["color"]), tuple(a["color2"]),
                         a["first_frame"], _unpack(a["x"]), _unpack(a["y"]), _unpack(a["yaw"])) for a in d["actors"])
    c = d["calibration"]
    return cls(d["seed"], d["scenario"], d["camera"], d["fps"], d["n_frames"], Calibration(tuple(c["rpy"]), c["height"]),
               Knobs.from_dict(d["knobs"]), road, props, lighting, Sensor(**d["sensor"]), ego, actors,
               Look.from_dict(d["look"]) if "look" in d else Look(), d.get("focal"))

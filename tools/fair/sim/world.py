"""Building a scene from a seed: road, props, lighting, sensor and trajectories (make_scene)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, DEVICE_CAMERAS
from tools.fair.sim import domain
from tools.fair.sim.road import LineSpec, RoadSpec
from tools.fair.sim.scenarios import Knobs, scenario_knobs
from tools.fair.sim.scene import (ACTOR_DECIMALS, CAMERAS, EGO_DECIMALS, Actor, Calibration, EgoTrack, Lighting, Prop,
                                  Scene, Sensor, _q)
from tools.fair.sim.trajectories import AHEAD, BEHIND, simulate

CURV_DS, GRADE_DS = 10.0, 50.0
ROAD_BEYOND = 1500.0  # road built this far beyond the ego's last position (the renderer sees <= 1000 m)
MAX_HEADING = 0.3     # rad: keeps the small-angle road parametrisation honest


def make_scene(seed: int, seconds: float, camera: str = "tici", scenario: str | Knobs = "default",
               fps: float = 20, randomise: bool = False) -> Scene:
  """A deterministic simulated segment: the same arguments give the same scene (and pixels).

  camera: "tici" (comma 3/3X, 1928x1208) or "mici" (comma four, 1344x760); scenario: a name from
  scenarios.SCENARIOS or a Knobs instance. randomise (or the knobs' randomise): domain randomisation
  (sim/domain.py) on top of the scenario, with the same road and traffic as without.
  ValueError for unknown names or bad durations.
  """
  if camera not in CAMERAS:
    raise ValueError(f"unknown camera {camera!r} (valid: {', '.join(CAMERAS)})")
  knobs = scenario_knobs(scenario)
  if randomise:
    knobs = replace(knobs, randomise=True)
  name = scenario if isinstance(scenario, str) else "custom"
  if not (seconds > 0 and fps > 0):
    raise ValueError(f"seconds and fps must be positive, got {seconds}, {fps}")
  n_frames = max(int(round(seconds * fps)), 1)
  rng = np.random.default_rng(seed)

  roll, pitch, yaw = np.deg2rad(knobs.calib) * rng.uniform(-1, 1, 3)
  calib = Calibration(tuple(float(a) for a in _q([roll, pitch, yaw], 6)),
                      float(_q(DEFAULT_CAMERA_HEIGHT + rng.uniform(-0.06, 0.06), 3)))
  dr = np.random.default_rng([seed, domain.STREAM]) if knobs.randomise else None
  if dr is not None:
    calib = Calibration(*domain.mounting(dr))
  v_e = float(rng.uniform(*knobs.speed))
  road = _road(rng, knobs, length=v_e * 1.3 * n_frames / fps + ROAD_BEYOND + BEHIND + 100)
  geo = road.geometry
  ego_lane = int(rng.integers(road.lanes))
  tracks = simulate(rng, knobs, geo, n_frames, fps, ego_lane, v_e, calib.rpy, calib.height)
  props = _props(rng, knobs, geo, float(tracks.ego["x"][-1]) + AHEAD + 100)
  ego = EgoTrack(**{k: _q(tracks.ego[k], n) for k, n in EGO_DECIMALS.items()})
  actors = tuple(Actor(a["id"], a["kind"], a["role"], a["size"], a["color"], a["color2"], a["first_frame"],
                       **{k: _q(a[k], n) for k, n in ACTOR_DECIMALS.items()}) for a in tracks.actors)
  lighting = _lighting(rng, knobs)
  sensor = Sensor(knobs.noise, knobs.blur, 0.0 if knobs.noise == 0 else 0.25, 1.0)
  if dr is None:
    return Scene(int(seed), name, camera, float(fps), n_frames, calib, knobs, road, props, lighting, sensor, ego, actors)
  return Scene(int(seed), name, camera, float(fps), n_frames, calib, knobs, road, props, domain.lighting(dr, lighting),
               domain.sensor(dr, sensor), ego, actors, domain.look(dr), domain.focal(dr, DEVICE_CAMERAS[camera].focal))


def _curvature(rng, n: int, kmax: float) -> np.ndarray:
  """Straights, clothoid transitions and arcs at knots CURV_DS apart, heading kept within MAX_HEADING."""
  k = np.zeros(n)
  i, psi = int(rng.integers(5, 20)), 0.0
  while kmax > 0 and i < n:
    amp = rng.uniform(0.3, 1.0) * kmax
    sign = -np.sign(psi) if abs(psi) > 0.1 else float(rng.choice((-1.0, 1.0)))
    nt, na = int(rng.integers(3, 9)), int(rng.integers(3, 25))
    room = MAX_HEADING - sign * psi                       # heading change still allowed this way
    na = int(min(na, room / (amp * CURV_DS) - nt))
    if na < 1:
      amp = room / (CURV_DS * (nt + 1))
      na = 1
    prof = np.concatenate([np.linspace(0, 1, nt, endpoint=False), np.ones(na), np.linspace(1, 0, nt, endpoint=False)])
    seg = slice(i, min(i + len(prof), n))
    k[seg] = sign * amp * prof[:seg.stop - seg.start]
    psi += sign * amp * CURV_DS * (na + nt)
    i = seg.stop + int(rng.integers(2, 30))
  return k


def _road(rng, knobs: Knobs, length: float) -> RoadSpec:
  x0 = -BEHIND - 100.0
  n_c = int(np.ceil(length / CURV_DS)) + 2
  n_g = int(np.ceil(length / GRADE_DS)) + 2
  curv = _q(_curvature(rng, n_c, knobs.curvature), 7)
  g = np.zeros(n_g)
  if knobs.grade > 0:
    for i in range(1, n_g):  # mean-reverting random walk of the grade
      g[i] = np.clip(0.8 * g[i - 1] + rng.normal(0, knobs.grade / 2.5), -knobs.grade, knobs.grade)
  lo = max(knobs.lanes[0], 2 if knobs.event in ("cut_in", "occlusion") else 1)
  lanes = int(rng.integers(lo, max(lo, knobs.lanes[1]) + 1))
  lane_width = float(_q(rng.uniform(*knobs.lane_width), 2))
  faded = knobs.marking_wear > 0
  lines = []
  for j in range(lanes + 1):
    outer = j in (0, lanes)
    kind = "solid" if outer else ("none" if rng.random() < knobs.missing_lines else "dashed")
    color = "yellow" if j == 0 and lanes > 1 and rng.random() < 0.3 else "white"
    lines.append(LineSpec(kind, float(_q(rng.uniform(0.14, 0.16) if outer else rng.uniform(0.12, 0.15), 3)), color,
                          float(_q(rng.uniform(0.35, 0.8) if faded else rng.uniform(0.85, 1.0), 2)),
                          float(_q(rng.uniform(0, 12), 2))))
  city = knobs.sidewalk
  return RoadSpec(x0, CURV_DS, curv, GRADE_DS, _q(g, 5), lanes, lane_width,
                  float(_q(rng.uniform(0.3, 0.6) if city else rng.uniform(0.5, 2.5), 2)),
                  float(_q(rng.uniform(0.2, 0.3), 2)), float(_q(rng.uniform(2.5, 4.0), 2)) if city else 0.0,
                  tuple(lines), float(knobs.marking_wear), int(rng.integers(2 ** 31)))


def _props(rng, knobs: Knobs, geo, x_end: float) -> tuple[Prop, ...]:
  """Poles, lamps, signs, trees, buildings beside the road and gantries over it, up to x_end."""
  out: list[Prop] = []
  spec = geo.spec
  edge = geo.kerb_out + spec.sidewalk

  def put(kind, s, d, yaw, size, color):
    out.append(Prop(kind, float(_q(s, 3)), float(_q(geo.centre(s) + d, 3)), float(_q(geo.elevation(s), 4)),
                    float(_q(np.arctan(geo.centre(s, 1)) + yaw, 5)), tuple(float(_q(v, 3)) for v in size),
                    tuple(float(_q(c, 3)) for c in color)))

  def along(density):
    if density <= 0:
      return np.array([])
    s = np.cumsum(rng.exponential(1000.0 / density, int(density * (x_end - spec.x0) / 1000 * 1.5) + 10))
    return spec.x0 + s[s < x_end - spec.x0]

  for side in (-1.0, 1.0):
    for s in along(knobs.poles):
      lamp = rng.random() < 0.6
      d = side * (geo.kerb_out + (rng.uniform(0.3, 0.8) if spec.sidewalk else rng.uniform(0.8, 2.5)))
      grey = rng.uniform(0.35, 0.6)
      put("lamp" if lamp else "pole", s, d, 0.0 if side < 0 else np.pi, (rng.uniform(0.08, 0.13), rng.uniform(6.5, 9.5)),
          (grey, grey, grey * 1.03))
    for s in along(knobs.signs):
      d = side * (geo.kerb_out + (rng.uniform(0.3, 1.0) if spec.sidewalk else rng.uniform(1.0, 3.0)))
      color = [(0.75, 0.1, 0.1), (0.1, 0.25, 0.65), (0.1, 0.45, 0.2), (0.85, 0.85, 0.85), (0.9, 0.7, 0.1)][rng.integers(5)]
      put("sign", s, d, 0.0, (0.04, rng.uniform(2.0, 2.6), rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.0)), color)
    tree_s = list(along(knobs.trees))
    tree_d = [edge + rng.uniform(2.0, 14.0) for _ in tree_s]
    near = along(knobs.shadows / 2)
    tree_s += list(near)
    tree_d += [geo.kerb_out + rng.uniform(0.8, 2.5) for _ in near]
    for s, d in zip(tree_s, tree_d):
      crown = rng.uniform(1.5, 3.5)
      put("tree", s, side * d, rng.uniform(0, 2 * np.pi), (rng.uniform(0.12, 0.3), rng.uniform(2.0, 4.0), crown),
          (rng.uniform(0.12, 0.25), rng.uniform(0.3, 0.45), rng.uniform(0.08, 0.15)))
    s = spec.x0 + rng.uniform(0, 30) if knobs.buildings > 0 else x_end
    while s < x_end:
      length = rng.uniform(10.0, 30.0)
      width = rng.uniform(8.0, 16.0)
      c = rng.uniform(0.35, 0.75) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 0.95)])
      put("building", s + length / 2, side * (edge + rng.uniform(1.0, 4.0) + width / 2), 0.0,
          (length, width, rng.uniform(6.0, 25.0)), c)
      s += length + rng.exponential(1000.0 / knobs.buildings)
  for s in along(knobs.overhead + knobs.shadows / 4):
    put("gantry", s, 0.0, 0.0, (0.2, rng.uniform(6.0, 7.0), 2 * (geo.kerb_out + 1.0), rng.uniform(0.6, 1.0)),
        (0.1, 0.4, 0.2))
  return tuple(sorted(out, key=lambda p: p.x))


def _lighting(rng, knobs: Knobs) -> Lighting:
  if knobs.lighting == "night":
    return Lighting("night", float(_q(rng.uniform(0, 2 * np.pi), 4)), -0.5, (0.0, 0.0, 0.0), (0.05, 0.055, 0.08),
                    (0.01, 0.012, 0.03), (0.05, 0.05, 0.075), 1 / 400, 0.0, True)
  if knobs.lighting == "dusk":
    az = rng.uniform(-0.15, 0.15) if knobs.sun_ahead else rng.uniform(0, 2 * np.pi)
    el = rng.uniform(0.03, 0.08) if knobs.sun_ahead else rng.uniform(0.03, 0.15)
    return Lighting("dusk", float(_q(az, 4)), float(_q(el, 4)), (1.0, 0.7, 0.45), (0.32, 0.3, 0.36),
                    (0.22, 0.28, 0.5), (0.95, 0.65, 0.45), 1 / 1500, float(knobs.glare), False)
  if knobs.shadows > 0:  # low side light: shadows of roadside objects stretch across the lanes
    az = float(rng.choice((-1.0, 1.0))) * rng.uniform(1.1, 2.0)
    el = rng.uniform(0.35, 0.6)
  else:
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 1.1)
  return Lighting("day", float(_q(az, 4)), float(_q(el, 4)), (0.95, 0.92, 0.85), (0.42, 0.46, 0.55),
                  (0.32, 0.52, 0.85), (0.75, 0.82, 0.92), 1 / 3000, float(knobs.glare), False)

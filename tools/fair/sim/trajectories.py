"""Trajectories: the ego and the traffic around it, simulated in road coordinates (s, d).

Vehicles (the ego included, as index 0) follow the intelligent driver model (IDM) in their lanes,
change lanes with a smooth lateral profile, and stop for pedestrians crossing ahead. Scripted
events (lead brake, cut-in, occlusion) set roles and triggers. Pedestrians walk along sidewalks
or cross the road once the ego is close. Actors appear ~450 m ahead / 100 m behind the ego and
disappear beyond. The simulation runs at `SUB` steps per frame; poses are sampled per frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfdrive.modeld_fair.camera import rot_from_euler
from tools.fair.sim.road import Road
from tools.fair.sim.scenarios import Knobs

SUB = 2                      # simulation steps per frame
AHEAD, BEHIND = 450.0, 100.0  # vehicles live within [s_ego - BEHIND, s_ego + AHEAD]
PED_AHEAD, PED_BEHIND = 200.0, 40.0  # pedestrians (small: not worth the file size further out)
_IDM = dict(T=1.4, s0=2.5, b=2.5)
_SIZES = {"car": ((4.5, 0.3), (1.8, 0.05), (1.45, 0.05)), "suv": ((4.8, 0.2), (1.9, 0.05), (1.75, 0.08)),
          "van": ((5.2, 0.2), (2.0, 0.05), (2.1, 0.1)), "truck": ((10.5, 1.5), (2.5, 0.0), (3.7, 0.2))}
_PAINT = np.array([(0.85, 0.85, 0.85), (0.06, 0.06, 0.07), (0.55, 0.56, 0.58), (0.3, 0.31, 0.33), (0.6, 0.08, 0.07),
                   (0.1, 0.2, 0.5), (0.1, 0.3, 0.15), (0.65, 0.6, 0.48), (0.8, 0.55, 0.1)])
_CLOTHES = np.array([(0.1, 0.1, 0.12), (0.2, 0.25, 0.45), (0.6, 0.1, 0.1), (0.8, 0.8, 0.75), (0.3, 0.45, 0.25),
                     (0.5, 0.4, 0.3), (0.9, 0.6, 0.1)])


@dataclass
class Tracks:
  """Simulation output in road coordinates, per frame."""
  ego: dict[str, np.ndarray]       # x, y, z, yaw, pitch, v, a, yaw_rate, trans, rot (unquantised)
  actors: list[dict]               # id, kind, role, size, color, color2, first_frame, x, y, yaw


def _rgb(c) -> tuple[float, float, float]:
  return tuple(round(float(v), 3) for v in c)


def _smooth(p):
  p = np.clip(p, 0.0, 1.0)
  return p * p * (3 - 2 * p), 6 * p * (1 - p)   # value and derivative of smoothstep


class _Sim:
  """Vehicle state as arrays (index 0 = ego); pedestrians in a second set of arrays."""

  def __init__(self, rng, knobs: Knobs, road: Road, ego_lane: int, v_ego: float, dt: float):
    self.rng, self.knobs, self.road, self.dt = rng, knobs, road, dt
    self.n_lanes = road.spec.lanes
    self.ego_lane = ego_lane
    self.t = 0.0
    self.next_id = 1
    self.v = {k: [] for k in ("id", "s", "v", "a", "v0", "amax", "lf", "lt", "t0", "dur", "len", "role", "brake")}
    self.veh_meta: dict[int, dict] = {}
    self.peds: list[dict] = []
    self._add(0, "ego", 4.6, ego_lane, 0.0, v_ego, v_ego, amax=2.0)
    self.wander = (rng.uniform(0.05, 0.2), rng.uniform(6.0, 12.0), rng.uniform(0, 2 * np.pi))

  # --- vehicles ---
  def _add(self, vid, role, length, lane, s, v, v0, amax=1.5, brake=None):
    for k, val in (("id", vid), ("s", s), ("v", v), ("a", 0.0), ("v0", v0), ("amax", amax), ("lf", lane), ("lt", lane),
                   ("t0", 0.0), ("dur", 1.0), ("len", length), ("role", role), ("brake", brake)):
      self.v[k].append(val)

  def spawn(self, lane: int, s: float, v0: float, role: str = "traffic", kind: str | None = None, brake=None) -> int:
    rng = self.rng
    kind = kind or str(rng.choice(("car", "suv", "van", "truck"), p=(0.55, 0.22, 0.11, 0.12)))
    size = tuple(round(float(rng.normal(m, sd / 2)), 2) for m, sd in _SIZES[kind])
    color = _PAINT[rng.integers(len(_PAINT))] * rng.uniform(0.9, 1.05)
    vid = self.next_id
    self.next_id += 1
    self.veh_meta[vid] = dict(kind=kind, role=role, size=size, color=_rgb(np.clip(color, 0, 1)),
                              color2=_rgb(rng.uniform(0.05, 0.15, 3)))
    self._add(vid, role, size[0], lane, s, v0, v0, amax=rng.uniform(1.0, 2.0), brake=brake)
    return vid

  def remove(self, idx: list[int]):
    gone = set(idx)
    for k in self.v:
      self.v[k] = [x for i, x in enumerate(self.v[k]) if i not in gone]

  def index(self, vid: int) -> int:
    return self.v["id"].index(vid)

  def lateral(self, i: int, t: float | None = None) -> tuple[float, float]:
    """Lateral offset d and its rate for vehicle i at time t (lane change blend, ego wander)."""
    t = self.t if t is None else t
    lf, lt = self.v["lf"][i], self.v["lt"][i]
    p, dp = _smooth((t - self.v["t0"][i]) / self.v["dur"][i])
    if lf == lt:
      p, dp = 0.0, 0.0
    a, b = self.road.lane_centre(lf), self.road.lane_centre(lt)
    d, dd = a + (b - a) * p, (b - a) * dp / self.v["dur"][i]
    if i == 0:
      amp, per, ph = self.wander
      w = 2 * np.pi / per
      d, dd = d + amp * np.sin(w * t + ph), dd + amp * w * np.cos(w * t + ph)
    return float(d), float(dd)

  def change_lane(self, i: int, lane: int, dur: float):
    self.v["lt"][i] = lane
    self.v["t0"][i] = self.t
    self.v["dur"][i] = dur

  def gaps(self):
    """Leader gap and speed for every vehicle (inf when none), with crossing pedestrians as
    standing obstacles in the lanes they still have to cross."""
    s = np.array(self.v["s"])
    ln = np.array(self.v["len"])
    occ = np.zeros((len(s), self.n_lanes), bool)
    occ[np.arange(len(s)), self.v["lf"]] = True
    occ[np.arange(len(s)), self.v["lt"]] = True
    obs_s, obs_len, obs_v, obs_occ = [s], [ln], [np.array(self.v["v"])], [occ]
    for p in self.peds:
      if p["state"] == "crossing":
        o = np.zeros((1, self.n_lanes), bool)
        lo, hi = sorted((p["d"], p["d_end"]))
        for k in range(self.n_lanes):
          c = self.road.lane_centre(k)
          o[0, k] = lo - 2.5 < c < hi + 2.5
        obs_s.append([p["s"]]), obs_len.append([0.6]), obs_v.append([0.0]), obs_occ.append(o)
    os_, ol, ov, oo = (np.concatenate(x) for x in (obs_s, obs_len, obs_v, obs_occ))
    g = os_[None, :] - s[:, None] - (ol[None, :] + ln[:, None]) / 2
    ok = (occ.astype(np.int32) @ oo.T.astype(np.int32) > 0) & (os_[None, :] > s[:, None])
    ok[np.arange(len(s)), np.arange(len(s))] = False
    g = np.where(ok, g, np.inf)
    j = np.argmin(g, axis=1)
    gap = g[np.arange(len(s)), j]
    return gap, np.where(np.isfinite(gap), ov[j], 0.0)

  def step(self):
    dt = self.dt
    gap, vl = self.gaps()
    v = np.array(self.v["v"])
    v0 = np.maximum(np.array(self.v["v0"]), 0.1)
    amax = np.array(self.v["amax"])
    s_star = _IDM["s0"] + np.maximum(0.0, v * _IDM["T"] + v * (v - vl) / (2 * np.sqrt(amax * _IDM["b"])))
    a = amax * (1 - (v / v0) ** 4 - (s_star / np.maximum(gap, 0.1)) ** 2)
    # IDM overreacts to a sudden short gap (a cut-in at the same speed): brake no harder than
    # the kinematics need (with margin), at least comfortably
    dv = np.maximum(v - vl, 0.0)
    need = 1.5 * dv ** 2 / (2 * np.maximum(gap - _IDM["s0"], 0.5))
    a = np.clip(np.maximum(a, -np.maximum(need, _IDM["b"])), -8.0, amax)
    for i, br in enumerate(self.v["brake"]):  # scripted braking: decelerate to a stop, hold, resume
      if br is not None and br[0] <= self.t < br[2]:
        a[i] = min(a[i], -br[1] if v[i] > 0 else 0.0)
    v_new = np.maximum(v + a * dt, 0.0)
    self.v["a"] = list((v_new - v) / dt)
    self.v["v"] = list(v_new)
    self.v["s"] = list(np.array(self.v["s"]) + v_new * dt)
    for i in range(len(v)):
      if self.v["lf"][i] != self.v["lt"][i] and self.t >= self.v["t0"][i] + self.v["dur"][i]:
        self.v["lf"][i] = self.v["lt"][i]
    for p in self.peds:
      self._step_ped(p, dt)
    self.t += dt

  # --- pedestrians ---
  def _step_ped(self, p, dt):
    if p["state"] == "waiting":
      ego_s, ego_v = self.v["s"][0], self.v["v"][0]
      if p["s"] - ego_s < ego_v ** 2 / (2 * 2.0) + p["trigger"]:
        p["state"] = "crossing"
    elif p["state"] == "crossing":
      step = np.sign(p["d_end"] - p["d"]) * p["speed"] * dt
      if abs(p["d_end"] - p["d"]) <= abs(step):
        p["d"], p["state"], p["dir"] = p["d_end"], "walking", float(self.rng.choice((-1.0, 1.0)))
      else:
        p["d"] += step
    else:
      p["s"] += p["dir"] * p["speed"] * dt

  def add_ped(self, role: str, s: float, d: float, state: str, d_end: float = 0.0, direction: float = 1.0):
    rng = self.rng
    vid = self.next_id
    self.next_id += 1
    self.veh_meta[vid] = dict(kind="pedestrian", role=role,
                              size=(0.5, 0.5, round(float(rng.uniform(1.55, 1.9)), 2)),
                              color=_rgb(_CLOTHES[rng.integers(len(_CLOTHES))]),
                              color2=_rgb(_CLOTHES[rng.integers(len(_CLOTHES))] * 0.7))
    self.peds.append(dict(id=vid, s=s, d=d, d_end=d_end, state=state, dir=direction, speed=rng.uniform(1.1, 1.6),
                          trigger=rng.uniform(15.0, 35.0), yaw=0.0))

  def ped_lateral(self, p) -> tuple[float, float]:
    """(d, dd/dt, ds/dt) of a pedestrian now."""
    if p["state"] == "crossing":
      return p["d"], float(np.sign(p["d_end"] - p["d"]) * p["speed"]), 0.0
    if p["state"] == "walking":
      return p["d"], 0.0, p["dir"] * p["speed"]
    return p["d"], 0.0, 0.0


def _sidewalk_d(road: Road, side: float, rng) -> float:
  spec = road.spec
  if spec.sidewalk > 0:
    return side * (road.kerb_out + rng.uniform(0.5, max(spec.sidewalk - 0.5, 0.6)))
  return side * (road.kerb_out + rng.uniform(1.0, 2.5))


def _populate(sim: _Sim, knobs: Knobs, v_road: float, s_lo: float, s_hi: float, ego_s: float):
  """Traffic in every lane between s_lo and s_hi, keeping clear of the ego."""
  rng, road = sim.rng, sim.road
  if knobs.traffic <= 0:
    return
  mean_gap = 1000.0 / knobs.traffic
  for lane in range(road.spec.lanes):
    s = s_lo + rng.exponential(mean_gap)
    while s < s_hi:
      v0 = v_road * rng.uniform(0.85, 1.1) + 0.8 * (road.spec.lanes - 1 - lane)
      clear = max(30.0, 2.0 * v_road) if lane == sim.ego_lane else 8.0
      if abs(s - ego_s) > clear and all(abs(s - x) > 15 for x, lf in zip(sim.v["s"], sim.v["lf"]) if lf == lane):
        sim.spawn(lane, s, v0)
      s += max(18.0 + 0.8 * v0, rng.exponential(mean_gap))


def _setup_event(sim: _Sim, knobs: Knobs, duration: float, v_e: float):
  """Scripted actors of the scenario's event; returns a per-second trigger function or None."""
  rng, road = sim.rng, sim.road
  e = sim.ego_lane
  adj = e - 1 if e > 0 else e + 1
  if knobs.event == "lead_brake":
    t_b = duration * rng.uniform(0.2, 0.4)
    sim.spawn(e, rng.uniform(25.0, 40.0), v_e, role="lead", kind="car",
              brake=(t_b, rng.uniform(3.5, 6.0), t_b + rng.uniform(5.0, 9.0)))
  elif knobs.event == "cut_in":
    vid = sim.spawn(adj, rng.uniform(12.0, 22.0), v_e * rng.uniform(1.0, 1.06), role="cut_in", kind="car")
    t_c = duration * rng.uniform(0.15, 0.35)
    dur = rng.uniform(2.0, 3.0)

    def trigger():
      i = sim.index(vid)
      if sim.t >= t_c and sim.v["lf"][i] == sim.v["lt"][i] == adj and sim.v["s"][i] - sim.v["s"][0] > 12.0:
        sim.change_lane(i, e, dur)
    return trigger
  elif knobs.event == "occlusion":
    sim.spawn(e, rng.uniform(40.0, 55.0), v_e, role="lead", kind="car")
    vid = sim.spawn(adj, -rng.uniform(5.0, 15.0), v_e + rng.uniform(4.0, 6.0), role="occluder",
                    kind=str(rng.choice(("suv", "van"))))
    sim.v["v"][sim.index(vid)] = v_e + 4.0
    other = e + 1 if adj == e - 1 and e + 1 < road.spec.lanes else adj
    state = {"phase": 0}

    def trigger():
      i = sim.index(vid)
      rel = sim.v["s"][i] - sim.v["s"][0]
      if state["phase"] == 0 and rel > 10.0:
        sim.change_lane(i, e, 2.5)
        state["phase"] = 1
      elif state["phase"] == 1 and sim.v["lf"][i] == e:
        sim.change_lane(i, other, 2.5)
        state["phase"] = 2
    return trigger
  return None


def simulate(rng, knobs: Knobs, road: Road, n_frames: int, fps: float, ego_lane: int, v_e: float,
             rpy, height: float) -> Tracks:
  """Run the traffic simulation and return per-frame poses (see module docstring)."""
  dt = 1.0 / (fps * SUB)
  duration = n_frames / fps
  sim = _Sim(rng, knobs, road, ego_lane, v_e, dt)
  trigger = _setup_event(sim, knobs, duration, v_e)
  # keep scripted actors' lanes clear of random traffic near them
  scripted = [(s, lf) for s, lf, r in zip(sim.v["s"], sim.v["lf"], sim.v["role"]) if r not in ("ego",)]
  _populate(sim, knobs, v_e, -BEHIND, AHEAD, 0.0)
  drop = [i for i, (s, lf, r) in enumerate(zip(sim.v["s"], sim.v["lf"], sim.v["role"]))
          if r == "traffic" and any(abs(s - s2) < 40 and lf in (lf2, ego_lane) for s2, lf2 in scripted)]
  sim.remove(drop)
  for side in (-1.0, 1.0):
    if knobs.pedestrians > 0:
      s = -PED_BEHIND + rng.exponential(1000.0 / knobs.pedestrians)
      while s < PED_AHEAD:
        sim.add_ped("walker", s, _sidewalk_d(road, side, rng), "walking", direction=float(rng.choice((-1.0, 1.0))))
        s += rng.exponential(1000.0 / knobs.pedestrians)
  t_cross = rng.exponential(60.0 / knobs.crossings) * 0.5 if knobs.crossings > 0 else np.inf

  n_steps = n_frames * SUB
  ego_log = np.zeros((n_steps + 1, 5))  # s, d, dd, v, a at every step
  frames: dict[int, list] = {}
  for k in range(n_steps + 1):
    if k % SUB == 0:
      f = k // SUB
      if f < n_frames:
        for i, vid in enumerate(sim.v["id"][1:], start=1):
          d, dd = sim.lateral(i)
          frames.setdefault(vid, []).append((f, sim.v["s"][i], d, dd, sim.v["v"][i]))
        for p in sim.peds:
          d, dd, ds = sim.ped_lateral(p)
          frames.setdefault(p["id"], []).append((f, p["s"], d, dd, ds))
    d, dd = sim.lateral(0)
    ego_log[k] = (sim.v["s"][0], d, dd, sim.v["v"][0], sim.v["a"][0])
    if k == n_steps:
      break
    if k % int(round(1.0 / dt)) == 0:  # once a second: events, lane changes, spawning
      if trigger:
        trigger()
      _lane_changes(sim)
      _respawn(sim, knobs, v_e)
      if sim.t >= t_cross:
        _crossing(sim, road)
        t_cross = sim.t + rng.exponential(60.0 / knobs.crossings)
    sim.step()
  ego = _ego_state(road, ego_log, dt, rpy, height)
  actors = [_actor_track(road, vid, sim.veh_meta[vid], rows) for vid, rows in frames.items()]
  return Tracks(ego, [a for a in actors if a is not None])


def _lane_changes(sim: _Sim):
  """Occasional discretionary lane changes of traffic into safe gaps (never right in front of the ego)."""
  rng = sim.rng
  gap, _ = sim.gaps()
  for i in range(1, len(sim.v["id"])):
    if sim.v["role"][i] != "traffic" or sim.v["lf"][i] != sim.v["lt"][i] or rng.random() > 0.03 + 0.1 * (gap[i] < 40):
      continue
    lane = sim.v["lf"][i] + int(rng.choice((-1, 1)))
    if not 0 <= lane < sim.n_lanes:
      continue
    s, v = sim.v["s"][i], sim.v["v"][i]
    near = [(j, sim.v["s"][j] - s) for j in range(len(sim.v["id"]))
            if j != i and lane in (sim.v["lf"][j], sim.v["lt"][j])]
    # ahead of a vehicle in the target lane: room for its time gap; behind it: room for ours
    if all(x < -max(20.0, 2.0 * sim.v["v"][j]) - (20.0 if j == 0 else 0.0) or x > max(20.0, 1.5 * v)
           for j, x in near):
      sim.change_lane(i, lane, rng.uniform(4.0, 6.0))


def _respawn(sim: _Sim, knobs: Knobs, v_road: float):
  """Drop actors that fell out of the window around the ego; refill it at its far ends."""
  rng, ego_s = sim.rng, sim.v["s"][0]
  out = [i for i in range(1, len(sim.v["id"])) if not -BEHIND - 20 < sim.v["s"][i] - ego_s < AHEAD + 20]
  sim.remove(out)
  sim.peds = [p for p in sim.peds if -PED_BEHIND - 10 < p["s"] - ego_s < PED_AHEAD + 10]
  if knobs.traffic > 0:
    for lane in range(sim.n_lanes):
      ahead = [s - ego_s for s, lf in zip(sim.v["s"], sim.v["lf"]) if lf == lane]
      far = max(ahead, default=-np.inf)
      if far < AHEAD - 1000.0 / knobs.traffic and rng.random() < 0.5:
        sim.spawn(lane, ego_s + AHEAD, v_road * rng.uniform(0.8, 0.95))
      near = min(ahead, default=np.inf)
      if lane != sim.ego_lane and near > -BEHIND + 1000.0 / knobs.traffic and rng.random() < 0.3:
        sim.spawn(lane, ego_s - BEHIND, sim.v["v"][0] * rng.uniform(1.1, 1.25) + 1.0)
  if knobs.pedestrians > 0 and rng.random() < knobs.pedestrians * sim.v["v"][0] / 1000.0 * 2:
    side = float(rng.choice((-1.0, 1.0)))
    sim.add_ped("walker", ego_s + PED_AHEAD, _sidewalk_d(sim.road, side, rng), "walking",
                direction=float(rng.choice((-1.0, 1.0))))


def _crossing(sim: _Sim, road: Road):
  """A pedestrian waiting at the kerb ahead of the ego who crosses once the ego comes close."""
  rng = sim.rng
  ego_s, v = sim.v["s"][0], sim.v["v"][0]
  side = float(rng.choice((-1.0, 1.0)))
  s = ego_s + v ** 2 / 4.0 + rng.uniform(60.0, 120.0)
  sim.add_ped("crossing", s, side * (road.half_width + road.spec.curb + 0.4), "waiting",
              d_end=-side * (road.half_width + road.spec.curb + rng.uniform(0.5, 1.5)))


def _actor_track(road: Road, vid: int, meta: dict, rows) -> dict | None:
  f, s, d, dd, v = (np.array(c) for c in zip(*rows))
  if len(f) < 1:
    return None
  y = road.centre(s) + d
  slope = road.centre(s, 1)
  if meta["kind"] == "pedestrian":
    # facing the walking direction (keep the last heading while standing)
    heading = np.arctan2(dd, v)
    moving = (np.abs(dd) + np.abs(v)) > 1e-6
    idx = np.maximum.accumulate(np.where(moving, np.arange(len(f)), 0))
    yaw = np.where(moving[idx], heading[idx], 0.0) + np.arctan(slope)
  else:
    yaw = np.arctan(slope + np.clip(dd / np.maximum(v, 1.0), -0.3, 0.3))
  return dict(id=vid, **meta, first_frame=int(f[0]), x=s, y=y, yaw=yaw)


def _ego_state(road: Road, log: np.ndarray, dt: float, rpy, height: float) -> dict:
  """Ego pose and motion at every frame from the per-step log (rates by central differences)."""
  s, d, dd, v, a = log.T
  slope, zslope = road.centre(s, 1), road.elevation(s, 1)
  yaw = np.arctan(slope + np.clip(dd / np.maximum(v, 1.0), -0.3, 0.3))
  pitch = np.arctan(-zslope)
  yaw_rate, pitch_rate = np.gradient(yaw, dt), np.gradient(pitch, dt)
  # velocity of the road point and of the camera (lever arm of the height above it)
  vel = np.stack([v, v * slope + dd, v * zslope], axis=1)
  rot_w = np.stack([-np.sin(yaw) * pitch_rate, np.cos(yaw) * pitch_rate, yaw_rate], axis=1)
  trans, rot = [], []
  dev_from_calib = rot_from_euler(rpy)
  for k in range(0, len(s) - 1, SUB):
    r = rot_from_euler((0.0, pitch[k], yaw[k]))
    lever = r @ np.array([0.0, 0.0, -height])
    cam_vel = vel[k] + np.cross(rot_w[k], lever)
    trans.append(dev_from_calib @ r.T @ cam_vel)
    rot.append(dev_from_calib @ r.T @ rot_w[k])
  sel = slice(0, len(s) - 1, SUB)
  return dict(x=s[sel], y=road.centre(s[sel]) + d[sel], z=road.elevation(s[sel]), yaw=yaw[sel], pitch=pitch[sel],
              v=np.linalg.norm(vel[sel], axis=1), a=a[sel], yaw_rate=yaw_rate[sel], trans=np.array(trans),
              rot=np.array(rot))

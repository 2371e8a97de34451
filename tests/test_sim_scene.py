"""Scene generation, the scene file and trajectories of the procedural simulator."""
import dataclasses
import json

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL, rot_from_euler
from tools.fair.sim import SCENARIOS, Knobs, Scene, make_scene, render_frame
from tools.fair.sim.scene import FORMAT, VERSION


@pytest.fixture(scope="module")
def scene():
  return make_scene(7, 3.0, scenario="default")


def test_scene_fields(scene):
  assert (scene.camera, scene.fps, scene.n_frames, scene.scenario) == ("tici", 20.0, 60, "default")
  roll, pitch, yaw = scene.calib.rpy
  assert abs(roll) <= np.deg2rad(1.5) and abs(pitch) <= np.deg2rad(3) and abs(yaw) <= np.deg2rad(3)
  assert 1.1 < scene.calib.height < 1.35
  e = scene.ego
  for k in ("x", "y", "z", "yaw", "pitch", "v", "a", "yaw_rate"):
    assert getattr(e, k).shape == (60,)
  assert e.trans.shape == e.rot.shape == (60, 3)
  assert np.all((e.v > 5) & (e.v < 36))
  assert 1 <= scene.road.lanes <= 4 and 3.0 <= scene.road.lane_width <= 3.8
  assert len(scene.road.lines) == scene.road.lanes + 1


def test_json_round_trip_is_exact(scene):
  text = scene.to_json()
  d = json.loads(text)
  assert (d["format"], d["version"]) == (FORMAT, VERSION)
  loaded = Scene.from_json(text)
  assert loaded.to_json() == text
  for k in ("x", "y", "yaw", "trans"):
    np.testing.assert_array_equal(getattr(loaded.ego, k), getattr(scene.ego, k))
  a, b = render_frame(scene, 5, MEDMODEL), render_frame(loaded, 5, MEDMODEL)
  np.testing.assert_array_equal(a.rgb, b.rgb)
  np.testing.assert_array_equal(a.depth, b.depth)


def test_save_load(scene, tmp_path):
  path = scene.save(tmp_path / "scene.json")
  assert Scene.load(path).to_json() == scene.to_json()


def test_determinism():
  a, b = make_scene(11, 1.0), make_scene(11, 1.0)
  assert a.to_json() == b.to_json()
  ra, rb = render_frame(a, 3, MEDMODEL), render_frame(b, 3, MEDMODEL)
  np.testing.assert_array_equal(ra.rgb, rb.rgb)    # sensor noise included: rng seeded by (seed, frame)
  assert make_scene(12, 1.0).to_json() != a.to_json()
  assert not np.array_equal(render_frame(a, 4, MEDMODEL).rgb, ra.rgb)


def test_scene_file_is_small():
  text = make_scene(3, 60.0, scenario="highway").to_json()
  assert len(text) < 400_000


def test_ego_motion_consistent_with_poses():
  s = make_scene(4, 3.0, scenario="curvy")
  e, dt = s.ego, 1 / s.fps
  # yaw rate integrates to the yaw change; speed matches the distance travelled
  np.testing.assert_allclose(np.diff(e.yaw), (e.yaw_rate[1:] + e.yaw_rate[:-1]) / 2 * dt, atol=2e-4)
  step = np.linalg.norm(np.diff(np.stack([e.x, e.y, e.z]), axis=1), axis=0)
  np.testing.assert_allclose(step, (e.v[1:] + e.v[:-1]) / 2 * dt, rtol=2e-3)
  # cameraOdometry trans: the device velocity, i.e. the speed rotated into the device frame
  for f in (0, 30, 59):
    dev_from_calib = rot_from_euler(s.calib.rpy)
    np.testing.assert_allclose(dev_from_calib.T @ e.trans[f], [e.v[f], 0, 0], atol=0.05 * e.v[f] + 0.05)
    np.testing.assert_allclose((dev_from_calib.T @ e.rot[f])[2], e.yaw_rate[f], atol=1e-5)


def _lane_of(scene, actor, i):
  geo = scene.road.geometry
  d = actor.y[i] - geo.centre(actor.x[i])
  return (d - geo.offsets[0]) / scene.road.lane_width - 0.5


def _ego_lane(scene, f):
  geo = scene.road.geometry
  return (scene.ego.y[f] - geo.centre(scene.ego.x[f]) - geo.offsets[0]) / scene.road.lane_width - 0.5


def test_lead_brake_makes_ego_brake():
  s = make_scene(2, 12.0, scenario="lead_brake")
  lead = next(a for a in s.actors if a.role == "lead")
  v = np.diff(lead.x) * s.fps
  assert v.min() < 1.0 < v.max()                  # the lead stops
  assert s.ego.v.min() < s.ego.v[0] - 5           # and the ego slows down behind it
  gap = lead.x - s.ego.x[lead.first_frame:lead.last_frame + 1]
  assert gap.min() > lead.size[0] / 2 + 2          # without hitting it


def test_cut_in_enters_ego_lane():
  s = make_scene(2, 10.0, scenario="cut_in")
  c = next(a for a in s.actors if a.role == "cut_in")
  lanes = np.array([_lane_of(s, c, i) for i in range(len(c.x))])
  ego_lane = round(_ego_lane(s, 0))
  assert abs(lanes[0] - ego_lane) > 0.8 and abs(lanes[-1] - ego_lane) < 0.3
  ahead = c.x - s.ego.x[c.first_frame:c.last_frame + 1]
  assert ahead[np.argmin(np.abs(lanes - ego_lane) > 0.5)] > 5


def test_occluder_passes_between_ego_and_lead():
  s = make_scene(2, 15.0, scenario="occlusion")
  lead = next(a for a in s.actors if a.role == "lead")
  occ = next(a for a in s.actors if a.role == "occluder")
  ego_lane = round(_ego_lane(s, 0))
  between = [f for f in range(s.n_frames) if lead.alive(f) and occ.alive(f)
             and abs(_lane_of(s, occ, f - occ.first_frame) - ego_lane) < 0.5
             and s.ego.x[f] < occ.x[f - occ.first_frame] < lead.x[f - lead.first_frame]]
  assert len(between) > 10


def test_vehicles_never_overlap():
  s = make_scene(5, 20.0, scenario="highway")
  for f in range(0, s.n_frames, 10):
    cars = [(a.x[f - a.first_frame], _lane_of(s, a, f - a.first_frame), a.size[0]) for a in s.actors
            if a.alive(f) and a.is_vehicle]
    cars.append((s.ego.x[f], _ego_lane(s, f), 4.6))
    for i, (x1, l1, n1) in enumerate(cars):
      for x2, l2, n2 in cars[i + 1:]:
        assert abs(l1 - l2) > 0.6 or abs(x1 - x2) > (n1 + n2) / 2


def test_city_has_crossing_pedestrians():
  s = make_scene(1, 30.0, scenario="city")
  peds = [a for a in s.actors if a.kind == "pedestrian"]
  assert any(a.role == "crossing" for a in peds) and any(a.role == "walker" for a in peds)
  cross = next(a for a in peds if a.role == "crossing")
  d = cross.y - s.road.geometry.centre(cross.x)
  assert d.min() < 0 < d.max()                     # it crossed


@pytest.mark.parametrize("bad", [dict(scenario="nope"), dict(camera="wide")])
def test_unknown_names_list_the_valid_ones(bad):
  with pytest.raises(ValueError) as err:
    make_scene(0, 1.0, **bad)
  assert ("default" in str(err.value) and "city" in str(err.value)) or "tici" in str(err.value)


def test_bad_scene_files():
  text = make_scene(0, 0.5).to_json()
  d = json.loads(text)
  d["version"] = 99
  with pytest.raises(ValueError, match="version"):
    Scene.from_json(json.dumps(d))
  with pytest.raises(ValueError, match="not a scene file"):
    Scene.from_json('{"format": "other"}')
  with pytest.raises(ValueError, match="not a scene file"):
    Scene.from_json("{oops")


def test_frame_out_of_range():
  s = make_scene(0, 0.5)
  with pytest.raises(IndexError, match="0..9"):
    render_frame(s, 10, MEDMODEL)
  with pytest.raises(IndexError):
    render_frame(s, -1, MEDMODEL)


def test_custom_knobs_and_knob_round_trip():
  k = dataclasses.replace(SCENARIOS["default"], lanes=(3, 3), traffic=0.0)
  s = make_scene(0, 0.5, scenario=k)
  assert s.road.lanes == 3 and not any(a.is_vehicle for a in s.actors) and s.scenario == "custom"
  assert Knobs.from_dict(json.loads(json.dumps(k.to_dict()))) == k
  with pytest.raises(ValueError, match="lighting"):
    Knobs(lighting="noon")

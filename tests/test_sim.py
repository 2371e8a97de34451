"""Ground truth of the procedural simulator: geometry, lanes, boxes, flow, scenarios, errors."""
import dataclasses

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL, TICI_ROAD, project_calib_points, rot_from_euler
from selfdrive.modeld_fair.classes import CLASS_ID, IGNORE_ID
from selfdrive.modeld_fair.model_io import LANE_X
from tools.fair.sim import SCENARIOS, make_scene, render_frame, render_gt, scene_gt
from tools.fair.sim.scene import Calibration, Sensor

GROUND = [CLASS_ID[c] for c in ("road", "lane_marking", "road_edge", "terrain")]
SMALL_TICI = TICI_ROAD.scaled(0.25)
FLAT = dataclasses.replace(SCENARIOS["lead_brake"], curvature=0.0, grade=0.0, noise=0.0, calib=(0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def flat():
  """Straight flat road, zero mounting angles, a lead car ahead, no sensor noise."""
  return make_scene(3, 2.0, scenario=FLAT)


def _ground(r, camera, margin=2.0):
  v = np.arange(camera.height)[:, None] * np.ones((1, camera.width))
  return np.isin(r.semantic, GROUND) & (r.instance == 0) & (v > camera.cy + margin), v


@pytest.mark.parametrize("camera,rpy", [(MEDMODEL, (0, 0, 0)), (SMALL_TICI, (0, 0, 0)), (MEDMODEL.scaled(0.5), (0, 0, 0))])
def test_flat_road_depth_is_pinhole(flat, camera, rpy):
  r = render_frame(flat, 10, camera, rpy)
  ground, v = _ground(r, camera)
  assert ground.sum() > 0.3 * camera.width * (camera.height - camera.cy)
  expected = flat.calib.height * camera.focal / (v - camera.cy)
  np.testing.assert_allclose(r.depth[ground], expected[ground], rtol=0.01)
  assert np.abs(r.depth[ground] / expected[ground] - 1).max() < 1e-4   # in fact exact to float32


@pytest.mark.parametrize("pitch", [-0.04, 0.03])
def test_pitch_moves_camera_horizon_by_f_tan_pitch(flat, pitch):
  cam = SMALL_TICI
  s = dataclasses.replace(flat, calib=Calibration((0.0, pitch, 0.0), flat.calib.height))
  r = render_frame(s, 10, cam)
  ground, v = _ground(r, cam, margin=-cam.cy)
  ground &= np.abs(np.arange(cam.width) - cam.cx)[None, :] < 0.2 * cam.width
  # on the ground 1/depth = (sin p + cos p (v - cy) / f) / h: linear in v, zero at the horizon
  inv = 1 / r.depth[ground]
  slope, icpt = np.polyfit(v[ground], inv, 1)
  assert -icpt / slope == pytest.approx(cam.cy - cam.focal * np.tan(pitch), abs=0.05)
  # and the sky/ground boundary moved by f tan(pitch) relative to the level camera
  level = render_frame(flat, 10, cam)
  col = int(cam.cx)
  top = lambda rr: np.flatnonzero(np.isin(rr.semantic[:, col], GROUND))[0]
  assert top(level) - top(r) == pytest.approx(cam.focal * np.tan(pitch), abs=1.5)


@pytest.mark.parametrize("scenario", ["straight_flat", "curvy", "default"])
def test_lane_lines_land_on_painted_pixels(scenario):
  s = make_scene(8, 1.0, scenario=scenario)
  g = scene_gt(s, 5, MEDMODEL, (0, 0, 0), frame="model")
  hits = total = 0
  for line in g.lanes:
    x = line.points[:, 0]
    use = line.visible & line.painted & (x > 6) & (x < 40)
    if line.kind != "solid" or not use.any():
      continue
    uv, _ = project_calib_points(line.points[use] + [0, 0, s.calib.height], MEDMODEL)
    sem = g.semantic[np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)]
    hits += int((sem == CLASS_ID["lane_marking"]).sum())
    total += len(sem)
  assert total >= 8 and hits == total


def test_lane_geometry_matches_road_frame(flat):
  g = scene_gt(flat, 0, MEDMODEL, (0, 0, 0))
  geo = flat.road.geometry
  ego_d = flat.ego.y[0] - geo.centre(flat.ego.x[0])
  for line in g.lanes:
    np.testing.assert_allclose(line.points[:, 0], LANE_X, atol=1e-5)
    np.testing.assert_allclose(line.points[:, 1], line.offset - ego_d, atol=0.02 * LANE_X.max() + 0.01)  # small ego yaw
    np.testing.assert_allclose(line.points[:, 2], 0, atol=1e-9)


def test_box3d_projects_onto_instance_box(flat):
  checked = 0
  for f in (0, 10, 20):
    for camera in (MEDMODEL, SMALL_TICI):
      g = scene_gt(flat, f, camera, (0, 0, 0))
      b3 = {b.id: b for b in g.boxes3d}
      for b in g.boxes2d:
        box = b3[b.id]
        if b.cls != "vehicle" or b.visible_fraction < 0.999 or not 10 < box.centre[0] < 80:
          continue
        l, w, h = box.size
        corners = np.array([[i * l / 2, j * w / 2, k * h / 2] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
        pts = corners @ rot_from_euler((0, 0, box.yaw)).T + box.centre + [0, 0, flat.calib.height]
        uv, _ = project_calib_points(pts, camera)
        proj = (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
        np.testing.assert_allclose(b.xyxy, proj, atol=1.5)
        checked += 1
  assert checked >= 3


def _warp(img, flow):
  """Sample img (H, W, C) at pixel + flow, bilinearly."""
  h, w = flow.shape[:2]
  vv, uu = np.mgrid[0:h, 0:w]
  x, y = np.clip(uu + flow[..., 0], 0, w - 1.001), np.clip(vv + flow[..., 1], 0, h - 1.001)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  img = img.astype(np.float64)
  return (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy) +
          img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)


@pytest.mark.parametrize("scenario", ["cut_in", "curvy", "city"])
def test_flow_warps_next_frame_onto_this_one(scenario):
  s = make_scene(5, 2.0, scenario=scenario)
  s = dataclasses.replace(s, sensor=Sensor(0.0, 0.0, 0.0, 1.0))
  cam, rpy = SMALL_TICI, s.calib.rpy
  g0, g1 = scene_gt(s, 20, cam, rpy), scene_gt(s, 21, cam, rpy)
  valid = g0.flow_valid
  assert 0.6 < valid.mean() < 1.0 and np.abs(g0.flow[valid]).max() > 1.0
  err = np.abs(_warp(g1.rgb, g0.flow) - g0.rgb).mean(axis=-1)
  # away from edges (aliased silhouettes and paint borders) the images agree closely
  sem = g0.semantic
  interior = valid.copy()
  interior[1:-1, 1:-1] &= (sem[1:-1, 1:-1] == sem[:-2, 1:-1]) & (sem[1:-1, 1:-1] == sem[2:, 1:-1]) & \
                          (sem[1:-1, 1:-1] == sem[1:-1, :-2]) & (sem[1:-1, 1:-1] == sem[1:-1, 2:])
  assert err[valid].mean() < 4.0
  assert err[interior].mean() < 2.5
  # the next frame's depth where the flow lands is the depth the moved point has there
  d1 = _warp(np.minimum(g1.depth, 1e6)[..., None], g0.flow)[..., 0]
  deep = interior & np.isfinite(g0.depth) & (g0.depth < 200)
  assert np.median(np.abs(d1[deep] / g0.depth_next[deep] - 1)) < 1e-3
  assert (np.abs(d1[deep] / g0.depth_next[deep] - 1) < 0.01).mean() > 0.97
  # the pixel each flow vector lands on shows the same class
  vv, uu = np.mgrid[0:cam.height, 0:cam.width]
  tv = np.rint(vv + g0.flow[..., 1]).astype(int).clip(0, cam.height - 1)
  tu = np.rint(uu + g0.flow[..., 0]).astype(int).clip(0, cam.width - 1)
  assert (g1.semantic[tv, tu] == sem)[valid].mean() > 0.98
  # and moving actors carry their instance along
  moving = valid & (g0.instance > 0)
  if moving.any():
    assert (g1.instance[tv, tu] == g0.instance)[moving].mean() > 0.95


def test_static_road_flow_matches_ego_motion(flat):
  cam, f = MEDMODEL, 12
  g = scene_gt(flat, f, cam, (0, 0, 0))
  ground, v = _ground(render_frame(flat, f, cam, (0, 0, 0)), cam, margin=5)
  ground &= g.flow_valid
  u = np.arange(cam.width)[None, :] * np.ones((cam.height, 1))
  # analytic: ground point of pixel (u, v) for a level camera h above a flat road, moved by the
  # ego's pose change between the frames (no renderer involved)
  h = flat.calib.height
  a, b = (u - cam.cx) / cam.focal, (v - cam.cy) / cam.focal
  p = np.stack([h / b, a * h / b, np.full_like(a, h)])[:, ground]
  (r0, o0), (r1, o1) = flat.ego_pose(f), flat.ego_pose(f + 1)
  cam0, cam1 = o0 + r0 @ [0, 0, -h], o1 + r1 @ [0, 0, -h]
  q = r1.T @ (r0 @ p + (cam0 - cam1)[:, None])
  expected = np.stack([cam.cx + cam.focal * q[1] / q[0] - u[ground], cam.cy + cam.focal * q[2] / q[0] - v[ground]], -1)
  np.testing.assert_allclose(g.flow[ground], expected, atol=2e-3)
  assert np.abs(expected[:, 1]).max() > 1.0   # the test sees real motion


def test_last_frame_has_no_flow(flat):
  g = scene_gt(flat, flat.n_frames - 1, MEDMODEL, (0, 0, 0))
  assert not g.flow_valid.any() and g.occlusion.all() and not g.flow.any() and np.isnan(g.depth_next).all()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_renders_sensibly(name):
  s = make_scene(21, 1.0, scenario=name)
  cam = SMALL_TICI
  r = render_frame(s, 10, cam)
  assert r.rgb.shape == (cam.height, cam.width, 3) and r.rgb.dtype == np.uint8
  assert not np.isnan(r.depth).any() and (r.depth > 0).all()
  sky = r.semantic == CLASS_ID["sky"]
  np.testing.assert_array_equal(np.isinf(r.depth), sky)
  # the horizon is near the principal row: ground below it, none well above it
  top, bottom = r.semantic[:int(cam.cy) - 20], r.semantic[int(cam.cy) + 30:]
  assert not np.isin(top, GROUND).any()
  road = np.isin(bottom, [CLASS_ID["road"], CLASS_ID["lane_marking"]]).mean()
  assert road > 0.35, road
  assert sky.mean() > 0.02 or name == "city"
  assert set(np.unique(r.semantic)) <= set(range(8)) | {IGNORE_ID}
  assert r.rgb.std() > 10   # not a blank image, even at night


def test_render_full_size_frame():
  s = make_scene(1, 0.5, scenario="default")
  r = render_frame(s, 2, TICI_ROAD)
  assert r.rgb.shape == (1208, 1928, 3) and r.depth.dtype == np.float32 and r.instance.dtype == np.int32
  vis = [i for i, n in r.amodal.items() if n]
  assert set(np.unique(r.instance)) - {0} <= set(vis)


def test_render_gt_from_segment(tmp_path):
  s = make_scene(9, 1.0, scenario="cut_in")
  s.save(tmp_path / "scene.json")
  g = render_gt(tmp_path, 4, "model")
  assert g.depth.shape == (256, 512) and g.flow.shape == (256, 512, 2) and g.camera == MEDMODEL
  big = render_gt(tmp_path, 4, "model", size=(1024, 512))
  assert big.depth.shape == (512, 1024)
  cam = render_gt(tmp_path, 4, "camera", size=(482, 302))
  assert cam.rgb.shape == (302, 482, 3) and cam.rpy == s.calib.rpy
  assert g.ego.v == pytest.approx(s.ego.v[4]) and len(g.lanes) == s.road.lanes + 1
  assert {b.id for b in g.boxes3d} == {a.id for a in s.actors if a.alive(4)}
  for b in g.boxes2d:
    assert 0 < b.visible_fraction <= 1
  with pytest.raises(IndexError, match=r"0\.\.19"):
    render_gt(tmp_path, 20)
  with pytest.raises(ValueError, match="camera, model"):
    render_gt(tmp_path, 0, "fisheye")
  with pytest.raises(ValueError, match="not a scaling"):
    render_gt(tmp_path, 0, "model", size=(100, 100))


def test_render_gt_missing_or_bad_scene(tmp_path):
  with pytest.raises(FileNotFoundError, match="scene.json"):
    render_gt(tmp_path, 0)
  (tmp_path / "scene.json").write_text(make_scene(0, 0.2).to_json().replace('"version":2', '"version":3'))
  with pytest.raises(ValueError, match="version 3"):
    render_gt(tmp_path, 0)


def test_comma_four_camera(tmp_path):
  s = make_scene(4, 0.5, camera="mici", scenario="highway")
  s.save(tmp_path / "scene.json")
  g = render_gt(tmp_path, 3, "camera", size=(336, 190))
  assert g.rgb.shape == (190, 336, 3) and g.camera.focal == pytest.approx(1141.5 / 4)
  assert (g.semantic == CLASS_ID["road"]).mean() > 0.1

"""Domain randomisation of the simulator: every knob is seeded and recorded, and ground truth stays exact."""
import dataclasses

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import DEVICE_CAMERAS, MICI_ROAD, project_calib_points
from selfdrive.modeld_fair.classes import CLASS_ID
from tools.fair.sim import SCENARIOS, Scene, make_scene, render_frame, render_gt, scene_gt
from tools.fair.sim import domain
from tools.fair.sim.scene import Calibration

FLAT = dataclasses.replace(SCENARIOS["lead_brake"], curvature=0.0, grade=0.0, noise=0.0, calib=(0.0, 0.0, 0.0))
GROUND = [CLASS_ID[c] for c in ("road", "lane_marking", "road_edge", "terrain")]


@pytest.fixture(scope="module")
def flat():
  return make_scene(3, 1.0, "mici", FLAT)


def _rng(i=0):
  return np.random.default_rng([i, domain.STREAM])


def test_randomised_scene_is_seeded_and_recorded():
  a, b = make_scene(5, 1.0, "mici", "city", randomise=True), make_scene(5, 1.0, "mici", "city", randomise=True)
  assert a.to_json() == b.to_json() and a.knobs.randomise
  back = Scene.from_json(a.to_json())
  assert back.to_json() == a.to_json() and (back.look, back.focal, back.sensor) == (a.look, a.focal, a.sensor)
  np.testing.assert_array_equal(render_frame(back, 3, back.device_camera.scaled(0.2)).rgb,
                                render_frame(a, 3, a.device_camera.scaled(0.2)).rgb)
  plain = make_scene(5, 1.0, "mici", "city")
  # the same road, props and traffic; another look and camera
  assert plain.to_dict()["road"] == a.to_dict()["road"] and plain.props == a.props
  assert [x.id for x in plain.actors] == [x.id for x in a.actors]
  assert (plain.look, plain.focal) == (domain.Look(), None) and a.focal != MICI_ROAD.focal
  assert a.calib != plain.calib and a.lighting != plain.lighting and a.sensor != plain.sensor


def test_draws_cover_their_ranges():
  scenes = [make_scene(i, 0.2, "tici", "default", randomise=True) for i in range(40)]
  h = np.array([s.calib.height for s in scenes])
  pitch = np.abs([s.calib.rpy[1] for s in scenes])
  f = np.array([s.focal for s in scenes]) / DEVICE_CAMERAS["tici"].focal
  assert domain.HEIGHT[0] <= h.min() and h.max() <= domain.HEIGHT[1] and np.ptp(h) > 0.4
  assert pitch.max() > np.deg2rad(4) and pitch.max() <= np.deg2rad(domain.CALIB_DEG[1])
  assert domain.FOCAL[0] <= f.min() and f.max() <= domain.FOCAL[1] and np.ptp(f) > 0.3
  jpeg = [s.sensor.jpeg for s in scenes]
  assert 0 in jpeg and any(domain.JPEG[0] <= q <= domain.JPEG[1] for q in jpeg)
  assert len({s.look.asphalt for s in scenes}) == 40 and len({s.lighting.sun for s in scenes}) == 40


PIXEL_KNOBS = {
  "textures": lambda s: dataclasses.replace(s, look=domain.look(_rng())),
  "lighting": lambda s: dataclasses.replace(s, lighting=domain.lighting(_rng(), s.lighting)),
  "noise": lambda s: dataclasses.replace(s, sensor=dataclasses.replace(s.sensor, noise=6.0)),
  "blur": lambda s: dataclasses.replace(s, sensor=dataclasses.replace(s.sensor, blur=8.0)),   # sigma 1.4 px at this 336 px width
  "jpeg": lambda s: dataclasses.replace(s, sensor=dataclasses.replace(s.sensor, jpeg=30)),
  "exposure": lambda s: dataclasses.replace(s, sensor=dataclasses.replace(s.sensor, exposure=0.8, vignette=0.4)),
}


@pytest.mark.parametrize("knob", PIXEL_KNOBS)
def test_pixel_knobs_change_pixels_not_ground_truth(flat, knob):
  s = PIXEL_KNOBS[knob](flat)
  cam = MICI_ROAD.scaled(0.25)
  a, b = scene_gt(flat, 4, cam, flat.calib.rpy), scene_gt(s, 4, cam, s.calib.rpy)
  assert np.abs(a.rgb.astype(int) - b.rgb).mean() > 0.5
  for k in ("depth", "semantic", "instance", "flow", "flow_valid"):
    np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
  assert [(x.id, x.xyxy) for x in a.boxes2d] == [(x.id, x.xyxy) for x in b.boxes2d]


def test_jpeg_compresses_like_a_codec(flat):
  cam = MICI_ROAD.scaled(0.5)
  clean = render_frame(flat, 4, cam).rgb.astype(float)
  err = {q: np.abs(render_frame(dataclasses.replace(flat, sensor=dataclasses.replace(flat.sensor, jpeg=q)), 4, cam).rgb
                   - clean).mean() for q in (20, 90)}
  assert 0 < err[90] < err[20] < 10


@pytest.mark.parametrize("height,pitch,focal", [(1.0, 0.0, 0.8), (1.6, 0.0, 1.25), (1.3, -0.09, 1.0), (1.1, 0.1, 0.9)])
def test_camera_knobs_keep_depth_a_pinhole_of_the_road(flat, height, pitch, focal):
  s = dataclasses.replace(flat, calib=Calibration((0.0, pitch, 0.0), height), focal=MICI_ROAD.focal * focal)
  g = render_gt_scene(s)
  cam = g.camera
  assert cam.focal == pytest.approx(s.focal / 2)
  v = np.arange(cam.height)[:, None] * np.ones((1, cam.width))
  ground = np.isin(g.semantic, GROUND) & (g.instance == 0)
  ground &= np.abs(np.arange(cam.width) - cam.cx)[None, :] < 0.3 * cam.width
  assert ground.sum() > 500
  # on the flat road 1/depth = (sin p + cos p (v - cy) / f) / h
  expected = height / (np.sin(pitch) + np.cos(pitch) * (v - cam.cy) / cam.focal)
  np.testing.assert_allclose(g.depth[ground], expected[ground], rtol=2e-3)
  # lane lines project onto their painted pixels through the randomised camera
  hits = total = 0
  for line in g.lanes:
    use = line.visible & line.painted & (line.points[:, 0] > 6) & (line.points[:, 0] < 30)
    if line.kind != "solid" or not use.any():
      continue
    uv, _ = project_calib_points(line.points[use] + [0, 0, height], cam, g.rpy)
    u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    paint = g.semantic == CLASS_ID["lane_marking"]
    near = np.zeros(len(u), bool)   # a painted pixel within one pixel (thin far lines sit on pixel borders)
    for du in (-1, 0, 1):
      for dv in (-1, 0, 1):
        near |= paint[v + dv, u + du]
    hits, total = hits + int(near.sum()), total + len(near)
  assert total >= 4 and hits == total


def render_gt_scene(s):
  return scene_gt(s, 4, s.device_camera.scaled(0.5), s.calib.rpy)


def test_written_segment_carries_height_and_focal(tmp_path):
  from tools.fair.lanes.pipeline import segment_height
  from tools.fair.routes import Segment
  from tools.fair.sim.cli import write_segment
  s = make_scene(11, 0.1, "mici", "default", randomise=True)
  path = write_segment(s, tmp_path, progress=False)
  assert path.name.endswith("-default-dr-s11--0")
  seg = Segment(path)
  assert seg.camera.focal == s.focal and (seg.camera.width, seg.camera.height) == (1344, 760)
  assert [list(e.liveCalibration.height) for e in seg.of_type("liveCalibration")][0] == [pytest.approx(s.calib.height)]
  assert segment_height(seg) == s.calib.height
  g = render_gt(path, 1, "camera", size=(336, 190))
  assert g.camera.focal == pytest.approx(s.focal / 4)


def test_version_1_scene_files_load_with_the_plain_look():
  d = make_scene(2, 0.2).to_dict()
  for k in ("look", "focal"):
    del d[k]
  del d["sensor"]["jpeg"]
  d["version"] = 1
  s = Scene._from_dict(d)
  assert (s.look, s.focal, s.sensor.jpeg, s.device_camera) == (domain.Look(), None, 0, DEVICE_CAMERAS["tici"])

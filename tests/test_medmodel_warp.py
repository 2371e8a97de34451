import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from selfdrive.modeld_fair.camera import MEDMODEL, MICI_ROAD, TICI_ROAD, camera_for_size, project_calib_points
from selfdrive.modeld_fair.medmodel_warp import (camera_to_model, model_to_camera, pack_model_input,
                                                 unpack_model_input, warp_model_input, warp_nv12, warp_rgb,
                                                 warp_tables)
from selfdrive.modeld_fair.nv12 import nv12_layout, pack_nv12, rgb_to_nv12

CAMERAS = [TICI_ROAD, MICI_ROAD]
angles = st.floats(-0.05, 0.05)


@pytest.mark.parametrize("camera", CAMERAS)
def test_identity_calibration_maps_principal_ray_to_model_centre(camera):
  uv, depth = project_calib_points([[10.0, 0.0, 0.0]], camera)
  np.testing.assert_allclose(uv[0], [camera.cx, camera.cy])
  np.testing.assert_allclose(camera_to_model(uv[0], camera, (0, 0, 0)), [256.0, 47.6], atol=1e-9)
  np.testing.assert_allclose(depth, [10.0])


@pytest.mark.parametrize("camera", CAMERAS)
@given(d=st.floats(5.0, 100.0), h=st.floats(1.0, 1.6), rpy=st.tuples(angles, angles, angles))
@settings(max_examples=30, deadline=None)
def test_road_point_lands_on_pinhole_row(camera, d, h, rpy):
  """A road point d metres ahead, h below the camera, sits on row cy + f*h/d of the model frame
  whatever the device's mounting angles, once the frame is warped with the right calibration."""
  cam_uv, _ = project_calib_points([[d, 0.0, h]], camera, rpy)
  model_uv = camera_to_model(cam_uv[0], camera, rpy)
  np.testing.assert_allclose(model_uv, [MEDMODEL.cx, MEDMODEL.cy + MEDMODEL.focal * h / d], atol=1e-6)


@pytest.mark.parametrize("pitch", [-0.04, -0.01, 0.02, 0.05])
def test_pitch_moves_camera_horizon_and_warp_restores_it(pitch):
  cam = TICI_ROAD
  uv, _ = project_calib_points([[1e6, 0.0, 0.0]], cam, (0.0, pitch, 0.0))
  assert uv[0, 1] == pytest.approx(cam.cy - cam.focal * np.tan(pitch), abs=1e-3)
  assert camera_to_model(uv[0], cam, (0.0, pitch, 0.0))[1] == pytest.approx(47.6, abs=1e-6)
  # warping with no calibration instead leaves the horizon offset by the model's f*tan(pitch)
  assert camera_to_model(uv[0], cam, (0, 0, 0))[1] == pytest.approx(47.6 - 910 * np.tan(pitch), abs=1e-3)


@given(rpy=st.tuples(angles, angles, angles), u=st.floats(0, 511), v=st.floats(0, 255))
@settings(max_examples=50, deadline=None)
def test_point_round_trip(rpy, u, v):
  back = camera_to_model(model_to_camera([u, v], TICI_ROAD, rpy), TICI_ROAD, rpy)
  np.testing.assert_allclose(back, [u, v], atol=1e-6)


def _stripe_frame(camera, row, value=235, background=16):
  y = np.full((camera.height, camera.width), background, np.uint8)
  y[int(round(row)) - 2:int(round(row)) + 3] = value
  c = np.full((camera.height // 2, camera.width // 2), 128, np.uint8)
  return pack_nv12(y, c, c)[0]


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize("rpy", [(0, 0, 0), (0.0, 0.03, -0.02), (0.0, -0.02, 0.01)])
def test_warped_road_line_appears_on_predicted_row(camera, rpy):
  """Image-level check: a bright row through a road point 20 m ahead (h = 1.22 m) ends up on the
  model row the pinhole model predicts (no roll, so the stripe stays a row; yaw only shifts it sideways)."""
  d, h = 20.0, 1.22
  cam_uv, _ = project_calib_points([[d, 0.0, h]], camera, rpy)
  y, _, _ = warp_nv12(_stripe_frame(camera, cam_uv[0, 1]), warp_tables(camera, rpy))
  col = y[:, 256].astype(float)
  found = np.sum(np.arange(256) * (col - 16)) / np.sum(col - 16)
  expected = MEDMODEL.cy + MEDMODEL.focal * h / d
  assert found == pytest.approx(expected, abs=0.6)


def test_constant_and_linear_images_warp_exactly():
  cam = MICI_ROAD
  lay = nv12_layout(cam.width, cam.height)
  xx = np.arange(cam.width, dtype=np.float64)
  yplane = np.broadcast_to(np.clip(16 + xx * 200 / cam.width, 0, 255), (cam.height, cam.width))
  yplane = np.rint(yplane).astype(np.uint8)
  c = np.full((cam.height // 2, cam.width // 2), 90, np.uint8)
  buf, _ = pack_nv12(yplane, c, c)
  rpy = (0.0, 0.02, 0.03)
  t = warp_tables(cam, rpy)
  y, u, v = warp_nv12(buf, t)
  assert (u == 90).all() and (v == 90).all()
  vv, uu = np.mgrid[0:256, 0:512]
  src = model_to_camera(np.stack([uu, vv], -1), cam, rpy)
  expected = np.interp(np.clip(src[..., 0], 0, cam.width - 1), xx, yplane[0].astype(float))
  assert np.abs(y[t.valid].astype(float) - expected[t.valid]).max() <= 1.0
  assert lay.stride == 1408


def test_model_input_packing_round_trip_and_order():
  y = np.arange(256 * 512, dtype=np.uint32).reshape(256, 512)
  u = np.full((128, 256), 1, np.uint32)
  v = np.full((128, 256), 2, np.uint32)
  packed = pack_model_input(y, u, v)
  assert packed.shape == (6, 128, 256)
  assert packed[0, 0, 0] == y[0, 0] and packed[1, 0, 0] == y[1, 0]
  assert packed[2, 0, 0] == y[0, 1] and packed[3, 0, 0] == y[1, 1]
  y2, u2, v2 = unpack_model_input(packed)
  assert (y2 == y).all() and (u2 == u).all() and (v2 == v).all()


def test_rgb_output_at_multiple_resolution_matches_colour():
  cam = TICI_ROAD
  rgb = np.zeros((cam.height, cam.width, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 30
  buf, _ = rgb_to_nv12(rgb)
  for model in (MEDMODEL, MEDMODEL.scaled(2)):
    out = warp_rgb(buf, warp_tables(cam, (0, 0, 0), model=model, full_chroma=True))
    assert out.shape == (model.height, model.width, 3)
    assert np.abs(out.astype(int) - [200, 60, 30]).max() <= 3


def test_image_round_trip_through_model_frame():
  """Warp a smooth camera image into the model frame and sample it back at camera pixels."""
  cam = MICI_ROAD
  yy, xx = np.mgrid[0:cam.height, 0:cam.width]
  yplane = (128 + 60 * np.sin(xx / 40.0) * np.cos(yy / 30.0)).astype(np.uint8)
  c = np.full((cam.height // 2, cam.width // 2), 128, np.uint8)
  rpy = (0.0, 0.01, -0.01)
  model = MEDMODEL.scaled(2)  # finer than the camera in the middle so the round trip loses little
  ymodel, _, _ = warp_nv12(pack_nv12(yplane, c, c)[0], warp_tables(cam, rpy, model=model))
  pts = np.stack([xx, yy], -1)[300:500:7, 400:900:7]
  muv = camera_to_model(pts, cam, rpy, model=model)
  inside = (muv[..., 0] > 1) & (muv[..., 0] < model.width - 2) & (muv[..., 1] > 1) & (muv[..., 1] < model.height - 2)
  mx, my = np.rint(muv[..., 0][inside]).astype(int), np.rint(muv[..., 1][inside]).astype(int)
  assert inside.sum() > 1000
  err = np.abs(ymodel[my, mx].astype(float) - yplane[pts[..., 1][inside], pts[..., 0][inside]])
  assert np.median(err) < 3 and err.max() < 20


def test_bad_inputs_raise_clear_errors():
  t = warp_tables(MICI_ROAD, (0, 0, 0))
  with pytest.raises(ValueError, match="NV12 buffer"):
    warp_nv12(np.zeros(100, np.uint8), t)
  with pytest.raises(ValueError, match="uint8"):
    warp_nv12(np.zeros(t.layout.size, np.float32), t)
  with pytest.raises(ValueError, match="finite"):
    warp_tables(MICI_ROAD, (0, float("nan"), 0))
  with pytest.raises(ValueError, match="half-resolution"):
    warp_model_input(np.zeros(t.layout.size, np.uint8), warp_tables(MICI_ROAD, (0, 0, 0), full_chroma=True))
  with pytest.raises(ValueError, match="unknown road camera resolution 640x480"):
    camera_for_size(640, 480)


def test_out_of_view_pixels_are_flagged():
  # a large yaw turns the model frame partly outside the narrow comma four view
  t = warp_tables(MICI_ROAD, (0.0, 0.0, 0.5))
  assert 0.05 < (~t.valid).mean() < 0.95
  # uncalibrated comma 3X: only the bottom model row reaches past the image (row 1207.5 + 0.01)
  assert (~warp_tables(TICI_ROAD, (0, 0, 0)).valid).sum() <= 512


@settings(max_examples=12, deadline=None)
@given(camera=st.sampled_from(CAMERAS), r=st.floats(-0.3, 0.3), p=st.floats(-0.3, 0.3), y=st.floats(-0.6, 0.6),
       full_chroma=st.booleans(), seed=st.integers(0, 2**16))
def test_numpy_back_end_gives_opencvs_bytes(camera, r, p, y, full_chroma, seed):
  # inside openpilot (no OpenCV) the daemon warps with numpy: it must see exactly the pixels labels were made from,
  # border replication far outside the image included (large yaw)
  cv2 = pytest.importorskip("cv2")
  import selfdrive.modeld_fair.medmodel_warp as mw
  rgb = np.random.default_rng(seed).integers(0, 256, (camera.height, camera.width, 3), dtype=np.uint8)
  buf, _ = rgb_to_nv12(rgb)
  t = warp_tables(camera, (r, p, y), MEDMODEL.scaled(0.5) if full_chroma else MEDMODEL, full_chroma=full_chroma)
  with_cv2 = warp_nv12(buf, t)
  try:
    mw.cv2 = None
    with_numpy = warp_nv12(buf, t)
  finally:
    mw.cv2 = cv2
  for a, b in zip(with_cv2, with_numpy):
    np.testing.assert_array_equal(a, b)

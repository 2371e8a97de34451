import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from cereal_ext import FairOutput, decode, encode
from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL, project_calib_points
from selfdrive.modeld_fair.classes import CLASS_ID
from selfdrive.modeld_fair.model_io import (LANE_X, N_LANE_POINTS, N_LANES, OBJECT_SEMANTIC_IDS, OBJECT_STRIDE,
                                           OUTPUT_NAMES, OUTPUTS)
from selfdrive.modeld_fair.outputs import LOG_STD_RANGE, check_finite, decode_outputs


def make_raw() -> dict[str, np.ndarray]:
  """Valid raw outputs: flat depth, all-road segmentation, no objects, 4 straight lanes, still ego."""
  raw = {name: np.zeros(shape, np.float32) for name, (shape, _) in OUTPUTS.items()}
  raw["depth"][:] = 10.0
  raw["obj_depth"][:] = 10.0
  raw["seg_logits"][0, 0] = 1.0
  raw["lanes"][0, :, :, 0] = np.array([-5.4, -1.8, 1.8, 5.4], np.float32)[:, None]
  raw["lane_prob"][:] = 0.5
  return raw


def cell_centre(row: int, col: int) -> tuple[float, float]:
  return (col + 0.5) * OBJECT_STRIDE - 0.5, (row + 0.5) * OBJECT_STRIDE - 0.5


def test_depth_and_segmentation():
  raw = make_raw()
  rng = np.random.default_rng(0)
  raw["depth"][0, 0] = rng.uniform(0.5, 300, (32, 64))
  labels = rng.integers(0, 8, (64, 128))
  raw["seg_logits"][0] = rng.normal(0, 1, (8, 64, 128))
  np.put_along_axis(raw["seg_logits"][0], labels[None], 10.0, axis=0)
  out = decode_outputs(raw)
  assert out.depth.dtype == np.float32 and out.depth.shape == (32, 64)
  np.testing.assert_array_equal(out.depth, raw["depth"][0, 0])
  assert not np.shares_memory(out.depth, raw["depth"])
  assert out.segmentation.dtype == np.uint8 and out.segmentation.shape == (64, 128)
  np.testing.assert_array_equal(out.segmentation, labels)


def test_object_on_the_road_has_exact_box_and_position():
  raw = make_raw()
  row, col = 20, 40                      # below the horizon (cy = 47.6): the centre ray hits the road
  u, v = cell_centre(row, col)           # (323.5, 163.5)
  dist = DEFAULT_CAMERA_HEIGHT * MEDMODEL.focal / (v - MEDMODEL.cy)   # forward distance of that road point
  raw["obj_heatmap"][0, 1, row, col] = 0.9                            # pedestrian
  raw["obj_box"][0, :, row, col] = (10.0, 20.0, 12.0, 4.0)
  raw["obj_depth"][0, 0, row, col] = dist
  [obj] = decode_outputs(raw).objects
  assert obj.class_id == CLASS_ID["pedestrian"] and obj.track_id == 0
  assert obj.score == pytest.approx(0.9)
  assert obj.box == pytest.approx((u - 10, v - 20, u + 12, v + 4))
  assert obj.velocity == (0.0, 0.0, 0.0)
  x, y, z = obj.position
  assert (x, z) == (pytest.approx(dist, rel=1e-6), 0.0)
  assert y == pytest.approx(dist * (u - MEDMODEL.cx) / MEDMODEL.focal, rel=1e-6)
  # independent check: the road point, seen from the camera (calib frame = road frame + height down), is the cell centre
  uv, depth = project_calib_points(np.array([x, y, z + DEFAULT_CAMERA_HEIGHT]))
  np.testing.assert_allclose(uv[0], (u, v), atol=1e-4)
  assert depth[0] == pytest.approx(dist, rel=1e-6)


def test_object_above_the_horizon_uses_its_depth():
  raw = make_raw()
  raw["obj_heatmap"][0, 0, 2, 10] = 0.7   # vehicle, v = 19.5 < cy
  raw["obj_depth"][0, 0, 2, 10] = 40.0
  [obj] = decode_outputs(raw).objects
  u, _ = cell_centre(2, 10)
  assert obj.class_id == CLASS_ID["vehicle"]
  assert obj.position == pytest.approx((40.0, 40.0 * (u - MEDMODEL.cx) / MEDMODEL.focal, 0.0))


def test_peak_finding_threshold_order_and_top_k():
  raw = make_raw()
  h = raw["obj_heatmap"][0]
  h[0, 10, 10], h[0, 10, 11], h[0, 11, 9] = 0.8, 0.7, 0.75     # one peak and its 3x3 neighbours
  h[0, 10, 13] = 0.5                                           # two cells away: its own peak
  h[0, 0, 0] = 0.4                                             # corner cell: padding does not hide it
  h[1, 10, 10] = 0.6                                           # same cell, other class: another object
  h[1, 30, 60] = 0.29                                          # below the threshold
  objs = decode_outputs(raw).objects
  assert [(o.class_id, round(o.score, 4)) for o in objs] == [(4, 0.8), (5, 0.6), (4, 0.5), (4, 0.4)]
  assert [o.score for o in decode_outputs(raw, max_objects=2).objects] == pytest.approx([0.8, 0.6])
  assert len(decode_outputs(raw, score_threshold=0.2).objects) == 5
  assert decode_outputs(raw, score_threshold=0.95).objects == []


def test_boxes_are_clipped_to_the_frame():
  raw = make_raw()
  raw["obj_heatmap"][0, 0, 0, 63] = 0.9
  raw["obj_box"][0, :, 0, 63] = 100.0
  [obj] = decode_outputs(raw).objects
  assert obj.box == pytest.approx((507.5 - 100, -0.5, MEDMODEL.width - 0.5, 3.5 + 100))


def test_lanes_and_ego():
  raw = make_raw()
  rng = np.random.default_rng(1)
  raw["lanes"][0] = rng.normal(0, 2, (N_LANES, N_LANE_POINTS, 4))
  raw["lanes"][0, 0, 0, 2] = 1e4                # absurd log std: clipped, still finite
  raw["lane_prob"][0] = (0.1, 0.9, 0.95, 0.2)
  raw["ego"][0] = np.arange(12) * 0.1 - 0.5
  out = decode_outputs(raw)
  assert len(out.lanes.lines) == N_LANES
  np.testing.assert_array_equal(out.lanes.x, LANE_X)
  for k, ln in enumerate(out.lanes.lines):
    assert ln.prob == pytest.approx(raw["lane_prob"][0, k])
    np.testing.assert_array_equal(ln.y, raw["lanes"][0, k, :, 0])
    np.testing.assert_array_equal(ln.z, raw["lanes"][0, k, :, 1])
    np.testing.assert_allclose(ln.y_std, np.exp(np.clip(raw["lanes"][0, k, :, 2], *LOG_STD_RANGE)), rtol=1e-6)
    np.testing.assert_allclose(ln.z_std, np.exp(raw["lanes"][0, k, :, 3]), rtol=1e-6)
  assert np.isfinite(out.lanes.lines[0].y_std[0])
  e, ego = out.ego_motion, raw["ego"][0]
  assert e.trans == pytest.approx(ego[0:3]) and e.rot == pytest.approx(ego[3:6])
  assert e.trans_std == pytest.approx(np.exp(ego[6:9])) and e.rot_std == pytest.approx(np.exp(ego[9:12]))


def test_decoded_output_encodes():
  raw = make_raw()
  raw["obj_heatmap"][0, 0, 5:25:4, 3:60:5] = 0.9   # 55 peaks: capped at max_objects
  out = replace(decode_outputs(raw), frame_id=7, model_id="test", model_hash=bytes(32))
  assert isinstance(out, FairOutput) and len(out.objects) == 16
  back = decode(encode(out))
  assert back.frame_id == 7 and len(back.objects) == 16
  np.testing.assert_array_equal(back.segmentation, out.segmentation)


@pytest.mark.parametrize("seed", range(3))
def test_decoding_is_bit_exact_against_plain_numpy(seed):
  """The fast paths (argmax as plane passes, separable 3x3 maximum, one exp for all lane stds) give exactly
  what the plain numpy expressions give, ties and clipping included."""
  rng = np.random.default_rng(seed)
  raw = make_raw()
  raw["seg_logits"][0] = rng.integers(-2, 3, (8, 64, 128))         # many ties: the first maximum wins
  raw["obj_heatmap"][0] = rng.integers(0, 5, (2, 32, 64)) / 4       # plateaus
  raw["obj_box"][0] = rng.normal(0, 300, (4, 32, 64))               # boxes past the frame's edges
  raw["obj_depth"][0] = rng.uniform(1, 100, (1, 32, 64))
  raw["lanes"][0] = rng.normal(0, 15, (N_LANES, N_LANE_POINTS, 4))  # log stds past LOG_STD_RANGE
  raw["ego"][0] = rng.normal(0, 15, 12)
  out = decode_outputs(raw, max_objects=10_000)  # all peaks
  assert out.segmentation.dtype == np.uint8
  np.testing.assert_array_equal(out.segmentation, np.argmax(raw["seg_logits"][0], axis=0))
  std = lambda log_std: np.exp(np.clip(log_std, *LOG_STD_RANGE)).astype(np.float32)
  for ln, want in zip(out.lanes.lines, raw["lanes"][0]):
    for got, w in ((ln.y, want[:, 0]), (ln.z, want[:, 1]), (ln.y_std, std(want[:, 2])), (ln.z_std, std(want[:, 3]))):
      assert got.dtype == np.float32 and got.tobytes() == w.astype(np.float32).tobytes()
  ego = raw["ego"][0].astype(np.float64)
  assert out.ego_motion.trans_std == tuple(std(ego[6:9]).tolist())
  assert out.ego_motion.rot_std == tuple(std(ego[9:12]).tolist())
  heat = raw["obj_heatmap"][0]
  pad = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  nbr = np.max([pad[:, dy:dy + 32, dx:dx + 64] for dy in range(3) for dx in range(3)], axis=0)
  idx = np.flatnonzero((heat >= nbr) & (heat >= 0.3))
  idx = idx[np.argsort(-heat.ravel()[idx], kind="stable")]
  k, row, col = np.unravel_index(idx, heat.shape)
  u, v = (col + 0.5) * OBJECT_STRIDE - 0.5, (row + 0.5) * OBJECT_STRIDE - 0.5
  l, t, r, b = raw["obj_box"][0][:, row, col]
  box = np.stack([np.clip(u - l, -0.5, 511.5), np.clip(v - t, -0.5, 255.5), np.clip(u + r, -0.5, 511.5),
                  np.clip(v + b, -0.5, 255.5)], axis=1)
  d = raw["obj_depth"][0, 0][row, col]
  y = d * (u - MEDMODEL.cx) / MEDMODEL.focal
  want = [(OBJECT_SEMANTIC_IDS[c], s, tuple(bx), (px, py, 0.0))
          for c, s, bx, px, py in zip(k, heat.ravel()[idx].tolist(), box.tolist(), d.tolist(), y.tolist())]
  assert len(want) > 16 and [(o.class_id, o.score, o.box, o.position) for o in out.objects] == want


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_check_finite_names_the_first_bad_output(name):
  raw = make_raw()
  assert check_finite(raw) is None
  raw[name].flat[-1] = np.nan
  raw["ego"][0, 0] = np.inf
  assert check_finite(raw) == name


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_wrong_or_missing_tensor_is_named(name):
  raw = make_raw()
  raw[name] = raw[name][..., :-1]
  with pytest.raises(ValueError, match=name):
    decode_outputs(raw)
  del raw[name]
  with pytest.raises(ValueError, match=f"{name}.*missing"):
    decode_outputs(raw)


def test_outputs_module_does_not_import_torch():
  code = "import sys, selfdrive.modeld_fair.outputs; assert 'torch' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)

"""The road-plane reference of bench/real_depth_bench.py: the plane, the warp test's sign, the scores."""
import os
from pathlib import Path

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL, TICI_ROAD
from selfdrive.modeld_fair.classes import CLASS_ID
from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
from selfdrive.modeld_fair.nv12 import rgb_to_nv12
from bench.real_depth_bench import grid_camera, measure, pixel_sets, plane_depth, report, scores, warp_test
from tools.fair.sim import SCENARIOS, make_scene, render_frame

SHARED = Path(os.environ.get("FAIRPILOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="module")
def flat():
  return make_scene(1, 0.5, "tici", SCENARIOS["straight_flat"])


def test_plane_is_the_rendered_flat_road(flat):
  cam = grid_camera((64, 128))
  r = render_frame(flat, 3, cam, (0.0, 0.0, 0.0))
  ref = plane_depth(cam, flat.calib.height, 0.0)
  road = np.isin(r.semantic, [CLASS_ID["road"], CLASS_ID["lane_marking"]]) & (r.instance == 0) & (ref < 60)
  assert road.sum() > 500
  np.testing.assert_allclose(r.depth[road], ref[road], rtol=1e-3)


@pytest.mark.parametrize("warp_deg", [-2.0, 3.0])
def test_warp_pitch_tilts_the_model_frame_road_by_minus_that_pitch(flat, warp_deg):
  # a level device image warped as if pitched by p: the model frame's horizon is that of plane_depth(-p)
  cam = TICI_ROAD.scaled(0.5)
  r = render_frame(flat, 3, cam)
  ground = np.isin(r.semantic, [CLASS_ID[c] for c in ("road", "lane_marking", "road_edge", "terrain")])
  buf, _ = rgb_to_nv12(np.where(ground[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
  model = warp_rgb(buf, warp_tables(cam, (0.0, np.deg2rad(warp_deg), 0.0), full_chroma=True))[..., 0]
  # the ground reaches the horizon (1000 m) between the roadside objects: its topmost row over a wide band
  horizon = min(np.flatnonzero(model[:, u] > 128)[0] for u in range(100, MEDMODEL.width - 100) if (model[:, u] > 128).any())
  expected = np.flatnonzero(np.isfinite(plane_depth(MEDMODEL, 1.22, -np.deg2rad(warp_deg))[:, MEDMODEL.width // 2]))[0]
  level = np.flatnonzero(np.isfinite(plane_depth(MEDMODEL, 1.22, 0.0)[:, 0]))[0]
  assert abs(horizon - expected) <= 2 and abs(expected - level) > 25


def test_scores_of_known_errors():
  cam = grid_camera((32, 64))
  ref = plane_depth(cam, 1.22, 0.0)
  seg = np.full(ref.shape, CLASS_ID["road"])
  sets = pixel_sets(cam, ref, seg)
  assert set(sets) == {"road", "window"} and sets["window"].sum() > 0 and (sets["road"] >= sets["window"]).all()
  absrel, ratio, n = scores(np.where(np.isfinite(ref), ref * 1.1, np.inf), ref, sets["road"])
  assert (absrel, ratio, n) == (pytest.approx(0.1), pytest.approx(1.1), int(sets["road"].sum()))
  assert scores(ref, ref, np.zeros_like(sets["road"]))[2] == 0


@pytest.mark.skipif(not (SHARED / "data" / "real").is_dir(), reason=f"no real frames under {SHARED} (set FAIRPILOT_SHARED)")
def test_bundled_student_on_real_frames():
  from selfdrive.modeld_fair.runner import make_runner
  runner = make_runner("onnxruntime")
  rows, warps = measure(SHARED, runner), warp_test(SHARED, runner)
  assert {r["frame"] for r in rows} == {"comma2k19_preview", "source", "target"} and len(warps) == 6
  assert all(np.isfinite(r["absrel"]) and r["n"] > 50 for r in rows)
  text = report(rows, warps, runner.model_id, "cmd")
  assert "| comma2k19 | comma2k19_preview | road |" in text and "warp test" in text

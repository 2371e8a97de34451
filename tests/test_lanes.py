"""Lane pseudo-labels: geometry, init sources, LK tracking of lane points on the bundled simulated segment against
its ground truth, CoTracker (random weights) end to end, storage and the `fair lanes` command."""
import itertools
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402
from openpilot_logging.cereal import log as capnp_log  # noqa: E402

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from selfdrive.modeld_fair.model_io import LANE_X  # noqa: E402
from tools.fair.cli import main as fair_main  # noqa: E402
from tools.fair.data.cache import build_frame_cache  # noqa: E402
from tools.fair.data.dataset import StudentDataset  # noqa: E402
from tools.fair.data.targets import fill_lanes, lane_span  # noqa: E402
from tools.fair.labels.store import LabelStore  # noqa: E402
from tools.fair.lanes.pipeline import (LaneConfig, LaneInit, assign_slots, frames_kept, gt_init,  # noqa: E402
                                       label_lanes, lane_errors, model_frames, model_to_road, modelv2_init, read_labels,
                                       road_to_model, seg_init, segment_height, start_points, write_labels)
from tools.fair.routes import Segment  # noqa: E402
from tools.fair.sim.gt import load_segment_scene, render_gt  # noqa: E402
from tools.fair.teachers.lk_tracker import LKConfig, LKTracker  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "fairsim-mici-city-s2--0"
EXTERN = Path(__file__).resolve().parents[1] / ".venv" / "extern"
CFG = LaneConfig()   # the full 512x256 model frame
CLIP = 41            # 2 s at 20 Hz


@pytest.fixture(scope="module")
def sample():
  """The bundled city segment (mici camera, 2 solid lines): its first 141 model frames, scene and height."""
  seg = Segment(SAMPLE)
  return list(itertools.islice(model_frames(seg, CFG.camera), 141)), load_segment_scene(SAMPLE), segment_height(seg)


def _lk():
  return LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CFG.camera))


def _cross_line_px(scene, f, height, points, slot):
  """|u - u_line(v)|: horizontal pixel distance of tracked points to their slot's true line at frame f, on the same
  image row (lines are steep in the image; distance along the line is not defined for paint without texture)."""
  fine = gt_init(scene, f, replace(CFG, init_x=tuple(np.arange(3.0, 150.0, 0.1))))
  out = np.full(len(points), np.nan)
  for s in np.unique(slot):
    uv, ok = road_to_model(fine.points[s], height, CFG.camera)
    uv = uv[ok]
    order = np.argsort(uv[:, 1])
    m = slot == s
    out[m] = np.abs(points[m, 0] - np.interp(points[m, 1], uv[order, 1], uv[order, 0], left=np.nan, right=np.nan))
  return out


# ---- geometry and init sources

@settings(max_examples=50, deadline=None)
@given(st.floats(4.0, 150.0), st.floats(-20.0, 20.0), st.floats(1.0, 1.6))
def test_road_model_round_trip_on_flat_ground(x, y, height):
  uv, ok = road_to_model(np.array([[x, y, 0.0]]), height, MEDMODEL)
  back, below = model_to_road(uv, height, MEDMODEL)
  assert ok[0] and below[0] and uv[0, 1] > MEDMODEL.cy
  np.testing.assert_allclose(back[0], [x, y, 0.0], rtol=1e-9, atol=1e-9)
  assert not model_to_road(np.array([[100.0, MEDMODEL.cy - 1]]), height, MEDMODEL)[1][0]   # above the horizon


def test_slots_order_lines_around_the_ego():
  line = lambda y: np.stack([np.linspace(0, 90, 10), np.full(10, y), np.zeros(10)], 1)
  init = assign_slots([line(5.4), line(-1.7), line(1.9), line(-5.2), line(-9.0)], CFG)
  assert init.exists.tolist() == [True, True, True, True]
  np.testing.assert_allclose(np.nanmean(init.points[:, :, 1], 1), [-5.2, -1.7, 1.9, 5.4])
  assert init.points.shape == (4, len(CFG.init_x), 3)
  one = assign_slots([line(2.0)], CFG)
  assert one.exists.tolist() == [False, False, True, False] and np.isnan(one.points[[0, 1, 3]]).all()


def test_seg_init_finds_the_painted_lines(sample):
  _, scene, height = sample
  gt = render_gt(SAMPLE, 30, "model")
  init, truth = seg_init(gt.semantic, height, CFG), gt_init(scene, 30, CFG)
  assert np.array_equal(init.exists, truth.exists) and init.exists.sum() == 2
  for s in np.flatnonzero(truth.exists):
    near = (np.asarray(CFG.init_x) <= 30) & np.isfinite(init.points[s, :, 1])
    assert near.sum() >= 8
    assert np.abs(init.points[s, near, 1] - truth.points[s, near, 1]).max() < 0.1   # m
  with pytest.raises(ValueError, match="does not match the 512x256"):
    seg_init(gt.semantic[:-1], height, CFG)
  assert not seg_init(np.zeros_like(gt.semantic), height, CFG).exists.any()


def test_modelv2_init_reads_openpilots_calibrated_frame(sample):
  _, scene, height = sample
  truth = gt_init(scene, 0, replace(CFG, init_x=tuple(LANE_X.tolist())))
  msg = capnp_log.Event.new_message().init("modelV2")
  msg.frameId = 7
  lines = msg.init("laneLines", 4)
  for i, line in enumerate(lines):
    pts = truth.points[i] if truth.exists[i] else np.zeros((33, 3))
    line.x, line.y, line.z = LANE_X.tolist(), pts[:, 1].tolist(), (pts[:, 2] + height).tolist()   # camera at origin
  msg.laneLineProbs = [0.1, 0.9, 0.8, 0.3]
  init = modelv2_init(msg.as_reader(), height, CFG)
  ref = gt_init(scene, 0, CFG)
  assert init.exists.tolist() == [False, True, True, False]
  np.testing.assert_allclose(init.points[1:3], ref.points[1:3], atol=1e-6)
  msg.laneLineProbs = [0.9, 0.9]
  with pytest.raises(ValueError, match="expected 4"):
    modelv2_init(msg.as_reader(), height, CFG)


def test_reinit_when_a_slot_loses_its_points():
  slot = np.array([1] * 6 + [2] * 6)
  vis = np.ones((5, 12), bool)
  assert frames_kept(vis, slot, CFG) == 5
  vis[3:, :4] = False     # slot 1 keeps 2 of 6 from frame 3 (< 3 points)
  assert frames_kept(vis, slot, CFG) == 3


# ---- tracking lane points with LK: the evidence

def test_lk_lane_points_stay_on_the_true_lines_for_2_seconds(sample):
  frames, scene, height = sample
  lk = _lk()
  for s in (0, 100):
    uv, slot, _ = start_points(gt_init(scene, s, CFG), height, CFG)
    tracks = lk(np.stack([f.rgb for f in frames[s:s + CLIP]])[None], np.c_[np.zeros(len(uv)), uv])
    errs = [_cross_line_px(scene, s + t, height, tracks.points[t, tracks.visible[t]], slot[tracks.visible[t]])
            for t in range(CLIP)]
    assert tracks.visible[-1].sum() >= 12 and set(slot[tracks.visible[-1]]) == {1, 2}   # both lines after 2 s
    assert np.nanmedian(np.concatenate(errs)) < 1.0                                       # px, over the 2 s
    assert np.nanmedian(errs[-1]) < 2.0                                                   # px, at 2 s


def test_label_lanes_with_lk_against_ground_truth(sample, tmp_path):
  frames, scene, height = sample
  labels = label_lanes(frames[:100], lambda f: gt_init(scene, f.index, CFG), _lk(), height, CFG, "gt")
  assert labels.lanes.shape == (100, 4, 33, 2) and labels.visible.shape == (100, 4, 33)
  assert labels.exists.shape == (100, 4)
  assert np.array_equal(labels.frame_index, np.arange(100)) and labels.init_frame[0] == 0
  assert (labels.exists[:, [1, 2]]).all() and not labels.exists[:, [0, 3]].any() and not labels.visible[:, [0, 3]].any()
  assert np.all(labels.lanes[~labels.visible] == 0) and np.all(labels.lanes[..., 1][labels.visible] == 0)  # flat ground
  assert len(np.unique(labels.init_frame)) >= 2      # re-initialised as points run out of the image
  e = lane_errors(labels, scene, CFG)
  assert e.at[10.0] < 0.05 and e.at[20.0] < 0.08 and e.median < 0.1 and e.visible_fraction > 0.6
  store = LabelStore(tmp_path)
  entries = write_labels(store, Segment(SAMPLE), labels, _lk(), CFG.camera, shard_frames=40)
  assert [e.frame_ids for e in entries] == [(0, 39, 40), (40, 79, 40), (80, 99, 20)] and entries[-1].final
  back = read_labels(store, SAMPLE.name)
  assert np.array_equal(back.lanes, labels.lanes) and np.array_equal(back.visible, labels.visible)
  assert np.array_equal(back.exists, labels.exists) and np.array_equal(back.init_frame, labels.init_frame)
  assert (back.source, back.tracker, back.weights_sha256, back.height) == ("gt", "lk", labels.weights_sha256, height)


def test_frames_without_an_init_are_labelled_empty(sample):
  frames, _, height = sample
  none = LaneInit(np.full((4, 3, 3), np.nan), np.zeros(4, bool))
  labels = label_lanes(frames[:3], lambda f: none if f.index else None, _lk(), height, CFG, "gt")
  assert np.array_equal(labels.frame_index, [0, 1, 2]) and not labels.exists.any() and not labels.visible.any()
  with pytest.raises(ValueError, match="no frames"):
    label_lanes([], lambda f: None, _lk(), height, CFG, "gt")


@pytest.mark.skipif(not (EXTERN / "cotracker" / "predictor.py").is_file(), reason=f"Meta's cotracker package is not "
                    f"in {EXTERN}: run `python -m tools.fair.teachers.fetch_cotracker`")
def test_random_weight_cotracker_labels_lanes_end_to_end(sample, tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(EXTERN))
  from tools.fair.teachers.cotracker import CHECKPOINT, CoTrackerConfig, CoTrackerTeacher, online_predictor_class
  frames, scene, height = sample
  cam = MEDMODEL.scaled(0.5)
  (tmp_path / "cotracker").mkdir()
  torch.manual_seed(0)
  model = online_predictor_class()(checkpoint=None, window_len=4).model
  torch.save(model.state_dict(), tmp_path / "cotracker" / CHECKPOINT)
  teacher = CoTrackerTeacher.load(CoTrackerTeacher.resolve_weights(tmp_path),
                                  config=CoTrackerConfig(cam, window_len=4, resolution=(64, 128), support_grid=False))
  # few points and one window (no re-init: random visibilities would re-start it on every frame): a CPU-sized run
  cfg = replace(CFG, camera=cam, max_clip=4, init_x=(8.0, 12.0, 20.0, 30.0), min_points=0, min_visible=0.0)
  small = [replace(f, rgb=f.rgb[::2, ::2].copy()) for f in frames[:4]]   # stand-in for a half-size warp
  labels = label_lanes(small, lambda f: gt_init(scene, f.index, cfg), teacher, height, cfg, "gt")
  assert labels.lanes.shape == (4, 4, 33, 2) and np.isfinite(labels.lanes).all() and labels.tracker == "cotracker"
  # random weights: its positions mean nothing; only validity is checked
  assert np.unique(labels.init_frame).tolist() == [0] and not labels.visible[:, [0, 3]].any()
  assert labels.visible[0, [1, 2]].any(1).all()    # frame 0 holds the start points themselves


def test_fair_lanes_command(tmp_path, capsys):
  out = tmp_path / "labels"
  assert fair_main(["lanes", str(SAMPLE), "--tracker", "lk", "--init", "gt", "--out", str(out), "--max-frames", "30",
                    "--scale", "0.5"]) == 0
  text = capsys.readouterr().out
  assert "30 frames" in text and "lateral error vs ground truth (m): 10 m" in text
  labels = read_labels(LabelStore(out), SAMPLE.name)
  assert labels.lanes.shape == (30, 4, 33, 2) and not LabelStore(out).shards("lanes", SAMPLE.name)[-1].final
  # the dataset's "lanes" teacher reads them: frame 20 of a cache of the segment gets the stored lanes
  cache = build_frame_cache([SAMPLE], tmp_path / "cache", every=10, max_frames=3, instance=False, progress=False)
  item = StudentDataset(cache, labels=out, teachers={"lanes": "lanes"}, use_gt=False)[2]
  v, e = labels.visible[20], labels.exists[20]   # completed over the span (test_data.py)
  np.testing.assert_array_equal(item["lanes"].numpy(), fill_lanes(labels.lanes[20], v, e))
  np.testing.assert_array_equal(item["lane_valid"].numpy(), lane_span(v, e))
  assert fair_main(["lanes", str(SAMPLE), "--init", "modelv2", "--out", str(out)]) == 2
  assert "no modelV2 events" in capsys.readouterr().err
  assert fair_main(["lanes", str(SAMPLE), "--tracker", "cotracker", "--weights", str(tmp_path), "--out", str(out)]) == 2
  assert "scaled_online.pth" in capsys.readouterr().err

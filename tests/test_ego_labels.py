"""Ego-motion labels from a segment's own logs (`fair ego`): values against the generator's truth, the store
round trip, StudentDataset reading them, and the errors."""
from pathlib import Path

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MICI_ROAD
from tools.fair.cli import main as fair_main
from tools.fair.labels.ego import ego_labels, write_ego
from tools.fair.labels.store import LabelStore
from tools.fair.routes import Segment
from tools.fair.routes.writer import SegmentWriter
from tools.fair.sim.gt import load_segment_scene

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/samples/fairsim-tici-cut_in-s1--0"


@pytest.fixture(scope="module")
def seg():
  return Segment(SAMPLE)


def test_camera_odometry_is_the_logged_motion(seg):
  index, ego, source = ego_labels(seg)
  scene = load_segment_scene(SAMPLE)
  assert source == "cameraOdometry" and index.tolist() == list(range(scene.n_frames)) and ego.dtype == np.float32
  np.testing.assert_allclose(ego[:, :3], scene.ego.trans, atol=1e-4)
  np.testing.assert_allclose(ego[:, 3:], scene.ego.rot, atol=1e-6)


def test_car_state_gives_speed_and_yaw_rate(seg):
  index, ego, source = ego_labels(seg, "carState")
  scene = load_segment_scene(SAMPLE)
  assert source == "carState" and len(index) == scene.n_frames
  # carState is logged once per frame: at mid-exposure it is a blend of two frames' values
  np.testing.assert_allclose(ego[1:, 0], scene.ego.v[1:], atol=0.05 * scene.ego.v.max() + 0.1)
  np.testing.assert_allclose(ego[1:, 5], scene.ego.yaw_rate[1:], atol=5e-3)
  assert np.all(ego[:, 1:5] == 0) and np.ptp(ego[:, 0]) > 0
  # the right-turning yaw rate of the scene is the device frame's z rotation (z down) of cameraOdometry
  odo = ego_labels(seg, "cameraOdometry")[1]
  assert np.abs(odo[:, 5]).max() > 0.02 and np.corrcoef(ego[:, 5], odo[:, 5])[0, 1] > 0.99


def test_store_round_trip_and_dataset_reads_ego(tmp_path, seg):
  from tools.fair.data.cache import build_frame_cache
  from tools.fair.data.dataset import StudentDataset
  store = LabelStore(tmp_path / "labels")
  assert write_ego(store, seg, shard_frames=50) == (200, "cameraOdometry")
  assert write_ego(store, seg, shard_frames=50) == (200, "cameraOdometry")   # a rerun replaces, never duplicates
  [sid] = {e.segment_id for e in store.entries()}
  assert len(store.shards("ego", sid)) == 4 and store.shards("ego", sid)[-1].final
  a = store.read("ego", sid)
  np.testing.assert_array_equal(a["ego"], ego_labels(seg)[1])
  cache = build_frame_cache([SAMPLE], tmp_path / "cache", scale=0.5, max_frames=3, progress=False)
  ds = StudentDataset(cache, labels=store, teachers={"ego": "ego"}, use_gt=False)
  for i in range(len(ds)):
    frame = ds.record(i).frame_index
    np.testing.assert_array_equal(ds.raw(i)["ego"], a["ego"][frame])


def test_missing_odometry_frames_split_shards(tmp_path):
  cam = MICI_ROAD
  rgb = np.full((cam.height, cam.width, 3), 90, np.uint8)
  with SegmentWriter(tmp_path / "seg--0", cam) as w:
    for i in range(4):
      odo = None if i == 1 else (10.0 + i, 0, 0)   # the writer logs no cameraOdometry for frame 1
      w.write_frame(rgb, calib_rpy=(0, 0, 0), v_ego=10.0 + i, trans=odo, rot=odo and (0, 0, 0))
  seg = Segment(tmp_path / "seg--0")
  index, ego, source = ego_labels(seg)
  assert source == "cameraOdometry" and index.tolist() == [0, 2, 3] and ego[:, 0].tolist() == [10.0, 12.0, 13.0]
  store = LabelStore(tmp_path / "labels")
  assert write_ego(store, seg) == (3, "cameraOdometry")
  assert sorted(e.frame_ids for e in store.entries()) == [(0, 0, 1), (2, 3, 2)]
  assert ego_labels(seg, "carState")[0].tolist() == [0, 1, 2, 3]   # carState labels every frame


def test_errors_are_one_line(tmp_path, capsys, seg):
  with pytest.raises(ValueError, match="unknown ego source 'gps'"):
    ego_labels(seg, "gps")
  assert fair_main(["ego", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2
  err = capsys.readouterr().err.strip()
  assert "does not exist" in err and "\n" not in err

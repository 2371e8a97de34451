"""Label-store faults: duplicate segment names, a truncated video, hostile manifests."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL
from tools.fair.labels.pipeline import LabelConfig, label_segments
from tools.fair.labels.store import Labels, LabelStore, ShardInfo
from tools.fair.sim import make_scene
from tools.fair.sim.cli import write_segment
from tools.fair.teachers import FeatureMaps, TeacherInput, WeightsInfo

pytestmark = pytest.mark.faults
CAM = MEDMODEL.scaled(0.25)   # 128x64: cheap warps
N = 12


class MeanTeacher:
  """A frame teacher whose features are each frame's mean colour: different videos give different labels."""
  name = "mean"
  input = TeacherInput(camera=CAM, clip=1)
  weights = WeightsInfo("mean", Path("/nonexistent/mean"), None, "0" * 64)

  def __init__(self):
    self.frames = 0

  def __call__(self, x):
    self.frames += len(x)
    m = np.asarray(x, np.float32).mean((1, 2))                      # (n, 3)
    return FeatureMaps(m[:, :, None, None].repeat(2, 2).repeat(2, 3), m, 0, CAM)


def _cfg(**kw) -> LabelConfig:
  return LabelConfig(batch=4, shard_frames=5, scale=0.25, **kw)


@pytest.fixture(scope="module")
def two_route0(tmp_path_factory) -> tuple[Path, Path]:
  """Two different drives, both in folders named route--0."""
  root = tmp_path_factory.mktemp("dups")
  a = write_segment(make_scene(1, N / 20, "mici", "city"), root / "a", progress=False)
  b = write_segment(make_scene(2, N / 20, "mici", "city"), root / "b", progress=False)
  shutil.move(a, a.with_name("route--0"))
  shutil.move(b, b.with_name("route--0"))
  return a.with_name("route--0"), b.with_name("route--0")


def test_two_segments_of_one_folder_name_keep_their_own_labels(two_route0, tmp_path):
  a, b = two_route0
  store = LabelStore(tmp_path / "store")
  t = MeanTeacher()
  label_segments([a, b], {"mean": t}, store, _cfg(), progress=False)
  assert t.frames == 2 * N
  ids = store.segments("mean")
  assert len(ids) == 2 and all(i.startswith("route--0") for i in ids)
  la, lb = (store.read("mean", i)["cls"] for i in ids)
  assert len(la) == len(lb) == N and not np.array_equal(la, lb)
  with pytest.raises(ValueError, match="route--0.*ambiguous"):
    store.read("mean", "route--0")
  # a second run (each segment alone) finds both complete, and labels nothing
  t2 = MeanTeacher()
  r = label_segments([b], {"mean": t2}, store, _cfg(), progress=False)
  assert t2.frames == 0 and r.skipped_segments == 1
  assert [store.read("mean", i)["cls"].tolist() for i in ids] == [la.tolist(), lb.tolist()]


def test_store_without_segment_ids_keeps_loading_and_resuming(two_route0, tmp_path):
  a, _ = two_route0
  store = LabelStore(tmp_path / "store")
  label_segments([a], {"mean": MeanTeacher()}, store, _cfg(), progress=False)
  doc = json.loads((store.root / "manifest.json").read_text())
  for d in doc["shards"]:   # a store written before segment ids
    del d["segment_id"]
  (store.root / "manifest.json").write_text(json.dumps(doc))
  assert store.segments("mean") == ["route--0"] and len(store.read("mean", "route--0")["frame_id"]) == N
  t = MeanTeacher()
  assert label_segments([a], {"mean": t}, store, _cfg(), progress=False).skipped_segments == 1 and t.frames == 0


def test_labels_of_a_truncated_video_are_completed_once_it_is_restored(tmp_path):
  seg = write_segment(make_scene(3, 20 / 20, "mici", "city"), tmp_path / "segs", progress=False)
  video = seg / "fcamera.hevc"
  whole = video.read_bytes()
  video.write_bytes(whole[:len(whole) * 6 // 10])
  store = LabelStore(tmp_path / "store")
  with pytest.warns(Warning):
    label_segments([seg], {"mean": MeanTeacher()}, store, _cfg(), progress=False)
  got = len(store.read("mean", store.segments("mean")[0])["frame_id"])
  assert 0 < got < 20 and not any(e.final for e in store.entries())
  video.write_bytes(whole)
  label_segments([seg], {"mean": MeanTeacher()}, store, _cfg(), progress=False)
  assert store.read("mean", store.segments("mean")[0])["frame_id"].tolist() == list(range(20))
  assert [e.final for e in store.entries()] == [False, False, False, True]


@pytest.mark.parametrize("hostile", ["../../victim.txt", "/ABS/victim.txt", "mean/../../victim.txt"])
def test_manifest_paths_outside_the_store_are_refused(tmp_path, hostile):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  store = LabelStore(tmp_path / "a" / "store")
  info = ShardInfo("mean", "x:Y", "0" * 64, "w", None, "v", "s", "/s", False)
  labels = Labels({"features": np.zeros((5, 3, 2, 2), np.float16), "cls": np.zeros((5, 3), np.float16)},
                  {"layer": 0}, CAM)
  store.write(info, np.arange(5), labels)
  doc = json.loads((store.root / "manifest.json").read_text())
  doc["shards"][0]["file"] = hostile.replace("/ABS", str(tmp_path))
  (store.root / "manifest.json").write_text(json.dumps(doc))
  with pytest.raises(ValueError, match="outside the store"):
    store.write(info, np.arange(5), labels)   # a relabel of the same frames
  with pytest.raises(ValueError, match="outside the store"):
    store.entries()
  assert victim.read_text() == "keep me"

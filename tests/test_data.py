"""Frame cache, targets, the student dataset (ground truth and pseudo labels), hard-example mining, stats."""
from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import CLASS_ID, IGNORE_ID
from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_rgb, warp_tables
from selfdrive.modeld_fair.model_io import LANE_X
from selfdrive.modeld_fair.outputs import decode_objects
from tools.fair.data import stats as stats_cli
from tools.fair.data.augment import Augment, AugmentConfig
from tools.fair.data.cache import FrameCache, build_frame_cache
from tools.fair.data.dataset import StudentDataset, build, split_indices
from tools.fair.data.mining import HardExampleSampler
from tools.fair.data.targets import (boxes_from_masks, centernet_targets, depth_grid, fill_lanes, lane_span,
                                     probs_grid, seg_grid)
from tools.fair.distill.trainer import collate  # the batching training uses
from tools.fair.labels.store import LabelStore, Labels, ShardInfo
from tools.fair.routes import Segment
from tools.fair.sim.gt import load_segment_scene
from tools.fair.sim.render import render_frame

MICI = "data/samples/fairsim-mici-city-s2--0"
TICI = "data/samples/fairsim-tici-cut_in-s1--0"
CONTRACT = {"img": (torch.uint8, (12, 128, 256)), "index": (torch.int64, ()), "depth": (torch.float32, (1, 32, 64)),
            "seg": (torch.int64, (64, 128)), "obj_heatmap": (torch.float32, (2, 32, 64)),
            "obj_box": (torch.float32, (4, 32, 64)), "obj_depth": (torch.float32, (1, 32, 64)),
            "obj_mask": (torch.float32, (1, 32, 64)), "lanes": (torch.float32, (4, 33, 2)),
            "lane_valid": (torch.float32, (4, 33)), "lane_exists": (torch.float32, (4,)), "ego": (torch.float32, (6,))}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """Two simulated segments, frames 0, 10, 20 of each (every=10: yuv_prev stored)."""
  out = tmp_path_factory.mktemp("cache")
  return build_frame_cache([MICI, TICI], out, scale=0.5, every=10, max_frames=3, progress=False)


@pytest.fixture(scope="module")
def cache1(tmp_path_factory):
  """every=1: the previous record is the previous video frame."""
  return build_frame_cache([TICI], tmp_path_factory.mktemp("cache1"), every=1, max_frames=2, instance=False,
                           progress=False)


# ---------------------------------------------------------------- cache

def test_cache_records_and_index(cache):
  assert len(cache) == 6
  mici, tici = Segment(MICI).content_id, Segment(TICI).content_id   # the cache keys segments by content id
  assert mici.startswith("fairsim-mici-city-s2--0@") and tici.startswith("fairsim-tici-cut_in-s1--0@")
  assert [(r.segment, r.frame_index, r.prev) for r in cache.records] == [
    (mici, 0, 0), (mici, 10, 0), (mici, 20, 1), (tici, 0, 3), (tici, 10, 3), (tici, 20, 4)]
  assert [r.camera for r in cache.records] == ["mici"] * 3 + ["tici"] * 3
  assert [r.scenario for r in cache.records] == ["city"] * 3 + ["cut_in"] * 3
  assert all(r.has_gt for r in cache.records)
  assert FrameCache(cache.root).records == cache.records


def test_cache_pixels_are_the_daemon_warp_and_gt_is_the_render(cache):
  seg = Segment(TICI)
  frames = {f.index: f for f in itertools.islice(seg.frames(), 11)}
  f = frames[10]
  rec = cache[4]
  np.testing.assert_array_equal(rec["yuv"], warp_model_input(f.nv12, warp_tables(seg.camera, f.calib_rpy)))
  np.testing.assert_array_equal(rec["yuv_prev"], warp_model_input(frames[9].nv12, warp_tables(seg.camera, f.calib_rpy)))
  cam = MEDMODEL.scaled(0.5)
  np.testing.assert_array_equal(rec["rgb"], warp_rgb(f.nv12, warp_tables(seg.camera, f.calib_rpy, cam, True)))
  r = render_frame(load_segment_scene(TICI), 10, cam, (0.0, 0.0, 0.0))
  np.testing.assert_array_equal(rec["semantic"], r.semantic)
  np.testing.assert_array_equal(rec["instance"], r.instance)
  np.testing.assert_allclose(rec["depth"].astype(np.float32), np.where(np.isfinite(r.depth), r.depth, 0), rtol=1e-3)
  assert rec["depth"].dtype == np.float16 and rec["rgb"].shape == (128, 256, 3) and rec["yuv"].shape == (6, 128, 256)
  n = int(rec["box_count"])
  assert n >= 1 and (rec["box_cls"][:n] >= 0).all() and (rec["box_cls"][n:] == -1).all()
  assert rec["lanes"].shape == (4, 33, 2) and rec["ego"].shape == (6,) and rec["ego"][0] > 1  # driving forward
  assert cache[3]["yuv_prev"] is not None and np.array_equal(cache[3]["yuv_prev"], cache[3]["yuv"])  # first: itself


def test_cache_every1_pairs_with_previous_record(cache1):
  assert [r.prev for r in cache1.records] == [0, 0]
  np.testing.assert_array_equal(cache1[1]["yuv_prev"], cache1[0]["yuv"])
  assert "instance" not in cache1.fields(0)


def test_cache_resume_and_config_mismatch(cache, tmp_path):
  shard = cache.root / cache.records[0].shard
  mtime = os.stat(shard).st_mtime_ns
  again = build_frame_cache([MICI, TICI], cache.root, scale=0.5, every=10, max_frames=3, progress=False)
  assert os.stat(shard).st_mtime_ns == mtime and again.records == cache.records
  with pytest.raises(ValueError, match="holds a cache built with"):
    build_frame_cache([MICI], cache.root, scale=0.5, every=5, max_frames=3, progress=False)
  with pytest.raises(FileNotFoundError, match="no frame cache"):
    FrameCache(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    build_frame_cache([tmp_path / "nope"], tmp_path / "c", progress=False)
  with pytest.raises(IndexError, match="out of range"):
    cache.read(99)


# ---------------------------------------------------------------- targets

def test_depth_grid_median_and_unknown():
  d = np.zeros((128, 256), np.float32)
  d[:4, :4] = [[1, 1, 1, 100]] * 4          # one cell: median 1 (a mean would say 25.75)
  d[4:8, :4] = 0
  d[4:8, :2] = 5                              # half known: kept
  d[8:12, :4] = np.inf
  d[8:10, :1] = 3                             # 2 of 16 known: unknown
  g = depth_grid(d)
  assert g.shape == (1, 32, 64) and g.dtype == np.float32
  assert g[0, 0, 0] == 1 and g[0, 1, 0] == 5 and g[0, 2, 0] == 0 and g[0, 5, 5] == 0
  big = np.full((256, 512), 7, np.float32)
  assert (depth_grid(big) == 7).all()


def test_seg_grid_majority_and_ignore():
  s = np.full((128, 256), IGNORE_ID, np.uint8)
  s[0:2, 0:2] = [[4, 4], [4, 0]]
  s[0:2, 2:4] = [[1, 0], [IGNORE_ID, IGNORE_ID]]  # tie -> lowest id
  g = seg_grid(s)
  assert g.shape == (64, 128) and g.dtype == np.int64
  assert g[0, 0] == 4 and g[0, 1] == 0 and g[1, 1] == IGNORE_ID
  p = np.zeros((8, 128, 256), np.float32)
  p[3] = 1
  assert np.allclose(probs_grid(p)[3], 1) and probs_grid(p).shape == (8, 64, 128)


def test_centernet_targets_decode_back():
  boxes = np.array([[100.5, 60.5, 180.5, 120.5], [300.5, 90.5, 310.5, 120.5]], np.float32)
  t = centernet_targets(boxes, np.array([0, 1]), np.array([12.0, 25.0]))
  assert t["obj_heatmap"].max() == 1 and t["obj_mask"].sum() == 2
  objs = decode_objects(t["obj_heatmap"], t["obj_box"], t["obj_depth"][0], score_threshold=0.99)
  got = sorted((o.box, o.position[0], o.class_id) for o in objs)
  assert len(got) == 2
  np.testing.assert_allclose(got[0][0], boxes[0], atol=1e-4)
  np.testing.assert_allclose(got[1][0], boxes[1], atol=1e-4)
  assert got[0][1] == pytest.approx(12.0) and got[1][2] == CLASS_ID["pedestrian"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-20, 530), st.floats(-20, 270), st.floats(2, 200), st.floats(2, 150),
                          st.integers(-1, 1), st.floats(0.5, 150)), max_size=6))
def test_centernet_target_invariants(objs):
  b = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in objs], np.float32).reshape(-1, 4)
  t = centernet_targets(b, np.array([o[4] for o in objs], np.int64), np.array([o[5] for o in objs]))
  assert ((t["obj_heatmap"] >= 0) & (t["obj_heatmap"] <= 1)).all()
  m = t["obj_mask"][0] > 0
  assert (t["obj_heatmap"].max(0)[m] == 1).all()
  assert (t["obj_box"] >= 0).all() and (t["obj_box"][:, ~m] == 0).all()
  assert (t["obj_depth"][0][m] > 0).all() and (t["obj_depth"][0][~m] == 0).all()
  assert m.sum() <= sum(o[4] >= 0 for o in objs)


def test_boxes_from_masks():
  sem = np.full((128, 256), CLASS_ID["road"], np.uint8)
  depth = np.full((128, 256), 30, np.float32)
  sem[40:50, 20:40] = CLASS_ID["vehicle"]
  depth[40:50, 20:40] = 12
  sem[60:70, 100:103] = CLASS_ID["pedestrian"]
  depth[60:70, 100:103] = 8
  b, c, d = boxes_from_masks(sem, depth)
  assert list(c) == [0, 1] and list(d) == [12, 8]
  np.testing.assert_allclose(b[0], [(20 - 0.5 + 0.5) * 2 - 0.5, 79.5, 79.5, 99.5])


# ---------------------------------------------------------------- dataset

def test_items_follow_the_batch_contract(cache):
  ds = StudentDataset(cache, use_gt=True)
  item = ds[2]
  assert set(item) == set(CONTRACT)
  for k, (dtype, shape) in CONTRACT.items():
    assert item[k].dtype == dtype and tuple(item[k].shape) == shape, k
  assert int(item["index"]) == 2
  rec = cache[2]
  np.testing.assert_array_equal(item["img"][6:].numpy(), rec["yuv"])
  np.testing.assert_array_equal(item["img"][:6].numpy(), rec["yuv_prev"])
  np.testing.assert_array_equal(item["seg"].numpy(), seg_grid(rec["semantic"]))
  np.testing.assert_array_equal(item["ego"].numpy(), rec["ego"])
  assert item["obj_mask"].sum() >= 1 and item["lane_exists"].sum() >= 1


def test_determinism_and_dataloader_workers(cache):
  ds = StudentDataset(cache, augment=AugmentConfig(), seed=3)
  a, b = ds[1], ds[1]
  for k in a:
    assert torch.equal(a[k], b[k]), k
  ds.set_epoch(1)
  assert not torch.equal(ds[1]["img"], a["img"])
  ds.set_epoch(0)
  loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate)
  batch = next(iter(loader))
  assert batch["img"].shape == (2, 12, 128, 256)
  assert torch.equal(batch["img"][1], a["img"]) and torch.equal(batch["depth"][1], a["depth"])


def _write_labels(root, cache, teacher, arrays_fn, camera, meta=None):
  store = LabelStore(root)
  for seg in cache.segments:
    recs = [r for r in cache.records if r.segment == seg]
    ids = np.arange(recs[0].frame_index, recs[-1].frame_index + 1)   # a store shard holds consecutive frames
    info = ShardInfo(teacher, "fake:Teacher", "0" * 64, "none", None, "test", seg, "", True)
    store.write(info, ids, Labels(arrays_fn(len(ids)), meta or {}, camera))
  return store


def test_pseudo_labels_only_no_ground_truth_leak(cache, tmp_path, monkeypatch):
  cam = MEDMODEL.scaled(0.5)

  def depth(n):
    d = np.full((n, 128, 256), 7, np.float16)
    d[:, 40:50, 20:40] = 11
    return {"depth": d}

  def seg(n):
    s = np.full((n, 128, 256), CLASS_ID["terrain"], np.uint8)
    s[:, 40:50, 20:40] = CLASS_ID["vehicle"]
    p = np.zeros((n, 8, 128, 256), np.float16)
    p[:, CLASS_ID["terrain"]] = 1
    return {"semantic": s, "probs": p}
  _write_labels(tmp_path, cache, "fake-depth", depth, cam)
  _write_labels(tmp_path, cache, "fake-seg", seg, cam)
  ds = StudentDataset(cache, labels=tmp_path, teachers={"depth": "fake-depth", "seg": "fake-seg"}, use_gt=False)
  real_read = FrameCache.read
  gt_fields = {"depth", "semantic", "instance", "lanes", "ego", "box_xyxy", "box_pos", "box_count"}

  def guarded(self, i, fields=None):
    assert fields is not None and not set(fields) & gt_fields, f"ground truth read: {fields}"
    return real_read(self, i, fields)
  monkeypatch.setattr(FrameCache, "read", guarded)
  for i in range(len(ds)):
    item = ds[i]
    assert "lanes" not in item and "ego" not in item
    d = item["depth"][0].numpy()
    assert set(np.unique(d)) == {7.0, 11.0}
    assert set(np.unique(item["seg"].numpy())) == {CLASS_ID["terrain"], CLASS_ID["vehicle"]}
    assert torch.allclose(item["seg_probs"][CLASS_ID["terrain"]], torch.ones(64, 128))
    # one pseudo box: the vehicle component, at the teacher's depth
    assert item["obj_mask"].sum() == 1 and item["obj_depth"].max() == 11
  with pytest.raises(ValueError, match="use_gt=False needs teachers"):
    StudentDataset(cache, use_gt=False)


def test_build_recipe_section_augments_the_training_cache(cache):
  from tools.fair.distill.recipe import DataSection
  section = DataSection(train=(str(cache.root),), val=(str(cache.root),), augment="photometric")
  tr, va = build(section, "train"), build(section, "val")
  assert isinstance(tr.augment, Augment) and tr.augment.config == AugmentConfig.named("photometric")
  assert va.augment is None and len(tr) == len(va) == len(cache)
  # the draw reaches the items: two epochs of one training item differ, the validation item does not
  a = tr[0]["img"].clone()
  tr.set_epoch(1)
  assert not torch.equal(a, tr[0]["img"])
  assert torch.equal(va[0]["img"], build(section, "val")[0]["img"])


def test_detector_boxes_get_a_distance(cache, tmp_path):
  """A detector labels boxes without positions (NaN): the depth teacher's median in the box gives their distance,
  and without a depth teacher the box's ground contact on the road at the segment's device height."""
  cam = MEDMODEL.scaled(0.5)
  store = LabelStore(tmp_path)
  for seg in cache.segments:
    recs = [r for r in cache.records if r.segment == seg]
    ids = np.arange(recs[0].frame_index, recs[-1].frame_index + 1)
    n = len(ids)
    det = {"boxes": np.tile(np.float32([99.5, 80.5, 139.5, 100.5]), (n, 1, 1)), "scores": np.ones((n, 1), np.float32),
           "class_ids": np.zeros((n, 1), np.int16), "count": np.ones(n, np.int32),
           "positions": np.full((n, 1, 3), np.nan, np.float32)}
    depth = np.full((n, 128, 256), 30, np.float16)
    depth[:, 81:101, 100:140] = 9
    path = str(Path(MICI if "mici" in seg else TICI).resolve())
    for teacher, arrays, meta in (("fake-detr", det, {"classes": ["car"]}), ("fake-depth", {"depth": depth}, {})):
      store.write(ShardInfo(teacher, "fake:Teacher", "0" * 64, "none", None, "test", seg, path, True), ids,
                  Labels(arrays, meta, cam))
  with_depth = StudentDataset(cache, labels=store, teachers={"detection": "fake-detr", "depth": "fake-depth"},
                              use_gt=False)
  ground = StudentDataset(cache, labels=store, teachers={"detection": "fake-detr"}, use_gt=False)
  for i in range(len(cache)):
    a, b = with_depth[i], ground[i]
    assert a["obj_mask"].sum() == 1 and a["obj_depth"].max() == 9
    height = load_segment_scene(Path(MICI if "mici" in cache.records[i].segment else TICI)).calib.height
    bottom = (100.5 + 0.5) * 2 - 0.5   # the box's bottom edge in MEDMODEL pixels
    assert b["obj_mask"].sum() == 1
    np.testing.assert_allclose(b["obj_depth"].max(), height * MEDMODEL.focal / (bottom - MEDMODEL.cy), rtol=1e-5)


def test_build_recipe_section_splits_off_a_val_fraction(cache):
  from tools.fair.distill.recipe import DataSection
  section = DataSection(train=(str(cache.root),), val_fraction=0.5, augment="default")
  tr, va = build(section, "train"), build(section, "val")
  assert tr.augment is not None and va.augment is None and len(tr) + len(va) == len(cache)
  assert not {tr.record(i).segment for i in range(len(tr))} & {va.record(i).segment for i in range(len(va))}
  assert build(DataSection(train=(str(cache.root),)), "val") is None


def test_build_splits_by_segment(cache):
  cfg = {"cache": str(cache.root), "labels": None, "teachers": {}, "use_gt": True, "augment": "default"}
  tr, va = build(cfg, "train"), build(cfg, "val")
  assert tr.augment is not None and va.augment is None
  segs_tr = {tr.record(i).segment for i in range(len(tr))}
  segs_va = {va.record(i).segment for i in range(len(va))}
  assert segs_tr and segs_va and not segs_tr & segs_va and len(tr) + len(va) == len(cache)
  assert len(build({**cfg, "augment": {"name": "photometric", "noise": 1.0}}, "all")) == len(cache)
  with pytest.raises(ValueError, match="needs 'cache'"):
    build({}, "train")
  with pytest.raises(ValueError, match="split must be"):
    split_indices(cache, "test")


# ---------------------------------------------------------------- mining

def test_hard_example_sampler_bounded_and_resumable(cache):
  s = HardExampleSampler(10, seed=1, max_ratio=3.0, fraction=0.5)
  assert len(list(iter(s))) == 10
  s.update(torch.arange(10), torch.tensor([1.0] * 9 + [1000.0]))
  w = s.weights()
  assert w.sum() == pytest.approx(1) and w.max() <= 3.0 / 10 + 1e-12 and w[9] == w.max()
  draws = np.concatenate([list(iter(s)) for _ in range(200)])
  assert 2.5 < (draws == 9).mean() * 10 <= 3.3   # over-drawn, but at most ~max_ratio x uniform
  state = s.state_dict()
  t = HardExampleSampler(10)
  t.load_state_dict(state)
  assert list(iter(t)) == list(iter(s))
  ds = StudentDataset(cache)
  s5 = HardExampleSampler(len(ds))
  s5.update([2], [5.0])
  md = s5.report(k=3, records=ds.record)
  assert "| 1 | 2 | 5 |" in md and f"{Segment(MICI).content_id} | 20 | city" in md
  with pytest.raises(ValueError, match="3 indices but 2 losses"):
    s5.update([0, 1, 2], [1.0, 2.0])


# ---------------------------------------------------------------- stats

def test_stats_cli_matches_direct_count(cache, tmp_path):
  out = tmp_path / "stats"
  args = argparse.Namespace(cache=cache.root, out=out, labels=None, teacher=[], no_gt=False)
  assert stats_cli.run(args) == 0
  for name in ("class_balance.png", "depth_hist.png", "objects_by_distance.png", "lane_visibility.png",
               "scenarios.png", "summary.md"):
    assert (out / name).stat().st_size > 0
  st_ = stats_cli.compute_stats(StudentDataset(cache))
  sem = np.stack([cache[i]["semantic"] for i in range(len(cache))])
  np.testing.assert_array_equal(st_.class_pixels, np.bincount(sem[sem < 8], minlength=8))
  vehicles = sum(int((cache[i]["box_cls"][:int(cache[i]["box_count"])] == 0).sum()) for i in range(len(cache)))
  assert st_.objects[0].sum() == vehicles
  assert st_.scenarios == {"city": 3, "cut_in": 3}
  md = (out / "summary.md").read_text()
  assert f"| road | {st_.class_pixels[0]} |" in md and "| city | 3 |" in md
  with pytest.raises(ValueError, match="TASK=NAME"):
    stats_cli.run(argparse.Namespace(cache=cache.root, out=out, labels=None, teacher=["depth"], no_gt=False))


def test_lane_span_and_fill_cover_the_points_between_and_below_the_dashes(tmp_path):
  # a curving line seen only on six points from 6.75 m on: the daemon publishes all 33 points, so every point up
  # to the farthest seen one is trained (before, only the visible dashes were and the rest was the head's noise)
  y = (1.8 + 0.002 * LANE_X ** 2).astype(np.float32)
  lanes = np.zeros((4, 33, 2), np.float32)
  seen = np.zeros((4, 33), np.uint8)
  seen[1, [6, 7, 8, 11, 12, 16]] = 1
  lanes[1, seen[1] > 0, 0] = y[seen[1] > 0]          # a pseudo label: values only where seen
  exists = np.array([0, 1, 0, 0])
  span = lane_span(seen, exists)
  assert span[1].tolist() == [1] * 17 + [0] * 16 and not span[[0, 2, 3]].any()
  filled = fill_lanes(lanes, seen, exists)
  assert filled[1, :6, 0] == pytest.approx([y[6]] * 6)                       # held below the image
  assert filled[1, 9:11, 0] == pytest.approx(np.interp(LANE_X[9:11], LANE_X[[8, 11]], y[[8, 11]]))
  assert filled[1, seen[1] > 0, 0] == pytest.approx(y[seen[1] > 0]) and not filled[[0, 2, 3]].any()
  one = np.zeros_like(seen)
  one[1, 10] = 1                                      # one point gives no direction: not trained
  assert not lane_span(one, exists).any()
  # ground truth is exact at every point: its dataset items train the whole span, its values untouched
  cache = build_frame_cache([MICI], tmp_path / "c", every=50, max_frames=1, instance=False, progress=False)
  g, item = cache.read(0), StudentDataset(cache)[0]
  want = lane_span(g["lane_visible"], g["lane_exists"])
  assert want.sum() > g["lane_visible"].sum()
  np.testing.assert_array_equal(item["lane_valid"].numpy(), want)
  np.testing.assert_array_equal(item["lanes"].numpy(), g["lanes"])

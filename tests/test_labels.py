"""`fair label` and the label store: tiny random teachers (save_pretrained folders, hub offline) label a short
generated mici segment; fake pair and video teachers exercise the (t, t+1) and clip paths."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402
from transformers import (DetrConfig, DetrForSegmentation, Dinov2Config, Dinov2Model, DPTConfig,  # noqa: E402
                          DPTForDepthEstimation, ResNetConfig)

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel  # noqa: E402
from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables  # noqa: E402
from tools.fair.cli import main  # noqa: E402
from tools.fair import files as files_mod  # noqa: E402
from tools.fair.labels.cli import parse_shard, partition, teacher_config  # noqa: E402
from tools.fair.labels.pipeline import LabelConfig, label_segments  # noqa: E402
from tools.fair.labels.store import CorruptShardError, Labels, LabelStore, ShardInfo, convert  # noqa: E402
from tools.fair.routes import Segment  # noqa: E402
from tools.fair.sim import make_scene  # noqa: E402
from tools.fair.sim.cli import write_segment  # noqa: E402
from tools.fair.teachers import (Detections, DptDepthConfig, FlowMaps, TeacherInput, Tracks,  # noqa: E402
                                 VideoMasks, WeightsInfo, load_teacher, teacher_class)

CAM = MEDMODEL.scaled(0.5)   # 256x128, the default label frame
N_FRAMES = 20                # 1 s at 20 fps
SHARD = ["--shard-frames", "8", "--batch", "3"]   # shards 0-7, 8-15, 16-19; batches straddle nothing
# DETR's COCO panoptic label space where it matters here (the rest "N/A")
PANOPTIC = {i: "N/A" for i in range(200)} | {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 6: "bus", 8: "truck",
                                            10: "traffic light", 13: "stop sign", 149: "road", 187: "sky-other-merged"}


def _dinov2(seed: int = 0):
  torch.manual_seed(seed)
  return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  patch_size=14, image_size=56))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A weights DIR with tiny random dinov2, dpt-depth (the official heads' layout) and detr-panoptic."""
  root = tmp_path_factory.mktemp("weights")
  _dinov2().save_pretrained(root / "dinov2")
  torch.manual_seed(1)
  backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], apply_layernorm=False,
                          reshape_hidden_states=False)
  dpt = DPTConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=256,
                  use_bias_in_fusion_residual=False, add_projection=True)
  DPTForDepthEstimation(dpt).save_pretrained(root / "dpt-depth")
  torch.manual_seed(2)
  resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                        out_features=["stage1", "stage2", "stage3", "stage4"])
  DetrForSegmentation(DetrConfig(backbone_config=resnet, id2label=PANOPTIC, use_timm_backbone=False,
                                 use_pretrained_backbone=False, d_model=64, encoder_layers=1, decoder_layers=1,
                                 encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=32,
                                 decoder_ffn_dim=32, num_queries=12)).save_pretrained(root / "detr-panoptic")
  return root


@pytest.fixture(scope="module")
def segment(tmp_path_factory) -> Path:
  """1 s of a generated comma-four (1344x760) city segment."""
  return write_segment(make_scene(3, N_FRAMES / 20, "mici", "city"), tmp_path_factory.mktemp("segs"), progress=False)


@pytest.fixture(scope="module")
def frames(segment) -> np.ndarray:
  """The segment's frames in the label frame, warped here independently of the pipeline."""
  seg = Segment(segment)
  return np.stack([warp_rgb(f.nv12, warp_tables(seg.camera, f.calib_rpy, CAM, full_chroma=True))
                   for f in seg.frames()])


def _label(segment, store, *extra, teachers="dinov2", weights=None) -> int:
  args = ["label", str(segment), "--teachers", teachers, "--out", str(store), "--quiet", *SHARD, *extra]
  return main(args + (["--weights", str(weights)] if weights else []))


class Counting:
  """A teacher proxy counting calls and frames; fail_at: raise on that call (a crash mid-run)."""

  def __init__(self, teacher, fail_at: int | None = None):
    self.teacher, self.fail_at, self.calls, self.frames = teacher, fail_at, 0, []

  def __getattr__(self, name):
    return getattr(self.teacher, name)

  def __call__(self, x):
    self.calls += 1
    if self.calls == self.fail_at:
      raise KeyboardInterrupt("killed")
    self.frames.append(len(x))
    return self.teacher(x)


def _cfg(**kw) -> LabelConfig:
  return LabelConfig(batch=3, shard_frames=8, **kw)


def _load(name, weights):
  return load_teacher(name, weights, config=teacher_config(teacher_class(name), CAM))


# ---- the CLI end to end

def test_label_cli_writes_shards_equal_to_direct_teacher_calls(weights, segment, frames, tmp_path):
  out = tmp_path / "store"
  assert _label(segment, out, teachers="dinov2,detr-panoptic", weights=weights) == 0
  store = LabelStore(out)
  doc = json.loads((out / "manifest.json").read_text())
  assert doc["version"] == 1 and len(doc["shards"]) == 6
  name = segment.name
  for e in store.entries():
    assert e.segment == name and e.segment_path == str(segment.resolve()) and e.camera == CAM
    assert e.weights_hash == _load(e.teacher, weights).weights.sha256 and e.weights_path == str(weights / e.teacher)
    assert e.model_id is None and e.teacher_class.startswith("tools.fair.teachers.") and "fairpilot" in e.code_version
    assert e.segment_id == f"{name}@{files_mod.sha256_file(Segment(segment).rlog_path)[:12]}"
    assert e.file == f"{e.teacher}/{e.segment_id}/{e.first:06d}-{e.last:06d}.safetensors" and e.path.is_file()
    assert e.frame_ids in ((0, 7, 8), (8, 15, 8), (16, 19, 4)) and e.final == (e.first == 16)
    assert e.sha256 == files_mod.sha256_file(e.path) and e.created.startswith("20")
    assert e.fields["frame_id"] == ("int64", (e.frame_ids[2],))
  assert store.segments("dinov2") == [e.segment_id] and store.camera("detr-panoptic", name) == CAM

  feats = store.read("dinov2", name)
  direct = _load("dinov2", weights)(frames)
  assert feats["features"].dtype == np.float16 and feats["features"].shape == (N_FRAMES, 32, 9, 18)
  assert np.array_equal(feats["frame_id"], np.arange(N_FRAMES))
  np.testing.assert_allclose(feats["features"].astype(np.float32), direct.features, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(feats["cls"].astype(np.float32), direct.cls, rtol=2e-3, atol=2e-3)
  assert store.meta("dinov2", name)[0] == {"layer": 2}

  pan = store.read("detr-panoptic", name)
  ref = _load("detr-panoptic", weights)(frames)
  assert pan["semantic"].dtype == np.uint8 and pan["instance"].dtype == np.int32
  assert np.array_equal(pan["semantic"], ref.semantic) and np.array_equal(pan["instance"], ref.instance)
  segments = [s for m in store.meta("detr-panoptic", name) for s in m["segments"]]
  assert len(segments) == N_FRAMES and [[s[0], s[1], s[4]] for s in segments[5]] == \
    [[s.instance, s.label, s.area] for s in ref.segments[5]]
  with pytest.raises(ValueError, match="no fields \\['probs'\\]"):
    store.read("detr-panoptic", name, fields=["probs"])
  with pytest.raises(ValueError, match="no labels of teacher 'detr'"):
    store.read("detr", name)


def test_depth_labels_equal_direct_teacher_calls(weights, segment, frames, tmp_path):
  # the DPT head is the costly one: a quarter-size network input keeps this fast
  teacher = load_teacher("dpt-depth", weights, config=DptDepthConfig(CAM, scale=0.25))
  store = LabelStore(tmp_path / "store")
  label_segments([segment], {"dpt-depth": teacher}, store, _cfg(), progress=False)
  depth = store.read("dpt-depth", segment.name, fields=["depth"])
  assert set(depth) == {"frame_id", "depth"} and depth["depth"].shape == (N_FRAMES, 128, 256)
  assert depth["depth"].dtype == np.float16 and store.camera("dpt-depth", segment.name) == CAM
  np.testing.assert_allclose(depth["depth"].astype(np.float32), teacher(frames).depth, rtol=2e-3)


def test_missing_weights_exit_2_naming_official_id(segment, tmp_path, capsys):
  assert _label(segment, tmp_path / "store", teachers="dpt-depth", weights=tmp_path) == 2
  err = capsys.readouterr().err
  assert "facebook/dpt-dinov2-small-kitti" in err and str(tmp_path / "dpt-depth") in err
  assert _label(segment, tmp_path / "store", teachers="sam9", weights=tmp_path) == 2
  assert "unknown teacher 'sam9'" in capsys.readouterr().err


def test_other_weights_are_refused_unless_overwrite(weights, segment, tmp_path, capsys):
  out = tmp_path / "store"
  assert _label(segment, out, weights=weights) == 0
  other = tmp_path / "other"
  _dinov2(seed=5).save_pretrained(other / "dinov2")
  assert _label(segment, out, weights=other) == 2
  assert "holds 'dinov2' labels made with weights" in capsys.readouterr().err
  assert _label(segment, out, "--overwrite", weights=other) == 0
  store = LabelStore(out)
  assert {e.weights_hash for e in store.entries()} == {_load("dinov2", other).weights.sha256}
  assert len(store.entries()) == 3 and len(list((out / "dinov2").rglob("*.safetensors"))) == 3


# ---- resume, corruption, crashes

def test_resume_skips_done_shards_and_relabels_corrupt_ones(weights, segment, tmp_path):
  store = LabelStore(tmp_path / "store")
  t = Counting(_load("dinov2", weights))
  r = label_segments([segment], {"dinov2": t}, store, _cfg(), progress=False)
  assert t.frames == [3, 3, 2, 3, 3, 2, 3, 1] and len(r.written) == 3 and r.labelled == {"dinov2": N_FRAMES}
  before = store.read("dinov2", segment.name)

  t.calls, t.frames = 0, []
  r = label_segments([segment], {"dinov2": t}, store, _cfg(), progress=False)
  assert t.calls == 0 and r.skipped_segments == 1 and r.frames == 0

  shard = store.entries()[1]
  data = bytearray(shard.path.read_bytes())
  data[-10] ^= 0xFF
  shard.path.write_bytes(bytes(data))
  with pytest.raises(CorruptShardError, match=str(shard.path)):
    store.read("dinov2", segment.name)
  store.read("dinov2", segment.name, verify=False)   # still parses: only the hash tells
  r = label_segments([segment], {"dinov2": t}, store, _cfg(), progress=False)
  assert t.frames == [3, 3, 2] and r.skipped_shards == 2 and [e.frame_ids for e in r.written] == [(8, 15, 8)]
  after = store.read("dinov2", segment.name)
  assert all(np.array_equal(before[k], after[k]) for k in before)

  store.entries()[2].path.unlink()
  with pytest.raises(CorruptShardError, match="missing"):
    store.read("dinov2", segment.name)
  t.frames = []
  label_segments([segment], {"dinov2": t}, store, _cfg(), progress=False)
  assert t.frames == [3, 1] and np.array_equal(store.read("dinov2", segment.name)["features"], before["features"])


def test_killed_run_loses_only_the_shard_in_flight(weights, segment, tmp_path):
  store = LabelStore(tmp_path / "store")
  with pytest.raises(KeyboardInterrupt):   # the 5th call is the second batch of shard 8-15
    label_segments([segment], {"dinov2": Counting(_load("dinov2", weights), fail_at=5)}, store, _cfg(),
                   progress=False)
  assert [e.frame_ids for e in store.entries()] == [(0, 7, 8)]
  assert [p.name for p in store.entries()[0].path.parent.iterdir()] == ["000000-000007.safetensors"]
  t = Counting(_load("dinov2", weights))
  label_segments([segment], {"dinov2": t}, store, _cfg(), progress=False)
  assert sum(t.frames) == 12 and len(store.read("dinov2", segment.name)["frame_id"]) == N_FRAMES


def test_crash_inside_a_write_leaves_no_partial_file_and_a_valid_manifest(weights, segment, tmp_path, monkeypatch):
  store = LabelStore(tmp_path / "store")
  teacher = _load("dinov2", weights)
  label_segments([segment], {"dinov2": teacher}, store, _cfg(), progress=False)
  shard = store.entries()[1].path
  shard.unlink()
  real = os.replace

  def crash_on(name):
    def replace(src, dst):
      if Path(dst).name == name:
        raise OSError("power cut")
      return real(src, dst)
    return replace

  # dying between writing the shard's bytes and renaming them: nothing under the shard's name, old manifest
  manifest = (store.root / "manifest.json").read_bytes()
  monkeypatch.setattr(files_mod.os, "replace", crash_on(shard.name))
  with pytest.raises(OSError, match="power cut"):
    label_segments([segment], {"dinov2": teacher}, store, _cfg(), progress=False)
  assert not shard.exists() and not list(shard.parent.glob(".*tmp*"))
  assert (store.root / "manifest.json").read_bytes() == manifest
  with pytest.raises(CorruptShardError, match="missing"):
    store.read("dinov2", segment.name)
  # dying while replacing the manifest: the old manifest stays whole and parseable
  monkeypatch.setattr(files_mod.os, "replace", crash_on("manifest.json"))
  with pytest.raises(OSError, match="power cut"):
    label_segments([segment], {"dinov2": teacher}, store, _cfg(overwrite=True), progress=False)
  assert (store.root / "manifest.json").read_bytes() == manifest and len(json.loads(manifest)["shards"]) == 3
  assert not list(store.root.glob(".*tmp*"))
  monkeypatch.setattr(files_mod.os, "replace", real)
  r = label_segments([segment], {"dinov2": teacher}, store, _cfg(), progress=False)
  assert [e.frame_ids for e in r.written] == [(8, 15, 8)]
  assert np.array_equal(store.read("dinov2", segment.name)["frame_id"], np.arange(N_FRAMES))


# ---- --shard i/N

@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("abcdef-0123456789", min_size=1, max_size=12), max_size=30), st.integers(1, 9))
def test_shard_partition_puts_every_segment_in_exactly_one_part(names, n):
  parts = [partition(names, i, n) for i in range(n)]
  flat = [s for p in parts for s in p]
  assert sorted(flat) == sorted(set(names))
  assert parts == [partition(list(reversed(names)), i, n) for i in range(n)]   # independent of the order given
  assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_parse_shard():
  assert parse_shard("3/8") == (3, 8)
  for bad in ("8/8", "-1/2", "1", "a/b"):
    with pytest.raises(ValueError, match="--shard"):
      parse_shard(bad)


def test_empty_part_labels_nothing(weights, segment, tmp_path, capsys):
  assert _label(segment, tmp_path / "s", "--shard", "1/2", weights=weights) == 0
  assert "has no segments" in capsys.readouterr().out and not (tmp_path / "s").exists()


def test_ranks_from_the_launcher_label_their_parts_into_one_store(weights, segment, tmp_path, monkeypatch, capsys):
  """Under torchrun / srun without --shard: each rank labels its part; the shared manifest holds both parts."""
  import shutil
  second = tmp_path / "segs" / "b"
  shutil.copytree(segment, second)   # another folder name: another segment id
  segs = sorted([str(segment), str(second)])
  store = tmp_path / "store"
  for rank, env in enumerate(({"RANK": "0", "WORLD_SIZE": "2"}, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})):
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    assert main(["label", *segs, "--teachers", "dinov2", "--out", str(store), "--quiet", *SHARD,
                 "--weights", str(weights), "--device", "cpu"]) == 0
    names = {e.segment for e in LabelStore(store).entries()}
    assert names == {Path(s).name for s in segs[:rank + 1]}   # rank r labelled segment r of the sorted list
    for k in env:
      monkeypatch.delenv(k)
  entries = LabelStore(store).entries()
  assert len(entries) == 6 and all(LabelStore(store).is_intact(e) for e in entries)
  # a rank started again (after a kill) finds its part done and labels nothing
  monkeypatch.setenv("RANK", "1")
  monkeypatch.setenv("WORLD_SIZE", "2")
  capsys.readouterr()
  assert main(["label", *segs, "--teachers", "dinov2", "--out", str(store), "--quiet", *SHARD,
               "--weights", str(weights), "--device", "cpu"]) == 0
  assert "0 shards written" in capsys.readouterr().out and LabelStore(store).entries() == entries


# ---- pair and video teachers

WEIGHTS = WeightsInfo("fake", Path("/nonexistent"), None, "0" * 64)


class PairTeacher:
  """Flow = green(t+1) - green(t) per pixel; occlusion where red(t) > 128: which pair went in is visible."""
  input = TeacherInput(CAM, clip=2)
  weights = WEIGHTS

  def __init__(self):
    self.batches = []

  def __call__(self, pairs):
    self.batches.append(pairs.shape)
    g = pairs[..., 1].astype(np.float32)
    flow = np.stack([g[:, 1] - g[:, 0], g[:, 0]], -1)
    return FlowMaps(flow, pairs[:, 0, ..., 0] > 128, CAM)


class VideoTeacher:
  """Tracks of 2 points: point 0 sits at (mean red, frame's first green pixel) of each frame of the clip."""
  input = TeacherInput(CAM, clip=0)
  weights = WEIGHTS

  def __init__(self):
    self.clips = []

  def __call__(self, clip):
    assert clip.shape[0] == 1
    self.clips.append(clip.shape[1])
    t = clip.shape[1]
    pts = np.zeros((t, 2, 2), np.float32)
    pts[:, 0, 0] = clip[0, ..., 0].mean((1, 2))
    pts[:, 0, 1] = clip[0, :, 0, 0, 1]
    return Tracks(pts, np.ones((t, 2), bool), CAM)


class MaskTeacher(VideoTeacher):
  """VideoMasks with as many objects as frames in the clip (clips of different K)."""
  def __call__(self, clip):
    t = clip.shape[1]
    inst = np.zeros((t, CAM.height, CAM.width), np.int32)
    inst[:, :4, :4] = 7
    return VideoMasks(inst, np.arange(1, t + 1, dtype=np.int32), np.ones((t, t), bool),
                      np.full((t, t), 0.5, np.float32), ("car",) * t, CAM)


def test_pair_and_video_teachers(segment, frames, tmp_path):
  store = LabelStore(tmp_path / "store")
  pair, video, masks = PairTeacher(), VideoTeacher(), MaskTeacher()
  label_segments([segment], {"flow": pair, "tracks": video, "masks": masks}, store, _cfg(), progress=False)
  assert [e.frame_ids for e in store.entries() if e.teacher == "flow"] == [(0, 7, 8), (8, 15, 8), (16, 18, 3)]
  assert [s[0] for s in pair.batches] == [3, 3, 2, 3, 3, 2, 3]   # the batch of frame 19 alone has no pair
  assert all(s[1:] == (2, 128, 256, 3) for s in pair.batches)
  flow = store.read("flow", segment.name)
  g = frames[..., 1].astype(np.float32)
  assert np.array_equal(flow["frame_id"], np.arange(N_FRAMES - 1)) and flow["flow"].dtype == np.float16
  np.testing.assert_array_equal(flow["flow"][..., 0], (g[1:] - g[:-1]).astype(np.float16))   # pair (t, t+1) at t
  assert np.array_equal(flow["occlusion"], (frames[:-1, ..., 0] > 128).astype(np.uint8))

  assert video.clips == [8, 8, 4]
  tracks = store.read("tracks", segment.name)
  assert tracks["points"].shape == (N_FRAMES, 2, 2) and tracks["visible"].dtype == np.uint8
  np.testing.assert_allclose(tracks["points"][:, 0, 0], frames[..., 0].mean((1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(tracks["points"][:, 0, 1], frames[:, 0, 0, 1])

  m = store.read("masks", segment.name)
  assert m["presence"].shape == (N_FRAMES, 8) and m["presence"][16:, 4:].sum() == 0   # 4-object clip padded
  assert m["instance"][:, 0, 0].tolist() == [7] * N_FRAMES
  assert [x["ids"] for x in store.meta("masks", segment.name)] == [list(range(1, 9))] * 2 + [[1, 2, 3, 4]]

  # resume: nothing is called again, the pair teacher's shorter final shard counts as the end
  pair.batches, video.clips = [], []
  r = label_segments([segment], {"flow": pair, "tracks": video}, store, _cfg(), progress=False)
  assert r.skipped_segments == 1 and pair.batches == [] and video.clips == []


def test_pair_teacher_when_the_last_shard_is_one_frame(segment, tmp_path):
  store = LabelStore(tmp_path / "store")
  pair = PairTeacher()
  cfg = LabelConfig(batch=4, shard_frames=19)   # shards 0-18 and 19: frame 19 has no pair
  label_segments([segment], {"flow": pair}, store, cfg, progress=False)
  assert [(e.frame_ids, e.final) for e in store.entries()] == [((0, 18, 19), True)]
  pair.batches = []
  assert label_segments([segment], {"flow": pair}, store, cfg, progress=False).skipped_segments == 1
  assert pair.batches == []


# ---- converters and the store alone

def test_detections_are_padded_with_class_indices(tmp_path):
  dets = [Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32), np.array([0.9, 0.8], np.float32),
                     ("car", "person"), np.array([3, 1]), np.array([[10, 1, 0], [np.nan] * 3], np.float32)),
          Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), (), np.zeros(0, np.int64), None)]
  lab = convert(dets, CAM)
  a = lab.arrays
  assert a["boxes"].shape == (2, 2, 4) and a["class_ids"].dtype == np.int16 and a["count"].tolist() == [2, 0]
  assert a["class_ids"].tolist() == [[0, 5], [-1, -1]] and lab.meta["classes"][5] == "person"
  assert np.isnan(a["positions"][1]).all() and a["positions"][0, 0].tolist() == [10, 1, 0]
  with pytest.raises(ValueError, match="'car'.*not in the teacher's class list"):
    convert(dets, CAM, classes=("truck",))
  # shards with different K read back padded to the larger K
  store = LabelStore(tmp_path)
  info = ShardInfo("det", "x:Y", "h", "p", None, "v", "seg", "/seg", False)
  store.write(info, [0, 1], lab)
  bus = Detections(np.ones((3, 4), np.float32), np.ones(3, np.float32), ("bus",) * 3, np.array([6] * 3), None)
  one = convert([bus], CAM)
  store.write(info, [2], one)
  r = store.read("det", "seg")
  assert r["class_ids"].shape == (3, 3) and r["class_ids"][0].tolist() == [0, 5, -1]
  assert r["class_ids"][2].tolist() == [2] * 3
  assert r["count"].tolist() == [2, 0, 3] and np.isnan(r["boxes"][0, 2]).all()


def test_store_rejects_bad_shards_and_replaces_overlaps(tmp_path):
  store = LabelStore(tmp_path)
  info = ShardInfo("t", "x:Y", "h", "p", None, "v", "seg", "/seg", False)
  tiny = CameraModel("tiny", 2, 2, 1.0, 0.5, 0.5)
  lab = Labels({"depth": np.ones((4, 2, 2), np.float16)}, {}, tiny)
  with pytest.raises(ValueError, match="consecutive"):
    store.write(info, [0, 1, 3, 4], lab)
  with pytest.raises(ValueError, match="expected 3 frames"):
    store.write(info, [0, 1, 2], lab)
  store.write(info, [0, 1, 2, 3], lab)
  store.write(info, [4, 5, 6, 7], lab)
  store.write(info, [2, 3, 4, 5], Labels({"depth": np.zeros((4, 2, 2), np.float16)}, {}, tiny))   # other shard size
  assert [e.frame_ids for e in store.entries()] == [(2, 5, 4)]
  assert sorted(p.name for p in (tmp_path / "t" / "seg").iterdir()) == ["000002-000005.safetensors"]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    LabelStore(tmp_path / "nope").entries()
  with pytest.raises(ValueError, match="no label-store converter for str"):
    convert("x", CAM)


@pytest.mark.slow
@pytest.mark.parametrize("sample", sorted((Path(__file__).parents[1] / "data" / "samples").glob("fairsim-*")))
def test_label_bundled_samples(weights, sample, tmp_path):
  assert _label(sample, tmp_path / "store", "--shard-frames", "100", "--batch", "8", weights=weights) == 0
  d = LabelStore(tmp_path / "store").read("dinov2", sample.name)
  assert np.array_equal(d["frame_id"], np.arange(200)) and np.isfinite(d["features"]).all()

"""`fair label` with every teacher family at once: tiny random checkpoints of each in one weights DIR (the builders
of the families' own tests), one call on a generated 1 s mici segment, every teacher's shards verified against the
store contract, and a second call that finds everything done. Also the CLI's --teacher-opt parsing, SAM 2's
prompter route and the trackers' default query grid."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before huggingface_hub reads it: nothing may be downloaded

from dataclasses import asdict  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

# builders only (module-level fixtures of these modules are not imported, so they never run here); importing
# test_trackers also puts .venv/extern (Meta's cotracker package) on sys.path when it is there
from test_flow import TINY  # noqa: E402
from test_teachers import BUILDERS  # noqa: E402
from test_teachers_sam import _clip_tokenizer, _sam2, _sam3  # noqa: E402
from test_trackers import EXTERN, HAVE_COTRACKER, _translating  # noqa: E402

from selfdrive.modeld_fair.camera import MEDMODEL  # noqa: E402
from tools.fair.cli import main  # noqa: E402
from tools.fair.files import sha256_file  # noqa: E402
from tools.fair.flow.model import FlowNet  # noqa: E402
from tools.fair.labels.cli import parse_teacher_opts, teacher_config  # noqa: E402
from tools.fair.labels.store import LabelStore  # noqa: E402
from tools.fair.sim import make_scene  # noqa: E402
from tools.fair.sim.cli import write_segment  # noqa: E402
from tools.fair.teachers import Detections, teacher_class  # noqa: E402
from tools.fair.teachers.cotracker import CHECKPOINT, CoTrackerConfig  # noqa: E402
from tools.fair.teachers.dinov2_seg import HeadConfig, LinearSegHead, save_head  # noqa: E402
from tools.fair.teachers.lk_tracker import LKConfig, LKTracker, grid_queries, params_hash  # noqa: E402
from tools.fair.teachers.sam2 import Sam2TeacherConfig, nonempty  # noqa: E402
from tools.fair.teachers.sam3 import Sam3TeacherConfig  # noqa: E402

CAM = MEDMODEL.scaled(0.5)   # 256x128, the default label frame
N_FRAMES = 20                # 1 s at 20 fps: shards 0-7, 8-15, 16-19
FAMILIES = ["dinov2", "dinov3", "dpt-depth", "detr", "detr-panoptic", "dinov2-seg", "sam2", "sam3", "flow", "lk",
            "cotracker"]
# CPU-sized options: a window-4 CoTracker at 64x128, coarse query grids, few SAM 2 objects, DETR at the frame size
OPTS = ["detr.scale=1", "detr-panoptic.scale=1", "sam2.prompter=detr", "sam2.max_objects=3", "lk.grid=4,8",
        "cotracker.grid=2,4", "cotracker.window_len=4", "cotracker.resolution=64,128", "cotracker.support_grid=false"]
FIELDS = {   # the store contract (docs/labels.md) of each family's output type
  "dinov2": {"features", "cls"}, "dinov3": {"features", "cls"}, "dpt-depth": {"depth"},
  "detr": {"boxes", "scores", "class_ids", "count", "positions"}, "detr-panoptic": {"semantic", "instance"},
  "dinov2-seg": {"semantic", "probs"}, "sam2": {"instance", "presence", "scores"},
  "sam3": {"instance", "presence", "scores"}, "flow": {"flow", "occlusion"}, "lk": {"points", "visible"},
  "cotracker": {"points", "visible"},
}


@pytest.fixture(scope="module")
def one_thread():
  """Single-threaded torch: these tiny models are faster so on a busy 2-core machine; restored afterwards."""
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _build_weights(root, families):
  for name in families:
    torch.manual_seed(0)
    if name in BUILDERS:
      model = BUILDERS[name]()
      if name == "detr":   # every query says "car" (COCO id 3) with score ~1: boxes for SAM 2 to track
        model.class_labels_classifier.bias.data[3] = 10.0
      model.save_pretrained(root / name)
    elif name == "dinov2-seg":
      Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               patch_size=14, image_size=56)).save_pretrained(root / name)
      save_head(LinearSegHead(HeadConfig(32, (1, 2), CAM.focal)).eval(), root / name)
    elif name == "sam2":
      _sam2().save_pretrained(root / name)
    elif name == "sam3":
      _sam3().save_pretrained(root / name)
      _clip_tokenizer().save_pretrained(root / name)
    elif name == "flow":
      FlowNet(TINY).save(root / name, {"camera": asdict(CAM)})
    elif name == "cotracker":
      from tools.fair.teachers.cotracker import online_predictor_class
      (root / name).mkdir()
      torch.save(online_predictor_class()(checkpoint=None, window_len=4).model.state_dict(), root / name / CHECKPOINT)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, one_thread):
  """A weights DIR with a tiny random checkpoint of every family in its official layout (lk needs none)."""
  root = tmp_path_factory.mktemp("weights")
  _build_weights(root, [f for f in FAMILIES if f != "lk" and (f != "cotracker" or HAVE_COTRACKER)])
  return root


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  """1 s of a generated comma-four (1344x760) city segment."""
  return write_segment(make_scene(3, N_FRAMES / 20, "mici", "city"), tmp_path_factory.mktemp("segs"), progress=False)


def _label(segment, store, weights, teachers, *extra) -> int:
  return main(["label", str(segment), "--teachers", ",".join(teachers), "--weights", str(weights), "--out", str(store),
               "--quiet", "--shard-frames", "8", "--batch", "4", *extra])


def test_every_family_labels_a_segment_and_resumes(weights, segment, tmp_path, capsys, one_thread):
  families = [f for f in FAMILIES if f != "cotracker" or HAVE_COTRACKER]
  if not HAVE_COTRACKER:   # labelled without it; said loudly rather than skipping the whole test
    print(f"cotracker not labelled: Meta's cotracker package is not in {EXTERN}")
  opts = [x for o in OPTS if o.split(".")[0] in families for x in ("--teacher-opt", o)]
  out = tmp_path / "store"
  assert _label(segment, out, weights, families, *opts) == 0
  first = capsys.readouterr().out
  assert f"{N_FRAMES} frames decoded" in first and "0 already done" in first
  store = LabelStore(out)
  entries = store.entries()
  assert sorted({e.teacher for e in entries}) == sorted(families)
  for name in families:
    shards = store.shards(name, segment.name)
    want = [(0, 7), (8, 15), (16, 18)] if name == "flow" else [(0, 7), (8, 15), (16, 19)]
    assert [(e.first, e.last) for e in shards] == want, name
    for e in shards:
      assert e.sha256 == sha256_file(e.path) and e.camera == CAM and e.final == (e.first == 16)
      assert set(e.fields) == FIELDS[name] | {"frame_id"}, name
    d = store.read(name, segment.name)   # verify=True: every shard's sha256 against the manifest
    n = len(d["frame_id"])
    assert np.array_equal(d["frame_id"], np.arange(n)) and n == (N_FRAMES - 1 if name == "flow" else N_FRAMES)
    for k in FIELDS[name] - {"positions", "boxes", "points"}:   # NaN only where the contract pads or has none
      assert np.isfinite(d[k].astype(np.float32)).all(), (name, k)

  # value checks per output type
  assert store.read("dpt-depth", segment.name)["depth"].shape == (N_FRAMES, 128, 256)
  det = store.read("detr", segment.name)
  assert (det["count"] > 0).all() and (det["class_ids"][det["scores"] > 0] == 0).all()   # "car" is class 0
  for name, (rows, cols) in (("lk", (4, 8)), ("cotracker", (2, 4))):
    if name not in families:
      continue
    tr = store.read(name, segment.name)
    assert tr["points"].shape == (N_FRAMES, rows * cols, 2)
    for first in (0, 8, 16):   # each shard is one clip, tracked from its first frame's grid
      assert np.array_equal(tr["points"][first], grid_queries((rows, cols), CAM)[:, 1:]) and tr["visible"][first].all()
  assert store.shards("lk", segment.name)[0].weights_hash == params_hash(LKConfig(CAM, grid=(4, 8)))
  for name in ("sam2", "sam3"):
    vm, meta = store.read(name, segment.name), store.meta(name, segment.name)
    assert all(len(m["ids"]) >= 1 and set(m["ids"]) >= set(np.unique(vm["instance"][e.first:e.last + 1])) - {0}
               for m, e in zip(meta, store.shards(name, segment.name)))
    assert vm["presence"].any() and vm["instance"].max() > 0
  sam2 = store.meta("sam2", segment.name)
  assert all(1 <= len(m["ids"]) <= 3 and set(m["labels"]) == {"car"} for m in sam2)   # prompted by DETR's cars
  detr_hash = store.shards("detr", segment.name)[0].weights_hash
  assert store.shards("sam2", segment.name)[0].options == {
    "max_objects": "3", "prompter": "detr", "prompter.weights_hash": detr_hash, "prompter.scale": "1"}
  assert all("options" in d for d in json.loads((out / "manifest.json").read_text())["shards"])

  # the same call again: every shard is found intact, nothing is decoded or written
  manifest = (out / "manifest.json").read_bytes()
  assert _label(segment, out, weights, families, *opts) == 0
  again = capsys.readouterr().out
  assert "0 frames decoded" in again and "0 shards written" in again and "1 segments complete" in again
  assert (out / "manifest.json").read_bytes() == manifest

  # other options for a teacher are refused, as other weights are (lk's grid is part of its weights hash)
  assert _label(segment, out, weights, ["detr"], "--teacher-opt", "detr.scale=0.5") == 2
  assert "'detr' labels made with options {'scale': '1'}; these are {'scale': '0.5'}" in capsys.readouterr().err
  assert _label(segment, out, weights, ["lk"], "--teacher-opt", "lk.grid=2,2") == 2
  assert "'lk' labels made with weights" in capsys.readouterr().err


def test_sam2_without_prompts_is_a_clear_error(tmp_path, capsys):
  _build_weights(tmp_path, ["sam2"])
  assert main(["label", str(tmp_path), "--teachers", "sam2", "--weights", str(tmp_path), "--out",
               str(tmp_path / "s")]) == 2
  assert "teacher 'sam2' needs box prompts: add --teacher-opt sam2.prompter=detr" in capsys.readouterr().err
  assert main(["label", str(tmp_path), "--teachers", "sam2", "--weights", str(tmp_path), "--out", str(tmp_path / "s"),
               "--teacher-opt", "sam2.prompter=dinov2"]) == 2
  assert "sam2.prompter=dinov2: not a detection teacher" in capsys.readouterr().err


def test_teacher_opts_parse_by_field_type():
  opts = parse_teacher_opts(["cotracker.resolution=64,128", "sam2.prompter=detr", "detr.threshold=0.5",
                             "sam3.prompts=car, bus", "lk.fb_max_px=2"], ["cotracker", "sam2", "sam3", "lk"])
  assert opts == {"cotracker": {"resolution": "64,128"}, "sam2": {"prompter": "detr"}, "sam3": {"prompts": "car, bus"},
                  "lk": {"fb_max_px": "2"}, "detr": {"threshold": "0.5"}}
  cot = teacher_config(teacher_class("cotracker"), CAM, {"resolution": "64,128", "support_grid": "false",
                                                         "grid": "3,5"})
  assert cot == CoTrackerConfig(CAM, resolution=(64, 128), support_grid=False, grid=(3, 5))
  assert teacher_config(teacher_class("cotracker"), CAM, {"resolution": "none"}).resolution is None
  assert teacher_config(teacher_class("sam3"), CAM, {"prompts": "car, bus"}) == Sam3TeacherConfig(CAM, ("car", "bus"))
  assert teacher_config(teacher_class("sam2"), CAM) == Sam2TeacherConfig(CAM)
  for bad, match in ((["x=1"], "NAME.FIELD=VALUE"), (["dinov2.layer"], "NAME.FIELD=VALUE"),
                     (["detr.scale=1"], "neither in --teachers")):
    with pytest.raises(ValueError, match=match):
      parse_teacher_opts(bad, ["lk"])
  for opts_, match in (({"grid": "8"}, "expected 2 comma-separated"), ({"win_size": "big"}, "'big' is not a"),
                       ({"camera": "x"}, "has no option 'camera'"), ({"nope": "1"}, "has no option 'nope'")):
    with pytest.raises(ValueError, match=match):
      teacher_config(LKTracker, CAM, opts_)
  with pytest.raises(ValueError, match="cannot be set from the command line"):
    teacher_config(teacher_class("sam2"), CAM, {"prompter": "detr"})   # the CLI resolves prompters itself


def test_trackers_query_a_grid_without_queries():
  q = grid_queries((2, 4), CAM)
  assert q.shape == (8, 3) and (q[:, 0] == 0).all()
  assert np.array_equal(np.unique(q[:, 1]), [31.5, 95.5, 159.5, 223.5])
  assert np.array_equal(np.unique(q[:, 2]), [31.5, 95.5])
  with pytest.raises(ValueError, match="rows, cols"):
    grid_queries((0, 3), CAM)
  frames = _translating(4)
  lk = LKTracker.load(LKTracker.resolve_weights(), config=LKConfig(CAM, grid=(2, 4)))
  np.testing.assert_array_equal(lk(frames[None]).points, lk(frames[None], q).points)


def test_prompter_boxes_of_no_area_are_dropped():
  dets = Detections(np.array([[-0.5, 3, -0.5, 9], [1, 2, 5, 6]], np.float32), np.array([0.9, 0.8], np.float32),
                    ("car", "bus"), np.array([3, 6]), None)
  kept = nonempty(dets)
  assert kept.boxes.tolist() == [[1, 2, 5, 6]] and kept.classes == ("bus",) and kept.coco_ids.tolist() == [6]
  assert nonempty(kept) is kept

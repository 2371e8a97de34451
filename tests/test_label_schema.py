"""The label schema: the store refuses shards that do not match their kind, the dataset refuses a recipe teacher
whose labels are missing or of another kind; each with one line naming the teacher, the key and the shape."""
import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL
from tools.fair.data.dataset import StudentDataset
from tools.fair.labels import schema
from tools.fair.labels.store import Labels, LabelStore, ShardInfo

CAM = MEDMODEL.scaled(0.25)   # 128x64


def _info(teacher):
  return ShardInfo(teacher, "x:Y", "0" * 64, "p", None, "v", "seg", "", True)


def _depth(n=2, shape=(64, 128), dtype=np.float16):
  return {"depth": np.ones((n, *shape), dtype)}


def test_every_converter_kind_is_in_the_schema():
  assert schema.kind_of(["depth"], "x") == "depth"
  assert schema.kind_of(["semantic", "probs"], "x") == "semantic" and schema.kind_of(["semantic"], "x") == "semantic"
  assert schema.kind_of(["semantic", "instance"], "x") == "panoptic"
  assert schema.kind_of(["boxes", "scores", "class_ids", "count", "positions", "frame_id"], "x") == "detection"
  assert schema.kind_of(["points", "visible"], "x") == "tracks"
  assert schema.kind_of(["lanes", "visible", "exists"], "x") == "lanes"
  with pytest.raises(ValueError, match=r"^teacher 't': arrays \['depht'\] match no label schema"):
    schema.kind_of(["depht"], "teacher 't'")


def test_store_writes_through_the_schema(tmp_path):
  store = LabelStore(tmp_path)
  store.write(_info("d"), [0, 1], Labels(_depth(), {}, CAM))
  with pytest.raises(ValueError, match=r"^teacher 'd': depth key 'depth' is float16 \(N, 128, 256\), "
                                       r"expected float16 \(N, 64, 128\)$"):
    store.write(_info("d"), [0, 1], Labels(_depth(shape=(128, 256)), {}, CAM))
  with pytest.raises(ValueError, match=r"depth key 'depth' is float32 \(N, 64, 128\), expected float16"):
    store.write(_info("d"), [0, 1], Labels(_depth(dtype=np.float32), {}, CAM))
  bad = {"lanes": np.zeros((2, 4, 33, 2), np.float32), "visible": np.zeros((2, 4, 32), np.uint8),
         "exists": np.zeros((2, 4), np.uint8)}
  with pytest.raises(ValueError, match=r"^teacher 'l': lanes key 'visible' is uint8 \(N, 4, 32\), expected uint8 "
                                       r"\(N, 4, 33\)$"):
    store.write(_info("l"), [0, 1], Labels(bad, {}, CAM))
  assert [e.teacher for e in store.entries()] == ["d"]   # nothing of the refused shards was kept


def test_dataset_checks_recipe_teachers_at_load(tmp_path):
  from tools.fair.data.cache import build_frame_cache
  cache = build_frame_cache(["data/samples/fairsim-tici-cut_in-s1--0"], tmp_path / "cache", scale=0.25,
                            max_frames=1, instance=False, progress=False)
  store = LabelStore(tmp_path / "labels")
  store.write(_info("d"), [0, 1], Labels(_depth(), {}, CAM))
  assert len(StudentDataset(cache, labels=store, teachers={"depth": "d"}, use_gt=False)) == 1
  with pytest.raises(ValueError, match=r"has no labels of teacher 'dpt' \(task depth; has: d\)$"):
    StudentDataset(cache, labels=store, teachers={"depth": "dpt"}, use_gt=False)
  with pytest.raises(ValueError, match=r"^label store teacher 'd' \(lanes\), d/seg/000000-000001.safetensors: holds "
                                       r"depth labels, task 'lanes' reads lanes$"):
    StudentDataset(cache, labels=store, teachers={"lanes": "d"}, use_gt=False)
  # a store written before the schema (or edited by hand): its manifest's fields are checked too
  import json
  doc = json.loads((store.root / "manifest.json").read_text())
  doc["shards"][0]["fields"]["depth"] = ["float16", [2, 32, 64]]
  (store.root / "manifest.json").write_text(json.dumps(doc))
  with pytest.raises(ValueError, match=r"depth key 'depth' is float16 \(N, 32, 64\), expected float16 \(N, 64, 128\)"):
    StudentDataset(cache, labels=store, teachers={"depth": "d"}, use_gt=False)

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cereal_ext import FairOutput, decode, encode
from selfdrive.modeld_fair.model_io import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES, OUTPUTS
from selfdrive.modeld_fair.outputs import check_finite, decode_outputs
from tools.fair.students import build_student, fold_bn, model_stats, student_config
from tools.fair.files import sha256_file
from tools.fair.students.export import export_student, ort_session

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "selfdrive/modeld_fair/models/student.onnx"
torch.set_num_threads(1)


def seeded(name: str, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  return build_student(student_config(name)).eval()


def random_img(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
  return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_configs():
  assert student_config("nano").name == "nano" and student_config("small").name == "small"
  with pytest.raises(ValueError, match="tiny"):
    student_config("tiny")


@pytest.mark.parametrize("name", ["nano", "small"])
def test_outputs_follow_the_contract(name):
  cfg = student_config(name)
  model = seeded(name)
  lo, hi = cfg.depth_range
  with torch.no_grad():
    for img in (random_img(), np.zeros(INPUT_SHAPE, np.uint8), np.full(INPUT_SHAPE, 255, np.uint8)):
      out = {k: v.numpy() for k, v in model(torch.from_numpy(img)).items()}
      assert list(out) == list(OUTPUT_NAMES)
      for k, (shape, _) in OUTPUTS.items():
        assert out[k].shape == shape and out[k].dtype == np.float32, k
      assert check_finite(out) is None
      for k in ("depth", "obj_depth"):
        assert lo * (1 - 1e-6) <= out[k].min() and out[k].max() <= hi * (1 + 1e-6)
      for k in ("obj_heatmap", "lane_prob"):
        assert 0 <= out[k].min() and out[k].max() <= 1
      assert out["obj_box"].min() >= 0


def test_sizes():
  nano, small = model_stats(seeded("nano")), model_stats(seeded("small"))
  assert 0.3e9 <= nano.flops <= 0.8e9 and nano.params < 1.5e6
  assert 1e9 <= small.flops <= 2e9 and small.params < 8e6


def test_trains_on_a_batch():
  model = seeded("nano").train()
  out = model(torch.randint(0, 256, (2, *INPUT_SHAPE[1:]), dtype=torch.uint8))
  assert out["lanes"].shape == (2, *OUTPUTS["lanes"][0][1:])
  sum(v.mean() for v in out.values()).backward()
  assert all(p.grad is not None for p in model.parameters())


def test_same_seed_same_weights():
  a, b, c = seeded("nano", 0).state_dict(), seeded("nano", 0).state_dict(), seeded("nano", 1).state_dict()
  assert all(torch.equal(a[k], b[k]) for k in a)
  assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fold_bn_keeps_outputs():
  model = seeded("nano")
  g = torch.Generator().manual_seed(1)
  for m in model.modules():  # non-trivial statistics, as after training
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
      m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
  folded = fold_bn(copy.deepcopy(model))
  assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
  img = torch.from_numpy(random_img(2))
  with torch.no_grad():
    ref, got = model(img), folded(img)
  for k in OUTPUT_NAMES:
    assert rel_err(got[k].numpy(), ref[k].numpy()) < 1e-4, k


def test_export_is_deterministic_folded_and_matches_torch(tmp_path):
  meta = export_student("nano", 0, tmp_path / "student.onnx")  # raises unless onnxruntime matches torch
  m = onnx.load(str(tmp_path / "student.onnx"))
  assert "BatchNormalization" not in {n.op_type for n in m.graph.node}
  assert [i.name for i in m.graph.input] == [INPUT_NAME] and [o.name for o in m.graph.output] == list(OUTPUT_NAMES)
  assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
  # the same seed gives the same weights
  export_student("nano", 0, tmp_path / "again.onnx")
  weights = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
  again = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "again.onnx")).graph.initializer}
  assert weights.keys() == again.keys() and all(np.array_equal(weights[k], again[k]) for k in weights)
  assert meta["model_id"] == "fairpilot-student-nano-random-init-seed0" and meta["trained"] is False
  assert json.loads((tmp_path / "student.json").read_text()) == meta


def _sample_depth_abs_rel(onnx_path: Path, n: int = 8) -> float:
  """Depth AbsRel (<= 80 m) of an ONNX student on the first n frame pairs of the bundled mici sample (a segment no
  student was trained on), against the generator's depth reduced to the student's grid as in training."""
  from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_tables
  from tools.fair.bench.metrics.depth import depth_metrics
  from tools.fair.data.targets import depth_grid
  from tools.fair.routes import Segment
  from tools.fair.samples import sample_paths
  from tools.fair.sim.gt import render_gt
  path = next(p for p in sample_paths() if "mici" in p.name)
  seg, sess = Segment(path), ort_session(onnx_path)
  preds, gts, prev = [], [], None
  for f in seg.frames():
    if f.index >= n:
      break
    cur = warp_model_input(f.nv12, warp_tables(seg.camera, f.calib_rpy))
    img = np.concatenate([cur if prev is None else prev, cur])[None]
    prev = cur
    preds.append(dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {INPUT_NAME: img})))["depth"][0, 0])
    gts.append(depth_grid(render_gt(path, f.index, "model").depth)[0])
  gt = np.stack(gts)
  return depth_metrics(np.stack(preds), gt, valid=gt > 0).abs_rel


def test_bundled_model_is_the_trained_student(tmp_path):
  meta = json.loads(BUNDLED.with_suffix(".json").read_text())
  assert BUNDLED.stat().st_size < 8 << 20
  assert meta["sha256"] == sha256_file(BUNDLED)
  assert meta["trained"] is True and meta["model_id"] == "fairpilot-student-nano-trained-seed0"
  prov = meta["provenance"]
  assert "tools.fair.experiments.transfer --preset full" in prov["command"] and prov["config"]["name"] == "nano"
  assert meta["input"]["name"] == INPUT_NAME and meta["input"]["shape"] == list(INPUT_SHAPE)
  assert [(o["name"], tuple(o["shape"])) for o in meta["outputs"]] == [(k, s) for k, (s, _) in OUTPUTS.items()]
  # it has learnt: on a sample segment it never saw, its depth is far closer to the truth than the untrained
  # student's of the same architecture
  export_student("nano", 0, tmp_path / "untrained.onnx")
  trained, untrained = _sample_depth_abs_rel(BUNDLED), _sample_depth_abs_rel(tmp_path / "untrained.onnx")
  assert trained < 0.5 * untrained, (trained, untrained)
  # the daemon's path: check, decode, fill the metadata, encode
  raw = dict(zip(OUTPUT_NAMES, ort_session(BUNDLED).run(list(OUTPUT_NAMES), {INPUT_NAME: random_img(3)})))
  assert check_finite(raw) is None
  out = replace(decode_outputs(raw, score_threshold=0.05), frame_id=1, model_id=meta["model_id"],
                model_hash=bytes.fromhex(meta["sha256"]))
  assert isinstance(out, FairOutput)
  back = decode(encode(out))
  assert back.model_id == meta["model_id"] and len(back.objects) == len(out.objects)

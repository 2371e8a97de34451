"""Quantization-aware training: `[quant] qat = true` in a recipe, fake quantization from step N, resume, and
`fair export RUN --format onnx-int8` writing the run's QDQ graph that onnxruntime runs."""
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
from tools.fair.distill.checkpoint import CheckpointManager
from tools.fair.distill.qat import FAKE_QUANT_PREFIX
from tools.fair.distill.recipe import LossConfig, OptimSection, QuantSection, Recipe, RunSection, recipe_from_dict
from tools.fair.distill.synthetic import SyntheticDataset
from tools.fair.distill.trainer import DistillationTrainer, build_model
from tools.fair.export import cli
from tools.fair.export.precision import attention_nodes
from tools.fair.samples import sample_paths

torch.set_num_threads(1)


def qat_recipe(out, steps):
  return Recipe(name="qat", optim=OptimSection(lr=3e-3, warmup_steps=1, batch_size=2, steps=steps),
                run=RunSection(out=str(out), keep_last=2), quant=QuantSection(qat=True, start_step=1),
                loss=LossConfig(weights={"seg": 1.0, "depth": 1.0}))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("qat") / "run"
  r = qat_recipe(out, 3)
  tr = DistillationTrainer(r, build_model(r), SyntheticDataset(6), SyntheticDataset(2, seed=1), progress=False)
  assert not tr.qat_active
  res = tr.fit(max_steps=1)
  assert res.step == 1 and not tr.qat_active      # step 0 trains the float student
  res = tr.fit()
  assert res.step == 3 and tr.qat_active          # fake quantization from step 1 on
  return out, r


def test_quant_section_is_typed_and_checked():
  r = recipe_from_dict({"quant": {"qat": True, "start_step": 100}}, "q")
  assert r.quant == QuantSection(qat=True, start_step=100)
  for table, msg in [({"quant": {"start_step": -1}}, r"\[quant\] start_step: must be >= 0"),
                     ({"quant": {"qat": "yes"}}, r"\[quant\] qat: expected bool"),
                     ({"quant": {"qat": True}, "dora": {"enabled": True}}, r"\[quant\] qat: does not combine with \[dora\]"),
                     ({"quant": {"qat": True}, "optim": {"ema_decay": 0.9}}, "ema_decay"),
                     ({"quant": {"bits": 4}}, r"unknown key\(s\) \['bits'\]")]:
    with pytest.raises(ValueError, match=msg):
      recipe_from_dict(table, "q")


def test_qat_checkpoints_fake_quantization_and_resumes_into_it(qat_run):
  out, r = qat_run
  mgr = CheckpointManager(out)
  state, _ = mgr.load(mgr.latest())
  scales = [k for k in state if k.startswith(FAKE_QUANT_PREFIX) and k.endswith(".scale")]
  assert scales and all(torch.isfinite(state[k]).all() and (state[k] > 0).all() for k in scales)
  r4 = replace(r, optim=replace(r.optim, steps=4))
  tr = DistillationTrainer(r4, build_model(r4), SyntheticDataset(6), SyntheticDataset(2, seed=1), progress=False)
  assert tr.resume() and tr.step == 3 and tr.qat_active
  after = {k: v.clone() for k, v in tr.model.state_dict().items()}
  assert all(torch.equal(after[k], state[k]) for k in state)   # the learnt quantization came back exactly
  assert tr.fit().step == 4


@pytest.mark.slow
def test_qat_run_exports_a_qdq_onnx_that_onnxruntime_runs(qat_run, tmp_path):
  out, _ = qat_run
  meta = cli.export(out, "onnx-int8", out=tmp_path / "int8", segments=sample_paths()[:1])
  assert meta["precision"] == "int8" and meta["calibration"]["method"] == "qat"
  path = tmp_path / "int8" / "student.onnx"
  m = onnx.load(str(path))
  ops = [n.op_type for n in m.graph.node]
  assert ops.count("QuantizeLinear") > 20 and "BatchNormalization" not in ops
  weights = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8}
  assert len(weights) >= 50                                      # the convs' weights are stored in int8
  q_in = {i for n in m.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
  att = [n for n in m.graph.node if n.name in set(attention_nodes(m))]
  assert {"MatMul", "Div"} <= {n.op_type for n in att}
  assert not any(set(n.output) & q_in for n in att if n.op_type in ("MatMul", "Div"))  # the attention stays float
  assert path.stat().st_size < cli.BUNDLE_DIR.joinpath("student.onnx").stat().st_size / 2.5
  v = meta["verification"]["generated"]
  assert all(c["ok"] and c["finite"] for c in v.values())
  got = OnnxRuntimeRunner(path).run(np.zeros((1, 12, 128, 256), np.uint8))
  assert all(np.isfinite(x).all() for x in got.values())

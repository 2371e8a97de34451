"""`fair export RUN --format ...`: from a training checkpoint to verified artifacts, FP16 safety, INT8, TensorRT."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from selfdrive.modeld_fair.model_io import OUTPUT_NAMES
from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
from tools.fair.distill.checkpoint import CheckpointManager
from tools.fair.export import cli
from tools.fair.export.frames import image_inputs, segment_inputs
from tools.fair.export.precision import attention_nodes, float_nodes, to_fp16, to_int8
from tools.fair.export.tensorrt import check_graph, trt_graph
from tools.fair.files import sha256_file
from tools.fair.samples import sample_paths
from tools.fair.students import build_student, student_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "selfdrive/modeld_fair/models/student.onnx"
# real road images live beside the checkout (never in it: licences); FAIRPILOT_SHARED points elsewhere
_SHARED = Path(os.environ.get("FAIRPILOT_SHARED", ROOT.parent / "shared"))
REAL = next((p for p in (_SHARED / "data/real", ROOT.parents[1] / "shared/data/real") if p.is_dir()), None)
torch.set_num_threads(1)


def make_run(path: Path, seed: int) -> Path:
  """A `fair train` run folder with one checkpoint (step 7) of a seeded nano student."""
  torch.manual_seed(seed)
  CheckpointManager(path).save(7, build_student(student_config("nano")).state_dict(), {}, {"recipe": "tiny"})
  return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("runs") / "tiny", 0)


@pytest.fixture(scope="module")
def exported(run_dir):
  before = bundle_state()
  meta = cli.export(run_dir, "onnx", segments=sample_paths()[:1])
  assert bundle_state() == before
  return meta


@pytest.fixture(scope="module")
def generated():
  return segment_inputs(sample_paths(), 3, 11, 5)


def bundle_state():
  return {p.name: sha256_file(p) for p in BUNDLED.parent.iterdir() if p.is_file()}


def test_onnx_export_from_checkpoint_is_verified_and_never_touches_the_bundle(run_dir, exported):
  meta = exported
  out = run_dir / "export" / meta["model_id"]
  assert json.loads((out / "student.json").read_text()) == meta
  digest = sha256_file(out / "student.onnx")
  assert meta["model_id"] == f"fairpilot-student-nano-tiny-step7-onnx-{digest[:12]}"
  assert meta["sha256"] == meta["artifact_sha256"] == digest and meta["provenance"]["step"] == 7
  v = meta["verification"]
  assert v["frames"]["generated"] > 0 and set(v["generated"]) == set(OUTPUT_NAMES)
  assert all(c["ok"] and c["max_rel"] <= 1e-4 for c in v["generated"].values())
  assert OnnxRuntimeRunner(out / "student.onnx").model_id == meta["model_id"]  # the daemon reads the same id


def test_exports_of_different_weights_get_different_ids(exported, tmp_path):
  other = cli.export(make_run(tmp_path / "tiny", 1), "onnx", out=tmp_path / "b", segments=sample_paths()[:1])
  assert (tmp_path / "b" / "student.onnx").is_file() and not (tmp_path / "tiny" / "export").exists()
  a, b = exported["model_id"], other["model_id"]
  assert a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]


@pytest.mark.slow
def test_fp16_export_is_verified(run_dir, tmp_path):
  meta = cli.export(run_dir, "onnx-fp16", out=tmp_path / "fp16", real=REAL)
  assert meta["precision"] == "fp16"
  m = onnx.load(str(tmp_path / "fp16" / "student.onnx"))
  assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
  assert all(c["max_rel"] <= 1e-2 for s in meta["verification"]["frames"] for c in meta["verification"][s].values())


def test_bundled_student_fp16_matches_fp32_on_real_and_generated_frames(tmp_path, generated):
  """FP16 safety of the shipped student: no overflow, no NaN, every output within 1e-2 of FP32 (max abs error
  over max |FP32|)."""
  sets = {"generated": generated, **({"real": image_inputs(REAL)} if REAL else {})}
  fp32, fp16 = OnnxRuntimeRunner(BUNDLED), OnnxRuntimeRunner(to_fp16(BUNDLED, tmp_path / "fp16.onnx"))
  for name, x in sets.items():
    checks = cli.compare(cli.runner_outputs(fp16, x), cli.runner_outputs(fp32, x), cli.GATES["fp16"])
    assert all(c.finite for c in checks.values()), name
    assert all(c.max_rel <= 1e-2 for c in checks.values()), (name, checks)


_TINYGRAD_FP16_CHECK = """
import sys, numpy as np
from selfdrive.modeld_fair.runner import OnnxRuntimeRunner, TinygradRunner
from tools.fair.export import cli
frames = np.load(sys.argv[3])
for name in frames.files:
  x = frames[name]
  checks = cli.compare(cli.runner_outputs(TinygradRunner(sys.argv[2]), x),
                       cli.runner_outputs(OnnxRuntimeRunner(sys.argv[1]), x), cli.GATES["fp16"])
  for k, c in checks.items():
    print(name, k, c.finite, c.max_rel)
"""


@pytest.mark.slow
def test_bundled_student_tinygrad_fp16_matches_fp32_on_real_and_generated_frames(tmp_path, generated):
  """tinygrad FLOAT16=1 (with IMAGE=2, as the comma device build) on CPU: no overflow, no NaN, every output within
  1e-2 of onnxruntime FP32 on real and generated frames."""
  env = {**os.environ, **cli.tinygrad_env("CPU", half=True)}
  pkl = tmp_path / "student_fp16.pkl"
  subprocess.run([sys.executable, "-m", "selfdrive.modeld_fair.compile_model", str(BUNDLED), str(pkl)], env=env,
                 check=True, cwd=ROOT, capture_output=True)
  np.savez(tmp_path / "frames.npz", generated=generated, **({"real": image_inputs(REAL)} if REAL else {}))
  out = subprocess.run([sys.executable, "-c", _TINYGRAD_FP16_CHECK, str(BUNDLED), str(pkl), str(tmp_path / "frames.npz")],
                       env=env, check=True, cwd=ROOT, capture_output=True, text=True).stdout.split()
  rows = [out[i:i + 4] for i in range(0, len(out), 4)]
  assert {r[0] for r in rows} == {"generated", *(["real"] if REAL else [])} and len(rows) % len(OUTPUT_NAMES) == 0
  for name, output, finite, rel in rows:
    assert finite == "True" and float(rel) <= 1e-2, (name, output, rel)


def test_int8_is_qdq_keeps_output_layers_float_and_agrees(tmp_path, generated):
  q = to_int8(BUNDLED, tmp_path / "int8.onnx", segment_inputs(sample_paths(), 4, 3, 0), "minmax")
  m = onnx.load(str(q))
  ops = {n.op_type for n in m.graph.node}
  assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearConv" not in ops
  q_in = {i for n in m.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
  keep = set(float_nodes(onnx.load(str(BUNDLED))))
  kept = [n for n in m.graph.node if n.name in keep]
  tails = [n for n in kept if n.op_type in ("Exp", "Sigmoid", "Add")]  # depth / heatmap / lane_prob tails
  assert tails and not any(set(n.output) & q_in for n in tails)  # their results are never requantized
  att = [n for n in m.graph.node if n.name in set(attention_nodes(onnx.load(str(BUNDLED))))]
  assert {"MatMul", "Div", "ReduceSum"} <= {n.op_type for n in att} and "Conv" not in {n.op_type for n in att}
  assert not any(set(n.output) & q_in for n in att if n.op_type in ("MatMul", "Div"))  # attention stays float
  assert q.stat().st_size < BUNDLED.stat().st_size / 3
  checks = cli.compare(cli.runner_outputs(OnnxRuntimeRunner(q), generated),
                       cli.runner_outputs(OnnxRuntimeRunner(BUNDLED), generated), cli.GATES["int8"])
  assert all(c.ok for c in checks.values()), checks


def test_tensorrt_support_list_accepts_the_student_and_catches_what_it_lacks():
  m = onnx.load(str(BUNDLED))
  assert check_graph(m) == ["img: type UINT8 unsupported"]
  assert check_graph(trt_graph(m)) == []
  bad = onnx.helper.make_model(onnx.helper.make_graph(
    [onnx.helper.make_node("IsInf", ["x"], ["y"], name="inf")], "g",
    [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
    [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, [1])]), opset_imports=[onnx.helper.make_opsetid("", 18)])
  assert check_graph(bad) == ["opset 18 > 17", "IsInf inf: not supported"]


def test_tensorrt_without_tensorrt_stops_with_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
  try:
    import tensorrt  # noqa: F401
    pytest.skip("TensorRT is installed here")
  except ImportError:
    pass
  assert cli.main([str(run_dir), "--format", "tensorrt", "--out", str(tmp_path / "trt")]) == 2
  err = capsys.readouterr().err.strip()
  assert err == "fair export: error: TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
  assert not (tmp_path / "trt").exists()


@pytest.mark.parametrize("args, message", [
  (["{tmp}/none"], "no such run folder"),
  (["{tmp}"], "no valid checkpoint"),
  (["{run}", "--format", "tinygrad", "--bundle"], "--bundle takes an ONNX format"),
])
def test_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys, args, message):
  argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1

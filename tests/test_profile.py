"""`fair profile`: exact counts on hand-made nets, the roofline, the op census, torch vs ONNX agreement, the CLI."""
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tools.fair.cli import main
from tools.fair.profile import (ADRENO_630, SCENARIOS, Scenario, estimate, kernels, onnx_graph, ort_latency, profile,
                                profile_graph, roofline_s, trace_torch)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "selfdrive/modeld_fair/models/student.onnx"
MACS = 8 * 8 * 32 * 16 * 9                       # Conv 3x3 16 -> 32 on 8x8, 'same' padding
CONV_BYTES = 4 * (16 * 64 + 32 * 16 * 9 + 32 * 64)  # fp32: input + weight + output
RELU_BYTES = 4 * (32 * 64 * 2)


def save(tmp_path: Path, nodes, inputs, outputs, inits, name="m.onnx") -> Path:
  m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                        opset_imports=[helper.make_opsetid("", 17)])
  onnx.checker.check_model(m)
  onnx.save(m, tmp_path / name)
  return tmp_path / name


@pytest.fixture
def conv_onnx(tmp_path):
  w = numpy_helper.from_array(np.zeros((32, 16, 3, 3), np.float32), "conv.weight")
  return save(tmp_path, [helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[1, 1, 1, 1]),
                         helper.make_node("Relu", ["c"], ["y"])],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], [w])


def test_conv_counts_onnx_and_torch_alike(conv_onnx):
  torch_g = trace_torch(torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.ReLU()),
                        torch.zeros(1, 16, 8, 8))
  for g in (onnx_graph(conv_onnx), torch_g):
    conv, relu = g.layers
    assert (conv.op, conv.macs, conv.flops) == ("Conv", MACS, 2 * MACS)
    assert (relu.op, relu.macs, relu.flops) == ("Relu", 0, 32 * 64)
    assert (g.nbytes(conv), g.nbytes(relu)) == (CONV_BYTES, RELU_BYTES)
    assert g.nbytes(conv, fp16=True) == CONV_BYTES // 2 and g.params == 32 * 16 * 9
    # fused: relu joins the conv, whose output then never reaches memory
    assert kernels(g, fused=False) == [(2 * MACS, CONV_BYTES // 2), (32 * 64, RELU_BYTES // 2)]
    assert kernels(g, fused=True) == [(2 * MACS + 32 * 64, (CONV_BYTES + RELU_BYTES) // 2 - 2 * 2 * 32 * 64)]
  assert onnx_graph(conv_onnx).layers[0].name == "conv" and torch_g.layers[0].name == "0"


def test_roofline_and_estimate(conv_onnx):
  s = Scenario("t", compute_eff=0.3, bw_eff=0.6, launch_us=30.0, fused=False)
  peak, bw = ADRENO_630.peak_gflops * 1e9 * 0.3, ADRENO_630.dram_gbps * 1e9 * 0.6
  assert ADRENO_630.peak_gflops == 1454.0 and ADRENO_630.dram_gbps == 29.9
  assert roofline_s(peak * 1e-3, 1000, ADRENO_630, s) == pytest.approx(1e-3)      # compute-bound: 1 ms
  assert roofline_s(10, bw * 2e-3, ADRENO_630, s) == pytest.approx(2e-3)          # memory-bound: 2 ms
  g = onnx_graph(conv_onnx)
  e = estimate(g, s)
  want = max(2 * MACS / peak, CONV_BYTES / 2 / bw) + max(32 * 64 / peak, RELU_BYTES / 2 / bw)
  assert e.kernels == 2 and e.roofline_ms == pytest.approx(want * 1e3) and e.ms == pytest.approx(e.roofline_ms + 0.06)


def test_gemm_matmul_census_and_free_views(tmp_path):
  inits = [numpy_helper.from_array(np.array([4, 6], np.int64), "shape"),
           numpy_helper.from_array(np.zeros((6, 5), np.float32), "mm.weight"),
           numpy_helper.from_array(np.zeros((3, 5), np.float32), "fc.weight"),
           numpy_helper.from_array(np.zeros(3, np.float32), "fc.bias")]
  nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "mm.weight"], ["m"]),
           helper.make_node("Gemm", ["m", "fc.weight", "fc.bias"], ["y"], transB=1)]
  g = onnx_graph(save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits))
  assert [(layer.op, layer.macs) for layer in g.layers] == [("Reshape", 0), ("MatMul", 4 * 5 * 6), ("Gemm", 4 * 3 * 5)]
  assert g.nbytes(g.layers[0]) == 0 and g.params == 6 * 5 + 3 * 5 + 3   # int64 shape constant is no parameter
  p = profile_graph("t", "test", g)
  assert p.census == {"Reshape": 1, "MatMul": 1, "Gemm": 1} and [r.op for r in p.layers] == ["MatMul", "Gemm"]
  assert all(e.kernels == 2 for e in p.estimates)   # the view launches nothing


def test_dynamic_shapes_are_refused(tmp_path):
  path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [])
  with pytest.raises(ValueError, match="static shape"):
    onnx_graph(path)


@pytest.fixture(scope="module")
def nano():
  return profile("nano", iters=0)


def test_torch_and_onnx_paths_agree_on_the_bundled_nano(nano):
  onnx_p = profile(str(BUNDLED), iters=0)
  assert nano.macs == onnx_p.macs and "(equal)" in nano.check and "(equal)" in onnx_p.check   # == model_stats
  assert nano.flops == pytest.approx(onnx_p.flops, rel=0.01)
  assert nano.bytes_fp32 == pytest.approx(onnx_p.bytes_fp32, rel=0.01)
  assert nano.params == pytest.approx(onnx_p.params, rel=0.02)   # the exporter drops the zero conv biases
  kernel_ops = {op: n for op, n in nano.census.items() if op not in {"Reshape", "Expand", "Transpose", "Slice"}}
  assert kernel_ops == {op: n for op, n in onnx_p.census.items() if op not in {"Reshape", "Transpose", "Slice"}}
  for a, b in zip(nano.estimates, onnx_p.estimates):
    assert a.kernels == b.kernels and a.ms == pytest.approx(b.ms, rel=0.02)
  lo, nom, hi = (nano.estimate(s.name).ms for s in SCENARIOS)
  assert lo < nom < hi


def test_ort_latency_is_measured_and_leaves_the_cores(nano):
  cores = os.sched_getaffinity(0)
  p50, p99 = ort_latency(BUNDLED, threads=1, iters=3, warmup=1)
  assert 0 < p50 <= p99 and os.sched_getaffinity(0) == cores


def test_cli_writes_report_and_json(tmp_path, capsys):
  report, js = tmp_path / "r" / "profile.md", tmp_path / "p.json"
  assert main(["profile", "nano", "--iters", "0", "--top", "3", "--report", str(report), "--json", str(js)]) == 0
  out = capsys.readouterr().out
  assert "nano: torch trace" in out and f"wrote {report}" in out
  text = report.read_text()
  for s in ("- machine:", "`fair profile nano --top 3 --threads 1 --iters 0 --report", "### nano", "Top 3 by FLOPs",
            "727 GFLOPS FP32 (public figure, not measured)", "29.9 GB/s", "| pessimistic | 15% | 40% | 50 | no |"):
    assert s in text, s
  data = json.loads(js.read_text())
  (p,) = data["profiles"]
  assert p["model"] == "nano" and p["macs"] > 0 and p["ort_p50_ms"] is None and len(p["estimates"]) == 3
  assert data["device"]["dram_gbps"] == 29.9 and data["budget_ms"]["target"] == 10.0
  assert main(["profile", "tiny", "--iters", "0"]) == 2

"""FP16 and INT8 (QDQ) conversions of the FP32 student ONNX, both keeping the uint8 input and float32 outputs of
the model_io contract so every runner loads them unchanged.

INT8 keeps in float what 8 bits cannot carry (`float_nodes`, each choice measured per node in
docs/benchmarks/precision.md):
- the linear attention cores (`attention_nodes`: ReLU kernels, the K^T V MatMuls, the normaliser's ReduceSum and the
  Div, from the qkv convs' outputs to the projection conv's input). A ratio of two quantized sums is where 8 bits
  break: with them quantized, the attention output of the last stage has an SQNR of -7 dB against FP32 (it is
  noise) and held-out depth AbsRel moves +5.8 %; kept float, +0.6 %. They are < 1 % of the FLOPs and hold no weights.
- every dense head's last Conv and the activations after each head's last Conv/Gemm. The depth heads map a sigmoid
  to log-depth over [0.5, 300] m, so 256 levels there are 2.5 % steps in metres (the goal is 1 %); box sizes and
  lane offsets are regressions in pixels / metres with long tails. Those convs are < 1 % of the FLOPs and weights.
  The global head's Gemms (lanes, lane_prob, ego) are quantized and only their outputs stay float.
Activations are asymmetric uint8 by default (ReLU outputs are non-negative: a symmetric int8 scale wastes half its
levels); `symmetric=True` gives int8 activations with zero point 0, which TensorRT's QuantizeLinear requires
(biases then stay float: TensorRT dequantizes only int8). Weights are symmetric int8, per tensor by default
(3.6x smaller than FP32 where per output channel gives 3.3x: the scales and zero points per channel; on the
bundled nano per channel is closer on vehicle IoU, docs/benchmarks/precision.md); `per_channel=True` for that.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from selfdrive.modeld_fair.model_io import INPUT_NAME, OUTPUT_NAMES

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
HEAD_OPS = ("Conv", "Gemm", "MatMul")


def to_fp16(src: Path, dst: Path) -> Path:
  """`src` with every float tensor in float16 except the graph's input and outputs (onnxruntime's converter)."""
  from onnxruntime.transformers.float16 import convert_float_to_float16
  m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
  onnx.save(m, str(dst))
  return dst


def _consumers(m: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
  out: dict[str, list[onnx.NodeProto]] = {}
  for n in m.graph.node:
    for i in n.input:
      out.setdefault(i, []).append(n)
  return out


def attention_nodes(m: onnx.ModelProto) -> list[str]:
  """Names of the linear attention cores: every node joined to a MatMul through nodes other than Conv/Gemm."""
  producer, consumers = {o: n for n in m.graph.node for o in n.output}, _consumers(m)
  keep: set[str] = set()
  stack = [n for n in m.graph.node if n.op_type == "MatMul"]
  while stack:
    n = stack.pop()
    if n.name in keep or n.op_type in ("Conv", "Gemm"):
      continue
    keep.add(n.name)
    stack += [producer[i] for i in n.input if i in producer] + [c for o in n.output for c in consumers.get(o, [])]
  return sorted(keep)


def float_nodes(m: onnx.ModelProto, attention: bool = True) -> list[str]:
  """The nodes INT8 keeps in float: the attention cores (unless attention=False, the variant that measures why
  they stay float) and, from each output back to its first Conv/Gemm/MatMul, every node (that one included when
  a Conv)."""
  producer = {o: n for n in m.graph.node for o in n.output}
  att = attention_nodes(m)
  keep: list[str] = list(att)
  for out in OUTPUT_NAMES:
    stack = [producer[out]]
    while stack:
      n = stack.pop()
      if n.name in keep:
        continue
      if n.op_type not in HEAD_OPS:
        keep.append(n.name)
        stack += [producer[i] for i in n.input if i in producer]
      elif n.op_type == "Conv":
        keep.append(n.name)
  return keep if attention else [n for n in keep if n not in set(att)]


class _Frames:
  """onnxruntime's CalibrationDataReader over (N, 12, 128, 256) uint8 frame pairs."""

  def __init__(self, frames: np.ndarray):
    self.frames, self.i = frames, 0

  def get_next(self):
    if self.i >= len(self.frames):
      return None
    self.i += 1
    return {INPUT_NAME: self.frames[self.i - 1][None]}

  def rewind(self):
    self.i = 0


def to_int8(src: Path, dst: Path, frames: np.ndarray, method: str, symmetric: bool = False,
            per_channel: bool = False, float_attention: bool = True) -> Path:
  """Static QDQ INT8 of `src`, calibrated with `method` on `frames`; float_attention: see float_nodes."""
  from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
  from onnxruntime.quantization.shape_inference import quant_pre_process
  if method not in CALIBRATION_METHODS:
    raise ValueError(f"unknown calibration method {method!r} (known: {', '.join(CALIBRATION_METHODS)})")
  with tempfile.TemporaryDirectory() as d:
    pre = Path(d) / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), _Frames(frames), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    nodes_to_exclude=float_nodes(onnx.load(str(pre)), float_attention),
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": not symmetric},  # TensorRT dequantizes int8 only
                    calibration_providers=["CPUExecutionProvider"])
  return dst

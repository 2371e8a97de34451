"""FP16 and INT8 (QDQ) conversions of the FP32 student ONNX, both keeping the uint8 input and float32 outputs of
the model_io contract so every runner loads them unchanged.

INT8 keeps in float what 8 bits cannot carry (`float_nodes`): every dense head's last Conv and the activations
after each head's last Conv/Gemm. The depth heads map a sigmoid to log-depth over [0.5, 300] m, so 256 levels there are 2.5 % steps in
metres (the goal is 1 %); box sizes and lane offsets are regressions in pixels / metres with long tails. Those
convs are < 1 % of the FLOPs and weights. The global head's Gemms (lanes, lane_prob, ego) hold a fifth of all
weights: they are quantized (per output channel) and only their outputs stay float; keeping them float was measured
to give no better lanes / ego agreement for 2.1x instead of 3x smaller files.
Weights are symmetric int8 per output channel. Activations are asymmetric uint8 by default (ReLU outputs are
non-negative: a symmetric int8 scale wastes half its levels; measured on the bundled nano, lanes / ego cosine to
FP32 0.96 vs 0.92); `symmetric=True` gives int8 activations with zero point 0, which TensorRT's QuantizeLinear
requires (biases then stay float: TensorRT dequantizes only int8).
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


def float_nodes(m: onnx.ModelProto) -> list[str]:
  """Names of the nodes from each output back to its first Conv/Gemm/MatMul, that node included when a Conv."""
  producer = {o: n for n in m.graph.node for o in n.output}
  keep: list[str] = []
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
  return keep


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


def to_int8(src: Path, dst: Path, frames: np.ndarray, method: str, symmetric: bool = False) -> Path:
  """Static QDQ INT8 of `src` (per-channel weights), calibrated with `method` on `frames`."""
  from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
  from onnxruntime.quantization.shape_inference import quant_pre_process
  if method not in CALIBRATION_METHODS:
    raise ValueError(f"unknown calibration method {method!r} (known: {', '.join(CALIBRATION_METHODS)})")
  with tempfile.TemporaryDirectory() as d:
    pre = Path(d) / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), _Frames(frames), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    nodes_to_exclude=float_nodes(onnx.load(str(pre))),
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": not symmetric},  # TensorRT dequantizes int8 only
                    calibration_providers=["CPUExecutionProvider"])
  return dst

"""TensorRT: check a graph against TensorRT's documented ONNX support (any machine), build an engine where
TensorRT's Python API is installed.

The support list (`tensorrt_onnx_ops.tsv`, TensorRT 8.5, opsets <= 17) is kept in the repository with its source,
so an unsupported operator, a constant TensorRT needs as an initializer, or a non-zero quantization zero point is
caught here before anyone reaches a Jetson / RTX machine.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.tsv")
MAX_OPSET = 17
# "`<input>` must be an initializer / a constant tensor" restrictions of the list: op -> input index
CONSTANT_INPUTS = {"CumSum": 1, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "TopK": 1}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
IO_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.INT32,
            onnx.TensorProto.BOOL}


@cache
def supported_ops() -> frozenset[str]:
  """Operators the kept list marks supported (Y)."""
  rows = [line.split("\t") for line in OPS_FILE.read_text().splitlines() if line and not line.startswith("#")]
  return frozenset(r[0] for r in rows if r[1] == "Y")


def trt_graph(m: onnx.ModelProto) -> onnx.ModelProto:
  """The graph TensorRT gets: the uint8 input (no UINT8 in TensorRT 8.5's types) becomes float32 pixel values,
  its Cast to float removed; everything else unchanged."""
  m = onnx.ModelProto.FromString(m.SerializeToString())
  for inp in m.graph.input:
    if inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
      continue
    casts = [n for n in m.graph.node if inp.name in n.input]
    if len(casts) != 1 or casts[0].op_type != "Cast":
      continue
    cast = casts[0]
    for n in m.graph.node:
      n.input[:] = [inp.name if i == cast.output[0] else i for i in n.input]
    m.graph.node.remove(cast)
    inp.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
  return m


def check_graph(m: onnx.ModelProto) -> list[str]:
  """Every way `m` breaks the kept TensorRT ONNX support list; empty when it parses."""
  problems = []
  opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
  if opset > MAX_OPSET:
    problems.append(f"opset {opset} > {MAX_OPSET}")
  for v in [*m.graph.input, *m.graph.output]:
    if v.type.tensor_type.elem_type not in IO_TYPES:
      problems.append(f"{v.name}: type {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)} unsupported")
  const = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
  const |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
  ok = supported_ops()
  for n in m.graph.node:
    where = f"{n.op_type} {n.name}"
    if n.domain not in ("", "ai.onnx") or n.op_type not in ok:
      problems.append(f"{where}: not supported")
      continue
    k = CONSTANT_INPUTS.get(n.op_type)
    if k is not None and len(n.input) > k and n.input[k] and n.input[k] not in const:
      problems.append(f"{where}: input {k} must be an initializer")
    if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
      zp = const.get(n.input[2]) if len(n.input) > 2 else np.zeros(1)
      if zp is None or np.any(zp != 0) or zp.dtype != np.int8:
        problems.append(f"{where}: zero point must be a constant int8 zero")
    if n.op_type == "Resize":
      attrs = {a.name: a.s.decode() for a in n.attribute if a.type == onnx.AttributeProto.STRING}
      if attrs.get("coordinate_transformation_mode", "half_pixel") not in RESIZE_COORDS or \
          attrs.get("mode", "nearest") not in RESIZE_MODES:
        problems.append(f"{where}: resize mode {attrs} unsupported")
  return problems


def build_engine(onnx_path: Path, fp16: bool = True) -> bytes:
  """A serialized TensorRT engine of `onnx_path` (FP16 kernels allowed; a QDQ graph builds as INT8).
  RuntimeError with one line when TensorRT is not installed or the parse fails."""
  try:
    import tensorrt as trt
  except ImportError:
    raise RuntimeError("TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)") from None
  logger = trt.Logger(trt.Logger.WARNING)
  builder = trt.Builder(logger)
  network = builder.create_network(0)
  parser = trt.OnnxParser(network, logger)
  if not parser.parse(onnx_path.read_bytes()):
    raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {parser.get_error(0)}")
  config = builder.create_builder_config()
  if fp16:
    config.set_flag(trt.BuilderFlag.FP16)
  engine = builder.build_serialized_network(network, config)
  if engine is None:
    raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
  return bytes(engine)

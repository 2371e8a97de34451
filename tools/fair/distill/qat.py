"""Quantization-aware training with PT2E (torchao): the student as an exported graph with fake quantization on
the same tensors onnxruntime's INT8 (tools/fair/export/precision.py) quantizes, and that graph as a QDQ ONNX.

  m = prepare(student, example_img)   # from here on, training sees INT8 rounding and clipping
  to_onnx(m, "student.onnx")          # convert_pt2e -> QuantizeLinear / DequantizeLinear ONNX (model_io contract)

Scheme: uint8 asymmetric activations, int8 symmetric per-channel weights (torchao's X86InductorQuantizer, the
u8s8 scheme onnxruntime's CPU INT8 kernels run). Kept in float, as in the post-training INT8: the linear attention
cores (MatMul, Mul and Cat are left unannotated: the quantizer then quantizes only conv / linear inputs) and the
dense heads' last convs (FLOAT_MODULES); BatchNorm trains folded into the fake-quantized conv weights.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

FLOAT_MODULES = ("depth.1", "seg.1", "obj_heatmap", "obj_box", "obj_depth")  # the dense heads' output convs
FAKE_QUANT_PREFIX = "activation_post_process_"  # state-dict keys of the observers / fake quantizers


def is_qat_state(state: dict) -> bool:
  """Whether a checkpoint's model state comes from a `prepare`d (fake-quantized) student."""
  return any(k.startswith(FAKE_QUANT_PREFIX) for k in state)


def float_state(state: dict) -> dict:
  """The plain student's weights of a QAT state (the observers dropped)."""
  return {k: v for k, v in state.items() if not k.startswith(FAKE_QUANT_PREFIX)}


def load_state(prepared: torch.fx.GraphModule, state: dict) -> None:
  """load_state_dict that keeps the observers' eps: torchao's observers reset it to float32's eps when the state
  carries no module version metadata, and a safetensors checkpoint carries none."""
  prepared.load_state_dict(state)
  own = prepared.state_dict(keep_vars=True)
  with torch.no_grad():
    for k, v in state.items():
      if k.startswith(FAKE_QUANT_PREFIX) and k.endswith(".eps"):
        own[k].copy_(v)


def _quantizer():
  from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer, get_default_x86_inductor_quantization_config)
  q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
  for fn in (torch.mul, torch.cat):
    q.set_function_type_qconfig(fn, None)
  for name in FLOAT_MODULES:
    q.set_module_name_qconfig(name, None)
  return q


def prepare(student: nn.Module, img: torch.Tensor) -> torch.fx.GraphModule:
  """The student (train mode) exported with a dynamic batch and fake-quantized; it shares the student's
  parameters (an optimizer over them keeps working), and .train() / .eval() switch BatchNorm as for the student."""
  from torchao.quantization.pt2e import allow_exported_model_train_eval
  from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
  student.train()
  graph = torch.export.export(student, (img,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
  prepared = prepare_qat_pt2e(graph, _quantizer())
  allow_exported_model_train_eval(prepared)
  return prepared


def to_onnx(prepared: torch.fx.GraphModule, path: str | Path) -> Path:
  """The fake-quantized student as a QDQ ONNX of the model_io contract (uint8 `img`, float outputs)."""
  from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

  from selfdrive.modeld_fair.model_io import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES
  from tools.fair.students.export import OrderedOutputs, check_graph
  path = Path(path)
  m = copy.deepcopy(prepared)
  m.eval()
  converted = convert_pt2e(m)
  img = torch.zeros(INPUT_SHAPE, dtype=torch.uint8)
  with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")
    torch.onnx.export(OrderedOutputs(converted), (img,), str(path), input_names=[INPUT_NAME],
                      output_names=list(OUTPUT_NAMES), opset_version=17, dynamo=True, external_data=False,
                      verbose=False)
  import onnx
  check_graph(onnx.load(str(path)), 17)
  return path

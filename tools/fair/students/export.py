"""A student to the daemon's ONNX (the model_io contract) and its `student.json` metadata: the functions that
`fair export` (tools/fair/export/cli.py, from a training run's checkpoint) and the tests build on.
`export_student` writes a random-initialised student (`trained: false`, "random-init" in the model id)."""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from selfdrive.modeld_fair.model_io import INPUT_DTYPE, INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES, OUTPUTS
from tools.fair.files import atomic_write, sha256_file
from tools.fair.students.efficientvit import StudentConfig, build_student, fold_bn, student_config
from tools.fair.students.stats import model_stats

PARITY_RTOL = 1e-4  # max |ort - torch| / max |torch|, per output


class OrderedOutputs(nn.Module):
  """The student's dict as a tuple in OUTPUT_NAMES order (ONNX outputs are positional)."""

  def __init__(self, student: nn.Module):
    super().__init__()
    self.student = student

  def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = self.student(img)
    return tuple(out[k] for k in OUTPUT_NAMES)


def ort_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
  """An onnxruntime CPU session with `threads` intra-op threads."""
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = threads
  opts.inter_op_num_threads = 1
  return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
  """Write `model` (a Student) to `path` as static-shape ONNX: uint8 input `img` of model_io.INPUT_SHAPE,
  outputs model_io.OUTPUT_NAMES, eval mode with every BatchNorm folded into its conv.

  Raises RuntimeError unless the file has no BatchNormalization node, the contract's names and shapes,
  and onnxruntime reproduces the (unfolded, eval) torch model within PARITY_RTOL on a random input.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  ref = copy.deepcopy(model).eval()
  folded = fold_bn(copy.deepcopy(ref))
  img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, INPUT_SHAPE, dtype=np.uint8))
  with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")  # the exporter's deprecation / torchvision notices are noise here
    torch.onnx.export(OrderedOutputs(folded), (img,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                      opset_version=opset, dynamo=True, external_data=False, verbose=False)
    expected = ref(img)
  check_graph(onnx.load(str(path)), opset)
  got = dict(zip(OUTPUT_NAMES, ort_session(path).run(list(OUTPUT_NAMES), {INPUT_NAME: img.numpy()})))
  for name in OUTPUT_NAMES:
    e = expected[name].numpy()
    err = float(np.abs(got[name] - e).max() / max(float(np.abs(e).max()), 1e-12))
    if not err <= PARITY_RTOL:
      raise RuntimeError(f"{path}: onnxruntime differs from torch on {name}: relative error {err:.2e} > {PARITY_RTOL}")
  return path


def check_graph(m: onnx.ModelProto, opset: int) -> None:
  """RuntimeError unless `m` passes the onnx checker, has no BatchNormalization, has `opset` and model_io's I/O."""
  onnx.checker.check_model(m)
  ops = {n.op_type for n in m.graph.node}
  if "BatchNormalization" in ops:
    raise RuntimeError("ONNX still has BatchNormalization nodes: BN folding failed")
  version = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
  if version != opset:
    raise RuntimeError(f"ONNX opset {version}, expected {opset}")
  io = {v.name: (v.type.tensor_type.elem_type, tuple(d.dim_value for d in v.type.tensor_type.shape.dim))
        for v in [*m.graph.input, *m.graph.output]}
  want = {INPUT_NAME: (onnx.helper.np_dtype_to_tensor_dtype(np.dtype(INPUT_DTYPE)), INPUT_SHAPE),
          **{k: (onnx.TensorProto.FLOAT, shape) for k, (shape, _) in OUTPUTS.items()}}
  if io != want or [o.name for o in m.graph.output] != list(OUTPUT_NAMES):
    raise RuntimeError(f"ONNX inputs/outputs {io} differ from the model_io contract {want}")


def model_id(cfg: StudentConfig, seed: int, trained: bool) -> str:
  """e.g. "fairpilot-student-nano-random-init-seed0"."""
  return f"fairpilot-student-{cfg.name}-{'trained' if trained else 'random-init'}-seed{seed}"


def write_metadata(model: nn.Module, cfg: StudentConfig, out: Path, model_id_: str, trained: bool, provenance: dict,
                   extra: dict | None = None) -> dict:
  """Write `<out stem>.json` beside the exported ONNX (atomically; `extra` keys added at the top level);
  returns the metadata as written."""
  stats = model_stats(model)
  meta = {
    "model_id": model_id_,
    "trained": trained,
    "onnx": out.name,
    "sha256": sha256_file(out),
    "provenance": {"config": asdict(cfg), **provenance, "torch": torch.__version__,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    "input": {"name": INPUT_NAME, "shape": list(INPUT_SHAPE), "dtype": INPUT_DTYPE,
              "meaning": "previous then current calibrated frame, each openpilot's 6x128x256 YUV420 packing"},
    "outputs": [{"name": k, "shape": list(shape), "dtype": "float32", "meaning": meaning}
                for k, (shape, meaning) in OUTPUTS.items()],
    "params": stats.params,
    "flops": stats.flops,
    **(extra or {}),
  }
  text = json.dumps(meta, indent=2, default=float) + "\n"
  atomic_write(out.with_suffix(".json"), text)
  return json.loads(text)  # as written (tuples become lists)


def export_student(name: str, seed: int, out: str | Path, opset: int = 17) -> dict:
  """Build the `name` student randomly initialised from `seed`, export it to `out` and write the
  sidecar metadata `<out stem>.json` beside it; returns the metadata as written."""
  cfg = student_config(name)
  torch.manual_seed(seed)  # the whole init depends on this seed only: same seed, same weights
  model = build_student(cfg).eval()
  out = export_onnx(model, out, opset)
  command = f"tools.fair.students.export.export_student({name!r}, {seed}, {str(out)!r}, opset={opset})"
  return write_metadata(model, cfg, out, model_id(cfg, seed, trained=False), False,
                   {"seed": seed, "command": command, "onnx_opset": opset})


def export_trained(model: nn.Module, out: str | Path, provenance: dict, seed: int = 0, opset: int = 17) -> dict:
  """Export a trained Student (plain, adapters merged) to `out` with metadata whose model id says "trained";
  `provenance` (e.g. the training command and held-out metrics) goes into the metadata."""
  cfg = model.cfg
  out = export_onnx(model, out, opset)
  return write_metadata(model, cfg, out, model_id(cfg, seed, trained=True), True,
                   {"seed": seed, "onnx_opset": opset, **provenance})

"""`fair profile MODEL...`: what a student costs, and whether it fits beside openpilot on a comma four.

MODEL is a student config name ("nano", "small": built in torch, random init, BN folded as the export
does) or an ONNX file (e.g. selfdrive/modeld_fair/models/student.onnx). Both become one list of layers in
ONNX op vocabulary (a torch model is traced op by op, an ONNX file is read after shape inference), so the
two paths count alike: parameters, MACs / FLOPs, bytes each op reads and writes, an op census, a per-layer
table, onnxruntime CPU latency here, and a roofline estimate of the Adreno 630 (see docs/profile.md).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from selfdrive.modeld_fair.model_io import INPUT_NAME, INPUT_SHAPE
from tools.fair.students import build_student, fold_bn, model_stats, student_config
from tools.fair.students.export import export_onnx, ort_session

ROOT = Path(__file__).resolve().parents[2]

# ONNX op types by cost. FLOPs: contractions 2 x MACs (bias adds not counted, as torch's FlopCounterMode and
# students.model_stats), pointwise 1 per output element (exp / sigmoid too: an approximation), reductions 1
# per input element, everything else (Resize, Concat, ...) 0: pure data movement.
CONTRACTIONS = {"Conv", "Gemm", "MatMul"}
POINTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Sigmoid", "Exp", "Log", "Cast", "Clip", "Tanh", "Neg", "Abs", "Sqrt",
             "Pow", "Max", "Min", "Where", "Erf", "Softplus"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "GlobalAveragePool", "Softmax"}
# views cost nothing: a GPU compiler (tinygrad) folds them into the indexing of the op that reads them
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Expand", "Identity", "Shape", "Constant"}
# traced aten ops -> the ONNX op torch's exporter emits for them; others keep their aten name (cost: data movement)
ATEN_TO_ONNX = {
  "convolution": "Conv", "addmm": "Gemm", "mm": "MatMul", "bmm": "MatMul", "relu": "Relu", "add": "Add", "sub": "Sub",
  "mul": "Mul", "div": "Div", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log", "_to_copy": "Cast", "clamp": "Clip",
  "tanh": "Tanh", "sum": "ReduceSum", "mean": "ReduceMean", "cat": "Concat", "upsample_nearest2d": "Resize",
  "view": "Reshape", "_unsafe_view": "Reshape", "t": "Transpose", "transpose": "Transpose", "permute": "Transpose",
  "slice": "Slice", "expand": "Expand", "unsqueeze": "Unsqueeze", "squeeze": "Squeeze", "alias": "Identity",
  "detach": "Identity",
}


# ---- the graph both paths produce

@dataclass(frozen=True)
class Tensor:
  shape: tuple[int, ...]
  itemsize: int        # bytes per element as stored (fp32 models: 4; the uint8 input: 1)
  is_float: bool       # float tensors are fp16 on the device

  def nbytes(self, fp16: bool = False) -> int:
    return math.prod(self.shape) * (2 if fp16 and self.is_float else self.itemsize)


@dataclass(frozen=True)
class Layer:
  """One op: reads `inputs` (activations, by name) and `weights` once each, writes `outputs`."""
  name: str
  op: str                      # ONNX op type
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  weights: tuple[Tensor, ...]
  macs: int
  flops: int


@dataclass(frozen=True)
class Graph:
  layers: tuple[Layer, ...]    # in execution order
  tensors: dict[str, Tensor]   # every activation tensor by name
  outputs: tuple[str, ...]     # the model's outputs (always written to memory)
  params: int                  # weight numbers in the inference graph (BN folded)

  def nbytes(self, layer: Layer, fp16: bool = False) -> int:
    """Bytes `layer` moves: weights + activations read + written; 0 for a view."""
    if layer.op in VIEWS:
      return 0
    return (sum(w.nbytes(fp16) for w in layer.weights) + sum(self.tensors[t].nbytes(fp16) for t in layer.inputs)
            + sum(self.tensors[t].nbytes(fp16) for t in layer.outputs))


def _layer(name: str, op: str, inputs, outputs, weights, macs: int, tensors: dict[str, Tensor]) -> Layer:
  out_n = sum(math.prod(tensors[t].shape) for t in outputs)
  in_n = sum(math.prod(tensors[t].shape) for t in inputs)
  flops = 2 * macs if op in CONTRACTIONS else out_n if op in POINTWISE else in_n if op in REDUCTIONS else 0
  return Layer(name, op, tuple(dict.fromkeys(inputs)), tuple(outputs), tuple(weights), macs, flops)


def onnx_graph(path: str | Path) -> Graph:
  """The layers of an ONNX file, shapes from onnx.shape_inference; ValueError unless every shape is static."""
  m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
  g = m.graph

  def tensor(v: onnx.ValueInfoProto) -> Tensor:
    tt = v.type.tensor_type
    dims = tuple(d.dim_value for d in tt.shape.dim)
    if not tt.HasField("shape") or any(d <= 0 for d in dims):
      raise ValueError(f"{path}: tensor {v.name!r} has no static shape")
    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return Tensor(dims, dt.itemsize, bool(np.issubdtype(dt, np.floating)))

  weights = {}
  for i in g.initializer:
    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.data_type))
    weights[i.name] = Tensor(tuple(i.dims), dt.itemsize, bool(np.issubdtype(dt, np.floating)))
  tensors = {v.name: tensor(v) for v in [*g.input, *g.value_info, *g.output] if v.name not in weights}
  layers = []
  for n in g.node:
    ins = [x for x in n.input if x]
    acts = [x for x in ins if x not in weights]
    if not acts:  # constants and what is computed from them only: folded before any run
      weights.update((o, tensors.pop(o)) for o in n.output)
      continue
    ws = [weights[x] for x in ins if x in weights]
    out_n = math.prod(tensors[n.output[0]].shape)
    macs = 0
    if n.op_type == "Conv":
      macs = out_n * math.prod(weights[n.input[1]].shape[1:])   # (Cin / groups) x kh x kw per output
    elif n.op_type == "Gemm":
      a = (weights.get(n.input[0]) or tensors[n.input[0]]).shape
      trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
      macs = out_n * a[0 if trans_a else 1]
    elif n.op_type == "MatMul":
      macs = out_n * (weights.get(n.input[0]) or tensors[n.input[0]]).shape[-1]
    # names: a weighted op by its weight (the exporter wraps the student as `student.`), others by node name
    w_name = next((x for x in ins if x in weights and x.endswith(".weight")), None)
    name = w_name.removeprefix("student.").removesuffix(".weight") if w_name else n.name or n.op_type
    layers.append(_layer(name, n.op_type, acts, [o for o in n.output if o], ws, macs, tensors))
  params = sum(math.prod(w.shape) for w in weights.values() if w.is_float)
  return Graph(tuple(layers), tensors, tuple(o.name for o in g.output), params)


def _record(t: torch.Tensor) -> Tensor:
  return Tensor(tuple(t.shape), t.element_size(), t.is_floating_point())


class _Tracer(TorchDispatchMode):
  """Records every aten op as a Layer. Tensors produced inside the trace (and the input) are activations;
  any other tensor an op reads (parameters, buffers, constants) is a weight."""

  def __init__(self, modules: list[str]):
    super().__init__()
    self.modules = modules            # module path stack, kept by forward hooks
    self.names: dict[int, str] = {}   # id(tensor) -> name
    self.keep: list[torch.Tensor] = []  # every named tensor stays alive, so no id is reused
    self.tensors: dict[str, Tensor] = {}
    self.layers: list[Layer] = []

  def name(self, t: torch.Tensor) -> str:
    self.names[id(t)] = f"t{len(self.keep)}"
    self.keep.append(t)
    self.tensors[self.names[id(t)]] = _record(t)
    return self.names[id(t)]

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    out = func(*args, **(kwargs or {}))
    ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    acts = [self.names[id(a)] for a in ins if id(a) in self.names]
    if not acts:  # e.g. the transpose of a linear layer's weight: a constant, as in the exported ONNX
      return out
    aten = func.overloadpacket.__name__
    op = ATEN_TO_ONNX.get(aten, f"aten.{aten}")
    outs = [self.name(o) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    macs = 0
    if op == "Conv":
      macs = math.prod(out.shape) * math.prod(args[1].shape[1:])
    elif op in ("Gemm", "MatMul"):
      macs = math.prod(out.shape) * args[-1].shape[-2]   # mm / bmm (a, b), addmm (bias, a, b): K = rows of b
    module = self.modules[-1] or "model"
    name = module if op in ("Conv", "Gemm") else f"{module}/{op}"
    self.layers.append(_layer(name, op, acts, outs, [_record(a) for a in ins if id(a) not in self.names], macs,
                              self.tensors))
    return out


@torch.no_grad()
def trace_torch(model: nn.Module, example: torch.Tensor) -> Graph:
  """The layers of one forward of `model` on `example` (fold BatchNorm first to match an exported ONNX)."""
  modules = [""]
  hooks = []
  for path, m in model.named_modules():
    def push(_m, _a, path=path):
      modules.append(path)

    def pop(*_):
      modules.pop()
    hooks += [m.register_forward_pre_hook(push), m.register_forward_hook(pop)]
  tracer = _Tracer(modules)
  try:
    tracer.name(example)
    with tracer:
      out = model(example)
  finally:
    for h in hooks:
      h.remove()
  outs = tuple(tracer.names[id(t)] for t in tree_flatten(out)[0])
  return Graph(tuple(tracer.layers), tracer.tensors, outs, sum(p.numel() for p in model.parameters()))


# ---- Adreno 630 roofline

@dataclass(frozen=True)
class Device:
  name: str
  peak_gflops: float    # FP16
  dram_gbps: float


# public figures, not measured: Adreno 630 FP32 727 GFLOPS (710 MHz), FP16 at twice the rate; LPDDR4X-3733 on
# 4 x 16 bit channels = 29.9 GB/s
ADRENO_630 = Device("Adreno 630 (Snapdragon 845, comma four)", peak_gflops=2 * 727.0, dram_gbps=29.9)


@dataclass(frozen=True)
class Scenario:
  name: str
  compute_eff: float    # achieved / peak FLOP rate
  bw_eff: float         # achieved / peak DRAM bandwidth
  launch_us: float      # fixed cost per kernel (dispatch, sync, tail of a small grid)
  fused: bool           # pointwise ops join the kernel that produces their input (tinygrad's elementwise fusion)


# assumptions, not measurements: the spread is the point (docs/profile.md)
SCENARIOS = (Scenario("optimistic", 0.5, 0.8, 20.0, True), Scenario("nominal", 0.3, 0.6, 30.0, True),
             Scenario("pessimistic", 0.15, 0.4, 50.0, False))
FRAME_MS = 50.0                 # 20 Hz camera frames
OPENPILOT_MS = (25.0, 30.0)     # openpilot's own driving model, on the same GPU, per frame
TARGET_MS = 10.0                # the student's budget: what is left, less warp / decode / other GPU work
WARMUP = 20                     # untimed onnxruntime runs first (allocations, caches)


def roofline_s(flops: float, nbytes: float, device: Device, s: Scenario) -> float:
  """Seconds for one kernel: compute- or memory-bound, whichever is slower (launch overhead not included)."""
  return max(flops / (device.peak_gflops * 1e9 * s.compute_eff), nbytes / (device.dram_gbps * 1e9 * s.bw_eff))


def kernels(g: Graph, fused: bool, fp16: bool = True) -> list[tuple[int, int]]:
  """(FLOPs, bytes) of each kernel launched. Fused: a pointwise op joins the kernel writing one of its inputs when
  that tensor has no other reader, and the tensor then never reaches memory (its write and read are saved)."""
  producer = {t: i for i, layer in enumerate(g.layers) for t in layer.outputs}
  readers = Counter([t for layer in g.layers for t in layer.inputs] + list(g.outputs))
  kernel_of: dict[int, int] = {}   # layer index -> index in out
  out: list[list[int]] = []
  for i, layer in enumerate(g.layers):
    if layer.op in VIEWS:
      continue
    f, b = layer.flops, g.nbytes(layer, fp16)
    host = next((t for t in layer.inputs if fused and layer.op in POINTWISE and producer.get(t) in kernel_of
                 and readers[t] == 1), None)
    if host is None:
      kernel_of[i] = len(out)
      out.append([f, b])
    else:
      k = kernel_of[i] = kernel_of[producer[host]]
      out[k][0] += f
      out[k][1] += b - 2 * g.tensors[host].nbytes(fp16)
  return [(f, b) for f, b in out]


@dataclass(frozen=True)
class Estimate:
  scenario: str
  kernels: int
  roofline_ms: float    # sum over kernels of max(compute, memory)
  launch_ms: float      # kernels x launch overhead
  ms: float


def estimate(g: Graph, s: Scenario, device: Device = ADRENO_630) -> Estimate:
  """Roofline estimate of one forward on `device` in FP16 under scenario `s`."""
  ks = kernels(g, s.fused)
  roof = sum(roofline_s(f, b, device, s) for f, b in ks) * 1e3
  launch = len(ks) * s.launch_us / 1e3
  return Estimate(s.name, len(ks), roof, launch, roof + launch)


# ---- the profile

@dataclass(frozen=True)
class LayerRow:
  name: str
  op: str
  shape: tuple[int, ...]   # first output
  flops: int
  bytes_fp16: int
  intensity: float         # FLOPs / byte (fp16)
  us: float                # roofline time at the nominal scenario, unfused, without launch overhead
  bound: str               # "compute" | "memory"


@dataclass(frozen=True)
class Profile:
  model: str
  source: str
  params: int
  macs: int
  flops: int
  bytes_fp32: int
  bytes_fp16: int
  census: dict[str, int]          # op type -> count, views included
  layers: list[LayerRow]          # every non-view layer, in execution order
  estimates: list[Estimate]       # one per SCENARIOS entry
  check: str                      # contraction FLOPs against an independent count (model_stats)
  ort_p50_ms: float | None = None
  ort_p99_ms: float | None = None

  def estimate(self, scenario: str) -> Estimate:
    return next(e for e in self.estimates if e.scenario == scenario)

  @property
  def verdict(self) -> str:
    pess, nom = self.estimate("pessimistic").ms, self.estimate("nominal").ms
    if pess <= TARGET_MS:
      return "fits"
    return "fits at nominal, not pessimistic" if nom <= TARGET_MS else "does not fit"


def layer_rows(g: Graph) -> list[LayerRow]:
  nominal = next(s for s in SCENARIOS if s.name == "nominal")
  rows = []
  for layer in g.layers:
    if layer.op in VIEWS:
      continue
    b = g.nbytes(layer, fp16=True)
    compute = layer.flops / (ADRENO_630.peak_gflops * 1e9 * nominal.compute_eff)
    memory = b / (ADRENO_630.dram_gbps * 1e9 * nominal.bw_eff)
    rows.append(LayerRow(layer.name, layer.op, g.tensors[layer.outputs[0]].shape, layer.flops, b,
                         layer.flops / b if b else 0.0, max(compute, memory) * 1e6,
                         "compute" if compute > memory else "memory"))
  return rows


def profile_graph(model: str, source: str, g: Graph, ref_flops: int | None = None, ref: str = "") -> Profile:
  """Counts, census, per-layer rows and the Adreno estimates of a graph (no latency measurement); `ref_flops`
  is an independent count of contraction FLOPs (students.model_stats) from `ref`, to check ours against."""
  macs = sum(layer.macs for layer in g.layers)
  check = "no independent FLOP count to compare with" if ref_flops is None else (
    f"contraction FLOPs 2 x MACs = {2 * macs / 1e6:.1f} M vs {ref} {ref_flops / 1e6:.1f} M "
    f"({'equal' if 2 * macs == ref_flops else f'{(2 * macs - ref_flops) / ref_flops:+.2%}'})")
  return Profile(model, source, g.params, macs, sum(layer.flops for layer in g.layers),
                 sum(g.nbytes(layer) for layer in g.layers), sum(g.nbytes(layer, True) for layer in g.layers),
                 dict(Counter(layer.op for layer in g.layers).most_common()), layer_rows(g),
                 [estimate(g, s) for s in SCENARIOS], check)


def idlest_cpu(window_s: float = 0.2) -> int:
  """The allowed CPU with the most idle time over `window_s`. bench.common.pin_one_core takes the first CPU, which
  on a shared machine may be the one another job keeps busy (that doubled onnxruntime's time here)."""
  def idle() -> dict[int, int]:
    lines = Path("/proc/stat").read_text().splitlines()
    return {int(f[0][3:]): int(f[4]) for f in (line.split() for line in lines) if f[0][3:].isdigit()}
  before = idle()
  time.sleep(window_s)
  after = idle()
  return max(sorted(os.sched_getaffinity(0)), key=lambda c: after.get(c, 0) - before.get(c, 0))


def ort_latency(path: str | Path, threads: int = 1, iters: int = 200, warmup: int = WARMUP) -> tuple[float, float]:
  """onnxruntime CPU p50 / p99 in ms on a random uint8 input (pinned to the idlest core when threads == 1)."""
  sess = ort_session(path, threads)
  feed = {INPUT_NAME: np.random.default_rng(0).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)}
  affinity = os.sched_getaffinity(0)
  if threads == 1:
    os.sched_setaffinity(0, {idlest_cpu()})
  try:
    for _ in range(warmup):
      sess.run(None, feed)
    ts = []
    for _ in range(iters):
      t = time.perf_counter()
      sess.run(None, feed)
      ts.append(time.perf_counter() - t)
  finally:
    os.sched_setaffinity(0, affinity)   # the caller keeps its cores
  return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 99) * 1e3)


def profile(model: str, iters: int = 200, threads: int = 1) -> Profile:
  """Profile a config name or an ONNX path; onnxruntime latency over `iters` runs (0: not measured). A config
  is exported (export_onnx, parity-checked) to a temporary ONNX for the latency."""
  if model.endswith(".onnx"):
    path = Path(model)
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such ONNX file")
    g = onnx_graph(path)
    meta = path.with_suffix(".json")   # export_student's sidecar: its flops are model_stats' at export
    flops = json.loads(meta.read_text()).get("flops") if meta.is_file() else None
    p = profile_graph(model, f"ONNX {path.name}", g, flops, f"model_stats in {meta.name}")
    lat = ort_latency(path, threads, iters) if iters else None
  else:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = build_student(student_config(model)).eval()
    g = trace_torch(fold_bn(copy.deepcopy(student)), torch.zeros(INPUT_SHAPE, dtype=torch.uint8))
    p = profile_graph(model, f"torch trace of the {model} config (random init, BN folded)", g,
                      model_stats(student).flops, "model_stats")
    lat = None
    if iters:
      for name in ("torch.onnx", "onnxscript"):  # the exporter's opset-conversion notices
        logging.getLogger(name).setLevel(logging.ERROR)
      with tempfile.TemporaryDirectory() as d:
        lat = ort_latency(export_onnx(student, Path(d) / f"{model}.onnx"), threads, iters)
  return p if lat is None else replace(p, ort_p50_ms=lat[0], ort_p99_ms=lat[1])


# ---- output

def _bench_common():
  # bench/ is a folder of the checkout, not an installed package
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  return importlib.import_module("bench.common")


def _shape(s: tuple[int, ...]) -> str:
  return "×".join(map(str, s))


def _ort(p: Profile, unit: str = "") -> str:
  return "not measured" if p.ort_p50_ms is None else f"{p.ort_p50_ms:.2f} / {p.ort_p99_ms:.2f}{unit}"


def _census(p: Profile, views: bool) -> str:
  return ", ".join(f"{op} {n}" for op, n in p.census.items() if (op in VIEWS) == views) or "none"


def summary(p: Profile, top: int = 5) -> str:
  """A few plain-text lines for the terminal."""
  lo, nom, hi = (p.estimate(s.name).ms for s in SCENARIOS)
  lines = [f"{p.model}: {p.source}",
           f"  {p.params / 1e6:.2f} M params, {p.macs / 1e9:.3f} GMACs, {p.flops / 1e9:.3f} GFLOPs, "
           f"{p.bytes_fp32 / 1e6:.1f} MB moved fp32 ({p.bytes_fp16 / 1e6:.1f} MB fp16), {len(p.layers)} non-view ops",
           f"  {p.check}",
           f"  onnxruntime CPU p50 / p99: {_ort(p, ' ms')}",
           f"  Adreno 630 estimate: {lo:.1f} / {nom:.1f} / {hi:.1f} ms (optimistic / nominal / pessimistic), "
           f"target <= {TARGET_MS:.0f} ms: {p.verdict}",
           f"  top {top} by FLOPs:"]
  for r in sorted(p.layers, key=lambda r: -r.flops)[:top]:
    lines.append(f"    {r.name:<36} {r.op:<8} {r.flops / 1e6:7.1f} MFLOPs {r.bytes_fp16 / 1e3:8.1f} kB fp16 "
                 f"{r.intensity:6.1f} FLOPs/B")
  return "\n".join(lines)


def _table(rows: list[LayerRow]) -> str:
  out = ["| layer | op | output | MFLOPs | kB (fp16) | FLOPs/B | µs (nominal) | bound |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
  out += [f"| `{r.name}` | {r.op} | {_shape(r.shape)} | {r.flops / 1e6:.2f} | {r.bytes_fp16 / 1e3:.1f} | "
          f"{r.intensity:.1f} | {r.us:.1f} | {r.bound} |" for r in rows]
  return "\n".join(out)


def assumptions() -> str:
  d = ADRENO_630
  nominal = next(s for s in SCENARIOS if s.name == "nominal")
  ridge = d.peak_gflops * nominal.compute_eff / (d.dram_gbps * nominal.bw_eff)
  rows = "\n".join(f"| {s.name} | {s.compute_eff:.0%} | {s.bw_eff:.0%} | {s.launch_us:.0f} | "
                   f"{'yes' if s.fused else 'no'} |" for s in SCENARIOS)
  left = (FRAME_MS - OPENPILOT_MS[1], FRAME_MS - OPENPILOT_MS[0])
  return f"""### Adreno 630 estimate: assumptions

- device: {d.name}; FP16 weights and activations (fp32 bytes halved, the uint8 input stays 1 byte)
- peak FP16 throughput {d.peak_gflops:.0f} GFLOPS = 2 × 727 GFLOPS FP32 (public figure, not measured)
- DRAM bandwidth {d.dram_gbps} GB/s (LPDDR4X, public figure, not measured); no cache reuse between kernels
- one kernel per non-view op, in graph order; views (Reshape, Transpose, Slice, Expand, ...) are free
- per kernel: time = max(FLOPs / (peak × compute eff.), bytes / (bandwidth × bandwidth eff.)); total = sum over
  kernels + kernels × launch overhead
- fused: a pointwise op joins the kernel writing its input when nothing else reads that tensor (no launch, the
  tensor never reaches DRAM), as tinygrad fuses elementwise ops; unfused: every op is its own kernel
- efficiencies and launch overheads are assumptions (not measured on a comma four); the three scenarios show the
  sensitivity. Ridge point at nominal: {ridge:.0f} FLOPs/byte

| scenario | compute eff. | bandwidth eff. | launch (µs / kernel) | pointwise fused |
| --- | ---: | ---: | ---: | --- |
{rows}

Budget: a {FRAME_MS:.0f} ms frame (20 Hz); openpilot's driving model takes
≈ {OPENPILOT_MS[0]:.0f}–{OPENPILOT_MS[1]:.0f} ms of it on the same GPU, leaving {left[0]:.0f}–{left[1]:.0f} ms;
the student's target is ≤ {TARGET_MS:.0f} ms estimated, so that warp, decode and scheduling
noise fit in the rest. Not modelled: contention with openpilot's model, thermal throttling
and clocks, cache reuse, layout conversions, the CPU side.
"""


def markdown(profiles: list[Profile], command: str, top: int = 10, threads: int = 1) -> str:
  """The report: header, one summary table, the assumptions, then a section per model."""
  text = [_bench_common().header("Student profile: size, cost, CPU latency and Adreno 630 estimate", command),
          f"- onnxruntime: CPU, {threads} intra-op thread(s){', pinned to the idlest core' if threads == 1 else ''}, "
          f"random uint8 input, after {WARMUP} warm-up runs; p50 / p99 ms",
          "- bytes: weights + activations read + written by every op, summed (MB = 10⁶ bytes); views move nothing",
          "- per-layer tables: each op alone (unfused, no launch overhead), roofline time at nominal efficiencies\n",
          "| model | params | GMACs | GFLOPs | MB fp32 | MB fp16 | kernels unfused / fused | ORT CPU ms p50 / p99 | "
          f"Adreno 630 ms opt. / nom. / pess. | ≤ {TARGET_MS:.0f} ms |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
  for p in profiles:
    ests = " / ".join(f"{p.estimate(s.name).ms:.1f}" for s in SCENARIOS)
    text.append(f"| {p.model} | {p.params / 1e6:.2f} M | {p.macs / 1e9:.3f} | {p.flops / 1e9:.3f} | "
                f"{p.bytes_fp32 / 1e6:.1f} | {p.bytes_fp16 / 1e6:.1f} | {p.estimate('pessimistic').kernels} / "
                f"{p.estimate('nominal').kernels} | {_ort(p)} | {ests} | {p.verdict} |")
  text += ["", assumptions()]
  for p in profiles:
    est = "\n".join(f"| {e.scenario} | {e.kernels} | {e.roofline_ms:.2f} | {e.launch_ms:.2f} | **{e.ms:.2f}** |"
                    for e in p.estimates)
    text.append(f"""### {p.model}

- source: {p.source}
- {p.params / 1e6:.3f} M params, {p.macs / 1e9:.3f} GMACs, {p.flops / 1e9:.3f} GFLOPs (pointwise and reductions
  included), {p.bytes_fp32 / 1e6:.1f} MB moved in fp32, {p.bytes_fp16 / 1e6:.1f} MB in fp16
- check: {p.check}
- ops: {_census(p, False)}
- views (no kernel): {_census(p, True)}
- onnxruntime CPU p50 / p99: {_ort(p, ' ms')}

| Adreno 630 | kernels | roofline ms | launch ms | total ms |
| --- | ---: | ---: | ---: | ---: |
{est}

Verdict against the ≤ {TARGET_MS:.0f} ms target: **{p.verdict}**.

Top {top} by FLOPs:

{_table(sorted(p.layers, key=lambda r: -r.flops)[:top])}

Top {top} by bytes:

{_table(sorted(p.layers, key=lambda r: -r.bytes_fp16)[:top])}
""")
  return "\n".join(text)


def to_json(profiles: list[Profile]) -> dict:
  """Every number, the assumptions with them."""
  return {"device": asdict(ADRENO_630), "scenarios": [asdict(s) for s in SCENARIOS],
          "budget_ms": {"frame": FRAME_MS, "openpilot": OPENPILOT_MS, "target": TARGET_MS},
          "profiles": [{**asdict(p), "verdict": p.verdict} for p in profiles]}


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("models", nargs="+", metavar="MODEL", help="student config (nano, small) or ONNX path")
  p.add_argument("--report", type=Path, help="write a markdown report here")
  p.add_argument("--json", type=Path, help="write every number (all layers) as JSON here")
  p.add_argument("--top", type=int, default=10, help="layers per table (default 10)")
  p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: pinned to one core)")
  p.add_argument("--iters", type=int, default=200, help="timed onnxruntime runs (0: no latency measurement)")


def run(args: argparse.Namespace) -> int:
  """Profile each MODEL: summary on stdout, optional markdown report and JSON."""
  profiles = [profile(m, args.iters, args.threads) for m in args.models]
  for p in profiles:
    print(summary(p, min(args.top, 5)))
  command = (f"fair profile {' '.join(args.models)} --top {args.top} --threads {args.threads} --iters {args.iters}"
             + (f" --report {args.report}" if args.report else ""))
  for path, text in ((args.report, lambda: markdown(profiles, command, args.top, args.threads)),
                     (args.json, lambda: json.dumps(to_json(profiles), indent=1) + "\n")):
    if path:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text())
      print(f"wrote {path}")
  return 0

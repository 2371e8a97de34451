"""`fair export RUN --format FORMAT`: a `fair train` run's checkpoint to a verified artifact with its student.json.

  fair export runs/nano --format onnx                      # -> runs/nano/export/<model id>/student.onnx + .json
  fair export runs/nano --format onnx-int8 --real DIR      # also verified on real images under DIR
  fair export runs/nano --format tinygrad --device CPU     # compiled tinygrad JIT + hash sidecar
  fair export runs/nano --format onnx --bundle             # into selfdrive/modeld_fair/models/ (the daemon's)

Every export is compared with the PyTorch model on generated frames (the bundled samples, frames apart from the
INT8 calibration frames) and on real images (--real) before anything is written; outside its format's gate
nothing is written and the exit code is 2. The model id ends in the artifact's sha256, so no two different exports
share one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from selfdrive.modeld_fair.model_io import OUTPUT_NAMES
from selfdrive.modeld_fair.runner import artifact_name
from tools.fair.files import atomic_write, sha256_file

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "tinygrad", "tensorrt")
BUNDLE_DIR = Path(__file__).resolve().parents[3] / "selfdrive" / "modeld_fair" / "models"
GENERATED_PER_SEGMENT, CALIB_PER_SEGMENT = 8, 16
VERIFY_STRIDE, VERIFY_PHASE, CALIB_STRIDE = 7, 3, 3


class ExportError(Exception):
  """A one-line reason an export was refused (the CLI exits 2)."""


@dataclass(frozen=True)
class Gate:
  """An output passes when finite and max|got - torch| <= max_rel * max|torch| and cosine(got, torch) >= min_cos."""
  max_rel: float
  min_cos: float


# FP32 runtimes differ from torch by reassociation only; FP16 keeps ~3 decimal digits; INT8 is a sanity gate
# (quantization noise is judged by the head metrics in docs/benchmarks/precision.md, not here)
GATES = {"fp32": Gate(1e-4, 0.9999), "tinygrad-fp32": Gate(1e-3, 0.9999), "fp16": Gate(1e-2, 0.9999),
         "int8": Gate(1.0, 0.9)}


@dataclass(frozen=True)
class OutputCheck:
  max_rel: float   # max|got - torch| / max|torch|
  cosine: float    # of the flattened outputs over all frames
  finite: bool
  ok: bool


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], gate: Gate) -> dict[str, OutputCheck]:
  """Per output: relative max error, cosine and finiteness of `got` against the reference, judged by `gate`."""
  checks = {}
  for name in OUTPUT_NAMES:
    a, b = got[name].astype(np.float64).ravel(), ref[name].astype(np.float64).ravel()
    finite = bool(np.isfinite(a).all())
    rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if finite else float("inf")
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)) if finite else float("nan")
    checks[name] = OutputCheck(rel, cos, finite, finite and rel <= gate.max_rel and cos >= gate.min_cos)
  return checks


def torch_outputs(model: torch.nn.Module, frames: np.ndarray) -> dict[str, np.ndarray]:
  with torch.inference_mode():
    outs = [model(torch.from_numpy(x[None])) for x in frames]
  return {k: np.concatenate([o[k].float().numpy() for o in outs]) for k in OUTPUT_NAMES}


def runner_outputs(runner, frames: np.ndarray) -> dict[str, np.ndarray]:
  outs = [runner.run(x[None]) for x in frames]
  return {k: np.concatenate([o[k] for o in outs]) for k in OUTPUT_NAMES}


# ---- the run's model

@dataclass(frozen=True)
class Loaded:
  """A run's student: eval-mode weights, the checkpoint, and for a quantization-aware run its whole state
  (weights + learnt fake quantization) that the INT8 export converts."""
  model: torch.nn.Module
  ckpt: object
  qat_state: dict | None


def load_student(run: Path, checkpoint: str = "auto", recipe: str | None = None) -> Loaded:
  """The student of a `fair train` run folder: its best checkpoint (auto: best if present, else the newest),
  DoRA adapters merged (needs the run's recipe). The student size is found from the weights."""
  from tools.fair.distill.qat import float_state, is_qat_state
  from tools.fair.distill.checkpoint import CheckpointManager
  from tools.fair.students.efficientvit import CONFIGS, build_student
  if not run.is_dir():
    raise ExportError(f"{run}: no such run folder")
  mgr = CheckpointManager(run)
  ckpt = mgr.best() if checkpoint in ("auto", "best") else mgr.latest()
  if ckpt is None and checkpoint == "auto":
    ckpt = mgr.latest()
  if ckpt is None:
    raise ExportError(f"{run}: no valid {'' if checkpoint == 'auto' else checkpoint + ' '}checkpoint "
                      f"(expected {run}/best/ or {run}/checkpoints/step-*/)")
  state, _ = mgr.load(ckpt)
  qat_state = state if is_qat_state(state) else None
  state = float_state(state)
  if any(k.startswith("base_model.") for k in state):
    if recipe is None:
      raise ExportError(f"{ckpt.path}: a DoRA checkpoint: pass --recipe (the run's recipe TOML)")
    from tools.fair.distill.dora import merge_for_export
    from tools.fair.distill.recipe import load_recipe
    from tools.fair.distill.trainer import build_model
    model = build_model(load_recipe(recipe))
    model.load_state_dict(state)
    return Loaded(merge_for_export(model).eval(), ckpt, None)
  for cfg in CONFIGS.values():
    model = build_student(cfg)
    try:
      model.load_state_dict(state, strict=True)
    except RuntimeError:
      continue
    return Loaded(model.eval(), ckpt, qat_state)
  raise ExportError(f"{ckpt.path}: the weights match no student config ({', '.join(CONFIGS)})")


@dataclass(frozen=True)
class Frames:
  """Verification (and INT8 calibration) inputs, each (N, 12, 128, 256) uint8."""
  sets: dict[str, np.ndarray]   # "generated", optionally "real"
  calibration: np.ndarray


def load_frames(segments: list[Path], real: Path | None, calib_per_segment: int = CALIB_PER_SEGMENT) -> Frames:
  from tools.fair.export.frames import image_inputs, segment_inputs
  sets = {"generated": segment_inputs(segments, GENERATED_PER_SEGMENT, VERIFY_STRIDE, VERIFY_PHASE)}
  if real is not None:
    sets["real"] = image_inputs(real)
  return Frames(sets, segment_inputs(segments, calib_per_segment, CALIB_STRIDE, 0))


def verify(runner, model: torch.nn.Module, frames: Frames, gate: Gate) -> dict:
  """Compare a runner (`.run(img) -> outputs`) with the torch model on every frame set; ExportError when an
  output misses `gate`. Returns the numbers for student.json."""
  report = {"gate": asdict(gate), "frames": {k: len(v) for k, v in frames.sets.items()}}
  for name, x in frames.sets.items():
    checks = compare(runner_outputs(runner, x), torch_outputs(model, x), gate)
    report[name] = {k: asdict(c) for k, c in checks.items()}
    bad = [f"{k} (rel {c.max_rel:.2e}, cos {c.cosine:.5f}{'' if c.finite else ', non-finite'})"
           for k, c in checks.items() if not c.ok]
    if bad:
      raise ExportError(f"on {name} frames outside rel <= {gate.max_rel:g}, cos >= {gate.min_cos:g}: {', '.join(bad)}")
  return report


# ---- formats

def _ort(path: Path):
  from selfdrive.modeld_fair.runner import OnnxRuntimeRunner
  return OnnxRuntimeRunner(path)


def _worst_head_cosine(runner, model, x: np.ndarray) -> float:
  return min(c.cosine for c in compare(runner_outputs(runner, x), torch_outputs(model, x), GATES["int8"]).values())


def build_int8(fp32: Path, dst: Path, model, frames: Frames, method: str) -> dict:
  """INT8 QDQ of `fp32`; method "auto" quantizes with each calibration method and keeps the one whose worst
  output agrees best with torch on the generated verification frames. Returns what was chosen and measured."""
  from tools.fair.export.precision import CALIBRATION_METHODS, float_nodes, to_int8
  import onnx
  methods = CALIBRATION_METHODS if method == "auto" else (method,)
  scores = {}
  for m in methods:
    to_int8(fp32, dst.with_name(f"{m}.onnx"), frames.calibration, m)
    scores[m] = _worst_head_cosine(_ort(dst.with_name(f"{m}.onnx")), model, frames.sets["generated"])
  best = max(scores, key=scores.get)
  dst.with_name(f"{best}.onnx").replace(dst)
  return {"calibration": {"method": best, "frames": len(frames.calibration), "source": "bundled sample segments",
                          "worst_output_cosine": scores},
          "float_nodes": float_nodes(onnx.load(str(fp32)))}


def build_qat_int8(loaded: Loaded, dst: Path, frames: Frames) -> dict:
  """The QDQ ONNX of a quantization-aware run: its fake quantization, converted (no calibration here)."""
  import copy

  from tools.fair.distill.qat import load_state, prepare, to_onnx
  prepared = prepare(copy.deepcopy(loaded.model), torch.from_numpy(frames.calibration[:2]))
  load_state(prepared, loaded.qat_state)
  to_onnx(prepared, dst)
  return {"calibration": {"method": "qat", "source": f"fake quantization learnt by step {loaded.ckpt.step}"}}


def tinygrad_env(device: str, half: bool) -> dict[str, str]:
  """tinygrad's settings of a build. In tinygrad 0.14 FLOAT16 acts only in the image conv / matmul paths, so a
  half build also sets IMAGE=2 (as openpilot's device builds do)."""
  return {"DEV": device, **({"IMAGE": "2", "FLOAT16": "1"} if half else {})}


def build_tinygrad(fp32: Path, dst: Path, device: str, half: bool) -> None:
  """compile_model in a child process (tinygrad reads its settings at import), which also re-verifies the
  artifact against onnxruntime in a fresh process."""
  env = tinygrad_env(device, half)
  rc = subprocess.call([sys.executable, "-m", "selfdrive.modeld_fair.compile_model", str(fp32), str(dst)],
                       env={**os.environ, **env})
  if rc != 0:
    raise ExportError(f"tinygrad compile with {' '.join(f'{k}={v}' for k, v in env.items())} failed (its error above)")


def export(run: Path, fmt: str, out: Path | None = None, bundle: bool = False, segments: list[Path] | None = None,
           real: Path | None = None, checkpoint: str = "auto", recipe: str | None = None, device: str = "CPU",
           half: bool = False, calib_method: str = "auto") -> dict:
  """Export the run's student as `fmt` into `out` (default RUN/export/<model id>/, or the daemon's models folder
  with `bundle`); returns the written student.json."""
  from tools.fair.export.precision import to_fp16
  from tools.fair.samples import sample_paths
  from tools.fair.students.export import export_onnx, write_metadata
  if fmt not in FORMATS:
    raise ExportError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
  if bundle and fmt not in ("onnx", "onnx-fp16", "onnx-int8"):
    raise ExportError(f"--bundle takes an ONNX format (the daemon loads student.onnx), not {fmt}")
  loaded = load_student(run, checkpoint, recipe)
  model, ckpt = loaded.model, loaded.ckpt
  frames = load_frames(segments or sample_paths(), real)
  with tempfile.TemporaryDirectory(dir=run) as d:
    tmp = Path(d)
    fp32 = export_onnx(model, tmp / "student.onnx")  # BN folded, parity-checked on a random input
    files: dict[str, Path] = {"student.onnx": fp32}
    extra: dict = {"format": fmt, "precision": "fp32"}
    if fmt == "onnx":
      extra["verification"] = verify(_ort(fp32), model, frames, GATES["fp32"])
    elif fmt == "onnx-fp16":
      files["student.onnx"] = to_fp16(fp32, tmp / "fp16.onnx")
      extra |= {"precision": "fp16",
                "verification": verify(_ort(files["student.onnx"]), model, frames, GATES["fp16"])}
    elif fmt == "onnx-int8":
      if loaded.qat_state is not None:
        extra |= {"precision": "int8", **build_qat_int8(loaded, tmp / "int8.onnx", frames)}
      else:
        extra |= {"precision": "int8", **build_int8(fp32, tmp / "int8.onnx", model, frames, calib_method)}
      files["student.onnx"] = tmp / "int8.onnx"
      extra["verification"] = verify(_ort(files["student.onnx"]), model, frames, GATES["int8"])
    elif fmt == "tinygrad":
      pkl = tmp / artifact_name(device)
      build_tinygrad(fp32, pkl, device, half)
      os.environ.update(tinygrad_env(device, half))  # for the runner below (tinygrad is not imported before this)
      from selfdrive.modeld_fair.runner import TinygradRunner
      extra |= {"precision": "fp16" if half else "fp32", "device": device, "artifact": pkl.name,
                "verification": verify(TinygradRunner(pkl), model, frames, GATES["fp16" if half else "tinygrad-fp32"])}
      files |= {pkl.name: pkl, pkl.name + ".sha256": pkl.with_name(pkl.name + ".sha256")}
    else:
      import onnx
      from tools.fair.export.tensorrt import build_engine, check_graph, trt_graph
      graph = trt_graph(onnx.load(str(fp32)))
      problems = check_graph(graph)
      if problems:
        raise ExportError(f"the graph breaks TensorRT's ONNX support list: {'; '.join(problems[:5])}")
      trt_onnx = tmp / "student_trt.onnx"
      onnx.save(graph, str(trt_onnx))
      engine = build_engine(trt_onnx)  # RuntimeError where TensorRT is not installed: nothing is written
      (tmp / "student.engine").write_bytes(engine)
      files |= {"student_trt.onnx": trt_onnx, "student.engine": tmp / "student.engine"}
      extra |= {"precision": "fp16", "artifact": "student.engine",
                "verification": "engine built; not run here (verify on the TensorRT machine)"}
    main = files[extra.get("artifact", "student.onnx")]
    digest = sha256_file(main)
    mid = f"fairpilot-student-{model.cfg.name}-{run.name}-step{ckpt.step}-{fmt}-{digest[:12]}"
    dest = BUNDLE_DIR if bundle else (out or run / "export" / mid)
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():  # artifacts first, student.json last: a reader never sees json without model
      atomic_write(dest / name, path.read_bytes())
    if "student.onnx" in files and files["student.onnx"] != fp32:
      extra["fp32_sha256"] = sha256_file(fp32)
    extra["artifact_sha256"] = digest
    prov = {"run": str(run), "checkpoint": str(ckpt.path), "step": ckpt.step,
            "checkpoint_sha256": ckpt.meta.get("sha256", {}), "command": "fair " + " ".join(sys.argv[2:])}
    meta_path = dest / "student.onnx"
    return write_metadata(model, model.cfg, meta_path, mid, True, prov, extra)


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.formatter_class = argparse.RawDescriptionHelpFormatter
  p.description = __doc__
  p.add_argument("run", type=Path, help="run folder of `fair train` (holds best/ and/or checkpoints/)")
  p.add_argument("--format", default="onnx", choices=FORMATS, help="artifact to build (default onnx)")
  p.add_argument("--out", type=Path, help="output folder (default RUN/export/<model id>/)")
  p.add_argument("--bundle", action="store_true",
                 help="write into selfdrive/modeld_fair/models/ (the daemon's bundled student), ONNX formats only")
  p.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"),
                 help="which checkpoint: best, latest, or auto (best if the run has one, else latest)")
  p.add_argument("--recipe", help="the run's recipe TOML (needed for DoRA runs)")
  p.add_argument("--segments", type=Path, nargs="+",
                 help="segment folders for generated verification / calibration frames (default: bundled samples)")
  p.add_argument("--real", type=Path, help="folder of real road images (.png/.jpg) to verify on as well")
  p.add_argument("--device", default="CPU", help="tinygrad device for --format tinygrad (CPU, QCOM, ...)")
  p.add_argument("--half", action="store_true", help="tinygrad: IMAGE=2 FLOAT16=1 build (as on the comma device)")
  p.add_argument("--calib-method", default="auto", choices=("auto", "minmax", "entropy", "percentile"),
                 help="onnx-int8 calibration; auto measures all three and keeps the most accurate")


def run(a: argparse.Namespace) -> int:
  """`fair export`."""
  torch.set_num_threads(1)
  for name in ("torch.onnx", "onnxscript", "root"):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    meta = export(a.run, a.format, a.out, a.bundle, a.segments, a.real, a.checkpoint, a.recipe, a.device, a.half,
                  a.calib_method)
  except (ExportError, RuntimeError, ValueError, FileNotFoundError) as e:
    print(f"fair export: error: {e}", file=sys.stderr)
    return 2
  v = meta["verification"]
  checked = ", ".join(f"{s} frames ({n}): max rel {max(c['max_rel'] for c in v[s].values()):.2e}, "
                      f"min cos {min(c['cosine'] for c in v[s].values()):.5f}" for s, n in v["frames"].items())
  print(f"{meta['model_id']} ({meta['precision']}) vs torch: {checked}")
  if "calibration" in meta:
    print(f"  calibration: {json.dumps(meta['calibration'])}")
  return 0


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m tools.fair.export.cli")
  add_arguments(p)
  return run(p.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())

"""Compile the student ONNX into a pickled tinygrad JIT (+ `.sha256` sidecar) and prove it matches onnxruntime.

  python -m selfdrive.modeld_fair.compile_model ONNX OUT.pkl      (`scons` calls this)

The device is tinygrad's `DEV` (default CPU, the clang back end, on PC). On a comma device the build runs with
`DEV=QCOM FLOAT16=1`, as openpilot builds its own models; that configuration cannot be tested here.
After writing, a fresh process loads OUT.pkl through TinygradRunner (hash-checked, as the daemon does) and
compares it with onnxruntime on seeded inputs; outside tolerance both files are removed and the exit code is 1.
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.model_io import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES
from selfdrive.modeld_fair.runner import ArtifactError, OnnxRuntimeRunner, TinygradRunner, write_sidecar

CAPTURE_RUNS = 3  # TinyJit: run 1 executes eagerly, run 2 captures the kernels, run 3 replays the capture
VERIFY_SEEDS = (0, 1)  # two different inputs: a capture that baked in its input would still pass one of them


@dataclass(frozen=True)
class Tolerance:
  """An output passes when max|tinygrad - onnxruntime| <= atol + rtol * max|onnxruntime| (and all finite)."""
  rtol: float
  atol: float


FLOAT32_TOL = Tolerance(rtol=1e-3, atol=1e-5)
# half precision keeps ~3 decimal digits per op and errors add up through the layers; not measured here (no QCOM)
FLOAT16_TOL = Tolerance(rtol=2e-2, atol=1e-3)


@dataclass(frozen=True)
class OutputError:
  max_abs: float
  rel: float    # max_abs / max|reference|
  ok: bool


def tolerance() -> Tolerance:
  return FLOAT16_TOL if int(os.environ.get("FLOAT16", "0")) else FLOAT32_TOL


def seeded_input(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: Tolerance) -> dict[str, OutputError]:
  errors = {}
  for name in OUTPUT_NAMES:
    a, b = got[name].astype(np.float64), ref[name].astype(np.float64)
    err, scale = float(np.abs(a - b).max()), float(np.abs(b).max())
    ok = bool(np.isfinite(a).all()) and err <= tol.atol + tol.rtol * scale
    errors[name] = OutputError(err, err / scale if scale > 0 else err, ok)
  return errors


def compile_onnx(onnx_path: Path, out_path: Path) -> float:
  """Capture the ONNX in a TinyJit on $DEV and write OUT.pkl + OUT.pkl.sha256 atomically; returns seconds taken."""
  os.environ.setdefault("DEV", "CPU")  # read when tinygrad is imported: a PC build must not pick a GPU by surprise
  from tinygrad import Tensor, TinyJit, dtypes
  from tinygrad.nn.onnx import OnnxRunner

  OnnxRuntimeRunner(onnx_path)  # fail on a contract mismatch with onnxruntime's clear error, before compiling
  t0 = time.perf_counter()
  onnx = OnnxRunner(onnx_path)
  # outputs are cast inside the JIT so FLOAT16 builds still hand float32 to the daemon
  jit = TinyJit(lambda **inputs: {k: v.cast(dtypes.float32).realize() for k, v in onnx(inputs).items()}, prune=True)
  for i in range(CAPTURE_RUNS):
    jit(**{INPUT_NAME: Tensor(seeded_input(100 + i)).realize()})
  data = pickle.dumps(jit)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_name(f".{out_path.name}.tmp")
  tmp.write_bytes(data)
  tmp.replace(out_path)  # a reader sees the old artifact or the new one, never half a pickle
  write_sidecar(out_path, data, source=onnx_path)
  return time.perf_counter() - t0


def verify(onnx_path: Path, out_path: Path, tol: Tolerance) -> dict[str, OutputError]:
  """Load OUT.pkl as the daemon does and compare it with onnxruntime on VERIFY_SEEDS; worst error per output."""
  tg, ort = TinygradRunner(out_path), OnnxRuntimeRunner(onnx_path)
  worst: dict[str, OutputError] = {}
  for seed in VERIFY_SEEDS:
    img = seeded_input(seed)
    for name, e in compare(tg.run(img), ort.run(img), tol).items():
      if name not in worst or (not e.ok, e.rel) > (not worst[name].ok, worst[name].rel): worst[name] = e
  return worst


def main(argv: list[str] | None = None) -> int:
  """CLI entry point: compile ONNX into OUT.pkl, then verify it in a fresh process (`--verify-only`)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("onnx", type=Path)
  p.add_argument("out", type=Path)
  p.add_argument("--verify-only", action="store_true", help="only compare an existing OUT.pkl with onnxruntime")
  args = p.parse_args(argv)
  tol = tolerance()
  if args.verify_only:
    try:
      errors = verify(args.onnx, args.out, tol)
    except ArtifactError as e:
      print(f"verify: {e}", file=sys.stderr)
      return 1
    for name, e in errors.items():
      print(f"  {name:12s} max abs err {e.max_abs:.3g}  rel {e.rel:.3g}  {'ok' if e.ok else 'FAIL'}")
    if all(e.ok for e in errors.values()): return 0
    print(f"verify: {args.out} differs from onnxruntime beyond rtol={tol.rtol} atol={tol.atol}", file=sys.stderr)
    return 1

  try:
    seconds = compile_onnx(args.onnx, args.out)
  except ArtifactError as e:
    print(f"compile: {e}", file=sys.stderr)
    return 1
  print(f"compiled {args.onnx} -> {args.out} on {os.environ['DEV']} in {seconds:.1f} s "
        f"({args.out.stat().st_size / 1e6:.1f} MB)")
  # a fresh process, like the daemon: nothing from this compile (cached kernels, live buffers) can hide a bad pickle
  rc = subprocess.call([sys.executable, "-m", "selfdrive.modeld_fair.compile_model", "--verify-only",
                        str(args.onnx), str(args.out)])
  if rc != 0:
    for f in (args.out, args.out.with_name(args.out.name + ".sha256")): f.unlink(missing_ok=True)
  return rc


if __name__ == "__main__":
  sys.exit(main())

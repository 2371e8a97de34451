"""The daemon's model runners: one student ONNX, executed by tinygrad (device path) or onnxruntime (fast PC path).

Both take the model_io input (uint8 `img`, INPUT_SHAPE) as numpy and return float32 numpy arrays keyed by
OUTPUT_NAMES. tinygrad runs a JIT compiled ahead of time by `scons` (compile_model.py) and pickled; a pickle
runs arbitrary code when loaded, so the artifact is only unpickled after its sha256 matches the sidecar written
at build time. This module imports neither torch nor tinygrad/onnxruntime at import time: the daemon must start
fast and each runner pays only for its own back end.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from selfdrive.modeld_fair.model_io import INPUT_DTYPE, INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES, OUTPUTS

MODEL_DIR = Path(__file__).resolve().parent / "models"
ONNX_NAME = "student.onnx"
RunnerKind = Literal["tinygrad", "onnxruntime"]


class ArtifactError(RuntimeError):
  """A compiled artifact failed its integrity check, or does not follow the model_io contract."""


class Runner(Protocol):
  model_id: str
  artifact_hash: str  # sha256 hex of the file actually loaded

  def run(self, img: np.ndarray) -> dict[str, np.ndarray]: ...


def sha256_hex(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def artifact_name(dev: str) -> str:
  """Compiled artifact file name for a tinygrad device string: 'CPU:LLVM' -> student_tinygrad_cpu_llvm.pkl."""
  return f"student_tinygrad_{dev.lower().replace(':', '_')}.pkl"


def default_dev() -> str:
  # tinygrad's own device selection variable; on PC the clang CPU back end is the one known to work (see docs)
  return os.environ.get("DEV", "CPU")


def model_id_for(onnx_path: str | Path) -> str:
  """The model id from the ONNX's sidecar metadata (`student.onnx` -> `student.json`), else the file name."""
  meta = Path(onnx_path).with_suffix(".json")
  if meta.is_file():
    model_id = json.loads(meta.read_text()).get("model_id")
    if model_id: return str(model_id)
  return Path(onnx_path).name


def write_sidecar(artifact: Path, data: bytes, source: Path | None = None) -> Path:
  """Write `<artifact>.sha256` in `sha256sum` format: the artifact's hash, then the ONNX it was built from.

  In the models folder `sha256sum -c <artifact>.sha256` checks both without any of our code.
  """
  lines = [f"{sha256_hex(data)}  {artifact.name}"]
  if source is not None: lines.append(f"{sha256_hex(source.read_bytes())}  {source.name}")
  sidecar = artifact.with_name(artifact.name + ".sha256")
  tmp = sidecar.with_name(sidecar.name + ".tmp")
  tmp.write_text("\n".join(lines) + "\n")
  tmp.replace(sidecar)
  return sidecar


def read_sidecar(artifact: Path) -> dict[str, str]:
  """File name -> sha256 hex recorded in `<artifact>.sha256`; ArtifactError if it is missing or malformed."""
  sidecar = artifact.with_name(artifact.name + ".sha256")
  if not sidecar.is_file():
    raise ArtifactError(f"{artifact}: hash sidecar {sidecar.name} is missing; refusing to unpickle "
                        "(rebuild with `scons`)")
  hashes = {}
  for line in sidecar.read_text().splitlines():
    parts = line.split(maxsplit=1)
    if len(parts) != 2 or len(parts[0]) != 64:
      raise ArtifactError(f"{sidecar}: malformed line {line!r}, expected '<sha256 hex>  <file name>'")
    hashes[parts[1].lstrip("*")] = parts[0].lower()
  return hashes


def check_input(img: np.ndarray) -> np.ndarray:
  if not isinstance(img, np.ndarray) or img.dtype != np.dtype(INPUT_DTYPE) or img.shape != INPUT_SHAPE:
    got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
    raise ValueError(f"model input {INPUT_NAME!r} must be {INPUT_DTYPE} {INPUT_SHAPE}, got {got}")
  # both back ends read the buffer directly
  return np.ascontiguousarray(img)


def check_outputs(where: str, shapes: dict[str, tuple]) -> None:
  """Raise ArtifactError unless `shapes` are exactly model_io's outputs (fail at load, not at the first frame)."""
  want = {name: tuple(OUTPUTS[name][0]) for name in OUTPUT_NAMES}
  got = {name: tuple(shape) for name, shape in shapes.items()}
  if got != want:
    bad = sorted(n for n in want.keys() | got.keys() if want.get(n) != got.get(n))
    raise ArtifactError(f"{where}: outputs do not follow model_io: " +
                        ", ".join(f"{n}: expected {want.get(n)}, got {got.get(n)}" for n in bad))


@dataclass
class OnnxRuntimeRunner:
  """Run an ONNX with onnxruntime on the CPU (`threads` intra-op threads; 1 leaves cores to openpilot)."""
  onnx_path: Path
  threads: int = 1
  model_id: str = ""
  artifact_hash: str = field(init=False)
  _session: Any = field(init=False, repr=False)

  def __post_init__(self):
    import onnxruntime as ort
    self.onnx_path = Path(self.onnx_path)
    data = self.onnx_path.read_bytes()
    self.artifact_hash = sha256_hex(data)
    self.model_id = self.model_id or model_id_for(self.onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = self.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its optimizer warnings would flood the daemon's log
    # load from the bytes that were hashed, so artifact_hash describes exactly what runs
    self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type, tuple(i.shape)) for i in self._session.get_inputs()]
    if inputs != [(INPUT_NAME, f"tensor({INPUT_DTYPE})", INPUT_SHAPE)]:
      raise ArtifactError(f"{self.onnx_path}: inputs {inputs}, expected [{INPUT_NAME!r} {INPUT_DTYPE} {INPUT_SHAPE}]")
    check_outputs(str(self.onnx_path), {o.name: tuple(o.shape) for o in self._session.get_outputs()})

  def run(self, img: np.ndarray) -> dict[str, np.ndarray]:
    """Run one frame pair; float32 outputs keyed by OUTPUT_NAMES."""
    outs = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: check_input(img)})
    return {name: np.asarray(o, dtype=np.float32) for name, o in zip(OUTPUT_NAMES, outs)}


@dataclass
class TinygradRunner:
  """Run a tinygrad JIT pickled by compile_model, after checking it against its `.sha256` sidecar."""
  artifact_path: Path
  model_id: str = ""
  artifact_hash: str = field(init=False)
  _jit: Any = field(init=False, repr=False)
  _device: str = field(init=False, repr=False)

  def __post_init__(self):
    self.artifact_path = Path(self.artifact_path)
    self.model_id = self.model_id or self.artifact_path.name
    expected = read_sidecar(self.artifact_path).get(self.artifact_path.name)
    # read once, hash those bytes and unpickle those same bytes: nothing can swap the file in between
    data = self.artifact_path.read_bytes()
    self.artifact_hash = sha256_hex(data)
    if expected != self.artifact_hash:
      raise ArtifactError(f"{self.artifact_path}: sha256 {self.artifact_hash} does not match the sidecar's {expected}; "
                          "refusing to unpickle (rebuild with `scons`)")
    self._jit = pickle.loads(data)  # imports tinygrad (and the device's runtime) on demand
    captured = getattr(self._jit, "captured", None)
    if captured is None or not isinstance(captured.ret, dict):
      raise ArtifactError(f"{self.artifact_path}: not a captured tinygrad JIT returning a dict of outputs")
    check_outputs(str(self.artifact_path), {k: v.shape for k, v in captured.ret.items()})
    # place inputs on the device the JIT was captured on; naming it also skips tinygrad's default-device probe
    self._device = captured.expected_input_info[0][3]

  def run(self, img: np.ndarray) -> dict[str, np.ndarray]:
    """Run one frame pair; float32 outputs keyed by OUTPUT_NAMES."""
    from tinygrad import Tensor
    out = self._jit(**{INPUT_NAME: Tensor(check_input(img), device=self._device).realize()})
    # .numpy() copies out of the JIT's output buffers, which the next run overwrites
    return {name: out[name].numpy().astype(np.float32, copy=False) for name in OUTPUT_NAMES}


def make_runner(kind: RunnerKind, model_dir: str | Path | None = None, *, dev: str | None = None,
                threads: int = 1) -> Runner:
  """The runner of `kind` for the student bundled in `model_dir` (default selfdrive/modeld_fair/models/).

  onnxruntime loads `student.onnx`; tinygrad loads `student_tinygrad_<dev>.pkl` (dev: $DEV, else CPU) built
  from it by `scons`. The model id comes from `student.json` beside the ONNX.
  """
  model_dir = Path(model_dir) if model_dir is not None else MODEL_DIR
  onnx = model_dir / ONNX_NAME
  if kind == "onnxruntime":
    if not onnx.is_file():
      raise FileNotFoundError(f"{onnx} is missing: export the student ONNX (with its student.json) into {model_dir}")
    return OnnxRuntimeRunner(onnx, threads=threads)
  if kind == "tinygrad":
    dev = dev or default_dev()
    artifact = model_dir / artifact_name(dev)
    if not artifact.is_file():
      raise FileNotFoundError(f"{artifact} is missing: build it from {onnx} with `DEV={dev} scons` in the repo root")
    # an artifact built from an older ONNX would run old weights under the new model id; the ONNX may be absent
    # (a device bundle can ship only the artifact), then there is nothing to compare against
    built_from = read_sidecar(artifact).get(ONNX_NAME)
    if onnx.is_file() and built_from is not None and built_from != (now := sha256_hex(onnx.read_bytes())):
      raise ArtifactError(f"{artifact} was built from {ONNX_NAME} sha256 {built_from}, but {onnx} is now {now}: "
                          "rebuild with `scons`")
    return TinygradRunner(artifact, model_id=model_id_for(onnx))
  raise ValueError(f"unknown runner kind {kind!r}, expected 'tinygrad' or 'onnxruntime'")

"""The daemon's runners: onnxruntime vs tinygrad vs torch parity, the artifact hash gate, the scons build."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from selfdrive.modeld_fair import model_io as mio
from selfdrive.modeld_fair.compile_model import FLOAT32_TOL, compare, main as compile_main, seeded_input
from selfdrive.modeld_fair.runner import (MODEL_DIR, ArtifactError, OnnxRuntimeRunner, TinygradRunner, artifact_name,
                                          make_runner)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = artifact_name("CPU")
ENV = {**os.environ, "DEV": "CPU"}


class TinyStudent(torch.nn.Module):
  """Two strided convs with every model_io head: the contract of the real student at a fraction of its cost."""
  def __init__(self):
    super().__init__()
    self.c1, self.c2 = torch.nn.Conv2d(12, 8, 3, 2, 1), torch.nn.Conv2d(8, 8, 3, 2, 1)
    self.seg = torch.nn.Conv2d(8, mio.OUTPUTS["seg_logits"][0][1], 1)
    self.det = torch.nn.Conv2d(8, 8, 1)
    self.fc = torch.nn.Linear(8, mio.N_LANES * mio.N_LANE_POINTS * 4 + mio.N_LANES + 12)

  def forward(self, img):
    x = torch.relu(self.c1(img.float() / 255.0))
    y = torch.relu(self.c2(x))
    d, g = self.det(y), self.fc(y.mean((2, 3)))
    n = mio.N_LANES * mio.N_LANE_POINTS * 4
    return (torch.exp(d[:, 0:1]), self.seg(x), torch.sigmoid(d[:, 1:3]), torch.relu(d[:, 3:7]), torch.exp(d[:, 7:8]),
            g[:, :n].reshape(1, mio.N_LANES, mio.N_LANE_POINTS, 4), torch.sigmoid(g[:, n:n + mio.N_LANES]),
            g[:, n + mio.N_LANES:])


def export_tiny(path: Path, seed: int) -> TinyStudent:
  torch.manual_seed(seed)
  model = TinyStudent().eval()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter: 0.2 s here vs 5 s for dynamo
    torch.onnx.export(model, (torch.zeros(mio.INPUT_SHAPE, dtype=torch.uint8),), str(path), dynamo=False,
                      input_names=[mio.INPUT_NAME], output_names=list(mio.OUTPUT_NAMES), opset_version=17)
  return model


def scons(cwd: Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "SCons", "-f", str(ROOT / "SConstruct"), "--onnx=student.onnx",
                         f"--out={ARTIFACT}", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A model folder like the bundled one (student.onnx + student.json), built by `scons` once for this module."""
  d = tmp_path_factory.mktemp("models")
  model = export_tiny(d / "student.onnx", seed=0)
  (d / "student.json").write_text(json.dumps({"model_id": "tiny-test"}))
  t0 = time.perf_counter()
  res = scons(d)
  assert res.returncode == 0, res.stdout + res.stderr
  return d, model, res, time.perf_counter() - t0


def torch_outputs(model: TinyStudent, img: np.ndarray) -> dict[str, np.ndarray]:
  with torch.no_grad():
    return {n: o.numpy() for n, o in zip(mio.OUTPUT_NAMES, model(torch.from_numpy(img)))}


def test_parity_torch_onnxruntime_tinygrad(built):
  d, model, _, _ = built
  ort, tg = make_runner("onnxruntime", d), make_runner("tinygrad", d, dev="CPU")
  first = None
  for seed in (3, 4):
    img = seeded_input(seed)
    ref, o, t = torch_outputs(model, img), ort.run(img), tg.run(img)
    for got in (o, t):
      assert set(got) == set(mio.OUTPUT_NAMES)
      assert all(got[n].dtype == np.float32 and got[n].shape == mio.OUTPUTS[n][0] for n in mio.OUTPUT_NAMES)
      errors = compare(got, ref, FLOAT32_TOL)
      assert all(e.ok for e in errors.values()), errors
      assert max(e.rel for e in errors.values()) < 1e-5  # measured ~3e-7: float32 end to end on the CPU
    if first is None: first = {n: v.copy() for n, v in t.items()}
  # the JIT replays on the new input (nothing baked in at capture) and earlier results are not overwritten
  assert not np.allclose(first["seg_logits"], t["seg_logits"])
  assert all(np.array_equal(first[n], v) for n, v in tg.run(seeded_input(3)).items())


def test_identity_hashes_and_model_id(built, tmp_path):
  d = built[0]
  ort, tg = make_runner("onnxruntime", d), make_runner("tinygrad", d, dev="CPU")
  assert ort.model_id == tg.model_id == "tiny-test"
  assert ort.artifact_hash == hashlib.sha256((d / "student.onnx").read_bytes()).hexdigest()
  assert tg.artifact_hash == hashlib.sha256((d / ARTIFACT).read_bytes()).hexdigest()
  # without metadata the id is the file name
  assert OnnxRuntimeRunner(shutil.copy(d / "student.onnx", tmp_path / "bare.onnx")).model_id == "bare.onnx"


def test_scons_second_build_is_up_to_date(built):
  d, _, first, _ = built
  assert "compile_model" in first.stdout and "ok" in first.stdout
  again = scons(d)
  assert again.returncode == 0, again.stderr
  assert "is up to date" in again.stdout and "compile_model" not in again.stdout
  assert scons(d, "-q").returncode == 0  # -q: exit 0 only when nothing needs building


def copy_artifact(src: Path, dst: Path) -> Path:
  for name in (ARTIFACT, ARTIFACT + ".sha256"): shutil.copy(src / name, dst / name)
  return dst / ARTIFACT


def test_tampered_artifact_is_refused(built, tmp_path):
  art = copy_artifact(built[0], tmp_path)
  data = bytearray(art.read_bytes())
  data[len(data) // 2] ^= 1
  art.write_bytes(bytes(data))
  with pytest.raises(ArtifactError) as e:
    TinygradRunner(art)
  msg = str(e.value)
  assert str(art) in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
  assert (built[0] / (ARTIFACT + ".sha256")).read_text().split()[0] in msg


def test_missing_sidecar_is_refused(built, tmp_path):
  art = copy_artifact(built[0], tmp_path)
  (tmp_path / (ARTIFACT + ".sha256")).unlink()
  with pytest.raises(ArtifactError, match="sidecar"):
    TinygradRunner(art)


class Payload:
  """Unpickling this touches a marker file: the stand-in for a malicious artifact."""
  def __init__(self, marker: Path): self.marker = marker
  def __reduce__(self): return Path.touch, (self.marker,)


def test_wrong_hash_pickle_is_never_unpickled(tmp_path):
  marker, art = tmp_path / "unpickled", tmp_path / ARTIFACT
  data = pickle.dumps(Payload(marker))
  art.write_bytes(data)
  (tmp_path / (ARTIFACT + ".sha256")).write_text(f"{hashlib.sha256(b'something else').hexdigest()}  {ARTIFACT}\n")
  with pytest.raises(ArtifactError, match="refusing to unpickle"):
    TinygradRunner(art)
  assert not marker.exists()
  pickle.loads(data)  # the payload is live: the check above is what kept it from running
  assert marker.exists()


@pytest.mark.parametrize("img", [np.zeros((1, 6, 128, 256), np.uint8), np.zeros(mio.INPUT_SHAPE, np.float32),
                                 np.zeros(mio.INPUT_SHAPE[1:], np.uint8), [[0]]],
                         ids=["channels", "dtype", "no-batch", "list"])
@pytest.mark.parametrize("kind", ["onnxruntime", "tinygrad"])
def test_bad_input_raises(built, kind, img):
  with pytest.raises(ValueError, match=r"must be uint8 \(1, 12, 128, 256\)"):
    make_runner(kind, built[0], dev="CPU").run(img)


def test_make_runner_errors(built, tmp_path):
  with pytest.raises(FileNotFoundError, match="student.onnx is missing"):
    make_runner("onnxruntime", tmp_path)
  with pytest.raises(FileNotFoundError, match=r"student_tinygrad_qcom\.pkl is missing.*DEV=QCOM scons"):
    make_runner("tinygrad", tmp_path, dev="QCOM")
  with pytest.raises(ValueError, match="unknown runner kind"):
    make_runner("torch", tmp_path)  # type: ignore[arg-type]
  # an artifact built from another ONNX than the one beside it must be rebuilt, not run under the new model id
  copy_artifact(built[0], tmp_path)
  (tmp_path / "student.onnx").write_bytes(b"a newer student")
  with pytest.raises(ArtifactError, match="rebuild with `scons`"):
    make_runner("tinygrad", tmp_path, dev="CPU")


def test_contract_mismatch_is_refused(tmp_path):
  img = helper.make_tensor_value_info(mio.INPUT_NAME, TensorProto.UINT8, list(mio.INPUT_SHAPE))
  depth = helper.make_tensor_value_info("depth", TensorProto.FLOAT, list(mio.INPUT_SHAPE))
  graph = helper.make_graph([helper.make_node("Cast", [mio.INPUT_NAME], ["depth"], to=TensorProto.FLOAT)],
                            "wrong", [img], [depth])
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "wrong.onnx")
  with pytest.raises(ArtifactError, match=r"depth: expected \(1, 1, 32, 64\), got \(1, 12, 128, 256\).*lanes"):
    OnnxRuntimeRunner(tmp_path / "wrong.onnx")


def test_verify_rejects_artifact_of_another_model(built, tmp_path, capsys):
  export_tiny(tmp_path / "other.onnx", seed=1)
  assert compile_main(["--verify-only", str(tmp_path / "other.onnx"), str(built[0] / ARTIFACT)]) == 1
  out = capsys.readouterr()
  assert "FAIL" in out.out and "beyond rtol=0.001" in out.err


@pytest.mark.parametrize("kind,other", [("onnxruntime", "tinygrad"), ("tinygrad", "onnxruntime")])
def test_fast_start_without_foreign_imports(built, kind, other):
  code = ("import sys, time; t = time.perf_counter(); from selfdrive.modeld_fair.runner import make_runner; "
          f"r = make_runner({kind!r}, {str(built[0])!r}, dev='CPU'); dt = time.perf_counter() - t; "
          f"assert 'torch' not in sys.modules and {other!r} not in sys.modules, sorted(sys.modules); print(dt)")
  res = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in ENV.items() if k != "DEV"},
                       capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert float(res.stdout) < 2.0  # the daemon's start budget; measured ~0.15 s (onnxruntime) / ~0.45 s (tinygrad) here


STUDENT = MODEL_DIR / "student.onnx"


@pytest.mark.slow
@pytest.mark.skipif(not STUDENT.is_file(), reason="the real student ONNX is not exported yet")
def test_real_student_compiles_and_matches_onnxruntime(tmp_path):
  shutil.copy(STUDENT, tmp_path / "student.onnx")
  res = scons(tmp_path)
  assert res.returncode == 0, res.stdout + res.stderr
  img = seeded_input(5)
  errors = compare(make_runner("tinygrad", tmp_path, dev="CPU").run(img), OnnxRuntimeRunner(STUDENT).run(img),
                   FLOAT32_TOL)
  assert all(e.ok for e in errors.values()), errors

"""release/: build a bundle, apply it to a fake openpilot checkout, and undo it; refusals leave everything as it was."""
import ast
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from release.apply_bundle import (DAEMON, INSTALL_ROOTS, MANIFEST, PAYLOAD, PROCESS_CONFIG, RECORD, REGISTRATION,
                                  Refused, apply, register, sha256_file, unregister)
from release.build_bundle import BuildError, build, select_files

ROOT = Path(__file__).resolve().parents[1]

# openpilot's process_config.py, abridged (system/manager/process_config.py, 2025)
PROCESS_CONFIG_PY = '''\
import os
import operator

from cereal import car
from openpilot.common.params import Params
from openpilot.system.hardware import PC, TICI
from openpilot.system.manager.process import PythonProcess, NativeProcess, DaemonProcess

WEBCAM = os.getenv("USE_WEBCAM")

def driverview(started: bool, params: Params, CP: car.CarParams) -> bool:
  return started or params.get_bool("IsDriverViewEnabled")

def notcar(started: bool, params: Params, CP: car.CarParams) -> bool:
  return started and CP.notCar

def always_run(started: bool, params: Params, CP: car.CarParams) -> bool:
  return True

def only_onroad(started: bool, params: Params, CP: car.CarParams) -> bool:
  return started

procs = [
  DaemonProcess("manage_athenad", "system.athena.manage_athenad", "AthenadPid"),

  NativeProcess("camerad", "system/camerad", ["./camerad"], driverview, enabled=not WEBCAM),
  PythonProcess("logmessaged", "system.logmessaged", always_run),
  PythonProcess("dmonitoringmodeld", "selfdrive.modeld.dmonitoringmodeld", driverview, enabled=not (PC or WEBCAM)),
  NativeProcess("loggerd", "system/loggerd", ["./loggerd"], only_onroad),
  PythonProcess("modeld", "selfdrive.modeld.modeld", only_onroad),
  NativeProcess("sensord", "system/sensord", ["./sensord"], only_onroad, enabled=not PC),
  NativeProcess("ui", "selfdrive/ui", ["./ui"], always_run, watchdog_max_dt=(5 if not PC else None)),
  PythonProcess("controlsd", "selfdrive.controls.controlsd", only_onroad),

  # debug procs
  NativeProcess("bridge", "cereal/messaging", ["./bridge"], notcar),
]

managed_processes = {p.name: p for p in procs}
'''


def fake_openpilot(root: Path) -> Path:
  files = {
    PROCESS_CONFIG: PROCESS_CONFIG_PY,
    "system/manager/manager.py": "def main():\n  pass\n",
    "system/manager/process.py": "class PythonProcess: ...\n",
    "selfdrive/__init__.py": "",
    "selfdrive/modeld/modeld.py": "def main():\n  pass\n",
    "cereal/log.capnp": "@0xf3b1f17e25a4285b;\n",
    "common/params.py": "",
    "launch_openpilot.sh": "#!/usr/bin/env bash\nexec ./launch_chffrplus.sh\n",
  }
  for rel, text in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  return root


def snapshot(root: Path) -> dict[str, bytes | None]:
  """Every path under root: file bytes, or None for a folder."""
  return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def source_tree(dst: Path) -> Path:
  """A copy of the repo's runtime folders; a stub daemon stands in until the real one exists. Compiled artifacts
  (large, and built per machine) stay out: test_build_checks_artifact_sidecars covers them."""
  for root in INSTALL_ROOTS:
    shutil.copytree(ROOT / root, dst / root, ignore=shutil.ignore_patterns("__pycache__", "*.pkl", "*.pkl.sha256"))
  shutil.copyfile(ROOT / "pyproject.toml", dst / "pyproject.toml")
  if not (dst / DAEMON).exists():
    (dst / DAEMON).write_text('"""stub daemon"""\n\n\ndef main() -> None:\n  pass\n')
  return dst


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
  tmp = tmp_path_factory.mktemp("bundle")
  return build(source_tree(tmp / "src"), tmp / "bundle").path


@pytest.fixture(scope="module")
def tarball(bundle) -> Path:
  return build(bundle.parent / "src", bundle.parent / "bundle.tar.gz").path


@pytest.fixture
def openpilot(tmp_path) -> Path:
  return fake_openpilot(tmp_path / "openpilot")


def registration_lines(text: str) -> list[int]:
  return [i for i, line in enumerate(text.splitlines()) if "modeld_fair" in line]


def test_bundle_from_repo_holds_runtime_files_with_hashes(tmp_path):
  b = build(ROOT, tmp_path / "b")
  m = json.loads((b.path / MANIFEST).read_text())
  version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
  assert m["name"] == "fairpilot" and m["version"] == version
  assert re.fullmatch(r"[0-9a-f]{40}|unknown", m["commit"])
  assert sorted(m["files"]) == sorted(select_files(ROOT)[0])
  for must in ("selfdrive/modeld_fair/camera.py", "selfdrive/modeld_fair/medmodel_warp.py", "cereal_ext/fair.capnp",
               "cereal_ext/fair.py"):
    assert must in m["files"]
  for rel, h in m["files"].items():
    assert rel.startswith(tuple(r + "/" for r in INSTALL_ROOTS)) and "__pycache__" not in rel
    assert not Path(rel).name.startswith("test_") and "/tests/" not in rel
    assert sha256_file(b.path / PAYLOAD / rel) == h
  assert sha256_file(b.path / m["installer"]["path"]) == m["installer"]["sha256"]
  # every file of the bundle is in the manifest, nothing else
  listed = {f"{PAYLOAD}/{r}" for r in m["files"]} | {m["installer"]["path"], MANIFEST}
  assert {p.relative_to(b.path).as_posix() for p in b.path.rglob("*") if p.is_file()} == listed
  assert {"numpy", "capnp"} <= set(m["requires"]) and not {"torch", "tools"} & set(m["requires"])


def test_tarball_is_reproducible_and_applies(bundle, tarball, tmp_path, openpilot):
  assert build(bundle.parent / "src", tmp_path / "again.tgz").path.read_bytes() == tarball.read_bytes()
  apply(tarball, openpilot)
  assert (openpilot / RECORD).read_bytes() == (bundle / MANIFEST).read_bytes()


def test_install_places_files_and_registers_once(bundle, openpilot, capsys):
  before = snapshot(openpilot)
  apply(bundle, openpilot)
  m = json.loads((bundle / MANIFEST).read_text())
  for rel, h in m["files"].items():
    assert sha256_file(openpilot / rel) == h
  after = snapshot(openpilot)
  changed = {k for k in before if before[k] != after[k]}
  assert changed == {PROCESS_CONFIG}
  assert {k for k in after if after[k] is not None} - before.keys() == set(m["files"]) | {RECORD}

  text = (openpilot / PROCESS_CONFIG).read_text()
  lines = text.splitlines()
  (i,) = registration_lines(text)
  assert lines[i] == "  " + REGISTRATION
  assert lines[i - 1] == '  PythonProcess("modeld", "selfdrive.modeld.modeld", only_onroad),'
  assert lines[:i] + lines[i + 1:] == PROCESS_CONFIG_PY.splitlines()  # nothing else touched
  procs = next(n.value for n in ast.parse(text).body if isinstance(n, ast.Assign) and n.targets[0].id == "procs")
  names = [e.args[0].value for e in procs.elts]
  assert names.count("modeld_fair") == 1 and names.index("modeld_fair") == names.index("modeld") + 1
  assert "register modeld_fair" in capsys.readouterr().out

  mtime = (openpilot / PROCESS_CONFIG).stat().st_mtime_ns
  apply(bundle, openpilot)
  assert snapshot(openpilot) == after and (openpilot / PROCESS_CONFIG).stat().st_mtime_ns == mtime
  assert "nothing to do" in capsys.readouterr().out


def test_uninstall_restores_the_original_bytes(bundle, openpilot, capsys):
  before = snapshot(openpilot)
  apply(bundle, openpilot)
  # what running the daemon leaves behind, and an artifact built on the device, must not block the removal
  (openpilot / "selfdrive/modeld_fair/__pycache__").mkdir()
  (openpilot / "selfdrive/modeld_fair/__pycache__/camera.cpython-311.pyc").write_bytes(b"pyc")
  apply(bundle, openpilot, uninstall=True)
  assert snapshot(openpilot) == before
  apply(bundle, openpilot, uninstall=True)
  assert snapshot(openpilot) == before and "nothing to do" in capsys.readouterr().out.splitlines()[-1]

  apply(bundle, openpilot)
  built = openpilot / "selfdrive/modeld_fair/models/student_tinygrad_qcom.pkl"
  built.write_bytes(b"built on the device")
  apply(bundle, openpilot, uninstall=True)
  assert "student_tinygrad_qcom.pkl is not from a known bundle" in capsys.readouterr().out
  assert built.read_bytes() == b"built on the device" and not (openpilot / RECORD).exists()
  assert (openpilot / PROCESS_CONFIG).read_text() == PROCESS_CONFIG_PY


def test_dry_run_changes_nothing(bundle, openpilot, capsys):
  before = snapshot(openpilot)
  apply(bundle, openpilot, dry_run=True)
  out = capsys.readouterr().out
  assert snapshot(openpilot) == before
  assert "would write selfdrive/modeld_fair/camera.py" in out and "would register modeld_fair" in out
  apply(bundle, openpilot)
  installed = snapshot(openpilot)
  apply(bundle, openpilot, dry_run=True, uninstall=True)
  assert snapshot(openpilot) == installed and "would unregister modeld_fair" in capsys.readouterr().out


def test_refuses_a_folder_that_is_not_openpilot(bundle, tmp_path):
  other = tmp_path / "not_openpilot"
  (other / "system/manager").mkdir(parents=True)
  (other / PROCESS_CONFIG).write_text(PROCESS_CONFIG_PY)
  before = snapshot(other)
  for uninstall in (False, True):
    with pytest.raises(Refused, match="does not look like an openpilot checkout: missing system/manager/manager.py, "
                                      "selfdrive/modeld/, cereal/log.capnp"):
      apply(bundle, other, uninstall=uninstall)
  assert snapshot(other) == before
  # and through the command line: a clear message, exit code 2
  r = subprocess.run([sys.executable, "-m", "release.apply_bundle", str(bundle), str(ROOT)], cwd=ROOT,
                     capture_output=True, text=True, timeout=30)
  assert r.returncode == 2 and "refused" in r.stderr and "does not look like an openpilot checkout" in r.stderr


@pytest.mark.parametrize("tamper", ["edit", "extra", "missing", "escape", "installer"])
def test_refuses_a_tampered_bundle(bundle, tmp_path, openpilot, tamper):
  bad = tmp_path / "bad"
  shutil.copytree(bundle, bad)
  camera = bad / PAYLOAD / "selfdrive/modeld_fair/camera.py"
  if tamper == "edit":
    camera.write_text(camera.read_text() + "import os; os.system('true')\n")
  elif tamper == "extra":
    (bad / PAYLOAD / "selfdrive/modeld_fair/evil.py").write_text("")
  elif tamper == "missing":
    camera.unlink()
  elif tamper == "escape":  # a consistent manifest that reaches outside our folders
    m = json.loads((bad / MANIFEST).read_text())
    (bad / PAYLOAD / "selfdrive/modeld/modeld.py").parent.mkdir(parents=True)
    (bad / PAYLOAD / "selfdrive/modeld/modeld.py").write_text("")
    m["files"]["selfdrive/modeld_fair/../modeld/modeld.py"] = sha256_file(bad / PAYLOAD / "selfdrive/modeld/modeld.py")
    (bad / MANIFEST).write_text(json.dumps(m))
  else:
    (bad / "apply_bundle.py").write_text("")
  before = snapshot(openpilot)
  with pytest.raises(Refused, match="does not match its MANIFEST|outside selfdrive/modeld_fair"):
    apply(bad, openpilot)
  assert snapshot(openpilot) == before


def test_imports_work_inside_the_checkout_only(bundle, openpilot):
  apply(bundle, openpilot)
  # -S: no site processing, so the editable install's finder (a .pth in site-packages) never loads; -I: no
  # PYTHONPATH, user site or script folder. Then only the fake checkout and the bare site-packages folder.
  code = f"""
import importlib.util, sys
sys.path[:0] = [{str(openpilot)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})
import selfdrive.modeld_fair.camera, selfdrive.modeld_fair.medmodel_warp, cereal_ext
assert importlib.util.find_spec("tools") is None, "the repository is importable"
assert not any("editable" in m for m in sys.modules), [m for m in sys.modules if "editable" in m]
for m in ("selfdrive", "selfdrive.modeld_fair.camera", "selfdrive.modeld_fair.medmodel_warp", "cereal_ext",
          "cereal_ext.fair"):
  f = sys.modules[m].__file__
  assert f.startswith({str(openpilot) + "/"!r}), (m, f)
print(cereal_ext.SCHEMA_PATH)
"""
  r = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=openpilot, capture_output=True, text=True,
                     timeout=60, env={"PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == str(openpilot / "cereal_ext/fair.capnp")


def test_bundled_installer_runs_alone_from_a_tarball(bundle, tarball, tmp_path, openpilot):
  shutil.copyfile(bundle / "apply_bundle.py", tmp_path / "apply_bundle.py")
  run = lambda *a: subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "apply_bundle.py"), str(tarball),
                                   str(openpilot), *a], cwd=tmp_path, capture_output=True, text=True, timeout=30)
  before = snapshot(openpilot)
  r = run("--dry-run")
  assert r.returncode == 0 and "hashes verified" in r.stdout and snapshot(openpilot) == before, r.stderr
  assert run().returncode == 0 and sha256_file(openpilot / DAEMON) == sha256_file(bundle / PAYLOAD / DAEMON)
  assert run("--uninstall").returncode == 0 and snapshot(openpilot) == before


def test_upgrade_removes_files_the_new_bundle_dropped(bundle, tmp_path, openpilot):
  src = shutil.copytree(bundle.parent / "src", tmp_path / "src")
  (src / "selfdrive/modeld_fair/old_helper.py").write_text("X = 1\n")
  apply(build(src, tmp_path / "old").path, openpilot)
  assert (openpilot / "selfdrive/modeld_fair/old_helper.py").is_file()
  apply(bundle, openpilot)
  assert not (openpilot / "selfdrive/modeld_fair/old_helper.py").exists()
  assert (openpilot / RECORD).read_bytes() == (bundle / MANIFEST).read_bytes()


def test_no_daemon_no_registration(bundle, tmp_path, openpilot):
  src = shutil.copytree(bundle.parent / "src", tmp_path / "src")
  (src / DAEMON).unlink()
  b = build(src, tmp_path / "b")
  assert any("modeld_fair.py" in w for w in b.warnings)
  before = snapshot(openpilot)
  with pytest.raises(Refused, match="refusing to register a process that cannot start"):
    apply(b.path, openpilot)
  assert snapshot(openpilot) == before


@pytest.mark.parametrize("problem, match", [
  ("selfdrive/modeld_fair/bad.py:import torch\n", "imports torch: training/dev code"),
  ("selfdrive/modeld_fair/bad.py:def f():\n  from tools.fair import sim\n", "imports tools.fair"),
  ("selfdrive/modeld_fair/bad.py:from selfdrive.modeld_fair.nowhere import x\n", "which the bundle does not have"),
  ("selfdrive/modeld_fair/models/a.pkl.sha256:" + "0" * 64 + "  a.pkl\n", "a.pkl is missing"),
  ("selfdrive/modeld_fair/modeld_fair.py:def run():\n  pass\n", "no top-level main"),
])
def test_build_refuses_code_that_cannot_work_on_device(bundle, tmp_path, problem, match):
  src = shutil.copytree(bundle.parent / "src", tmp_path / "src")
  rel, text = problem.split(":", 1)
  (src / rel).write_text(text)
  with pytest.raises(BuildError, match=match):
    build(src, tmp_path / "b")
  assert not (tmp_path / "b").exists()


def test_build_checks_artifact_sidecars(bundle, tmp_path):
  src = shutil.copytree(bundle.parent / "src", tmp_path / "src")
  models = src / "selfdrive/modeld_fair/models"
  (models / "student_tinygrad_qcom.pkl").write_bytes(b"jit")
  onnx = models / "student.onnx"
  sidecar = f"{sha256_file(models / 'student_tinygrad_qcom.pkl')}  student_tinygrad_qcom.pkl\n" \
            f"{sha256_file(onnx) if onnx.exists() else '1' * 64}  student.onnx\n"
  (models / "student_tinygrad_qcom.pkl.sha256").write_text(sidecar)
  (src / "selfdrive/modeld_fair/tests").mkdir()
  (src / "selfdrive/modeld_fair/tests/test_x.py").write_text("")
  (src / "selfdrive/modeld_fair/models/student.pt").write_bytes(b"torch checkpoint")
  b = build(src, tmp_path / "ok")
  assert "selfdrive/modeld_fair/models/student_tinygrad_qcom.pkl" in b.manifest["files"]
  assert set(b.skipped) == {"selfdrive/modeld_fair/tests/test_x.py", "selfdrive/modeld_fair/models/student.pt"}
  (models / "student_tinygrad_qcom.pkl").write_bytes(b"rebuilt without updating the sidecar")
  with pytest.raises(BuildError, match="student_tinygrad_qcom.pkl: sha256 differs"):
    build(src, tmp_path / "stale")


@pytest.mark.parametrize("edit", ["crlf", "no_modeld", "no_trailing_comma", "by_hand"])
def test_registration_edge_cases_round_trip(edit):
  text = PROCESS_CONFIG_PY
  if edit == "crlf":
    text = text.replace("\n", "\r\n")
  elif edit == "no_modeld":
    text = text.replace('  PythonProcess("modeld", "selfdrive.modeld.modeld", only_onroad),\n', "")
  elif edit == "no_trailing_comma":
    text = text.replace('["./bridge"], notcar),\n]', '["./bridge"], notcar)\n]').replace(
      '  PythonProcess("modeld", "selfdrive.modeld.modeld", only_onroad),\n', "")
  else:
    text = text.replace("only_onroad),\n  NativeProcess(\"sensord\"",
                        "only_onroad),\n  PythonProcess('modeld_fair', 'selfdrive.modeld_fair.modeld_fair',\n"
                        "                only_onroad),\n  NativeProcess(\"sensord\"")
  new, _ = register(text)
  if edit == "by_hand":
    assert new is None  # already registered: never a second line
    assert unregister(text)[0] == PROCESS_CONFIG_PY
    return
  assert new is not None and len(registration_lines(new)) == 1 and register(new)[0] is None
  ast.parse(new)
  assert ("\r\n" in new) == (edit == "crlf") and "\n\n\n" not in new.replace("\r", "")
  assert unregister(new)[0] == text


def test_refuses_a_process_config_it_cannot_edit_safely():
  with pytest.raises(Refused, match="does not parse"):
    register(PROCESS_CONFIG_PY.replace("procs = [", "procs = [[", 1))
  with pytest.raises(Refused, match="no module-level `procs"):
    register(PROCESS_CONFIG_PY.replace("procs = [", "processes = [", 1).replace("in procs}", "in processes}"))
  with pytest.raises(Refused, match="not one process per line"):
    register(PROCESS_CONFIG_PY.replace('only_onroad),\n  NativeProcess("sensord"',
                                       'only_onroad), NativeProcess("sensord"'))


def test_a_daemon_that_does_not_import_is_never_registered(bundle, tmp_path, openpilot, capsys):
  src = shutil.copytree(bundle.parent / "src", tmp_path / "src")
  (src / DAEMON).write_text("import fairpilot_missing_dependency\n\n\ndef main():\n  pass\n")
  b = build(src, tmp_path / "b").path
  apply(b, openpilot, dry_run=True)
  assert "cannot import 'fairpilot_missing_dependency'" in capsys.readouterr().out
  with pytest.raises(Refused, match="(?s)does not import.*No module named 'fairpilot_missing_dependency'"
                                    ".*not registered"):
    apply(b, openpilot)
  assert (openpilot / PROCESS_CONFIG).read_text() == PROCESS_CONFIG_PY
  apply(b, openpilot, uninstall=True)
  assert snapshot(openpilot) == snapshot(fake_openpilot(tmp_path / "fresh"))

"""apply_bundle faults: a checkout it cannot write into, truncated and deeply nested bundles. Every refusal is
one `refused:` line, exit 2 (docs/deploy.md), and leaves the checkout's bytes as they were. build_bundle refuses a
tree that is not fairpilot's the same way."""
import shutil
import subprocess
import sys

import pytest

from release.apply_bundle import INSTALL_ROOTS, MANIFEST, Refused, apply
from tests.test_release import ROOT, bundle, fake_openpilot, openpilot, snapshot, tarball  # noqa: F401 (fixtures)

pytestmark = pytest.mark.faults


def _cli(bundle_path, op) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "release.apply_bundle", str(bundle_path), str(op)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("blocked", ["selfdrive/modeld_fair", "cereal_ext", "selfdrive/modeld_fair/models"])
def test_a_file_where_the_bundle_needs_a_folder_changes_nothing(bundle, openpilot, blocked):
  (openpilot / blocked).parent.mkdir(parents=True, exist_ok=True)
  (openpilot / blocked).write_text("not a folder")
  before = snapshot(openpilot)
  with pytest.raises(Refused, match="is a file where the bundle needs a folder"):
    apply(bundle, openpilot)
  assert snapshot(openpilot) == before
  r = _cli(bundle, openpilot)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refused" in r.stderr and "Traceback" not in r.stderr
  assert snapshot(openpilot) == before


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_a_truncated_tarball_is_refused(tarball, tmp_path, openpilot, keep):
  data = tarball.read_bytes()
  cut = tmp_path / "cut.tar.gz"
  cut.write_bytes(data[:int(len(data) * keep)])
  before = snapshot(openpilot)
  r = _cli(cut, openpilot)
  assert r.returncode == 2 and "refused: cannot unpack" in r.stderr and "Traceback" not in r.stderr, r.stderr
  assert snapshot(openpilot) == before


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": ' + "[" * 50_000, "\x00\xff"])
def test_a_deeply_nested_or_garbled_manifest_is_refused(bundle, tmp_path, openpilot, text):
  bad = shutil.copytree(bundle, tmp_path / "bad")
  (bad / MANIFEST).write_text(text, encoding="latin-1")
  before = snapshot(openpilot)
  r = _cli(bad, openpilot)
  assert r.returncode == 2 and "refused: unreadable MANIFEST.json" in r.stderr and "Traceback" not in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and snapshot(openpilot) == before


@pytest.mark.parametrize("roots, message", [(False, "is missing: not a fairpilot source tree"),
                                             (True, "pyproject.toml: no [project] version (FileNotFoundError)")])
def test_build_bundle_refuses_a_tree_that_is_not_fairpilot_with_exit_2(tmp_path, roots, message):
  src = tmp_path / "src"
  for root in INSTALL_ROOTS if roots else ():
    (src / root).mkdir(parents=True)
  src.mkdir(exist_ok=True)
  r = subprocess.run([sys.executable, "-m", "release.build_bundle", "--src", str(src), "--out", str(tmp_path / "b")],
                     cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()

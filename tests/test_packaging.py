"""The package as pip installs it: Python versions, and every data file the code reads shipped in the wheel."""
import fnmatch
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_installs_on_python_3_11_and_3_12():
  spec = SpecifierSet(PROJECT["project"]["requires-python"])
  assert "3.11.7" in spec and "3.12.1" in spec


def test_every_tracked_data_file_in_a_package_is_declared_package_data():
  try:
    files = subprocess.run(["git", "ls-files", "cereal_ext", "selfdrive", "tools"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  declared = PROJECT["tool"]["setuptools"]["package-data"]
  data = [Path(f) for f in files if not f.endswith(".py")]
  assert data, "expected the schema, the bundled student and the recipes"
  for f in data:
    patterns = declared.get(".".join(f.parent.parts), [])
    assert any(fnmatch.fnmatch(f.name, p) for p in patterns), f"{f} would be missing from a wheel (package-data)"

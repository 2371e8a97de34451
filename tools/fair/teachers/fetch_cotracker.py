"""Put Meta's `cotracker` package folder into an ignored folder (default .venv/extern/) for the CoTracker teacher.

The official package is not on PyPI. The wheel napari-cotrack==0.1.7 (MIT, on PyPI) bundles Meta's
cotracker 3.0.0 package folder unchanged; this downloads that wheel with pip (no dependencies, no
install) and extracts only its `cotracker/` folder. Put the target folder on PYTHONPATH (the tests do
that themselves). Its code is Meta's (CC BY-NC 4.0, github.com/facebookresearch/co-tracker) and is never
copied into this repository.

  python -m tools.fair.teachers.fetch_cotracker [--target .venv/extern] [--wheel FILE.whl]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "napari-cotrack==0.1.7"
PACKAGE = "cotracker"
DEFAULT_TARGET = Path(".venv/extern")


def download_wheel(dest: Path) -> Path:
  """pip download the wheel into `dest` (the wheel says Python >= 3.12; its cotracker folder runs on 3.11)."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                  "3.12", "--disable-pip-version-check", "-q", WHEEL, "-d", str(dest)], check=True)
  wheels = sorted(dest.glob("napari_cotrack-*.whl"))
  if not wheels:
    raise FileNotFoundError(f"pip download of {WHEEL} left no wheel in {dest}")
  return wheels[0]


def extract_package(wheel: Path, target: Path) -> Path:
  """Extract only `cotracker/` of `wheel` into target/cotracker (replacing an older copy atomically)."""
  with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(f"{PACKAGE}/") and not n.endswith("/")]
    if f"{PACKAGE}/predictor.py" not in names:
      raise ValueError(f"{wheel} holds no {PACKAGE}/predictor.py: not the wheel that bundles Meta's cotracker")
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}.", dir=target))
    for n in names:
      z.extract(n, tmp)
  final = target / PACKAGE
  old = target / f".{PACKAGE}.old"
  shutil.rmtree(old, ignore_errors=True)
  if final.exists():
    os.replace(final, old)
  os.replace(tmp / PACKAGE, final)
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)
  return final


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="folder for cotracker/ (default .venv/extern)")
  p.add_argument("--wheel", type=Path, default=None, help="use this downloaded wheel instead of pip download")
  args = p.parse_args(argv)
  if args.wheel is not None:
    path = extract_package(args.wheel, args.target)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      path = extract_package(download_wheel(Path(tmp)), args.target)
  print(f"cotracker package at {path}; add {args.target} to PYTHONPATH")
  return 0


if __name__ == "__main__":
  sys.exit(main())

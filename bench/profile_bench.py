#!/usr/bin/env python3
"""Profile the nano and small students and the bundled ONNX (`fair profile`): writes docs/benchmarks/profile.md.

  .venv/bin/python bench/profile_bench.py [--iters 200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.fair.cli import main as fair  # noqa: E402

MODELS = ["nano", "small", "selfdrive/modeld_fair/models/student.onnx"]

if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--iters", type=int, default=200)
  args = ap.parse_args()
  sys.exit(fair(["profile", *MODELS, "--iters", str(args.iters), "--report", "docs/benchmarks/profile.md"]))

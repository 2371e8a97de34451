#!/usr/bin/env python3
"""Run every benchmark (each writes docs/benchmarks/<name>.md) and assemble docs/benchmarks.md.

  .venv/bin/python bench/run_all.py [--only warp decode sim] [--assemble-only]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"decode": "bench/decode_bench.py", "warp": "bench/warp_bench.py", "sim": "bench/sim_bench.py",
            "daemon": "bench/daemon_bench.py", "profile": "bench/profile_bench.py", "label": "bench/label_bench.py",
            "lanes": "bench/lanes_bench.py", "flow_loss_scan": "bench/flow_loss_scan.py",
            "box_distance": "bench/box_distance_bench.py", "real_depth": "bench/real_depth_bench.py",
            "scenarios": "bench/scenarios_bench.py"}
INTRO = """# Benchmarks

Measured numbers only; each section names its machine, date and the command that reproduces
it. Regenerate all with `make bench` (sections: docs/benchmarks/*.md). Machines here are shared
2-core VMs, so numbers carry noise from whatever else ran at the time.
"""


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=sorted(SECTIONS))
  ap.add_argument("--assemble-only", action="store_true", help="only rebuild docs/benchmarks.md from the sections")
  args = ap.parse_args()
  if not args.assemble_only:
    for name in args.only:
      subprocess.run([sys.executable, SECTIONS[name]], cwd=ROOT, check=True)
  # every section, also those written by longer jobs (flow.md: fair flow-train, transfer.md: make transfer,
  # soak.md: bench/soak.py, a 20-minute live run)
  parts = [INTRO] + [p.read_text() for p in sorted((ROOT / "docs/benchmarks").glob("*.md"))]
  (ROOT / "docs/benchmarks.md").write_text("\n".join(parts))
  return 0


if __name__ == "__main__":
  sys.exit(main())

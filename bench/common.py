"""Shared bits of the bench scripts: one-core pinning and the machine/date header of a report."""
from __future__ import annotations

import os

from tools.fair.bench.report import header, machine

__all__ = ["header", "machine", "pin_one_core", "write_report"]


def pin_one_core() -> int:
  """Pin this process to one CPU (the benchmarks' targets are per core); returns that CPU."""
  cpu = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpu})
  return cpu


def write_report(path, text: str) -> None:
  """Write a report section (creating docs/benchmarks/) and echo it."""
  from pathlib import Path
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(text)

"""Shared bits of the bench scripts: one-core pinning and the machine/date header of a report."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess


def pin_one_core() -> int:
  """Pin this process to one CPU (the benchmarks' targets are per core); returns that CPU."""
  cpu = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpu})
  return cpu


def machine() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    model = platform.processor() or platform.machine()
  return f"{model}, {os.cpu_count()} cores"


def header(title: str, command: str) -> str:
  """A report section's heading with machine, date and the command that reproduces it."""
  return (f"## {title}\n\n- machine: {machine()}\n- date: {datetime.date.today().isoformat()}\n"
          f"- command: `{command}`\n")


def write_report(path, text: str) -> None:
  """Write a report section (creating docs/benchmarks/) and echo it."""
  from pathlib import Path
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(text)

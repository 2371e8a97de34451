"""The machine/date header every benchmark report carries (bench/ scripts and long experiments alike)."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess


def machine() -> str:
  """CPU model and core count, e.g. "Intel(R) Xeon(R) Processor, 2 cores"."""
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

"""`--device` of the torch commands: auto picks cuda, then mps, then cpu; an unavailable device is an error."""
from __future__ import annotations

import argparse

DEVICE_HELP = "auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


def add_device_argument(p: argparse.ArgumentParser) -> None:
  """The one --device flag every torch command takes."""
  p.add_argument("--device", default="auto", help=DEVICE_HELP)


def resolve_device(name: str):
  """`name` (auto, cpu, cuda, cuda:N, mps or a torch.device) -> torch.device; ValueError in one line when
  the device does not exist here."""
  import torch   # only torch commands resolve devices
  if str(name) == "auto":
    if torch.cuda.is_available():
      return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
  try:
    device = torch.device(name)
  except (RuntimeError, TypeError):
    raise ValueError(f"--device {name!r}: not a device ({DEVICE_HELP})") from None
  if device.type == "cuda":
    if not torch.cuda.is_available():
      built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
      raise ValueError(f"--device {name}: no CUDA device available (torch {torch.__version__}, built {built})")
    if device.index is not None and device.index >= torch.cuda.device_count():
      raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
  elif device.type == "mps" and not torch.backends.mps.is_available():
    raise ValueError(f"--device {name}: no MPS device available")
  elif device.type not in ("cpu", "cuda", "mps"):
    raise ValueError(f"--device {name}: not supported ({DEVICE_HELP})")
  return device

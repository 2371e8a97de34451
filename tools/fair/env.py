"""`fair env`: what a bug report needs: versions, devices, and where each teacher's weights are looked for."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("fairpilot", "torch", "transformers", "huggingface-hub", "safetensors", "peft", "onnxruntime", "onnx",
            "tinygrad", "numpy", "av", "pycapnp")


def installed(name: str) -> str:
  try:
    return version(name)
  except PackageNotFoundError:
    return "not installed"


def devices() -> list[str]:
  """torch's devices here, and the one `--device auto` picks."""
  import torch
  from tools.fair.device import resolve_device
  built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
  out = [f"cuda: {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} device(s), torch built {built}"]
  for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
    out.append(f"  cuda:{i}: {torch.cuda.get_device_name(i)}, "
               f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB")
  out.append(f"mps: {'available' if torch.backends.mps.is_available() else 'none'}")
  out.append(f"--device auto: {resolve_device('auto')}")
  return out


def weights_places(weights_dir: str | None) -> list[str]:
  """Per teacher, the folder (or cache entry) load_teacher reads, and whether it is there (nothing is hashed)."""
  from huggingface_hub import constants
  from tools.fair.teachers import TEACHERS
  from tools.fair.teachers.weights import HF_CACHE, WEIGHTS_ENV
  source = weights_dir or os.environ.get(WEIGHTS_ENV) or HF_CACHE
  out = [f"weights: {'the Hugging Face cache ' + constants.HF_HUB_CACHE if source == HF_CACHE else source}"
         f" (--weights, else ${WEIGHTS_ENV}, else the Hugging Face cache)"]
  for name, cls in TEACHERS.items():
    ids = getattr(cls, "hf_ids", ())
    if not ids:
      out.append(f"  {name}: no official weights (trained here or none needed)")
      continue
    if source == HF_CACHE:
      where = os.path.join(constants.HF_HUB_CACHE, f"models--{ids[0].replace('/', '--')}")
    else:
      where = os.path.join(source, name)
    out.append(f"  {name}: {where} [{'found' if os.path.isdir(where) else 'missing'}] (official: {ids[0]})")
  return out


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--weights", default=None, help="weights DIR to check (default: $FAIR_WEIGHTS_DIR, else the HF cache)")


def run(args: argparse.Namespace) -> int:
  """Print the report."""
  print(f"python: {sys.version.split()[0]} ({sys.executable})")
  print(f"platform: {platform.platform()} ({platform.machine()})")
  for name in PACKAGES:
    print(f"{name}: {installed(name)}")
  print("\n".join(devices()))
  print("\n".join(weights_places(args.weights)))
  return 0

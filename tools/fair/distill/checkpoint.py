"""Atomic, verified training checkpoints.

A checkpoint is a folder `<out>/checkpoints/step-00000123/` holding
  model.safetensors   the model's state dict (student, or student + DoRA adapters)
  state.pt            everything else needed to resume exactly (optimizer, scaler, EMA, RNG states, data
                      position, loss projectors, ...): tensors and primitive types only, so that
                      torch.load(weights_only=True) reads it
  meta.json           step, epoch, metric and the sha256 of both files
written into a temporary folder, fsynced and renamed into place (a crash leaves either the old set or
the new one, never half a checkpoint). `best/` is the same layout for the best validation metric.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tools.fair.files import fsync_path, pid_running, remove_stale_tmp, sha256_file

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"


@dataclass(frozen=True)
class Checkpoint:
  """A verified checkpoint on disk."""
  path: Path
  step: int
  meta: dict


def rng_state() -> dict:
  """torch (CPU + CUDA), numpy and python RNG states as tensors / primitives (weights_only loadable)."""
  np_state = np.random.get_state()
  py_version, py_state, py_gauss = random.getstate()
  state = {
    "torch": torch.get_rng_state(),
    "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
              "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
  }
  if torch.cuda.is_available():
    state["cuda"] = torch.cuda.get_rng_state_all()
  return state


def set_rng_state(state: dict) -> None:
  """Inverse of rng_state()."""
  torch.set_rng_state(state["torch"].cpu())
  n = state["numpy"]
  np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
  p = state["python"]
  random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
  if "cuda" in state and torch.cuda.is_available():
    torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class CheckpointManager:
  """Writes checkpoints under `<out>/checkpoints`, keeps the last `keep_last` and `<out>/best`."""

  def __init__(self, out: str | Path, keep_last: int = 3):
    if keep_last < 1:
      raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    self.out = Path(out)
    self.dir = self.out / "checkpoints"
    self.best_dir = self.out / "best"
    self.keep_last = keep_last
    self._recover()

  def _recover(self) -> None:
    """Undo what a kill in _write left: a checkpoint moved aside (`.NAME.old-PID`) whose replacement never
    arrived is put back; the temporary folders of dead writers go."""
    for folder in (self.out, self.dir):
      for old in sorted(folder.glob(".*.old-*")) if folder.is_dir() else ():
        name, pid = old.name[1:].rsplit(".old-", 1)
        if not pid.isdigit() or pid_running(int(pid)):
          continue
        if (old.parent / name).exists():
          shutil.rmtree(old, ignore_errors=True)
        else:
          os.replace(old, old.parent / name)
    remove_stale_tmp(self.out)

  def _write(self, final: Path, model_state: dict[str, torch.Tensor], state: dict, meta: dict) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
      # safetensors wants contiguous, unshared tensors
      save_file({k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}, str(tmp / MODEL_FILE))
      torch.save(state, tmp / STATE_FILE)
      meta = {**meta, "sha256": {f: sha256_file(tmp / f) for f in (MODEL_FILE, STATE_FILE)}}
      (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
      for f in (MODEL_FILE, STATE_FILE, META_FILE):
        fsync_path(tmp / f)
    except (SafetensorError, RuntimeError, OSError) as e:   # a full disk: safetensors and torch wrap the OSError
      shutil.rmtree(tmp, ignore_errors=True)
      raise OSError(f"{final}: checkpoint not written ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                    "the previous ones are kept") from None
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():  # replacing (best/, or a re-run step): move aside first, a folder rename needs a free target
      shutil.rmtree(old, ignore_errors=True)
      os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final

  def save(self, step: int, model_state: dict[str, torch.Tensor], state: dict, meta: dict | None = None) -> Path:
    """Write checkpoint `step` atomically and prune all but the last keep_last; returns its folder."""
    self.dir.mkdir(parents=True, exist_ok=True)
    path = self._write(self.dir / f"step-{step:08d}", model_state, state, {**(meta or {}), "step": step})
    for old in self.list()[:-self.keep_last]:
      shutil.rmtree(old, ignore_errors=True)
    return path

  def save_best(self, step: int, model_state: dict[str, torch.Tensor], state: dict, meta: dict) -> Path:
    """Write `<out>/best` (same layout; state may be minimal)."""
    self.out.mkdir(parents=True, exist_ok=True)
    return self._write(self.best_dir, model_state, state, {**meta, "step": step})

  def list(self) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders excluded)."""
    if not self.dir.is_dir():
      return []
    return sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step-"))

  def verify(self, path: Path) -> Checkpoint:
    """The checkpoint at `path` if complete and its hashes match; ValueError naming the problem otherwise."""
    try:
      meta = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: unreadable {META_FILE}: {e}") from None
    for f in (MODEL_FILE, STATE_FILE):
      if not (path / f).is_file():
        raise ValueError(f"{path}: {f} is missing")
      if sha256_file(path / f) != meta.get("sha256", {}).get(f):
        raise ValueError(f"{path}: {f} does not match its sha256 (corrupt or partial)")
    return Checkpoint(path, int(meta["step"]), meta)

  def latest(self) -> Checkpoint | None:
    """The newest valid checkpoint; corrupt or partial ones are skipped with a warning."""
    for path in reversed(self.list()):
      try:
        return self.verify(path)
      except ValueError as e:
        warnings.warn(f"skipping checkpoint: {e}; falling back to the previous one", stacklevel=2)
    return None

  def best(self) -> Checkpoint | None:
    """The best checkpoint, if one was written and is valid."""
    if not self.best_dir.is_dir():
      return None
    try:
      return self.verify(self.best_dir)
    except ValueError as e:
      warnings.warn(f"best checkpoint unusable: {e}", stacklevel=2)
      return None

  @staticmethod
  def load(ckpt: Checkpoint, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(model state dict, state dict) of a verified checkpoint; state.pt is loaded with weights_only=True.
    Keep device "cpu" for resuming (RNG states are CPU tensors; load_state_dict moves the rest)."""
    model_state = load_file(str(ckpt.path / MODEL_FILE), device=str(device))
    state = torch.load(ckpt.path / STATE_FILE, map_location=device, weights_only=True)
    return model_state, state

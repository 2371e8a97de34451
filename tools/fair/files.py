"""File helpers every writer of long-lived outputs shares: content hashes and crash-safe writes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def fsync_path(path: str | Path) -> None:
  """fsync a file or a directory (a rename survives a power cut only once its directory is synced)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def atomic_write(path: str | Path, data: bytes | str) -> None:
  """Write `data` to `path` so that readers see the old file or the whole new one, even after a crash."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  fsync_path(path.parent)


def inside(root: str | Path, rel: str) -> Path:
  """`root / rel` for a path read from a manifest; ValueError when it is absolute or leaves `root` (by '..' or
  a symlink), so that a hostile manifest can make a tool read, replace or delete nothing outside its store."""
  root = Path(root)
  path = root / rel
  if Path(rel).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
    raise ValueError(f"{root}: manifest path {rel!r} is outside the store")
  return path

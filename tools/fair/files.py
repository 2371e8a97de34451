"""File helpers every writer of long-lived outputs shares: content hashes and crash-safe writes."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

TMP_NAME = re.compile(r"\..+\.tmp-(\d+)")   # atomic_write's and the checkpoints' temporary names
STALE_S = 600.0   # a leftover this old, of a PID not running here, is a killed writer's


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


def pid_running(pid: int) -> bool:
  """Whether a process `pid` runs on this machine."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    return True
  return True


def remove_stale_tmp(root: str | Path, names: tuple[str, ...] | None = None,
                     min_age_s: float = STALE_S) -> list[Path]:
  """Remove the `.NAME.tmp-PID` leftovers of killed writers under `root` (files or folders) and return them.
  Only those of PIDs not running here and untouched for `min_age_s` go: a writer on another machine sharing
  the folder may still be busy with one. Each long job calls it on its output folder when it starts: a
  folder it owns (a store, a cache, a run) in full; `names`: only leftovers of those files, in `root` alone
  (a folder shared with other programs)."""
  root, now, gone = Path(root), time.time(), []
  if not root.is_dir():
    return gone
  for dirpath, dirnames, filenames in os.walk(root):
    for name in [*dirnames, *filenames]:
      m = TMP_NAME.fullmatch(name)
      p = Path(dirpath) / name
      if m is None or int(m.group(1)) == os.getpid() or pid_running(int(m.group(1))):
        continue
      if names is not None and name.rsplit(".tmp-", 1)[0][1:] not in names:
        continue
      try:
        if now - p.lstat().st_mtime < min_age_s:
          continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
      except FileNotFoundError:
        continue
      gone.append(p)
    dirnames[:] = [] if names is not None else [d for d in dirnames if TMP_NAME.fullmatch(d) is None]
  return gone

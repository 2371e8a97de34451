"""Install a fairpilot bundle into an openpilot checkout, or remove it.

  python -m release.apply_bundle BUNDLE OPENPILOT_DIR [--dry-run] [--uninstall]
  python3 BUNDLE/apply_bundle.py BUNDLE OPENPILOT_DIR ...      (on a comma four: the bundle carries this file)

BUNDLE is a folder or .tar.gz made by release.build_bundle. Before touching anything the script
checks that every file in the bundle matches its MANIFEST hash (and that nothing unlisted was
added), that OPENPILOT_DIR has all of MARKERS, and that process_config.py can be edited safely.
Then it copies the files (each written atomically), installs the manifest as
selfdrive/modeld_fair/MANIFEST.json (what is installed; used for upgrades and --uninstall),
imports the daemon in the checkout with this python (as the manager will) and, last, adds one
PythonProcess line after modeld's in `procs`. Running it again changes nothing. A refusal is one
`apply_bundle: refused: ...` line on stderr and exit code 2.

Stdlib only and self-contained on purpose: the device runs it without our repository.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.machinery
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

FORMAT = 1
NAME = "fairpilot"
MANIFEST = "MANIFEST.json"
PAYLOAD = "payload"          # bundle folder whose tree is copied onto the checkout root
INSTALLER = "apply_bundle.py"
# every installed path lives under one of these, so a tampered manifest cannot write elsewhere in openpilot
INSTALL_ROOTS = ("selfdrive/modeld_fair", "cereal_ext")
RECORD = "selfdrive/modeld_fair/MANIFEST.json"
DAEMON = "selfdrive/modeld_fair/modeld_fair.py"
PROCESS_NAME = "modeld_fair"
PROCESS_MODULE = "selfdrive.modeld_fair.modeld_fair"
PROCESS_CONFIG = "system/manager/process_config.py"
REGISTRATION = f'PythonProcess("{PROCESS_NAME}", "{PROCESS_MODULE}", only_onroad),  # fairpilot'
ANCHOR = "modeld"  # our line goes right after the process with this name
# all required: what makes a folder an openpilot checkout (a trailing / means a folder)
MARKERS = (PROCESS_CONFIG, "system/manager/manager.py", "selfdrive/modeld/", "cereal/log.capnp")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Refused(Exception):
  """The bundle or the checkout is not in a state we can safely act on. Raised before any change, except by
  check_import (files installed, process not registered: its message says so)."""


@dataclass(frozen=True)
class Manifest:
  version: str
  commit: str
  files: dict[str, str]      # checkout-relative POSIX path -> sha256 of the installed file
  installer_sha256: str
  requires: tuple[str, ...]  # third-party top-level modules the bundled code imports at import time
  raw: bytes                 # exact bytes, installed as RECORD

  @property
  def label(self) -> str:
    return f"{NAME} {self.version} (commit {self.commit[:12]})"


@dataclass
class Plan:
  """What install/uninstall will do, computed with no side effects (--dry-run prints it)."""
  writes: dict[str, Path] = field(default_factory=dict)  # checkout path -> source file
  removes: list[str] = field(default_factory=list)
  record: bytes | None = None                            # new RECORD bytes to write
  drop_record: bool = False
  config: str | None = None                              # new process_config.py text
  config_note: str = ""
  uninstall: bool = False
  warnings: list[str] = field(default_factory=list)

  @property
  def empty(self) -> bool:
    return not (self.writes or self.removes or self.record is not None or self.drop_record or self.config is not None)

  def describe(self) -> list[str]:
    """The steps, in the order execute() takes them."""
    files = ([f"write {p}" for p in self.writes] + [f"remove {p}" for p in self.removes] +
             ([f"write {RECORD}"] if self.record is not None else []) +
             ([f"remove {RECORD}"] if self.drop_record else []))
    check = [f"check that {PROCESS_MODULE} imports with {sys.executable}"] if self.checks_import else []
    config = [self.config_note] if self.config is not None else []
    return config + files if self.uninstall else files + check + config

  @property
  def checks_import(self) -> bool:
    return not self.uninstall and bool(self.writes or self.config is not None)


def sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _checked_path(rel: str) -> str:
  """A manifest path: normalised relative POSIX, no '..', under INSTALL_ROOTS, not RECORD."""
  p = PurePosixPath(rel)
  if (p.is_absolute() or ".." in p.parts or p.as_posix() != rel or rel == RECORD
      or not any(rel.startswith(r + "/") for r in INSTALL_ROOTS)):
    raise Refused(f"manifest lists a path outside {', '.join(INSTALL_ROOTS)}: {rel!r}")
  return rel


def parse_manifest(raw: bytes) -> Manifest:
  try:
    d = json.loads(raw)
    if d["format"] != FORMAT or d["name"] != NAME:
      raise Refused(f"not a {NAME} bundle manifest of format {FORMAT} (format {d['format']!r}, name {d['name']!r})")
    files = {_checked_path(k): v for k, v in d["files"].items()}
    hashes = [*files.values(), d["installer"]["sha256"]]
    if not all(isinstance(h, str) and SHA256_HEX.fullmatch(h) for h in hashes):
      raise Refused("manifest has a malformed sha256")
    return Manifest(str(d["version"]), str(d["commit"]), files, d["installer"]["sha256"],
                    tuple(map(str, d["requires"])), raw)
  except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:   # nesting: RecursionError
    raise Refused(f"unreadable {MANIFEST}: {type(e).__name__}: {str(e)[:200]}") from None


def verify_bundle(root: Path) -> Manifest:
  """The bundle's manifest, after checking every file against it (tampering or a broken copy -> Refused)."""
  if not (root / MANIFEST).is_file():
    raise Refused(f"{root} is not a bundle: no {MANIFEST}")
  m = parse_manifest((root / MANIFEST).read_bytes())
  expected = {f"{PAYLOAD}/{p}": h for p, h in m.files.items()} | {INSTALLER: m.installer_sha256}
  present = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()} - {MANIFEST}
  problems = [f"{p}: missing" for p in sorted(expected.keys() - present)]
  problems += [f"{p}: not listed in {MANIFEST}" for p in sorted(present - expected.keys())]
  problems += [f"{p}: sha256 {sha256_file(root / p)} != {MANIFEST}'s {h}" for p, h in sorted(expected.items())
               if p in present and ((root / p).is_symlink() or sha256_file(root / p) != h)]
  if problems:
    raise Refused("bundle does not match its MANIFEST (tampered or damaged copy; rebuild it):\n  "
                  + "\n  ".join(problems))
  return m


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Path]:
  """The bundle's root folder: `path` itself, or a .tar.gz unpacked into a temporary folder."""
  if path.is_dir():
    yield path
    return
  if not path.is_file():
    raise Refused(f"no bundle at {path}")
  with tempfile.TemporaryDirectory(prefix="fairpilot-bundle-") as tmp:
    try:
      with tarfile.open(path, "r:*") as tar:
        tar.extractall(tmp, filter="data")  # the data filter rejects absolute paths, '..', links out of tmp
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:   # a truncated .tar.gz: EOFError or zlib.error
      raise Refused(f"cannot unpack {path}: {type(e).__name__}: {e}") from None
    roots = [p.parent for p in Path(tmp).glob(f"*/{MANIFEST}")] or [Path(tmp)]
    if len(roots) != 1:
      raise Refused(f"{path} holds several bundles")
    yield roots[0]


def check_openpilot(op: Path) -> None:
  missing = [m for m in MARKERS if not ((op / m).is_dir() if m.endswith("/") else (op / m).is_file())]
  if missing:
    raise Refused(f"{op} does not look like an openpilot checkout: missing {', '.join(missing)} "
                  f"(all of {', '.join(MARKERS)} are required); nothing was changed")


# ---- process_config.py --------------------------------------------------------------------------------------

def _parse(text: str) -> ast.Module:
  try:
    return ast.parse(text)
  except SyntaxError as e:
    raise Refused(f"{PROCESS_CONFIG} does not parse ({e}); fix it first") from None


def _is_ours(call: ast.Call) -> bool:
  """Registers our process: named PROCESS_NAME (first argument) or running PROCESS_MODULE, however written."""
  consts = [a.value if isinstance(a, ast.Constant) else None for a in call.args]
  return consts[:1] == [PROCESS_NAME] or PROCESS_MODULE in consts


def _registrations(tree: ast.Module) -> list[ast.Call]:
  return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_ours(n)]


def _procs_list(tree: ast.Module) -> ast.List:
  for node in tree.body:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    if any(isinstance(t, ast.Name) and t.id == "procs" for t in targets) and isinstance(node.value, ast.List):
      return node.value
  raise Refused(f"{PROCESS_CONFIG} has no module-level `procs = [...]` list; register {PROCESS_NAME} by hand")


def _lines(text: str) -> list[str]:
  # like ast, only \n ends a line (str.splitlines also splits at form feeds and the like)
  parts = text.split("\n")
  return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _line_span(node: ast.expr, lines: list[str]) -> tuple[int, int, bool]:
  """(first, last) 0-based line indices of a list element alone on its lines, and whether a comma follows it."""
  # ast offsets count UTF-8 bytes
  head = lines[node.lineno - 1].encode()[:node.col_offset].decode()
  tail = lines[node.end_lineno - 1].encode()[node.end_col_offset:].decode()
  m = re.fullmatch(r"\s*(,)?\s*(#.*)?\s*", tail)
  if head.strip() or m is None:
    raise Refused(f"{PROCESS_CONFIG} line {node.lineno}: not one process per line; edit it by hand")
  return node.lineno - 1, node.end_lineno - 1, m.group(1) is not None


def register(text: str) -> tuple[str | None, str]:
  """process_config.py with our PythonProcess line added (None if already registered), and what was done."""
  tree = _parse(text)
  if _registrations(tree):
    return None, f"{PROCESS_NAME} is already registered in {PROCESS_CONFIG}"
  defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | \
            {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
  if not {"PythonProcess", "only_onroad"} <= defined:
    raise Refused(f"{PROCESS_CONFIG} does not define PythonProcess and only_onroad; register {PROCESS_NAME} by hand")
  procs = _procs_list(tree)
  if not procs.elts:
    raise Refused(f"{PROCESS_CONFIG}: `procs` is empty; register {PROCESS_NAME} by hand")
  named = [e for e in procs.elts if isinstance(e, ast.Call) and e.args and isinstance(e.args[0], ast.Constant)
           and e.args[0].value == ANCHOR]
  anchor = (named or procs.elts)[-1]
  lines = _lines(text)
  first, last, comma = _line_span(anchor, lines)
  indent = re.match(r"\s*", lines[first]).group()
  eol = "\r\n" if lines[last].endswith("\r\n") else "\n"
  # after the anchor when a comma follows it; before it otherwise (so no openpilot line has to change)
  at = last + 1 if comma else first
  new = "".join(lines[:at] + [indent + REGISTRATION + eol] + lines[at:])
  if len(_registrations(_parse(new))) != 1 or len(_procs_list(_parse(new)).elts) != len(procs.elts) + 1:
    raise Refused(f"{PROCESS_CONFIG}: inserting the line would not give one more process; register it by hand")
  return new, f"register {PROCESS_NAME} in {PROCESS_CONFIG} line {at + 1} ({'after' if comma else 'before'} " \
              f"{'the ' + ANCHOR + ' process' if named else 'the last process'})"


def unregister(text: str) -> tuple[str | None, str]:
  """process_config.py without our registration lines (None if there are none), and what was done."""
  calls = _registrations(_parse(text))
  if not calls:
    return None, f"{PROCESS_NAME} is not registered in {PROCESS_CONFIG}"
  lines = _lines(text)
  drop: set[int] = set()
  for call in calls:
    first, last, _ = _line_span(call, lines)
    drop |= set(range(first, last + 1))
  new = "".join(line for i, line in enumerate(lines) if i not in drop)
  if _registrations(_parse(new)):
    raise Refused(f"{PROCESS_CONFIG}: could not remove the {PROCESS_NAME} registration cleanly; remove it by hand")
  return new, f"unregister {PROCESS_NAME} from {PROCESS_CONFIG} (line{'s' if len(drop) > 1 else ''} " \
              f"{', '.join(str(i + 1) for i in sorted(drop))})"


# ---- plans ------------------------------------------------------------------------------------------------------

def _dest(op: Path, rel: str) -> Path:
  """Where `rel` goes, refused unless it can be written: checked for every file before any is written."""
  d = op / rel
  # a symlinked folder in the checkout must not carry our writes out of it
  if op.resolve() not in d.resolve().parents:
    raise Refused(f"{d} resolves outside {op}")
  if d.is_dir():
    raise Refused(f"{d} is a folder where the bundle has a file")
  for parent in reversed(PurePosixPath(rel).parents[:-1]):
    if (op / parent).exists() and not (op / parent).is_dir():
      raise Refused(f"{op / parent} is a file where the bundle needs a folder; nothing was changed")
  return d


def _installed(op: Path) -> Manifest | None:
  rec = op / RECORD
  if not rec.is_file():
    return None
  try:
    return parse_manifest(rec.read_bytes())
  except Refused:
    return None  # a damaged record only costs us stale-file cleanup


def _missing_requires(m: Manifest, op: Path) -> list[str]:
  # the manager imports the daemon at start; openpilot's root is on its PYTHONPATH
  path = [str(op), *sys.path]
  return [r for r in m.requires if importlib.machinery.PathFinder.find_spec(r, path) is None
          and r not in sys.builtin_module_names]


def plan_install(bundle: Path, m: Manifest, op: Path) -> Plan:
  check_openpilot(op)
  if DAEMON not in m.files:
    # the manager pre-imports every registered process: a missing module would stop openpilot from starting
    raise Refused(f"bundle {m.label} has no {DAEMON}; refusing to register a process that cannot start")
  plan = Plan()
  for rel, h in sorted(m.files.items()):
    d = _dest(op, rel)
    if not d.is_file() or sha256_file(d) != h:
      plan.writes[rel] = bundle / PAYLOAD / rel
  old = _installed(op)
  for rel, h in sorted((rel, h) for rel, h in (old.files.items() if old else ()) if rel not in m.files):
    d = _dest(op, rel)
    if d.is_file() and sha256_file(d) == h:
      plan.removes.append(rel)
    elif d.is_file():
      plan.warnings.append(f"{rel} was installed by {old.label}, has been modified since and is no longer in the "
                           "bundle: left in place")
  rec = _dest(op, RECORD)
  if not rec.is_file() or rec.read_bytes() != m.raw:
    plan.record = m.raw
  plan.config, plan.config_note = register((op / PROCESS_CONFIG).read_bytes().decode("utf-8"))
  plan.warnings += [f"this python cannot import {r!r}, which the daemon imports at start; openpilot's python must"
                    for r in _missing_requires(m, op)]
  return plan


def plan_uninstall(m: Manifest, op: Path) -> Plan:
  check_openpilot(op)
  plan = Plan(uninstall=True)
  known: dict[str, set[str]] = {}
  for src in (m, _installed(op)):
    for rel, h in (src.files.items() if src else ()):
      known.setdefault(rel, set()).add(h)
  for rel, hashes in sorted(known.items()):
    d = _dest(op, rel)
    if d.is_file() and sha256_file(d) in hashes:
      plan.removes.append(rel)
    elif d.is_file():
      plan.warnings.append(f"{rel} differs from every bundle version known here: left in place")
  plan.drop_record = (op / RECORD).is_file()
  for root in INSTALL_ROOTS:
    for f in sorted((op / root).rglob("*")):
      rel = f.relative_to(op).as_posix()
      if f.is_file() and "__pycache__" not in f.parts and rel not in known and rel != RECORD:
        plan.warnings.append(f"{rel} is not from a known bundle (an artifact built on the device?): left in place")
  plan.config, plan.config_note = unregister((op / PROCESS_CONFIG).read_bytes().decode("utf-8"))
  return plan


# ---- execution --------------------------------------------------------------------------------------------------

def _write_atomic(dest: Path, data: bytes, mode: int) -> None:
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, dest)  # readers (the manager, a running daemon) see the old file or the new one, never half
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _prune(op: Path, rels: list[str]) -> None:
  """Remove folders under INSTALL_ROOTS (the roots included) left empty, with bytecode of sources that are gone."""
  dirs: set[PurePosixPath] = set()
  for rel in rels:
    depth = len(PurePosixPath(next(r for r in INSTALL_ROOTS if rel.startswith(r + "/"))).parts)
    d = PurePosixPath(rel).parent
    while len(d.parts) >= depth:
      dirs.add(d)
      d = d.parent
  for d in (op / p for p in sorted(dirs, key=lambda p: len(p.parts), reverse=True)):
    cache = d / "__pycache__"
    if cache.is_dir():
      for pyc in cache.glob("*.pyc"):
        if not (d / (pyc.name.split(".")[0] + ".py")).exists():
          pyc.unlink()
      with contextlib.suppress(OSError):
        cache.rmdir()
    with contextlib.suppress(OSError):
      d.rmdir()  # only succeeds when empty: files we did not install stay


def check_import(op: Path) -> None:
  """Import the daemon in the checkout with this python, as openpilot's manager does: it pre-imports every
  registered process at start, so one that fails to import stops openpilot from starting at all."""
  code = f"import {PROCESS_MODULE} as m; assert callable(m.main), 'no main()'"
  r = subprocess.run([sys.executable, "-c", code], cwd=op, env={**os.environ, "PYTHONPATH": str(op)},
                     capture_output=True, text=True, timeout=300)
  if r.returncode != 0:
    registered = bool(_registrations(_parse((op / PROCESS_CONFIG).read_bytes().decode("utf-8"))))
    raise Refused(f"{PROCESS_MODULE} does not import with {sys.executable} in {op}:\n  "
                  + "\n  ".join(r.stderr.strip().splitlines()[-3:]) + "\n"
                  + ("it IS registered: fix this or run --uninstall before restarting openpilot" if registered else
                     "files are installed but the process is not registered; fix this and apply again, or --uninstall")
                  + " (run this script with openpilot's python)")


def execute(plan: Plan, op: Path) -> None:
  """Carry out a plan. Install order: files, record, import check, then the registration (the manager never sees
  a registered process it cannot import); uninstall order: the registration first."""
  cfg = op / PROCESS_CONFIG
  if plan.config is not None and plan.uninstall:
    _write_atomic(cfg, plan.config.encode("utf-8"), cfg.stat().st_mode & 0o7777)
  for rel, src in plan.writes.items():
    _write_atomic(op / rel, src.read_bytes(), 0o644)
  for rel in plan.removes:
    (op / rel).unlink()
  if plan.record is not None:
    _write_atomic(op / RECORD, plan.record, 0o644)
  if plan.drop_record:
    (op / RECORD).unlink()
  if plan.checks_import:
    check_import(op)
  if plan.config is not None and not plan.uninstall:
    _write_atomic(cfg, plan.config.encode("utf-8"), cfg.stat().st_mode & 0o7777)
  _prune(op, plan.removes + ([RECORD] if plan.drop_record else []))


def apply(bundle: Path, op: Path, dry_run: bool = False, uninstall: bool = False) -> Plan:
  """Verify `bundle`, then install it into (or, with uninstall, remove it from) the openpilot checkout `op`."""
  with open_bundle(bundle) as root:
    m = verify_bundle(root)
    print(f"bundle {m.label}: {len(m.files)} files, hashes verified")
    plan = plan_uninstall(m, op) if uninstall else plan_install(root, m, op)
    for w in plan.warnings:
      print(f"warning: {w}")
    if plan.empty:
      print(f"nothing to do: {m.label} is {'not' if uninstall else 'already'} installed in {op}")
      return plan
    for line in plan.describe():
      print(("would " if dry_run else "") + line)
    if not dry_run:
      execute(plan, op)
      print("done: restart openpilot (or its manager) for the change to take effect")
  return plan


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("bundle", type=Path, help="bundle folder or .tar.gz from release.build_bundle")
  ap.add_argument("openpilot", type=Path, help="openpilot checkout (on a comma four: /data/openpilot)")
  ap.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
  ap.add_argument("--uninstall", action="store_true", help="remove our files and the process registration")
  args = ap.parse_args(argv)
  try:
    apply(args.bundle, args.openpilot, args.dry_run, args.uninstall)
  except Refused as e:   # exit 2, as argparse and the fair tools for bad input
    print(f"apply_bundle: refused: {e}", file=sys.stderr)
    return 2
  except OSError as e:   # the disk or a permission, after the checks
    print(f"apply_bundle: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

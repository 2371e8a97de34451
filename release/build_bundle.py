"""Build the bundle that installs fairpilot's daemon into an openpilot checkout.

  python -m release.build_bundle --out DIR              a folder
  python -m release.build_bundle --out FILE.tar.gz      a tarball (same sources -> same bytes)

Contents, by rule (whatever the source tree holds when it runs):
  payload/selfdrive/modeld_fair/..., payload/cereal_ext/...   runtime files only (RUNTIME_SUFFIXES; no tests,
      caches or hidden files), compiled artifacts models/*.pkl included, each checked against its .pkl.sha256
  apply_bundle.py   the installer (stdlib only), so a device needs nothing but the bundle
  MANIFEST.json     name, version (pyproject.toml), commit (read from .git, git is not run), the sha256 of
                    every file, and the third-party modules the code imports at import time
It refuses code that imports training or dev code (FORBIDDEN), imports of our own modules that
the bundle lacks, and artifacts whose .sha256 is stale.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import shutil
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from release import apply_bundle
from release.apply_bundle import (DAEMON, FORMAT, INSTALL_ROOTS, INSTALLER, MANIFEST, NAME, PAYLOAD, RECORD, SHA256_HEX,
                                  sha256_file, verify_bundle)

REPO = Path(__file__).resolve().parents[1]
# what the daemon reads at run time (sources, schema, model metadata, ONNX, artifacts and their hashes); anything
# else under our folders is reported as skipped
RUNTIME_SUFFIXES = frozenset({".py", ".capnp", ".json", ".onnx", ".pkl", ".sha256"})
# the daemon must start fast on the device with tinygrad only: no training code, torch or repo-only tooling
FORBIDDEN = frozenset({"tools", "bench", "tests", "release", "torch", "transformers"})
OURS = ("selfdrive.modeld_fair", "cereal_ext")


class BuildError(Exception):
  """The source tree cannot make a bundle that works inside openpilot."""


@dataclass(frozen=True)
class Bundle:
  path: Path
  manifest: dict
  skipped: tuple[str, ...]   # files under our folders left out by rule
  warnings: tuple[str, ...]


def _is_test(rel: PurePosixPath) -> bool:
  return bool({"tests", "test"} & set(rel.parts)) or rel.name.startswith("test_") or rel.name.endswith("_test.py") \
    or rel.name == "conftest.py"


def select_files(src: Path) -> tuple[list[str], list[str]]:
  """(runtime files, skipped files) under INSTALL_ROOTS, as checkout-relative POSIX paths."""
  keep: list[str] = []
  skipped: list[str] = []
  for root in INSTALL_ROOTS:
    if not (src / root).is_dir():
      raise BuildError(f"{src / root} is missing: not a fairpilot source tree")
    for p in sorted((src / root).rglob("*")):
      rel = PurePosixPath(p.relative_to(src).as_posix())
      # bytecode caches and hidden (editor, OS) files are never worth a mention
      if p.is_dir() or "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
        continue
      runtime = p.suffix in RUNTIME_SUFFIXES and not _is_test(rel) and not p.is_symlink() and str(rel) != RECORD
      (keep if runtime else skipped).append(str(rel))
  return keep, skipped


def _imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
  """(module, line, runs at import time) for every absolute import; function bodies run later."""
  found: list[tuple[str, int, bool]] = []

  def visit(node: ast.AST, at_import: bool) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        found.extend((a.name, child.lineno, at_import) for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
        found.append((child.module, child.lineno, at_import))
      visit(child, at_import and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(tree, True)
  return found


def _check_sidecar(stage: Path, rel: str, present: set[str]) -> list[str]:
  """A `sha256sum`-format sidecar (`<hex>  <name>` lines, names beside it) must name its artifact, and every file
  it names that the bundle has must match: a stale artifact, or one built from an older ONNX, fails here rather
  than in the daemon on the device."""
  art = rel.removesuffix(".sha256")
  folder = PurePosixPath(rel).parent
  listed: dict[str, str] = {}
  for line in (stage / rel).read_text(errors="replace").splitlines():
    parts = line.split(maxsplit=1)
    if len(parts) != 2 or not SHA256_HEX.fullmatch(parts[0].lower()):
      return [f"{rel}: malformed line {line!r}, expected '<sha256 hex>  <file name>'"]
    listed[str(folder / parts[1].lstrip("*"))] = parts[0].lower()
  if art not in present or art not in listed:
    return [f"{rel}: its artifact {art} is {'missing' if art not in present else 'not listed in it'}"]
  return [f"{name}: sha256 differs from {rel} (stale artifact: rebuild it with scons)" for name, h in listed.items()
          if name in present and sha256_file(stage / name) != h]


def check_sources(stage: Path, files: list[str]) -> tuple[list[str], list[str]]:
  """(third-party modules imported at import time, warnings) of the staged payload; BuildError on problems."""
  problems: list[str] = []
  warnings: list[str] = []
  requires: set[str] = set()
  present = set(files)
  for rel in (f for f in files if f.endswith(".py")):
    try:
      tree = ast.parse((stage / rel).read_bytes(), rel)
    except SyntaxError as e:
      problems.append(f"{rel}: does not parse: {e}")
      continue
    for mod, line, at_import in _imports(tree):
      top = mod.split(".")[0]
      if top in FORBIDDEN:
        problems.append(f"{rel}:{line} imports {mod}: training/dev code never ships to the device")
      elif any(mod == o or mod.startswith(o + ".") for o in OURS):
        base = mod.replace(".", "/")
        if f"{base}.py" not in present and not any(f.startswith(base + "/") for f in present):
          problems.append(f"{rel}:{line} imports {mod}, which the bundle does not have")
      elif at_import and top not in sys.stdlib_module_names:
        requires.add(top)
    if rel == DAEMON and not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
      problems.append(f"{rel}: no top-level main(): openpilot's manager calls main() with no arguments")
  for rel in (f for f in files if f.endswith(".sha256")):
    problems += _check_sidecar(stage, rel, present)
  warnings += [f"{f}: compiled artifact without a .sha256" for f in files
               if f.endswith(".pkl") and f + ".sha256" not in present]
  if DAEMON not in present:
    warnings.append(f"no {DAEMON} yet: apply_bundle will refuse to register a process without its module")
  if problems:
    raise BuildError("cannot bundle:\n  " + "\n  ".join(problems))
  return sorted(requires), warnings


def read_commit(src: Path) -> str:
  """HEAD's commit, read from the .git folder (a build must neither need nor run git), or "unknown"."""
  git = src / ".git"
  try:
    if git.is_file():  # worktrees and submodules: "gitdir: <path>"
      git = (src / git.read_text().split(":", 1)[1].strip()).resolve()
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
      return head
    ref = head.removeprefix("ref: ")
    common = (git / (git / "commondir").read_text().strip()) if (git / "commondir").is_file() else git
    for d in (git, common):
      if (d / ref).is_file():
        return (d / ref).read_text().strip()
    return next(line.split()[0] for line in (common / "packed-refs").read_text().splitlines()
                if line.endswith(" " + ref))
  except (OSError, IndexError, StopIteration):
    return "unknown"


def _write_tar(stage: Path, top: str, dest: Path) -> None:
  """A reproducible .tar.gz: sorted entries, zero times and owners, fixed modes (level 6: weights barely compress,
  9 only costs time)."""
  with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz, \
       tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for p in [stage, *sorted(stage.rglob("*"))]:
      info = tar.gettarinfo(p, arcname=str(PurePosixPath(top, p.relative_to(stage).as_posix())))
      info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
      info.mode = 0o755 if p.is_dir() or p.name == INSTALLER else 0o644
      if p.is_dir():
        tar.addfile(info)
      else:
        with open(p, "rb") as f:
          tar.addfile(info, f)


def build(src: Path, out: Path) -> Bundle:
  """Bundle the runtime files of the fairpilot tree `src` into `out` (a folder, or a .tar.gz/.tgz file)."""
  src, out = src.resolve(), out.resolve()
  files, skipped = select_files(src)   # first: it tells a tree that is not fairpilot's
  try:
    version = tomllib.loads((src / "pyproject.toml").read_text())["project"]["version"]
  except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
    raise BuildError(f"{src / 'pyproject.toml'}: no [project] version ({type(e).__name__})") from None
  commit = read_commit(src)
  tarball = out.name.endswith((".tar.gz", ".tgz"))
  if not tarball and out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
    raise BuildError(f"{out} exists and is not a bundle: refusing to replace it")
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
    stage = Path(tmp) / "bundle"
    # copy first, then hash and check the copies: sources may change while we run
    for rel in files:
      (stage / PAYLOAD / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(src / rel, stage / PAYLOAD / rel)
    shutil.copyfile(apply_bundle.__file__, stage / INSTALLER)
    os.chmod(stage / INSTALLER, 0o755)
    requires, warnings = check_sources(stage / PAYLOAD, files)
    manifest = {"format": FORMAT, "name": NAME, "version": version, "commit": commit, "requires": requires,
                "files": {rel: sha256_file(stage / PAYLOAD / rel) for rel in files},
                "installer": {"path": INSTALLER, "sha256": sha256_file(stage / INSTALLER)}}
    raw = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (stage / MANIFEST).write_bytes(raw)
    verify_bundle(stage)  # the installer must accept exactly what we wrote
    if tarball:
      _write_tar(stage, f"{NAME}-{version}" + (f"-{commit[:12]}" if commit != "unknown" else ""), Path(tmp) / "b.tgz")
      os.replace(Path(tmp) / "b.tgz", out)
    else:
      if out.exists():
        shutil.rmtree(out)
      os.replace(stage, out)
  return Bundle(out, manifest, tuple(skipped), tuple(warnings))


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", type=Path, required=True, help="bundle folder, or FILE.tar.gz")
  ap.add_argument("--src", type=Path, default=REPO, help="fairpilot source tree (default: this repository)")
  args = ap.parse_args(argv)
  try:
    b = build(args.src, args.out)
  except (BuildError, apply_bundle.Refused) as e:
    print(f"build_bundle: {e}", file=sys.stderr)
    return 2
  m = b.manifest
  print(f"bundle {NAME} {m['version']} (commit {m['commit'][:12]}) -> {b.path}: {len(m['files'])} files")
  for rel, h in m["files"].items():
    print(f"  {h[:12]}  {rel}")
  print(f"imports at start (openpilot's python must have them): {', '.join(m['requires']) or 'nothing'}")
  for rel in b.skipped:
    print(f"skipped (not a runtime file): {rel}")
  for w in b.warnings:
    print(f"warning: {w}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

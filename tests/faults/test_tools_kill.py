"""kill -9 during the writes of every long job (label, cache, train, replay), a full disk (`ulimit -f`), the
leftovers of killed writers and segment folders of one name in the frame cache. A killed or starved run loses
nothing that was finished, and the next run ends exactly where an uninterrupted one does. The `fair label` and
`fair train` cases (several children importing torch / transformers each, ~10 s a case) are marked slow: they run
in `make test-slow`, part of CI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tools.fair.data.cache import FrameCache, build_frame_cache
from tools.fair.files import STALE_S, remove_stale_tmp
from tools.fair.labels.store import LabelStore
from tools.fair.sim.cli import write_segment
from tools.fair.sim.world import make_scene
from tests.faults.test_tools_train import GOOD

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
# runs `fair ARGV` in a child that SIGKILLs itself at its Nth os.replace (a write complete, not yet renamed) or
# runs under RLIMIT_FSIZE (ulimit -f: writes past it fail with EFBIG, as on a full disk)
CHILD = """
import os, resource, signal, sys
kill_at, fsize = int(sys.argv[1]), int(sys.argv[2])
if fsize:
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
real, n = os.replace, [0]
def replace(src, dst):
  n[0] += 1
  if n[0] == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
  return real(src, dst)
os.replace = replace
from tools.fair.cli import main
sys.exit(main(sys.argv[3:] + ["--quiet"]))
"""


def fair(argv, kill_at: int = 0, fsize: int = 0) -> subprocess.CompletedProcess:
  env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), str(fsize), *map(str, argv)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def age_leftovers(root: Path) -> None:
  """Make the killed run's temporary files look older than STALE_S (the next run removes only such)."""
  for p in root.rglob("*.tmp-*"):
    t = p.stat().st_mtime - STALE_S - 1
    os.utime(p, (t, t))


def files(root: Path) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  return write_segment(make_scene(7, 10 / 20, "mici", "city"), tmp_path_factory.mktemp("seg"), progress=False)


def _labels(store: Path) -> dict:
  s = LabelStore(store)
  return {sid: {k: v.tolist() for k, v in s.read("dinov2", sid).items()} for sid in s.segments("dinov2")}


def _label_args(segment, weights):
  return ["label", segment, "--teachers", "dinov2", "--weights", weights, "--shard-frames", "4", "--scale", "0.25"]


@pytest.fixture(scope="module")
def clean_labels(segment, weights, tmp_path_factory):
  out = tmp_path_factory.mktemp("clean") / "store"
  assert fair([*_label_args(segment, weights), "--out", out]).returncode == 0
  return _labels(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2, 3])   # the 1st, 2nd, 3rd rename: shard or manifest
def test_label_killed_mid_write_resumes_exactly(segment, weights, clean_labels, tmp_path, kill_at):
  args = _label_args(segment, weights)
  r = fair([*args, "--out", tmp_path / "k"], kill_at=kill_at)
  assert r.returncode == -9
  age_leftovers(tmp_path / "k")
  assert fair([*args, "--out", tmp_path / "k"]).returncode == 0
  assert _labels(tmp_path / "k") == clean_labels
  assert not list((tmp_path / "k").rglob("*.tmp-*"))


@pytest.mark.slow
def test_label_on_a_full_disk_is_one_line_and_loses_nothing(segment, weights, tmp_path):
  args = ["label", segment, "--teachers", "dinov2", "--weights", weights, "--shard-frames", "4", "--scale", "0.25",
          "--out", tmp_path / "s"]
  assert fair(args).returncode == 0
  before = files(tmp_path / "s")
  r = fair([*args, "--overwrite"], fsize=2000)   # a relabel that cannot write its shards
  assert r.returncode == 2 and "File too large" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
  assert {k: v for k, v in files(tmp_path / "s").items() if ".tmp-" not in k} == before


@pytest.fixture(scope="module")
def clean_cache(segment, tmp_path_factory):
  out = tmp_path_factory.mktemp("clean") / "cache"
  assert fair(["cache", segment, "--scale", "0.25", "--every", "2", "--out", out]).returncode == 0
  return files(out)


@pytest.mark.parametrize("kill_at", [1, 2, 4])   # cache.json, a shard, the index
def test_cache_killed_mid_write_resumes_exactly(segment, clean_cache, tmp_path, kill_at):
  args = ["cache", segment, "--scale", "0.25", "--every", "2"]
  assert fair([*args, "--out", tmp_path / "k"], kill_at=kill_at).returncode == -9
  age_leftovers(tmp_path / "k")
  assert fair([*args, "--out", tmp_path / "k"]).returncode == 0
  assert files(tmp_path / "k") == clean_cache


def test_cache_on_a_full_disk_is_one_line(segment, tmp_path):
  r = fair(["cache", segment, "--scale", "0.25", "--out", tmp_path / "c"], fsize=4096)
  assert r.returncode == 2 and "File too large" in r.stderr and "Traceback" not in r.stderr
  assert not (tmp_path / "c" / "index.json").exists()
  assert fair(["cache", segment, "--scale", "0.25", "--out", tmp_path / "c"]).returncode == 0


def _weights(run: Path) -> dict:
  return {k: v.tolist() for k, v in load_file(run / "best" / "model.safetensors").items()}


def _rows(run: Path) -> list[str]:
  return [line.split(",")[0] for line in (run / "train.csv").read_text().splitlines()]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("recipe") / "r.toml"
  path.write_text(GOOD.replace("[optim]", "[run]\nsave_every = 1\n[optim]"))
  return path


@pytest.fixture(scope="module")
def clean_run(recipe):
  run = recipe.parent / "clean"
  assert fair(["train", recipe, "--steps", "3", "--out", run]).returncode == 0
  return _weights(run), _rows(run)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2, 3])   # checkpoint folder, best/ moved aside, best/ renamed in
def test_train_killed_mid_checkpoint_resumes_exactly(recipe, clean_run, tmp_path, kill_at):
  args = ["train", recipe, "--steps", "3"]
  assert fair([*args, "--out", tmp_path / "k"], kill_at=kill_at).returncode == -9
  age_leftovers(tmp_path / "k")
  r = fair([*args, "--out", tmp_path / "k", "--resume"])
  assert r.returncode == 0, r.stderr
  assert (_weights(tmp_path / "k"), _rows(tmp_path / "k")) == clean_run
  assert not list((tmp_path / "k").rglob("*.tmp-*")) and not list((tmp_path / "k").rglob("*.old-*"))


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(recipe, tmp_path):
  assert fair(["train", recipe, "--steps", "2", "--out", tmp_path / "run"]).returncode == 0
  best = _weights(tmp_path / "run")
  r = fair(["train", recipe, "--steps", "4", "--out", tmp_path / "run", "--resume"], fsize=100_000)
  assert r.returncode == 2 and "File too large" in r.stderr and "Traceback" not in r.stderr
  assert _weights(tmp_path / "run") == best


def test_replay_killed_mid_write_keeps_the_old_output(segment, tmp_path):
  out = tmp_path / "r"
  args = ["replay", segment, "--out", out, "--no-video", "--max-frames", "4"]
  assert fair(args).returncode == 0
  before = (out / "rlog.zst").read_bytes()
  assert fair(args, kill_at=1).returncode == -9
  assert (out / "rlog.zst").read_bytes() == before
  age_leftovers(out)
  assert fair(args).returncode == 0 and not list(out.glob(".*.tmp-*"))
  before = (out / "rlog.zst").read_bytes()   # outputs carry timings: each run's bytes differ
  r = fair(args, fsize=len(before) // 2)
  assert r.returncode == 2 and "File too large" in r.stderr and (out / "rlog.zst").read_bytes() == before


def test_only_stale_leftovers_of_dead_writers_are_removed(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  old = lambda p: os.utime(p, (p.stat().st_mtime - STALE_S - 1,) * 2)  # noqa: E731
  mine = {n: tmp_path / n for n in (f".a.tmp-{dead.pid}", f".b.tmp-{os.getppid()}", f".c.tmp-{dead.pid}", "d.tmp-1")}
  for name, p in mine.items():
    p.write_text(name)
  (tmp_path / f".e.tmp-{dead.pid}").mkdir()
  for n in (f".a.tmp-{dead.pid}", f".b.tmp-{os.getppid()}", "d.tmp-1", f".e.tmp-{dead.pid}"):
    old(tmp_path / n)
  gone = sorted(p.name for p in remove_stale_tmp(tmp_path))
  assert gone == sorted([f".a.tmp-{dead.pid}", f".e.tmp-{dead.pid}"])   # alive, recent, not ours: kept
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".b.tmp-{os.getppid()}", f".c.tmp-{dead.pid}",
                                                               "d.tmp-1"])


def test_the_cache_keys_segments_by_content_id(tmp_path):
  a = write_segment(make_scene(1, 4 / 20, "mici", "city"), tmp_path / "a", progress=False)
  b = write_segment(make_scene(2, 4 / 20, "mici", "city"), tmp_path / "b", progress=False)
  a, b = shutil.move(a, a.with_name("route--0")), shutil.move(b, b.with_name("route--0"))
  cache = build_frame_cache([a, b], tmp_path / "cache", scale=0.25, progress=False)
  assert len(cache.segments) == 2 and all(s.startswith("route--0@") for s in cache.segments)
  rgb = [[cache.read(r.index, ["rgb"])["rgb"] for r in cache.records if r.segment == s] for s in cache.segments]
  assert len(rgb[0]) == len(rgb[1]) == 4 and not np.array_equal(rgb[0][0], rgb[1][0])
  meta = json.loads((tmp_path / "cache" / cache.segments[0] / "segment.json").read_text())
  assert meta["name"] == "route--0" and FrameCache(tmp_path / "cache").segments == cache.segments
  with pytest.raises(ValueError, match="the same segment given twice"):
    build_frame_cache([a, a], tmp_path / "cache2", scale=0.25, progress=False)

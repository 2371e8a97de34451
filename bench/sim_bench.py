"""Speed of the procedural simulator's renderer on one CPU core; writes docs/benchmarks/sim.md.

  .venv/bin/python bench/sim_bench.py [--frames 6] [--scenarios default,highway,...] [--out docs/benchmarks/sim.md]

Times render_frame (rgb + depth + semantic + instance) at the comma 3X camera (1928x1208), the
comma four camera (1344x760) and the model frame (512x256), and render_gt (two renders plus
optical flow, boxes and lanes) for the camera and model frames.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import header  # noqa: E402
from selfdrive.modeld_fair.camera import MEDMODEL, MICI_ROAD, TICI_ROAD  # noqa: E402
from tools.fair.sim import SCENARIOS, make_scene, render_frame, render_gt  # noqa: E402


def _time(fn, frames: range) -> np.ndarray:
  fn(frames[0] - 1)  # warm the per-camera caches (ray directions, textures)
  out = []
  for f in frames:
    t0 = time.perf_counter()
    fn(f)
    out.append(time.perf_counter() - t0)
  return np.array(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--frames", type=int, default=6, help="timed frames per row")
  ap.add_argument("--scenarios", default="default,highway,city,night,dusk_glare,shadows",
                  help="comma-separated scenarios for the 1928x1208 rows")
  ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
  ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "sim.md"))
  args = ap.parse_args(argv)
  cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpu})   # one core: the budget the renderer is designed for
  frames = range(20, 20 + args.frames)
  seconds = (frames[-1] + 3) / 20

  rows = []

  def row(what, scenario, size, times):
    rows.append((what, scenario, size, 1 / times.mean(), 1e3 * np.median(times)))
    print(f"{what:28s} {scenario:12s} {size:10s} {1 / times.mean():6.2f} frames/s  median {1e3 * np.median(times):7.1f} ms",
          flush=True)

  for name in args.scenarios.split(","):
    if name not in SCENARIOS:
      ap.error(f"unknown scenario {name!r} (valid: {', '.join(SCENARIOS)})")
    s = make_scene(1, seconds, "tici", name)
    row("render_frame camera", name, "1928x1208", _time(lambda f: render_frame(s, f, TICI_ROAD), frames))
  s = make_scene(1, seconds, "mici", "default")
  row("render_frame camera", "default", "1344x760", _time(lambda f: render_frame(s, f, MICI_ROAD), frames))
  s = make_scene(1, seconds, "tici", "default")
  row("render_frame model", "default", "512x256", _time(lambda f: render_frame(s, f, MEDMODEL, (0, 0, 0)), frames))
  with tempfile.TemporaryDirectory() as seg:
    s.save(Path(seg) / "scene.json")
    # render_gt renders frames f and f + 1; walking a segment reuses f + 1, as a label export would
    row("render_gt camera (+flow)", "default", "1928x1208", _time(lambda f: render_gt(seg, f, "camera"), frames))
    row("render_gt model (+flow)", "default", "512x256", _time(lambda f: render_gt(seg, f, "model"), frames))

  cmd = "python bench/sim_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
  lines = [
    header("Simulator renderer, one core", cmd.strip()).rstrip("\n"),
    f"- pinned to cpu {cpu}; numpy {np.__version__}, Python {platform.python_version()}",
    f"- {args.frames} frames per row after one warm-up frame; frames/s = frames / total time",
    "",
    "| what | scenario | size | frames/s | median ms |",
    "| --- | --- | --- | ---: | ---: |",
    *[f"| {w} | {sc} | {sz} | {fps:.2f} | {ms:.0f} |" for w, sc, sz, fps, ms in rows],
    "",
    "render_frame produces rgb (with lighting, shadows and sensor effects), depth, semantic and instance maps.",
    "render_gt adds optical flow with occlusion (it needs the next frame's render), 2D/3D boxes and lane lines.",
    "",
  ]
  Path(args.out).write_text("\n".join(lines))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""`fair demo`: the README's main job — replay the bundled sample segments through modeld_fair.

Each sample goes through the daemon's own per-frame code path (tools/fair/replay.py) with the
bundled student on onnxruntime, giving `out/demo/<segment>/` with rlog.zst (input events plus one
FairModelOutput per frame), overlay.mp4 (model outputs beside the simulator's ground truth) and
latency.md/json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from selfdrive.modeld_fair.runner import make_runner
from tools.fair.replay import replay_segment
from tools.fair.samples import sample_paths


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
  p.add_argument("--runtime", choices=("onnxruntime", "tinygrad"), default="onnxruntime",
                 help="model back end (tinygrad needs `scons` first)")
  p.add_argument("--max-frames", type=int, default=None, help="frames per sample (default: all)")


def run(args: argparse.Namespace) -> int:
  runner = make_runner(args.runtime)
  reports = [(replay_segment(seg, args.out / seg.name, runner, max_frames=args.max_frames), args.out / seg.name)
             for seg in sample_paths()]
  print(f"model {runner.model_id} ({args.runtime}); per sample: rlog.zst, overlay.mp4, latency.md")
  for report, out in reports:
    valid = report.reasons.get("none", 0)
    print(f"  {out}/overlay.mp4  {report.frames} frames, {valid} valid, "
          f"daemon overhead p99 {report.stages['overhead'].p99:.2f} ms, run p50 {report.stages['run'].p50:.1f} ms")
  return 0

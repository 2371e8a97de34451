"""`fair demo`: the README's main job on the bundled sample segments.

Until the daemon lands this renders each sample with its ground truth in the calibrated model
frame (what the daemon will see): lanes and boxes, depth, semantics and optical flow.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tools.fair.overlay import inspect_segment
from tools.fair.samples import sample_paths


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the videos (default out/demo)")
  p.add_argument("--max-frames", type=int, default=None, help="frames per sample (default: all)")


def run(args: argparse.Namespace) -> int:
  videos = [inspect_segment(seg, args.out / f"{seg.name}.mp4", with_gt=True, max_frames=args.max_frames)
            for seg in sample_paths()]
  print("demo videos (model frame with ground truth: lanes + boxes, depth, semantics, flow):")
  for v in videos:
    print(f"  {v}")
  return 0

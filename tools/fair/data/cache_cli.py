"""`fair cache SEGMENTS... --out DIR`: segments -> the training frame cache (data/cache.py, docs/data.md).

Resumable and atomic as build_frame_cache: finished segments are skipped, each shard is written to a temporary
name and renamed, and a folder built with other settings is refused.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segments", nargs="+", type=Path, help="segment folders (rlog + fcamera.hevc; `fair sim` or a route)")
  p.add_argument("--out", type=Path, required=True, help="cache folder (created; rerun to resume)")
  p.add_argument("--scale", type=float, default=0.5, help="RGB / ground-truth resolution vs MEDMODEL (default 0.5)")
  p.add_argument("--every", type=int, default=1, help="keep every Nth video frame (default 1)")
  p.add_argument("--max-frames", type=int, default=None, help="at most this many kept frames per segment")
  p.add_argument("--workers", type=int, default=1, help="segments decoded in parallel processes (default 1)")
  p.add_argument("--no-instance", action="store_true", help="do not store the instance map (4 bytes per pixel)")


def run(args: argparse.Namespace) -> int:
  from tools.fair.data.cache import build_frame_cache
  if args.every < 1 or args.workers < 1 or (args.max_frames is not None and args.max_frames < 1):
    raise ValueError("--every, --workers and --max-frames must be >= 1")
  cache = build_frame_cache(args.segments, args.out, scale=args.scale, every=args.every, workers=args.workers,
                            max_frames=args.max_frames, instance=not args.no_instance)
  gt = sum(r.has_gt for r in cache.records)
  print(f"{args.out}: {len(cache.records)} frames of {len(cache.segments)} segments ({gt} with ground truth)")
  return 0

"""`fair label`: pseudo-label segments with teachers into a sharded, resumable label store (docs/labels.md).

  fair label SEGMENTS... --teachers dpt-depth,detr --weights DIR --out STORE [--device cpu|cuda] [--batch 8]
             [--scale 0.5] [--shard i/N] [--shard-frames 100] [--overwrite]

--shard i/N labels the i-th of N disjoint parts of the sorted segment list (segment k goes to part k mod N),
so N machines can share a job list without talking to each other.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.labels.pipeline import LabelConfig, label_segments
from tools.fair.labels.store import LabelStore


def parse_shard(text: str) -> tuple[int, int]:
  """"i/N" -> (i, N) with 0 <= i < N; ValueError otherwise."""
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must be i/N (e.g. 0/4), got {text!r}") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard {text}: need 0 <= i < N")
  return i, n


def partition(segments: Sequence[str | Path], i: int, n: int) -> list[str]:
  """Part i of n of the segments: the sorted, de-duplicated list's items whose position k has k % n == i."""
  ordered = sorted({str(s) for s in segments})
  return ordered[i::n]


def teacher_config(cls: type, camera: CameraModel):
  """The teacher class's config dataclass (the type of load's `config`) with its defaults and `camera`;
  None when the class declares no config with a camera (then it must take the frame as it is)."""
  try:
    hint = typing.get_type_hints(cls.load).get("config")
  except (NameError, TypeError):   # annotations that do not resolve: no config we can build
    return None
  for c in typing.get_args(hint) or (hint,):
    if dataclasses.is_dataclass(c) and "camera" in {f.name for f in dataclasses.fields(c)}:
      return dataclasses.replace(c(), camera=camera)
  return None


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segments", nargs="+", type=Path, help="segment folders (rlog + fcamera.hevc)")
  p.add_argument("--teachers", required=True, help="comma-separated teacher names, e.g. dpt-depth,detr")
  p.add_argument("--weights", default=None,
                 help="weights DIR with one folder per teacher (default: $FAIR_WEIGHTS_DIR, else the HF cache)")
  p.add_argument("--out", required=True, type=Path, help="label store folder (created; resumed when it exists)")
  p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
  p.add_argument("--batch", type=int, default=LabelConfig.batch, help="frames per teacher call (default 8)")
  p.add_argument("--scale", type=float, default=LabelConfig.scale,
                 help="model frame = 512x256 medmodel x scale (default 0.5: 256x128)")
  p.add_argument("--shard", default="0/1", help="i/N: label only part i of N of the sorted segments (default 0/1)")
  p.add_argument("--shard-frames", type=int, default=LabelConfig.shard_frames,
                 help="consecutive frames per shard file (default 100)")
  p.add_argument("--overwrite", action="store_true", help="relabel shards that are already in the store")
  p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
  """Load the teachers and label this machine's part of the segments."""
  from tools.fair.teachers import load_teacher, teacher_class   # torch + transformers: only when labelling
  i, n = parse_shard(args.shard)
  names = [t.strip() for t in args.teachers.split(",") if t.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"--teachers needs distinct names, got {args.teachers!r}")
  cfg = LabelConfig(batch=args.batch, scale=args.scale, shard_frames=args.shard_frames, overwrite=args.overwrite)
  segments = partition(args.segments, i, n)
  teachers = {}
  for name in names:
    cls = teacher_class(name)
    teachers[name] = load_teacher(name, args.weights, args.device, config=teacher_config(cls, cfg.camera))
  if not segments:
    print(f"fair label: part {i}/{n} has no segments")
    return 0
  report = label_segments(segments, teachers, LabelStore(args.out), cfg, progress=not args.quiet)
  print(f"fair label: {len(segments)} segments, {report.frames} frames decoded in {report.seconds:.1f} s "
        f"({report.fps:.1f} frames/s); {len(report.written)} shards written, {report.skipped_shards} already done, "
        f"{report.skipped_segments} segments complete -> {args.out}")
  return 0

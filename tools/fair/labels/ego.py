"""Ego-motion labels from a route's own logs: `fair ego SEGMENTS --out STORE` (teacher "ego" of the label store).

Per road frame, ego (6,) float32 in the device frame (x forward, y right, z down): translation m/s, rotation rad/s,
the layout of the student's ego head (schema kind "ego"). Source per segment, the first the rlog has:
  cameraOdometry  openpilot's own visual odometry of that frame (matched by frameId): trans, rot as logged;
  carState        the car's speed and yaw rate interpolated at the frame's mid-exposure: (vEgo, 0, 0, 0, 0,
                  -yawRate) (carState.yawRate is left-positive, the device frame's z points down); no lateral,
                  vertical, roll or pitch motion, and the mounting angles are not applied (they are a few degrees).
Frames without a label (no cameraOdometry for that frame) are left out; the dataset then has no ego target there.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL

SOURCES = ("cameraOdometry", "carState")


def ego_labels(segment, source: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
  """(frame_index (N,) int64, ego (N, 6) float32, source) of every road frame of a routes.Segment with a label;
  source "auto" takes the first of SOURCES the rlog has. ValueError when it has none (or not the one asked)."""
  if source not in ("auto", *SOURCES):
    raise ValueError(f"unknown ego source {source!r} (valid: auto, {', '.join(SOURCES)})")
  frames = [e.roadEncodeIdx for e in segment.of_type("roadEncodeIdx")]
  if not frames:
    raise ValueError(f"{segment.path}: no roadEncodeIdx in the rlog: no road frames to label")
  index = np.array([f.segmentIdEncode for f in frames], np.int64)
  odo = {e.cameraOdometry.frameId: e.cameraOdometry for e in segment.of_type("cameraOdometry")}
  if source == "cameraOdometry" and not odo:
    raise ValueError(f"{segment.path}: no cameraOdometry in the rlog")
  if odo and source != "carState":
    keep = [i for i, f in enumerate(frames) if f.frameId in odo]
    ego = np.array([[*odo[frames[i].frameId].trans, *odo[frames[i].frameId].rot] for i in keep], np.float32)
    return index[keep], ego.reshape(-1, 6), "cameraOdometry"
  cs = segment.of_type("carState")
  if not cs:
    raise ValueError(f"{segment.path}: no cameraOdometry or carState in the rlog: no ego-motion labels")
  t = np.array([e.logMonoTime for e in cs], np.float64)
  mid = np.array([(f.timestampSof + f.timestampEof) / 2 for f in frames], np.float64)
  ego = np.zeros((len(frames), 6), np.float32)
  ego[:, 0] = np.interp(mid, t, [e.carState.vEgo for e in cs])
  ego[:, 5] = -np.interp(mid, t, [e.carState.yawRate for e in cs])
  return index, ego, "carState"


def write_ego(store, segment, name: str = "ego", source: str = "auto", shard_frames: int = 100) -> tuple[int, str]:
  """Write a segment's ego labels (ego_labels) into a LabelStore as teacher `name`, one shard per run of
  consecutive frames within each block of `shard_frames`; returns (frames labelled, source)."""
  from tools.fair.labels.pipeline import segment_id
  from tools.fair.labels.store import Labels, ShardInfo
  index, ego, source = ego_labels(segment, source)
  if not len(index):
    raise ValueError(f"{segment.path}: {source} matches no road frame: no ego-motion labels")
  existing = store.entries() if (store.root / "manifest.json").is_file() else ()
  info = ShardInfo(name, f"{__name__}:ego_labels", "0" * 64, str(segment.rlog_path), None, f"{__name__} {source}",
                   segment.path.name, str(segment.path.resolve()), False, {"source": source},
                   segment_id(segment, existing))
  # a new shard where the block changes or a frame is missing (the store holds consecutive frames per shard)
  cut = np.flatnonzero((np.diff(index) != 1) | (np.diff(index // shard_frames) != 0)) + 1
  runs = np.split(np.arange(len(index)), cut)
  for j, r in enumerate(runs):
    store.write(replace(info, final=j == len(runs) - 1), index[r], Labels({"ego": ego[r]}, {"source": source}, MEDMODEL))
  return len(index), source


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segments", nargs="+", type=Path, help="segment folders (rlog with cameraOdometry or carState)")
  p.add_argument("--out", type=Path, required=True, help="label store DIR (the dataset's ego teacher)")
  p.add_argument("--name", default="ego", help="teacher name in the store (default ego)")
  p.add_argument("--source", choices=("auto", *SOURCES), default="auto",
                 help="auto: cameraOdometry when logged, else carState")


def run(args: argparse.Namespace) -> int:
  from tools.fair.labels.store import LabelStore
  from tools.fair.routes import Segment
  store = LabelStore(args.out)
  for path in args.segments:
    n, source = write_ego(store, Segment(path), args.name, args.source)
    print(f"{args.out} {args.name}/{path.name}: {n} frames from {source}")
  return 0

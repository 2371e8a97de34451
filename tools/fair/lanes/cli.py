"""`fair lanes`: lane pseudo-labels of one segment by point tracking (tools/fair/lanes/pipeline.py, docs/lanes.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL
from tools.fair.device import add_device_argument, resolve_device
from tools.fair.lanes.pipeline import (INIT_SOURCES, LaneConfig, gt_init, label_lanes, lane_errors, model_frames,
                                       modelv2_by_frame, modelv2_init, seg_init, segment_height, write_labels)

TRACKERS = ("lk", "cotracker")


def load_tracker(name: str, camera, weights_dir=None, device: str = "cpu"):
  """The point tracker `name` on `camera` frames (lk: no weights; cotracker: DIR/cotracker/scaled_online.pth)."""
  if name == "lk":
    from tools.fair.teachers.lk_tracker import LKConfig as Config, LKTracker as cls
  elif name == "cotracker":
    from tools.fair.teachers.cotracker import CoTrackerConfig as Config, CoTrackerTeacher as cls
  else:
    raise ValueError(f"unknown tracker {name!r} (valid: {', '.join(TRACKERS)})")
  return cls.load(cls.resolve_weights(weights_dir, None), device, config=Config(camera))


def make_init(source: str, segment, config: LaneConfig, height: float, seg_teacher: str | None = None,
              weights_dir=None, device: str = "cpu"):
  """The init(frame) callable of a source: "gt" (scene.json), "modelv2" (the rlog's modelV2), "seg" (`seg_teacher`'s
  semantic map, or the simulator's own with seg_teacher "gt")."""
  if source == "gt" or (source == "seg" and seg_teacher == "gt"):
    if segment.scene_path is None:
      raise FileNotFoundError(f"{segment.path} has no scene.json: --init gt and --seg-teacher gt need a simulated "
                              "segment (`fair sim`)")
    from tools.fair.sim.gt import load_segment_scene, render_gt
    scene = load_segment_scene(segment.path)
    if source == "gt":
      return lambda f: gt_init(scene, f.index, config)
    size = (config.camera.width, config.camera.height)
    return lambda f: seg_init(render_gt(segment.path, f.index, "model", size).semantic, height, config)
  if source == "modelv2":
    by_frame = modelv2_by_frame(segment)
    if not by_frame:
      raise ValueError(f"{segment.rlog_path} has no modelV2 events: use --init gt (simulated) or --init seg")
    return lambda f: modelv2_init(by_frame[f.frame_id], height, config) if f.frame_id in by_frame else None
  if source == "seg":
    if seg_teacher is None:
      raise ValueError("--init seg needs --seg-teacher NAME (a teacher with a semantic map; gt: a simulated segment's)")
    from tools.fair.teachers import load_teacher
    teacher = load_teacher(seg_teacher, weights_dir, device)
    return lambda f: seg_init(teacher(f.rgb[None]).semantic[0], height, config)
  raise ValueError(f"unknown init source {source!r} (valid: {', '.join(INIT_SOURCES)})")


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segment", type=Path, help="segment folder (rlog + fcamera.hevc)")
  p.add_argument("--tracker", choices=TRACKERS, default="lk", help="point tracker (default lk)")
  p.add_argument("--weights", type=Path, default=None, help="weights DIR (cotracker: DIR/cotracker/scaled_online.pth)")
  p.add_argument("--init", choices=INIT_SOURCES, default="gt", help="where lane points start (default gt)")
  p.add_argument("--seg-teacher", default=None, help="--init seg: teacher giving semantic maps (gt: the simulator's)")
  p.add_argument("--out", type=Path, required=True,
                 help="label store DIR to write the labels into (as teacher --name; StudentDataset's lanes teacher)")
  p.add_argument("--name", default="lanes", help="teacher name of the labels in the store (default lanes)")
  p.add_argument("--scale", type=float, default=1.0, help="model frame resolution multiple (default 1: 512x256)")
  p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
  add_device_argument(p)


def run(args: argparse.Namespace) -> int:
  from tools.fair.labels.store import LabelStore
  from tools.fair.routes import Segment
  seg = Segment(args.segment)
  seg.check_calibration()   # before loading any model
  camera = MEDMODEL if args.scale == 1.0 else MEDMODEL.scaled(args.scale)
  config = LaneConfig(camera=camera)
  height = segment_height(seg)
  device = str(resolve_device(args.device))
  tracker = load_tracker(args.tracker, camera, args.weights, device)
  init = make_init(args.init, seg, config, height, args.seg_teacher, args.weights, device)
  labels = label_lanes(model_frames(seg, camera, args.max_frames), init, tracker, height, config, args.init)
  n = len(labels.frame_index)
  write_labels(LabelStore(args.out), seg, labels, tracker, camera, args.name,
               final=args.max_frames is None or n < args.max_frames)
  inits = len(np.unique(labels.init_frame))
  print(f"{args.out} {args.name}/{seg.path.name}: {n} frames, {inits} initialisations ({args.init}, tracker {args.tracker}), height {height:.2f} m")
  print("  slot            " + "  ".join(f"{s:>6}" for s in ("LL", "L", "R", "RR")))
  print("  exists          " + "  ".join(f"{v:6.2f}" for v in labels.exists.mean(0)))
  print("  visible points  " + "  ".join(f"{v:6.2f}" for v in labels.visible.mean((0, 2))))
  if seg.scene_path is not None:
    from tools.fair.sim.gt import load_segment_scene
    e = lane_errors(labels, load_segment_scene(seg.path), config)
    at = ", ".join(f"{d:g} m {v:.3f}" for d, v in e.at.items())
    print(f"  lateral error vs ground truth (m): {at}; all visible points median {e.median:.3f}, p95 {e.p95:.3f} "
          f"({e.n_points} points, {e.visible_fraction:.0%} of gt points covered)")
  return 0

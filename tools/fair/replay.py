"""`fair replay`: run a segment through modeld_fair's own per-frame code, offline or live.

Offline (`--out DIR`), like openpilot's process_replay: every road frame goes through the daemon's
`run_once` (the loop's body) via a DirectSource, with the calibration and camera state the rlog
logged before that frame and the frame's log time as the daemon's clock. Writes

  DIR/rlog.zst       the input rlog's events plus one FairModelOutput event per frame, logMonoTime
                     ordered (an output is logged at its frame's roadCameraState time, after it)
  DIR/overlay.mp4    model outputs (lanes + objects, depth, segmentation) in the calibrated model
                     frame; the simulator's ground truth beside them when the segment has scene.json
  DIR/latency.md     per-stage p50/p99 (ms) and frames/s, also as DIR/latency.json

Live (`--live`): publish the segment at 20 Hz into the standalone transport for a running
`modeld_fair --source zmq` (frames, liveCalibration, roadCameraState, re-stamped to now).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import zstandard as zstd
from openpilot_logging.cereal import log as capnp_log

from cereal_ext.fair import FairOutput, from_event
from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL
from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
from selfdrive.modeld_fair.modeld_fair import NO_CALIB, LoopState, StageTimes, run_once
from selfdrive.modeld_fair.runner import Runner, make_runner
from selfdrive.modeld_fair.sources import INPUT_SERVICES, OUTPUT_SERVICE, DirectSource, Inputs, update_inputs
from selfdrive.modeld_fair.nv12 import CameraFrame
from selfdrive.modeld_fair.transport import FRAME_SERVICE, Publisher
from tools.fair.overlay import Box, VideoSink, blend_semantic, colorize_depth, draw_boxes, draw_polylines, gt_panels, \
  label, mosaic, project_road_polyline, with_key
from tools.fair.files import atomic_write, remove_stale_tmp
from tools.fair.progress import progress_bar
from tools.fair.routes import Frame, Segment, SegmentWarning
from tools.fair.sim.gt import load_segment_scene, render_gt

STAGES = ("warp", "run", "decode", "serialize", "publish")


@dataclass(frozen=True)
class Latency:
  """p50 / p99 of one timed quantity, in milliseconds."""
  p50: float
  p99: float


@dataclass(frozen=True)
class ReplayReport:
  """What a replay did: frames, outcome per invalid reason, and the daemon's timings."""
  segment: str
  model_id: str
  frames: int
  skipped: int                     # decoded frames without log state (no roadCameraState): not replayed
  reasons: dict[str, int]          # invalidReason -> frames ("none" = valid)
  stages: dict[str, Latency]       # per stage, plus "overhead" (all but run) and "step" (run_once wall time)
  daemon_fps: float                # frames / total step time: the daemon's throughput on this machine
  replay_fps: float                # frames / wall time of the whole replay (video decode and overlay included)


def camera_frame(f: Frame) -> CameraFrame:
  return CameraFrame(f.frame_id, f.timestamp_sof, f.timestamp_eof, f.layout.width, f.layout.height,
                     f.layout.stride, f.layout.uv_offset, f.nv12)


def replay_segment(segment, out_dir, runner: Runner, *, max_frames: int | None = None, video: bool = True,
                   progress: bool = True) -> ReplayReport:
  """Replay a segment folder through the daemon (see the module doc); returns the report it also writes."""
  seg = Segment(segment)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  remove_stale_tmp(out_dir, names=("rlog.zst",))   # out_dir may be any folder: only our own leftovers
  # stable sorts: file order among equal times; outputs of an earlier run are dropped, ours replace them
  old = {id(ev) for ev in seg.of_type(OUTPUT_SERVICE)}
  events = sorted((ev for ev in seg.events if id(ev) not in old), key=lambda ev: ev.logMonoTime)
  inputs_evs = _input_events(seg)
  state, source, inputs, k = LoopState(runner), DirectSource(), Inputs(), 0
  outputs: list[tuple[int, bytes]] = []
  times: list[StageTimes] = []
  steps: list[float] = []
  reasons: dict[str, int] = {}
  skipped = 0
  overlay = _Overlay(seg, out_dir / "overlay.mp4") if video else None
  t_start = time.perf_counter()
  frames = seg.frames(reuse_buffer=True)
  try:
    for f in progress_bar(frames, desc=f"replay {seg.path.name}", unit="frame", disable=not progress):
      if max_frames is not None and len(outputs) >= max_frames:
        break
      if f.camera_state is None:  # the daemon never sees a frame without its camera state
        skipped += 1
        continue
      while k < len(inputs_evs) and inputs_evs[k].logMonoTime <= f.log_mono_time:
        inputs = update_inputs(inputs, inputs_evs[k])
        k += 1
      source.put(camera_frame(f), inputs, f.log_mono_time)
      t0 = time.perf_counter()
      result = run_once(state, source)
      steps.append(time.perf_counter() - t0)
      times.append(result.times)
      outputs.append((f.log_mono_time, result.event))
      reasons[result.out.invalid_reason] = reasons.get(result.out.invalid_reason, 0) + 1
      if overlay is not None:
        overlay.write(f, inputs, result.event)
  finally:
    frames.close()
    if overlay is not None:
      overlay.close()
  if skipped:
    warnings.warn(f"{seg.path}: {skipped} frames without a roadCameraState were not replayed", SegmentWarning,
                  stacklevel=2)
  if not outputs:   # a destroyed rlog or a video without camera state: nothing to write over what is there
    raise ValueError(f"{seg.path}: 0 frames replayed ({skipped} decoded frames without a roadCameraState; "
                     "is the rlog damaged?)")
  write_rlog(out_dir / "rlog.zst", events, outputs)
  report = _report(seg, runner, times, steps, skipped, reasons, time.perf_counter() - t_start)
  write_latency(out_dir, report)
  return report


def _input_events(seg: Segment) -> list:
  """The segment's events of the daemon's input services, logMonoTime ordered."""
  return sorted((ev for s in INPUT_SERVICES for ev in seg.of_type(s)), key=lambda ev: ev.logMonoTime)


def write_rlog(path: Path, events: list, outputs: list[tuple[int, bytes]]) -> None:
  """Input events and our (logMonoTime, Event bytes) outputs as one zstd frame, logMonoTime ordered
  (an input before an output at the same time), the way openpilot's LogReader reads rlogs."""
  merged = sorted([(ev.logMonoTime, 0, i, ev.as_builder().to_bytes()) for i, ev in enumerate(events)] +
                  [(t, 1, i, data) for i, (t, data) in enumerate(outputs)])
  data = b"".join(m[3] for m in merged)
  atomic_write(path, zstd.ZstdCompressor(level=10, write_checksum=True).compress(data))


def _latency(values) -> Latency:
  ms = np.asarray(values, np.float64) * 1e3
  return Latency(*(round(float(np.percentile(ms, q)), 3) for q in (50, 99))) if len(ms) else Latency(0.0, 0.0)


def _report(seg: Segment, runner: Runner, times: list[StageTimes], steps: list[float], skipped: int,
            reasons: dict[str, int], wall_s: float) -> ReplayReport:
  stages = {s: _latency([getattr(t, s) for t in times]) for s in STAGES}
  stages["overhead"] = _latency([t.overhead for t in times])
  stages["step"] = _latency(steps)
  n = len(times)
  return ReplayReport(segment=str(seg.path), model_id=runner.model_id, frames=n, skipped=skipped, reasons=reasons,
                      stages=stages, daemon_fps=round(n / sum(steps), 2) if n else 0.0,
                      replay_fps=round(n / wall_s, 2) if wall_s > 0 else 0.0)


def write_latency(out_dir: Path, report: ReplayReport) -> None:
  """latency.json (the report) and latency.md (its table)."""
  (out_dir / "latency.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
  rows = "\n".join(f"| {name} | {lat.p50:.3f} | {lat.p99:.3f} |" for name, lat in report.stages.items())
  reasons = ", ".join(f"{r}: {n}" for r, n in sorted(report.reasons.items()))
  (out_dir / "latency.md").write_text(
    f"# modeld_fair replay latency\n\n- segment: `{report.segment}`\n- model: `{report.model_id}`\n"
    f"- frames: {report.frames} (skipped without camera state: {report.skipped}); outcomes: {reasons}\n"
    f"- daemon: {report.daemon_fps:.1f} frames/s (frames / total step time); whole replay incl. video decode and "
    f"overlay: {report.replay_fps:.1f} frames/s\n\n"
    "| stage | p50 (ms) | p99 (ms) |\n| --- | ---: | ---: |\n" + rows + "\n\n"
    "run = modelExecutionTime; overhead = warp + decode + serialize + publish; step = the whole `run_once`.\n")


class _Overlay:
  """Per frame: the calibrated model-frame image with the published outputs drawn on it, and the
  simulator's ground truth drawn the same way beside it when the segment has a scene.json."""

  def __init__(self, seg: Segment, path: Path):
    self.seg, self.sink = seg, VideoSink(path)
    self.tables, self.tables_rpy = None, None
    self.gt_height = load_segment_scene(seg.path).calib.height if seg.scene_path is not None else None

  def write(self, f: Frame, inputs: Inputs, event: bytes) -> None:
    rpy = inputs.calib_rpy or NO_CALIB  # the calibration the daemon warped with
    if rpy != self.tables_rpy:
      self.tables, self.tables_rpy = warp_tables(self.seg.camera, rpy, full_chroma=True), rpy
    image = warp_rgb(f.nv12, self.tables)
    with capnp_log.Event.from_bytes(event) as ev:
      out = from_event(ev)
    panels = prediction_panels(image, out, inputs.camera_height or DEFAULT_CAMERA_HEIGHT)
    if self.gt_height is None:
      self.sink.write(with_key(mosaic(panels, columns=1), ["MODEL"]))
      return
    gt = gt_panels(image, render_gt(self.seg.path, f.index, frame="model", size=(MEDMODEL.width, MEDMODEL.height)),
                   self.gt_height)[:3]
    self.sink.write(with_key(mosaic([p for pair in zip(panels, gt) for p in pair], columns=2), ["MODEL", "GROUND TRUTH"]))

  def close(self) -> None:
    self.sink.close()


def _grid_to_image(grid: np.ndarray) -> np.ndarray:
  """A model-frame grid scaled (nearest) to the 512x256 model image."""
  return cv2.resize(grid, (MEDMODEL.width, MEDMODEL.height), interpolation=cv2.INTER_NEAREST)


def prediction_panels(image: np.ndarray, out: FairOutput, height: float) -> list[np.ndarray]:
  """Three panels of one published output over its model-frame image: lanes + objects, depth,
  segmentation (an output-less invalid message shows the image with its reason)."""
  title = f"frame {out.frame_id}" + ("" if out.valid else f" INVALID {out.invalid_reason}")
  lanes = [project_road_polyline(np.stack([out.lanes.x, ln.y, ln.z], axis=1), MEDMODEL, height=height)
           for ln in (out.lanes.lines if out.lanes else []) if ln.prob >= 0.5]
  boxes = [Box(o.box, f"{SEMANTIC_CLASSES[o.class_id]} {o.score:.2f} {o.position[0]:.0f}m")
           for o in (out.objects or [])]
  depth = colorize_depth(_grid_to_image(out.depth)) if out.depth is not None else np.zeros_like(image)
  seg = blend_semantic(image, _grid_to_image(out.segmentation)) if out.segmentation is not None else image
  return [label(draw_boxes(draw_polylines(image, lanes), boxes), f"{title}: lanes + objects"),
          label(depth, "model depth (log, 2-100 m)"), label(seg, "model segmentation")]


# ---------------------------------------------------------------- live

def publish_segment(segment, ipc_dir=None, *, rate_hz: float = 20.0, max_frames: int | None = None,
                    wait_s: float = 10.0) -> int:
  """Publish a segment live into the standalone transport: before each road frame the liveCalibration
  and roadCameraState events logged up to it, all re-stamped to now (CLOCK_MONOTONIC, what the
  daemon's ZmqSource compares with), paced at rate_hz. Waits up to wait_s for a subscriber on every
  service first, so that a daemon started before us sees the first frame. Returns frames published."""
  seg = Segment(segment)
  frames_pub = Publisher(FRAME_SERVICE, ipc_dir, frames=True)
  event_pubs = {s: Publisher(s, ipc_dir) for s in INPUT_SERVICES}
  try:
    for pub in (frames_pub, *event_pubs.values()):
      if not pub.wait_for_subscribers(1, wait_s):
        raise TimeoutError(f"no subscriber on {pub.service} within {wait_s} s: is modeld_fair running?")
    events = _input_events(seg)
    k, n, t0 = 0, 0, time.monotonic()
    frames = seg.frames(reuse_buffer=True)
    try:
      for f in frames:
        if max_frames is not None and n >= max_frames:
          break
        if f.camera_state is None:
          continue
        time.sleep(max(0.0, t0 + n / rate_hz - time.monotonic()))
        now = time.monotonic_ns()
        while k < len(events) and events[k].logMonoTime <= f.log_mono_time:
          ev = events[k].as_builder()
          ev.logMonoTime = now
          if ev.which() == "roadCameraState":
            ev.roadCameraState.timestampSof = now - (f.timestamp_eof - f.timestamp_sof)
            ev.roadCameraState.timestampEof = now
          event_pubs[ev.which()].send(ev.to_bytes())
          k += 1
        frames_pub.send_frame(CameraFrame(f.frame_id, now - (f.timestamp_eof - f.timestamp_sof), now,
                                          f.layout.width, f.layout.height, f.layout.stride, f.layout.uv_offset, f.nv12))
        n += 1
    finally:
      frames.close()
  finally:
    for pub in (frames_pub, *event_pubs.values()):
      pub.close()
  return n


# ---------------------------------------------------------------- command line

def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  n = int(text)
  if n < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
  return n


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segment", type=Path, help="segment folder (rlog + fcamera.hevc)")
  p.add_argument("--out", type=Path, default=None, help="folder for rlog.zst, overlay.mp4 and latency.md/json")
  p.add_argument("--runtime", choices=("tinygrad", "onnxruntime"), default="onnxruntime", help="model back end")
  p.add_argument("--model", type=Path, default=None,
                 help="model folder (default: the bundled selfdrive/modeld_fair/models)")
  p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
  p.add_argument("--no-video", action="store_true", help="skip overlay.mp4")
  p.add_argument("--live", action="store_true", help="publish into the standalone transport instead (for a running "
                                                    "modeld_fair --source zmq)")
  p.add_argument("--ipc-dir", type=Path, default=None, help="transport folder for --live (default as modeld_fair's)")
  p.add_argument("--rate", type=float, default=20.0, help="frames/s for --live")
  p.add_argument("--ref", type=Path, default=None,
                 help="regression gate: compare the outputs field by field with this reference (.npz; the bundled "
                      "samples' are in data/replay_refs/), exit 1 naming the first fields that differ")
  p.add_argument("--update-ref", action="store_true", help="with --ref: write the outputs as the new reference")
  p.add_argument("--tol", type=float, default=None, help="with --ref: tolerance (default: the reference's, 1e-3)")


def run(args: argparse.Namespace) -> int:
  if args.live:
    n = publish_segment(args.segment, args.ipc_dir, rate_hz=args.rate, max_frames=args.max_frames)
    print(f"published {n} frames")
    return 0
  if args.ref is not None:
    from tools.fair.replay_ref import gate, report
    diffs = gate(args.segment, args.ref, make_runner(args.runtime, args.model), update=args.update_ref,
                 max_frames=args.max_frames, tol=args.tol, out_dir=args.out)
    print(f"wrote {args.ref}" if args.update_ref else report(diffs, args.ref))
    return 1 if diffs else 0
  if args.out is None:
    raise ValueError("--out DIR is required (or --live, or --ref REF)")
  replay_segment(args.segment, args.out, make_runner(args.runtime, args.model), max_frames=args.max_frames,
                          video=not args.no_video)
  print((args.out / "latency.md").read_text())
  return 0

#!/usr/bin/env python3
"""modeld_fair: the student vision model as a daemon beside openpilot's modeld (docs/daemon.md).

A short, flat loop driven by camera frames (20 Hz), as openpilot's modeld:

  newest frame → calibrated warp → run → decode → serialise → publish (one FairModelOutput per frame)

Faults never stop the loop: a frame that cannot be used, a model that raises or returns NaN, a
missing calibration or a silent camera each give a message with `valid = False` and an
`invalidReason`, and the next good frame is valid again. `run_once` is the loop's body; replay
(tools/fair/replay.py) calls that same function frame by frame through a DirectSource.

Imports stay light (numpy, pycapnp; pyzmq only for the standalone transport): the model runtime is imported only when the runner
is made, and nothing here imports torch or transformers.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from cereal_ext.fair import DEFAULT_SLOT, MAX_TEXT_BYTES, FairMessageError, FairOutput, to_event
from selfdrive.modeld_fair.camera import CameraModel, camera_for_size
from selfdrive.modeld_fair.medmodel_warp import WarpTables, warp_model_input, warp_tables
from selfdrive.modeld_fair.model_io import INPUT_SHAPE
from selfdrive.modeld_fair.nv12 import FRAME_FIELDS, frame_meta_problem, nv12_layout
from selfdrive.modeld_fair.outputs import check_finite, check_shapes, decode_outputs
from selfdrive.modeld_fair.runner import Runner, make_runner  # imports a back end only when a runner is made
from selfdrive.modeld_fair.sources import Inputs, OpenpilotSource, Source, ZmqSource, openpilot_available
from selfdrive.modeld_fair.nv12 import CameraFrame

MODEL_FREQ = 20                      # Hz, the camera's frame rate
RECV_TIMEOUT_S = 0.1                 # the loop wakes at least this often: stop requests and disconnects are seen
DISCONNECT_NS = 500_000_000          # no frame for 10 frame periods: transportDisconnected
IDLE_PUBLISH_PERIOD_NS = 1_000_000_000  # while disconnected, one frame-less invalid message per second
STALE_FRAME_NS = 500_000_000         # a frame whose end of exposure is older than this is staleFrame
FUTURE_FRAME_NS = 100_000_000        # ... or ahead of now by more than this (one clock: only a broken stamp is)
# modeld's frame-drop filter: first order, time constant 10 s at 20 Hz, at most 10 drops counted per
# gap, silent for the first 10 frames; reported as 100 * x / (1 + x)
FRAME_DROP_RC_S = 10.0
FRAME_DROP_ALPHA = (1 / MODEL_FREQ) / (FRAME_DROP_RC_S + 1 / MODEL_FREQ)
FRAME_DROP_MAX = 10
FRAME_DROP_WARMUP = 10
# calibrationd refines rpyCalib at 4 Hz by tiny amounts; rebuilding the warp tables (~13 ms) only when
# it moved by 0.1 mrad (0.26 px on the comma 3X road camera) keeps that cost out of nearly every frame
CALIB_REBUILD_RAD = 1e-4
NO_CALIB = (0.0, 0.0, 0.0)           # until a calibration is seen: warp as if the device were mounted straight
# a usable rpyCalib is finite and within 20 degrees per angle, far beyond calibrationd's own pitch/yaw
# limits (< 0.15 rad): anything else is a broken message, not a mounting
CALIB_LIMIT_RAD = 0.35
# inside openpilot: a big core modeld (core 7) and controls (4, 5) do not use, SCHED_FIFO priority
# far below modeld's 54 so that our model can never delay the driving model
REALTIME_CORES = [6]
REALTIME_PRIORITY = 5
OUTPUT_FIELDS = ("depth", "segmentation", "objects", "lanes", "ego_motion")

log = logging.getLogger("modeld_fair")


@dataclass
class StageTimes:
  """Seconds spent in each stage for one frame (0.0: the stage did not run)."""
  warp: float = 0.0
  run: float = 0.0       # = modelExecutionTime
  decode: float = 0.0
  serialize: float = 0.0
  publish: float = 0.0

  @property
  def overhead(self) -> float:
    """The daemon's own cost: everything but the model run."""
    return self.warp + self.decode + self.serialize + self.publish


@dataclass(frozen=True)
class Fault:
  """Why a message is invalid: one of cereal_ext's INVALID_REASONS and a human-readable detail."""
  reason: str
  detail: str = ""


@dataclass
class FrameDrops:
  """Frame-id gaps between consecutive frames, filtered as modeld's frameDropPerc."""
  last_frame_id: int | None = None
  filtered: float = 0.0
  frames: int = 0

  def update(self, frame_id: int) -> int:
    """Count the frames skipped before `frame_id`; a smaller id means the camera restarted (no gap)."""
    last = self.last_frame_id
    dropped = frame_id - last - 1 if last is not None and frame_id > last else 0
    self.last_frame_id = frame_id
    self.frames += 1
    self.filtered += FRAME_DROP_ALPHA * (min(dropped, FRAME_DROP_MAX) - self.filtered)
    if self.frames <= FRAME_DROP_WARMUP:  # let frame drops warm up (startup skips are expected)
      self.filtered = 0.0
    return dropped

  @property
  def perc(self) -> float:
    return 100.0 * self.filtered / (1.0 + self.filtered)


@dataclass
class WarpCache:
  """Warp tables for the current camera and calibration, rebuilt only when either changes."""
  camera: CameraModel | None = None
  rpy: np.ndarray | None = None
  tables: WarpTables | None = None

  def get(self, camera: CameraModel, rpy) -> WarpTables:
    rpy = np.asarray(rpy, np.float64)
    # `not <`: a calibration that does not compare (NaN) is a change, never a reason to keep old tables
    if self.tables is None or camera != self.camera or not np.abs(rpy - self.rpy).max() < CALIB_REBUILD_RAD:
      self.camera, self.rpy, self.tables = camera, rpy, warp_tables(camera, rpy)
    return self.tables


@dataclass
class FrameHistory:
  """The student's input: the previous and the current warped frame, (1, 12, 128, 256) uint8."""
  img: np.ndarray = field(default_factory=lambda: np.zeros(INPUT_SHAPE, np.uint8))
  empty: bool = True

  def push(self, frame: np.ndarray) -> np.ndarray:
    # the very first frame has no predecessor: it is its own previous frame
    self.img[0, :6] = frame if self.empty else self.img[0, 6:]
    self.img[0, 6:] = frame
    self.empty = False
    return self.img


@dataclass
class LoopState:
  """What the loop carries from one iteration to the next."""
  runner: Runner
  warp: WarpCache = field(default_factory=WarpCache)
  history: FrameHistory = field(default_factory=FrameHistory)
  drops: FrameDrops = field(default_factory=FrameDrops)
  last_eof: int | None = None        # timestamp_eof of the last frame that went to the model
  last_frame_ns: int | None = None   # source clock when the last frame (or the loop's start) was seen
  last_idle_ns: int | None = None    # when the last frame-less message went out (None: frames are flowing)
  model_id: str = field(init=False)
  model_hash: bytes = field(init=False)

  def __post_init__(self):
    self.model_id = _text(self.runner.model_id)
    h = self.runner.artifact_hash
    self.model_hash = bytes.fromhex(h) if len(h) == 64 else b""  # sha256 hex; anything else is not a hash


@dataclass(frozen=True)
class StepResult:
  """One processed frame: what was published (as a FairOutput and as Event bytes) and its stage times."""
  out: FairOutput
  times: StageTimes
  event: bytes


def _text(s: str) -> str:
  """Fit free text into a message's Text field (UTF-8 bytes cap, no NUL, lone surrogates as '?')."""
  return s.replace("\x00", " ").encode(errors="replace")[:MAX_TEXT_BYTES].decode(errors="ignore")


def frame_fault(frame: CameraFrame, last_eof: int | None, now_ns: int) -> Fault | None:
  """badFrame for a size/stride/buffer that is not a road camera's padded NV12, staleFrame for a
  stamp failing the clock rule (stamp_fault); None for a usable frame. Its metadata fits VisionIPC's types."""
  try:
    camera_for_size(frame.width, frame.height)
  except ValueError as e:
    return Fault("badFrame", str(e))
  layout = nv12_layout(frame.width, frame.height)
  if (frame.stride, frame.uv_offset) != (layout.stride, layout.uv_offset):
    return Fault("badFrame", f"stride {frame.stride} / uv_offset {frame.uv_offset}, expected {layout.stride} / "
                             f"{layout.uv_offset} for {frame.width}x{frame.height}")
  data = frame.data
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1 or data.size < layout.size:
    return Fault("badFrame", f"buffer of {getattr(data, 'size', '?')} bytes, expected >= {layout.size}")
  return stamp_fault(frame.timestamp_eof, last_eof, now_ns)


def stamp_fault(eof: int, last_eof: int | None, now_ns: int) -> Fault | None:
  """The clock rule: a frame's end of exposure lies after the last accepted frame's, at most
  STALE_FRAME_NS before now and at most FUTURE_FRAME_NS after it. Only accepted stamps become
  `last_eof`, so one broken stamp (an hour ahead, backwards) affects its own frame only."""
  if last_eof is not None and eof <= last_eof:
    return Fault("staleFrame", f"timestamp_eof {eof} is not after the previous frame's {last_eof}")
  if now_ns - eof > STALE_FRAME_NS:
    return Fault("staleFrame", f"frame is {(now_ns - eof) / 1e6:.0f} ms old")
  if eof - now_ns > FUTURE_FRAME_NS:
    return Fault("staleFrame", f"timestamp_eof is {(eof - now_ns) / 1e6:.0f} ms in the future")
  return None


def calib_fault(rpy) -> Fault | None:
  """noCalibration until a usable rpyCalib (finite, each angle within CALIB_LIMIT_RAD) is in force."""
  if rpy is None:
    return Fault("noCalibration", "no liveCalibration yet: warped with the identity calibration")
  if not (len(rpy) == 3 and all(abs(a) <= CALIB_LIMIT_RAD for a in rpy)):  # NaN fails <= too
    return Fault("noCalibration", f"liveCalibration.rpyCalib {tuple(rpy)} is not finite within "
                                  f"{CALIB_LIMIT_RAD} rad: warped with the identity calibration")
  return None


def infer(state: LoopState, frame: CameraFrame, rpy, times: StageTimes) -> tuple[FairOutput | None, Fault | None]:
  """Warp (calibration `rpy`), run and decode one usable frame: the decoded outputs, or the fault that prevented them."""
  t0 = time.perf_counter()
  tables = state.warp.get(camera_for_size(frame.width, frame.height), rpy)
  img = state.history.push(warp_model_input(frame.data, tables))
  t1 = time.perf_counter()
  times.warp = t1 - t0
  try:
    raw = state.runner.run(img)
  except Exception as e:  # the loop outlives any model failure
    log.exception("model run failed on frame %d", frame.frame_id)
    return None, Fault("modelError", f"{type(e).__name__}: {e}")
  finally:
    times.run = time.perf_counter() - t1
  t2 = time.perf_counter()
  try:
    check_shapes(raw)
    bad = check_finite(raw)
    decoded = None if bad else decode_outputs(raw)
  except Exception as e:
    log.exception("decoding the outputs of frame %d failed", frame.frame_id)
    return None, Fault("modelError", f"decode: {type(e).__name__}: {e}")
  finally:
    times.decode = time.perf_counter() - t2
  if bad:
    return None, Fault("nonFiniteOutput", f"output {bad!r} holds NaN or inf")
  return decoded, None


def serialize(out: FairOutput, log_mono_time: int) -> tuple[FairOutput, bytes]:
  """The openpilot Event carrying `out`, and the output it carries: outputs the message cannot hold
  (e.g. a depth <= 0 from a broken model) turn it into an output-less modelError instead of
  crashing the loop."""
  try:
    return out, to_event(out, log_mono_time, DEFAULT_SLOT).to_bytes()
  except FairMessageError as e:
    log.error("frame %d: outputs not encodable: %s", out.frame_id, e)
    bare = replace(out, invalid_reason="modelError", invalid_detail=_text(f"outputs not encodable: {e}"),
                   **dict.fromkeys(OUTPUT_FIELDS))
    return bare, to_event(bare, log_mono_time, DEFAULT_SLOT).to_bytes()


def step(state: LoopState, source: Source, frame: CameraFrame, inputs: Inputs, now_ns: int) -> StepResult:
  """Process and publish one received frame (the per-frame step of the loop and of replay)."""
  times = StageTimes()
  if (problem := frame_meta_problem({k: getattr(frame, k) for k in FRAME_FIELDS})) is not None:
    # ids or stamps that fit no message: an anonymous badFrame, and the drop filter never sees them
    out = FairOutput(frame_drop_perc=state.drops.perc, model_id=state.model_id, model_hash=state.model_hash)
    fault = Fault("badFrame", problem)
  else:
    if dropped := state.drops.update(frame.frame_id):
      log.debug("skipped %d frames before frame %d", dropped, frame.frame_id)
    out = FairOutput(frame_id=frame.frame_id, frame_id_extra=frame.frame_id,  # no wide camera: extra = main
                     frame_age=max(0, (inputs.camera_state_frame_id or 0) - frame.frame_id),
                     frame_drop_perc=state.drops.perc, timestamp_eof=frame.timestamp_eof,
                     model_id=state.model_id, model_hash=state.model_hash)
    fault = frame_fault(frame, state.last_eof, now_ns)
  if fault is None:
    state.last_eof = frame.timestamp_eof
    calib = calib_fault(inputs.calib_rpy)
    decoded, fault = infer(state, frame, NO_CALIB if calib else inputs.calib_rpy, times)
    out.model_execution_time = times.run
    if decoded is not None:
      out = replace(out, **{f: getattr(decoded, f) for f in OUTPUT_FIELDS})
      fault = calib  # outputs are there, but without a usable calibration they are in an uncalibrated frame
  if fault is not None:
    out.invalid_reason, out.invalid_detail = fault.reason, _text(fault.detail)
  t0 = time.perf_counter()
  out, event = serialize(out, source.now_ns())
  t1 = time.perf_counter()
  source.publish(event)
  times.serialize, times.publish = t1 - t0, time.perf_counter() - t1
  return StepResult(out, times, event)


def publish_idle(state: LoopState, source: Source, now_ns: int) -> None:
  """No frame arrived: past DISCONNECT_NS without frames, publish a frame-less transportDisconnected
  message right away and then once per IDLE_PUBLISH_PERIOD_NS, so consumers see the daemon is alive."""
  silent_ns = now_ns - state.last_frame_ns
  if silent_ns <= DISCONNECT_NS:
    return
  if state.last_idle_ns is None:
    log.warning("no camera frame for %.1f s: transport disconnected", silent_ns / 1e9)
  elif now_ns - state.last_idle_ns < IDLE_PUBLISH_PERIOD_NS:
    return
  state.last_idle_ns = now_ns
  out = FairOutput(frame_id=state.drops.last_frame_id or 0, frame_id_extra=state.drops.last_frame_id or 0,
                   frame_drop_perc=state.drops.perc, timestamp_eof=state.last_eof or 0,
                   invalid_reason="transportDisconnected",
                   invalid_detail=f"no camera frame for {silent_ns / 1e9:.1f} s",
                   model_id=state.model_id, model_hash=state.model_hash)
  source.publish(serialize(out, now_ns)[1])


def run_once(state: LoopState, source: Source) -> StepResult | None:
  """One loop iteration: wait for the newest frame, take in the latest inputs, process and publish
  (None when no frame came within RECV_TIMEOUT_S)."""
  frame = source.recv_frame(RECV_TIMEOUT_S)
  inputs = source.recv_inputs()  # after the frame, as modeld: the calibration in force for this frame
  now_ns = source.now_ns()
  if state.last_frame_ns is None:
    state.last_frame_ns = now_ns  # the disconnect timer starts with the loop
  if frame is None:
    publish_idle(state, source, now_ns)
    return None
  if state.last_idle_ns is not None:
    log.warning("camera frames are back (frame %d)", frame.frame_id)
    state.last_idle_ns = None
  state.last_frame_ns = now_ns
  return step(state, source, frame, inputs, now_ns)


def run_loop(state: LoopState, source: Source, should_stop: Callable[[], bool]) -> None:
  """Run until should_stop() (checked at least every RECV_TIMEOUT_S)."""
  while not should_stop():
    run_once(state, source)


# ---------------------------------------------------------------- process set-up

def load_runner(runtime: str, model_dir: Path | None, factory: str | None) -> Runner:
  """The model runner: runner.make_runner(runtime, model_dir), or `factory` ("module:callable",
  called with no arguments) for tests and experiments."""
  if factory:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)()
  return make_runner(runtime, model_dir)


def config_realtime() -> None:
  """openpilot's realtime priority and core pinning (openpilot itself no-ops them on a PC)."""
  from openpilot.common.realtime import config_realtime_process
  config_realtime_process(REALTIME_CORES, REALTIME_PRIORITY)


def stop_on_signals() -> threading.Event:
  """An event set by SIGTERM or SIGINT: the loop sees it within RECV_TIMEOUT_S and exits cleanly."""
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, _: stop.set())
  return stop


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="modeld_fair", description=__doc__.splitlines()[0])
  p.add_argument("--source", choices=("auto", "openpilot", "zmq"), default="auto",
                 help="openpilot: VisionIPC + cereal; zmq: our standalone transport; auto: openpilot when importable")
  p.add_argument("--ipc-dir", type=Path, default=None, help="zmq transport folder (default $FAIRPILOT_IPC_DIR or /tmp)")
  p.add_argument("--runtime", choices=("tinygrad", "onnxruntime"), default=None,
                 help="model back end (default: tinygrad inside openpilot, onnxruntime standalone)")
  p.add_argument("--model-dir", type=Path, default=None, help="folder holding the student (default: bundled models/)")
  p.add_argument("--runner-factory", default=None, metavar="MODULE:CALLABLE",
                 help="build the runner with this callable instead (tests, experiments)")
  p.add_argument("-v", "--verbose", action="store_true")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  """Run the daemon until SIGTERM/SIGINT. openpilot's manager calls main() without arguments, which
  selects the in-openpilot defaults; the command line (`python -m selfdrive.modeld_fair.modeld_fair`)
  passes its own."""
  args = parse_args([] if argv is None else argv)
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="%(asctime)s %(name)s %(levelname)s %(message)s")
  inside = args.source == "openpilot" or (args.source == "auto" and openpilot_available())
  if inside:
    config_realtime()
  else:
    gc.disable()   # as openpilot's config_realtime_process does inside openpilot: no collector pauses mid-frame
  runner = load_runner(args.runtime or ("tinygrad" if inside else "onnxruntime"), args.model_dir, args.runner_factory)
  source = OpenpilotSource() if inside else ZmqSource(args.ipc_dir)
  stop = stop_on_signals()
  log.info("modeld_fair: model %s, %s source", runner.model_id, "openpilot" if inside else "zmq")
  try:
    run_loop(LoopState(runner), source, stop.is_set)
  finally:
    source.close()
  log.info("modeld_fair: stopped")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

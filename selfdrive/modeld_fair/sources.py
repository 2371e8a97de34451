"""Where modeld_fair gets camera frames and messages, and where it publishes: one small interface.

  OpenpilotSource  inside openpilot: VisionIPC (camerad, road stream, conflated) + cereal messaging
  ZmqSource        standalone on a PC: our pyzmq transport (transport.py), same services
  DirectSource     in-process: the caller hands each frame over (replay, tests)

A source gives the newest camera frame (`recv_frame`, skipping older ones: the daemon never
queues frames), the latest calibration and camera state (`recv_inputs`), the clock that frame
timestamps are comparable with (`now_ns`), and publishes the daemon's serialised Events.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import capnp

from cereal_ext.fair import DEFAULT_SLOT, log as capnp_log  # openpilot's schema, wherever it comes from
from selfdrive.modeld_fair.nv12 import CameraFrame

OUTPUT_SERVICE = f"customReservedRawData{DEFAULT_SLOT}"  # the Event field FairModelOutput travels in
INPUT_SERVICES = ("liveCalibration", "roadCameraState")
# messages taken from each input socket per loop: normally 1-2 arrive per frame; a flood beyond it waits
# in the socket (and zmq drops past its high-water mark) instead of starving the frames
MAX_MESSAGES_PER_LOOP = 100

log = logging.getLogger("modeld_fair.sources")


@dataclass(frozen=True)
class Inputs:
  """The latest messages the daemon needs besides the frame (None: not seen yet)."""
  calib_rpy: tuple[float, float, float] | None = None   # liveCalibration.rpyCalib
  camera_height: float | None = None                     # liveCalibration.height[0] (m)
  camera_state_frame_id: int | None = None               # roadCameraState.frameId


class Source(Protocol):
  """What the daemon's loop needs from wherever its frames come from."""

  def recv_frame(self, timeout_s: float) -> CameraFrame | None:
    """The newest frame (older queued ones are skipped), None when none arrived within timeout_s."""

  def recv_inputs(self) -> Inputs:
    """The latest inputs, after taking in every message that arrived (never waits)."""

  def now_ns(self) -> int:
    """Now, on the clock of the frames' timestamps (also the logMonoTime of what is published)."""

  def publish(self, event: bytes) -> None:
    """Send one serialised openpilot Event on OUTPUT_SERVICE."""

  def close(self) -> None: ...


def update_inputs(inputs: Inputs, event) -> Inputs:
  """`inputs` updated by one openpilot Event (liveCalibration or roadCameraState; others ignored)."""
  which = event.which()
  if which == "liveCalibration":
    rpy, height = list(event.liveCalibration.rpyCalib), list(event.liveCalibration.height)
    # calibrationd publishes an empty rpyCalib until it has an estimate: not a calibration yet
    return replace(inputs, calib_rpy=tuple(rpy) if len(rpy) == 3 else inputs.calib_rpy,
                   camera_height=height[0] if height else inputs.camera_height)
  if which == "roadCameraState":
    return replace(inputs, camera_state_frame_id=event.roadCameraState.frameId)
  return inputs


class ZmqSource:
  """Frames and messages from our pyzmq transport (transport.py) in `ipc_dir`."""

  def __init__(self, ipc_dir: str | Path | None = None):
    # imported here: pyzmq is needed on PCs only, openpilot's device Python may not have it
    from selfdrive.modeld_fair.transport import FRAME_SERVICE, Publisher, Subscriber
    self.frames = Subscriber(FRAME_SERVICE, ipc_dir, conflate=True)
    self.messages = [Subscriber(s, ipc_dir) for s in INPUT_SERVICES]
    self.output = Publisher(OUTPUT_SERVICE, ipc_dir)
    self.inputs = Inputs()

  def recv_frame(self, timeout_s: float) -> CameraFrame | None:
    return self.frames.recv_frame(timeout_s)

  def recv_inputs(self) -> Inputs:
    for sub in self.messages:
      for msg in sub.recv_all(MAX_MESSAGES_PER_LOOP):
        try:
          with capnp_log.Event.from_bytes(bytes(msg.payload)) as event:
            self.inputs = update_inputs(self.inputs, event)
        except (capnp.KjException, ValueError) as e:  # one broken message must not stop the daemon
          log.warning("%s: dropped an unreadable Event: %s", sub.service, str(e).splitlines()[0])
    return self.inputs

  def now_ns(self) -> int:
    return time.monotonic_ns()  # what our publishers stamp frames with

  def publish(self, event: bytes) -> None:
    self.output.send(event)

  def close(self) -> None:
    for sock in (self.frames, *self.messages, self.output):
      sock.close()


class OpenpilotSource:
  """camerad's road stream over VisionIPC and cereal's SubMaster/PubMaster (only importable in openpilot)."""

  def __init__(self):
    import cereal.messaging as messaging
    from msgq.visionipc import VisionIpcClient, VisionStreamType
    # conflate=True: VisionIPC hands out the newest buffer only
    self.client = VisionIpcClient("camerad", VisionStreamType.VISION_STREAM_ROAD, True)
    self.sm = messaging.SubMaster(list(INPUT_SERVICES))
    self.pm = messaging.PubMaster([OUTPUT_SERVICE])

  def recv_frame(self, timeout_s: float) -> CameraFrame | None:
    if not self.client.is_connected() and not self.client.connect(False):
      time.sleep(timeout_s)  # camerad not up yet
      return None
    buf = self.client.recv(int(timeout_s * 1000))
    if buf is None:
      return None
    return CameraFrame(self.client.frame_id, self.client.timestamp_sof, self.client.timestamp_eof,
                       buf.width, buf.height, buf.stride, buf.uv_offset, buf.data)

  def recv_inputs(self) -> Inputs:
    self.sm.update(0)
    calib, state = self.sm["liveCalibration"], self.sm["roadCameraState"]
    rpy = list(calib.rpyCalib) if self.sm.seen["liveCalibration"] else []
    height = list(calib.height)
    return Inputs(calib_rpy=tuple(rpy) if len(rpy) == 3 else None, camera_height=height[0] if height else None,
                  camera_state_frame_id=state.frameId if self.sm.seen["roadCameraState"] else None)

  def now_ns(self) -> int:
    # camerad stamps frames with nanos_since_boot(), i.e. CLOCK_BOOTTIME
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

  def publish(self, event: bytes) -> None:
    self.pm.send(OUTPUT_SERVICE, event)

  def close(self) -> None:
    pass  # VisionIPC and msgq clean up with the process


class DirectSource:
  """In-process source: the caller hands over each frame (or None: no frame by then) with the inputs
  in force and the time, then runs one loop iteration; what the daemon publishes is kept in
  `published`. Replay uses it with log time, so a replay never depends on how fast it runs."""

  def __init__(self):
    self.published: list[bytes] = []
    self._frame: CameraFrame | None = None
    self._inputs = Inputs()
    self._now = 0

  def put(self, frame: CameraFrame | None, inputs: Inputs, now_ns: int) -> None:
    self._frame, self._inputs, self._now = frame, inputs, now_ns

  def recv_frame(self, timeout_s: float) -> CameraFrame | None:
    frame, self._frame = self._frame, None
    return frame

  def recv_inputs(self) -> Inputs:
    return self._inputs

  def now_ns(self) -> int:
    return self._now

  def publish(self, event: bytes) -> None:
    self.published.append(event)

  def close(self) -> None:
    pass


def openpilot_available() -> bool:
  """True inside an openpilot checkout (msgq's VisionIPC and cereal messaging importable)."""
  try:
    import cereal.messaging  # noqa: F401
    import msgq.visionipc  # noqa: F401
  except ImportError:
    return False
  return True

"""Frames and messages between processes on one machine, for modeld_fair outside openpilot.

openpilot's msgq dropped its ZMQ back end, so on a PC (tests, `fair replay --live`, the
simulator loop) we carry VisionIPC-like frames and openpilot Events over pyzmq PUB/SUB on
`ipc://` sockets instead. One socket per service, like msgq: the publisher binds
`ipc://<ipc_dir>/<service>` (an XPUB, so it can wait for its subscribers), subscribers connect
and zmq reconnects them by itself when a publisher restarts.

Every message is ONE zmq message (not multipart, see below), laid out as

  service name (ascii) | 0x00 | n: uint32 little-endian | n bytes of metadata (JSON object) | payload

- camera frames (service `roadCameraFrames`): metadata = frame_id, timestamp_sof,
  timestamp_eof (ns, CLOCK_MONOTONIC of the publishing machine), width, height, stride,
  uv_offset; payload = the padded NV12 buffer (openpilot's VisionBuf layout).
- openpilot Events (`liveCalibration`, `roadCameraState`, `customReservedRawData0`, ...):
  metadata = {}; payload = one serialised capnp `Event`, exactly as openpilot logs it.

Subscribers filter on `service + 0x00`. Frame subscribers set zmq's CONFLATE: the socket keeps only
the newest message, so a reader slower than the camera skips frames and never queues them.
CONFLATE does not support multipart messages, hence one part. (A high-water mark of 1 plus
draining is no substitute: at the mark zmq drops the NEW messages, so the reader would get the
frame published just after its previous read, a whole processing period old.)
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from selfdrive.modeld_fair.nv12 import FRAME_FIELDS, CameraFrame, frame_meta_problem

FRAME_SERVICE = "roadCameraFrames"
FRAME_SNDHWM = 2  # frames a publisher holds per subscriber before dropping: never a backlog
EVENT_HWM = 1000  # events are small and must not be lost to a short stall (calibration arrives at 4 Hz)
_LEN = struct.Struct("<I")  # the metadata length
MAX_META_BYTES = 4096  # ours are < 200 bytes; the cap keeps a hostile one's parse (huge numbers, deep nesting) small

log = logging.getLogger("modeld_fair.transport")


def default_ipc_dir() -> Path:
  """$FAIRPILOT_IPC_DIR, else a per-user folder under /tmp (unix socket paths must stay < 108 bytes)."""
  return Path(os.environ.get("FAIRPILOT_IPC_DIR", f"/tmp/fairpilot-ipc-{os.getuid()}"))


def endpoint(service: str, ipc_dir: str | Path | None = None) -> str:
  """The ipc:// address of one service."""
  if not service.isascii() or not service.isidentifier():
    raise ValueError(f"service names are ascii identifiers, got {service!r}")
  return f"ipc://{Path(ipc_dir or default_ipc_dir()) / service}"


@dataclass(frozen=True, eq=False)
class Message:
  """One received message: its service, metadata and payload (a zero-copy view of the zmq frame)."""
  service: str
  meta: dict
  payload: memoryview


def _prefix(service: str) -> bytes:
  return service.encode() + b"\x00"


class Publisher:
  """Bind one service's socket and publish on it; `frames=True` for camera frames (tiny send queue)."""

  def __init__(self, service: str, ipc_dir: str | Path | None = None, *, frames: bool = False):
    self.service = service
    self._prefix = _prefix(service)
    self._subscriptions = 0
    addr = endpoint(service, ipc_dir)
    Path(addr[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
    self.sock = zmq.Context.instance().socket(zmq.XPUB)
    self.sock.setsockopt(zmq.LINGER, 0)
    self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not only the first per topic
    self.sock.setsockopt(zmq.SNDHWM, FRAME_SNDHWM if frames else EVENT_HWM)
    self.sock.bind(addr)  # libzmq unlinks a stale socket file left by a dead publisher

  def send(self, payload, meta: dict | None = None) -> None:
    """Publish one message; never blocks (PUB drops for a subscriber whose queue is full)."""
    head = json.dumps(meta or {}, separators=(",", ":")).encode()
    self.sock.send(b"".join([self._prefix, _LEN.pack(len(head)), head, payload]), copy=False)

  def send_frame(self, frame: CameraFrame) -> None:
    self.send(np.ascontiguousarray(frame.data, np.uint8), frame.meta())

  def wait_for_subscribers(self, count: int = 1, timeout_s: float = 5.0) -> bool:
    """Wait until `count` subscriptions arrived, so that nothing published next is lost to the
    subscriber's connection still being set up (zmq's "slow joiner"). False on timeout."""
    deadline = time.monotonic() + timeout_s
    while self._subscriptions < count:
      left = deadline - time.monotonic()
      if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
        return False
      msg = self.sock.recv()
      self._subscriptions += 1 if msg[:1] == b"\x01" else -1 if msg[:1] == b"\x00" else 0
    return True

  def close(self) -> None:
    self.sock.close()


class Subscriber:
  """Connect to one service. conflate=True (frames): every receive returns the newest message only."""

  def __init__(self, service: str, ipc_dir: str | Path | None = None, *, conflate: bool = False):
    self.service = service
    self._prefix = _prefix(service)
    self.malformed = 0  # messages dropped for breaking the framing
    self.sock = zmq.Context.instance().socket(zmq.SUB)
    self.sock.setsockopt(zmq.LINGER, 0)
    if conflate:
      self.sock.setsockopt(zmq.CONFLATE, 1)
    else:
      self.sock.setsockopt(zmq.RCVHWM, EVENT_HWM)
    self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
    self.sock.connect(endpoint(service, ipc_dir))  # retried by zmq until the publisher binds

  def recv(self, timeout_s: float = 0.0) -> Message | None:
    """The next message (conflated: the newest one), None after `timeout_s` or for a malformed one."""
    if not self.sock.poll(max(0, int(timeout_s * 1000))):
      return None
    return self._parse(self.sock.recv(copy=False).buffer)

  def recv_all(self, limit: int = EVENT_HWM) -> list[Message]:
    """The well-formed messages among the next `limit` queued now, oldest first, without waiting
    (bounded: a flood on one socket cannot hold its reader)."""
    out = []
    for _ in range(limit):
      try:
        raw = self.sock.recv(zmq.NOBLOCK, copy=False)
      except zmq.Again:
        break
      if (msg := self._parse(raw.buffer)) is not None:
        out.append(msg)
    return out

  def recv_frame(self, timeout_s: float = 0.0) -> CameraFrame | None:
    """The newest camera frame (for a frame service), None after `timeout_s` or for a malformed one."""
    msg = self.recv(timeout_s)
    if msg is None:
      return None
    if (problem := frame_meta_problem(msg.meta)) is not None:
      return self._malformed(f"frame metadata: {problem}")
    return CameraFrame(**{k: int(msg.meta[k]) for k in FRAME_FIELDS}, data=np.frombuffer(msg.payload, np.uint8))

  def _parse(self, buf: memoryview) -> Message | None:
    start = len(self._prefix) + _LEN.size
    if len(buf) < start or buf[:len(self._prefix)] != self._prefix:
      return self._malformed(f"{len(buf)} bytes not framed as {self._prefix!r} + length + metadata")
    n = _LEN.unpack_from(buf, len(self._prefix))[0]
    end = start + n
    if n > MAX_META_BYTES:
      return self._malformed(f"{n} bytes of metadata > {MAX_META_BYTES}")
    try:
      meta = json.loads(bytes(buf[start:end])) if end <= len(buf) else None
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, an integer past Python's digit limit, deep nesting
      return self._malformed(f"metadata is not JSON ({type(e).__name__}: {str(e)[:80]})")
    if not isinstance(meta, dict):
      return self._malformed("metadata is not a JSON object within the message")
    return Message(self.service, meta, buf[end:])

  def _malformed(self, why: str) -> None:
    self.malformed += 1
    log.warning("%s: dropped a malformed message: %s", self.service, why)
    return None

  def close(self) -> None:
    self.sock.close()

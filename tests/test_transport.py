"""modeld_fair's standalone transport (pyzmq over ipc://) and the ZmqSource built on it."""
import struct
import time

import numpy as np
import pytest
from openpilot_logging.cereal import log

from selfdrive.modeld_fair.sources import OUTPUT_SERVICE, ZmqSource
from selfdrive.modeld_fair.nv12 import CameraFrame
from selfdrive.modeld_fair.transport import FRAME_SERVICE, Publisher, Subscriber, endpoint


@pytest.fixture
def ipc(tmp_path):
  return tmp_path / "ipc"


def frame(i: int, size: int = 4096) -> CameraFrame:
  return CameraFrame(i, 1000 + i, 2000 + i, 64, 32, 128, 4096, np.full(size, i % 256, np.uint8))


def recv_within(sub: Subscriber, timeout_s: float = 2.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if (msg := sub.recv(0.05)) is not None:
      return msg
  return None


def connected_pair(ipc, service, **kw) -> tuple[Publisher, Subscriber]:
  sub = Subscriber(service, ipc, conflate=kw.pop("conflate", False))
  pub = Publisher(service, ipc, **kw)
  assert pub.wait_for_subscribers(1, 5.0)
  return pub, sub


def test_frame_round_trip_keeps_metadata_and_bytes(ipc):
  pub, sub = connected_pair(ipc, FRAME_SERVICE, frames=True, conflate=True)
  sent = CameraFrame(7, 11, 22, 1344, 760, 1408, 1081344, np.arange(1622016, dtype=np.uint8))  # mici's padded size
  pub.send_frame(sent)
  got = None
  for _ in range(40):
    if (got := sub.recv_frame(0.05)) is not None:
      break
  assert got is not None and got.meta() == sent.meta()
  assert got.data.dtype == np.uint8 and np.array_equal(got.data, sent.data)
  pub.close()
  sub.close()


def test_events_arrive_in_order_and_complete(ipc):
  pub, sub = connected_pair(ipc, "liveCalibration")
  for i in range(200):
    pub.send(i.to_bytes(4, "little"))
  got = []
  deadline = time.monotonic() + 3.0
  while len(got) < 200 and time.monotonic() < deadline:
    sub.sock.poll(50)
    got += [int.from_bytes(m.payload, "little") for m in sub.recv_all()]
  assert got == list(range(200))
  pub.close()
  sub.close()


def test_frames_are_conflated_to_the_newest(ipc):
  pub, sub = connected_pair(ipc, FRAME_SERVICE, frames=True, conflate=True)
  for i in range(20):  # a fast camera (200 Hz); the subscriber reads nothing meanwhile
    pub.send_frame(frame(i))
    time.sleep(0.005)
  time.sleep(0.3)
  got = sub.recv_frame(1.0)
  assert got is not None and got.frame_id == 19 and got.data[0] == 19
  assert sub.recv_frame(0.1) is None  # nothing older was left queued behind it
  pub.close()
  sub.close()


def test_wait_for_subscribers(ipc):
  pub = Publisher("roadCameraState", ipc)
  t0 = time.monotonic()
  assert not pub.wait_for_subscribers(1, 0.2)
  assert 0.15 < time.monotonic() - t0 < 1.0
  subs = [Subscriber("roadCameraState", ipc) for _ in range(2)]
  assert pub.wait_for_subscribers(2, 5.0)  # XPUB_VERBOSE: the same topic twice counts twice
  for s in (pub, *subs):
    s.close()


def test_malformed_messages_are_dropped_and_counted(ipc):
  sub = Subscriber(FRAME_SERVICE, ipc)
  pub = Publisher(FRAME_SERVICE, ipc)
  assert pub.wait_for_subscribers(1, 5.0)
  prefix = FRAME_SERVICE.encode() + b"\x00"
  pub.sock.send(prefix + b"\x01")                                           # length cut short
  pub.sock.send(prefix + struct.pack("<I", 8) + b"not json")               # bad metadata
  pub.sock.send(prefix + struct.pack("<I", 6) + b"[1, 2]")                 # not an object
  pub.sock.send(prefix + struct.pack("<I", 99) + b"{}")                    # length past the end
  pub.send(b"", {"frame_id": 1})                                           # frame fields missing
  pub.sock.send(b"roadCameraFramesX\x00" + struct.pack("<I", 2) + b"{}")    # another service: filtered out
  pub.send_frame(frame(3))
  got = [sub.recv_frame(2.0) for _ in range(6)]
  assert [g.frame_id for g in got if g is not None] == [3]
  assert sub.malformed == 5
  pub.close()
  sub.close()


def test_subscriber_reconnects_to_a_restarted_publisher(ipc):
  pub, sub = connected_pair(ipc, FRAME_SERVICE, frames=True, conflate=True)
  pub.send_frame(frame(1))
  assert recv_within(sub) is not None
  pub.close()  # publisher dies; its socket file stays behind
  assert sub.recv_frame(0.2) is None
  pub = Publisher(FRAME_SERVICE, ipc, frames=True)  # binds over the stale socket file
  assert pub.wait_for_subscribers(1, 5.0)  # the same Subscriber came back by itself
  pub.send_frame(frame(2))
  msg = recv_within(sub)
  assert msg is not None and msg.meta["frame_id"] == 2
  pub.close()
  sub.close()


def event_bytes(which: str, t: int, **fields) -> bytes:
  ev = log.Event.new_message(logMonoTime=t, valid=True)
  body = ev.init(which)
  for k, v in fields.items():
    setattr(body, k, v)
  return ev.to_bytes()


def test_recv_all_skips_malformed_messages(ipc):
  pub, sub = connected_pair(ipc, "roadCameraState")
  pub.send(b"a")
  pub.sock.send(b"roadCameraState\x00\x02")  # cut short
  pub.send(b"b")
  time.sleep(0.2)
  assert [bytes(m.payload) for m in sub.recv_all()] == [b"a", b"b"] and sub.malformed == 1
  pub.close()
  sub.close()


def test_zmq_source_inputs_frames_and_publish(ipc):
  src = ZmqSource(ipc)
  calib, state = Publisher("liveCalibration", ipc), Publisher("roadCameraState", ipc)
  frames = Publisher(FRAME_SERVICE, ipc, frames=True)
  out_sub = Subscriber(OUTPUT_SERVICE, ipc)
  assert all(p.wait_for_subscribers(1, 5.0) for p in (calib, state, frames))
  assert src.recv_inputs().calib_rpy is None
  calib.send(b"not a capnp Event!")  # dropped with a warning, never raised
  calib.send(event_bytes("liveCalibration", 1, rpyCalib=[]))  # calibrationd before it has an estimate
  calib.send(event_bytes("liveCalibration", 2, rpyCalib=[0.0, 0.25, -0.5], height=[1.5]))
  state.send(event_bytes("roadCameraState", 3, frameId=41))
  frames.send_frame(frame(40))
  got = None
  for _ in range(40):
    if (got := src.recv_frame(0.05)) is not None:
      break
  assert got is not None and got.frame_id == 40
  time.sleep(0.1)
  inputs = src.recv_inputs()
  assert inputs.calib_rpy == (0.0, 0.25, -0.5) and inputs.camera_height == 1.5
  assert inputs.camera_state_frame_id == 41
  assert abs(src.now_ns() - time.monotonic_ns()) < 50_000_000  # the clock our publishers stamp frames with
  time.sleep(0.2)  # the output subscriber's connection is set up asynchronously
  src.publish(b"hello")
  msg = recv_within(out_sub)
  assert msg is not None and bytes(msg.payload) == b"hello" and msg.meta == {}
  for s in (src, calib, state, frames, out_sub):
    s.close()


def test_endpoint_names():
  assert endpoint("liveCalibration", "/tmp/x") == "ipc:///tmp/x/liveCalibration"
  with pytest.raises(ValueError):
    endpoint("../etc", "/tmp/x")

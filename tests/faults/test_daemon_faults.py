"""The daemon's fault suite: each class of bad input is injected and the daemon must keep running,
flag the affected frame valid=False (with its reason) and be valid again on the next good input."""
import json
import math
import struct
import time

import capnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpilot_logging.cereal import log

from cereal_ext.fair import FairMessageError, FairOutput, from_event, to_event
from selfdrive.modeld_fair import modeld_fair as md
from selfdrive.modeld_fair.sources import MAX_MESSAGES_PER_LOOP, OUTPUT_SERVICE, Inputs, ZmqSource
from selfdrive.modeld_fair.transport import FRAME_SERVICE, Publisher, Subscriber
from tests.test_daemon import CALIB, MS, FakeRunner, Harness, cam_frame, nv12, receive, start_daemon, stop  # noqa: F401

pytestmark = pytest.mark.faults


# ---------------------------------------------------------------- calibration

@pytest.mark.parametrize("rpy", [(math.nan, 0.0, 0.0), (0.0, math.inf, 0.0), (0.0, 0.0, -math.inf), (0.0, 2.0, 0.0)])
def test_a_bad_calibration_invalidates_its_frame_only(nv12, rpy):
  h = Harness(nv12)
  assert h.frame(0).out.valid
  bad = h.frame(1, Inputs(calib_rpy=rpy, camera_height=1.3))
  assert bad.out.invalid_reason == "noCalibration" and "rpyCalib" in bad.out.invalid_detail
  assert h.frame(2).out.valid and h.state.warp.rpy == pytest.approx(CALIB.calib_rpy)  # recovered
  assert [o.valid for o in h.published()] == [True, False, True]


def test_a_bad_first_calibration_does_not_crash(nv12):
  h = Harness(nv12)
  assert h.frame(0, Inputs(calib_rpy=(math.nan,) * 3)).out.invalid_reason == "noCalibration"
  assert h.frame(1).out.valid


def test_the_warp_cache_rebuilds_for_a_calibration_it_cannot_compare():
  cache, cam = md.WarpCache(), md.camera_for_size(1344, 760)
  cache.get(cam, (0.0, 0.0, 0.0))
  with pytest.raises(ValueError, match="finite"):  # never the old tables for a NaN calibration
    cache.get(cam, (math.nan, 0.0, 0.0))


# ---------------------------------------------------------------- timestamps

@pytest.mark.parametrize("eof, detail", [(3600 * 10**9, "in the future"), (-1, "not a UInt64"), (1 << 64, "not a UInt64"),
                                         (0, "not after the previous")])
def test_one_bad_stamp_affects_only_its_frame(nv12, eof, detail):
  h = Harness(nv12)
  assert h.frame(0).out.valid
  bad = h.frame(1, timestamp_eof=h.t + 50 * MS + eof if abs(eof) < 1 << 63 and eof > 0 else eof)
  assert bad.out.invalid_reason in ("staleFrame", "badFrame") and detail in bad.out.invalid_detail, bad.out
  assert h.frame(2).out.valid and h.frame(3).out.valid
  assert [o.valid for o in h.published()] == [True, False, True, True]


@pytest.mark.parametrize("field, value", [("frame_id", 1 << 32), ("frame_id", -1), ("timestamp_sof", -5)])
def test_out_of_range_metadata_is_a_bad_frame(nv12, field, value):
  h = Harness(nv12)
  assert h.frame(0).out.valid
  h.source.put(cam_frame(nv12, **{"frame_id": 1, "eof": h.t + 49 * MS, field: value}), CALIB, h.t + 50 * MS)
  bad = md.run_once(h.state, h.source)
  assert bad.out.invalid_reason == "badFrame" and field in bad.out.invalid_detail
  assert h.frame(2).out.valid
  assert h.state.drops.last_frame_id == 2


# ---------------------------------------------------------------- the transport boundary

@pytest.fixture(scope="module")
def frame_pair(tmp_path_factory):
  ipc = tmp_path_factory.mktemp("ipc")
  # not conflated: the same parsing as a frame socket, but every message is delivered (a conflated
  # socket may also lose one to the next, which would make the counts below racy)
  sub, pub = Subscriber(FRAME_SERVICE, ipc), Publisher(FRAME_SERVICE, ipc)
  assert pub.wait_for_subscribers(1, 5.0)
  yield pub, sub
  pub.close()
  sub.close()


def framed(meta: bytes) -> bytes:
  return FRAME_SERVICE.encode() + b"\x00" + struct.pack("<I", len(meta)) + meta + b"\x00" * 16


GOOD = {"frame_id": 7, "timestamp_sof": 1, "timestamp_eof": 2, "width": 4, "height": 2, "stride": 4, "uv_offset": 8}
BAD_INTS = st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 64), st.floats(), st.booleans(),
                     st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))
malformed_meta = st.one_of(
  st.builds(lambda k, v: json.dumps({**GOOD, k: v}).encode(), st.sampled_from(sorted(GOOD)), BAD_INTS),
  st.builds(lambda k, v: json.dumps({**GOOD, k: v}).encode(), st.just("frame_id"), st.integers(min_value=1 << 32)),
  st.sampled_from([b'{"frame_id": 1e999}', b'{"frame_id": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000,
                   b'{"frame_id": NaN}', b'{"frame_id": Infinity}', b"\xff\xfe"]),
  st.binary(max_size=64))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=malformed_meta)
def test_malformed_frame_messages_are_dropped_and_counted(frame_pair, meta):
  pub, sub = frame_pair
  before = sub.malformed
  pub.sock.send(framed(meta))
  deadline = time.monotonic() + 2.0
  while sub.malformed == before and time.monotonic() < deadline:
    assert sub.recv_frame(0.05) is None
  assert sub.malformed == before + 1
  pub.sock.send(framed(json.dumps(GOOD).encode()))
  frame = sub.recv_frame(2.0)
  assert frame is not None and frame.frame_id == 7


def calib_event(rpy, t: int = 1) -> bytes:
  ev = log.Event.new_message(logMonoTime=t, valid=True)
  ev.init("liveCalibration").rpyCalib = list(rpy)
  return ev.to_bytes()


def test_a_calibration_flood_is_drained_a_bounded_batch_per_loop(tmp_path):
  src, calib = ZmqSource(tmp_path), Publisher("liveCalibration", tmp_path)
  try:
    assert calib.wait_for_subscribers(1, 5.0)
    n = MAX_MESSAGES_PER_LOOP
    for i in range(3 * n):  # a flood: the i-th calibration has pitch i µrad
      calib.send(calib_event((0.0, i * 1e-6, 0.0)))
    time.sleep(0.3)  # all of it queued at the daemon's socket
    assert src.recv_inputs().calib_rpy[1] == pytest.approx((n - 1) * 1e-6)  # one loop took one batch
    assert src.recv_inputs().calib_rpy[1] == pytest.approx((2 * n - 1) * 1e-6)  # the next loop the next
    assert len(src.messages[0].recv_all(10 * n)) == n
  finally:
    src.close()
    calib.close()


# ---------------------------------------------------------------- messages

def test_a_lone_surrogate_model_id_is_published(nv12):
  h = Harness(nv12, FakeRunner(model_id="student-\ud800"))
  res = h.frame(0)
  assert res.out.valid and h.published()[0].model_id == "student-?"


def test_from_event_turns_a_corrupted_event_into_a_message_error():
  data = bytearray(to_event(FairOutput(), 1).to_bytes())
  data[12] = 3  # the root pointer: a data section of 3 words, so the payload pointer read is not a list
  with log.Event.from_bytes(bytes(data)) as ev, pytest.raises(FairMessageError, match="not a readable Event"):
    from_event(ev)


# ---------------------------------------------------------------- the daemon process

def test_the_live_daemon_outlives_every_fault_class(tmp_path, nv12):
  ipc = tmp_path / "ipc"
  sub = Subscriber(OUTPUT_SERVICE, ipc)
  daemon = start_daemon(ipc, "fast_runner")
  camera, calib = Publisher(FRAME_SERVICE, ipc, frames=True), Publisher("liveCalibration", ipc)
  try:
    assert camera.wait_for_subscribers(1, 15.0) and calib.wait_for_subscribers(1, 15.0), daemon.stdout

    def answer(frame_id: int, **kw):
      camera.send_frame(cam_frame(nv12, frame_id, time.monotonic_ns(), **kw))
      got = receive(sub, lambda got: any(o.frame_id == frame_id for _, o in got), 10.0)
      return next(o for _, o in got if o.frame_id == frame_id)

    calib.send(calib_event(CALIB.calib_rpy))
    time.sleep(0.2)
    assert answer(0).valid
    calib.send(calib_event((math.nan, 0.0, 0.0)))
    time.sleep(0.2)
    assert answer(1).invalid_reason == "noCalibration"
    calib.send(b"not an Event")
    calib.send(calib_event(CALIB.calib_rpy))
    time.sleep(0.2)
    assert answer(2).valid
    bad_meta = [b'{"frame_id": 1e999}', b'{"frame_id": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000,
                json.dumps({**GOOD, "frame_id": 1 << 32}).encode(), json.dumps({**GOOD, "timestamp_eof": 1 << 64}).encode()]
    for meta in bad_meta:
      camera.sock.send(framed(meta))
      time.sleep(0.3)  # read (and dropped) before anything newer replaces it in the conflated socket
    assert answer(3).valid
    assert answer(4, timestamp_eof=time.monotonic_ns() + 3600 * 10**9).invalid_reason == "staleFrame"
    assert answer(5).valid
    assert daemon.poll() is None
    stop(daemon)
  finally:
    daemon.kill()
    for s in (sub, camera, calib):
      s.close()
  out = daemon.stdout.read()
  assert daemon.returncode == 0 and "Traceback" not in out, out
  assert out.count("dropped a malformed message") == len(bad_meta) and "dropped an unreadable Event" in out, out

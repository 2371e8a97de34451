"""Damaged or incomplete segments: clear errors, intact prefixes, warnings, never garbage."""
import bz2
import shutil

import numpy as np
import pytest
import zstandard as zstd
from hypothesis import HealthCheck, given, settings, strategies as st
from openpilot_logging.cereal import log as capnp_log
from openpilot_logging.logreader import LogReader

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.routes import Segment, SegmentError, SegmentWarning, SegmentWriter, parse_events, read_events

TINY = CameraModel("tiny", 128, 96, 100.0, 64.0, 48.0)
N = 10
fixture_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def frame(i):
  yy, xx = np.mgrid[0:TINY.height, 0:TINY.width]
  return np.stack([(xx * 2 + 5 * i) % 256, (yy * 2) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("bad") / "seg--0"
  with SegmentWriter(path, TINY, threads=1) as w:
    for i in range(N):
      w.write_frame(frame(i), calib_rpy=(0.0, 0.02, 0.0), v_ego=float(i))
  return path


@pytest.fixture
def copy(seg_dir, tmp_path):
  dst = tmp_path / "seg--0"
  shutil.copytree(seg_dir, dst)
  return dst


@pytest.fixture(scope="module")
def big_log():
  """Raw capnp bytes of ~4000 varied events (several zstd blocks once compressed)."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(4000):
    ev = capnp_log.Event.new_message(logMonoTime=10**9 + i * 10**7)
    cs = ev.init("carState")
    cs.vEgo, cs.aEgo, cs.yawRate = (float(a) for a in rng.normal(size=3))
    out.append(ev.to_bytes())
  return out


def as_bytes(events):
  return [e.as_builder().to_bytes() for e in events]


def write_rlog(path, msgs):
  path.write_bytes(zstd.ZstdCompressor(level=3).compress(b"".join(msgs)))


def warning_text(record):
  return " | ".join(str(w.message) for w in record)


# -- missing pieces

def test_missing_folder_and_rlog(tmp_path):
  with pytest.raises(SegmentError, match="does not exist"):
    Segment(tmp_path / "nope--0")
  (tmp_path / "file").write_text("x")
  with pytest.raises(SegmentError, match="not a folder"):
    Segment(tmp_path / "file")
  (tmp_path / "empty--0").mkdir()
  with pytest.raises(SegmentError, match=r"no rlog in .*empty--0.*rlog\.zst"):
    Segment(tmp_path / "empty--0")


def test_missing_or_empty_video(copy):
  (copy / "fcamera.hevc").unlink()
  seg = Segment(copy)
  with pytest.raises(SegmentError, match=r"fcamera\.hevc"):
    next(seg.frames())
  with pytest.raises(SegmentError, match=r"fcamera\.hevc"):
    seg.camera
  with pytest.raises(SegmentError, match=r"ecamera\.hevc"):
    next(seg.frames("wide"))
  with pytest.raises(ValueError, match="unknown camera"):
    next(seg.frames("driver"))
  (copy / "fcamera.hevc").write_bytes(b"")
  with pytest.raises(SegmentError, match=r"empty video .*fcamera\.hevc"):
    next(Segment(copy).frames())
  assert len(list(seg.frames("qcamera"))) == N  # the other files still read


# -- damaged rlog

def test_rlog_garbage_appended(copy):
  full = as_bytes(LogReader(str(copy / "rlog.zst")))
  with open(copy / "rlog.zst", "ab") as f:
    f.write(np.random.default_rng(1).bytes(5000))
  with pytest.warns(SegmentWarning, match=r"rlog\.zst.*kept the first %d events.*byte" % len(full)):
    seg = Segment(copy)
    assert as_bytes(seg.events) == full
  assert len(list(seg.frames())) == N


@fixture_settings
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_zstd_rlog_keeps_a_prefix(big_log, tmp_path, frac):
  blob = zstd.ZstdCompressor(level=3).compress(b"".join(big_log))
  path = tmp_path / "rlog.zst"
  path.write_bytes(blob[:max(4, int(frac * len(blob)))])
  with pytest.warns(SegmentWarning, match=r"rlog\.zst.*truncated"):
    got = as_bytes(read_events(path))
  assert got == big_log[:len(got)] and len(got) < len(big_log)


@settings(max_examples=50, deadline=None)
@given(cut=st.integers(0, 40_000))
def test_truncated_capnp_keeps_the_complete_messages(big_log, cut):
  ends = np.cumsum([len(m) for m in big_log[:200]])
  cut = min(cut, int(ends[-1]))
  events, problem = parse_events(b"".join(big_log[:200])[:cut])
  complete = int(np.searchsorted(ends, cut, side="right"))
  assert as_bytes(events) == big_log[:complete]
  assert (problem is None) == (cut in (0, *ends))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 50), garbage=st.binary(min_size=1, max_size=64))
def test_garbage_after_messages_never_crashes(big_log, n, garbage):
  events, problem = parse_events(b"".join(big_log[:n]) + garbage)
  assert as_bytes(events[:n]) == big_log[:n]  # whatever follows was parsed from the garbage, if valid capnp
  assert problem is not None or len(events) > n


def test_bad_zstd_block_keeps_events_before_it(big_log, tmp_path):
  blob = bytearray(zstd.ZstdCompressor(level=3).compress(b"".join(big_log)))
  mid = len(blob) * 3 // 4
  blob[mid:mid + 200] = np.random.default_rng(2).bytes(200)
  path = tmp_path / "rlog.zst"
  path.write_bytes(bytes(blob))
  with pytest.warns(SegmentWarning, match=r"rlog\.zst.*zstd data damaged"):
    got = as_bytes(read_events(path))
  assert 0 < len(got) < len(big_log) and got == big_log[:len(got)]


def test_bz2_and_plain_rlogs(big_log, tmp_path):
  data = b"".join(big_log[:500])
  (tmp_path / "rlog.bz2").write_bytes(bz2.compress(data))
  assert as_bytes(read_events(tmp_path / "rlog.bz2")) == big_log[:500]
  (tmp_path / "rlog.bz2").write_bytes(bz2.compress(data) + b"\x00garbage")
  with pytest.warns(SegmentWarning, match=r"rlog\.bz2.*bz2"):
    assert as_bytes(read_events(tmp_path / "rlog.bz2")) == big_log[:500]
  (tmp_path / "rlog").write_bytes(data + b"\xff" * 13)
  with pytest.warns(SegmentWarning, match=r"rlog: damaged log, kept the first 500 events.*byte %d" % len(data)):
    assert as_bytes(read_events(tmp_path / "rlog")) == big_log[:500]


def test_rlog_preference_and_sniffing(seg_dir, tmp_path):
  """rlog.zst wins over rlog.bz2; a plain-named `rlog` holding zstd data is sniffed."""
  (tmp_path / "s--0").mkdir()
  raw = (seg_dir / "rlog.zst").read_bytes()
  (tmp_path / "s--0" / "rlog").write_bytes(raw)
  assert len(Segment(tmp_path / "s--0").events) == len(read_events(seg_dir / "rlog.zst"))


# -- damaged video

@fixture_settings
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_fcamera_yields_only_clean_frames(seg_dir, copy, frac):
  full = [f.nv12.copy() for f in Segment(seg_dir).frames()]
  data = (seg_dir / "fcamera.hevc").read_bytes()
  (copy / "fcamera.hevc").write_bytes(data[:max(1, int(frac * len(data)))])
  with pytest.warns(SegmentWarning) as record:
    got = [f for f in Segment(copy).frames()]
  assert len(got) < N and all(np.array_equal(f.nv12, full[f.index]) for f in got)
  text = warning_text(record)
  assert "fcamera.hevc" in text and f"decoded {len(got)} frames but the rlog logs {N}" in text


def test_truncated_inside_a_frame_names_it(seg_dir, copy):
  lens = [e.roadEncodeIdx.len for e in Segment(seg_dir).of_type("roadEncodeIdx")]
  cut = sum(lens[:6]) + lens[6] // 2
  (copy / "fcamera.hevc").write_bytes((seg_dir / "fcamera.hevc").read_bytes()[:cut])
  with pytest.warns(SegmentWarning) as record:
    assert len(list(Segment(copy).frames())) == 6
  assert "fcamera.hevc: damaged video, stopped after 6 good frames: truncated: last packet (frame 6) has" \
      in warning_text(record)


def test_truncated_qcamera(seg_dir, copy):
  data = (seg_dir / "qcamera.ts").read_bytes()
  full = [f.nv12.copy() for f in Segment(seg_dir).frames("qcamera")]
  (copy / "qcamera.ts").write_bytes(data[:len(data) * 2 // 3])
  with pytest.warns(SegmentWarning, match=r"qcamera\.ts"):
    got = list(Segment(copy).frames("qcamera"))
  assert 0 < len(got) < N and all(np.array_equal(f.nv12, full[f.index]) for f in got)


# -- frames the log does not describe

def rewrite(copy, keep):
  msgs = [m.as_builder().to_bytes() for m in LogReader(str(copy / "rlog.zst")) if keep(m)]
  write_rlog(copy / "rlog.zst", msgs)


def test_frames_without_camera_state_are_flagged(copy):
  rewrite(copy, lambda m: not (m.which() == "roadCameraState" and m.roadCameraState.frameId in (3, 7)))
  with pytest.warns(SegmentWarning, match=r"2 of 10 frames have no matching roadEncodeIdx/roadCameraState"):
    frames = list(Segment(copy).frames())
  assert [f.index for f in frames if not f.matched] == [3, 7]
  f3 = frames[3]
  assert f3.camera_state is None and f3.frame_id == 3 and f3.v_ego is None and f3.calib_rpy is None
  assert f3.timestamp_eof == f3.encode_idx.timestampEof  # from the encode index, which did match
  assert frames[4].matched and frames[4].v_ego == 4.0


def test_frames_without_encode_index(copy):
  rewrite(copy, lambda m: not (m.which() == "roadEncodeIdx" and m.roadEncodeIdx.segmentId >= 8))
  with pytest.warns(SegmentWarning) as record:
    frames = list(Segment(copy).frames())
  assert [f.frame_id for f in frames] == list(range(8)) + [None, None]
  assert "2 of 10 frames" in warning_text(record) and "decoded 10 frames but the rlog logs 8" in warning_text(record)
  rewrite(copy, lambda m: m.which() != "roadEncodeIdx")
  with pytest.warns(SegmentWarning, match="no roadEncodeIdx events"):
    assert all(not f.matched and f.frame_id is None for f in Segment(copy).frames())


def test_neighbour_segment_encode_events_are_ignored(copy):
  """Around rotation an rlog can hold encode events of the next segment: match by segmentNum."""
  msgs = [m.as_builder().to_bytes() for m in LogReader(str(copy / "rlog.zst"))]
  for i in range(3):
    ev = capnp_log.Event.new_message(logMonoTime=10**12 + i)
    e = ev.init("roadEncodeIdx")
    e.frameId, e.segmentNum, e.segmentId, e.type = 1000 + i, 1, i, "fullHEVC"
    msgs.append(ev.to_bytes())
  write_rlog(copy / "rlog.zst", msgs)
  frames = list(Segment(copy).frames())
  assert [f.frame_id for f in frames] == list(range(N)) and all(f.matched for f in frames)


def test_wide_camera(copy):
  """ecamera.hevc pairs with wideRoadEncodeIdx / wideRoadCameraState (here: the road stream relabelled)."""
  shutil.copy(copy / "fcamera.hevc", copy / "ecamera.hevc")
  msgs = []
  for m in LogReader(str(copy / "rlog.zst")):
    msgs.append(m.as_builder().to_bytes())
    if m.which() in ("roadEncodeIdx", "roadCameraState"):
      ev = capnp_log.Event.new_message(logMonoTime=m.logMonoTime)
      setattr(ev, "wide" + m.which()[0].upper() + m.which()[1:], getattr(m, m.which()))
      if m.which() == "roadCameraState":
        ev.wideRoadCameraState.frameId += 1  # states now carry ids 1..10: frame 0 has none
      msgs.append(ev.to_bytes())
  write_rlog(copy / "rlog.zst", msgs)
  with pytest.warns(SegmentWarning, match=r"ecamera\.hevc: 1 of 10 frames have no matching wideRoadEncodeIdx/wideRoadCameraState"):
    frames = list(Segment(copy).frames("wide"))
  assert [f.matched for f in frames] == [False] + [True] * 9
  assert frames[1].camera_state.frameId == 1 and frames[1].v_ego == 0.0

"""Segment folders written by SegmentWriter read back through stock openpilot tools and Segment."""
import shutil
import subprocess
import warnings
from collections import Counter

import av
import numpy as np
import pytest
from openpilot_logging.logreader import LogReader

from selfdrive.modeld_fair.camera import MICI_ROAD, CameraModel
from tools.fair.routes import (QCAMERA_SIZE, RouteError, Segment, SegmentWriter,
                               UnknownCameraError)

SMALL = CameraModel("small", 256, 160, 200.0, 128.0, 80.0)  # not a device camera: fast to encode
N_SMALL, N_MICI = 12, 4


def scene(camera: CameraModel, i: int) -> np.ndarray:
  """Smooth moving colour pattern: compresses well, so decoded pixels stay close."""
  yy, xx = np.mgrid[0:camera.height, 0:camera.width].astype(np.float32)
  x = xx + 6 * i
  r = 128 + 80 * np.sin(x / 23.0) * np.cos(yy / 31.0)
  g = 128 + 70 * np.cos((x + yy) / 41.0)
  b = 100 + 60 * np.sin(yy / 17.0 + i / 5.0)
  return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def calib_for(i):
  return None if i < 2 else (0.0, 0.01 * (i // 3), -0.005)  # changes every 3 frames


def psnr(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def write(path, camera, n, **kw):
  with SegmentWriter(path, camera, threads=1, **kw) as w:
    for i in range(n):
      w.write_frame(scene(camera, i), calib_rpy=calib_for(i), v_ego=10.0 + i, a_ego=0.5, yaw_rate=0.01 * i,
                    trans=(10.0 + i, 0.0, 0.0), rot=(0.0, 0.0, 0.01 * i))
  return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return write(tmp_path_factory.mktemp("routes") / "0000000000000000|2024-01-01--00-00-00--0", SMALL, N_SMALL)


@pytest.fixture(scope="module")
def mici(tmp_path_factory):
  return write(tmp_path_factory.mktemp("routes") / "mici--3", MICI_ROAD, N_MICI, segment_num=3)


def test_stock_logreader_reads_rlog(small):
  msgs = list(LogReader(str(small / "rlog.zst")))
  counts = Counter(m.which() for m in msgs)
  assert counts == {"initData": 1, "carState": N_SMALL, "roadCameraState": N_SMALL, "roadEncodeIdx": N_SMALL,
                    "qRoadEncodeIdx": N_SMALL, "cameraOdometry": N_SMALL, "liveCalibration": 4}
  times = [m.logMonoTime for m in msgs]
  assert all(a < b for a, b in zip(times, times[1:]))
  assert msgs[0].which() == "initData" and msgs[0].initData.version == "fairpilot-sim"
  assert str(msgs[0].initData.deviceType) == "pc"
  states = [m.roadCameraState for m in msgs if m.which() == "roadCameraState"]
  assert [s.frameId for s in states] == list(range(N_SMALL))
  assert all(s.timestampEof - s.timestampSof == 25_000_000 for s in states)
  idx = [m.roadEncodeIdx for m in msgs if m.which() == "roadEncodeIdx"]
  assert [(e.frameId, e.segmentId, e.segmentNum, str(e.type)) for e in idx] == \
      [(i, i, 0, "fullHEVC") for i in range(N_SMALL)]
  assert sum(e.len for e in idx) == (small / "fcamera.hevc").stat().st_size  # raw stream = packets
  assert idx[0].flags == 8 and idx[1].flags == 0  # keyframe flag
  q = [m.qRoadEncodeIdx for m in msgs if m.which() == "qRoadEncodeIdx"]
  assert [str(e.type) for e in q] == ["qcameraH264"] * N_SMALL
  odo = [m.cameraOdometry for m in msgs if m.which() == "cameraOdometry"]
  assert odo[3].frameId == 3 and list(odo[3].trans) == pytest.approx([13.0, 0, 0])


def test_segment_frames_small(small):
  seg = Segment(small)
  assert seg.segment_num == 0 and seg.scene_path is None
  frames = list(seg.frames())
  assert [f.index for f in frames] == [f.frame_id for f in frames] == list(range(N_SMALL))
  for i, f in enumerate(frames):
    assert f.matched and f.camera_state.frameId == i and f.encode_idx.segmentId == i
    assert (f.timestamp_sof, f.timestamp_eof) == (f.camera_state.timestampSof, f.camera_state.timestampEof)
    assert f.timestamp_sof == 10_000_000_000 + i * 50_000_000
    assert f.v_ego == pytest.approx(10.0 + i)
    want = calib_for(i)
    assert (f.calib_rpy is None) if want is None else f.calib_rpy == pytest.approx(want, abs=1e-7)
    assert f.nv12.shape == (f.layout.size,) and f.nv12.dtype == np.uint8
    assert psnr(f.rgb(), scene(SMALL, i)) > 30
  assert seg.calibration() == pytest.approx(calib_for(N_SMALL - 1), abs=1e-7)
  assert len(seg.of_type("carState")) == N_SMALL and len(seg.events) == 1 + 5 * N_SMALL + 4
  assert str(seg.init_data.deviceType) == "pc"


def test_unknown_resolution_is_a_clear_error(small):
  with pytest.raises(UnknownCameraError, match=r"fcamera\.hevc.*256x160"):
    Segment(small).camera


def test_mici_real_size(mici):
  seg = Segment(mici)
  assert seg.camera == MICI_ROAD and seg.segment_num == 3
  assert str(seg.init_data.deviceType) == "mici"
  assert str(seg.of_type("roadCameraState")[0].roadCameraState.sensor) == "os04c10"
  frames = list(seg.frames())
  assert [f.frame_id for f in frames] == [3 * 1200 + i for i in range(N_MICI)]
  lay = frames[0].layout
  assert (lay.width, lay.height, lay.stride, lay.uv_offset) == (1344, 760, 1408, 1408 * 768)
  assert frames[0].nv12.size == 1408 * 768 + 1408 * 380
  for i, f in enumerate(frames):
    assert f.matched and f.encode_idx.segmentNum == 3
    assert psnr(f.rgb(), scene(MICI_ROAD, i)) > 30


def test_qcamera(small):
  seg = Segment(small)
  frames = list(seg.frames("qcamera"))
  assert len(frames) == N_SMALL
  assert (frames[0].layout.width, frames[0].layout.height) == QCAMERA_SIZE
  assert all(f.matched and f.frame_id == i for i, f in enumerate(frames))
  with av.open(str(small / "qcamera.ts")) as c:
    s = c.streams.video[0]
    assert (s.codec_context.name, s.codec_context.width, s.codec_context.height) == ("h264", 526, 330)


def test_reuse_buffer_and_threads(small):
  seg = Segment(small)
  bufs = [f.nv12 for f in seg.frames(reuse_buffer=True)]
  assert len(bufs) == N_SMALL and all(b is bufs[0] for b in bufs)
  a = [f.nv12.copy() for f in seg.frames()]
  b = [f.nv12 for f in seg.frames(thread_count=2)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_scene_path(small, tmp_path):
  dst = tmp_path / "s--0"
  shutil.copytree(small, dst)
  (dst / "scene.json").write_text("{}")
  assert Segment(dst).scene_path == dst / "scene.json"


def test_ffmpeg_tools_read_videos(small):
  """Debian's ffprobe (installed by the Makefile) reads our videos like a device route's."""
  for name, codec in (("fcamera.hevc", "hevc"), ("qcamera.ts", "h264")):
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,nb_read_frames", "-of", "csv=p=0", str(small / name)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(out) == {f"{codec},{N_SMALL}"}  # MPEG-TS lists the stream once more under its program


def test_writer_rejects_wrong_frames(tmp_path):
  with SegmentWriter(tmp_path / "w--0", SMALL, qcamera=False, threads=1) as w:
    for bad in (np.zeros((160, 256, 3), np.float32), np.zeros((158, 256, 3), np.uint8), np.zeros((160, 256), np.uint8)):
      with pytest.raises(ValueError, match="uint8"):
        w.write_frame(bad, v_ego=0.0)
    w.write_frame(scene(SMALL, 0), v_ego=0.0)
  assert sorted(p.name for p in (tmp_path / "w--0").iterdir()) == ["fcamera.hevc", "rlog.zst"]
  with pytest.raises(RouteError, match="already holds"):
    SegmentWriter(tmp_path / "w--0", SMALL)


def test_crash_leaves_no_final_or_partial_files(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with SegmentWriter(tmp_path / "c--0", SMALL, threads=1) as w:
      w.write_frame(scene(SMALL, 0), v_ego=0.0)
      raise RuntimeError("boom")
  assert list((tmp_path / "c--0").iterdir()) == []


def test_no_warnings_on_clean_segment(small):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    seg = Segment(small)
    assert len(list(seg.frames())) == N_SMALL and len(list(seg.frames("qcamera"))) == N_SMALL

"""Write openpilot segment folders (rlog.zst, fcamera.hevc, qcamera.ts) from rendered frames.

The result reads like a device segment: stock `LogReader` parses the rlog (one zstd frame with
its content size, as `zstandard.decompress` needs), ffmpeg/PyAV decode the raw HEVC Annex-B
fcamera and the 526x330 H.264 MPEG-TS qcamera, and the per-frame events (`roadCameraState`,
`roadEncodeIdx`, `qRoadEncodeIdx`) link file positions, frame ids and timestamps as on device.

Everything is written under temporary names and renamed on close (videos first, the rlog
last), so a crash never leaves a half-written file under a final name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import zstandard as zstd
from openpilot_logging.cereal import log as capnp_log

from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MICI_ROAD, TICI_ROAD, CameraModel, view_from_calib
from selfdrive.modeld_fair.nv12 import nv12_planes, rgb_to_nv12
from tools.fair.files import fsync_path
from tools.fair.routes.errors import RouteError

QCAMERA_SIZE = (526, 330)
VERSION = "fairpilot-sim"
_MS = 1_000_000
# (deviceType, image sensor) of the device whose road camera this is
_DEVICE = {TICI_ROAD: ("tici", "ar0231"), MICI_ROAD: ("mici", "os04c10")}
_KEYFRAME_FLAG = 8  # V4L2_BUF_FLAG_KEYFRAME, what device encoders put in EncodeIndex.flags
_CALIB_PERIOD_NS = 250 * _MS  # calibrationd publishes at 4 Hz


@dataclass
class _FrameRecord:
  frame_id: int
  sof: int
  eof: int
  calib: tuple[float, float, float] | None
  v_ego: float
  a_ego: float
  yaw_rate: float
  trans: tuple[float, ...] | None
  rot: tuple[float, ...] | None
  height: float


class _Encoder:
  """One video file being encoded under a temporary name; records each packet's size by frame."""

  def __init__(self, final: Path, fmt: str, codec: str, size: tuple[int, int], fps: int, options: dict,
               bit_rate: int | None = None):
    self.final = final
    self.tmp = final.with_name(f".{final.name}.partial")
    self.size = size
    self.container = av.open(str(self.tmp), "w", format=fmt)
    self.stream = self.container.add_stream(codec, rate=fps, options=options)
    cc = self.stream.codec_context
    cc.width, cc.height = size
    cc.pix_fmt = "yuv420p"
    cc.time_base = Fraction(1, fps)
    if bit_rate:
      cc.bit_rate = bit_rate
    # BT.601 limited range, what nv12.py converts with (tagged so players agree)
    cc.color_range, cc.colorspace, cc.color_primaries, cc.color_trc = 1, 6, 6, 6
    self.lens: dict[int, int] = {}
    self.keyframes: set[int] = set()

  def _mux(self, packets) -> None:
    for pkt in packets:
      self.lens[int(pkt.pts)] = pkt.size
      if pkt.is_keyframe:
        self.keyframes.add(int(pkt.pts))
      self.container.mux(pkt)

  def encode(self, frame: av.VideoFrame | None) -> None:
    self._mux(self.stream.encode(frame))

  def close(self) -> None:
    self.encode(None)
    self.container.close()

  def abort(self) -> None:
    try:
      self.container.close()
    except Exception:  # already broken: only the cleanup matters
      pass
    self.tmp.unlink(missing_ok=True)


class SegmentWriter:
  """Write one segment folder from RGB frames and per-frame vehicle state.

  >>> with SegmentWriter(path, MICI_ROAD) as w:
  ...   w.write_frame(rgb, calib_rpy=(0, 0.02, 0), v_ego=15.0)

  Frame i has frameId `frame_id_start + i`, start of frame `start_mono_ns + i/fps` and end of
  frame 25 ms (half a period at 20 Hz) later. Per frame the rlog gets `carState` (logged 2 ms
  before the end of frame), `roadCameraState` (+1 ms), `roadEncodeIdx` (+6 ms), `qRoadEncodeIdx`
  (+7 ms) and, when given, `cameraOdometry` (+30 ms); `liveCalibration` (-1 ms) at 4 Hz while a
  calibration is given, and immediately whenever it changes, so every frame's calibration reads
  back exactly. Any CameraModel size is accepted (even dimensions); only device sizes read back
  with a `Segment.camera`.
  """

  def __init__(self, path: str | Path, camera: CameraModel, fps: int = 20, qcamera: bool = True,
               start_mono_ns: int = 10_000_000_000, *, dongle_id: str = "0000000000000000",
               segment_num: int = 0, frame_id_start: int | None = None, wall_time_ns: int | None = None,
               preset: str = "superfast", crf: int = 22, gop: int = 20, bitrate_kbps: int | None = None,
               qcamera_crf: int = 23, threads: int | None = None, overwrite: bool = False):
    if camera.width % 2 or camera.height % 2:
      raise ValueError(f"camera size must be even, got {camera.width}x{camera.height}")
    if int(fps) != fps or fps <= 0:
      raise ValueError(f"fps must be a positive integer, got {fps}")
    self.path = Path(path)
    self.camera = camera
    self.fps = int(fps)
    self.period_ns = round(1e9 / self.fps)
    self.start_mono_ns = int(start_mono_ns)
    self.dongle_id = dongle_id
    self.segment_num = segment_num
    self.frame_id_start = segment_num * 60 * self.fps if frame_id_start is None else frame_id_start
    self.wall_time_ns = wall_time_ns
    self.path.mkdir(parents=True, exist_ok=True)
    finals = ["rlog.zst", "fcamera.hevc"] + (["qcamera.ts"] if qcamera else [])
    existing = [n for n in finals if (self.path / n).exists()]
    if existing and not overwrite:
      raise RouteError(f"{self.path} already holds {', '.join(existing)} (pass overwrite=True)")
    self._records: list[_FrameRecord] = []
    self._closed = False
    size = (camera.width, camera.height)
    x265 = (f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0:repeat-headers=1:info=0:log-level=error:"
            "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m:range=limited")
    if threads:
      x265 += f":pools={threads}:frame-threads={min(threads, 4)}"
    hevc_opts = {"preset": preset, "x265-params": x265}
    if not bitrate_kbps:
      hevc_opts["crf"] = str(crf)
    self._encoders: dict[str, _Encoder] = {}
    try:
      self._encoders["road"] = _Encoder(self.path / "fcamera.hevc", "hevc", "libx265", size, self.fps, hevc_opts,
                                        bitrate_kbps * 1000 if bitrate_kbps else None)
      if qcamera:
        x264 = {"preset": "veryfast", "crf": str(qcamera_crf),
                "x264-params": f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0"}
        if threads:
          x264["threads"] = str(threads)
        self._encoders["qcamera"] = _Encoder(self.path / "qcamera.ts", "mpegts", "libx264", QCAMERA_SIZE,
                                             self.fps, x264)
    except Exception:
      self.abort()
      raise

  def __enter__(self) -> SegmentWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  @property
  def frame_count(self) -> int:
    return len(self._records)

  def write_frame(self, rgb: np.ndarray, *, calib_rpy=None, height: float = DEFAULT_CAMERA_HEIGHT, v_ego: float,
                  a_ego: float = 0.0, yaw_rate: float = 0.0, trans=None, rot=None) -> int:
    """Encode one RGB frame (uint8, camera height x width x 3) and log its state; returns its frameId.

    `calib_rpy`: device_from_calib roll/pitch/yaw (rad) for liveCalibration (with the camera `height`, m),
    None: not logged.
    `trans`/`rot`: cameraOdometry velocity (m/s) and angular rate (rad/s) in the device frame.
    """
    if self._closed:
      raise RouteError(f"{self.path}: writer is closed")
    rgb = np.asarray(rgb)
    want = (self.camera.height, self.camera.width, 3)
    if rgb.dtype != np.uint8 or rgb.shape != want:
      raise ValueError(f"frame must be uint8 {want} for camera {self.camera.name}, got {rgb.dtype} {rgb.shape}")
    i = len(self._records)
    sof = self.start_mono_ns + i * self.period_ns
    vec = lambda v: None if v is None else tuple(float(a) for a in v)
    if calib_rpy is not None and len(calib_rpy) != 3:
      raise ValueError(f"calib_rpy must be (roll, pitch, yaw), got {calib_rpy!r}")
    self._records.append(_FrameRecord(self.frame_id_start + i, sof, sof + self.period_ns // 2, vec(calib_rpy),
                                      float(v_ego), float(a_ego), float(yaw_rate), vec(trans), vec(rot), float(height)))
    buf, layout = rgb_to_nv12(rgb)
    y, uv = nv12_planes(buf, layout)
    h, w = layout.height, layout.width
    packed = np.empty((h * 3 // 2, w), np.uint8)
    packed[:h] = y
    packed[h:] = uv.reshape(h // 2, w)
    frame = av.VideoFrame.from_ndarray(packed, format="nv12")
    frame.pts = i
    frame.time_base = Fraction(1, self.fps)
    try:
      self._encoders["road"].encode(frame)
      if "qcamera" in self._encoders:
        small = frame.reformat(width=QCAMERA_SIZE[0], height=QCAMERA_SIZE[1], format="yuv420p", interpolation="AREA")
        small.pts, small.time_base = i, frame.time_base
        self._encoders["qcamera"].encode(small)
    except Exception:
      self.abort()
      raise
    return self.frame_id_start + i

  # -- events

  def _event(self, t: int, which: str):
    ev = capnp_log.Event.new_message(logMonoTime=int(t), valid=True)
    return ev, ev.init(which)

  def _events(self) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    add = lambda ev: out.append((ev.logMonoTime, len(out), ev.to_bytes()))
    device, sensor = _DEVICE.get(self.camera, ("pc", "unknown"))

    ev, d = self._event(self.start_mono_ns, "initData")
    d.deviceType, d.version, d.dongleId = device, VERSION, self.dongle_id
    if self.wall_time_ns is not None:
      d.wallTimeNanos = int(self.wall_time_ns)
    add(ev)

    road, q = self._encoders["road"], self._encoders.get("qcamera")
    last_calib, last_calib_t = None, None
    for i, r in enumerate(self._records):
      ev, cs = self._event(r.eof - 2 * _MS, "carState")
      cs.vEgo, cs.vEgoRaw, cs.aEgo, cs.yawRate = r.v_ego, r.v_ego, r.a_ego, r.yaw_rate
      cs.standstill = abs(r.v_ego) < 0.01
      add(ev)

      if r.calib is not None and (r.calib != last_calib or r.eof - last_calib_t >= _CALIB_PERIOD_NS):
        last_calib, last_calib_t = r.calib, r.eof
        ev, lc = self._event(r.eof - _MS, "liveCalibration")
        lc.rpyCalib = list(r.calib)
        lc.rpyCalibSpread = [0.0, 0.0, 0.0]
        lc.calStatus, lc.calPerc, lc.validBlocks = "calibrated", 100, 50
        lc.height = [r.height]
        # calibrationd's extrinsic: view_from_road with roll dropped, camera height as translation
        ext = np.hstack([view_from_calib((0.0, r.calib[1], r.calib[2])), [[0.0], [r.height], [0.0]]])
        lc.extrinsicMatrix = [float(a) for a in ext.ravel()]
        lc.wideFromDeviceEuler = [0.0, 0.0, 0.0]
        add(ev)

      ev, fd = self._event(r.eof + _MS, "roadCameraState")
      fd.frameId, fd.frameIdSensor, fd.encodeId = r.frame_id, r.frame_id, r.frame_id
      fd.timestampSof, fd.timestampEof, fd.sensor = r.sof, r.eof, sensor
      fd.processingTime = 0.001
      fd.gain, fd.exposureValPercent = 1.0, 50.0
      fd.transform = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
      add(ev)

      for enc, which, kind, dt in ((road, "roadEncodeIdx", "fullHEVC", 6 * _MS), (q, "qRoadEncodeIdx", "qcameraH264", 7 * _MS)):
        if enc is None:
          continue
        ev, e = self._event(r.eof + dt, which)
        e.frameId, e.type, e.encodeId = r.frame_id, kind, r.frame_id
        e.segmentNum, e.segmentId, e.segmentIdEncode = self.segment_num, i, i  # no B-frames: same order
        e.timestampSof, e.timestampEof = r.sof, r.eof
        e.flags = _KEYFRAME_FLAG if i in enc.keyframes else 0
        e.len = enc.lens.get(i, 0)
        add(ev)

      if r.trans is not None or r.rot is not None:
        ev, co = self._event(r.eof + 30 * _MS, "cameraOdometry")
        co.frameId, co.timestampEof = r.frame_id, r.eof
        co.trans = list(r.trans or (0.0, 0.0, 0.0))
        co.rot = list(r.rot or (0.0, 0.0, 0.0))
        co.transStd, co.rotStd = [1e-3] * 3, [1e-3] * 3  # ground truth: tiny but non-zero spread
        add(ev)
    out.sort()
    return out

  # -- finishing

  def close(self) -> Path:
    """Flush the encoders, write the rlog and move every file to its final name; returns the folder."""
    if self._closed:
      return self.path
    try:
      for enc in self._encoders.values():
        enc.close()
        fsync_path(enc.tmp)
      rlog = self.path / "rlog.zst"
      tmp = rlog.with_name(".rlog.zst.partial")
      data = b"".join(b for _, _, b in self._events())
      # one frame with its content size: stock LogReader uses zstandard.decompress()
      blob = zstd.ZstdCompressor(level=10, write_checksum=True).compress(data)
      with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
      for enc in self._encoders.values():
        os.replace(enc.tmp, enc.final)
      os.replace(tmp, rlog)  # last: a folder with an rlog is complete
    except Exception:
      self.abort()
      raise
    self._closed = True
    return self.path

  def abort(self) -> None:
    """Drop everything written so far (temporary files only; final names are never touched)."""
    self._closed = True
    for enc in self._encoders.values():
      enc.abort()
    (self.path / ".rlog.zst.partial").unlink(missing_ok=True)

"""Read openpilot segment folders: rlog events, and camera frames as openpilot's padded NV12.

A segment folder (`<dongle>|<route>--<n>`) holds `rlog.zst` (or `rlog.bz2` / `rlog`),
`fcamera.hevc` (road camera, raw HEVC Annex-B), optionally `ecamera.hevc` (wide) and
`qcamera.ts` (526x330 H.264 in MPEG-TS), and for our simulator's segments `scene.json`.

Damage is reported, never papered over: a corrupt or truncated rlog yields the events before
the damage plus a `SegmentWarning`; a damaged video yields the frames decoded before it, never a
half-decoded one; frames without a matching encode-index / camera-state event are flagged.
"""
from __future__ import annotations

import bisect
import bz2
import re
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import av
import capnp
import numpy as np
import zstandard as zstd
from openpilot_logging.cereal import log as capnp_log

from selfdrive.modeld_fair.camera import CameraModel, camera_for_size
from selfdrive.modeld_fair.nv12 import NV12Layout, nv12_layout, nv12_planes, nv12_to_rgb
from tools.fair.files import sha256_file
from tools.fair.routes.errors import NoCalibrationError, SegmentError, SegmentWarning, UnknownCameraError

RLOG_NAMES = ("rlog.zst", "rlog.bz2", "rlog")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZ2_MAGIC = b"BZh"
_MAX_SEGMENTS = 512  # capnp messages in rlogs have a handful of segments; more means garbage


@dataclass(frozen=True)
class CameraStream:
  """Where one camera's frames and their per-frame events live in a segment."""
  file: str
  state: str       # Event type carrying the camera's FrameData
  encode_idx: str  # Event type carrying the EncodeIndex of this file
  fmt: str         # demuxer name


STREAMS = {
  "road": CameraStream("fcamera.hevc", "roadCameraState", "roadEncodeIdx", "hevc"),
  "wide": CameraStream("ecamera.hevc", "wideRoadCameraState", "wideRoadEncodeIdx", "hevc"),
  "qcamera": CameraStream("qcamera.ts", "roadCameraState", "qRoadEncodeIdx", "mpegts"),
}


# ---------------------------------------------------------------- events

def _decompress_frames(raw: bytes, new: Callable[[], Any], errors: tuple, name: str,
                       chunk: int = 1 << 16) -> tuple[bytes, str | None]:
  """Decompress concatenated zstd/bz2 frames, keeping the output before any damage.

  Returns (data, problem) where problem says where decompression broke (None when clean).
  """
  out: list[bytes] = []
  pos = 0
  while pos < len(raw):
    start, part = pos, []
    d = new()
    try:
      while pos < len(raw) and not d.eof:
        piece = raw[pos:pos + chunk]
        part.append(d.decompress(piece))
        pos += len(piece)
    except errors as e:
      if chunk > 512:  # redo this frame in small steps: an exception drops the output of its step
        data, _ = _decompress_frames(raw[start:], new, errors, name, 512)
        part = [data]
      out.extend(part)
      return b"".join(out), f"{name} data damaged in the frame starting at byte {start} ({e})"
    out.extend(part)
    if not d.eof:
      return b"".join(out), f"{name} frame starting at byte {start} is truncated at byte {len(raw)}"
    pos -= len(d.unused_data)
  return b"".join(out), None


def _split_messages(data: bytes) -> tuple[list[int], str | None]:
  """End offsets of the complete, plausibly framed capnp messages at the start of `data`."""
  ends: list[int] = []
  pos, n = 0, len(data)
  while pos < n:
    if n - pos < 8:
      return ends, f"truncated message header at byte {pos}"
    nseg = struct.unpack_from("<I", data, pos)[0] + 1
    if nseg > _MAX_SEGMENTS:
      return ends, f"bad message header at byte {pos} ({nseg} segments)"
    hdr = (4 * (nseg + 1) + 7) & ~7
    if n - pos < hdr:
      return ends, f"truncated message header at byte {pos}"
    sizes = struct.unpack_from(f"<{nseg}I", data, pos + 4)
    end = pos + hdr + 8 * sum(sizes)
    if end > n:
      return ends, f"truncated message at byte {pos} (needs {end - pos} bytes, {n - pos} left)"
    if sizes[0] == 0 or data[pos + hdr:pos + hdr + 8] == bytes(8):  # no root / null root pointer
      return ends, f"empty message at byte {pos}"
    ends.append(end)
    pos = end
  return ends, None


def parse_events(data: bytes) -> tuple[list, str | None]:
  """Parse concatenated capnp `Event` messages; returns (intact prefix, problem or None).

  Every kept message has been traversed (all pointers in bounds). Events whose union member
  this schema does not know (newer openpilot) are kept, as LogReader keeps them.
  """
  ends, problem = _split_messages(data)
  events: list = []
  if not ends:
    return events, problem
  starts = [0] + ends[:-1]
  it = iter(capnp_log.Event.read_multiple_bytes(data[:ends[-1]]))
  for start in starts:
    try:
      ev = next(it)
      ev.total_size  # traverses the whole message: raises on out-of-bounds pointers
    except (capnp.KjException, StopIteration) as e:
      return events, f"corrupt message {len(events)} at byte {start} ({e})"
    events.append(ev)
  return events, problem


def read_events(path: str | Path) -> list:
  """All intact `Event` messages of an rlog/qlog file (zstd, bz2 or plain, sniffed by content).

  Damage (bad zstd/bz2 data, garbage, truncation) ends the list at the last intact event and
  emits a `SegmentWarning` naming the file and where it broke.
  """
  path = Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise SegmentError(f"cannot read {path}: {e}") from e
  problem = None
  if raw.startswith(_ZSTD_MAGIC):
    data, problem = _decompress_frames(raw, lambda: zstd.ZstdDecompressor().decompressobj(), (zstd.ZstdError,), "zstd")
  elif raw.startswith(_BZ2_MAGIC):
    data, problem = _decompress_frames(raw, bz2.BZ2Decompressor, (OSError, EOFError, ValueError), "bz2")
  else:
    data = raw
  events, parse_problem = parse_events(data)
  if problem or parse_problem:
    where = "; ".join(p for p in (problem, parse_problem and f"decompressed stream: {parse_problem}") if p)
    warnings.warn(f"{path}: damaged log, kept the first {len(events)} events: {where}", SegmentWarning, stacklevel=2)
  return events


def _which(ev) -> str | None:
  try:
    return ev.which()
  except capnp.KjException:  # union member unknown to this schema
    return None


# ---------------------------------------------------------------- video

_YUV420 = ("yuv420p", "yuvj420p")


def _plane(plane, h: int, w: int) -> np.ndarray:
  return np.frombuffer(plane, np.uint8, count=plane.line_size * h).reshape(h, plane.line_size)[:, :w]


def copy_to_nv12(frame: av.VideoFrame, buf: np.ndarray, layout: NV12Layout) -> None:
  """Copy a decoded frame into a padded NV12 buffer: plain plane copies, no float work."""
  if frame.format.name not in _YUV420:
    frame = frame.reformat(format="yuv420p")
  y, uv = nv12_planes(buf, layout)
  w, h = layout.width, layout.height
  p = frame.planes
  y[:] = _plane(p[0], h, w)
  uv[..., 0] = _plane(p[1], h // 2, w // 2)
  uv[..., 1] = _plane(p[2], h // 2, w // 2)


def _open_video(path: Path, fmt: str | None):
  if not path.is_file():
    raise SegmentError(f"missing video {path}")
  if path.stat().st_size == 0:
    raise SegmentError(f"empty video {path}")
  try:
    container = av.open(str(path), format=fmt)
  except (av.error.FFmpegError, OSError) as e:
    raise SegmentError(f"unreadable video {path}: {e}") from e
  if not container.streams.video:
    container.close()
    raise SegmentError(f"no video stream in {path}")
  return container


def video_size(path: str | Path, fmt: str | None = None) -> tuple[int, int]:
  """(width, height) of a video file's first video stream."""
  with _open_video(Path(path), fmt) as c:
    cc = c.streams.video[0].codec_context
    if cc.width and cc.height:
      return cc.width, cc.height
  for buf, layout in decode_nv12(path, fmt=fmt, reuse_buffer=True):
    return layout.width, layout.height
  raise SegmentError(f"no decodable frame in {path}")


def decode_nv12(path: str | Path, *, fmt: str | None = None, thread_count: int = 1, strict: bool = True,
                packet_lens: dict[int, int] | None = None,
                reuse_buffer: bool = False) -> Iterator[tuple[np.ndarray, NV12Layout]]:
  """Decode a video file into padded NV12 buffers (openpilot's VisionIPC layout).

  Stops at the first sign of damage with a `SegmentWarning`: a decoder error (`strict` makes the
  decoder treat concealable errors as errors), a corrupt packet/frame, or a packet shorter than
  its logged size (`packet_lens`: packet index in decode order -> EncodeIndex.len), which catches
  a truncated last frame that the decoder would otherwise conceal. `reuse_buffer` overwrites one
  buffer for every frame (for streaming consumers); by default each frame gets its own.
  """
  path = Path(path)
  packet_lens = packet_lens or {}
  container = _open_video(path, fmt)
  stream = container.streams.video[0]
  cc = stream.codec_context
  cc.thread_count = thread_count
  if thread_count != 1:
    cc.thread_type = "AUTO"
  if strict:
    cc.options = {"err_detect": "explode"}
  state = {"n": 0, "buf": None, "layout": None}
  problem = None

  def emit(frames) -> Iterator[tuple[np.ndarray, NV12Layout]]:
    for frame in frames:
      if frame.is_corrupt:
        raise _Damage(f"decoder flagged frame {state['n']} corrupt")
      layout = state["layout"]
      if layout is None:
        layout = state["layout"] = nv12_layout(frame.width, frame.height)
      elif (frame.width, frame.height) != (layout.width, layout.height):
        raise _Damage(f"frame {state['n']} changes size to {frame.width}x{frame.height}")
      if reuse_buffer:
        buf = state["buf"] = state["buf"] if state["buf"] is not None else np.zeros(layout.size, np.uint8)
      else:
        buf = np.zeros(layout.size, np.uint8)
      copy_to_nv12(frame, buf, layout)
      state["n"] += 1
      yield buf, layout

  try:
    pending, k = None, 0  # hold one packet back: only the last one can be cut short
    for pkt in container.demux(stream):
      if pkt.size == 0:  # demuxer's end-of-stream marker
        continue
      if pending is not None:
        yield from emit(_decode_packet(stream, pending, k))
        k += 1
      pending = pkt
    if pending is not None:
      want = packet_lens.get(k, 0)
      if pending.size < want:  # never decode it, but drain the frames still inside the decoder
        problem = f"truncated: last packet (frame {k}) has {pending.size} of {want} bytes"
      else:
        yield from emit(_decode_packet(stream, pending, k))
    yield from emit(stream.decode(None))
  except _Damage as e:
    problem = str(e)
  except (av.error.FFmpegError, OSError) as e:
    problem = f"decoder error after {state['n']} frames: {e}"
  finally:
    container.close()
  if problem:
    warnings.warn(f"{path}: damaged video, stopped after {state['n']} good frames: {problem}", SegmentWarning,
                  stacklevel=2)


class _Damage(Exception):
  pass


def _decode_packet(stream, pkt, k: int):
  if pkt.is_corrupt:
    raise _Damage(f"demuxer flagged packet {k} corrupt")
  return stream.decode(pkt)


# ---------------------------------------------------------------- segment

@dataclass
class Frame:
  """One decoded camera frame and the log state at that frame.

  `encode_idx`/`camera_state` are the matching capnp readers (None when the rlog has no match:
  such a frame is flagged by `matched == False` and its ids/timestamps come from whatever matched).
  `calib_rpy` is the `liveCalibration.rpyCalib` in force and `v_ego` the latest `carState.vEgo`,
  both taken from events logged no later than the frame's camera-state event.
  """
  index: int                   # position in the video file (EncodeIndex.segmentId)
  frame_id: int | None
  timestamp_sof: int | None    # ns
  timestamp_eof: int | None    # ns
  nv12: np.ndarray             # flat uint8, padded VisionIPC layout
  layout: NV12Layout
  camera_state: Any = None
  encode_idx: Any = None
  calib_rpy: tuple[float, float, float] | None = None
  v_ego: float | None = None
  log_mono_time: int | None = None  # logMonoTime of the camera-state event (the lookup time above)

  @property
  def matched(self) -> bool:
    return self.camera_state is not None and self.encode_idx is not None

  def planes(self) -> tuple[np.ndarray, np.ndarray]:
    """Views of the Y (h x w) and interleaved UV (h/2 x w/2 x 2) planes."""
    return nv12_planes(self.nv12, self.layout)

  def rgb(self) -> np.ndarray:
    return nv12_to_rgb(self.nv12, self.layout)


class _Series:
  """Values of one event field over logMonoTime, looked up as 'latest at or before t'."""

  def __init__(self, pairs: list[tuple[int, Any]]):
    pairs.sort(key=lambda p: p[0])
    self.times = [t for t, _ in pairs]
    self.values = [v for _, v in pairs]

  def at(self, t: int | None):
    if t is None:
      return None
    i = bisect.bisect_right(self.times, t) - 1
    return self.values[i] if i >= 0 else None

  def last(self):
    return self.values[-1] if self.values else None


class Segment:
  """An openpilot segment folder: its events and its camera frames.

  >>> seg = Segment("/data/media/0/realdata/abc|2024-01-01--12-00-00--3")
  >>> seg.camera, seg.calibration()
  >>> for f in seg.frames("road"): ...
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    if not self.path.is_dir():
      raise SegmentError(f"segment folder {self.path} does not exist" if not self.path.exists()
                         else f"segment path {self.path} is not a folder")
    self.rlog_path = next((self.path / n for n in RLOG_NAMES if (self.path / n).is_file()), None)
    if self.rlog_path is None:
      raise SegmentError(f"no rlog in {self.path} (looked for {', '.join(RLOG_NAMES)})")
    m = re.search(r"--(\d+)$", self.path.name)
    self.segment_num: int | None = int(m.group(1)) if m else None  # from the folder name, if it has one

  def __repr__(self) -> str:
    return f"Segment({str(self.path)!r})"

  @cached_property
  def content_id(self) -> str:
    """The segment's identity in the label store and the frame cache: its folder name and the first 12 hex
    digits of its rlog's sha256 (folders of one name from different dongles or drives differ; a copy
    elsewhere keeps its id)."""
    return f"{self.path.name}@{sha256_file(self.rlog_path)[:12]}"

  @property
  def scene_path(self) -> Path | None:
    """The simulator's scene.json, when this segment came from our simulator."""
    p = self.path / "scene.json"
    return p if p.is_file() else None

  def video_path(self, camera: str = "road") -> Path:
    return self.path / _stream(camera).file

  # -- events

  @cached_property
  def events(self) -> list:
    """All intact Event readers of the rlog, in file order (damage: prefix + SegmentWarning)."""
    return read_events(self.rlog_path)

  @cached_property
  def _by_type(self) -> dict[str, list]:
    out: dict[str, list] = {}
    for ev in self.events:
      w = _which(ev)
      if w is not None:
        out.setdefault(w, []).append(ev)
    return out

  def of_type(self, which: str) -> list:
    """Events of one union type (e.g. "carState"), in file order."""
    return self._by_type.get(which, [])

  @property
  def init_data(self):
    ev = self.of_type("initData")
    return ev[0].initData if ev else None

  @cached_property
  def _calib(self) -> _Series:
    pairs = [(ev.logMonoTime, tuple(float(a) for a in ev.liveCalibration.rpyCalib))
             for ev in self.of_type("liveCalibration")]
    return _Series([p for p in pairs if len(p[1]) == 3])

  @cached_property
  def _v_ego(self) -> _Series:
    return _Series([(ev.logMonoTime, float(ev.carState.vEgo)) for ev in self.of_type("carState")])

  def calibration(self) -> tuple[float, float, float] | None:
    """The latest `liveCalibration.rpyCalib` of the segment (None if it has none)."""
    return self._calib.last()

  def warp_calibration(self, frame: Frame) -> tuple[float, float, float]:
    """The calibration every tool warps `frame` to the model frame with: the liveCalibration in force at the
    frame, the segment's first one for frames logged before it. A segment without any is refused
    (NoCalibrationError): an identity guess misaligns every overlay and label (docs/faults.md)."""
    if frame.calib_rpy is not None:
      return frame.calib_rpy
    self.check_calibration()
    return self._calib.values[0]

  def check_calibration(self) -> None:
    """NoCalibrationError unless the segment logs a liveCalibration (call it before writing any output)."""
    if not self._calib.values:
      raise NoCalibrationError(f"{self.path}: no liveCalibration in the rlog; frames cannot be warped to the "
                               "model frame")

  # -- video

  @cached_property
  def camera(self) -> CameraModel:
    """The device road camera that recorded fcamera.hevc (UnknownCameraError for other sizes); a simulated
    segment's scene file may give it another focal length (domain randomisation)."""
    path = self.video_path("road")
    w, h = video_size(path, STREAMS["road"].fmt)
    try:
      camera = camera_for_size(w, h)
    except ValueError as e:
      raise UnknownCameraError(f"{path}: {w}x{h} video: {e}") from None
    if self.scene_path is not None:
      from tools.fair.sim.gt import load_segment_scene
      focal = load_segment_scene(self.path).focal
      return camera if focal is None else replace(camera, focal=focal)
    return camera

  def _encode_index(self, cs: CameraStream) -> tuple[dict[int, Any], dict[int, int], int | None]:
    """EncodeIndex events of this segment's file: by segmentId, packet lengths by encode order."""
    evs = [getattr(ev, cs.encode_idx) for ev in self.of_type(cs.encode_idx)]
    if not evs:
      return {}, {}, None
    nums = Counter(e.segmentNum for e in evs)
    # an rlog can hold a few encode events of the neighbouring segment around rotation
    seg = self.segment_num if self.segment_num in nums else nums.most_common(1)[0][0]
    by_id: dict[int, Any] = {}
    lens: dict[int, int] = {}
    dups = 0
    for e in evs:
      if e.segmentNum != seg:
        continue
      if e.segmentId in by_id:
        dups += 1
        continue
      by_id[e.segmentId] = e
      lens[e.segmentIdEncode] = e.len
    if len(lens) != len(by_id):  # segmentIdEncode not filled in (older logs): no B-frames, use segmentId
      lens = {i: e.len for i, e in by_id.items()}
    if dups:
      warnings.warn(f"{self.rlog_path}: {dups} duplicate {cs.encode_idx} segmentIds for segment {seg}; "
                    "kept the first of each", SegmentWarning, stacklevel=3)
    return by_id, lens, seg

  def logged_frames(self, camera: str = "road") -> int | None:
    """How many frames of `camera` this segment's rlog logs (None without encode-index events): a video
    that decodes to fewer is truncated."""
    by_id, _, _ = self._encode_index(_stream(camera))
    return len(by_id) or None

  def frames(self, camera: str = "road", *, thread_count: int = 1, strict: bool = True,
             reuse_buffer: bool = False) -> Iterator[Frame]:
    """Decode one camera ("road", "wide" or "qcamera") into `Frame`s with their log state.

    Frame i of the file is matched to the EncodeIndex with segmentId i (of this segment's
    segmentNum), and through its frameId to the camera-state event. Unmatched frames are
    yielded with None fields and reported in one warning; a decoded-vs-logged frame count
    mismatch is reported too. `thread_count` sets the decoder's threads (1: single core).
    """
    cs = _stream(camera)
    video = self.video_path(camera)
    if not video.is_file():
      raise SegmentError(f"missing video {video} for camera {camera!r}")
    by_id, lens, seg = self._encode_index(cs)
    states: dict[int, Any] = {}
    for ev in self.of_type(cs.state):
      states.setdefault(getattr(ev, cs.state).frameId, ev)
    if not by_id:
      warnings.warn(f"{self.rlog_path}: no {cs.encode_idx} events: frames of {video.name} cannot be matched "
                    "to the log", SegmentWarning, stacklevel=2)
    n, unmatched = 0, []
    for buf, layout in decode_nv12(video, fmt=cs.fmt, thread_count=thread_count, strict=strict,
                                   packet_lens=lens, reuse_buffer=reuse_buffer):
      idx = by_id.get(n)
      state_ev = states.get(idx.frameId) if idx is not None else None
      state = getattr(state_ev, cs.state) if state_ev is not None else None
      src = state if state is not None else idx
      t = state_ev.logMonoTime if state_ev is not None else None  # no camera state: don't guess a time
      if state is None or idx is None:
        unmatched.append(n)
      yield Frame(index=n, frame_id=idx.frameId if idx is not None else None,
                  timestamp_sof=src.timestampSof if src is not None else None,
                  timestamp_eof=src.timestampEof if src is not None else None,
                  nv12=buf, layout=layout, camera_state=state, encode_idx=idx,
                  calib_rpy=self._calib.at(t), v_ego=self._v_ego.at(t), log_mono_time=t)
      n += 1
    if by_id and unmatched:
      warnings.warn(f"{video}: {len(unmatched)} of {n} frames have no matching {cs.encode_idx}/{cs.state} "
                    f"(first: frame {unmatched[0]}); their Frame fields are None", SegmentWarning, stacklevel=2)
    if by_id and n != len(by_id):
      warnings.warn(f"{video}: decoded {n} frames but the rlog logs {len(by_id)} {cs.encode_idx} events "
                    f"for segment {seg}", SegmentWarning, stacklevel=2)


def _stream(camera: str) -> CameraStream:
  try:
    return STREAMS[camera]
  except KeyError:
    raise ValueError(f"unknown camera {camera!r} (one of {', '.join(STREAMS)})") from None

"""FairModelOutput messages: build, (de)serialise and carry them inside openpilot Events.

One `FairModelOutput` (cereal_ext/fair.capnp) per camera frame, serialised with the standard
*unpacked* capnp encoding (fixed size for a given content shape, so the size bound is exact;
rlogs are zstd-compressed anyway) and stored as the bytes of openpilot's
`Event.customReservedRawData{slot}`. See docs/messages.md for units, encodings and sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterable, NoReturn

import capnp
import numpy as np
try:  # comma's openpilot-logging package (it defers to an installed cereal itself)
  from openpilot_logging.cereal import log
except ImportError:  # inside an openpilot checkout on a device, where only openpilot's cereal exists
  from cereal import log

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import IGNORE_ID, SEMANTIC_CLASSES
from selfdrive.modeld_fair.model_io import LANE_X  # openpilot's 33 distances, one definition for GT, student, message

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fair.capnp")
fair_capnp = capnp.load(SCHEMA_PATH)
_Msg = fair_capnp.FairModelOutput

SCHEMA_VERSION = 1
SLOTS = (0, 1, 2)  # Event.customReservedRawData0/1/2
DEFAULT_SLOT = 0
INVALID_REASONS = tuple(sorted(_Msg.InvalidReason.schema.enumerants, key=_Msg.InvalidReason.schema.enumerants.get))

DEPTH_MIN_M = 0.5  # default smallest representable depth: invDepthScale = 0.5 * 65535
DEPTH_SHAPE = (32, 64)  # default grids (rows, cols) over the 256x512 model frame
SEG_SHAPE = (64, 128)

# caps that keep a message (and a hostile one's decode) bounded
MAX_OBJECTS = 64
MAX_LANES = 8
MAX_LANE_POINTS = 128
MAX_TEXT_BYTES = 256
_SEG_IGNORE_NIBBLE = 15
_TRAVERSAL_LIMIT_WORDS = 1 << 16  # 512 KiB, ~30x the default message
_F32_MAX = float(np.finfo(np.float32).max)


class FairMessageError(ValueError):
  """Bytes that are not a valid FairModelOutput, or a FairOutput that cannot be encoded."""


@dataclass(frozen=True)
class FairObject:
  """A detected object. Class ids are SEMANTIC_CLASSES indices; track_id 0 = untracked."""
  class_id: int
  score: float
  box: tuple[float, float, float, float]   # x0, y0, x1, y1, model-frame pixels
  position: tuple[float, float, float]     # ground point below the box centre, road frame (m)
  velocity: tuple[float, float, float]     # relative to the ego, road frame (m/s)
  track_id: int = 0


@dataclass(eq=False)
class LaneLine:
  """One lane line: road-frame y, z (m) and their stds at each of `Lanes.x`."""
  prob: float
  y: np.ndarray
  z: np.ndarray
  y_std: np.ndarray
  z_std: np.ndarray


@dataclass(eq=False)
class Lanes:
  """Lane lines (left to right) sampled at the forward distances `x` (m, increasing)."""
  lines: list[LaneLine]
  x: np.ndarray = field(default_factory=LANE_X.copy)


@dataclass(frozen=True)
class EgoMotion:
  """Device-frame velocity (m/s) and angular velocity (rad/s) with stds, as cameraOdometry."""
  trans: tuple[float, float, float]
  rot: tuple[float, float, float]
  trans_std: tuple[float, float, float]
  rot_std: tuple[float, float, float]


@dataclass(eq=False)
class FairOutput:
  """Everything one FairModelOutput carries. An output left None was not produced this frame.

  depth: (H, W) float metres along the optical axis (view z), > 0, inf = no depth (sky).
  segmentation: (H, W) integer class ids (0..7, 255 = ignore).
  `valid` is derived: the message is valid iff invalid_reason == "none".
  """
  frame_id: int = 0
  frame_id_extra: int = 0
  frame_age: int = 0
  frame_drop_perc: float = 0.0
  timestamp_eof: int = 0
  model_execution_time: float = 0.0
  invalid_reason: str = "none"
  invalid_detail: str = ""
  model_id: str = ""
  model_hash: bytes = b""
  depth: np.ndarray | None = None
  segmentation: np.ndarray | None = None
  objects: list[FairObject] | None = None
  lanes: Lanes | None = None
  ego_motion: EgoMotion | None = None

  @property
  def valid(self) -> bool:
    return self.invalid_reason == "none"


# ---- validation (shared by encode and decode: decode only returns what encode accepts)

def _fail(msg: str) -> NoReturn:
  raise FairMessageError(msg)


def _uint(where: str, v, bits: int) -> None:
  if not (isinstance(v, (int, np.integer)) and 0 <= v < 1 << bits):
    _fail(f"{where} = {v!r} is not a UInt{bits}")


def _num(where: str, v, lo: float = -_F32_MAX, hi: float = _F32_MAX) -> None:
  if not lo <= v <= hi:  # also rejects NaN
    _fail(f"{where} = {v!r} not in [{lo:g}, {hi:g}]")


def _vec(where: str, v, n: int, lo: float = -_F32_MAX) -> None:
  a = np.asarray(v, np.float64)
  if a.shape != (n,):
    _fail(f"{where}: shape {a.shape}, expected ({n},)")
  ok = (a >= lo) & (a <= _F32_MAX)  # NaN is bad too
  if not ok.all():  # locating the culprit only on failure keeps passing values cheap
    i = int(np.argmin(ok))
    _fail(f"{where}[{i}] = {a[i]!r} not in [{lo:g}, {_F32_MAX:g}]")


def _text(where: str, s: str) -> None:
  try:
    n = len(s.encode())
  except UnicodeEncodeError:  # lone surrogates
    _fail(f"{where}: not encodable as UTF-8")
  if "\x00" in s or n > MAX_TEXT_BYTES:
    _fail(f"{where}: NUL or longer than {MAX_TEXT_BYTES} UTF-8 bytes")


def _grid(where: str, a: np.ndarray) -> None:
  if a.ndim != 2 or not (1 <= a.shape[0] <= MEDMODEL.height and 1 <= a.shape[1] <= MEDMODEL.width):
    _fail(f"{where}: shape {a.shape}, expected (H, W) within (1..{MEDMODEL.height}, 1..{MEDMODEL.width})")


def _check(out: FairOutput) -> None:
  for name in ("frame_id", "frame_id_extra", "frame_age"):
    _uint(name, getattr(out, name), 32)
  _uint("timestamp_eof", out.timestamp_eof, 64)
  _num("frame_drop_perc", out.frame_drop_perc, 0.0, 100.0)
  _num("model_execution_time", out.model_execution_time, 0.0)
  if out.invalid_reason not in INVALID_REASONS:
    _fail(f"invalid_reason {out.invalid_reason!r} not one of {INVALID_REASONS}")
  _text("invalid_detail", out.invalid_detail)
  _text("model_id", out.model_id)
  if len(out.model_hash) not in (0, 32):
    _fail(f"model_hash has {len(out.model_hash)} bytes, expected 0 or 32 (sha256)")
  if out.depth is not None:
    d = np.asarray(out.depth)
    _grid("depth", d)
    if not np.all(d > 0) or np.isneginf(d).any():  # NaN fails d > 0
      _fail("depth: values must be > 0 (inf = no depth); NaN and <= 0 are not depths")
  if out.segmentation is not None:
    s = np.asarray(out.segmentation)
    _grid("segmentation", s)
    if s.dtype.kind not in "iu" or not np.all((s < len(SEMANTIC_CLASSES)) & (s >= 0) | (s == IGNORE_ID)):
      _fail(f"segmentation: integer class ids 0..{len(SEMANTIC_CLASSES) - 1} or {IGNORE_ID} expected")
  if out.objects is not None:
    if len(out.objects) > MAX_OBJECTS:
      _fail(f"{len(out.objects)} objects > {MAX_OBJECTS}")
    if not _objects_ok(out.objects):
      _check_objects(out.objects)
  if out.lanes is not None:
    x = np.asarray(out.lanes.x)
    if x.ndim != 1 or not 1 <= len(x) <= MAX_LANE_POINTS:
      _fail(f"lanes.x: shape {x.shape}, expected 1..{MAX_LANE_POINTS} distances")
    _vec("lanes.x", x, len(x))
    x32 = x.astype(np.float32)
    if (x32[1:] <= x32[:-1]).any():
      _fail("lanes.x must be strictly increasing (as float32)")
    if len(out.lanes.lines) > MAX_LANES:
      _fail(f"{len(out.lanes.lines)} lane lines > {MAX_LANES}")
    if not _lines_ok(out.lanes.lines, len(x)):
      _check_lines(out.lanes.lines, len(x))
  if out.ego_motion is not None and not _ego_ok(out.ego_motion):
    _check_ego(out.ego_motion)


# The per-item checks below make ~70 small numpy calls for a default message. Each *_ok runs the same
# checks over all items at once and is True only if the per-item checks pass; otherwise (or on input
# too odd for it: it then raises, which counts as False) the per-item checks run and name the culprit.

_VALUE_STD_LO = np.array([[-_F32_MAX], [-_F32_MAX], [0.0], [0.0]])  # of (y, z, y_std, z_std) and of ego's 4 vectors


def _all_in(a: np.ndarray, lo) -> bool:
  return bool(((a >= lo) & (a <= _F32_MAX)).all())  # NaN is out


def _objects_ok(objs) -> bool:
  try:
    vecs = [np.array([getattr(o, k) for o in objs], np.float64) for k in ("box", "position", "velocity")]
    return ([v.shape for v in vecs] == [(len(objs), 4), (len(objs), 3), (len(objs), 3)]
            and _all_in(np.concatenate(vecs, axis=1), -_F32_MAX)
            and all(isinstance(o.class_id, (int, np.integer)) and 0 <= o.class_id < len(SEMANTIC_CLASSES)
                    and isinstance(o.track_id, (int, np.integer)) and 0 <= o.track_id < 1 << 32
                    and 0.0 <= o.score <= 1.0 and o.box[0] <= o.box[2] and o.box[1] <= o.box[3] for o in objs))
  except Exception:
    return False


def _check_objects(objs) -> None:
  for i, o in enumerate(objs):
    w = f"objects[{i}]"
    if not (isinstance(o.class_id, (int, np.integer)) and 0 <= o.class_id < len(SEMANTIC_CLASSES)):
      _fail(f"{w}.class_id = {o.class_id!r} not a semantic class id")
    _uint(f"{w}.track_id", o.track_id, 32)
    _num(f"{w}.score", o.score, 0.0, 1.0)
    _vec(f"{w}.box", o.box, 4)
    _vec(f"{w}.position", o.position, 3)
    _vec(f"{w}.velocity", o.velocity, 3)
    if not (o.box[0] <= o.box[2] and o.box[1] <= o.box[3]):
      _fail(f"{w}.box = {o.box}: expected x0 <= x1 and y0 <= y1")


def _lines_ok(lines, n: int) -> bool:
  try:
    a = np.array([(ln.y, ln.z, ln.y_std, ln.z_std) for ln in lines], np.float64)
    return a.shape == (len(lines), 4, n) and _all_in(a, _VALUE_STD_LO) and all(0.0 <= ln.prob <= 1.0 for ln in lines)
  except Exception:
    return False


def _check_lines(lines, n: int) -> None:
  for i, ln in enumerate(lines):
    w = f"lanes.lines[{i}]"
    _num(f"{w}.prob", ln.prob, 0.0, 1.0)
    for name, lo in (("y", -_F32_MAX), ("z", -_F32_MAX), ("y_std", 0.0), ("z_std", 0.0)):
      _vec(f"{w}.{name}", getattr(ln, name), n, lo)


def _ego_ok(e: EgoMotion) -> bool:
  try:
    a = np.array((e.trans, e.rot, e.trans_std, e.rot_std), np.float64)
    return a.shape == (4, 3) and _all_in(a, _VALUE_STD_LO)
  except Exception:
    return False


def _check_ego(e: EgoMotion) -> None:
  _vec("ego_motion.trans", e.trans, 3)
  _vec("ego_motion.rot", e.rot, 3)
  _vec("ego_motion.trans_std", e.trans_std, 3, 0.0)
  _vec("ego_motion.rot_std", e.rot_std, 3, 0.0)


# ---- encoding

def quantize_depth(depth: np.ndarray, scale: float) -> np.ndarray:
  """Metres -> UInt16 inverse depth q = clip(round(scale / depth), 1, 65535); inf -> 0."""
  d = np.asarray(depth, np.float64)
  with np.errstate(over="ignore"):  # tiny depths saturate at 65535
    q = np.clip(np.rint(scale / d), 1, 65535)
  return np.where(np.isinf(d), 0, q).astype("<u2")


def dequantize_depth(q: np.ndarray, scale: float) -> np.ndarray:
  """UInt16 inverse depth -> metres (float32); 0 -> inf."""
  with np.errstate(divide="ignore"):
    return (np.float64(scale) / q).astype(np.float32)


def build_message(out: FairOutput, depth_min_m: float = DEPTH_MIN_M):
  """The FairModelOutput capnp builder for `out` (validated first; raises FairMessageError).

  depth_min_m: smallest representable depth; sets invDepthScale = depth_min_m * 65535 and so the
  error bound: relative error <= depth / (2 * invDepthScale - depth), 0.31 % at 200 m by default.
  """
  _check(out)
  m = _Msg.new_message()  # then field by field: new_message(**fields) reads the schema for each str value, 4x slower
  for name, value in (("schemaVersion", SCHEMA_VERSION), ("frameId", int(out.frame_id)),
                      ("frameIdExtra", int(out.frame_id_extra)), ("frameAge", int(out.frame_age)),
                      ("frameDropPerc", float(out.frame_drop_perc)), ("timestampEof", int(out.timestamp_eof)),
                      ("modelExecutionTime", float(out.model_execution_time)), ("valid", out.valid),
                      ("invalidReason", out.invalid_reason), ("invalidDetail", out.invalid_detail),
                      ("modelId", out.model_id), ("modelHash", bytes(out.model_hash))):
    setattr(m, name, value)
  if out.depth is not None:
    h, w = np.shape(out.depth)
    scale = float(np.float32(depth_min_m * 65535))
    _num("invDepthScale", scale, np.finfo(np.float32).tiny)
    m.depth = {"width": w, "height": h, "invDepthScale": scale, "values": quantize_depth(out.depth, scale).tobytes()}
  if out.segmentation is not None:
    s = np.asarray(out.segmentation)
    nib = s.astype(np.uint8).ravel() & 15  # checked: ids 0..7 stay, IGNORE_ID (255) becomes _SEG_IGNORE_NIBBLE (15)
    if len(nib) % 2:
      nib = np.append(nib, np.uint8(0))  # pad an odd cell count with a 0 nibble
    pairs = nib.view("<u2")  # cell 2k in the low byte, 2k+1 in the high one
    cells = (pairs | pairs >> 4).astype(np.uint8).tobytes()
    m.segmentation = {"width": s.shape[1], "height": s.shape[0], "cells": cells}
  if out.objects is not None:
    for o, b in zip(out.objects, m.init("objects", len(out.objects))):
      b.classId, b.score, b.trackId = int(o.class_id), float(o.score), int(o.track_id)
      b.boxX0, b.boxY0, b.boxX1, b.boxY1 = map(float, o.box)
      b.posX, b.posY, b.posZ = map(float, o.position)
      b.velX, b.velY, b.velZ = map(float, o.velocity)
  if out.lanes is not None:
    m.lanes = {"x": np.asarray(out.lanes.x, np.float32).tolist(),
               "lines": [{"prob": float(ln.prob), "y": _f32list(ln.y), "z": _f32list(ln.z),
                          "yStd": _f32list(ln.y_std), "zStd": _f32list(ln.z_std)} for ln in out.lanes.lines]}
  if out.ego_motion is not None:
    e = out.ego_motion
    m.egoMotion = {"trans": _f32list(e.trans), "rot": _f32list(e.rot),
                   "transStd": _f32list(e.trans_std), "rotStd": _f32list(e.rot_std)}
  return m


def _f32list(v) -> list[float]:
  return np.asarray(v, np.float32).ravel().tolist()


def encode(out: FairOutput, depth_min_m: float = DEPTH_MIN_M) -> bytes:
  """Serialise `out` as an unpacked FairModelOutput message (see build_message)."""
  return build_message(out, depth_min_m).to_bytes()


# ---- decoding

def decode(data: bytes) -> FairOutput:
  """Parse FairModelOutput bytes (as written by `encode`) back into a FairOutput.

  Depth is dequantised to float32 metres; floats come back as their float32 values; ints, ids,
  enums, text and hashes exactly. Raises FairMessageError (saying what is wrong) unless capnp
  parses the bytes within bounds AND the content passes the same checks `encode` applies
  (schemaVersion >= 1, grid byte counts = width*height, class ids, list lengths, ranges).
  """
  try:
    data = bytes(data)
    with _Msg.from_bytes(data, traversal_limit_in_words=_TRAVERSAL_LIMIT_WORDS) as m:
      if (size := _framed_size(data)) != len(data):  # e.g. two messages glued together
        _fail(f"{len(data)} bytes but the message frames {size}")
      out = _read(m)
  except FairMessageError:
    raise
  except (capnp.KjException, ValueError) as e:  # malformed framing/pointers, bad UTF-8
    raise FairMessageError(f"not a FairModelOutput message ({len(data)} bytes): {str(e).splitlines()[0]}") from e
  _check(out)
  return out


def _read(m) -> FairOutput:
  if m.schemaVersion < 1:
    _fail("schemaVersion is 0: not a FairModelOutput (or an empty message)")
  raw = m.invalidReason.raw
  reason = INVALID_REASONS[raw] if raw < len(INVALID_REASONS) else "unknown"  # an enumerant newer than this reader
  out = FairOutput(frame_id=m.frameId, frame_id_extra=m.frameIdExtra, frame_age=m.frameAge,
                   frame_drop_perc=m.frameDropPerc, timestamp_eof=m.timestampEof,
                   model_execution_time=m.modelExecutionTime, invalid_reason=reason,
                   invalid_detail=m.invalidDetail, model_id=m.modelId, model_hash=bytes(m.modelHash))
  if m.valid != out.valid:
    _fail(f"valid = {m.valid} but invalidReason = {out.invalid_reason}")
  if m._has("depth"):
    g = m.depth
    values = _grid_bytes("depth", g, g.values, 2 * g.width * g.height)
    _num("depth.invDepthScale", g.invDepthScale, np.finfo(np.float32).tiny)
    q = np.frombuffer(values, "<u2").reshape(g.height, g.width)
    out.depth = dequantize_depth(q, g.invDepthScale)
  if m._has("segmentation"):
    g = m.segmentation
    n = g.width * g.height
    b = np.frombuffer(_grid_bytes("segmentation", g, g.cells, (n + 1) // 2), np.uint8)
    nib = np.stack([b & 15, b >> 4], axis=1).ravel()
    if len(nib) > n and nib[-1] != 0:
      _fail("segmentation: padding nibble is not 0")
    nib = nib[:n]
    bad = (nib >= len(SEMANTIC_CLASSES)) & (nib != _SEG_IGNORE_NIBBLE)
    if bad.any():
      _fail(f"segmentation: cell value {int(nib[bad][0])} is not a class id (0..{len(SEMANTIC_CLASSES) - 1}, 15)")
    out.segmentation = np.where(nib == _SEG_IGNORE_NIBBLE, IGNORE_ID, nib).astype(np.uint8).reshape(g.height, g.width)
  if m._has("objects"):
    objs = m.objects
    if len(objs) > MAX_OBJECTS:  # check before walking a hostile list
      _fail(f"{len(objs)} objects > {MAX_OBJECTS}")
    out.objects = [FairObject(class_id=o.classId, score=o.score, track_id=o.trackId,
                              box=(o.boxX0, o.boxY0, o.boxX1, o.boxY1), position=(o.posX, o.posY, o.posZ),
                              velocity=(o.velX, o.velY, o.velZ)) for o in objs]
  if m._has("lanes"):
    x, lines = m.lanes.x, m.lanes.lines
    if len(x) > MAX_LANE_POINTS or len(lines) > MAX_LANES:
      _fail(f"lanes: {len(x)} points / {len(lines)} lines exceed {MAX_LANE_POINTS} / {MAX_LANES}")
    out.lanes = Lanes(x=np.array(list(x), np.float32),
                      lines=[LaneLine(ln.prob, _arr(ln.y), _arr(ln.z), _arr(ln.yStd), _arr(ln.zStd)) for ln in lines])
  if m._has("egoMotion"):
    e = m.egoMotion
    lists = (e.trans, e.rot, e.transStd, e.rotStd)
    if any(len(v) != 3 for v in lists):
      _fail(f"egoMotion: list lengths {[len(v) for v in lists]}, expected 3 each")
    out.ego_motion = EgoMotion(*(tuple(v) for v in lists))
  return out


def _framed_size(data: bytes) -> int:
  """Bytes the segment table (already checked by capnp) says the message spans."""
  n = int.from_bytes(data[:4], "little") + 1
  return 8 * ((n + 2) // 2) + 8 * int(np.frombuffer(data, "<u4", count=n, offset=4).sum(dtype=np.int64))


def _grid_bytes(where: str, g, data: bytes, expected: int) -> bytes:
  if g.width < 1 or g.height < 1 or len(data) != expected:
    _fail(f"{where}: {len(data)} bytes for a {g.width}x{g.height} grid, expected {expected}")
  return data


def _arr(v) -> np.ndarray:
  if len(v) > MAX_LANE_POINTS:
    _fail(f"lane line with {len(v)} points > {MAX_LANE_POINTS}")
  return np.array(list(v), np.float32)


# ---- openpilot Events

def _slot_field(slot: int) -> str:
  if slot not in SLOTS:
    raise ValueError(f"slot {slot!r} not in {SLOTS}")
  return f"customReservedRawData{slot}"


def to_event(out: FairOutput, log_mono_time: int, slot: int = DEFAULT_SLOT, depth_min_m: float = DEPTH_MIN_M):
  """An openpilot `log.Event` builder carrying `out` in customReservedRawData{slot}; Event.valid = out.valid."""
  evt = log.Event.new_message(logMonoTime=log_mono_time, valid=out.valid)
  setattr(evt, _slot_field(slot), encode(out, depth_min_m))
  return evt


def from_event(event, slot: int = DEFAULT_SLOT) -> FairOutput:
  """Decode the FairOutput in an Event (reader or builder) whose union holds customReservedRawData{slot}."""
  name = _slot_field(slot)
  try:
    which = event.which()
    data = getattr(event, name) if which == name else None
  except capnp.KjException as e:  # a corrupted Event: its pointers lead nowhere
    raise FairMessageError(f"not a readable Event: {str(e).splitlines()[0]}") from e
  if data is None:
    raise FairMessageError(f"event holds {which}, not {name}")
  return decode(data)


def from_events(events: Iterable, slot: int = DEFAULT_SLOT) -> list[tuple[int, FairOutput]]:
  """(logMonoTime, FairOutput) of every event in `events` (e.g. a LogReader) holding the slot, in order."""
  name = _slot_field(slot)
  res = []
  for e in events:
    try:
      if e.which() == name:
        res.append((e.logMonoTime, from_event(e, slot)))
    except capnp.KjException as err:
      raise FairMessageError(f"event at logMonoTime {e.logMonoTime}: not a readable Event: {err}") from err
    except FairMessageError as err:
      raise FairMessageError(f"event at logMonoTime {e.logMonoTime}: {err}") from err
  return res


def field_sizes(out: FairOutput) -> dict[str, int]:
  """Encoded bytes each output adds to `out`'s message ('metadata': the rest, 'total': all)."""
  total = len(encode(out))
  sizes = {name: total - len(encode(replace(out, **{name: None})))
           for name in ("depth", "segmentation", "objects", "lanes", "ego_motion")}
  sizes["metadata"] = total - sum(sizes.values())
  sizes["total"] = total
  return sizes

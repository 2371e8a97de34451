import hashlib
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import capnp
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from openpilot_logging.cereal import log
from openpilot_logging.logreader import LogReader

from cereal_ext import (DEPTH_SHAPE, INVALID_REASONS, LANE_X, SCHEMA_PATH, SCHEMA_VERSION, SEG_SHAPE, EgoMotion,
                        FairMessageError, FairObject, FairOutput, LaneLine, Lanes, build_message, decode,
                        dequantize_depth, encode, fair_capnp, field_sizes, from_event, from_events, quantize_depth,
                        to_event)
from cereal_ext.fair import MAX_OBJECTS, _check_ego, _check_lines, _check_objects, _ego_ok, _lines_ok, _objects_ok
from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.5 * 65535  # default invDepthScale
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def realistic_output() -> FairOutput:
  """A full default message: road-plane depth, row-banded segmentation, 16 objects, 4 lanes x 33 points."""
  rng = np.random.default_rng(7)
  h, w = DEPTH_SHAPE
  v = (np.arange(h) + 0.5) * MEDMODEL.height / h - 0.5 - MEDMODEL.cy  # rows below the horizon see the road
  road = np.where(v > 0, DEFAULT_CAMERA_HEIGHT * MEDMODEL.focal / np.maximum(v, 1e-9), np.inf)
  depth = np.repeat(road[:, None], w, axis=1) * rng.uniform(0.9, 1.1, (h, w))
  depth[:8][rng.random((8, w)) < 0.5] = rng.uniform(20, 150)  # buildings / vehicles above the horizon
  sh, sw = SEG_SHAPE
  seg = np.repeat(np.array([7] * 10 + [6] * 4 + [3] * 6 + [0] * 44, np.uint8)[:, None], sw, axis=1)
  seg[20:40, 40:60] = 4
  seg[30:, ::16] = 1
  seg[rng.random((sh, sw)) < 0.02] = 255
  objects = [FairObject(class_id=int(rng.choice([4, 5, 6])), score=float(rng.uniform(0.3, 1)),
                        box=(x0 := float(rng.uniform(0, 450)), y0 := float(rng.uniform(30, 150)),
                             x0 + float(rng.uniform(5, 60)), y0 + float(rng.uniform(5, 60))),
                        position=tuple(map(float, rng.uniform([5, -10, -0.2], [120, 10, 0.2]))),
                        velocity=tuple(map(float, rng.normal(0, 3, 3))), track_id=i + 100) for i in range(16)]
  x = LANE_X.astype(np.float64)
  lines = [LaneLine(prob=p, y=(off + 1e-3 * x ** 1.5).astype(np.float32), z=(0.01 * x).astype(np.float32),
                    y_std=(0.05 + 0.01 * x).astype(np.float32), z_std=(0.05 + 0.005 * x).astype(np.float32))
           for off, p in ((-5.4, 0.4), (-1.8, 0.99), (1.8, 0.98), (5.4, 0.6))]
  return FairOutput(frame_id=123456, frame_id_extra=123455, frame_age=1, frame_drop_perc=0.5,
                    timestamp_eof=1_234_567_890_123_456, model_execution_time=0.0213, model_id="fair-student-s-int8-v1",
                    model_hash=hashlib.sha256(b"artifact").digest(), depth=depth.astype(np.float32), segmentation=seg,
                    objects=objects, lanes=Lanes(lines), ego_motion=EgoMotion((25.0, 0.1, 0.0), (0.0, 0.001, 0.02),
                                                                              (0.3, 0.1, 0.1), (0.01, 0.01, 0.01)))


def f32(v):
  return np.float32(v).item()


def assert_same(a: FairOutput, b: FairOutput) -> None:
  """b is a decoded a: ints/text/bytes exact, floats as float32, depth within the quantisation bound."""
  for name in ("frame_id", "frame_id_extra", "frame_age", "timestamp_eof", "invalid_reason", "invalid_detail",
               "model_id", "model_hash"):
    assert getattr(a, name) == getattr(b, name), name
  assert (f32(a.frame_drop_perc), f32(a.model_execution_time)) == (b.frame_drop_perc, b.model_execution_time)
  assert a.valid == b.valid
  for name in ("depth", "segmentation", "objects", "lanes", "ego_motion"):
    assert (getattr(a, name) is None) == (getattr(b, name) is None), name
  if a.depth is not None:
    d = np.asarray(a.depth, np.float64)
    assert b.depth.shape == d.shape and b.depth.dtype == np.float32
    assert np.array_equal(np.isinf(d), np.isinf(b.depth))
    fin = np.isfinite(d)
    assert np.all(np.abs(b.depth[fin] / d[fin] - 1) <= d[fin] / (2 * SCALE - d[fin]) + 1e-6)
  if a.segmentation is not None:
    assert np.array_equal(a.segmentation, b.segmentation) and b.segmentation.dtype == np.uint8
  if a.objects is not None:
    as32 = lambda o: replace(o, score=f32(o.score), box=tuple(map(f32, o.box)), position=tuple(map(f32, o.position)),
                             velocity=tuple(map(f32, o.velocity)))
    assert [as32(o) for o in a.objects] == b.objects
  if a.lanes is not None:
    assert np.array_equal(np.float32(a.lanes.x), b.lanes.x) and len(a.lanes.lines) == len(b.lanes.lines)
    for la, lb in zip(a.lanes.lines, b.lanes.lines):
      assert f32(la.prob) == lb.prob
      for name in ("y", "z", "y_std", "z_std"):
        assert np.array_equal(np.float32(getattr(la, name)), getattr(lb, name)), name
  if a.ego_motion is not None:
    as32 = {k: tuple(map(f32, v)) for k, v in a.ego_motion.__dict__.items()}
    assert EgoMotion(**as32) == b.ego_motion


# ---- schema, size

def test_schema_has_own_id_and_loads_beside_openpilot():
  file_id = fair_capnp.FairModelOutput.schema.node.scopeId
  assert file_id >> 63 == 1 and f"@{file_id:#x};" in Path(SCHEMA_PATH).read_text()
  assert file_id != log.Event.schema.node.scopeId and build_message(FairOutput()).schemaVersion == SCHEMA_VERSION
  assert {f"customReservedRawData{i}" for i in range(3)} <= set(log.Event.schema.union_fields)
  # both import orders in a fresh process: pycapnp aborts the process on duplicate ids
  ours, theirs = "import cereal_ext", "from openpilot_logging.cereal import log, car, custom"
  for first, second in ((ours, theirs), (theirs, ours)):
    code = f"{first}; {second}; import capnp; capnp.load(cereal_ext.SCHEMA_PATH); print('ok')"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_default_message_size_bound_and_docs():
  out = realistic_output()
  sizes = field_sizes(out)
  assert sizes["total"] == len(encode(out)) <= 16 * 1024
  assert len(to_event(out, 1).to_bytes()) <= 16 * 1024
  assert out.depth.shape == DEPTH_SHAPE and out.segmentation.shape == SEG_SHAPE
  doc = (ROOT / "docs/messages.md").read_text()
  for name, n in sizes.items():  # the size table in the docs is this measurement
    assert re.search(rf"\| `{name}` \|[^|\n]*\| {n} \|", doc), (name, n)
  assert_same(out, decode(encode(out)))


def test_depth_quantisation_error_bound_1_to_200_m():
  d = np.geomspace(1, 200, 256 * 512)  # through a whole message: the largest grid allowed
  back = decode(encode(FairOutput(depth=d.reshape(256, 512)))).depth.ravel().astype(np.float64)
  rel = np.abs(back / d - 1)
  assert np.all(rel <= d / (2 * SCALE - d) + 1e-6)
  assert rel.max() < 0.0031 and rel[d <= 10].max() < 1.6e-4
  # saturation: below 0.5 m -> 0.5 m, huge finite stays finite, inf (no depth) <-> 0
  q = quantize_depth(np.array([0.1, 1e30, np.inf, 5e-324]), SCALE)
  assert q.tolist() == [65535, 1, 0, 65535]
  assert dequantize_depth(q, SCALE).tolist() == [0.5, SCALE, np.inf, 0.5]


def test_seg_packing_is_4_bits_per_cell():
  seg = np.array([[0, 1, 2], [7, 255, 3], [4, 5, 6]], np.uint8)  # odd cell count
  m = build_message(FairOutput(segmentation=seg))
  assert m.segmentation.cells == bytes([0x10, 0x72, 0x3f, 0x54, 0x06])
  assert np.array_equal(decode(m.to_bytes()).segmentation, seg)


# ---- round trips

floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
unit = st.floats(0, 1, width=32)
nonneg = st.floats(0, 1e6, width=32)
vec3 = st.tuples(floats32, floats32, floats32)
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
shape = st.tuples(st.integers(1, 9), st.integers(1, 17))
depths = hnp.arrays(np.float32, shape, elements=st.one_of(st.floats(0.5, 1000, width=32), st.just(np.inf)))
segs = hnp.arrays(np.uint8, shape, elements=st.sampled_from([*range(8), 255]))


@st.composite
def boxes(draw):
  x0, x1 = sorted(draw(st.tuples(floats32, floats32)))
  y0, y1 = sorted(draw(st.tuples(floats32, floats32)))
  return (x0, y0, x1, y1)


objects = st.builds(FairObject, class_id=st.integers(0, 7), score=unit, box=boxes(), position=vec3, velocity=vec3,
                    track_id=st.integers(0, 2**32 - 1))


@st.composite
def lanes(draw):
  x = np.array(sorted(draw(st.lists(st.floats(0, 300, width=32), min_size=1, max_size=8, unique=True))), np.float32)
  arr = lambda el: hnp.arrays(np.float32, len(x), elements=el)
  lines = draw(st.lists(st.builds(LaneLine, prob=unit, y=arr(floats32), z=arr(floats32), y_std=arr(nonneg),
                                  z_std=arr(nonneg)), max_size=4))
  return Lanes(lines, x)


fair_outputs = st.builds(
  FairOutput, frame_id=st.integers(0, 2**32 - 1), frame_id_extra=st.integers(0, 2**32 - 1),
  frame_age=st.integers(0, 2**32 - 1), frame_drop_perc=st.floats(0, 100), timestamp_eof=st.integers(0, 2**64 - 1),
  model_execution_time=st.floats(0, 10), invalid_reason=st.sampled_from(INVALID_REASONS), invalid_detail=text,
  model_id=text, model_hash=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
  depth=st.none() | depths, segmentation=st.none() | segs, objects=st.none() | st.lists(objects, max_size=4),
  lanes=st.none() | lanes(), ego_motion=st.none() | st.builds(EgoMotion, vec3, vec3, st.tuples(nonneg, nonneg, nonneg),
                                                               st.tuples(nonneg, nonneg, nonneg)))


@FUZZ
@given(fair_outputs)
def test_round_trip_whole_schema(out):
  data = encode(out)
  back = decode(data)
  assert_same(out, back)
  assert encode(back) == data  # decoding is a fixed point: nothing is lost beyond the first quantisation


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_event_wrap_unwrap(slot):
  out = realistic_output()
  evt = to_event(out, log_mono_time=987654321, slot=slot)
  assert evt.which() == f"customReservedRawData{slot}" and evt.valid and evt.logMonoTime == 987654321
  assert_same(out, from_event(evt, slot))
  with pytest.raises(FairMessageError, match="not customReservedRawData"):
    from_event(evt, (slot + 1) % 3)
  with log.Event.from_bytes(evt.to_bytes()) as reader:  # as read back from a log
    assert_same(out, from_event(reader, slot))
  with pytest.raises(ValueError, match="slot 3"):
    to_event(out, 0, slot=3)


def test_invalid_frame_marks_event_invalid():
  out = FairOutput(invalid_reason="noCalibration", invalid_detail="waiting for liveCalibration")
  evt = to_event(out, 5)
  assert not evt.valid
  back = from_event(evt)
  assert (back.valid, back.invalid_reason, back.depth, back.objects) == (False, "noCalibration", None, None)


def test_from_events_through_logreader(tmp_path):
  outs = [replace(realistic_output(), frame_id=i) for i in range(3)]
  other = log.Event.new_message(logMonoTime=1)
  other.init("clocks")
  events = [other, to_event(outs[0], 10), to_event(outs[1], 20, slot=1), to_event(outs[2], 30)]
  path = tmp_path / "rlog.zst"
  path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(e.to_bytes() for e in events)))
  got = from_events(LogReader(str(path)))
  assert [(t, o.frame_id) for t, o in got] == [(10, 0), (30, 2)]
  assert [o.frame_id for _, o in from_events(LogReader(str(path)), slot=1)] == [1]
  bad = log.Event.new_message(logMonoTime=40)
  bad.customReservedRawData0 = b"\x00" * 16
  with pytest.raises(FairMessageError, match="logMonoTime 40"):
    from_events(events + [bad])


# ---- invalid inputs and hostile bytes

@pytest.mark.parametrize("change, match", [
  (dict(frame_id=-1), "frame_id"), (dict(timestamp_eof=2**64), "timestamp_eof"),
  (dict(frame_drop_perc=101.0), "frame_drop_perc"), (dict(model_execution_time=float("nan")), "model_execution_time"),
  (dict(invalid_reason="tired"), "invalid_reason"), (dict(model_hash=b"x" * 31), "model_hash"),
  (dict(model_id="a\x00b"), "model_id"), (dict(model_id="\ud800"), "model_id: not encodable"),
  (dict(invalid_detail="x" * 300), "invalid_detail"),
  (dict(depth=np.full((4, 4), np.nan)), "depth"), (dict(depth=np.zeros((4, 4))), "depth"),
  (dict(depth=np.ones(4)), "depth: shape"), (dict(depth=np.ones((300, 4))), "depth: shape"),
  (dict(segmentation=np.full((2, 2), 8)), "segmentation"), (dict(segmentation=np.zeros((2, 2))), "segmentation"),
  (dict(objects=[FairObject(9, 0.5, (0, 0, 1, 1), (0, 0, 0), (0, 0, 0))]), r"objects\[0\].class_id"),
  (dict(objects=[FairObject(4, 1.5, (0, 0, 1, 1), (0, 0, 0), (0, 0, 0))]), r"objects\[0\].score"),
  (dict(objects=[FairObject(4, 0.5, (2, 0, 1, 1), (0, 0, 0), (0, 0, 0))]), r"objects\[0\].box"),
  (dict(objects=[FairObject(4, 0.5, (0, 0, 1, 1), (0, 0, 1e39), (0, 0, 0))]), r"objects\[0\].position\[2\]"),
  (dict(objects=[FairObject(4, 0.5, (0, 0, 1, 1), (0, 0, 0), (0, 0, 0))] * (MAX_OBJECTS + 1)), "objects >"),
  (dict(lanes=Lanes([LaneLine(0.5, np.zeros(3), np.zeros(33), np.zeros(33), np.zeros(33))])), r"lines\[0\].y:"),
  (dict(lanes=Lanes([LaneLine(0.5, *[np.zeros(33)] * 2, -np.ones(33), np.zeros(33))])), r"lines\[0\].y_std"),
  (dict(lanes=Lanes([], x=np.array([1.0, 1.0]))), "increasing"),
  (dict(ego_motion=EgoMotion((0, 0, 0), (0, 0), (0, 0, 0), (0, 0, 0))), "ego_motion.rot"),
])
def test_unencodable_output_raises(change, match):
  with pytest.raises(FairMessageError, match=match):
    encode(replace(FairOutput(), **change))


def tampered(edit) -> bytes:
  m = build_message(realistic_output())
  edit(m)
  return m.to_bytes()


@pytest.mark.parametrize("edit, match", [
  (lambda m: setattr(m, "schemaVersion", 0), "schemaVersion"),
  (lambda m: setattr(m, "valid", False), "valid = False but invalidReason = none"),
  (lambda m: setattr(m.depth, "values", b"\x01" * 10), "depth: 10 bytes for a 64x32 grid, expected 4096"),
  (lambda m: setattr(m.depth, "width", 0), "depth: 4096 bytes for a 0x32 grid"),
  (lambda m: setattr(m.depth, "invDepthScale", -1.0), "invDepthScale"),
  (lambda m: setattr(m.segmentation, "cells", b"\x99" * 4096), "cell value 9"),
  (lambda m: setattr(m.lanes.lines[1], "z", [0.0] * 5), r"lanes.lines\[1\].z: shape \(5,\)"),
  (lambda m: setattr(m.egoMotion, "rot", [0.0]), "egoMotion: list lengths"),
  (lambda m: setattr(m.objects[3], "classId", 200), r"objects\[3\].class_id = 200"),
])
def test_invalid_content_raises(edit, match):
  with pytest.raises(FairMessageError, match=match):
    decode(tampered(edit))


def test_newer_enumerant_reads_as_unknown_and_glued_messages_fail():
  data = tampered(lambda m: (setattr(m, "invalidReason", 42), setattr(m, "valid", False)))
  assert decode(data).invalid_reason == "unknown"
  with pytest.raises(FairMessageError, match="bytes but the message frames"):
    decode(data + data)


# ---- the fast paths: the bytes of the plain build, the verdicts of the per-item checks

def field_by_field(out: FairOutput) -> bytes:
  """`out` encoded the plain way (build_message sets the header field by field, packs the class map through
  a 16-bit view and checks lists vectorised; it must give these bytes, bit for bit)."""
  m = fair_capnp.FairModelOutput.new_message(
    schemaVersion=SCHEMA_VERSION, frameId=int(out.frame_id), frameIdExtra=int(out.frame_id_extra),
    frameAge=int(out.frame_age), frameDropPerc=float(out.frame_drop_perc), timestampEof=int(out.timestamp_eof),
    modelExecutionTime=float(out.model_execution_time), valid=out.valid, invalidReason=out.invalid_reason,
    invalidDetail=out.invalid_detail, modelId=out.model_id, modelHash=bytes(out.model_hash))
  f32 = lambda v: np.asarray(v, np.float32).tolist()
  if out.depth is not None:
    h, w = np.shape(out.depth)
    m.depth = {"width": w, "height": h, "invDepthScale": SCALE, "values": quantize_depth(out.depth, SCALE).tobytes()}
  if out.segmentation is not None:
    s = np.asarray(out.segmentation)
    nib = np.append(np.where(s == 255, 15, s).astype(np.uint8).ravel(), np.zeros(s.size % 2, np.uint8))
    m.segmentation = {"width": s.shape[1], "height": s.shape[0], "cells": (nib[0::2] | nib[1::2] << 4).tobytes()}
  if out.objects is not None:
    for o, b in zip(out.objects, m.init("objects", len(out.objects))):
      b.classId, b.score, b.trackId = int(o.class_id), float(o.score), int(o.track_id)
      b.boxX0, b.boxY0, b.boxX1, b.boxY1 = map(float, o.box)
      b.posX, b.posY, b.posZ = map(float, o.position)
      b.velX, b.velY, b.velZ = map(float, o.velocity)
  if out.lanes is not None:
    m.lanes = {"x": f32(out.lanes.x),
               "lines": [{"prob": float(ln.prob), "y": f32(ln.y), "z": f32(ln.z), "yStd": f32(ln.y_std),
                          "zStd": f32(ln.z_std)} for ln in out.lanes.lines]}
  if out.ego_motion is not None:
    e = out.ego_motion
    m.egoMotion = {"trans": f32(e.trans), "rot": f32(e.rot), "transStd": f32(e.trans_std), "rotStd": f32(e.rot_std)}
  return m.to_bytes()


def largest_output() -> FairOutput:
  """Every list at its cap (odd point and cell counts: padded words), spilling over several segments."""
  rng = np.random.default_rng(3)
  n = 127
  x = np.cumsum(rng.uniform(0.5, 2, n))
  lines = [LaneLine(float(rng.uniform()), rng.normal(0, 5, n), rng.normal(0, 1, n), rng.uniform(0, 3, n),
                    rng.uniform(0, 3, n)) for _ in range(8)]
  objects = [FairObject(int(rng.integers(8)), float(rng.uniform()), (1.0, 2.0, 3.0 + i, 4.0),
                        tuple(rng.normal(0, 9, 3)), tuple(rng.normal(0, 9, 3)), track_id=2**32 - 1 - i)
             for i in range(MAX_OBJECTS)]
  return FairOutput(depth=rng.uniform(0.5, 300, (256, 512)), segmentation=rng.choice([0, 3, 7, 255], (255, 511)),
                    objects=objects, lanes=Lanes(lines, x), ego_motion=EgoMotion(*rng.uniform(0, 1, (4, 3))))


def numpy_typed_output() -> FairOutput:
  """Values of other types than the daemon's Python floats: numpy scalars and arrays, ints, bools, and a long
  double that rounds differently straight to float32 than through float() (objects) or float64 (lists)."""
  f, ld = np.float32, np.longdouble(1) + 2**-24 + 2**-60
  objects = [FairObject(np.int64(4), f(0.5), np.array([1, 2, 3, 4]), [0, ld, np.float64(2.5)], (f(1), 0, -1),
                        np.uint32(7)),
             FairObject(True, 1, (0.0, 0.0, 0.0, 0.0), np.zeros(3, np.float16), np.ones(3), True)]
  x = np.arange(1, 6)  # ints
  lines = [LaneLine(np.float64(0.25), list(map(float, x)), np.zeros(5, np.int32), np.full(5, ld), np.ones(5, f))]
  return FairOutput(frame_id=np.uint32(9), segmentation=np.full((3, 3), 255, np.int64), objects=objects,
                    lanes=Lanes(lines, x), ego_motion=EgoMotion(np.ones(3), [1, 2, 3], (f(0),) * 3, np.ones(3, f)))


@FUZZ
@given(fair_outputs)
def test_encoding_is_the_field_by_field_build(out):
  assert encode(out) == field_by_field(out)


@pytest.mark.parametrize("make", [realistic_output, largest_output, numpy_typed_output,
                                  lambda: FairOutput(objects=[], lanes=Lanes([], np.array([1.0])))])
def test_encoding_is_the_field_by_field_build_at_the_edges(make):
  out = make()
  assert encode(out) == field_by_field(out)


def accepted(check) -> bool:
  try:
    check()
  except Exception:  # FairMessageError, or what numpy raises for an odd value
    return False
  return True


NON_FINITE = (np.nan, np.inf, -np.inf, 3.5e38, -3.5e38)
NEGATIVE = NON_FINITE + (-1.0, -1e-30)  # bad for stds
UNIT_BAD = st.sampled_from([np.nan, -0.1, 1.5, 1, True, np.array([0.5]), np.array([0.5, 0.5]), "0.5", None])


@st.composite
def spoilt(draw, n: int, bad=NON_FINITE):
  """A length-n vector with one bad element, or one of the wrong length or type."""
  v = list(draw(st.tuples(*[floats32] * n)))
  v[draw(st.integers(0, n - 1))] = draw(st.sampled_from(bad))
  return draw(st.sampled_from([tuple(v), np.array(v), v[:-1], v + [0.0], None, "abc", dict(enumerate(v))]))


@st.composite
def broken(draw, valid, bad: dict):
  """A draw of `valid`, half of the time with one field replaced by a draw of its bad (or odd) values."""
  item = draw(valid)
  if draw(st.booleans()):
    name = draw(st.sampled_from(sorted(bad)))
    item = replace(item, **{name: draw(bad[name])})
  return item


BAD_OBJECT = {"class_id": st.sampled_from([-1, 8, 255, True, 4.0, np.int8(3), np.array(4), "4", None]),
              "track_id": st.sampled_from([-1, 2**32, 2**32 - 1, True, np.uint64(5), 1.0, None]), "score": UNIT_BAD,
              "box": spoilt(4) | st.sampled_from([(2.0, 0.0, 1.0, 1.0), (0.0, 2.0, 1.0, 1.0), ("1", "2", "3", "4")]),
              "position": spoilt(3), "velocity": spoilt(3)}


@st.composite
def lane_lines(draw):
  n = draw(st.integers(1, 6))
  arr = lambda el: hnp.arrays(np.float32, n, elements=el)
  line = st.builds(LaneLine, prob=unit, y=arr(floats32), z=arr(floats32), y_std=arr(nonneg), z_std=arr(nonneg))
  bad = {"prob": UNIT_BAD, "y": spoilt(n), "z": spoilt(n), "y_std": spoilt(n, NEGATIVE), "z_std": spoilt(n, NEGATIVE)}
  return draw(st.lists(broken(line, bad), min_size=1, max_size=3)), n


@FUZZ
@given(st.lists(broken(objects, BAD_OBJECT), min_size=1, max_size=3))
@example([FairObject(4.0, 0.5, (0, 0, 1, 1), (0, 0, 0), (0, 0, 0))])
@example([FairObject(4, 0.5, (0, 0, 1, 1), (0, 0, 0), (0, 0, 0), track_id=1.0)])
@example([FairObject(4, 0.5, (0, 0, 1, 1), (0, 0, 0, 0), (0, 0))])  # 10 numbers, but not 4 + 3 + 3
def test_vectorised_object_checks_agree_with_the_per_object_checks(objs):
  assert _objects_ok(objs) == accepted(lambda: _check_objects(objs))


@FUZZ
@given(lane_lines())
def test_vectorised_lane_checks_agree_with_the_per_line_checks(lines_n):
  assert _lines_ok(*lines_n) == accepted(lambda: _check_lines(*lines_n))


@FUZZ
@given(broken(st.builds(EgoMotion, vec3, vec3, st.tuples(nonneg, nonneg, nonneg), st.tuples(nonneg, nonneg, nonneg)),
              {"trans": spoilt(3), "rot": spoilt(3), "trans_std": spoilt(3, NEGATIVE), "rot_std": spoilt(3, NEGATIVE)}))
def test_vectorised_ego_checks_agree_with_the_per_vector_checks(ego):
  assert _ego_ok(ego) == accepted(lambda: _check_ego(ego))


def test_schema_evolution_old_and_new_messages(tmp_path):
  src = Path(SCHEMA_PATH).read_text()
  file_id = fair_capnp.FairModelOutput.schema.node.scopeId
  # a future writer: new file id (to load beside ours), an appended field, enumerant and nested field
  future = (src.replace(f"{file_id:#x}", "0xf00dfeedfacecafe")
            .replace("  egoMotion @16 :EgoMotion;", "  egoMotion @16 :EgoMotion;\n  futureField @17 :Float64;")
            .replace("    unknown @8;", "    unknown @8;\n    futureReason @9;")
            .replace("    velZ @12 :Float32;", "    velZ @12 :Float32;\n    yaw @13 :Float32;"))
  (tmp_path / "future.capnp").write_text(future)
  fut = capnp.load(str(tmp_path / "future.capnp")).FairModelOutput
  out = realistic_output()
  with fut.from_bytes(encode(out)) as r:  # a new reader reads our messages
    assert r.futureField == 0 and r.objects[0].yaw == 0 and r.frameId == out.frame_id
    m = r.as_builder()
  m.futureField, m.objects[0].yaw, m.invalidReason, m.valid = 1.5, 0.3, "futureReason", False
  back = decode(m.to_bytes())  # we read a newer writer's message
  assert_same(replace(out, invalid_reason="unknown"), back)
  # an old writer that knew only the metadata (ordinals @0..@11): every output reads as not produced
  old = src.replace(f"{file_id:#x}", "0xf00dfeedfacecaff")
  old = re.sub(r"\n  # outputs;.*?egoMotion @16 :EgoMotion;\n", "\n", old, flags=re.S)
  (tmp_path / "old.capnp").write_text(old)
  msg = capnp.load(str(tmp_path / "old.capnp")).FairModelOutput.new_message(schemaVersion=1, frameId=7, valid=True)
  back = decode(msg.to_bytes())
  assert back.frame_id == 7 and back.depth is None and back.lanes is None and back.ego_motion is None


GOOD = encode(realistic_output())


def test_every_truncation_raises():
  for n in range(len(GOOD)):
    with pytest.raises(FairMessageError):
      decode(GOOD[:n])


def decodes_to_encodable_or_raises(data: bytes) -> None:
  """The contract for hostile bytes: FairMessageError, or a FairOutput that encode() accepts."""
  try:
    out = decode(data)
  except FairMessageError:
    return
  assert decode(encode(out)) is not None


@FUZZ
@given(st.binary(max_size=256))
def test_garbage_bytes(data):
  decodes_to_encodable_or_raises(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, len(GOOD)))
def test_mutated_messages(edits, keep):
  data = bytearray(GOOD)
  for i, b in edits:
    data[i] = b
  decodes_to_encodable_or_raises(bytes(data[:keep]))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_headers_and_pointers(edits):
  data = bytearray(GOOD)  # the segment table, root struct and pointers live in the first bytes
  for i, b in edits:
    data[i] = b
  decodes_to_encodable_or_raises(bytes(data))

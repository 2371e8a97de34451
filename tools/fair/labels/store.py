"""The label store: teachers' pseudo-labels as sharded safetensors with a manifest (docs/labels.md).

Layout under STORE/:
  manifest.json                                         {"version": 1, "shards": [entry, ...]}
  <teacher>/<segment id>/<first:06d>-<last:06d>.safetensors one shard = consecutive frames of one segment

A segment is known by its id (`segment_id`: the folder name plus a hash of its rlog, pipeline.segment_id), so
two segments whose folders share a name never share labels; stores written before ids use the folder name.
Every path a manifest names must stay inside the store (files.inside), else reading it is a ValueError.

A shard holds "frame_id" (N,) int64 (the frame's index in the segment's road video, i.e. Frame.index and
the simulator's frame number) plus the arrays of its teacher's output type (`convert`). A shard file is
written to a temporary name, fsynced and renamed; only then is its manifest entry, with the file's
sha256, added, and the manifest is itself replaced atomically under a lock (several processes may label
into one store). A crash therefore never leaves a partial file under a shard's name nor a manifest
entry without its file; a file the manifest lost, or one whose bytes no longer match, is relabelled.

Reading is numpy only: torch is imported only by `convert`, which runs next to a teacher anyway.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from selfdrive.modeld_fair.camera import CameraModel
from tools.fair.files import atomic_write, inside, sha256_file
from tools.fair.labels import schema

VERSION = 1
MANIFEST = "manifest.json"
_LOCK = ".manifest.lock"
# what read() pads with when shards of one segment differ in their per-frame K (detections, objects, points)
_PAD = {"class_ids": -1, "positions": np.nan, "boxes": np.nan, "points": np.nan}


class CorruptShardError(ValueError):
  """A shard file is missing or its bytes do not match the sha256 in the manifest."""


@dataclass(frozen=True, eq=False)
class Labels:
  """One teacher output as the arrays a shard stores (without "frame_id") and JSON metadata: `meta` holds
  values of the whole output (class list, layer), `frame_meta` lists with one item per frame."""
  arrays: dict[str, np.ndarray]
  meta: dict[str, Any]
  camera: CameraModel
  frame_meta: dict[str, list] = field(default_factory=dict)


def concat_labels(parts: Sequence[Labels]) -> Labels:
  """Labels of consecutive batches as one (object axes padded as in LabelStore.read)."""
  first = parts[0]
  for p in parts[1:]:
    if p.meta != first.meta or p.camera != first.camera or p.arrays.keys() != first.arrays.keys():
      raise ValueError("labels of one shard must come from one teacher configuration")
  return Labels({k: _concat(k, [p.arrays[k] for p in parts]) for k in first.arrays}, first.meta, first.camera,
                {k: [x for p in parts for x in p.frame_meta[k]] for k in first.frame_meta})


@dataclass(frozen=True)
class ShardEntry:
  """One manifest entry: which teacher, weights and code labelled which frames of which segment."""
  teacher: str
  teacher_class: str                  # module:Class
  weights_hash: str                   # WeightsInfo.sha256
  weights_path: str
  model_id: str | None                # official id when the weights came from the Hugging Face cache
  code_version: str                   # package version + sha256 of the teacher's module
  segment: str                        # segment folder name
  segment_path: str
  frame_ids: tuple[int, int, int]     # first, last, count
  camera: CameraModel                 # the model frame the labels are in
  fields: dict[str, tuple[str, tuple[int, ...]]] = field(hash=False)   # name -> (dtype, shape)
  sha256: str
  created: str                        # ISO 8601, UTC
  file: str                           # shard path relative to the store root
  final: bool                         # the shard ends its segment (the video had no more frames)
  path: Path                          # absolute shard path
  options: dict[str, str] = field(default_factory=dict, hash=False)   # config options (`fair label --teacher-opt`)
  segment_id: str = ""                # the segment's identity in the store (older stores: the folder name)

  @property
  def first(self) -> int:
    return self.frame_ids[0]

  @property
  def last(self) -> int:
    return self.frame_ids[1]

  def to_json(self) -> dict[str, Any]:
    c = self.camera
    return {"teacher": self.teacher, "teacher_class": self.teacher_class, "weights_hash": self.weights_hash,
            "weights_path": self.weights_path, "model_id": self.model_id, "code_version": self.code_version,
            "segment": self.segment, "segment_path": self.segment_path, "frame_ids": list(self.frame_ids),
            "camera": {"name": c.name, "width": c.width, "height": c.height, "focal": c.focal, "cx": c.cx, "cy": c.cy},
            "fields": {k: [d, list(s)] for k, (d, s) in self.fields.items()}, "sha256": self.sha256,
            "created": self.created, "file": self.file, "final": self.final, "options": self.options,
            "segment_id": self.segment_id}

  @staticmethod
  def from_json(d: dict[str, Any], root: Path) -> ShardEntry:
    return ShardEntry(d["teacher"], d["teacher_class"], d["weights_hash"], d["weights_path"], d.get("model_id"),
                      d["code_version"], d["segment"], d["segment_path"], tuple(d["frame_ids"]),
                      CameraModel(**d["camera"]), {k: (t, tuple(s)) for k, (t, s) in d["fields"].items()},
                      d["sha256"], d["created"], d["file"], bool(d.get("final", False)), inside(root, d["file"]),
                      dict(d.get("options", {})), d.get("segment_id", d["segment"]))


@dataclass(frozen=True)
class ShardInfo:
  """What a writer knows about a shard besides its arrays."""
  teacher: str
  teacher_class: str
  weights_hash: str
  weights_path: str
  model_id: str | None
  code_version: str
  segment: str
  segment_path: str
  final: bool
  options: dict[str, str] = field(default_factory=dict, hash=False)   # teacher config options that made the labels
  segment_id: str | None = None       # the segment's identity (None: its folder name)


def shard_name(first: int, last: int) -> str:
  return f"{first:06d}-{last:06d}.safetensors"


class LabelStore:
  """A label store rooted at `root` (created by the first write)."""

  def __init__(self, root: str | Path):
    self.root = Path(root)

  # -- reading

  def _load_manifest(self) -> list[dict[str, Any]]:
    path = self.root / MANIFEST
    if not path.is_file():
      if not self.root.is_dir():
        raise FileNotFoundError(f"label store {self.root} does not exist")
      return []
    try:
      doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
      raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
      found = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
      raise ValueError(f"{path}: manifest version {found!r}, this code reads version {VERSION}")
    if not isinstance(doc.get("shards"), list):
      raise ValueError(f"{path}: no list of shards")
    return doc["shards"]

  def _parsed(self) -> list[tuple[dict[str, Any], ShardEntry]]:
    """The manifest's entries, raw and parsed; ValueError naming the manifest and the entry for an entry that
    lacks a key, has one of the wrong type or a path outside the store."""
    out = []
    for i, d in enumerate(self._load_manifest()):
      try:
        out.append((d, ShardEntry.from_json(d, self.root)))
      except (KeyError, TypeError, AttributeError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"is malformed ({type(e).__name__}: {e})"
        raise ValueError(f"{self.root / MANIFEST}: shard entry {i} {what}") from None
    return out

  def entries(self) -> list[ShardEntry]:
    """Every shard in the manifest, ordered by teacher, segment and first frame."""
    return sorted((e for _, e in self._parsed()), key=lambda e: (e.teacher, e.segment_id, e.first))

  def segments(self, teacher: str) -> list[str]:
    """Ids of the segments with labels from `teacher`, sorted."""
    return sorted({e.segment_id for e in self.entries() if e.teacher == teacher})

  def has(self, teacher: str, segment: str) -> bool:
    """Whether `teacher` labelled `segment` (an id or a folder name, as in `shards`)."""
    return bool(self._matching(teacher, segment))

  def shards(self, teacher: str, segment: str) -> list[ShardEntry]:
    """The shards of one (teacher, segment) in frame order; `segment` is an id (Segment.content_id), or a folder
    name only one labelled segment has. ValueError when there are none, or when the name is ambiguous."""
    out = self._matching(teacher, segment)
    if not out:
      have = ", ".join(self.segments(teacher)) or "none"
      raise ValueError(f"no labels of teacher {teacher!r} for segment {segment!r} in {self.root} (segments: {have})")
    return out

  def _matching(self, teacher: str, segment: str) -> list[ShardEntry]:
    mine = [e for e in self.entries() if e.teacher == teacher]
    out = [e for e in mine if e.segment_id == segment]
    if not out:
      out = [e for e in mine if e.segment == segment]
      ids = sorted({e.segment_id for e in out})
      if len(ids) > 1:
        raise ValueError(f"segment name {segment!r} is ambiguous in {self.root}: use one of the ids {', '.join(ids)}")
    if not out and "@" in segment:   # a store labelled before ids: the id of its entries is the folder name
      out = [e for e in mine if e.segment_id == e.segment == segment.rsplit("@", 1)[0]]
    return out

  def camera(self, teacher: str, segment: str) -> CameraModel:
    """The model frame the labels of (teacher, segment) are in."""
    return self.shards(teacher, segment)[0].camera

  def verify(self, entry: ShardEntry) -> bytes:
    """The shard's bytes after checking them against the manifest's sha256; CorruptShardError otherwise."""
    try:
      data = entry.path.read_bytes()
    except FileNotFoundError:
      raise CorruptShardError(f"shard {entry.path} is in the manifest but missing") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
      raise CorruptShardError(f"shard {entry.path} is corrupt: its sha256 does not match the manifest")
    return data

  def is_intact(self, entry: ShardEntry) -> bool:
    """Whether the shard file exists and matches its manifest sha256 (hashing it in chunks)."""
    return entry.path.is_file() and sha256_file(entry.path) == entry.sha256

  def read(self, teacher: str, segment: str, fields: Sequence[str] | None = None,
           verify: bool = True) -> dict[str, np.ndarray]:
    """All shards of (teacher, segment) concatenated in frame order, "frame_id" included.

    fields: names to return (None: all). verify: check each shard's sha256 first (CorruptShardError naming
    the file). Per-frame object axes (detections' K, video objects, track queries) are padded to the
    largest in the segment: class_ids with -1, boxes/positions/points with NaN, everything else with 0.
    """
    parts = []
    for e in self.shards(teacher, segment):
      data = self.verify(e) if verify else e.path.read_bytes()
      arrays = safetensors.numpy.load(data)
      want = arrays.keys() if fields is None else ["frame_id", *fields]
      missing = sorted(set(want) - arrays.keys())
      if missing:
        raise ValueError(f"{e.path} has no fields {missing} (has: {', '.join(sorted(arrays))})")
      parts.append({k: arrays[k] for k in want})
    return {k: _concat(k, [p[k] for p in parts]) for k in parts[0]}

  def meta(self, teacher: str, segment: str) -> list[dict[str, Any]]:
    """Each shard's metadata (its teacher output's extras: class list, layer, per-frame segments, object ids)."""
    out = []
    for e in self.shards(teacher, segment):
      with open(e.path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
      out.append({k: json.loads(v) for k, v in header.get("__metadata__", {}).items()})
    return out

  # -- writing

  @contextmanager
  def _locked(self) -> Iterator[None]:
    self.root.mkdir(parents=True, exist_ok=True)
    with open(self.root / _LOCK, "a+b") as f:
      fcntl.lockf(f, fcntl.LOCK_EX)   # POSIX record locks also work across machines on NFS
      try:
        yield
      finally:
        fcntl.lockf(f, fcntl.LOCK_UN)

  def write(self, info: ShardInfo, frame_ids: np.ndarray, labels: Labels) -> ShardEntry:
    """Write one shard (frames `frame_ids`, consecutive) and add it to the manifest.

    Entries of the same (teacher, segment) whose frames overlap it are replaced (their files deleted),
    so relabelling with another shard size never leaves two labels for a frame.
    """
    frame_ids = np.asarray(frame_ids, np.int64)
    n = len(frame_ids)
    if n == 0 or not np.array_equal(frame_ids, np.arange(frame_ids[0], frame_ids[0] + n)):
      raise ValueError(f"a shard holds consecutive frames, got {frame_ids.tolist()}")
    for k, a in labels.arrays.items():
      if k == "frame_id" or a.shape[:1] != (n,):
        raise ValueError(f"field {k!r}: expected {n} frames first, got shape {a.shape}")
    schema.check(labels.arrays, labels.camera.height, labels.camera.width, f"teacher {info.teacher!r}")
    for k, v in labels.frame_meta.items():
      if len(v) != n:
        raise ValueError(f"per-frame metadata {k!r}: expected {n} items, got {len(v)}")
    first, last = int(frame_ids[0]), int(frame_ids[-1])
    sid = info.segment_id or info.segment
    rel = Path(info.teacher) / sid / shard_name(first, last)
    arrays = {"frame_id": frame_ids, **{k: np.ascontiguousarray(a) for k, a in labels.arrays.items()}}
    meta = labels.meta | labels.frame_meta
    data = safetensors.numpy.save(arrays, metadata={k: json.dumps(v) for k, v in meta.items()})
    if self.root.is_dir():
      self._parsed()   # a broken manifest is refused before any shard is written next to it
    path = self.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    entry = ShardEntry(info.teacher, info.teacher_class, info.weights_hash, info.weights_path, info.model_id,
                       info.code_version, info.segment, info.segment_path, (first, last, n), labels.camera,
                       {k: (str(a.dtype), tuple(a.shape)) for k, a in arrays.items()}, hashlib.sha256(data).hexdigest(),
                       datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rel.as_posix(),
                       info.final, path, dict(info.options), sid)
    with self._locked():
      kept, dropped = [], []
      for d, e in self._parsed():   # a hostile or broken entry stops the write before anything is replaced
        overlap = e.teacher == info.teacher and e.segment_id == sid and e.first <= last and e.last >= first
        (dropped if overlap else kept).append(d)
      doc = {"version": VERSION, "shards": [*kept, entry.to_json()]}
      atomic_write(self.root / MANIFEST, json.dumps(doc, indent=1).encode())
    for d in dropped:
      if d["file"] != entry.file:
        inside(self.root, d["file"]).unlink(missing_ok=True)
    return entry


def _concat(name: str, parts: list[np.ndarray]) -> np.ndarray:
  if len(parts) == 1:
    return parts[0]
  if len({p.shape[1:] for p in parts}) > 1:   # only the object axis (1) may differ between shards
    k = max(p.shape[1] for p in parts)
    pad = _PAD.get(name, 0)
    parts = [np.concatenate([p, np.full((p.shape[0], k - p.shape[1], *p.shape[2:]), pad, p.dtype)], 1)
             for p in parts]
  return np.concatenate(parts)


# ---- teacher outputs -> shard arrays

def _f16(a: np.ndarray) -> np.ndarray:
  return np.asarray(a, np.float32).astype(np.float16)


def convert(output: Any, camera: CameraModel, classes: Sequence[str] | None = None) -> Labels:
  """A teacher output (any type of tools.fair.teachers.base, or a list of Detections, one per frame) as the
  arrays of the store contract, in model frame `camera` (the teacher's input camera; Detections carry none).
  classes: the detection teacher's class list (default detr.DRIVING_CLASSES); class_ids index into it.
  Floats become float16 except boxes, scores and points (float32)."""
  # imported here: base pulls in torch, which readers of the store must not need
  from tools.fair.teachers import base
  if isinstance(output, list) and all(isinstance(d, base.Detections) for d in output):
    return _detections(output, camera, classes)
  converters = {base.DepthMaps: _depth, base.FeatureMaps: _features, base.SemanticMaps: _semantic,
                base.PanopticMaps: _panoptic, base.FlowMaps: _flow, base.Tracks: _tracks, base.VideoMasks: _video}
  fn = converters.get(type(output))
  if fn is None:
    raise ValueError(f"no label-store converter for {type(output).__name__} outputs")
  if output.camera != camera:
    raise ValueError(f"{type(output).__name__} in the {output.camera.name} frame, expected {camera.name}")
  return fn(output)


def _depth(d) -> Labels:
  return Labels({"depth": _f16(d.depth)}, {}, d.camera)


def _features(f) -> Labels:
  return Labels({"features": _f16(f.features), "cls": _f16(f.cls)}, {"layer": int(f.layer)}, f.camera)


def _semantic(s) -> Labels:
  return Labels({"semantic": np.asarray(s.semantic, np.uint8), "probs": _f16(s.probs)}, {}, s.camera)


def _panoptic(p) -> Labels:
  # per frame: [instance, label, class, score, area] of each segment (the maps alone lose labels and scores)
  segments = [[[s.instance, s.label, s.cls, round(s.score, 4), s.area] for s in frame] for frame in p.segments]
  return Labels({"semantic": np.asarray(p.semantic, np.uint8), "instance": np.asarray(p.instance, np.int32)},
                {}, p.camera, {"segments": segments})


def _flow(f) -> Labels:
  return Labels({"flow": _f16(f.flow), "occlusion": np.asarray(f.occlusion, np.uint8)}, {}, f.camera)


def _tracks(t) -> Labels:
  return Labels({"points": np.asarray(t.points, np.float32), "visible": np.asarray(t.visible, np.uint8)}, {}, t.camera)


def _video(v) -> Labels:
  return Labels({"instance": np.asarray(v.instance, np.int32), "presence": np.asarray(v.presence, np.uint8),
                 "scores": np.asarray(v.scores, np.float32)},
                {"ids": np.asarray(v.ids).astype(int).tolist(), "labels": list(v.labels)}, v.camera)


def _detections(dets: list, camera: CameraModel, classes: Sequence[str] | None) -> Labels:
  if classes is None:
    from tools.fair.teachers.detr import DRIVING_CLASSES
    classes = DRIVING_CLASSES
  index = {c: i for i, c in enumerate(classes)}
  n, k = len(dets), max((len(d.scores) for d in dets), default=0)
  boxes = np.full((n, k, 4), np.nan, np.float32)
  scores = np.zeros((n, k), np.float32)
  class_ids = np.full((n, k), -1, np.int16)
  positions = np.full((n, k, 3), np.nan, np.float32)
  count = np.zeros(n, np.int32)
  for i, d in enumerate(dets):
    m = count[i] = len(d.scores)
    unknown = sorted(set(d.classes) - index.keys())
    if unknown:
      raise ValueError(f"detections of classes {unknown} not in the teacher's class list {list(classes)}")
    boxes[i, :m], scores[i, :m] = d.boxes, d.scores
    class_ids[i, :m] = [index[c] for c in d.classes]
    if d.positions is not None:
      positions[i, :m] = d.positions
  return Labels({"boxes": boxes, "scores": scores, "class_ids": class_ids, "count": count, "positions": positions},
                {"classes": list(classes)}, camera)

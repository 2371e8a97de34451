"""Segments -> teachers -> label store, streamed, batched and resumable.

One pass per segment serves every teacher: a background thread decodes the road video (tools.fair.routes)
and warps each needed frame into the RGB model frame (medmodel_warp.warp_rgb with the frame's own
calibration), grouping frames into batches that never straddle a shard; a bounded queue keeps decode
running while the teachers compute. Shard k holds frames [k*S, (k+1)*S) and is written atomically as soon
as its last batch is labelled, so a killed run loses at most the shards in flight.

  frame teachers (input.clip == 1): batches of B frames
  pair teachers  (input.clip == 2): B pairs (t, t+1), stored at t; the segment's last frame has none
  video teachers (input.clip == 0): each shard's frames as one clip (1, T, H, W, 3)

Resume: a shard in the manifest with the same weights hash, the same shard layout and a file that still
matches its sha256 is not recomputed; a segment whose shards are all there (up to the one flagged final)
is not even decoded. Labels from other weights of the same teacher are an error unless overwrite.
A shard is final only when the video ended where the rlog says it does: labels of a truncated video are
completed by the next run once the video is whole again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
from tools.fair.files import remove_stale_tmp
from tools.fair.labels.store import Labels, LabelStore, ShardEntry, ShardInfo, concat_labels, convert
from tools.fair.progress import progress_bar
from tools.fair.routes import Segment


@dataclass(frozen=True)
class LabelConfig:
  """How frames are batched, sharded and resumed."""
  batch: int = 8              # frames (pairs) per teacher call
  scale: float = 0.5          # model frame = MEDMODEL.scaled(scale): 0.5 -> 256x128
  shard_frames: int = 100     # consecutive frames per shard
  overwrite: bool = False     # relabel everything, also over labels of other weights
  prefetch: int = 4           # batches decoded ahead of the teachers

  def __post_init__(self):
    if self.batch < 1 or self.shard_frames < 1 or self.prefetch < 1:
      raise ValueError(f"batch, shard_frames and prefetch must be >= 1, got {self.batch}, {self.shard_frames}, "
                       f"{self.prefetch}")
    if not self.scale > 0:
      raise ValueError(f"scale must be positive, got {self.scale}")

  @property
  def camera(self) -> CameraModel:
    return model_camera(self.scale)


def model_camera(scale: float) -> CameraModel:
  """The RGB model frame labels are made in: openpilot's medmodel frame at `scale`."""
  return MEDMODEL if scale == 1 else MEDMODEL.scaled(scale)


@dataclass
class LabelReport:
  """What one run did."""
  frames: int = 0                       # frames decoded
  labelled: dict[str, int] = field(default_factory=dict)   # teacher -> frames labelled
  written: list[ShardEntry] = field(default_factory=list)
  skipped_shards: int = 0               # shards found intact in the store
  skipped_segments: int = 0             # segments complete for every teacher (not decoded)
  seconds: float = 0.0
  teacher_seconds: dict[str, float] = field(default_factory=dict)   # teacher -> its calls + conversion + writes

  def teacher_fps(self, name: str) -> float:
    """Frames labelled per second of `name`'s own time (decode and the other teachers excluded)."""
    s = self.teacher_seconds.get(name, 0.0)
    return self.labelled.get(name, 0) / s if s else 0.0

  @property
  def fps(self) -> float:
    return self.frames / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, eq=False)
class Batch:
  """Consecutive model frames of one shard, and what follows them."""
  shard: int
  ids: np.ndarray                  # (n,) int64 frame indices
  frames: np.ndarray | None        # (n, H, W, 3) uint8, None when no teacher needs this shard
  next_frame: np.ndarray | None    # the frame after the batch (pairs across the batch end), None at the end
  shard_end: bool                  # the batch ends its shard (or the segment)
  remaining: int                   # frames after the batch, counted up to 2


def code_version(teacher) -> str:
  """fairpilot's version and a hash of the teacher's module: what, besides the weights, made a label."""
  try:
    version = importlib.metadata.version("fairpilot")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  module = type(teacher).__module__
  src = inspect.getsourcefile(type(teacher))
  digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()[:12] if src else "nosource"
  return f"fairpilot {version} {module}@{digest}"


def segment_frames(segment: Segment, camera: CameraModel,
                   need=lambda i: True) -> Iterator[tuple[int, np.ndarray | None]]:
  """(index, uint8 RGB model frame) for every road frame, warped with the frame's calibration (frames before
  the first liveCalibration use that first one); None instead of the frame where need(index) is False."""
  device, rpy, tables = segment.camera, None, None
  for f in segment.frames("road"):
    if not need(f.index):
      yield f.index, None
      continue
    r = segment.warp_calibration(f)
    if r != rpy:   # calibration changes rarely: build the tables once per value
      rpy, tables = r, warp_tables(device, r, camera, full_chroma=True)
    yield f.index, warp_rgb(f.nv12, tables)


def batches(frames: Iterable[tuple[int, np.ndarray | None]], shard_frames: int, batch: int) -> Iterator[Batch]:
  """Group (index, frame) into Batches of <= `batch` frames within shards of `shard_frames` frame indices,
  looking two frames ahead to know what follows each batch."""
  it = iter(frames)
  ahead: deque = deque()

  def fill(n: int) -> None:
    while len(ahead) < n:
      item = next(it, None)
      if item is None:
        return
      ahead.append(item)

  while True:
    fill(batch + 2)
    if not ahead:
      return
    shard = ahead[0][0] // shard_frames
    take = []
    while ahead and len(take) < batch and ahead[0][0] // shard_frames == shard:
      take.append(ahead.popleft())
    fill(2)
    ids = np.array([i for i, _ in take], np.int64)
    if np.any(np.diff(ids) != 1):
      raise ValueError(f"frame indices not consecutive: {ids.tolist()}")
    # no teacher needs this shard (only, maybe, its first frame to end another shard's last pair)
    frames_ = None if any(f is None for _, f in take) else np.stack([f for _, f in take])
    shard_end = not ahead or ahead[0][0] // shard_frames != shard
    yield Batch(shard, ids, frames_, ahead[0][1] if ahead else None, shard_end, min(len(ahead), 2))


def prefetch(items: Iterable, depth: int) -> Iterator:
  """Iterate `items` on a background thread, at most `depth` items ahead; its exceptions are re-raised here."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def work():
    try:
      for item in items:
        while not stop.is_set():
          try:
            q.put(("item", item), timeout=0.1)
            break
          except queue.Full:
            pass
        if stop.is_set():
          return
      q.put(("end", end))
    except BaseException as e:   # noqa: BLE001 -- handed to the consumer, which raises it
      q.put(("error", e))

  thread = threading.Thread(target=work, name="label-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      kind, item = q.get()
      if kind == "end":
        return
      if kind == "error":
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():   # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(0.05)


class _Job:
  """One teacher's labelling of one segment: which shards it still needs, and their labels so far."""

  def __init__(self, name: str, teacher, info: ShardInfo, done: set[int], cfg: LabelConfig, logged: int | None):
    self.name, self.teacher, self.info, self.done, self.cfg = name, teacher, info, done, cfg
    self.logged = logged   # road frames the rlog logs (None: unknown)
    self.kind = teacher.input.clip
    self.ids: list[np.ndarray] = []
    self.parts: list[Labels] = []
    self.clip: list[tuple[np.ndarray, np.ndarray]] = []   # a video teacher's (ids, frames) of the shard so far

  def needs(self, index: int) -> bool:
    s = self.cfg.shard_frames
    # a pair teacher's shard also needs the first frame of the next shard
    return index // s not in self.done or (self.kind == 2 and index % s == 0 and index > 0
                                           and (index - 1) // s not in self.done)

  def feed(self, b: Batch) -> None:
    if b.shard in self.done:
      return
    if self.kind == 1:
      self._add(b.ids, self.teacher(b.frames))
    elif self.kind == 2:
      seconds = np.concatenate([b.frames[1:], b.next_frame[None]]) if b.next_frame is not None else b.frames[1:]
      if len(seconds):
        self._add(b.ids[:len(seconds)], self.teacher(np.stack([b.frames[:len(seconds)], seconds], 1)))
    elif self.kind == 0:
      self.clip.append((b.ids, b.frames))
    else:
      raise ValueError(f"teacher {self.name!r}: unsupported input.clip {self.kind}")

  def _add(self, ids: np.ndarray, output) -> None:
    self.ids.append(ids)
    self.parts.append(convert(output, self.teacher.input.camera, getattr(self.teacher, "classes", None)))

  def end_shard(self, b: Batch, store: LabelStore) -> ShardEntry | None:
    """Write the shard `b` ended (None when skipped or empty: a pair shard of only the segment's last frame)."""
    if b.shard in self.done:
      return None
    if self.clip:
      ids, frames = (np.concatenate(x) for x in zip(*self.clip))
      self._add(ids, self.teacher(frames[None]))
      self.clip = []
    # a pair shard ends one frame before the video; a video shorter than its log is truncated, not ended
    whole = self.logged is None or int(b.ids[-1]) + 1 + b.remaining >= self.logged
    final = b.remaining <= (1 if self.kind == 2 else 0) and whole
    entry = None
    if self.parts:
      labels = concat_labels(self.parts)
      entry = store.write(dataclasses.replace(self.info, final=final), np.concatenate(self.ids), labels)
    self.ids, self.parts = [], []
    return entry


def segment_id(segment: Segment, existing: Sequence[ShardEntry] = ()) -> str:
  """The segment's identity in a label store: Segment.content_id. A segment labelled before ids existed (an
  entry whose id is its name, at this path) keeps its folder name."""
  path = str(segment.path.resolve())
  if any(e.segment_id == e.segment == segment.path.name and e.segment_path == path for e in existing):
    return segment.path.name
  return segment.content_id


def teacher_info(name: str, teacher, segment: Segment, options: dict[str, str], sid: str | None = None) -> ShardInfo:
  """Provenance of `teacher`'s labels of `segment` under the store name `name` (final: False); sid: the
  segment's id in the store (default: segment_id(segment))."""
  cls = type(teacher)
  w = teacher.weights
  return ShardInfo(name, f"{cls.__module__}:{cls.__qualname__}", w.sha256, str(w.path), w.model_id,
                   code_version(teacher), segment.path.name, str(segment.path.resolve()), False, options,
                   sid or segment_id(segment))


def check_weights(store: LabelStore, teachers: dict, overwrite: bool, options: dict | None = None) -> None:
  """ValueError when the store holds labels of a teacher made with other weights or other config options
  (name -> {field: text}, as recorded in ShardEntry.options), unless overwrite."""
  if overwrite or not (store.root / "manifest.json").is_file():
    return
  options = options or {}
  for e in store.entries():
    if e.teacher in teachers and e.weights_hash != teachers[e.teacher].weights.sha256:
      raise ValueError(f"{store.root} holds {e.teacher!r} labels made with weights {e.weights_hash[:12]} "
                       f"({e.weights_path}); these are {teachers[e.teacher].weights.sha256[:12]} "
                       f"({teachers[e.teacher].weights.path}): use another store, or --overwrite to relabel")
    if e.teacher in teachers and e.options != options.get(e.teacher, {}):
      raise ValueError(f"{store.root} holds {e.teacher!r} labels made with options {e.options}; these are "
                       f"{options.get(e.teacher, {})}: use another store, or --overwrite to relabel")


def done_shards(store: LabelStore, entries: list[ShardEntry], teacher, cfg: LabelConfig) -> tuple[set[int], bool]:
  """Shard numbers of one (teacher, segment) already in the store with these weights, this layout and an
  intact file; and whether they cover the whole segment (0..final without a gap)."""
  s, done, final = cfg.shard_frames, set(), None
  for e in entries:
    aligned = e.first % s == 0 and (e.frame_ids[2] == s or e.final)
    if aligned and e.weights_hash == teacher.weights.sha256 and e.camera == cfg.camera and store.is_intact(e):
      done.add(e.first // s)
      if e.final:
        final = e.first // s
  return done, final is not None and done >= set(range(final + 1))


def label_segments(segments: Sequence[str | Path], teachers: dict, store: LabelStore, cfg: LabelConfig = LabelConfig(),
                   progress: bool = True, options: dict[str, dict[str, str]] | None = None) -> LabelReport:
  """Label `segments` (folders) with `teachers` (name -> loaded teacher whose input camera is cfg.camera)
  into `store`; returns what was done. Resumes from the store (module docstring). options: per teacher, the
  config options it was loaded with (recorded in every shard; labels of other options are an error)."""
  for name, t in teachers.items():
    if t.input.camera != cfg.camera:
      raise ValueError(f"teacher {name!r} takes {t.input.camera.name} frames, the labels are in {cfg.camera.name}")
  options = {name: dict((options or {}).get(name, {})) for name in teachers}
  check_weights(store, teachers, cfg.overwrite, options)
  remove_stale_tmp(store.root)   # shards and manifests of killed runs
  existing = store.entries() if (store.root / "manifest.json").is_file() else []
  segs = [Segment(p) for p in segments]
  total = sum(len(s.of_type("roadEncodeIdx")) for s in segs) or None
  report = LabelReport(labelled={n: 0 for n in teachers}, teacher_seconds={n: 0.0 for n in teachers})
  t0 = time.perf_counter()
  bar = progress_bar(total=total, unit="frame", desc="fair label", disable=not progress, dynamic_ncols=True)
  try:
    for seg in segs:
      jobs, complete, sid = [], True, segment_id(seg, existing)
      logged = seg.logged_frames("road")
      for name, t in teachers.items():
        mine = [e for e in existing if e.teacher == name and e.segment_id == sid]
        done, whole = (set(), False) if cfg.overwrite else done_shards(store, mine, t, cfg)
        report.skipped_shards += len(done)
        complete &= whole
        jobs.append(_Job(name, t, teacher_info(name, t, seg, options[name], sid), done, cfg, logged))
      if complete:
        report.skipped_segments += 1
        bar.update(len(seg.of_type("roadEncodeIdx")))
        continue
      bar.set_postfix_str(seg.path.name, refresh=False)
      frames = segment_frames(seg, cfg.camera, lambda i: any(j.needs(i) for j in jobs))
      for b in prefetch(batches(frames, cfg.shard_frames, cfg.batch), cfg.prefetch):
        for j in jobs:
          t1 = time.perf_counter()
          j.feed(b)
          if b.shard not in j.done:
            report.labelled[j.name] += len(b.ids)
          if b.shard_end and (entry := j.end_shard(b, store)) is not None:
            report.written.append(entry)
          report.teacher_seconds[j.name] += time.perf_counter() - t1
        report.frames += len(b.ids)
        bar.update(len(b.ids))
  finally:
    bar.close()
  report.seconds = time.perf_counter() - t0
  return report

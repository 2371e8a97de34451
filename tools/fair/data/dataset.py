"""The student's training samples (the batch contract, docs/data.md): frame cache + ground truth and/or
pseudo labels -> raw sample -> augmentation -> targets -> dict of torch tensors.

  ds = StudentDataset(FrameCache(path), labels="labels/", teachers={"depth": "dpt-depth"}, use_gt=False)
  ds = build({"cache": "cache/", "labels": None, "use_gt": True, "augment": "default"}, "train")
  ds = build(load_recipe("recipe.toml").data, "train")

use_gt=False: every target comes from the label store only (the cache's ground truth is never read).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selfdrive.modeld_fair.camera import DEFAULT_CAMERA_HEIGHT, MEDMODEL
from selfdrive.modeld_fair.model_io import OBJECT_CLASSES
from tools.fair.data.augment import Augment, AugmentConfig
from tools.fair.data.box_distance import depth_in_box, ground_contact_depth
from tools.fair.data.cache import FrameCache
from tools.fair.data.targets import boxes_from_masks, fill_lanes, lane_span, sample_targets
from tools.fair.labels.schema import check_entry

TASKS = ("depth", "seg", "panoptic", "detection", "features", "lanes", "ego")
_GT_FIELDS = ("depth", "semantic", "box_xyxy", "box_cls", "box_count", "box_pos", "lanes", "lane_visible",
              "lane_exists", "ego")
# (teacher, segment) label arrays kept per process: shuffled sampling touches every segment each epoch, and a miss
# re-reads and re-hashes whole shards (~50 MB of soft labels per 100 frames): keep every (teacher, segment) of a
# few dozen segments (a few hundred MB)
_LABEL_CACHE = 64


def _detection_class_map(classes: list[str]) -> np.ndarray:
  """Teacher class index -> model_io.OBJECT_CLASSES index (-1: not a vehicle / pedestrian)."""
  from tools.fair.teachers.detr import COCO_TO_SEMANTIC  # only for detection teachers (pulls in torch)
  return np.array([OBJECT_CLASSES.index(COCO_TO_SEMANTIC[c]) if COCO_TO_SEMANTIC.get(c) in OBJECT_CLASSES else -1
                   for c in classes] + [-1], np.int64)  # the extra entry maps padding (-1) to -1


def _check_teachers(labels, teachers: Mapping[str, str]) -> None:
  """ValueError (one line: teacher, key, expected shape) unless every task's teacher has shards in the store
  of a kind that task reads (labels/schema.py)."""
  entries = labels.entries()
  for task, teacher in teachers.items():
    mine = [e for e in entries if e.teacher == teacher]
    if not mine:
      have = ", ".join(sorted({e.teacher for e in entries})) or "none"
      raise ValueError(f"label store {labels.root} has no labels of teacher {teacher!r} (task {task}; has: {have})")
    for e in mine:
      check_entry(e, task)


class StudentDataset(Dataset):
  """Samples of a FrameCache as batch-contract dicts (see the module docstring and docs/data.md).

  labels: a LabelStore root (or store) with `teachers` {task: teacher name} for tasks in TASKS;
  features_teacher: shorthand for teachers["features"]. use_gt: targets from the cache's ground truth
  (simulated segments), with the store adding only soft seg probabilities and features; False: targets
  from the store only. augment: an Augment (or AugmentConfig). indices: the cache records to use (a split).
  Item i is deterministic given (seed, epoch, i); set_epoch changes the augmentation draw.
  """

  def __init__(self, cache, labels=None, teachers: Mapping[str, str] | None = None, use_gt: bool = True,
               augment=None, features_teacher: str | None = None, seed: int = 0, indices=None):
    self.cache = cache if isinstance(cache, FrameCache) else FrameCache(cache)
    self.teachers = dict(teachers or {})
    if features_teacher is not None:
      self.teachers["features"] = features_teacher
    unknown = sorted(set(self.teachers) - set(TASKS))
    if unknown:
      raise ValueError(f"unknown teacher tasks {unknown} (valid: {', '.join(TASKS)})")
    if self.teachers and labels is None:
      raise ValueError(f"teachers {self.teachers} given without a label store")
    if labels is not None and not hasattr(labels, "read"):
      from tools.fair.labels.store import LabelStore
      labels = LabelStore(labels)
    self.labels = labels
    if self.teachers:
      _check_teachers(labels, self.teachers)
    self.use_gt = bool(use_gt)
    self.augment = Augment(augment) if isinstance(augment, AugmentConfig) else augment
    self.seed = int(seed)
    self.epoch = 0
    self.indices = np.arange(len(self.cache)) if indices is None else np.asarray(indices, np.int64)
    self._loaded: OrderedDict = OrderedDict()
    self._heights: dict[str, float] = {}
    if not self.use_gt and not self.teachers:
      raise ValueError("use_gt=False needs teachers: without ground truth the targets come from the label store")

  def __len__(self) -> int:
    return len(self.indices)

  def set_epoch(self, epoch: int) -> None:
    self.epoch = int(epoch)

  def record(self, i: int):
    """The cache FrameRecord of item i (segment, frame, scenario: for reports)."""
    return self.cache.records[int(self.indices[i])]

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_loaded"] = OrderedDict()  # each DataLoader worker loads its own labels
    return state

  # -- labels

  def _teacher_frame(self, task: str, segment: str, frame_index: int):
    """(arrays of this frame, label camera, shard metadata) from the task's teacher, or None when unlabelled."""
    teacher = self.teachers.get(task)
    if teacher is None:
      return None
    key = (teacher, segment)
    if key not in self._loaded:
      if not self.labels.has(teacher, segment):
        entry = None
      else:
        arrays = self.labels.read(teacher, segment)
        rows = {int(f): r for r, f in enumerate(arrays["frame_id"])}
        entry = (arrays, rows, self.labels.camera(teacher, segment), self.labels.meta(teacher, segment)[0])
      self._loaded[key] = entry
      while len(self._loaded) > _LABEL_CACHE:
        self._loaded.popitem(last=False)
    self._loaded.move_to_end(key)
    entry = self._loaded[key]
    if entry is None or frame_index not in entry[1]:
      return None
    arrays, rows, camera, meta = entry
    r = rows[frame_index]
    return {k: v[r] for k, v in arrays.items()}, camera, meta

  def raw(self, i: int) -> dict[str, np.ndarray]:
    """Item i before augmentation and targets: yuv pair, dense maps, boxes (MEDMODEL px), lanes, ego."""
    rec = self.cache.records[int(self.indices[i])]
    s: dict[str, np.ndarray] = {}
    s.update(self.cache.read(rec.index, ["yuv", "yuv_prev"]))
    if self.use_gt and rec.has_gt:
      g = self.cache.read(rec.index, _GT_FIELDS)
      n = int(g["box_count"])
      s.update(depth=g["depth"].astype(np.float32), semantic=g["semantic"], box_xyxy=g["box_xyxy"][:n],
               box_cls=g["box_cls"][:n].astype(np.int64), box_depth=g["box_pos"][:n, 0], box_pos=g["box_pos"][:n],
               lanes=g["lanes"], lane_visible=lane_span(g["lane_visible"], g["lane_exists"]),  # exact everywhere
               lane_exists=g["lane_exists"], ego=g["ego"])
    have_gt = "depth" in s
    lab = {t: self._teacher_frame(t, rec.segment, rec.frame_index) for t in self.teachers}
    if lab.get("depth") and not have_gt:
      s["depth"] = lab["depth"][0]["depth"].astype(np.float32)
    for task in ("seg", "panoptic"):
      if lab.get(task):
        a = lab[task][0]
        if not have_gt and "semantic" not in s:
          s["semantic"] = a["semantic"]
          if "instance" in a:
            s["instance"] = a["instance"]
        if "probs" in a:
          s["probs"] = a["probs"].astype(np.float32)
    if lab.get("features"):
      s["features"] = lab["features"][0]["features"].astype(np.float32)
    if lab.get("ego") and not have_gt:
      s["ego"] = lab["ego"][0]["ego"].astype(np.float32)   # labels/ego.py
    if lab.get("lanes") and not have_gt:
      a = lab["lanes"][0]
      s.update(lanes=fill_lanes(a["lanes"], a["visible"], a["exists"]),   # lanes.write_labels
               lane_visible=lane_span(a["visible"], a["exists"]), lane_exists=a["exists"])
    if not have_gt:
      s.update(self._pseudo_boxes(s, lab.get("detection"), rec))
    return s

  def _box_depth(self, boxes: np.ndarray, stored: np.ndarray, depth: np.ndarray | None, rec) -> np.ndarray:
    """Distances of detector boxes (MEDMODEL px): the detector's stored positions; where those are NaN (a
    detector labels without depth) the depth teacher's median in the box; else the box's ground contact on
    the flat road below the calibrated camera (the segment's device height)."""
    d = np.asarray(stored, np.float32).copy()
    if depth is not None and np.isnan(d).any():
      k = depth.shape[1] / MEDMODEL.width
      d = np.where(np.isnan(d), depth_in_box((boxes + 0.5) * k - 0.5, depth), d)
    if np.isnan(d).any():
      d = np.where(np.isnan(d), ground_contact_depth(boxes, MEDMODEL, self._height(rec.segment)), d)
    return d

  def _height(self, segment: str) -> float:
    """The device height above the road of a segment labelled by the detection teacher (lanes.segment_height)."""
    if segment not in self._heights:
      from tools.fair.lanes.pipeline import segment_height
      from tools.fair.routes import Segment
      path = self.labels.shards(self.teachers["detection"], segment)[0].segment_path
      known = bool(path) and Path(path).is_dir()   # a store moved off its segments: openpilot's default height
      self._heights[segment] = segment_height(Segment(path)) if known else DEFAULT_CAMERA_HEIGHT
    return self._heights[segment]

  def _pseudo_boxes(self, s: dict, det, rec) -> dict[str, np.ndarray]:
    """Boxes from a detection teacher (distances: _box_depth), else connected components of the seg
    teacher's object classes with the depth teacher's depth."""
    if det is not None:
      a, camera, meta = det
      n = int(a["count"])
      k = camera.width / 512
      boxes = (a["boxes"][:n].astype(np.float64) + 0.5) / k - 0.5
      cls = _detection_class_map(meta.get("classes", []))[a["class_ids"][:n].astype(np.int64)]
      return {"box_xyxy": boxes.astype(np.float32), "box_cls": cls,
              "box_depth": self._box_depth(boxes, a["positions"][:n, 0], s.get("depth"), rec)}
    if "semantic" in s and "depth" in s:
      b, c, d = boxes_from_masks(s["semantic"], s["depth"], s.get("instance"))
      return {"box_xyxy": b, "box_cls": c, "box_depth": d}
    return {}

  def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
    if not -len(self) <= i < len(self):
      raise IndexError(f"item {i} out of range: the dataset has {len(self)} items")
    i = int(i) % len(self)
    s = self.raw(i)
    if self.augment is not None:
      s = self.augment(s, np.random.default_rng([self.seed, self.epoch, i]))
    out = {"img": torch.from_numpy(np.concatenate([s["yuv_prev"], s["yuv"]])),
           "index": torch.tensor(i, dtype=torch.int64)}
    for k, v in sample_targets(s).items():
      out[k] = torch.from_numpy(np.ascontiguousarray(v))
    if "features" in s:
      out["features"] = torch.from_numpy(np.ascontiguousarray(s["features"], np.float32))
    return out


def split_indices(cache: FrameCache, split: str, val_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
  """Record indices of a split, by whole segments (neighbouring frames never straddle train and val):
  round(val_fraction * segments) (>= 1) seeded-random segments are "val". A cache of one segment splits
  its frames instead (the last val_fraction of them are "val")."""
  if split not in ("train", "val", "all"):
    raise ValueError(f"split must be train, val or all, got {split!r}")
  n = len(cache)
  if split == "all":
    return np.arange(n)
  segs = np.array([r.segment for r in cache.records])
  names = list(dict.fromkeys(segs))
  if len(names) > 1:
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    val = set(np.random.default_rng(seed).permutation(names)[:n_val])
    is_val = np.array([s in val for s in segs], bool)
  else:
    is_val = np.arange(n) >= n - max(1, round(val_fraction * n))
  return np.flatnonzero(is_val if split == "val" else ~is_val)


def build(config, split: str) -> StudentDataset | None:
  """The dataset of a training recipe (the distillation recipe hook calls this).

  config: a recipe's [data] section (tools.fair.distill.recipe.DataSection), or a mapping as below.
  A section's `train` / `val` name one frame cache each; without `val`, a val_fraction > 0 splits the training
  cache by segments (split_indices) and "val" is that part; without either, "val" is None.

  mapping keys: cache (path, required); labels (store path or None); teachers ({task: teacher name}, tasks
  in TASKS); use_gt (bool, default True); augment (None / "none" / "default" / "photometric" / "geometric",
  or {"name": ..., **AugmentConfig fields}; used for "train" only); val_fraction (default 0.1); seed (0).
  split: "train", "val" or "all". Returns a StudentDataset whose items follow the batch contract.
  """
  if isinstance(config, Mapping):
    return _build(config, split, augmented=split == "train")
  d = config
  common = {"labels": d.labels, "teachers": dict(d.teachers), "use_gt": d.use_gt, "augment": d.augment}
  if split == "val" and d.val:
    paths, part = d.val, "all"
  elif d.val_fraction > 0 and d.train:
    paths, part = d.train, split
  else:
    paths, part = (d.train, "all") if split == "train" else ((), "all")
  if not paths:
    return None
  if len(paths) > 1:
    raise ValueError(f"[data] {split}: one frame cache per split, got {len(paths)}")
  return _build({**common, "cache": paths[0], "val_fraction": d.val_fraction}, part, augmented=split == "train")


def _build(config: Mapping, split: str, augmented: bool) -> StudentDataset:
  if "cache" not in config:
    raise ValueError("data config needs 'cache' (a frame cache folder)")
  cache = FrameCache(Path(config["cache"]))
  aug = config.get("augment")
  if isinstance(aug, Mapping):
    params = dict(aug)
    aug = AugmentConfig.named(params.pop("name", "default"), **params)
  else:
    aug = AugmentConfig.named(aug)
  seed = int(config.get("seed", 0))
  idx = split_indices(cache, split, float(config.get("val_fraction", 0.1)), seed)
  return StudentDataset(cache, labels=config.get("labels"), teachers=config.get("teachers"),
                        use_gt=bool(config.get("use_gt", True)), augment=aug if augmented else None,
                        seed=seed, indices=idx)

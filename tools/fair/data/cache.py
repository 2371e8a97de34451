"""The frame cache: every kept frame of a set of segments, decoded once, in the calibrated model frame.

Per frame: "yuv" (6, 128, 256) uint8 made by the daemon's own warp (warp_model_input), "rgb" (H, W, 3)
uint8 at the cache scale (the teachers' input, warp_rgb) and, for simulated segments (scene.json), the
ground truth rendered in the model frame at that scale. Layout under OUT/:

  cache.json                                   {"version", "scale", "every", "max_frames", "instance"}
  index.json                                   segments in order + one record per frame (rewritten atomically)
  <id>/<first:06d>-<last:06d>.safetensors      one shard = up to `shard_frames` consecutive kept frames
  <id>/segment.json                            written last: the segment is finished (resume skips it)

<id> is Segment.content_id (folder name @ rlog sha256[:12]), the key of the label store too: two segment
folders of one name stay apart.

Shard tensors (N frames, K = most boxes on a frame of the shard):
  frame_id, frame_index (N,) int64; calib (N, 3) float32; yuv (N, 6, 128, 256) uint8; rgb (N, H, W, 3) uint8;
  yuv_prev (N, 6, 128, 256) uint8 only when every > 1 (the video frame before each kept frame, so that the
  student's frame pair stays 50 ms apart);
  ground truth: depth (N, H, W) float16 metres along the optical axis (0 = sky), semantic (N, H, W) uint8,
  instance (N, H, W) int32 (optional), box_xyxy (N, K, 4) float32 in MEDMODEL pixels (512x256 frame, pixel
  edges, whatever the cache scale), box_cls (N, K) int16 (model_io.OBJECT_CLASSES index, -1 = padding),
  box_id (N, K) int32, box_visible (N, K) float32, box_pos / box_vel / box_rel_vel (N, K, 3) float32 (road
  frame centre, velocity over ground and relative to the ego), box_count (N,) int32, lanes (N, 4, 33, 2)
  float32 road-frame y, z at model_io.LANE_X, lane_visible (N, 4, 33) uint8, lane_exists (N, 4) uint8,
  ego (N, 6) float32 device-frame trans (m/s), rot (rad/s).
"""
from __future__ import annotations

import json
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from selfdrive.modeld_fair.medmodel_warp import warp_model_input, warp_rgb, warp_tables
from selfdrive.modeld_fair.model_io import N_LANE_POINTS, N_LANES, OBJECT_CLASSES
from tools.fair.files import atomic_write, remove_stale_tmp
from tools.fair.progress import progress_bar
from tools.fair.routes import Segment

CACHE_VERSION = 2   # 2: segments keyed by content id
YUV_SHAPE = (6, 128, 256)


@dataclass(frozen=True)
class CacheConfig:
  """What a cache holds; a resumed build must use the same values."""
  scale: float = 0.5         # RGB and ground-truth resolution relative to MEDMODEL (0.5: 256x128)
  every: int = 1             # keep video frames 0, every, 2*every, ...
  max_frames: int | None = None  # at most this many kept frames per segment (None: all)
  instance: bool = True      # store the instance map (4 bytes per pixel)
  shard_frames: int = 100

  def __post_init__(self):
    w, h = MEDMODEL.width * self.scale, MEDMODEL.height * self.scale
    if not 0 < self.scale <= 1 or abs(w - round(w)) > 1e-6 or abs(h - round(h)) > 1e-6:
      raise ValueError(f"scale must be in (0, 1] and give an integer model frame size, got {self.scale}")
    if self.every < 1 or self.shard_frames < 1 or (self.max_frames is not None and self.max_frames < 1):
      raise ValueError(f"every, shard_frames and max_frames must be >= 1, got {self.every}, {self.shard_frames}, "
                       f"{self.max_frames}")

  @property
  def camera(self) -> CameraModel:
    return MEDMODEL.scaled(self.scale)

  def key(self) -> dict:
    """The fields that define the cached content (shard_frames only changes the file split)."""
    d = asdict(self)
    d.pop("shard_frames")
    return d


@dataclass(frozen=True)
class FrameRecord:
  """One cached frame. prev: the record of the previous kept frame of the segment (itself for the first)."""
  index: int
  segment: str
  frame_id: int
  frame_index: int
  camera: str        # device camera name (tici / mici)
  scenario: str      # the simulator's scenario, or "real"
  prev: int
  shard: str         # path of the shard relative to the cache root
  row: int
  has_gt: bool


def _atomic_save(tensors: dict[str, np.ndarray], path: Path) -> None:
  atomic_write(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))


def lane_slots(lines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The student's 4 lane slots (left-left, left, right, right-right) from gt.LaneLine's of a road: the
  lines nearest the ego on each side, by lateral offset at x = 0. Returns lanes (4, 33, 2) y, z, visible
  (4, 33) uint8 and exists (4,) uint8 (a line of kind "none" has no paint: it does not exist)."""
  lanes = np.zeros((N_LANES, N_LANE_POINTS, 2), np.float32)
  visible = np.zeros((N_LANES, N_LANE_POINTS), np.uint8)
  exists = np.zeros(N_LANES, np.uint8)
  left = sorted((ln for ln in lines if ln.points[0, 1] < 0), key=lambda ln: -ln.points[0, 1])[:2]
  right = sorted((ln for ln in lines if ln.points[0, 1] >= 0), key=lambda ln: ln.points[0, 1])[:2]
  for slot, ln in [(1 - i, ln) for i, ln in enumerate(left)] + [(2 + i, ln) for i, ln in enumerate(right)]:
    real = ln.kind != "none"
    lanes[slot] = ln.points[:, 1:3]
    visible[slot] = ln.visible & real
    exists[slot] = real
  return lanes, visible, exists


def to_medmodel_px(x: np.ndarray, scale: float) -> np.ndarray:
  """Pixel coordinates of a MEDMODEL.scaled(scale) frame in the full MEDMODEL frame (centres stay centres)."""
  return (np.asarray(x, np.float64) + 0.5) / scale - 0.5


def frame_ground_truth(scene, f: int, camera: CameraModel, scale: float,
                       instance: bool = True) -> dict[str, np.ndarray]:
  """Ground truth of scene frame f in the model frame `camera` (MEDMODEL.scaled(scale)), as cache tensors.

  Renders once (no optical flow: that would render the next frame too)."""
  from tools.fair.sim.gt import boxes_2d, boxes_3d, ego_state, lane_lines
  from tools.fair.sim.render import render_frame
  r = render_frame(scene, f, camera, (0.0, 0.0, 0.0))
  b2 = boxes_2d(scene, r)
  b3 = {b.id: b for b in boxes_3d(scene, f)}
  k = max(len(b2), 1)
  xyxy = np.zeros((k, 4), np.float32)
  cls = np.full(k, -1, np.int16)
  ids = np.zeros(k, np.int32)
  vis = np.zeros(k, np.float32)
  pos, vel, rel = (np.full((k, 3), np.nan, np.float32) for _ in range(3))
  for i, b in enumerate(b2):
    xyxy[i] = to_medmodel_px(b.xyxy, scale)
    cls[i], ids[i], vis[i] = OBJECT_CLASSES.index(b.cls), b.id, b.visible_fraction
    if b.id in b3:
      pos[i], vel[i], rel[i] = b3[b.id].centre, b3[b.id].velocity, b3[b.id].rel_velocity
  lanes, lane_visible, lane_exists = lane_slots(lane_lines(scene, f, r))
  ego = ego_state(scene, f)
  out = {"depth": np.where(np.isfinite(r.depth), r.depth, 0).astype(np.float16), "semantic": r.semantic,
         "box_xyxy": xyxy, "box_cls": cls, "box_id": ids, "box_visible": vis, "box_pos": pos, "box_vel": vel,
         "box_rel_vel": rel, "box_count": np.int32(len(b2)), "lanes": lanes, "lane_visible": lane_visible,
         "lane_exists": lane_exists, "ego": np.concatenate([ego.trans, ego.rot]).astype(np.float32)}
  if instance:
    out["instance"] = r.instance
  return out


def _stack(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stack per-frame tensors; box tensors are padded to the shard's largest box count."""
  out = {}
  for key in frames[0]:
    vals = [np.asarray(fr[key]) for fr in frames]
    if key.startswith("box_") and key != "box_count":
      k = max(v.shape[0] for v in vals)
      fill = -1 if key == "box_cls" else (np.nan if vals[0].dtype.kind == "f" and key != "box_xyxy" else 0)
      vals = [np.concatenate([v, np.full((k - len(v),) + v.shape[1:], fill, v.dtype)]) for v in vals]
    out[key] = np.stack(vals)
  return out


def cache_segment(path, out_dir, config: CacheConfig, progress: bool = False) -> dict:
  """Cache one segment folder into out_dir/<content id>/ (shards, then segment.json last; the id keys the label
  store too). Returns segment.json's content. A finished segment with the same config is not redone."""
  path, out_dir = Path(path), Path(out_dir)
  seg = Segment(path)
  seg_dir = out_dir / seg.content_id
  done = seg_dir / "segment.json"
  if done.is_file():
    meta = json.loads(done.read_text())
    if meta.get("config") == config.key() and meta.get("version") == CACHE_VERSION:
      return meta
  seg.check_calibration()
  seg_dir.mkdir(parents=True, exist_ok=True)
  scene = None
  if seg.scene_path is not None:
    from tools.fair.sim.gt import load_segment_scene
    scene = load_segment_scene(path)
  cam_k = config.camera
  tables: dict = {}
  records, pending, shards = [], [], []
  prev_yuv = None

  def flush():
    name = f"{pending[0]['frame_index']:06d}-{pending[-1]['frame_index']:06d}.safetensors"
    _atomic_save(_stack(pending), seg_dir / name)
    shards.append(name)
    for row, fr in enumerate(pending):
      records.append({"frame_id": int(fr["frame_id"]), "frame_index": int(fr["frame_index"]), "shard": name,
                      "row": row})
    pending.clear()

  n_kept = 0
  bar = progress_bar(desc=path.name, unit="frame", disable=not progress, total=None if scene is None else scene.n_frames)
  for frame in seg.frames("road"):
    bar.update(1)
    keep = frame.index % config.every == 0
    need_prev = config.every > 1 and (frame.index + 1) % config.every == 0
    if not (keep or need_prev):
      continue
    rpy = seg.warp_calibration(frame)
    if rpy not in tables:
      tables[rpy] = (warp_tables(seg.camera, rpy), warp_tables(seg.camera, rpy, cam_k, full_chroma=True))
    yuv_t, rgb_t = tables[rpy]
    yuv = warp_model_input(frame.nv12, yuv_t)
    if keep:
      fr = {"frame_id": np.int64(frame.frame_id if frame.frame_id is not None else frame.index),
            "frame_index": np.int64(frame.index), "calib": np.array(rpy, np.float32), "yuv": yuv,
            "rgb": warp_rgb(frame.nv12, rgb_t)}
      if config.every > 1:
        fr["yuv_prev"] = prev_yuv if prev_yuv is not None else yuv  # the first frame pairs with itself
      if scene is not None:
        if frame.index >= scene.n_frames:
          raise ValueError(f"{path}: video frame {frame.index} beyond the scene's {scene.n_frames} frames")
        fr.update(frame_ground_truth(scene, frame.index, cam_k, config.scale, config.instance))
      pending.append(fr)
      n_kept += 1
      if len(pending) == config.shard_frames:
        flush()
      if config.max_frames is not None and n_kept >= config.max_frames:
        break
    prev_yuv = yuv if need_prev else None
  bar.close()
  if pending:
    flush()
  if not records:
    warnings.warn(f"{path}: no frames decoded", stacklevel=2)
  meta = {"version": CACHE_VERSION, "config": config.key(), "segment": seg.content_id, "name": path.name,
          "path": str(path.resolve()),
          "camera": seg.camera.name, "scenario": scene.scenario if scene is not None else "real",
          "has_gt": scene is not None, "shards": shards, "frames": records}
  atomic_write(done, json.dumps(meta))
  return meta


def _write_index(out_dir: Path, config: CacheConfig, metas: list[dict]) -> None:
  atomic_write(out_dir / "index.json", json.dumps({"version": CACHE_VERSION, "config": config.key(),
                                                          "segments": metas}))


def build_frame_cache(segments, out_dir, scale: float = 0.5, every: int = 1, workers: int = 1,
                      max_frames: int | None = None, instance: bool = True, shard_frames: int = 100,
                      progress: bool = True) -> FrameCache:
  """Decode each segment folder once into the frame cache at out_dir (see the module docstring).

  Resumable: finished segments (segment.json with the same settings) are skipped; a cache built with other
  settings raises ValueError. workers > 1 caches segments in parallel (spawned) processes: a calling
  script needs the `if __name__ == "__main__":` guard. Returns the FrameCache.
  """
  config = CacheConfig(scale, every, max_frames, instance, shard_frames)
  paths = [Path(s) for s in segments]
  for p in paths:
    if not p.is_dir():
      raise FileNotFoundError(f"segment folder {p} does not exist")
  ids = [Segment(p).content_id for p in paths]
  if len(set(ids)) != len(ids):
    twice = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f"the same segment given twice (same folder name and rlog): {', '.join(twice)}")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  remove_stale_tmp(out_dir)   # shards and index files of killed runs
  cfg_path = out_dir / "cache.json"
  if cfg_path.is_file():
    old = json.loads(cfg_path.read_text())
    if old != {"version": CACHE_VERSION, **config.key()}:
      raise ValueError(f"{out_dir} holds a cache built with {old}; asked for {config.key()}: use another folder")
  else:
    atomic_write(cfg_path, json.dumps({"version": CACHE_VERSION, **config.key()}))
  metas: list[dict | None] = [None] * len(paths)
  if workers <= 1:
    for i, p in enumerate(progress_bar(paths, desc="segments", unit="seg", disable=not progress or len(paths) < 2)):
      metas[i] = cache_segment(p, out_dir, config, progress=progress)
  else:
    # spawn: the decoder's threads make fork unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
      futures = {pool.submit(cache_segment, p, out_dir, config): i for i, p in enumerate(paths)}
      for fut in progress_bar(futures, desc="segments", unit="seg", disable=not progress):
        metas[futures[fut]] = fut.result()
  _write_index(out_dir, config, metas)
  return FrameCache(out_dir)


class FrameCache:
  """Read access to a frame cache: len(cache), cache.records[i] (FrameRecord), cache[i] -> dict of arrays.

  Shards are opened lazily per process (safe to hand to DataLoader workers) and read row by row.
  """

  def __init__(self, root):
    self.root = Path(root)
    index = self.root / "index.json"
    if not index.is_file():
      raise FileNotFoundError(f"no frame cache at {self.root} (missing index.json): build one with build_frame_cache")
    data = json.loads(index.read_text())
    if data.get("version") != CACHE_VERSION:
      raise ValueError(f"{index}: cache version {data.get('version')!r}, this reader supports {CACHE_VERSION}")
    self.config = CacheConfig(**data["config"])
    self.segments = [m["segment"] for m in data["segments"]]
    self.records: list[FrameRecord] = []
    for m in data["segments"]:
      base = len(self.records)
      for j, fr in enumerate(m["frames"]):
        self.records.append(FrameRecord(base + j, m["segment"], fr["frame_id"], fr["frame_index"], m["camera"],
                                        m["scenario"], base + max(j - 1, 0), f"{m['segment']}/{fr['shard']}",
                                        fr["row"], m["has_gt"]))
    self._handles: dict = {}

  @property
  def camera(self) -> CameraModel:
    """The model frame of the cached RGB and ground truth (MEDMODEL.scaled(scale))."""
    return self.config.camera

  def __len__(self) -> int:
    return len(self.records)

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_handles"] = {}  # file handles stay in their process
    return state

  def _shard(self, rel: str):
    h = self._handles.get(rel)
    if h is None:
      h = self._handles[rel] = safe_open(str(self.root / rel), framework="np")
    return h

  def fields(self, i: int) -> list[str]:
    return list(self._shard(self.records[i].shard).keys())

  def read(self, i: int, fields=None) -> dict[str, np.ndarray]:
    """Tensors of record i (one row of its shard); fields=None reads all. Box tensors keep the shard's padding:
    use box_count. "yuv_prev" is always present: the previous video frame (every > 1) or the previous record's
    yuv (every == 1; the first frame of a segment pairs with itself)."""
    if not 0 <= i < len(self.records):
      raise IndexError(f"record {i} out of range: the cache has {len(self.records)} frames")
    rec = self.records[i]
    h = self._shard(rec.shard)
    keys = h.keys()
    want = keys if fields is None else [f for f in fields if f != "yuv_prev"]
    missing = [f for f in want if f not in keys]
    if missing:
      raise KeyError(f"{rec.shard} has no {missing} (has {sorted(keys)})")
    out = {k: h.get_slice(k)[rec.row] for k in want}
    if fields is None or "yuv_prev" in fields:
      if "yuv_prev" in keys:
        out["yuv_prev"] = h.get_slice("yuv_prev")[rec.row]
      else:
        p = self.records[rec.prev]
        out["yuv_prev"] = self._shard(p.shard).get_slice("yuv")[p.row]
    return out

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.read(i)

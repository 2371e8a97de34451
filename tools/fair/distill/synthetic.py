"""Generated training samples of the batch contract (docs/data.md) whose every target a student can learn: for
tests and for measuring training speed without a frame cache (bench/gpu_smoke.py).

  ds = SyntheticDataset(16, seed=0)    # ds[i]: img, index, depth, seg, seg_probs, obj_*, lanes, lane_*, ego, features
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class SyntheticDataset(Dataset):
  """A bright left part and a dark right part split at a random column: every target is a function of that
  column, so a student can learn it. Deterministic per index."""

  def __init__(self, n: int = 16, seed: int = 0, keys: tuple[str, ...] | None = None):
    self.n, self.seed, self.keys = n, seed, keys

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(self.seed * 10_000 + i)
    x0 = int(rng.integers(48, 208))                    # split column in input px (256 wide)
    left = np.arange(256) < x0
    y = np.where(left, 200, 60)[None, None, :] + rng.integers(-20, 21, (4, 128, 256))
    frame = np.concatenate([y, np.full((2, 128, 256), 128)]).clip(0, 255).astype(np.uint8)
    img = np.concatenate([frame, frame])
    seg_left = np.arange(128) * 2 < x0
    seg = np.broadcast_to(np.where(seg_left, 1, 3), (64, 128)).copy()
    seg[:4] = 255
    probs = np.full((8, 64, 128), 0.1 / 7, np.float32)
    probs[1, :, seg_left], probs[3, :, ~seg_left] = 0.9, 0.9
    d_left = np.arange(64) * 4 < x0
    depth = np.broadcast_to(np.where(d_left, 10.0, 40.0), (1, 32, 64)).astype(np.float32).copy()
    depth[:, :2] = 0.0                                   # unknown
    cx = min(x0 // 4, 63)
    yy, xx = np.mgrid[:32, :64]
    heat = np.zeros((2, 32, 64), np.float32)
    heat[0] = np.exp(-((xx - cx) ** 2 + (yy - 16) ** 2) / 8.0)
    mask = np.zeros((1, 32, 64), np.float32)
    mask[0, 16, cx] = 1.0
    lanes = np.stack(np.broadcast_arrays((x0 - 128) / 32.0 + np.array([-5.0, -1.8, 1.8, 5.0])[:, None, None],
                                         np.zeros((4, 33, 1))), -1)[..., 0].astype(np.float32)
    f_left = np.arange(16) * 16 < x0
    features = np.where(f_left, 1.0, -1.0)[None, None, :] * np.linspace(0.5, 1.5, 16)[:, None, None]
    item = {
      "img": torch.from_numpy(img), "index": torch.tensor(i, dtype=torch.int64),
      "depth": torch.from_numpy(depth), "seg": torch.from_numpy(seg.astype(np.int64)),
      "seg_probs": torch.from_numpy(probs), "obj_heatmap": torch.from_numpy(heat),
      "obj_box": torch.from_numpy(np.full((4, 32, 64), 16.0, np.float32)),
      "obj_depth": torch.from_numpy(np.full((1, 32, 64), 20.0, np.float32)), "obj_mask": torch.from_numpy(mask),
      "lanes": torch.from_numpy(np.ascontiguousarray(lanes)),
      "lane_valid": torch.ones(4, 33), "lane_exists": torch.tensor([1.0, 1.0, 1.0, 0.0]),
      "ego": torch.tensor([x0 / 20.0, 0, 0, 0, 0, 0], dtype=torch.float32),
      "features": torch.from_numpy(np.broadcast_to(features, (16, 8, 16)).astype(np.float32).copy()),
    }
    return item if self.keys is None else {k: v for k, v in item.items() if k in (*self.keys, "img", "index")}

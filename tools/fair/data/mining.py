"""Hard-example mining: per-sample loss tracked across epochs and a sampler that over-draws hard samples.

  sampler = HardExampleSampler(len(ds), seed=0)
  loader = DataLoader(ds, batch_size=8, sampler=sampler)
  ... sampler.update(batch["index"], per_sample_loss) ...
  state = sampler.state_dict(); sampler.load_state_dict(state)   # exact resume
  print(sampler.report(k=10, records=ds.record))
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Sampler


class HardExampleSampler(Sampler[int]):
  """Each epoch draws dataset_len indices: a `fraction` uniformly, the rest with probability proportional to
  the sample's loss EMA, with weights capped so that no sample is drawn more than `max_ratio` times as often
  as the mean sample. Samples never seen count with the mean loss of the seen ones.

  update(indices, losses) folds per-sample losses into the EMA (decay `momentum`); the epoch's draw is fixed
  when iteration starts and depends only on (seed, epoch, losses so far), so state_dict/load_state_dict
  resumes exactly.
  """

  def __init__(self, dataset_len: int, seed: int = 0, max_ratio: float = 3.0, fraction: float = 0.5,
               momentum: float = 0.9):
    if dataset_len < 1:
      raise ValueError(f"dataset_len must be >= 1, got {dataset_len}")
    if max_ratio < 1 or not 0 <= fraction <= 1 or not 0 <= momentum < 1:
      raise ValueError(f"need max_ratio >= 1, fraction in [0, 1], momentum in [0, 1); got {max_ratio}, {fraction}, "
                       f"{momentum}")
    self.n, self.seed, self.max_ratio, self.fraction, self.momentum = dataset_len, seed, max_ratio, fraction, momentum
    self.ema = np.zeros(dataset_len, np.float64)
    self.seen = np.zeros(dataset_len, np.int64)
    self.epoch = 0

  def __len__(self) -> int:
    return self.n

  def update(self, indices, losses) -> None:
    """Fold per-sample losses (same length as indices; non-finite losses are ignored) into the EMA."""
    idx = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices, np.int64).reshape(-1)
    loss = np.asarray(losses.detach().float().cpu() if isinstance(losses, torch.Tensor) else losses,
                      np.float64).reshape(-1)
    if idx.shape != loss.shape:
      raise ValueError(f"{len(idx)} indices but {len(loss)} losses")
    if ((idx < 0) | (idx >= self.n)).any():
      raise IndexError(f"sample index out of range 0..{self.n - 1}")
    for i, v in zip(idx.tolist(), loss.tolist()):
      if not np.isfinite(v):
        continue
      self.ema[i] = v if self.seen[i] == 0 else self.momentum * self.ema[i] + (1 - self.momentum) * v
      self.seen[i] += 1

  def weights(self) -> np.ndarray:
    """Draw probability of each sample this epoch (sums to 1); at most max_ratio / n."""
    loss = np.where(self.seen > 0, self.ema, self.ema[self.seen > 0].mean() if self.seen.any() else 1.0)
    loss = np.maximum(loss, 0)
    hard = loss / loss.sum() if loss.sum() > 0 else np.full(self.n, 1 / self.n)
    p = self.fraction / self.n + (1 - self.fraction) * hard
    cap = self.max_ratio / self.n
    for _ in range(50):  # cap, then give the excess to the uncapped samples in proportion
      over = p > cap
      if not over.any():
        break
      excess = (p[over] - cap).sum()
      p[over] = cap
      free = ~over & (p < cap)
      if not free.any():
        break
      p[free] += excess * p[free] / p[free].sum()
    return p / p.sum()

  def __iter__(self):
    rng = np.random.default_rng([self.seed, self.epoch])
    draw = rng.choice(self.n, size=self.n, replace=True, p=self.weights())
    self.epoch += 1
    return iter(draw.tolist())

  def set_epoch(self, epoch: int) -> None:
    self.epoch = int(epoch)

  def state_dict(self) -> dict:
    return {"n": self.n, "seed": self.seed, "max_ratio": self.max_ratio, "fraction": self.fraction,
            "momentum": self.momentum, "epoch": self.epoch, "ema": torch.from_numpy(self.ema.copy()),
            "seen": torch.from_numpy(self.seen.copy())}

  def load_state_dict(self, state: dict) -> None:
    if int(state["n"]) != self.n:
      raise ValueError(f"sampler state for {state['n']} samples, this sampler has {self.n}")
    self.seed, self.max_ratio, self.fraction = int(state["seed"]), float(state["max_ratio"]), float(state["fraction"])
    self.momentum, self.epoch = float(state["momentum"]), int(state["epoch"])
    self.ema = np.asarray(state["ema"], np.float64).copy()
    self.seen = np.asarray(state["seen"], np.int64).copy()

  def report(self, k: int = 10, records: Callable[[int], object] | None = None) -> str:
    """Markdown: the k hardest seen samples (loss EMA, draw weight vs uniform, segment / frame / scenario
    from records(i), e.g. StudentDataset.record) and how concentrated the draw is."""
    p = self.weights() * self.n
    seen = np.flatnonzero(self.seen > 0)
    top = seen[np.argsort(-self.ema[seen], kind="stable")[:k]]
    lines = [f"# Hard examples (epoch {self.epoch})", "",
             f"{len(seen)} of {self.n} samples seen; draw weight (x uniform): max {p.max():.2f}, min {p.min():.2f} "
             f"(cap {self.max_ratio:g}, uniform fraction {self.fraction:g})", "",
             "| rank | index | loss EMA | weight | seen | segment | frame | scenario |", "|---" * 8 + "|"]
    for r, i in enumerate(top.tolist(), 1):
      rec = records(i) if records is not None else None
      seg, frame, scen = (rec.segment, rec.frame_index, rec.scenario) if rec is not None else ("", "", "")
      lines.append(f"| {r} | {i} | {self.ema[i]:.4g} | {p[i]:.2f} | {self.seen[i]} | {seg} | {frame} | {scen} |")
    return "\n".join(lines) + "\n"

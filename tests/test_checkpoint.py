"""Checkpoints of the distillation trainer: atomic, verified, and an interrupted + resumed run ends bit-identical
to an uninterrupted one."""
import random
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from test_distill import SyntheticDataset, nano, tiny_recipe
from tools.fair.distill.checkpoint import CheckpointManager, rng_state, set_rng_state
from tools.fair.distill.losses import LossConfig
from tools.fair.distill.trainer import DistillationTrainer

torch.set_num_threads(1)


def recipe(out):
  # 8 samples / (batch 2 x accumulate 2) = 2 steps per epoch, 2 epochs; EMA, feature projector, validation
  r = tiny_recipe(out, epochs=2, accumulate=2, ema_decay=0.9, warmup_steps=2)
  return replace(r, loss=LossConfig(weights={"seg": 1.0, "depth": 1.0, "feat": 0.5},
                                    features={"stages.2": "features"}), run=replace(r.run, keep_last=2))


def trainer(out):
  r = recipe(out)
  return DistillationTrainer(r, nano(r), SyntheticDataset(8), SyntheticDataset(1, seed=1), progress=False)


def test_resume_mid_epoch_is_bit_identical(tmp_path):
  ref = trainer(tmp_path / "ref")
  ref.fit()
  assert ref.step == 4 and ref.epoch == 2

  first = trainer(tmp_path / "cut")
  first.fit(max_steps=3)            # stops mid-epoch 2 (after its first step), checkpoint written on stopping
  assert (first.step, first.epoch, first.batch_in_epoch) == (3, 1, 2)
  torch.manual_seed(1234)            # global RNG disturbed between the runs: resume must restore it
  np.random.seed(1)
  random.seed(2)
  second = trainer(tmp_path / "cut")
  assert second.resume() and second.step == 3
  second.fit()
  a, b = ref.model.state_dict(), second.model.state_dict()
  assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
  assert all(torch.equal(ref.ema.shadow[k], second.ema.shadow[k]) for k in ref.ema.shadow)
  pa, pb = ref.loss.state_dict(), second.loss.state_dict()
  assert all(torch.equal(pa[k], pb[k]) for k in pa)
  assert ref.best_value == second.best_value and ref.best_step == second.best_step
  # logs: one row per step, no duplicates from the interrupted attempt
  rows = [r.split(",") for r in (tmp_path / "cut" / "train.csv").read_text().splitlines()[1:]]
  ref_rows = [r.split(",") for r in (tmp_path / "ref" / "train.csv").read_text().splitlines()[1:]]
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
  assert [r[:5] for r in rows] == [r[:5] for r in ref_rows]  # step, epoch, lr, loss, grad norm
  # keep_last = 2 (+ best)
  names = [p.name for p in CheckpointManager(tmp_path / "cut").list()]
  assert names == ["step-00000003", "step-00000004"]
  assert CheckpointManager(tmp_path / "cut").best() is not None


def test_corrupt_checkpoint_falls_back_with_warning(tmp_path):
  m = CheckpointManager(tmp_path, keep_last=3)
  w = {"w": torch.arange(4.0)}
  for step in (1, 2, 3):
    m.save(step, {"w": w["w"] * step}, {"step": step, "t": torch.tensor([step])})
  # truncate the newest model file (a crash mid-copy, a full disk)
  f = m.list()[-1] / "model.safetensors"
  f.write_bytes(f.read_bytes()[:10])
  # and leave a temporary folder of an interrupted write behind
  (m.dir / ".step-00000004.tmp-1").mkdir()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ck = m.latest()
  assert [str(w.message) for w in caught] == [f"skipping checkpoint: {m.dir / 'step-00000003'}: model.safetensors "
                                               "does not match its sha256 (corrupt or partial); falling back to the "
                                               "previous one"]
  assert ck.step == 2
  model, state = m.load(ck)
  assert torch.equal(model["w"], w["w"] * 2) and state["step"] == 2 and torch.equal(state["t"], torch.tensor([2]))
  (m.list()[-2] / "meta.json").write_text("{")
  (m.list()[0] / "state.pt").unlink()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert m.latest() is None
  problems = ("sha256", "unreadable meta.json", "state.pt is missing")
  assert [next(k for k in problems if k in str(w.message)) for w in caught] == list(problems)


def test_state_is_weights_only_loadable(tmp_path):
  tr = trainer(tmp_path)
  tr.fit(max_steps=1)
  ck = tr.ckpt.latest()
  state = torch.load(ck.path / "state.pt", weights_only=True)  # would raise on arbitrary pickled objects
  assert state["position"]["step"] == 1 and state["position"]["order"].dtype == torch.int64
  assert sorted(state["position"]["order"].tolist()) == list(range(8))
  assert ck.meta["step"] == 1 and set(ck.meta["sha256"]) == {"model.safetensors", "state.pt"}


def test_rng_roundtrip():
  s = rng_state()
  a = (torch.rand(3), np.random.rand(3), random.random())
  set_rng_state(s)
  b = (torch.rand(3), np.random.rand(3), random.random())
  assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_keep_last_validation(tmp_path):
  with pytest.raises(ValueError, match="keep_last"):
    CheckpointManager(tmp_path, keep_last=0)

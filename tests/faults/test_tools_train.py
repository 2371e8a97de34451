"""`fair train` faults: a resume that cannot resume, non-finite hyper-parameters and losses, a kill between
validation and checkpoint."""
import csv

import pytest
import torch

from tools.fair.cli import main
from tools.fair.distill import trainer as trainer_mod
from tools.fair.distill.trainer import DistillationTrainer, build_model
from tests.test_distill import SyntheticDataset, tiny_recipe

pytestmark = pytest.mark.faults
GOOD = ('[data]\nbuilder = "tests.test_distill:build_synthetic"\n'
        '[optim]\nbatch_size = 2\nwarmup_steps = 1\n[loss.weights]\nseg = 1.0\n')


def _train(recipe_toml: str, tmp_path, *args) -> int:
  cfg = tmp_path / "r.toml"
  cfg.write_text(recipe_toml)
  return main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", *args])


def test_resume_with_every_checkpoint_corrupt_stops_unless_restart(tmp_path, capsys):
  run = tmp_path / "run"
  assert _train(GOOD, tmp_path, "--steps", "2") == 0
  rows = (run / "train.csv").read_text()
  for ckpt in (run / "checkpoints").iterdir():
    (ckpt / "model.safetensors").write_bytes(b"garbage")
  capsys.readouterr()
  assert _train(GOOD, tmp_path, "--steps", "3", "--resume") == 2
  err = capsys.readouterr().err
  assert "no valid checkpoint" in err and "--restart" in err
  assert (run / "train.csv").read_text() == rows
  assert _train(GOOD, tmp_path, "--steps", "2", "--restart") == 0   # told to start over: a fresh series
  with open(run / "train.csv", newline="") as f:
    assert [r["step"] for r in csv.DictReader(f)] == ["1", "2"]


@pytest.mark.parametrize("old, new, where", [("warmup_steps = 1", "warmup_steps = 1\nlr = inf", "lr"),
                                             ("seg = 1.0", "seg = inf", "weights"),
                                             ("warmup_steps = 1", "warmup_steps = 1\nweight_decay = nan", "weight_decay")])
def test_non_finite_hyper_parameters_are_refused(tmp_path, capsys, old, new, where):
  assert _train(GOOD.replace(old, new), tmp_path, "--steps", "1") == 2
  err = capsys.readouterr().err
  assert where in err and "finite" in err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_non_finite_loss_stops_the_run_and_saves_no_weights(tmp_path, monkeypatch):
  recipe = tiny_recipe(tmp_path / "run", epochs=2)
  t = DistillationTrainer(recipe, build_model(recipe), SyntheticDataset(4), progress=False)
  t.fit(1)
  saved = sorted(p.name for p in t.ckpt.list())
  real = t._forward

  def poisoned(batch):
    out = real(batch)
    return out.__class__(**{**out.__dict__, "total": out.total * float("nan")})
  monkeypatch.setattr(t, "_forward", poisoned)
  with pytest.raises(FloatingPointError, match="non-finite loss at step 2"):
    t.fit()
  assert sorted(p.name for p in t.ckpt.list()) == saved
  assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_a_kill_between_validation_and_checkpoint_writes_one_val_row_per_step(tmp_path, monkeypatch):
  recipe = tiny_recipe(tmp_path / "run", epochs=2, steps=None)
  recipe = recipe.__class__(**{**recipe.__dict__, "run": recipe.run.__class__(
    **{**recipe.run.__dict__, "save_every": 2})})
  t = DistillationTrainer(recipe, build_model(recipe), SyntheticDataset(4), SyntheticDataset(2, seed=1),
                          evaluate=lambda m, ds: {"val/loss": 1.0}, progress=False)
  real, calls = t.save, []

  def killed_after_validation():
    calls.append(t.step)
    if len(calls) == 2:   # the in-loop save at step 2 went through; the epoch-end one after validation dies
      raise KeyboardInterrupt("kill -9")
    return real()
  monkeypatch.setattr(t, "save", killed_after_validation)
  with pytest.raises(KeyboardInterrupt):
    t.fit()
  t2 = DistillationTrainer(recipe, build_model(recipe), SyntheticDataset(4), SyntheticDataset(2, seed=1),
                           evaluate=lambda m, ds: {"val/loss": 1.0}, progress=False)
  assert t2.resume() and t2.step == 2
  t2.fit()
  with open(tmp_path / "run" / "val.csv", newline="") as f:
    steps = [r["step"] for r in csv.DictReader(f)]
  assert steps == sorted(set(steps)) and steps == ["2", "4"]

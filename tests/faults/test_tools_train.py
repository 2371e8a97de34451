"""`fair train` faults: a resume that cannot resume, a resume under a changed recipe, non-finite hyper-parameters and
losses, a kill between validation and checkpoint."""
import csv
import json
from dataclasses import replace

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


def _steps(run) -> list[str]:
  with open(run / "train.csv", newline="") as f:
    return [r["step"] for r in csv.DictReader(f)]


def test_resume_under_a_changed_recipe_is_refused_naming_the_fields_unless_new_recipe(tmp_path, capsys):
  run = tmp_path / "run"
  assert _train(GOOD, tmp_path, "--steps", "2") == 0
  before = {p.name: (p / "model.safetensors").read_bytes() for p in (run / "checkpoints").iterdir()}
  rows = (run / "train.csv").read_text()
  changed = GOOD.replace("seg = 1.0", "seg = 2.0").replace("warmup_steps = 1", "warmup_steps = 1\nlr = 1e-3")
  capsys.readouterr()
  assert _train(changed, tmp_path, "--steps", "3", "--resume") == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith("fair train: error: ") and "Traceback" not in err
  assert "trained under another recipe (loss.weights.seg 1.0 -> 2.0; optim.lr 0.002 -> 0.001)" in err
  assert "--new-recipe" in err and "--restart" in err
  assert {p.name: (p / "model.safetensors").read_bytes() for p in (run / "checkpoints").iterdir()} == before
  assert (run / "train.csv").read_text() == rows
  assert _train(changed, tmp_path, "--steps", "3", "--new-recipe") == 2   # goes with --resume only
  assert "--new-recipe goes with --resume" in capsys.readouterr().err
  assert _train(changed, tmp_path, "--steps", "3", "--resume", "--new-recipe") == 0
  assert "resuming under a changed recipe: loss.weights.seg 1.0 -> 2.0; optim.lr 0.002 -> 0.001" in \
      capsys.readouterr().out
  assert _steps(run) == ["1", "2", "3"]
  assert _train(changed, tmp_path, "--steps", "4", "--resume") == 0   # its checkpoints record the new recipe
  assert _steps(run) == ["1", "2", "3", "4"]
  assert _train(GOOD, tmp_path, "--steps", "5", "--resume") == 2      # and refuse the old one now


def test_resume_that_extends_the_run_or_changes_how_it_saves_and_logs_needs_no_flag(tmp_path, capsys):
  run = tmp_path / "run"
  short = GOOD.replace("[optim]", "[run]\nkeep_last = 3\n[optim]\nepochs = 1")
  assert _train(short, tmp_path) == 0
  assert _steps(run) == ["1", "2"]    # 4 samples, batch 2
  longer = short.replace("keep_last = 3", "keep_last = 2\nsave_every = 1\neval_every = 2").replace("epochs = 1",
                                                                                                   "epochs = 2")
  assert _train(longer, tmp_path, "--resume") == 0
  assert _steps(run) == ["1", "2", "3", "4"]
  assert _train(longer, tmp_path, "--steps", "6", "--resume") == 0   # --steps overrides epochs
  assert _steps(run) == ["1", "2", "3", "4", "5", "6"]
  assert "changed recipe" not in capsys.readouterr().out


def test_a_checkpoint_that_records_no_recipe_resumes_unchecked_and_says_so(tmp_path, capsys):
  run = tmp_path / "run"
  assert _train(GOOD, tmp_path, "--steps", "2") == 0
  for meta in (run / "checkpoints").glob("*/meta.json"):   # as written before checkpoints recorded the recipe
    m = json.loads(meta.read_text())
    del m["recipe_fields"]
    meta.write_text(json.dumps(m))
  capsys.readouterr()
  assert _train(GOOD.replace("seg = 1.0", "seg = 2.0"), tmp_path, "--steps", "3", "--resume") == 0
  assert "records no recipe" in capsys.readouterr().out and _steps(run) == ["1", "2", "3"]


def test_a_new_best_metric_under_new_recipe_starts_its_best_over(tmp_path):
  recipe = tiny_recipe(tmp_path / "run", epochs=1)
  metrics = lambda m, ds: {"val/loss": 1.0, "val/other": 5.0}  # noqa: E731
  t = DistillationTrainer(recipe, build_model(recipe), SyntheticDataset(4), SyntheticDataset(2, seed=1),
                          evaluate=metrics, progress=False)
  t.fit()
  other = replace(recipe, optim=replace(recipe.optim, epochs=2),
                  run=replace(recipe.run, best_metric="val/other", best_mode="max"))
  t2 = DistillationTrainer(other, build_model(other), SyntheticDataset(4), SyntheticDataset(2, seed=1),
                           evaluate=metrics, progress=False)
  with pytest.raises(ValueError, match=r"run.best_metric \"val/loss\" -> \"val/other\"; run.best_mode"):
    t2.resume()
  assert t2.resume(new_recipe=True) and t2.best_value is None
  t2.fit()
  best = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
  assert (best["metric"], best["value"], best["step"]) == ("val/other", 5.0, 4)


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

"""Distillation framework (tools/fair/distill): losses, recipes, collate, the trainer and `fair train`."""
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.fair.distill import losses as L
from tools.fair.distill.recipe import (DataSection, LossConfig, OptimSection, Recipe, RunSection, build_dataset,
                                       load_recipe, recipe_from_dict)
from tools.fair.distill.synthetic import SyntheticDataset
from tools.fair.distill.trainer import DistillationTrainer, build_model, collate, lr_factor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parents[1] / "tools/fair/distill/recipes"


# ---- tiny synthetic data (tools/fair/distill/synthetic.py; shared with test_checkpoint / test_dora)

def build_synthetic(data: DataSection, split: str) -> SyntheticDataset:
  """A data builder hook for recipes in tests ([data] builder = "test_distill:build_synthetic")."""
  return SyntheticDataset(4, seed=0 if split == "train" else 1)


def tiny_recipe(out, **optim) -> Recipe:
  o = {"lr": 3e-3, "warmup_steps": 2, "batch_size": 2, "epochs": 1, **optim}
  return Recipe(name="tiny", optim=OptimSection(**o), run=RunSection(out=str(out), keep_last=2))


def nano(recipe: Recipe) -> torch.nn.Module:
  return build_model(recipe)


# ---- losses

def test_kd_zero_when_student_matches_teacher_and_scales_with_t2():
  logits = torch.randn(2, 8, 4, 6)
  probs = logits.softmax(1)
  for t in (1.0, 2.0, 4.0):
    assert L.kd_seg(logits, probs, t).abs().max() < 1e-5
  other = torch.randn(2, 8, 4, 6)
  ref = F.kl_div(F.log_softmax(other, 1), probs, reduction="none").sum(1).flatten(1).mean(1)
  assert torch.allclose(L.kd_seg(other, probs, 1.0), ref, atol=1e-5)
  soft_t = (logits / 2).softmax(1)
  ref2 = 4.0 * F.kl_div(F.log_softmax(other / 2, 1), soft_t, reduction="none").sum(1).flatten(1).mean(1)
  assert torch.allclose(L.kd_seg(other, probs, 2.0), ref2, atol=1e-4)
  with pytest.raises(ValueError, match="temperature"):
    L.kd_seg(other, probs, 0.0)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.1, 10.0), st.integers(0, 2 ** 16))
def test_silog_scale_invariant_and_grad_matching_zero_for_scaled_depth(scale, seed):
  g = torch.Generator().manual_seed(seed)
  target = torch.rand(2, 1, 8, 16, generator=g) * 50 + 1
  target[0, 0, :2] = 0.0  # unknown pixels are ignored
  pred = target.clamp(min=1) * scale
  assert L.silog(pred, target, lam=1.0).abs().max() < 1e-3
  assert L.gradient_matching(pred, target).abs().max() < 1e-4
  # lam = 0: the log RMSE |ln scale|
  assert torch.allclose(L.silog(pred, target, lam=0.0), torch.full((2,), abs(math.log(scale))), atol=1e-3)


def test_silog_ignores_unknown_and_sample_without_targets_is_zero():
  target = torch.full((2, 1, 4, 4), 10.0)
  target[1] = 0.0
  pred = torch.full_like(target, 20.0)
  pred[0, 0, 0, 0] = 1000.0
  target[0, 0, 0, 0] = 0.0  # the wild prediction sits on an unknown pixel
  v = L.silog(pred, target, lam=0.0)
  assert abs(float(v[0]) - math.log(2)) < 1e-4 and float(v[1]) == pytest.approx(0.0, abs=1e-6)
  assert torch.isfinite(L.gradient_matching(pred, target)).all()


def test_seg_ce_ignores_255_and_matches_torch():
  logits = torch.randn(2, 8, 5, 7)
  target = torch.randint(0, 8, (2, 5, 7))
  target[0, :2] = 255
  target[1] = 255
  v = L.seg_ce(logits, target)
  ref = F.cross_entropy(logits[:1], target[:1], ignore_index=255)
  assert torch.allclose(v[0], ref, atol=1e-6) and float(v[1]) == 0.0


def test_focal_heatmap_by_hand():
  pred = torch.full((1, 1, 2, 2), 0.5)
  target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
  pos = -math.log(0.5) * 0.5 ** 2
  neg = -(math.log(0.5) * 0.5 ** 2) * (0.5 ** 4 + 1 + 1)
  assert float(L.focal_heatmap(pred, target)) == pytest.approx(pos + neg, rel=1e-5)


def test_box_depth_l1_only_at_mask():
  pred, target = torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 8.0)
  mask = torch.tensor([[[[1.0, 0], [0, 0]]]])
  assert float(L.box_l1(pred, target, mask)) == pytest.approx(1.0)  # 8 px = 1 cell
  d = torch.full((1, 1, 2, 2), 10.0)
  assert float(L.log_l1(d, d * math.e, mask)) == pytest.approx(1.0, rel=1e-5)
  assert float(L.log_l1(d, d, torch.zeros_like(mask))) == 0.0


def test_laplace_nll_lanes_ego():
  mean, target = torch.zeros(1, 3), torch.tensor([[1.0, -2.0, 0.0]])
  ls = torch.log(torch.tensor([[1.0, 2.0, 0.5]]))
  want = np.mean([1 + math.log(2), 1 + math.log(4), 0 + math.log(1)])
  assert float(L.laplace_nll(mean, ls, target)) == pytest.approx(want, rel=1e-5)
  pred = torch.zeros(1, 4, 33, 4)
  lanes, valid = torch.ones(1, 4, 33, 2), torch.zeros(1, 4, 33)
  valid[0, 0, 0] = 1
  assert float(L.lanes_nll(pred, lanes, valid)) == pytest.approx(1 + math.log(2), rel=1e-5)
  assert float(L.ego_nll(torch.zeros(1, 12), torch.ones(1, 6))) == pytest.approx(1 + math.log(2), rel=1e-5)
  bce = L.lane_prob_bce(torch.tensor([[0.9, 0.1]]), torch.tensor([[1.0, 0.0]]))
  assert float(bce) == pytest.approx(-math.log(0.9), rel=1e-4)


def test_feature_and_attention_losses():
  t = torch.randn(2, 16, 4, 8)
  assert L.feature_loss(t, t, "mse").abs().max() == 0
  assert L.feature_loss(3 * t, t, "cosine").abs().max() < 1e-5
  up = F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)
  assert L.feature_loss(up, t).shape == (2,)  # resized to the teacher grid
  with pytest.raises(ValueError, match="do not match"):
    L.feature_loss(torch.randn(2, 8, 4, 8), t)
  a = L.attention_map(torch.randn(2, 32, 4, 8))
  assert torch.allclose(a.norm(dim=1), torch.ones(2))
  # channel count is free; identical spatial energy gives zero
  s = torch.cat([t, t], 1)
  assert L.attention_transfer(s, t).abs().max() < 1e-6
  assert L.attention_transfer(torch.randn(2, 5, 4, 8), t).min() > 0


def test_distill_loss_skips_absent_terms_and_uses_presence():
  loss = L.DistillLoss(L.LossConfig())
  ds = SyntheticDataset(4)
  with torch.no_grad():
    out = _student_once()(collate([ds[0], ds[1]])["img"])
  full = loss(out, collate([ds[0], ds[1]]))
  assert set(full.terms) == {"depth", "depth_grad", "seg", "obj_heatmap", "obj_box", "obj_depth", "lanes",
                             "lane_prob", "ego"}
  assert full.per_sample.shape == (2,) and torch.isfinite(full.total)
  only_seg = loss(out, collate([SyntheticDataset(4, keys=("seg",))[i] for i in (0, 1)]))
  assert set(only_seg.terms) == {"seg"}
  assert float(only_seg.total) == pytest.approx(only_seg.terms["seg"], rel=1e-6)
  # sample 1 lacks seg: the term is sample 0's value alone, sample 1 contributes 0
  mixed = collate([SyntheticDataset(4, keys=("seg",))[0], SyntheticDataset(4, keys=())[1]])
  assert mixed["present/seg"].tolist() == [True, False] and (mixed["seg"][1] == 255).all()
  res = loss(out, mixed)
  assert float(res.per_sample[1]) == 0.0
  assert res.terms["seg"] == pytest.approx(float(L.seg_ce(out["seg_logits"][:1], mixed["seg"][:1])), rel=1e-5)
  with pytest.raises(ValueError, match="unknown loss terms"):
    L.DistillLoss(L.LossConfig(weights={"dept": 1.0}))


_STUDENT = {}


def _student_once():
  if "m" not in _STUDENT:
    _STUDENT["m"] = nano(tiny_recipe("/nonexistent")).eval()
  return _STUDENT["m"]


def test_collate_needs_img_and_index():
  with pytest.raises(ValueError, match="index"):
    collate([{"img": torch.zeros(12, 128, 256, dtype=torch.uint8)}])


def test_lr_schedule():
  f = [lr_factor(s, 4, 20, "cosine", 0.1) for s in range(20)]
  assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
  assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] > 0.1
  assert lr_factor(100, 4, 20, "cosine", 0.1) == pytest.approx(0.1)
  assert lr_factor(10, 0, 20, "constant") == 1.0


# ---- recipes

def test_bundled_recipes_load():
  names = {p.stem: load_recipe(p) for p in RECIPES.glob("*.toml")}
  assert {"nano_gt", "nano_distill", "dora_dinov2", "dora_sam"} <= set(names)
  sam = names["dora_sam"]
  assert sam.dora.enabled and sam.data.teachers == {"seg": "sam2"} and not sam.data.use_gt
  assert {k for k, v in sam.loss.weights.items() if v > 0} == {"seg", "kd_seg"}
  dino = names["dora_dinov2"]
  assert dino.teacher.mode == "online" and dino.loss.weights["feat"] > 0 and dino.loss.features


@pytest.mark.parametrize("table, match", [
  ({"optim": {"lrr": 1.0}}, r"\[optim\]: unknown key\(s\) \['lrr'\]"),
  ({"optimizer": {}}, r"unknown section\(s\) \['optimizer'\]"),
  ({"optim": {"lr": "fast"}}, r"\[optim\] lr: expected float"),
  ({"optim": {"lr": -1.0}}, r"\[optim\] lr: must be > 0"),
  ({"optim": {"batch_size": 2.5}}, r"batch_size: expected int"),
  ({"student": {"config": "tiny"}}, r"unknown student 'tiny'"),
  ({"loss": {"weights": {"dept": 1.0}}}, r"unknown term\(s\) \['dept'\]"),
  ({"loss": {"weights": {"feat": 1.0}}}, r"features: feat / at weights need"),
  ({"teacher": {"mode": "online"}}, r"online teacher needs a name"),
  ({"run": {"log": ["wandb"]}}, r"csv and/or tensorboard"),
  ({"data": {"builder": "nocolon"}}, r"module:function"),
  ({"data": {"options": {"augment": "default"}}}, r"\[data\]: unknown key\(s\) \['options'\]"),
  ({"data": {"augment": "strong"}}, r"\[data\] augment: must be one of none, default, photometric, geometric"),
  ({"data": {"use_gt": False}}, r"\[data\] teachers: use_gt = false needs teachers"),
  ({"data": {"teachers": {"depth": "dpt-depth"}}}, r"\[data\] labels: teachers need a label store"),
  ({"data": {"val_fraction": 1.0}}, r"val_fraction: must be in \[0, 1\)"),
  ({"teacher": {"mode": "offline"}}, r"must be none or online \(offline labels: \[data\] labels and teachers\)"),
])
def test_recipe_errors(table, match):
  with pytest.raises(ValueError, match=match):
    recipe_from_dict(table, "bad")


def test_recipe_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_recipe(tmp_path / "none.toml")
  (tmp_path / "broken.toml").write_text("[optim\nlr=")
  with pytest.raises(ValueError, match="not valid TOML"):
    load_recipe(tmp_path / "broken.toml")
  (tmp_path / "ok.toml").write_text('[optim]\nlr = 1\nsteps = 5\n[data]\ntrain = "a"\n')
  r = load_recipe(tmp_path / "ok.toml")
  assert r.name == "ok" and r.optim.lr == 1.0 and r.optim.steps == 5 and r.data.train == ("a",)


def test_data_hook():
  ds = build_dataset(DataSection(builder="test_distill:build_synthetic"), "train")
  assert len(ds) == 4 and ds[0]["img"].shape == (12, 128, 256) and ds[0]["img"].dtype == torch.uint8
  with pytest.raises(ValueError, match="not available"):
    build_dataset(DataSection(builder="tools.fair.no_such_module:build"), "train")
  with pytest.raises(ValueError, match="split"):
    build_dataset(DataSection(), "test")


# ---- trainer

class RecordingSampler:
  """A hard-example-sampler stand-in: a fixed order, records the per-sample losses it is given."""

  def __init__(self, n):
    self.n, self.seen = n, []

  def set_epoch(self, epoch):
    self.epoch = epoch

  def __iter__(self):
    return iter(range(self.n - 1, -1, -1))

  def update(self, indices, losses):
    self.seen.append((indices.clone(), losses.clone()))


def test_trainer_learns_and_feeds_sampler(tmp_path):
  r = tiny_recipe(tmp_path, epochs=2, lr=1e-2, batch_size=4)
  r = replace(r, loss=LossConfig(weights={"seg": 1.0, "depth": 1.0}))
  sampler = RecordingSampler(8)
  tr = DistillationTrainer(r, nano(r), SyntheticDataset(8), SyntheticDataset(2, seed=1), sampler=sampler,
                           progress=False)
  res = tr.fit()
  assert res.step == 4 and res.epoch == 2
  rows = (tmp_path / "train.csv").read_text().splitlines()
  header, first, last = rows[0].split(","), rows[1].split(","), rows[-1].split(",")
  assert header[:4] == ["step", "epoch", "lr", "loss"] and len(rows) == 5
  assert float(last[3]) < 0.85 * float(first[3])
  # per-sample losses of every micro-batch, keyed by dataset index in the sampler's order
  assert len(sampler.seen) == 4 and sampler.seen[0][0].tolist() == [7, 6, 5, 4]
  assert all(l.shape == (4,) and torch.isfinite(l).all() and (l > 0).all() for _, l in sampler.seen)
  assert tr.last_sample_losses[0].tolist() == [3, 2, 1, 0]
  import csv
  with open(tmp_path / "val.csv") as f:
    val = [float(row["val/loss"]) for row in csv.DictReader(f)]
  assert len(val) == 2 and res.best_value == pytest.approx(min(val), rel=1e-4)
  assert (tmp_path / "best" / "model.safetensors").is_file()


def test_feature_distillation_offline(tmp_path):
  r = tiny_recipe(tmp_path, steps=3, batch_size=2)
  r = replace(r, loss=LossConfig(weights={"feat": 1.0, "at": 1.0}, features={"stages.3": "features"},
                                 feature_loss="cosine"))
  tr = DistillationTrainer(r, nano(r), SyntheticDataset(6), None, progress=False)
  proj = tr.loss.projectors["stages__3"]
  assert (proj.in_channels, proj.out_channels) == (160, 16)  # nano's 1/32 stage -> teacher channels
  before = proj.weight.detach().clone()
  tr.fit()
  assert not torch.equal(before, proj.weight)
  header = (tmp_path / "train.csv").read_text().splitlines()[0].split(",")
  assert {"feat/stages.3", "at/stages.3"} <= set(header)
  bad = replace(r, loss=LossConfig(weights={"feat": 1.0}, features={"stages.9": "features"}))
  with pytest.raises(ValueError, match="stages.9"):
    DistillationTrainer(bad, nano(r), SyntheticDataset(6), progress=False)


def test_trainer_errors(tmp_path):
  r = tiny_recipe(tmp_path, batch_size=8)
  with pytest.raises(ValueError, match="smaller than one step"):
    DistillationTrainer(r, nano(r), SyntheticDataset(4), progress=False)


def test_trainer_stops_before_step_one_when_a_weighted_term_gets_no_data(tmp_path):
  r = tiny_recipe(tmp_path)   # default weights: depth, seg, objects, lanes, ego all > 0
  no_ego = SyntheticDataset(8, keys=tuple(k for k in SyntheticDataset(1)[0] if k != "ego"))
  with pytest.raises(ValueError, match=r"^loss terms without data in the training samples: ego \(weight 0.2\) "
                                       r"needs ego \(samples carry: .*\): give them a label source"):
    DistillationTrainer(r, nano(r), no_ego, progress=False)
  assert not (tmp_path / "train.csv").exists()   # stopped before anything was written
  # the same samples train once the term is off
  off = replace(r, loss=replace(r.loss, weights={**r.loss.weights, "ego": 0.0}))
  assert DistillationTrainer(off, nano(off), no_ego, progress=False).fit(max_steps=1).step == 1
  assert not L.missing_terms(r.loss, set(SyntheticDataset(1)[0]))   # samples with every key: nothing missing


# ---- cli

def test_cli(tmp_path, capsys):
  from tools.fair.cli import main
  bad = tmp_path / "bad.toml"
  bad.write_text("[optim]\nlr = -1.0\n")
  assert main(["train", str(bad)]) == 2
  assert "lr: must be > 0" in capsys.readouterr().err
  good = tmp_path / "good.toml"
  good.write_text('[data]\nbuilder = "test_distill:build_synthetic"\n'
                  '[optim]\nbatch_size = 2\nwarmup_steps = 1\n[loss.weights]\nseg = 1.0\n')
  out = tmp_path / "run"
  assert main(["train", str(good), "--steps", "2", "--out", str(out), "--quiet"]) == 0
  text = capsys.readouterr().out
  assert "good: 2 steps" in text and str(out / "checkpoints") in text
  assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
  assert main(["train", str(good), "--steps", "2", "--out", str(out)]) == 2  # refuses to overwrite
  assert "--resume" in capsys.readouterr().err
  assert main(["train", str(good), "--steps", "3", "--out", str(out), "--resume", "--quiet"]) == 0
  assert "good: 3 steps" in capsys.readouterr().out


def test_cli_compare_dora_against_full(tmp_path, capsys):
  """`fair train A --compare B`: both recipes on the same data, side by side, and the markdown table."""
  from tools.fair.cli import main
  data = '[data]\nbuilder = "test_distill:build_synthetic"\n'
  common = '[optim]\nbatch_size = 2\nwarmup_steps = 1\n[loss.weights]\nseg = 1.0\n'
  full, dora = tmp_path / "full.toml", tmp_path / "dora.toml"
  full.write_text(data + common)
  dora.write_text(data + common + '[dora]\nenabled = true\nrank = 4\n')
  out = tmp_path / "cmp"
  assert main(["train", str(full), "--compare", str(dora), "--steps", "2", "--out", str(out), "--quiet"]) == 0
  table = (out / "compare-full-vs-dora.md").read_text()
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in table.splitlines()[2:]}
  assert set(rows) == {"full", "dora"} and rows["full"][3] == "100.0%"
  trainable = {k: int(v[2].replace(",", "")) for k, v in rows.items()}
  assert 0 < trainable["dora"] < 0.2 * trainable["full"]
  assert (out / "full" / "checkpoints").is_dir() and (out / "dora" / "checkpoints").is_dir()
  other = tmp_path / "other.toml"
  other.write_text(data + 'augment = "default"\n' + common)
  assert main(["train", str(full), "--compare", str(other), "--steps", "1", "--out", str(tmp_path / "x")]) == 2
  assert "same [data]" in capsys.readouterr().err

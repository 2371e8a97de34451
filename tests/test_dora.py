"""DoRA adapters on the student (tools/fair/distill/dora.py): targets, training only adapters, adapter-only
checkpoints, merging for export."""
import os
from dataclasses import replace

import pytest
import torch
from torch import nn

from test_distill import SyntheticDataset, collate, tiny_recipe
from tools.fair.distill.dora import apply_dora, dora_targets, load_adapter, merge_for_export, save_adapter
from tools.fair.distill.recipe import DoraSection, load_recipe
from tools.fair.distill.trainer import DistillationTrainer, base_model, build_model, trainable_parameters
from tools.fair.distill.losses import LossConfig
from tools.fair.students import build_student, fold_bn, student_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def dora_recipe(out, **dora):
  r = tiny_recipe(out, steps=2, lr=1e-2, warmup_steps=0)
  return replace(r, dora=DoraSection(enabled=True, rank=4, alpha=8.0, **dora),
                 loss=LossConfig(weights={"seg": 1.0, "depth": 1.0}))


def outputs(model, img):
  with torch.no_grad():
    return model.eval()(img)


def test_targets_exclude_grouped_convs():
  torch.manual_seed(0)
  s = build_student(student_config("nano"))
  names = dora_targets(s)
  mods = dict(s.named_modules())
  assert names and all(isinstance(mods[n], nn.Linear) or mods[n].groups == 1 for n in names)
  grouped = [n for n, m in s.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
  assert grouped and not set(grouped) & set(names)
  assert "stages.3.1.attn.aggreg.1" in grouped  # LiteMLA's grouped 1x1 is excluded too (not mergeable)
  assert dora_targets(s, ("lanes", "ego")) == ["lanes", "ego"]
  with pytest.raises(ValueError, match="no Linear"):
    dora_targets(s, ("nothing*",))


def test_dora_trains_adapters_only_then_merges_and_exports(tmp_path):
  r = dora_recipe(tmp_path / "run", modules_to_save=("seg.1",))
  model = build_model(r)
  img = collate([SyntheticDataset(2)[i] for i in range(2)])["img"]
  torch.manual_seed(0)
  plain = build_student(student_config("nano"))
  before = outputs(model, img)
  ref = outputs(plain, img)
  assert all(torch.allclose(before[k], ref[k], atol=1e-5) for k in ref)  # identity at initialisation
  trainable, total = trainable_parameters(model)
  assert 0 < trainable < 0.1 * total
  frozen = {k: v.clone() for k, v in base_model(model).state_dict().items() if "lora" not in k and "seg.1" not in k}
  DistillationTrainer(r, model, SyntheticDataset(4), None, progress=False).fit()
  after = base_model(model).state_dict()
  # base weights and BN statistics unchanged; the adapters moved
  assert all(torch.equal(frozen[k], after[k]) for k in frozen)
  adapted = outputs(model, img)
  assert not torch.allclose(adapted["seg_logits"], ref["seg_logits"])
  merged = merge_for_export(model)
  assert type(merged).__name__ == "Student" and not any("lora" in k for k in merged.state_dict())
  got = outputs(merged, img)
  for k in ref:
    assert torch.allclose(got[k], adapted[k], atol=1e-5, rtol=1e-5), k
  folded = fold_bn(merged)
  got = outputs(folded, img)
  assert all(torch.allclose(got[k], adapted[k], atol=1e-4, rtol=1e-4) for k in ref)


def test_adapter_only_checkpoint_roundtrip(tmp_path):
  r = dora_recipe(tmp_path / "run")
  model = build_model(r)
  DistillationTrainer(r, model, SyntheticDataset(4), None, progress=False).fit(max_steps=1)
  path = save_adapter(model, tmp_path / "adapter.safetensors")
  assert path.stat().st_size < 0.2 * 4 * sum(p.numel() for p in model.parameters())
  fresh = build_model(r)  # same seed: same base weights, zero-initialised adapters
  img = collate([SyntheticDataset(1)[0]])["img"]
  assert not torch.allclose(outputs(fresh, img)["seg_logits"], outputs(model, img)["seg_logits"])
  load_adapter(fresh, path)
  a, b = outputs(fresh, img), outputs(model, img)
  assert all(torch.equal(a[k], b[k]) for k in a)
  other = build_model(replace(r, dora=replace(r.dora, rank=2)))
  with pytest.raises(ValueError, match="rank 4"):
    load_adapter(other, path)
  with pytest.raises(FileNotFoundError):
    load_adapter(fresh, tmp_path / "none.safetensors")


def test_bundled_dora_recipes_apply():
  for name in ("dora_dinov2", "dora_sam"):
    r = load_recipe(f"tools/fair/distill/recipes/{name}.toml")
    torch.manual_seed(0)
    m = apply_dora(build_student(student_config(r.student.config)), r.dora)
    trainable, total = trainable_parameters(m)
    assert 0 < trainable < total
  with pytest.raises(ValueError, match="not modules"):
    apply_dora(build_student(student_config("nano")), DoraSection(enabled=True, modules_to_save=("nope",)))


@pytest.mark.slow
def test_merged_dora_student_exports_to_onnx(tmp_path):
  from tools.fair.students.export import export_onnx
  r = dora_recipe(tmp_path / "run")
  model = build_model(r)
  DistillationTrainer(r, model, SyntheticDataset(4), None, progress=False).fit()
  path = export_onnx(merge_for_export(model), tmp_path / "student.onnx")  # checks ORT parity itself
  assert path.stat().st_size > 1_000_000

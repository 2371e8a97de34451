"""DoRA (Liu et al. 2024, weight-decomposed low-rank adaptation) on the student via peft.

Adapters go on the student's Linear layers and its dense (groups == 1) Conv2d layers. Grouped convolutions
(the depthwise 3x3 / 5x5 convs and LiteMLA's grouped 1x1 aggregation) are excluded: peft supports them only
when the rank is divisible by the group count (up to 1024 here, far above useful ranks) and cannot merge
such adapters into the base weight, so the merged student could no longer be exported as plain convs.
BatchNorms stay frozen (weights and statistics): the adapter is then all that differs from the base model.

  model = apply_dora(student, recipe.dora)       # a peft model: model(img) -> the student's dict
  save_adapter(model, "adapter.safetensors")     # adapter-only checkpoint (+ .json config beside it)
  load_adapter(apply_dora(base, cfg), path)      # incremental training from an adapter
  plain = merge_for_export(model)                # a Student with the adapters merged (export_onnx works)
"""
from __future__ import annotations

import copy
import fnmatch
import json
import re
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from tools.fair.distill.recipe import DoraSection


def eligible(module: nn.Module) -> bool:
  """A layer DoRA can adapt and merge: Linear, or Conv2d with groups == 1."""
  return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def dora_targets(model: nn.Module, patterns: tuple[str, ...] = ("*",)) -> list[str]:
  """Names of the eligible layers of `model` matching any fnmatch pattern; ValueError when none match."""
  names = [n for n, m in model.named_modules()
           if n and eligible(m) and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
  if not names:
    raise ValueError(f"no Linear / dense Conv2d layer matches target_modules {list(patterns)}")
  return names


def apply_dora(model: nn.Module, cfg: DoraSection) -> PeftModel:
  """`model` with DoRA adapters on its target layers; only adapters (and cfg.modules_to_save) are trainable.
  The adapted model starts out computing exactly what `model` computes (lora_B starts at zero)."""
  names = dict(model.named_modules())
  missing = [m for m in cfg.modules_to_save if m not in names]
  if missing:
    raise ValueError(f"modules_to_save {missing} are not modules of the student")
  # a fully trained module gets no adapter inside it
  targets = [t for t in dora_targets(model, cfg.target_modules)
             if not any(t == m or t.startswith(m + ".") for m in cfg.modules_to_save)]
  if not targets:
    raise ValueError(f"target_modules {list(cfg.target_modules)} match only modules_to_save")
  # a regex string is matched against full module names (a list would also match name suffixes)
  lc = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=True,
                  target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$",
                  modules_to_save=list(cfg.modules_to_save) or None)
  return get_peft_model(model, lc)


def save_adapter(model: PeftModel, path: str | Path) -> Path:
  """Write only the adapter weights (safetensors) and their config (`<path stem>.json`), atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
  tmp = path.with_name(path.name + ".tmp")
  save_file(state, str(tmp))
  tmp.replace(path)
  cfg = model.peft_config["default"]
  meta = {"rank": cfg.r, "alpha": cfg.lora_alpha, "target_modules": cfg.target_modules,
          "modules_to_save": sorted(cfg.modules_to_save or []), "tensors": len(state)}
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(meta, indent=2) + "\n")
  tmp.replace(path.with_suffix(".json"))
  return path


def load_adapter(model: PeftModel, path: str | Path) -> PeftModel:
  """Load adapter weights written by save_adapter into a model adapted with the same rank / targets; ValueError
  when the config or the tensor names differ."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"adapter {path} not found")
  meta_path = path.with_suffix(".json")
  cfg = model.peft_config["default"]
  if meta_path.is_file():
    meta = json.loads(meta_path.read_text())
    if (meta["rank"], meta["target_modules"]) != (cfg.r, cfg.target_modules):
      raise ValueError(f"adapter {path} has rank {meta['rank']} / targets {meta['target_modules']!r}, the model "
                       f"rank {cfg.r} / targets {cfg.target_modules!r}")
  state = load_file(str(path))
  expected = set(get_peft_model_state_dict(model))
  if set(state) != expected:
    diff = sorted(set(state) ^ expected)[:5]
    raise ValueError(f"adapter {path} tensors do not match the model's adapters (e.g. {diff})")
  set_peft_model_state_dict(model, state)
  return model


def merge_for_export(model: nn.Module) -> nn.Module:
  """A plain Student (eval mode) with the DoRA adapters merged into its weights; the input is left untouched.
  Then tools.fair.students.export.export_onnx folds its BatchNorms and writes the ONNX as for any student."""
  m = copy.deepcopy(model).eval()
  return (m.merge_and_unload() if isinstance(m, PeftModel) else m).eval()

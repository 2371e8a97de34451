"""Training recipes: one TOML file = one experiment, loaded into typed frozen dataclasses.

  recipe = load_recipe("tools/fair/distill/recipes/nano_gt.toml")

Unknown sections or keys, wrong types and out-of-range values raise ValueError naming the file, the
section and the key. Relative paths are relative to the working directory (the repository root, where
`fair train` runs), not to the TOML file.
"""
from __future__ import annotations

import importlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from tools.fair.distill.losses import TERMS, LossConfig

AUGMENTS = ("none", "default", "photometric", "geometric")   # data.augment.AugmentConfig.named


@dataclass(frozen=True)
class StudentSection:
  config: str = "nano"            # tools.fair.students CONFIGS name
  init: str | None = None         # safetensors of a student state dict to start from


@dataclass(frozen=True)
class DataSection:
  """Where samples come from (the default builder, tools.fair.data.dataset:build, reads every field; docs/data.md)."""
  builder: str = "tools.fair.data.dataset:build"   # "module:function" called as function(data_section, split)
  train: tuple[str, ...] = ()              # the frame cache of the training split (`fair cache`)
  val: tuple[str, ...] = ()                # the validation cache; none: val_fraction of the training cache's segments
  val_fraction: float = 0.0                # without `val`: this fraction of the training segments validates
  labels: str | None = None                # label store (`fair label`, `fair lanes`)
  teachers: Mapping[str, str] = field(default_factory=dict)   # task -> teacher name in the store (dataset.TASKS)
  use_gt: bool = True                      # targets from the cache's ground truth (simulated segments)
  augment: str = "none"                    # none | default | photometric | geometric (training split only)
  workers: int = 0                         # DataLoader worker processes


@dataclass(frozen=True)
class TeacherSection:
  """none: the batch holds everything the loss needs (offline teachers' labels come through [data] teachers);
  online: the teacher runs in the loop on the current frame and its features are put in the batch under `key`."""
  mode: str = "none"              # none | online
  name: str | None = None         # teacher registry name, e.g. "dinov2"
  weights_dir: str | None = None
  model_id: str | None = None
  key: str = "features"           # batch key the online teacher's features go to


@dataclass(frozen=True)
class OptimSection:
  lr: float = 2e-3
  weight_decay: float = 0.05
  warmup_steps: int = 100
  schedule: str = "cosine"        # cosine | constant (after warmup)
  min_lr_ratio: float = 0.01      # cosine floor = lr * min_lr_ratio
  grad_clip: float = 1.0          # max global grad norm, 0 = off
  accumulate: int = 1             # micro-batches per optimizer step
  epochs: int | None = 10         # training length: epochs, unless steps is set
  steps: int | None = None        # optimizer steps (overrides epochs)
  batch_size: int = 8
  amp: bool = True                # bf16 autocast on cuda (fp16 + grad scaler where bf16 is missing); off on cpu
  ema_decay: float = 0.0          # 0 = no EMA; else e.g. 0.999 (evaluation and best use the EMA weights)


@dataclass(frozen=True)
class DoraSection:
  enabled: bool = False
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] = ("*",)   # fnmatch patterns over the student's module names
  modules_to_save: tuple[str, ...] = ()      # modules trained fully next to the adapters (e.g. a new head)
  freeze_bn: bool = True                     # BatchNorm statistics stay fixed (adapters only change weights)


@dataclass(frozen=True)
class QuantSection:
  """Quantization-aware training (tools/fair/distill/qat.py): from optimizer step `start_step` on the student
  trains through INT8 fake quantization; `fair export RUN --format onnx-int8` then writes its QDQ graph."""
  qat: bool = False
  start_step: int = 0             # fake quantization from this optimizer step (0: from the start)


@dataclass(frozen=True)
class RunSection:
  seed: int = 0
  out: str = "runs/default"
  keep_last: int = 3
  save_every: int = 0              # also checkpoint every N optimizer steps (0: at epoch ends only)
  eval_every: int = 1              # validate every N epochs
  log: tuple[str, ...] = ("csv",)  # csv and/or tensorboard
  best_metric: str = "val/loss"
  best_mode: str = "min"           # min | max


@dataclass(frozen=True)
class Recipe:
  name: str
  student: StudentSection = StudentSection()
  data: DataSection = DataSection()
  teacher: TeacherSection = TeacherSection()
  loss: LossConfig = LossConfig()
  optim: OptimSection = OptimSection()
  dora: DoraSection = DoraSection()
  quant: QuantSection = QuantSection()
  run: RunSection = RunSection()


SECTIONS = {"student": StudentSection, "data": DataSection, "teacher": TeacherSection, "loss": LossConfig,
            "optim": OptimSection, "dora": DoraSection, "quant": QuantSection, "run": RunSection}


def load_recipe(path: str | Path) -> Recipe:
  """Parse and validate a recipe TOML (name = the file stem)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"recipe {path} not found")
  try:
    table = tomllib.loads(path.read_text())
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"{path}: not valid TOML: {e}") from None
  return recipe_from_dict(table, path.stem, where=str(path))


def recipe_from_dict(table: Mapping, name: str, where: str = "recipe") -> Recipe:
  """A Recipe from a TOML-like dict (sections as tables); `where` prefixes error messages."""
  unknown = set(table) - set(SECTIONS) - {"name"}
  if unknown:
    raise ValueError(f"{where}: unknown section(s) {sorted(unknown)} (known: {', '.join(SECTIONS)})")
  sections = {}
  for sec, cls in SECTIONS.items():
    sections[sec] = _build(cls, table.get(sec, {}), f"{where} [{sec}]")
  recipe = Recipe(name=str(table.get("name", name)), **sections)
  _validate(recipe, where)
  return recipe


def _build(cls, raw: Mapping, where: str):
  if not isinstance(raw, Mapping):
    raise ValueError(f"{where}: must be a table")
  hints = typing.get_type_hints(cls)
  known = {f.name for f in fields(cls)}
  unknown = set(raw) - known
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
  kwargs = {k: _coerce(v, hints[k], f"{where} {k}") for k, v in raw.items()}
  if cls is LossConfig and "weights" in kwargs:  # a [loss.weights] table is the complete list: others are off
    kwargs["weights"] = {**{k: 0.0 for k in TERMS}, **kwargs["weights"]}
  return cls(**kwargs)


def _coerce(v, tp, where: str):
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if v is None and type(None) in args:
      return None
    return _coerce(v, next(a for a in args if a is not type(None)), where)
  if tp is typing.Any:
    return v
  if origin is tuple:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
      raise ValueError(f"{where}: expected a list, got {v!r}")
    return tuple(_coerce(x, args[0], where) for x in items)
  if origin in (Mapping, dict) or typing.get_origin(origin) is Mapping:
    if not isinstance(v, Mapping):
      raise ValueError(f"{where}: expected a table, got {v!r}")
    return {str(k): _coerce(x, args[1], f"{where}.{k}") for k, x in v.items()}
  if tp is float and isinstance(v, int) and not isinstance(v, bool):
    return float(v)
  if tp in (int, float, str, bool) and (type(v) is not tp):
    raise ValueError(f"{where}: expected {tp.__name__}, got {v!r}")
  return v


def _check(ok: bool, where: str, msg: str) -> None:
  if not ok:
    raise ValueError(f"{where}: {msg}")


def _finite(obj, where: str) -> None:
  """Every float of a recipe section (and of its tables) must be finite: inf / NaN would train on NaN."""
  for f in fields(obj):
    v = getattr(obj, f.name)
    items = v.items() if isinstance(v, Mapping) else [(None, v)]
    for k, x in items:
      _check(not isinstance(x, float) or math.isfinite(x), f"{where} {f.name}" + (f".{k}" if k else ""),
             f"must be finite, got {x}")


def _validate(r: Recipe, where: str) -> None:
  from tools.fair.students.efficientvit import CONFIGS
  for f in fields(r):
    section = getattr(r, f.name)
    if hasattr(section, "__dataclass_fields__"):
      _finite(section, f"{where} [{f.name}]")
  _check(r.student.config in CONFIGS, f"{where} [student] config",
         f"unknown student {r.student.config!r} (known: {', '.join(CONFIGS)})")
  _check(":" in r.data.builder, f"{where} [data] builder", f"must be 'module:function', got {r.data.builder!r}")
  _check(r.data.workers >= 0, f"{where} [data] workers", "must be >= 0")
  _check(r.teacher.mode in ("none", "online"), f"{where} [teacher] mode",
         f"must be none or online (offline labels: [data] labels and teachers), got {r.teacher.mode!r}")
  _check(0 <= r.data.val_fraction < 1, f"{where} [data] val_fraction", "must be in [0, 1)")
  _check(r.data.augment in AUGMENTS, f"{where} [data] augment",
         f"must be one of {', '.join(AUGMENTS)}, got {r.data.augment!r}")
  _check(r.data.use_gt or bool(r.data.teachers), f"{where} [data] teachers",
         "use_gt = false needs teachers (the targets then come from the label store)")
  _check(not r.data.teachers or r.data.labels is not None, f"{where} [data] labels", "teachers need a label store")
  _check(r.teacher.mode != "online" or r.teacher.name is not None, f"{where} [teacher] name",
         "an online teacher needs a name")
  lw = f"{where} [loss]"
  unknown = set(r.loss.weights) - set(TERMS)
  _check(not unknown, f"{lw} weights", f"unknown term(s) {sorted(unknown)} (known: {', '.join(TERMS)})")
  _check(all(w >= 0 for w in r.loss.weights.values()), f"{lw} weights", "must be >= 0")
  _check(any(w > 0 for w in r.loss.weights.values()), f"{lw} weights", "at least one term needs a weight > 0")
  _check(r.loss.temperature > 0, f"{lw} temperature", "must be > 0")
  _check(r.loss.feature_loss in ("mse", "cosine"), f"{lw} feature_loss", "must be 'mse' or 'cosine'")
  _check(not (r.loss.weights["feat"] > 0 or r.loss.weights["at"] > 0) or bool(r.loss.features), f"{lw} features",
         "feat / at weights need at least one student stage -> teacher key pair")
  o, ow = r.optim, f"{where} [optim]"
  _check(o.lr > 0, f"{ow} lr", "must be > 0")
  _check(o.weight_decay >= 0, f"{ow} weight_decay", "must be >= 0")
  _check(o.warmup_steps >= 0, f"{ow} warmup_steps", "must be >= 0")
  _check(o.schedule in ("cosine", "constant"), f"{ow} schedule", "must be 'cosine' or 'constant'")
  _check(0 <= o.min_lr_ratio <= 1, f"{ow} min_lr_ratio", "must be in [0, 1]")
  _check(o.grad_clip >= 0, f"{ow} grad_clip", "must be >= 0")
  _check(o.accumulate >= 1, f"{ow} accumulate", "must be >= 1")
  _check(o.batch_size >= 1, f"{ow} batch_size", "must be >= 1")
  _check(o.steps is not None or o.epochs is not None, f"{ow}", "set epochs or steps")
  _check(o.steps is None or o.steps >= 1, f"{ow} steps", "must be >= 1")
  _check(o.epochs is None or o.epochs >= 1, f"{ow} epochs", "must be >= 1")
  _check(0 <= o.ema_decay < 1, f"{ow} ema_decay", "must be in [0, 1)")
  d, dw = r.dora, f"{where} [dora]"
  _check(d.rank >= 1, f"{dw} rank", "must be >= 1")
  _check(d.alpha > 0, f"{dw} alpha", "must be > 0")
  _check(0 <= d.dropout < 1, f"{dw} dropout", "must be in [0, 1)")
  _check(bool(d.target_modules), f"{dw} target_modules", "must not be empty")
  q, qw = r.quant, f"{where} [quant]"
  _check(q.start_step >= 0, f"{qw} start_step", "must be >= 0")
  _check(not q.qat or not d.enabled, f"{qw} qat", "does not combine with [dora] enabled (train the full student)")
  _check(not q.qat or o.ema_decay == 0, f"{qw} qat", "does not combine with [optim] ema_decay > 0")
  _check(not q.qat or not (r.loss.weights["feat"] > 0 or r.loss.weights["at"] > 0), f"{qw} qat",
         "does not combine with feat / at loss weights (the exported graph has no stage hooks)")
  u, uw = r.run, f"{where} [run]"
  _check(u.keep_last >= 1, f"{uw} keep_last", "must be >= 1")
  _check(u.save_every >= 0, f"{uw} save_every", "must be >= 0")
  _check(u.eval_every >= 1, f"{uw} eval_every", "must be >= 1")
  _check(set(u.log) <= {"csv", "tensorboard"}, f"{uw} log", f"must be csv and/or tensorboard, got {list(u.log)}")
  _check(u.best_mode in ("min", "max"), f"{uw} best_mode", "must be 'min' or 'max'")


def with_overrides(r: Recipe, out: str | None = None, steps: int | None = None,
                   batch_size: int | None = None) -> Recipe:
  """The recipe with the command line's --out / --steps / --batch-size applied."""
  if out is not None:
    r = replace(r, run=replace(r.run, out=out))
  if steps is not None:
    r = replace(r, optim=replace(r.optim, steps=steps))
  if batch_size is not None:
    r = replace(r, optim=replace(r.optim, batch_size=batch_size))
  return r


# what a resume may change: the run's length (extending it: the cosine schedule then stretches to the new end from
# the resumed step on), the name and folder, how often it checkpoints / validates / logs, the loader's workers
RESUMABLE = frozenset({"name", "optim.steps", "optim.epochs", "run.out", "run.keep_last", "run.save_every",
                       "run.eval_every", "run.log", "data.workers"})


def recipe_fields(r: Recipe) -> dict[str, object]:
  """The recipe flat, as JSON values: `section.key` (a table's entries: `section.key.entry`) -> value. A checkpoint
  records it (meta.json) to tell on resume which fields changed."""
  out: dict[str, object] = {"name": r.name}
  for f in fields(r):
    section = getattr(r, f.name)
    for g in fields(section) if is_dataclass(section) else ():
      v = getattr(section, g.name)
      for k, x in v.items() if isinstance(v, Mapping) else [(None, v)]:
        out[f"{f.name}.{g.name}" + (f".{k}" if k is not None else "")] = x
  return json.loads(json.dumps(out))


def recipe_changes(recorded: Mapping[str, object], r: Recipe) -> list[str]:
  """`key old -> new` for each field outside RESUMABLE in which `r` differs from `recorded` (a recipe_fields())."""
  now = recipe_fields(r)
  show = lambda d, k: json.dumps(d[k])[:60] if k in d else "unset"  # noqa: E731
  return [f"{k} {show(recorded, k)} -> {show(now, k)}" for k in sorted(recorded.keys() | now.keys())
          if k not in RESUMABLE and (k in recorded, recorded.get(k)) != (k in now, now.get(k))]


def build_dataset(data: DataSection, split: str):
  """The data side's hook: imports `data.builder` ("module:function", default tools.fair.data.dataset:build) lazily and
  returns function(data, split) for split "train" or "val": a map-style torch Dataset whose items follow
  the batch contract (docs/data.md) (dicts of tensors with at least "img" and "index"); for "val" it may return None."""
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  module, fn = data.builder.split(":", 1)
  try:
    mod = importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise ValueError(f"data builder {data.builder!r}: module {e.name!r} is not available") from None
  if not hasattr(mod, fn):
    raise ValueError(f"data builder {data.builder!r}: {module} has no {fn!r}")
  return getattr(mod, fn)(data, split)

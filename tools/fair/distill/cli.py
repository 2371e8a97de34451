"""`fair train`: train / distil a student from a recipe TOML, resumable exactly.

  fair train tools/fair/distill/recipes/nano_gt.toml [--resume [--new-recipe] | --restart] [--steps N] [--batch-size B] [--out DIR] [--device auto|cpu|cuda|mps]
  fair train recipes/nano_distill.toml --compare recipes/dora_dinov2.toml   # DoRA vs full table, same data
  torchrun --nproc-per-node 4 -m tools.fair.cli train recipes/nano_gt.toml  # DDP: [optim] batch_size is global

Bad recipes exit with status 2 and one line naming the file, section and key.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from tools.fair.device import add_device_argument, resolve_device
from tools.fair.distill.recipe import Recipe, build_dataset, load_recipe, with_overrides
from tools.fair.distill.trainer import DistillationTrainer, FitResult, build_model
from tools.fair.distributed import World


def train_recipe(recipe: Recipe, device: str = "cpu", resume: bool = False, progress: bool = True,
                 evaluate=None, max_steps: int | None = None, restart: bool = False,
                 new_recipe: bool = False) -> FitResult:
  """Build the recipe's data (the [data] builder hook), teacher (online mode), model and trainer, then fit.
  Refuses to start over a run folder that has checkpoints unless `resume`; a resume that finds only corrupt
  checkpoints is an error, and so is one whose checkpoint was trained under another recipe unless `new_recipe`
  (DistillationTrainer.resume). `restart` starts the run over: its checkpoints, best/ and logs are deleted first.
  Under torchrun / srun (World.from_env) every process runs this; they join one process group (DDP)."""
  if restart:
    out = Path(recipe.run.out)
    for d in ("checkpoints", "best"):
      shutil.rmtree(out / d, ignore_errors=True)
    for f in ("train.csv", "val.csv"):
      (out / f).unlink(missing_ok=True)
  world = World.from_env()
  device = str(world.device(resolve_device(device)))
  world.init(device)
  train_ds = build_dataset(recipe.data, "train")
  val_ds = build_dataset(recipe.data, "val")  # None or empty: no validation (then no best/)
  val_ds = val_ds if val_ds is not None and len(val_ds) else None
  teacher = None
  if recipe.teacher.mode == "online":
    from tools.fair.teachers import load_teacher
    teacher = load_teacher(recipe.teacher.name, recipe.teacher.weights_dir, device, model_id=recipe.teacher.model_id)
  trainer = DistillationTrainer(recipe, build_model(recipe), train_ds, val_ds, teacher=teacher, evaluate=evaluate,
                                device=device, progress=progress, world=world)
  if resume:
    if not trainer.resume(new_recipe) and world.main:
      print(f"{recipe.run.out}: no checkpoint to resume, starting from step 0")
  elif trainer.ckpt.list():
    raise ValueError(f"{recipe.run.out} already holds checkpoints: pass --resume, --restart, or a new --out")
  return trainer.fit(max_steps)


@dataclass(frozen=True)
class RunSummary:
  """One training run, a row of the DoRA vs full-distillation table."""
  name: str
  method: str              # "DoRA r=8" / "full"
  metric: str
  value: float             # the run's best value of `metric`
  trainable_params: int
  total_params: int
  train_time_s: float
  steps: int


def compare_table(runs: list[RunSummary]) -> str:
  """A markdown table of runs on the same data: quality, trainable parameters and training time."""
  if not runs:
    raise ValueError("no runs to compare")
  lines = [f"| recipe | method | best {runs[0].metric} | trainable params | share | steps | train time (s) |",
           "|---|---|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r.name} | {r.method} | {r.value:.4f} | {r.trainable_params:,} | "
                 f"{100 * r.trainable_params / max(r.total_params, 1):.1f}% | {r.steps} | {r.train_time_s:.1f} |")
  return "\n".join(lines) + "\n"


def summarize(recipe: Recipe, result: FitResult) -> RunSummary:
  """The compare table's row of a finished run."""
  method = f"DoRA r={recipe.dora.rank}" if recipe.dora.enabled else "full"
  value = result.best_value if result.best_value is not None else float("nan")
  return RunSummary(recipe.name, method, result.best_metric, value, result.trainable_params, result.total_params,
                    result.train_time_s, result.step)


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("config", help="recipe TOML (tools/fair/distill/recipes/*.toml)")
  how = p.add_mutually_exclusive_group()
  how.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in the run folder "
                   "(an error when it holds checkpoints but none is valid)")
  how.add_argument("--restart", action="store_true",
                   help="start the run over: delete the run folder's checkpoints, best/, train.csv and val.csv first")
  p.add_argument("--new-recipe", action="store_true",
                 help="with --resume: go on under this recipe although the checkpoint was trained under one that "
                 "differs (loss weights, lr, data, ...); without it such a resume is refused and names the fields. "
                 "A longer --steps / [optim] epochs, --out and how often it saves, validates or logs may change "
                 "without it")
  p.add_argument("--steps", type=int, help="train for N optimizer steps in all (overrides [optim] epochs / steps)")
  p.add_argument("--batch-size", type=int, help="samples per micro-batch (overrides [optim] batch_size)")
  p.add_argument("--out", help="run folder (overrides [run] out)")
  add_device_argument(p)
  p.add_argument("--compare", metavar="CONFIG",
                 help="also train this recipe (e.g. the DoRA variant) and write the comparison table")


def run(a: argparse.Namespace) -> int:
  """`fair train`."""
  if a.steps is not None and a.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {a.steps}")
  if a.batch_size is not None and a.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
  if a.new_recipe and not a.resume:
    raise ValueError("--new-recipe goes with --resume")
  recipes = [with_overrides(load_recipe(a.config), a.out, a.steps, a.batch_size)]
  if a.compare:
    other = with_overrides(load_recipe(a.compare), None, a.steps, a.batch_size)
    if a.out:  # side by side in the given folder
      recipes[0] = replace(recipes[0], run=replace(recipes[0].run, out=str(Path(a.out) / recipes[0].name)))
      other = replace(other, run=replace(other.run, out=str(Path(a.out) / other.name)))
    if other.data != recipes[0].data:
      raise ValueError(f"--compare: {a.config} and {a.compare} must use the same [data] to be comparable")
    recipes.append(other)
  rows = []
  main = World.from_env().main   # under torchrun only rank 0 reports
  for r in recipes:
    res = train_recipe(r, a.device, a.resume, progress=not a.quiet, restart=a.restart, new_recipe=a.new_recipe)
    if not main:
      continue
    best = f"{res.best_metric} {res.best_value:.4f} at step {res.best_step}" if res.best_value is not None else "none"
    print(f"{r.name}: {res.step} steps ({res.steps_per_s:.2f} steps/s), {res.trainable_params:,} trainable params; "
          f"best {best}")
    print(f"  checkpoints: {Path(r.run.out) / 'checkpoints'}  best: {Path(r.run.out) / 'best'}  "
          f"log: {Path(r.run.out) / 'train.csv'}")
    rows.append(summarize(r, res))
  if a.compare and main:
    table = compare_table(rows)
    path = Path(recipes[0].run.out).parent / f"compare-{recipes[0].name}-vs-{recipes[1].name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print(table + f"table: {path}")
  return 0


def main(argv: list[str] | None = None) -> int:
  """`python -m tools.fair.distill.cli ARGS` is `fair train ARGS`."""
  from tools.fair.cli import main as fair_main
  return fair_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  sys.exit(main())

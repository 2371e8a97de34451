"""Distillation of FAIR teachers into the student (docs/distill.md): recipes (TOML) -> DistillationTrainer with
exact-resume checkpoints, the loss terms, and DoRA adapters (tools.fair.distill.dora; not imported here because
importing peft takes seconds)."""
from tools.fair.distill.checkpoint import CheckpointManager
from tools.fair.distill.losses import DistillLoss, LossConfig, LossOutput
from tools.fair.distill.recipe import Recipe, build_dataset, load_recipe
from tools.fair.distill.trainer import DistillationTrainer, FitResult, build_model, collate

__all__ = ["CheckpointManager", "DistillLoss", "DistillationTrainer", "FitResult", "LossConfig", "LossOutput", "Recipe",
           "build_dataset", "build_model", "collate", "load_recipe"]

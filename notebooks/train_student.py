# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training and evaluating a student
#
# A bundled recipe (`nano_gt`: the nano student on ground-truth targets) through `DistillationTrainer` on
# generated batch-contract samples (`tools/fair/distill/synthetic.py`, so that no frame cache is needed), then the
# validation losses and the student's depth and classes on a held-out sample. On real data the recipe's `[data]`
# section names `fair cache` folders instead (docs/distill.md). `STEPS` and `BATCH` keep it short on a CPU.

# %%
import csv
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from tools.fair.distill.recipe import load_recipe, with_overrides
from tools.fair.distill.synthetic import SyntheticDataset
from tools.fair.distill.trainer import DistillationTrainer, build_model

STEPS, BATCH = 4, 2
torch.set_num_threads(2)
run = Path(tempfile.mkdtemp()) / "run"
recipe = with_overrides(load_recipe("tools/fair/distill/recipes/nano_gt.toml"), str(run), STEPS, BATCH)
recipe = replace(recipe, optim=replace(recipe.optim, warmup_steps=2, ema_decay=0.0))
train, val = SyntheticDataset(16, seed=0), SyntheticDataset(2, seed=1)
trainer = DistillationTrainer(recipe, build_model(recipe), train, val, progress=False)
result = trainer.fit()
print(f"{result.step} steps, {result.steps_per_s:.2f} steps/s, {result.trainable_params:,} parameters")

# %% [markdown]
# The loss terms per step, from the run's `train.csv`:

# %%
with open(run / "train.csv", newline="") as f:
  rows = list(csv.DictReader(f))
terms = [k for k in rows[0] if k not in ("step", "epoch", "lr", "grad_norm", "samples_per_s")]
for k in terms:
  plt.plot([int(r["step"]) for r in rows], [float(r[k]) for r in rows], label=k)
plt.yscale("log")
plt.xlabel("step")
plt.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# Validation (the recipe's losses on the held-out samples) and one held-out prediction:

# %%
print({k: round(v, 4) for k, v in trainer.validate().items()})
model = trainer.model.eval()
sample = val[0]
with torch.no_grad():
  out = model(sample["img"][None])
fig, ax = plt.subplots(1, 4, figsize=(16, 2.5))
ax[0].imshow(sample["depth"][0], cmap="magma_r")
ax[0].set_title("target depth")
ax[1].imshow(out["depth"][0, 0], cmap="magma_r")
ax[1].set_title("student depth")
ax[2].imshow(sample["seg"], cmap="tab10", vmin=0, vmax=9)
ax[2].set_title("target classes")
ax[3].imshow(out["seg_logits"][0].argmax(0), cmap="tab10", vmin=0, vmax=9)
ax[3].set_title("student classes")
plt.show()

"""Training throughput of `fair train` on one device: the bundled nano_gt recipe's student, loss terms and optimiser
(bf16 autocast on CUDA) on generated batch-contract samples (tools/fair/distill/synthetic.py), so that it needs no
frame cache and none of the video / capnp libraries. Under torchrun it is the DDP run (global batch as the recipe).

  python3 -m bench.gpu_smoke --device cuda --steps 300 --out /tmp/smoke
  torchrun --nproc-per-node 2 -m bench.gpu_smoke --device cuda --steps 300 --out /tmp/smoke-ddp
  python3 -m bench.gpu_smoke --device cpu --steps 4 --warmup 1 --out /tmp/smoke-cpu    # dry run / CPU reference

The first --warmup steps (cuDNN autotuning, allocator growth) run as one `fair train` run that stops there; the
timed steps are its --resume, which also checks that a resume works on the device. Rank 0 writes OUT/result.json:
steps/s and samples/s of the timed steps, peak device memory, device, world size, batch and torch version.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tools.fair.distill.cli import train_recipe
from tools.fair.distill.recipe import DataSection, load_recipe, with_overrides
from tools.fair.distill.synthetic import SyntheticDataset
from tools.fair.distributed import World

RECIPE = Path(__file__).resolve().parents[1] / "tools/fair/distill/recipes/nano_gt.toml"


class Repeated(Dataset):
  """`distinct` generated samples made once and served cyclically as `n`: the timing is the training step's,
  not the sample generator's."""

  def __init__(self, n: int, distinct: int = 64):
    base = SyntheticDataset(distinct)
    self.n, self.samples = n, [base[i] for i in range(distinct)]

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
    return {**self.samples[i % len(self.samples)], "index": torch.tensor(i, dtype=torch.int64)}


def build(data: DataSection, split: str) -> Dataset:
  """The [data] builder hook: 4096 training samples, 8 validation samples."""
  return Repeated(4096) if split == "train" else SyntheticDataset(8, seed=1)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
  p.add_argument("--steps", type=int, default=300, help="optimizer steps in all (default 300)")
  p.add_argument("--warmup", type=int, default=20, help="untimed first steps (default 20)")
  p.add_argument("--batch-size", type=int, help="global batch (default: the recipe's, 32)")
  p.add_argument("--workers", type=int, default=2, help="DataLoader workers per process (default 2)")
  p.add_argument("--out", required=True, help="run folder; result.json lands here")
  a = p.parse_args(argv)
  if not 1 <= a.warmup < a.steps:
    p.error("need 1 <= --warmup < --steps")
  recipe = with_overrides(load_recipe(RECIPE), str(Path(a.out) / "run"), a.steps, a.batch_size)
  recipe = replace(recipe, data=DataSection(builder="bench.gpu_smoke:build", workers=a.workers),
                   run=replace(recipe.run, save_every=0))
  world = World.from_env()
  train_recipe(recipe, a.device, progress=False, max_steps=a.warmup, restart=True)
  cuda = torch.cuda.is_available() and a.device.startswith("cuda")
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  res = train_recipe(recipe, a.device, resume=True, progress=False)
  wall = time.perf_counter() - t0
  if not world.main:
    return 0
  timed = res.step - a.warmup
  result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "world_size": world.size,
            "global_batch": recipe.optim.batch_size, "amp": "bf16" if cuda and torch.cuda.is_bf16_supported() else
            ("fp16" if cuda else "off"), "timed_steps": timed, "steps_per_s": res.steps_per_s,
            "samples_per_s": res.steps_per_s * recipe.optim.batch_size, "wall_s_with_setup": wall,
            "peak_memory_gib_rank0": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
  Path(a.out).mkdir(parents=True, exist_ok=True)
  (Path(a.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

"""`fair train` under torchrun on CPU (gloo, 2 processes): the 2-rank run follows the 1-rank run with the same
global batch, resumes bit-identically, and refuses to resume with another number of processes."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tools.fair.distill.synthetic import SyntheticDataset
from tools.fair.distributed import World

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
RECIPE = f"""[data]
builder = "{Path(__file__).stem}:build"
[optim]
lr = 1e-3
batch_size = 4
warmup_steps = 1
schedule = "constant"
[loss.weights]
seg = 1.0
depth = 1.0
[run]
seed = 0
"""


class OneImage(SyntheticDataset):
  """Every sample is sample 0 (under its own index): BatchNorm sees the same statistics on a rank's half batch as
  on the whole batch, so 2 ranks must reproduce 1 rank up to float summation order."""

  def __getitem__(self, i):
    return {**super().__getitem__(0), "index": torch.tensor(i, dtype=torch.int64)}


def build(data, split):
  """12 training samples (3 steps of global batch 4 per epoch), 2 validation samples."""
  return SyntheticDataset(12, seed=0) if split == "train" else SyntheticDataset(2, seed=1)


def build_one_image(data, split):
  return OneImage(12) if split == "train" else None


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def torchrun_cmd(recipe: Path, out: Path, *args: str) -> list[str]:
  return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
          "tools.fair.cli", "train", str(recipe), "--out", str(out), "--device", "cpu", "--quiet", *args]


def torchrun(recipe: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(torchrun_cmd(recipe, out, *args), env=ENV, cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def log(run: Path, column: str = "loss") -> list[float]:
  with open(run / "train.csv", newline="") as f:
    return [float(r[column]) for r in csv.DictReader(f)]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
  return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """1-process and 2-process runs of 4 steps, a 2-process run cut at step 2 and resumed, and 1- and 2-process
  runs of 2 steps on OneImage."""
  from tools.fair.cli import main
  tmp = tmp_path_factory.mktemp("ddp")
  recipe, same = tmp / "recipe.toml", tmp / "same.toml"
  recipe.write_text(RECIPE)
  same.write_text(RECIPE.replace(":build", ":build_one_image"))
  for r, out, steps in ((recipe, "one", "4"), (same, "same-one", "2")):
    assert main(["train", str(r), "--steps", steps, "--out", str(tmp / out), "--device", "cpu", "--quiet"]) == 0
  results = {"full": torchrun(recipe, tmp / "two", "--steps", "4"),
             "cut": torchrun(recipe, tmp / "cut", "--steps", "2"),
             "same": torchrun(same, tmp / "same-two", "--steps", "2")}
  results["resumed"] = torchrun(recipe, tmp / "cut", "--steps", "4", "--resume")
  for name, res in results.items():
    assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
  return tmp, recipe, results


def test_two_ranks_follow_one_rank_with_the_same_global_batch(runs):
  tmp, _, results = runs
  one, two = log(tmp / "one"), log(tmp / "two")
  assert len(one) == len(two) == 4
  # BatchNorm normalises each rank's 2 samples on their own (1 process: all 4): the losses differ by <= 1.6% here
  assert two == pytest.approx(one, rel=0.03)
  # rank 0 alone reported, validated (epoch end at step 3) and wrote the checkpoints
  assert results["full"].stdout.count("recipe: 4 steps") == 1
  assert (tmp / "two" / "best" / "model.safetensors").is_file()
  assert sorted(p.name for p in (tmp / "two" / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]


def test_two_ranks_average_gradients_exactly(runs):
  """Where BatchNorm cannot tell the half batch from the whole one, 2 ranks give the 1-rank losses, gradient
  norms (a sum instead of a mean would double them) and weights."""
  tmp, _, _ = runs
  for column in ("loss", "grad_norm", "seg", "depth"):
    assert log(tmp / "same-two", column) == pytest.approx(log(tmp / "same-one", column), rel=1e-4)
  a, b = weights(tmp / "same-one", 2), weights(tmp / "same-two", 2)
  assert a.keys() == b.keys()
  # Adam moves every weight by ~lr = 1e-3 a step; summation order changes tiny gradients' steps by <= 1e-4 here.
  # running_var is the unbiased estimate: its n / (n - 1) counts the pixels of rank 0's half batch
  assert all(torch.allclose(a[k].float(), b[k].float(), atol=2e-4) for k in a if not k.endswith("running_var"))
  assert all(torch.allclose(a[k], b[k], rtol=1e-2) for k in a if k.endswith("running_var"))


def test_two_rank_resume_is_bit_identical(runs):
  tmp, _, _ = runs
  a, b = weights(tmp / "two", 4), weights(tmp / "cut", 4)
  assert all(torch.equal(a[k], b[k]) for k in a)
  assert log(tmp / "cut") == log(tmp / "two")


def test_two_rank_run_killed_and_resumed_ends_bit_identical(runs):
  """SIGKILL to torchrun and both ranks once the step-2 checkpoint exists (wherever step 3 or 4 then is), then
  --resume: the weights and the logged losses of the uninterrupted 2-rank run."""
  tmp, _, _ = runs
  recipe, out = tmp / "killed.toml", tmp / "killed"
  recipe.write_text(RECIPE + "save_every = 1\n")
  proc = subprocess.Popen(torchrun_cmd(recipe, out, "--steps", "4"), env=ENV, cwd=ROOT, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while not (out / "checkpoints" / "step-00000002" / "meta.json").is_file() and proc.poll() is None:
    assert time.monotonic() < deadline, "no step-2 checkpoint within 240 s"
    time.sleep(0.05)
  if proc.poll() is None:   # (a machine fast enough to finish first just resumes a finished run)
    os.killpg(proc.pid, signal.SIGKILL)   # the session this test started: torchrun and its two workers
  proc.wait()
  res = torchrun(recipe, out, "--steps", "4", "--resume")
  assert res.returncode == 0, res.stderr[-3000:]
  a, b = weights(tmp / "two", 4), weights(out, 4)
  assert all(torch.equal(a[k], b[k]) for k in a)
  assert log(out) == log(tmp / "two")


def test_resume_with_another_world_size_is_an_error(runs, capsys):
  from tools.fair.cli import main
  tmp, recipe, _ = runs
  assert main(["train", str(recipe), "--steps", "5", "--out", str(tmp / "cut"), "--resume", "--device", "cpu",
               "--quiet"]) == 2
  assert ("the checkpoint was written by 2 process(es), this run has 1: resume with the same number"
          in capsys.readouterr().err)


def test_world_from_env():
  assert World.from_env({}) == World(0, 1, 0)
  assert World.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
  assert World.from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == World(5, 8, 1)
  # torchrun inside a SLURM allocation: torchrun's ranks win
  assert World.from_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}).size == 2
  for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}):
    with pytest.raises(ValueError, match="RANK"):
      World.from_env(bad)


def test_gpu_smoke_dry_run_on_cpu(tmp_path):
  """bench/gpu_smoke.py (the GPU machine's script) runs here on the CPU: warm-up run, resumed timed run, result."""
  import json

  from bench.gpu_smoke import main
  assert main(["--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "4", "--workers", "0",
               "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "result.json").read_text())
  assert (result["device"], result["world_size"], result["global_batch"], result["timed_steps"]) == ("cpu", 1, 4, 2)
  assert result["steps_per_s"] > 0 and result["amp"] == "off"
  assert log(tmp_path / "run") and [int(s) for s in log(tmp_path / "run", "step")] == [1, 2, 3]

"""Where this process stands in a multi-process job: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or SLURM's
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID when srun starts the processes itself.

  world = World.from_env()          # World(rank=0, size=1, local_rank=0) outside a launcher
  device = world.device(device)     # cuda -> cuda:LOCAL_RANK (one GPU per process)
  world.init(device)                # torch.distributed process group (nccl on CUDA, gloo otherwise) when size > 1
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# (rank, world size, local rank) variable names, in the order they are looked for
_LAUNCHERS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))


@dataclass(frozen=True)
class World:
  """This process's rank among `size` processes (rank 0 writes the shared outputs)."""
  rank: int = 0
  size: int = 1
  local_rank: int = 0

  @staticmethod
  def from_env(env: dict[str, str] | None = None) -> World:
    """The launcher's ranks (torchrun first, then SLURM); a single process when neither set them. ValueError in
    one line for values that are not integers or not 0 <= rank < size."""
    env = os.environ if env is None else env
    for rank_var, size_var, local_var in _LAUNCHERS:
      if rank_var in env and size_var in env:
        try:
          rank, size, local = int(env[rank_var]), int(env[size_var]), int(env.get(local_var, "0"))
        except ValueError:
          raise ValueError(f"{rank_var}={env[rank_var]!r} {size_var}={env[size_var]!r} {local_var}="
                           f"{env.get(local_var)!r}: ranks must be integers") from None
        if not 0 <= rank < size or local < 0:
          raise ValueError(f"{rank_var}={rank} {size_var}={size}: need 0 <= rank < world size")
        return World(rank, size, local)
    return World()

  @property
  def main(self) -> bool:
    """Whether this process writes checkpoints, logs and progress."""
    return self.rank == 0

  def device(self, device):
    """One GPU per process: a bare "cuda" becomes cuda:LOCAL_RANK when there are several processes."""
    import torch
    device = torch.device(device)
    if self.size > 1 and device.type == "cuda" and device.index is None:
      return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
    return device

  def init(self, device) -> None:
    """Join the process group (env:// rendezvous: MASTER_ADDR / MASTER_PORT, which torchrun sets) when size > 1."""
    import torch
    import torch.distributed as dist
    if self.size == 1 or dist.is_initialized():
      return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
      raise ValueError(f"{self.size} processes but {' and '.join(missing)} unset: start with torchrun, or export "
                       "them (the rank-0 host and a free port) in the SLURM job")
    device = torch.device(device)
    if device.type == "cuda":
      torch.cuda.set_device(device)
    # the SLURM names are not read by env://: hand the ranks over explicitly
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank, world_size=self.size)

"""Size of a student: parameters, FLOPs and activation bytes at the model_io input shape."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from selfdrive.modeld_fair.model_io import INPUT_SHAPE


@dataclass(frozen=True)
class ModelStats:
  params: int            # trainable + BN parameters (BN folding removes 2 per channel)
  flops: int             # 2 x multiply-accumulates of convs, matmuls and linears (torch's FlopCounterMode)
  act_bytes: int         # fp32 bytes written by convs and linears in one forward (BN and ReLU fused into them;
                         # residual adds, resizes and attention math come on top)
  peak_act_bytes: int    # largest single conv / linear output, fp32

  @property
  def gflops(self) -> float:
    return self.flops / 1e9


@torch.no_grad()
def model_stats(model: nn.Module) -> ModelStats:
  """Count `model` (a Student) on one zero input of model_io.INPUT_SHAPE, in eval mode."""
  sizes: list[int] = []

  def hook(_m, _i, out: torch.Tensor):
    sizes.append(out.numel() * out.element_size())

  handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
  was_training = model.training
  model.eval()
  try:
    with FlopCounterMode(display=False) as fc:
      model(torch.zeros(INPUT_SHAPE, dtype=torch.uint8))
  finally:
    model.train(was_training)
    for h in handles:
      h.remove()
  return ModelStats(params=sum(p.numel() for p in model.parameters()), flops=int(fc.get_total_flops()),
                    act_bytes=sum(sizes), peak_act_bytes=max(sizes))

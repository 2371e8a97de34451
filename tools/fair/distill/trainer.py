"""The distillation training loop: AdamW, linear warmup + cosine, grad clipping and accumulation, bf16 autocast
on CUDA, optional EMA, per-sample losses for hard-example mining, validation + best tracking, and checkpoints
that resume bit-exactly (the data order and position are part of the state).

  trainer = DistillationTrainer(recipe, model, train_ds, val_ds, teacher=None, evaluate=None, sampler=None)
  trainer.resume()          # optional: continue from the newest valid checkpoint in recipe.run.out
  result = trainer.fit()    # FitResult

Data order: epoch e visits the samples in a permutation drawn from a generator seeded by (seed, e) (or, with a
`sampler`, the indices it yields after `sampler.set_epoch(e)`); the order of the running epoch and the position
in it are saved, so a resumed run sees exactly the batches the uninterrupted run would have. A dataset's own
randomness (augmentation) must be a function of the sample index and epoch (the trainer calls
`train_ds.set_epoch(e)` when it exists), not of worker RNG state.

Under torchrun (world.size > 1) the model and the loss's projectors train in DistributedDataParallel: the recipe's
batch_size is the global batch, each rank takes batch_size / size samples of it through a DistributedSampler
(seeded as the single-process order, so the union of the ranks' micro-batches is the single-process batch), rank 0
validates and writes checkpoints, logs and progress, train metrics are averaged over the ranks, and a checkpoint
holds every rank's RNG state and data order: it resumes exactly with the same number of processes only.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tools.fair.distill.checkpoint import CheckpointManager, rng_state, set_rng_state
from tools.fair.distill.losses import PRESENT, DistillLoss, LossOutput, missing_terms
from tools.fair.distill.recipe import Recipe, recipe_changes, recipe_fields
from tools.fair.distributed import World
from tools.fair.files import atomic_write
from tools.fair.progress import progress_bar

Evaluate = Callable[[nn.Module, Dataset], Mapping[str, float]]
_FILL = {"seg": 255}  # collate's value for a key a sample lacks: "not supervised" (others: 0 plus the presence mask)


def collate(items: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
  """Stack batch-contract samples. A key only some samples carry is stacked with a neutral fill for the others
  and a bool (B,) mask under "present/<key>", which the losses use to skip those samples."""
  if not items:
    raise ValueError("empty batch")
  for k in ("img", "index"):
    if any(k not in it for it in items):
      raise ValueError(f"every sample needs {k!r} (batch contract)")
  keys = list(dict.fromkeys(k for it in items for k in it))
  out = {}
  for k in keys:
    have = [k in it for it in items]
    ref = next(it[k] for it in items if k in it)
    out[k] = torch.stack([torch.as_tensor(it[k]) if k in it else torch.full_like(ref, _FILL.get(k, 0)) for it in items])
    if not all(have):
      out[PRESENT + k] = torch.tensor(have)
  return out


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
  """Learning-rate multiplier of optimizer step `step` (0-based): linear warmup over `warmup` steps to 1, then
  constant or cosine down to min_ratio at `total`."""
  if step < warmup:
    return (step + 1) / warmup
  if schedule == "constant":
    return 1.0
  progress = min(1.0, (step - warmup) / max(1, total - warmup))
  return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
  """Exponential moving average of a model's floating-point state (parameters and BN statistics)."""

  def __init__(self, model: nn.Module, decay: float):
    self.decay = decay
    self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

  @torch.no_grad()
  def update(self, model: nn.Module) -> None:
    for k, v in model.state_dict().items():
      if k in self.shadow:
        self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)

  @contextlib.contextmanager
  def applied(self, model: nn.Module):
    """Within the block the model holds the EMA weights; its own are restored afterwards."""
    backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
    model.load_state_dict(self.shadow, strict=False)
    try:
      yield model
    finally:
      model.load_state_dict(backup, strict=False)


class StageTaps:
  """Forward hooks that keep the latest output of named student modules (feature / attention distillation)."""

  def __init__(self, model: nn.Module, names: list[str]):
    modules = dict(base_model(model).named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
      raise ValueError(f"student has no module(s) {missing} (e.g. stem, stages.0 .. stages.3, smooth.0, smooth4)")
    self.features: dict[str, torch.Tensor] = {}
    self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

  def _hook(self, name: str):
    def hook(_m, _inp, out):
      self.features[name] = out
    return hook


class StudentLoss(nn.Module):
  """Student forward (autocast when amp_dtype) + loss as one module: DDP averages the gradients of both (the
  loss has trainable feature projectors)."""

  def __init__(self, model: nn.Module, loss: DistillLoss, taps: StageTaps | None, amp_dtype: torch.dtype | None):
    super().__init__()
    self.model, self.loss, self.taps, self.amp_dtype = model, loss, taps, amp_dtype

  def forward(self, batch: dict[str, torch.Tensor]) -> LossOutput:
    img = batch["img"]
    with torch.autocast(img.device.type, self.amp_dtype) if self.amp_dtype else contextlib.nullcontext():
      out = self.model(img)
    return self.loss(out, batch, self.taps.features if self.taps else None)  # in fp32: the terms cast to float


class CsvLog:
  """Append-only CSV with a fixed header; on resume, rows after the resumed step are dropped (they belong to
  the interrupted attempt)."""

  def __init__(self, path: Path, columns: list[str]):
    self.path, self.columns = path, columns

  def truncate_after(self, step: int) -> None:
    if not self.path.is_file():
      return
    with open(self.path, newline="") as f:
      rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, self.columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(self.path, text.getvalue())

  def write(self, row: Mapping) -> None:
    new = not self.path.is_file()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a", newline="") as f:
      w = csv.DictWriter(f, self.columns, extrasaction="ignore")
      if new:
        w.writeheader()
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def base_model(model: nn.Module) -> nn.Module:
  """The student inside a peft (DoRA) model, the model itself otherwise."""
  return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  ps = list(model.parameters())
  return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


@dataclass(frozen=True)
class FitResult:
  """Where a fit() ended."""
  step: int
  epoch: int
  metrics: dict[str, float]       # the last validation
  best_metric: str
  best_value: float | None
  best_step: int
  out: Path
  train_time_s: float             # wall time of this fit() call
  steps_per_s: float
  trainable_params: int
  total_params: int


def build_model(recipe: Recipe) -> nn.Module:
  """The recipe's student: seeded init (run.seed), optional init weights, optional DoRA adapters."""
  from tools.fair.students.efficientvit import build_student, student_config
  torch.manual_seed(recipe.run.seed)
  model = build_student(student_config(recipe.student.config))
  if recipe.student.init:
    path = Path(recipe.student.init)
    if not path.is_file():
      raise FileNotFoundError(f"[student] init {path} not found")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
      raise ValueError(f"[student] init {path}: missing {missing[:3]}, unexpected {unexpected[:3]} keys")
  if not recipe.dora.enabled:
    return model
  from tools.fair.distill.dora import apply_dora  # peft's import is slow: only when used
  return apply_dora(model, recipe.dora)


class DistillationTrainer:
  """Trains `model` (a Student or its DoRA-adapted peft model) on `train_ds` as `recipe` says.

  teacher: an online teacher (recipe.teacher.mode == "online") called on the current frame's RGB to put its
  features in the batch under recipe.teacher.key. evaluate(model, val_ds) -> metrics; default: the validation
  losses ("val/loss", "val/<term>"). sampler: optional index source (set_epoch(e), __iter__, and optionally
  update(indices, losses) which receives every micro-batch's per-sample losses, state_dict/load_state_dict);
  not with world.size > 1, where a DistributedSampler shards the data. world: this process's rank (World.from_env;
  its process group initialised, the device its own GPU).
  """

  def __init__(self, recipe: Recipe, model: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None,
               teacher=None, evaluate: Evaluate | None = None, sampler=None, device: str | torch.device = "cpu",
               progress: bool = True, world: World | None = None):
    self.world = world or World()
    self.recipe, self.device, self.progress = recipe, torch.device(device), progress and self.world.main
    self.train_ds, self.val_ds, self.teacher, self.sampler = train_ds, val_ds, teacher, sampler
    self.evaluate = evaluate or self.validation_losses
    o, r = recipe.optim, recipe.run
    if recipe.teacher.mode == "online" and teacher is None:
      raise ValueError("recipe has an online teacher but none was given")
    self.model = model.to(self.device)
    n = self.world.size
    if n > 1:
      if sampler is not None:
        raise ValueError(f"{n} processes: a custom sampler (hard-example mining) runs in a single process only")
      if o.batch_size % n:
        raise ValueError(f"batch_size {o.batch_size} (the global batch) is not divisible by the {n} processes")
      self.sampler = DistributedSampler(train_ds, n, self.world.rank, shuffle=True, seed=r.seed * 1_000_003,
                                        drop_last=True)
    self.batch = o.batch_size // n   # this rank's micro-batch
    self.batches_per_epoch = len(train_ds) // n // self.batch
    self.steps_per_epoch = self.batches_per_epoch // o.accumulate
    if self.steps_per_epoch < 1:
      raise ValueError(f"train set of {len(train_ds)} samples is smaller than one step "
                       f"(batch_size {o.batch_size} x accumulate {o.accumulate})")
    self.total_steps = o.steps if o.steps is not None else o.epochs * self.steps_per_epoch
    self._check_terms()
    pairs = dict(recipe.loss.features) if recipe.loss.weights.get("feat", 0) > 0 or \
        recipe.loss.weights.get("at", 0) > 0 else {}
    self.taps = StageTaps(self.model, list(pairs)) if pairs else None
    torch.manual_seed(r.seed)  # projector init
    s_ch, t_ch = self._channels(pairs) if pairs and recipe.loss.weights.get("feat", 0) > 0 else (None, None)
    self.loss = DistillLoss(recipe.loss, s_ch, t_ch).to(self.device)
    params = [p for p in [*self.model.parameters(), *self.loss.parameters()] if p.requires_grad]
    # no weight decay on biases, norms and DoRA magnitudes (1-D)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    self.optimizer = torch.optim.AdamW(groups, lr=o.lr)
    self.amp_dtype = None
    if o.amp and self.device.type == "cuda":
      self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
    self.net = StudentLoss(self.model, self.loss, self.taps, self.amp_dtype)
    # find_unused_parameters: heads whose terms have weight 0 (or no data in a batch) get no gradient
    self.ddp = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True) if n > 1 else None
    self.ema = EMA(self.model, o.ema_decay) if o.ema_decay > 0 else None
    self.ckpt = CheckpointManager(r.out, r.keep_last)
    self.out = Path(r.out)
    # position in training (all checkpointed)
    self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
    self.order: torch.Tensor | None = None
    self.best_value: float | None = None
    self.best_step = -1
    self.metrics: dict[str, float] = {}
    self.last_sample_losses: tuple[torch.Tensor, torch.Tensor] | None = None  # (indices, losses) of the last batch
    terms = self.loss.term_names()
    self.train_log = CsvLog(self.out / "train.csv", ["step", "epoch", "lr", "loss", "grad_norm", "samples_per_s",
                                                     *terms]) if "csv" in r.log and self.world.main else None
    self.val_log: CsvLog | None = None
    self.tb = self._tensorboard() if "tensorboard" in r.log and self.world.main else None

  # ---- setup helpers

  def _tensorboard(self):
    try:
      from torch.utils.tensorboard import SummaryWriter
    except ImportError:
      warnings.warn("tensorboard logging requested but the tensorboard package is not installed; CSV only",
                    stacklevel=3)
      return None
    return SummaryWriter(str(self.out / "tb"))

  def _check_terms(self, probes: int = 8) -> None:
    """ValueError before step 1 when a loss term with weight > 0 finds its batch keys in none of `probes` training
    samples spread over the set (an online teacher's key counts as given): it would never be trained."""
    n = len(self.train_ds)
    keys = {self.recipe.teacher.key} if self.recipe.teacher.mode == "online" else set()
    for i in sorted({int(i) for i in np.linspace(0, n - 1, min(probes, n))}):
      keys |= set(self.train_ds[i])
    missing = missing_terms(self.recipe.loss, keys)
    if missing:
      terms = "; ".join(f"{t} (weight {self.recipe.loss.weights[t]:g}) needs {', '.join(k)}" for t, k in missing.items())
      raise ValueError(f"loss terms without data in the training samples: {terms} (samples carry: "
                       f"{', '.join(sorted(keys))}): give them a label source or set their weight to 0")

  @torch.no_grad()
  def _channels(self, pairs: Mapping[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Student stage and teacher feature channel counts, from one training sample."""
    batch = self._to_device(collate([self.train_ds[0]]))
    was = self.model.training
    self.model.eval()  # no BN statistics update
    self.model(batch["img"])
    self.model.train(was)
    s_ch = {k: int(v.shape[1]) for k, v in self.taps.features.items()}
    t_ch = {}
    for key in set(pairs.values()):
      if key not in batch and self.teacher is not None and key == self.recipe.teacher.key:
        batch[key] = self._teacher_features(batch["img"])
      if key not in batch:
        raise ValueError(f"teacher features {key!r} are neither in the training samples nor from an online teacher")
      t_ch[key] = int(batch[key].shape[1])
    return s_ch, t_ch

  def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

  @torch.no_grad()
  def _teacher_features(self, img: torch.Tensor) -> torch.Tensor:
    """The online teacher's features of the current frame (img channels 6..11) as a (B, C, h, w) tensor."""
    import cv2

    from selfdrive.modeld_fair.medmodel_warp import unpack_model_input
    from selfdrive.modeld_fair.nv12 import yuv_to_rgb
    cam = self.teacher.input.camera
    frames = []
    for packed in img[:, 6:].cpu().numpy():
      y, u, v = unpack_model_input(packed)
      rgb = yuv_to_rgb(y, u.repeat(2, 0).repeat(2, 1), v.repeat(2, 0).repeat(2, 1))
      if rgb.shape[:2] != (cam.height, cam.width):
        rgb = cv2.resize(rgb, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
      frames.append(rgb)
    out = self.teacher(np.stack(frames))
    return torch.as_tensor(np.asarray(getattr(out, "features", out)), dtype=torch.float32, device=self.device)

  def _set_train(self) -> None:
    self.model.train()
    if self.recipe.dora.enabled and self.recipe.dora.freeze_bn:
      for m in self.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
          m.eval()

  def _epoch_order(self, epoch: int) -> torch.Tensor:
    if hasattr(self.train_ds, "set_epoch"):
      self.train_ds.set_epoch(epoch)
    if self.sampler is not None:
      if hasattr(self.sampler, "set_epoch"):
        self.sampler.set_epoch(epoch)
      order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
    else:
      g = torch.Generator().manual_seed(self.recipe.run.seed * 1_000_003 + epoch)
      order = torch.randperm(len(self.train_ds), generator=g)
    if len(order) < self.steps_per_epoch * self.recipe.optim.accumulate * self.batch:
      raise ValueError(f"sampler yielded {len(order)} indices for epoch {epoch}, fewer than one epoch of batches")
    return order

  def _loader(self, indices: torch.Tensor, dataset: Dataset, seed: int, drop_last: bool = True) -> DataLoader:
    # an explicit generator (worker seeds): creating a loader never draws from the global RNG (checkpointed)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=self.batch, sampler=indices.tolist(), collate_fn=collate,
                      num_workers=self.recipe.data.workers, generator=g, drop_last=drop_last,
                      pin_memory=self.device.type == "cuda")

  # ---- training

  def _forward(self, batch: dict[str, torch.Tensor]) -> LossOutput:
    if self.recipe.teacher.mode == "online" and self.recipe.teacher.key not in batch:
      batch[self.recipe.teacher.key] = self._teacher_features(batch["img"])
    # validation (no grad) runs on rank 0 alone: outside DDP, whose forward may wait for the other ranks
    return (self.ddp if self.ddp is not None and torch.is_grad_enabled() else self.net)(batch)

  def _start_qat(self) -> None:
    """From here on the model is the fake-quantized graph of the student (same parameters, same optimizer)."""
    from tools.fair.distill.qat import prepare
    if self.ddp is not None:
      raise ValueError("[quant] qat trains in one process (the fake-quantized graph is not wrapped for DDP)")
    n = len(self.train_ds)
    img = collate([self.train_ds[0], self.train_ds[min(1, n - 1)]])["img"].to(self.device)
    was = self.model.training
    prepared = prepare(self.model, img)
    known = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
    if not {id(p) for p in prepared.parameters() if p.requires_grad} <= known:
      raise RuntimeError("the fake-quantized student does not share the student's parameters")
    self.model = self.net.model = prepared
    self.model.train(was)

  @property
  def qat_active(self) -> bool:
    return isinstance(self.model, torch.fx.GraphModule)

  def _optimizer_step(self) -> tuple[float, float]:
    o = self.recipe.optim
    lr = o.lr * lr_factor(self.step, o.warmup_steps, self.total_steps, o.schedule, o.min_lr_ratio)
    for g in self.optimizer.param_groups:
      g["lr"] = lr
    self.scaler.unscale_(self.optimizer)
    params = [p for g in self.optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
    self.scaler.step(self.optimizer)
    self.scaler.update()
    self.optimizer.zero_grad(set_to_none=True)
    if self.ema is not None:
      self.ema.update(self.model)
    return lr, float(norm)

  def fit(self, max_steps: int | None = None) -> FitResult:
    """Train until the recipe's length (or until optimizer step `max_steps`, for a partial run); validates every
    eval_every epochs, checkpoints at epoch ends, every save_every steps and when stopping."""
    o, r = self.recipe.optim, self.recipe.run
    stop = self.total_steps if max_steps is None else min(max_steps, self.total_steps)
    start_step, t0 = self.step, time.perf_counter()
    bar = progress_bar(total=stop, initial=self.step, disable=not self.progress, desc=self.recipe.name, unit="step",
               dynamic_ncols=True)
    saved_at = -1
    while self.step < stop:
      if self.order is None:
        self.order = self._epoch_order(self.epoch)
      used = self.steps_per_epoch * o.accumulate * self.batch
      todo = self.order[self.batch_in_epoch * self.batch:used]
      self._set_train()
      acc: dict[str, float] = {}
      t_step = time.perf_counter()
      loader = self._loader(todo, self.train_ds, r.seed * 1_000_003 + self.epoch * 100_003 + self.batch_in_epoch)
      for batch in loader:
        if self.recipe.quant.qat and self.step >= self.recipe.quant.start_step and not self.qat_active:
          self._start_qat()
        last = (self.batch_in_epoch + 1) % o.accumulate == 0
        with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
          res = self._forward(self._to_device(batch))
          if not torch.isfinite(res.total.detach()):   # stop before NaN reaches the weights or a checkpoint
            raise FloatingPointError(f"non-finite loss at step {self.step + 1} ({res.terms}): lower the learning "
                                     f"rate or the loss weights; the last checkpoint in {self.ckpt.dir} holds finite "
                                     "weights")
          self.scaler.scale(res.total / o.accumulate).backward()
        self._record(batch["index"], res.per_sample)
        for k, v in {"loss": float(res.total.detach()), **res.terms}.items():
          acc[k] = acc.get(k, 0.0) + v / o.accumulate
        self.batch_in_epoch += 1
        if self.batch_in_epoch % o.accumulate:
          continue
        lr, norm = self._optimizer_step()
        self.step += 1
        dt = time.perf_counter() - t_step
        acc = self._mean_over_ranks(acc)
        self._log_train({"step": self.step, "epoch": self.epoch, "lr": lr, "grad_norm": norm,
                         "samples_per_s": o.batch_size * o.accumulate / max(dt, 1e-9), **acc})
        bar.update(1)
        bar.set_postfix(loss=f"{acc['loss']:.4f}", epoch=self.epoch)
        acc, t_step = {}, time.perf_counter()
        if r.save_every and self.step % r.save_every == 0:
          self.save()
          saved_at = self.step
        if self.step >= stop:
          break
      del loader
      if self.batch_in_epoch >= self.steps_per_epoch * o.accumulate:  # epoch finished
        self.epoch += 1
        self.batch_in_epoch, self.order = 0, None
        if self.epoch % r.eval_every == 0 and self.val_ds is not None and self.world.main:
          self.validate()
        self.save()
        saved_at = self.step
    bar.close()
    if saved_at != self.step:
      self.save()
    dt = time.perf_counter() - t0
    trainable, total = trainable_parameters(self.model)
    return FitResult(self.step, self.epoch, dict(self.metrics), r.best_metric, self.best_value, self.best_step,
                     self.out, dt, (self.step - start_step) / max(dt, 1e-9), trainable, total)

  def _mean_over_ranks(self, acc: dict[str, float]) -> dict[str, float]:
    """The step's loss and terms averaged over the ranks (a term a rank's batches lacked counts 0 there)."""
    if self.world.size == 1:
      return acc
    names = ["loss", *self.loss.term_names()]
    t = torch.tensor([acc.get(k, 0.0) for k in names], dtype=torch.float64, device=self.device)
    torch.distributed.all_reduce(t)
    return dict(zip(names, (t / self.world.size).tolist(), strict=True))

  def _record(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
    """Expose per-sample losses (the hard-example sampler's input)."""
    self.last_sample_losses = (indices.detach().cpu(), losses.detach().cpu())
    if self.sampler is not None and hasattr(self.sampler, "update"):
      self.sampler.update(*self.last_sample_losses)

  def _log_train(self, row: dict) -> None:
    if self.train_log is not None:
      self.train_log.write(row)
    if self.tb is not None:
      for k, v in row.items():
        if k not in ("step", "epoch"):
          self.tb.add_scalar(f"train/{k}", v, row["step"])

  # ---- validation

  @torch.no_grad()
  def validation_losses(self, model: nn.Module, val_ds: Dataset) -> dict[str, float]:
    """The default evaluate: the recipe's loss terms averaged over the validation set ("val/loss" = mean
    per-sample weighted total, "val/<term>" = each term's mean over batches)."""
    sums: dict[str, float] = {}
    n_batches, total, n = 0, 0.0, 0
    for batch in self._loader(torch.arange(len(val_ds)), val_ds, self.recipe.run.seed, drop_last=False):
      res = self._forward(self._to_device(batch))
      total += float(res.per_sample.sum())
      n += len(res.per_sample)
      for k, v in res.terms.items():
        sums[k] = sums.get(k, 0.0) + v
      n_batches += 1
    if not n:
      raise ValueError("validation set is empty")
    return {"val/loss": total / n, **{f"val/{k}": v / n_batches for k, v in sums.items()}}

  def validate(self) -> dict[str, float]:
    """Run evaluate (on the EMA weights when EMA is on), log, and update best/ when the metric improved."""
    r = self.recipe.run
    self.model.eval()
    with self.ema.applied(self.model) if self.ema else contextlib.nullcontext():
      metrics = {k: float(v) for k, v in self.evaluate(self.model, self.val_ds).items()}
      if r.best_metric not in metrics:
        raise ValueError(f"best_metric {r.best_metric!r} not among the validation metrics {sorted(metrics)}")
      value = metrics[r.best_metric]
      better = math.isfinite(value) and (self.best_value is None or
                                         (value < self.best_value if r.best_mode == "min" else value > self.best_value))
      if better:
        self.best_value, self.best_step = value, self.step
        self.ckpt.save_best(self.step, self.model.state_dict(), {"step": self.step, "epoch": self.epoch},
                            {"epoch": self.epoch, "metric": r.best_metric, "value": value, "recipe": self.recipe.name})
    self._set_train()
    self.metrics = metrics
    if "csv" in r.log:
      if self.val_log is None:
        self.val_log = CsvLog(self.out / "val.csv", ["step", "epoch", *sorted(metrics)])
      self.val_log.truncate_after(self.step - 1)   # a resumed run validates again a step validated before a kill
      self.val_log.write({"step": self.step, "epoch": self.epoch, **metrics})
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, v, self.step)
    return metrics

  # ---- state

  def state_dict(self) -> dict:
    """Everything but the model weights, as tensors / primitives (weights_only loadable)."""
    return {
      "optimizer": self.optimizer.state_dict(),
      "scaler": self.scaler.state_dict(),
      "ema": dict(self.ema.shadow) if self.ema else {},
      "loss": self.loss.state_dict(),
      "rng": rng_state(),
      "position": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                   "order": self.order if self.order is not None else torch.zeros(0, dtype=torch.int64),
                   "has_order": self.order is not None, "world_size": self.world.size},
      "best": {"value": self.best_value, "step": self.best_step},
      "metrics": dict(self.metrics),
      "sampler": self.sampler.state_dict() if self.sampler is not None and hasattr(self.sampler, "state_dict") else {},
    }

  def load_state_dict(self, state: dict) -> None:
    """Inverse of state_dict()."""
    self.optimizer.load_state_dict(state["optimizer"])
    self.scaler.load_state_dict(state["scaler"])
    if self.ema is not None:
      if not state["ema"]:
        raise ValueError("checkpoint has no EMA state but the recipe enables EMA")
      self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
    self.loss.load_state_dict(state["loss"])
    p = state["position"]
    if p.get("world_size", 1) != self.world.size:
      raise ValueError(f"the checkpoint was written by {p.get('world_size', 1)} process(es), this run has "
                       f"{self.world.size}: resume with the same number (each rank's data order depends on it)")
    own = state["ranks"][self.world.rank] if self.world.size > 1 else {"rng": state["rng"], "order": p["order"]}
    set_rng_state(own["rng"])
    self.step, self.epoch, self.batch_in_epoch = p["step"], p["epoch"], p["batch_in_epoch"]
    self.order = own["order"] if p["has_order"] else None
    self.best_value, self.best_step = state["best"]["value"], state["best"]["step"]
    self.metrics = dict(state["metrics"])
    if state["sampler"] and hasattr(self.sampler, "load_state_dict"):
      self.sampler.load_state_dict(state["sampler"])

  def save(self) -> Path | None:
    """Checkpoint the current state (see checkpoint.py). Every rank calls it (their RNG states and data orders
    are gathered); rank 0 writes and returns the folder, the others None."""
    state = self.state_dict()
    if self.world.size > 1:
      ranks: list = [None] * self.world.size
      torch.distributed.all_gather_object(ranks, {"rng": state["rng"], "order": state["position"]["order"]})
      state["ranks"] = ranks
    if not self.world.main:
      return None
    return self.ckpt.save(self.step, self.model.state_dict(), state, {"epoch": self.epoch, "recipe": self.recipe.name,
                                                                      "recipe_fields": recipe_fields(self.recipe)})

  def resume(self, new_recipe: bool = False) -> bool:
    """Restore the newest valid checkpoint in the run folder; False when there is none; ValueError when there are
    checkpoints but none is valid (starting over would replace best/ and the logs of the run), and when the
    checkpoint was trained under a recipe that differs in a field outside recipe.RESUMABLE, unless `new_recipe`
    (then training goes on under this recipe; a changed best metric starts its best over)."""
    ckpt = self.ckpt.latest()
    if ckpt is None:
      if self.ckpt.list():
        raise ValueError(f"{self.ckpt.dir}: no valid checkpoint to resume ({len(self.ckpt.list())} corrupt or "
                         "partial): pass --restart to start the run over (its logs and best/ are replaced)")
      self._truncate_logs()   # killed before its first checkpoint: rows it logged are redone from step 0
      return False
    recorded = ckpt.meta.get("recipe_fields")
    changed = recipe_changes(recorded, self.recipe) if recorded is not None else []
    if changed and not new_recipe:
      raise ValueError(f"{ckpt.path}: trained under another recipe ({'; '.join(changed)}): resume with the run's "
                       "recipe, pass --new-recipe to go on under this one, or --restart to start over")
    model_state, state = self.ckpt.load(ckpt)  # on CPU: RNG states must stay CPU tensors
    from tools.fair.distill.qat import FAKE_QUANT_PREFIX, is_qat_state, load_state
    qat = is_qat_state(model_state)
    if qat and not self.qat_active:   # the run was past [quant] start_step: the fake-quantized graph first
      self._start_qat()
    fix = "resume with the recipe the run was trained with, or pass --restart to start it over"
    def shapes(state):  # QAT observers take their size at their first forward: only their names must match
      return {k: None if k.startswith(FAKE_QUANT_PREFIX) else tuple(v.shape) for k, v in state.items()}
    mine, theirs = shapes(self.model.state_dict()), shapes(model_state)
    if mine != theirs:
      diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
      raise ValueError(f"{ckpt.path}: a checkpoint of another model ({len(diff)} tensors missing or of another "
                       f"shape, e.g. {diff[0]} {theirs.get(diff[0])} vs this recipe's {mine.get(diff[0])}): {fix}")
    if qat:
      load_state(self.model, model_state)
    else:
      self.model.load_state_dict(model_state)
    try:
      self.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:   # optimizer groups, loss terms, EMA of another recipe
      raise ValueError(f"{ckpt.path}: the training state does not fit this recipe ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:160]}): {fix}") from None
    if any(c.startswith(("run.best_metric ", "run.best_mode ")) for c in changed):
      self.best_value, self.best_step = None, -1   # the recorded best is a value of the other metric
    if self.world.main and (changed or recorded is None):
      print(f"{ckpt.path}: " + (f"resuming under a changed recipe: {'; '.join(changed)}" if changed else
                                "records no recipe (an older checkpoint): resuming without comparing recipes"))
    self._truncate_logs()
    return True

  def _truncate_logs(self) -> None:
    """Drop the log rows after the step the run resumes from."""
    if self.train_log is not None:
      self.train_log.truncate_after(self.step)
    val = self.out / "val.csv"
    if "csv" in self.recipe.run.log and val.is_file() and self.world.main:
      with open(val, newline="") as f:
        self.val_log = CsvLog(val, next(csv.reader(f), ["step"]))
      self.val_log.truncate_after(self.step)

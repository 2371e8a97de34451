"""`fair flow-train`: train the UnSAMFlow-style flow network on segments, without flow labels.

Frames: every segment's road video decoded and warped into the calibrated model frame at `--scale`
(medmodel_warp.warp_rgb, the pixels teachers see); pairs (t, t + 1). The last `--holdout` fraction of each
segment's pairs is held out (the pair bridging train and held-out frames is dropped). Masks for the UnSAMFlow
terms (`--masks`):
  none         photometric + smoothness only (ARFlow);
  gt           simulated segments only: the generator's ground truth as a stand-in for SAM's everything-mode
               masks: actor instances, and connected components of the semantic map for the rest (road, sky, ...);
  store:PATH   a SAM 2 teacher's VideoMasks instance maps from a label store (teacher "sam2"; objects only).
Training: AdamW, batches of random pairs (random horizontal flips), the forward-backward occlusion check from
`--occ-from` steps on. Every `--save-every` steps and at the end an atomic checkpoint DIR/train/checkpoint.pt
(model, optimiser, sampling RNG, step) is written; a run on an existing DIR resumes from it exactly (refusing other
settings). At the end DIR/flow/ (config.json + model.safetensors: what teachers.flow.FlowTeacher loads) is written
and, for simulated segments, the held-out pairs are evaluated against the generator's exact flow (EPE, Fl, vs
zero flow) and ego-motion from predicted flow + ground-truth depth (vs constant-velocity baselines) into
DIR/eval.json. `--save-pairs FILE.npz` stores the decoded pairs and the held-out ground truth; `--pairs FILE.npz`
trains and evaluates from it without PyAV, pycapnp or the segments (evaluation also needs scipy), e.g. `--device cuda`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from selfdrive.modeld_fair.camera import MEDMODEL, CameraModel
from selfdrive.modeld_fair.classes import IGNORE_ID
from tools.fair.device import add_device_argument, resolve_device
from tools.fair.flow.losses import LossConfig, unsupervised_loss
from tools.fair.flow.model import FlowNet, FlowNetConfig, photometric_residual
from tools.fair.progress import progress_bar

# Decoding (tools.fair.routes: PyAV, pycapnp), rendering the ground truth (tools.fair.sim), cv2 and scipy (motion)
# are imported where used: training from a saved pair file (--pairs) needs only torch and numpy.

MASK_TEACHER = "sam2"   # the label-store teacher whose VideoMasks feed --masks store:PATH
# ego-motion trusts only pixels whose predicted flow explains the next frame (channel-mean |I1 - warp(I2)| in
# [0, 1] units, about 5 grey levels): where photometry cannot see the motion (weakly textured road) the network's
# flow is smoothness fill-in and falls short. Translation error 4-7 points lower than with every visible static
# pixel on every set of trained weights tried (docs/benchmarks/flow.md)
EGO_MAX_RESIDUAL = 0.02


@dataclass(frozen=True)
class TrainConfig:
  """Everything that determines the trained weights (a resumed run must match it)."""
  segments: tuple[str, ...]
  scale: float = 0.25
  masks: str = "none"
  net: FlowNetConfig = field(default_factory=lambda: FlowNetConfig(output_level=2, coords=True))
  loss: LossConfig = field(default_factory=LossConfig)
  batch: int = 4
  lr: float = 1e-3
  weight_decay: float = 1e-4
  warmup: int = 50          # linear learning-rate warm-up steps
  occ_from: int = 150       # steps before the forward-backward occlusion check is used
  holdout: float = 0.2
  seed: int = 0

  def to_json(self) -> str:
    return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True, eq=False)
class HeldTruth:
  """The generator's ground truth of the evaluable held-out pairs (simulated segments, t >= 1: the previous pair
  gives a baseline), stacked over P pairs in the model frame: what `evaluate` needs, kept with the frames so that a
  saved pair file evaluates without the segments."""
  pairs: np.ndarray        # (P, 2) int (segment, t)
  flow: np.ndarray         # (P, H, W, 2) float32 exact flow t -> t + 1
  valid: np.ndarray        # (P, H, W) bool: visible in both frames
  depth: np.ndarray        # (P, H, W) float32 depth of frame t (inf = sky)
  still: np.ndarray        # (P, H, W) bool: no actor (static world)
  dt: np.ndarray           # (P,) s
  rotation: np.ndarray     # (P, 3, 3) pose of camera t + 1 in camera t ...
  translation: np.ndarray  # (P, 3) ... (m)
  prev_rotation: np.ndarray     # (P, 3, 3) the same for the pair (t - 1, t) ...
  prev_translation: np.ndarray  # (P, 3)
  step_m: np.ndarray       # (P,) logged speed at t times dt (m)


@dataclass(frozen=True, eq=False)
class PairData:
  """Frames of all segments in the model frame, with the training and held-out pair indices."""
  camera: CameraModel
  frames: list[np.ndarray]              # per segment (N, H, W, 3) uint8
  segments: list[np.ndarray | None]     # per segment (N, H, W) int32 segment maps, or None
  train: list[tuple[int, int]]          # (segment, t) of training pairs
  held: list[tuple[int, int]]           # (segment, t) of held-out pairs
  paths: list[Path]
  scale: float = 0.25                   # load_pairs' arguments, so that a saved file rebuilds the TrainConfig
  masks: str = "none"
  holdout: float = 0.2
  truth: HeldTruth | None = None        # None: no simulated segment (nothing to evaluate against)


def gt_segments(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
  """The 'everything' segment map made of ground truth, as SAM's automatic masks would split the frame: one
  segment per actor instance, and one per connected component of each semantic class elsewhere. Ids 1..K
  (consecutive, as losses.homography_loss wants); 0 for unlabelled pixels."""
  import cv2
  out = np.where(instance > 0, instance.astype(np.int64), 0)
  next_id = int(out.max()) + 1
  for c in np.unique(semantic):
    if c == IGNORE_ID:
      continue
    n, comp = cv2.connectedComponents(((semantic == c) & (instance == 0)).astype(np.uint8), connectivity=4)
    m = comp > 0
    out[m] = comp[m] + next_id - 1
    next_id += n - 1
  return compact_ids(out)


def compact_ids(seg: np.ndarray) -> np.ndarray:
  """Segment map relabelled to 1..K in order of the old ids (0 stays 0), int32."""
  ids, inv = np.unique(seg, return_inverse=True)
  return (inv.reshape(seg.shape) + (0 if ids[0] == 0 else 1)).astype(np.int32)


def _store_segments(store_path: str, seg, frame_ids: list[int], camera: CameraModel) -> np.ndarray:
  import cv2
  try:
    from tools.fair.labels.store import LabelStore
  except ImportError as e:
    raise ValueError(f"--masks store: needs the label store (tools.fair.labels.store): {e}") from None
  data = LabelStore(store_path).read(MASK_TEACHER, seg.path.name, fields=["instance"])
  by_id = {int(f): k for k, f in enumerate(data["frame_id"])}
  missing = [f for f in frame_ids if f not in by_id]
  if missing:
    raise ValueError(f"label store {store_path} has no {MASK_TEACHER} masks for frames {missing[:5]} of "
                     f"{seg.path.name}")
  maps = np.stack([compact_ids(m) for m in data["instance"][[by_id[f] for f in frame_ids]]])
  if maps.shape[1:] != (camera.height, camera.width):
    maps = np.stack([cv2.resize(m, (camera.width, camera.height), interpolation=cv2.INTER_NEAREST) for m in maps])
  return maps


def load_pairs(paths, scale: float, masks: str = "none", holdout: float = 0.2, progress: bool = True) -> PairData:
  """Decode and warp the segments' frames into MEDMODEL.scaled(scale); segment maps per `masks`."""
  if not 0 <= holdout < 1:
    raise ValueError(f"holdout must be in [0, 1), got {holdout}")
  if masks not in ("none", "gt") and not masks.startswith("store:"):
    raise ValueError(f"--masks must be none, gt or store:PATH, got {masks!r}")
  from selfdrive.modeld_fair.medmodel_warp import warp_rgb, warp_tables
  from tools.fair.routes import Segment
  from tools.fair.sim.gt import load_segment_scene, render_gt
  camera = MEDMODEL.scaled(scale)
  frames, segs, train, held, folders, truths = [], [], [], [], [], []
  for si, path in enumerate(progress_bar([Path(p) for p in paths], desc="load", unit="segment", disable=not progress)):
    seg = Segment(path)
    tables, rgb, ids = {}, [], []
    for f in seg.frames():
      rpy = seg.warp_calibration(f)
      if rpy not in tables:
        tables[rpy] = warp_tables(seg.camera, rpy, camera, full_chroma=True)
      rgb.append(warp_rgb(f.nv12, tables[rpy]))
      ids.append(f.frame_id if f.frame_id is not None else f.index)
    n = len(rgb)
    if n < 2:
      raise ValueError(f"{path}: {n} frame(s); need at least 2 for a pair")
    gts = {}
    if masks == "gt":
      load_segment_scene(path)   # FileNotFoundError for a real segment: gt masks need a simulated one
      gts = {i: render_gt(path, i, "model", (camera.width, camera.height)) for i in range(n)}
      segs.append(np.stack([gt_segments(g.semantic, g.instance) for g in gts.values()]))
    elif masks.startswith("store:"):
      segs.append(_store_segments(masks[len("store:"):], seg, ids, camera))
    else:
      segs.append(None)
    n_held = int(round((n - 1) * holdout))
    first_held = n - 1 - n_held
    train += [(si, t) for t in range(first_held - (1 if n_held else 0))]
    held += [(si, t) for t in range(first_held, n - 1)]
    if (path / "scene.json").is_file():
      truths += [_pair_truth(si, t, path, camera, gts.get(t)) for t in range(max(first_held, 1), n - 1)]
    frames.append(np.stack(rgb))
    folders.append(path)
  if not train:
    raise ValueError("no training pairs: segments too short for the held-out fraction")
  truth = HeldTruth(*(np.stack(x) for x in zip(*truths))) if truths else None
  return PairData(camera, frames, segs, train, held, folders, scale, masks, holdout, truth)


def _pair_truth(s: int, t: int, path: Path, camera: CameraModel, g=None) -> tuple:
  """One held-out pair's fields of HeldTruth, rendered by the generator (g: frame t's GroundTruth if at hand)."""
  from tools.fair.flow.motion import scene_relative_pose
  from tools.fair.sim.gt import load_segment_scene, render_gt
  scene = load_segment_scene(path)
  g = g or render_gt(path, t, "model", (camera.width, camera.height))
  dt = 1 / scene.fps
  (r, tr), (pr, ptr) = scene_relative_pose(scene, t), scene_relative_pose(scene, t - 1)
  return (np.array([s, t]), g.flow.astype(np.float32), g.flow_valid, g.depth.astype(np.float32), g.instance == 0,
          np.float64(dt), r, tr, pr, ptr, np.float64(float(scene.ego.v[t]) * dt))


def save_pairs(data: PairData, path) -> Path:
  """Write PairData to one compressed .npz (atomically): frames, segment maps, pair lists, the held-out ground
  truth and load_pairs' arguments. load_pairs_npz reads it back without decoding or rendering anything."""
  path = Path(path)
  if path.suffix != ".npz":
    raise ValueError(f"pair file must end in .npz, got {path}")
  arrays = {"meta": np.array(json.dumps({"camera": asdict(data.camera), "paths": [str(p) for p in data.paths],
                                         "scale": data.scale, "masks": data.masks, "holdout": data.holdout})),
            "train": np.array(data.train, np.int64).reshape(-1, 2),
            "held": np.array(data.held, np.int64).reshape(-1, 2)}
  for i, (f, sg) in enumerate(zip(data.frames, data.segments)):
    arrays[f"frames_{i}"] = f
    if sg is not None:
      if sg.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"segment {data.paths[i]}: more than 65535 segment ids")
      arrays[f"segments_{i}"] = sg.astype(np.uint16)   # ids 1..K: a third of the file of int32
  if data.truth is not None:
    arrays |= {f"truth_{k}": v for k, v in asdict(data.truth).items()}
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
  return path


def load_pairs_npz(path) -> PairData:
  """PairData written by save_pairs. FileNotFoundError / ValueError for a missing or foreign file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no pair file {path}")
  with np.load(path, allow_pickle=False) as z:
    if "meta" not in z.files:
      raise ValueError(f"{path} is not a pair file written by --save-pairs")
    meta = json.loads(str(z["meta"]))
    n = len(meta["paths"])
    frames = [z[f"frames_{i}"] for i in range(n)]
    segs = [z[f"segments_{i}"].astype(np.int32) if f"segments_{i}" in z.files else None for i in range(n)]
    names = [f.name for f in fields(HeldTruth)]
    truth = HeldTruth(*(z[f"truth_{k}"] for k in names)) if "truth_pairs" in z.files else None
    train = [tuple(int(v) for v in p) for p in z["train"]]
    held = [tuple(int(v) for v in p) for p in z["held"]]
  return PairData(CameraModel(**meta["camera"]), frames, segs, train, held, [Path(p) for p in meta["paths"]],
                  meta["scale"], meta["masks"], meta["holdout"], truth)


def _batch(data: PairData, picks: list[tuple[int, int]], flips: torch.Tensor, device: torch.device):
  """Images (B, 3, H, W) in [0, 1] of both frames and (2B, H, W) segment maps (or None), flipped where asked,
  on `device`."""
  a = np.stack([data.frames[s][t] for s, t in picks])
  b = np.stack([data.frames[s][t + 1] for s, t in picks])
  segs = None
  if data.segments[0] is not None:
    segs = np.concatenate([np.stack([data.segments[s][t] for s, t in picks]),
                           np.stack([data.segments[s][t + 1] for s, t in picks])])
  img1, img2 = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for x in (a, b))
  f = flips.bool()
  img1[f], img2[f] = img1[f].flip(-1), img2[f].flip(-1)
  if segs is not None:
    segs = torch.from_numpy(segs).long()
    f2 = torch.cat([f, f])
    segs[f2] = segs[f2].flip(-1)
    segs = segs.to(device)
  return img1.to(device), img2.to(device), segs


def _checkpoint_path(out: Path) -> Path:
  return out / "train" / "checkpoint.pt"


def _save_checkpoint(out: Path, net, opt, gen: torch.Generator, step: int, config: TrainConfig) -> None:
  path = _checkpoint_path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state(), "step": step,
              "config": config.to_json()}, tmp)
  os.replace(tmp, path)


def _lr(config: TrainConfig, step: int) -> float:
  return config.lr * min(1.0, (step + 1) / max(config.warmup, 1))


def train_flow(config: TrainConfig, out, steps: int | None = None, minutes: float | None = None,
               save_every: int = 50, progress: bool = True, data: PairData | None = None,
               halt_after: int | None = None, device: str | torch.device = "cpu") -> tuple[FlowNet, int]:
  """Train (or resume) in `out` until `steps` total steps or `minutes` of this run's training, whichever comes
  first; writes the checkpoint and DIR/flow/. Returns the network (on `device`) and the step reached. The
  network is initialised and the batches sampled on the CPU (the same run on every device; resuming is exact on
  the same device), model, batches and loss run on `device`. `halt_after` is a test hook: stop after that many
  steps of this run as a kill would (no checkpoint, no export)."""
  if steps is None and minutes is None:
    raise ValueError("give --steps or --minutes (or both)")
  out, device = Path(out), resolve_device(device)
  data = data or load_pairs(config.segments, config.scale, config.masks, config.holdout, progress)
  torch.manual_seed(config.seed)
  net = FlowNet(config.net).to(device)
  opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
  gen = torch.Generator().manual_seed(config.seed)
  step = 0
  ckpt = _checkpoint_path(out)
  if ckpt.is_file():
    state = torch.load(ckpt, weights_only=True, map_location=device)
    if state["config"] != config.to_json():
      raise ValueError(f"{out} holds a run with other settings; use another --out or the same settings\n"
                       f"  theirs: {state['config']}\n  yours:  {config.to_json()}")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["rng"].cpu())
    step = int(state["step"])
  start, t0 = step, time.monotonic()
  total = steps if steps is not None else None
  bar = progress_bar(total=total, initial=step, desc="flow-train", unit="step", disable=not progress)
  net.train()
  while (steps is None or step < steps) and (minutes is None or time.monotonic() - t0 < minutes * 60):
    idx = torch.randint(len(data.train), (config.batch,), generator=gen)
    flips = torch.rand(config.batch, generator=gen) < 0.5
    img1, img2, segs = _batch(data, [data.train[i] for i in idx.tolist()], flips, device)
    for g in opt.param_groups:
      g["lr"] = _lr(config, step)
    flows = net(img1, img2, backward=True)
    terms = unsupervised_loss(flows, img1, img2, segs, config.loss, occlusion_aware=step >= config.occ_from)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    opt.step()
    step += 1
    bar.update(1)
    bar.set_postfix(loss=f"{terms.total.item():.4f}", photo=f"{terms.photometric:.4f}", hom=f"{terms.homography:.3f}",
                    occ=f"{terms.occluded:.2f}")
    if halt_after is not None and step - start >= halt_after:
      bar.close()
      return net.eval(), step
    if step % save_every == 0:
      _save_checkpoint(out, net, opt, gen, step, config)
  bar.close()
  _save_checkpoint(out, net, opt, gen, step, config)
  net.eval()
  cam = data.camera
  net.save(out / "flow", {"camera": asdict(cam), "trained": {"steps": step, "config": json.loads(config.to_json())}})
  return net, step


def evaluate(net: FlowNet, data: PairData, device: str | torch.device = "cpu",
             max_residual: float | None = EGO_MAX_RESIDUAL) -> dict:
  """Held-out pairs of simulated segments (data.truth): flow EPE / Fl on the generator's visible pixels
  (pixel-weighted over all pairs) of the prediction and of zero flow, and ego-motion errors from predicted flow +
  GT depth vs constant-velocity baselines (the held-out pairs' mean motion; straight ahead at the logged speed;
  the previous pair's true motion) and vs exact flow + GT depth. Ego-motion uses the static pixels (no actor)
  that the forward-backward check finds visible and whose photometric residual under the predicted flow is below
  `max_residual` (None: no such filter). Frames in data.camera pixels; the network runs on `device`."""
  from tools.fair.bench.metrics.egomotion import relative_pose_errors
  from tools.fair.flow.motion import ego_motion
  cam, truth, device = data.camera, data.truth, resolve_device(device)
  if truth is None or not len(truth.pairs):
    return {"pairs": 0}
  net = net.to(device).eval()
  sums = {"epe": 0.0, "fl": 0.0, "zero_epe": 0.0, "zero_fl": 0.0, "n": 0, "ego_failed": 0}
  ego = {"flow": [], "gt_flow": []}
  for k, (s, t) in enumerate(truth.pairs.tolist()):
    img1, img2 = (torch.from_numpy(data.frames[s][i][None]).permute(0, 3, 1, 2).float().div(255).to(device)
                  for i in (t, t + 1))
    flow, occ = net.predict(img1, img2)
    pred = flow[0].permute(1, 2, 0).cpu().numpy()
    confirmed = ~occ[0, 0]
    if max_residual is not None:
      confirmed &= photometric_residual(img1, img2, flow)[0] < max_residual
    gt_flow, v, depth, dt = truth.flow[k], truth.valid[k], truth.depth[k], float(truth.dt[k])
    epe = np.linalg.norm(pred - gt_flow, axis=-1)[v]
    mag = np.linalg.norm(gt_flow, axis=-1)[v]
    zero = mag
    sums["epe"] += float(epe.sum(dtype=np.float64))
    sums["fl"] += int(((epe > 3) & (epe > 0.05 * mag)).sum())
    sums["zero_epe"] += float(zero.sum(dtype=np.float64))
    sums["zero_fl"] += int(((zero > 3) & (zero > 0.05 * mag)).sum())
    sums["n"] += int(v.sum())
    static = truth.still[k] & confirmed.cpu().numpy()
    try:
      ego["flow"].append(_pose(ego_motion(pred, depth, cam, static=static, dt=dt)))
    except ValueError:    # too few consistent static pixels: counted, and scored as "no motion"
      sums["ego_failed"] += 1
      ego["flow"].append((np.eye(3), np.zeros(3)))
    ego["gt_flow"].append(_pose(ego_motion(gt_flow, depth, cam, static=v & truth.still[k], dt=dt)))
  n = max(sums["n"], 1)
  out = {"pairs": len(truth.pairs), "frame": f"{cam.name} {cam.width}x{cam.height}", "valid_pixels": sums["n"],
         "epe": sums["epe"] / n, "fl_all": sums["fl"] / n, "zero_epe": sums["zero_epe"] / n,
         "zero_fl_all": sums["zero_fl"] / n, "ego_failed": sums["ego_failed"], "ego_max_residual": max_residual}
  from scipy.spatial.transform import Rotation
  p = len(truth.pairs)
  straight = np.zeros((p, 3))
  straight[:, 0] = truth.step_m
  # the constant-velocity baselines: one motion for every pair (the held-out pairs' own mean: the best constant,
  # it sees no input), the logged speed straight ahead, the previous pair's true motion
  mean_rot = Rotation.from_matrix(truth.rotation).mean().as_matrix()
  poses = {k: tuple(np.stack(x) for x in zip(*v)) for k, v in ego.items()} | {
    "cv_mean": (np.broadcast_to(mean_rot, (p, 3, 3)), np.broadcast_to(truth.translation.mean(0), (p, 3))),
    "cv_speed": (np.broadcast_to(np.eye(3), (p, 3, 3)), straight),
    "cv_prev": (truth.prev_rotation, truth.prev_translation)}
  for k in ("flow", "gt_flow", "cv_mean", "cv_speed", "cv_prev"):
    e = relative_pose_errors(poses[k], (truth.rotation, truth.translation))
    out[f"ego_{k}"] = {"trans_m": float(e.trans_m), "trans_rel_pct": float(e.trans_rel_pct),
                       "rot_deg": float(e.rot_deg)}
  return out


def _pose(e) -> tuple[np.ndarray, np.ndarray]:
  return e.rotation, e.translation


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("segments", nargs="*", type=Path, help="segment folders (simulated ones also give the evaluation)")
  p.add_argument("--out", type=Path, help="run folder: train/checkpoint.pt, flow/ (the weights FlowTeacher loads "
                 "with --weights OUT), eval.json; an existing run resumes")
  p.add_argument("--save-pairs", type=Path, metavar="FILE.npz", help="decode SEGMENTS into the model frame, write "
                 "frames, segment maps and the held-out ground truth to FILE.npz and stop (no training)")
  p.add_argument("--pairs", type=Path, metavar="FILE.npz", help="train from a --save-pairs file instead of SEGMENTS "
                 "(needs neither PyAV nor pycapnp; --scale/--masks/--holdout come from the file)")
  add_device_argument(p)   # where model, batches and loss run
  p.add_argument("--minutes", type=float, default=None, help="training time of this run (default: 10 without --steps)")
  p.add_argument("--steps", type=int, default=None, help="total training steps (resumed runs count earlier ones)")
  p.add_argument("--scale", type=float, default=None, help="model frame scale: 0.25 = 128x64 (default), 1 = 512x256")
  p.add_argument("--masks", default=None, help="none (default) | gt (simulated segments: ground truth as the SAM "
                 "stand-in) | store:PATH (SAM 2 VideoMasks of a label store)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--lr", type=float, default=TrainConfig.lr)
  p.add_argument("--w-smooth", type=float, default=LossConfig.w_smooth, help="smoothness weight")
  p.add_argument("--edge-alpha", type=float, default=LossConfig.edge_alpha, help="edge-awareness exp(-alpha |dI|)")
  p.add_argument("--w-blur", type=float, default=LossConfig.w_blur, help="weight of the blurred photometric terms")
  p.add_argument("--blur-sigmas", type=lambda v: tuple(float(x) for x in v.split(",") if x), default=LossConfig.blur_sigmas,
                 help="comma-separated Gaussian sigmas (pixels) of the blurred photometric terms ('' = none)")
  p.add_argument("--w-homography", type=float, default=LossConfig.w_homography, help="UnSAMFlow homography weight")
  p.add_argument("--width", type=float, default=1.0, help="multiplier of all network widths")
  p.add_argument("--levels", type=int, default=5, help="pyramid levels (input sides pad to multiples of 2^levels)")
  p.add_argument("--output-level", type=int, default=2, help="finest decoded level (1 = half resolution)")
  p.add_argument("--coords", action=argparse.BooleanOptionalAction, default=True,
                 help="give the flow estimator the pixel position (a driving camera's flow field depends on it)")
  p.add_argument("--holdout", type=float, default=None, help="held-out fraction of each segment's pairs (the end; "
                 "default 0.2)")
  p.add_argument("--occ-from", type=int, default=TrainConfig.occ_from,
                 help="step from which the occlusion check masks the loss")
  p.add_argument("--save-every", type=int, default=50, help="checkpoint interval (steps)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")


def _data(args: argparse.Namespace) -> PairData:
  """The pairs of SEGMENTS or of --pairs FILE (whose load_pairs arguments must not contradict the flags)."""
  t0 = time.monotonic()
  if args.pairs is not None:
    if args.segments:
      raise ValueError("give SEGMENTS or --pairs FILE, not both")
    data = load_pairs_npz(args.pairs)
    for name, given, saved in (("scale", args.scale, data.scale), ("masks", args.masks, data.masks),
                               ("holdout", args.holdout, data.holdout)):
      if given is not None and given != saved:
        raise ValueError(f"--{name} {given} contradicts {args.pairs} (made with {saved})")
  else:
    if not args.segments:
      raise ValueError("give segment folders or --pairs FILE")
    data = load_pairs([p.resolve() for p in args.segments], 0.25 if args.scale is None else args.scale,
                      args.masks or "none", 0.2 if args.holdout is None else args.holdout)
  print(f"{len(data.train)} training / {len(data.held)} held-out pairs in {data.camera.name} "
        f"{data.camera.width}x{data.camera.height} ({time.monotonic() - t0:.0f} s to load)")
  return data


def _net_config(width: float, levels: int, output_level: int, coords: bool = True) -> FlowNetConfig:
  base = FlowNetConfig()
  if not 2 <= levels <= 7:
    raise ValueError(f"--levels must be in 2..7, got {levels}")
  widths = [16, 32, 48, 64, 96, 128, 196][:levels]

  def w(x):
    return tuple(max(4, int(round(c * width))) for c in x)

  return replace(base, channels=w(widths), output_level=output_level, reduce=w((base.reduce,))[0],
                 estimator=w(base.estimator), context=w(base.context), coords=coords)


def run(args: argparse.Namespace) -> int:
  if args.threads:
    torch.set_num_threads(args.threads)
  if args.save_pairs is None and args.out is None:
    raise ValueError("give --out DIR (or --save-pairs FILE.npz)")
  data = _data(args)
  if args.save_pairs is not None:
    print(f"pairs -> {save_pairs(data, args.save_pairs)} ({args.save_pairs.stat().st_size / 2**20:.1f} MiB)")
    if args.out is None:
      return 0
  minutes = args.minutes if args.minutes is not None or args.steps is not None else 10.0
  loss = LossConfig(w_smooth=args.w_smooth, edge_alpha=args.edge_alpha, w_homography=args.w_homography,
                    w_blur=args.w_blur, blur_sigmas=args.blur_sigmas)
  config = TrainConfig(tuple(str(p) for p in data.paths), data.scale, data.masks,
                       _net_config(args.width, args.levels, args.output_level, args.coords), loss, args.batch, args.lr,
                       occ_from=args.occ_from, holdout=data.holdout, seed=args.seed)
  net, step = train_flow(config, args.out, args.steps, minutes, args.save_every, data=data, device=args.device)
  print(f"trained to step {step}: {sum(p.numel() for p in net.parameters())} parameters -> {args.out / 'flow'}")
  result = evaluate(net, data, args.device)
  tmp = args.out / "eval.json.tmp"
  tmp.write_text(json.dumps(result | {"steps": step, "device": str(args.device)}, indent=2))
  os.replace(tmp, args.out / "eval.json")
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":   # `python -m tools.fair.flow.train`: what `fair flow-train` runs, without the fair CLI's
  import sys                 # imports (tools.fair.routes needs PyAV), e.g. on a GPU machine training from --pairs
  parser = argparse.ArgumentParser(prog="flow-train", description=__doc__.splitlines()[0])
  add_arguments(parser)
  sys.exit(run(parser.parse_args()))

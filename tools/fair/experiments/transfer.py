"""The teacher -> student transfer experiment on generated data (issue 5 §4), one command, resumable:

  python -m tools.fair.experiments.transfer --preset full --out runs/transfer [--ship]   (make transfer)
  python -m tools.fair.experiments.transfer --preset mini --out /tmp/transfer-mini       (CI's miniature)

1. generate training and held-out segments (varied scenarios, both cameras) and their frame caches;
2. train teachers of real FAIR architectures on the training set's ground truth (DPT-DINOv2 depth, DINOv2 +
   linear segmentation head), saved with save_pretrained and loaded back through the teacher interface;
3. pseudo-label the training segments with them (`fair label`'s pipeline; the segmentation teacher's backbone
   doubles as the DINOv2 feature teacher);
4. distil the student from pseudo-labels and teacher features only (recipes/transfer_distill.toml; no ground
   truth reaches it), with hard-example mining; train the same student on ground truth as the reference
   (recipes/transfer_gt.toml); continue the ground-truth student on the teachers with DoRA adapters and with full
   fine-tuning (recipes/transfer_dora.toml) for the DoRA vs full comparison;
5. evaluate teachers and students on the held-out set, write OUT/report.md + OUT/metrics.json, export the
   distilled student to ONNX and, with --ship, make it the daemon's bundled default.
Every stage skips what a previous (interrupted) run finished; student runs resume from their checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

RECIPES = Path(__file__).resolve().parents[1] / "distill" / "recipes"
MODELS = Path(__file__).resolve().parents[3] / "selfdrive" / "modeld_fair" / "models"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "benchmarks"
SCALE = 0.5   # labels, caches and teachers work in the model frame at half size (256x128)


@dataclass(frozen=True)
class Preset:
  """Sizes of one experiment run."""
  train_segments: int
  val_segments: int
  seconds: float                  # per segment
  every: int                      # cache every n-th frame
  teacher_steps: int
  teacher_width: int              # DINOv2 hidden size of both teachers
  teacher_layers: int
  teacher_input: int              # teacher network input height (px)
  student_steps: int
  batch: int
  dora_steps: int
  workers: int = 2
  seed: int = 0
  randomise: bool = False         # domain-randomised training segments (sim/domain.py); val keeps the scenario look
  checks: dict = field(default_factory=dict)   # what the run must show (see check_result)


PRESETS = {
  # about an hour on the 2-core CPU of docs/benchmarks/transfer.md
  "full": Preset(train_segments=12, val_segments=4, seconds=5.0, every=1, teacher_steps=400, teacher_width=192,
                 teacher_layers=6, teacher_input=112, student_steps=1500, batch=8, dora_steps=300),
  # CI's ~2 minute miniature: the same code path at toy sizes; only "metrics move the right way" is checked
  "mini": Preset(train_segments=2, val_segments=1, seconds=1.0, every=1, teacher_steps=30, teacher_width=64,
                 teacher_layers=4, teacher_input=56, student_steps=40, batch=4, dora_steps=6, workers=1,
                 checks={"teacher_losses_fall": True, "distilled_beats_untrained": ("miou",)}),
}


def _log(msg: str) -> None:
  print(f"[transfer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- stages

def make_data(preset: Preset, out: Path):
  """Segments and frame caches of both splits (resumable)."""
  from tools.fair.data.cache import build_frame_cache
  from tools.fair.experiments.generate import generate_segments
  caches, segments = {}, {}
  for split, n, seed0 in (("train", preset.train_segments, 1000), ("val", preset.val_segments, 5000)):
    _log(f"generating {n} {split} segments of {preset.seconds:g} s")
    segments[split] = generate_segments(out / "segments" / split, n, preset.seconds, seed0 + preset.seed,
                                        workers=preset.workers, randomise=preset.randomise and split == "train")
    _log(f"frame cache {split}")
    caches[split] = build_frame_cache(segments[split], out / "cache" / split, scale=SCALE, every=preset.every,
                                      workers=preset.workers)
  return segments, caches


def _stack(cache, fields: list[str]) -> dict[str, np.ndarray]:
  rows = [cache.read(i, fields) for i in range(len(cache))]
  return {f: np.stack([r[f] for r in rows]) for f in fields}


def train_teachers(preset: Preset, cache, weights: Path) -> dict:
  """The two teachers trained on the training cache's ground truth (skipped when already saved)."""
  from tools.fair.experiments.teacher_training import (TRAINING_JSON, TeacherTrainConfig, train_depth_teacher,
                                                       train_seg_teacher)
  cfg = TeacherTrainConfig(hidden=preset.teacher_width, layers=preset.teacher_layers,
                           heads=max(1, preset.teacher_width // 64), input_height=preset.teacher_input,
                           steps=preset.teacher_steps, seed=preset.seed)
  data = None
  for name, train in (("dpt-depth", train_depth_teacher), ("dinov2-seg", train_seg_teacher)):
    if (weights / name / TRAINING_JSON).is_file():
      continue
    data = data or _stack(cache, ["rgb", "depth", "semantic"])
    _log(f"training teacher {name} on {len(data['rgb'])} ground-truth frames")
    target = data["depth"].astype(np.float32) if name == "dpt-depth" else data["semantic"]
    train(data["rgb"], target, weights, cfg)
  # the segmentation teacher's DINOv2 backbone, on its own, is the feature teacher ("dinov2")
  feat = weights / "dinov2"
  if not (feat / "config.json").is_file():
    tmp = weights / ".dinov2.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
      shutil.copy2(weights / "dinov2-seg" / f, tmp / f)
    tmp.replace(feat)
  return {n: json.loads((weights / n / TRAINING_JSON).read_text()) for n in ("dpt-depth", "dinov2-seg")}


def load_teachers(weights: Path, camera, feature_scale: float) -> dict:
  """The trained teachers through the same loading path as official weights (load_teacher)."""
  from tools.fair.experiments.teacher_training import depth_teacher_config
  from tools.fair.teachers import load_teacher
  from tools.fair.teachers.dinov2 import DinoConfig
  from tools.fair.teachers.dinov2_seg import DinoSegConfig
  # fed at the focal length it was trained at (training.json); DptDepthConfig's default would assume KITTI's
  return {"dpt-depth": load_teacher("dpt-depth", weights, config=depth_teacher_config(weights, camera)),
          "dinov2-seg": load_teacher("dinov2-seg", weights, config=DinoSegConfig(camera=camera)),
          "dinov2": load_teacher("dinov2", weights, config=DinoConfig(camera=camera, scale=feature_scale))}


def pseudo_label(segments, teachers: dict, store: Path) -> None:
  from tools.fair.labels.pipeline import LabelConfig, label_segments
  from tools.fair.labels.store import LabelStore
  _log(f"pseudo-labelling {len(segments)} segments with {', '.join(teachers)}")
  report = label_segments(segments, teachers, LabelStore(store), LabelConfig(scale=SCALE))
  _log(f"labelled {report.frames} frames in {report.seconds:.0f} s ({report.fps:.1f} frames/s)")


def recipe(name: str, preset: Preset, out: Path, caches: dict, steps: int, **data):
  """A recipe file of tools/fair/distill/recipes with this run's data ([data] fields), length and output folder."""
  from tools.fair.distill.recipe import recipe_from_dict
  table = tomllib.loads((RECIPES / f"{name}.toml").read_text())
  table["data"] = {**table.get("data", {}), "train": [str(caches["train"].root)], "val": [], **data}
  warmup = min(table.get("optim", {}).get("warmup_steps", 100), max(1, steps // 10))  # short runs reach full lr
  table["optim"] = {**table.get("optim", {}), "steps": steps, "batch_size": preset.batch, "warmup_steps": warmup}
  table["run"] = {**table.get("run", {}), "out": str(out / "runs" / name), "seed": preset.seed}
  return recipe_from_dict(table, name, where=str(RECIPES / f"{name}.toml"))


def train_student(r, mining: bool = False):
  """Fit (or resume) a recipe; returns (the trained model with EMA weights applied, its fit summary, mining report).
  The summary (steps, training time, parameters) is kept in the run folder's fit.json, so a resumed run that has
  nothing left to train still reports the time its training took."""
  import copy

  import torch

  from tools.fair.data.mining import HardExampleSampler
  from tools.fair.distill.recipe import build_dataset
  from tools.fair.distill.trainer import DistillationTrainer, build_model
  from tools.fair.files import atomic_write
  train_ds = build_dataset(r.data, "train")
  sampler = HardExampleSampler(len(train_ds), seed=r.run.seed) if mining else None
  trainer = DistillationTrainer(r, build_model(r), train_ds, None, sampler=sampler)
  if trainer.resume():
    _log(f"{r.name}: resumed at step {trainer.step}")
  _log(f"{r.name}: training to step {trainer.total_steps} on {len(train_ds)} samples")
  start = trainer.step
  result = trainer.fit()
  path = Path(r.run.out) / "fit.json"
  summary = json.loads(path.read_text()) if path.is_file() else {"train_time_s": 0.0}
  if result.step > start:
    summary = {"steps": result.step, "train_time_s": summary["train_time_s"] + result.train_time_s,
               "trainable_params": result.trainable_params, "total_params": result.total_params}
    atomic_write(path, json.dumps(summary))
  model = copy.deepcopy(trainer.model)
  if trainer.ema is not None:
    with trainer.ema.applied(trainer.model):
      model.load_state_dict(trainer.model.state_dict())
  report = sampler.report(10, records=train_ds.record) if sampler is not None else ""
  return model.eval().to(torch.device("cpu")), summary, report


def evaluate_all(preset: Preset, caches: dict, teachers: dict, students: dict) -> dict:
  """Held-out metrics of teachers and students (+ their sizes)."""
  from tools.fair.data.dataset import StudentDataset
  from tools.fair.experiments.evaluate import evaluate_student, evaluate_teachers, student_size, teacher_size
  val = StudentDataset(caches["val"], use_gt=True, seed=preset.seed)
  data = _stack(caches["val"], ["rgb", "depth", "semantic"])
  t = evaluate_teachers(data["rgb"], data["depth"].astype(np.float32), data["semantic"],
                        depth_teacher=teachers["dpt-depth"], seg_teacher=teachers["dinov2-seg"])
  rows = {"teacher: DPT-DINOv2 depth": {**t["depth"], **teacher_size(teachers["dpt-depth"], data["rgb"][0])},
          "teacher: DINOv2 + linear seg": {**t["seg"], **teacher_size(teachers["dinov2-seg"], data["rgb"][0])}}
  for name, model in students.items():
    _log(f"evaluating {name}")
    rows[name] = {**evaluate_student(model, val), **student_size(model)}
  return rows


def _merge_timings(out: Path, timings: dict) -> dict:
  """Stage times of this invocation merged into OUT/timings.json: a stage that found its outputs complete (under
  2 s) keeps the time of the invocation that did its work; total = the sum of the stages."""
  from tools.fair.files import atomic_write
  path = out / "timings.json"
  merged = json.loads(path.read_text()) if path.is_file() else {}
  merged.update({k: v for k, v in timings.items() if v >= 2.0 or k not in merged})
  merged["total"] = sum(v for k, v in merged.items() if k != "total")
  atomic_write(path, json.dumps(merged, indent=1))
  return merged


def check_result(preset: Preset, metrics: dict) -> list[str]:
  """The preset's checks that failed (CI's miniature: the metrics must move the right way)."""
  failed = []
  if preset.checks.get("teacher_losses_fall"):
    for name, t in metrics["teachers"].items():
      if not t["loss_last20"] < t["loss_first20"]:
        failed.append(f"teacher {name}: loss did not fall ({t['loss_first20']:.3f} -> {t['loss_last20']:.3f})")
  rows = metrics["rows"]
  for key in preset.checks.get("distilled_beats_untrained", ()):
    d, u = rows["student (distilled)"][key], rows["student (untrained)"][key]
    if not (d < u if key.startswith("depth_abs_rel") else d > u):
      failed.append(f"distilled student {key} {d:.3f} is not better than the untrained student's {u:.3f}")
  return failed


def report_markdown(metrics: dict, command: str) -> str:
  """docs/benchmarks/transfer.md: setup, the teacher vs student table, the issue's goals, DoRA vs full, timings."""
  from tools.fair.bench.report import header
  from tools.fair.experiments.evaluate import comparison_table
  rows, p, st = metrics["rows"], metrics["preset"], metrics["students"]
  td, ts = rows["teacher: DPT-DINOv2 depth"], rows["teacher: DINOv2 + linear seg"]
  sd = rows["student (distilled)"]
  goals = [("depth AbsRel <= 1.15x the teacher's", sd["depth_abs_rel"], 1.15 * td["depth_abs_rel"],
            sd["depth_abs_rel"] <= 1.15 * td["depth_abs_rel"]),
           ("mIoU >= 0.9x the teacher's", sd["miou"], 0.9 * ts["miou"], sd["miou"] >= 0.9 * ts["miou"])]
  adapt = [("GT + DoRA on teachers", "dora"), ("GT + full fine-tune on teachers", "full_finetune")]
  t = metrics["timings_s"]
  return "\n".join([
    header(f"Teacher -> student transfer ({p['name']})", command),
    f"- data: {p['train_segments']} training + {p['val_segments']} held-out generated segments of {p['seconds']:g} s "
    f"(all scenarios but straight_flat, tici and mici cameras); {metrics['samples']['train']} training / "
    f"{metrics['samples']['val']} held-out frames, model frame at 256x128",
    "- teachers (real FAIR architectures, trained here on ground truth, saved with save_pretrained and loaded back "
    "through load_teacher): " + "; ".join(
      f"{n} {i['seconds']:.0f} s, loss {i['loss_first20']:.3f} -> {i['loss_last20']:.3f}"
      for n, i in metrics["teachers"].items()),
    f"- students: nano, {st['distilled']['steps']} steps at batch {p['batch']}; the distilled one sees only pseudo labels "
    "(teacher depth, classes + soft labels, objects from the classes' connected components) and DINOv2 features, "
    "never ground truth (hard-example mining on); the reference sees only ground truth",
    "- metrics on the held-out segments at the student's grids (tools/fair/experiments/evaluate.py): depth up to "
    "80 m at 32x64, classes at 64x128; AP of decoded objects; lanes in the road frame",
    "", comparison_table(rows), "Goals (issue 5):", "",
    "| goal | distilled student | bound | met |", "|---|---:|---:|---|",
    *[f"| {g} | {v:.3f} | {b:.3f} | {'yes' if ok else 'no'} |" for g, v, b, ok in goals], "",
    "DoRA vs full fine-tuning (both continue the GT-trained student on the teachers' labels and features, same "
    "data and steps):", "",
    "| method | trainable params | share | steps | train time (s) | AbsRel | mIoU |", "|---|---:|---:|---:|---:|---:|---:|",
    *[f"| {n} | {st[k]['trainable_params']:,} | {100 * st[k]['trainable_params'] / st[k]['total_params']:.1f}% | "
      f"{st[k]['steps']} | {st[k]['train_time_s']:.0f} | {rows['student (' + n + ')']['depth_abs_rel']:.3f} | "
      f"{rows['student (' + n + ')']['miou']:.3f} |" for n, k in adapt], "",
    "Stage times (s; stages resumed in a later invocation keep the time of the one that did the work): "
    + ", ".join(f"{k} {v:.0f}" for k, v in t.items()), ""])


def ship(model, out_onnx: Path, metrics: dict, command: str) -> dict:
  """Export the distilled student as the daemon's bundled model (ONNX + student.json with provenance)."""
  from tools.fair.students.export import export_trained
  return export_trained(model, out_onnx, provenance={"command": command, "metrics": metrics})


def run(preset_name: str, out: Path, ship_model: bool = False, threads: int | None = None) -> dict:
  """The whole experiment; returns metrics.json's content."""
  import torch

  from tools.fair.distill.dora import merge_for_export
  from tools.fair.experiments.evaluate import write_table
  from tools.fair.students.efficientvit import build_student, student_config
  preset = PRESETS[preset_name]
  if threads:
    torch.set_num_threads(threads)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.monotonic()
  timings = {}
  segments, caches = make_data(preset, out)
  timings["data"] = time.monotonic() - t0
  t = time.monotonic()
  teacher_info = train_teachers(preset, caches["train"], out / "weights")
  timings["teachers"] = time.monotonic() - t
  cam = caches["train"].camera
  feature_scale = preset.teacher_input / cam.height
  teachers = load_teachers(out / "weights", cam, feature_scale)
  t = time.monotonic()
  pseudo_label(segments["train"], teachers, out / "labels")
  timings["labels"] = time.monotonic() - t
  labels = {"labels": str(out / "labels"), "teachers": {"depth": "dpt-depth", "seg": "dinov2-seg", "features": "dinov2"}}
  t = time.monotonic()
  distilled, fit_d, mining = train_student(recipe("transfer_distill", preset, out, caches, preset.student_steps,
                                                  use_gt=False, **labels), mining=True)
  timings["student_distill"] = time.monotonic() - t
  t = time.monotonic()
  reference, fit_g, _ = train_student(recipe("transfer_gt", preset, out, caches, preset.student_steps, use_gt=True))
  timings["student_gt"] = time.monotonic() - t
  # DoRA vs full: continue the ground-truth student on the teachers' labels + features, adapters vs all weights
  init = str(out / "runs" / "transfer_gt" / "init.safetensors")
  from safetensors.torch import save_file
  save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, init)
  adapted, t = {}, time.monotonic()
  for name, dora in (("DoRA", True), ("full", False)):
    r = recipe("transfer_dora", preset, out, caches, preset.dora_steps, use_gt=False, **labels)
    r = replace(r, name=f"transfer_dora_{name}", student=replace(r.student, init=init),
                dora=replace(r.dora, enabled=dora), run=replace(r.run, out=str(out / "runs" / f"adapt_{name}")))
    model, fit, _ = train_student(r)
    adapted[name] = (merge_for_export(model), fit)
  timings["student_dora_vs_full"] = time.monotonic() - t
  torch.manual_seed(preset.seed)
  untrained = build_student(student_config("nano")).eval()
  t = time.monotonic()
  rows = evaluate_all(preset, caches, teachers, {
    "student (distilled)": distilled, "student (GT-trained reference)": reference,
    "student (GT + DoRA on teachers)": adapted["DoRA"][0], "student (GT + full fine-tune on teachers)": adapted["full"][0],
    "student (untrained)": untrained})
  timings["evaluate"] = time.monotonic() - t
  timings = _merge_timings(out, timings)
  metrics = {
    "preset": asdict(preset) | {"name": preset_name}, "rows": rows, "timings_s": timings,
    "teachers": {n: {k: i[k] for k in ("seconds", "loss_first20", "loss_last20", "frames", "network_size")}
                 for n, i in teacher_info.items()},
    "students": {"distilled": fit_d, "gt": fit_g, "dora": adapted["DoRA"][1], "full_finetune": adapted["full"][1]},
    "samples": {"train": len(caches["train"]), "val": len(caches["val"])},
  }
  metrics["failed_checks"] = check_result(preset, metrics)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
  write_table(out / "table.md", rows, title=f"Teacher -> student transfer ({preset_name})")
  (out / "hard_examples.md").write_text(mining)
  command = f"python -m tools.fair.experiments.transfer --preset {preset_name} --out {out}"
  (out / "report.md").write_text(report_markdown(metrics, command))
  if ship_model:
    ship(distilled, MODELS / "student.onnx", rows["student (distilled)"], command + " --ship")
    shutil.copy2(out / "report.md", DOCS / "transfer.md")
  _log(f"done in {timings['total'] / 60:.1f} min -> {out}/table.md, metrics.json")
  return metrics


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
  ap.add_argument("--out", type=Path, default=Path("runs/transfer"))
  ap.add_argument("--ship", action="store_true", help="export the distilled student as the bundled default model")
  ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
  a = ap.parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")   # teachers come from OUT/weights only
  metrics = run(a.preset, a.out, a.ship, a.threads)
  for f in metrics["failed_checks"]:
    print(f"transfer: check failed: {f}")
  return 1 if metrics["failed_checks"] else 0


if __name__ == "__main__":
  raise SystemExit(main())

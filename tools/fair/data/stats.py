"""`fair stats CACHE [--labels STORE --teacher TASK=NAME ...] --out DIR`: dataset statistics.

Writes class_balance.png, depth_hist.png, objects_by_distance.png, lane_visibility.png, scenarios.png
(matplotlib, Agg) and summary.md with the numbers. Counts come from the same raw samples the training
dataset builds (ground truth, or with --no-gt the label store's pseudo labels), without augmentation.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from selfdrive.modeld_fair.model_io import LANE_X, N_LANES, OBJECT_CLASSES
from tools.fair.progress import progress_bar

DEPTH_BINS = np.array([0, 5, 10, 20, 30, 40, 60, 80, 100, 150, 200, np.inf])
DISTANCE_BINS = np.array([0, 10, 20, 40, 80, np.inf])   # object centre depth (m)


@dataclass(frozen=True, eq=False)
class DatasetStats:
  frames: int
  class_pixels: np.ndarray        # (n classes,) int64 labelled pixels per class
  ignore_pixels: int
  depth_counts: np.ndarray        # (len(DEPTH_BINS) - 1,) pixels with known depth per bin
  unknown_depth_pixels: int
  objects: np.ndarray             # (n object classes, len(DISTANCE_BINS) - 1) objects per class and distance bin
  objects_no_depth: int
  lane_exists: np.ndarray         # (4,) frames where each lane slot exists
  lane_visible: np.ndarray        # (4, 33) frames where the point is visible (of existing lanes)
  scenarios: dict[str, int]


def compute_stats(ds, progress: bool = False) -> DatasetStats:
  """Counts over every raw sample of a StudentDataset (ds.raw(i): no augmentation)."""
  n_cls = len(SEMANTIC_CLASSES)
  cls_px = np.zeros(n_cls + 1, np.int64)
  depth_counts = np.zeros(len(DEPTH_BINS) - 1, np.int64)
  unknown = 0
  objects = np.zeros((len(OBJECT_CLASSES), len(DISTANCE_BINS) - 1), np.int64)
  no_depth = 0
  lane_exists = np.zeros(N_LANES, np.int64)
  lane_visible = np.zeros((N_LANES, len(LANE_X)), np.int64)
  scen: Counter = Counter()
  for i in progress_bar(range(len(ds)), desc="stats", unit="frame", disable=not progress):
    s = ds.raw(i)
    scen[ds.record(i).scenario] += 1
    if "semantic" in s:
      sem = np.asarray(s["semantic"]).astype(np.int64)
      cls_px += np.bincount(np.where(sem < n_cls, sem, n_cls).ravel(), minlength=n_cls + 1)
    if "depth" in s:
      d = np.asarray(s["depth"], np.float64)
      ok = np.isfinite(d) & (d > 0)
      unknown += int((~ok).sum())
      depth_counts += np.histogram(d[ok], DEPTH_BINS)[0]
    if "box_xyxy" in s:
      cls = np.asarray(s["box_cls"])
      dep = np.asarray(s["box_depth"], np.float64)
      for c in range(len(OBJECT_CLASSES)):
        m = cls == c
        ok = np.isfinite(dep[m]) & (dep[m] > 0)
        no_depth += int((~ok).sum())
        objects[c] += np.histogram(dep[m][ok], DISTANCE_BINS)[0]
    if "lanes" in s:
      ex = np.asarray(s["lane_exists"]) > 0
      lane_exists += ex
      lane_visible += (np.asarray(s["lane_visible"]) > 0) & ex[:, None]
  return DatasetStats(len(ds), cls_px[:n_cls], int(cls_px[n_cls]), depth_counts, unknown, objects, no_depth,
                      lane_exists, lane_visible, dict(sorted(scen.items())))


def _bin_labels(bins: np.ndarray) -> list[str]:
  return [f"{a:g}-{b:g}" if np.isfinite(b) else f">{a:g}" for a, b in zip(bins[:-1], bins[1:])]


def write_report(st: DatasetStats, out_dir, title: str = "dataset") -> Path:
  """PNG plots and summary.md into out_dir; returns the summary's path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)

  def save(fig, name):
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)

  total_px = max(int(st.class_pixels.sum()), 1)
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar(SEMANTIC_CLASSES, st.class_pixels / total_px)
  ax.set_ylabel("pixel fraction"), ax.set_title("class balance"), ax.tick_params(axis="x", rotation=45)
  save(fig, "class_balance.png")
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar(_bin_labels(DEPTH_BINS), st.depth_counts)
  ax.set_xlabel("depth (m)"), ax.set_ylabel("pixels"), ax.set_title("depth histogram"), ax.tick_params(axis="x",
                                                                                                         rotation=45)
  save(fig, "depth_hist.png")
  fig, ax = plt.subplots(figsize=(7, 3.5))
  x = np.arange(len(DISTANCE_BINS) - 1)
  for c, name in enumerate(OBJECT_CLASSES):
    ax.bar(x + 0.4 * c - 0.2, st.objects[c], width=0.4, label=name)
  ax.set_xticks(x, _bin_labels(DISTANCE_BINS)), ax.set_xlabel("distance (m)"), ax.set_ylabel("objects")
  ax.legend(), ax.set_title("objects by distance")
  save(fig, "objects_by_distance.png")
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for j in range(N_LANES):
    ax.plot(LANE_X, st.lane_visible[j] / max(int(st.lane_exists[j]), 1), label=f"lane {j}")
  ax.set_xlabel("distance ahead (m)"), ax.set_ylabel("visible fraction"), ax.legend(), ax.set_title("lane visibility")
  save(fig, "lane_visibility.png")
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar(list(st.scenarios), list(st.scenarios.values()))
  ax.set_ylabel("frames"), ax.set_title("scenarios"), ax.tick_params(axis="x", rotation=45)
  save(fig, "scenarios.png")

  lines = [f"# Statistics of {title}", "", f"{st.frames} frames.", "", "## Class balance (labelled pixels)", "",
           "| class | pixels | fraction |", "|---|---|---|"]
  lines += [f"| {n} | {int(c)} | {c / total_px:.4f} |" for n, c in zip(SEMANTIC_CLASSES, st.class_pixels)]
  lines += [f"| (ignore) | {st.ignore_pixels} | |", "", "## Depth (pixels with known depth)", "",
            "| bin (m) | pixels |", "|---|---|"]
  lines += [f"| {b} | {int(c)} |" for b, c in zip(_bin_labels(DEPTH_BINS), st.depth_counts)]
  lines += [f"| unknown / sky | {st.unknown_depth_pixels} |", "", "## Objects by distance", "",
            "| class | " + " | ".join(_bin_labels(DISTANCE_BINS)) + " | total |",
            "|---" * (len(DISTANCE_BINS) + 1) + "|"]
  lines += [f"| {n} | " + " | ".join(str(int(v)) for v in st.objects[c]) + f" | {int(st.objects[c].sum())} |"
            for c, n in enumerate(OBJECT_CLASSES)]
  lines += [f"\nObjects without depth: {st.objects_no_depth}", "", "## Lanes", "",
            "| slot | frames existing | visible at 0-20 m | 20-60 m | 60-192 m |", "|---|---|---|---|---|"]
  for j in range(N_LANES):
    e = max(int(st.lane_exists[j]), 1)
    band = [(LANE_X <= 20), (LANE_X > 20) & (LANE_X <= 60), LANE_X > 60]
    lines.append(f"| {j} | {int(st.lane_exists[j])} | " +
                 " | ".join(f"{st.lane_visible[j][b].sum() / (e * b.sum()):.3f}" for b in band) + " |")
  lines += ["", "## Scenarios", "", "| scenario | frames |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in st.scenarios.items()]
  path = out / "summary.md"
  tmp = path.with_name(".summary.md.partial")
  tmp.write_text("\n".join(lines) + "\n")
  tmp.replace(path)
  return path


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("cache", type=Path, help="frame cache folder (build_frame_cache)")
  p.add_argument("--out", type=Path, required=True, help="folder for the PNG plots and summary.md")
  p.add_argument("--labels", type=Path, help="label store folder (pseudo labels)")
  p.add_argument("--teacher", action="append", default=[], metavar="TASK=NAME",
                 help="a teacher per task for --labels (depth, seg, panoptic, detection, lanes); repeatable")
  p.add_argument("--no-gt", action="store_true", help="count pseudo labels only (ignore the cache's ground truth)")


def run(args: argparse.Namespace) -> int:
  from tools.fair.data.dataset import StudentDataset
  teachers = {}
  for t in args.teacher:
    task, sep, name = t.partition("=")
    if not sep or not name:
      raise ValueError(f"--teacher takes TASK=NAME, got {t!r}")
    teachers[task] = name
  ds = StudentDataset(args.cache, labels=args.labels, teachers=teachers, use_gt=not args.no_gt)
  path = write_report(compute_stats(ds, progress=True), args.out, title=str(args.cache))
  print(path)
  return 0

"""The route -> cache -> labels -> train pipeline with `fair` commands: every bundled recipe runs as shipped on the
bundled samples (the transfer_* templates the way experiments/transfer.py fills them), and a distillation recipe
trains every head from the label store (every weighted loss term gets finite values)."""
import csv
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from selfdrive.modeld_fair.camera import MEDMODEL
from selfdrive.modeld_fair.classes import SEMANTIC_CLASSES
from tools.fair.cli import main as fair_main
from tools.fair.data.cache import FrameCache
from tools.fair.labels.store import Labels, LabelStore, ShardInfo

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tools/fair/distill/recipes"
SAMPLES = [ROOT / "data/samples/fairsim-mici-city-s2--0", ROOT / "data/samples/fairsim-tici-cut_in-s1--0"]


def _stand_in_teachers(cache: FrameCache, store: LabelStore) -> None:
  """Labels of the teachers the recipes name, made from the cache's ground truth (no weights here), written
  through the store's schema as a teacher's output would be; detector boxes carry no positions (as `fair label`).
  "sam2" stands for SAM masks already turned into semantic maps + soft labels (what dora_sam reads; `fair label
  --teachers sam2` itself writes per-clip video masks)."""
  cam = MEDMODEL.scaled(0.5)
  rng = np.random.default_rng(0)
  for seg, path in zip(cache.segments, SAMPLES):
    recs = [r for r in cache.records if r.segment == seg]
    g = [cache.read(r.index, ["depth", "semantic", "box_xyxy", "box_cls", "box_count"]) for r in recs]
    ids, n = np.array([r.frame_index for r in recs]), len(recs)
    k = max(int(x["box_count"]) for x in g) or 1
    boxes = np.full((n, k, 4), np.nan, np.float32)
    class_ids = np.full((n, k), -1, np.int16)
    count = np.array([int(x["box_count"]) for x in g], np.int32)
    for i, x in enumerate(g):
      boxes[i, :count[i]] = (x["box_xyxy"][:count[i]] + 0.5) * 0.5 - 0.5   # MEDMODEL -> label camera pixels
      class_ids[i, :count[i]] = x["box_cls"][:count[i]]                      # 0 vehicle -> "car", 1 -> "person"
    semantic = np.stack([x["semantic"] for x in g])
    probs = np.stack([(semantic == c) for c in range(len(SEMANTIC_CLASSES))], 1).astype(np.float16)
    labels = {
      "dpt-depth": ({"depth": np.stack([x["depth"] for x in g]).astype(np.float16)}, {}),
      "dinov2-seg": ({"semantic": semantic, "probs": probs}, {}),
      "sam2": ({"semantic": semantic, "probs": probs}, {}),
      "detr": ({"boxes": boxes, "scores": np.ones((n, k), np.float32), "class_ids": class_ids, "count": count,
                "positions": np.full((n, k, 3), np.nan, np.float32)}, {"classes": ["car", "person"]}),
      "dinov2": ({"features": rng.normal(size=(n, 16, 8, 16)).astype(np.float16),
                  "cls": np.zeros((n, 16), np.float16)}, {"layer": 12}),
    }
    for teacher, (arrays, meta) in labels.items():
      info = ShardInfo(teacher, "stand-in:Teacher", "0" * 64, "none", None, "test", seg, str(path), True)
      store.write(info, ids, Labels(arrays, meta, cam))


def _last_row(run: Path) -> dict[str, str]:
  with open(run / "train.csv", newline="") as f:
    return list(csv.DictReader(f))[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request):
  """A working directory laid out as the recipes expect: data/cache/{routes,sim-train,sim-val}, data/labels/routes."""
  wd = tmp_path_factory.mktemp("pipeline")
  mp = pytest.MonkeyPatch()
  mp.chdir(wd)
  request.addfinalizer(mp.undo)
  s = [str(p) for p in SAMPLES]
  assert fair_main(["cache", *s, "--out", "data/cache/routes", "--max-frames", "8", "--quiet"]) == 0
  assert fair_main(["cache", s[1], "--out", "data/cache/sim-train", "--max-frames", "4", "--quiet"]) == 0
  assert fair_main(["cache", s[0], "--out", "data/cache/sim-val", "--max-frames", "2", "--quiet"]) == 0
  assert fair_main(["cache", s[1], "--out", "data/cache/routes-train", "--max-frames", "4", "--quiet"]) == 0
  assert fair_main(["cache", s[0], "--out", "data/cache/routes-val", "--max-frames", "2", "--quiet"]) == 0
  for p in s:
    assert fair_main(["lanes", p, "--out", "data/labels/routes", "--max-frames", "8", "--scale", "0.5",
                      "--quiet"]) == 0
  assert fair_main(["ego", *s, "--out", "data/labels/routes"]) == 0
  _stand_in_teachers(FrameCache(wd / "data/cache/routes"), LabelStore(wd / "data/labels/routes"))
  # dora_dinov2's online teacher: a tiny random DINOv2 in the official folder layout under its weights_dir
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import torch
  from transformers import Dinov2Config, Dinov2Model
  torch.manual_seed(0)
  Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=14, image_size=56)).save_pretrained(wd / "weights" / "dinov2")
  return wd


@pytest.fixture(scope="module")
def distilled(workdir):
  """nano_distill run as shipped into its own run folder, past one epoch (7 batches of 2) so that it validates and
  writes best/, which the dora recipes start from."""
  assert fair_main(["train", str(RECIPES / "nano_distill.toml"), "--steps", "8", "--batch-size", "2", "--quiet"]) == 0
  assert (workdir / "runs/nano_distill/best/model.safetensors").is_file()
  return workdir / "runs/nano_distill"


def test_fair_cache_command(workdir, capsys):
  assert fair_main(["cache", str(SAMPLES[1]), "--out", "data/cache/sim-train", "--max-frames", "4", "--every", "2"]) == 2
  assert "holds a cache built with" in capsys.readouterr().err        # other settings: refused, nothing rebuilt
  assert fair_main(["cache", str(SAMPLES[1]), "--out", "data/cache/sim-train", "--max-frames", "4"]) == 0
  assert "4 frames of 1 segments (4 with ground truth)" in capsys.readouterr().out   # resumed: already complete
  assert fair_main(["cache", "no/such/segment", "--out", "x"]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_nano_distill_trains_every_head_from_the_label_store(distilled):
  row = _last_row(distilled)
  terms = ["depth", "depth_grad", "seg", "kd_seg", "obj_heatmap", "obj_box", "obj_depth", "lanes", "lane_prob", "ego",
           "feat/stages.2", "feat/stages.3", "at/stages.2", "at/stages.3"]
  values = {t: float(row[t]) for t in terms}
  assert all(np.isfinite(v) for v in values.values()), values
  # detector boxes got distances (they were NaN in the store): the object depth term is trained
  assert values["obj_depth"] > 0 and values["obj_box"] > 0 and values["lanes"] != 0


def test_nano_gt_runs_as_shipped(workdir):
  assert fair_main(["train", str(RECIPES / "nano_gt.toml"), "--steps", "2", "--batch-size", "2", "--out", "runs/gt",
                    "--quiet"]) == 0
  row = _last_row(workdir / "runs/gt")
  assert all(np.isfinite(float(row[t])) for t in ("depth", "seg", "obj_heatmap", "lanes", "lane_prob", "ego"))


def _weighted_terms(recipe: Path) -> list[str]:
  from tools.fair.distill.recipe import load_recipe
  return [t for t, w in load_recipe(recipe).loss.weights.items() if w > 0 and t not in ("feat", "at")]


@pytest.mark.parametrize("name", ["dora_dinov2", "dora_sam"])
def test_dora_recipes_run_as_shipped_from_nano_distill(distilled, workdir, name):
  recipe = RECIPES / f"{name}.toml"
  assert fair_main(["train", str(recipe), "--steps", "2", "--batch-size", "2", "--out", f"runs/{name}", "--quiet"]) == 0
  row = _last_row(workdir / f"runs/{name}")
  terms = _weighted_terms(recipe)
  assert terms and all(np.isfinite(float(row[t])) for t in terms), {t: row[t] for t in terms}


@pytest.mark.parametrize("name", ["transfer_distill", "transfer_gt", "transfer_dora"])
def test_transfer_templates_run_as_the_experiment_fills_them(workdir, name):
  from tools.fair.experiments.transfer import PRESETS, recipe, train_student
  preset = replace(PRESETS["mini"], batch=2)
  caches = {"train": FrameCache(workdir / "data/cache/routes")}
  data = {"use_gt": True} if name == "transfer_gt" else \
    {"use_gt": False, "labels": "data/labels/routes",
     "teachers": {"depth": "dpt-depth", "seg": "dinov2-seg", "features": "dinov2"}}
  r = recipe(name, preset, workdir, caches, 2, **data)
  model, summary, _ = train_student(r)
  assert summary["steps"] == 2
  row = _last_row(Path(r.run.out))
  terms = _weighted_terms(RECIPES / f"{name}.toml")
  assert terms and all(np.isfinite(float(row[t])) for t in terms), {t: row[t] for t in terms}


def test_every_bundled_recipe_is_run_here():
  import re
  ran = set(re.findall(r'"((?:nano|dora|transfer)_\w+)', Path(__file__).read_text())) | {"nano_gt", "nano_distill"}
  assert {p.stem for p in RECIPES.glob("*.toml")} <= ran
